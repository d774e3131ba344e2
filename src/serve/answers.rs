//! One path for every answer, whether it comes from a page's form or the JSON API: the node is
//! found in its book's tree, the candidates it names (by hash, or a 4+ digit prefix) must be
//! stored candidates of that node, the record is validated, written and flushed, and only then
//! does the response go out. A labeler's second comparison of the same pair returns the first
//! record instead of storing another (a double submit is not a second opinion).

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::auth::pair_key;
use super::sync::{rank, Guarded};
use super::{Failure, Shared};
use crate::compose::sample::StoredCandidate;
use crate::feedback::{Feedback, FeedbackKind, Judged, Likert, Preference};
use crate::workspace::rating::{self, RatingTarget};

/// The longest text a labeler may send (a written summary, an edit, a critique), in characters.
pub const MAX_TEXT: usize = 20_000;

/// An answer about a node. Candidates are named by their hash (or 4+ hex digits of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    /// `a` and `b` as shown (left, right); `confidence` 1–9.
    Comparison {
        a: String,
        b: String,
        prefer: Preference,
        confidence: u8,
    },
    Likert {
        summary: String,
        coverage: u8,
        accuracy: u8,
        coherence: u8,
        overall: u8,
    },
    /// A summary the labeler wrote.
    Demonstration {
        text: String,
    },
    /// `original` edited into `text`.
    Correction {
        original: String,
        text: String,
    },
    Critique {
        summary: String,
        text: String,
    },
}

impl Answer {
    /// The first candidate the answer names, if it names one.
    fn first_candidate(&self) -> Option<&str> {
        match self {
            Answer::Comparison { a, .. } => Some(a),
            Answer::Likert { summary, .. } | Answer::Critique { summary, .. } => Some(summary),
            Answer::Correction { original, .. } => Some(original),
            Answer::Demonstration { .. } => None,
        }
    }
}

/// What a page's answer form sends (every field a string; checked by [`AnswerForm::answer`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AnswerForm {
    pub csrf: String,
    pub kind: String,
    pub a: String,
    pub b: String,
    pub prefer: String,
    pub confidence: String,
    /// `1` or `2`: which of the shown candidates a Likert rating, edit or critique is about.
    pub side: String,
    pub coverage: String,
    pub accuracy: String,
    pub coherence: String,
    pub overall: String,
    pub text: String,
    /// `1`: go to the next queued item after a comparison.
    pub advance: String,
    /// Milliseconds from the page shown to the answer (set by the page's script; empty
    /// without it).
    pub judge_ms: String,
}

/// Parses a form's `judge_ms`: empty is unmeasured; otherwise a whole number of milliseconds up
/// to a day.
pub fn judge_ms_field(value: &str) -> Result<Option<u64>, Failure> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    match v.parse::<u64>() {
        Ok(ms) if ms <= crate::feedback::decomp::MAX_JUDGE_MS => Ok(Some(ms)),
        _ => Err(Failure::bad_request(format!(
            "judge_ms must be milliseconds from 0 to a day (got '{}')",
            v.chars().take(20).flat_map(char::escape_default).collect::<String>()
        ))),
    }
}

fn number(name: &str, value: &str, range: std::ops::RangeInclusive<u8>) -> Result<u8, Failure> {
    match value.trim().parse::<u8>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(Failure::bad_request(format!(
            "{name} must be a number from {} to {} (got '{}')",
            range.start(),
            range.end(),
            value.chars().take(20).collect::<String>()
        ))),
    }
}

/// A candidate named by a form: hex digits (a hash or a prefix of one), trimmed.
fn hash_field(name: &str, value: &str) -> Result<String, Failure> {
    let v = value.trim();
    if v.len() <= 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(Failure::bad_request(format!(
            "{name} must name a candidate by hex digits of its hash (got '{}')",
            v.chars().take(20).flat_map(char::escape_default).collect::<String>()
        )))
    }
}

impl AnswerForm {
    /// The form with `a` and `b` checked (hex digits only: they go back into the next page's
    /// address, so nothing else may pass). Call before storing anything.
    pub fn checked(mut self) -> Result<AnswerForm, Failure> {
        self.a = hash_field("a", &self.a)?;
        self.b = hash_field("b", &self.b)?;
        Ok(self)
    }

    /// How long the answer took, when the page measured it.
    pub fn judge_ms(&self) -> Result<Option<u64>, Failure> {
        judge_ms_field(&self.judge_ms)
    }

    /// The answer the form describes.
    pub fn answer(&self) -> Result<Answer, Failure> {
        let side = || match self.side.trim() {
            "1" => Ok(self.a.clone()),
            "2" => Ok(self.b.clone()),
            other => Err(Failure::bad_request(format!(
                "side must be 1 or 2 (got '{}')",
                other.chars().take(20).collect::<String>()
            ))),
        };
        Ok(match self.kind.as_str() {
            "comparison" => Answer::Comparison {
                a: self.a.clone(),
                b: self.b.clone(),
                prefer: self.prefer.parse::<Preference>().map_err(Failure::bad_request)?,
                confidence: if self.confidence.trim().is_empty() {
                    5
                } else {
                    number("confidence", &self.confidence, 1..=9)?
                },
            },
            "likert" => Answer::Likert {
                summary: side()?,
                coverage: number("coverage", &self.coverage, 1..=7)?,
                accuracy: number("accuracy", &self.accuracy, 1..=7)?,
                coherence: number("coherence", &self.coherence, 1..=7)?,
                overall: number("overall", &self.overall, 1..=7)?,
            },
            "demonstration" => Answer::Demonstration { text: self.text.clone() },
            "correction" => Answer::Correction { original: side()?, text: self.text.clone() },
            "critique" => Answer::Critique { summary: side()?, text: self.text.clone() },
            other => {
                return Err(Failure::bad_request(format!(
                    "unknown answer kind '{}' (comparison, likert, demonstration, correction, critique)",
                    other.chars().take(30).collect::<String>()
                )))
            }
        })
    }
}

/// Per-labeler write locks: one labeler's answers are checked and stored one at a time (so a
/// double submit cannot store twice); different labelers write in parallel.
pub struct WriteLocks {
    map: Guarded<HashMap<String, Arc<Guarded<()>>>>,
}

impl Default for WriteLocks {
    fn default() -> WriteLocks {
        WriteLocks { map: Guarded::new("write locks", rank::LEAF, HashMap::new()) }
    }
}

impl WriteLocks {
    pub(super) fn for_labeler(&self, labeler: &str) -> Arc<Guarded<()>> {
        self.map.with(|m| {
            Arc::clone(
                m.entry(labeler.to_string())
                    .or_insert_with(|| Arc::new(Guarded::new("labeler writes", rank::WRITES, ()))),
            )
        })
    }
}

/// The node `label` of book `book_id`, ready for rating.
pub fn target(state: &Shared, book_id: &str, label: &str) -> Result<RatingTarget, Failure> {
    let loaded = state.tree(book_id)?;
    let nid = loaded.node_id(label)?;
    Ok(rating::finish(&state.ws, (*loaded).clone(), nid)?)
}

/// The node's distinct candidates (from the server's queue state when it has them).
pub fn candidates(state: &Shared, target: &RatingTarget) -> Result<Vec<StoredCandidate>, Failure> {
    let nodes = state.queue.snapshot().nodes;
    let cached: Option<Vec<StoredCandidate>> = {
        nodes.candidates(&target.input.input_key).map(|(texts, hashes)| {
            texts
                .iter()
                .zip(hashes)
                .enumerate()
                .map(|(i, (t, h))| StoredCandidate {
                    text: t.clone(),
                    hash: h.clone(),
                    gen_key: String::new(),
                    index: i,
                    mean_logprob: None,
                })
                .collect()
        })
    };
    match cached {
        Some(c) => Ok(c),
        None => Ok(target.candidates(&state.ws)?),
    }
}

fn text(name: &str, t: &str) -> Result<String, Failure> {
    if t.trim().is_empty() {
        return Err(Failure::bad_request(format!("the {name} is empty")));
    }
    if t.chars().count() > MAX_TEXT {
        return Err(Failure::bad_request(format!(
            "the {name} is longer than {MAX_TEXT} characters"
        )));
    }
    // Line endings as the browser sends them (CRLF) are stored as LF.
    Ok(t.replace("\r\n", "\n"))
}

/// Stores `answer` about node `label` of book `book_id` by `labeler` (blocking: call it on the
/// blocking pool). Returns the stored record, or for a repeated comparison the earlier one.
pub fn store(
    state: &Shared,
    labeler: &str,
    book_id: &str,
    label: &str,
    answer: &Answer,
    judge_ms: Option<u64>,
) -> Result<Feedback, Failure> {
    if judge_ms.is_some_and(|ms| ms > crate::feedback::decomp::MAX_JUDGE_MS) {
        return Err(Failure::bad_request("judge_ms must be at most a day"));
    }
    let mut target = target(state, book_id, label)?;
    let mut cands = candidates(state, &target)?;
    // The pair may be of the node's input as the queue knows it, while the tree just reloaded
    // shows a newer run's (a summary under way rewrites its run as nodes finish): then the
    // answer is about the queue's input, which has those candidates.
    if let Some(first) = answer.first_candidate() {
        let first = first.trim().to_ascii_lowercase();
        if first.len() >= 4 && !cands.iter().any(|c| c.hash.starts_with(&first)) {
            let nodes = state.queue.snapshot().nodes;
            let known = nodes.nodes.iter().find(|n| {
                n.book.as_deref() == Some(book_id)
                    && n.node.as_deref() == Some(label)
                    && nodes
                        .candidates(&n.input_key)
                        .is_some_and(|(_, h)| h.iter().any(|h| h.starts_with(&first)))
            });
            if let Some(n) = known {
                target.input.input_key = n.input_key.clone();
                target.input.input = n.input.clone();
                target.input.height = n.height;
                cands = candidates(state, &target)?;
            }
        }
    }
    let pick = |spec: &str| -> Result<&StoredCandidate, Failure> {
        let spec = spec.trim();
        if spec.len() < 4 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Failure::bad_request(format!(
                "name a candidate by its hash (4+ hex digits), not '{}'",
                spec.chars().take(20).collect::<String>()
            )));
        }
        let spec = spec.to_ascii_lowercase();
        let found: Vec<&StoredCandidate> =
            cands.iter().filter(|c| c.hash.starts_with(&spec)).collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(Failure::not_found(format!(
                "node {} has no candidate {spec} (it has {}; if a summary run just replaced the \
                 node's input, ask for the next pair again)",
                target.label(),
                cands.len()
            ))),
            _ => Err(Failure::bad_request(format!(
                "{spec} matches {} candidates of node {}; give more digits",
                found.len(),
                target.label()
            ))),
        }
    };
    let kind = match answer {
        Answer::Comparison { a, b, prefer, confidence } => {
            let (ca, cb) = (pick(a)?, pick(b)?);
            if ca.hash == cb.hash {
                return Err(Failure::bad_request("a and b name the same candidate"));
            }
            if !(1..=9).contains(confidence) {
                return Err(Failure::bad_request(format!(
                    "confidence must be from 1 to 9 (got {confidence})"
                )));
            }
            FeedbackKind::Comparison {
                a: Judged::new(ca.text.clone()),
                b: Judged::new(cb.text.clone()),
                prefer: *prefer,
                confidence: *confidence,
            }
        }
        Answer::Likert { summary, coverage, accuracy, coherence, overall } => {
            for (name, v) in [
                ("coverage", coverage),
                ("accuracy", accuracy),
                ("coherence", coherence),
                ("overall", overall),
            ] {
                if !(1..=7).contains(v) {
                    return Err(Failure::bad_request(format!(
                        "{name} must be from 1 to 7 (got {v})"
                    )));
                }
            }
            FeedbackKind::Likert {
                summary: Judged::new(pick(summary)?.text.clone()),
                scores: Likert {
                    coverage: *coverage,
                    accuracy: *accuracy,
                    coherence: *coherence,
                    overall: *overall,
                },
            }
        }
        Answer::Demonstration { text: t } => {
            FeedbackKind::Demonstration { summary: Judged::new(text("summary", t)?) }
        }
        Answer::Correction { original, text: t } => {
            let original = pick(original)?;
            let edited = text("edited summary", t)?;
            if edited.trim() == original.text.trim() {
                return Err(Failure::bad_request("the edit does not change the summary"));
            }
            FeedbackKind::Correction {
                original: Judged::new(original.text.clone()),
                edited: Judged::new(edited),
            }
        }
        Answer::Critique { summary, text: t } => FeedbackKind::Critique {
            summary: Judged::new(pick(summary)?.text.clone()),
            critique: text("critique", t)?,
        },
    };
    state.writes.for_labeler(labeler).with(|_| {
        if let FeedbackKind::Comparison { a, b, .. } = &kind {
            let key = pair_key(&target.input.input_key, &a.hash, &b.hash);
            if let Some(earlier) = state.queue.earlier_comparison(labeler, &key) {
                return Ok(earlier);
            }
        }
        let fb = rating::record_feedback_timed(&state.ws, &target, labeler, kind, judge_ms)?;
        state.queue.stored(fb.clone());
        Ok(fb)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_ms_is_optional_and_checked() {
        assert_eq!(judge_ms_field("").unwrap(), None);
        assert_eq!(judge_ms_field(" 4200 ").unwrap(), Some(4200));
        assert!(judge_ms_field("-3").unwrap_err().message.contains("judge_ms"));
        assert!(judge_ms_field("99999999999").is_err());
        assert!(judge_ms_field("soon").is_err());
    }
}
