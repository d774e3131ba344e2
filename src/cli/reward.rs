//! `rrm reward train|eval|score|bench`: per-level reward models from the stored feedback (or a
//! TRL preference file), their evaluation, scoring a node's candidates, and timings.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

#[cfg(feature = "testing")]
mod bench;

use super::args::{EncoderArgs, WorkspaceArgs};
use super::Context;
use crate::feedback::{self, io, Pair};
use crate::infer::Encoder;
use crate::reward::model::mean_std;
use crate::reward::train::{Metrics, TrainConfig};
use crate::reward::RewardModel;
use crate::workspace::summarize::load_reward_model;
use crate::workspace::views::preview;
use crate::workspace::{embeddings, rating, Workspace};
use std::sync::Arc;

/// Train, evaluate and apply reward models.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  rrm reward train --all
  rrm reward train --height 0 --shared
  rrm reward train --data prefs.jsonl
  rrm reward eval --json
  rrm reward eval --data heldout.jsonl
  rrm reward score h0.3 --book alice")]
pub struct RewardArgs {
    #[command(subcommand)]
    pub command: RewardCommand,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
    #[command(flatten)]
    pub encoder: EncoderArgs,
}

#[derive(Debug, Subcommand)]
pub enum RewardCommand {
    /// Train one reward model per tree height (or one shared) on the stored feedback.
    Train(TrainArgs),
    /// Report accuracy, log-loss and calibration (held-out books, or an external TRL file).
    Eval(EvalArgs),
    /// Score a node's stored candidates.
    Score(ScoreArgs),
    /// Time featurizing, training on N synthetic comparisons, and scoring (built with
    /// `--features testing`: the synthetic data is test support).
    #[cfg(feature = "testing")]
    Bench(bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Train only these heights (repeatable).
    #[arg(long, value_name = "H", conflicts_with = "all")]
    pub height: Vec<u32>,
    /// Train every height with data (the default).
    #[arg(long)]
    pub all: bool,
    /// One ensemble for all heights, with a height embedding.
    #[arg(long)]
    pub shared: bool,
    /// Train from a TRL preference file ({prompt, chosen, rejected}[, height]) instead.
    #[arg(long, value_name = "FILE.jsonl")]
    pub data: Option<PathBuf>,
    /// Ensemble members.
    #[arg(long, default_value_t = 4, value_name = "K")]
    pub members: usize,
    /// Hidden units per head.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    #[arg(long, default_value_t = 40)]
    pub max_epochs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The checkpoint: `latest`, a hash, or a folder.
    #[arg(long, default_value = "latest", value_name = "PATH|latest")]
    pub model: String,
    /// Evaluate on a TRL preference file instead of the stored feedback's held-out books.
    #[arg(long, value_name = "FILE.jsonl")]
    pub data: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// A node id (h1.7) or a content-hash prefix.
    pub id: String,
    #[arg(long, value_name = "BOOK|TREE.json")]
    pub book: Option<String>,
    #[arg(long, default_value = "latest", value_name = "PATH|latest")]
    pub model: String,
    /// λ in mean − λ·std.
    #[arg(long, default_value_t = 1.0)]
    pub pessimism: f32,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub lossy: bool,
}

pub fn run(ctx: &mut Context, args: RewardArgs) -> anyhow::Result<()> {
    let progress = ctx.progress();
    let ws = ctx.workspace(&args.ws)?.clone();
    let encoder = || ws.encoder(&args.encoder.encoder, progress);
    match args.command {
        RewardCommand::Train(a) => train(ctx, &ws, encoder()?, a),
        RewardCommand::Eval(a) => eval(&ws, &encoder, a),
        RewardCommand::Score(a) => score(&ws, &encoder, a),
        #[cfg(feature = "testing")]
        RewardCommand::Bench(a) => bench::run(&ws, encoder()?, a),
    }
}

fn print_metrics(metrics: &std::collections::BTreeMap<String, Metrics>) {
    println!("{:<8} {:>7} {:>8} {:>9} {:>7}", "height", "pairs", "accuracy", "log-loss", "ECE");
    for (scope, m) in metrics {
        println!(
            "{:<8} {:>7} {:>7.1}% {:>9.3} {:>7.3}",
            scope,
            m.pairs,
            100.0 * m.accuracy,
            m.log_loss,
            m.ece
        );
    }
}

fn train(
    ctx: &Context,
    ws: &Workspace,
    encoder: Arc<dyn Encoder>,
    args: TrainArgs,
) -> anyhow::Result<()> {
    if args.members == 0 || args.members > 32 {
        bail!("--members must be between 1 and 32");
    }
    if args.hidden == 0 {
        bail!("--hidden must be at least 1");
    }
    let (mut pairs, source) = match &args.data {
        Some(path) => (
            io::read_trl(path).with_context(|| format!("reading {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (feedback::to_pairs(&feedback::all(ws.store())?), "store".to_string()),
    };
    if !args.height.is_empty() {
        pairs.retain(|p| args.height.contains(&p.height));
    }
    if pairs.is_empty() {
        bail!(
            "no preference pairs to train on{} (rate nodes with `rrm rate`, or simulate with `rrm feedback simulate`)",
            if args.height.is_empty() { String::new() } else { format!(" at height(s) {:?}", args.height) }
        );
    }
    let config = TrainConfig {
        members: args.members,
        hidden: args.hidden,
        max_epochs: args.max_epochs.max(1),
        shared: args.shared,
        seed: args.seed,
        ..TrainConfig::default()
    };
    let bar = ctx.spinner(format!("training on {} pairs", pairs.len()));
    let cache = embeddings::cache(ws.store());
    let result = RewardModel::train(encoder.as_ref(), Some(cache), &pairs, &config, &source);
    bar.finish_and_clear();
    let mut model = result.context("training the reward model")?;
    let path = model.save(ws.reward_dir())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&model.card)?);
        return Ok(());
    }
    println!(
        "reward model {} saved to {} ({} pairs from {} book(s); features {:.1} s, training {:.1} s)",
        model.card.hash,
        path.display(),
        model.card.data.pairs,
        model.card.data.groups,
        model.card.featurize_seconds,
        model.card.train_seconds
    );
    println!(
        "metrics on {}:",
        if model.card.held_out {
            "held-out test books (validation books chose the epoch and are not reported)"
        } else {
            "the training pairs (only one book: nothing to hold out)"
        }
    );
    print_metrics(&model.card.metrics);
    Ok(())
}

type LoadEncoder<'a> = &'a dyn Fn() -> Result<Arc<dyn Encoder>, crate::workspace::WorkspaceError>;

fn eval(ws: &Workspace, encoder: LoadEncoder<'_>, args: EvalArgs) -> anyhow::Result<()> {
    let model = load_reward_model(ws, &args.model)?;
    let (pairs, what): (Vec<Pair>, String) = match &args.data {
        Some(path) => (
            io::read_trl(path).with_context(|| format!("reading {}", path.display()))?,
            path.display().to_string(),
        ),
        None => {
            let all = feedback::to_pairs(&feedback::all(ws.store())?);
            let held: Vec<Pair> = all
                .iter()
                .filter(|p| model.card.data.test_groups.contains(&p.group))
                .cloned()
                .collect();
            if held.is_empty() {
                (all, "all stored feedback (no held-out book)".to_string())
            } else {
                (held, "the test books' stored feedback (never trained on)".to_string())
            }
        }
    };
    if pairs.is_empty() {
        bail!("no preference pairs to evaluate on");
    }
    let encoder = encoder()?;
    model.check_encoder(encoder.as_ref())?;
    let mut featurizer = embeddings::featurizer(ws, encoder.as_ref());
    let metrics = model.evaluate(&mut featurizer, &pairs)?;
    if args.json {
        let v = serde_json::json!({ "model": model.card.hash, "data": what, "metrics": metrics });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("reward model {} on {what}:", model.card.hash);
        print_metrics(&metrics);
    }
    Ok(())
}

fn score(ws: &Workspace, encoder: LoadEncoder<'_>, args: ScoreArgs) -> anyhow::Result<()> {
    let target = rating::resolve(ws, &args.id, args.book.as_deref(), args.lossy)?;
    let cands = target.candidates(ws)?;
    if cands.is_empty() {
        bail!(
            "node {} has no stored candidates (run `rrm node sample {}`)",
            target.label(),
            target.label()
        );
    }
    let model = load_reward_model(ws, &args.model)?;
    let encoder = encoder()?;
    model.check_encoder(encoder.as_ref())?;
    let mut featurizer = embeddings::featurizer(ws, encoder.as_ref());
    let texts: Vec<&str> = cands.iter().map(|c| c.text.as_str()).collect();
    let members =
        model.member_scores(&mut featurizer, target.input.height, &target.input.input, &texts)?;
    let stats = mean_std(&members);
    let mut rows: Vec<(usize, f32, f32, f32)> =
        stats.iter().enumerate().map(|(i, &(m, s))| (i, m - args.pessimism * s, m, s)).collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    if args.json {
        let v: Vec<_> = rows
            .iter()
            .map(|&(i, score, mean, std)| {
                serde_json::json!({ "index": i, "hash": cands[i].hash, "score": score, "mean": mean, "std": std, "text": cands[i].text })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "node": target.label(), "model": model.card.hash, "pessimism": args.pessimism, "candidates": v })
            )?
        );
        return Ok(());
    }
    println!(
        "node {} (height {}), reward model {}, λ = {}",
        target.label(),
        target.input.height,
        model.card.hash,
        args.pessimism
    );
    for (i, score, mean, std) in rows {
        println!(
            "[{i}] {}  score {score:>7.3}  mean {mean:>7.3}  std {std:>6.3}  {}",
            &cands[i].hash[..8],
            preview(&cands[i].text, 70)
        );
    }
    Ok(())
}
