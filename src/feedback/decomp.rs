//! Decomposition comparisons, the seventh feedback kind: a person compares two segmentations
//! of the same span of a book (which gives the better subtasks), or marks one boundary of one
//! side as bad.
//!
//! Stored in the feedback table under `decomp/<id>` (the id hashes the record's content, like
//! [`super::Feedback`]'s), exported and imported with the other kinds as JSONL lines
//! `{"decomposition": {…}}`. This module never touches the store beyond [`put`] and [`all`].
//!
//! **Why not a TRL row.** TRL's preference rows are `{prompt, chosen, rejected}` texts scored
//! by a reward model that reads text; a segmentation is a set of cut positions in a text, and
//! the model that learns from it is the boundary scorer, not a text reward model. Flattening a
//! segmentation into text (leaves joined by markers) would let a summary reward model train on
//! it as if it were a summary. So the TRL export leaves these records out and says how many;
//! rrm's own JSONL carries them whole.
//!
//! **As pairwise labels over segmentations** (for a trainer of the boundary model):
//! [`DecompComparison::preference`] gives (chosen, rejected, target) — target 1 for a clear
//! preference, 0.5 for a tie, each weighted by the confidence — and
//! [`DecompComparison::bad_boundary`] a cut position that should not be a boundary. Both
//! segmentations are stored as absolute byte offsets of the cuts inside `[start, end)` of the
//! book (`book` is its content id), with which decomposer and seed drew them, so a trainer can
//! rebuild the units and gap labels from the book text alone; the span's text is carried too.

use serde::{Deserialize, Serialize};

use super::{text_hash, FeedbackError, Invalid, Preference};
use crate::store::{Store, Table};

/// Key prefix of decomposition comparisons in the feedback table.
pub const KEY_PREFIX: &str = "decomp/";

/// Version of this record's layout.
pub const DECOMP_VERSION: u32 = 1;

/// The longest span a comparison may cover, in bytes (a few chapters at most).
pub const MAX_SPAN_BYTES: usize = 2_000_000;

/// One segmentation of the span: where its leaves are cut, and what drew it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segmentation {
    /// The decomposer (`fixed`, `learned`, `similarity`).
    pub decomposer: String,
    /// The seed of a sampled draw (fixed: jittered leaf sizes; learned: the DP under perturbed
    /// gap scores); `None` for the decomposer's deterministic output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Absolute byte offsets in the book of the cuts between leaves, strictly increasing,
    /// strictly inside the span (a span cut nowhere is one leaf: no boundaries).
    pub boundaries: Vec<usize>,
}

impl Segmentation {
    /// `fixed`, `learned:7`.
    pub fn label(&self) -> String {
        match self.seed {
            Some(s) => format!("{}:{s}", self.decomposer),
            None => self.decomposer.clone(),
        }
    }

    /// The leaves as absolute byte spans `(start, end)` of a span `[start, end)`.
    pub fn leaves(&self, start: usize, end: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::with_capacity(self.boundaries.len() + 1);
        let mut from = start;
        for &b in &self.boundaries {
            out.push((from, b));
            from = b;
        }
        out.push((from, end));
        out
    }
}

/// Which side of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    A,
    B,
}

/// What the person said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum DecompAnswer {
    /// Which segmentation gives the better subtasks; `confidence` 1 (a guess) to 9 (certain).
    Prefer { prefer: Preference, confidence: u8 },
    /// The boundary at byte `at` of side `side` is a bad place to cut.
    BadBoundary { side: Side, at: usize },
}

/// One decomposition comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecompComparison {
    /// Content hash of the record (see [`DecompComparison::compute_id`]).
    #[serde(default)]
    pub id: String,
    #[serde(default = "version")]
    pub version: u32,
    pub labeler: String,
    pub time_unix: u64,
    /// The book's content id.
    pub book: String,
    /// The book's title, for people reading the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The node of the book's tree whose span this is (`h1.3`), when the span came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The span compared, bytes `[start, end)` of the book's normalized text.
    pub start: usize,
    pub end: usize,
    /// The span's text and its blake3 hash.
    pub text: String,
    pub text_hash: String,
    /// The two segmentations, in the order shown (A left or first).
    pub a: Segmentation,
    pub b: Segmentation,
    #[serde(flatten)]
    pub answer: DecompAnswer,
    /// Milliseconds from the pair being shown to the answer, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_ms: Option<u64>,
}

fn version() -> u32 {
    DECOMP_VERSION
}

impl DecompComparison {
    /// A record stamped now, with its id computed. `text` is the span's text.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        labeler: &str,
        book: &str,
        start: usize,
        text: &str,
        a: Segmentation,
        b: Segmentation,
        answer: DecompAnswer,
        judge_ms: Option<u64>,
    ) -> DecompComparison {
        let mut r = DecompComparison {
            id: String::new(),
            version: DECOMP_VERSION,
            labeler: labeler.to_string(),
            time_unix: super::unix_now(),
            book: book.to_string(),
            title: None,
            node: None,
            start,
            end: start + text.len(),
            text: text.to_string(),
            text_hash: text_hash(text),
            a,
            b,
            answer,
            judge_ms,
        };
        r.id = r.compute_id();
        r
    }

    /// Sets the title and node label, and recomputes the id.
    pub fn named(mut self, title: Option<String>, node: Option<String>) -> DecompComparison {
        self.title = title;
        self.node = node;
        self.id = self.compute_id();
        self
    }

    pub fn compute_id(&self) -> String {
        let mut copy = self.clone();
        copy.id = String::new();
        super::content_id(&copy)
    }

    pub fn key(&self) -> String {
        format!("{KEY_PREFIX}{}", self.id)
    }

    /// The segmentation on `side`.
    pub fn side(&self, side: Side) -> &Segmentation {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// As a pairwise label: (chosen, rejected, probability chosen wins, weight from the
    /// confidence: 1 at 9, 1/9 at 1). `None` for a bad-boundary answer.
    pub fn preference(&self) -> Option<(&Segmentation, &Segmentation, f32, f32)> {
        match &self.answer {
            DecompAnswer::Prefer { prefer, confidence } => {
                let w = f32::from(*confidence) / 9.0;
                Some(match prefer {
                    Preference::A => (&self.a, &self.b, 1.0, w),
                    Preference::B => (&self.b, &self.a, 1.0, w),
                    Preference::Tie => (&self.a, &self.b, 0.5, w),
                })
            }
            DecompAnswer::BadBoundary { .. } => None,
        }
    }

    /// The byte offset of a boundary marked bad (a negative gap label), if that was the answer.
    pub fn bad_boundary(&self) -> Option<usize> {
        match self.answer {
            DecompAnswer::BadBoundary { at, .. } => Some(at),
            DecompAnswer::Prefer { .. } => None,
        }
    }

    /// A short description of the answer (`prefer B (7/9)`, `bad boundary A@1234`).
    pub fn describe(&self) -> String {
        match &self.answer {
            DecompAnswer::Prefer { prefer: Preference::Tie, confidence } => {
                format!("tie ({confidence}/9)")
            }
            DecompAnswer::Prefer { prefer, confidence } => {
                format!("prefer {prefer:?} ({confidence}/9)")
            }
            DecompAnswer::BadBoundary { side, at } => format!("bad boundary {side:?}@{at}"),
        }
    }

    /// Checks every field; fills in a missing id.
    pub fn validate(&mut self) -> Result<(), Invalid> {
        let bad = |m: String| Err(Invalid(m));
        if self.version != DECOMP_VERSION {
            return bad(format!("unknown decomposition record version {}", self.version));
        }
        if self.labeler.trim().is_empty() {
            return bad("labeler is empty".into());
        }
        if self.book.len() < 8 || !self.book.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!("book '{}' is not a book id (hex digits)", preview(&self.book)));
        }
        if self.start >= self.end {
            return bad(format!("span {}..{} is empty or reversed", self.start, self.end));
        }
        if self.end - self.start > MAX_SPAN_BYTES {
            return bad(format!(
                "span {}..{} is longer than {MAX_SPAN_BYTES} bytes",
                self.start, self.end
            ));
        }
        if self.text.len() != self.end - self.start {
            return bad(format!(
                "text has {} bytes, the span {}..{} has {}",
                self.text.len(),
                self.start,
                self.end,
                self.end - self.start
            ));
        }
        if self.text_hash != text_hash(&self.text) {
            return bad("text_hash does not match text".into());
        }
        for (name, seg) in [("a", &self.a), ("b", &self.b)] {
            if seg.decomposer.trim().is_empty() {
                return bad(format!("{name}: decomposer is empty"));
            }
            let mut last = self.start;
            for &cut in &seg.boundaries {
                if cut <= last || cut >= self.end {
                    return bad(format!(
                        "{name}: boundary {cut} is not increasing inside the span {}..{}",
                        self.start, self.end
                    ));
                }
                if !self.text.is_char_boundary(cut - self.start) {
                    return bad(format!("{name}: boundary {cut} is inside a character"));
                }
                last = cut;
            }
        }
        if self.a.boundaries == self.b.boundaries {
            return bad("a and b are the same segmentation".into());
        }
        match &self.answer {
            DecompAnswer::Prefer { confidence, .. } => {
                if !(1..=9).contains(confidence) {
                    return bad(format!("confidence {confidence} is not in 1..=9"));
                }
            }
            DecompAnswer::BadBoundary { side, at } => {
                if !self.side(*side).boundaries.contains(at) {
                    return bad(format!("{at} is not a boundary of side {side:?}"));
                }
            }
        }
        if self.judge_ms.is_some_and(|ms| ms > MAX_JUDGE_MS) {
            return bad(format!("judge_ms {:?} is more than a day", self.judge_ms));
        }
        let id = self.compute_id();
        if self.id.is_empty() {
            self.id = id;
        } else if self.id != id {
            return bad(format!("id {} does not match the record's content ({id})", self.id));
        }
        Ok(())
    }
}

/// The longest time to judge accepted: a day, in milliseconds.
pub const MAX_JUDGE_MS: u64 = 24 * 3600 * 1000;

fn preview(s: &str) -> String {
    s.chars().take(20).flat_map(char::escape_default).collect()
}

/// Stores one record (validated) and flushes. Returns its id.
pub fn put(store: &Store, mut r: DecompComparison) -> Result<String, FeedbackError> {
    r.validate()?;
    store.put(Table::Feedback, &r.key(), &r)?;
    store.flush()?;
    Ok(r.id)
}

/// Every decomposition comparison, oldest first (a corrupt record is reported and skipped).
pub fn all(store: &Store) -> Result<Vec<DecompComparison>, FeedbackError> {
    let mut records: Vec<DecompComparison> = store
        .scan_lenient::<DecompComparison>(Table::Feedback, KEY_PREFIX)?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    records.sort_by(|a, b| a.time_unix.cmp(&b.time_unix).then_with(|| a.id.cmp(&b.id)));
    Ok(records)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(answer: DecompAnswer) -> DecompComparison {
        let text = "Marta baked bread. Tomas came.\n\nThe sun rose.";
        DecompComparison::new(
            "ann",
            &"ab".repeat(32),
            100,
            text,
            Segmentation { decomposer: "fixed".into(), seed: None, boundaries: vec![119] },
            Segmentation { decomposer: "learned".into(), seed: Some(3), boundaries: vec![132] },
            answer,
            Some(4200),
        )
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let ok = sample(DecompAnswer::Prefer { prefer: Preference::B, confidence: 7 });
        assert!(ok.clone().validate().is_ok());
        let (chosen, rejected, target, w) = ok.preference().unwrap();
        assert_eq!(
            (chosen.decomposer.as_str(), rejected.decomposer.as_str()),
            ("learned", "fixed")
        );
        assert_eq!(target, 1.0);
        assert!((w - 7.0 / 9.0).abs() < 1e-6);
        let err = |mut r: DecompComparison| r.validate().unwrap_err().0;
        let mut r = ok.clone();
        r.b.boundaries = vec![119];
        assert!(err(r).contains("same segmentation"));
        let mut r = ok.clone();
        r.a.boundaries = vec![150];
        assert!(err(r).contains("boundary 150"));
        let mut r = ok.clone();
        r.text_hash = "00".into();
        assert!(err(r).contains("text_hash"));
        let mut r = ok.clone();
        r.book = "not-hex".into();
        assert!(err(r).contains("book"));
        let mut r = ok.clone();
        r.answer = DecompAnswer::Prefer { prefer: Preference::A, confidence: 10 };
        assert!(err(r).contains("confidence"));
        let mut r = ok.clone();
        r.answer = DecompAnswer::BadBoundary { side: Side::A, at: 132 };
        assert!(err(r).contains("not a boundary of side A"));
        let mut r = ok.clone();
        r.labeler = "bob".into();
        assert!(err(r).contains("does not match"));
        let bb = sample(DecompAnswer::BadBoundary { side: Side::B, at: 132 });
        assert!(bb.clone().validate().is_ok());
        assert_eq!(bb.bad_boundary(), Some(132));
        assert!(bb.preference().is_none());
        assert_eq!(ok.a.leaves(100, 145), vec![(100, 119), (119, 145)]);
    }

    #[test]
    fn stored_and_read_back_beside_other_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let fb = crate::feedback::tests::comparison("x", "in", "a", "b", Preference::A);
        crate::feedback::put(&store, fb).unwrap();
        let r = sample(DecompAnswer::Prefer { prefer: Preference::Tie, confidence: 5 });
        let id = put(&store, r.clone()).unwrap();
        assert_eq!(all(&store).unwrap(), vec![r]);
        assert_eq!(crate::feedback::all(&store).unwrap().len(), 1);
        assert!(id.len() == 32);
        // A record without the optional fields (an older writer) loads.
        let mut json = serde_json::to_value(sample(DecompAnswer::Prefer {
            prefer: Preference::A,
            confidence: 5,
        }))
        .unwrap();
        let obj = json.as_object_mut().unwrap();
        obj.remove("judge_ms");
        obj.remove("id");
        obj.remove("version");
        let mut back: DecompComparison = serde_json::from_value(json).unwrap();
        back.validate().unwrap();
        assert_eq!(back.judge_ms, None);
    }
}
