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

/// Where the copying penalty of the grounded reward applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyScope {
    /// Nowhere (the default): only what the input does not support and what the summary covers
    /// count. People judging faithfulness never count copying against a summary: with the
    /// penalty at the leaves the reward ranked FRANK's held-out factuality comparisons at
    /// 46.6 %, below a coin; without it at 71.2 % (docs/reward-human-data.md), while best-of-4
    /// on SQuALITY training stories moved within noise (docs/eval/README.md).
    #[default]
    Never,
    /// At the leaves only: above them the input is already summaries, and repeating their
    /// sentences is how a summary of summaries keeps what they say. The default before FRANK
    /// was measured; for policy training, where copying the passage is an exploit to guard
    /// against.
    Leaves,
    /// At every height: a summary of summaries that repeats its children's sentences loses too
    /// (the only behaviour before there was a choice; its picks keep their own id).
    All,
}

/// One configuration of the grounded reward, as a reward-model spec names it: `grounding` (no
/// copying penalty; also `grounding:copy=none`), `grounding:copy=leaves` (at the leaves only) or
/// `grounding:copy=all` (at every height).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grounded {
    pub copy: CopyScope,
}

impl Grounded {
    /// The configuration `spec` names; `None` when `spec` does not name the grounded reward, an
    /// error (naming the option) when it names it with an option we do not know.
    pub fn parse(spec: &str) -> Option<Result<Self, String>> {
        let rest = spec.strip_prefix(NAME)?;
        if rest.is_empty() {
            return Some(Ok(Grounded::default()));
        }
        let options = rest.strip_prefix(':')?;
        let mut g = Grounded::default();
        for option in options.split(',') {
            g.copy = match option.trim() {
                "copy=all" => CopyScope::All,
                "copy=leaves" => CopyScope::Leaves,
                "copy=none" => CopyScope::Never,
                other => {
                    return Some(Err(format!(
                        "unknown option `{other}` of the grounded reward `{spec}` (known: \
                         copy=all, copy=leaves, copy=none)"
                    )))
                }
            };
        }
        Some(Ok(g))
    }

    /// The spec that names this configuration (what `parse` reads back).
    pub fn spec(&self) -> String {
        match self.copy {
            CopyScope::Never => NAME.to_string(),
            CopyScope::Leaves => format!("{NAME}:copy=leaves"),
            CopyScope::All => format!("{NAME}:copy=all"),
        }
    }

    /// The version of the check and this configuration: stored with every pick it makes (the
    /// id of copying at every height is the one its picks were stored under before there was a
    /// choice, so they stay cached).
    pub fn id(&self) -> String {
        match self.copy {
            CopyScope::All => grounding::VERSION.to_string(),
            CopyScope::Leaves => format!("{}:copy=leaves", grounding::VERSION),
            CopyScope::Never => format!("{}:copy=none", grounding::VERSION),
        }
    }

    /// The member weightings at `height`.
    fn weights(&self, height: u32) -> Vec<grounding::Weights> {
        let mut ws = grounding::member_weights().to_vec();
        let copying_counts = match self.copy {
            CopyScope::All => true,
            CopyScope::Leaves => height == 0,
            CopyScope::Never => false,
        };
        if !copying_counts {
            for w in &mut ws {
                w.copying = 0.0;
            }
        }
        ws
    }

    /// Per-member scores (K × n) of the checked summaries at `height`.
    fn members_of(&self, height: u32, reports: &[grounding::Report]) -> Vec<Vec<f32>> {
        self.weights(height)
            .iter()
            .map(|w| reports.iter().map(|r| grounding::score_with(r, w) as f32).collect())
            .collect()
    }

    /// Per-member scores (K × n) of `summaries` of `input` at `height`.
    pub fn member_scores(&self, height: u32, input: &str, summaries: &[&str]) -> Vec<Vec<f32>> {
        self.members_of(height, &reports(input, summaries))
    }

    /// Margins (chosen − rejected, in log-odds, the members' mean) of `pairs`, for `rrm reward
    /// eval`.
    pub fn margins(&self, pairs: &[Pair]) -> Vec<f32> {
        pairs
            .iter()
            .map(|p| {
                let m = self.member_scores(p.height, &p.input, &[&p.chosen, &p.rejected]);
                let diff: f32 = m.iter().map(|s| s[0] - s[1]).sum::<f32>() / m.len() as f32;
                LOGIT_SCALE * diff
            })
            .collect()
    }
}

/// Each summary of `input` checked against it (the input read once).
fn reports(input: &str, summaries: &[&str]) -> Vec<grounding::Report> {
    let source = grounding::Source::new(input);
    summaries.iter().map(|s| source.check(s)).collect()
}

/// The grounded reward as a [`Selector`].
#[derive(Debug, Clone, Copy)]
pub struct GroundingSelector {
    pub pessimism: f32,
    pub grounded: Grounded,
}

impl Selector for GroundingSelector {
    fn id(&self) -> String {
        format!("{}:lambda={}", self.grounded.id(), self.pessimism)
    }

    fn score(
        &self,
        height: u32,
        input: &str,
        candidates: &[Candidate],
    ) -> Result<Vec<CandidateScore>, SelectError> {
        let texts: Vec<&str> = candidates.iter().map(|c| c.text.as_str()).collect();
        let checked = reports(input, &texts);
        let members = self.grounded.members_of(height, &checked);
        let mut scores = super::ensemble_scores(&members, self.pessimism);
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
        Candidate::of_text(text)
    }

    #[test]
    fn the_grounded_candidate_wins_and_the_parts_say_why() {
        let sel = GroundingSelector { pessimism: 0.0, grounded: Grounded::default() };
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
        assert!(Grounded::default().margins(&[p])[0] > 0.0);
    }

    #[test]
    fn a_spec_names_the_configuration_and_an_unknown_option_is_refused_by_name() {
        assert_eq!(Grounded::parse("grounding"), Some(Ok(Grounded::default())));
        assert_eq!(Grounded::default().copy, CopyScope::Never);
        assert_eq!(Grounded::parse("grounding:copy=none"), Some(Ok(Grounded::default())));
        assert_eq!(Grounded::default().spec(), "grounding");
        let all = Grounded::parse("grounding:copy=all").unwrap().unwrap();
        assert_eq!(all.copy, CopyScope::All);
        assert_eq!(Grounded::parse(&all.spec()), Some(Ok(all)));
        let leaves = Grounded::parse("grounding:copy=leaves").unwrap().unwrap();
        assert_eq!(leaves.copy, CopyScope::Leaves);
        assert_eq!(Grounded::parse(&leaves.spec()), Some(Ok(leaves)));
        assert_ne!(all.id(), Grounded::default().id());
        assert_ne!(leaves.id(), Grounded::default().id());
        assert_eq!(all.id(), grounding::VERSION);
        assert_eq!(Grounded::parse("latest"), None);
        assert_eq!(Grounded::parse("groundingx"), None);
        let err = Grounded::parse("grounding:copy=some").unwrap().unwrap_err();
        assert!(err.contains("copy=some") && err.contains("copy=leaves"), "{err}");
    }

    #[test]
    fn with_copy_at_the_leaves_only_a_summary_of_summaries_may_repeat_its_input() {
        // A verbatim repeat of the input: penalized for copying at a leaf under both, and above
        // the leaves only under `copy=leaves`.
        let copy = "The miller stood at the mill while the flood rose over the meadow.";
        let all = Grounded { copy: CopyScope::All };
        let leaves = Grounded { copy: CopyScope::Leaves };
        let mean = |g: &Grounded, h| {
            let m = g.member_scores(h, INPUT, &[copy]);
            m.iter().map(|s| s[0]).sum::<f32>() / m.len() as f32
        };
        assert_eq!(mean(&all, 0), mean(&leaves, 0));
        assert_eq!(mean(&all, 1), mean(&all, 0));
        assert!(
            mean(&leaves, 1) > mean(&all, 1) + 0.1,
            "{} vs {}",
            mean(&leaves, 1),
            mean(&all, 1)
        );
        // Never (the default): the copy scores at a leaf as it does above the leaves under
        // `copy=leaves`.
        let never = Grounded::default();
        assert_eq!(never.copy, CopyScope::Never);
        assert_eq!(mean(&never, 0), mean(&leaves, 1));
        assert_eq!(mean(&never, 1), mean(&never, 0));
        assert!(mean(&never, 0) > mean(&leaves, 0) + 0.1);
        assert!(never.id() != leaves.id() && never.id() != all.id());
    }
}
