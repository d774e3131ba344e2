//! `rrm cache stats|gc`: the node cache as a whole.

use std::collections::HashSet;

use clap::{Args, Subcommand};

use super::books;
use super::Context;
use crate::book::{BookId, BookRecord};
use crate::compose::cache;
use crate::store::Table;

/// Inspect and clean the node cache (outputs and candidates stored by content key).
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  rrm cache stats
  rrm cache gc --dry-run
  rrm cache gc")]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
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
    /// Drop outputs and candidates that no current book's last summarize run references
    /// (a book whose file changed since is no longer current).
    Gc {
        /// Only count what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The ids of books whose recorded file still holds the same text (or that have no file).
fn live_books(ctx: &mut Context) -> anyhow::Result<HashSet<String>> {
    let ids = ctx.store()?.keys(Table::Books)?;
    let mut live = HashSet::new();
    for id in ids {
        let Some(book_id) = BookId::parse(&id) else { continue };
        let store = ctx.store()?;
        let record: Option<BookRecord> = store.get(Table::Books, &id)?;
        let has_file = record.as_ref().and_then(|r| r.source.path()).is_some();
        if !has_file || books::book_by_id(ctx, &book_id)?.is_some() {
            live.insert(id);
        }
    }
    Ok(live)
}

pub fn run(ctx: &mut Context, args: CacheArgs) -> anyhow::Result<()> {
    let live = live_books(ctx)?;
    let is_live = |id: &str| live.contains(id);
    let store = ctx.store()?;
    match args.command {
        CacheCommand::Stats { json } => {
            let s = cache::stats(store, &is_live)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("database        {}", store.path().display());
                println!("outputs         {} ({} referenced by a tree)", s.outputs, s.live_outputs);
                println!("candidate sets  {}", s.candidate_sets);
                println!("runs            {}", s.runs);
                println!("books           {}", s.books);
                println!("task trees      {}", s.task_trees);
                println!("embeddings      {}", s.embeddings);
                println!("on disk         {:.1} MiB", s.bytes_on_disk as f64 / (1024.0 * 1024.0));
            }
        }
        CacheCommand::Gc { dry_run, json } => {
            let r = cache::gc(store, &is_live, dry_run)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let verb = if dry_run { "would remove" } else { "removed" };
                println!(
                    "{verb} {} outputs, {} candidate sets, {} runs; kept {} outputs, {} candidate sets",
                    r.outputs_removed,
                    r.candidate_sets_removed,
                    r.runs_removed,
                    r.outputs_kept,
                    r.candidate_sets_kept
                );
            }
        }
    }
    Ok(())
}
