//! The task tree's JSON file format: a flat list of nodes, each naming its children and context
//! sources by id, with a format name and version; parsing (header first, so an old or foreign
//! file gets the right message), loading, atomic saving.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DecomposerInfo, TaskTree, TreeBook, TreeError, FORMAT_NAME, FORMAT_VERSION};
use crate::book::{Book, Span};

impl TaskTree {
    /// Parses and validates a tree file's contents (structure only: no book at hand).
    pub fn from_json_str(json: &str) -> Result<TaskTree, TreeError> {
        TaskTree::parse(json, "task tree JSON")
    }

    pub(super) fn parse(json: &str, origin: &str) -> Result<TaskTree, TreeError> {
        // Check the header first, so an old or foreign file gets the right message.
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            format_version: Option<u32>,
        }
        let json_err = |source| TreeError::Json { origin: origin.to_string(), source };
        let header: Header = serde_json::from_str(json).map_err(json_err)?;
        match header.format {
            Some(f) if f == FORMAT_NAME => {}
            found => {
                return Err(TreeError::Format {
                    origin: origin.to_string(),
                    found: found.unwrap_or_else(|| "missing".into()),
                })
            }
        }
        match header.format_version {
            Some(FORMAT_VERSION) => {}
            found => {
                return Err(TreeError::Version {
                    origin: origin.to_string(),
                    found: found.unwrap_or(0),
                })
            }
        }
        let file: TreeFile = serde_json::from_str(json).map_err(json_err)?;
        TaskTree::from_file(file, origin)
    }

    /// Reads `path` and validates it, including against `book` (its id, spans and leaf hashes).
    pub fn load(path: impl AsRef<Path>, book: &Book) -> Result<TaskTree, TreeError> {
        let path = path.as_ref();
        let tree = TaskTree::load_unchecked(path)?;
        tree.check_book(book, &path.display().to_string())?;
        Ok(tree)
    }

    /// Reads `path` and validates its structure, without the book.
    pub fn load_unchecked(path: impl AsRef<Path>) -> Result<TaskTree, TreeError> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path)
            .map_err(|source| TreeError::Read { path: path.to_path_buf(), source })?;
        TaskTree::parse(&json, &path.display().to_string())
    }

    /// The file name of this tree's JSON under a trees folder: `<book-id>.json`.
    pub fn file_name(&self) -> String {
        format!("{}.json", self.book.id)
    }

    /// Writes `dir/<book-id>.json` atomically (creating `dir`) and returns its path.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<PathBuf, TreeError> {
        let dir = dir.as_ref();
        let path = dir.join(self.file_name());
        let err = |source| TreeError::Write { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        std::io::Write::write_all(&mut tmp, self.to_json_string().as_bytes()).map_err(err)?;
        // Temporary files are private (0600); the result is an ordinary file.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644));
        }
        tmp.persist(&path).map_err(|e| err(e.error))?;
        Ok(path)
    }

    /// The tree as pretty JSON (the file format).
    pub fn to_json_string(&self) -> String {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_string_pretty(&self.to_file()).unwrap_or_default() + "\n"
    }

    /// The file form of this tree.
    pub(super) fn to_file(&self) -> TreeFile {
        let nodes = self
            .nodes_topological()
            .into_iter()
            .map(|id| {
                let n = self.node(id);
                NodeFile {
                    id: n.label.clone(),
                    height: n.height,
                    index: n.index,
                    hash: n.content_hash.clone(),
                    span: n.span(),
                    children: self
                        .children(id)
                        .iter()
                        .map(|&c| self.node(c).label.clone())
                        .collect(),
                    context: self
                        .context_inputs(id)
                        .iter()
                        .map(|&c| self.node(c).label.clone())
                        .collect(),
                    input_tokens: n.input_tokens,
                    output_tokens: n.output_tokens,
                    output: n.output.clone(),
                }
            })
            .collect();
        TreeFile {
            format: FORMAT_NAME.to_string(),
            format_version: FORMAT_VERSION,
            book: self.book.clone(),
            decomposer: self.decomposer.clone(),
            root: self.node(self.root).label.clone(),
            nodes,
        }
    }
}

/// The JSON file: a flat list of nodes, each naming its children and context sources by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TreeFile {
    pub(super) format: String,
    pub(super) format_version: u32,
    pub(super) book: TreeBook,
    pub(super) decomposer: DecomposerInfo,
    pub(super) root: String,
    pub(super) nodes: Vec<NodeFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NodeFile {
    pub(super) id: String,
    pub(super) height: u32,
    pub(super) index: u32,
    pub(super) hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) span: Option<Span>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) children: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) context: Vec<String>,
    pub(super) input_tokens: usize,
    pub(super) output_tokens: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) output: Option<String>,
}
