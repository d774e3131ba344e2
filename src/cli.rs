//! The command line: parses arguments, calls the library, prints. No logic of its own.
//!
//! Each command is a file under `cli/` with an `Args` struct (clap) and a `run` function; flags
//! several commands share live in [`args`]. A command file imports `args` and the library, never
//! another command file. Errors from the library arrive typed; here they get context (anyhow)
//! and become a message on stderr and a non-zero exit code, never a panic.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::workspace::Workspace;

pub mod args;
pub mod bench;
pub mod books;
pub mod cache;
pub mod db;
pub mod decompose;
pub mod decomposer;
pub mod eval;
pub mod feedback;
pub mod labeler;
pub mod models;
pub mod node;
pub mod policy;
pub mod progress;
pub mod rate;
pub mod reward;
pub mod serve;
pub mod summarize;
pub mod tree;
pub mod twin;

/// Recursive reward modeling for book summarization.
///
/// A book is split into a tree of small summarization tasks; a language model summarizes the
/// leaves, then the summaries, up to the root; people rate individual nodes and per-level reward
/// models learn from them.
#[derive(Debug, Parser)]
#[command(name = "rrm", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// The database that holds books, trees, outputs and feedback.
    #[arg(long, global = true, env = "RRM_DB", default_value = ".rrm/db")]
    pub db: PathBuf,
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// CPU threads for local inference (default: all cores). The kernels' pool never waits for
    /// a thread the OS has not scheduled, and it measures, per matmul shape, whether the extra
    /// threads pay off: on a busy machine decoding falls back to one thread by itself while
    /// prompt processing keeps them all.
    #[arg(long, global = true, env = "RRM_THREADS", value_name = "N")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List and fetch the public-domain books of the catalog (e.g. `rrm books fetch alice`).
    Books(books::BooksArgs),
    /// Split a book into a task tree and save it (e.g. `rrm decompose alice`).
    Decompose(decompose::DecomposeArgs),
    /// Train and evaluate the learned decomposer (e.g. `rrm decomposer train --books alice --out m.safetensors`).
    Decomposer(decomposer::DecomposerArgs),
    /// Show a book's task tree (e.g. `rrm tree show alice --depth 1`).
    Tree(tree::TreeArgs),
    /// Show one node of a task tree in full (e.g. `rrm node show h0.3 --book alice`).
    Node(node::NodeArgs),
    /// Summarize books with the policy model, recursively, cached (e.g. `rrm summarize alice`).
    Summarize(Box<summarize::SummarizeArgs>),
    /// Inspect and clean the node cache (e.g. `rrm cache stats`, `rrm cache gc`).
    Cache(cache::CacheArgs),
    /// Fetch and list model files (e.g. `rrm models pull`, `rrm models list`).
    Models(models::ModelsArgs),
    /// Complete one prompt with the local model, for manual checks (e.g. `rrm generate --prompt Hi`).
    Generate(models::GenerateArgs),
    /// Measure throughput (e.g. `rrm bench generate --batch 1,8`).
    Bench(bench::BenchArgs),
    /// Rate a node's candidate summaries (e.g. `rrm rate h0.3 --book alice`, `rrm rate --next`).
    Rate(rate::RateArgs),
    /// Stored feedback: list, export, import, agreement, queue, simulate.
    Feedback(feedback::FeedbackArgs),
    /// Per-level reward models: train, eval, score (e.g. `rrm reward train --all`).
    Reward(reward::RewardArgs),
    /// Train the summarizer from feedback (SFT, DPO, reward-model rounds) and evaluate it
    /// (e.g. `rrm policy train --method dpo --name smol-dpo`).
    Policy(policy::PolicyArgs),
    /// Check the database and repair it (e.g. `rrm db check`, `rrm db check --repair`).
    Db(db::DbArgs),
    /// The labeling web app: browse trees, rate nodes with the keyboard (e.g. `rrm serve`).
    Serve(serve::ServeArgs),
    /// Labelers of the web app and their sign-in tokens (e.g. `rrm labeler add ann`).
    Labeler(labeler::LabelerArgs),
    /// Summary quality against references, run comparisons, plots (e.g. `rrm eval report --out r/`).
    Eval(eval::EvalArgs),
    /// Twin models for speed checks (e.g. `rrm twin skeleton smollm2-135m --out s.gguf`).
    Twin(twin::TwinArgs),
}

/// What every command may need, opened lazily.
pub struct Context {
    pub db_path: PathBuf,
    pub quiet: bool,
    workspace: Option<Workspace>,
}

impl Context {
    /// The workspace (database and folders), opened on first use, so commands that do not need
    /// the database do not lock it.
    pub fn workspace(&mut self, args: &args::WorkspaceArgs) -> anyhow::Result<&Workspace> {
        if self.workspace.is_none() {
            let ws = Workspace::open(&args.config(&self.db_path))
                .with_context(|| format!("opening the database {}", self.db_path.display()))?;
            self.workspace = Some(ws);
        }
        self.workspace.as_ref().context("the workspace was just opened")
    }

    /// Whether to show progress (spinners, bars, fetch messages).
    pub fn progress(&self) -> bool {
        !self.quiet
    }

    pub fn spinner(&self, message: impl Into<String>) -> indicatif::ProgressBar {
        args::spinner(self.quiet, message)
    }
}

fn init_tracing(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RRM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("rrm={level},warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The error and its causes on one line, `: `-separated. A cause whose text the message so far
/// already contains is left out (library errors often quote their source in their own text).
fn error_chain(err: &anyhow::Error) -> String {
    let mut message = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}

/// `rrm tree show alice | head`: once the reader is gone, the process ends as other Unix tools
/// do (by SIGPIPE, without a word) instead of panicking in `println!`. Rust ignores SIGPIPE by
/// default; the web server keeps that (a client that leaves is an error on its socket).
fn end_quietly_when_stdout_closes() {
    #[cfg(unix)]
    // SAFETY: restores one signal's default action, first thing in `main`, before any other
    // thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        end_quietly_when_stdout_closes();
    }
    init_tracing(cli.verbose, cli.quiet);
    if let Some(n) = cli.threads.filter(|&n| n > 0) {
        // Read once by candle's thread pools, which start later; no other thread runs yet.
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let mut ctx = Context { db_path: cli.db.clone(), quiet: cli.quiet, workspace: None };
    match run(&mut ctx, cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(ctx: &mut Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Books(args) => books::run(ctx, args),
        Command::Decompose(args) => decompose::run(ctx, args),
        Command::Decomposer(args) => decomposer::run(ctx, args),
        Command::Tree(args) => tree::run(ctx, args),
        Command::Node(args) => node::run(ctx, args),
        Command::Summarize(args) => summarize::run(ctx, *args),
        Command::Cache(args) => cache::run(ctx, args),
        Command::Models(args) => models::run(ctx, args),
        Command::Generate(args) => models::generate(ctx, args),
        Command::Bench(args) => bench::run(ctx, args),
        Command::Rate(args) => rate::run(ctx, args),
        Command::Feedback(args) => feedback::run(ctx, args),
        Command::Reward(args) => reward::run(ctx, args),
        Command::Policy(args) => policy::run(ctx, args),
        Command::Db(args) => db::run(ctx, args),
        Command::Serve(args) => serve::run(ctx, args),
        Command::Labeler(args) => labeler::run(ctx, args),
        Command::Eval(args) => eval::run(ctx, args),
        Command::Twin(args) => twin::run(ctx, args),
    }
}
