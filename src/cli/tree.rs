//! `rrm tree show BOOK|TREE.json`: a book's task tree, one line per node (or JSON).

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::args::WorkspaceArgs;
use super::Context;
use crate::book::Book;
use crate::tree::{NodeId, NodeKind, TaskTree};
use crate::workspace::trees;
use crate::workspace::views::{child_range, depth_first, node_json, preview, tree_header_json};

/// Inspect task trees.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  rrm tree show alice
  rrm tree show alice --depth 1
  rrm tree show task_trees/<book-id>.json --json
  rrm tree show DOC-ID --run my-eval-run --depth 0")]
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
    /// Show the outputs of this run instead of the newest: an evaluation run's name (`rrm eval
    /// list`; then the target may be one of its document ids) or a summarize run id or its prefix.
    #[arg(long, value_name = "NAME|RUN-ID")]
    pub run: Option<String>,
    /// Print JSON instead of an indented tree.
    #[arg(long)]
    pub json: bool,
    /// Replace invalid UTF-8 in the book instead of failing.
    #[arg(long)]
    pub lossy: bool,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

pub fn run(ctx: &mut Context, args: TreeArgs) -> anyhow::Result<()> {
    match args.command {
        TreeCommand::Show(args) => show(ctx, args),
    }
}

/// One line of `tree show`.
fn node_line(tree: &TaskTree, id: NodeId, book: Option<&Book>) -> String {
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

fn show(ctx: &mut Context, args: ShowArgs) -> anyhow::Result<()> {
    let ws = ctx.workspace(&args.ws)?;
    let loaded = trees::load_target_in_run(ws, &args.target, args.run.as_deref(), args.lossy)
        .with_context(|| format!("showing the tree of {}", args.target))?;
    let (tree, book) = (&loaded.tree, loaded.book.as_ref());
    let order = depth_first(tree, args.depth.unwrap_or(u32::MAX));
    if args.json {
        let nodes: Vec<serde_json::Value> = order
            .iter()
            .map(|&(id, depth)| {
                let mut v = node_json(tree, id, book, false);
                v["depth"] = depth.into();
                v
            })
            .collect();
        let mut out = tree_header_json(&loaded);
        out["nodes"] = nodes.into();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let run = match &loaded.run {
        Some(r) if r.complete => format!("; outputs of run {}", r.run_id),
        Some(r) => format!("; outputs of run {} (incomplete: {} nodes)", r.run_id, r.outputs.len()),
        None => String::new(),
    };
    println!(
        "{}  [{}]  {} nodes, {} leaves, height {}{run}",
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
