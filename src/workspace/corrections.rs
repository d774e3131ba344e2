//! Split corrections (the learned decomposer's feedback): "split this leaf here", "merge these two
//! neighbouring leaves". Stored in [`Table::Feedback`] under `split/<book id>/…` beside the other
//! feedback kinds, exported and imported with them.

use super::{LoadedTree, Result, Workspace, WorkspaceError};
use crate::book::BookId;
use crate::decompose::learned::{SplitAction, SplitFeedback};
use crate::store::Table;

/// Where to split a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitPoint {
    /// At this byte offset of the book (strictly inside the leaf, on a character boundary).
    Byte(usize),
    /// After the N-th sentence of the leaf (1-based; not after the last).
    AfterSentence(usize),
}

fn now() -> u64 {
    crate::compose::keys::unix_now()
}

fn store_correction(ws: &Workspace, feedback: &SplitFeedback) -> Result<String> {
    let key = feedback.key();
    ws.store().put(Table::Feedback, &key, feedback)?;
    ws.store().flush()?;
    Ok(key)
}

/// Records "split leaf `spec` at `point`". Returns the record and its key.
pub fn record_split(
    ws: &Workspace,
    loaded: &LoadedTree,
    spec: &str,
    point: SplitPoint,
) -> Result<(SplitFeedback, String)> {
    let tree = &loaded.tree;
    let node = tree.node(loaded.node_id(spec)?);
    let span = node.span().ok_or_else(|| {
        WorkspaceError::Invalid(format!("{} is not a leaf; only leaves can be split", node.label))
    })?;
    let book = loaded.require_book()?;
    let at = match point {
        SplitPoint::Byte(at) => {
            if at <= span.start || at >= span.end || !book.text().is_char_boundary(at) {
                return Err(WorkspaceError::Invalid(format!(
                    "byte {at} is not inside leaf {} (bytes {span}, exclusive of its ends)",
                    node.label
                )));
            }
            at
        }
        SplitPoint::AfterSentence(n) => {
            let inside: Vec<_> = book
                .sentences()
                .iter()
                .filter(|s| s.start >= span.start && s.end <= span.end)
                .collect();
            if n == 0 || n >= inside.len() {
                return Err(WorkspaceError::Invalid(format!(
                    "leaf {} has {} sentences; after-sentence takes 1..{}",
                    node.label,
                    inside.len(),
                    inside.len().saturating_sub(1)
                )));
            }
            inside[n].start
        }
    };
    let feedback = SplitFeedback {
        book: tree.book_id().clone(),
        action: SplitAction::Split { at },
        nodes: vec![node.label.clone()],
        node_hashes: vec![node.content_hash.clone()],
        created: now(),
    };
    let key = store_correction(ws, &feedback)?;
    Ok((feedback, key))
}

/// Records "merge these two neighbouring leaves". Returns the record and its key.
pub fn record_merge(
    ws: &Workspace,
    loaded: &LoadedTree,
    a: &str,
    b: &str,
) -> Result<(SplitFeedback, String)> {
    let tree = &loaded.tree;
    let mut nodes = Vec::new();
    for spec in [a, b] {
        let node = tree.node(loaded.node_id(spec)?);
        if !node.is_leaf() {
            return Err(WorkspaceError::Invalid(format!(
                "{} is not a leaf; only neighbouring leaves can be merged",
                node.label
            )));
        }
        nodes.push(node);
    }
    nodes.sort_by_key(|n| n.index);
    let (a, b) = (nodes[0], nodes[1]);
    if b.index != a.index + 1 {
        return Err(WorkspaceError::Invalid(format!(
            "{} and {} are not neighbours; merge takes two consecutive leaves",
            a.label, b.label
        )));
    }
    let feedback = SplitFeedback {
        book: tree.book_id().clone(),
        action: SplitAction::Merge { at: b.covers.start },
        nodes: vec![a.label.clone(), b.label.clone()],
        node_hashes: vec![a.content_hash.clone(), b.content_hash.clone()],
        created: now(),
    };
    let key = store_correction(ws, &feedback)?;
    Ok((feedback, key))
}

/// Every correction recorded for `book`.
pub fn for_book(ws: &Workspace, book: &BookId) -> Result<Vec<SplitFeedback>> {
    Ok(ws
        .store()
        .scan_lenient::<SplitFeedback>(Table::Feedback, &SplitFeedback::book_prefix(book))?
        .into_iter()
        .map(|(_, f)| f)
        .collect())
}

/// Every correction in the store.
pub fn all(ws: &Workspace) -> Result<Vec<SplitFeedback>> {
    Ok(ws
        .store()
        .scan_lenient::<SplitFeedback>(
            Table::Feedback,
            crate::decompose::learned::feedback::KEY_PREFIX,
        )?
        .into_iter()
        .map(|(_, f)| f)
        .collect())
}
