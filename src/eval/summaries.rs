//! Summarizing documents with references and scoring the summaries.
//!
//! Each document becomes a [`Book`] (from its text, normalized as a file would be), is split
//! by the given [`Decomposer`] and composed by the ordinary [`Composer`] with the given
//! generator, selector and options: the same content-addressed cache as `rrm summarize`, so a
//! document summarized before (by either command, with the same settings) costs nothing. The
//! root summary is then scored: ROUGE against every reference, the lead baseline of the same
//! length, the length ratio, the reward ensemble's mean on the root (when a model is given)
//! and the simulated labeler's score against the whole document.
//!
//! This repeats a few lines of `rrm summarize`'s orchestration (decompose, record the book
//! and tree, compose); they belong in one library function once the workspace module exists.

use std::path::PathBuf;
use std::sync::Arc;

use super::references::Document;
use super::rouge::{score_multi, Tokens};
use super::runs::DocScores;
use super::EvalError;
use crate::book::Book;
use crate::compose::{ComposeOptions, Composer, Observer, RunRecord, Selector};
use crate::decompose::Decomposer;
use crate::feedback::sim::SimLabeler;
use crate::infer::Generator;
use crate::reward::RewardSelector;
use crate::store::{Store, Table};
use crate::tree::TreeRecord;

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

/// What summarizes and scores the documents.
pub struct Harness<'a> {
    pub generator: Arc<dyn Generator>,
    pub selector: Arc<dyn Selector>,
    pub store: Store,
    pub options: ComposeOptions,
    pub decomposer: &'a dyn Decomposer,
    /// Where to write each document's task tree (as `rrm decompose` does), if anywhere.
    pub trees_dir: Option<PathBuf>,
    /// Scores each root summary with this reward ensemble (mean and std).
    pub scorer: Option<Arc<RewardSelector>>,
    /// Scores each summary (and the lead) against the document.
    pub labeler: Option<SimLabeler>,
}

/// The first `n` whitespace-separated words of `text`, joined by single spaces.
pub fn lead(text: &str, n: usize) -> String {
    text.split_whitespace().take(n).collect::<Vec<_>>().join(" ")
}

impl Harness<'_> {
    /// Summarizes and scores every document, in order. Fails on the first document that
    /// fails (outputs composed so far stay cached).
    pub async fn run(
        &self,
        docs: &[Document],
        progress: &dyn DocProgress,
    ) -> Result<Vec<DocScores>, EvalError> {
        let mut out = Vec::with_capacity(docs.len());
        for (i, doc) in docs.iter().enumerate() {
            progress.document(i, docs.len(), doc);
            out.push(self.one(doc, progress.observer()).await?);
        }
        Ok(out)
    }

    async fn one(&self, doc: &Document, observer: &dyn Observer) -> Result<DocScores, EvalError> {
        let fail = |what: String| EvalError::Document { id: doc.id.clone(), what };
        let book = Book::from_text(doc.id.clone(), &doc.text);
        if book.text().trim().is_empty() {
            return Err(fail("the text is empty after normalization".into()));
        }
        let tree = self.decomposer.decompose(&book)?;
        let path = match &self.trees_dir {
            Some(dir) => Some(tree.save(dir)?),
            None => None,
        };
        self.store.put(Table::Books, book.id().as_str(), &book.record())?;
        self.store.put(Table::TaskTrees, book.id().as_str(), &TreeRecord::new(&tree, path))?;
        let composer = Composer::new(
            Arc::clone(&self.generator),
            Arc::clone(&self.selector),
            self.store.clone(),
            self.options.clone(),
        );
        let report = composer.compose(&book, &tree, observer).await?;
        if !report.complete {
            return Err(fail("composition stopped below the root".into()));
        }
        let summary = report.root_summary.trim().to_string();
        let summary_words = summary.split_whitespace().count();
        let lead_text = lead(book.text(), summary_words);
        let refs: Vec<Tokens> = doc.references.iter().map(|r| Tokens::new(r)).collect();
        let reference_words =
            doc.references.iter().map(|r| r.split_whitespace().count()).sum::<usize>() as f64
                / doc.references.len().max(1) as f64;
        let (reward, reward_std) = match &self.scorer {
            Some(scorer) => {
                let (height, input) = self.root_input(&book, &tree)?;
                let stats = scorer.mean_std(height, &input, &[summary.as_str()])?;
                let (m, s) = stats.first().copied().unwrap_or((f32::NAN, f32::NAN));
                (Some(f64::from(m)), Some(f64::from(s)))
            }
            None => (None, None),
        };
        let labeler = self.labeler.as_ref().map(|l| l.score(book.text(), &summary));
        let labeler_lead = self.labeler.as_ref().map(|l| l.score(book.text(), &lead_text));
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
            nodes: report.nodes_total,
            computed: report.computed,
            tokens_generated: report.tokens_generated,
        })
    }

    /// The root's height and input text, as the composer gave it to the model.
    fn root_input(
        &self,
        book: &Book,
        tree: &crate::tree::TaskTree,
    ) -> Result<(u32, String), EvalError> {
        let missing =
            |what: &str| EvalError::Document { id: book.title().into(), what: what.into() };
        let run = RunRecord::load(&self.store, book.id().as_str())?
            .ok_or_else(|| missing("no run record after composing"))?;
        let label = &tree.node(tree.root()).label;
        let (_, set) = run
            .node_result(&self.store, label)?
            .ok_or_else(|| missing("the root has no stored output"))?;
        let set = set.ok_or_else(|| missing("the root's candidates are not stored"))?;
        Ok((set.height, set.input))
    }
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
