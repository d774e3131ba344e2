//! `rrm policy train|eval` (training the summarizer itself from feedback) and
//! `rrm bench train` (training throughput). Parses, calls `crate::policy`, prints.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::books::{self, BooksDir};
use super::decompose::{decompose_and_save, DecomposerOptions, TreesDir};
use super::models::LocalModelArgs;
use super::reward::{load_encoder, EncoderArgs, RewardDir};
use super::Context;
use crate::compose::ComposeOptions;
use crate::feedback::{self, sim::SimLabeler};
use crate::infer::engine::{DeviceChoice, EngineConfig, LocalGenerator};
use crate::infer::fetch;
use crate::infer::Generator;
use crate::lm::bench::bench_train as run_bench;
use crate::lm::export::ExportFormat;
use crate::lm::model::{LoadOptions, Mode, TrainableLlama};
use crate::lm::{LoraConfig, Target};
use crate::policy::data::{self, Encoder, Prompt};
use crate::policy::eval::{self, Comparison, EvalReport};
use crate::policy::job::{self, TrainJob};
use crate::policy::judge::{AltLabeler, EnsembleScorer, Judge, MemberScorer};
use crate::policy::kl;
use crate::policy::registry;
use crate::policy::rmdpo::RmDpoConfig;
use crate::policy::sample::{sample_gguf, SampleOptions};
use crate::policy::train::{EvalLog, Observer, StepLog, TrainConfig};
use crate::policy::Method;
use crate::reward::RewardModel;

/// Train the policy (the summarizer) from feedback, and evaluate it against a baseline.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  rrm policy train --method sft --name smol-sft
  rrm policy train --method dpo --labeler sim-coverage --name smol-dpo --beta 0.1
  rrm policy train --method dpo --data prefs.jsonl --max-steps 20
  rrm policy train --method rm-dpo --rounds 2 --reward-model latest --name smol-rm
  rrm policy eval --model smol-dpo --baseline smollm2-135m --books my-heldout-book.txt
  rrm summarize alice --model smol-dpo")]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Train a policy (SFT, DPO or reward-model rounds) and register it under the models
    /// folder. Running the same command again after a kill resumes it.
    Train(Box<TrainArgs>),
    /// Summarize held-out books with a trained policy and a baseline; win rates per height.
    Eval(Box<EvalArgs>),
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// sft (demonstrations, corrections), dpo (comparisons, Likert pairs, corrections), or
    /// rm-dpo (rounds of sampling, reward-ensemble labels and DPO).
    #[arg(long, value_parser = parse_method)]
    pub method: Method,
    /// A TRL-format JSONL file ({prompt, chosen, rejected} or {prompt, completion}) instead of
    /// the stored feedback.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Only feedback from these labelers.
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub labeler: Vec<String>,
    /// Only these tree heights.
    #[arg(long, value_delimiter = ',', value_name = "H")]
    pub heights: Vec<u32>,
    /// What the trained policy is registered as (default: <base>-<method>-<hash>).
    #[arg(long)]
    pub name: Option<String>,
    /// Replace a registered policy of the same name.
    #[arg(long)]
    pub overwrite: bool,
    /// The model to start from (and the reference): a known model, a trained policy's name, a
    /// .gguf path.
    #[arg(long, default_value = fetch::DEFAULT_GENERATOR, value_name = "SPEC")]
    pub base: String,
    /// Where training runs.
    #[arg(long, default_value = "cpu", value_parser = parse_device, value_name = "cpu|cuda|auto")]
    pub device: DeviceChoice,
    /// Weights in training: f32, or bf16 (GPU).
    #[arg(long, default_value = "f32", value_name = "f32|bf16")]
    pub dtype: String,
    /// Fine-tune every weight instead of LoRA adapters.
    #[arg(long)]
    pub full: bool,
    #[arg(long, default_value_t = 8, value_name = "R")]
    pub lora_rank: usize,
    /// LoRA alpha (default: 2 × rank).
    #[arg(long, value_name = "A")]
    pub lora_alpha: Option<f64>,
    /// Projections with adapters: q,k,v,o,gate,up,down, attn, mlp, all.
    #[arg(long, default_value = "all", value_name = "LIST")]
    pub lora_targets: String,
    /// Peak learning rate (default: SFT 2e-4, DPO 1e-4 with LoRA; 2e-5 and 1e-6 in full).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Stop after N optimizer steps (a quick run).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<usize>,
    /// Examples (pairs) per forward pass.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Forward passes per optimizer step.
    #[arg(long, default_value_t = 4)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// DPO's β: small trusts the preferences, large stays near the reference.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Weight of an NLL term on the chosen text (RPO); 0: off.
    #[arg(long, default_value_t = 0.0)]
    pub rpo_alpha: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of books (by hash) held out for validation and for test.
    #[arg(long, default_value_t = 10)]
    pub val_percent: u32,
    #[arg(long, default_value_t = 10)]
    pub test_percent: u32,
    /// Books always held out as test (catalog ids or files).
    #[arg(long, value_delimiter = ',', value_name = "BOOK")]
    pub test_books: Vec<String>,
    /// Books always held out for validation (catalog ids or files).
    #[arg(long, value_delimiter = ',', value_name = "BOOK")]
    pub val_books: Vec<String>,
    #[arg(long, default_value_t = 1024)]
    pub max_prompt_tokens: usize,
    #[arg(long, default_value_t = 256)]
    pub max_completion_tokens: usize,
    /// Optimizer steps between checkpoints.
    #[arg(long, default_value_t = 10)]
    pub checkpoint_every: usize,
    /// rm-dpo: rounds.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// rm-dpo: candidates sampled per prompt and round.
    #[arg(long, short = 'k', default_value_t = 4)]
    pub k: usize,
    /// rm-dpo: λ, pairs need |mean| − λ·std of the ensemble's margin above --min-margin.
    #[arg(long, default_value_t = 1.0)]
    pub pessimism: f64,
    #[arg(long, default_value_t = 0.0)]
    pub min_margin: f64,
    /// rm-dpo: pairs kept per prompt (most certain first).
    #[arg(long, default_value_t = 1)]
    pub pairs_per_prompt: usize,
    /// rm-dpo: the reward ensemble that labels (`latest`, a hash, a folder).
    #[arg(long, default_value = "latest", value_name = "PATH|latest")]
    pub reward_model: String,
    #[command(flatten)]
    pub reward_dir: RewardDir,
    /// rm-dpo: sampling temperature of the candidates.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// rm-dpo: output caps by height (the last repeats).
    #[arg(long, value_delimiter = ',', default_value = "128,192,384", value_name = "N,N,..")]
    pub output_tokens: Vec<usize>,
    /// rm-dpo: training prompts sampled every round (spread evenly over the training split;
    /// 0: all of them).
    #[arg(long, default_value_t = 64)]
    pub rm_prompts: usize,
    /// rm-dpo: held-out (validation) prompts measured every round.
    #[arg(long, default_value_t = 24)]
    pub heldout_prompts: usize,
    /// rm-dpo: samples per held-out prompt for KL(π‖π_ref).
    #[arg(long, default_value_t = 2)]
    pub kl_samples: usize,
    /// rm-dpo: judges measured on the held-out prompts every round (sim-coverage, sim-alt).
    #[arg(long, value_delimiter = ',', default_value = "sim-coverage,sim-alt")]
    pub judges: Vec<String>,
    /// Weight type of the exported model.
    #[arg(long, default_value = "q8_0", value_parser = parse_export, value_name = "q8_0|f16")]
    pub export: ExportFormat,
    /// Folder of run folders (default: `policy/` beside the database).
    #[arg(long, value_name = "DIR")]
    pub runs_dir: Option<PathBuf>,
    /// Throw away an unfinished run with the same settings and start over.
    #[arg(long)]
    pub fresh: bool,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[command(flatten)]
    pub books_dir: BooksDir,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_method(s: &str) -> Result<Method, String> {
    s.parse()
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
}

fn parse_export(s: &str) -> Result<ExportFormat, String> {
    s.parse()
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The trained policy (a name from `rrm models list`, or a .gguf).
    #[arg(long, value_name = "SPEC")]
    pub model: String,
    /// What it is compared with.
    #[arg(long, default_value = fetch::DEFAULT_GENERATOR, value_name = "SPEC")]
    pub baseline: String,
    /// Held-out books (files, folders, catalog ids).
    #[arg(long, required = true, num_args = 1.., value_name = "BOOK")]
    pub books: Vec<String>,
    /// Compare nodes up to this height (default: up to the root).
    #[arg(long, value_name = "H")]
    pub max_height: Option<u32>,
    /// The reward ensemble to judge by (`latest`, a hash, a folder, or `none`).
    #[arg(long, default_value = "latest", value_name = "PATH|latest|none")]
    pub reward_model: String,
    #[command(flatten)]
    pub reward_dir: RewardDir,
    /// Judges (sim-coverage: the simulated labeler; sim-alt: an independent simulated preference).
    #[arg(long, value_delimiter = ',', default_value = "sim-coverage,sim-alt")]
    pub judges: Vec<String>,
    /// Held-out height-0 prompts for KL(policy‖baseline) (0: skip).
    #[arg(long, default_value_t = 16)]
    pub kl_prompts: usize,
    /// Samples per KL prompt.
    #[arg(long, default_value_t = 2)]
    pub kl_samples: usize,
    /// Sequences generated together.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value = "cpu", value_parser = parse_device, value_name = "cpu|cuda|auto")]
    pub device: DeviceChoice,
    #[command(flatten)]
    pub decomposer: DecomposerOptions,
    #[command(flatten)]
    pub books_dir: BooksDir,
    #[command(flatten)]
    pub trees: TreesDir,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &mut Context, args: PolicyArgs) -> anyhow::Result<()> {
    match args.command {
        PolicyCommand::Train(a) => train(ctx, *a),
        PolicyCommand::Eval(a) => evaluate(ctx, *a),
    }
}

/// A progress bar over optimizer steps; validation and messages printed above it (on stderr
/// when there is no terminal for the bar).
struct Progress {
    bar: ProgressBar,
    quiet: bool,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix("training");
        Progress { bar, quiet }
    }

    fn println(&self, text: String) {
        if self.quiet {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

fn metrics_line(m: &std::collections::BTreeMap<String, f64>) -> String {
    m.iter().map(|(k, v)| format!("{k} {v:.3}")).collect::<Vec<_>>().join(", ")
}

impl Observer for Progress {
    fn started(&self, total: usize, resumed_from: Option<usize>) {
        self.bar.set_length(total as u64);
        self.bar.set_position(resumed_from.unwrap_or(0) as u64);
        if let Some(s) = resumed_from {
            self.println(format!("resumed from the checkpoint at step {s}"));
        }
    }
    fn step(&self, log: &StepLog) {
        self.bar.set_position(log.step as u64);
        let acc =
            log.metrics.get("reward_accuracy").map_or(String::new(), |a| format!(" acc {a:.2}"));
        self.bar.set_message(format!(
            "loss {:.4}{acc} |g| {:.2} lr {:.1e} {:.0} tok/s",
            log.loss,
            log.grad_norm,
            log.lr,
            log.tokens as f64 / log.seconds.max(1e-9)
        ));
        tracing::info!(step = log.step, loss = log.loss, "step");
    }
    fn eval(&self, log: &EvalLog) {
        self.println(format!(
            "validation after epoch {} (step {}): {}",
            log.epoch,
            log.step,
            metrics_line(&log.metrics)
        ));
    }
    fn message(&self, text: &str) {
        self.println(text.to_string());
    }
}

fn judges_named(names: &[String]) -> anyhow::Result<Vec<Box<dyn Judge>>> {
    names
        .iter()
        .map(|n| -> anyhow::Result<Box<dyn Judge>> {
            match n.as_str() {
                "sim-coverage" | "sim" => Ok(Box::new(SimLabeler::new("sim-coverage", 0.0))),
                "sim-alt" | "alt" => Ok(Box::new(AltLabeler::default())),
                other => bail!("unknown judge `{other}` (sim-coverage, sim-alt)"),
            }
        })
        .collect()
}

/// The reward ensemble as a scorer, or `None` for `none`.
fn reward_scorer(
    ctx: &mut Context,
    spec: &str,
    dir: &RewardDir,
    encoder: &EncoderArgs,
    required: bool,
) -> anyhow::Result<Option<EnsembleScorer>> {
    if spec == "none" {
        return Ok(None);
    }
    let path = match RewardModel::resolve(spec, &dir.dir(ctx)) {
        Ok(p) => p,
        Err(e) if !required && spec == "latest" => {
            if !ctx.quiet {
                eprintln!("(no reward model: {e}; judging without it)");
            }
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let model = RewardModel::load(&path)?;
    let encoder = load_encoder(encoder, ctx.quiet)?;
    let store = ctx.store()?.clone();
    Ok(Some(EnsembleScorer::new(Arc::new(model), encoder, Some(store))?))
}

fn train(ctx: &mut Context, args: TrainArgs) -> anyhow::Result<()> {
    let models_dir = fetch::models_dir(args.encoder.models_dir.as_deref());
    let base = fetch::resolve_model_with(&args.base, &models_dir, !ctx.quiet)
        .with_context(|| format!("finding the base model `{}`", args.base))?;
    let base_identity = LocalGenerator::identity_of(&base.path, base.sha256.clone())?;
    let base_identity = crate::infer::ModelIdentity { name: base.name.clone(), ..base_identity };
    let dtype = match args.dtype.as_str() {
        "f32" => candle_core::DType::F32,
        "bf16" => candle_core::DType::BF16,
        "f16" => candle_core::DType::F16,
        other => bail!("unknown --dtype `{other}` (f32, bf16)"),
    };
    let mode = if args.full {
        Mode::Full
    } else {
        Mode::Lora(LoraConfig {
            rank: args.lora_rank,
            alpha: args.lora_alpha.unwrap_or(2.0 * args.lora_rank as f64),
            targets: Target::parse_list(&args.lora_targets).map_err(anyhow::Error::msg)?,
            seed: args.seed,
        })
    };
    let (data, labelers) = match &args.data {
        Some(path) => (data::read_jsonl(path)?, Vec::new()),
        None => {
            let records: Vec<_> = feedback::all(ctx.store()?)?
                .into_iter()
                .filter(|f| args.labeler.is_empty() || args.labeler.contains(&f.labeler))
                .filter(|f| args.heights.is_empty() || args.heights.contains(&f.height))
                .collect();
            if records.is_empty() {
                bail!(
                    "no stored feedback{} to train on (rate nodes with `rrm rate`, simulate with                      `rrm feedback simulate`, or pass --data FILE.jsonl)",
                    if args.labeler.is_empty() && args.heights.is_empty() { "" } else { " matches the filters" }
                );
            }
            let labelers: BTreeSet<String> = records.iter().map(|f| f.labeler.clone()).collect();
            (data::from_feedback(&records)?, labelers.into_iter().collect())
        }
    };
    let mut book_ids = |specs: &[String]| -> anyhow::Result<BTreeSet<String>> {
        let mut ids = BTreeSet::new();
        for spec in specs {
            let book = books::open_book(ctx, spec, &args.books_dir.books_dir, false)?;
            ids.insert(book.id().as_str().to_string());
        }
        Ok(ids)
    };
    let force_test = book_ids(&args.test_books)?;
    let force_val = book_ids(&args.val_books)?;
    let lr = args.lr.unwrap_or(match (args.method, args.full) {
        (Method::Sft, false) => 2e-4,
        (_, false) => 1e-4,
        (Method::Sft, true) => 2e-5,
        (_, true) => 1e-6,
    });
    let train_cfg = TrainConfig {
        lr,
        epochs: args.epochs,
        max_steps: args.max_steps,
        batch: args.batch,
        grad_accum: args.grad_accum,
        warmup_ratio: args.warmup_ratio,
        min_lr_ratio: 0.1,
        max_grad_norm: args.max_grad_norm,
        weight_decay: args.weight_decay,
        beta: args.beta,
        label_smoothing: args.label_smoothing,
        rpo_alpha: args.rpo_alpha,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
    };
    train_cfg.validate()?;
    let mut sample = SampleOptions {
        k: args.k,
        max_tokens: args.output_tokens.clone(),
        seed: args.seed,
        ..SampleOptions::default()
    };
    sample.sampling.temperature = args.temperature;
    let rm = RmDpoConfig {
        rounds: args.rounds,
        sample,
        pessimism: args.pessimism,
        min_lcb: args.min_margin,
        pairs_per_prompt: args.pairs_per_prompt.max(1),
        kl_samples: args.kl_samples,
        dpo: train_cfg.clone(),
    };
    let job = TrainJob {
        method: args.method,
        base_path: base.path.clone(),
        base: base_identity,
        device: args.device.device()?,
        dtype,
        mode,
        data,
        val_percent: args.val_percent,
        test_percent: args.test_percent,
        force_val,
        force_test,
        max_prompt_tokens: args.max_prompt_tokens,
        max_completion_tokens: args.max_completion_tokens,
        train: train_cfg,
        rm,
        heldout_prompts: args.heldout_prompts,
        rm_prompts: args.rm_prompts,
        name: args.name.clone(),
        export_format: args.export,
        models_dir,
        runs_root: args.runs_dir.clone().unwrap_or_else(|| job::default_runs_root(&ctx.db_path)),
        fresh: args.fresh,
        overwrite: args.overwrite,
        labelers,
    };
    let scorer = if args.method == Method::RmDpo {
        reward_scorer(ctx, &args.reward_model, &args.reward_dir, &args.encoder, true)?
    } else {
        None
    };
    let judges = judges_named(&args.judges)?;
    let judge_refs: Vec<&dyn Judge> = judges.iter().map(|j| j.as_ref()).collect();
    let progress = Progress::new(ctx.quiet || args.json);
    let report =
        job::run(&job, scorer.as_ref().map(|s| s as &dyn MemberScorer), &judge_refs, &progress);
    progress.bar.finish_and_clear();
    let report = report.context("training the policy")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let d = &report.card.data;
    println!(
        "split by book: {} train, {} validation, {} test group(s); {} training and {} validation \
         example(s){}",
        d.train_groups.len(),
        d.val_groups.len(),
        d.test_groups.len(),
        d.train_examples,
        d.val_examples,
        if d.too_long > 0 {
            format!(" ({} left out as too long)", d.too_long)
        } else {
            String::new()
        }
    );
    if let Some(t) = &report.train {
        println!(
            "{} steps, {} tokens in {:.0} s ({:.1} tok/s); last steps: {}",
            t.steps,
            t.train_tokens,
            t.seconds,
            t.tokens_per_s,
            metrics_line(&t.last)
        );
        if let (Some(first), Some(last)) = (t.val_history.first(), t.val_history.last()) {
            println!("validation before: {}", metrics_line(&first.metrics));
            println!("validation after:  {}", metrics_line(&last.metrics));
        }
    }
    if let Some(r) = &report.rounds {
        println!(
            "{:>5} {:>7} {:>9} {:>11} {:>12} {:>8} {:>10}  judges (held-out)",
            "round", "pairs", "uncertain", "RM (train)", "RM (held)", "KL", "words"
        );
        let row = |label: String, pairs: String, unc: String, m: &crate::policy::rmdpo::Measure| {
            let judges: Vec<String> =
                m.heldout_judges.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
            println!(
                "{label:>5} {pairs:>7} {unc:>9} {:>11.3} {:>12.3} {:>8.2} {:>10.1}  {}",
                m.train_reward,
                m.heldout_reward,
                m.kl.mean,
                m.heldout_words,
                judges.join(", ")
            );
        };
        for rr in &r.rounds {
            row(
                rr.round.to_string(),
                rr.pairs.to_string(),
                rr.uncertain_pairs.to_string(),
                &rr.start,
            );
        }
        row("final".into(), "-".into(), "-".into(), &r.last);
    }
    println!(
        "registered `{}` ({}, {}) at {}",
        report.name,
        report.card.method.name(),
        report.card.export_format.name(),
        report.gguf.display()
    );
    println!("use it with: rrm summarize BOOK --model {}", report.name);
    Ok(())
}

fn evaluate(ctx: &mut Context, args: EvalArgs) -> anyhow::Result<()> {
    let models_dir = fetch::models_dir(args.encoder.models_dir.as_deref());
    let policy_args = LocalModelArgs {
        model: args.model.clone(),
        models_dir: args.encoder.models_dir.clone(),
        device: args.device,
    };
    let baseline_args = LocalModelArgs { model: args.baseline.clone(), ..policy_args.clone() };
    let card = registry::find(&models_dir, &args.model);
    let judges = judges_named(&args.judges)?;
    let judge_refs: Vec<&dyn Judge> = judges.iter().map(|j| j.as_ref()).collect();
    let scorer = reward_scorer(ctx, &args.reward_model, &args.reward_dir, &args.encoder, false)?;
    let decomposer = args.decomposer.build(ctx)?;
    let specs = books::expand_books(&args.books)?;
    let mut opened = Vec::new();
    for spec in &specs {
        opened.push(books::open_book(ctx, spec, &args.books_dir.books_dir, false)?);
    }
    let config = EngineConfig { max_batch: args.batch_size.max(1), ..EngineConfig::default() };
    let policy: Arc<dyn Generator> = Arc::new(policy_args.load_lazy(config.clone(), !ctx.quiet)?);
    let baseline: Arc<dyn Generator> = Arc::new(baseline_args.load_lazy(config, !ctx.quiet)?);
    let options = ComposeOptions {
        batch_size: args.batch_size.max(1),
        max_height: args.max_height,
        ..ComposeOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut report = EvalReport {
        policy: policy.identity().name.clone(),
        baseline: baseline.identity().name.clone(),
        ..EvalReport::default()
    };
    report.trained_on = card.as_ref().map(|c| c.data.labelers.clone()).unwrap_or_default();
    let mut items = Vec::new();
    let mut kl_prompts = Vec::new();
    for book in &opened {
        let (tree, _) = decompose_and_save(ctx, book, decomposer.as_ref(), &args.trees.trees_dir)?;
        if card
            .as_ref()
            .is_some_and(|c| c.data.train_groups.iter().any(|g| g == book.id().as_str()))
        {
            eprintln!("warning: {} is among the policy's training books", book.title());
            report.seen_books.push(book.title().to_string());
        }
        report.books.push(book.title().to_string());
        let bar = books::spinner(ctx, format!("summarizing {} with both models", book.title()));
        let store = ctx.store()?.clone();
        let result = runtime.block_on(eval::compose_both(
            &store,
            book,
            &tree,
            Arc::clone(&policy),
            Arc::clone(&baseline),
            &options,
        ));
        bar.finish_and_clear();
        items.extend(result.with_context(|| format!("summarizing {}", book.title()))?);
        for &leaf in tree.leaves() {
            let node = tree.node(leaf);
            kl_prompts.push(Prompt::for_node(book.slice(node.covers), 0, book.id().as_str())?);
        }
    }
    let (heights, root) =
        eval::report(&items, &judge_refs, scorer.as_ref().map(|s| s as &dyn MemberScorer))?;
    report.heights = heights;
    report.root = root;
    if args.kl_prompts > 0 && !kl_prompts.is_empty() {
        let bar = books::spinner(ctx, "estimating KL(policy‖baseline)");
        let result = estimate_kl(&args, &models_dir, &kl_prompts);
        bar.finish_and_clear();
        report.kl = Some(result.context("estimating KL")?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{} vs {} on {}", report.policy, report.baseline, report.books.join(", "));
    let names: Vec<String> = judge_refs.iter().map(|j| j.name()).collect();
    let mut header = format!("{:>6} {:>6}", "height", "nodes");
    for n in &names {
        header.push_str(&format!(" {:>17}", format!("win {n}")));
    }
    header.push_str(&format!(" {:>15} {:>13} {:>11}", "win reward", "words p/b", "loops p/b"));
    println!("{header}");
    let line = |label: String, c: &Comparison| {
        let mut s = format!("{label:>6} {:>6}", c.nodes);
        for n in &names {
            let w = c.judges.get(n).copied().unwrap_or_default();
            s.push_str(&format!(
                " {:>17}",
                format!("{:.1}% ±{:.1}", 100.0 * w.rate, 100.0 * w.ci95)
            ));
        }
        let r = c
            .reward
            .map_or("-".to_string(), |w| format!("{:.1}% ±{:.1}", 100.0 * w.rate, 100.0 * w.ci95));
        s.push_str(&format!(
            " {r:>15} {:>13} {:>11}",
            format!("{:.0}/{:.0}", c.policy.mean_words, c.baseline.mean_words),
            format!("{:.0}%/{:.0}%", 100.0 * c.policy.loop_rate, 100.0 * c.baseline.loop_rate)
        ));
        println!("{s}");
    };
    for (h, c) in &report.heights {
        line(h.to_string(), c);
    }
    if let Some(c) = &report.root {
        line("root".into(), c);
    }
    if let Some(k) = &report.kl {
        println!(
            "KL(policy‖baseline) on {} held-out samples: {:.2} ± {:.2} nats per summary ({:.0} tokens)",
            k.samples, k.mean, k.std_err, k.mean_tokens
        );
    }
    for n in &names {
        if report.trained_on.contains(n) {
            println!("({n} labeled the training data: its win rate is on held-out books, not an independent judge)");
        }
    }
    if !report.seen_books.is_empty() {
        println!(
            "note: trained on {} of these books: not a held-out result",
            report.seen_books.join(", ")
        );
    }
    Ok(())
}

/// KL(policy‖baseline) on up to `--kl-prompts` height-0 prompts spread over the books.
fn estimate_kl(
    args: &EvalArgs,
    models_dir: &std::path::Path,
    prompts: &[Prompt],
) -> anyhow::Result<kl::KlEstimate> {
    let step = (prompts.len() / args.kl_prompts.max(1)).max(1);
    let chosen: Vec<Prompt> = prompts.iter().step_by(step).take(args.kl_prompts).cloned().collect();
    let policy = fetch::resolve_model_with(&args.model, models_dir, false)?;
    let baseline = fetch::resolve_model_with(&args.baseline, models_dir, false)?;
    let device = args.device.device()?;
    let opts = SampleOptions::pure(args.kl_samples.max(1), vec![128, 192, 384], 7919);
    let samples = sample_gguf(&policy.path, &device, &chosen, &opts)?;
    let frozen = LoadOptions { mode: Mode::Frozen, dtype: candle_core::DType::F32 };
    let (p, tok) = TrainableLlama::load(&policy.path, &device, &frozen)?;
    let (b, _) = TrainableLlama::load(&baseline.path, &device, &frozen)?;
    let encoder = Encoder::new(&tok, 4096, 4096)?;
    Ok(kl::estimate(kl::Pair::Models { policy: &p, reference: &b }, &encoder, &chosen, &samples)?)
}

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Which modes to measure.
    #[arg(long, value_delimiter = ',', default_value = "lora,full")]
    pub modes: Vec<String>,
    /// Sequences per step.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Scored (completion) tokens at the end of each sequence.
    #[arg(long, default_value_t = 64)]
    pub completion_len: usize,
    /// Measured steps (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// LoRA target projections.
    #[arg(long, default_value = "all")]
    pub lora_targets: String,
    /// Print JSON rows.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: LocalModelArgs,
}

fn mode_of(name: &str, rank: usize, targets: &str) -> anyhow::Result<Mode> {
    match name {
        "lora" => Ok(Mode::Lora(LoraConfig {
            rank,
            alpha: 2.0 * rank as f64,
            targets: Target::parse_list(targets).map_err(anyhow::Error::msg)?,
            seed: 0,
        })),
        "full" => Ok(Mode::Full),
        other => anyhow::bail!("unknown mode `{other}` (lora, full)"),
    }
}

pub fn bench_train(ctx: &mut Context, args: BenchTrainArgs) -> anyhow::Result<()> {
    let dir = fetch::models_dir(args.model.models_dir.as_deref());
    let resolved = fetch::resolve_model_with(&args.model.model, &dir, !ctx.quiet)
        .with_context(|| format!("finding the model `{}`", args.model.model))?;
    let device = args.model.device.device()?;
    let threads = std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "all".into());
    if !args.json {
        println!(
            "model {} on {device:?}, {threads} threads; batch {} × {} tokens ({} scored)",
            resolved.name, args.batch, args.seq_len, args.completion_len
        );
        println!(
            "{:>5} {:>12} {:>16} {:>10} {:>18} {:>14}",
            "mode", "trainable", "train tok/s", "s/step", "forward tok/s", "peak RSS MiB"
        );
    }
    for name in &args.modes {
        let mode = mode_of(name, args.lora_rank, &args.lora_targets)?;
        let options = LoadOptions { mode, dtype: candle_core::DType::F32 };
        let row = run_bench(
            &resolved.path,
            &device,
            &options,
            args.batch,
            args.seq_len,
            args.completion_len,
            args.steps,
        )
        .with_context(|| format!("benchmarking {name} training"))?;
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            println!(
                "{:>5} {:>12} {:>16.1} {:>10.2} {:>18.1} {:>14}",
                row.mode,
                row.trainable_params,
                row.train_tokens_per_s,
                row.step_seconds,
                row.forward_tokens_per_s,
                row.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}"))
            );
        }
    }
    Ok(())
}
