//! `rrm bench generate`: prompt and aggregate decode throughput of the local engine at several
//! batch sizes.

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::infer::bench::{bench_batch, make_prompts, BENCH_TEXT};
use crate::infer::fetch;
use crate::infer::llama::LlamaModel;

use super::args::LocalModelArgs;
use super::Context;

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
}

pub fn run(ctx: &mut Context, args: BenchArgs) -> anyhow::Result<()> {
    let (batch, prompt_len, new_tokens, json, model) = match args.command {
        BenchCommand::Generate { batch, prompt_len, new_tokens, json, model } => {
            (batch, prompt_len, new_tokens, json, model)
        }
        BenchCommand::Kernels { rows, reps, json } => return kernels(rows, reps, json),
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
