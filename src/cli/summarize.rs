//! `rrm summarize BOOK…`: decompose, compose with the policy model, print the book summary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use super::args::{
    ComposeArgs, DecomposerOptions, EncoderArgs, GeneratorOptions, LevelModelArgs, WorkspaceArgs,
};
use super::Context;
use crate::book::Book;
use crate::compose::ask::{Answer, Asker, Question};
use crate::compose::select::SelectError;
use crate::compose::Selector;
use crate::compose::{ComposeOptions, ComposeReport, Models, Observer};
use crate::workspace::ask::{asking_selector, ranked_threshold_for, Budget};
use crate::workspace::books;
use crate::workspace::summarize::{self, SelectorSpec};

/// Summarize books: split each into a task tree, summarize the leaves with the policy model,
/// then the summaries, up to the root.
#[derive(Debug, Args)]
#[command(after_help = "Every node's result is cached by content in the database: a re-run is \
instant, and after an edit only the changed leaf, its ancestors (and, with --context previous, \
the nodes that read them) are recomputed. The default model is fetched on first use.

Examples:
  rrm summarize alice
  rrm summarize my-book.txt --best-of 4 --out summary.txt
  rrm summarize books/ --context previous --json
  rrm summarize alice --backend openai --endpoint http://127.0.0.1:8000 --model qwen2.5-7b")]
pub struct SummarizeArgs {
    /// Book files, folders of books (.txt, .md), or catalog ids (see `rrm books list`).
    #[arg(required = true, value_name = "BOOK")]
    pub books: Vec<String>,
    /// Books composed at once: the upper levels of one book hold a node or two, too few to fill
    /// a cluster's slots (`--backend openai`), so the next book's leaves fill them. On the
    /// local engine of a small CPU one at a time is as fast (3 books: 263 s one at a time,
    /// 274 s two at once, 2 cores). Summaries print in the order the books were given; with
    /// --ask, one at a time.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub books_at_once: u16,
    #[command(flatten)]
    pub decomposer: DecomposerOptions,
    #[command(flatten)]
    pub generator: GeneratorOptions,
    #[command(flatten)]
    pub level_models: LevelModelArgs,
    #[command(flatten)]
    pub compose: ComposeArgs,
    /// Pick among candidates with this reward model (`latest`, a checkpoint hash or folder, or
    /// `grounding`: no model, each candidate checked against the node's input for invented
    /// names, numbers and words, and coverage; `grounding:copy=leaves` also penalizes copying
    /// the input at the leaves, `grounding:copy=all` at every height): by ensemble mean −
    /// λ·std, recording every candidate's scores. `consensus`: no model, the candidate the
    /// node's other candidates agree with most (ROUGE F1), counting only words the input
    /// supports (minimum Bayes risk; needs `--best-of 3` or more to differ from the first).
    /// `lm-support[:MODEL]`: no checkpoint, a language model's support for each candidate (how
    /// much reading the input raises its probability; SmolLM2-135M unless a model is named).
    #[arg(long, value_name = "PATH|latest|grounding|consensus|lm-support")]
    pub reward_model: Option<String>,
    /// λ, the pessimism of the reward pick (mean − λ·std).
    #[arg(long, default_value_t = 1.0, value_name = "λ", requires = "reward_model")]
    pub pessimism: f32,
    /// Where the reward ensemble cannot tell the two best candidates apart, ask a person (in
    /// the terminal: 1 / 2 / t, then a confidence) instead of guessing; answers are stored as
    /// comparisons. Needs --reward-model and --best-of 2 or more.
    #[arg(long, requires = "reward_model")]
    pub ask: bool,
    /// With --ask: at most this many questions per book, or a share of its nodes (e.g. 20%).
    #[arg(long, value_name = "N|P%", requires = "ask")]
    pub ask_budget: Option<Budget>,
    /// With --ask: ask when |mean_a − mean_b| < T · the members' spread of (a − b).
    #[arg(long, default_value_t = 1.0, value_name = "T", requires = "ask")]
    pub ask_threshold: f32,
    /// With --ask and a budget: which unsure nodes get the questions. `ranked` (the default)
    /// composes the book once without asking, then spends the budget on the nodes where the
    /// ensemble is least sure (the first question waits for that pass; its candidates are
    /// reused); `arrival` asks at unsure nodes as they finish, until the budget is spent.
    #[arg(long, value_enum, default_value_t = AskOrder::Ranked, requires = "ask_budget")]
    pub ask_order: AskOrder,
    /// With --ask: who answers — `terminal` (you), or `sim` (the simulated labeler, for
    /// measurements).
    #[arg(long, value_enum, default_value_t = AskerArg::Terminal, requires = "ask")]
    pub asker: AskerArg,
    /// With --ask: the name stored with the answers.
    #[arg(long, env = "RRM_LABELER", value_name = "NAME")]
    pub labeler: Option<String>,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    /// Compose only up to this height (0: summarize the leaves only), e.g. to collect
    /// candidates for rating without paying for the upper levels.
    #[arg(long, value_name = "H")]
    pub max_height: Option<u32>,
    /// Write the summary (or, with several books, one file per book into this folder).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print a JSON report per book instead of the summary text.
    #[arg(long)]
    pub json: bool,
    /// Replace invalid UTF-8 instead of failing.
    #[arg(long)]
    pub lossy: bool,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AskOrder {
    Ranked,
    Arrival,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AskerArg {
    /// You, in this terminal.
    Terminal,
    /// The simulated labeler (salient-word coverage with a length penalty).
    Sim,
}

impl SummarizeArgs {
    fn compose_options(&self) -> anyhow::Result<ComposeOptions> {
        if self.ask && self.compose.best_of < 2 {
            bail!("--ask chooses between candidates: it needs --best-of 2 or more");
        }
        let mut options = self.compose.options()?;
        options.max_height = self.max_height;
        Ok(options)
    }
}

pub fn run(ctx: &mut Context, args: SummarizeArgs) -> anyhow::Result<()> {
    let options = args.compose_options()?;
    let progress = ctx.progress();
    let ws = ctx.workspace(&args.ws)?.clone();
    let specs = books::expand(&args.books)?;
    let decomposer = args.decomposer.spec(&args.encoder).build(&ws, progress)?;
    // Open (and fetch) every book before loading the model, so a bad name fails fast.
    let mut opened = Vec::new();
    for spec in &specs {
        let bar = ctx.spinner(format!("reading {spec}"));
        let book = ws.open_book(spec, args.lossy, &|m| bar.set_message(m.to_string()));
        bar.finish_and_clear();
        opened.push(book?);
    }
    let selector = SelectorSpec {
        reward_model: args.reward_model.clone(),
        pessimism: args.pessimism,
        encoder: args.encoder.encoder.clone(),
    }
    .build(&ws, progress)?;
    let models = args.level_models.start(
        &args.generator,
        &args.ws.models,
        args.compose.batch_size,
        progress,
    )?;
    let runtime = super::args::runtime()?;
    let several = opened.len() > 1;
    let mut trees = Vec::with_capacity(opened.len());
    for book in &opened {
        let bar = ctx.spinner(format!("decomposing {}", book.title()));
        let tree = summarize::decompose(&ws, book, decomposer.as_ref());
        bar.finish_and_clear();
        trees.push(tree.with_context(|| format!("decomposing {}", book.source()))?);
    }
    // Questions in the terminal come one book at a time.
    let at_once = if args.ask { 1 } else { usize::from(args.books_at_once) };
    let bars = indicatif::MultiProgress::new();
    let quiet = ctx.quiet;
    let compose_one = |i: usize| {
        let (book, tree) = (&opened[i], &trees[i]);
        let progress_bar = Progress::new(&bars, quiet, book.title());
        let chosen = if args.ask {
            let asker: Arc<dyn Asker> = match args.asker {
                AskerArg::Terminal => Arc::new(TerminalAsker {
                    labeler: super::args::labeler(&args.labeler),
                    bar: progress_bar.bar.clone(),
                }),
                AskerArg::Sim => Arc::new(crate::compose::ask::SimAsker::new(
                    crate::feedback::sim::SimLabeler::new(
                        args.labeler.as_deref().unwrap_or("sim-coverage"),
                        0.0,
                    ),
                    0,
                )),
            };
            let budget = args.ask_budget.map(|b| b.questions(tree.len()));
            Some((asker, budget))
        } else {
            None
        };
        let (ws, models, options, inner, bars) =
            (&ws, models.clone(), options.clone(), Arc::clone(&selector), &bars);
        async move {
            let (selector, asking): (Arc<dyn Selector>, _) = match chosen {
                None => (inner, None),
                Some((asker, budget)) => {
                    let mut threshold = args.ask_threshold;
                    if let (Some(questions), AskOrder::Ranked) = (budget, args.ask_order) {
                        if !quiet {
                            bars.suspend(|| {
                                eprintln!(
                                    "{}: composing once without asking, to find the {questions} \
                                     node(s) where the ensemble is least sure",
                                    book.title()
                                )
                            });
                        }
                        threshold = ranked_threshold_for(
                            ws,
                            book,
                            tree,
                            models.clone(),
                            Arc::clone(&inner),
                            options.clone(),
                            questions,
                            threshold,
                            &progress_bar,
                        )
                        .await
                        .with_context(|| format!("planning the questions for {}", book.source()))?;
                    }
                    let s = asking_selector(ws, inner, asker, threshold, budget)?;
                    (s.clone() as Arc<dyn Selector>, Some(s))
                }
            };
            let report = summarize::compose(
                ws,
                book,
                tree,
                models.clone(),
                selector,
                options,
                &progress_bar,
            )
            .await
            .with_context(|| format!("summarizing {}", book.source()))?;
            progress_bar.finish();
            anyhow::Ok((book, report, asking))
        }
    };
    runtime.block_on(async {
        use futures::StreamExt as _;
        let mut done = futures::stream::iter(0..opened.len()).map(compose_one).buffered(at_once);
        while let Some(result) = done.next().await {
            let (book, report, asking) = result?;
            if let Some(s) = asking {
                eprintln!("asked {} question(s)", s.stats().asked);
            }
            bars.suspend(|| output(&args, book, &report, &models, several))?;
        }
        anyhow::Ok(())
    })
}

fn output(
    args: &SummarizeArgs,
    book: &Book,
    report: &ComposeReport,
    models: &Models,
    several: bool,
) -> anyhow::Result<()> {
    if let Some(out) = &args.out {
        let path = if several {
            std::fs::create_dir_all(out)
                .with_context(|| format!("creating the folder {}", out.display()))?;
            out.join(format!("{}.summary.txt", book.id().short()))
        } else {
            out.clone()
        };
        std::fs::write(&path, format!("{}\n", report.root_summary))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        let json = serde_json::json!({
            "book_id": book.id().as_str(),
            "title": book.title(),
            "source": book.source().to_string(),
            "model": models.default_model().identity(),
            "models_at": models.identities_at(),
            "summary": report.root_summary,
            "report": report,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else if !report.complete {
        println!(
            "{}: composed {} nodes up to the height limit; see them with `rrm tree show`",
            book.title(),
            report.nodes_total
        );
    } else {
        if several {
            println!("# {}\n", book.title());
        }
        println!("{}\n", report.root_summary);
    }
    eprintln!("{}", final_line(report));
    Ok(())
}

fn final_line(r: &ComposeReport) -> String {
    let secs = r.elapsed.as_secs_f64();
    let rate = if secs > 0.0 { r.tokens_generated as f64 / secs } else { 0.0 };
    format!(
        "done in {secs:.1} s: {} nodes ({} generated, {} from cache), {} tokens generated \
         ({rate:.0} tok/s), {} prompt tokens",
        r.nodes_total, r.computed, r.cache_hits, r.tokens_generated, r.prompt_tokens
    )
}

/// Asks in the terminal: the node's input and two summaries on stderr (the progress bar
/// suspended), one answer line from stdin.
struct TerminalAsker {
    labeler: String,
    bar: ProgressBar,
}

impl Asker for TerminalAsker {
    fn labeler(&self) -> String {
        self.labeler.clone()
    }

    fn ask(&self, q: &Question) -> Result<Answer, SelectError> {
        let err = |e: std::io::Error| SelectError {
            selector: "ask".into(),
            message: format!("reading the answer: {e}"),
        };
        self.bar.suspend(|| {
            eprintln!(
                "\n=== node {} (height {}): the reward models cannot tell these apart ===",
                q.label, q.height
            );
            eprintln!("--- input ---\n{}", q.input);
            eprintln!("--- summary 1 ---\n{}\n--- summary 2 ---\n{}", q.a, q.b);
            loop {
                eprint!("which is better? [1/2/t, then a confidence 1-9, e.g. `1 7`; s skips] ");
                let mut line = String::new();
                if std::io::stdin().read_line(&mut line).map_err(err)? == 0 {
                    return Ok(Answer::Skip);
                }
                let mut parts = line.split_whitespace();
                let key = parts.next().unwrap_or("");
                let confidence = parts.next().and_then(|c| c.parse::<u8>().ok()).unwrap_or(5);
                if !(1..=9).contains(&confidence) {
                    eprintln!("  the confidence is a number 1-9");
                    continue;
                }
                return Ok(match key {
                    "1" => Answer::A { confidence },
                    "2" => Answer::B { confidence },
                    "t" | "T" => Answer::Tie { confidence },
                    "s" | "S" => Answer::Skip,
                    _ => {
                        eprintln!("  type 1, 2, t or s");
                        continue;
                    }
                });
            }
        })
    }
}

/// A progress bar: nodes done / total, generated tokens per second, ETA.
struct Progress {
    bar: ProgressBar,
    started: Instant,
    tokens: std::sync::atomic::AtomicUsize,
}

impl Progress {
    /// A bar in `bars` (several books' bars stay apart).
    fn new(bars: &indicatif::MultiProgress, quiet: bool, title: &str) -> Progress {
        let bar = if quiet { ProgressBar::hidden() } else { bars.add(ProgressBar::new(0)) };
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} nodes  {msg}  ETA {eta}  ({elapsed})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(title.chars().take(30).collect::<String>());
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar, started: Instant::now(), tokens: Default::default() }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Observer for Progress {
    fn started(&self, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(0);
    }

    fn node_done(&self, label: &str, cached: bool, tokens_generated: usize) {
        use std::sync::atomic::Ordering;
        let tokens = self.tokens.fetch_add(tokens_generated, Ordering::Relaxed) + tokens_generated;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!("{tokens} tokens, {:.0} tok/s", tokens as f64 / secs));
        self.bar.inc(1);
        tracing::info!(node = %label, cached, tokens = tokens_generated, "node done");
    }
}
