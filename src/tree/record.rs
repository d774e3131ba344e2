//! The store's record of a book's tree (table `task_trees`, key: the book id).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{TaskTree, TreeError};
use crate::book::BookId;

/// What the store keeps about a book's tree (table `task_trees`, key: the book id): the whole
/// tree file, so a tree can be shown even when `task_trees/` is gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeRecord {
    pub book_id: BookId,
    pub book_title: String,
    /// Where the tree file was written.
    pub path: Option<PathBuf>,
    pub decomposer: String,
    pub leaves: usize,
    pub nodes: usize,
    pub height: u32,
    /// The tree file's contents ([`TaskTree::from_json_str`] reads it back).
    pub tree_json: String,
}

impl TreeRecord {
    pub fn new(tree: &TaskTree, path: Option<PathBuf>) -> TreeRecord {
        TreeRecord {
            book_id: tree.book_id().clone(),
            book_title: tree.book_title().to_string(),
            path,
            decomposer: tree.decomposer().name.clone(),
            leaves: tree.leaves().len(),
            nodes: tree.len(),
            height: tree.max_height(),
            tree_json: tree.to_json_string(),
        }
    }

    pub fn tree(&self) -> Result<TaskTree, TreeError> {
        TaskTree::parse(&self.tree_json, &format!("stored tree of book {}", self.book_id.short()))
    }
}
