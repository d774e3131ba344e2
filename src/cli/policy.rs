//! `rrm policy train|eval` (training the summarizer itself from feedback) and
//! `rrm bench train` (training throughput).

use anyhow::Context as _;
use clap::Args;

use super::models::LocalModelArgs;
use super::Context;
use crate::infer::fetch;
use crate::lm::bench::bench_train as run_bench;
use crate::lm::model::{LoadOptions, Mode};
use crate::lm::{LoraConfig, Target};

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
