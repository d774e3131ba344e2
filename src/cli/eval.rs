//! `rrm eval summaries|list|show|compare|remove|learning-curve|best-of-n|report`: summary
//! quality against references, paired comparisons of runs, and the report's figures.
//!
//! Thin: parses, calls `crate::workspace::eval` and `crate::eval`, prints.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use super::args::{
    ComposeArgs, DecomposerOptions, EncoderArgs, GeneratorOptions, LevelModelArgs, WorkspaceArgs,
};
use super::Context;
use crate::compose::{Observer, Selector};
use crate::eval::references;
use crate::eval::runs::{self, BootstrapOptions, EvalRun};
use crate::eval::summaries::{DocProgress, Scorers};
use crate::reward::train::TrainConfig;
use crate::workspace::eval::{self as ws_eval, Summarizer};
use crate::workspace::summarize::SelectorSpec;

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
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
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
    #[command(flatten)]
    pub level_models: LevelModelArgs,
    #[command(flatten)]
    pub compose: ComposeArgs,
    /// Pick among candidates with this reward model (`latest`, a hash or a folder, or
    /// `grounding[:copy=leaves|all]`); a MiniLM one also scores each root summary.
    #[arg(long, value_name = "PATH|latest|grounding")]
    pub reward_model: Option<String>,
    /// λ of the reward pick (mean − λ·std).
    #[arg(long, default_value_t = 1.0, value_name = "λ")]
    pub pessimism: f32,
    /// Score each root summary with this reward model without picking by it.
    #[arg(long, value_name = "PATH|latest", conflicts_with = "reward_model")]
    pub score_with: Option<String>,
    /// Also store each document's references as demonstrations at its root, by this labeler
    /// (training stories: then `rrm policy train --method sft --labeler NAME` learns the upper
    /// levels from human summaries). A re-run stores nothing twice.
    #[arg(long, value_name = "LABELER")]
    pub store_demonstrations: Option<String>,
    /// With --store-demonstrations: cut each reference at a sentence end within this many words.
    #[arg(long, value_name = "N", requires = "store_demonstrations",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub demonstration_words: Option<u32>,
    /// With --store-demonstrations: keep only the reference sentences the root's input (its
    /// children's summaries) supports: no name it lacks and at most 1 − S of the sentence's
    /// content words missing from it (S between 0 and 1, e.g. 0.8).
    #[arg(long, value_name = "S", requires = "store_demonstrations")]
    pub demonstration_support: Option<f64>,
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
    let progress = ctx.progress();
    let ws = ctx.workspace(&args.ws)?.clone();
    let encoder = args.encoder.encoder.clone();
    let e = Env { ws: &ws, models: &args.ws.models, encoder: &encoder, progress, quiet: ctx.quiet };
    match args.command {
        EvalCommand::Summaries(a) => summaries(&e, *a),
        EvalCommand::List(a) => list(&e, a.json),
        EvalCommand::Show(a) => show(&e, a),
        EvalCommand::Compare(a) => compare(&e, a),
        EvalCommand::Remove { name } => {
            if runs::remove(ws.store(), &name)? {
                println!("removed run {name}");
                Ok(())
            } else {
                bail!("no evaluation run named '{name}' (see `rrm eval list`)")
            }
        }
        EvalCommand::LearningCurve(a) => learning_curve(&e, a),
        EvalCommand::BestOfN(a) => best_of_n(&e, a),
        EvalCommand::Report(a) => write_report(&e, a),
    }
}

/// What every subcommand gets.
struct Env<'a> {
    ws: &'a crate::workspace::Workspace,
    models: &'a super::args::ModelsDir,
    encoder: &'a str,
    progress: bool,
    quiet: bool,
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

fn summaries(e: &Env<'_>, args: SummariesArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if let Some(s) = args.demonstration_support {
        if !(0.0..=1.0).contains(&s) {
            bail!("--demonstration-support must be between 0 and 1, got {s}");
        }
    }
    let ws = e.ws;
    let name = args.run.clone().unwrap_or_else(|| format!("run-{}", crate::feedback::unix_now()));
    runs::check_name(&name)?;
    if !args.replace && runs::exists(ws.store(), &name)? {
        return Err(crate::eval::EvalError::RunExists(name).into());
    }
    let options = args.compose.options()?;
    // Bad input fails before any model is loaded.
    let docs = references::read_file(&args.references)?;
    let ref_bytes = std::fs::read(&args.references)
        .with_context(|| format!("reading {}", args.references.display()))?;
    let encoder_args = EncoderArgs { encoder: e.encoder.to_string() };
    let decomposer = args.decomposer.spec(&encoder_args).build(ws, e.progress)?;
    // The pick: the same selector `rrm summarize --reward-model` builds (a MiniLM or LM
    // checkpoint, or `grounding`).
    let selector = SelectorSpec {
        reward_model: args.reward_model.clone(),
        pessimism: args.pessimism,
        encoder: e.encoder.to_string(),
    }
    .build(ws, e.progress)?;
    // The root's reward column: a MiniLM ensemble (`--score-with`, or the one that picked).
    let score_spec = args.score_with.as_ref().or(args.reward_model.as_ref().filter(|spec| {
        crate::reward::grounded::Grounded::parse(spec).is_none()
            && crate::reward::RewardModel::resolve(spec, ws.reward_dir())
                .is_ok_and(|p| !crate::reward::lm::is_lm_checkpoint(&p))
    }));
    let scorer = match score_spec {
        Some(spec) => {
            Some(ws_eval::reward_scorer(ws, spec, args.pessimism, e.encoder, e.progress)?)
        }
        None => None,
    };
    let models =
        args.level_models.start(&args.generator, e.models, args.compose.batch_size, e.progress)?;
    let labeler = ws_eval::labeler();
    let settings = serde_json::json!({
        "model": models.default_model().identity(),
        "models_at": models.identities_at(),
        "selector": selector.id(),
        "compose": options,
        "decomposer": decomposer.info(),
        "references": args.references.display().to_string(),
        "references_blake3": blake3::hash(&ref_bytes).to_hex().to_string(),
        "scorer": scorer.as_ref().map(|s| s.id()),
        "labeler": labeler.name,
        "rrm": env!("CARGO_PKG_VERSION"),
    });
    let summarizer = Summarizer {
        models,
        selector,
        options,
        decomposer: decomposer.as_ref(),
        scorers: Scorers { reward: scorer, labeler: Some(labeler) },
        demonstrations: args.store_demonstrations.clone().map(|labeler| ws_eval::Demonstrations {
            labeler,
            max_words: args.demonstration_words.map(|n| n as usize),
            min_support: args.demonstration_support,
        }),
    };
    let progress = Lines { quiet: e.quiet };
    let documents = super::args::runtime()?
        .block_on(ws_eval::summarize_documents(ws, &summarizer, &docs, &progress))
        .with_context(|| format!("evaluating {}", args.references.display()))?;
    let run = EvalRun {
        name: name.clone(),
        created_unix: crate::feedback::unix_now(),
        settings,
        documents,
        seconds: started.elapsed().as_secs_f64(),
    };
    runs::save(ws.store(), &run, args.replace)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        print_run(&run, BootstrapOptions::default(), false);
        eprintln!("stored as run {name} ({:.1} s)", run.seconds);
    }
    Ok(())
}

fn list(e: &Env<'_>, json: bool) -> anyhow::Result<()> {
    let all = runs::all(e.ws.store())?;
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
    let grounded: Vec<runs::RootGrounding> =
        run.documents.iter().filter_map(|d| d.grounding).collect();
    if !grounded.is_empty() {
        let g = grounded.len() as f64;
        let avg = |f: &dyn Fn(&runs::RootGrounding) -> f64| grounded.iter().map(f).sum::<f64>() / g;
        println!(
            "grounding of the root: {:.1}% of content words not in the document ({:.1}% not in \
             its input), {:.1} invented names per summary, {:.1}% of 4-grams copied",
            100.0 * avg(&|x| x.unsupported_rate),
            100.0 * avg(&|x| x.unsupported_rate_input),
            avg(&|x| x.unsupported_names as f64),
            100.0 * avg(&|x| x.copied_4gram_share),
        );
    }
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

fn show(e: &Env<'_>, args: ShowArgs) -> anyhow::Result<()> {
    let run = runs::load(e.ws.store(), &args.name)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        print_run(&run, args.boot.options()?, true);
    }
    Ok(())
}

fn compare(e: &Env<'_>, args: CompareArgs) -> anyhow::Result<()> {
    let opts = args.boot.options()?;
    let a = runs::load(e.ws.store(), &args.a)?;
    let b = runs::load(e.ws.store(), &args.b)?;
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

fn learning_curve(e: &Env<'_>, args: CurveArgs) -> anyhow::Result<()> {
    let config = TrainConfig { members: args.members, seed: args.seed, ..TrainConfig::default() };
    let quiet = e.quiet;
    let lc = ws_eval::learning_curve(e.ws, e.encoder, args.repeats, &config, e.progress, |p| {
        if !quiet {
            eprintln!(
                "height {} n={:<5} repeat {}: accuracy {:.1}%",
                p.height,
                p.n,
                p.repeat,
                100.0 * p.accuracy
            );
        }
    })?;
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

fn best_of_n(e: &Env<'_>, args: BestOfNArgs) -> anyhow::Result<()> {
    let quiet = e.quiet;
    let b = ws_eval::best_of_n(
        e.ws,
        &args.reward_model,
        args.candidates,
        e.encoder,
        e.progress,
        |i, n| {
            if !quiet && i % 50 == 0 {
                eprintln!("scoring node {}/{n}", i + 1);
            }
        },
    )?;
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

fn write_report(e: &Env<'_>, args: ReportArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.decomposition {
        let n = ws_eval::import_decomposition(e.ws, path)?;
        eprintln!("kept {n} decomposition row(s) from {}", path.display());
    }
    for spec in &args.policy_log {
        let log = ws_eval::import_policy_log(e.ws, spec)?;
        eprintln!("kept policy log {} ({} point(s))", log.name, log.points.len());
    }
    let compare = args
        .compare
        .iter()
        .map(|s| {
            s.split_once(',')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--compare wants A,B (got '{s}')"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let written = ws_eval::write_report(e.ws, &args.out, &compare, args.boot.options()?)?;
    println!("wrote {} ({} figures)", written.index.display(), written.figures.len());
    for m in &written.missing {
        println!("  {m}");
    }
    Ok(())
}
