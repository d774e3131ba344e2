//! The grounded reward as a reward model: [`crate::grounding`]'s score of each candidate against
//! the node's input, with no feedback and no model file. Named `grounding` wherever a reward
//! model is named (`summarize --reward-model grounding`, `--ask`, `reward eval --model
//! grounding`).
//!
//! Its "members" are the score under [`grounding::member_weights`], so pessimism and asking work
//! as they do for a trained ensemble: a node is unsure when the weightings disagree about which of
//! its two best candidates is better.

use crate::compose::select::SelectError;
use crate::compose::{Candidate, CandidateScore, Selector};
use crate::feedback::Pair;
use crate::grounding;

/// The name users give it.
pub const NAME: &str = "grounding";

/// Log-odds per unit of score difference when a margin is read as a probability (log-loss,
/// calibration). Set once from the scale of the score (a clear win is a difference of about
/// 0.5), never fitted on an evaluation set.
pub const LOGIT_SCALE: f32 = 4.0;

/// Each summary of `input` checked against it (the input read once).
fn reports(input: &str, summaries: &[&str]) -> Vec<grounding::Report> {
    let source = grounding::Source::new(input);
    summaries.iter().map(|s| source.check(s)).collect()
}

/// Per-member scores (K × n) of the checked summaries.
fn members_of(reports: &[grounding::Report]) -> Vec<Vec<f32>> {
    let per_summary: Vec<Vec<f64>> = reports.iter().map(grounding::members).collect();
    let k = grounding::member_weights().len();
    (0..k).map(|m| per_summary.iter().map(|s| s[m] as f32).collect()).collect()
}

/// Per-member scores (K × n) of `summaries` of `input`.
pub fn member_scores(input: &str, summaries: &[&str]) -> Vec<Vec<f32>> {
    members_of(&reports(input, summaries))
}

/// Margins (chosen − rejected, in log-odds) of `pairs`, for `rrm reward eval`.
pub fn margins(pairs: &[Pair]) -> Vec<f32> {
    pairs
        .iter()
        .map(|p| {
            let r = reports(&p.input, &[&p.chosen, &p.rejected]);
            LOGIT_SCALE * (grounding::score(&r[0]) - grounding::score(&r[1])) as f32
        })
        .collect()
}

/// The grounded reward as a [`Selector`].
#[derive(Debug, Clone, Copy)]
pub struct GroundingSelector {
    pub pessimism: f32,
}

impl Selector for GroundingSelector {
    fn id(&self) -> String {
        format!("{}:lambda={}", grounding::VERSION, self.pessimism)
    }

    fn score(
        &self,
        _height: u32,
        input: &str,
        candidates: &[Candidate],
    ) -> Result<Vec<CandidateScore>, SelectError> {
        let texts: Vec<&str> = candidates.iter().map(|c| c.text.as_str()).collect();
        let checked = reports(input, &texts);
        let mut scores = super::ensemble_scores(&members_of(&checked), self.pessimism);
        for (s, r) in scores.iter_mut().zip(&checked) {
            s.parts.insert("unsupported_rate".into(), r.unsupported_rate as f32);
            s.parts.insert("coverage".into(), r.coverage as f32);
            s.parts.insert("copied_4grams".into(), r.copied_4gram_share as f32);
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = "The miller stood at the mill while the flood rose over the meadow. \
                         His daughter Anna carried the sacks of flour up to the loft.";

    fn candidate(text: &str) -> Candidate {
        Candidate {
            text: text.into(),
            raw_text: text.into(),
            completion_tokens: 0,
            mean_logprob: None,
            sum_logprob: None,
            finish: crate::infer::FinishReason::Stop,
            looped: false,
            seed: 0,
        }
    }

    #[test]
    fn the_grounded_candidate_wins_and_the_parts_say_why() {
        let sel = GroundingSelector { pessimism: 0.0 };
        let cands = [
            candidate("The miller's son Procopius sails to King Tranquil's castle."),
            candidate("As the flood rises, the miller's daughter Anna saves the flour."),
        ];
        let s = sel.score(0, INPUT, &cands).unwrap();
        assert!(s[1].score > s[0].score, "{s:?}");
        assert!(s[0].parts["unsupported_rate"] > s[1].parts["unsupported_rate"]);
        assert_eq!(s[0].members.len(), grounding::member_weights().len());
        assert!(sel.id().starts_with(grounding::VERSION));
    }

    #[test]
    fn margins_favour_the_supported_summary() {
        let p = Pair::new(
            0,
            INPUT,
            "Anna carries flour while the flood rises.",
            "Bob sells fish.",
            1.0,
            "g",
        );
        assert!(margins(&[p])[0] > 0.0);
    }
}
