//! `rrm bench encoder`: sentence-encoder throughput on the chosen device (a subcommand of
//! `rrm bench`, kept in its own file).

use anyhow::Context as _;
use clap::Args;

use super::super::args::{parse_device, EncoderArgs, ModelsDir};
use super::super::Context;
use crate::infer::encoder::{EncoderOptions, MiniLmEncoder};
use crate::infer::encoder_bench::run_encoder_bench;
use crate::infer::engine::DeviceChoice;
use crate::infer::{fetch, Encoder};

#[derive(Debug, Args)]
pub struct EncoderBenchArgs {
    /// Short sentences to embed.
    #[arg(long, default_value_t = 2048)]
    pub sentences: usize,
    /// Long passages to embed (truncated at the encoder's window).
    #[arg(long, default_value_t = 256)]
    pub passages: usize,
    /// Print JSON rows.
    #[arg(long)]
    pub json: bool,
    /// Where the encoder runs.
    #[arg(long, default_value = "auto", value_parser = parse_device, value_name = "cpu|cuda|auto")]
    pub device: DeviceChoice,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[command(flatten)]
    pub models: ModelsDir,
}

pub fn run(ctx: &mut Context, args: EncoderBenchArgs) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let dir = fetch::models_dir(args.models.models_dir.as_deref());
    let options = EncoderOptions::on(device.clone());
    let encoder =
        MiniLmEncoder::resolve_and_load(&args.encoder.encoder, &dir, ctx.progress(), options)
            .with_context(|| format!("loading the encoder `{}`", args.encoder.encoder))?;
    if !args.json {
        println!("encoder {} on {device:?}", encoder.identity().name);
        println!(
            "{:>10} {:>7} {:>9} {:>9} {:>11} {:>10}",
            "workload", "texts", "tokens", "seconds", "texts/s", "tokens/s"
        );
    }
    for row in run_encoder_bench(&encoder, args.sentences, args.passages)? {
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            println!(
                "{:>10} {:>7} {:>9} {:>9.3} {:>11.1} {:>10.0}",
                row.workload, row.texts, row.tokens, row.seconds, row.texts_per_s, row.tokens_per_s
            );
        }
    }
    Ok(())
}
