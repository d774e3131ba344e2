//! `rrm tree show BOOK|TREE.json`, and the helpers that find trees (by book, by file, in the
//! store) and describe nodes, shared with `rrm node show`.
//!
//! Printing is one function per view ([`node_line`], [`node_json`]) so later issues can add
//! columns (outputs, candidates, ratings) in one place.

use std::path::Path;

use anyhow::{anyhow, Context as _};
use clap::{Args, Subcommand};

use super::books::{self, BooksDir};
use super::decompose::TreesDir;
use super::Context;
use crate::book::Book;
use crate::compose::RunRecord;
use crate::store::Table;
use crate::tree::{NodeId, NodeKind, TaskTree, TreeRecord};

/// Inspect task trees.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  rrm tree show alice
  rrm tree show alice --depth 1
  rrm tree show task_trees/<book-id>.json --json")]
pub struct TreeArgs {
    #[command(subcommand)]
    pub command: TreeCommand,
}

#[derive(Debug, Subcommand)]
pub enum TreeCommand {
    /// Print a book's task tree, one line per node: id, height, tokens, span or children, preview.
    ///
    /// BOOK is a book file or catalog id (its tree must have been built with `rrm decompose`),
    /// or a tree file. Example: rrm tree show alice --depth 1
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A book file, a catalog id, or a task tree file (.json).
    #[arg(value_name = "BOOK|TREE.json")]
    pub target: String,
    /// Show nodes down to this depth below the root (0: the root only).
    #[arg(long, value_name = "N")]
    pub depth: Option<u32>,
    /// Print JSON instead of an indented tree.
    #[arg(long)]
    pub json: bool,
    /// Replace invalid UTF-8 in the book instead of failing.
    #[arg(long)]
    pub lossy: bool,
    #[command(flatten)]
    pub books: BooksDir,
    #[command(flatten)]
    pub trees: TreesDir,
}

/// A tree and, when it can be found, its book.
pub struct LoadedTree {
    pub tree: TaskTree,
    pub book: Option<Book>,
    /// The summarize run whose outputs are attached to the tree, if any.
    pub run: Option<RunRecord>,
}

impl LoadedTree {
    /// The node `spec` (a label like h1.7 or a content-hash prefix) names in this tree.
    pub fn node_id(&self, spec: &str) -> anyhow::Result<NodeId> {
        self.tree.find(spec).ok_or_else(|| {
            anyhow!(
                "no node '{spec}' in the tree of {} ({})",
                self.tree.book_title(),
                super::node::ID_HELP
            )
        })
    }
}

/// The tree named by BOOK|TREE.json: a tree file is read directly (its book looked up in the
/// store); a book is opened and its tree taken from the trees folder or the store.
pub fn load_target(
    ctx: &mut Context,
    target: &str,
    books_dir: &Path,
    trees_dir: &Path,
    lossy: bool,
) -> anyhow::Result<LoadedTree> {
    if target.ends_with(".json") {
        let tree = TaskTree::load_unchecked(target)?;
        let book = books::book_by_id(ctx, tree.book_id())?;
        if let Some(book) = &book {
            tree.check_book(book, target)?;
        } else {
            tracing::warn!("the book of {target} is not in the database; showing no text");
        }
        let mut loaded = LoadedTree { tree, book, run: None };
        attach_outputs(ctx, &mut loaded)?;
        return Ok(loaded);
    }
    let book = books::open_book(ctx, target, books_dir, lossy)?;
    let tree = tree_for_book(ctx, &book, trees_dir)?.ok_or_else(|| {
        anyhow!("no task tree for '{}' yet; build one with `rrm decompose {target}`", book.title())
    })?;
    let mut loaded = LoadedTree { tree, book: Some(book), run: None };
    attach_outputs(ctx, &mut loaded)?;
    Ok(loaded)
}

/// Puts the outputs of the book's last `rrm summarize` into the tree's output slots, if that
/// run composed this very tree.
pub fn attach_outputs(ctx: &mut Context, loaded: &mut LoadedTree) -> anyhow::Result<()> {
    let store = ctx.store()?;
    if let Some(run) = RunRecord::load(store, loaded.tree.book_id().as_str())? {
        if run.attach(store, &mut loaded.tree)? > 0 {
            loaded.run = Some(run);
        }
    }
    Ok(())
}

/// The tree of `book`: `trees_dir/<book-id>.json`, else the one in the store.
pub fn tree_for_book(
    ctx: &mut Context,
    book: &Book,
    trees_dir: &Path,
) -> anyhow::Result<Option<TaskTree>> {
    let path = trees_dir.join(format!("{}.json", book.id()));
    if path.exists() {
        return Ok(Some(TaskTree::load(&path, book)?));
    }
    let store = ctx.store()?;
    let Some(record) = store.get::<TreeRecord>(Table::TaskTrees, book.id().as_str())? else {
        return Ok(None);
    };
    let tree = record.tree()?;
    tree.check_book(book, "stored tree")?;
    Ok(Some(tree))
}

/// Every tree this workspace knows: those in the store, then files in `trees_dir` for other
/// books. Unreadable ones are skipped with a warning.
pub fn all_trees(ctx: &mut Context, trees_dir: &Path) -> anyhow::Result<Vec<TaskTree>> {
    let store = ctx.store()?;
    let mut trees: Vec<TaskTree> = Vec::new();
    for (key, record) in store.scan::<TreeRecord>(Table::TaskTrees, "")? {
        match record.tree() {
            Ok(tree) => trees.push(tree),
            Err(err) => tracing::warn!("stored tree {key}: {err}"),
        }
    }
    if let Ok(entries) = std::fs::read_dir(trees_dir) {
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
            let known = path
                .file_stem()
                .is_some_and(|s| trees.iter().any(|t| t.book_id().as_str() == s.to_string_lossy()));
            if known {
                continue;
            }
            match TaskTree::load_unchecked(&path) {
                Ok(tree) => trees.push(tree),
                Err(err) => tracing::warn!("{err}"),
            }
        }
    }
    Ok(trees)
}

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

/// One line of `tree show`.
pub fn node_line(tree: &TaskTree, id: NodeId, book: Option<&Book>) -> String {
    let node = tree.node(id);
    let what = match &node.kind {
        NodeKind::Leaf { span } => format!("bytes {span}"),
        NodeKind::Internal { .. } => format!("children {}", child_range(tree, id)),
    };
    let text = match (&node.output, book) {
        (Some(output), _) => format!("» {}", preview(output, 60)),
        (None, Some(book)) => format!("\"{}\"", preview(book.slice(node.covers), 60)),
        (None, None) => String::new(),
    };
    format!(
        "{} {}  h{}  {:>5} tok  {:<28} {}",
        node.label,
        node.short_hash(),
        node.height,
        node.input_tokens,
        what,
        text
    )
}

/// A node as JSON (used by `tree show --json` and `node show --json`).
pub fn node_json(
    tree: &TaskTree,
    id: NodeId,
    book: Option<&Book>,
    full_text: bool,
) -> serde_json::Value {
    let node = tree.node(id);
    let labels =
        |ids: Vec<NodeId>| ids.iter().map(|&i| tree.node(i).label.clone()).collect::<Vec<_>>();
    let mut value = serde_json::json!({
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

pub fn run(ctx: &mut Context, args: TreeArgs) -> anyhow::Result<()> {
    match args.command {
        TreeCommand::Show(args) => show(ctx, args),
    }
}

fn show(ctx: &mut Context, args: ShowArgs) -> anyhow::Result<()> {
    let loaded =
        load_target(ctx, &args.target, &args.books.books_dir, &args.trees.trees_dir, args.lossy)
            .with_context(|| format!("showing the tree of {}", args.target))?;
    let (tree, book) = (&loaded.tree, loaded.book.as_ref());
    let max_depth = args.depth.unwrap_or(u32::MAX);
    // Depth-first from the root, children in order.
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
    if args.json {
        let nodes: Vec<serde_json::Value> = order
            .iter()
            .map(|&(id, depth)| {
                let mut v = node_json(tree, id, book, false);
                v["depth"] = depth.into();
                v
            })
            .collect();
        let out = serde_json::json!({
            "book": { "id": tree.book_id(), "title": tree.book_title(), "bytes": tree.book_len() },
            "decomposer": tree.decomposer(),
            "root": tree.node(tree.root()).label,
            "height": tree.max_height(),
            "nodes": nodes,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{}  [{}]  {} nodes, {} leaves, height {}",
        tree.book_title(),
        tree.book_id().short(),
        tree.len(),
        tree.leaves().len(),
        tree.max_height()
    );
    for (id, depth) in order {
        println!("{}{}", "  ".repeat(depth as usize), node_line(tree, id, book));
    }
    Ok(())
}
