//! `rrm decompose BOOK`: build a task tree, save it, record it, print a short report.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::args::{DecomposerOptions, EncoderArgs, WorkspaceArgs};
use super::Context;
use crate::tree::TaskTree;
use crate::workspace::{summarize, trees};

/// Split a book into a tree of summarization tasks and save it.
#[derive(Debug, Args)]
#[command(
    after_help = "Leaves of about --chunk-tokens tokens are cut at paragraph, then sentence, \
then word boundaries; chapter headings start a new leaf; parents group --fanout consecutive \
children, up to one root. Writes TREES_DIR/<book-id>.json, records the book and its tree in \
the database, and prints leaves, height and tokens per leaf. A catalog id is fetched on first use.

Examples:
  rrm decompose alice
  rrm decompose my-book.txt --chunk-tokens 400 --fanout 4..8 --seed 7
  rrm decompose botchan --context previous --json
  rrm decompose alice --decomposer learned"
)]
pub struct DecomposeArgs {
    /// A book file (plain text or Markdown) or a catalog id (see `rrm books list`).
    pub book: String,
    #[command(flatten)]
    pub decomposer: DecomposerOptions,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    /// Replace invalid UTF-8 instead of failing.
    #[arg(long)]
    pub lossy: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

pub fn run(ctx: &mut Context, args: DecomposeArgs) -> anyhow::Result<()> {
    let progress = ctx.progress();
    let ws = ctx.workspace(&args.ws)?.clone();
    let decomposer = args.decomposer.spec(&args.encoder).build(&ws, progress)?;
    let started = std::time::Instant::now();
    let bar = ctx.spinner(format!("reading {}", args.book));
    let book = ws.open_book(&args.book, args.lossy, &|m| bar.set_message(m.to_string()));
    bar.finish_and_clear();
    let book = book?;
    tracing::debug!(elapsed = ?started.elapsed(), bytes = book.text().len(), "book read and indexed");
    let bar = ctx.spinner(format!("decomposing {}", book.title()));
    let tree = summarize::decompose(&ws, &book, decomposer.as_ref());
    bar.finish_and_clear();
    let tree = tree.with_context(|| format!("decomposing {}", book.source()))?;
    let path = trees::tree_file(&ws, &tree);
    let report = Report::new(&book, &tree, &path);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(())
}

#[derive(Debug, serde::Serialize)]
struct Report {
    book_id: String,
    title: String,
    source: String,
    bytes: usize,
    words: usize,
    paragraphs: usize,
    sentences: usize,
    headings: usize,
    chapters: usize,
    tree_file: PathBuf,
    decomposer: serde_json::Value,
    leaves: usize,
    height: u32,
    nodes_per_height: Vec<usize>,
    leaf_tokens_min: usize,
    leaf_tokens_median: usize,
    leaf_tokens_max: usize,
}

impl Report {
    fn new(book: &crate::book::Book, tree: &TaskTree, path: &std::path::Path) -> Report {
        let mut tokens: Vec<usize> =
            tree.leaves().iter().map(|&l| tree.node(l).input_tokens).collect();
        tokens.sort_unstable();
        Report {
            book_id: book.id().to_string(),
            title: book.title().to_string(),
            source: book.source().to_string(),
            bytes: book.text().len(),
            words: book.word_count(),
            paragraphs: book.paragraphs().len(),
            sentences: book.sentences().len(),
            headings: book.headings().len(),
            chapters: book.chapters().count(),
            tree_file: path.to_path_buf(),
            decomposer: serde_json::to_value(tree.decomposer()).unwrap_or_default(),
            leaves: tokens.len(),
            height: tree.max_height(),
            nodes_per_height: (0..=tree.max_height()).map(|h| tree.level(h).len()).collect(),
            leaf_tokens_min: tokens.first().copied().unwrap_or(0),
            leaf_tokens_median: tokens.get(tokens.len() / 2).copied().unwrap_or(0),
            leaf_tokens_max: tokens.last().copied().unwrap_or(0),
        }
    }

    fn print(&self) {
        println!("book      {}  [{}]", self.title, &self.book_id[..12]);
        println!("source    {}", self.source);
        println!(
            "text      {} bytes, {} words, {} paragraphs, {} sentences, {} headings ({} chapters)",
            self.bytes, self.words, self.paragraphs, self.sentences, self.headings, self.chapters
        );
        println!("tree      {}", self.tree_file.display());
        println!(
            "leaves    {}  (tokens per leaf: min {}, median {}, max {})",
            self.leaves, self.leaf_tokens_min, self.leaf_tokens_median, self.leaf_tokens_max
        );
        let per_height: Vec<String> = self.nodes_per_height.iter().map(|n| n.to_string()).collect();
        println!("height    {}  (nodes by height: {})", self.height, per_height.join(" + "));
    }
}
