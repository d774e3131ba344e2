//! `rrm cache stats|gc`: the node cache as a whole.

use clap::{Args, Subcommand};

use super::args::WorkspaceArgs;
use super::Context;
use crate::workspace::gc::{self, GcOptions};

/// Inspect and clean the node cache (outputs and candidates stored by content key).
#[derive(Debug, Args)]
#[command(
    after_help = "What gc keeps: every output of every run of a live book (interrupted runs \
too), the candidates those outputs were picked from, every candidate set drawn for rating, and the \
candidates of any node that feedback refers to. A book is dead when its file now holds another \
text; a book whose file is missing or unreadable stays live unless --drop-missing-books.

Examples:
  rrm cache stats
  rrm cache gc --dry-run
  rrm cache gc"
)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Counts of stored outputs, candidate sets, runs, books, trees and embeddings, and the size
    /// on disk.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop the results of runs of books whose file changed (see above for what is kept).
    Gc {
        /// Only count what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Also drop the runs of books whose file is missing or unreadable.
        #[arg(long)]
        drop_missing_books: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(ctx: &mut Context, args: CacheArgs) -> anyhow::Result<()> {
    let ws = ctx.workspace(&args.ws)?;
    match args.command {
        CacheCommand::Stats { json } => {
            let s = gc::stats(ws)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("database        {}", ws.store().path().display());
                println!(
                    "outputs         {} ({} referenced by a live run)",
                    s.outputs, s.live_outputs
                );
                println!(
                    "candidate sets  {} ({} drawn for rating)",
                    s.candidate_sets, s.sample_sets
                );
                println!("runs            {} ({} incomplete)", s.runs, s.incomplete_runs);
                println!("books           {}", s.books);
                println!("task trees      {}", s.task_trees);
                println!("embeddings      {}", s.embeddings);
                println!("quarantined     {}", s.quarantined);
                println!("on disk         {:.1} MiB", s.bytes_on_disk as f64 / (1024.0 * 1024.0));
            }
        }
        CacheCommand::Gc { dry_run, drop_missing_books, json } => {
            let liveness = gc::liveness(ws)?;
            if !liveness.missing.is_empty() && !drop_missing_books {
                eprintln!(
                    "note: {} book(s) whose file is missing or unreadable are kept (pass \
                     --drop-missing-books to drop their results)",
                    liveness.missing.len()
                );
            }
            let r = gc::gc(ws, GcOptions { dry_run, drop_missing_books })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let verb = if dry_run { "would remove" } else { "removed" };
                println!(
                    "{verb} {} outputs, {} candidate sets, {} runs; kept {} outputs, {} candidate sets \
                     ({} drawn for rating, {} for feedback)",
                    r.outputs_removed,
                    r.candidate_sets_removed,
                    r.runs_removed,
                    r.outputs_kept,
                    r.candidate_sets_kept,
                    r.kept_samples,
                    r.kept_for_feedback
                );
            }
        }
    }
    Ok(())
}
