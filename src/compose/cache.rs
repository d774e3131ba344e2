//! The node cache as a whole: statistics and garbage collection.
//!
//! What is kept (live):
//! - every output named by any run record ([`RunRecord`]) of a live book (all runs, not only the
//!   newest; interrupted runs too, since their records are written as nodes finish), and the
//!   candidate sets those outputs were picked from;
//! - every candidate set drawn for rating ([`CandidateOrigin::Sample`]), and every set no output
//!   has ever pointed at (a sample stored before sets recorded their origin);
//! - every candidate set of a node that feedback refers to (by input key), whatever its origin,
//!   so a rating never points at texts that no longer exist.
//!
//! Which books are live is the caller's decision ([`GcPolicy`]): the workspace says a book is
//! dead only when its file now holds a different text, or — with an explicit flag — when its file
//! is missing or unreadable. Everything else in the outputs and candidates tables is garbage:
//! results of runs of dead books whose candidates nobody rated.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{CandidateOrigin, CandidateSet, NodeOutput, RunRecord};
use crate::store::{Store, StoreError, Table};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    pub outputs: usize,
    pub candidate_sets: usize,
    /// Candidate sets drawn for rating.
    pub sample_sets: usize,
    pub runs: usize,
    /// Runs whose record says they did not finish (interrupted, or still running).
    pub incomplete_runs: usize,
    /// Outputs referenced by a run of a live book.
    pub live_outputs: usize,
    pub books: usize,
    pub task_trees: usize,
    /// Sentence and summary embeddings (keyed by encoder and text; shared by every book).
    pub embeddings: usize,
    /// Records moved aside by `rrm db check --repair`.
    pub quarantined: usize,
    pub bytes_on_disk: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GcReport {
    pub outputs_removed: usize,
    pub candidate_sets_removed: usize,
    pub runs_removed: usize,
    pub outputs_kept: usize,
    pub candidate_sets_kept: usize,
    /// Candidate sets kept only because feedback refers to their node.
    pub kept_for_feedback: usize,
    /// Candidate sets kept because they were drawn for rating.
    pub kept_samples: usize,
}

/// Which books' runs are live: decided by the caller (it knows the files).
pub struct GcPolicy<'a> {
    pub is_live_book: &'a dyn Fn(&str) -> bool,
    /// Input keys that feedback refers to.
    pub feedback_inputs: HashSet<String>,
}

/// What the live runs keep, and the dead runs' keys.
struct Live {
    outputs: HashSet<String>,
    gens: HashSet<String>,
    dead_runs: Vec<String>,
}

fn live(store: &Store, policy: &GcPolicy<'_>) -> Result<Live, StoreError> {
    let mut live = Live { outputs: HashSet::new(), gens: HashSet::new(), dead_runs: Vec::new() };
    for run in RunRecord::all(store)? {
        if !(policy.is_live_book)(&run.book_id) {
            live.dead_runs.push(run.key());
            continue;
        }
        for key in run.outputs.values() {
            if let Some(out) = store.get::<NodeOutput>(Table::Outputs, key)? {
                live.gens.insert(out.gen_key);
            }
            live.outputs.insert(key.clone());
        }
    }
    Ok(live)
}

pub fn stats(store: &Store, policy: &GcPolicy<'_>) -> Result<CacheStats, StoreError> {
    let live = live(store, policy)?;
    let runs = RunRecord::all(store)?;
    let sets = store.scan_lenient::<CandidateSet>(Table::Candidates, "")?;
    Ok(CacheStats {
        outputs: store.len(Table::Outputs)?,
        candidate_sets: store.len(Table::Candidates)?,
        sample_sets: sets.iter().filter(|(_, s)| s.origin == CandidateOrigin::Sample).count(),
        runs: runs.len(),
        incomplete_runs: runs.iter().filter(|r| !r.complete).count(),
        live_outputs: live.outputs.len(),
        books: store.len(Table::Books)?,
        task_trees: store.len(Table::TaskTrees)?,
        embeddings: store.len(Table::Embeddings)?,
        quarantined: store.len(Table::Quarantine)?,
        bytes_on_disk: store.size_on_disk()?,
    })
}

/// Removes every output no live run references, the runs of dead books, and the candidate sets
/// nothing keeps (see the module docs). With `dry_run`, only counts.
pub fn gc(store: &Store, policy: &GcPolicy<'_>, dry_run: bool) -> Result<GcReport, StoreError> {
    let live = live(store, policy)?;
    let mut report = GcReport::default();
    // Generation keys any output points at (before anything is removed): a set no output ever
    // pointed at was drawn for rating.
    let mut picked_from: HashSet<String> = HashSet::new();
    let mut dead_outputs = Vec::new();
    for (key, out) in store.scan_lenient::<NodeOutput>(Table::Outputs, "")? {
        picked_from.insert(out.gen_key);
        if live.outputs.contains(&key) {
            report.outputs_kept += 1;
        } else {
            dead_outputs.push(key);
        }
    }
    let mut dead_sets = Vec::new();
    for (key, set) in store.scan_lenient::<CandidateSet>(Table::Candidates, "")? {
        if live.gens.contains(&key) {
            report.candidate_sets_kept += 1;
        } else if set.origin == CandidateOrigin::Sample || !picked_from.contains(&key) {
            report.candidate_sets_kept += 1;
            report.kept_samples += 1;
        } else if policy.feedback_inputs.contains(&set.input_key) {
            report.candidate_sets_kept += 1;
            report.kept_for_feedback += 1;
        } else {
            dead_sets.push(key);
        }
    }
    report.outputs_removed = dead_outputs.len();
    report.candidate_sets_removed = dead_sets.len();
    report.runs_removed = live.dead_runs.len();
    if !dry_run {
        // Runs first: an interrupted gc never leaves a run pointing at removed outputs.
        for key in &live.dead_runs {
            store.remove(Table::Meta, key)?;
        }
        store.flush()?;
        for key in &dead_outputs {
            store.remove(Table::Outputs, key)?;
        }
        for key in &dead_sets {
            store.remove(Table::Candidates, key)?;
        }
        store.flush()?;
    }
    Ok(report)
}
