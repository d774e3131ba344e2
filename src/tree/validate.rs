//! Validation: a parsed tree file becomes a graph only when it is a tree (one root, children
//! contiguous and ordered, leaf spans tiling the book, context edges pointing backwards, content
//! hashes matching), and a tree belongs to a book only when its id, length and leaf hashes match.

use std::collections::HashMap;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};

use super::file::TreeFile;
use super::{
    internal_hash, label, leaf_hash, EdgeKind, NodeId, NodeKind, TaskNode, TaskTree, TreeError,
};
use crate::book::{Book, Span};

impl TaskTree {
    /// Checks that this tree belongs to `book`: same id and length, leaf hashes match.
    pub fn check_book(&self, book: &Book, origin: &str) -> Result<(), TreeError> {
        if self.book.id != *book.id() {
            return Err(TreeError::BookMismatch {
                origin: origin.to_string(),
                expected: self.book.id.to_string(),
                found: book.id().to_string(),
                title: book.title().to_string(),
            });
        }
        let invalid = |message: String| TreeError::Invalid { origin: origin.to_string(), message };
        if self.book.len != book.text().len() {
            return Err(invalid(format!(
                "book length is {} bytes in the file, {} in the book",
                self.book.len,
                book.text().len()
            )));
        }
        for &leaf in self.leaves() {
            let node = self.node(leaf);
            let text = node.span().and_then(|s| s.get(book.text())).ok_or_else(|| {
                invalid(format!("{}: span {} splits a character", node.label, node.covers))
            })?;
            if leaf_hash(text) != node.content_hash {
                return Err(invalid(format!(
                    "{}: content hash does not match the book text",
                    node.label
                )));
            }
        }
        Ok(())
    }

    /// Validates a parsed file and builds the graph.
    pub(super) fn from_file(file: TreeFile, origin: &str) -> Result<TaskTree, TreeError> {
        let invalid = |message: String| TreeError::Invalid { origin: origin.to_string(), message };
        if file.nodes.is_empty() {
            return Err(invalid("it has no nodes".into()));
        }
        // Order nodes by (height, index) and check labels and numbering.
        let mut order: Vec<usize> = (0..file.nodes.len()).collect();
        order.sort_by_key(|&i| (file.nodes[i].height, file.nodes[i].index));
        let mut levels_pos: Vec<Vec<usize>> = Vec::new();
        for &i in &order {
            let n = &file.nodes[i];
            if n.id != label(n.height, n.index) {
                return Err(invalid(format!(
                    "node '{}' has height {} and index {}, so its id should be '{}'",
                    n.id,
                    n.height,
                    n.index,
                    label(n.height, n.index)
                )));
            }
            let h = n.height as usize;
            if h > levels_pos.len() {
                return Err(invalid(format!(
                    "no nodes at height {} but some at height {h}",
                    levels_pos.len()
                )));
            }
            if h == levels_pos.len() {
                levels_pos.push(Vec::new());
            }
            let expected = levels_pos[h].len() as u32;
            if n.index != expected {
                let what = if n.index < expected {
                    "appears twice"
                } else {
                    "follows a gap in the numbering"
                };
                return Err(invalid(format!("node '{}' {what} (expected h{h}.{expected})", n.id)));
            }
            if !n.hash.len().eq(&64) || !n.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!("node '{}': hash is not 64 hex digits", n.id)));
            }
            levels_pos[h].push(i);
        }
        let top = levels_pos.len() - 1;
        if levels_pos[top].len() != 1 {
            return Err(invalid(format!(
                "it has {} nodes at the top height {top}; a tree has exactly one root",
                levels_pos[top].len()
            )));
        }
        let root_pos = levels_pos[top][0];
        if file.nodes[root_pos].id != file.root {
            return Err(invalid(format!(
                "root is '{}' but the only top node is '{}'",
                file.root, file.nodes[root_pos].id
            )));
        }
        // Leaves tile the book.
        let mut cursor = 0;
        for &i in &levels_pos[0] {
            let n = &file.nodes[i];
            let Some(span) = n.span else {
                return Err(invalid(format!("leaf '{}' has no span", n.id)));
            };
            if !n.children.is_empty() {
                return Err(invalid(format!("leaf '{}' has children", n.id)));
            }
            if span.start != cursor {
                let what = if span.start > cursor {
                    "a gap before it"
                } else {
                    "an overlap with the leaf before"
                };
                return Err(invalid(format!(
                    "leaf '{}' starts at byte {} but the previous leaf ends at {cursor}: {what}",
                    n.id, span.start
                )));
            }
            if span.end <= span.start {
                return Err(invalid(format!("leaf '{}' has an empty span {span}", n.id)));
            }
            cursor = span.end;
        }
        if cursor != file.book.len {
            return Err(invalid(format!(
                "leaves end at byte {cursor}, but the book is {} bytes long",
                file.book.len
            )));
        }
        // Internal nodes: children are the level below, contiguous and in order; hashes match.
        for h in 1..levels_pos.len() {
            let mut expected_child = 0u32;
            for &i in &levels_pos[h] {
                let n = &file.nodes[i];
                if n.span.is_some() {
                    return Err(invalid(format!("internal node '{}' has a span", n.id)));
                }
                if n.children.is_empty() {
                    return Err(invalid(format!("internal node '{}' has no children", n.id)));
                }
                for c in &n.children {
                    let want = label(h as u32 - 1, expected_child);
                    if *c != want {
                        return Err(invalid(format!(
                            "node '{}': child '{c}' out of place (children must be contiguous and in order; expected '{want}')",
                            n.id
                        )));
                    }
                    expected_child += 1;
                }
            }
            if expected_child as usize != levels_pos[h - 1].len() {
                return Err(invalid(format!(
                    "node 'h{}.{expected_child}' has no parent (only the root may lack one)",
                    h - 1
                )));
            }
            let below = &levels_pos[h - 1];
            let mut first = 0;
            for &i in &levels_pos[h] {
                let n = &file.nodes[i];
                let end = first + n.children.len();
                let hash =
                    internal_hash(below[first..end].iter().map(|&c| file.nodes[c].hash.as_str()));
                if !hash.eq_ignore_ascii_case(&n.hash) {
                    return Err(invalid(format!(
                        "node '{}': content hash does not match its children",
                        n.id
                    )));
                }
                first = end;
            }
        }
        // Build the graph in (height, index) order, so NodeId index = topological position.
        let mut graph = StableDiGraph::with_capacity(file.nodes.len(), file.nodes.len() * 2);
        let mut ids = vec![NodeId(NodeIndex::new(0)); file.nodes.len()];
        let mut levels = Vec::with_capacity(levels_pos.len());
        for level in &levels_pos {
            let mut ids_here = Vec::with_capacity(level.len());
            for &i in level {
                let n = &file.nodes[i];
                let node = TaskNode {
                    label: n.id.clone(),
                    height: n.height,
                    index: n.index,
                    content_hash: n.hash.to_ascii_lowercase(),
                    covers: n.span.unwrap_or_default(),
                    input_tokens: n.input_tokens,
                    output_tokens: n.output_tokens,
                    kind: match n.span {
                        Some(span) => NodeKind::Leaf { span },
                        None => NodeKind::Internal { children: Vec::new() },
                    },
                    output: n.output.clone(),
                };
                let id = NodeId(graph.add_node(node));
                ids[i] = id;
                ids_here.push(id);
            }
            levels.push(ids_here);
        }
        let by_label: HashMap<String, NodeId> =
            file.nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), ids[i])).collect();
        let mut parents = vec![None; file.nodes.len()];
        for (h, level) in levels_pos.iter().enumerate().skip(1) {
            for &i in level {
                let parent = ids[i];
                let children: Vec<NodeId> =
                    file.nodes[i].children.iter().map(|c| by_label[c]).collect();
                let first = graph[children[0].0].covers.start;
                let last = graph[children[children.len() - 1].0].covers.end;
                for &c in &children {
                    graph.add_edge(c.0, parent.0, EdgeKind::Child);
                    parents[c.index()] = Some(parent);
                }
                let node = &mut graph[parent.0];
                node.covers = Span::new(first, last);
                node.kind = NodeKind::Internal { children };
                debug_assert_eq!(node.height as usize, h);
            }
        }
        // Previous-context edges: same height, earlier index, no repeats.
        for n in &file.nodes {
            let mut last_index: Option<u32> = None;
            for c in &n.context {
                let Some(&source) = by_label.get(c) else {
                    return Err(invalid(format!(
                        "node '{}': context source '{c}' does not exist",
                        n.id
                    )));
                };
                let s = &graph[source.0];
                if s.height != n.height
                    || s.index >= n.index
                    || last_index.is_some_and(|l| l >= s.index)
                {
                    return Err(invalid(format!(
                        "node '{}': context source '{c}' must be an earlier node at the same height, listed in order",
                        n.id
                    )));
                }
                last_index = Some(s.index);
                graph.add_edge(source.0, by_label[&n.id].0, EdgeKind::PreviousContext);
            }
        }
        if petgraph::algo::is_cyclic_directed(&graph) {
            return Err(invalid("it contains a cycle".into()));
        }
        let root = ids[root_pos];
        Ok(TaskTree {
            graph,
            book: file.book,
            decomposer: file.decomposer,
            root,
            levels,
            parents,
            by_label,
        })
    }
}
