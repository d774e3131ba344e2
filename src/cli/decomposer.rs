//! `rrm decomposer train|eval|bench|compare`: training and evaluating the learned decomposer,
//! and people comparing two decompositions of a span.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};

use super::args::labeler;
use super::args::{ComposeArgs, EncoderArgs, GeneratorOptions, ModelsDir, WorkspaceArgs};
use super::Context;
use crate::decompose::learned::{
    self, memory_cache, EvalRow, FeatureConfig, Featurizer, Hide, LearnedConfig, LearnedDecomposer,
    Scorer, TrainConfig, TrainingBook, Views,
};
use crate::decompose::{Decomposer, FixedChunker, FixedConfig};
use crate::feedback::decomp::{DecompAnswer, Side};
use crate::feedback::Preference;
use crate::serve::views::blind_order;
use crate::workspace::decomposers::boundary_model;
use crate::workspace::decompositions::{self, Candidate, PairSpec};
use crate::workspace::{books, corrections, decomposer_tuning, embeddings, Workspace};

/// Train and evaluate the learned decomposer.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  rrm decomposer train --books alice,botchan,paradise-lost --out boundary.safetensors
  rrm decomposer eval --books my-novel.txt --model boundary.safetensors --json
  rrm decomposer eval --books my-novel.txt --hide layout")]
pub struct DecomposerArgs {
    #[command(subcommand)]
    pub command: DecomposerCommand,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
    #[command(flatten)]
    pub encoder: EncoderArgs,
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
    /// Compare two segmentations of one span of a book, blind, and store which gives the
    /// better subtasks (or one bad boundary). List the answers with `rrm feedback list`.
    Compare(CompareArgs),
    /// Move a boundary model toward the segmentations that lead to better summaries (ROUGE
    /// against human references, the grounded check) or that a simulated labeler or people
    /// (`rrm decomposer compare`) prefer: K draws per document, pairwise Bradley–Terry.
    Tune(Box<TuneArgs>),
}

#[derive(Debug, Args)]
#[command(after_help = "Each round draws K segmentations of every document (the model's best \
one and K−1 seeded draws), scores each, and fits the model to every pair of draws whose scores \
differ by more than --margin, anchored to the starting model; a quarter of the documents are \
held out to pick the step. Summaries go through the cache: a killed run, started again, \
resumes where it stopped.

Examples:
  rrm decomposer tune --references train.jsonl --signal rouge --draws 4 --out tuned.safetensors
  rrm decomposer tune --references train.jsonl --signal simulated --out sim.safetensors
  rrm decomposer tune --comparisons --out people.safetensors
  rrm summarize book.txt --decomposer learned --decomposer-model tuned.safetensors")]
pub struct TuneArgs {
    /// Documents to draw segmentations of (JSONL `{id, text, references: [..]}`, or SQuALITY's
    /// layout); the rouge signal needs their references.
    #[arg(long, value_name = "FILE.jsonl", required_unless_present = "comparisons")]
    pub references: Option<PathBuf>,
    /// What scores a drawn segmentation: rouge (the root summary's mean ROUGE-1/L F1 against
    /// the references), grounded (the share of the root's content words the document
    /// supports), or simulated (self-contained leaf starts plus leaves ending at a scene
    /// change; no language model).
    #[arg(long, value_enum, requires = "references")]
    pub signal: Option<SignalArg>,
    /// Also learn from the decomposition comparisons stored by people.
    #[arg(long)]
    pub comparisons: bool,
    /// Where to write the tuned model (safetensors).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// The boundary model to start from (default: the one built into rrm).
    #[arg(long, value_name = "PATH")]
    pub decomposer_model: Option<PathBuf>,
    /// Most tokens per leaf (the learned decomposer's limit the model is tuned under; use the
    /// same with `--decomposer-model` later).
    #[arg(long, default_value_t = 600, value_name = "N")]
    pub chunk_tokens: usize,
    /// Children per parent, MIN..MAX (default 3..13, the learned decomposer's).
    #[arg(long, value_parser = crate::decompose::fixed::parse_fanout, value_name = "MIN..MAX")]
    pub fanout: Option<(usize, usize)>,
    /// Segmentations per document and round, the best one included.
    #[arg(long, default_value_t = 4, value_name = "K")]
    pub draws: usize,
    /// Gumbel noise scale of the draws, in log-odds.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Rounds; each draws from the model the last one fitted.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Two draws form a pair only when their scores differ by more than this.
    #[arg(long, default_value_t = 0.0)]
    pub margin: f64,
    /// λ of the anchor to the starting model.
    #[arg(long, default_value_t = 1.0, value_name = "λ")]
    pub anchor: f64,
    /// Full-batch steps of each fit.
    #[arg(long, default_value_t = 200)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0.01)]
    pub learning_rate: f64,
    /// Percent of documents held out to pick the step.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u8).range(0..=90))]
    pub val_percent: u8,
    /// Seed of the draws and of the held-out split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub generator: GeneratorOptions,
    #[command(flatten)]
    pub compose: ComposeArgs,
    /// Print the report and every scored draw as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SignalArg {
    Rouge,
    Grounded,
    Simulated,
}

#[derive(Debug, Args)]
#[command(after_help = "Each leaf is shown by its first and last sentence and its length in \
tokens. The two sides are shown as 1 and 2 in an order that hides which decomposer drew which. \
Answer 1, 2 or t (then a confidence 1-9), or `bad 1 3` (the third boundary of side 1 is a bad \
cut). With --answer the pair is not shown: a, b and bad-a:N / bad-b:N name the sides as --a and \
--b give them.

Examples:
  rrm decomposer compare alice
  rrm decomposer compare alice --span h1.2 --a fixed --b learned:3
  rrm decomposer compare alice --json
  rrm decomposer compare alice --answer b --confidence 7 --labeler ann")]
pub struct CompareArgs {
    /// The book (a file or catalog id).
    pub book: String,
    /// The node of the book's stored tree whose span to compare (default: the first chapter,
    /// else the first paragraphs up to about 4000 tokens).
    #[arg(long, value_name = "NODE_LABEL")]
    pub span: Option<String>,
    /// The first candidate: fixed, learned or similarity, optionally with :SEED (a seeded draw).
    #[arg(long, default_value = "fixed", value_name = "DECOMPOSER[:SEED]")]
    pub a: String,
    /// The second candidate.
    #[arg(long, default_value = "learned", value_name = "DECOMPOSER[:SEED]")]
    pub b: String,
    /// The learned model (default: the one built into rrm).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Answer without asking: a, b, tie, or bad-a:N / bad-b:N (the N-th boundary, from 1).
    #[arg(long, value_name = "ANSWER")]
    pub answer: Option<String>,
    /// Confidence 1 (a guess) to 9 (certain) of a preference given with --answer.
    #[arg(long, default_value_t = 5)]
    pub confidence: u8,
    /// Who answers (default: $USER).
    #[arg(long)]
    pub labeler: Option<String>,
    /// Print the pair as JSON and store nothing.
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub lossy: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The book (a file or catalog id).
    pub book: String,
    /// The learned model (default: the one built into rrm).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
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
    #[arg(long, conflicts_with = "prose_view_only")]
    pub no_prose_view: bool,
    /// Train on that prose view only: the model never sees a heading or a blank-line run
    /// that marks a chapter (for books whose layout says nothing, `--hide layout` in eval).
    #[arg(long, conflicts_with = "hidden_view_only")]
    pub prose_view_only: bool,
    /// Add the features that read the prose rather than the layout: long-window similarity,
    /// name turnover, time and place cues, dialogue giving way to narration.
    #[arg(long)]
    pub prose_features: bool,
    /// Replace invalid UTF-8 instead of failing.
    #[arg(long)]
    pub lossy: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Evaluation books (files, folders, catalog ids); a book without headings gets no Pk,
    /// only the overseeability of its leaves.
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
    /// The learned decomposer's start penalty (log-odds taken from a cut before a leaf that
    /// would not stand on its own; default: the built-in setting).
    #[arg(long, value_name = "LOGODDS")]
    pub start_penalty: Option<f64>,
    /// The learned decomposer's parent bias (log-odds added to every cut between parents:
    /// lower gives fewer, larger parents; default: the built-in setting, chosen for the
    /// built-in model).
    #[arg(long, value_name = "LOGODDS", allow_hyphen_values = true)]
    pub parent_bias: Option<f64>,
    #[arg(long)]
    pub lossy: bool,
}

fn book_name(spec: &str) -> String {
    Path::new(spec)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.to_string())
}

pub fn run(ctx: &mut Context, args: DecomposerArgs) -> anyhow::Result<()> {
    let ws = ctx.workspace(&args.ws)?.clone();
    let encoder = args.encoder.encoder.clone();
    match args.command {
        DecomposerCommand::Train(a) => train(ctx, &ws, &encoder, a),
        DecomposerCommand::Eval(a) => eval(ctx, &ws, &encoder, a),
        DecomposerCommand::Bench(a) => bench(ctx, &ws, &encoder, a),
        DecomposerCommand::Compare(a) => compare(ctx, &ws, &encoder, a),
        DecomposerCommand::Tune(a) => tune(ctx, &ws, &encoder, &args.ws.models, *a),
    }
}

/// Opens every book named (folders expanded), with a spinner.
fn open_books(
    ctx: &Context,
    ws: &Workspace,
    specs: &[String],
    lossy: bool,
) -> anyhow::Result<Vec<(String, crate::book::Book)>> {
    let mut out = Vec::new();
    for spec in books::expand(specs)? {
        let bar = ctx.spinner(format!("reading {spec}"));
        let book = ws.open_book(&spec, lossy, &|m| bar.set_message(m.to_string()));
        bar.finish_and_clear();
        out.push((book_name(&spec), book?));
    }
    Ok(out)
}

fn bench(ctx: &Context, ws: &Workspace, encoder: &str, args: BenchArgs) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let book = ws.open_book(&args.book, false, &|_| {})?;
    let read_s = t0.elapsed().as_secs_f64();
    let model = boundary_model(args.model.as_deref())?;
    let encoder = ws.encoder(encoder, ctx.progress())?;
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

fn train(ctx: &Context, ws: &Workspace, encoder: &str, args: TrainArgs) -> anyhow::Result<()> {
    let mut books = Vec::new();
    for (name, book) in open_books(ctx, ws, &args.books, args.lossy)? {
        let feedback =
            if args.no_feedback { Vec::new() } else { corrections::for_book(ws, book.id())? };
        books.push(TrainingBook { name, book, feedback });
    }
    // Fail on an unwritable output before the expensive part.
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the folder of {}", args.out.display()))?;
    }
    let encoder = ws.encoder(encoder, ctx.progress())?;
    let features = FeatureConfig {
        sentence_embeddings: !args.no_sentence_embeddings,
        prose: args.prose_features,
        ..FeatureConfig::default()
    };
    let mut featurizer = Featurizer::new(encoder, features);
    featurizer.cache = Some(embeddings::shared_cache(ws));
    let views = if args.prose_view_only {
        Views { hidden: false, prose: true, visible: false }
    } else {
        Views { hidden: true, prose: !args.no_prose_view, visible: !args.hidden_view_only }
    };
    let config = TrainConfig { hidden: args.hidden, epochs: args.epochs, ..TrainConfig::default() };
    let bar = ctx.spinner("training");
    let started = std::time::Instant::now();
    let result =
        learned::train(&featurizer, &books, views, &config, &|m| bar.set_message(m.to_string()));
    bar.finish_and_clear();
    let model = result.context("training the boundary model")?;
    ws.store().flush()?;
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

fn eval(ctx: &Context, ws: &Workspace, encoder: &str, args: EvalArgs) -> anyhow::Result<()> {
    let books = open_books(ctx, ws, &args.books, args.lossy)?;
    // A bad model file fails before the encoder is loaded.
    let model = boundary_model(args.model.as_deref())?;
    let encoder = ws.encoder(encoder, ctx.progress())?;
    let mut featurizer = Featurizer::new(encoder, FeatureConfig::default());
    featurizer.cache = Some(embeddings::shared_cache(ws));
    let defaults = LearnedConfig::default();
    let config = LearnedConfig {
        start_penalty: args.start_penalty.unwrap_or(defaults.start_penalty),
        parent_bias: args.parent_bias.unwrap_or(defaults.parent_bias),
        ..defaults
    };
    config.validate().with_context(|| "--parent-bias / --start-penalty")?;
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
    // (rows of the count-matched protocol have no leaves: their overseeability columns are -)
    for (name, book) in &books {
        let bar = ctx.spinner(format!("evaluating on {name}"));
        let result = learned::evaluate(name, book, args.hide, &methods);
        bar.finish_and_clear();
        let got = result.with_context(|| format!("evaluating on {name}"))?;
        if book.headings().is_empty() {
            tracing::info!("{name} has no headings: overseeability only, no Pk");
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
    ws.store().flush()?;
    if rows.is_empty() {
        bail!("no book to evaluate");
    }
    let names = ["fixed", "similarity", "learned", "fixed@K", "similarity@K", "learned@K"];
    let with_undefined = learned::means(&rows, &names);
    for (mean, undefined) in &with_undefined {
        if *undefined > 0 {
            eprintln!(
                "note: {}: Pk/WindowDiff undefined on {undefined} book(s) (no headings, or shorter than one window); \
                 left out of the mean",
                mean.method
            );
        }
    }
    let mut means: Vec<EvalRow> = with_undefined.into_iter().map(|(m, _)| m).collect();
    // Time to judge: from the decomposition comparisons people answered, per decomposer that
    // drew one side.
    let compared = crate::feedback::decomp::all(ws.store())?;
    for row in rows.iter_mut().chain(means.iter_mut()) {
        let ms: Vec<u64> = compared
            .iter()
            .filter(|d| d.a.decomposer == row.method || d.b.decomposer == row.method)
            .filter_map(|d| d.judge_ms)
            .collect();
        row.median_judge_ms = crate::decompose::oversee::median(&ms);
    }
    if args.json {
        for row in rows.iter().chain(&means) {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(());
    }
    println!(
        "{:<28} {:<12} {:>6} {:>6} {:>6} {:>7} {:>7} {:>13} {:>6} {:>6} {:>6} {:>8}",
        "book",
        "method",
        "sents",
        "ref",
        "hyp",
        "Pk",
        "WinDiff",
        "leaves in lim",
        "selfst",
        "parend",
        "scene",
        "judge ms"
    );
    for r in rows.iter().chain(&means) {
        println!(
            "{:<28} {:<12} {:>6} {:>6} {:>6} {:>7} {:>7} {:>6}/{:<6} {:>6} {:>6} {:>6} {:>8}",
            truncate(&r.book, 28),
            r.method,
            r.sentences,
            r.reference_boundaries,
            r.hypothesis_boundaries,
            fmt_score(r.pk),
            fmt_score(r.window_diff),
            r.leaves_within_limits,
            r.leaves,
            fmt_share(r.self_contained_starts),
            fmt_share(r.paragraph_ends),
            fmt_share(r.scene_ends),
            r.median_judge_ms.map_or("-".to_string(), |m| format!("{m:.0}")),
        );
    }
    println!(
        "selfst: share of leaves starting self-contained (no pronoun before a name, not \
         mid-dialogue); parend/scene: share ending at a paragraph / scene boundary; judge ms: \
         median time people took on decomposition comparisons with this decomposer (- none yet)"
    );
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn fmt_share(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |x| format!("{x:.2}"))
}

fn fmt_score(x: Option<f64>) -> String {
    x.map_or("undef".to_string(), |x| format!("{x:.3}"))
}

/// Parses `--answer` (sides named as --a/--b give them) against the two drawn segmentations.
fn parse_answer(
    answer: &str,
    confidence: u8,
    pair: &decompositions::Pair,
) -> anyhow::Result<DecompAnswer> {
    if !(1..=9).contains(&confidence) {
        bail!("--confidence must be from 1 to 9 (got {confidence})");
    }
    let a = answer.trim().to_ascii_lowercase();
    if let Some((side, n)) = a.strip_prefix("bad-").and_then(|r| r.split_once(':')) {
        let (side, drawn) = match side {
            "a" => (Side::A, &pair.a),
            "b" => (Side::B, &pair.b),
            other => bail!("--answer bad-{other}:N: the side must be a or b"),
        };
        let cuts = &drawn.segmentation.boundaries;
        let at = n
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| cuts.get(i))
            .ok_or_else(|| {
            anyhow!(
                "--answer {answer}: side {side:?} has {} boundaries; N must be 1..={}",
                cuts.len(),
                cuts.len()
            )
        })?;
        return Ok(DecompAnswer::BadBoundary { side, at: *at });
    }
    let prefer = a.parse::<Preference>().map_err(|e| {
        anyhow!("--answer: {e}; or bad-a:N / bad-b:N for the N-th boundary of one side")
    })?;
    Ok(DecompAnswer::Prefer { prefer, confidence })
}

fn print_side(name: &str, drawn: &decompositions::Drawn) {
    println!("== {name}: {} leaves ==", drawn.leaves.len());
    for (i, leaf) in drawn.leaves.iter().enumerate() {
        if i > 0 {
            println!("   --- boundary {i} ---");
        }
        println!("{:>3}. [{} tokens] {}", i + 1, leaf.tokens, preview(&leaf.first, 110));
        if !leaf.last.is_empty() {
            println!("     … {}", preview(&leaf.last, 110));
        }
    }
}

fn preview(s: &str, n: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= n {
        one
    } else {
        format!("{}…", one.chars().take(n).collect::<String>())
    }
}

fn compare(ctx: &Context, ws: &Workspace, encoder: &str, args: CompareArgs) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let a: Candidate = args.a.parse().map_err(|e| anyhow!("--a: {e}"))?;
    let b: Candidate = args.b.parse().map_err(|e| anyhow!("--b: {e}"))?;
    if !(1..=9).contains(&args.confidence) {
        bail!("--confidence must be from 1 to 9 (got {})", args.confidence);
    }
    let bar = ctx.spinner(format!("reading {}", args.book));
    let book = ws.open_book(&args.book, args.lossy, &|m| bar.set_message(m.to_string()));
    bar.finish_and_clear();
    let book = book?;
    let encoder = if a.needs_encoder() || b.needs_encoder() {
        // A bad model file fails before the encoder is loaded.
        boundary_model(args.model.as_deref())?;
        Some(ws.encoder(encoder, ctx.progress())?)
    } else {
        None
    };
    let spec = PairSpec { node: args.span.clone(), a, b, model: args.model.clone() };
    let bar = ctx.spinner(format!("segmenting {} two ways", book.title()));
    let pair = decompositions::pair(ws, &book, &spec, encoder);
    bar.finish_and_clear();
    let pair = pair.with_context(|| format!("comparing decompositions of {}", book.title()))?;
    ws.store().flush()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&pair)?);
        return Ok(());
    }
    let labeler = labeler(&args.labeler);
    let span = crate::book::Span::new(pair.start, pair.end);
    let (shown, answer, judge_ms) = match &args.answer {
        Some(answer) => {
            let answer = parse_answer(answer, args.confidence, &pair)?;
            ((&pair.a, &pair.b), answer, None)
        }
        None => {
            let a_first =
                blind_order(&labeler, &pair.a.segmentation.label(), &pair.b.segmentation.label());
            let shown = if a_first { (&pair.a, &pair.b) } else { (&pair.b, &pair.a) };
            println!(
                "{} — bytes {}..{} ({} tokens){}",
                pair.title,
                pair.start,
                pair.end,
                pair.tokens,
                pair.node.as_deref().map(|n| format!(", node {n}")).unwrap_or_default()
            );
            print_side("1", shown.0);
            print_side("2", shown.1);
            let started = std::time::Instant::now();
            eprintln!(
                "Which gives the better subtasks? 1, 2 or t [confidence 1-9], `bad 1 N` / `bad 2 \
                 N` for a bad boundary, q to quit:"
            );
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("reading the answer")?;
            let words: Vec<&str> = line.split_whitespace().collect();
            let answer = match words.as_slice() {
                [] | ["q"] => {
                    println!("nothing stored");
                    return Ok(());
                }
                ["bad", side, n] => {
                    let side = match *side {
                        "1" => "a",
                        "2" => "b",
                        other => bail!("bad {other} {n}: the side must be 1 or 2"),
                    };
                    parse_answer(
                        &format!("bad-{side}:{n}"),
                        5,
                        &decompositions::Pair {
                            a: shown.0.clone(),
                            b: shown.1.clone(),
                            ..pair.clone()
                        },
                    )?
                }
                [p] | [p, _] => {
                    let confidence = match words.get(1) {
                        Some(c) => c.parse::<u8>().map_err(|_| {
                            anyhow!("'{c}' is not a confidence (a number from 1 to 9)")
                        })?,
                        None => 5,
                    };
                    let p = match *p {
                        "1" => "a",
                        "2" => "b",
                        "t" | "tie" => "tie",
                        other => bail!("'{other}' is not an answer (1, 2, t or bad SIDE N)"),
                    };
                    parse_answer(p, confidence, &pair)?
                }
                _ => bail!("'{}' is not an answer (1, 2, t or bad SIDE N)", line.trim()),
            };
            let ms = u64::try_from(started.elapsed().as_millis()).ok();
            ((shown.0, shown.1), answer, ms)
        }
    };
    let record = decompositions::record(
        ws,
        &labeler,
        &book,
        (&shown.0.segmentation, &shown.1.segmentation),
        span,
        pair.node.clone(),
        answer,
        judge_ms,
    )?;
    println!(
        "stored {} ({}; A = {}, B = {})",
        &record.id[..12],
        record.describe(),
        record.a.label(),
        record.b.label()
    );
    Ok(())
}

struct TuneLines {
    quiet: bool,
}

impl crate::compose::Observer for TuneLines {}

impl crate::eval::summaries::DocProgress for TuneLines {
    fn observer(&self) -> &dyn crate::compose::Observer {
        self
    }
}

impl decomposer_tuning::TuneProgress for TuneLines {
    fn draw(&self, round: usize, draw: usize, draws: usize) {
        if !self.quiet {
            let what = if draw == 0 {
                "the best segmentation".to_string()
            } else {
                format!("draw {draw}")
            };
            eprintln!("round {} · {}/{draws}: {what}", round + 1, draw + 1);
        }
    }

    fn scored(&self, s: &decomposer_tuning::DrawScore) {
        if !self.quiet {
            eprintln!("  {} {} leaves  score {:.4}", s.document, s.leaves, s.score);
        }
    }
}

fn metrics(m: &learned::PairMetrics) -> String {
    match (m.accuracy, m.loss) {
        (Some(a), Some(l)) => {
            format!("{} pairs, accuracy {:.1} %, loss {l:.4}", m.pairs, 100.0 * a)
        }
        (None, Some(l)) => format!("{} pairs (ties), loss {l:.4}", m.pairs),
        _ => "none".to_string(),
    }
}

fn tune(
    ctx: &Context,
    ws: &Workspace,
    encoder: &str,
    models: &ModelsDir,
    args: TuneArgs,
) -> anyhow::Result<()> {
    use crate::workspace::decomposer_tuning::{Composing, Signal, TuneSpec};
    use crate::workspace::decomposers::{DecomposerKind, DecomposerSpec};
    let started = std::time::Instant::now();
    let signal = args.signal.map(|s| match s {
        SignalArg::Rouge => Signal::Rouge,
        SignalArg::Grounded => Signal::Grounded,
        SignalArg::Simulated => Signal::Simulated,
    });
    let decomposer = DecomposerSpec {
        kind: DecomposerKind::Learned,
        chunk_tokens: args.chunk_tokens,
        fanout: args.fanout,
        ..DecomposerSpec::default()
    };
    let spec = TuneSpec {
        signal,
        draws: args.draws,
        scale: args.scale,
        rounds: args.rounds,
        margin: args.margin,
        feedback: args.comparisons,
        fit: learned::TuneConfig {
            epochs: args.epochs,
            learning_rate: args.learning_rate,
            anchor: args.anchor,
            val_fraction: f64::from(args.val_percent) / 100.0,
            seed: args.seed,
            // Filled in by the tuning from `config`.
            limits: None,
        },
        config: decomposer.learned_config(),
    };
    // Bad input fails before any model is loaded.
    spec.check()?;
    let docs = match &args.references {
        Some(path) => crate::eval::references::read_file(path)?,
        None => Vec::new(),
    };
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the folder of {}", args.out.display()))?;
    }
    let start = boundary_model(args.decomposer_model.as_deref())?;
    let encoder = ws.encoder(encoder, ctx.progress())?;
    let composing = match signal {
        Some(Signal::Rouge | Signal::Grounded) => Some(Composing {
            generator: args.generator.start(models, args.compose.batch_size, ctx.progress())?,
            selector: crate::workspace::summarize::SelectorSpec {
                reward_model: None,
                pessimism: 1.0,
                encoder: crate::infer::fetch::DEFAULT_ENCODER.to_string(),
            }
            .build(ws, ctx.progress())?,
            options: args.compose.options()?,
        }),
        _ => None,
    };
    let progress = TuneLines { quiet: ctx.quiet };
    let tuned = super::args::runtime()?
        .block_on(decomposer_tuning::tune(
            ws,
            start,
            encoder,
            &docs,
            composing.as_ref(),
            &spec,
            &progress,
        ))
        .context("tuning the boundary model")?;
    ws.store().flush()?;
    tuned.model.save(&args.out)?;
    let r = &tuned.report;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": args.out.display().to_string(),
                "hash": tuned.model.hash()?,
                "report": r,
                "draws": tuned.draws,
                "seconds": started.elapsed().as_secs_f64(),
            }))?
        );
        return Ok(());
    }
    let signals: Vec<String> = r.signals.iter().map(|(s, n)| format!("{n} {s}")).collect();
    println!("pairs        {}", signals.join(", "));
    println!("groups       {} train, {} held out", r.train_groups.len(), r.val_groups.len());
    println!("train        before {}", metrics(&r.train_before));
    println!("             after  {}", metrics(&r.train_after));
    println!("held out     before {}", metrics(&r.val_before));
    println!("             after  {}", metrics(&r.val_after));
    println!("kept step    {} (0: the starting model)", r.kept_step);
    if let Some(limits) = r.config.as_ref().and_then(|c| c.limits) {
        println!("tuned under  {} (use the same when decomposing with it)", limits.flags());
    }
    println!("model        {} ({:.1} s)", args.out.display(), started.elapsed().as_secs_f64());
    Ok(())
}
