//! `rrm decomposer tune`: moving the boundary model toward the segmentations that lead to
//! better results. For each document, K segmentations are drawn (the model's best one and
//! K − 1 perturb-and-MAP draws, [`Sample`]); each is scored by a signal; every two draws of one
//! document whose scores differ by more than a margin become a preference pair; stored
//! decomposition comparisons by people join as pairs of their own; and
//! [`BoundaryModel::tune`] fits the model to all of them. With several rounds, the next
//! round draws from the model the last one produced (pairs accumulate; every fit starts
//! from, and is anchored to, the starting model).
//!
//! The signals: `rouge` summarizes the whole document with each draw through the ordinary
//! decompose-and-compose path (same cache as `rrm summarize`, so a killed run resumes where it
//! stopped) and takes the root's mean ROUGE-1/ROUGE-L F1 against the document's human
//! references; `grounded` takes the share of the root's content words the document supports
//! (1 − unsupported rate, [`crate::grounding`]); `simulated` needs no model: the share of
//! leaves that start self-contained plus the share that end at a scene change
//! ([`crate::decompose::oversee`]), the simulated decomposition labeler.

use std::sync::Arc;

use super::eval::{summarize_documents, Summarizer};
use super::{books, embeddings, Result, Workspace, WorkspaceError};
use crate::book::{Book, BookId};
use crate::compose::{ComposeOptions, Selector};
use crate::decompose::learned::{
    cut_gaps, BoundaryModel, FeatureConfig, Featurizer, LearnedConfig, LearnedDecomposer,
    PreferenceData, Sample, Scorer, TuneConfig, TuneLimits, TuneReport,
};
use crate::decompose::oversee;
use crate::eval::references::Document;
use crate::eval::summaries::{self, DocProgress, Scorers};
use crate::feedback::decomp;
use crate::infer::{Encoder, Generator};

/// What scores a drawn segmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Rouge,
    Grounded,
    Simulated,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Rouge => "rouge",
            Signal::Grounded => "grounded",
            Signal::Simulated => "simulated",
        }
    }

    fn needs_summaries(self) -> bool {
        !matches!(self, Signal::Simulated)
    }
}

/// How to draw, score and fit.
#[derive(Debug, Clone)]
pub struct TuneSpec {
    /// `None`: only people's decomposition comparisons.
    pub signal: Option<Signal>,
    /// Segmentations per document and round (the best one included).
    pub draws: usize,
    /// Gumbel scale of the draws.
    pub scale: f64,
    pub rounds: usize,
    /// Two draws make a pair only when their scores differ by more than this.
    pub margin: f64,
    /// Also learn from the stored decomposition comparisons.
    pub feedback: bool,
    pub fit: TuneConfig,
    /// The learned decomposer's settings (leaf limits, fanout, caps).
    pub config: LearnedConfig,
}

impl TuneSpec {
    /// Refuses settings that cannot work, naming the flag (call it before loading models).
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(WorkspaceError::Invalid(m));
        if self.signal.is_none() && !self.feedback {
            return bad("nothing to learn from: give --signal rouge|grounded|simulated or \
                        --comparisons"
                .into());
        }
        if self.signal.is_some() && self.draws < 2 {
            return bad(format!(
                "--draws must be at least 2 to compare segmentations, got {}",
                self.draws
            ));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return bad(format!("--scale must be a positive number, got {}", self.scale));
        }
        if !(self.fit.anchor.is_finite() && self.fit.anchor >= 0.0) {
            return bad(format!("--anchor must be a non-negative number, got {}", self.fit.anchor));
        }
        self.config.validate()?;
        Ok(())
    }
}

/// The models and settings that summarize drawn decompositions (the `rouge` and `grounded`
/// signals).
pub struct Composing {
    pub generator: Arc<dyn Generator>,
    pub selector: Arc<dyn Selector>,
    pub options: ComposeOptions,
}

/// One draw of one document, scored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DrawScore {
    pub round: usize,
    pub draw: usize,
    pub document: String,
    pub leaves: usize,
    pub score: f64,
}

/// Progress of a tuning run.
pub trait TuneProgress: DocProgress {
    fn draw(&self, _round: usize, _draw: usize, _draws: usize) {}
    fn scored(&self, _score: &DrawScore) {}
}

/// The tuned model, what it learned from, and every scored draw.
pub struct Tuned {
    pub model: BoundaryModel,
    pub report: TuneReport,
    pub draws: Vec<DrawScore>,
}

/// The seed of draw `k` of round `round` (draw 0 is the best segmentation, no seed).
fn draw_seed(seed: u64, round: usize, k: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add((round * 10_007 + k) as u64)
}

/// Tunes `start` (see the module docs) on `docs` and, with `spec.feedback`, the stored
/// decomposition comparisons. `composing` is needed by the summary signals.
pub async fn tune(
    ws: &Workspace,
    start: Arc<BoundaryModel>,
    encoder: Arc<dyn Encoder>,
    docs: &[Document],
    composing: Option<&Composing>,
    spec: &TuneSpec,
    progress: &dyn TuneProgress,
) -> Result<Tuned> {
    spec.check()?;
    if spec.signal.is_some() && docs.is_empty() {
        return Err(WorkspaceError::Invalid("no documents to draw segmentations of".into()));
    }
    let needs_composing = spec.signal.is_some_and(Signal::needs_summaries);
    if needs_composing && composing.is_none() {
        return Err(WorkspaceError::Invalid("this signal needs a model to summarize with".into()));
    }
    let mut featurizer = Featurizer::new(encoder, FeatureConfig::default());
    featurizer.cache = Some(embeddings::shared_cache(ws));
    let base = LearnedDecomposer::new(
        spec.config.clone(),
        Scorer::Model(Arc::clone(&start)),
        featurizer.clone(),
    )?;
    let dim = start.dim();
    let mut data = PreferenceData::new(dim);
    if spec.feedback {
        add_comparisons(ws, &base, &mut data)?;
    }
    let books: Vec<Book> =
        docs.iter().map(summaries::book_of).collect::<std::result::Result<_, _>>()?;
    // Each document's gap rows under the unperturbed features.
    let mut rows = Vec::with_capacity(books.len());
    if spec.signal.is_some() {
        for book in &books {
            let (units, _, r) = featurizer.gaps(book, spec.config.chunk_tokens)?;
            rows.push((units, r));
        }
    }
    let mut current = Arc::clone(&start);
    let mut all_draws = Vec::new();
    let mut last: Option<(BoundaryModel, TuneReport)> = None;
    let rounds = if spec.signal.is_some() { spec.rounds.max(1) } else { 1 };
    for round in 0..rounds {
        if let Some(signal) = spec.signal {
            // cuts[doc][draw] and scores[doc][draw]
            let mut cuts = vec![Vec::new(); docs.len()];
            let mut scores = vec![Vec::new(); docs.len()];
            for k in 0..spec.draws {
                progress.draw(round, k, spec.draws);
                let mut config = spec.config.clone();
                config.sample = (k > 0).then(|| Sample {
                    seed: draw_seed(spec.fit.seed, round, k),
                    scale: spec.scale,
                });
                let decomposer = LearnedDecomposer::new(
                    config,
                    Scorer::Model(Arc::clone(&current)),
                    featurizer.clone(),
                )?;
                let summarized = match (signal.needs_summaries(), composing) {
                    (true, Some(c)) => {
                        let s = Summarizer {
                            models: Arc::clone(&c.generator).into(),
                            selector: Arc::clone(&c.selector),
                            options: c.options.clone(),
                            decomposer: &decomposer,
                            scorers: Scorers { reward: None, labeler: None },
                            demonstrations: None,
                        };
                        Some(summarize_documents(ws, &s, docs, progress).await?)
                    }
                    _ => None,
                };
                for (d, book) in books.iter().enumerate() {
                    let plan = decomposer.plan(book)?;
                    let starts: Vec<usize> = plan.leaves.iter().map(|l| l.span.start).collect();
                    cuts[d].push(cut_gaps(&rows[d].0, &starts));
                    let score = match (signal, &summarized) {
                        (Signal::Simulated, _) => {
                            let leaves: Vec<_> =
                                plan.leaves.iter().map(|l| (l.span, l.input_tokens)).collect();
                            let budget = (spec.config.min_tokens, spec.config.chunk_tokens);
                            let o = oversee::summarize(
                                &oversee::check_leaves(book, &leaves, budget),
                                &[],
                            );
                            o.self_contained_starts.unwrap_or(0.0) + o.scene_ends.unwrap_or(0.0)
                        }
                        (Signal::Rouge, Some(s)) => {
                            (s[d].rouge.rouge1_mean + s[d].rouge.rouge_l_mean) / 2.0
                        }
                        (Signal::Grounded, Some(s)) => {
                            1.0 - s[d].grounding.map_or(1.0, |g| g.unsupported_rate)
                        }
                        (Signal::Rouge | Signal::Grounded, None) => {
                            return Err(WorkspaceError::Invalid(
                                "this signal needs a model to summarize with".into(),
                            ))
                        }
                    };
                    let scored = DrawScore {
                        round,
                        draw: k,
                        document: docs[d].id.clone(),
                        leaves: plan.leaves.len(),
                        score,
                    };
                    progress.scored(&scored);
                    scores[d].push(score);
                    all_draws.push(scored);
                }
            }
            for d in 0..docs.len() {
                for i in 0..spec.draws {
                    for j in i + 1..spec.draws {
                        let (si, sj) = (scores[d][i], scores[d][j]);
                        if (si - sj).abs() <= spec.margin {
                            continue;
                        }
                        let target = if si > sj { 1.0 } else { 0.0 };
                        data.push_cuts(
                            &rows[d].1,
                            &cuts[d][i],
                            &cuts[d][j],
                            target,
                            1.0,
                            &docs[d].id,
                            signal.as_str(),
                        );
                    }
                }
            }
        }
        // The limits the pairs were drawn under go into the model file with the fit.
        let fit = TuneConfig { limits: Some(TuneLimits::of(&spec.config)), ..spec.fit.clone() };
        let fitted = start.tune(&data, &fit)?;
        current = Arc::new(fitted.0.clone());
        last = Some(fitted);
    }
    let (model, report) = last.ok_or_else(|| WorkspaceError::Invalid("no round ran".into()))?;
    Ok(Tuned { model, report, draws: all_draws })
}

/// Pairs from the stored decomposition comparisons of books the store still has: a preference
/// over the two segmentations (confidence as weight), or "without the bad cut over with it".
/// Rows come from the whole book's features, so the record's offsets index its gaps.
fn add_comparisons(
    ws: &Workspace,
    decomposer: &LearnedDecomposer,
    data: &mut PreferenceData,
) -> Result<()> {
    let records = decomp::all(ws.store())?;
    let mut by_book: std::collections::BTreeMap<String, Vec<decomp::DecompComparison>> =
        Default::default();
    for r in records {
        by_book.entry(r.book.clone()).or_default().push(r);
    }
    for (book_id, records) in by_book {
        let book = BookId::parse(&book_id)
            .map(|id| books::status(ws, &id))
            .transpose()?
            .and_then(|s| s.book());
        let Some(book) = book else {
            tracing::warn!(book = %book_id, n = records.len(), "book of stored comparisons is gone; skipped");
            continue;
        };
        let (units, _, rows) =
            decomposer.featurizer().gaps(&book, decomposer.learned_config().chunk_tokens)?;
        for r in records {
            let group = format!("people:{}", &book_id[..book_id.len().min(12)]);
            if let Some((better, worse, target, weight)) = r.preference() {
                data.push_cuts(
                    &rows,
                    &cut_gaps(&units, &better.boundaries),
                    &cut_gaps(&units, &worse.boundaries),
                    target,
                    weight,
                    &group,
                    "people",
                );
            } else if let Some(at) = r.bad_boundary() {
                data.push_cuts(&rows, &[], &cut_gaps(&units, &[at]), 1.0, 1.0, &group, "people");
            }
        }
    }
    Ok(())
}
