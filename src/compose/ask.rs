//! Asking people only when it matters (the assistance-game idea): a selector that picks with a
//! reward ensemble, and where the ensemble cannot tell the two best candidates apart, asks a
//! person instead of guessing.
//!
//! [`AskingSelector`] wraps a selector whose scores carry the ensemble's `mean` and per-member
//! scores (the reward selectors' do). For each node it finds the two best candidates by mean;
//! when their mean difference is below `threshold` times the spread over members of that
//! difference (the same members score both, so this is not √(std_a² + std_b²)) and the question
//! budget is not spent, it puts the two to an [`Asker`] — the terminal, the web
//! app's queue, or a simulated labeler — in random order, blind to scores. The answer is stored as
//! an ordinary comparison (so it also trains the next reward model) and decides the pick; a tie
//! or a skip keeps the ensemble's pick. Scoring runs on a blocking thread, so a node waiting for
//! its answer holds up only its parents: other nodes go on.
//!
//! On its own the selector asks wherever it is unsure, in the order nodes finish. To spend a
//! budget on the nodes the ensemble is *least* sure about, compose once without asking, read
//! each node's doubt ([`run_doubts`]: mean gap over the members' spread), and ask with the
//! threshold that lets exactly the budget's most doubtful nodes through ([`ranked_threshold`]);
//! nodes whose inputs did not change keep their doubt, so the budget goes where it was planned.
//!
//! The selector's id names the inner selector and the policy: a run with asking is cached apart
//! from one without, and a re-run finds the answered picks stored (no one is asked twice).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::select::{pair_spread, CandidateScore, SelectError, SelectNode, Selector};
use super::{Candidate, CandidateSet, NodeOutput, RunRecord};
use crate::feedback::{self, Feedback, FeedbackKind, Judged, Preference};
use crate::store::{Store, StoreError, Table};

/// One question: which of two summaries of a node is better.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub book_id: String,
    pub label: String,
    pub height: u32,
    pub input: String,
    pub input_key: String,
    /// Shown as summary 1 and summary 2 (the order is random).
    pub a: String,
    pub b: String,
}

/// A person's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    A {
        confidence: u8,
    },
    B {
        confidence: u8,
    },
    Tie {
        confidence: u8,
    },
    /// No answer (skipped, or nobody there): the ensemble's pick stands, nothing is stored.
    Skip,
}

/// Whoever answers: blocking (the composer calls it on a blocking thread).
pub trait Asker: Send + Sync {
    /// The labeler name stored with the answers.
    fn labeler(&self) -> String;
    fn ask(&self, question: &Question) -> Result<Answer, SelectError>;
    /// Whether the asker stores each answer itself before returning it (the web app writes the
    /// record, with the labeler who answered, before its page moves on); then the selector does
    /// not store it a second time.
    fn stores_answers(&self) -> bool {
        false
    }
    /// Whether questions must wait for each other (a terminal has one person at it). An asker
    /// with many people behind it (the web app) answers `false`, so one unanswered question
    /// does not hold up every other node's.
    fn one_at_a_time(&self) -> bool {
        true
    }
    /// Whether an answer is feedback worth keeping. A simulated labeler answering inside a
    /// measurement (`rrm bench ask`) says `false`: its answers decide the picks of that run
    /// and are never stored, so they cannot leak into the feedback that trains the next reward
    /// model, or be mistaken for a person's.
    fn keeps_answers(&self) -> bool {
        true
    }
}

/// When to ask.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AskPolicy {
    /// Ask when |mean_a − mean_b| < threshold · sd over members of (s_m(a) − s_m(b)) (∞: always
    /// ask).
    pub threshold: f32,
    /// At most this many questions in one run (`None`: no limit).
    pub budget: Option<usize>,
}

/// A selector that asks a person where its inner (ensemble) selector is unsure.
pub struct AskingSelector {
    inner: Arc<dyn Selector>,
    asker: Arc<dyn Asker>,
    policy: AskPolicy,
    store: Store,
    asked: AtomicUsize,
    /// One question at a time (a terminal has one person at it).
    turn: Mutex<()>,
}

/// What the asking did in a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskStats {
    pub asked: usize,
}

impl AskingSelector {
    pub fn new(
        inner: Arc<dyn Selector>,
        asker: Arc<dyn Asker>,
        policy: AskPolicy,
        store: Store,
    ) -> AskingSelector {
        AskingSelector {
            inner,
            asker,
            policy,
            store,
            asked: AtomicUsize::new(0),
            turn: Mutex::new(()),
        }
    }

    pub fn stats(&self) -> AskStats {
        AskStats { asked: self.asked.load(Ordering::SeqCst) }
    }

    fn err(&self, message: String) -> SelectError {
        SelectError { selector: self.id(), message }
    }

    /// Takes one question from the budget; false when it is spent.
    fn take_question(&self) -> bool {
        match self.policy.budget {
            None => {
                self.asked.fetch_add(1, Ordering::SeqCst);
                true
            }
            Some(max) => self
                .asked
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
                .is_ok(),
        }
    }
}

/// The two best candidates by ensemble mean, and how unsure the ensemble is between them: the
/// gap between their means over the spread over members of their difference ([`pair_spread`]).
/// 0 means the members cannot tell them apart at all; ∞ means every member agrees on the
/// difference (also when that difference is zero). `None` as the doubt when the scores carry no
/// members (nothing to measure doubt with).
pub fn top_two(scores: &[CandidateScore]) -> Option<(usize, usize, Option<f32>)> {
    if scores.len() < 2 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].mean().total_cmp(&scores[a].mean()));
    let (i, j) = (order[0], order[1]);
    let doubt = pair_spread(&scores[i], &scores[j]).map(|spread| {
        let gap = scores[i].mean() - scores[j].mean();
        if spread > 0.0 {
            gap / spread
        } else {
            f32::INFINITY
        }
    });
    Some((i, j, doubt))
}

/// The two best candidates by ensemble mean, and whether the ensemble can tell them apart: the
/// gap between their means is below `threshold` times the spread over members of their
/// difference (the doubt of [`top_two`] is below `threshold`). Without members there is no
/// spread to act on, so only an infinite threshold (always ask) asks.
pub fn top_two_uncertain(
    scores: &[CandidateScore],
    threshold: f32,
) -> Option<(usize, usize, bool)> {
    let (i, j, doubt) = top_two(scores)?;
    let uncertain = threshold.is_infinite() || doubt.is_some_and(|d| d < threshold);
    Some((i, j, uncertain))
}

/// The doubt ([`top_two`]) at every node of a composed run whose two best candidates differ in
/// text: what ranking questions across the tree works from. Nodes with one candidate, without
/// members, or whose two best are the same text (nothing to ask) are left out.
pub fn run_doubts(store: &Store, run: &RunRecord) -> Result<Vec<(String, f32)>, StoreError> {
    let mut doubts = Vec::new();
    for (label, key) in &run.outputs {
        let Some(out) = store.get::<NodeOutput>(Table::Outputs, key)? else { continue };
        let Some((i, j, Some(doubt))) = top_two(&out.scores) else { continue };
        let Some(set) = store.get::<CandidateSet>(Table::Candidates, &out.gen_key)? else {
            continue;
        };
        let same = match (set.candidates.get(i), set.candidates.get(j)) {
            (Some(a), Some(b)) => a.text == b.text,
            _ => true,
        };
        if !same {
            doubts.push((label.clone(), doubt));
        }
    }
    Ok(doubts)
}

/// The threshold that spends a budget of `budget` questions on the most doubtful nodes: halfway
/// between the `budget`-th smallest doubt and the next, never above `cap` (the user's threshold:
/// a node the ensemble is sure about is not asked even when the budget would allow it). With
/// no more doubtful nodes than the budget, `cap` itself. Always positive.
pub fn ranked_threshold(doubts: &[f32], budget: usize, cap: f32) -> f32 {
    let mut d: Vec<f32> = doubts.iter().copied().filter(|d| !d.is_nan()).collect();
    d.sort_by(f32::total_cmp);
    let rank = if budget == 0 {
        d.first().map(|first| first / 2.0)
    } else if budget < d.len() {
        Some((d[budget - 1] + d[budget]) / 2.0)
    } else {
        None
    };
    match rank {
        Some(t) if t.is_finite() => t.min(cap).max(f32::MIN_POSITIVE),
        _ => cap,
    }
}

impl Selector for AskingSelector {
    fn id(&self) -> String {
        format!("ask:{}:t={}:b={:?}", self.inner.id(), self.policy.threshold, self.policy.budget)
    }

    fn score(
        &self,
        height: u32,
        input: &str,
        candidates: &[Candidate],
    ) -> Result<Vec<CandidateScore>, SelectError> {
        // Without the node's identity nothing can be asked or stored: the inner pick.
        self.inner.score(height, input, candidates)
    }

    fn score_node(
        &self,
        node: &SelectNode<'_>,
        candidates: &[Candidate],
    ) -> Result<Vec<CandidateScore>, SelectError> {
        let mut scores = self.inner.score_node(node, candidates)?;
        let Some((best, second, uncertain)) = top_two_uncertain(&scores, self.policy.threshold)
        else {
            return Ok(scores);
        };
        if !uncertain || candidates[best].text == candidates[second].text || !self.take_question() {
            return Ok(scores);
        }
        // Blind and in random order (seeded by the node, so a re-run asks the same way).
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&blake3::hash(node.input_key.as_bytes()).as_bytes()[..8]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from_le_bytes(seed));
        let (first, other) = if rng.random_bool(0.5) { (best, second) } else { (second, best) };
        let question = Question {
            book_id: node.book_id.to_string(),
            label: node.label.to_string(),
            height: node.height,
            input: node.input.to_string(),
            input_key: node.input_key.to_string(),
            a: candidates[first].text.clone(),
            b: candidates[other].text.clone(),
        };
        let answer = if self.asker.one_at_a_time() {
            let _turn =
                self.turn.lock().map_err(|_| self.err("the question lock is poisoned".into()))?;
            self.asker.ask(&question)?
        } else {
            self.asker.ask(&question)?
        };
        let (prefer, confidence) = match answer {
            Answer::A { confidence } => (Preference::A, confidence),
            Answer::B { confidence } => (Preference::B, confidence),
            Answer::Tie { confidence } => (Preference::Tie, confidence),
            Answer::Skip => return Ok(scores),
        };
        let kind = FeedbackKind::Comparison {
            a: Judged::new(question.a.clone()),
            b: Judged::new(question.b.clone()),
            prefer,
            confidence,
        };
        if self.asker.keeps_answers() && !self.asker.stores_answers() {
            let record =
                Feedback::new(&self.asker.labeler(), node.input_key, node.input, node.height, kind)
                    .at(Some(node.book_id.to_string()), Some(node.label.to_string()));
            feedback::put(&self.store, record)
                .map_err(|e| self.err(format!("storing the answer: {e}")))?;
        }
        let winner = match prefer {
            Preference::A => Some(first),
            Preference::B => Some(other),
            Preference::Tie => None,
        };
        for (k, s) in scores.iter_mut().enumerate() {
            s.parts.insert("asked".into(), 1.0);
            if Some(k) == winner {
                s.parts.insert("chosen_by_person".into(), 1.0);
            }
        }
        if let Some(w) = winner {
            let top = scores.iter().map(|s| s.score).fold(f32::NEG_INFINITY, f32::max);
            scores[w].score = top + 1.0;
        }
        Ok(scores)
    }
}

/// A simulated person for measurements: answers with the simulated labeler's known preference.
pub struct SimAsker {
    pub labeler: crate::feedback::sim::SimLabeler,
    rng: Mutex<rand::rngs::StdRng>,
    keep: bool,
}

impl SimAsker {
    pub fn new(labeler: crate::feedback::sim::SimLabeler, seed: u64) -> SimAsker {
        SimAsker { labeler, rng: Mutex::new(crate::feedback::sim::rng(seed)), keep: true }
    }

    /// A simulated labeler for a measurement: its answers are not stored as feedback.
    pub fn measuring(labeler: crate::feedback::sim::SimLabeler, seed: u64) -> SimAsker {
        SimAsker { keep: false, ..SimAsker::new(labeler, seed) }
    }
}

impl Asker for SimAsker {
    fn labeler(&self) -> String {
        self.labeler.name.clone()
    }

    fn keeps_answers(&self) -> bool {
        self.keep
    }

    fn ask(&self, q: &Question) -> Result<Answer, SelectError> {
        let mut rng = self.rng.lock().map_err(|_| SelectError {
            selector: "sim-asker".into(),
            message: "the random generator lock is poisoned".into(),
        })?;
        Ok(match self.labeler.compare(&q.input, &q.a, &q.b, &mut *rng) {
            FeedbackKind::Comparison { prefer: Preference::A, confidence, .. } => {
                Answer::A { confidence }
            }
            FeedbackKind::Comparison { prefer: Preference::B, confidence, .. } => {
                Answer::B { confidence }
            }
            FeedbackKind::Comparison { confidence, .. } => Answer::Tie { confidence },
            _ => Answer::Skip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(per_member: &[Vec<f32>]) -> Vec<CandidateScore> {
        crate::reward::ensemble_scores(per_member, 1.0)
    }

    #[test]
    fn uncertainty_compares_the_gap_with_the_spread_of_the_members_differences() {
        // Clearly apart: every member puts candidate 1 a full point above candidate 0.
        let (i, j, u) =
            top_two_uncertain(&scores(&[vec![0.0, 1.0], vec![0.2, 1.2], vec![-3.0, -2.0]]), 1.0)
                .unwrap();
        assert_eq!((i, j, u), (1, 0, false));
        // The members' offsets differ wildly (std per candidate ≈ 1.4) but they agree on the
        // difference, so the ensemble is sure; √(std_a² + std_b²) would have said unsure.
        let offsets = scores(&[vec![0.0, 0.3], vec![3.0, 3.3], vec![-0.5, -0.2]]);
        assert!(!top_two_uncertain(&offsets, 1.0).unwrap().2);
        // Members that disagree on the sign are unsure.
        let split = scores(&[vec![0.0, 1.0], vec![1.0, 0.0], vec![0.0, 0.9]]);
        assert!(top_two_uncertain(&split, 1.0).unwrap().2);
        // Always asking.
        assert!(top_two_uncertain(&scores(&[vec![0.0, 1.0]]), f32::INFINITY).unwrap().2);
        assert!(top_two_uncertain(&scores(&[vec![1.0]]), 1.0).is_none());
        // Without members (a plain selector) nothing is uncertain unless always asking.
        let plain = [CandidateScore::new(0.0), CandidateScore::new(0.01)];
        assert!(!top_two_uncertain(&plain, 1.0).unwrap().2);
    }

    #[test]
    fn the_two_best_are_chosen_by_mean_not_by_the_pessimistic_score() {
        // Candidate 2 has the highest mean but a wide spread; pessimism ranks it last.
        let s = scores(&[
            vec![0.0, 0.5, 4.0, 0.0, 0.0],
            vec![0.0, 0.5, -3.0, 0.0, 0.0],
            vec![0.0, 0.5, 3.5, 0.0, 0.0],
        ]);
        assert!(s[2].score < s[0].score);
        assert!(s[2].score < s[1].score);
        let (i, j, _) = top_two_uncertain(&s, 1.0).unwrap();
        assert_eq!((i, j), (2, 1));
    }

    #[test]
    fn the_doubt_is_the_gap_over_the_spread_and_infinite_when_members_agree() {
        // Differences 1 and 3: gap 2 (their mean), spread 1, doubt 2.
        let (_, _, d) = top_two(&scores(&[vec![0.0, 1.0], vec![0.0, 3.0]])).unwrap();
        assert!((d.unwrap() - 2.0).abs() < 1e-5);
        // Every member says the same difference, even zero: sure.
        assert_eq!(
            top_two(&scores(&[vec![0.0, 0.0], vec![1.0, 1.0]])).unwrap().2,
            Some(f32::INFINITY)
        );
        assert_eq!(top_two(&[CandidateScore::new(0.0), CandidateScore::new(1.0)]).unwrap().2, None);
    }

    #[test]
    fn a_ranked_budget_goes_to_the_most_doubtful_nodes_and_never_past_the_cap() {
        let doubts = [0.9, 0.1, 3.0, 0.5, f32::INFINITY, 0.3];
        // Two questions: the nodes at 0.1 and 0.3 fall below, 0.5 does not.
        let t = ranked_threshold(&doubts, 2, f32::INFINITY);
        assert!(t > 0.3 && t < 0.5, "{t}");
        assert_eq!(doubts.iter().filter(|&&d| d < t).count(), 2);
        // The user's threshold still bounds it: at most the nodes the ensemble is unsure about.
        assert_eq!(ranked_threshold(&doubts, 5, 1.0), 1.0);
        assert_eq!(ranked_threshold(&doubts, 4, 1.0), 1.0);
        // More budget than nodes: the cap.
        assert_eq!(ranked_threshold(&doubts, 10, 2.0), 2.0);
        // No budget: nobody is below it; ties at zero still give a positive threshold.
        let none = ranked_threshold(&doubts, 0, f32::INFINITY);
        assert_eq!(doubts.iter().filter(|&&d| d < none).count(), 0);
        assert!(ranked_threshold(&[0.0, 0.0, 0.0], 1, 1.0) > 0.0);
        assert_eq!(ranked_threshold(&[], 3, 1.0), 1.0);
    }
}
