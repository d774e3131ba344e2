//! `rrm node show|sample|split|merge ID`: one node of a task tree in full, drawing candidates for
//! it, and split corrections on leaves.

use crate::grounding;
use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use super::args::{GeneratorOptions, WorkspaceArgs};
use super::Context;
use crate::compose::sample::{self, StoredCandidate};
use crate::tree::NodeKind;
use crate::workspace::corrections::{self, SplitPoint};
use crate::workspace::views::{child_range, node_json};
use crate::workspace::{rating, trees};

/// Inspect single nodes of task trees, draw candidates, record split corrections.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  rrm node show h1.2 --book alice
  rrm node show 3fa2c1d0
  rrm node show h0.0 --book alice --json
  rrm node show h2.0 --book DOC-ID --run my-eval-run
  rrm node sample h0.3 --book alice -n 4
  rrm node split h0.3 --book alice --after-sentence 4")]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Print a node's full input text (a leaf: its span of the book), parent, children, position,
    /// and its candidates and output once summarized.
    ///
    /// ID is a node id like h1.7 or a prefix (4+ hex digits) of a node's content hash. Without
    /// --book it is looked up in every stored tree. The outputs shown are the newest run's unless
    /// --run names another (an evaluation run's, or a summarize run's). Example: rrm node show
    /// h0.3 --book alice
    Show(ShowArgs),
    /// Draw K candidate summaries for a node with the policy model and store them (for rating).
    ///
    /// Example: rrm node sample h0.3 --book alice -n 4 --temperature 0.9
    Sample(SampleArgs),
    /// Record a correction: this leaf should be split at a byte offset or after a sentence
    /// (a training signal for the learned decomposer).
    ///
    /// Example: rrm node split h0.3 --book alice --after-sentence 4
    Split(SplitArgs),
    /// Record a correction: these two neighbouring leaves should be one leaf.
    ///
    /// Example: rrm node merge h0.3 h0.4 --book alice
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A node id (h1.7) or a content-hash prefix.
    pub id: String,
    /// Look only in the tree of this book (a file, a catalog id, or a tree file).
    #[arg(long, value_name = "BOOK|TREE.json")]
    pub book: Option<String>,
    /// Show the outputs of this run instead of the newest: an evaluation run's name (`rrm eval
    /// list`; then BOOK may be one of its document ids) or a summarize run id or its prefix.
    #[arg(long, value_name = "NAME|RUN-ID")]
    pub run: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Replace invalid UTF-8 in the book instead of failing.
    #[arg(long)]
    pub lossy: bool,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

/// `rrm node sample ID -n K`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A node id (h1.7) or a content-hash prefix.
    pub id: String,
    /// How many candidates to draw (1-64).
    #[arg(short = 'n', long = "count", default_value_t = 4, value_name = "K")]
    pub count: usize,
    /// Sampling temperature (default 0.8).
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// Sampling seed (default: the first seed not drawn yet, so every call draws new ones).
    #[arg(long = "sample-seed", value_name = "S")]
    pub seed: Option<u64>,
    /// Look only in the tree of this book.
    #[arg(long, value_name = "BOOK|TREE.json")]
    pub book: Option<String>,
    #[arg(long)]
    pub lossy: bool,
    #[command(flatten)]
    pub generator: GeneratorOptions,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

/// `rrm node split ID --book BOOK --at BYTE | --after-sentence N`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("where").required(true).args(["at", "after_sentence"])))]
pub struct SplitArgs {
    /// A leaf id (h0.7) or a content-hash prefix.
    pub id: String,
    /// The book (a file or catalog id) or tree file the leaf belongs to.
    #[arg(long, value_name = "BOOK|TREE.json")]
    pub book: String,
    /// Split at this byte offset of the book (inside the leaf).
    #[arg(long, value_name = "BYTE")]
    pub at: Option<usize>,
    /// Split after the N-th sentence of the leaf (1-based).
    #[arg(long, value_name = "N")]
    pub after_sentence: Option<usize>,
    #[arg(long)]
    pub lossy: bool,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

/// `rrm node merge ID ID --book BOOK`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Two neighbouring leaves (ids like h0.7 h0.8, or content-hash prefixes).
    #[arg(num_args = 2, required = true, value_name = "ID")]
    pub ids: Vec<String>,
    /// The book (a file or catalog id) or tree file the leaves belong to.
    #[arg(long, value_name = "BOOK|TREE.json")]
    pub book: String,
    #[arg(long)]
    pub lossy: bool,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

pub fn run(ctx: &mut Context, args: NodeArgs) -> anyhow::Result<()> {
    match args.command {
        NodeCommand::Show(args) => show(ctx, args),
        NodeCommand::Sample(args) => sample(ctx, args),
        NodeCommand::Split(args) => split(ctx, args),
        NodeCommand::Merge(args) => merge(ctx, args),
    }
}

fn show(ctx: &mut Context, args: ShowArgs) -> anyhow::Result<()> {
    let ws = ctx.workspace(&args.ws)?;
    let (loaded, id) = trees::find_node_in_run(
        ws,
        &args.id,
        args.book.as_deref(),
        args.run.as_deref(),
        args.lossy,
    )
    .with_context(|| format!("showing node {}", args.id))?;
    let (tree, book) = (&loaded.tree, loaded.book.as_ref());
    let node = tree.node(id);
    let result = match &loaded.run {
        Some(run) => run.node_result(ws.store(), &node.label)?,
        None => None,
    };
    // Every distinct candidate stored for the node's input: the composer's and those drawn
    // with `rrm node sample` (for rating), which the run's record alone does not show.
    let (stored, stored_input) = match (&result, book) {
        (Some(_), Some(book)) => {
            let input = sample::node_input(ws.store(), book, tree, loaded.run.as_ref(), id)
                .with_context(|| format!("rebuilding the input of node {}", node.label))?;
            let stored = sample::candidates_for(ws.store(), &input.input_key)
                .with_context(|| format!("reading the stored candidates of node {}", node.label))?;
            (stored, Some(input.input))
        }
        _ => (Vec::new(), None),
    };
    // What each candidate's input does not support (names, numbers, words), its coverage and
    // copying: checked against the text the candidate summarized.
    let source = result
        .as_ref()
        .and_then(|(_, set)| set.as_ref().map(|s| s.input.clone()))
        .or(stored_input)
        .map(|input| grounding::Source::new(&input));
    if args.json {
        let mut value = node_json(tree, id, book, true);
        value["book"] = serde_json::json!({ "id": tree.book_id(), "title": tree.book_title() });
        let check = |text: &str| source.as_ref().map(|s| s.check(text));
        if let Some((output, candidates)) = &result {
            let grounding: Vec<_> =
                candidates.iter().flat_map(|set| &set.candidates).map(|c| check(&c.text)).collect();
            value["result"] = serde_json::json!({
                "output": output,
                "candidates": candidates,
                "grounding": grounding,
            });
        }
        value["stored_candidates"] = stored
            .iter()
            .map(|c| {
                serde_json::json!({
                    "hash": c.hash,
                    "text": c.text,
                    "gen_key": c.gen_key,
                    "mean_logprob": c.mean_logprob,
                    "grounding": check(&c.text),
                })
            })
            .collect();
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
                    let score =
                        output.scores.get(i).map_or("-".to_string(), |s| format!("{:.3}", s.score));
                    println!(
                        "{mark} candidate {i}: score {score}, {} tokens, mean logprob {}, finish {:?}{}",
                        c.completion_tokens,
                        c.mean_logprob.map_or("-".to_string(), |l| format!("{l:.3}")),
                        c.finish,
                        if c.looped { ", looped (cut)" } else { "" }
                    );
                    println!("    {}", c.text);
                    if let Some(source) = &source {
                        println!("    {}", grounding_line(&source.check(&c.text)));
                    }
                }
            }
            println!("output    {}", output.text);
            if stored.len() > 1 {
                println!(
                    "stored    {} distinct candidates (with `rrm node sample`'s):",
                    stored.len()
                );
                print_candidates(&stored);
            }
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

/// One line on a candidate's grounding: what its input does not support, coverage, copying.
fn grounding_line(r: &grounding::Report) -> String {
    let spans: Vec<&str> = r.spans.iter().map(|s| s.text.as_str()).collect();
    format!(
        "grounding: {:.0}% unsupported ({} of {} content words{}{}), covers {:.0}% of the \
         input's key terms, {:.0}% of 4-grams copied (longest run {} words)",
        100.0 * r.unsupported_rate,
        r.unsupported(),
        r.content_tokens,
        if spans.is_empty() { "" } else { ": " },
        spans.join(" · "),
        100.0 * r.coverage,
        100.0 * r.copied_4gram_share,
        r.longest_copy,
    )
}

fn print_candidates(cands: &[StoredCandidate]) {
    for (i, c) in cands.iter().enumerate() {
        println!("[{i}] {}  {}", &c.hash[..8], c.text);
    }
}

fn sample(ctx: &mut Context, args: SampleArgs) -> anyhow::Result<()> {
    if args.count == 0 || args.count > 64 {
        bail!("-n must be between 1 and 64 (got {})", args.count);
    }
    let progress = ctx.progress();
    let ws = ctx.workspace(&args.ws)?.clone();
    let target = rating::resolve(&ws, &args.id, args.book.as_deref(), args.lossy)?;
    let generator = args.generator.start(&args.ws.models, args.count, progress)?;
    let before = target.candidates(&ws)?.len();
    let runtime = super::args::runtime()?;
    let all = runtime
        .block_on(rating::draw(
            &ws,
            generator.as_ref(),
            &target,
            args.count,
            args.temperature,
            args.seed,
        ))
        .with_context(|| format!("sampling candidates for node {}", target.label()))?;
    println!(
        "node {} (height {}): {} candidates stored ({} new)",
        target.label(),
        target.input.height,
        all.len(),
        all.len().saturating_sub(before)
    );
    print_candidates(&all);
    Ok(())
}

fn split(ctx: &mut Context, args: SplitArgs) -> anyhow::Result<()> {
    let ws = ctx.workspace(&args.ws)?;
    let loaded = trees::load_target(ws, &args.book, args.lossy)?;
    let point = match (args.at, args.after_sentence) {
        (Some(at), _) => SplitPoint::Byte(at),
        (None, Some(n)) => SplitPoint::AfterSentence(n),
        (None, None) => bail!("pass --at BYTE or --after-sentence N"),
    };
    let (feedback, key) = corrections::record_split(ws, &loaded, &args.id, point)?;
    let (at, _) = feedback.label();
    let book = loaded.require_book()?;
    let preview: String = book.text()[at..].chars().take(60).collect();
    println!("recorded: split {} at byte {at} (before {:?})", feedback.nodes[0], preview.trim());
    println!("key       {key}  (retrain with `rrm decomposer train --books ...`)");
    Ok(())
}

fn merge(ctx: &mut Context, args: MergeArgs) -> anyhow::Result<()> {
    let ws = ctx.workspace(&args.ws)?;
    let loaded = trees::load_target(ws, &args.book, args.lossy)?;
    let (feedback, key) = corrections::record_merge(ws, &loaded, &args.ids[0], &args.ids[1])?;
    let (at, _) = feedback.label();
    println!(
        "recorded: merge {} and {} (no boundary at byte {at})",
        feedback.nodes[0], feedback.nodes[1]
    );
    println!("key       {key}  (retrain with `rrm decomposer train --books ...`)");
    Ok(())
}
