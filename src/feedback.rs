//! Human feedback on task-tree nodes: the [`Feedback`] record and its five kinds, validation,
//! storage in [`Table::Feedback`], JSONL import/export (and TRL's `{prompt, chosen, rejected}`),
//! agreement between labelers, and the pairs a reward model learns from.
//!
//! A record is keyed by the node's *input key* (what the node summarizes, independent of model,
//! sampling and position in a book), so feedback survives re-decomposition and applies to
//! candidates of any model. It carries the exact texts it judges (and their blake3 hashes), the
//! text summarized, the tree height, the labeler and the time, so it can be exported and re-used
//! without the store it came from.
//!
//! Keys in [`Table::Feedback`]: `fb/<id>` for these records (the id hashes the record's content,
//! so importing the same record twice stores it once). Other feedback kinds keep their own
//! prefixes (split/merge corrections of the learned decomposition live under `split/`,
//! decomposition comparisons under `decomp/`); nothing
//! here reads or writes outside `fb/`.
//!
//! Submodules: [`io`] (JSONL import/export, TRL), [`decomp`] (decomposition comparisons, under
//! `decomp/`), [`sim`] (the simulated labeler), [`queue`]
//! (what to rate next), [`compared`] (which pairs were compared, by whom), [`split`] (split
//! corrections for the learned decomposer, under `split/`), [`groups`] (train/validation/test
//! groups: books, else clusters of near-identical inputs), [`stats`] (counts per labeler and
//! height, agreement and Krippendorff's α per height).
//!
//! Imports `store` only.

pub mod compared;
pub mod decomp;
pub mod groups;
pub mod io;
pub mod learn;
pub mod queue;
pub mod sim;
pub mod split;
pub mod stats;

pub use compared::ComparedPairs;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, Table};

/// The key prefix of feedback records in [`Table::Feedback`].
pub const KEY_PREFIX: &str = "fb/";

/// Version of the record layout (in every record, for future migrations).
pub const RECORD_VERSION: u32 = 1;

/// A text judged by a labeler, with its blake3 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judged {
    pub hash: String,
    pub text: String,
}

impl Judged {
    pub fn new(text: impl Into<String>) -> Judged {
        let text = text.into();
        Judged { hash: text_hash(&text), text }
    }
}

/// Which of two candidates a labeler preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preference {
    A,
    B,
    Tie,
}

impl std::str::FromStr for Preference {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "a" | "1" => Ok(Preference::A),
            "b" | "2" => Ok(Preference::B),
            "tie" | "t" => Ok(Preference::Tie),
            other => Err(format!("'{other}' is not a preference (a, b or tie)")),
        }
    }
}

/// Likert scores, 1 (worst) to 7 (best).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Likert {
    pub coverage: u8,
    pub accuracy: u8,
    pub coherence: u8,
    pub overall: u8,
}

/// What a labeler said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeedbackKind {
    /// Two candidates compared; `confidence` 1 (a guess) to 9 (certain), as in Stiennon et al.
    Comparison { a: Judged, b: Judged, prefer: Preference, confidence: u8 },
    /// Likert ratings of one candidate.
    Likert { summary: Judged, scores: Likert },
    /// A summary the labeler wrote.
    Demonstration { summary: Judged },
    /// A candidate the labeler edited: implies edited > original.
    Correction { original: Judged, edited: Judged },
    /// Free-text critique of one candidate.
    Critique { summary: Judged, critique: String },
}

impl FeedbackKind {
    pub fn name(&self) -> &'static str {
        match self {
            FeedbackKind::Comparison { .. } => "comparison",
            FeedbackKind::Likert { .. } => "likert",
            FeedbackKind::Demonstration { .. } => "demonstration",
            FeedbackKind::Correction { .. } => "correction",
            FeedbackKind::Critique { .. } => "critique",
        }
    }
}

/// One piece of feedback on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// Content hash of the record (see [`Feedback::compute_id`]); filled in by [`Feedback::new`].
    #[serde(default)]
    pub id: String,
    #[serde(default = "record_version")]
    pub version: u32,
    pub labeler: String,
    pub time_unix: u64,
    /// The node's input key (see `compose::input_key`).
    pub input_key: String,
    /// The text the node summarizes (a passage, or its children's summaries).
    pub input: String,
    /// blake3 of `input`.
    pub input_hash: String,
    pub height: u32,
    /// The book the node was rated in, when known (train/validation split by book).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub book: Option<String>,
    /// The node's label in that book's tree (`h1.3`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Milliseconds from the item being shown to the answer, when the web app measured it
    /// (older records and other front ends have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_ms: Option<u64>,
    #[serde(flatten)]
    pub kind: FeedbackKind,
}

fn record_version() -> u32 {
    RECORD_VERSION
}

/// What is wrong with a feedback record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid feedback: {0}")]
    Invalid(#[from] Invalid),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// Import found bad lines (1-based line numbers and what is wrong); nothing was stored.
    #[error("{path}: {} bad line(s), nothing imported (use --skip-bad to import the rest):\n{}", .bad.len(), format_bad(.bad))]
    BadLines { path: String, bad: Vec<(usize, String)> },
}

fn format_bad(bad: &[(usize, String)]) -> String {
    bad.iter().take(20).map(|(n, e)| format!("  line {n}: {e}")).collect::<Vec<_>>().join("\n")
}

/// blake3 of a text, hex.
pub fn text_hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

impl Feedback {
    /// A record for a node with `input` under `input_key`, stamped now, with its id computed.
    pub fn new(
        labeler: &str,
        input_key: &str,
        input: &str,
        height: u32,
        kind: FeedbackKind,
    ) -> Feedback {
        let mut fb = Feedback {
            id: String::new(),
            version: RECORD_VERSION,
            labeler: labeler.to_string(),
            time_unix: unix_now(),
            input_key: input_key.to_string(),
            input: input.to_string(),
            input_hash: text_hash(input),
            height,
            book: None,
            node: None,
            judge_ms: None,
            kind,
        };
        fb.id = fb.compute_id();
        fb
    }

    /// Sets where the node was rated (book id and label) and recomputes the id.
    pub fn at(mut self, book: Option<String>, node: Option<String>) -> Feedback {
        self.book = book;
        self.node = node;
        self.id = self.compute_id();
        self
    }

    /// Sets how long the answer took (ms from the item shown) and recomputes the id.
    pub fn timed(mut self, judge_ms: Option<u64>) -> Feedback {
        self.judge_ms = judge_ms;
        self.id = self.compute_id();
        self
    }

    /// blake3 of the record without its id.
    pub fn compute_id(&self) -> String {
        let mut copy = self.clone();
        copy.id = String::new();
        content_id(&copy)
    }

    pub fn key(&self) -> String {
        format!("{KEY_PREFIX}{}", self.id)
    }

    /// The key a record's pairs start from for the train/validation/test split: its book
    /// (`book:<id>`), else its input key (refined by [`groups::assign`], which joins
    /// near-duplicate inputs).
    pub fn split_group(&self) -> String {
        match &self.book {
            Some(book) => groups::book_group(book),
            None => self.input_key.clone(),
        }
    }

    /// Checks every field; fills in a missing id. Hashes must match their texts.
    pub fn validate(&mut self) -> Result<(), Invalid> {
        let bad = |m: String| Err(Invalid(m));
        if self.version != RECORD_VERSION {
            return bad(format!("unknown record version {}", self.version));
        }
        if self.labeler.trim().is_empty() {
            return bad("labeler is empty".into());
        }
        if self.input_key.trim().is_empty() {
            return bad("input_key is empty".into());
        }
        if self.input.trim().is_empty() {
            return bad("input is empty".into());
        }
        if self.input_hash != text_hash(&self.input) {
            return bad("input_hash does not match input".into());
        }
        if self.height > 64 {
            return bad(format!("height {} is implausible (at most 64)", self.height));
        }
        if let Some(ms) = self.judge_ms.filter(|&ms| ms > decomp::MAX_JUDGE_MS) {
            return bad(format!("judge_ms {ms} is more than a day"));
        }
        let check = |name: &str, j: &Judged| -> Result<(), Invalid> {
            if j.text.trim().is_empty() {
                return Err(Invalid(format!("{name}: text is empty")));
            }
            if j.hash != text_hash(&j.text) {
                return Err(Invalid(format!("{name}: hash does not match text")));
            }
            Ok(())
        };
        match &self.kind {
            FeedbackKind::Comparison { a, b, confidence, .. } => {
                check("a", a)?;
                check("b", b)?;
                if a.hash == b.hash {
                    return bad("a and b are the same text".into());
                }
                if !(1..=9).contains(confidence) {
                    return bad(format!("confidence {confidence} is not in 1..=9"));
                }
            }
            FeedbackKind::Likert { summary, scores } => {
                check("summary", summary)?;
                for (name, v) in [
                    ("coverage", scores.coverage),
                    ("accuracy", scores.accuracy),
                    ("coherence", scores.coherence),
                    ("overall", scores.overall),
                ] {
                    if !(1..=7).contains(&v) {
                        return bad(format!("likert {name} {v} is not in 1..=7"));
                    }
                }
            }
            FeedbackKind::Demonstration { summary } => check("summary", summary)?,
            FeedbackKind::Correction { original, edited } => {
                check("original", original)?;
                check("edited", edited)?;
                if original.hash == edited.hash {
                    return bad("the correction does not change the text".into());
                }
            }
            FeedbackKind::Critique { summary, critique } => {
                check("summary", summary)?;
                if critique.trim().is_empty() {
                    return bad("critique is empty".into());
                }
            }
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

/// Stores one record (validated) and flushes. Returns its id.
pub fn put(store: &Store, mut fb: Feedback) -> Result<String, FeedbackError> {
    fb.validate()?;
    store.put(Table::Feedback, &fb.key(), &fb)?;
    store.flush()?;
    Ok(fb.id)
}

/// Stores many records at once (atomically), after validating all of them.
pub fn put_all(store: &Store, records: Vec<Feedback>) -> Result<usize, FeedbackError> {
    let mut items = Vec::with_capacity(records.len());
    for mut fb in records {
        fb.validate()?;
        items.push((fb.key(), fb));
    }
    store.put_batch(Table::Feedback, &items)?;
    store.flush()?;
    Ok(items.len())
}

/// Every feedback record, oldest first.
pub fn all(store: &Store) -> Result<Vec<Feedback>, FeedbackError> {
    // A corrupt record is reported (naming its key) and skipped: one bad value must not stop
    // rating, the queue or training (`rrm db check --repair` moves it aside).
    let mut records: Vec<Feedback> = store
        .scan_lenient::<Feedback>(Table::Feedback, KEY_PREFIX)?
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    records.sort_by(|a, b| a.time_unix.cmp(&b.time_unix).then_with(|| a.id.cmp(&b.id)));
    Ok(records)
}

/// The record whose id starts with `prefix` (4+ characters); an error when none or several.
pub fn find(store: &Store, prefix: &str) -> Result<Option<Feedback>, FeedbackError> {
    if prefix.len() < 4 {
        return Err(Invalid("a feedback id prefix needs at least 4 characters".into()).into());
    }
    let found =
        store.scan_lenient::<Feedback>(Table::Feedback, &format!("{KEY_PREFIX}{prefix}"))?;
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.into_iter().next().map(|(_, f)| f)),
        n => {
            Err(Invalid(format!("'{prefix}' matches {n} feedback records; give more of the id"))
                .into())
        }
    }
}

/// Where a training pair comes from: which kind of feedback implied it (for weighting, the
/// feedback-kind ablation, and honest reporting). `Synthetic` pairs were judged by a script
/// (e.g. ROUGE against references), never by a person.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A person compared the two texts.
    #[default]
    Comparison,
    /// Two texts a person rated on the Likert scale (same node, same labeler).
    Likert,
    /// A person's edit of a candidate beats the original.
    Correction,
    /// A text a person wrote beats a model's candidate of the same node.
    Demonstration,
    /// A candidate a person critiqued loses to a sibling nobody critiqued.
    Critique,
    /// Judged by a script, not a person.
    Synthetic,
}

impl Origin {
    pub const ALL: [Origin; 6] = [
        Origin::Comparison,
        Origin::Likert,
        Origin::Correction,
        Origin::Demonstration,
        Origin::Critique,
        Origin::Synthetic,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Origin::Comparison => "comparison",
            Origin::Likert => "likert",
            Origin::Correction => "correction",
            Origin::Demonstration => "demonstration",
            Origin::Critique => "critique",
            Origin::Synthetic => "synthetic",
        }
    }

    pub fn parse(s: &str) -> Option<Origin> {
        Origin::ALL.into_iter().find(|o| o.name() == s.trim().to_ascii_lowercase())
    }
}

fn one() -> f32 {
    1.0
}

fn is_one(x: &f32) -> bool {
    *x == 1.0
}

/// A preference pair for a reward model: `chosen` should score above `rejected` on `input`.
/// `target` is the probability that chosen wins (1 for a clear preference, 0.5 for a tie).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub height: u32,
    pub input: String,
    pub chosen: String,
    pub rejected: String,
    pub target: f32,
    /// Train/validation/test split group: pairs from one book, or with near-duplicate inputs,
    /// share one ([`groups::assign`]).
    pub group: String,
    /// Weight of the pair in the loss (1 unless a labeler's confidence or the kind says less).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: f32,
    /// Which feedback implied the pair.
    #[serde(default)]
    pub origin: Origin,
    /// Human reference summaries of `input`, when known (for the reference-overlap baseline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
}

impl Pair {
    /// A pair of weight 1 from a comparison, without references.
    pub fn new(
        height: u32,
        input: &str,
        chosen: &str,
        rejected: &str,
        target: f32,
        group: &str,
    ) -> Pair {
        Pair {
            height,
            input: input.to_string(),
            chosen: chosen.to_string(),
            rejected: rejected.to_string(),
            target,
            group: group.to_string(),
            weight: 1.0,
            origin: Origin::Comparison,
            references: Vec::new(),
        }
    }

    pub fn with_origin(mut self, origin: Origin) -> Pair {
        self.origin = origin;
        self
    }

    pub fn with_weight(mut self, weight: f32) -> Pair {
        self.weight = weight;
        self
    }
}

/// A Likert-rated text of a node: its record, the text, and its rank key.
type LikertEntry<'a> = (&'a Feedback, &'a Judged, u32);

/// Turns records into preference pairs: comparisons as given (ties as target 0.5), Likert
/// ratings within a node into pairs by their overall score (then the sum of the others),
/// corrections into edited > original. Demonstrations and critiques make no pairs.
pub fn to_pairs(records: &[Feedback]) -> Vec<Pair> {
    let mut pairs = Vec::new();
    // Likert: per (input key, labeler), the latest score of each text.
    let mut likert: BTreeMap<(String, String), BTreeMap<String, LikertEntry<'_>>> = BTreeMap::new();
    for fb in records {
        let pair = |chosen: &str, rejected: &str, target: f32| {
            Pair::new(fb.height, &fb.input, chosen, rejected, target, &fb.split_group())
        };
        match &fb.kind {
            FeedbackKind::Comparison { a, b, prefer, .. } => match prefer {
                Preference::A => pairs.push(pair(&a.text, &b.text, 1.0)),
                Preference::B => pairs.push(pair(&b.text, &a.text, 1.0)),
                Preference::Tie => pairs.push(pair(&a.text, &b.text, 0.5)),
            },
            FeedbackKind::Correction { original, edited } => {
                pairs.push(pair(&edited.text, &original.text, 1.0).with_origin(Origin::Correction))
            }
            FeedbackKind::Likert { summary, scores } => {
                let total = u32::from(scores.overall) * 100
                    + u32::from(scores.coverage)
                    + u32::from(scores.accuracy)
                    + u32::from(scores.coherence);
                likert
                    .entry((fb.input_key.clone(), fb.labeler.clone()))
                    .or_default()
                    .insert(summary.hash.clone(), (fb, summary, total));
            }
            FeedbackKind::Demonstration { .. } | FeedbackKind::Critique { .. } => {}
        }
    }
    for rated in likert.values() {
        let rated: Vec<_> = rated.values().collect();
        for i in 0..rated.len() {
            for j in i + 1..rated.len() {
                let (fa, ja, sa) = rated[i];
                let (_, jb, sb) = rated[j];
                let (chosen, rejected, target) = match sa.cmp(sb) {
                    std::cmp::Ordering::Greater => (ja, jb, 1.0),
                    std::cmp::Ordering::Less => (jb, ja, 1.0),
                    std::cmp::Ordering::Equal => (ja, jb, 0.5),
                };
                pairs.push(
                    Pair::new(
                        fa.height,
                        &fa.input,
                        &chosen.text,
                        &rejected.text,
                        target,
                        &fa.split_group(),
                    )
                    .with_origin(Origin::Likert),
                );
            }
        }
    }
    groups::assign(&mut pairs);
    pairs
}

/// Agreement between labelers who compared the same pair of texts on the same node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Pairs of texts compared by at least two labelers.
    pub shared_pairs: usize,
    /// Pairs of judgments by different labelers on the same texts.
    pub judgment_pairs: usize,
    /// Of those, how many agree (same winner, or both tie).
    pub agreeing: usize,
    /// `agreeing / judgment_pairs`; `None` when no pair was compared twice.
    pub rate: Option<f64>,
    /// Per labeler pair (`alice+bob`): (agreeing, judgment pairs).
    pub by_labelers: BTreeMap<String, (usize, usize)>,
}

/// Agreement rate over every pair of texts two or more labelers compared (each labeler's latest
/// judgment of a pair counts).
pub fn agreement(records: &[Feedback]) -> Agreement {
    // (input key, lower hash, higher hash) → labeler → winner hash (None: tie).
    let mut judged: HashMap<(String, String, String), BTreeMap<String, Option<String>>> =
        HashMap::new();
    for fb in records {
        if let FeedbackKind::Comparison { a, b, prefer, .. } = &fb.kind {
            let (lo, hi) = if a.hash <= b.hash { (&a.hash, &b.hash) } else { (&b.hash, &a.hash) };
            let winner = match prefer {
                Preference::A => Some(a.hash.clone()),
                Preference::B => Some(b.hash.clone()),
                Preference::Tie => None,
            };
            judged
                .entry((fb.input_key.clone(), lo.clone(), hi.clone()))
                .or_default()
                .insert(fb.labeler.clone(), winner);
        }
    }
    let mut out = Agreement::default();
    for labelers in judged.values() {
        if labelers.len() < 2 {
            continue;
        }
        out.shared_pairs += 1;
        let list: Vec<_> = labelers.iter().collect();
        for i in 0..list.len() {
            for j in i + 1..list.len() {
                let agree = list[i].1 == list[j].1;
                out.judgment_pairs += 1;
                out.agreeing += usize::from(agree);
                let entry =
                    out.by_labelers.entry(format!("{}+{}", list[i].0, list[j].0)).or_default();
                entry.0 += usize::from(agree);
                entry.1 += 1;
            }
        }
    }
    out.rate = (out.judgment_pairs > 0).then(|| out.agreeing as f64 / out.judgment_pairs as f64);
    out
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The id of a stored record: blake3 (32 hex digits) of its JSON with the id field emptied
/// (feedback records, decomposition comparisons).
pub(crate) fn content_id(without_id: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(without_id).unwrap_or_default();
    blake3::hash(&bytes).to_hex()[..32].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn comparison(
        labeler: &str,
        input: &str,
        a: &str,
        b: &str,
        p: Preference,
    ) -> Feedback {
        Feedback::new(
            labeler,
            &format!("key-{}", text_hash(input)),
            input,
            0,
            FeedbackKind::Comparison {
                a: Judged::new(a),
                b: Judged::new(b),
                prefer: p,
                confidence: 7,
            },
        )
    }

    fn likert(labeler: &str, input: &str, s: &str, overall: u8) -> Feedback {
        Feedback::new(
            labeler,
            "k",
            input,
            1,
            FeedbackKind::Likert {
                summary: Judged::new(s),
                scores: Likert { coverage: 4, accuracy: 4, coherence: 4, overall },
            },
        )
    }

    #[test]
    fn likert_becomes_pairs_within_a_node() {
        let records = vec![
            likert("x", "in", "s1", 2),
            likert("x", "in", "s2", 6),
            likert("x", "in", "s3", 6),
        ];
        let pairs = to_pairs(&records);
        assert_eq!(pairs.len(), 3);
        let clear: Vec<_> = pairs.iter().filter(|p| p.target == 1.0).collect();
        assert_eq!(clear.len(), 2);
        assert!(clear.iter().all(|p| p.rejected == "s1"));
        let tie: Vec<_> = pairs.iter().filter(|p| p.target == 0.5).collect();
        assert_eq!(tie.len(), 1);
        // Different labelers' Likert scales are not mixed.
        let other = vec![likert("x", "in", "s1", 2), likert("y", "in", "s2", 6)];
        assert!(to_pairs(&other).is_empty());
    }

    #[test]
    fn corrections_and_comparisons_become_pairs() {
        let c = comparison("x", "input", "good", "bad", Preference::A);
        let d = comparison("x", "input", "bad", "good", Preference::B);
        let e = Feedback::new(
            "x",
            "k",
            "input",
            0,
            FeedbackKind::Correction {
                original: Judged::new("orig"),
                edited: Judged::new("fixed"),
            },
        );
        let pairs = to_pairs(&[c, d, e]);
        assert_eq!(pairs[0].chosen, "good");
        assert_eq!(pairs[1].chosen, "good");
        assert_eq!((pairs[2].chosen.as_str(), pairs[2].rejected.as_str()), ("fixed", "orig"));
    }

    #[test]
    fn validation_catches_bad_fields() {
        let mut ok = comparison("x", "input", "a", "b", Preference::A);
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.kind = FeedbackKind::Comparison {
            a: Judged::new("a"),
            b: Judged::new("b"),
            prefer: Preference::A,
            confidence: 0,
        };
        assert!(bad.validate().unwrap_err().0.contains("confidence"));
        let mut bad = ok.clone();
        bad.input_hash = "00".into();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.labeler = " ".into();
        assert!(bad.validate().is_err());
        let mut same = comparison("x", "input", "a", "a", Preference::A);
        assert!(same.validate().is_err());
        let mut tampered = ok.clone();
        tampered.height = 3;
        assert!(tampered.validate().unwrap_err().0.contains("id"));
    }

    #[test]
    fn time_to_judge_is_optional_and_old_records_keep_their_ids() {
        let old = comparison("x", "input", "a", "b", Preference::A);
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("judge_ms"), "{json}");
        let mut back: Feedback = serde_json::from_str(&json).unwrap();
        back.validate().unwrap();
        assert_eq!(back, old);
        let timed = old.clone().timed(Some(5300));
        assert_ne!(timed.id, old.id);
        let mut again: Feedback =
            serde_json::from_str(&serde_json::to_string(&timed).unwrap()).unwrap();
        again.validate().unwrap();
        assert_eq!(again.judge_ms, Some(5300));
        let mut slow = old.timed(Some(decomp::MAX_JUDGE_MS + 1));
        assert!(slow.validate().unwrap_err().0.contains("judge_ms"));
    }

    #[test]
    fn agreement_counts_labeler_pairs_on_the_same_texts() {
        let records = vec![
            comparison("ann", "in", "s1", "s2", Preference::A),
            // Same pair, other order, same winner.
            comparison("bob", "in", "s2", "s1", Preference::B),
            comparison("cat", "in", "s1", "s2", Preference::B),
            // Only one labeler: not shared.
            comparison("ann", "in", "s3", "s4", Preference::A),
        ];
        let ag = agreement(&records);
        assert_eq!(ag.shared_pairs, 1);
        assert_eq!(ag.judgment_pairs, 3);
        assert_eq!(ag.agreeing, 1);
        assert!((ag.rate.unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(agreement(&records[3..]).rate, None);
    }

    #[test]
    fn put_find_all_roundtrip_and_split_prefix_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        store.put(Table::Feedback, "split/x", &serde_json::json!({"other": true})).unwrap();
        let fb = comparison("x", "input", "a", "b", Preference::Tie);
        let id = put(&store, fb.clone()).unwrap();
        assert_eq!(all(&store).unwrap(), vec![fb]);
        assert_eq!(find(&store, &id[..6]).unwrap().unwrap().id, id);
        assert!(find(&store, "ffff").unwrap().is_none());
    }
}
