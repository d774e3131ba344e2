//! Which candidate pairs have been compared, by whom: the bookkeeping behind "what can this
//! labeler compare next", the queue, the simulated labeler and overlap (several labelers on one
//! pair).
//!
//! A pair is unordered and belongs to a node's input key: (input key, {hash a, hash b}).

use std::collections::{BTreeSet, HashMap};

use super::{Feedback, FeedbackKind};

/// (input key, the smaller text hash, the larger one).
type PairKey = (String, String, String);

fn key(input_key: &str, a: &str, b: &str) -> PairKey {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    (input_key.to_string(), x.to_string(), y.to_string())
}

/// Every compared pair and the labelers who compared it.
#[derive(Debug, Clone, Default)]
pub struct ComparedPairs {
    by_pair: HashMap<PairKey, BTreeSet<String>>,
}

impl ComparedPairs {
    /// From stored feedback (comparisons only).
    pub fn from_records(records: &[Feedback]) -> ComparedPairs {
        let mut out = ComparedPairs::default();
        for fb in records {
            if let FeedbackKind::Comparison { a, b, .. } = &fb.kind {
                out.insert(&fb.input_key, &a.hash, &b.hash, &fb.labeler);
            }
        }
        out
    }

    pub fn insert(&mut self, input_key: &str, a: &str, b: &str, labeler: &str) {
        self.by_pair.entry(key(input_key, a, b)).or_default().insert(labeler.to_string());
    }

    /// How many labelers compared this pair (either order).
    pub fn count(&self, input_key: &str, a: &str, b: &str) -> usize {
        self.by_pair.get(&key(input_key, a, b)).map_or(0, BTreeSet::len)
    }

    /// Whether `labeler` compared this pair (either order).
    pub fn by(&self, labeler: &str, input_key: &str, a: &str, b: &str) -> bool {
        self.by_pair.get(&key(input_key, a, b)).is_some_and(|s| s.contains(labeler))
    }

    /// Candidate pairs (indices `i < j` into `hashes`, distinct texts) that `labeler` has not
    /// compared and that fewer than `overlap` labelers have compared (`None`: no limit).
    pub fn open_pairs(
        &self,
        input_key: &str,
        hashes: &[String],
        labeler: Option<&str>,
        overlap: Option<usize>,
    ) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                if hashes[i] == hashes[j] {
                    continue;
                }
                if labeler.is_some_and(|l| self.by(l, input_key, &hashes[i], &hashes[j])) {
                    continue;
                }
                if overlap.is_some_and(|k| self.count(input_key, &hashes[i], &hashes[j]) >= k) {
                    continue;
                }
                out.push((i, j));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_unordered_and_counted_per_labeler() {
        let mut c = ComparedPairs::default();
        c.insert("k", "b", "a", "ann");
        c.insert("k", "a", "b", "bob");
        c.insert("k", "a", "b", "ann");
        assert_eq!(c.count("k", "a", "b"), 2);
        assert!(c.by("ann", "k", "b", "a"));
        assert!(!c.by("cy", "k", "a", "b"));
        assert_eq!(c.count("other", "a", "b"), 0);
        let hashes = vec!["a".to_string(), "b".into(), "c".into(), "a".into()];
        // ann compared (a, b), at (0, 1) and (1, 3); (0, 3) is the same text twice.
        assert_eq!(c.open_pairs("k", &hashes, Some("ann"), None), vec![(0, 2), (1, 2), (2, 3)]);
        // With overlap 2, (a, b) is done for everyone.
        assert_eq!(c.open_pairs("k", &hashes, Some("cy"), Some(2)), vec![(0, 2), (1, 2), (2, 3)]);
        assert_eq!(c.open_pairs("k", &hashes, Some("cy"), Some(3)).len(), 6 - 1);
    }
}
