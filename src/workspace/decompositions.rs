//! Comparing two decompositions of one span of a book (the CLI's `rrm decomposer compare` and
//! the web app's `/decompositions` screen): pick the span, draw each candidate segmentation
//! (`fixed`, `fixed:SEED`, `learned`, `learned:SEED`, `similarity`), show each leaf by its first
//! and last sentence and its length, and store the answer as a
//! [`DecompComparison`](crate::feedback::decomp::DecompComparison).

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::decomposers::{DecomposerKind, DecomposerSpec};
use super::{embeddings, trees, Result, Workspace, WorkspaceError};
use crate::book::{Book, Span};
use crate::decompose::learned::{FeatureConfig, Featurizer, LearnedDecomposer, Sample, Scorer};
use crate::decompose::{ApproxCounter, Decomposer, FixedChunker, TokenCounter};
use crate::feedback::decomp::{self, DecompAnswer, DecompComparison, Segmentation};
use crate::infer::Encoder;

/// Spans longer than this many tokens are cut to it when no node names the span.
pub const DEFAULT_SPAN_TOKENS: usize = 4_000;

/// Which decomposer draws a candidate, and with which seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub kind: DecomposerKind,
    pub seed: Option<u64>,
}

impl Candidate {
    pub fn needs_encoder(&self) -> bool {
        self.kind != DecomposerKind::Fixed
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            DecomposerKind::Fixed => "fixed",
            DecomposerKind::Learned => "learned",
            DecomposerKind::Similarity => "similarity",
        }
    }

    pub fn label(&self) -> String {
        match self.seed {
            Some(s) => format!("{}:{s}", self.name()),
            None => self.name().to_string(),
        }
    }
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

impl std::str::FromStr for Candidate {
    type Err = String;

    /// `fixed`, `fixed:7` (leaf sizes jittered by seed 7), `learned`, `learned:3` (a draw of the
    /// DP under perturbed scores), `similarity`, `similarity:3`.
    fn from_str(s: &str) -> std::result::Result<Candidate, String> {
        let s = s.trim();
        let (name, seed) = match s.split_once(':') {
            Some((n, seed)) => {
                let seed = seed.trim().parse::<u64>().map_err(|_| {
                    format!("'{seed}' in '{s}' is not a seed (a whole number from 0)")
                })?;
                (n, Some(seed))
            }
            None => (s, None),
        };
        let kind = match name.to_ascii_lowercase().as_str() {
            "fixed" => DecomposerKind::Fixed,
            "learned" => DecomposerKind::Learned,
            "similarity" => DecomposerKind::Similarity,
            other => {
                return Err(format!(
                    "'{other}' is not a decomposer (fixed, learned or similarity, optionally \
                     :SEED)"
                ))
            }
        };
        Ok(Candidate { kind, seed })
    }
}

/// The span compared: a node of the book's stored tree, or the book's first chapter, or its
/// first [`DEFAULT_SPAN_TOKENS`] tokens (whole paragraphs).
pub fn pick_span(
    ws: &Workspace,
    book: &Book,
    node: Option<&str>,
) -> Result<(Span, Option<String>)> {
    if let Some(label) = node {
        let tree = trees::for_book(ws, book)?.ok_or_else(|| {
            WorkspaceError::NotFound(format!(
                "--span {label} names a node, but '{}' has no task tree yet; build one with \
                 `rrm decompose BOOK`",
                book.title()
            ))
        })?;
        let id = tree.find(label).ok_or_else(|| {
            WorkspaceError::NotFound(format!(
                "no node '{label}' in the tree of {} (labels look like h1.3)",
                book.title()
            ))
        })?;
        let n = tree.node(id);
        return Ok((n.covers, Some(n.label.clone())));
    }
    Ok((default_span(book), None))
}

/// The first chapter (heading to the next chapter heading), else the first paragraphs up to
/// [`DEFAULT_SPAN_TOKENS`] tokens.
pub fn default_span(book: &Book) -> Span {
    let text = book.text();
    let chapters: Vec<_> = book.chapters().collect();
    if chapters.len() >= 2 {
        let span = Span::new(chapters[0].span.start, chapters[1].span.start);
        if ApproxCounter.count(book.slice(span)) <= 4 * DEFAULT_SPAN_TOKENS {
            return trim_end(text, span);
        }
    }
    let start = book.paragraphs().first().map_or(0, |p| p.start);
    let mut end = text.len();
    let mut tokens = 0;
    for p in book.paragraphs() {
        tokens += ApproxCounter.count(book.slice(*p));
        if tokens > DEFAULT_SPAN_TOKENS {
            end = p.end;
            break;
        }
    }
    trim_end(text, Span::new(start, end))
}

fn trim_end(text: &str, span: Span) -> Span {
    let kept = span.get(text).unwrap_or("").trim_end().len();
    Span::new(span.start, span.start + kept)
}

/// One leaf as shown: its first and last sentence, its length, its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeafView {
    pub start: usize,
    pub end: usize,
    pub tokens: usize,
    pub first: String,
    /// Empty when the leaf is one sentence.
    pub last: String,
    pub text: String,
}

/// A drawn segmentation of the span with its leaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drawn {
    pub segmentation: Segmentation,
    pub leaves: Vec<LeafView>,
}

/// Builds the decomposer a candidate names (the encoder only for learned and similarity).
pub fn decomposer(
    ws: &Workspace,
    cand: Candidate,
    encoder: Option<Arc<dyn Encoder>>,
    model: Option<&std::path::Path>,
) -> Result<Box<dyn Decomposer>> {
    let spec = DecomposerSpec { kind: cand.kind, seed: cand.seed, ..DecomposerSpec::default() };
    Ok(match cand.kind {
        DecomposerKind::Fixed => Box::new(FixedChunker::new(spec.fixed_config())?),
        DecomposerKind::Learned | DecomposerKind::Similarity => {
            let encoder = encoder.ok_or_else(|| {
                WorkspaceError::Invalid(format!("{cand} needs the sentence encoder"))
            })?;
            let scorer = if cand.kind == DecomposerKind::Similarity {
                Scorer::Similarity { window: 3 }
            } else {
                Scorer::Model(super::decomposers::boundary_model(model)?)
            };
            let mut featurizer = Featurizer::new(encoder, FeatureConfig::default());
            featurizer.cache = Some(embeddings::shared_cache(ws));
            let mut config = spec.learned_config();
            config.sample = cand.seed.map(|seed| Sample { seed, scale: Sample::SCALE });
            Box::new(LearnedDecomposer::new(config, scorer, featurizer)?)
        }
    })
}

/// Segments `span` of `book` with `decomposer` (as a book of its own: the span's text), and
/// returns the cuts as absolute byte offsets with the leaves' views.
pub fn draw(
    book: &Book,
    span: Span,
    cand: Candidate,
    decomposer: &dyn Decomposer,
) -> Result<Drawn> {
    let text = span.get(book.text()).ok_or_else(|| {
        WorkspaceError::Invalid(format!("span {span} does not fit {}", book.title()))
    })?;
    let sub = Book::from_text(book.title(), text);
    // Normalization may trim the text; find where the sub-book's text sits in the span.
    let offset = span.start
        + text.find(sub.text()).ok_or_else(|| {
            WorkspaceError::Invalid(format!(
                "the text of span {span} of {} changes when read as a book of its own",
                book.title()
            ))
        })?;
    let tree = decomposer.decompose(&sub)?;
    let mut leaves = Vec::new();
    let mut boundaries = Vec::new();
    for (i, &l) in tree.leaves().iter().enumerate() {
        let node = tree.node(l);
        let Some(s) = node.span() else { continue };
        let (start, end) =
            if i == 0 { (span.start, offset + s.end) } else { (offset + s.start, offset + s.end) };
        let end = if i + 1 == tree.leaves().len() { span.end } else { end };
        if i > 0 {
            boundaries.push(start);
        }
        let sentences: Vec<&str> = sub
            .sentences()
            .iter()
            .filter(|x| x.start >= s.start && x.end <= s.end)
            .map(|x| sub.slice(*x))
            .collect();
        let first = sentences.first().copied().unwrap_or("").to_string();
        let last = if sentences.len() > 1 {
            sentences[sentences.len() - 1].to_string()
        } else {
            String::new()
        };
        leaves.push(LeafView {
            start,
            end,
            tokens: node.input_tokens,
            first,
            last,
            text: book.text().get(start..end).unwrap_or("").to_string(),
        });
    }
    Ok(Drawn {
        segmentation: Segmentation {
            decomposer: cand.name().to_string(),
            seed: cand.seed,
            boundaries,
        },
        leaves,
    })
}

/// A pair ready to show: the span, its text, both draws (as asked: `a` then `b`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub book: String,
    pub title: String,
    pub node: Option<String>,
    pub start: usize,
    pub end: usize,
    pub tokens: usize,
    pub a: Drawn,
    pub b: Drawn,
}

/// The settings of a pair: the book's span and the two candidates.
#[derive(Debug, Clone)]
pub struct PairSpec {
    pub node: Option<String>,
    pub a: Candidate,
    pub b: Candidate,
    /// The learned model (default: built in).
    pub model: Option<PathBuf>,
}

/// Draws both candidates over the span. An error when they cut the span the same way.
pub fn pair(
    ws: &Workspace,
    book: &Book,
    spec: &PairSpec,
    encoder: Option<Arc<dyn Encoder>>,
) -> Result<Pair> {
    let (span, node) = pick_span(ws, book, spec.node.as_deref())?;
    let draw_one = |c: Candidate| -> Result<Drawn> {
        let d = decomposer(ws, c, encoder.clone(), spec.model.as_deref())?;
        draw(book, span, c, d.as_ref())
    };
    let a = draw_one(spec.a)?;
    let b = draw_one(spec.b)?;
    if a.segmentation.boundaries == b.segmentation.boundaries {
        return Err(WorkspaceError::Invalid(format!(
            "{} and {} cut this span ({} leaves) the same way: nothing to compare; try another \
             pair (e.g. --b learned:1) or another --span",
            spec.a,
            spec.b,
            a.leaves.len()
        )));
    }
    Ok(Pair {
        book: book.id().to_string(),
        title: book.title().to_string(),
        node,
        start: span.start,
        end: span.end,
        tokens: ApproxCounter.count(book.slice(span)),
        a,
        b,
    })
}

/// The labeler's earlier answer about the same two segmentations of the same span of `book`
/// (in either order), if any.
pub fn earlier(
    ws: &Workspace,
    labeler: &str,
    book: &str,
    span: Span,
    shown: (&Segmentation, &Segmentation),
) -> Result<Option<DecompComparison>> {
    let same = |x: &Segmentation, y: &Segmentation| {
        x.decomposer == y.decomposer && x.seed == y.seed && x.boundaries == y.boundaries
    };
    Ok(decomp::all(ws.store())?.into_iter().find(|r| {
        r.labeler == labeler
            && r.book == book
            && (r.start, r.end) == (span.start, span.end)
            && ((same(&r.a, shown.0) && same(&r.b, shown.1))
                || (same(&r.a, shown.1) && same(&r.b, shown.0)))
    }))
}

/// Stores the answer about `pair` (`a` and `b` in the order shown). Returns the stored record.
#[allow(clippy::too_many_arguments)]
pub fn record(
    ws: &Workspace,
    labeler: &str,
    book: &Book,
    shown: (&Segmentation, &Segmentation),
    span: Span,
    node: Option<String>,
    answer: DecompAnswer,
    judge_ms: Option<u64>,
) -> Result<DecompComparison> {
    let text = span.get(book.text()).ok_or_else(|| {
        WorkspaceError::Invalid(format!("span {span} does not fit {}", book.title()))
    })?;
    let r = DecompComparison::new(
        labeler,
        book.id().as_str(),
        span.start,
        text,
        shown.0.clone(),
        shown.1.clone(),
        answer,
        judge_ms,
    )
    .named(Some(book.title().to_string()), node);
    decomp::put(ws.store(), r.clone())?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_parse_with_clear_errors() {
        let c: Candidate = "learned:7".parse().unwrap();
        assert_eq!((c.kind, c.seed), (DecomposerKind::Learned, Some(7)));
        assert_eq!("fixed".parse::<Candidate>().unwrap().label(), "fixed");
        assert!("fixed:x".parse::<Candidate>().unwrap_err().contains("not a seed"));
        assert!("chunky".parse::<Candidate>().unwrap_err().contains("not a decomposer"));
    }

    #[test]
    fn fixed_draws_cover_the_span_and_differ_by_seed() {
        let mut text = String::from("CHAPTER I\n\n");
        for i in 0..60 {
            text.push_str(&format!(
                "Marta walked to the mill on day {i} and talked with the miller about bread. \
                 The miller said the river was high.\n\n"
            ));
        }
        text.push_str("CHAPTER II\n\nThe end came.\n");
        let book = Book::from_text("t", &text);
        let span = default_span(&book);
        assert!(
            book.slice(span).starts_with("CHAPTER I") && !book.slice(span).contains("CHAPTER II")
        );
        let fixed = |seed| {
            let c = Candidate { kind: DecomposerKind::Fixed, seed };
            let spec = DecomposerSpec { seed, ..DecomposerSpec::default() };
            let d = FixedChunker::new(spec.fixed_config()).unwrap();
            draw(&book, span, c, &d).unwrap()
        };
        let a = fixed(None);
        let b = fixed(Some(3));
        assert!(a.leaves.len() >= 2);
        assert_ne!(a.segmentation.boundaries, b.segmentation.boundaries);
        for d in [&a, &b] {
            let joined: String = d.leaves.iter().map(|l| l.text.as_str()).collect();
            assert_eq!(joined, book.slice(span));
            assert!(d.leaves.iter().all(|l| !l.first.is_empty() && l.tokens > 0));
        }
    }
}
