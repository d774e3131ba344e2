//! `rrm eval summaries|list|show|compare|remove|learning-curve|best-of-n|report`: summary
//! quality against references, paired comparisons of runs, and the report's figures.
//!
//! Thin: parses, calls `crate::eval`, prints. (The compose options below repeat
//! `summarize`'s; they move to the shared argument structs with issue 10.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use super::backend::GeneratorOptions;
use super::decompose::{DecomposerOptions, TreesDir};
use super::reward::{load_encoder, EncoderArgs, RewardDir};
use super::Context;
use crate::compose::{ComposeOptions, MeanLogprob, Observer, Selector};
use crate::eval::curves::{self, BestOfN, LearningCurve, BEST_OF_N_KEY, LEARNING_CURVE_KEY};
use crate::eval::references;
use crate::eval::report::{self, PolicyLog, ReportData, DECOMPOSITION_KEY, POLICY_PREFIX};
use crate::eval::runs::{self, BootstrapOptions, EvalRun};
use crate::eval::summaries::{DocProgress, Harness};
use crate::feedback::sim::SimLabeler;
use crate::reward::train::TrainConfig;
use crate::reward::{RewardModel, RewardSelector};
use crate::store::Table;

/// Evaluate summaries against references, compare runs, draw the report.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  rrm eval summaries --references dev.jsonl --run greedy
  rrm eval summaries --references dev.jsonl --run bo4 --best-of 4 --reward-model latest
  rrm eval compare bo4 greedy
  rrm eval learning-curve
  rrm eval best-of-n --reward-model latest
  rrm eval report --out report/")]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: EvalCommand,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Summarize every document of a references file and score it (ROUGE, lead, reward, labeler).
    Summaries(Box<SummariesArgs>),
    /// The stored runs.
    List(JsonFlag),
    /// One run: per-document scores and the totals beside the lead baseline.
    Show(ShowArgs),
    /// Two runs document by document: mean difference, paired bootstrap 95% interval, win rate.
    Compare(CompareArgs),
    /// Delete a stored run.
    Remove { name: String },
    /// Reward-model accuracy against the number of training comparisons, and calibration.
    LearningCurve(CurveArgs),
    /// Proxy reward and labeler score of best-of-N against KL, on nodes with sampled candidates.
    BestOfN(BestOfNArgs),
    /// Write one HTML page with every figure (SVG) and its data (CSV).
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SummariesArgs {
    /// JSONL: `{id, text, references: [..]}` per line, or SQuALITY's layout.
    #[arg(long, value_name = "FILE.jsonl")]
    pub references: PathBuf,
    /// Store the scores under this name (default: `run-<unix time>`).
    #[arg(long, value_name = "NAME")]
    pub run: Option<String>,
    /// Overwrite a stored run of the same name.
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub decomposer: DecomposerOptions,
    #[command(flatten)]
    pub generator: GeneratorOptions,
    /// Candidates per node; the best is picked by mean log-probability, or by --reward-model.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub best_of: usize,
    /// Pick among candidates with this reward model (`latest`, a hash or a folder); it also
    /// scores each root summary.
    #[arg(long, value_name = "PATH|latest")]
    pub reward_model: Option<String>,
    /// λ of the reward pick (mean − λ·std).
    #[arg(long, default_value_t = 1.0, value_name = "λ")]
    pub pessimism: f32,
    /// Score each root summary with this reward model without picking by it.
    #[arg(long, value_name = "PATH|latest", conflicts_with = "reward_model")]
    pub score_with: Option<String>,
    #[command(flatten)]
    pub reward_dir: RewardDir,
    #[arg(long, default_value_t = 8, value_name = "B")]
    pub batch_size: usize,
    /// Sampling temperature (0: greedy). With --best-of > 1 a temperature of 0 becomes 0.8.
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    #[arg(long, default_value_t = 1.15, value_name = "P")]
    pub repetition_penalty: f32,
    #[arg(long = "sample-seed", default_value_t = 0, value_name = "S")]
    pub sample_seed: u64,
    /// Also write each document's task tree here.
    #[command(flatten)]
    pub trees: TreesDir,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub name: String,
    #[command(flatten)]
    pub boot: BootArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BootArgs {
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 10_000)]
    pub resamples: usize,
    /// Bootstrap seed.
    #[arg(long = "boot-seed", default_value_t = 0)]
    pub boot_seed: u64,
}

impl BootArgs {
    fn options(&self) -> anyhow::Result<BootstrapOptions> {
        if self.resamples == 0 {
            bail!("--resamples must be at least 1");
        }
        Ok(BootstrapOptions { resamples: self.resamples, level: 0.95, seed: self.boot_seed })
    }
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    pub a: String,
    pub b: String,
    #[command(flatten)]
    pub boot: BootArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CurveArgs {
    /// Models trained per training-set size (except the full pool).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, default_value_t = 4)]
    pub members: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BestOfNArgs {
    /// The proxy: a reward checkpoint (`latest`, hash or folder).
    #[arg(long, default_value = "latest", value_name = "PATH|latest")]
    pub reward_model: String,
    /// Candidates per node to use (nodes with fewer are left out).
    #[arg(long, default_value_t = 4, value_name = "K")]
    pub candidates: usize,
    #[command(flatten)]
    pub reward_dir: RewardDir,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The folder to write (created if needed).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Import decomposition results (`rrm decomposer eval --json` output) and keep them.
    #[arg(long, value_name = "FILE.jsonl")]
    pub decomposition: Option<PathBuf>,
    /// Import a policy-training log (JSONL of {step|round, loss, kl, reward}) and keep it.
    #[arg(long, value_name = "NAME=FILE.jsonl")]
    pub policy_log: Vec<String>,
    /// Runs to compare, A − B (repeatable; default: every run against the oldest).
    #[arg(long, value_name = "A,B")]
    pub compare: Vec<String>,
    #[command(flatten)]
    pub boot: BootArgs,
}

pub fn run(ctx: &mut Context, args: EvalArgs) -> anyhow::Result<()> {
    match args.command {
        EvalCommand::Summaries(a) => summaries(ctx, *a),
        EvalCommand::List(a) => list(ctx, a.json),
        EvalCommand::Show(a) => show(ctx, a),
        EvalCommand::Compare(a) => compare(ctx, a),
        EvalCommand::Remove { name } => {
            if runs::remove(ctx.store()?, &name)? {
                println!("removed run {name}");
                Ok(())
            } else {
                bail!("no evaluation run named '{name}' (see `rrm eval list`)")
            }
        }
        EvalCommand::LearningCurve(a) => learning_curve(ctx, a),
        EvalCommand::BestOfN(a) => best_of_n(ctx, a),
        EvalCommand::Report(a) => write_report(ctx, a),
    }
}

impl SummariesArgs {
    fn compose_options(&self) -> anyhow::Result<ComposeOptions> {
        if self.best_of == 0 {
            bail!("--best-of must be at least 1");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let mut options = ComposeOptions {
            batch_size: self.batch_size,
            best_of: self.best_of,
            seed: self.sample_seed,
            ..ComposeOptions::default()
        };
        for sampling in [&mut options.sampling, &mut options.sampling_best_of] {
            sampling.repetition_penalty = self.repetition_penalty;
        }
        if let Some(t) = self.temperature {
            if !(0.0..=5.0).contains(&t) {
                bail!("--temperature must be between 0 and 5 (got {t})");
            }
            options.sampling.temperature = t;
            if t > 0.0 {
                options.sampling_best_of.temperature = t;
            }
        }
        Ok(options)
    }
}

struct Lines {
    quiet: bool,
}

impl Observer for Lines {}

impl DocProgress for Lines {
    fn document(&self, index: usize, total: usize, doc: &references::Document) {
        if !self.quiet {
            eprintln!(
                "[{}/{total}] {} ({} words)",
                index + 1,
                doc.id,
                doc.text.split_whitespace().count()
            );
        }
    }

    fn observer(&self) -> &dyn Observer {
        self
    }
}

fn summaries(ctx: &mut Context, args: SummariesArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let name = args.run.clone().unwrap_or_else(|| format!("run-{}", crate::feedback::unix_now()));
    runs::check_name(&name)?;
    if !args.replace && runs::exists(ctx.store()?, &name)? {
        return Err(crate::eval::EvalError::RunExists(name).into());
    }
    let options = args.compose_options()?;
    if !args.pessimism.is_finite() || args.pessimism < 0.0 {
        bail!("--pessimism must be a non-negative number (got {})", args.pessimism);
    }
    // Bad input fails before any model is loaded.
    let docs = references::read_file(&args.references)?;
    let ref_bytes = std::fs::read(&args.references)
        .with_context(|| format!("reading {}", args.references.display()))?;
    let decomposer = args.decomposer.build(ctx)?;
    let dir = args.reward_dir.dir(ctx);
    let scorer = match args.reward_model.as_ref().or(args.score_with.as_ref()) {
        Some(spec) => {
            let model = RewardModel::load(&RewardModel::resolve(spec, &dir)?)?;
            let encoder = load_encoder(
                &EncoderArgs {
                    encoder: crate::infer::fetch::DEFAULT_ENCODER.to_string(),
                    models_dir: args.generator.models_dir.clone(),
                },
                ctx.quiet,
            )?;
            let store = ctx.store()?.clone();
            Some(Arc::new(RewardSelector::new(
                Arc::new(model),
                encoder,
                Some(store),
                args.pessimism,
            )?))
        }
        None => None,
    };
    let selector: Arc<dyn Selector> = match (&args.reward_model, &scorer) {
        (Some(_), Some(s)) => Arc::clone(s) as Arc<dyn Selector>,
        _ => Arc::new(MeanLogprob),
    };
    let generator = args.generator.start(args.batch_size, ctx.quiet)?;
    let labeler = SimLabeler::new("sim-coverage", 0.0);
    let settings = serde_json::json!({
        "model": generator.identity(),
        "selector": selector.id(),
        "compose": options,
        "decomposer": decomposer.info(),
        "references": args.references.display().to_string(),
        "references_blake3": blake3::hash(&ref_bytes).to_hex().to_string(),
        "scorer": scorer.as_ref().map(|s| s.id()),
        "labeler": labeler.name,
        "rrm": env!("CARGO_PKG_VERSION"),
    });
    let harness = Harness {
        generator,
        selector,
        store: ctx.store()?.clone(),
        options,
        decomposer: decomposer.as_ref(),
        trees_dir: Some(args.trees.trees_dir.clone()),
        scorer,
        labeler: Some(labeler),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let progress = Lines { quiet: ctx.quiet };
    let documents = runtime
        .block_on(harness.run(&docs, &progress))
        .with_context(|| format!("evaluating {}", args.references.display()))?;
    let run = EvalRun {
        name: name.clone(),
        created_unix: crate::feedback::unix_now(),
        settings,
        documents,
        seconds: started.elapsed().as_secs_f64(),
    };
    runs::save(ctx.store()?, &run, args.replace)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        print_run(&run, BootstrapOptions::default(), false);
        eprintln!("stored as run {name} ({:.1} s)", run.seconds);
    }
    Ok(())
}

fn list(ctx: &mut Context, json: bool) -> anyhow::Result<()> {
    let all = runs::all(ctx.store()?)?;
    if json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|r| {
                serde_json::json!({"name": r.name, "documents": r.documents.len(),
                    "created_unix": r.created_unix, "settings": r.settings})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no evaluation runs yet (run `rrm eval summaries --references FILE --run NAME`)");
    }
    for r in &all {
        let mean = |m: &str| {
            r.documents.iter().filter_map(|d| runs::metric(d, m)).sum::<f64>()
                / r.documents.len().max(1) as f64
        };
        println!(
            "{:<20} {:>3} docs  R-1 {:.4}  R-2 {:.4}  R-L {:.4}  selector {}",
            r.name,
            r.documents.len(),
            mean("rouge1"),
            mean("rouge2"),
            mean("rougeL"),
            r.settings.get("selector").and_then(|v| v.as_str()).unwrap_or("?")
        );
    }
    Ok(())
}

fn print_run(run: &EvalRun, opts: BootstrapOptions, per_doc: bool) {
    if per_doc {
        println!(
            "{:<34} {:>6} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8}",
            "document", "words", "summ", "R-1", "R-2", "R-L", "lead R1", "len", "reward", "labeler"
        );
        for d in &run.documents {
            let o = |v: Option<f64>| v.map_or("–".to_string(), |x| format!("{x:.3}"));
            println!(
                "{:<34} {:>6} {:>6} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.2} {:>8} {:>8}",
                d.id.chars().take(34).collect::<String>(),
                d.document_words,
                d.summary_words,
                d.rouge.rouge1_max,
                d.rouge.rouge2_max,
                d.rouge.rouge_l_max,
                d.lead.rouge1_max,
                d.length_ratio,
                o(d.reward),
                o(d.labeler)
            );
        }
        println!();
    }
    let n = run.documents.len().max(1) as f64;
    let mean = |f: &dyn Fn(&runs::DocScores) -> f64| run.documents.iter().map(f).sum::<f64>() / n;
    println!(
        "run {}: {} documents (F1, best reference / mean over references)",
        run.name,
        run.documents.len()
    );
    println!("{:<10} {:>9} {:>9} {:>9}", "", "ROUGE-1", "ROUGE-2", "ROUGE-L");
    println!(
        "{:<10} {:>9.4} {:>9.4} {:>9.4}",
        "summary",
        mean(&|d| d.rouge.rouge1_max),
        mean(&|d| d.rouge.rouge2_max),
        mean(&|d| d.rouge.rouge_l_max)
    );
    println!(
        "{:<10} {:>9.4} {:>9.4} {:>9.4}",
        "  (mean)",
        mean(&|d| d.rouge.rouge1_mean),
        mean(&|d| d.rouge.rouge2_mean),
        mean(&|d| d.rouge.rouge_l_mean)
    );
    println!(
        "{:<10} {:>9.4} {:>9.4} {:>9.4}",
        "lead",
        mean(&|d| d.lead.rouge1_max),
        mean(&|d| d.lead.rouge2_max),
        mean(&|d| d.lead.rouge_l_max)
    );
    println!(
        "length ratio (summary / reference words): {:.2}; summary words {:.0}",
        mean(&|d| d.length_ratio),
        mean(&|d| d.summary_words as f64)
    );
    let vs = runs::against_lead(run, opts);
    if !vs.is_empty() {
        println!("\nsummary − lead (paired bootstrap 95%, {} resamples):", opts.resamples);
        for (m, d) in &vs {
            println!(
                "  {m:<8} {:+.4} [{:+.4}, {:+.4}]  summary wins {:.0}%",
                d.diff,
                d.low,
                d.high,
                100.0 * d.win_rate
            );
        }
    }
}

fn show(ctx: &mut Context, args: ShowArgs) -> anyhow::Result<()> {
    let run = runs::load(ctx.store()?, &args.name)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        print_run(&run, args.boot.options()?, true);
    }
    Ok(())
}

fn compare(ctx: &mut Context, args: CompareArgs) -> anyhow::Result<()> {
    let opts = args.boot.options()?;
    let a = runs::load(ctx.store()?, &args.a)?;
    let b = runs::load(ctx.store()?, &args.b)?;
    let c = runs::compare(&a, &b, opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(());
    }
    println!(
        "{} − {} over {} documents (paired bootstrap, {} resamples, seed {}):",
        c.a, c.b, c.documents, opts.resamples, opts.seed
    );
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>21} {:>8}",
        "metric", "A", "B", "A − B", "95% interval", "A wins"
    );
    for name in &c.order {
        let d = &c.metrics[name];
        println!(
            "{:<14} {:>9.4} {:>9.4} {:>+9.4} {:>21} {:>7.0}%{}",
            name,
            d.mean_a,
            d.mean_b,
            d.diff,
            format!("[{:+.4}, {:+.4}]", d.low, d.high),
            100.0 * d.win_rate,
            if d.significant() { "  *" } else { "" }
        );
    }
    println!("(* the interval excludes zero)");
    if !c.only_a.is_empty() || !c.only_b.is_empty() {
        eprintln!(
            "left out: {} document(s) only in {}, {} only in {}",
            c.only_a.len(),
            c.a,
            c.only_b.len(),
            c.b
        );
    }
    Ok(())
}

fn learning_curve(ctx: &mut Context, args: CurveArgs) -> anyhow::Result<()> {
    if args.members == 0 || args.members > 32 {
        bail!("--members must be between 1 and 32");
    }
    let records = crate::feedback::all(ctx.store()?)?;
    let pairs = crate::feedback::to_pairs(&records);
    let encoder = load_encoder(&args.encoder, ctx.quiet)?;
    let config = TrainConfig { members: args.members, seed: args.seed, ..TrainConfig::default() };
    let quiet = ctx.quiet;
    let store = ctx.store()?.clone();
    let lc = curves::learning_curve(
        encoder.as_ref(),
        Some(store.clone()),
        &pairs,
        args.repeats,
        &config,
        |p| {
            if !quiet {
                eprintln!(
                    "height {} n={:<5} repeat {}: accuracy {:.1}%",
                    p.height,
                    p.n,
                    p.repeat,
                    100.0 * p.accuracy
                );
            }
        },
    )?;
    store.put(Table::Meta, LEARNING_CURVE_KEY, &lc)?;
    store.flush()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&lc)?);
    } else {
        println!(
            "held out by {} ({} held out); ECE of the largest model: {}",
            lc.split,
            lc.test_groups,
            lc.ece.iter().map(|(h, e)| format!("h{h} {e:.3}")).collect::<Vec<_>>().join(", ")
        );
        println!("stored; draw it with `rrm eval report --out DIR`");
    }
    Ok(())
}

fn best_of_n(ctx: &mut Context, args: BestOfNArgs) -> anyhow::Result<()> {
    if args.candidates < 2 {
        bail!("--candidates must be at least 2");
    }
    let dir = args.reward_dir.dir(ctx);
    let model = RewardModel::load(&RewardModel::resolve(&args.reward_model, &dir)?)?;
    let store = ctx.store()?.clone();
    let (nodes, excluded) = curves::sampled_nodes(&store, args.candidates)?;
    let encoder = load_encoder(&args.encoder, ctx.quiet)?;
    let labeler = SimLabeler::new("sim-coverage", 0.0);
    let quiet = ctx.quiet;
    let b = curves::best_of_n(
        &model,
        encoder.as_ref(),
        Some(store.clone()),
        &labeler,
        &nodes,
        excluded,
        |i, n| {
            if !quiet && i % 50 == 0 {
                eprintln!("scoring node {}/{n}", i + 1);
            }
        },
    )?;
    store.put(Table::Meta, BEST_OF_N_KEY, &b)?;
    store.flush()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        println!(
            "{} nodes with {} candidates ({} left out: feedback on them); model {}",
            b.nodes, b.candidates, b.excluded_seen, b.model
        );
        println!("{:>3} {:>8} {:>10} {:>10}", "N", "KL", "proxy", "labeler");
        for p in &b.points {
            println!("{:>3} {:>8.3} {:>10.4} {:>10.4}", p.n, p.kl, p.proxy, p.gold);
        }
    }
    Ok(())
}

fn write_report(ctx: &mut Context, args: ReportArgs) -> anyhow::Result<()> {
    let store = ctx.store()?.clone();
    if let Some(path) = &args.decomposition {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut rows = Vec::new();
        let mut bad = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<crate::decompose::learned::EvalRow>(line) {
                // The per-method means and the count-matched protocol are not per-book bars.
                Ok(r) if r.book != "MEAN" && !r.method.contains('@') => rows.push(r),
                Ok(_) => {}
                Err(e) => bad.push((i + 1, format!("not a `decomposer eval --json` row: {e}"))),
            }
        }
        if !bad.is_empty() {
            return Err(crate::eval::EvalError::BadLines {
                path: path.display().to_string(),
                lines: bad,
            }
            .into());
        }
        if rows.is_empty() {
            bail!("{}: no decomposition rows", path.display());
        }
        store.put(Table::Meta, DECOMPOSITION_KEY, &rows)?;
    }
    for spec in &args.policy_log {
        let Some((name, file)) = spec.split_once('=') else {
            bail!("--policy-log wants NAME=FILE.jsonl (got '{spec}')");
        };
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        let log =
            report::parse_policy_log(name, &text).with_context(|| format!("reading {file}"))?;
        store.put(Table::Meta, &format!("{POLICY_PREFIX}{name}"), &log)?;
    }
    store.flush()?;
    let mut all = runs::all(&store)?;
    all.sort_by_key(|r| r.created_unix);
    let comparisons: Vec<(String, String)> = if args.compare.is_empty() {
        all.iter().skip(1).map(|r| (r.name.clone(), all[0].name.clone())).collect()
    } else {
        args.compare
            .iter()
            .map(|s| {
                s.split_once(',')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| anyhow::anyhow!("--compare wants A,B (got '{s}')"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    for (a, b) in &comparisons {
        for n in [a, b] {
            if !runs::exists(&store, n)? {
                bail!("--compare: no evaluation run named '{n}' (see `rrm eval list`)");
            }
        }
    }
    let data = ReportData {
        runs: all,
        comparisons,
        learning_curve: store.get::<LearningCurve>(Table::Meta, LEARNING_CURVE_KEY)?,
        best_of_n: store.get::<BestOfN>(Table::Meta, BEST_OF_N_KEY)?,
        decomposition: store
            .get::<Vec<crate::decompose::learned::EvalRow>>(Table::Meta, DECOMPOSITION_KEY)?
            .unwrap_or_default(),
        policy: store
            .scan::<PolicyLog>(Table::Meta, POLICY_PREFIX)?
            .into_iter()
            .map(|(_, l)| l)
            .collect(),
        bootstrap: args.boot.options()?,
    };
    let written = report::write(&args.out, &data)?;
    println!("wrote {} ({} figures)", written.index.display(), written.figures.len());
    for m in &written.missing {
        println!("  {m}");
    }
    Ok(())
}
