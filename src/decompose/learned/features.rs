//! Units, gaps and gap features of a book, and the book's own structure as labels.
//!
//! - [`units`]: the book cut into sentences (an over-long sentence into word pieces), each
//!   with its byte start and token count. Leaves are runs of units; the gaps between units are
//!   the candidate boundaries.
//! - [`gap_features`]: one feature row per gap: encoder similarity of the windows of sentences
//!   on each side at several window sizes and the TextTiling depth of each similarity valley,
//!   paragraph break, blank-line run and how rare a run that long is in the book, heading on the next line, dialogue (quote) changes,
//!   paragraph and sentence lengths, relative position, and optionally the embeddings of the
//!   sentences on either side.
//! - [`strip_headings`]: the book with its heading lines (and title lines right under them)
//!   deleted, plus the byte offsets where the deleted sections started. Training on and
//!   evaluating against chapter structure uses this view, so no feature can see a heading or
//!   its text. [`Hide::Headings`] keeps the blank lines that stood before a heading (the
//!   book's layout, one of the cues a reader sees); [`Hide::Layout`] also collapses them to
//!   one paragraph break, so the model has to find chapter breaks from the prose alone.

use serde::{Deserialize, Serialize};

use crate::book::{Book, Span};
use crate::decompose::TokenCounter;

/// Scalar features per gap that do not depend on the window sizes.
pub const LAYOUT_FEATURES: &[&str] = &[
    "paragraph_break",
    "blank_lines",
    "blank_rarity",
    "heading_next",
    "after_heading",
    "quote_before",
    "quote_after",
    "quote_change",
    "position",
    "paragraph_tokens_before",
    "paragraph_tokens_after",
    "short_paragraph_before",
    "sentence_chars_before",
    "sentence_chars_after",
    "intra_sentence",
];

/// Features that read the prose, not the layout ([`FeatureConfig::prose`]): cues a reader
/// sees where a scene changes even when no blank line or heading marks it.
pub const PROSE_FEATURES: &[&str] = &[
    // Embedding similarity of 24-sentence windows on each side, and its depth: a chapter is
    // longer than the 8-sentence window sees.
    "similarity_24",
    "depth_24",
    // Names (capitalized words inside sentences) of the next 3 sentences absent from the last
    // 20: who is on stage changes.
    "names_new_after",
    // Jaccard overlap of the names of 8 sentences on each side.
    "names_overlap",
    // The next sentence opens with a time or place shift ("The next morning", "Meanwhile").
    "time_cue_after",
    // Share of quoted sentences among the 5 before and the 5 after: a scene often ends as a
    // dialogue does and opens in narration.
    "dialogue_before",
    "dialogue_after",
    // The next sentence uses a third-person pronoun before any name: a leaf starting there
    // would not be self-contained (`oversee::pronoun_before_name`, what the overseeability
    // measure and the simulated decomposition labeler check).
    "pronoun_after",
];

/// Openings that shift time or place, matched at the start of a sentence (lower case).
const TIME_CUES: &[&str] = &[
    "the next ",
    "next day",
    "next morning",
    "the following",
    "that evening",
    "that night",
    "that morning",
    "that afternoon",
    "in the morning",
    "in the evening",
    "early next",
    "early the next",
    "later that",
    "some time",
    "some days",
    "some weeks",
    "a few days",
    "a week",
    "a month",
    "a year",
    "years ",
    "days ",
    "weeks ",
    "months ",
    "meanwhile",
    "in the meantime",
    "at last",
    "at length",
    "when morning",
    "when the morning",
    "on the morrow",
    "the morrow",
    "it was ",
    "it was not until",
    "by the time",
    "the day ",
    "one day",
    "one morning",
    "one evening",
    "on the ",
    "after ",
    "long before",
    "the sun",
    "morning came",
    "dawn",
];

/// Which features to compute (recorded in the model file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureConfig {
    /// Window sizes in sentences for the similarity features.
    pub windows: Vec<usize>,
    /// Append the embeddings of the sentence before and the sentence after the gap.
    pub sentence_embeddings: bool,
    /// Add [`PROSE_FEATURES`] (off in the built-in model, which older files share).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prose: bool,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig { windows: vec![1, 3, 8], sentence_embeddings: true, prose: false }
    }
}

impl FeatureConfig {
    /// Columns of a feature row for an encoder of dimension `dim`.
    pub fn dim(&self, encoder_dim: usize) -> usize {
        2 * self.windows.len()
            + LAYOUT_FEATURES.len()
            + if self.prose { PROSE_FEATURES.len() } else { 0 }
            + if self.sentence_embeddings { 2 * encoder_dim } else { 0 }
    }

    /// Column names (embeddings as `emb_before.i`, `emb_after.i`).
    pub fn names(&self, encoder_dim: usize) -> Vec<String> {
        let mut names = Vec::new();
        for w in &self.windows {
            names.push(format!("similarity_{w}"));
            names.push(format!("depth_{w}"));
        }
        names.extend(LAYOUT_FEATURES.iter().map(|s| s.to_string()));
        if self.prose {
            names.extend(PROSE_FEATURES.iter().map(|s| s.to_string()));
        }
        if self.sentence_embeddings {
            names.extend((0..encoder_dim).map(|i| format!("emb_before.{i}")));
            names.extend((0..encoder_dim).map(|i| format!("emb_after.{i}")));
        }
        names
    }
}

/// The units of a book: runs of them become leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Units {
    /// Byte offset where each unit starts (unit 0 at 0); unit `i` ends where `i + 1` starts,
    /// the last at the end of the text.
    pub starts: Vec<usize>,
    /// Token count of each unit's whole extent.
    pub tokens: Vec<usize>,
    /// The sentence each unit belongs to.
    pub sentence: Vec<usize>,
    /// Length of the text.
    pub text_len: usize,
}

impl Units {
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Bytes of unit `i`.
    pub fn span(&self, i: usize) -> Span {
        Span::new(self.starts[i], self.starts.get(i + 1).copied().unwrap_or(self.text_len))
    }

    /// The gap before the first unit that starts at or after byte `offset` (`None` at the ends).
    pub fn gap_at(&self, offset: usize) -> Option<usize> {
        let i = self.starts.partition_point(|&s| s < offset);
        (i >= 1 && i < self.len()).then(|| i - 1)
    }
}

/// Cuts the book into units: one per sentence (starting at its paragraph's start when it opens
/// one; the first at byte 0), and a sentence over `max_tokens` into word pieces (a word over it
/// into character pieces) that each fit. Token counts cover each unit's whole extent.
pub fn units(book: &Book, counter: &dyn TokenCounter, max_tokens: usize) -> Units {
    let text = book.text();
    let sentences = book.sentences();
    let paragraphs = book.paragraphs();
    let mut starts = Vec::with_capacity(sentences.len());
    let mut para = 0;
    let mut prev_end = 0;
    for (i, s) in sentences.iter().enumerate() {
        while para + 1 < paragraphs.len() && paragraphs[para].end <= s.start {
            para += 1;
        }
        let p = paragraphs.get(para).copied().unwrap_or(*s);
        let start = if i == 0 {
            0
        } else if prev_end <= p.start {
            p.start.min(s.start)
        } else {
            s.start
        };
        prev_end = s.end;
        starts.push(start);
    }
    let max_tokens = max_tokens.max(1);
    let mut out =
        Units { starts: Vec::new(), tokens: Vec::new(), sentence: Vec::new(), text_len: 0 };
    out.text_len = text.len();
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        let tokens = counter.count(&text[start..end]);
        if tokens <= max_tokens {
            out.starts.push(start);
            out.tokens.push(tokens);
            out.sentence.push(i);
        } else {
            for (piece_start, piece_tokens) in split_long(text, start, end, counter, max_tokens) {
                out.starts.push(piece_start);
                out.tokens.push(piece_tokens);
                out.sentence.push(i);
            }
        }
    }
    if out.starts.is_empty() && !text.trim().is_empty() {
        // A text with no sentences (never from the indexer, but never panic): one unit.
        out.starts.push(0);
        out.tokens.push(counter.count(text));
        out.sentence.push(0);
    }
    out
}

/// Pieces of `text[start..end]` cut at word starts (and inside over-long words at char
/// boundaries), each at most `max` tokens: (start, tokens).
fn split_long(
    text: &str,
    start: usize,
    end: usize,
    counter: &dyn TokenCounter,
    max: usize,
) -> Vec<(usize, usize)> {
    let slice = &text[start..end];
    let mut word_starts = vec![0];
    let mut prev_ws = false;
    for (i, c) in slice.char_indices() {
        if prev_ws && !c.is_whitespace() {
            word_starts.push(i);
        }
        prev_ws = c.is_whitespace();
    }
    word_starts.push(slice.len());
    let mut pieces = Vec::new();
    let mut w = 0;
    while w + 1 < word_starts.len() {
        // Grow the piece word by word while it fits.
        let from = word_starts[w];
        let mut to_w = w + 1;
        let mut tokens = counter.count(&slice[from..word_starts[to_w]]);
        if tokens > max {
            // One word over the limit: character pieces.
            let word_end = word_starts[to_w];
            let mut pos = from;
            while pos < word_end {
                let mut take = word_end;
                let mut t = counter.count(&slice[pos..take]);
                while t > max {
                    let mut half = pos + (take - pos) / 2;
                    while half > pos && !slice.is_char_boundary(half) {
                        half -= 1;
                    }
                    if half <= pos {
                        let mut one = pos + 1;
                        while one < word_end && !slice.is_char_boundary(one) {
                            one += 1;
                        }
                        take = one;
                        t = counter.count(&slice[pos..take]);
                        break;
                    }
                    take = half;
                    t = counter.count(&slice[pos..take]);
                }
                pieces.push((start + pos, t));
                pos = take;
            }
            w = to_w;
            continue;
        }
        while to_w + 1 < word_starts.len() {
            let next = counter.count(&slice[from..word_starts[to_w + 1]]);
            if next > max {
                break;
            }
            tokens = next;
            to_w += 1;
        }
        pieces.push((start + from, tokens));
        w = to_w;
    }
    pieces
}

/// Feature rows for the gaps of `units` (row `g`: the gap before unit `g + 1`), row-major.
/// `embeddings[s]` is sentence `s`'s embedding (L2-normalized).
pub fn gap_features(
    book: &Book,
    units: &Units,
    embeddings: &[Vec<f32>],
    config: &FeatureConfig,
) -> Vec<f32> {
    let n_gaps = units.len().saturating_sub(1);
    let dim_e = embeddings.first().map_or(0, Vec::len);
    let dim = config.dim(dim_e);
    let mut rows = vec![0f32; n_gaps * dim];
    if n_gaps == 0 {
        return rows;
    }
    let info = SentenceInfo::new(book);
    let n_sent = info.para.len();
    // Prefix sums of embeddings for window means.
    let mut prefix = vec![0f64; (n_sent + 1) * dim_e];
    for s in 0..n_sent {
        for d in 0..dim_e {
            let x = embeddings.get(s).and_then(|e| e.get(d)).copied().unwrap_or(0.0);
            prefix[(s + 1) * dim_e + d] = prefix[s * dim_e + d] + f64::from(x);
        }
    }
    let window = |a: usize, b: usize| -> Vec<f64> {
        // Sum of sentences a..b (exclusive).
        (0..dim_e).map(|d| prefix[b * dim_e + d] - prefix[a * dim_e + d]).collect()
    };
    // Similarity and depth per sentence gap (between sentence a and a + 1), per window size.
    let sentence_gaps = n_sent.saturating_sub(1);
    let mut sims: Vec<Vec<f32>> = Vec::new();
    let mut depths: Vec<Vec<f32>> = Vec::new();
    for &w in &config.windows {
        let w = w.max(1);
        let sim: Vec<f32> = (0..sentence_gaps)
            .map(|a| {
                let left = window((a + 1).saturating_sub(w), a + 1);
                let right = window(a + 1, (a + 1 + w).min(n_sent));
                cosine64(&left, &right)
            })
            .collect();
        depths.push(depth_scores(&sim, 2 * w + 2));
        sims.push(sim);
    }
    let prose = if config.prose {
        let sim: Vec<f32> = (0..sentence_gaps)
            .map(|a| {
                cosine64(
                    &window((a + 1).saturating_sub(24), a + 1),
                    &window(a + 1, (a + 25).min(n_sent)),
                )
            })
            .collect();
        let depth = depth_scores(&sim, 50);
        Some(Prose::new(book, &info, sim, depth))
    } else {
        None
    };
    let n_units = units.len() as f32;
    // Blank lines at each gap, and how rare a run at least that long is among the book's
    // paragraph breaks: layouts differ between books (one blank line between paragraphs and
    // three before a chapter, or two and four), rarity within the book does not.
    let blanks: Vec<usize> = (0..n_gaps)
        .map(|g| {
            let (a, b) = (units.sentence[g], units.sentence[g + 1]);
            if a == b {
                0
            } else {
                blank_lines(book.text(), info.spans[a].end, info.spans[b].start)
            }
        })
        .collect();
    let breaks: Vec<usize> = (0..n_gaps)
        .filter(|&g| {
            let (a, b) = (units.sentence[g], units.sentence[g + 1]);
            a != b && info.para[a] != info.para[b]
        })
        .map(|g| blanks[g])
        .collect();
    let rarity = |blank: usize| -> f32 {
        let at_least = breaks.iter().filter(|&&b| b >= blank).count().max(1);
        let fraction = at_least as f64 / breaks.len().max(1) as f64;
        ((-fraction.ln()).min(8.0) / 8.0) as f32
    };
    let rarity_of: Vec<f32> = {
        let most = breaks.iter().copied().max().unwrap_or(0);
        (0..=most).map(rarity).collect()
    };
    for g in 0..n_gaps {
        let row = &mut rows[g * dim..(g + 1) * dim];
        let (a, b) = (units.sentence[g], units.sentence[g + 1]);
        let mut col = 0;
        let intra = a == b;
        for k in 0..config.windows.len() {
            let (s, d) =
                if intra || a >= sentence_gaps { (1.0, 0.0) } else { (sims[k][a], depths[k][a]) };
            row[col] = s;
            row[col + 1] = d;
            col += 2;
        }
        let para_break = !intra && info.para[a] != info.para[b];
        let blank = blanks[g];
        let blank_rarity =
            if para_break { rarity_of.get(blank).copied().unwrap_or(0.0) } else { 0.0 };
        let heading_next = !intra && info.heading[b] && !info.heading[a];
        let after_heading = !intra && info.heading[a];
        let (qa, qb) = (info.quote[a], info.quote[b]);
        let para_before = if para_break { info.para_tokens[a] } else { 0 };
        let para_after = if para_break { info.para_tokens[b] } else { 0 };
        let layout = [
            f32::from(u8::from(para_break)),
            blank.min(3) as f32 / 3.0,
            blank_rarity,
            f32::from(u8::from(heading_next)),
            f32::from(u8::from(after_heading)),
            f32::from(u8::from(qa)),
            f32::from(u8::from(qb)),
            f32::from(u8::from(!intra && qa != qb)),
            (g + 1) as f32 / n_units,
            (1.0 + para_before as f32).ln() / 8.0,
            (1.0 + para_after as f32).ln() / 8.0,
            f32::from(u8::from(para_break && para_before < 16)),
            (1.0 + info.chars[a] as f32).ln() / 6.0,
            (1.0 + info.chars[b] as f32).ln() / 6.0,
            f32::from(u8::from(intra)),
        ];
        row[col..col + layout.len()].copy_from_slice(&layout);
        col += layout.len();
        if let Some(p) = &prose {
            let values = if intra { p.inside() } else { p.at(a) };
            row[col..col + values.len()].copy_from_slice(&values);
            col += values.len();
        }
        if config.sentence_embeddings && dim_e > 0 {
            for (slot, s) in [(col, a), (col + dim_e, b)] {
                if let Some(e) = embeddings.get(s) {
                    row[slot..slot + dim_e].copy_from_slice(&e[..dim_e.min(e.len())]);
                }
            }
        }
    }
    rows
}

/// Per-sentence facts the features need.
struct SentenceInfo {
    spans: Vec<Span>,
    para: Vec<usize>,
    heading: Vec<bool>,
    quote: Vec<bool>,
    chars: Vec<usize>,
    /// Approximate tokens (words × 4 / 3) of the sentence's paragraph.
    para_tokens: Vec<usize>,
}

impl SentenceInfo {
    fn new(book: &Book) -> SentenceInfo {
        let text = book.text();
        let sentences = book.sentences();
        let paragraphs = book.paragraphs();
        let headings = book.headings();
        let mut info = SentenceInfo {
            spans: sentences.to_vec(),
            para: Vec::with_capacity(sentences.len()),
            heading: Vec::with_capacity(sentences.len()),
            quote: Vec::with_capacity(sentences.len()),
            chars: Vec::with_capacity(sentences.len()),
            para_tokens: Vec::with_capacity(sentences.len()),
        };
        let (mut p, mut h) = (0, 0);
        for s in sentences {
            while p + 1 < paragraphs.len() && paragraphs[p].end <= s.start {
                p += 1;
            }
            while h < headings.len() && headings[h].span.end <= s.start {
                h += 1;
            }
            let is_heading = headings.get(h).is_some_and(|hd| hd.span.start <= s.start);
            let body = s.slice(text);
            info.para.push(p);
            info.heading.push(is_heading);
            info.quote
                .push(body.contains(['"', '\u{201C}', '\u{201D}', '`']) || body.starts_with('\''));
            info.chars.push(body.chars().count());
            let words = paragraphs.get(p).map_or(0, |ps| ps.slice(text).split_whitespace().count());
            info.para_tokens.push(words * 4 / 3);
        }
        info
    }
}

/// What [`PROSE_FEATURES`] need per sentence.
struct Prose {
    /// Lower-cased names per sentence (capitalized words after the sentence's first word).
    names: Vec<Vec<String>>,
    time_cue: Vec<bool>,
    pronoun: Vec<bool>,
    quote: Vec<bool>,
    sim24: Vec<f32>,
    depth24: Vec<f32>,
}

impl Prose {
    fn new(book: &Book, info: &SentenceInfo, sim24: Vec<f32>, depth24: Vec<f32>) -> Prose {
        let text = book.text();
        let mut names = Vec::with_capacity(info.spans.len());
        let mut time_cue = Vec::with_capacity(info.spans.len());
        let mut pronoun = Vec::with_capacity(info.spans.len());
        for s in &info.spans {
            let body = s.slice(text);
            names.push(sentence_names(body));
            let opening = body
                .trim_start_matches(|c: char| !c.is_alphanumeric())
                .chars()
                .take(24)
                .collect::<String>()
                .to_lowercase();
            time_cue.push(TIME_CUES.iter().any(|cue| opening.starts_with(cue)));
            pronoun.push(crate::decompose::oversee::pronoun_before_name(body));
        }
        Prose { names, time_cue, pronoun, quote: info.quote.clone(), sim24, depth24 }
    }

    /// The row at the gap after sentence `a`.
    fn at(&self, a: usize) -> [f32; 8] {
        let n = self.names.len();
        let collect = |from: usize, to: usize| -> std::collections::HashSet<&str> {
            self.names[from.min(n)..to.min(n)].iter().flatten().map(String::as_str).collect()
        };
        let after = collect(a + 1, a + 4);
        let before = collect((a + 1).saturating_sub(20), a + 1);
        let new_after = if after.is_empty() {
            0.0
        } else {
            after.iter().filter(|x| !before.contains(*x)).count() as f32 / after.len() as f32
        };
        let left = collect((a + 1).saturating_sub(8), a + 1);
        let right = collect(a + 1, a + 9);
        let union = left.union(&right).count();
        let overlap =
            if union == 0 { 1.0 } else { left.intersection(&right).count() as f32 / union as f32 };
        let share = |from: usize, to: usize| {
            let (from, to) = (from.min(n), to.min(n));
            if to <= from {
                0.0
            } else {
                self.quote[from..to].iter().filter(|q| **q).count() as f32 / (to - from) as f32
            }
        };
        let (sim, depth) = match (self.sim24.get(a), self.depth24.get(a)) {
            (Some(s), Some(d)) => (*s, *d),
            _ => (1.0, 0.0),
        };
        [
            sim,
            depth,
            new_after,
            overlap,
            f32::from(u8::from(self.time_cue.get(a + 1).copied().unwrap_or(false))),
            share((a + 1).saturating_sub(5), a + 1),
            share(a + 1, a + 6),
            f32::from(u8::from(self.pronoun.get(a + 1).copied().unwrap_or(false))),
        ]
    }

    /// The row of a cut inside a sentence: nothing changes there, and what follows the cut
    /// does not stand on its own.
    fn inside(&self) -> [f32; 8] {
        [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    }
}

/// Capitalized words after a sentence's first word, lower-cased ("I" and words after an
/// opening quote left out): mostly names of people and places.
fn sentence_names(sentence: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, raw) in sentence.split_whitespace().enumerate() {
        // A word opening a quote starts a quoted sentence: capitalized for that reason.
        let opens_quote = raw.starts_with(['"', '\u{201C}', '\'', '\u{2018}']);
        let word: String = raw.chars().filter(|c| c.is_alphabetic()).collect();
        let capital = word.chars().next().is_some_and(char::is_uppercase);
        if i > 0 && !opens_quote && capital && word != "I" && word.chars().count() > 1 {
            out.push(word.to_lowercase());
        }
    }
    out
}

/// Blank lines between two byte offsets (line breaks minus one, at least 0).
fn blank_lines(text: &str, from: usize, to: usize) -> usize {
    let between = text.get(from..to.max(from)).unwrap_or("");
    between.bytes().filter(|&b| b == b'\n').count().saturating_sub(1)
}

fn cosine64(a: &[f64], b: &[f64]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na * nb)) as f32
    }
}

/// TextTiling depth scores: for each point, how far the similarity falls below the highest
/// point within `reach` on its left plus the highest within `reach` on its right.
pub fn depth_scores(sim: &[f32], reach: usize) -> Vec<f32> {
    (0..sim.len())
        .map(|i| {
            let lo = i.saturating_sub(reach);
            let hi = (i + reach + 1).min(sim.len());
            let left = sim[lo..=i].iter().copied().fold(f32::MIN, f32::max);
            let right = sim[i..hi].iter().copied().fold(f32::MIN, f32::max);
            (left - sim[i]) + (right - sim[i])
        })
        .collect()
}

/// How much of a chapter break [`strip_headings`] hides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hide {
    /// The heading and title lines; the blank lines before the heading stay as they were.
    Headings,
    /// The heading and title lines and the blank lines around them: one paragraph break is
    /// left, like any other.
    Layout,
}

impl Hide {
    pub fn as_str(self) -> &'static str {
        match self {
            Hide::Headings => "headings",
            Hide::Layout => "layout",
        }
    }
}

impl std::str::FromStr for Hide {
    type Err = String;

    fn from_str(s: &str) -> Result<Hide, String> {
        match s {
            "headings" => Ok(Hide::Headings),
            "layout" => Ok(Hide::Layout),
            other => Err(format!("`{other}` is not one of: headings, layout")),
        }
    }
}

/// The book with its headings hidden (see the module docs), and the byte offsets in the new
/// text where each hidden heading's section starts (the reference boundaries).
pub fn strip_headings(book: &Book, hide: Hide) -> (Book, Vec<usize>) {
    let text = book.text();
    let paragraphs = book.paragraphs();
    // Ranges to delete: each heading line, plus up to two title lines right under it (short,
    // one line, no lower-case letters), with the whitespace around them.
    // (start, end, line breaks before the heading)
    let mut cuts: Vec<(usize, usize, usize)> = Vec::new();
    for h in book.headings() {
        let mut end = h.span.end;
        let mut p = paragraphs.partition_point(|ps| ps.end <= h.span.start);
        for _ in 0..2 {
            p += 1;
            let Some(next) = paragraphs.get(p) else { break };
            let body = next.slice(text).trim();
            let is_title = !body.contains('\n')
                && body.chars().count() <= 80
                && !body.chars().any(char::is_lowercase)
                && body.chars().any(char::is_alphabetic);
            if !is_title || book.headings().iter().any(|o| o.span.start == next.start) {
                break;
            }
            end = next.end;
        }
        let start = text[..h.span.start].trim_end().len();
        let line_breaks = text[start..h.span.start].matches('\n').count();
        let after = &text[end..];
        let end = end + (after.len() - after.trim_start().len());
        match cuts.last_mut() {
            Some(last) if last.1 >= start => last.1 = last.1.max(end),
            _ => cuts.push((start, end, line_breaks)),
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut boundaries = Vec::new();
    let mut pos = 0;
    for (start, end, line_breaks) in cuts {
        out.push_str(&text[pos..start]);
        let at_start = out.trim().is_empty();
        let at_end = end >= text.len();
        if at_start {
            out.clear();
        } else if at_end {
            out.push('\n');
        } else {
            // Layout: one paragraph break. Headings: as many line breaks as stood before the
            // heading, but at least a paragraph break.
            let wanted = match hide {
                Hide::Layout => 2,
                Hide::Headings => line_breaks.max(2),
            };
            out.push_str(&"\n".repeat(wanted));
            boundaries.push(out.len());
        }
        pos = end;
    }
    out.push_str(&text[pos.min(text.len())..]);
    let stripped = Book::from_text(book.title(), &out);
    if stripped.text() != out {
        // Normalization changed the text (it never should on normalized input): no labels
        // rather than wrong ones.
        return (stripped, Vec::new());
    }
    (stripped, boundaries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decompose::ApproxCounter;

    const BOOK: &str = "CHAPTER I\n\nThe cat sat. It was warm.\n\n\"Hello,\" said the dog.\n\n\n\nCHAPTER II\n\nTHE STORM\n\nRain fell on the town. Nobody went out.\n";

    #[test]
    fn stripping_hides_headings_and_titles() {
        let book = Book::from_text("t", BOOK);
        assert_eq!(book.headings().len(), 2);
        let (stripped, boundaries) = strip_headings(&book, Hide::Layout);
        let text = stripped.text();
        assert!(!text.contains("CHAPTER") && !text.contains("STORM"), "{text:?}");
        assert!(stripped.headings().is_empty());
        assert_eq!(boundaries.len(), 1);
        assert!(text[boundaries[0]..].starts_with("Rain fell"), "{text:?}");
        // No extra blank lines left where the heading was.
        assert!(text[..boundaries[0]].ends_with("said the dog.\n\n"), "{text:?}");
        // Hiding only the headings keeps the blank lines that stood before one.
        let (kept, boundaries) = strip_headings(&book, Hide::Headings);
        let text = kept.text();
        assert!(!text.contains("CHAPTER") && !text.contains("STORM"), "{text:?}");
        assert_eq!(boundaries.len(), 1);
        assert!(text[boundaries[0]..].starts_with("Rain fell"), "{text:?}");
        assert!(text[..boundaries[0]].ends_with("said the dog.\n\n\n\n"), "{text:?}");
        // A heading right under a line still leaves a paragraph break.
        let tight = Book::from_text("t", "One line here.\nCHAPTER II\n\nNext part. More.\n");
        if let [_] = tight.headings() {
            let (kept, boundaries) = strip_headings(&tight, Hide::Headings);
            assert_eq!(kept.text(), "One line here.\n\nNext part. More.\n");
            assert_eq!(boundaries, vec![16]);
        }
    }

    #[test]
    fn units_tile_and_fit() {
        let long = format!("{} end.", "word ".repeat(300));
        let book = Book::from_text("t", format!("Short one. Another here.\n\n{long}\n\nLast."));
        let u = units(&book, &ApproxCounter, 50);
        assert_eq!(u.starts[0], 0);
        assert!(u.starts.windows(2).all(|w| w[0] < w[1]));
        assert!(u.tokens.iter().all(|&t| t <= 50), "{:?}", u.tokens);
        let total: usize =
            (0..u.len()).map(|i| ApproxCounter.count(u.span(i).slice(book.text()))).sum();
        assert_eq!(total, u.tokens.iter().sum::<usize>());
        assert!(u.sentence.windows(2).any(|w| w[0] == w[1]), "the long sentence is split");
        assert_eq!(u.gap_at(u.starts[2]), Some(1));
        assert_eq!(u.gap_at(0), None);
    }

    #[test]
    fn features_hide_headings_in_the_stripped_view() {
        let book = Book::from_text("t", BOOK);
        let config =
            FeatureConfig { windows: vec![1, 2], sentence_embeddings: false, prose: false };
        let names = config.names(4);
        let col = |name: &str| names.iter().position(|n| n == name).unwrap();
        let emb = |n: usize| (0..n).map(|i| vec![1.0, i as f32, 0.0, 0.5]).collect::<Vec<_>>();
        // Visible: the gap before "CHAPTER II" has heading_next.
        let u = units(&book, &ApproxCounter, 600);
        let rows = gap_features(&book, &u, &emb(book.sentences().len()), &config);
        let dim = config.dim(4);
        let heading_gaps: Vec<usize> =
            (0..u.len() - 1).filter(|g| rows[g * dim + col("heading_next")] == 1.0).collect();
        assert_eq!(heading_gaps.len(), 1);
        // Stripped: no gap has a heading or an extra blank line, and the label gap exists.
        let (stripped, boundaries) = strip_headings(&book, Hide::Layout);
        let u = units(&stripped, &ApproxCounter, 600);
        let rows = gap_features(&stripped, &u, &emb(stripped.sentences().len()), &config);
        for g in 0..u.len() - 1 {
            assert_eq!(rows[g * dim + col("heading_next")], 0.0);
            assert_eq!(rows[g * dim + col("after_heading")], 0.0);
            // At most the one blank line of an ordinary paragraph break.
            assert!(rows[g * dim + col("blank_lines")] <= 1.0 / 3.0 + 1e-6, "gap {g}");
        }
        let g = u.gap_at(boundaries[0]).unwrap();
        assert_eq!(rows[g * dim + col("paragraph_break")], 1.0);
        assert!(u.span(g + 1).slice(stripped.text()).starts_with("Rain"));
    }

    #[test]
    fn blank_rarity_is_relative_to_the_book() {
        let config = FeatureConfig { windows: vec![1], sentence_embeddings: false, prose: false };
        let names = config.names(2);
        let col = |name: &str| names.iter().position(|n| n == name).unwrap();
        let dim = config.dim(2);
        // Paragraphs one blank line apart, one break of three: only that one is rare.
        let text = "A b c. D e f.\n\nG h i.\n\nJ k l.\n\n\n\nM n o.\n\nP q r.\n\nS t u.\n";
        let book = Book::from_text("t", text);
        let u = units(&book, &ApproxCounter, 600);
        let emb = vec![vec![1.0, 0.0]; book.sentences().len()];
        let rows = gap_features(&book, &u, &emb, &config);
        let rarity: Vec<f32> =
            (0..u.len() - 1).map(|g| rows[g * dim + col("blank_rarity")]).collect();
        let rare = u.gap_at(text.find("M n o").unwrap()).unwrap();
        assert!(rarity[rare] > 0.2, "{rarity:?}");
        for (g, r) in rarity.iter().enumerate() {
            if g != rare {
                assert!(*r < 0.05, "gap {g}: {rarity:?}");
            }
        }
        // Two blank lines everywhere: no break is rare, however long.
        let wide = text.replace("\n\n", "\n\n\n").replace("\n\n\n\n\n\n", "\n\n\n");
        let book = Book::from_text("t", wide);
        let u = units(&book, &ApproxCounter, 600);
        let rows = gap_features(&book, &u, &emb, &config);
        assert!((0..u.len() - 1).all(|g| rows[g * dim + col("blank_rarity")] < 0.05));
    }

    #[test]
    fn prose_features_see_new_names_time_cues_dialogue_ending_and_pronoun_starts() {
        let config = FeatureConfig { windows: vec![1], sentence_embeddings: false, prose: true };
        let names = config.names(2);
        assert_eq!(config.dim(2), names.len());
        let col = |name: &str| names.iter().position(|n| n == name).unwrap();
        let dim = config.dim(2);
        let text =
            "Then Alice met the Rabbit. Later Alice chased the Rabbit. \"Stop!\" said Alice. \
                    \"No,\" said the Rabbit.\n\nThe next morning the Captain woke in Boston. \
                    Then the Captain walked to Salem. He sat down.\n";
        let book = Book::from_text("t", text);
        let u = units(&book, &ApproxCounter, 600);
        let emb = vec![vec![1.0, 0.0]; book.sentences().len()];
        let rows = gap_features(&book, &u, &emb, &config);
        let at = |g: usize, name: &str| rows[g * dim + col(name)];
        let scene = u.gap_at(text.find("The next morning").unwrap()).unwrap();
        assert_eq!(at(scene, "time_cue_after"), 1.0);
        assert_eq!(at(scene, "names_new_after"), 1.0, "captain, boston, salem are all new");
        assert!(at(scene, "dialogue_before") > 0.4 && at(scene, "dialogue_after") == 0.0);
        let inside = u.gap_at(text.find("Later Alice").unwrap()).unwrap();
        assert_eq!(at(inside, "time_cue_after"), 0.0);
        assert_eq!(at(inside, "names_new_after"), 0.0, "Alice and the Rabbit stay");
        assert!(at(inside, "names_overlap") > at(scene, "names_overlap"));
        let pronoun = u.gap_at(text.find("He sat").unwrap()).unwrap();
        assert_eq!(
            at(pronoun, "pronoun_after"),
            1.0,
            "a leaf starting at \"He sat\" needs context"
        );
        assert_eq!(at(scene, "pronoun_after"), 0.0);
        assert_eq!(sentence_names("\"Stop!\" said Alice to I Rabbit."), vec!["alice", "rabbit"]);
        // Off by default: the built-in model's features are unchanged.
        assert!(!FeatureConfig::default().prose);
        assert!(!FeatureConfig::default().names(4).iter().any(|n| n == "names_new_after"));
    }

    #[test]
    fn depth_finds_valleys() {
        let d = depth_scores(&[0.9, 0.8, 0.2, 0.8, 0.9], 2);
        assert!(d[2] > 1.0 && d[0] == 0.0 && d[4] == 0.0, "{d:?}");
    }
}
