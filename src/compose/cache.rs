//! The node cache as a whole: statistics and garbage collection.
//!
//! What is live: the outputs named by a run record ([`RunRecord`]) of a book that is still
//! current (its task tree is stored and the caller says the book is live: e.g. its file still
//! has that content), and the candidate sets those outputs were picked from. Everything else in the
//! outputs and candidates tables is garbage: results of earlier parameters, edited books, or
//! trees since rebuilt.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{NodeOutput, RunRecord};
use crate::store::{Store, StoreError, Table};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    pub outputs: usize,
    pub candidate_sets: usize,
    pub runs: usize,
    /// Outputs referenced by a live run.
    pub live_outputs: usize,
    pub books: usize,
    pub task_trees: usize,
    /// Sentence and summary embeddings (keyed by encoder and text; shared by every book).
    pub embeddings: usize,
    pub bytes_on_disk: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GcReport {
    pub outputs_removed: usize,
    pub candidate_sets_removed: usize,
    pub runs_removed: usize,
    pub outputs_kept: usize,
    pub candidate_sets_kept: usize,
}

/// Output keys and generation keys that live runs reference; and the runs that are dead.
type Live = (HashSet<String>, HashSet<String>, Vec<String>);

fn live(store: &Store, is_live_book: &dyn Fn(&str) -> bool) -> Result<Live, StoreError> {
    let mut outputs = HashSet::new();
    let mut gens = HashSet::new();
    let mut dead_runs = Vec::new();
    for run in RunRecord::all(store)? {
        if !store.contains(Table::TaskTrees, &run.book_id)? || !is_live_book(&run.book_id) {
            dead_runs.push(RunRecord::meta_key(&run.book_id));
            continue;
        }
        for key in run.outputs.values() {
            if let Some(out) = store.get::<NodeOutput>(Table::Outputs, key)? {
                gens.insert(out.gen_key);
            }
            outputs.insert(key.clone());
        }
    }
    Ok((outputs, gens, dead_runs))
}

pub fn stats(store: &Store, is_live_book: &dyn Fn(&str) -> bool) -> Result<CacheStats, StoreError> {
    let (live_outputs, _, _) = live(store, is_live_book)?;
    Ok(CacheStats {
        outputs: store.len(Table::Outputs)?,
        candidate_sets: store.len(Table::Candidates)?,
        runs: store.scan_keys(Table::Meta, "run/")?.len(),
        live_outputs: live_outputs.len(),
        books: store.len(Table::Books)?,
        task_trees: store.len(Table::TaskTrees)?,
        embeddings: store.len(Table::Embeddings)?,
        bytes_on_disk: store.size_on_disk()?,
    })
}

/// Removes every output and candidate set no live run references, and the runs of books that
/// are no longer live. With `dry_run`, only counts.
pub fn gc(
    store: &Store,
    is_live_book: &dyn Fn(&str) -> bool,
    dry_run: bool,
) -> Result<GcReport, StoreError> {
    let (outputs, gens, dead_runs) = live(store, is_live_book)?;
    let mut report = GcReport::default();
    for key in store.keys(Table::Outputs)? {
        if outputs.contains(&key) {
            report.outputs_kept += 1;
        } else {
            report.outputs_removed += 1;
            if !dry_run {
                store.remove(Table::Outputs, &key)?;
            }
        }
    }
    for key in store.keys(Table::Candidates)? {
        if gens.contains(&key) {
            report.candidate_sets_kept += 1;
        } else {
            report.candidate_sets_removed += 1;
            if !dry_run {
                store.remove(Table::Candidates, &key)?;
            }
        }
    }
    report.runs_removed = dead_runs.len();
    if !dry_run {
        for key in dead_runs {
            store.remove(Table::Meta, &key)?;
        }
        store.flush()?;
    }
    Ok(report)
}
