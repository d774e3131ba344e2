//! `summarize --ask` in a workspace: question budgets, the selector that asks, and the
//! measurement of what asking buys ([`experiment`]): with the simulated labeler answering, the
//! labeler's score of every node and of the root, against the number of questions, for several
//! budgets: asking where the ensemble is unsure as nodes finish, asking at the budget's most
//! doubtful nodes of the whole tree ([`ranked_threshold_for`]), and (as the baseline) asking at
//! the first nodes regardless.

use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Result, Workspace, WorkspaceError};
use crate::book::Book;
use crate::compose::ask::{
    ranked_threshold, run_doubts, AskPolicy, Asker, AskingSelector, SimAsker,
};
use crate::compose::{
    CandidateSet, ComposeOptions, Models, NodeOutput, Observer, RunRecord, Selector, Silent,
};
use crate::feedback::sim::SimLabeler;
use crate::infer::Generator;
use crate::store::Table;
use crate::tree::TaskTree;

/// How many questions a run may ask: a count, or a share of the tree's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Budget {
    Count(usize),
    Percent(f32),
}

impl FromStr for Budget {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Budget, String> {
        let bad =
            || format!("'{s}' is not a question budget (a count like 12, or a share like 20%)");
        match s.trim().strip_suffix('%') {
            Some(p) => {
                let p: f32 = p.trim().parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(bad());
                }
                Ok(Budget::Percent(p))
            }
            None => s.trim().parse().map(Budget::Count).map_err(|_| bad()),
        }
    }
}

impl Budget {
    /// Questions allowed for a tree of `nodes` nodes.
    pub fn questions(self, nodes: usize) -> usize {
        match self {
            Budget::Count(n) => n,
            Budget::Percent(p) => ((p / 100.0) * nodes as f32).round() as usize,
        }
    }
}

/// A selector that asks `asker` where `inner` (a reward ensemble) is unsure.
pub fn asking_selector(
    ws: &Workspace,
    inner: Arc<dyn Selector>,
    asker: Arc<dyn Asker>,
    threshold: f32,
    budget: Option<usize>,
) -> Result<Arc<AskingSelector>> {
    if threshold.is_nan() || threshold <= 0.0 {
        return Err(WorkspaceError::Invalid(format!(
            "the ask threshold must be positive (got {threshold})"
        )));
    }
    Ok(Arc::new(AskingSelector::new(
        inner,
        asker,
        AskPolicy { threshold, budget },
        ws.store().clone(),
    )))
}

/// The latest run of `book` over `tree` with the selector `selector_id`.
pub fn latest_run(
    ws: &Workspace,
    book: &Book,
    tree: &TaskTree,
    selector_id: &str,
) -> Result<RunRecord> {
    RunRecord::for_book(ws.store(), book.id().as_str())?
        .into_iter()
        .rev()
        .find(|r| r.selector == selector_id && r.matches(tree))
        .ok_or_else(|| {
            WorkspaceError::NotFound(format!("the run of {} with {selector_id}", book.title()))
        })
}

/// Plans a budget of `budget` questions for `book`: composes it once with `inner` alone (every
/// candidate is cached, so the asking run after it generates only above the nodes whose pick
/// changes), reads each node's doubt, and returns the threshold that lets the `budget` most
/// doubtful nodes through, never above `cap` ([`ranked_threshold`]).
#[allow(clippy::too_many_arguments)]
pub async fn ranked_threshold_for(
    ws: &Workspace,
    book: &Book,
    tree: &TaskTree,
    models: impl Into<Models>,
    inner: Arc<dyn Selector>,
    options: ComposeOptions,
    budget: usize,
    cap: f32,
    observer: &dyn Observer,
) -> Result<f32> {
    let id = inner.id();
    super::summarize::compose(ws, book, tree, models, inner, options, observer).await?;
    let run = latest_run(ws, book, tree, &id)?;
    let doubts: Vec<f32> = run_doubts(ws.store(), &run)?.into_iter().map(|(_, d)| d).collect();
    Ok(ranked_threshold(&doubts, budget, cap))
}

/// The simulated labeler's score of a run's nodes: (root, mean over every node with an output).
pub fn labeler_scores(ws: &Workspace, run: &RunRecord, sim: &SimLabeler) -> Result<(f64, f64)> {
    let store = ws.store();
    let (mut total, mut n, mut root) = (0.0, 0usize, f64::NAN);
    for (label, key) in &run.outputs {
        let Some(out) = store.get::<NodeOutput>(Table::Outputs, key)? else { continue };
        let Some(set) = store.get::<CandidateSet>(Table::Candidates, &out.gen_key)? else {
            continue;
        };
        let s = sim.score(&set.input, &out.text);
        total += s;
        n += 1;
        if *label == run.root_label {
            root = s;
        }
    }
    Ok((root, if n == 0 { f64::NAN } else { total / n as f64 }))
}

/// How many of a run's nodes were decided by a person's answer (recorded in their scores).
pub fn asked_in(ws: &Workspace, run: &RunRecord) -> Result<usize> {
    let mut n = 0;
    for key in run.outputs.values() {
        if let Some(out) = ws.store().get::<NodeOutput>(Table::Outputs, key)? {
            if out.scores.iter().any(|s| s.parts.contains_key("asked")) {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// One configuration of the experiment, summed over books.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AskRow {
    /// `none`; `uncertain` (where unsure, as nodes finish); `ranked` (the budget's most
    /// doubtful nodes of the tree); `always` (the first nodes, unsure or not).
    pub strategy: String,
    pub budget: String,
    pub questions: usize,
    pub nodes: usize,
    /// Mean over books of the labeler's score of the root.
    pub root_score: f64,
    /// Mean over books of the labeler's mean score over all nodes.
    pub node_score: f64,
}

/// What the experiment needs: books with their trees, the policy, the reward ensemble as a
/// selector, the labeler that answers (and judges), the compose options (best-of-N).
pub struct Experiment<'a> {
    pub books: &'a [(Book, TaskTree)],
    pub generator: Arc<dyn Generator>,
    pub reward: Arc<dyn Selector>,
    pub labeler: SimLabeler,
    pub options: ComposeOptions,
    pub threshold: f32,
}

/// How a configuration asks.
#[derive(Debug, Clone, Copy)]
enum Asking {
    Never,
    /// Below this threshold, as nodes finish, until the budget is spent.
    Threshold(f32, Budget),
    /// The budget's most doubtful nodes of the tree.
    Ranked(Budget),
}

/// (strategy, budget name, how it asks).
type Config = (String, String, Asking);

/// Runs every (strategy, budget) over every book; each run is composed (cached by content, so
/// candidates are generated once and only picks and what depends on them change).
pub async fn experiment(
    ws: &Workspace,
    e: &Experiment<'_>,
    budgets: &[Budget],
) -> Result<Vec<AskRow>> {
    let mut configs: Vec<Config> = vec![("none".into(), "0".into(), Asking::Never)];
    for &b in budgets {
        let name = match b {
            Budget::Count(n) => n.to_string(),
            Budget::Percent(p) => format!("{p}%"),
        };
        if b.questions(1000) == 0 {
            continue;
        }
        configs.push(("uncertain".into(), name.clone(), Asking::Threshold(e.threshold, b)));
        configs.push(("ranked".into(), name.clone(), Asking::Ranked(b)));
        configs.push(("always".into(), name, Asking::Threshold(f32::INFINITY, b)));
    }
    let mut rows = Vec::new();
    for (strategy, budget_name, ask) in configs {
        let (mut questions, mut nodes, mut root, mut node) = (0, 0, 0.0, 0.0);
        for (book, tree) in e.books {
            let asking = match ask {
                Asking::Never => None,
                Asking::Threshold(threshold, budget) => {
                    Some((threshold, budget.questions(tree.len())))
                }
                Asking::Ranked(budget) => {
                    let questions = budget.questions(tree.len());
                    let threshold = ranked_threshold_for(
                        ws,
                        book,
                        tree,
                        Arc::clone(&e.generator),
                        Arc::clone(&e.reward),
                        e.options.clone(),
                        questions,
                        f32::INFINITY,
                        &Silent,
                    )
                    .await?;
                    Some((threshold, questions))
                }
            };
            let selector: Arc<dyn Selector> = match asking {
                None => Arc::clone(&e.reward),
                Some((threshold, questions)) => {
                    let asker = Arc::new(SimAsker::measuring(e.labeler.clone(), 7));
                    asking_selector(ws, Arc::clone(&e.reward), asker, threshold, Some(questions))?
                }
            };
            let generator = Arc::clone(&e.generator);
            let options = e.options.clone();
            super::summarize::compose(
                ws,
                book,
                tree,
                generator,
                Arc::clone(&selector),
                options,
                &Silent,
            )
            .await?;
            let run = latest_run(ws, book, tree, &selector.id())?;
            let (r, n) = labeler_scores(ws, &run, &e.labeler)?;
            questions += asked_in(ws, &run)?;
            root += r;
            node += n;
            nodes += tree.len();
        }
        let k = e.books.len().max(1) as f64;
        rows.push(AskRow {
            strategy,
            budget: budget_name,
            questions,
            nodes,
            root_score: root / k,
            node_score: node / k,
        });
    }
    Ok(rows)
}
