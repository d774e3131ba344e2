//! What a person should rate next: candidate pairs where the reward ensemble disagrees most,
//! and heights with the least feedback, come first.
//!
//! The queue is built from plain data (nodes with their candidate texts, the feedback so far) and
//! a disagreement function supplied by the caller (the reward ensemble's spread of the score
//! difference of a pair), so this module needs no model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{text_hash, ComparedPairs, Feedback, FeedbackKind};

/// A node that could be rated: its candidates' texts (distinct).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueNode {
    pub input_key: String,
    pub height: u32,
    pub book: Option<String>,
    pub node: Option<String>,
    pub input: String,
    pub candidates: Vec<String>,
}

/// One suggestion: a pair of candidates of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueItem {
    pub input_key: String,
    pub height: u32,
    pub book: Option<String>,
    pub node: Option<String>,
    /// Indices into the node's candidates.
    pub a: usize,
    pub b: usize,
    pub a_hash: String,
    pub b_hash: String,
    /// The ensemble's disagreement on this pair (none without a reward model).
    pub disagreement: Option<f64>,
    /// Comparisons already stored at this height.
    pub height_data: usize,
    pub priority: f64,
}

/// One item per node (its most disputed open pair), highest priority first. A pair is open when
/// fewer than `overlap` labelers compared it and `labeler` (when given) did not. Priority =
/// disagreement + 1 / (1 + comparisons at the node's height).
pub fn build(
    nodes: &[QueueNode],
    records: &[Feedback],
    compared: &ComparedPairs,
    labeler: Option<&str>,
    overlap: usize,
    disagreement: &dyn Fn(&QueueNode, usize, usize) -> Option<f64>,
) -> Vec<QueueItem> {
    let mut per_height: BTreeMap<u32, usize> = BTreeMap::new();
    for fb in records {
        if let FeedbackKind::Comparison { .. } = &fb.kind {
            *per_height.entry(fb.height).or_default() += 1;
        }
    }
    let mut items = Vec::new();
    for node in nodes {
        let hashes: Vec<String> = node.candidates.iter().map(|c| text_hash(c)).collect();
        let height_data = per_height.get(&node.height).copied().unwrap_or(0);
        let scarcity = 1.0 / (1.0 + height_data as f64);
        let mut best: Option<QueueItem> = None;
        for (i, j) in compared.open_pairs(&node.input_key, &hashes, labeler, Some(overlap.max(1))) {
            let d = disagreement(node, i, j);
            let priority = d.unwrap_or(0.0) + scarcity;
            if best.as_ref().is_none_or(|b| priority > b.priority) {
                best = Some(QueueItem {
                    input_key: node.input_key.clone(),
                    height: node.height,
                    book: node.book.clone(),
                    node: node.node.clone(),
                    a: i,
                    b: j,
                    a_hash: hashes[i].clone(),
                    b_hash: hashes[j].clone(),
                    disagreement: d,
                    height_data,
                    priority,
                });
            }
        }
        items.extend(best);
    }
    items.sort_by(|x, y| {
        y.priority.total_cmp(&x.priority).then_with(|| x.input_key.cmp(&y.input_key))
    });
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::{Judged, Preference};

    fn node(key: &str, height: u32) -> QueueNode {
        QueueNode {
            input_key: key.into(),
            height,
            book: None,
            node: None,
            input: "in".into(),
            candidates: vec!["x".into(), "y".into(), "z".into()],
        }
    }

    #[test]
    fn disagreement_and_scarce_heights_come_first() {
        let nodes = vec![node("n0", 0), node("n1", 1)];
        let done = Feedback::new(
            "ann",
            "n0",
            "in",
            0,
            FeedbackKind::Comparison {
                a: Judged::new("x"),
                b: Judged::new("y"),
                prefer: Preference::A,
                confidence: 5,
            },
        );
        let records = std::slice::from_ref(&done);
        let compared = ComparedPairs::from_records(records);
        // No model: the height without data comes first.
        let q = build(&nodes, records, &compared, None, 1, &|_, _, _| None);
        assert_eq!(q[0].input_key, "n1");
        // The compared pair (x, y) of n0 is not suggested again.
        let n0 = q.iter().find(|i| i.input_key == "n0").unwrap();
        assert_ne!((n0.a, n0.b), (0, 1));
        // A strong disagreement outranks scarcity.
        let q = build(&nodes, records, &compared, None, 1, &|n, a, b| {
            Some(if n.input_key == "n0" && (a, b) == (1, 2) { 5.0 } else { 0.0 })
        });
        assert_eq!((q[0].input_key.as_str(), q[0].a, q[0].b), ("n0", 1, 2));
        // With an overlap of 2, another labeler still gets the pair ann compared; ann does not.
        let for_bob = build(&nodes, records, &compared, Some("bob"), 2, &|n, a, b| {
            Some(if n.input_key == "n0" && (a, b) == (0, 1) { 9.0 } else { 0.0 })
        });
        assert_eq!((for_bob[0].input_key.as_str(), for_bob[0].a, for_bob[0].b), ("n0", 0, 1));
        let for_ann = build(&nodes, records, &compared, Some("ann"), 2, &|n, a, b| {
            Some(if n.input_key == "n0" && (a, b) == (0, 1) { 9.0 } else { 0.0 })
        });
        assert!(for_ann.iter().all(|i| !(i.input_key == "n0" && (i.a, i.b) == (0, 1))));
    }
}
