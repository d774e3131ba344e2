//! What the composer stores: candidate sets (by generation or sample key), chosen outputs (by
//! output key), and run records (one per composition of a book, updated as nodes finish).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::keys::hash_parts;
use super::select::CandidateScore;
use super::ComposeOptions;
use crate::infer::{FinishReason, ModelIdentity, SamplingParams};
use crate::store::{Store, StoreError, Table};
use crate::tree::TaskTree;

/// One generated candidate summary of a node, after post-processing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The summary as stored and shown (trimmed, loop cut).
    pub text: String,
    /// The model's raw completion.
    pub raw_text: String,
    pub completion_tokens: usize,
    pub mean_logprob: Option<f32>,
    pub sum_logprob: Option<f32>,
    pub finish: FinishReason,
    /// The raw completion looped and was cut.
    pub looped: bool,
    pub seed: u64,
}

#[cfg(test)]
impl Candidate {
    /// A finished candidate with only its text (selector tests).
    pub(crate) fn of_text(text: &str) -> Candidate {
        Candidate {
            text: text.into(),
            raw_text: text.into(),
            completion_tokens: 0,
            mean_logprob: None,
            sum_logprob: None,
            finish: FinishReason::Stop,
            looped: false,
            seed: 0,
        }
    }
}

/// All candidates of a node, stored under its generation key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateSet {
    pub gen_key: String,
    /// What the node summarizes, independent of model and sampling ([`input_key`]): feedback
    /// and reward models key on this.
    pub input_key: String,
    pub height: u32,
    /// The text the node summarizes (a passage, or its children's summaries joined).
    pub input: String,
    /// Previous context shown before the input, if any.
    pub context: Option<String>,
    pub model: ModelIdentity,
    pub template: String,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub prompt_tokens: usize,
    pub candidates: Vec<Candidate>,
    pub elapsed_ms: u64,
    pub created_unix: u64,
    /// Who made the set: the composer (best-of-N of a run) or a draw for rating. Sets drawn for
    /// rating are never garbage-collected.
    #[serde(default)]
    pub origin: CandidateOrigin,
}

/// Who made a candidate set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CandidateOrigin {
    /// A composer run (keyed by a generation key).
    #[default]
    Compose,
    /// Drawn for rating (`rrm node sample`, `rrm rate`, the web app), keyed by a sample key.
    Sample,
}

/// The chosen output of a node, stored under its output key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeOutput {
    pub output_key: String,
    pub gen_key: String,
    pub input_key: String,
    pub text: String,
    pub chosen: usize,
    pub selector: String,
    /// One score per candidate when the selector ranked them; empty when there was only one
    /// candidate (nothing to rank).
    pub scores: Vec<CandidateScore>,
}

/// One composition of a book: which output (by key) each node of the tree got, under which model,
/// selector and options. Every run is kept (`run/<book-id>/<run-id>` in [`Table::Meta`]); a run
/// record is written as soon as its first node is stored and rewritten as nodes finish, so an
/// interrupted run's outputs stay reachable (and protected from garbage collection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// `<started unix seconds, 10 digits>.<nanoseconds, 9 digits>-<8 hex of the settings>`:
    /// sorts by start time, also between runs started in the same second (a cached re-run takes
    /// milliseconds). Older records have no `.<nanoseconds>` and sort first within their second.
    #[serde(default)]
    pub run_id: String,
    pub book_id: String,
    /// The model of every node, except at the levels in `models_at`.
    pub model: ModelIdentity,
    /// Level (`root`, or a height) → the model that ran there instead (`compose::Models`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models_at: BTreeMap<String, ModelIdentity>,
    pub selector: String,
    pub options: ComposeOptions,
    /// Node label → output key, for every node stored so far.
    pub outputs: BTreeMap<String, String>,
    pub root_label: String,
    /// The content hash of the tree's root (covers every leaf and the grouping): outputs are
    /// attached to a tree only when it is the tree this run composed.
    pub tree_hash: String,
    #[serde(default)]
    pub started_unix: u64,
    #[serde(default)]
    pub updated_unix: u64,
    /// Every node up to the height limit has an output (false while running, or when killed).
    #[serde(default)]
    pub complete: bool,
    /// When the run finished (0 while running or if it never did).
    pub finished_unix: u64,
}

/// The key prefix of run records in [`Table::Meta`].
pub const RUN_PREFIX: &str = "run/";

impl RunRecord {
    /// A new, empty run of `tree` by `models` starting now.
    pub fn start(
        tree: &TaskTree,
        models: &super::Models,
        selector: String,
        options: ComposeOptions,
        started: std::time::SystemTime,
    ) -> RunRecord {
        let since = started.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let started_unix = since.as_secs();
        let model = models.default_model().identity().clone();
        let models_at = models.identities_at();
        let options_json = serde_json::to_string(&options).unwrap_or_default();
        let mut parts = vec![
            model.hash.clone(),
            selector.clone(),
            options_json,
            tree.node(tree.root()).content_hash.clone(),
        ];
        // Only a run with per-level models adds them (a one-model run's id is as before).
        parts.extend(models_at.iter().map(|(level, m)| format!("{level}={}", m.hash)));
        let settings = hash_parts(&parts.iter().map(String::as_str).collect::<Vec<_>>());
        RunRecord {
            run_id: format!("{started_unix:010}.{:09}-{}", since.subsec_nanos(), &settings[..8]),
            book_id: tree.book_id().to_string(),
            model,
            models_at,
            selector,
            options,
            outputs: BTreeMap::new(),
            root_label: tree.node(tree.root()).label.clone(),
            tree_hash: tree.node(tree.root()).content_hash.clone(),
            started_unix,
            updated_unix: started_unix,
            complete: false,
            finished_unix: 0,
        }
    }

    /// This record's key in [`Table::Meta`].
    pub fn key(&self) -> String {
        format!("{RUN_PREFIX}{}/{}", self.book_id, self.run_id)
    }

    /// The key prefix of every run of a book.
    pub fn book_prefix(book_id: &str) -> String {
        format!("{RUN_PREFIX}{book_id}/")
    }

    /// Whether `other` is the same composition (same tree, model, selector, options) with the
    /// same outputs: a re-run that found everything cached is not recorded twice.
    pub fn same_result(&self, other: &RunRecord) -> bool {
        self.book_id == other.book_id
            && self.tree_hash == other.tree_hash
            && self.model == other.model
            && self.models_at == other.models_at
            && self.selector == other.selector
            && self.options == other.options
            && self.outputs == other.outputs
            && self.complete == other.complete
    }

    /// Every run record in the store, oldest first (an unreadable record is reported and
    /// skipped).
    pub fn all(store: &Store) -> Result<Vec<RunRecord>, StoreError> {
        let mut runs: Vec<RunRecord> = store
            .scan_lenient::<RunRecord>(Table::Meta, RUN_PREFIX)?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        runs.sort_by(|a, b| (a.started_unix, &a.run_id).cmp(&(b.started_unix, &b.run_id)));
        Ok(runs)
    }

    /// The runs of book `book_id`, oldest first.
    pub fn for_book(store: &Store, book_id: &str) -> Result<Vec<RunRecord>, StoreError> {
        let mut runs: Vec<RunRecord> = store
            .scan_lenient::<RunRecord>(Table::Meta, &Self::book_prefix(book_id))?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        runs.sort_by(|a, b| (a.started_unix, &a.run_id).cmp(&(b.started_unix, &b.run_id)));
        Ok(runs)
    }

    /// The newest run of this very tree that stored at least one output.
    pub fn latest_for_tree(
        store: &Store,
        tree: &TaskTree,
    ) -> Result<Option<RunRecord>, StoreError> {
        Ok(Self::for_book(store, tree.book_id().as_str())?
            .into_iter()
            .rev()
            .find(|r| r.matches(tree) && !r.outputs.is_empty()))
    }

    /// Whether this run composed `tree` (same root content hash).
    pub fn matches(&self, tree: &TaskTree) -> bool {
        tree.node(tree.root()).content_hash == self.tree_hash
    }

    /// The stored result of node `label`: its chosen output and all its candidates.
    pub fn node_result(
        &self,
        store: &Store,
        label: &str,
    ) -> Result<Option<(NodeOutput, Option<CandidateSet>)>, StoreError> {
        let Some(key) = self.outputs.get(label) else { return Ok(None) };
        let Some(output) = store.get::<NodeOutput>(Table::Outputs, key)? else { return Ok(None) };
        let candidates = store.get::<CandidateSet>(Table::Candidates, &output.gen_key)?;
        Ok(Some((output, candidates)))
    }

    /// Fills the output slot of every node of `tree` this run has a stored output for, if the
    /// tree is the one this run composed. Returns how many nodes got an output.
    pub fn attach(&self, store: &Store, tree: &mut TaskTree) -> Result<usize, StoreError> {
        if !self.matches(tree) {
            return Ok(0);
        }
        let mut attached = 0;
        for id in tree.nodes_topological() {
            let label = tree.node(id).label.clone();
            if let Some(key) = self.outputs.get(&label) {
                if let Some(out) = store.get::<NodeOutput>(Table::Outputs, key)? {
                    tree.set_output(id, Some(out.text));
                    attached += 1;
                }
            }
        }
        Ok(attached)
    }
}
