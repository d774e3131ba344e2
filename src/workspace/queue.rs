//! What to rate next: every stored node with two or more distinct candidates, one pair per node,
//! ranked by the reward ensemble's disagreement on the pair (when a reward model is given) and by
//! how little feedback its height has ([`crate::feedback::queue`]).

use std::collections::HashMap;

use super::{Result, Workspace};
use crate::compose::sample::{candidates_by_input, node_index};
use crate::feedback::queue::{self, QueueItem, QueueNode};
use crate::feedback::{self, ComparedPairs};
use crate::infer::Encoder;
use crate::reward::{pair_disagreement, RewardModel};

/// Every stored node with two or more distinct candidates, with where it was composed.
pub fn nodes(ws: &Workspace) -> Result<Vec<QueueNode>> {
    let store = ws.store();
    let index = node_index(store)?;
    Ok(candidates_by_input(store)?
        .into_iter()
        .filter(|(_, n)| n.candidates.len() >= 2)
        .map(|(key, n)| {
            let at = index.get(&key).and_then(|refs| refs.first());
            QueueNode {
                book: at.map(|r| r.book_id.clone()),
                node: at.map(|r| r.label.clone()),
                input_key: key,
                height: n.height,
                input: n.input,
                candidates: n.candidates.into_iter().map(|c| c.text).collect(),
            }
        })
        .collect())
}

/// Who the queue is for and how many labelers should see each pair.
#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    /// Leave out pairs this labeler compared already.
    pub labeler: Option<String>,
    /// Show each pair to this many different labelers (default 1: a pair anyone compared is
    /// done).
    pub overlap: Option<usize>,
}

/// The queue, highest priority first. With a reward model (and its encoder), pairs where the
/// ensemble members disagree most come first.
pub fn items(
    ws: &Workspace,
    model: Option<(&RewardModel, &dyn Encoder)>,
    filter: &QueueFilter,
) -> Result<Vec<QueueItem>> {
    let nodes = nodes(ws)?;
    let records = feedback::all(ws.store())?;
    let mut members: HashMap<String, Vec<Vec<f32>>> = HashMap::new();
    if let Some((model, encoder)) = model {
        model.check_encoder(encoder)?;
        let mut featurizer = super::embeddings::featurizer(ws, encoder);
        for n in &nodes {
            let texts: Vec<&str> = n.candidates.iter().map(String::as_str).collect();
            members.insert(
                n.input_key.clone(),
                model.member_scores(&mut featurizer, n.height, &n.input, &texts)?,
            );
        }
    }
    let disagreement = |n: &QueueNode, i: usize, j: usize| -> Option<f64> {
        members.get(&n.input_key).map(|m| pair_disagreement(m, i, j))
    };
    let compared = ComparedPairs::from_records(&records);
    Ok(queue::build(
        &nodes,
        &records,
        &compared,
        filter.labeler.as_deref(),
        filter.overlap.unwrap_or(1),
        &disagreement,
    ))
}
