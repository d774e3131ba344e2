//! `rrm bench generate`: prompt and aggregate decode throughput of the local engine at several
//! batch sizes; `rrm bench train`: training tokens/s (LoRA, full) and peak memory; `rrm bench
//! ask`: what asking people buys.

use anyhow::Context as _;
use clap::{Args, Subcommand};

mod encoder;

use crate::infer::bench::{bench_batch, make_prompts, BENCH_TEXT};
use crate::infer::fetch;
use crate::infer::llama::LlamaModel;

use std::sync::Arc;

use super::args::{
    DecomposerOptions, EncoderArgs, GeneratorOptions, LocalModelArgs, WorkspaceArgs,
};
use super::Context;
use crate::compose::ComposeOptions;
use crate::feedback::sim::SimLabeler;
use crate::workspace::ask::{self, Budget, Experiment};
use crate::workspace::books;
use crate::workspace::policy::{bench_model, bench_train as policy_bench, BenchRequest};
use crate::workspace::summarize::{self, SelectorSpec};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Prompt tokens/s and aggregate decode tokens/s at batch sizes 1, 4, 8, 16.
    Generate {
        /// Batch sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
        batch: Vec<usize>,
        /// Prompt length in tokens.
        #[arg(long, default_value_t = 600)]
        prompt_len: usize,
        /// New tokens per sequence.
        #[arg(long, default_value_t = 128)]
        new_tokens: usize,
        /// Print JSON rows.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: LocalModelArgs,
    },
    /// Sentence-encoder throughput: short sentences (sentences/s) and passages longer than the
    /// window (tokens/s), e.g. `rrm bench encoder --device cuda`.
    Encoder(encoder::EncoderBenchArgs),
    /// Training tokens/s (forward + backward + AdamW) for LoRA and full fine-tuning, forward
    /// tokens/s, peak memory (e.g. `rrm --threads 2 bench train`).
    Train(BenchTrainArgs),
    /// LM reward-model scoring: summaries/s of the trainer's forward beside the inference
    /// engine's (which `summarize --reward-model` and `reward eval` use), on random sequences
    /// with LoRA adapters, in one run (e.g. `rrm --threads 2 bench score`; the shape of
    /// `scripts/trl/bench.py --modes score`).
    Score(BenchScoreArgs),
    /// Time the prefill matmul kernels on SmolLM2's shapes (random weights): candle's Q8_0
    /// matmul against the f16 GEMM at each kernel level this CPU has.
    Kernels {
        /// Rows (prompt tokens) per matmul.
        #[arg(long, default_value_t = 256)]
        rows: usize,
        /// Calls per measurement (the fastest is reported).
        #[arg(long, default_value_t = 15)]
        reps: usize,
        /// Print JSON rows.
        #[arg(long)]
        json: bool,
    },
    /// What asking people buys (`summarize --ask`): with the simulated labeler answering,
    /// its score of every node and of the root against the number of questions, for each
    /// budget, asking where the reward ensemble is unsure or regardless (the baseline).
    Ask(Box<AskArgs>),
}

#[derive(Debug, Args)]
pub struct AskArgs {
    /// Books (files, folders, catalog ids).
    #[arg(long, value_delimiter = ',', num_args = 1.., required = true, value_name = "BOOK")]
    pub books: Vec<String>,
    /// Question budgets (counts or shares of the nodes).
    #[arg(long, value_delimiter = ',', default_value = "5%,20%,100%", value_name = "N|P%,..")]
    pub budgets: Vec<Budget>,
    /// Candidates per node.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub best_of: usize,
    /// The reward model that picks (`latest`, a hash, a folder).
    #[arg(long, default_value = "latest", value_name = "PATH|latest")]
    pub reward_model: String,
    /// λ in mean − λ·std.
    #[arg(long, default_value_t = 1.0)]
    pub pessimism: f32,
    /// Ask when |mean_a − mean_b| < T · the members' spread of (a − b).
    #[arg(long, default_value_t = 1.0)]
    pub threshold: f32,
    /// Most sequences generated together.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub decomposer: DecomposerOptions,
    #[command(flatten)]
    pub generator: GeneratorOptions,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

pub fn run(ctx: &mut Context, args: BenchArgs) -> anyhow::Result<()> {
    let (batch, prompt_len, new_tokens, json, model) = match args.command {
        BenchCommand::Generate { batch, prompt_len, new_tokens, json, model } => {
            (batch, prompt_len, new_tokens, json, model)
        }
        BenchCommand::Encoder(args) => return encoder::run(ctx, args),
        BenchCommand::Train(args) => return bench_train(ctx, args),
        BenchCommand::Score(args) => return bench_score(ctx, args),
        BenchCommand::Kernels { rows, reps, json } => return kernels(rows, reps, json),
        BenchCommand::Ask(a) => return bench_ask(ctx, *a),
    };
    let dir = fetch::models_dir(model.models.models_dir.as_deref());
    let resolved = fetch::resolve_model_with(&model.model, &dir, !ctx.quiet)
        .with_context(|| format!("finding the model `{}`", model.model))?;
    let device = model.device.device()?;
    let t0 = std::time::Instant::now();
    let loaded = LlamaModel::load(&resolved.path, &device)
        .with_context(|| format!("loading the model {}", resolved.path.display()))?;
    let load_s = t0.elapsed().as_secs_f64();
    let base = loaded.tokenizer.encode(&BENCH_TEXT.repeat(8)).context("tokenizing")?;
    let threads = crate::infer::kernels::pool::default_threads();
    if !json {
        println!(
            "model {} on {:?}, loaded in {load_s:.2}s; {threads} threads; prompts of {prompt_len} tokens, {new_tokens} new tokens\n\
             (tok/cpu-s: per second of the main thread's CPU time, meaningful with CANDLE_NUM_THREADS=1)",
            resolved.name, device
        );
        println!(
            "{:>6} {:>14} {:>20} {:>18} {:>18}",
            "batch", "prompt tok/s", "decode tok/s (sum)", "prompt tok/cpu-s", "decode tok/cpu-s"
        );
    }
    // Warm up (thread pools, caches).
    bench_batch(&loaded.model, &make_prompts(&base, 32, 1), 4)?;
    for b in batch {
        let prompts = make_prompts(&base, prompt_len, b.max(1));
        let row = bench_batch(&loaded.model, &prompts, new_tokens.max(2))?;
        if json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1}"));
            println!(
                "{:>6} {:>14.1} {:>20.1} {:>18} {:>18}",
                row.batch,
                row.prompt_tps,
                row.decode_tps,
                f(row.prompt_cpu_tps),
                f(row.decode_cpu_tps)
            );
        }
    }
    if !json {
        let pool = crate::infer::kernels::pool::Pool::global();
        let stats = pool.stats();
        println!(
            "kernel regions: {} on all threads, {} on one (helpers measured not to pay off{})",
            stats.parallel,
            stats.solo,
            if pool.adaptive() { "" } else { "; RRM_POOL_ADAPT=0: measurement off" }
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Which modes to measure: lora, full (SFT's loss), dpo (LoRA with DPO's loss on `batch`
    /// pairs of two completions after one prompt, tokens counted as TRL counts them).
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
    /// Adapters only in the top N transformer blocks (default: all).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub lora_top_layers: Option<u64>,
    /// Gradient checkpointing settings to measure each mode with (off, on).
    #[arg(long, value_delimiter = ',', default_value = "off,on", value_parser = on_off)]
    pub checkpointing: Vec<bool>,
    /// Ops to measure each setting with: fused (attention, and each frozen projection with its
    /// adapter, as single ops that keep less for the backward; f32 on the CPU), plain (candle's
    /// ops, attention with a mask tensor).
    #[arg(long, value_delimiter = ',', default_value = "fused", value_parser = ops_kind)]
    pub ops: Vec<bool>,
    /// Print JSON rows.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: LocalModelArgs,
}

/// `fused` → true, `plain` → false.
fn ops_kind(s: &str) -> Result<bool, String> {
    match s.trim() {
        "fused" => Ok(true),
        "plain" => Ok(false),
        other => Err(format!("`{other}`: ops are fused or plain")),
    }
}

fn bench_train(ctx: &mut Context, args: BenchTrainArgs) -> anyhow::Result<()> {
    let request = BenchRequest {
        model: args.model.model.clone(),
        models_dir: args.model.models.models_dir.clone(),
        device: args.model.device,
        modes: args.modes.clone(),
        batch: args.batch,
        seq_len: args.seq_len,
        completion_len: args.completion_len,
        steps: args.steps,
        lora_rank: args.lora_rank,
        lora_targets: args.lora_targets.clone(),
        lora_top_layers: args.lora_top_layers.map(|n| n as usize),
        checkpointing: args.checkpointing.clone(),
        fused_ops: args.ops.clone(),
    };
    let resolved = bench_model(&request, ctx.progress())
        .with_context(|| format!("finding the model `{}`", args.model.model))?;
    let threads = std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "all".into());
    if !args.json {
        println!(
            "model {} on {:?}, {threads} threads; batch {} × {} tokens ({} scored){}",
            resolved.name,
            args.model.device,
            args.batch,
            args.seq_len,
            args.completion_len,
            args.lora_top_layers.map_or(String::new(), |n| format!("; LoRA in the top {n} blocks"))
        );
        println!(
            "{:>5} {:>10} {:>9} {:>12} {:>12} {:>8} {:>14} {:>13} {:>14}",
            "mode",
            "checkpoint",
            "ops",
            "trainable",
            "train tok/s",
            "s/step",
            "forward tok/s",
            "peak RSS MiB",
            "est. kept MiB"
        );
    }
    let json = args.json;
    let mut print = |row: crate::lm::bench::TrainBench| -> crate::workspace::Result<()> {
        if json {
            println!("{}", serde_json::to_string(&row).unwrap_or_default());
        } else {
            println!(
                "{:>5} {:>10} {:>9} {:>12} {:>12.1} {:>8.2} {:>14.1} {:>13} {:>14.0}",
                row.mode,
                if row.checkpointing { "on" } else { "off" },
                row.ops,
                row.trainable_params,
                row.train_tokens_per_s,
                row.step_seconds,
                row.forward_tokens_per_s,
                row.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
                row.kept_activation_estimate_mib
            );
        }
        Ok(())
    };
    policy_bench(&request, &resolved, &mut print).context("benchmarking training")
}

#[derive(Debug, Args)]
pub struct BenchScoreArgs {
    /// Sequences scored.
    #[arg(long, default_value_t = 16)]
    pub count: usize,
    /// Tokens per sequence (a prompt, its input and a summary).
    #[arg(long, default_value_t = 512)]
    pub len: usize,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// LoRA rank of the scored adapters.
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// Print JSON rows.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: LocalModelArgs,
}

fn bench_score(ctx: &mut Context, args: BenchScoreArgs) -> anyhow::Result<()> {
    let dir = crate::infer::fetch::models_dir(args.model.models.models_dir.as_deref());
    let resolved = crate::infer::fetch::resolve_model_with(&args.model.model, &dir, ctx.progress())
        .with_context(|| format!("finding the model `{}`", args.model.model))?;
    let request = crate::reward::lm::bench::ScoreBenchRequest {
        count: args.count,
        len: args.len,
        batch: args.batch,
        lora_rank: args.lora_rank,
        seed: 0,
    };
    let threads = crate::infer::kernels::pool::default_threads();
    if !args.json {
        println!(
            "model {}, {threads} threads; {} sequences of {} tokens, {} per pass, LoRA rank {}",
            resolved.name, args.count, args.len, args.batch, args.lora_rank
        );
        println!(
            "{:>8} {:>10} {:>12} {:>10} {:>10} {:>16}",
            "scorer", "setup s", "summaries/s", "tokens/s", "seconds", "max |Δ| trainer"
        );
    }
    let json = args.json;
    crate::reward::lm::bench::bench_scoring(&resolved.path, &request, &mut |row| {
        if json {
            println!("{}", serde_json::to_string(&row).unwrap_or_default());
        } else {
            println!(
                "{:>8} {:>10.2} {:>12.2} {:>10.1} {:>10.2} {:>16.2e}",
                row.scorer,
                row.setup_seconds,
                row.summaries_per_s,
                row.tokens_per_s,
                row.seconds,
                row.max_abs_diff_vs_trainer
            );
        }
    })
    .context("benchmarking LM reward scoring")
}

/// `on` / `off` (also true/false, 1/0).
fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        other => Err(format!("`{other}` is neither on nor off")),
    }
}

fn kernels(rows: usize, reps: usize, json: bool) -> anyhow::Result<()> {
    // SmolLM2-135M: hidden 576, 9 heads / 3 KV heads of 64, FFN 1536.
    let shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)];
    let threads = crate::infer::kernels::pool::default_threads();
    if !json {
        println!(
            "{rows} rows, {threads} threads, kernel level {} (best on this CPU: {})",
            crate::infer::kernels::level().name(),
            crate::infer::kernels::Level::detect().name()
        );
        println!("{:>18} {:>12} {:>10} {:>10}", "path", "n x k", "ms", "GFLOP/s");
    }
    for row in crate::infer::bench::bench_kernels(rows, &shapes, threads, reps.max(1))? {
        if json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            println!(
                "{:>18} {:>12} {:>10.3} {:>10.1}",
                row.path,
                format!("{}x{}", row.n, row.k),
                row.ms,
                row.gflops
            );
        }
    }
    Ok(())
}

fn bench_ask(ctx: &mut Context, args: AskArgs) -> anyhow::Result<()> {
    let progress = ctx.progress();
    let ws = ctx.workspace(&args.ws)?.clone();
    let decomposer = args.decomposer.spec(&args.encoder).build(&ws, progress)?;
    let mut books = Vec::new();
    for spec in books::expand(&args.books)? {
        let book = ws.open_book(&spec, false, &|_| {})?;
        let tree = summarize::decompose(&ws, &book, decomposer.as_ref())?;
        books.push((book, tree));
    }
    let reward = SelectorSpec {
        reward_model: Some(args.reward_model.clone()),
        pessimism: args.pessimism,
        encoder: args.encoder.encoder.clone(),
    }
    .build(&ws, progress)?;
    let generator = args.generator.start(&args.ws.models, args.batch_size, progress)?;
    let options = ComposeOptions {
        best_of: args.best_of.max(2),
        batch_size: args.batch_size.max(1),
        ..ComposeOptions::default()
    };
    let experiment = Experiment {
        books: &books,
        generator: Arc::clone(&generator),
        reward,
        labeler: SimLabeler::new("sim-asked", 0.0),
        options,
        threshold: args.threshold,
    };
    let bar = ctx.spinner("composing every configuration");
    let rows = super::args::runtime()?.block_on(ask::experiment(&ws, &experiment, &args.budgets));
    bar.finish_and_clear();
    let rows = rows.context("running the ask experiment")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{} book(s), {} nodes; best-of-{}; the simulated labeler answers and judges",
        books.len(),
        books.iter().map(|(_, t)| t.len()).sum::<usize>(),
        args.best_of
    );
    println!(
        "{:<10} {:>7} {:>9} {:>12} {:>12}",
        "strategy", "budget", "questions", "root score", "node score"
    );
    for r in &rows {
        println!(
            "{:<10} {:>7} {:>9} {:>12.3} {:>12.3}",
            r.strategy, r.budget, r.questions, r.root_score, r.node_score
        );
    }
    Ok(())
}
