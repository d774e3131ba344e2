//! Who judges a summary in an evaluation: a [`Judge`] scores (input, summary) → a number, and
//! a [`MemberScorer`] gives per-member scores of an ensemble (the reward models).
//!
//! - The simulated labeler (`feedback::sim::SimLabeler`, `sim-coverage`): coverage of the
//!   input's names and frequent words, minus a penalty for length beyond a fifth of the input.
//! - [`AltLabeler`] (`sim-alt`): an independent simulated preference for judging a policy
//!   trained on the first one's labels. It weighs the input's content words by frequency
//!   (recall), rewards faithfulness (the share of the summary's content words found in the
//!   input), penalizes repeated word trigrams, and prefers a length near a quarter of the
//!   input on a log scale (too short is penalized as well as too long).
//! - [`EnsembleScorer`]: the reward ensemble (`reward::RewardModel`) behind the same seam.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::feedback::sim::{SimLabeler, STOPWORDS};
use crate::infer::encoder::SharedCache;
use crate::infer::Encoder;
use crate::reward::features::Featurizer;
use crate::reward::{RewardError, RewardModel};

/// A preference function over summaries of an input.
pub trait Judge {
    fn name(&self) -> String;
    fn score(&self, input: &str, summary: &str) -> f64;
}

impl Judge for SimLabeler {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn score(&self, input: &str, summary: &str) -> f64 {
        SimLabeler::score(self, input, summary)
    }
}

/// An independent simulated preference (see the module docs).
#[derive(Debug, Clone)]
pub struct AltLabeler {
    pub name: String,
    /// Content words of the input counted for recall.
    pub top_words: usize,
    /// Preferred length as a fraction of the input's words.
    pub length_ratio: f64,
}

impl Default for AltLabeler {
    fn default() -> Self {
        Self { name: "sim-alt".into(), top_words: 25, length_ratio: 0.25 }
    }
}

fn content_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| w.chars().count() >= 4 && !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// A crude stem: the first five characters (so "walked" and "walking" meet).
fn stem(w: &str) -> String {
    w.chars().take(5).collect()
}

impl Judge for AltLabeler {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn score(&self, input: &str, summary: &str) -> f64 {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for w in content_words(input) {
            *counts.entry(stem(&w)).or_default() += 1;
        }
        let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(self.top_words);
        let input_stems: BTreeSet<String> = content_words(input).iter().map(|w| stem(w)).collect();
        let words = content_words(summary);
        let stems: BTreeSet<String> = words.iter().map(|w| stem(w)).collect();
        let total: usize = ranked.iter().map(|(_, c)| c).sum();
        let recall = if total == 0 {
            0.0
        } else {
            ranked.iter().filter(|(w, _)| stems.contains(w)).map(|(_, c)| *c).sum::<usize>() as f64
                / total as f64
        };
        let faithful = if words.is_empty() {
            0.0
        } else {
            words.iter().filter(|w| input_stems.contains(&stem(w))).count() as f64
                / words.len() as f64
        };
        let all: Vec<String> = crate::compose::text::words(summary);
        let grams: Vec<&[String]> = all.windows(3).collect();
        let distinct: BTreeSet<&[String]> = grams.iter().copied().collect();
        let repetition =
            if grams.is_empty() { 0.0 } else { 1.0 - distinct.len() as f64 / grams.len() as f64 };
        let input_len = input.split_whitespace().count() as f64;
        let target = (input_len * self.length_ratio).clamp(20.0, 150.0);
        let len = (all.len() as f64).max(1.0);
        let length_penalty = 0.3 * (len / target).ln().abs();
        0.6 * recall + 0.4 * faithful - repetition - length_penalty
    }
}

/// Per-member scores of an ensemble: `K × n` for `n` summaries of `input` at `height`.
pub trait MemberScorer {
    fn name(&self) -> String;
    fn member_scores(
        &self,
        height: u32,
        input: &str,
        summaries: &[&str],
    ) -> Result<Vec<Vec<f32>>, RewardError>;
}

/// The grounded reward ([`crate::reward::grounded`]) as a [`MemberScorer`]: its member
/// weightings are the members, so rm-dpo's pairs and the eval's reward column work as with a
/// trained ensemble, with no feedback.
pub struct GroundingScorer(pub crate::reward::grounded::Grounded);

impl MemberScorer for GroundingScorer {
    fn name(&self) -> String {
        self.0.id()
    }

    fn member_scores(
        &self,
        height: u32,
        input: &str,
        summaries: &[&str],
    ) -> Result<Vec<Vec<f32>>, RewardError> {
        Ok(self.0.member_scores(height, input, summaries))
    }
}

/// A language model's support for the summary ([`crate::reward::support`]) as a
/// [`MemberScorer`] of one member: no feedback, no checkpoint.
pub struct SupportScorer(pub crate::reward::support::LmSupport);

impl MemberScorer for SupportScorer {
    fn name(&self) -> String {
        self.0.id()
    }

    fn member_scores(
        &self,
        _height: u32,
        input: &str,
        summaries: &[&str],
    ) -> Result<Vec<Vec<f32>>, RewardError> {
        Ok(vec![self.0.scores(input, summaries)?])
    }
}

/// The reward ensemble as a [`MemberScorer`].
pub struct EnsembleScorer {
    pub model: Arc<RewardModel>,
    pub encoder: Arc<dyn Encoder>,
    /// Where embeddings are cached (none: computed every time).
    pub cache: Option<SharedCache>,
}

impl EnsembleScorer {
    pub fn new(
        model: Arc<RewardModel>,
        encoder: Arc<dyn Encoder>,
        cache: Option<SharedCache>,
    ) -> Result<EnsembleScorer, RewardError> {
        model.check_encoder(encoder.as_ref())?;
        Ok(EnsembleScorer { model, encoder, cache })
    }
}

impl MemberScorer for EnsembleScorer {
    fn name(&self) -> String {
        format!("reward:{}", self.model.card.hash)
    }

    fn member_scores(
        &self,
        height: u32,
        input: &str,
        summaries: &[&str],
    ) -> Result<Vec<Vec<f32>>, RewardError> {
        let mut featurizer = Featurizer::new(self.encoder.as_ref(), self.cache.clone());
        self.model.member_scores(&mut featurizer, height, input, summaries)
    }
}

/// Mean and standard deviation over members of each summary's score.
pub fn mean_std(members: &[Vec<f32>]) -> Vec<(f64, f64)> {
    let n = members.first().map_or(0, Vec::len);
    let k = members.len().max(1) as f64;
    (0..n)
        .map(|i| {
            let m = members.iter().map(|s| s[i] as f64).sum::<f64>() / k;
            let v = members.iter().map(|s| (s[i] as f64 - m).powi(2)).sum::<f64>() / k;
            (m, v.sqrt())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = "Marigold walked to the mill by the river. The miller told Marigold \
        that the flood had drowned the sheep, and the village elders argued about the flood \
        all night by the mill. The flood waters rose over the meadow and the miller wept.";

    #[test]
    fn the_alt_labeler_prefers_faithful_covering_unrepeated_summaries() {
        let j = AltLabeler::default();
        let good = "Marigold learns from the miller that the flood drowned the sheep; the \
                    elders argue all night while the flood waters rise over the meadow.";
        let off = "A sailor sings about the distant ocean, dreaming of golden treasure ships.";
        let loop_ = "Marigold and the flood. Marigold and the flood. Marigold and the flood. \
                     Marigold and the flood. Marigold and the flood.";
        assert!(j.score(INPUT, good) > j.score(INPUT, off));
        assert!(j.score(INPUT, good) > j.score(INPUT, loop_));
        assert!(j.score(INPUT, good) > j.score(INPUT, "Marigold."));
        assert_eq!(j.name(), "sim-alt");
        let sim = SimLabeler::new("sim-coverage", 0.0);
        assert_eq!(Judge::name(&sim), "sim-coverage");
        assert!(Judge::score(&sim, INPUT, good) > Judge::score(&sim, INPUT, off));
    }

    #[test]
    fn the_grounded_scorer_labels_pairs_like_an_ensemble() {
        let input = "The miller stood at the mill while the flood rose over the meadow.";
        let m = GroundingScorer(Default::default())
            .member_scores(0, input, &["The flood rose at the mill.", "Procopius sailed to Rome."])
            .unwrap();
        assert_eq!(m.len(), crate::grounding::member_weights().len());
        assert!(m.iter().all(|member| member.len() == 2 && member[0] > member[1]), "{m:?}");
        assert_eq!(
            GroundingScorer(Default::default()).name(),
            crate::reward::grounded::Grounded::default().id()
        );
    }

    #[test]
    fn mean_std_over_members() {
        let ms = mean_std(&[vec![1.0, 0.0], vec![3.0, 0.0]]);
        assert_eq!(ms, vec![(2.0, 1.0), (0.0, 0.0)]);
    }
}
