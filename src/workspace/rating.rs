//! Rating a node: finding it, rebuilding what it summarizes, its stored candidates, drawing more,
//! the pairs a labeler can still compare, and recording answers (each written and flushed before
//! the call returns).

use super::{trees, LoadedTree, Result, Workspace, WorkspaceError};
use crate::book::Book;
use crate::compose::sample::{self, candidates_for, NodeInput, StoredCandidate};
use crate::compose::ComposeOptions;
use crate::compose::RunRecord;
use crate::feedback::{self, ComparedPairs, Feedback, FeedbackKind};
use crate::infer::{Generator, SamplingParams};
use crate::tree::{NodeId, TaskTree};

/// A node found for rating: its tree, book and rebuilt input.
#[derive(Debug, Clone)]
pub struct RatingTarget {
    pub loaded: LoadedTree,
    pub id: NodeId,
    pub book: Book,
    pub input: NodeInput,
}

impl RatingTarget {
    pub fn label(&self) -> &str {
        &self.input.label
    }

    pub fn book_id(&self) -> &str {
        self.loaded.tree.book_id().as_str()
    }

    /// The node's distinct stored candidates, oldest first.
    pub fn candidates(&self, ws: &Workspace) -> Result<Vec<StoredCandidate>> {
        Ok(candidates_for(ws.store(), &self.input.input_key)?)
    }
}

/// Finds node `id` (a label or content-hash prefix) in `book`'s tree or in every tree, and
/// rebuilds its input.
pub fn resolve(ws: &Workspace, id: &str, book: Option<&str>, lossy: bool) -> Result<RatingTarget> {
    let (loaded, nid) = trees::find_node(ws, id, book, lossy)?;
    finish(ws, loaded, nid)
}

/// The node labelled `label` in the tree of the book with id `book_id`.
pub fn resolve_in_book(ws: &Workspace, book_id: &str, label: &str) -> Result<RatingTarget> {
    let loaded = trees::by_book_id(ws, book_id)?;
    let nid = loaded.node_id(label)?;
    finish(ws, loaded, nid)
}

/// A target from an already loaded tree. A higher node's input comes from the newest run that
/// has all its children's outputs: while a summary is under way (or after one stopped half-way)
/// the newest run may lack some, and the node stays ratable from the run before.
pub fn finish(ws: &Workspace, loaded: LoadedTree, nid: NodeId) -> Result<RatingTarget> {
    let book = loaded.require_book()?.clone();
    let store = ws.store();
    let input = match sample::node_input(store, &book, &loaded.tree, loaded.run.as_ref(), nid) {
        Ok(input) => input,
        Err(crate::compose::ComposeError::Tree { .. }) => {
            let runs = runs_newest_first(ws, &loaded.tree)?;
            input_from_runs(ws, &book, &loaded.tree, &runs, nid)?
        }
        Err(e) => return Err(e.into()),
    };
    Ok(RatingTarget { loaded, id: nid, book, input })
}

/// The runs that composed `tree`, newest first.
pub fn runs_newest_first(ws: &Workspace, tree: &TaskTree) -> Result<Vec<RunRecord>> {
    let mut runs = RunRecord::for_book(ws.store(), tree.book_id().as_str())?;
    runs.retain(|r| r.matches(tree) && !r.outputs.is_empty());
    runs.reverse();
    Ok(runs)
}

/// Node `nid`'s input as a rater sees it: from the first of `runs` (newest first) that has all
/// it needs (a leaf needs only the book). The one rule for the rating screen and the queue, so
/// the queue offers only pairs of the input the screen shows.
pub fn input_from_runs(
    ws: &Workspace,
    book: &Book,
    tree: &TaskTree,
    runs: &[RunRecord],
    nid: NodeId,
) -> Result<NodeInput> {
    let store = ws.store();
    let mut first = None;
    for run in runs {
        match sample::node_input(store, book, tree, Some(run), nid) {
            Ok(input) => return Ok(input),
            Err(e @ crate::compose::ComposeError::Tree { .. }) => {
                first.get_or_insert(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    match first {
        Some(e) => Err(e.into()),
        None => Ok(sample::node_input(store, book, tree, None, nid)?),
    }
}

/// Sampling for candidates drawn for rating: the composer's best-of-N settings, at
/// `temperature` when given.
pub fn rating_sampling(temperature: Option<f32>) -> Result<SamplingParams> {
    let mut s = ComposeOptions::default().sampling_best_of;
    if let Some(t) = temperature {
        if !(0.0..=5.0).contains(&t) || !t.is_finite() {
            return Err(WorkspaceError::Invalid(format!(
                "the temperature must be between 0 and 5 (got {t})"
            )));
        }
        s.temperature = t;
    }
    Ok(s)
}

/// Draws `k` candidates for the target with `generator` and stores them (flushed). Without an
/// explicit seed, the first seed whose draw is not stored yet is used, so every call draws anew
/// even when an earlier draw added no new text. Returns all distinct candidates now stored.
pub async fn draw(
    ws: &Workspace,
    generator: &dyn Generator,
    target: &RatingTarget,
    k: usize,
    temperature: Option<f32>,
    seed: Option<u64>,
) -> Result<Vec<StoredCandidate>> {
    let (params, seed) = draw_params(ws, generator, &target.input, k, temperature, seed)?;
    sample::sample(generator, ws.store(), &target.input, k, &params, seed).await?;
    target.candidates(ws)
}

/// The sampling and seed [`draw`] uses (blocking: it reads the store). Without an explicit seed,
/// the first seed whose draw is not stored yet.
pub fn draw_params(
    ws: &Workspace,
    generator: &dyn Generator,
    node: &NodeInput,
    k: usize,
    temperature: Option<f32>,
    seed: Option<u64>,
) -> Result<(SamplingParams, u64)> {
    if k == 0 || k > 64 {
        return Err(WorkspaceError::Invalid(format!(
            "the number of candidates to draw must be between 1 and 64 (got {k})"
        )));
    }
    let params = rating_sampling(temperature)?;
    let seed = match seed {
        Some(s) => s,
        None => {
            let mut s = 0u64;
            while ws.store().contains(
                crate::store::Table::Candidates,
                &sample::sample_key(generator, node, k, &params, s),
            )? {
                s += 1;
            }
            s
        }
    };
    Ok((params, seed))
}

/// Finds a candidate by index or by a prefix (4+ hex digits) of its hash.
pub fn pick_candidate(cands: &[StoredCandidate], spec: &str, label: &str) -> Result<usize> {
    if let Ok(i) = spec.parse::<usize>() {
        if i < cands.len() {
            return Ok(i);
        }
        if spec.len() < 4 {
            return Err(WorkspaceError::NotFound(format!(
                "node {label} has no candidate {i}: it has {} (indices 0..{}; see `rrm rate {label}` or `rrm node sample {label}`)",
                cands.len(),
                cands.len().saturating_sub(1)
            )));
        }
    }
    let matches: Vec<usize> =
        (0..cands.len()).filter(|&i| spec.len() >= 4 && cands[i].hash.starts_with(spec)).collect();
    match matches.as_slice() {
        [i] => Ok(*i),
        [] => Err(WorkspaceError::NotFound(format!(
            "node {label} has no candidate '{spec}' (give an index 0..{} or 4+ hex digits of a candidate's hash)",
            cands.len().saturating_sub(1)
        ))),
        _ => Err(WorkspaceError::Invalid(format!(
            "'{spec}' matches {} candidates of node {label}; give more digits",
            matches.len()
        ))),
    }
}

/// The pairs of `cands` that `labeler` has not compared yet, `first` (if given and open) first.
pub fn open_pairs(
    ws: &Workspace,
    target: &RatingTarget,
    labeler: &str,
    cands: &[StoredCandidate],
    first: Option<(usize, usize)>,
) -> Result<Vec<(usize, usize)>> {
    let compared = ComparedPairs::from_records(&feedback::all(ws.store())?);
    let hashes: Vec<String> = cands.iter().map(|c| c.hash.clone()).collect();
    let mut pairs = compared.open_pairs(&target.input.input_key, &hashes, Some(labeler), None);
    if let Some((i, j)) = first {
        let key = (i.min(j), i.max(j));
        if let Some(pos) = pairs.iter().position(|&p| p == key) {
            pairs.remove(pos);
            pairs.insert(0, (i, j));
        }
    }
    Ok(pairs)
}

/// Records one answer about the target (validated, written and flushed); returns its id.
pub fn record(
    ws: &Workspace,
    target: &RatingTarget,
    labeler: &str,
    kind: FeedbackKind,
) -> Result<String> {
    Ok(record_feedback(ws, target, labeler, kind)?.id)
}

/// Like [`record`], returning the stored record.
pub fn record_feedback(
    ws: &Workspace,
    target: &RatingTarget,
    labeler: &str,
    kind: FeedbackKind,
) -> Result<Feedback> {
    record_feedback_timed(ws, target, labeler, kind, None)
}

/// [`record_feedback`] with how long the answer took (ms from the item shown), when measured.
pub fn record_feedback_timed(
    ws: &Workspace,
    target: &RatingTarget,
    labeler: &str,
    kind: FeedbackKind,
    judge_ms: Option<u64>,
) -> Result<Feedback> {
    if labeler.trim().is_empty() {
        return Err(WorkspaceError::Invalid("the labeler name must not be empty".into()));
    }
    let fb = Feedback::new(
        labeler,
        &target.input.input_key,
        &target.input.input,
        target.input.height,
        kind,
    )
    .at(Some(target.book_id().to_string()), Some(target.label().to_string()))
    .timed(judge_ms);
    let id = feedback::put(ws.store(), fb.clone())?;
    debug_assert_eq!(id, fb.id);
    Ok(fb)
}
