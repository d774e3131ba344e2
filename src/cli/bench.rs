//! `rrm bench generate`: prompt and aggregate decode throughput of the local engine at several
//! batch sizes; `rrm bench train`: training tokens/s (LoRA, full) and peak memory.

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::infer::bench::{bench_batch, make_prompts, BENCH_TEXT};
use crate::infer::fetch;
use crate::infer::llama::LlamaModel;

use super::args::LocalModelArgs;
use super::Context;
use crate::workspace::policy::{bench_model, bench_train as policy_bench, BenchRequest};

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
    /// Training tokens/s (forward + backward + AdamW) for LoRA and full fine-tuning, forward
    /// tokens/s, peak memory (e.g. `rrm --threads 2 bench train`).
    Train(BenchTrainArgs),
}

pub fn run(ctx: &mut Context, args: BenchArgs) -> anyhow::Result<()> {
    let (batch, prompt_len, new_tokens, json, model) = match args.command {
        BenchCommand::Generate { batch, prompt_len, new_tokens, json, model } => {
            (batch, prompt_len, new_tokens, json, model)
        }
        BenchCommand::Train(args) => return bench_train(ctx, args),
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
    let threads = std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .or_else(|| std::thread::available_parallelism().map(|n| n.get()).ok())
        .unwrap_or(1);
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
    Ok(())
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
    };
    let resolved = bench_model(&request, ctx.progress())
        .with_context(|| format!("finding the model `{}`", args.model.model))?;
    let threads = std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "all".into());
    if !args.json {
        println!(
            "model {} on {:?}, {threads} threads; batch {} × {} tokens ({} scored)",
            resolved.name, args.model.device, args.batch, args.seq_len, args.completion_len
        );
        println!(
            "{:>5} {:>12} {:>16} {:>10} {:>18} {:>14}",
            "mode", "trainable", "train tok/s", "s/step", "forward tok/s", "peak RSS MiB"
        );
    }
    let json = args.json;
    let mut print = |row: crate::lm::bench::TrainBench| -> crate::workspace::Result<()> {
        if json {
            println!("{}", serde_json::to_string(&row).unwrap_or_default());
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
        Ok(())
    };
    policy_bench(&request, &resolved, &mut print).context("benchmarking training")
}
