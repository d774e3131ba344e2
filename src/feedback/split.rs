//! Split corrections: the sixth feedback kind. A person says "split this leaf here" or "merge
//! these two neighbouring leaves"; the learned decomposer turns each into a labeled gap for the
//! boundary scorer (a split point a positive, the boundary between merged leaves a negative).
//!
//! Stored beside the other kinds in the feedback table under keys starting with [`KEY_PREFIX`]
//! (`split/<book id>/<record hash>`), and exported and imported with them. This module never
//! touches the store.

use serde::{Deserialize, Serialize};

use crate::book::BookId;

/// Key prefix of split corrections in the feedback table.
pub const KEY_PREFIX: &str = "split/";

/// What the person asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SplitAction {
    /// A boundary belongs at byte `at` (inside a leaf).
    Split { at: usize },
    /// The boundary at byte `at` (between two neighbouring leaves) should not be there.
    Merge { at: usize },
}

/// One split correction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitFeedback {
    pub book: BookId,
    pub action: SplitAction,
    /// The labels of the leaves it was given on (for the record).
    pub nodes: Vec<String>,
    /// The content hashes of those leaves when it was given.
    pub node_hashes: Vec<String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

impl SplitFeedback {
    /// The store key: prefix, book id, and a hash of the book and action (so recording the
    /// same correction twice keeps one record).
    pub fn key(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.book.as_str().as_bytes());
        hasher.update(serde_json::to_string(&self.action).unwrap_or_default().as_bytes());
        let hash = hasher.finalize().to_hex();
        format!("{KEY_PREFIX}{}/{}", self.book, &hash[..16])
    }

    /// The key prefix of one book's corrections.
    pub fn book_prefix(book: &BookId) -> String {
        format!("{KEY_PREFIX}{book}/")
    }

    /// Checks what can be checked without the book: the leaves named and their hashes agree in
    /// number, hashes are hex, a merge names two leaves.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() || self.nodes.len() != self.node_hashes.len() {
            return Err("nodes and node_hashes must be non-empty and of the same length".into());
        }
        if self
            .node_hashes
            .iter()
            .any(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err("node_hashes must be hex digits".into());
        }
        match self.action {
            SplitAction::Merge { .. } if self.nodes.len() != 2 => {
                Err("a merge names exactly two leaves".into())
            }
            SplitAction::Split { .. } if self.nodes.len() != 1 => {
                Err("a split names exactly one leaf".into())
            }
            _ => Ok(()),
        }
    }

    /// Byte offset of the gap and whether it is a boundary.
    pub fn label(&self) -> (usize, bool) {
        match self.action {
            SplitAction::Split { at } => (at, true),
            SplitAction::Merge { at } => (at, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_labels() {
        let book = BookId::of_text("x");
        let f = SplitFeedback {
            book: book.clone(),
            action: SplitAction::Split { at: 12 },
            nodes: vec!["h0.1".into()],
            node_hashes: vec!["ab".into()],
            created: 1,
        };
        assert!(f.key().starts_with(&SplitFeedback::book_prefix(&book)));
        assert_eq!(f.label(), (12, true));
        let again = SplitFeedback { created: 2, ..f.clone() };
        assert_eq!(f.key(), again.key());
        let merge = SplitFeedback { action: SplitAction::Merge { at: 12 }, ..f.clone() };
        assert_ne!(f.key(), merge.key());
        assert_eq!(merge.label(), (12, false));
        let json = serde_json::to_string(&merge).unwrap();
        assert!(json.contains("\"kind\":\"merge\""), "{json}");
    }
}
