//! `rrm node show ID`: one node of a task tree in full: its input text, parent, children,
//! context sources and position. The node is looked up in every stored tree, or in one book's
//! tree with `--book`.

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use super::books::{self, BooksDir};
use super::decompose::TreesDir;
use super::tree::{child_range, load_target, node_json, tree_for_book, LoadedTree};
use super::Context;
use crate::tree::{NodeId, NodeKind};

/// Inspect single nodes of task trees.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  rrm node show h1.2 --book alice
  rrm node show 3fa2c1d0
  rrm node show h0.0 --book alice --json")]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Print a node's full input text (a leaf: its span of the book), parent, children, position.
    ///
    /// ID is a node id like h1.7 or a prefix (4+ hex digits) of a node's content hash. Without
    /// --book it is looked up in every stored tree. Example: rrm node show h0.3 --book alice
    Show(ShowArgs),
    /// Draw K candidate summaries for a node with the policy model and store them (for rating).
    ///
    /// Example: rrm node sample h0.3 --book alice -n 4 --temperature 0.9
    Sample(super::rate::SampleArgs),
    /// Record a correction: this leaf should be split at a byte offset or after a sentence
    /// (a training signal for the learned decomposer).
    ///
    /// Example: rrm node split h0.3 --book alice --after-sentence 4
    Split(super::decomposer::SplitArgs),
    /// Record a correction: these two neighbouring leaves should be one leaf.
    ///
    /// Example: rrm node merge h0.3 h0.4 --book alice
    Merge(super::decomposer::MergeArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A node id (h1.7) or a content-hash prefix.
    pub id: String,
    /// Look only in the tree of this book (a file, a catalog id, or a tree file).
    #[arg(long, value_name = "BOOK|TREE.json")]
    pub book: Option<String>,
    /// Print JSON.
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

pub fn run(ctx: &mut Context, args: NodeArgs) -> anyhow::Result<()> {
    match args.command {
        NodeCommand::Show(args) => show(ctx, args),
        NodeCommand::Split(args) => super::decomposer::split(ctx, args),
        NodeCommand::Merge(args) => super::decomposer::merge(ctx, args),
        NodeCommand::Sample(args) => super::rate::sample_cmd(ctx, args),
    }
}

pub(crate) const ID_HELP: &str =
    "ids look like h1.7 (height 1, index 7) or a content-hash prefix of 4+ hex digits";

/// Finds the node: in the tree of `--book`, or in every known tree.
pub(crate) fn find(ctx: &mut Context, args: &ShowArgs) -> anyhow::Result<(LoadedTree, NodeId)> {
    if let Some(spec) = &args.book {
        let loaded =
            load_target(ctx, spec, &args.books.books_dir, &args.trees.trees_dir, args.lossy)?;
        let id = loaded.node_id(&args.id)?;
        return Ok((loaded, id));
    }
    let trees = super::tree::all_trees(ctx, &args.trees.trees_dir)?;
    if trees.is_empty() {
        bail!("no task trees yet; build one with `rrm decompose BOOK`");
    }
    let mut matches: Vec<_> =
        trees.into_iter().filter_map(|tree| tree.find(&args.id).map(|id| (tree, id))).collect();
    match matches.len() {
        0 => bail!("no node '{}' in any of the known task trees ({ID_HELP})", args.id),
        1 => {
            let (tree, id) = matches.remove(0);
            let book = books::book_by_id(ctx, tree.book_id())?;
            // Prefer the tree file on disk (it may be newer), if it has the node too: an id of
            // one tree must never index another.
            let on_disk = match &book {
                Some(b) => tree_for_book(ctx, b, &args.trees.trees_dir)?,
                None => None,
            };
            let (tree, id) = match on_disk.and_then(|t| t.find(&args.id).map(|i| (t, i))) {
                Some(found) => found,
                None => (tree, id),
            };
            let mut loaded = LoadedTree { tree, book, run: None };
            super::tree::attach_outputs(ctx, &mut loaded)?;
            Ok((loaded, id))
        }
        n => {
            let titles: Vec<String> = matches
                .iter()
                .map(|(t, _)| format!("{} [{}]", t.book_title(), t.book_id().short()))
                .collect();
            bail!(
                "'{}' names nodes in {n} trees ({}); pass --book BOOK",
                args.id,
                titles.join(", ")
            )
        }
    }
}

fn show(ctx: &mut Context, args: ShowArgs) -> anyhow::Result<()> {
    let (loaded, id) = find(ctx, &args).with_context(|| format!("showing node {}", args.id))?;
    let (tree, book) = (&loaded.tree, loaded.book.as_ref());
    let node = tree.node(id);
    let result = match &loaded.run {
        Some(run) => run.node_result(ctx.store()?, &node.label)?,
        None => None,
    };
    if args.json {
        let mut value = node_json(tree, id, book, true);
        value["book"] = serde_json::json!({ "id": tree.book_id(), "title": tree.book_title() });
        if let Some((output, candidates)) = &result {
            value["result"] = serde_json::json!({ "output": output, "candidates": candidates });
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let level = tree.level(node.height).len();
    let len = tree.book_len().max(1) as f64;
    println!("node      {}  ({})", node.label, node.content_hash);
    println!("book      {}  [{}]", tree.book_title(), tree.book_id().short());
    println!(
        "position  height {} of {}, index {} of {level} at this height; bytes {} ({:.1}%–{:.1}% of the book)",
        node.height,
        tree.max_height(),
        node.index,
        node.covers,
        100.0 * node.covers.start as f64 / len,
        100.0 * node.covers.end as f64 / len,
    );
    let parent = tree.parent(id).map(|p| tree.node(p).label.clone());
    println!("parent    {}", parent.as_deref().unwrap_or("none (this is the root)"));
    if !node.is_leaf() {
        println!("children  {}", child_range(tree, id));
    }
    let context: Vec<String> =
        tree.context_inputs(id).iter().map(|&c| tree.node(c).label.clone()).collect();
    println!(
        "context   {}",
        if context.is_empty() { "none".to_string() } else { context.join(", ") }
    );
    println!("tokens    input {}, output cap {}", node.input_tokens, node.output_tokens);
    match &result {
        Some((output, candidates)) => {
            println!(
                "cache     output {}  (candidates {})",
                &output.output_key[..16],
                &output.gen_key[..16]
            );
            if let Some(set) = candidates {
                println!(
                    "generated by {} in {:.1} s, {} prompt tokens, template {}, temperature {}",
                    set.model.name,
                    set.elapsed_ms as f64 / 1000.0,
                    set.prompt_tokens,
                    set.template,
                    set.sampling.temperature
                );
                for (i, c) in set.candidates.iter().enumerate() {
                    let mark = if i == output.chosen { "*" } else { " " };
                    let score = output.scores.get(i).map(|s| s.score).unwrap_or(f32::NAN);
                    println!(
                        "{mark} candidate {i}: score {score:.3}, {} tokens, mean logprob {}, finish {:?}{}",
                        c.completion_tokens,
                        c.mean_logprob.map_or("-".to_string(), |l| format!("{l:.3}")),
                        c.finish,
                        if c.looped { ", looped (cut)" } else { "" }
                    );
                    println!("    {}", c.text);
                }
            }
            println!("output    {}", output.text);
        }
        None => println!("output    (not summarized yet: rrm summarize BOOK)"),
    }
    println!();
    match &node.kind {
        NodeKind::Leaf { span } => match book {
            Some(book) => {
                println!("--- input: the book's text, bytes {span} ---");
                println!("{}", book.slice(*span));
            }
            None => println!("--- input: bytes {span} of the book (its file was not found) ---"),
        },
        NodeKind::Internal { children } => {
            println!("--- input: the outputs of its {} children ---", children.len());
            for &c in children {
                let child = tree.node(c);
                match &child.output {
                    Some(output) => println!("[{}] {output}", child.label),
                    None => println!("[{}] (not summarized yet)", child.label),
                }
            }
        }
    }
    Ok(())
}
