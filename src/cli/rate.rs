//! `rrm rate ID` (interactive or scripted) and `rrm node sample ID -n K`: drawing candidates for
//! a node and recording a person's judgments of them as feedback.
//!
//! The interactive rater reads one answer per line from stdin (its first character is the key),
//! so it works in any terminal and can be driven by a script; every answer is stored the moment
//! it is given.

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use std::io::{BufRead, Write};

use super::backend::GeneratorOptions;
use super::books::{self, BooksDir};
use super::decompose::TreesDir;
use super::node::ShowArgs;
use super::tree::{all_trees, attach_outputs, LoadedTree};
use super::Context;
use crate::book::Book;
use crate::compose::sample::{self, candidates_for, NodeInput, StoredCandidate};
use crate::compose::ComposeOptions;
use crate::feedback::{self, Feedback, FeedbackKind, Judged, Likert, Preference};
use crate::infer::{Generator, SamplingParams};
use crate::tree::NodeId;

/// A node found for rating: its tree, book and rebuilt input.
pub struct Target {
    pub loaded: LoadedTree,
    pub id: NodeId,
    pub book: Book,
    pub input: NodeInput,
}

impl Target {
    pub fn label(&self) -> &str {
        &self.input.label
    }
}

/// Finds node `id` (a label like h1.2 or a content-hash prefix), in `book` or in every tree.
pub fn resolve(
    ctx: &mut Context,
    id: &str,
    book: Option<&str>,
    lossy: bool,
    books: &BooksDir,
    trees: &TreesDir,
) -> anyhow::Result<Target> {
    let args = ShowArgs {
        id: id.to_string(),
        book: book.map(str::to_string),
        json: false,
        lossy,
        books: books.clone(),
        trees: trees.clone(),
    };
    let (loaded, nid) = super::node::find(ctx, &args)?;
    finish(ctx, loaded, nid)
}

/// Finds the node labelled `label` in the tree of the book with id `book_id`.
pub fn resolve_in_book(
    ctx: &mut Context,
    book_id: &str,
    label: &str,
    trees: &TreesDir,
) -> anyhow::Result<Target> {
    let tree = all_trees(ctx, &trees.trees_dir)?
        .into_iter()
        .find(|t| t.book_id().as_str() == book_id)
        .ok_or_else(|| anyhow!("no task tree for book {book_id}"))?;
    let book = books::book_by_id(ctx, tree.book_id())?;
    let mut loaded = LoadedTree { tree, book, run: None };
    attach_outputs(ctx, &mut loaded)?;
    let nid =
        loaded.tree.find(label).ok_or_else(|| anyhow!("no node {label} in book {book_id}"))?;
    finish(ctx, loaded, nid)
}

fn finish(ctx: &mut Context, loaded: LoadedTree, nid: NodeId) -> anyhow::Result<Target> {
    let label = loaded.tree.node(nid).label.clone();
    let book = loaded.book.clone().ok_or_else(|| {
        anyhow!(
            "the book of node {label} ({}) was not found on disk; open it again with `rrm decompose BOOK`",
            loaded.tree.book_title()
        )
    })?;
    let input = sample::node_input(ctx.store()?, &book, &loaded.tree, loaded.run.as_ref(), nid)
        .with_context(|| format!("rebuilding the input of node {label}"))?;
    Ok(Target { loaded, id: nid, book, input })
}

/// Sampling for extra candidates: the composer's best-of-N settings, at `temperature`.
fn sampling(temperature: Option<f32>) -> anyhow::Result<SamplingParams> {
    let mut s = ComposeOptions::default().sampling_best_of;
    if let Some(t) = temperature {
        if !(0.0..=5.0).contains(&t) {
            bail!("--temperature must be between 0 and 5 (got {t})");
        }
        s.temperature = t;
    }
    Ok(s)
}

/// Generates `k` candidates for the target and stores them.
pub fn draw(
    ctx: &mut Context,
    generator: &dyn Generator,
    target: &Target,
    k: usize,
    temperature: Option<f32>,
    seed: Option<u64>,
) -> anyhow::Result<Vec<StoredCandidate>> {
    let store = ctx.store()?.clone();
    let seed = match seed {
        Some(s) => s,
        None => candidates_for(&store, &target.input.input_key)?.len() as u64,
    };
    let params = sampling(temperature)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime
        .block_on(sample::sample(generator, &store, &target.input, k, &params, seed))
        .with_context(|| format!("sampling candidates for node {}", target.label()))?;
    Ok(candidates_for(&store, &target.input.input_key)?)
}

/// `rrm node sample ID -n K`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A node id (h1.7) or a content-hash prefix.
    pub id: String,
    /// How many candidates to draw.
    #[arg(short = 'n', long = "count", default_value_t = 4, value_name = "K")]
    pub count: usize,
    /// Sampling temperature (default 0.8).
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// Sampling seed (default: the number of candidates already stored, so every call draws new
    /// ones).
    #[arg(long = "sample-seed", value_name = "S")]
    pub seed: Option<u64>,
    /// Look only in the tree of this book.
    #[arg(long, value_name = "BOOK|TREE.json")]
    pub book: Option<String>,
    #[arg(long)]
    pub lossy: bool,
    #[command(flatten)]
    pub generator: GeneratorOptions,
    #[command(flatten)]
    pub books: BooksDir,
    #[command(flatten)]
    pub trees: TreesDir,
}

pub fn sample_cmd(ctx: &mut Context, args: SampleArgs) -> anyhow::Result<()> {
    if args.count == 0 || args.count > 64 {
        bail!("-n must be between 1 and 64 (got {})", args.count);
    }
    let target =
        resolve(ctx, &args.id, args.book.as_deref(), args.lossy, &args.books, &args.trees)?;
    let generator = args.generator.start(args.count, ctx.quiet)?;
    let before = candidates_for(ctx.store()?, &target.input.input_key)?.len();
    let all = draw(ctx, generator.as_ref(), &target, args.count, args.temperature, args.seed)?;
    println!(
        "node {} (height {}): {} candidates stored ({} new)",
        target.label(),
        target.input.height,
        all.len(),
        all.len().saturating_sub(before)
    );
    print_candidates(&all);
    Ok(())
}

fn print_candidates(cands: &[StoredCandidate]) {
    for (i, c) in cands.iter().enumerate() {
        println!("[{i}] {}  {}", &c.hash[..8], c.text);
    }
}

/// Finds a candidate by index or hash prefix.
pub fn pick_candidate(cands: &[StoredCandidate], spec: &str, label: &str) -> anyhow::Result<usize> {
    if let Ok(i) = spec.parse::<usize>() {
        if i < cands.len() {
            return Ok(i);
        }
        if spec.len() < 4 {
            bail!(
                "node {label} has no candidate {i}: it has {} (indices 0..{}; see `rrm rate {label}` or `rrm node sample {label}`)",
                cands.len(),
                cands.len().saturating_sub(1)
            );
        }
    }
    let matches: Vec<usize> =
        (0..cands.len()).filter(|&i| spec.len() >= 4 && cands[i].hash.starts_with(spec)).collect();
    match matches.as_slice() {
        [i] => Ok(*i),
        [] => bail!(
            "node {label} has no candidate '{spec}' (give an index 0..{} or 4+ hex digits of a candidate's hash)",
            cands.len().saturating_sub(1)
        ),
        _ => bail!("'{spec}' matches {} candidates of node {label}; give more digits", matches.len()),
    }
}

/// `rrm rate`.
#[derive(Debug, Args)]
#[command(after_help = "Keys (type one, then Enter): 1 / 2 prefer that summary, t tie, \
e edit one (a correction), w write your own, c critique one, l Likert ratings, s skip the pair, \
q quit. After 1, 2 or t the rater asks for a confidence 1-9 (Enter: 5).

Examples:
  rrm rate h0.3 --book alice
  rrm rate --next
  rrm rate h0.3 --book alice --a 0 --b 2 --prefer b --confidence 7")]
pub struct RateArgs {
    /// A node id (h1.7) or a content-hash prefix.
    #[arg(required_unless_present = "next", conflicts_with = "next")]
    pub id: Option<String>,
    /// Rate the top of `rrm feedback queue`.
    #[arg(long)]
    pub next: bool,
    /// Look only in the tree of this book.
    #[arg(long, value_name = "BOOK|TREE.json")]
    pub book: Option<String>,
    /// Scripted: the first candidate (an index or a hash prefix).
    #[arg(long, value_name = "CAND", requires_all = ["b", "prefer"])]
    pub a: Option<String>,
    /// Scripted: the second candidate.
    #[arg(long, value_name = "CAND", requires_all = ["a", "prefer"])]
    pub b: Option<String>,
    /// Scripted: which one is better.
    #[arg(long, value_name = "a|b|tie", requires_all = ["a", "b"])]
    pub prefer: Option<Preference>,
    /// Scripted: how sure, 1 (a guess) to 9 (certain).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub confidence: u8,
    /// Who is rating (stored with every answer).
    #[arg(long, env = "RRM_LABELER", value_name = "NAME")]
    pub labeler: Option<String>,
    /// Sampling temperature for candidates drawn on the spot (when fewer than two exist).
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub lossy: bool,
    #[command(flatten)]
    pub generator: GeneratorOptions,
    #[command(flatten)]
    pub books: BooksDir,
    #[command(flatten)]
    pub trees: TreesDir,
}

fn labeler(arg: &Option<String>) -> String {
    arg.clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "anonymous".to_string())
}

pub fn run(ctx: &mut Context, args: RateArgs) -> anyhow::Result<()> {
    let who = labeler(&args.labeler);
    let (target, first_pair) = if args.next {
        let items = super::feedback::queue_items(ctx, None, args.generator.models_dir.as_deref())?;
        let top = items.into_iter().find(|i| i.book.is_some() && i.node.is_some()).ok_or_else(|| {
            anyhow!("the queue is empty: no stored node has two candidates not yet compared (sample some with `rrm node sample ID`)")
        })?;
        let (book, node) =
            (top.book.clone().unwrap_or_default(), top.node.clone().unwrap_or_default());
        let target = resolve_in_book(ctx, &book, &node, &args.trees)?;
        let cands = candidates_for(ctx.store()?, &target.input.input_key)?;
        let a = cands.iter().position(|c| c.hash == top.a_hash);
        let b = cands.iter().position(|c| c.hash == top.b_hash);
        (target, a.zip(b))
    } else {
        let id = args.id.as_deref().unwrap_or_default();
        (resolve(ctx, id, args.book.as_deref(), args.lossy, &args.books, &args.trees)?, None)
    };
    let store = ctx.store()?.clone();
    let mut cands = candidates_for(&store, &target.input.input_key)?;

    if let (Some(a), Some(b), Some(prefer)) = (&args.a, &args.b, args.prefer) {
        let ia = pick_candidate(&cands, a, target.label())?;
        let ib = pick_candidate(&cands, b, target.label())?;
        if cands[ia].hash == cands[ib].hash {
            bail!("--a and --b name the same candidate");
        }
        if !(1..=9).contains(&args.confidence) {
            bail!("--confidence must be between 1 and 9 (got {})", args.confidence);
        }
        let kind = FeedbackKind::Comparison {
            a: Judged::new(cands[ia].text.clone()),
            b: Judged::new(cands[ib].text.clone()),
            prefer,
            confidence: args.confidence,
        };
        let id = store_answer(ctx, &target, &who, kind)?;
        println!("stored comparison {id} on node {}", target.label());
        return Ok(());
    }

    if cands.len() < 2 {
        eprintln!("node {} has {} candidate(s); drawing more…", target.label(), cands.len());
        let generator = args.generator.start(2, ctx.quiet)?;
        cands = draw(ctx, generator.as_ref(), &target, 2, args.temperature, None)?;
        if cands.len() < 2 {
            bail!("the model gave fewer than two distinct candidates for node {}", target.label());
        }
    }
    show_input(&target);
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout();
    interactive(ctx, &target, &who, &cands, first_pair, &mut input, &mut out)
}

fn show_input(target: &Target) {
    let t = &target.loaded.tree;
    println!(
        "=== node {} of {}, height {} ===",
        target.label(),
        t.book_title(),
        target.input.height
    );
    if target.input.children.is_empty() {
        println!("--- the passage ---\n{}", target.input.input);
    } else {
        println!("--- its children's summaries (open one with `rrm node show ID`) ---");
        for (label, text) in &target.input.children {
            println!("[{label}] {text}");
        }
    }
    if let Some(c) = &target.input.context {
        println!("--- previous context ---\n{c}");
    }
}

fn store_answer(
    ctx: &mut Context,
    target: &Target,
    who: &str,
    kind: FeedbackKind,
) -> anyhow::Result<String> {
    let fb =
        Feedback::new(who, &target.input.input_key, &target.input.input, target.input.height, kind)
            .at(
                Some(target.loaded.tree.book_id().as_str().to_string()),
                Some(target.label().to_string()),
            );
    Ok(feedback::put(ctx.store()?, fb)?)
}

/// Reads one line; `None` at end of input.
fn ask(
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    prompt: &str,
) -> anyhow::Result<Option<String>> {
    write!(out, "{prompt}")?;
    out.flush()?;
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim().to_string()))
}

/// Asks until the answer parses (or input ends).
fn ask_number(
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    prompt: &str,
    range: std::ops::RangeInclusive<u8>,
    default: Option<u8>,
) -> anyhow::Result<Option<u8>> {
    loop {
        let Some(answer) = ask(input, out, prompt)? else { return Ok(None) };
        if answer.is_empty() {
            if let Some(d) = default {
                return Ok(Some(d));
            }
        }
        match answer.parse::<u8>() {
            Ok(n) if range.contains(&n) => return Ok(Some(n)),
            _ => writeln!(out, "  please type a number {}-{}", range.start(), range.end())?,
        }
    }
}

fn ask_side(
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    what: &str,
) -> anyhow::Result<Option<usize>> {
    ask_number(input, out, &format!("{what} which summary (1/2)? "), 1..=2, None)
        .map(|n| n.map(|n| usize::from(n) - 1))
}

fn ask_text(
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    prompt: &str,
) -> anyhow::Result<Option<String>> {
    loop {
        let Some(answer) = ask(input, out, prompt)? else { return Ok(None) };
        if !answer.is_empty() {
            return Ok(Some(answer));
        }
        writeln!(out, "  (empty; type the text on one line)")?;
    }
}

fn interactive(
    ctx: &mut Context,
    target: &Target,
    who: &str,
    cands: &[StoredCandidate],
    first: Option<(usize, usize)>,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    // Pairs this labeler has not compared yet, the suggested one first.
    let done: std::collections::HashSet<(String, String)> = feedback::all(ctx.store()?)?
        .into_iter()
        .filter(|f| f.labeler == who && f.input_key == target.input.input_key)
        .filter_map(|f| match f.kind {
            FeedbackKind::Comparison { a, b, .. } => Some((a.hash, b.hash)),
            _ => None,
        })
        .flat_map(|(a, b)| [(a.clone(), b.clone()), (b, a)])
        .collect();
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    pairs.extend(first);
    for i in 0..cands.len() {
        for j in i + 1..cands.len() {
            if !done.contains(&(cands[i].hash.clone(), cands[j].hash.clone()))
                && first != Some((i, j))
            {
                pairs.push((i, j));
            }
        }
    }
    if pairs.is_empty() {
        writeln!(out, "you have compared every pair of this node's candidates; draw more with `rrm node sample {}`", target.label())?;
        return Ok(());
    }
    let mut stored = 0;
    'pairs: for (i, j) in pairs {
        let (a, b) = (&cands[i], &cands[j]);
        writeln!(out, "\n--- summary 1 [{i}] {} ---\n{}", &a.hash[..8], a.text)?;
        writeln!(out, "--- summary 2 [{j}] {} ---\n{}", &b.hash[..8], b.text)?;
        loop {
            let Some(key) = ask(input, out, "[1/2/t/e/w/c/l/s/q] ")? else { break 'pairs };
            let side_text = |s: usize| if s == 0 { &a.text } else { &b.text };
            let kind = match key.chars().next().map(|c| c.to_ascii_lowercase()) {
                Some(c @ ('1' | '2' | 't')) => {
                    let Some(confidence) =
                        ask_number(input, out, "confidence 1-9 [5]: ", 1..=9, Some(5))?
                    else {
                        break 'pairs;
                    };
                    let prefer = match c {
                        '1' => Preference::A,
                        '2' => Preference::B,
                        _ => Preference::Tie,
                    };
                    FeedbackKind::Comparison {
                        a: Judged::new(a.text.clone()),
                        b: Judged::new(b.text.clone()),
                        prefer,
                        confidence,
                    }
                }
                Some('e') => {
                    let Some(side) = ask_side(input, out, "edit")? else { break 'pairs };
                    let Some(edited) = ask_text(input, out, "edited summary (one line): ")? else {
                        break 'pairs;
                    };
                    if edited == *side_text(side) {
                        writeln!(out, "  (unchanged; nothing stored)")?;
                        continue;
                    }
                    FeedbackKind::Correction {
                        original: Judged::new(side_text(side).clone()),
                        edited: Judged::new(edited),
                    }
                }
                Some('w') => {
                    let Some(text) = ask_text(input, out, "your summary (one line): ")? else {
                        break 'pairs;
                    };
                    FeedbackKind::Demonstration { summary: Judged::new(text) }
                }
                Some('c') => {
                    let Some(side) = ask_side(input, out, "critique")? else { break 'pairs };
                    let Some(text) = ask_text(input, out, "critique (one line): ")? else {
                        break 'pairs;
                    };
                    FeedbackKind::Critique {
                        summary: Judged::new(side_text(side).clone()),
                        critique: text,
                    }
                }
                Some('l') => {
                    let Some(side) = ask_side(input, out, "rate")? else { break 'pairs };
                    let mut scores = [0u8; 4];
                    for (slot, name) in
                        scores.iter_mut().zip(["coverage", "accuracy", "coherence", "overall"])
                    {
                        let Some(n) =
                            ask_number(input, out, &format!("{name} 1-7: "), 1..=7, None)?
                        else {
                            break 'pairs;
                        };
                        *slot = n;
                    }
                    FeedbackKind::Likert {
                        summary: Judged::new(side_text(side).clone()),
                        scores: Likert {
                            coverage: scores[0],
                            accuracy: scores[1],
                            coherence: scores[2],
                            overall: scores[3],
                        },
                    }
                }
                Some('s') => continue 'pairs,
                Some('q') => break 'pairs,
                _ => {
                    writeln!(out, "  keys: 1 2 t (compare), e (edit), w (write), c (critique), l (Likert), s (skip), q (quit)")?;
                    continue;
                }
            };
            let compared = matches!(kind, FeedbackKind::Comparison { .. });
            let name = kind.name();
            let id = store_answer(ctx, target, who, kind)?;
            stored += 1;
            writeln!(out, "  stored {name} {}", &id[..12])?;
            if compared {
                continue 'pairs;
            }
        }
    }
    writeln!(out, "{stored} answer(s) stored for node {}", target.label())?;
    Ok(())
}
