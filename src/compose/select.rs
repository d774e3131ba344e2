//! Choosing among a node's candidates: the [`Selector`] seam.
//!
//! With no reward model the pick is the candidate with the highest mean log-probability
//! ([`MeanLogprob`]); the reward-model issue plugs its ensemble in through the same trait. A
//! selector's [`Selector::id`] enters the output key, so changing the reward model recomputes the
//! picks (and everything above them) but never the candidates.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Candidate;

/// A candidate's score, with any parts a selector wants recorded (e.g. ensemble mean and std).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateScore {
    pub score: f32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<String, f32>,
    /// An ensemble's per-member scores of this candidate, each member centred over the node's
    /// candidates (empty for a selector without members). The same members score every
    /// candidate, so how sure the ensemble is that one candidate beats another is the spread over
    /// members of their difference ([`pair_spread`]), not the two candidates' spreads combined.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<f32>,
}

impl CandidateScore {
    pub fn new(score: f32) -> Self {
        Self { score, parts: BTreeMap::new(), members: Vec::new() }
    }

    /// The ensemble mean when the selector recorded one, else the score.
    pub fn mean(&self) -> f32 {
        self.parts.get("mean").copied().unwrap_or(self.score)
    }
}

/// The standard deviation over members of `a − b` (population), or `None` when the two do not
/// carry the same members.
pub fn pair_spread(a: &CandidateScore, b: &CandidateScore) -> Option<f32> {
    if a.members.len() != b.members.len() {
        return None;
    }
    spread_of_differences(a.members.iter().zip(&b.members).map(|(x, y)| f64::from(x - y)))
        .map(|s| s as f32)
}

/// The population standard deviation of per-member differences; `None` when there are none.
pub fn spread_of_differences(diffs: impl Iterator<Item = f64>) -> Option<f64> {
    let diffs: Vec<f64> = diffs.collect();
    if diffs.is_empty() {
        return None;
    }
    let k = diffs.len() as f64;
    let mean = diffs.iter().sum::<f64>() / k;
    Some((diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / k).sqrt())
}

#[derive(Debug, thiserror::Error)]
#[error("selector {selector} failed: {message}")]
pub struct SelectError {
    pub selector: String,
    pub message: String,
}

/// The node whose candidates are being scored: what a selector that asks a person, or records
/// anything about the node, needs beyond its input text.
#[derive(Debug, Clone, Copy)]
pub struct SelectNode<'a> {
    pub book_id: &'a str,
    pub label: &'a str,
    pub height: u32,
    /// The text the node summarizes.
    pub input: &'a str,
    /// What the node summarizes, as feedback keys it ([`super::input_key`]).
    pub input_key: &'a str,
}

/// Scores a node's candidates; the composer picks the highest score. Scoring runs on a blocking
/// thread (it may embed texts, run a model, or wait for a person).
pub trait Selector: Send + Sync {
    /// A stable identity (name plus model hash); part of every output key.
    fn id(&self) -> String;
    /// One score per candidate of `node`, in order. By default [`Selector::score`] on the node's
    /// height and input.
    fn score_node(
        &self,
        node: &SelectNode<'_>,
        candidates: &[Candidate],
    ) -> Result<Vec<CandidateScore>, SelectError> {
        self.score(node.height, node.input, candidates)
    }
    /// One score per candidate, in order. `input` is the text the node summarizes.
    fn score(
        &self,
        height: u32,
        input: &str,
        candidates: &[Candidate],
    ) -> Result<Vec<CandidateScore>, SelectError>;
}

/// Picks the candidate the policy itself found most likely (mean log-probability per token).
/// Candidates that had to be cut because they looped rank below those that did not. A candidate
/// without log-probabilities (a server that gives none) is an error: a missing value must not
/// rank as the best one.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanLogprob;

impl Selector for MeanLogprob {
    fn id(&self) -> String {
        "mean-logprob@1".to_string()
    }

    fn score(
        &self,
        _height: u32,
        _input: &str,
        candidates: &[Candidate],
    ) -> Result<Vec<CandidateScore>, SelectError> {
        candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let base = c.mean_logprob.ok_or_else(|| SelectError {
                    selector: self.id(),
                    message: format!(
                        "candidate {i} has no log-probabilities (the backend gave none), so \
                         mean log-probability cannot rank the candidates; pick with a reward \
                         model (--reward-model) or use --best-of 1"
                    ),
                })?;
                Ok(CandidateScore::new(if c.looped { base - 10.0 } else { base }))
            })
            .collect()
    }
}

/// Index of the highest score (the first one on ties).
pub fn argmax(scores: &[CandidateScore]) -> usize {
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if s.score > scores[best].score {
            best = i;
        }
    }
    best
}
