//! What a person browsing the workspace sees first: every book with its tree and how far rating
//! has come ([`books`]), and a tree's nodes with their summary, candidates, ratings and the
//! reward ensemble's uncertainty ([`tree_nodes`]). Plain data for the web app's pages and API.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::{books, trees, LoadedTree, Result, Workspace};
use crate::book::BookRecord;
use crate::compose::sample::{self, StoredNode};
use crate::compose::NodeOutput;
use crate::feedback::queue::QueueItem;
use crate::feedback::Feedback;
use crate::infer::Encoder;
use crate::reward::RewardModel;
use crate::store::Table;
use crate::tree::{NodeId, TreeRecord};

/// One book as the books page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct BookOverview {
    pub id: String,
    pub title: String,
    pub source: String,
    /// `present`, or why the text is not at hand.
    pub status: String,
    pub has_tree: bool,
    pub nodes: usize,
    pub leaves: usize,
    pub height: u32,
    /// Nodes with a summary in the newest run.
    pub summarized: usize,
    /// Nodes with at least one piece of feedback.
    pub rated: usize,
    /// Items of the queue (for whoever asked) in this book.
    pub queued: usize,
}

/// Every recorded book (and every tree whose book is recorded), by title.
pub fn books(
    ws: &Workspace,
    records: &[Feedback],
    queue: &[QueueItem],
) -> Result<Vec<BookOverview>> {
    let mut rated: HashMap<&str, HashSet<&str>> = HashMap::new();
    for fb in records {
        if let (Some(book), Some(node)) = (&fb.book, &fb.node) {
            rated.entry(book.as_str()).or_default().insert(node.as_str());
        }
    }
    let mut queued: HashMap<&str, usize> = HashMap::new();
    for item in queue {
        if let Some(book) = &item.book {
            *queued.entry(book.as_str()).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for (id, record) in ws.store().scan_lenient::<BookRecord>(Table::Books, "")? {
        let status = books::status(ws, &record.id)?;
        let tree = ws.store().get::<TreeRecord>(Table::TaskTrees, &id).ok().flatten();
        let mut view = BookOverview {
            title: record.title.clone(),
            source: record.source.to_string(),
            status: match &status {
                books::BookStatus::Present(_) => "present".into(),
                other => other.describe(),
            },
            has_tree: false,
            nodes: 0,
            leaves: 0,
            height: 0,
            summarized: 0,
            rated: rated.get(id.as_str()).map_or(0, HashSet::len),
            queued: queued.get(id.as_str()).copied().unwrap_or(0),
            id,
        };
        if let Some(tree) = tree.and_then(|r| r.tree().ok()) {
            let mut loaded = LoadedTree { tree, book: None, run: None };
            trees::attach_run(ws, &mut loaded)?;
            view.has_tree = true;
            view.nodes = loaded.tree.len();
            view.leaves = loaded.tree.leaves().len();
            view.height = loaded.tree.max_height();
            view.summarized = loaded.run.as_ref().map_or(0, |r| r.outputs.len());
        }
        out.push(view);
    }
    out.sort_by(|a, b| a.title.cmp(&b.title).then_with(|| a.id.cmp(&b.id)));
    Ok(out)
}

/// One node of a tree as the tree page shows it, with its children.
#[derive(Debug, Clone, Serialize)]
pub struct TreeNodeView {
    pub id: String,
    pub height: u32,
    /// The chosen summary of the newest run, if any.
    pub summary: Option<String>,
    /// Its first 160 characters on one line.
    pub preview: Option<String>,
    /// Distinct stored candidates.
    pub candidates: usize,
    /// Feedback records on this node.
    pub ratings: usize,
    /// How much the reward ensemble's members disagree about the chosen summary against its
    /// closest other candidate (the standard deviation over members of their score difference;
    /// with a reward model and at least two candidates).
    pub uncertainty: Option<f32>,
    pub children: Vec<TreeNodeView>,
}

/// How much an ensemble's members (`K × n`, candidate 0 the chosen one) disagree about the chosen
/// candidate against its closest rival (the other candidate with the highest mean): the spread
/// over members of their score difference. `None` with fewer than two candidates.
fn rival_spread(members: &[Vec<f32>]) -> Option<f32> {
    let scores = crate::reward::ensemble_scores(members, 0.0);
    let rival = (1..scores.len()).max_by(|&a, &b| scores[a].mean().total_cmp(&scores[b].mean()))?;
    crate::compose::select::pair_spread(&scores[0], &scores[rival])
}

/// Every node's input key (from the newest run's outputs; for a leaf without one, rebuilt from
/// the book).
pub fn input_keys(ws: &Workspace, loaded: &LoadedTree) -> Result<HashMap<NodeId, String>> {
    let tree = &loaded.tree;
    let mut keys = HashMap::new();
    for id in tree.nodes_topological() {
        let label = &tree.node(id).label;
        let from_run = match loaded.run.as_ref().and_then(|r| r.outputs.get(label)) {
            Some(key) => ws.store().get::<NodeOutput>(Table::Outputs, key)?.map(|o| o.input_key),
            None => None,
        };
        let key = match (from_run, &loaded.book) {
            (Some(k), _) => Some(k),
            (None, Some(book)) if tree.node(id).is_leaf() => {
                sample::node_input(ws.store(), book, tree, None, id).ok().map(|i| i.input_key)
            }
            _ => None,
        };
        if let Some(k) = key {
            keys.insert(id, k);
        }
    }
    Ok(keys)
}

/// The tree, root first, each node with its counts. With a reward model, each summary's
/// ensemble uncertainty (embeddings cached in the store).
pub fn tree_nodes(
    ws: &Workspace,
    loaded: &LoadedTree,
    records: &[Feedback],
    model: Option<(&RewardModel, &dyn Encoder)>,
) -> Result<TreeNodeView> {
    let tree = &loaded.tree;
    let keys = input_keys(ws, loaded)?;
    let stored: BTreeMap<String, StoredNode> = sample::candidates_by_input(ws.store())?;
    let mut ratings: HashMap<&str, usize> = HashMap::new();
    for fb in records {
        *ratings.entry(fb.input_key.as_str()).or_default() += 1;
    }
    let mut uncertainty: HashMap<NodeId, f32> = HashMap::new();
    if let Some((model, encoder)) = model {
        model.check_encoder(encoder)?;
        let mut featurizer = super::embeddings::featurizer(ws, encoder);
        for id in tree.nodes_topological() {
            let (Some(key), Some(summary)) = (keys.get(&id), tree.node(id).output.as_deref())
            else {
                continue;
            };
            let Some(node) = stored.get(key) else { continue };
            // The chosen summary against the node's other candidates: one member's score alone
            // carries that member's own offset, so only differences say how sure it is.
            let mut texts: Vec<&str> = vec![summary];
            texts.extend(node.candidates.iter().map(|c| c.text.as_str()).filter(|t| *t != summary));
            if texts.len() < 2 {
                continue;
            }
            let members = model.member_scores(&mut featurizer, node.height, &node.input, &texts)?;
            if let Some(spread) = rival_spread(&members) {
                uncertainty.insert(id, spread);
            }
        }
    }
    fn build(
        tree: &crate::tree::TaskTree,
        id: NodeId,
        keys: &HashMap<NodeId, String>,
        stored: &BTreeMap<String, StoredNode>,
        ratings: &HashMap<&str, usize>,
        uncertainty: &HashMap<NodeId, f32>,
    ) -> TreeNodeView {
        let node = tree.node(id);
        let key = keys.get(&id).map(String::as_str);
        TreeNodeView {
            id: node.label.clone(),
            height: node.height,
            summary: node.output.clone(),
            preview: node.output.as_deref().map(|s| super::views::preview(s, 160)),
            candidates: key.and_then(|k| stored.get(k)).map_or(0, |n| n.candidates.len()),
            ratings: key.and_then(|k| ratings.get(k)).copied().unwrap_or(0),
            uncertainty: uncertainty.get(&id).copied(),
            children: tree
                .children(id)
                .into_iter()
                .map(|c| build(tree, c, keys, stored, ratings, uncertainty))
                .collect(),
        }
    }
    Ok(build(tree, tree.root(), &keys, &stored, &ratings, &uncertainty))
}

#[cfg(test)]
mod tests {
    use super::rival_spread;

    #[test]
    fn uncertainty_is_the_spread_of_the_difference_with_the_closest_rival_not_an_offset() {
        // Members agree on every difference but sit at different offsets: sure.
        let sure = rival_spread(&[vec![1.0, 0.0, -1.0], vec![6.0, 5.0, 4.0]]).unwrap();
        assert!(sure.abs() < 1e-6, "{sure}");
        // They disagree about the chosen one against candidate 1 (the closest by mean).
        let unsure = rival_spread(&[vec![1.0, 0.0, -3.0], vec![0.0, 1.0, -3.0]]).unwrap();
        assert!(unsure > 0.9, "{unsure}");
        assert!(rival_spread(&[vec![1.0], vec![2.0]]).is_none());
    }
}
