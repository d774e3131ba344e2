//! `rrm feedback list|show|export|import|agreement|queue|simulate`: the stored feedback, its
//! exchange formats, labeler agreement, what to rate next, and a simulated labeler.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use rand::seq::SliceRandom;
use rand::Rng;

use super::reward::{load_encoder, EncoderArgs, RewardDir};
use super::tree::preview;
use super::Context;
use crate::compose::sample::{candidates_by_input, node_index};
use crate::feedback::queue::{self, QueueItem, QueueNode};
use crate::feedback::sim::{self, SimLabeler};
use crate::feedback::{self, io, Feedback, FeedbackKind};
use crate::reward::features::Featurizer;
use crate::reward::RewardModel;

/// Inspect, exchange and simulate feedback.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  rrm feedback list
  rrm feedback export --format trl --out prefs.jsonl
  rrm feedback import ratings.jsonl --skip-bad
  rrm feedback queue -n 10
  rrm feedback simulate --labeler coverage -n 200 --noise 0.1")]
pub struct FeedbackArgs {
    #[command(subcommand)]
    pub command: FeedbackCommand,
}

#[derive(Debug, Subcommand)]
pub enum FeedbackCommand {
    /// List stored feedback, oldest first.
    List(ListArgs),
    /// Print one record in full (ID: 4+ characters of its id).
    Show { id: String },
    /// Write feedback as JSONL (as stored) or in TRL's {prompt, chosen, rejected} format.
    Export(ExportArgs),
    /// Import a JSONL file: every line is validated; a bad line imports nothing unless --skip-bad.
    Import(ImportArgs),
    /// How often labelers agree where two or more compared the same pair.
    Agreement {
        #[arg(long)]
        json: bool,
    },
    /// What to rate next: pairs where the reward ensemble disagrees most, scarce heights first.
    Queue(QueueArgs),
    /// Store comparisons from a simulated labeler (coverage of salient words, length penalty).
    Simulate(SimulateArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this kind (comparison, likert, demonstration, correction, critique).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this labeler.
    #[arg(long)]
    pub labeler: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Trl,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    pub format: ExportFormat,
    /// Write here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    pub file: PathBuf,
    /// Import the good lines and report the bad ones.
    #[arg(long)]
    pub skip_bad: bool,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// How many suggestions.
    #[arg(short = 'n', long = "count", default_value_t = 10)]
    pub count: usize,
    /// The reward model whose disagreement ranks pairs (`latest`, a hash, a folder, or `none`).
    #[arg(long, default_value = "latest", value_name = "PATH|latest|none")]
    pub reward_model: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub reward_dir: RewardDir,
    #[command(flatten)]
    pub encoder: EncoderArgs,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The labeler id stored with each comparison.
    #[arg(long, default_value = "sim-coverage")]
    pub labeler: String,
    /// How many comparisons.
    #[arg(short = 'n', long = "count", default_value_t = 100)]
    pub count: usize,
    /// Probability of flipping each answer.
    #[arg(long, default_value_t = 0.0)]
    pub noise: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(ctx: &mut Context, args: FeedbackArgs) -> anyhow::Result<()> {
    match args.command {
        FeedbackCommand::List(a) => list(ctx, a),
        FeedbackCommand::Show { id } => {
            let fb = feedback::find(ctx.store()?, &id)?.ok_or_else(|| {
                anyhow!("no feedback record with id '{id}…' (see `rrm feedback list`)")
            })?;
            println!("{}", serde_json::to_string_pretty(&fb)?);
            Ok(())
        }
        FeedbackCommand::Export(a) => export(ctx, a),
        FeedbackCommand::Import(a) => {
            let report = io::import_file(ctx.store()?, &a.file, a.skip_bad)
                .with_context(|| format!("importing {}", a.file.display()))?;
            for (n, why) in &report.bad {
                eprintln!("skipped line {n}: {why}");
            }
            println!(
                "imported {} record(s) from {}{}",
                report.imported,
                a.file.display(),
                if report.bad.is_empty() {
                    String::new()
                } else {
                    format!(", skipped {} bad line(s)", report.bad.len())
                }
            );
            Ok(())
        }
        FeedbackCommand::Agreement { json } => {
            let ag = feedback::agreement(&feedback::all(ctx.store()?)?);
            if json {
                println!("{}", serde_json::to_string_pretty(&ag)?);
            } else {
                match ag.rate {
                    None => println!("no pair was compared by two labelers yet"),
                    Some(rate) => {
                        println!(
                            "agreement {:.1}% ({} of {} judgment pairs, on {} pairs of texts)",
                            100.0 * rate,
                            ag.agreeing,
                            ag.judgment_pairs,
                            ag.shared_pairs
                        );
                        for (who, (agree, total)) in &ag.by_labelers {
                            println!("  {who}: {agree}/{total}");
                        }
                    }
                }
            }
            Ok(())
        }
        FeedbackCommand::Queue(a) => {
            let dir = a.reward_dir.dir(ctx);
            let spec = (a.reward_model != "none").then_some(a.reward_model.as_str());
            let items = queue_items_with(ctx, spec, &dir, &a.encoder)?;
            let items: Vec<_> = items.into_iter().take(a.count).collect();
            if a.json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else if items.is_empty() {
                println!("nothing to rate: no node has two candidates not yet compared (draw some with `rrm node sample ID`)");
            } else {
                for i in &items {
                    println!(
                        "{:>7.3}  {} h{}  book {}  candidates {} vs {}  disagreement {}  ({} comparisons at this height)",
                        i.priority,
                        i.node.as_deref().unwrap_or("?"),
                        i.height,
                        i.book.as_deref().map_or("?", |b| &b[..b.len().min(12)]),
                        i.a,
                        i.b,
                        i.disagreement.map_or("-".into(), |d| format!("{d:.3}")),
                        i.height_data
                    );
                }
            }
            Ok(())
        }
        FeedbackCommand::Simulate(a) => simulate(ctx, a),
    }
}

fn list(ctx: &mut Context, args: ListArgs) -> anyhow::Result<()> {
    let records: Vec<Feedback> = feedback::all(ctx.store()?)?
        .into_iter()
        .filter(|f| args.kind.as_deref().is_none_or(|k| f.kind.name() == k))
        .filter(|f| args.labeler.as_deref().is_none_or(|l| f.labeler == l))
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    if records.is_empty() {
        println!("no feedback yet (rate a node with `rrm rate ID`)");
    }
    for f in &records {
        let what = match &f.kind {
            FeedbackKind::Comparison { prefer, confidence, .. } => {
                format!("prefer {prefer:?} ({confidence}/9)")
            }
            FeedbackKind::Likert { scores, .. } => format!(
                "coverage {} accuracy {} coherence {} overall {}",
                scores.coverage, scores.accuracy, scores.coherence, scores.overall
            ),
            FeedbackKind::Demonstration { summary } => preview(&summary.text, 50),
            FeedbackKind::Correction { edited, .. } => preview(&edited.text, 50),
            FeedbackKind::Critique { critique, .. } => preview(critique, 50),
        };
        println!(
            "{}  {:<13} {:<12} h{} {:<6} {}",
            &f.id[..12],
            f.kind.name(),
            f.labeler,
            f.height,
            f.node.as_deref().unwrap_or("-"),
            what
        );
    }
    Ok(())
}

fn export(ctx: &mut Context, args: ExportArgs) -> anyhow::Result<()> {
    let records = feedback::all(ctx.store()?)?;
    let mut buf = Vec::new();
    match args.format {
        ExportFormat::Jsonl => io::write_jsonl(&mut buf, &records)?,
        ExportFormat::Trl => io::write_trl(&mut buf, &records)?,
    }
    match &args.out {
        Some(path) => {
            std::fs::write(path, &buf).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} line(s) to {}",
                buf.iter().filter(|&&b| b == b'\n').count(),
                path.display()
            );
        }
        None => std::io::stdout().write_all(&buf)?,
    }
    Ok(())
}

/// Every stored node with two or more distinct candidates, as queue nodes.
fn queue_nodes(ctx: &mut Context) -> anyhow::Result<Vec<QueueNode>> {
    let store = ctx.store()?;
    let index = node_index(store)?;
    Ok(candidates_by_input(store)?
        .into_iter()
        .filter(|(_, n)| n.candidates.len() >= 2)
        .map(|(key, n)| {
            let at = index.get(&key).and_then(|refs| refs.first());
            QueueNode {
                book: at.map(|r| r.book_id.clone()),
                node: at.map(|r| r.label.clone()),
                input_key: key,
                height: n.height,
                input: n.input,
                candidates: n.candidates.into_iter().map(|c| c.text).collect(),
            }
        })
        .collect())
}

/// The queue, ranked with the reward model `spec` when given and present (`latest` when none
/// is trained yet counts as absent).
pub fn queue_items(
    ctx: &mut Context,
    spec: Option<&str>,
    models_dir: Option<&Path>,
) -> anyhow::Result<Vec<QueueItem>> {
    let dir = RewardDir { reward_dir: None }.dir(ctx);
    let encoder = EncoderArgs {
        encoder: crate::infer::fetch::DEFAULT_ENCODER.to_string(),
        models_dir: models_dir.map(Path::to_path_buf),
        device: crate::infer::engine::DeviceChoice::Auto,
    };
    queue_items_with(ctx, Some(spec.unwrap_or("latest")), &dir, &encoder)
}

fn queue_items_with(
    ctx: &mut Context,
    spec: Option<&str>,
    dir: &Path,
    encoder_args: &EncoderArgs,
) -> anyhow::Result<Vec<QueueItem>> {
    let nodes = queue_nodes(ctx)?;
    let records = feedback::all(ctx.store()?)?;
    let model = match spec {
        Some("latest") if RewardModel::resolve("latest", dir).is_err() => None,
        Some(spec) => Some(RewardModel::load(&RewardModel::resolve(spec, dir)?)?),
        None => None,
    };
    let mut members: HashMap<String, Vec<Vec<f32>>> = HashMap::new();
    if let Some(model) = &model {
        let encoder = load_encoder(encoder_args, ctx.quiet)?;
        model.check_encoder(encoder.as_ref())?;
        let mut featurizer = Featurizer::new(encoder.as_ref(), Some(ctx.store()?.clone()));
        for n in &nodes {
            let texts: Vec<&str> = n.candidates.iter().map(String::as_str).collect();
            members.insert(
                n.input_key.clone(),
                model.member_scores(&mut featurizer, n.height, &n.input, &texts)?,
            );
        }
    }
    let disagreement = |n: &QueueNode, i: usize, j: usize| -> Option<f64> {
        let m = members.get(&n.input_key)?;
        let diffs: Vec<f64> = m.iter().map(|s| f64::from(s[i] - s[j])).collect();
        let k = diffs.len().max(1) as f64;
        let mean = diffs.iter().sum::<f64>() / k;
        Some((diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / k).sqrt())
    };
    Ok(queue::build(&nodes, &records, &disagreement))
}

fn simulate(ctx: &mut Context, args: SimulateArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.noise) {
        bail!("--noise must be between 0 and 1 (got {})", args.noise);
    }
    if args.labeler.trim().is_empty() {
        bail!("--labeler must not be empty");
    }
    let nodes = queue_nodes(ctx)?;
    if nodes.is_empty() {
        bail!("no stored node has two or more candidates: run `rrm summarize BOOK --best-of 4` or `rrm node sample ID -n 4` first");
    }
    let labeler = SimLabeler::new(&args.labeler, args.noise);
    let mut rng = sim::rng(args.seed);
    let done: HashSet<(String, String, String)> = feedback::all(ctx.store()?)?
        .into_iter()
        .filter(|f| f.labeler == args.labeler)
        .filter_map(|f| match f.kind {
            FeedbackKind::Comparison { a, b, .. } => Some((f.input_key, a.hash, b.hash)),
            _ => None,
        })
        .collect();
    // Every uncompared pair of every node, shuffled, round-robin over nodes.
    let mut per_node: Vec<Vec<(usize, usize)>> = nodes
        .iter()
        .map(|n| {
            let hashes: Vec<String> = n.candidates.iter().map(|c| feedback::text_hash(c)).collect();
            let mut pairs = Vec::new();
            for i in 0..hashes.len() {
                for j in i + 1..hashes.len() {
                    let key =
                        |a: &str, b: &str| (n.input_key.clone(), a.to_string(), b.to_string());
                    if !done.contains(&key(&hashes[i], &hashes[j]))
                        && !done.contains(&key(&hashes[j], &hashes[i]))
                    {
                        pairs.push(if rng.random_bool(0.5) { (i, j) } else { (j, i) });
                    }
                }
            }
            pairs.shuffle(&mut rng);
            pairs
        })
        .collect();
    let mut records = Vec::new();
    let mut by_height: BTreeMap<u32, usize> = BTreeMap::new();
    'outer: loop {
        let mut any = false;
        for (n, pairs) in nodes.iter().zip(per_node.iter_mut()) {
            if records.len() >= args.count {
                break 'outer;
            }
            if let Some((i, j)) = pairs.pop() {
                any = true;
                let kind = labeler.compare(&n.input, &n.candidates[i], &n.candidates[j], &mut rng);
                records.push(
                    Feedback::new(&args.labeler, &n.input_key, &n.input, n.height, kind)
                        .at(n.book.clone(), n.node.clone()),
                );
                *by_height.entry(n.height).or_default() += 1;
            }
        }
        if !any {
            break;
        }
    }
    let stored = feedback::put_all(ctx.store()?, records)?;
    let heights: Vec<String> = by_height.iter().map(|(h, n)| format!("h{h}: {n}")).collect();
    println!(
        "stored {stored} simulated comparison(s) by {} (noise {}) on {} node(s); {}",
        args.labeler,
        args.noise,
        nodes.len(),
        heights.join(", ")
    );
    if stored < args.count {
        eprintln!(
            "(only {stored} uncompared pairs were left; draw more candidates to simulate more)"
        );
    }
    Ok(())
}
