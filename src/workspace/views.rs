//! The JSON shapes of trees and nodes, shared by the CLI's `--json` output and the web app's
//! API, so scripts see one format wherever they read it.

use serde_json::{json, Value};

use super::LoadedTree;
use crate::book::Book;
use crate::tree::{NodeId, TaskTree};

/// A one-line preview of `text`: whitespace collapsed, at most `max` characters.
pub fn preview(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
        if out.chars().count() > max {
            let cut: String = out.chars().take(max.saturating_sub(1)).collect();
            return format!("{cut}…");
        }
    }
    out
}

/// `h0.3..h0.9 (7)`, the children of an internal node.
pub fn child_range(tree: &TaskTree, id: NodeId) -> String {
    let children = tree.children(id);
    match (children.first(), children.last()) {
        (Some(&a), Some(&b)) if a == b => tree.node(a).label.clone(),
        (Some(&a), Some(&b)) => {
            format!("{}..{} ({})", tree.node(a).label, tree.node(b).label, children.len())
        }
        _ => String::new(),
    }
}

/// A node as JSON: id, hash, height, position, edges, span, tokens, output; with the book, a
/// preview (and a leaf's full text when `full_text`).
pub fn node_json(tree: &TaskTree, id: NodeId, book: Option<&Book>, full_text: bool) -> Value {
    let node = tree.node(id);
    let labels =
        |ids: Vec<NodeId>| ids.iter().map(|&i| tree.node(i).label.clone()).collect::<Vec<_>>();
    let mut value = json!({
        "id": node.label,
        "hash": node.content_hash,
        "height": node.height,
        "index": node.index,
        "parent": tree.parent(id).map(|p| tree.node(p).label.clone()),
        "children": labels(tree.children(id)),
        "context": labels(tree.context_inputs(id)),
        "span": node.span(),
        "covers": node.covers,
        "input_tokens": node.input_tokens,
        "output_tokens": node.output_tokens,
        "output": node.output,
    });
    if let Some(book) = book {
        value["preview"] = preview(book.slice(node.covers), 60).into();
        if full_text && node.is_leaf() {
            value["text"] = book.slice(node.covers).into();
        }
    }
    value
}

/// The tree's header as JSON (book, decomposer, root, height, the run attached).
pub fn tree_header_json(loaded: &LoadedTree) -> Value {
    let tree = &loaded.tree;
    json!({
        "book": { "id": tree.book_id(), "title": tree.book_title(), "bytes": tree.book_len() },
        "decomposer": tree.decomposer(),
        "root": tree.node(tree.root()).label,
        "height": tree.max_height(),
        "nodes_total": tree.len(),
        "leaves": tree.leaves().len(),
        "run": loaded.run.as_ref().map(|r| json!({
            "run_id": r.run_id,
            "model": r.model,
            "models_at": r.models_at,
            "selector": r.selector,
            "complete": r.complete,
            "outputs": r.outputs.len(),
        })),
    })
}

/// Depth-first order from the root (children in order) down to `max_depth`, with depths.
pub fn depth_first(tree: &TaskTree, max_depth: u32) -> Vec<(NodeId, u32)> {
    let mut order: Vec<(NodeId, u32)> = Vec::with_capacity(tree.len());
    let mut stack = vec![(tree.root(), 0u32)];
    while let Some((id, depth)) = stack.pop() {
        order.push((id, depth));
        if depth < max_depth {
            for child in tree.children(id).into_iter().rev() {
                stack.push((child, depth + 1));
            }
        }
    }
    order
}
