//! `consensus`: grounded minimum-Bayes-risk selection. Each candidate is scored by how much of
//! what it says the node's *other* candidates say too, counting only what the node's input
//! supports. No feedback and no model file; it needs the other candidates, so it picks among a
//! node's candidates (`summarize --best-of N --reward-model consensus`) and scores no single
//! summary or pair.
//!
//! The samples of one policy are draws from what it believes the summary should say; the one
//! that agrees most with the rest is the estimate of the summary with the least expected loss
//! under that belief (minimum Bayes risk, with ROUGE F1 as the utility). Plain agreement would
//! also reward an invention every sample shares (a favourite name the model makes up), so words
//! [`crate::grounding`] finds unsupported by the input never match anything: they cost a
//! candidate precision and earn it nothing.
//!
//! The "members" are the three utilities — ROUGE-1, ROUGE-2 and ROUGE-L F1 — so pessimism
//! (mean − λ·std, each member centred over the node's candidates) and asking where unsure work as
//! for an ensemble. With two candidates agreement is symmetric, every candidate ties, and the
//! first (the greedy decode under best-of-N) is kept.

use crate::compose::select::SelectError;
use crate::compose::{Candidate, CandidateScore, Selector};
use crate::eval::rouge::{self, Tokens};
use crate::grounding;

/// The name users give it.
pub const NAME: &str = "consensus";

/// Names the scoring rule; part of every pick's selector id.
pub const VERSION: &str = "consensus@1";

/// Whether `spec` names this reward.
pub fn is(spec: &str) -> bool {
    spec == NAME
}

/// The error for the places that score one summary or one pair at a time (policy training's
/// judge, `reward eval` on pairs): agreement needs the node's other candidates.
pub fn needs_candidates(place: &str) -> String {
    format!(
        "`{NAME}` ranks a node's candidates by how much they agree with each other, so it \
         cannot score {place}; use it to pick among candidates (`rrm summarize --best-of N \
         --reward-model {NAME}`), or name `grounding` here"
    )
}

/// `summary`'s ROUGE tokens with every word of an unsupported span replaced by a token that
/// matches nothing (`tag` makes it unique to this summary; real tokens are `[a-z0-9]+`).
pub fn grounded_tokens(summary: &str, spans: &[grounding::Span], tag: usize) -> Tokens {
    let mut out = Vec::new();
    let mut at = 0;
    let mut masked = 0usize;
    for span in spans {
        let (start, end) = (span.start.max(at), span.end.min(summary.len()));
        if start >= end || !summary.is_char_boundary(start) || !summary.is_char_boundary(end) {
            continue;
        }
        out.extend(rouge::tokenize(&summary[at..start]));
        for _ in rouge::tokenize(&summary[start..end]) {
            out.push(format!("\u{0}{tag}.{masked}"));
            masked += 1;
        }
        at = end;
    }
    out.extend(rouge::tokenize(&summary[at..]));
    Tokens::from_tokens(out)
}

/// Per-member utilities (3 × n: ROUGE-1, -2, -L F1), each candidate's mean against the others
/// (all zero for fewer than two).
pub fn member_utilities(input: &str, summaries: &[&str]) -> Vec<Vec<f32>> {
    let n = summaries.len();
    let source = grounding::Source::new(input);
    let tokens: Vec<Tokens> = summaries
        .iter()
        .enumerate()
        .map(|(i, s)| grounded_tokens(s, &source.check(s).spans, i))
        .collect();
    let mut members = vec![vec![0f32; n]; 3];
    if n < 2 {
        return members;
    }
    for i in 0..n {
        for j in i + 1..n {
            // F1 is symmetric: one score serves both candidates.
            let r = rouge::score_tokens(&tokens[j], &tokens[i]);
            for (m, f) in [r.rouge1.f1, r.rouge2.f1, r.rouge_l.f1].into_iter().enumerate() {
                members[m][i] += f as f32;
                members[m][j] += f as f32;
            }
        }
    }
    for m in &mut members {
        for x in m.iter_mut() {
            *x /= (n - 1) as f32;
        }
    }
    members
}

/// Grounded consensus as a [`Selector`].
#[derive(Debug, Clone, Copy)]
pub struct ConsensusSelector {
    pub pessimism: f32,
}

impl Selector for ConsensusSelector {
    fn id(&self) -> String {
        format!("{VERSION}+{}:lambda={}", grounding::VERSION, self.pessimism)
    }

    fn score(
        &self,
        _height: u32,
        input: &str,
        candidates: &[Candidate],
    ) -> Result<Vec<CandidateScore>, SelectError> {
        let texts: Vec<&str> = candidates.iter().map(|c| c.text.as_str()).collect();
        let members = member_utilities(input, &texts);
        let mut scores = super::ensemble_scores(&members, self.pessimism);
        for (i, s) in scores.iter_mut().enumerate() {
            s.parts.insert("agree_rouge1".into(), members[0][i]);
            s.parts.insert("agree_rouge2".into(), members[1][i]);
            s.parts.insert("agree_rougeL".into(), members[2][i]);
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::select::argmax;

    const INPUT: &str = "The miller stood at the mill while the flood rose over the meadow. \
                         His daughter Anna carried the sacks of flour up to the loft, and the \
                         miller barred the door against the water.";

    fn candidate(text: &str) -> Candidate {
        Candidate::of_text(text)
    }

    fn pick(texts: &[&str]) -> (usize, Vec<CandidateScore>) {
        let sel = ConsensusSelector { pessimism: 0.0 };
        let cands: Vec<Candidate> = texts.iter().map(|t| candidate(t)).collect();
        let s = sel.score(1, INPUT, &cands).unwrap();
        (argmax(&s), s)
    }

    #[test]
    fn the_candidate_the_others_agree_with_wins() {
        let (best, s) = pick(&[
            "Anna sings at the fair.",
            "As the flood rose, Anna carried the flour to the loft and the miller barred the door.",
            "The flood rose; Anna carried the flour up to the loft.",
            "The miller barred the door as the flood rose, and Anna carried the flour up.",
        ]);
        assert_ne!(best, 0, "{s:?}");
        assert!(s[0].parts["agree_rouge1"] < s[1].parts["agree_rouge1"], "{s:?}");
        assert_eq!(s[1].members.len(), 3);
    }

    #[test]
    fn a_shared_invention_earns_no_agreement() {
        // Both candidates repeat invented names; only their supported words can agree.
        let with = ["Procopius Tranquil Procopius Tranquil flood", "Procopius Tranquil flood"];
        let u = member_utilities(INPUT, &with);
        let without = ["flood", "flood"];
        let v = member_utilities(INPUT, &without);
        // Masked, the invented words dilute precision and recall instead of matching.
        assert!(u[0][1] < v[0][1], "{u:?} {v:?}");
        let t = grounded_tokens(
            "Procopius met Anna",
            &grounding::check(INPUT, "Procopius met Anna").spans,
            7,
        );
        let plain = Tokens::new("Procopius met Anna");
        assert_eq!(t.len(), plain.len());
        let r = rouge::score_tokens(&plain, &t);
        assert!(r.rouge1.f1 < 1.0, "the invented name must not match itself: {r:?}");
    }

    #[test]
    fn two_candidates_tie_and_the_first_is_kept() {
        let (best, s) = pick(&["The flood rose.", "Anna carried the flour to the loft."]);
        assert_eq!(best, 0);
        assert_eq!(s[0].score, s[1].score);
    }

    #[test]
    fn it_names_itself_and_refuses_single_summaries_with_a_hint() {
        assert!(is("consensus"));
        assert!(!is("consensus:x"));
        assert!(ConsensusSelector { pessimism: 1.0 }.id().starts_with(VERSION));
        assert!(needs_candidates("a pair").contains("--best-of N"));
    }
}
