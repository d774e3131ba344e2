//! `rrm serve`: the labeling web app over this workspace's database (see `crate::serve`).

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Args;

use super::args::{labeler, EncoderArgs, GeneratorOptions, LevelModelArgs, WorkspaceArgs};
use super::Context;
use crate::serve::{self, ServeConfig};

/// Serve the labeling web app: browse books and task trees, rate nodes (several labelers at
/// once), follow jobs, export feedback; a JSON API under /api/.
#[derive(Debug, Args)]
#[command(after_help = "While it runs, rrm serve owns the database: other rrm commands on it \
say so and wait for you to stop it (Ctrl-C). Drawing candidates, summarizing and training run \
as jobs inside it.

With no labelers (`rrm labeler add NAME`), it listens on 127.0.0.1 only and everyone who \
opens it rates as the local user (--labeler, RRM_LABELER or USER). With labelers, everyone signs \
in with their token, and --addr may name another interface.

Keys on the rating screen: 1 / 2 / t (then a confidence 1-9, Enter = 5), l (Likert), e (edit), \
w (write), c (critique), s (skip), n (next), u (parent), r (raw text), a (auto-advance), ? (help).

Examples:
  rrm serve
  rrm serve --addr 127.0.0.1:8080 --overlap 2
  rrm labeler add ann && rrm serve --addr 0.0.0.0:8080")]
pub struct ServeArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub addr: SocketAddr,
    /// Show each queued pair to K different labelers (blind to each other's answers).
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub overlap: usize,
    /// Stay on the node after a comparison instead of going to the next queued item (each
    /// labeler can switch with the `a` key).
    #[arg(long)]
    pub no_auto_advance: bool,
    /// How long a question of "summarize, asking where unsure" waits for an answer before its
    /// node goes on with the reward model's pick, in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub ask_wait: u64,
    /// Who rates in local mode (no labelers).
    #[arg(long, env = "RRM_LABELER", value_name = "NAME")]
    pub labeler: Option<String>,
    /// The reward model that ranks the queue and shows uncertainty (`latest`, a hash, a folder,
    /// or `none`).
    #[arg(long, default_value = "latest", value_name = "PATH|latest|none")]
    pub reward_model: String,
    #[command(flatten)]
    pub generator: GeneratorOptions,
    #[command(flatten)]
    pub level_models: LevelModelArgs,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

pub fn run(ctx: &mut Context, args: ServeArgs) -> anyhow::Result<()> {
    let ws = ctx.workspace(&args.ws)?.clone();
    let config = ServeConfig {
        addr: args.addr,
        overlap: args.overlap,
        auto_advance: !args.no_auto_advance,
        local_labeler: labeler(&args.labeler),
        generator: args.generator.spec(&args.ws.models),
        level_generators: args.level_models.specs(&args.generator, &args.ws.models),
        reward_model: (args.reward_model != "none").then(|| args.reward_model.clone()),
        encoder: args.encoder.encoder.clone(),
        ask_wait: std::time::Duration::from_secs(args.ask_wait),
        ..ServeConfig::new(args.addr)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let (state, listener) = serve::bind(ws, config).await?;
        let mode = if state.tokens_required {
            "labelers sign in with their tokens".to_string()
        } else {
            format!("local mode: you rate as {}", state.config.local_labeler)
        };
        println!("rrm serve: open {}  ({mode}; Ctrl-C stops)", state.url());
        let grace = state.config.shutdown_grace;
        let shutdown = async move {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!(
                "stopping: finishing requests and jobs (at most {} s; Ctrl-C again stops now)",
                grace.as_secs()
            );
            // A second Ctrl-C does not wait: every answer is already flushed when it is stored.
            tokio::spawn(async {
                let _ = tokio::signal::ctrl_c().await;
                eprintln!("stopped");
                std::process::exit(130);
            });
        };
        serve::serve(state, listener, shutdown).await?;
        anyhow::Ok(())
    })
}
