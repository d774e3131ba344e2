//! `rrm reward train|eval|score|bench`: per-level reward models from the stored feedback (or a
//! TRL preference file), their evaluation, scoring a node's candidates, and timings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use super::books::{spinner, BooksDir};
use super::decompose::TreesDir;
use super::rate::resolve;
use super::Context;
use crate::compose::sample::candidates_for;
use crate::feedback::sim::SimLabeler;
use crate::feedback::{self, io, Pair};
use crate::infer::encoder::{EncoderOptions, MiniLmEncoder};
use crate::infer::engine::DeviceChoice;
use crate::infer::{fetch, Encoder};
use crate::reward::features::Featurizer;
use crate::reward::model::mean_std;
use crate::reward::train::{Metrics, TrainConfig};
use crate::reward::{synth, RewardModel};

/// Where reward checkpoints live.
#[derive(Debug, Clone, Args)]
pub struct RewardDir {
    /// Folder of reward model checkpoints (default: `reward/` beside the database).
    #[arg(long, env = "RRM_REWARD_DIR", value_name = "DIR")]
    pub reward_dir: Option<PathBuf>,
}

impl RewardDir {
    pub fn dir(&self, ctx: &Context) -> PathBuf {
        self.reward_dir.clone().unwrap_or_else(|| {
            ctx.db_path.parent().unwrap_or_else(|| Path::new(".")).join("reward")
        })
    }
}

/// Which sentence encoder gives the features.
#[derive(Debug, Clone, Args)]
pub struct EncoderArgs {
    /// A registered encoder name (fetched on first use) or a model folder.
    #[arg(long, default_value = fetch::DEFAULT_ENCODER, value_name = "SPEC")]
    pub encoder: String,
    /// Folder for fetched models (default: the user's cache folder).
    #[arg(long, env = "RRM_MODELS", value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Where the encoder runs (auto: a CUDA GPU when built with `--features cuda` and present).
    #[arg(long, default_value = "auto", value_parser = parse_device, value_name = "cpu|cuda|auto")]
    pub device: DeviceChoice,
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
}

/// Loads (fetching on first use) the encoder.
pub fn load_encoder(args: &EncoderArgs, quiet: bool) -> anyhow::Result<Arc<dyn Encoder>> {
    let dir = fetch::models_dir(args.models_dir.as_deref());
    let options = EncoderOptions::on(args.device.device()?);
    let encoder = MiniLmEncoder::resolve_and_load(&args.encoder, &dir, !quiet, options)
        .with_context(|| format!("loading the encoder {}", args.encoder))?;
    Ok(Arc::new(encoder))
}

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
}

#[derive(Debug, Subcommand)]
pub enum RewardCommand {
    /// Train one reward model per tree height (or one shared) on the stored feedback.
    Train(TrainArgs),
    /// Report accuracy, log-loss and calibration (held-out books, or an external TRL file).
    Eval(EvalArgs),
    /// Score a node's stored candidates.
    Score(ScoreArgs),
    /// Time featurizing, training on N synthetic comparisons, and scoring.
    Bench(BenchArgs),
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
    #[command(flatten)]
    pub reward_dir: RewardDir,
    #[command(flatten)]
    pub encoder: EncoderArgs,
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
    #[command(flatten)]
    pub reward_dir: RewardDir,
    #[command(flatten)]
    pub encoder: EncoderArgs,
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
    #[command(flatten)]
    pub reward_dir: RewardDir,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[command(flatten)]
    pub books: BooksDir,
    #[command(flatten)]
    pub trees: TreesDir,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Comparisons to train on.
    #[arg(long, default_value_t = 10_000)]
    pub pairs: usize,
    /// Candidates to score for the throughput figure.
    #[arg(long, default_value_t = 512)]
    pub candidates: usize,
    #[command(flatten)]
    pub encoder: EncoderArgs,
}

pub fn run(ctx: &mut Context, args: RewardArgs) -> anyhow::Result<()> {
    match args.command {
        RewardCommand::Train(a) => train(ctx, a),
        RewardCommand::Eval(a) => eval(ctx, a),
        RewardCommand::Score(a) => score(ctx, a),
        RewardCommand::Bench(a) => bench(ctx, a),
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

fn train(ctx: &mut Context, args: TrainArgs) -> anyhow::Result<()> {
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
        None => (feedback::to_pairs(&feedback::all(ctx.store()?)?), "store".to_string()),
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
    let encoder = load_encoder(&args.encoder, ctx.quiet)?;
    let config = TrainConfig {
        members: args.members,
        hidden: args.hidden,
        max_epochs: args.max_epochs.max(1),
        shared: args.shared,
        seed: args.seed,
        ..TrainConfig::default()
    };
    let store = ctx.store()?.clone();
    let bar = spinner(ctx, format!("training on {} pairs", pairs.len()));
    let result = RewardModel::train(encoder.as_ref(), Some(store), &pairs, &config, &source);
    bar.finish_and_clear();
    let mut model = result.context("training the reward model")?;
    let dir = args.reward_dir.dir(ctx);
    let path = model.save(&dir)?;
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
            "held-out books"
        } else {
            "the training pairs (only one book: nothing to hold out)"
        }
    );
    print_metrics(&model.card.metrics);
    Ok(())
}

fn load_model(ctx: &Context, spec: &str, dir: &RewardDir) -> anyhow::Result<RewardModel> {
    let path = RewardModel::resolve(spec, &dir.dir(ctx))?;
    Ok(RewardModel::load(&path)?)
}

fn eval(ctx: &mut Context, args: EvalArgs) -> anyhow::Result<()> {
    let model = load_model(ctx, &args.model, &args.reward_dir)?;
    let (pairs, what): (Vec<Pair>, String) = match &args.data {
        Some(path) => (
            io::read_trl(path).with_context(|| format!("reading {}", path.display()))?,
            path.display().to_string(),
        ),
        None => {
            let all = feedback::to_pairs(&feedback::all(ctx.store()?)?);
            let held: Vec<Pair> = all
                .iter()
                .filter(|p| model.card.data.val_groups.contains(&p.group))
                .cloned()
                .collect();
            if held.is_empty() {
                (all, "all stored feedback (no held-out book)".to_string())
            } else {
                (held, "the held-out books' stored feedback".to_string())
            }
        }
    };
    if pairs.is_empty() {
        bail!("no preference pairs to evaluate on");
    }
    let encoder = load_encoder(&args.encoder, ctx.quiet)?;
    model.check_encoder(encoder.as_ref())?;
    let mut featurizer = Featurizer::new(encoder.as_ref(), Some(ctx.store()?.clone()));
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

fn score(ctx: &mut Context, args: ScoreArgs) -> anyhow::Result<()> {
    let target =
        resolve(ctx, &args.id, args.book.as_deref(), args.lossy, &args.books, &args.trees)?;
    let cands = candidates_for(ctx.store()?, &target.input.input_key)?;
    if cands.is_empty() {
        bail!(
            "node {} has no stored candidates (run `rrm node sample {}`)",
            target.label(),
            target.label()
        );
    }
    let model = load_model(ctx, &args.model, &args.reward_dir)?;
    let encoder = load_encoder(&args.encoder, ctx.quiet)?;
    model.check_encoder(encoder.as_ref())?;
    let mut featurizer = Featurizer::new(encoder.as_ref(), Some(ctx.store()?.clone()));
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
            super::tree::preview(&cands[i].text, 70)
        );
    }
    Ok(())
}

/// CPU seconds (user + system) this process has used, from /proc (Linux); 0 elsewhere. On a
/// shared, loaded machine wall-clock time overstates cost; CPU time does not.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn bench(ctx: &mut Context, args: BenchArgs) -> anyhow::Result<()> {
    let encoder = load_encoder(&args.encoder, ctx.quiet)?;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    // Synthetic nodes: enough that every pair of 6 candidates gives `pairs` comparisons.
    let per_node = 15;
    let nodes_needed = args.pairs.div_ceil(per_node).max(1);
    let books = nodes_needed.div_ceil(6).max(2);
    let nodes = synth::corpus(11, books, 4, 2, 6);
    let sim = SimLabeler::new("bench", 0.0);
    let mut rng = crate::feedback::sim::rng(1);
    let mut records = Vec::new();
    'outer: for n in &nodes {
        for i in 0..n.candidates.len() {
            for j in i + 1..n.candidates.len() {
                if records.len() >= args.pairs {
                    break 'outer;
                }
                if n.candidates[i] == n.candidates[j] {
                    continue;
                }
                let kind = sim.compare(&n.input, &n.candidates[i], &n.candidates[j], &mut rng);
                records.push(
                    feedback::Feedback::new(
                        "bench",
                        &feedback::text_hash(&n.input),
                        &n.input,
                        n.height,
                        kind,
                    )
                    .at(Some(n.book.clone()), None),
                );
            }
        }
    }
    let pairs = feedback::to_pairs(&records);
    let store = ctx.store()?.clone();
    let mut featurizer = Featurizer::new(encoder.as_ref(), Some(store.clone()));
    let t0 = Instant::now();
    crate::reward::prepare_pairs(&mut featurizer, &pairs)?;
    let cold = t0.elapsed().as_secs_f64();
    // Warm: a fresh featurizer over the same store finds every embedding cached.
    let mut warm_f = Featurizer::new(encoder.as_ref(), Some(store));
    let t0 = Instant::now();
    crate::reward::prepare_pairs(&mut warm_f, &pairs)?;
    let warm = t0.elapsed().as_secs_f64();
    let config = TrainConfig::default();
    let t0 = Instant::now();
    let c0 = cpu_seconds();
    let model =
        RewardModel::train_prepared(&warm_f, encoder.as_ref(), &pairs, &config, "bench", warm)?;
    let train_s = t0.elapsed().as_secs_f64();
    let train_cpu = cpu_seconds() - c0;
    // Scoring throughput on new candidate texts (embedding included), and on cached ones.
    let fresh = synth::corpus(99, args.candidates.div_ceil(36).max(1), 4, 2, 6);
    let mut scored = 0;
    let mut f_nocache = Featurizer::new(encoder.as_ref(), None);
    let t0 = Instant::now();
    let c0 = cpu_seconds();
    for n in &fresh {
        if scored >= args.candidates {
            break;
        }
        let texts: Vec<&str> = n.candidates.iter().map(String::as_str).collect();
        model.member_scores(&mut f_nocache, n.height, &n.input, &texts)?;
        scored += texts.len();
    }
    let score_s = t0.elapsed().as_secs_f64();
    let score_cpu = cpu_seconds() - c0;
    let t0 = Instant::now();
    for n in fresh.iter().take(scored / 6) {
        let texts: Vec<&str> = n.candidates.iter().map(String::as_str).collect();
        model.member_scores(&mut f_nocache, n.height, &n.input, &texts)?;
    }
    let score_warm_s = t0.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "threads": threads,
        "comparisons": pairs.len(),
        "embed_cold_s": cold,
        "embed_cached_s": warm,
        "train_s": train_s,
        "train_cpu_s": train_cpu,
        "score_cpu_s_with_embedding": score_cpu,
        "train_epochs": model.card.epochs,
        "members": config.members,
        "heldout_metrics": model.card.metrics,
        "score_candidates": scored,
        "score_candidates_per_s_with_embedding": scored as f64 / score_s.max(1e-9),
        "score_candidates_per_s_cached": scored as f64 / score_warm_s.max(1e-9),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
