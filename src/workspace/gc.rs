//! Garbage collection of the node cache, with the workspace deciding which books are live: a
//! book is dead when its file now holds a different text (it was edited: its old results are
//! superseded). A book whose file is missing or unreadable stays live — its results are the only
//! copy of work done — unless the caller passes `drop_missing_books`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::books::{self, BookStatus};
use super::{Result, Workspace};
use crate::book::BookId;
use crate::compose::cache::{self, CacheStats, GcPolicy, GcReport};
use crate::feedback;
use crate::store::Table;

/// What garbage collection may drop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Treat books whose file is missing or unreadable as gone (their runs' results are dropped,
    /// except candidates that feedback refers to).
    pub drop_missing_books: bool,
}

/// Why each recorded book counts as live or dead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookLiveness {
    pub live: Vec<String>,
    /// Files that now hold another text.
    pub changed: Vec<String>,
    /// Files missing or unreadable (live unless `drop_missing_books`).
    pub missing: Vec<String>,
}

/// The liveness of every recorded book (and of books with runs but no record: live).
pub fn liveness(ws: &Workspace) -> Result<BookLiveness> {
    let mut out = BookLiveness::default();
    for key in ws.store().keys(Table::Books)? {
        let Some(id) = BookId::parse(&key) else { continue };
        match books::status(ws, &id)? {
            BookStatus::Present(_) | BookStatus::Unknown => out.live.push(key),
            BookStatus::Changed { .. } => out.changed.push(key),
            BookStatus::Missing { .. } | BookStatus::Unreadable { .. } => out.missing.push(key),
        }
    }
    Ok(out)
}

fn policy_parts(ws: &Workspace, drop_missing: bool) -> Result<(HashSet<String>, HashSet<String>)> {
    let liveness = liveness(ws)?;
    let mut dead: HashSet<String> = liveness.changed.into_iter().collect();
    if drop_missing {
        dead.extend(liveness.missing);
    }
    let feedback_inputs: HashSet<String> =
        feedback::all(ws.store())?.into_iter().map(|f| f.input_key).collect();
    Ok((dead, feedback_inputs))
}

/// Counts of the cache, with liveness as garbage collection would see it (missing books live).
pub fn stats(ws: &Workspace) -> Result<CacheStats> {
    let (dead, feedback_inputs) = policy_parts(ws, false)?;
    let is_live = |id: &str| !dead.contains(id);
    let policy = GcPolicy { is_live_book: &is_live, feedback_inputs };
    Ok(cache::stats(ws.store(), &policy)?)
}

/// Collects garbage (see [`crate::compose::cache`]).
pub fn gc(ws: &Workspace, options: GcOptions) -> Result<GcReport> {
    let (dead, feedback_inputs) = policy_parts(ws, options.drop_missing_books)?;
    let is_live = |id: &str| !dead.contains(id);
    let policy = GcPolicy { is_live_book: &is_live, feedback_inputs };
    Ok(cache::gc(ws.store(), &policy, options.dry_run)?)
}
