//! `rrm bench encoder`: sentence-encoder throughput on the chosen device (a subcommand of
//! `rrm bench`, kept in its own file).

use clap::Args;

use super::reward::{load_encoder, EncoderArgs};
use super::Context;
use crate::infer::encoder_bench::{bench_encoder, bench_passages, bench_sentences};

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
    #[command(flatten)]
    pub encoder: EncoderArgs,
}

pub fn run(ctx: &mut Context, args: EncoderBenchArgs) -> anyhow::Result<()> {
    let device = args.encoder.device.device()?;
    let encoder = load_encoder(&args.encoder, ctx.quiet)?;
    if !args.json {
        println!("encoder {} on {device:?}", encoder.identity().name);
        println!(
            "{:>10} {:>7} {:>9} {:>9} {:>11} {:>10}",
            "workload", "texts", "tokens", "seconds", "texts/s", "tokens/s"
        );
    }
    let workloads = [
        ("sentences", bench_sentences(args.sentences)),
        ("passages", bench_passages(args.passages)),
    ];
    for (name, texts) in workloads.iter().filter(|(_, texts)| !texts.is_empty()) {
        let row = bench_encoder(encoder.as_ref(), name, texts)?;
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
