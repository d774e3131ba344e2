//! `rrm policy train|eval` (training the summarizer itself from feedback) and
//! `rrm bench train` (training throughput). Parses, calls `crate::policy`, prints.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use indicatif::ProgressBar;

use super::args::{
    parse_device, CheckpointArgs, DecomposerOptions, EncoderArgs, ModelsDir, WorkspaceArgs,
};
use super::progress::{metrics_line, TrainProgress};
use super::Context;
use crate::infer::engine::DeviceChoice;
use crate::infer::fetch;
use crate::infer::hf::HfDType;
use crate::lm::export::ExportFormat;
use crate::policy::eval::{Comparison, WinRate};
use crate::policy::registry::{self, ExportKind, ExportRequest};
use crate::policy::rmdpo::RmDpoConfig;
use crate::policy::sample::SampleOptions;
use crate::policy::train::TrainConfig;
use crate::policy::Method;
use crate::workspace::policy::{self as wp, Adapt, EvalObserver, EvalRequest, TrainRequest};

/// Train the policy (the summarizer) from feedback, and evaluate it against a baseline.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  rrm policy train --method sft --name smol-sft
  rrm policy train --method dpo --labeler sim-coverage --name smol-dpo --beta 0.1
  rrm policy train --method dpo --data prefs.jsonl --max-steps 20
  rrm policy train --method rm-dpo --rounds 2 --reward-model latest --name smol-rm
  rrm policy eval --model smol-dpo --baseline smollm2-135m --books my-heldout-book.txt
  rrm summarize alice --model smol-dpo
  rrm policy export smol-dpo --format hf --out smol-dpo-hf")]
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
    /// Write a trained policy (or its base, or any model) for other tools: a Hugging Face
    /// folder (transformers, vLLM, TRL), a PEFT LoRA adapter, or the GGUF (llama.cpp).
    Export(ExportArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  rrm policy export smol-dpo --format hf --out smol-dpo-hf
  rrm policy export smol-dpo --format peft --out smol-dpo-peft   (base in smol-dpo-peft/base)
  rrm policy export smol-dpo --base --format hf --out base-hf    (the model it was trained from)
  rrm policy export smollm2-135m --format hf --out smollm2-hf     (rrm's default model)")]
pub struct ExportArgs {
    /// A trained policy's name; for hf and gguf also any model (a known model, a .gguf path).
    pub name: String,
    /// hf (config.json + model.safetensors + tokenizer), peft (adapter_config.json +
    /// adapter_model.safetensors), or gguf.
    #[arg(long, default_value = "hf", value_parser = parse_export_kind, value_name = "hf|peft|gguf")]
    pub format: ExportKind,
    /// The folder to write into (created if needed; files of the same names are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Export the policy's base model instead (the exact model it was trained from).
    #[arg(long)]
    pub base: bool,
    /// Weight type of a Hugging Face export (f32 is exact).
    #[arg(long, default_value = "f32", value_parser = parse_hf_dtype, value_name = "f32|bf16|f16")]
    pub dtype: HfDType,
    /// For peft: the base model to name in adapter_config.json (a Hub id or path) instead of
    /// exporting the base into <out>/base.
    #[arg(long, value_name = "ID|PATH")]
    pub base_ref: Option<String>,
    #[command(flatten)]
    pub models: ModelsDir,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_export_kind(s: &str) -> Result<ExportKind, String> {
    s.parse()
}

fn parse_hf_dtype(s: &str) -> Result<HfDType, String> {
    s.parse()
}

fn export(ctx: &mut Context, args: ExportArgs) -> anyhow::Result<()> {
    let models_dir = fetch::models_dir(args.models.models_dir.as_deref());
    let request = ExportRequest {
        name: args.name.clone(),
        kind: args.format,
        out: args.out.clone(),
        base: args.base,
        dtype: args.dtype,
        base_ref: args.base_ref.clone(),
    };
    let report = registry::export(&models_dir, &request)
        .with_context(|| format!("exporting `{}`", args.name))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !ctx.quiet {
        println!("exported {} into {}", report.source.display(), args.out.display());
        if let Some(base) = &report.base_ref {
            println!("adapter base (base_model_name_or_path): {base}");
        }
    }
    Ok(())
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
    /// Adapters only in the top N transformer blocks (default: all); the blocks below run
    /// forward only.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub lora_top_layers: Option<u64>,
    /// Peak learning rate (default: SFT 2e-4, DPO 1e-4 with LoRA; 2e-5 and 1e-6 in full).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Stop after N optimizer steps (a quick run).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<usize>,
    /// Use at most N training examples, spread evenly over the training split (0: all).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_train_examples: usize,
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
    #[command(flatten)]
    pub memory: CheckpointArgs,
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
    /// rm-dpo: the reward ensemble that labels (`latest`, a hash, a folder, `grounding`: the
    /// summary checked against its input, no feedback needed; or `reference`: ROUGE against
    /// people's summaries of the same prompt in the training data, less unsupported content,
    /// one member per summary; options `reference:unsupported=0.25,length=0.1`; or
    /// `lm-support[:MODEL]`: a language model's support for the summary given its input).
    #[arg(long, default_value = "latest", value_name = "PATH|latest|grounding|reference")]
    pub reward_model: String,
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
    pub ws: WorkspaceArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_method(s: &str) -> Result<Method, String> {
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
    /// What it is compared with. When this is the policy's base, the comparison uses the
    /// base's zero-step export (the base exported as the policy was, with no training), so
    /// the two sides differ by training, not also by quantization.
    #[arg(long, default_value = fetch::DEFAULT_GENERATOR, value_name = "SPEC")]
    pub baseline: String,
    /// Compare with the baseline's own file even when it is the policy's base.
    #[arg(long)]
    pub baseline_as_is: bool,
    /// Held-out books (files, folders, catalog ids).
    #[arg(long, required = true, num_args = 1.., value_name = "BOOK")]
    pub books: Vec<String>,
    /// Compare nodes up to this height (default: up to the root).
    #[arg(long, value_name = "H")]
    pub max_height: Option<u32>,
    /// The reward ensemble to judge by (`latest`, a hash, a folder, `grounding`, `lm-support`, or
    /// `none`).
    #[arg(long, default_value = "latest", value_name = "PATH|latest|grounding|none")]
    pub reward_model: String,
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
    pub encoder: EncoderArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &mut Context, args: PolicyArgs) -> anyhow::Result<()> {
    match args.command {
        PolicyCommand::Train(a) => train(ctx, *a),
        PolicyCommand::Eval(a) => evaluate(ctx, *a),
        PolicyCommand::Export(a) => export(ctx, a),
    }
}

impl TrainArgs {
    fn request(&self) -> TrainRequest {
        let train = TrainConfig {
            lr: self.lr.unwrap_or(0.0),
            epochs: self.epochs,
            max_steps: self.max_steps,
            batch: self.batch,
            grad_accum: self.grad_accum,
            warmup_ratio: self.warmup_ratio,
            min_lr_ratio: 0.1,
            max_grad_norm: self.max_grad_norm,
            weight_decay: self.weight_decay,
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            rpo_alpha: self.rpo_alpha,
            grad_checkpoint: self.memory.grad_checkpoint,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
        };
        let mut sample = SampleOptions {
            k: self.k,
            max_tokens: self.output_tokens.clone(),
            seed: self.seed,
            ..SampleOptions::default()
        };
        sample.sampling.temperature = self.temperature;
        let rm = RmDpoConfig {
            rounds: self.rounds,
            sample,
            pessimism: self.pessimism,
            min_lcb: self.min_margin,
            pairs_per_prompt: self.pairs_per_prompt,
            kl_samples: self.kl_samples,
            dpo: train.clone(),
        };
        TrainRequest {
            method: self.method,
            data: self.data.clone(),
            labelers: self.labeler.clone(),
            heights: self.heights.clone(),
            name: self.name.clone(),
            overwrite: self.overwrite,
            base: self.base.clone(),
            device: self.device,
            dtype: self.dtype.clone(),
            adapt: if self.full {
                Adapt::Full
            } else {
                Adapt::Lora {
                    rank: self.lora_rank,
                    alpha: self.lora_alpha,
                    targets: self.lora_targets.clone(),
                    top_layers: self.lora_top_layers.map(|n| n as usize),
                }
            },
            lr: self.lr,
            train,
            val_percent: self.val_percent,
            test_percent: self.test_percent,
            val_books: self.val_books.clone(),
            test_books: self.test_books.clone(),
            max_prompt_tokens: self.max_prompt_tokens,
            max_completion_tokens: self.max_completion_tokens,
            rm,
            rm_prompts: self.rm_prompts,
            max_train_examples: self.max_train_examples,
            heldout_prompts: self.heldout_prompts,
            reward_model: self.reward_model.clone(),
            encoder: self.encoder.encoder.clone(),
            judges: self.judges.clone(),
            export: self.export,
            runs_dir: self.runs_dir.clone(),
            fresh: self.fresh,
        }
    }
}

fn train(ctx: &mut Context, args: TrainArgs) -> anyhow::Result<()> {
    let progress = ctx.progress();
    let ws = ctx.workspace(&args.ws)?.clone();
    let observer = TrainProgress::new(ctx.quiet || args.json);
    let report = wp::train(&ws, &args.request(), progress, &observer);
    observer.bar.finish_and_clear();
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
        if d.truncated > 0 {
            format!(" ({} truncated to the token limits)", d.truncated)
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
            "{:>5} {:>7} {:>9} {:>11} {:>12} {:>8} {:>8} {:>5} {:>10}  judges (held-out)",
            "round",
            "pairs",
            "uncertain",
            "RM (train)",
            "RM (held)",
            "KL/seq",
            "KL/tok",
            "cut",
            "words"
        );
        let row = |label: String, pairs: String, unc: String, m: &crate::policy::rmdpo::Measure| {
            let judges: Vec<String> =
                m.heldout_judges.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
            println!(
                "{label:>5} {pairs:>7} {unc:>9} {:>11.3} {:>12.3} {:>8.2} {:>8.4} {:>5} {:>10.1}  {}",
                m.train_reward,
                m.heldout_reward,
                m.kl.mean,
                m.kl.per_token,
                format!("{}/{}", m.kl.truncated, m.kl.samples),
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

/// Spinners for the evaluation's stages, warnings on stderr.
struct EvalProgress {
    quiet: bool,
    bar: std::cell::RefCell<Option<ProgressBar>>,
}

impl EvalObserver for EvalProgress {
    fn stage(&self, what: &str) {
        *self.bar.borrow_mut() = Some(super::args::spinner(self.quiet, what.to_string()));
    }
    fn stage_done(&self) {
        if let Some(bar) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }
    fn warn(&self, text: &str) {
        eprintln!("warning: {text}");
    }
}

fn evaluate(ctx: &mut Context, args: EvalArgs) -> anyhow::Result<()> {
    let progress = ctx.progress();
    let ws = ctx.workspace(&args.ws)?.clone();
    let request = EvalRequest {
        model: args.model.clone(),
        baseline: args.baseline.clone(),
        baseline_as_is: args.baseline_as_is,
        books: args.books.clone(),
        max_height: args.max_height,
        reward_model: args.reward_model.clone(),
        encoder: args.encoder.encoder.clone(),
        judges: args.judges.clone(),
        kl_prompts: args.kl_prompts,
        kl_samples: args.kl_samples,
        batch_size: args.batch_size,
        device: args.device,
        decomposer: args.decomposer.spec(&args.encoder),
    };
    let observer = EvalProgress { quiet: ctx.quiet, bar: std::cell::RefCell::new(None) };
    let report =
        wp::evaluate(&ws, &request, progress, &observer).context("evaluating the policy")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{} vs {} on {}", report.policy, report.baseline, report.books.join(", "));
    println!(
        "baseline: {} ({}): {}",
        report.baseline_used.spec,
        report.baseline_used.file.display(),
        report.baseline_used.note
    );
    let names: Vec<String> = wp::judges_named(&args.judges)?.iter().map(|j| j.name()).collect();
    let mut header = format!("{:>6} {:>6}", "height", "nodes");
    for n in &names {
        header.push_str(&format!(" {:>30}", format!("win {n}")));
    }
    header.push_str(&format!(
        " {:>30} {:>13} {:>11} {:>17} {:>15}",
        "win reward", "words p/b", "loops p/b", "unsupported p/b", "4-grams copied p/b"
    ));
    println!("{header}");
    // The rate, its normal interval over nodes, and the interval over books when there are
    // several (nodes of one book are not independent), with the number of books: over a
    // handful of books the bootstrap is itself rough.
    let win_rate = |w: &WinRate| {
        let by_book = w.interval_by_book.map_or(String::new(), |(lo, hi)| {
            format!(" [{:.1}, {:.1}]/{}", 100.0 * lo, 100.0 * hi, w.books)
        });
        format!("{:.1}% ±{:.1}{by_book}", 100.0 * w.rate, 100.0 * w.ci95)
    };
    let line = |label: String, c: &Comparison| {
        let mut s = format!("{label:>6} {:>6}", c.nodes);
        for n in &names {
            let w = c.judges.get(n).copied().unwrap_or_default();
            s.push_str(&format!(" {:>30}", win_rate(&w)));
        }
        let r = c.reward.map_or("-".to_string(), |w| win_rate(&w));
        let pct = |p: f64, b: f64| format!("{:.1}%/{:.1}%", 100.0 * p, 100.0 * b);
        s.push_str(&format!(
            " {r:>30} {:>13} {:>11} {:>17} {:>15}",
            format!("{:.0}/{:.0}", c.policy.mean_words, c.baseline.mean_words),
            format!("{:.0}%/{:.0}%", 100.0 * c.policy.loop_rate, 100.0 * c.baseline.loop_rate),
            pct(c.policy.unsupported_rate, c.baseline.unsupported_rate),
            pct(c.policy.copied_4gram_share, c.baseline.copied_4gram_share),
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
        println!("KL(policy‖baseline) on held-out prompts: {}", k.describe());
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
