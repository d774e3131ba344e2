//! `rrm rate ID` (interactive or scripted): recording a person's judgments of a node's
//! candidates as feedback.
//!
//! The interactive rater reads one answer per line from stdin (its first character is the key),
//! so it works in any terminal and can be driven by a script; every answer is stored (and
//! flushed) the moment it is given.

use std::io::{BufRead, Write};

use anyhow::{anyhow, bail, Context as _};
use clap::Args;

use super::args::{labeler, EncoderArgs, GeneratorOptions, WorkspaceArgs};
use super::Context;
use crate::compose::sample::StoredCandidate;
use crate::feedback::{FeedbackKind, Judged, Likert, Preference};
use crate::workspace::queue::{self, QueueFilter};
use crate::workspace::rating::{self, RatingTarget};
use crate::workspace::summarize::load_reward_model_if_any;
use crate::workspace::Workspace;

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
    /// Rate the top of `rrm feedback queue` (ranked with --reward-model when one is trained).
    #[arg(long)]
    pub next: bool,
    /// With --next: the reward model whose disagreement ranks the queue (`latest`, a hash, a
    /// folder, or `none`).
    #[arg(long, default_value = "latest", value_name = "PATH|latest|none")]
    pub reward_model: String,
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
    pub encoder: EncoderArgs,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

pub fn run(ctx: &mut Context, args: RateArgs) -> anyhow::Result<()> {
    let who = labeler(&args.labeler);
    let progress = ctx.progress();
    let ws = ctx.workspace(&args.ws)?.clone();
    let (target, first_pair) = if args.next {
        let model = match args.reward_model.as_str() {
            "none" => None,
            spec => load_reward_model_if_any(&ws, spec)?,
        };
        let encoder = match &model {
            Some(_) => Some(ws.encoder(&args.encoder.encoder, progress)?),
            None => None,
        };
        let ranked = model.as_ref().zip(encoder.as_deref());
        let filter = QueueFilter { labeler: Some(who.clone()), overlap: None };
        let items = queue::items(&ws, ranked, &filter)?;
        let top = items.into_iter().find(|i| i.book.is_some() && i.node.is_some()).ok_or_else(|| {
            anyhow!("the queue is empty: no stored node has two candidates you have not compared (sample some with `rrm node sample ID`)")
        })?;
        let (book, node) =
            (top.book.clone().unwrap_or_default(), top.node.clone().unwrap_or_default());
        let target = rating::resolve_in_book(&ws, &book, &node)?;
        let cands = target.candidates(&ws)?;
        let a = cands.iter().position(|c| c.hash == top.a_hash);
        let b = cands.iter().position(|c| c.hash == top.b_hash);
        (target, a.zip(b))
    } else {
        let id = args.id.as_deref().unwrap_or_default();
        (rating::resolve(&ws, id, args.book.as_deref(), args.lossy)?, None)
    };
    let mut cands = target.candidates(&ws)?;

    if let (Some(a), Some(b), Some(prefer)) = (&args.a, &args.b, args.prefer) {
        let ia = rating::pick_candidate(&cands, a, target.label())?;
        let ib = rating::pick_candidate(&cands, b, target.label())?;
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
        let id = rating::record(&ws, &target, &who, kind)?;
        println!("stored comparison {id} on node {}", target.label());
        return Ok(());
    }

    if cands.len() < 2 {
        eprintln!("node {} has {} candidate(s); drawing more…", target.label(), cands.len());
        let generator = args.generator.start(&args.ws.models, 2, progress)?;
        let runtime = super::args::runtime()?;
        cands = runtime
            .block_on(rating::draw(&ws, generator.as_ref(), &target, 2, args.temperature, None))
            .with_context(|| format!("sampling candidates for node {}", target.label()))?;
        if cands.len() < 2 {
            bail!("the model gave fewer than two distinct candidates for node {}", target.label());
        }
    }
    show_input(&target);
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout();
    interactive(&ws, &target, &who, &cands, first_pair, &mut input, &mut out)
}

fn show_input(target: &RatingTarget) {
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
    ws: &Workspace,
    target: &RatingTarget,
    who: &str,
    cands: &[StoredCandidate],
    first: Option<(usize, usize)>,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    // Pairs this labeler has not compared yet, the suggested one first.
    let pairs = rating::open_pairs(ws, target, who, cands, first)?;
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
            let id = rating::record(ws, target, who, kind)?;
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
