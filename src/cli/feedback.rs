//! `rrm feedback list|show|export|import|agreement|queue|simulate`: the stored feedback, its
//! exchange formats, labeler agreement, what to rate next, and a simulated labeler.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};

use super::args::{EncoderArgs, WorkspaceArgs};
use super::Context;
use crate::feedback::decomp::DecompComparison;
use crate::feedback::sim::{self, SimLabeler};
use crate::feedback::stats::DECOMPOSITION;
use crate::feedback::{self, io, Feedback, FeedbackKind};
use crate::workspace::queue::{self, QueueFilter};
use crate::workspace::summarize::load_reward_model_if_any;
use crate::workspace::views::preview;
use crate::workspace::{corrections, Workspace};

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
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

#[derive(Debug, Subcommand)]
pub enum FeedbackCommand {
    /// List stored feedback, oldest first.
    List(ListArgs),
    /// Print one record in full (ID: 4+ characters of its id).
    Show { id: String },
    /// Write feedback as JSONL (as stored, split corrections included) or in TRL's
    /// {prompt, chosen, rejected} format.
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
    /// Only this kind (comparison, likert, demonstration, correction, critique,
    /// decomposition). With --json, `decomposition` prints the decomposition comparisons and
    /// any other choice (or none) the node feedback records.
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
    /// Only pairs this labeler has not compared.
    #[arg(long, value_name = "NAME")]
    pub labeler: Option<String>,
    /// Show each pair to this many different labelers.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub overlap: usize,
    #[arg(long)]
    pub json: bool,
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
    let progress = ctx.progress();
    let ws = ctx.workspace(&args.ws)?.clone();
    match args.command {
        FeedbackCommand::List(a) => list(&ws, a),
        FeedbackCommand::Show { id } => {
            if let Some(fb) = feedback::find(ws.store(), &id)? {
                println!("{}", serde_json::to_string_pretty(&fb)?);
                return Ok(());
            }
            // Decomposition comparisons live apart from node feedback.
            let found: Vec<_> = crate::feedback::decomp::all(ws.store())?
                .into_iter()
                .filter(|r| !id.is_empty() && r.id.starts_with(&id))
                .collect();
            match found.as_slice() {
                [one] => {
                    println!("{}", serde_json::to_string_pretty(one)?);
                    Ok(())
                }
                [] => Err(anyhow!("no feedback record with id '{id}…' (see `rrm feedback list`)")),
                many => Err(anyhow!(
                    "id '{id}…' matches {} decomposition comparisons; give more of it",
                    many.len()
                )),
            }
        }
        FeedbackCommand::Export(a) => export(&ws, a),
        FeedbackCommand::Import(a) => {
            let report = io::import_file(ws.store(), &a.file, a.skip_bad)
                .with_context(|| format!("importing {}", a.file.display()))?;
            for (n, why) in &report.bad {
                eprintln!("skipped line {n}: {why}");
            }
            println!(
                "imported {} record(s) ({} split correction(s), {} decomposition comparison(s)) \
                 from {}{}",
                report.imported + report.splits + report.decompositions,
                report.splits,
                report.decompositions,
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
            let ag = feedback::agreement(&feedback::all(ws.store())?);
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
            let model = match a.reward_model.as_str() {
                "none" => None,
                spec => load_reward_model_if_any(&ws, spec)?,
            };
            let encoder = match &model {
                Some(_) => Some(ws.encoder(&a.encoder.encoder, progress)?),
                None => None,
            };
            let filter = QueueFilter {
                labeler: a.labeler.clone(),
                overlap: Some(a.overlap.max(1)),
                ..QueueFilter::default()
            };
            let items = queue::items(&ws, model.as_ref().zip(encoder.as_deref()), &filter)?;
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
        FeedbackCommand::Simulate(a) => simulate(&ws, a),
    }
}

fn list(ws: &Workspace, args: ListArgs) -> anyhow::Result<()> {
    let records: Vec<Feedback> = feedback::all(ws.store())?
        .into_iter()
        .filter(|f| args.kind.as_deref().is_none_or(|k| f.kind.name() == k))
        .filter(|f| args.labeler.as_deref().is_none_or(|l| f.labeler == l))
        .collect();
    let decompositions: Vec<DecompComparison> = feedback::decomp::all(ws.store())?
        .into_iter()
        .filter(|_| args.kind.as_deref().is_none_or(|k| k == DECOMPOSITION))
        .filter(|d| args.labeler.as_deref().is_none_or(|l| d.labeler == l))
        .collect();
    if args.json {
        if args.kind.as_deref() == Some(DECOMPOSITION) {
            println!("{}", serde_json::to_string_pretty(&decompositions)?);
        } else {
            println!("{}", serde_json::to_string_pretty(&records)?);
        }
        return Ok(());
    }
    if records.is_empty() && decompositions.is_empty() {
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
    for d in &decompositions {
        println!(
            "{}  {:<13} {:<12} {:<9} {}..{} {}; A = {}, B = {}{}",
            &d.id[..12],
            DECOMPOSITION,
            d.labeler,
            d.node.as_deref().unwrap_or("-"),
            d.start,
            d.end,
            d.describe(),
            d.a.label(),
            d.b.label(),
            d.judge_ms.map(|ms| format!(", {:.1} s", ms as f64 / 1000.0)).unwrap_or_default()
        );
    }
    Ok(())
}

fn export(ws: &Workspace, args: ExportArgs) -> anyhow::Result<()> {
    let records = feedback::all(ws.store())?;
    let decompositions = feedback::decomp::all(ws.store())?;
    let mut buf = Vec::new();
    match args.format {
        ExportFormat::Jsonl => {
            io::write_jsonl_all(&mut buf, &records, &corrections::all(ws)?, &decompositions)?
        }
        ExportFormat::Trl => {
            io::write_trl(&mut buf, &records)?;
            if !decompositions.is_empty() {
                eprintln!(
                    "note: {} decomposition comparison(s) left out: they are not text \
                     preferences (use --format jsonl for them)",
                    decompositions.len()
                );
            }
        }
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

fn simulate(ws: &Workspace, args: SimulateArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.noise) {
        bail!("--noise must be between 0 and 1 (got {})", args.noise);
    }
    if args.labeler.trim().is_empty() {
        bail!("--labeler must not be empty");
    }
    let nodes = queue::nodes(ws)?;
    if nodes.is_empty() {
        bail!("no stored node has two or more candidates: run `rrm summarize BOOK --best-of 4` or `rrm node sample ID -n 4` first");
    }
    let labeler = SimLabeler::new(&args.labeler, args.noise);
    let records =
        sim::campaign(&labeler, &nodes, &feedback::all(ws.store())?, args.count, args.seed);
    let mut by_height: BTreeMap<u32, usize> = BTreeMap::new();
    for r in &records {
        *by_height.entry(r.height).or_default() += 1;
    }
    let stored = feedback::put_all(ws.store(), records)?;
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
