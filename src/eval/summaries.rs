//! Scoring summaries of documents with references.
//!
//! A document becomes a [`Book`] ([`book_of`]: its text, normalized as a file would be); the
//! workspace (`workspace::eval`) decomposes and composes it like `rrm summarize` (same cache),
//! and [`score`] scores the root summary: ROUGE against every reference, the lead baseline of
//! the same length, the length ratio, the reward ensemble's mean on the root (when a model is
//! given), the simulated labeler's score against the whole document, and what in the summary
//! neither the document nor the root's input supports ([`crate::grounding`]).

use std::sync::Arc;

use super::references::Document;
use super::rouge::{score_multi, Tokens};
use super::runs::{DocScores, RootGrounding};
use super::EvalError;
use crate::book::Book;
use crate::compose::{ComposeReport, Observer};
use crate::feedback::sim::SimLabeler;
use crate::reward::RewardSelector;

/// Progress of an evaluation: one call per document, then the composer's own events.
pub trait DocProgress: Send + Sync {
    fn document(&self, _index: usize, _total: usize, _doc: &Document) {}
    fn observer(&self) -> &dyn Observer;
}

/// Ignores progress.
pub struct Quiet;

impl DocProgress for Quiet {
    fn observer(&self) -> &dyn Observer {
        &crate::compose::Silent
    }
}

/// What scores a root summary besides the references.
#[derive(Default, Clone)]
pub struct Scorers {
    /// Scores each root summary with this reward ensemble (mean and std).
    pub reward: Option<Arc<RewardSelector>>,
    /// Scores each summary (and the lead) against the document.
    pub labeler: Option<SimLabeler>,
}

/// The first `n` whitespace-separated words of `text`, joined by single spaces.
pub fn lead(text: &str, n: usize) -> String {
    text.split_whitespace().take(n).collect::<Vec<_>>().join(" ")
}

/// The book a document is summarized as; an error when nothing is left of its text.
pub fn book_of(doc: &Document) -> Result<Book, EvalError> {
    let book = Book::from_text(doc.id.clone(), &doc.text);
    if book.text().trim().is_empty() {
        return Err(EvalError::Document {
            id: doc.id.clone(),
            what: "the text is empty after normalization".into(),
        });
    }
    Ok(book)
}

/// Scores the composed root of `doc`. `root` is the root's height and input text as the
/// composer gave it to the model (what the reward ensemble scores it against).
pub fn score(
    doc: &Document,
    book: &Book,
    report: &ComposeReport,
    root: (u32, &str),
    scorers: &Scorers,
) -> Result<DocScores, EvalError> {
    if !report.complete {
        return Err(EvalError::Document {
            id: doc.id.clone(),
            what: "composition stopped below the root".into(),
        });
    }
    let summary = report.root_summary.trim().to_string();
    let summary_words = summary.split_whitespace().count();
    let lead_text = lead(book.text(), summary_words);
    let refs: Vec<Tokens> = doc.references.iter().map(|r| Tokens::new(r)).collect();
    let reference_words = doc.references.iter().map(|r| r.split_whitespace().count()).sum::<usize>()
        as f64
        / doc.references.len().max(1) as f64;
    let (reward, reward_std) = match &scorers.reward {
        Some(scorer) => {
            let stats = scorer.mean_std(root.0, root.1, &[summary.as_str()])?;
            let (m, s) = stats.first().copied().unwrap_or((f32::NAN, f32::NAN));
            (Some(f64::from(m)), Some(f64::from(s)))
        }
        None => (None, None),
    };
    let labeler = scorers.labeler.as_ref().map(|l| l.score(book.text(), &summary));
    let labeler_lead = scorers.labeler.as_ref().map(|l| l.score(book.text(), &lead_text));
    let grounding = RootGrounding::new(book.text(), root.1, &summary);
    Ok(DocScores {
        id: doc.id.clone(),
        book_id: book.id().to_string(),
        document_words: book.word_count(),
        summary_words,
        references: doc.references.len(),
        reference_words,
        rouge: score_multi(&refs, &summary),
        lead: score_multi(&refs, &lead_text),
        length_ratio: if reference_words > 0.0 {
            summary_words as f64 / reference_words
        } else {
            0.0
        },
        summary,
        reward,
        reward_std,
        labeler,
        labeler_lead,
        grounding: Some(grounding),
        nodes: report.nodes_total,
        computed: report.computed,
        tokens_generated: report.tokens_generated,
        run_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_takes_whitespace_words() {
        assert_eq!(lead("  One two\nthree   four ", 3), "One two three");
        assert_eq!(lead("a b", 5), "a b");
        assert_eq!(lead("a b", 0), "");
    }
}
