//! `rrm reward train|eval|score|bench`: per-level reward models from the stored feedback (or a
//! TRL preference file), their evaluation, scoring a node's candidates, and timings.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

#[cfg(feature = "testing")]
mod bench;

use super::args::{CheckpointArgs, EncoderArgs, WorkspaceArgs};
use super::progress::TrainProgress;
use super::Context;
use crate::feedback::learn::{ConfidenceUse, Kinds, LearnOptions, TrainingData};
use crate::feedback::Pair;
use crate::infer::Encoder;
use crate::lm::{LoraConfig, Mode};
use crate::reward::lm::{is_lm_checkpoint, metrics_by_height, LmRewardModel, LmTrainConfig};
use crate::reward::model::mean_std;
use crate::reward::train::{Metrics, TrainConfig, MIN_TEMPERATURE_PAIRS};
use crate::reward::{consensus, data, eval as report, grounded, support, RewardModel};
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
  rrm reward train --kinds all,-critique --confidence soft
  rrm reward eval --json
  rrm reward eval --data heldout.jsonl
  rrm reward eval --data pairs.jsonl --split test   (all the test groups of its training file)
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
    Train(Box<TrainArgs>),
    /// Report accuracy, log-loss and calibration (held-out books, or an external TRL file).
    Eval(EvalArgs),
    /// Score a node's stored candidates.
    Score(ScoreArgs),
    /// Bring in a reward model trained elsewhere: a Hugging Face sequence-classification
    /// checkpoint with one label (TRL's RewardTrainer output, adapter merged). It becomes an LM
    /// reward model in the reward folder, usable as `--reward-model HASH`.
    Import(ImportArgs),
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
    /// Train from a file instead: TRL pairs ({prompt, chosen, rejected}[, height, group, kind,
    /// weight, target, references]), rating rows ({prompt, completion, likert}) or feedback
    /// records.
    #[arg(long, value_name = "FILE.jsonl")]
    pub data: Option<PathBuf>,
    /// Feedback kinds to learn from: all, none, comparison, likert (pairs), ordinal (Likert as
    /// an ordinal target), correction, demonstration, critique, synthetic; `-kind` drops one.
    #[arg(long, default_value = "all", value_name = "LIST")]
    pub kinds: String,
    /// How a comparison's confidence enters: weight (loss weight), soft (target), ignore.
    #[arg(long, default_value = "weight", value_name = "USE")]
    pub confidence: String,
    /// Weight of the ordinal (Likert) loss beside the Bradley–Terry loss.
    #[arg(long, default_value_t = 0.5)]
    pub ordinal_weight: f64,
    /// Loss weight of critique-implied pairs.
    #[arg(long, default_value_t = 0.5)]
    pub critique_weight: f32,
    /// Label smoothing ε: every training target t becomes (1−ε)·t + ε/2, so pairs already
    /// told apart stop pulling the margins up (0: off).
    #[arg(long, default_value_t = 0.0, value_name = "EPS")]
    pub label_smoothing: f32,
    /// Feedback kinds of the validation pairs that choose the epoch or checkpoint (and, with
    /// `--backbone lm`, fit the temperature), in the `--kinds` syntax: e.g. `synthetic` to
    /// validate on pairs of two model summaries, the choice best-of-N makes.
    #[arg(long, default_value = "all", value_name = "LIST")]
    pub val_kinds: String,
    /// Ensemble members.
    #[arg(long, default_value_t = 4, value_name = "K")]
    pub members: usize,
    /// Hidden units per head.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Training epochs at most (validation keeps the best). 0 only with --hybrid: the
    /// features-only model (each member's learned output at zero, w the fit).
    #[arg(long, default_value_t = 40)]
    pub max_epochs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of groups (books, source documents) held out for validation (it chooses the
    /// epoch, or with `--backbone lm` the checkpoint), in percent.
    #[arg(long, default_value_t = 20)]
    pub val_percent: u32,
    /// Share of groups held out as the test set the card's metrics are on, in percent.
    #[arg(long, default_value_t = 20)]
    pub test_percent: u32,
    #[arg(long)]
    pub json: bool,
    /// What the reward model is built on: `minilm` (frozen sentence embeddings + small heads,
    /// fast) or `lm` (the policy language model with a scalar head, trained end to end).
    #[arg(long, value_enum, default_value_t = Backbone::Minilm)]
    pub backbone: Backbone,
    /// A hybrid model (either backbone): each member scores the learned score plus w·g, g the
    /// grounding features (unsupported content and names, coverage, copying, length ratio), w
    /// fitted on the training pairs first and then trained jointly; validation may keep that
    /// features-only start.
    #[arg(long)]
    pub hybrid: bool,
    #[command(flatten)]
    pub lm: LmArgs,
}

/// The reward model's backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backbone {
    Minilm,
    Lm,
}

/// Options of `--backbone lm`.
#[derive(Debug, Args)]
pub struct LmArgs {
    /// The language model to start from: a catalog name or a GGUF file.
    #[arg(long, default_value = "smollm2-135m", value_name = "MODEL")]
    pub base: String,
    /// LoRA rank (0: full fine-tuning).
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// Adapters only in the top N transformer blocks (default: all): the blocks below run
    /// forward only (no backward pass through them, no activations kept for one).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub lora_top_layers: Option<u64>,
    /// Optimizer steps per member (default: `--epochs` passes over the pairs; 0 with
    /// `--probe-epochs`: the probe alone).
    #[arg(long)]
    pub steps: Option<usize>,
    /// First fit the head alone, for up to N passes over every training pair, on the frozen
    /// model's features (one forward pass per pair; validation chooses the pass), then
    /// fine-tune from it: linear probing, then fine-tuning.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub probe_epochs: usize,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Pairs per optimizer step.
    #[arg(long, default_value_t = 4)]
    pub batch_pairs: usize,
    /// Tokens per input (prompt + summary): a longer input loses its end, the summary stays
    /// whole.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    #[command(flatten)]
    pub memory: CheckpointArgs,
    /// Optimizer steps between validations (default: once per epoch, and after the last step).
    #[arg(long, value_name = "STEPS")]
    pub eval_every: Option<usize>,
    /// At most this many validation and test pairs are scored (a fixed sample).
    #[arg(long, default_value_t = 256)]
    pub eval_pairs: usize,
    /// A scalar head per tree height (nodes above the highest trained height use its head),
    /// instead of one head whose input's per-height prompt tells the heights apart.
    #[arg(long)]
    pub head_per_height: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The checkpoint: `latest`, a hash, a folder, `grounding[:copy=leaves|all]` (no model: the
    /// summary checked against its input) or `lm-support[:MODEL]` (a language model's support
    /// for the summary given its input); the last two need `--data`.
    #[arg(long, default_value = "latest", value_name = "PATH|latest|grounding|lm-support")]
    pub model: String,
    /// Evaluate on a TRL preference file instead of the stored feedback's held-out books.
    #[arg(long, value_name = "FILE.jsonl")]
    pub data: Option<PathBuf>,
    /// With `--data`: which of the file's pairs. `test` and `val` keep the pairs in the
    /// checkpoint's own test (validation) groups — every one of them, where training scored a
    /// sample — so the file is normally the one it was trained from.
    #[arg(long, value_enum, default_value_t = EvalSplit::All, requires = "data")]
    pub split: EvalSplit,
    #[arg(long)]
    pub json: bool,
}

/// The pairs of a data file `rrm reward eval` scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalSplit {
    /// Every pair in the file.
    All,
    /// The pairs in the checkpoint's test groups.
    Test,
    /// The pairs in the checkpoint's validation groups.
    Val,
}

impl EvalSplit {
    /// Keeps the pairs of `pairs` this split asks for, given the checkpoint's validation and
    /// test groups; an empty result is an error that names the file.
    fn select(
        self,
        pairs: Vec<Pair>,
        what: &str,
        val_groups: &[String],
        test_groups: &[String],
    ) -> anyhow::Result<(Vec<Pair>, String)> {
        let (groups, name) = match self {
            EvalSplit::All => return Ok((pairs, what.to_string())),
            EvalSplit::Test => (test_groups, "test"),
            EvalSplit::Val => (val_groups, "validation"),
        };
        let total = pairs.len();
        let kept: Vec<Pair> = pairs.into_iter().filter(|p| groups.contains(&p.group)).collect();
        if kept.is_empty() {
            bail!(
                "none of the {total} pairs of {what} is in the checkpoint's {} {name} group(s): \
                 `--split {name}` needs the file the checkpoint was trained from",
                groups.len()
            );
        }
        let described =
            format!("{what}, its {} pairs in the checkpoint's {name} groups", kept.len());
        Ok((kept, described))
    }
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

#[derive(Debug, Args)]
#[command(after_help = "Example:
  python scripts/trl/train_reward.py --data prefs.jsonl --out trl-reward
  rrm reward import trl-reward
  rrm summarize alice --best-of 4 --reward-model HASH")]
pub struct ImportArgs {
    /// The checkpoint folder (config.json with a `…ForSequenceClassification` architecture and
    /// one label, model.safetensors with `score.weight`, tokenizer.json).
    pub dir: PathBuf,
    /// Tokens per scored input (prompt + summary); longer inputs lose the end of the text
    /// summarized, as in training.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_tokens: usize,
}

pub fn run(ctx: &mut Context, args: RewardArgs) -> anyhow::Result<()> {
    let progress = ctx.progress();
    let ws = ctx.workspace(&args.ws)?.clone();
    let encoder = || ws.encoder(&args.encoder.encoder, progress);
    match args.command {
        RewardCommand::Train(a) => train(ctx, &ws, encoder()?, *a),
        RewardCommand::Eval(a) => eval(&ws, &encoder, a),
        RewardCommand::Score(a) => score(&ws, &encoder, a),
        RewardCommand::Import(a) => import(ctx, &ws, a),
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
    if !(0.0..=100.0).contains(&args.ordinal_weight)
        || !(0.0..=100.0).contains(&args.critique_weight)
    {
        bail!("--ordinal-weight and --critique-weight must be between 0 and 100");
    }
    if args.max_epochs == 0 && !args.hybrid {
        bail!("--max-epochs 0 trains nothing; it is for --hybrid (the features-only model)");
    }
    if args.val_percent + args.test_percent >= 100 {
        bail!(
            "--val-percent {} and --test-percent {} leave no groups to train on (together under 100)",
            args.val_percent,
            args.test_percent
        );
    }
    crate::reward::train::check_label_smoothing(args.label_smoothing)
        .map_err(|e| anyhow::anyhow!("--label-smoothing: {e}"))?;
    let val_kinds =
        Kinds::parse(&args.val_kinds).map_err(|e| anyhow::anyhow!("--val-kinds: {e}"))?;
    if val_kinds == Kinds::NONE {
        bail!("--val-kinds none leaves nothing to validate on; name at least one kind");
    }
    let options = LearnOptions {
        kinds: Kinds::parse(&args.kinds).map_err(|e| anyhow::anyhow!("--kinds: {e}"))?,
        confidence: ConfidenceUse::parse(&args.confidence)
            .map_err(|e| anyhow::anyhow!("--confidence: {e}"))?,
        critique_weight: args.critique_weight,
        ..LearnOptions::default()
    };
    let (mut training, source) = match &args.data {
        Some(path) => (
            data::from_file(path, &options)
                .with_context(|| format!("reading {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (data::from_store(ws.store(), &options)?, "store".to_string()),
    };
    training.retain_heights(&args.height);
    if training.is_empty() {
        bail!(
            "no preference pairs to train on{} (rate nodes with `rrm rate`, or simulate with `rrm feedback simulate`)",
            if args.height.is_empty() { String::new() } else { format!(" at height(s) {:?}", args.height) }
        );
    }
    if args.backbone == Backbone::Lm {
        return train_lm(ctx, ws, &args, &training, &source, val_kinds);
    }
    let config = TrainConfig {
        members: args.members,
        hidden: args.hidden,
        max_epochs: args.max_epochs,
        shared: args.shared,
        seed: args.seed,
        ordinal_weight: args.ordinal_weight,
        val_percent: args.val_percent,
        test_percent: args.test_percent,
        label_smoothing: args.label_smoothing,
        val_kinds,
        hybrid: args.hybrid,
        ..TrainConfig::default()
    };
    let bar = ctx.spinner(format!(
        "training on {} pairs and {} ratings",
        training.pairs.len(),
        training.ratings.len()
    ));
    let cache = embeddings::cache(ws.store());
    let result =
        RewardModel::train_data(encoder.as_ref(), Some(cache), &training, &config, &source);
    bar.finish_and_clear();
    let mut model = result.context("training the reward model")?;
    let path = model.save(ws.reward_dir())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&model.card)?);
        return Ok(());
    }
    println!(
        "reward model {} saved to {} ({} pairs, {} ratings, from {} group(s); features {:.1} s, training {:.1} s)",
        model.card.hash,
        path.display(),
        model.card.data.pairs,
        model.card.data.ratings,
        model.card.data.groups,
        model.card.featurize_seconds,
        model.card.train_seconds
    );
    let on = if model.card.held_out {
        "held-out test groups (validation groups chose the epoch and are not reported)".to_string()
    } else if model.card.data.groups <= 1 {
        "the training pairs (one group: nothing to hold out)".to_string()
    } else {
        format!(
            "the training pairs (no test group: --test-percent {} of {} groups)",
            args.test_percent, model.card.data.groups
        )
    };
    println!("metrics on {on}:");
    print_metrics(&model.card.metrics);
    println!("by kind: {:?}", model.card.data.by_kind);
    if let Some(h) = &model.card.hybrid {
        print_hybrid(h);
    }
    if let Some(r) = &model.card.report {
        println!("test pairs beside the baselines:");
        for line in report::lines(r) {
            println!("{line}");
        }
    }
    Ok(())
}

/// A hybrid card's fitted grounding weights and the steps validation kept.
fn print_hybrid(h: &crate::reward::hybrid::HybridCard) {
    println!("hybrid ({}): w fitted on the training pairs, per scope:", h.features);
    for (scope, w) in &h.fitted {
        let parts: Vec<String> =
            h.names.iter().zip(w).map(|(n, x)| format!("{n} {x:+.3}")).collect();
        let kept = h.best_step.get(scope).map_or(String::new(), |s| format!(" (kept step {s:?})"));
        println!("  {scope}: {}{kept}", parts.join(", "));
    }
}

/// `rrm reward train --backbone lm`: the language-model reward model on the same pairs.
fn train_lm(
    ctx: &Context,
    ws: &Workspace,
    args: &TrainArgs,
    training: &TrainingData,
    source: &str,
    val_kinds: Kinds,
) -> anyhow::Result<()> {
    let pairs = &training.pairs;
    let base =
        crate::infer::fetch::resolve_model_with(&args.lm.base, ws.models_dir(), ctx.progress())
            .with_context(|| format!("--base {}", args.lm.base))?;
    let mode = if args.lm.lora_rank == 0 {
        Mode::Full
    } else {
        Mode::Lora(LoraConfig {
            rank: args.lm.lora_rank,
            seed: args.seed,
            top_layers: args.lm.lora_top_layers.map(|n| n as usize),
            ..LoraConfig::default()
        })
    };
    let config = LmTrainConfig {
        mode,
        members: args.members,
        epochs: args.lm.epochs,
        steps: args.lm.steps,
        batch_pairs: args.lm.batch_pairs,
        max_tokens: args.lm.max_tokens,
        lr: args.lm.lr,
        seed: args.seed,
        grad_checkpoint: args.lm.memory.grad_checkpoint,
        val_percent: args.val_percent,
        test_percent: args.test_percent,
        eval_every: args.lm.eval_every,
        eval_pairs: args.lm.eval_pairs,
        ordinal_weight: args.ordinal_weight,
        head_per_height: args.lm.head_per_height,
        label_smoothing: args.label_smoothing,
        val_kinds,
        probe_epochs: args.lm.probe_epochs,
        hybrid: args.hybrid,
        ..LmTrainConfig::default()
    };
    let observer = TrainProgress::new(ctx.quiet || args.json);
    observer.println(format!(
        "training {} LM reward member(s) on {} pairs and {} ratings from {}",
        args.members,
        pairs.len(),
        training.ratings.len(),
        base.name
    ));
    let result = LmRewardModel::train_observed(
        &base.path,
        pairs,
        &training.ratings,
        &config,
        source,
        &observer,
    );
    observer.bar.finish_and_clear();
    let mut model = result.context("training the LM reward model")?;
    let path = model.save(ws.reward_dir())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&model.card)?);
        return Ok(());
    }
    println!(
        "LM reward model {} saved to {} ({} pairs, {} member(s), {}, base {})",
        model.card.hash,
        path.display(),
        pairs.len(),
        args.members,
        if model.card.heads == 1 {
            "one head".to_string()
        } else {
            format!("a head per height 0-{}", model.card.heads - 1)
        },
        base.name
    );
    let c = &model.card;
    for (m, (step, curve)) in c.best_step.iter().zip(&c.validation_curve).enumerate() {
        let losses: Vec<String> = curve.iter().map(|(s, l)| format!("{s}: {l:.3}")).collect();
        let probe = c.probe_epoch.get(m).map_or(String::new(), |p| {
            format!(
                ", fine-tuned from the probe's pass {p} of {}{}",
                c.config.probe_epochs,
                if *step == 0 { "; step 0: the probe alone" } else { "" }
            )
        });
        println!(
            "member {m}: kept step {step}{probe} (validation log-loss by step: {})",
            if losses.is_empty() { "no validation groups".to_string() } else { losses.join(", ") }
        );
    }
    if let Some(raw) = c.validation_log_loss_uncalibrated {
        let val = c.validation_metrics.get("all");
        if !c.temperature_fitted {
            let n = val.map_or(0, |m| m.pairs);
            println!(
                "temperature 1 (not fitted: {n} validation pairs, fewer than \
                 {MIN_TEMPERATURE_PAIRS} or all scored alike)"
            );
        } else {
            println!(
                "temperature {:.3} (fitted on the validation pairs: log-loss {raw:.3} -> {:.3})",
                c.temperature,
                val.map_or(f64::NAN, |m| m.log_loss)
            );
        }
    }
    if c.held_out {
        println!(
            "metrics on {} pairs of {} held-out test group(s) (validation chose the checkpoints):",
            c.metrics.get("all").map_or(0, |m| m.pairs),
            c.test_groups.len()
        );
    } else {
        println!("metrics on a sample of the training pairs (no test groups):");
    }
    print_metrics(&c.metrics);
    if let Some(h) = &c.hybrid {
        print_hybrid(h);
    }
    if let Some(r) = &c.report {
        println!("test pairs beside the baselines:");
        for line in report::lines(r) {
            println!("{line}");
        }
    }
    Ok(())
}

/// `rrm reward eval` on an LM checkpoint.
fn eval_lm(model: &LmRewardModel, pairs: &[Pair], what: &str, json: bool) -> anyhow::Result<()> {
    let margins = model.margins(pairs)?;
    let metrics = metrics_by_height(pairs, &margins);
    let refs: Vec<&Pair> = pairs.iter().collect();
    let baselines = report::report(&margins, &refs);
    // With a fitted temperature, the same margins before it say whether it helped on this data.
    let t = model.card.temperature;
    let raw = (t != 1.0).then(|| {
        let raw: Vec<f32> = margins.iter().map(|&d| d * t as f32).collect();
        (t, metrics_by_height(pairs, &raw))
    });
    if json {
        let v = serde_json::json!({
            "model": model.card.hash,
            "data": what,
            "metrics": metrics,
            "report": baselines,
            "uncalibrated": raw.as_ref().map(|(t, m)| serde_json::json!({ "temperature": t, "metrics": m })),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print_eval(&model.card.hash, what, &metrics, &baselines, false)?;
    if let Some((t, m)) = raw {
        println!(
            "the same margins without the temperature ({t:.3}) fitted on the validation pairs:"
        );
        print_metrics(&m);
    }
    Ok(())
}

fn print_eval(
    hash: &str,
    what: &str,
    metrics: &std::collections::BTreeMap<String, Metrics>,
    baselines: &report::EvalReport,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let v = serde_json::json!({ "model": hash, "data": what, "metrics": metrics, "report": baselines });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("reward model {hash} on {what}:");
        print_metrics(metrics);
        println!(
            "beside the baselines (length: the longer wins; source: word F1 with the input; overlap: with the references, else the input):"
        );
        for line in report::lines(baselines) {
            println!("{line}");
        }
    }
    Ok(())
}

/// A reward that needs no feedback, as `reward eval --model` names it (its model, if any, is
/// loaded only once the data file has been read).
enum Rule {
    Grounded(grounded::Grounded),
    /// The language model `lm-support[:MODEL]` names.
    Support(String),
}

type LoadEncoder<'a> = &'a dyn Fn() -> Result<Arc<dyn Encoder>, crate::workspace::WorkspaceError>;

fn eval(ws: &Workspace, encoder: LoadEncoder<'_>, args: EvalArgs) -> anyhow::Result<()> {
    let file_pairs = |path: &PathBuf| -> anyhow::Result<(Vec<Pair>, String)> {
        let pairs = data::from_file(path, &LearnOptions::default())
            .with_context(|| format!("reading {}", path.display()))?
            .pairs;
        if pairs.is_empty() {
            bail!("{}: no preference pairs to evaluate on", path.display());
        }
        Ok((pairs, path.display().to_string()))
    };
    if consensus::is(&args.model) {
        bail!(consensus::needs_candidates("a pair of summaries"));
    }
    // The rewards that need no feedback: the grounded check, a language model's support.
    let rule = if let Some(grounded) = grounded::Grounded::parse(&args.model) {
        Some(Rule::Grounded(grounded.map_err(anyhow::Error::msg)?))
    } else if let Some(model) = support::parse(&args.model) {
        Some(Rule::Support(model.map_err(anyhow::Error::msg)?))
    } else {
        None
    };
    if let Some(rule) = rule {
        let Some(path) = &args.data else {
            bail!(
                "`{}` needs no feedback and is evaluated on a file: `rrm reward eval --model {} \
                 --data FILE.jsonl`",
                args.model,
                args.model
            );
        };
        let (pairs, what) = file_pairs(path)?;
        let (id, margins) = match &rule {
            Rule::Grounded(g) => (g.id(), g.margins(&pairs)),
            Rule::Support(model) => {
                let support = support::load(model, ws.models_dir())?;
                (support.id(), support.margins(&pairs)?)
            }
        };
        let metrics = metrics_by_height(&pairs, &margins);
        let refs: Vec<&Pair> = pairs.iter().collect();
        let baselines = report::report(&margins, &refs);
        return print_eval(&id, &what, &metrics, &baselines, args.json);
    }
    let checkpoint = RewardModel::resolve(&args.model, ws.reward_dir())?;
    if is_lm_checkpoint(&checkpoint) {
        let Some(path) = &args.data else {
            bail!(
                "an LM reward model is evaluated on a file: `rrm reward eval --model {} --data FILE.jsonl`",
                args.model
            );
        };
        let model = LmRewardModel::load(&checkpoint, None)?;
        let (pairs, what) = file_pairs(path)?;
        let (pairs, what) =
            args.split.select(pairs, &what, &model.card.val_groups, &model.card.test_groups)?;
        return eval_lm(&model, &pairs, &what, args.json);
    }
    let model = load_reward_model(ws, &args.model)?;
    let (pairs, what): (Vec<Pair>, String) = match &args.data {
        Some(path) => {
            let (pairs, what) = file_pairs(path)?;
            let d = &model.card.data;
            args.split.select(pairs, &what, &d.val_groups, &d.test_groups)?
        }
        None => {
            let all = data::from_store(ws.store(), &LearnOptions::default())?.pairs;
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
    let margins = model.margins(&mut featurizer, &pairs)?;
    let refs: Vec<&Pair> = pairs.iter().collect();
    let baselines = report::report(&margins, &refs);
    print_eval(&model.card.hash, &what, &metrics, &baselines, args.json)
}

fn import(ctx: &Context, ws: &Workspace, args: ImportArgs) -> anyhow::Result<()> {
    let imported = crate::reward::lm::import::import_hf(
        &args.dir,
        ws.reward_dir(),
        ws.models_dir(),
        args.max_tokens,
    )
    .with_context(|| format!("importing the reward model {}", args.dir.display()))?;
    // Load it back: the backbone, the tokenizer and the head must work together.
    LmRewardModel::load(&imported.path, None)
        .with_context(|| format!("loading the imported model {}", imported.path.display()))?;
    if !ctx.quiet {
        println!(
            "imported {} as the LM reward model {} ({})",
            args.dir.display(),
            imported.card.hash,
            imported.path.display()
        );
        println!("  backbone: {}", imported.card.base);
        let hash = &imported.card.hash;
        println!("  use:     rrm summarize BOOK --best-of 4 --reward-model {hash}");
        println!("  measure: rrm reward eval --model {hash} --data FILE.jsonl");
    }
    Ok(())
}

fn score(ws: &Workspace, encoder: LoadEncoder<'_>, args: ScoreArgs) -> anyhow::Result<()> {
    let model = load_reward_model(ws, &args.model)?;
    let target = rating::resolve(ws, &args.id, args.book.as_deref(), args.lossy)?;
    let cands = target.candidates(ws)?;
    if cands.is_empty() {
        bail!(
            "node {} has no stored candidates (run `rrm node sample {}`)",
            target.label(),
            target.label()
        );
    }
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
