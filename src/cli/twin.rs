//! `rrm twin skeleton|inflate`: models with a real model's shapes, weight types and tokenizer but
//! random weights, for measuring speed where the real weights cannot travel (see
//! `infer::twin` and `scripts/gpu-bundle.sh`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::args::ModelsDir;
use super::Context;
use crate::infer::{fetch, twin};

/// Twin models: a real model's shapes, types and tokenizer with random weights (for speed checks).
#[derive(Debug, Args)]
#[command(
    after_help = "A skeleton is small (about 2 MB for the default policy model, 0.5 MB for the \
encoder); inflating it writes a model as large as the original whose text is noise but whose cost \
per token is the original's.

Examples:
  rrm twin skeleton smollm2-135m --out smollm2.skeleton.gguf
  rrm twin inflate smollm2.skeleton.gguf --out smollm2-twin.gguf
  rrm twin skeleton minilm-l6 --out minilm-skeleton/
  rrm twin inflate minilm-skeleton/ --out minilm-twin/"
)]
pub struct TwinArgs {
    #[command(subcommand)]
    pub command: TwinCommand,
}

#[derive(Debug, Subcommand)]
pub enum TwinCommand {
    /// Write the skeleton of a model: a GGUF generator (a file) or a BERT encoder (a folder).
    Skeleton {
        /// A known model name (`rrm models list`), a .gguf path or an encoder folder.
        model: String,
        /// Where to write it: a .gguf file for a generator, a folder for an encoder.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        #[command(flatten)]
        models: ModelsDir,
    },
    /// Write a twin model from a skeleton (a .gguf skeleton file or an encoder skeleton folder).
    Inflate {
        skeleton: PathBuf,
        /// The twin: a .gguf file, or a folder for an encoder.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

pub fn run(ctx: &mut Context, args: TwinArgs) -> anyhow::Result<()> {
    match args.command {
        TwinCommand::Skeleton { model, out, models } => {
            let dir = fetch::models_dir(models.models_dir.as_deref());
            let resolved = fetch::resolve_model_with(&model, &dir, ctx.progress())
                .with_context(|| format!("finding the model `{model}`"))?;
            let written = twin::skeleton(&resolved.path, &out)
                .with_context(|| format!("writing the skeleton of {}", resolved.name))?;
            if !ctx.quiet {
                match written {
                    twin::Skeleton::Bert => {
                        println!("encoder skeleton of {} in {}", resolved.name, out.display())
                    }
                    twin::Skeleton::Gguf(summary) => println!(
                        "skeleton of {} ({} tensors, {:.1} MB of weights) in {}",
                        resolved.name,
                        summary.tensors,
                        summary.data_bytes as f64 / 1e6,
                        out.display()
                    ),
                }
            }
            Ok(())
        }
        TwinCommand::Inflate { skeleton, out, seed } => {
            let t0 = std::time::Instant::now();
            let bytes = twin::inflate(&skeleton, &out, seed)
                .with_context(|| format!("inflating {}", skeleton.display()))?;
            if !ctx.quiet {
                println!(
                    "twin with {:.1} MB of weights in {} ({:.1} s)",
                    bytes as f64 / 1e6,
                    out.display(),
                    t0.elapsed().as_secs_f64()
                );
            }
            Ok(())
        }
    }
}
