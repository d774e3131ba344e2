//! `rrm decompose BOOK`: build a task tree, save it, record it, print a short report.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use super::books::{self, BooksDir};
use super::Context;
use crate::book::Book;
use crate::decompose::fixed::parse_fanout;
use crate::decompose::learned::LearnedConfig;
use crate::decompose::{ContextMode, Decomposer, FixedChunker, FixedConfig};
use crate::store::Table;
use crate::tree::{TaskTree, TreeRecord};

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
    /// Replace invalid UTF-8 instead of failing.
    #[arg(long)]
    pub lossy: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub books: BooksDir,
    #[command(flatten)]
    pub trees: TreesDir,
}

/// How a book is split into a tree (shared by `decompose` and `summarize`).
#[derive(Debug, Clone, Args)]
pub struct DecomposerOptions {
    /// How to split the book.
    #[arg(long, value_enum, default_value_t = DecomposerArg::Fixed)]
    pub decomposer: DecomposerArg,
    /// With --decomposer learned: the boundary model (from `rrm decomposer train`); default:
    /// the model built into rrm (trained on four catalog books).
    #[arg(long, value_name = "PATH")]
    pub decomposer_model: Option<PathBuf>,
    /// Most tokens per leaf.
    #[arg(long, default_value_t = 600, value_name = "N")]
    pub chunk_tokens: usize,
    /// Children per parent, MIN..MAX (default: 5..13 for fixed chunking; 3..13 for the
    /// learned decomposers, whose parents follow chapters and a chapter is often only three or
    /// four leaves long).
    #[arg(long, value_parser = parse_fanout, value_name = "MIN..MAX")]
    pub fanout: Option<(usize, usize)>,
    /// Whether nodes read the outputs of earlier nodes at their height.
    #[arg(long, value_enum, default_value_t = ContextArg::None)]
    pub context: ContextArg,
    /// With --context previous: how many earlier nodes each one reads.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub context_window: usize,
    /// Jitter leaf sizes reproducibly with this seed.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Output caps in tokens by height (the last repeats).
    #[arg(long, value_delimiter = ',', default_value = "128,192,384", value_name = "N,N,..")]
    pub output_tokens: Vec<usize>,
    /// Most input tokens of a parent (its children's output caps must fit).
    #[arg(long, default_value_t = 2048, value_name = "N")]
    pub max_input_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecomposerArg {
    /// Fixed-size chunking (Wu et al. 2021).
    Fixed,
    /// A trained boundary scorer and an exact length-constrained segmentation.
    Learned,
    /// The untrained baseline: cuts where the embedding similarity of neighbouring sentence
    /// windows dips (TextTiling style), same segmentation.
    Similarity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContextArg {
    /// Leaves are independent.
    None,
    /// Nodes read the outputs of earlier nodes at the same height.
    Previous,
}

/// Where task trees are saved.
#[derive(Debug, Clone, Args)]
pub struct TreesDir {
    /// Folder for task tree files.
    #[arg(long, env = "RRM_TREES", default_value = "task_trees", value_name = "DIR")]
    pub trees_dir: PathBuf,
}

impl DecomposerOptions {
    /// The decomposer these options describe (the learned ones load their encoder and cache
    /// its embeddings in `ctx`'s database).
    pub fn build(&self, ctx: &mut Context) -> anyhow::Result<Box<dyn Decomposer>> {
        Ok(match self.decomposer {
            DecomposerArg::Fixed => Box::new(FixedChunker::new(self.fixed_config())?),
            DecomposerArg::Learned | DecomposerArg::Similarity => super::decomposer::build_learned(
                ctx,
                super::decomposer::LearnedOptions {
                    config: self.learned_config(),
                    model: self.decomposer_model.as_deref(),
                    similarity: self.decomposer == DecomposerArg::Similarity,
                },
            )?,
        })
    }

    fn learned_config(&self) -> LearnedConfig {
        let fixed = self.fixed_config();
        let defaults = LearnedConfig::default();
        LearnedConfig {
            chunk_tokens: fixed.chunk_tokens,
            min_tokens: fixed.chunk_tokens / 5,
            target_tokens: fixed.chunk_tokens * 3 / 4,
            fanout_min: self.fanout.map_or(defaults.fanout_min, |f| f.0),
            fanout_max: self.fanout.map_or(defaults.fanout_max, |f| f.1),
            output_tokens: fixed.output_tokens,
            max_input_tokens: fixed.max_input_tokens,
            context: fixed.context,
            context_window: fixed.context_window,
            ..defaults
        }
    }

    fn fixed_config(&self) -> FixedConfig {
        let defaults = FixedConfig::default();
        FixedConfig {
            chunk_tokens: self.chunk_tokens,
            fanout_min: self.fanout.map_or(defaults.fanout_min, |f| f.0),
            fanout_max: self.fanout.map_or(defaults.fanout_max, |f| f.1),
            output_tokens: self.output_tokens.clone(),
            max_input_tokens: self.max_input_tokens,
            context: match self.context {
                ContextArg::None => ContextMode::None,
                ContextArg::Previous => ContextMode::Previous,
            },
            context_window: self.context_window,
            seed: self.seed,
            ..defaults
        }
    }
}

pub fn run(ctx: &mut Context, args: DecomposeArgs) -> anyhow::Result<()> {
    let decomposer = args.decomposer.build(ctx)?;
    let started = std::time::Instant::now();
    let book = books::open_book(ctx, &args.book, &args.books.books_dir, args.lossy)?;
    tracing::debug!(elapsed = ?started.elapsed(), bytes = book.text().len(), "book read and indexed");
    let (tree, path) = decompose_and_save(ctx, &book, decomposer.as_ref(), &args.trees.trees_dir)?;
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

/// Decomposes `book`, writes the tree file into `trees_dir` and records the tree in the store.
pub fn decompose_and_save(
    ctx: &mut Context,
    book: &Book,
    decomposer: &dyn Decomposer,
    trees_dir: &Path,
) -> anyhow::Result<(TaskTree, PathBuf)> {
    let bar = books::spinner(ctx, format!("decomposing {}", book.title()));
    let result = decomposer.decompose(book);
    bar.finish_and_clear();
    let tree = result.with_context(|| format!("decomposing {}", book.source()))?;
    let path = tree.save(trees_dir)?;
    let store = ctx.store()?;
    store.put(
        Table::TaskTrees,
        tree.book_id().as_str(),
        &TreeRecord::new(&tree, Some(path.clone())),
    )?;
    store.flush()?;
    Ok((tree, path))
}
