//! `rrm bench generate`: prompt and aggregate decode throughput of the local engine at several
//! batch sizes.

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::infer::bench::{bench_batch, make_prompts, BENCH_TEXT};
use crate::infer::fetch;
use crate::infer::llama::LlamaModel;

use super::models::LocalModelArgs;
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
}

pub fn run(ctx: &mut Context, args: BenchArgs) -> anyhow::Result<()> {
    let BenchCommand::Generate { batch, prompt_len, new_tokens, json, model } = args.command;
    let dir = fetch::models_dir(model.models_dir.as_deref());
    let resolved = fetch::resolve_model_with(&model.model, &dir, !ctx.quiet)
        .with_context(|| format!("finding the model `{}`", model.model))?;
    let device = model.device.device()?;
    let t0 = std::time::Instant::now();
    let loaded = LlamaModel::load(&resolved.path, &device)
        .with_context(|| format!("loading the model {}", resolved.path.display()))?;
    let load_s = t0.elapsed().as_secs_f64();
    let base = loaded.tokenizer.encode(&BENCH_TEXT.repeat(8)).context("tokenizing")?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if !json {
        println!(
            "model {} on {:?}, loaded in {load_s:.2}s; {threads} threads; prompts of {prompt_len} tokens, {new_tokens} new tokens",
            resolved.name, device
        );
        println!("{:>6} {:>14} {:>20}", "batch", "prompt tok/s", "decode tok/s (sum)");
    }
    // Warm up (thread pools, caches).
    bench_batch(&loaded.model, &make_prompts(&base, 32, 1), 4)?;
    for b in batch {
        let prompts = make_prompts(&base, prompt_len, b.max(1));
        let row = bench_batch(&loaded.model, &prompts, new_tokens.max(2))?;
        if json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            println!("{:>6} {:>14.1} {:>20.1}", row.batch, row.prompt_tps, row.decode_tps);
        }
    }
    Ok(())
}
