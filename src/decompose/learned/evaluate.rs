//! Evaluating decomposers against books' hidden chapter structure: the tree-parent protocol
//! ([`evaluate`]), the count-matched one ([`evaluate_count`]), and averages over books
//! ([`means`]) that leave out undefined scores and say how many.

use serde::{Deserialize, Serialize};

use super::{eval, strip_headings, Hide, LearnedDecomposer};
use crate::book::Book;
use crate::decompose::oversee;
use crate::decompose::{DecomposeError, Decomposer};

/// One decomposer's result on one book.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    pub book: String,
    pub method: String,
    /// Sentences of the book with headings hidden (the units Pk counts in).
    pub sentences: usize,
    pub reference_boundaries: usize,
    pub hypothesis_boundaries: usize,
    pub k: usize,
    /// Pk; `None` when undefined (the book is shorter than one window).
    pub pk: Option<f64>,
    /// WindowDiff; `None` when undefined.
    pub window_diff: Option<f64>,
    pub leaves: usize,
    /// Leaves whose tokens lie within the decomposer's limits.
    pub leaves_within_limits: usize,
    /// Overseeability of the leaves ([`oversee`]): shares of self-contained starts, of leaves
    /// ending at a paragraph and at a scene boundary (`None` for rows without leaves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_contained_starts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paragraph_ends: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scene_ends: Option<f64>,
    /// Median milliseconds people took to judge this decomposer's segmentations, where stored
    /// decomposition comparisons say (filled in by the caller, which reads the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_judge_ms: Option<f64>,
}

/// Decomposes each book with its headings hidden by every decomposer in `methods`, and scores
/// the boundaries of the parents just above the leaves against the hidden chapter starts
/// (Pk and WindowDiff over sentences). `limits` gives each method's leaf token range. A book
/// without headings has nothing to compare against: its rows give Pk and WindowDiff as `None`
/// and only the leaves' overseeability.
pub fn evaluate(
    name: &str,
    book: &Book,
    hide: Hide,
    methods: &[(&str, &dyn Decomposer, (usize, usize))],
) -> Result<Vec<EvalRow>, DecomposeError> {
    let held = HeldOut::new(book, hide).unwrap_or_else(|| HeldOut::unlabelled(book));
    let mut out = Vec::new();
    for (method, decomposer, (min, max)) in methods {
        let tree = decomposer.decompose(&held.book)?;
        let hypothesis: Vec<usize> = if tree.max_height() >= 2 {
            tree.level(1)
                .iter()
                .skip(1)
                .map(|&id| held.sentence_at(tree.node(id).covers.start))
                .collect()
        } else {
            Vec::new()
        };
        let leaves = tree.leaves().len();
        let within = tree
            .leaves()
            .iter()
            .filter(|&&l| {
                let t = tree.node(l).input_tokens;
                t <= *max && (t >= *min || leaves == 1)
            })
            .count();
        let spans: Vec<_> = tree
            .leaves()
            .iter()
            .filter_map(|&l| tree.node(l).span().map(|s| (s, tree.node(l).input_tokens)))
            .collect();
        let o = oversee::summarize(&oversee::check_leaves(&held.book, &spans, (*min, *max)), &[]);
        let mut row = held.row(name, method.to_string(), hypothesis, leaves, within);
        row.self_contained_starts = o.self_contained_starts;
        row.paragraph_ends = o.paragraph_ends;
        row.scene_ends = o.scene_ends;
        out.push(row);
    }
    Ok(out)
}

/// The count-matched protocol: every method places exactly as many boundaries as the book has
/// hidden chapter starts (the oracle count), so only where they fall is compared. Fixed
/// chunking spaces them evenly by bytes; a scorer takes its highest-scoring sentence gaps,
/// greedily, at least `k` sentences apart. Rows are named `METHOD@K`.
pub fn evaluate_count(
    name: &str,
    book: &Book,
    hide: Hide,
    scorers: &[(&str, &LearnedDecomposer)],
) -> Result<Vec<EvalRow>, DecomposeError> {
    let Some(held) = HeldOut::new(book, hide) else { return Ok(Vec::new()) };
    let count = held.reference.len();
    let len = held.book.text().len();
    let k = held.k;
    let sorted = |mut h: Vec<usize>| {
        h.sort_unstable();
        h
    };
    let even: Vec<usize> = (1..=count).map(|i| held.sentence_at(i * len / (count + 1))).collect();
    let mut rows = vec![held.row(name, "fixed@K".into(), sorted(even), 0, 0)];
    for (method, decomposer) in scorers {
        let (units, scores) = decomposer.gap_scores(&held.book)?;
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let mut chosen: Vec<usize> = Vec::with_capacity(count);
        for g in order {
            if chosen.len() == count {
                break;
            }
            let s = units.sentence[g + 1];
            if units.sentence[g] == s || chosen.iter().any(|&c| c.abs_diff(s) < k) {
                continue;
            }
            chosen.push(s);
        }
        rows.push(held.row(name, format!("{method}@K"), sorted(chosen), 0, 0));
    }
    Ok(rows)
}

/// A book with its headings hidden, the sentences where its chapters start (the reference),
/// and the Pk window `k`: what both evaluation protocols compare against.
struct HeldOut {
    book: Book,
    reference: Vec<usize>,
    k: usize,
}

impl HeldOut {
    /// `None` for a book without headings (nothing to compare against).
    fn new(book: &Book, hide: Hide) -> Option<HeldOut> {
        let (book, refs) = strip_headings(book, hide);
        if refs.is_empty() {
            return None;
        }
        let mut held = HeldOut { book, reference: Vec::new(), k: 0 };
        held.reference = refs.iter().map(|&r| held.sentence_at(r)).collect();
        held.k = eval::default_k(held.book.sentences().len(), &held.reference);
        Some(held)
    }

    /// A book without chapter structure: no reference, so no Pk.
    fn unlabelled(book: &Book) -> HeldOut {
        HeldOut { book: book.clone(), reference: Vec::new(), k: 0 }
    }

    /// The index of the sentence that starts at or after byte `offset`.
    fn sentence_at(&self, offset: usize) -> usize {
        self.book.sentences().partition_point(|s| s.start < offset)
    }

    fn row(
        &self,
        name: &str,
        method: String,
        hypothesis: Vec<usize>,
        leaves: usize,
        leaves_within_limits: usize,
    ) -> EvalRow {
        let n = self.book.sentences().len();
        EvalRow {
            book: name.to_string(),
            method,
            sentences: n,
            reference_boundaries: self.reference.len(),
            hypothesis_boundaries: hypothesis.len(),
            k: self.k,
            pk: (!self.reference.is_empty())
                .then(|| eval::pk(n, &self.reference, &hypothesis, self.k))
                .flatten(),
            window_diff: (!self.reference.is_empty())
                .then(|| eval::window_diff(n, &self.reference, &hypothesis, self.k))
                .flatten(),
            leaves,
            leaves_within_limits,
            self_contained_starts: None,
            paragraph_ends: None,
            scene_ends: None,
            median_judge_ms: None,
        }
    }
}

/// The mean row of each method over books (`book` = "MEAN"). Books whose Pk or WindowDiff is
/// undefined are left out of that mean (and counted in `undefined`), never averaged in as 0.
pub fn means(rows: &[EvalRow], methods: &[&str]) -> Vec<(EvalRow, usize)> {
    methods
        .iter()
        .filter_map(|method| {
            let mine: Vec<&EvalRow> = rows.iter().filter(|r| r.method == *method).collect();
            if mine.is_empty() {
                return None;
            }
            let mean = |get: &dyn Fn(&EvalRow) -> Option<f64>| {
                let vals: Vec<f64> = mine.iter().filter_map(|r| get(r)).collect();
                (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
            };
            let undefined = mine.iter().filter(|r| r.pk.is_none()).count();
            Some((
                EvalRow {
                    book: "MEAN".into(),
                    method: method.to_string(),
                    sentences: mine.iter().map(|r| r.sentences).sum(),
                    reference_boundaries: mine.iter().map(|r| r.reference_boundaries).sum(),
                    hypothesis_boundaries: mine.iter().map(|r| r.hypothesis_boundaries).sum(),
                    k: 0,
                    pk: mean(&|r| r.pk),
                    window_diff: mean(&|r| r.window_diff),
                    leaves: mine.iter().map(|r| r.leaves).sum(),
                    leaves_within_limits: mine.iter().map(|r| r.leaves_within_limits).sum(),
                    self_contained_starts: mean(&|r| r.self_contained_starts),
                    paragraph_ends: mean(&|r| r.paragraph_ends),
                    scene_ends: mean(&|r| r.scene_ends),
                    median_judge_ms: mine.iter().find_map(|r| r.median_judge_ms),
                },
                undefined,
            ))
        })
        .collect()
}
