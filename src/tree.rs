//! The task tree: a DAG of summarization tasks over one book.
//!
//! Nodes live in a petgraph [`StableDiGraph`]. Leaves (height 0) hold a byte span of the book;
//! an internal node at height `h` reads the outputs of its ordered children at height `h - 1`.
//! An edge `a → b` means "`a`'s output is an input of `b`": [`EdgeKind::Child`] edges go from a
//! child to its parent, [`EdgeKind::PreviousContext`] edges from an earlier node at the same
//! height to a later one (Wu et al. 2021's previous context). Every node has a human-friendly
//! label `h{height}.{index}` and a content hash (blake3 of a leaf's text; of the children's
//! hashes for an internal node), so an edit to one paragraph changes one leaf's hash and its
//! ancestors' and nothing else.
//!
//! Trees are saved as JSON (`task_trees/<book-id>.json`) with a format version, the book's id
//! and the decomposer with its config. Loading validates everything: one root, children
//! contiguous and ordered, leaf spans tiling the book, context edges pointing backwards, hashes.
//!
//! Files: this one holds the graph and its accessors; `file.rs` the JSON file format (parse,
//! load, save); `validate.rs` the checks that turn a parsed file into a graph and that tie a
//! tree to its book; `record.rs` the store record ([`TreeRecord`]).
//!
//! This module imports only [`crate::book`]; it knows nothing of decomposers (they build trees
//! through [`TreeSpec`]) nor of the store or outputs' meaning.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::{Deserialize, Serialize};

use crate::book::{Book, BookId, Span};

mod file;
mod record;
mod validate;

use file::{NodeFile, TreeFile};
pub use record::TreeRecord;

/// Version of the JSON file format. Bump on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// The `format` field of every tree file.
pub const FORMAT_NAME: &str = "rrm-task-tree";
/// Environment variable naming the trees folder (default `task_trees/`).
pub const TREES_DIR_ENV: &str = "RRM_TREES";

/// The trees folder: `RRM_TREES`, else `task_trees`.
pub fn default_trees_dir() -> PathBuf {
    std::env::var_os(TREES_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("task_trees"))
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("could not read tree file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("could not write tree file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{origin} is not a valid task tree file: {source}")]
    Json { origin: String, source: serde_json::Error },
    #[error("{origin} is not a task tree file (format is '{found}', expected '{FORMAT_NAME}')")]
    Format { origin: String, found: String },
    #[error("{origin} has tree format version {found}; this rrm reads version {FORMAT_VERSION} (rebuild it with `rrm decompose`)")]
    Version { origin: String, found: u32 },
    #[error("{origin}: invalid task tree: {message}")]
    Invalid { origin: String, message: String },
    #[error("{origin} was built for book {expected}, not for {found} ({title}); rebuild it with `rrm decompose`")]
    BookMismatch { origin: String, expected: String, found: String, title: String },
}

/// A node of a [`TaskTree`] (stable for the tree's lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(NodeIndex<u32>);

impl NodeId {
    /// Position of the node in the tree's topological order (leaves first).
    pub fn index(self) -> usize {
        self.0.index()
    }
}

/// What an edge carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// From a child to its parent: the child's output is part of the parent's input.
    Child,
    /// From an earlier node at the same height: its output is context for the later one.
    PreviousContext,
}

/// A leaf's span or an internal node's children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// Summarize this span of the book's text.
    Leaf { span: Span },
    /// Summarize the outputs of these nodes (height - 1), in this order.
    Internal { children: Vec<NodeId> },
}

/// One summarization task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskNode {
    /// `h{height}.{index}`, unique within the tree.
    pub label: String,
    /// 0 for leaves; a parent is one above its children.
    pub height: u32,
    /// Position among the nodes of the same height, in book order.
    pub index: u32,
    /// Hex blake3: of the leaf text, or of the children's hashes ([`internal_hash`]).
    pub content_hash: String,
    /// The part of the book this node summarizes (an internal node: its children's union).
    pub covers: Span,
    /// Input size in tokens: a leaf's counted text; an internal node's children's output caps.
    pub input_tokens: usize,
    /// The most tokens this node's output may have.
    pub output_tokens: usize,
    pub kind: NodeKind,
    /// A slot for an output (the composer's business; saved with the tree when set).
    pub output: Option<String>,
}

impl TaskNode {
    pub fn is_leaf(&self) -> bool {
        matches!(self.kind, NodeKind::Leaf { .. })
    }

    /// The leaf's span (`None` for internal nodes; see [`TaskNode::covers`] for those).
    pub fn span(&self) -> Option<Span> {
        match self.kind {
            NodeKind::Leaf { span } => Some(span),
            NodeKind::Internal { .. } => None,
        }
    }

    /// The first 8 hex digits of the content hash.
    pub fn short_hash(&self) -> &str {
        &self.content_hash[..self.content_hash.len().min(8)]
    }
}

impl fmt::Display for TaskNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.label, self.short_hash())
    }
}

/// The decomposer that built a tree and its configuration (recorded, never interpreted here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecomposerInfo {
    pub name: String,
    pub config: serde_json::Value,
}

/// The book a tree was built for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeBook {
    pub id: BookId,
    pub title: String,
    /// Length in bytes of the normalized text.
    pub len: usize,
}

/// One leaf, as a decomposer proposes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafSpec {
    pub span: Span,
    pub input_tokens: usize,
}

/// What a decomposer hands to [`TaskTree::build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSpec {
    /// Leaves in book order; their spans must tile the book's text.
    pub leaves: Vec<LeafSpec>,
    /// For each level above the leaves, bottom up: the sizes of consecutive groups of the level
    /// below (they sum to its length). The last level must have one group (the root).
    pub groups: Vec<Vec<usize>>,
    /// Output caps by height; heights beyond the list use its last entry.
    pub output_tokens: Vec<usize>,
    /// Each node reads the outputs of up to this many earlier nodes at its height (0: none).
    pub context_window: usize,
}

/// The output cap for `height` from a list by height (the last entry repeats).
pub fn output_cap(caps: &[usize], height: u32) -> usize {
    caps.get(height as usize).or(caps.last()).copied().unwrap_or(0)
}

/// Content hash of a leaf: hex blake3 of its text.
pub fn leaf_hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

/// Content hash of an internal node: hex blake3 over its children's hashes, in order.
pub fn internal_hash<'a>(children: impl IntoIterator<Item = &'a str>) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"rrm-node\n");
    for child in children {
        hasher.update(child.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

/// A validated task tree over one book.
#[derive(Debug, Clone)]
pub struct TaskTree {
    graph: StableDiGraph<TaskNode, EdgeKind>,
    book: TreeBook,
    decomposer: DecomposerInfo,
    root: NodeId,
    /// Node ids by height, each in index order.
    levels: Vec<Vec<NodeId>>,
    parents: Vec<Option<NodeId>>,
    by_label: HashMap<String, NodeId>,
}

impl PartialEq for TaskTree {
    fn eq(&self, other: &Self) -> bool {
        self.to_file() == other.to_file()
    }
}

impl TaskTree {
    /// Builds and validates a tree over `book` from a decomposer's [`TreeSpec`].
    pub fn build(
        book: &Book,
        decomposer: DecomposerInfo,
        spec: &TreeSpec,
    ) -> Result<TaskTree, TreeError> {
        let origin = format!("tree for {}", book.title());
        let invalid = |message: String| TreeError::Invalid { origin: origin.clone(), message };
        let mut nodes: Vec<NodeFile> = Vec::new();
        let mut level: Vec<usize> = Vec::new(); // positions in `nodes` of the level below
        for (i, leaf) in spec.leaves.iter().enumerate() {
            let text = leaf.span.get(book.text()).ok_or_else(|| {
                invalid(format!(
                    "leaf {i} span {} is outside the book or splits a character",
                    leaf.span
                ))
            })?;
            level.push(nodes.len());
            nodes.push(NodeFile {
                id: label(0, i as u32),
                height: 0,
                index: i as u32,
                hash: leaf_hash(text),
                span: Some(leaf.span),
                children: Vec::new(),
                context: Vec::new(),
                input_tokens: leaf.input_tokens,
                output_tokens: output_cap(&spec.output_tokens, 0),
                output: None,
            });
        }
        for (h, groups) in spec.groups.iter().enumerate() {
            let height = h as u32 + 1;
            let total: usize = groups.iter().sum();
            if total != level.len() || groups.contains(&0) {
                return Err(invalid(format!(
                    "groups at height {height} cover {total} nodes, the level below has {}",
                    level.len()
                )));
            }
            let mut next = Vec::with_capacity(groups.len());
            let mut pos = 0;
            for (index, &size) in groups.iter().enumerate() {
                let members = &level[pos..pos + size];
                pos += size;
                let hash = internal_hash(members.iter().map(|&m| nodes[m].hash.as_str()));
                let input_tokens = members.iter().map(|&m| nodes[m].output_tokens).sum();
                let children = members.iter().map(|&m| nodes[m].id.clone()).collect();
                next.push(nodes.len());
                nodes.push(NodeFile {
                    id: label(height, index as u32),
                    height,
                    index: index as u32,
                    hash,
                    span: None,
                    children,
                    context: Vec::new(),
                    input_tokens,
                    output_tokens: output_cap(&spec.output_tokens, height),
                    output: None,
                });
            }
            level = next;
        }
        if spec.context_window > 0 {
            let labels: Vec<(u32, u32)> = nodes.iter().map(|n| (n.height, n.index)).collect();
            for (node, &(height, index)) in nodes.iter_mut().zip(&labels) {
                let first = index.saturating_sub(spec.context_window as u32);
                node.context = (first..index).map(|i| label(height, i)).collect();
            }
        }
        let root = nodes.last().map(|n| n.id.clone()).unwrap_or_default();
        let file = TreeFile {
            format: FORMAT_NAME.to_string(),
            format_version: FORMAT_VERSION,
            book: TreeBook {
                id: book.id().clone(),
                title: book.title().to_string(),
                len: book.text().len(),
            },
            decomposer,
            root,
            nodes,
        };
        let tree = TaskTree::from_file(file, &origin)?;
        tree.check_book(book, &origin)?;
        Ok(tree)
    }

    pub fn book_id(&self) -> &BookId {
        &self.book.id
    }

    /// Title of the book, as recorded when the tree was built.
    pub fn book_title(&self) -> &str {
        &self.book.title
    }

    /// Length in bytes of the book's normalized text.
    pub fn book_len(&self) -> usize {
        self.book.len
    }

    pub fn decomposer(&self) -> &DecomposerInfo {
        &self.decomposer
    }

    pub fn root(&self) -> NodeId {
        self.root
    }

    /// The node. `id` must come from this tree (ids of another tree may panic).
    pub fn node(&self, id: NodeId) -> &TaskNode {
        &self.graph[id.0]
    }

    /// The node, or `None` if `id` is not in this tree.
    pub fn get(&self, id: NodeId) -> Option<&TaskNode> {
        self.graph.node_weight(id.0)
    }

    /// Sets a node's output slot.
    pub fn set_output(&mut self, id: NodeId, output: Option<String>) {
        if let Some(node) = self.graph.node_weight_mut(id.0) {
            node.output = output;
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// Height of the root (0 for a one-node tree).
    pub fn max_height(&self) -> u32 {
        (self.levels.len() as u32).saturating_sub(1)
    }

    /// Leaves in book order.
    pub fn leaves(&self) -> &[NodeId] {
        self.level(0)
    }

    /// The nodes at `height`, in index order (empty above the root).
    pub fn level(&self, height: u32) -> &[NodeId] {
        self.levels.get(height as usize).map(Vec::as_slice).unwrap_or(&[])
    }

    /// All nodes, children before parents and earlier before later at each height (so also
    /// context sources before the nodes that read them); leaves first, in book order.
    pub fn nodes_topological(&self) -> Vec<NodeId> {
        self.levels.iter().flatten().copied().collect()
    }

    /// An internal node's children in order (empty for a leaf).
    pub fn children(&self, id: NodeId) -> Vec<NodeId> {
        match &self.node(id).kind {
            NodeKind::Internal { children } => children.clone(),
            NodeKind::Leaf { .. } => Vec::new(),
        }
    }

    /// The nodes whose outputs are previous context for `id`, earliest first.
    pub fn context_inputs(&self, id: NodeId) -> Vec<NodeId> {
        let mut sources: Vec<NodeId> = self
            .graph
            .edges_directed(id.0, Direction::Incoming)
            .filter(|e| *e.weight() == EdgeKind::PreviousContext)
            .map(|e| NodeId(e.source()))
            .collect();
        sources.sort_by_key(|&s| self.node(s).index);
        sources
    }

    pub fn parent(&self, id: NodeId) -> Option<NodeId> {
        self.parents.get(id.index()).copied().flatten()
    }

    /// The node with this label (`h1.7`), or whose content hash starts with this hex prefix (at
    /// least 4 digits, and only when exactly one node matches).
    pub fn find(&self, query: &str) -> Option<NodeId> {
        let query = query.trim();
        if let Some(&id) = self.by_label.get(query) {
            return Some(id);
        }
        if query.len() < 4 || !query.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let query = query.to_ascii_lowercase();
        let mut found =
            self.graph.node_indices().filter(|&i| self.graph[i].content_hash.starts_with(&query));
        match (found.next(), found.next()) {
            (Some(i), None) => Some(NodeId(i)),
            _ => None,
        }
    }

    /// The underlying graph (edge `a → b`: `a`'s output is an input of `b`).
    pub fn graph(&self) -> &StableDiGraph<TaskNode, EdgeKind> {
        &self.graph
    }
}

fn label(height: u32, index: u32) -> String {
    format!("h{height}.{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(context_window: usize) -> (Book, TaskTree) {
        let text = "aaaa bbbb cccc dddd eeee ffff gggg";
        let book = Book::from_text("t", text);
        let leaves = (0..7)
            .map(|i| LeafSpec {
                span: Span::new(i * 5, (i * 5 + 5).min(text.len())),
                input_tokens: 2,
            })
            .collect();
        let spec = TreeSpec {
            leaves,
            groups: vec![vec![3, 4], vec![2]],
            output_tokens: vec![128, 192, 384],
            context_window,
        };
        let info = DecomposerInfo { name: "test".into(), config: serde_json::json!({}) };
        let tree = TaskTree::build(&book, info, &spec).unwrap();
        (book, tree)
    }

    #[test]
    fn structure_and_navigation() {
        let (book, tree) = sample(0);
        assert_eq!(tree.len(), 10);
        assert_eq!(tree.max_height(), 2);
        let root = tree.root();
        assert_eq!(tree.node(root).label, "h2.0");
        assert_eq!(tree.node(root).covers, Span::new(0, book.text().len()));
        let kids = tree.children(root);
        assert_eq!(
            kids.iter().map(|&k| tree.node(k).label.as_str()).collect::<Vec<_>>(),
            ["h1.0", "h1.1"]
        );
        assert_eq!(tree.children(kids[1]).len(), 4);
        assert_eq!(tree.parent(kids[0]), Some(root));
        assert_eq!(tree.parent(root), None);
        assert_eq!(tree.node(kids[0]).input_tokens, 3 * 128);
        let topo = tree.nodes_topological();
        assert_eq!(topo.len(), 10);
        assert_eq!(topo[..7], *tree.leaves());
        for id in &topo {
            for c in tree.children(*id) {
                assert!(topo.iter().position(|x| *x == c) < topo.iter().position(|x| x == id));
            }
        }
        assert_eq!(tree.find("h0.6"), Some(tree.leaves()[6]));
        let hash = tree.node(root).content_hash.clone();
        assert_eq!(tree.find(&hash[..10]), Some(root));
        assert_eq!(tree.find("h9.9"), None);
        assert!(tree.context_inputs(tree.leaves()[3]).is_empty());
    }

    #[test]
    fn context_edges_point_back() {
        let (_, tree) = sample(2);
        let leaf = tree.leaves()[3];
        let ctx: Vec<_> =
            tree.context_inputs(leaf).iter().map(|&c| tree.node(c).label.clone()).collect();
        assert_eq!(ctx, ["h0.1", "h0.2"]);
        assert!(tree.context_inputs(tree.leaves()[0]).is_empty());
    }

    #[test]
    fn json_round_trip_and_load() {
        let (book, tree) = sample(1);
        let json = tree.to_json_string();
        let back = TaskTree::from_json_str(&json).unwrap();
        assert_eq!(back, tree);
        assert_eq!(back.to_json_string(), json);
        let dir = tempfile::tempdir().unwrap();
        let path = tree.save(dir.path()).unwrap();
        assert!(path.ends_with(format!("{}.json", book.id())));
        assert_eq!(TaskTree::load(&path, &book).unwrap(), tree);
        let other = Book::from_text("o", "something else entirely");
        assert!(matches!(TaskTree::load(&path, &other), Err(TreeError::BookMismatch { .. })));
    }

    fn mutate(f: impl FnOnce(&mut serde_json::Value)) -> String {
        let (_, tree) = sample(1);
        let mut v: serde_json::Value = serde_json::from_str(&tree.to_json_string()).unwrap();
        f(&mut v);
        match TaskTree::from_json_str(&v.to_string()) {
            Ok(_) => panic!("mutated tree was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn malformed_files_are_named() {
        assert!(TaskTree::from_json_str("{not json")
            .unwrap_err()
            .to_string()
            .contains("not a valid"));
        assert!(TaskTree::from_json_str("{}").unwrap_err().to_string().contains("format"));
        let e = mutate(|v| v["format_version"] = 99.into());
        assert!(e.contains("version 99"), "{e}");
        let e = mutate(|v| v["nodes"][2]["span"]["end"] = 16.into());
        assert!(e.contains("h0.3") && e.contains("overlap"), "{e}");
        let e = mutate(|v| v["nodes"][8]["children"][0] = "h0.0".into());
        assert!(e.contains("h1.1") && e.contains("contiguous"), "{e}");
        let e = mutate(|v| v["nodes"][9]["children"] = serde_json::json!(["h1.0"]));
        assert!(e.contains("no parent"), "{e}");
        let e = mutate(|v| v["nodes"][4]["context"] = serde_json::json!(["h0.5"]));
        assert!(e.contains("earlier"), "{e}");
        let e = mutate(|v| v["nodes"][0]["hash"] = "0".repeat(64).into());
        assert!(e.contains("h1.0") && e.contains("hash"), "{e}");
        let e = mutate(|v| v["root"] = "h1.0".into());
        assert!(e.contains("root"), "{e}");
        let e = mutate(|v| {
            let nodes = v["nodes"].as_array_mut().unwrap();
            nodes.push(nodes[9].clone());
        });
        assert!(e.contains("twice"), "{e}");
        let e = mutate(|v| v["book"]["len"] = 1000.into());
        assert!(e.contains("1000"), "{e}");
    }

    #[test]
    fn one_node_tree() {
        let book = Book::from_text("t", "Short.");
        let spec = TreeSpec {
            leaves: vec![LeafSpec { span: Span::new(0, 6), input_tokens: 2 }],
            groups: vec![],
            output_tokens: vec![128],
            context_window: 0,
        };
        let info = DecomposerInfo { name: "test".into(), config: serde_json::Value::Null };
        let tree = TaskTree::build(&book, info, &spec).unwrap();
        assert_eq!(tree.len(), 1);
        assert_eq!(tree.root(), tree.leaves()[0]);
        assert_eq!(tree.max_height(), 0);
        assert_eq!(TaskTree::from_json_str(&tree.to_json_string()).unwrap(), tree);
    }
}
