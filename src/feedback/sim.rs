//! A simulated labeler: a known preference function over (input, summary), so the feedback →
//! reward model → best-of-N loop can be tested without people.
//!
//! [`SimLabeler::score`] is the coverage of the input's *salient* words — names (capitalized
//! words that are not sentence-initial function words) and its most frequent content words —
//! in the summary, minus a length penalty for summaries longer than a target (a fifth of the
//! input, at least 12 words), minus what a careful reader also holds against a summary
//! ([`crate::grounding`]): content the input does not support (invented names, numbers and
//! words), and verbatim copying of the input beyond what a summary needs (the share of its
//! 4-grams found in the input above `copy_free`). Without those two terms a policy trained
//! against this labeler learned to copy the passage's opening lines. [`SimLabeler::compare`] turns two scores into a
//! [`FeedbackKind::Comparison`] exactly as a person's would be stored, flipping the answer with
//! probability `noise`.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};

use super::queue::QueueNode;
use super::{text_hash, ComparedPairs, Feedback, FeedbackKind, Judged, Preference};

/// Words that never count as salient.
pub(crate) const STOPWORDS: &[&str] = &[
    "a", "about", "after", "again", "all", "also", "an", "and", "any", "are", "as", "at", "be",
    "because", "been", "before", "being", "but", "by", "can", "could", "did", "do", "does", "down",
    "each", "even", "for", "from", "had", "has", "have", "he", "her", "here", "him", "his", "how",
    "i", "if", "in", "into", "is", "it", "its", "just", "like", "made", "many", "may", "me",
    "more", "most", "much", "must", "my", "never", "no", "not", "now", "of", "on", "once", "one",
    "only", "or", "other", "our", "out", "over", "part", "said", "same", "she", "should", "so",
    "some", "such", "than", "that", "the", "their", "them", "then", "there", "these", "they",
    "this", "those", "through", "to", "too", "under", "until", "up", "upon", "very", "was", "we",
    "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with",
    "would", "you", "your", "summary", "passage", "story",
];

/// The known preference function and its noise.
#[derive(Debug, Clone)]
pub struct SimLabeler {
    /// Stored as the labeler id.
    pub name: String,
    /// Probability of flipping each answer.
    pub noise: f64,
    /// Content words (besides names) counted as salient.
    pub top_words: usize,
    /// Penalty per unit of length beyond the target (in multiples of the target).
    pub length_weight: f64,
    /// Penalty per unit of unsupported-content rate.
    pub invention_weight: f64,
    /// Penalty per unit of copied-4-gram share above `copy_free`.
    pub copy_weight: f64,
    pub copy_free: f64,
}

impl SimLabeler {
    pub fn new(name: &str, noise: f64) -> SimLabeler {
        SimLabeler {
            name: name.to_string(),
            noise,
            top_words: 12,
            length_weight: 0.5,
            invention_weight: 0.5,
            copy_weight: 1.0,
            copy_free: 0.4,
        }
    }

    /// The salient words of `input`, lowercased.
    pub fn salient(&self, input: &str) -> BTreeSet<String> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut names = BTreeSet::new();
        for raw in input.split(|c: char| !c.is_alphanumeric() && c != '\'') {
            let word = raw.trim_matches('\'');
            if word.chars().count() < 3 {
                continue;
            }
            let lower = word.to_lowercase();
            if STOPWORDS.contains(&lower.as_str()) || lower.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            if word.chars().next().is_some_and(char::is_uppercase) {
                names.insert(lower.clone());
            } else if word.chars().count() >= 4 {
                *counts.entry(lower).or_default() += 1;
            }
        }
        let mut ranked: Vec<_> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        names.into_iter().chain(ranked.into_iter().take(self.top_words).map(|(w, _)| w)).collect()
    }

    /// The labeler's score of `summary` as a summary of `input` (higher is better).
    pub fn score(&self, input: &str, summary: &str) -> f64 {
        let salient = self.salient(input);
        let words: BTreeSet<String> = summary
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .map(|w| w.trim_matches('\'').to_lowercase())
            .filter(|w| !w.is_empty())
            .collect();
        let coverage = if salient.is_empty() {
            0.0
        } else {
            salient.iter().filter(|w| words.contains(*w)).count() as f64 / salient.len() as f64
        };
        let input_words = input.split_whitespace().count() as f64;
        let target = (input_words / 5.0).max(12.0);
        let len = summary.split_whitespace().count() as f64;
        let grounded = crate::grounding::check(input, summary);
        coverage
            - self.length_weight * (len / target - 1.0).max(0.0)
            - self.invention_weight * grounded.unsupported_rate
            - self.copy_weight * (grounded.copied_4gram_share - self.copy_free).max(0.0)
    }

    /// Compares `a` and `b` as summaries of `input`: the answer a person would give, flipped with
    /// probability `noise` (drawn from `rng`). Confidence grows with the score gap.
    pub fn compare(&self, input: &str, a: &str, b: &str, rng: &mut impl Rng) -> FeedbackKind {
        let (sa, sb) = (self.score(input, a), self.score(input, b));
        let gap = sa - sb;
        let mut prefer = if gap.abs() < 1e-9 {
            Preference::Tie
        } else if gap > 0.0 {
            Preference::A
        } else {
            Preference::B
        };
        if self.noise > 0.0 && rng.random_bool(self.noise.clamp(0.0, 1.0)) {
            prefer = match prefer {
                Preference::A => Preference::B,
                Preference::B => Preference::A,
                Preference::Tie => Preference::Tie,
            };
        }
        let confidence = (1.0 + (gap.abs() / 0.25).min(1.0) * 8.0).round() as u8;
        FeedbackKind::Comparison { a: Judged::new(a), b: Judged::new(b), prefer, confidence }
    }
}

/// A seeded RNG for simulations.
/// A simulated labeling campaign: up to `count` comparisons by `labeler` over `nodes`, on pairs it
/// has not compared yet (per [`ComparedPairs`] of `records`), shuffled within each node and taken
/// round-robin over nodes so every node gets some. Returns the records (not stored).
pub fn campaign(
    labeler: &SimLabeler,
    nodes: &[QueueNode],
    records: &[Feedback],
    count: usize,
    seed: u64,
) -> Vec<Feedback> {
    use rand::seq::SliceRandom;
    let mut rng = rng(seed);
    let compared = ComparedPairs::from_records(records);
    let mut per_node: Vec<Vec<(usize, usize)>> = nodes
        .iter()
        .map(|n| {
            let hashes: Vec<String> = n.candidates.iter().map(|c| text_hash(c)).collect();
            let mut pairs: Vec<(usize, usize)> = compared
                .open_pairs(&n.input_key, &hashes, Some(&labeler.name), None)
                .into_iter()
                .map(|(i, j)| if rng.random_bool(0.5) { (i, j) } else { (j, i) })
                .collect();
            pairs.shuffle(&mut rng);
            pairs
        })
        .collect();
    let mut out = Vec::new();
    'outer: loop {
        let mut any = false;
        for (n, pairs) in nodes.iter().zip(per_node.iter_mut()) {
            if out.len() >= count {
                break 'outer;
            }
            if let Some((i, j)) = pairs.pop() {
                any = true;
                let kind = labeler.compare(&n.input, &n.candidates[i], &n.candidates[j], &mut rng);
                out.push(
                    Feedback::new(&labeler.name, &n.input_key, &n.input, n.height, kind)
                        .at(n.book.clone(), n.node.clone()),
                );
            }
        }
        if !any {
            break;
        }
    }
    out
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = "Marigold walked to the mill by the river. The miller told Marigold \
        that the flood had drowned the sheep, and the village elders argued about the flood \
        all night by the mill.";

    #[test]
    fn coverage_beats_off_topic_and_length_is_penalized() {
        let sim = SimLabeler::new("sim", 0.0);
        let salient = sim.salient(INPUT);
        assert!(salient.contains("marigold") && salient.contains("flood"), "{salient:?}");
        let good = "Marigold hears from the miller that the flood drowned the sheep.";
        let off = "A sailor sings about the sea.";
        assert!(sim.score(INPUT, good) > sim.score(INPUT, off));
        let long = format!("{good} {}", "and then more words ".repeat(30));
        assert!(sim.score(INPUT, &long) < sim.score(INPUT, good));
        match sim.compare(INPUT, off, good, &mut rng(1)) {
            FeedbackKind::Comparison { prefer, confidence, .. } => {
                assert_eq!(prefer, Preference::B);
                assert!((1..=9).contains(&confidence));
            }
            other => panic!("{other:?}"),
        }
        // Noise 1 flips every answer.
        let flip = SimLabeler::new("sim", 1.0);
        match flip.compare(INPUT, off, good, &mut rng(1)) {
            FeedbackKind::Comparison { prefer, .. } => assert_eq!(prefer, Preference::A),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invented_content_and_wholesale_copying_lose() {
        let sim = SimLabeler::new("sim", 0.0);
        let good = "Marigold hears from the miller that the flood drowned the sheep.";
        // Same salient words, plus names and events the input never mentions.
        let invented = "Marigold hears from Procopius, King Tranquil's miller, that the flood \
                        drowned the sheep and twelve puppets.";
        assert!(sim.score(INPUT, good) > sim.score(INPUT, invented));
        // The input's own sentences, copied: as much coverage, but it is not a summary.
        let copied = "Marigold walked to the mill by the river. The miller told Marigold that \
                      the flood had drowned the sheep.";
        assert!(sim.score(INPUT, good) > sim.score(INPUT, copied));
    }
}
