//! What to rate next: every stored node with two or more distinct candidates, one pair per node,
//! ranked by the reward ensemble's disagreement on the pair (when a reward model is given) and by
//! how little feedback its height has ([`crate::feedback::queue`]).
//!
//! Two more sources shape the order:
//! - **asked** nodes ([`ask`], under `ask/<input key>` in [`Table::Meta`]): a running job that
//!   waits for a person's judgment (`summarize --ask`, to come) puts its node here; its items
//!   come before every ranked one, oldest request first, until the asker removes the request
//!   ([`answered`]).
//! - **in-flight** pairs ([`InFlight`]): pairs handed to a labeler who has not answered yet (the
//!   web app leases them). They count towards the overlap as if answered, so with several
//!   labelers at once no pair is shown to more people than the overlap asks for.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Result, Workspace};
use crate::compose::sample::candidates_by_input;
use crate::feedback::queue::{self, QueueItem, QueueNode};
use crate::feedback::{self, ComparedPairs, Feedback};
use crate::infer::Encoder;
use crate::reward::{pair_disagreement, RewardModel};
use crate::store::Table;

/// Every stored node with two or more distinct candidates, with the book and node whose input
/// it is **now** (the input the rating screen shows: the newest run that has the node's
/// children, see [`super::rating::input_from_runs`]). Candidates of an input a newer run has
/// replaced keep their place in the store (and in training) but get no book or node, so the
/// queue does not offer a pair the screen cannot show.
pub fn nodes(ws: &Workspace) -> Result<Vec<QueueNode>> {
    let store = ws.store();
    let stored: Vec<_> =
        candidates_by_input(store)?.into_iter().filter(|(_, n)| n.candidates.len() >= 2).collect();
    let at = if stored.is_empty() { HashMap::new() } else { current_inputs(ws)? };
    Ok(stored
        .into_iter()
        .map(|(key, n)| {
            let here = at.get(&key).cloned();
            QueueNode {
                book: here.as_ref().map(|(b, _)| b.clone()),
                node: here.map(|(_, l)| l),
                input_key: key,
                height: n.height,
                input: n.input,
                candidates: n.candidates.into_iter().map(|c| c.text).collect(),
            }
        })
        .collect())
}

/// Input key → (book id, label) of every node of the stored trees, by the input it has now (a
/// tree whose book cannot be read, or a node whose input cannot be rebuilt, is passed over).
fn current_inputs(ws: &Workspace) -> Result<HashMap<String, (String, String)>> {
    let mut out = HashMap::new();
    for book_id in ws.store().keys(Table::TaskTrees)? {
        let Ok(loaded) = super::trees::by_book_id(ws, &book_id) else { continue };
        let Some(book) = loaded.book.as_ref() else { continue };
        let runs = super::rating::runs_newest_first(ws, &loaded.tree)?;
        for nid in loaded.tree.nodes_topological() {
            let input = super::rating::input_from_runs(ws, book, &loaded.tree, &runs, nid);
            if let Ok(input) = input {
                let label = loaded.tree.node(nid).label.clone();
                out.entry(input.input_key).or_insert_with(|| (book_id.clone(), label));
            }
        }
    }
    Ok(out)
}

/// A pair handed to a labeler who has not answered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub input_key: String,
    pub a_hash: String,
    pub b_hash: String,
    pub labeler: String,
}

/// Who the queue is for and how many labelers should see each pair.
#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    /// Leave out pairs this labeler compared already.
    pub labeler: Option<String>,
    /// Show each pair to this many different labelers (default 1: a pair anyone compared is
    /// done).
    pub overlap: Option<usize>,
    /// Pairs handed out and not answered yet (those of `labeler` are left out of the count, so
    /// a labeler who reloads gets their pair again).
    pub in_flight: Vec<InFlight>,
}

/// Each node's reward-ensemble member scores of its candidates, by input key.
pub type MemberScores = HashMap<String, Vec<Vec<f32>>>;

/// The ensemble members' scores of every node's candidates (for ranking by disagreement).
pub fn member_scores(
    ws: &Workspace,
    nodes: &[QueueNode],
    model: &RewardModel,
    encoder: &dyn Encoder,
) -> Result<MemberScores> {
    model.check_encoder(encoder)?;
    let mut members = MemberScores::new();
    let mut featurizer = super::embeddings::featurizer(ws, encoder);
    for n in nodes {
        let texts: Vec<&str> = n.candidates.iter().map(String::as_str).collect();
        members.insert(
            n.input_key.clone(),
            model.member_scores(&mut featurizer, n.height, &n.input, &texts)?,
        );
    }
    Ok(members)
}

/// The queue over given data (the web app keeps `nodes`, `records` and `members` in memory):
/// asked nodes first (in `asked` order), then by priority.
pub fn rank(
    nodes: &[QueueNode],
    records: &[Feedback],
    members: &MemberScores,
    asked: &[AskRequest],
    filter: &QueueFilter,
) -> Vec<QueueItem> {
    let disagreement = |n: &QueueNode, i: usize, j: usize| -> Option<f64> {
        members.get(&n.input_key).map(|m| pair_disagreement(m, i, j))
    };
    let mut compared = ComparedPairs::from_records(records);
    for f in &filter.in_flight {
        if filter.labeler.as_deref() != Some(f.labeler.as_str()) {
            compared.insert(&f.input_key, &f.a_hash, &f.b_hash, &f.labeler);
        }
    }
    let mut items = queue::build(
        nodes,
        records,
        &compared,
        filter.labeler.as_deref(),
        filter.overlap.unwrap_or(1),
        &disagreement,
    );
    if !asked.is_empty() {
        let order: HashMap<&str, usize> =
            asked.iter().enumerate().map(|(i, a)| (a.input_key.as_str(), i)).collect();
        // Stable: asked items by request order, the rest keep their ranking.
        items.sort_by_key(|item| order.get(item.input_key.as_str()).copied().unwrap_or(usize::MAX));
    }
    items
}

/// The queue, highest priority first. With a reward model (and its encoder), pairs where the
/// ensemble members disagree most come first; asked nodes come before all.
pub fn items(
    ws: &Workspace,
    model: Option<(&RewardModel, &dyn Encoder)>,
    filter: &QueueFilter,
) -> Result<Vec<QueueItem>> {
    let nodes = nodes(ws)?;
    let records = feedback::all(ws.store())?;
    let members = match model {
        Some((model, encoder)) => member_scores(ws, &nodes, model, encoder)?,
        None => MemberScores::new(),
    };
    Ok(rank(&nodes, &records, &members, &asked(ws)?, filter))
}

/// The key prefix of ask requests in [`Table::Meta`].
pub const ASK_PREFIX: &str = "ask/";

/// A node a running job waits on a person for: its items go to the head of the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskRequest {
    pub input_key: String,
    pub book: String,
    pub node: String,
    /// Who asks (e.g. the run or job id), for the jobs page and for cleaning up.
    pub by: String,
    pub asked_unix: u64,
}

/// Puts `request` at the head of the queue (written and flushed).
pub fn ask(ws: &Workspace, request: &AskRequest) -> Result<()> {
    let key = format!("{ASK_PREFIX}{}", request.input_key);
    ws.store().put(Table::Meta, &key, request)?;
    ws.store().flush()?;
    Ok(())
}

/// Every open ask request, oldest first.
pub fn asked(ws: &Workspace) -> Result<Vec<AskRequest>> {
    let mut out: Vec<AskRequest> = ws
        .store()
        .scan_lenient::<AskRequest>(Table::Meta, ASK_PREFIX)?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    out.sort_by(|a, b| a.asked_unix.cmp(&b.asked_unix).then_with(|| a.input_key.cmp(&b.input_key)));
    Ok(out)
}

/// Removes the ask request of `input_key` (the asker got its answer); false when none.
pub fn answered(ws: &Workspace, input_key: &str) -> Result<bool> {
    let removed = ws.store().remove(Table::Meta, &format!("{ASK_PREFIX}{input_key}"))?;
    ws.store().flush()?;
    Ok(removed)
}
