//! JSONL import and export of feedback, and TRL's preference format.
//!
//! - Our JSONL: one [`Feedback`] record per line, exactly as stored, and one line
//!   `{"split": {…}}` per split correction ([`SplitFeedback`]), and one line
//!   `{"decomposition": {…}}` per decomposition comparison ([`DecompComparison`]; older files
//!   without them load as before). Import validates every line
//!   first and reports each bad one by its 1-based number; with any bad line nothing is stored
//!   (all or nothing), unless `skip_bad`, which stores the good lines and reports the bad. The
//!   good records are written in one atomic batch, so a crash mid-import stores none.
//! - TRL (`{"prompt", "chosen", "rejected"}`, optional `"height"`): exported from comparisons,
//!   corrections and Likert pairs (ties left out; decomposition comparisons are not text
//!   preferences and stay out, see [`super::decomp`]); read back as [`Pair`]s by [`read_trl`] for
//!   training and evaluating reward models on external preference sets.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::decomp::DecompComparison;
use super::split::SplitFeedback;
use super::{to_pairs, Feedback, FeedbackError, FeedbackKind, Judged, Likert, Origin, Pair};
use crate::store::{Store, Table};

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Feedback records stored (including ones already present, which are overwritten by
    /// identical ones).
    pub imported: usize,
    /// Split corrections stored.
    #[serde(default)]
    pub splits: usize,
    /// Decomposition comparisons stored.
    #[serde(default)]
    pub decompositions: usize,
    /// Blank lines ignored.
    pub blank: usize,
    /// Bad lines (1-based number, what is wrong), skipped with `skip_bad`.
    pub bad: Vec<(usize, String)>,
}

/// A split-correction line of our JSONL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitLine {
    split: SplitFeedback,
}

/// A decomposition-comparison line of our JSONL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecompLine {
    decomposition: DecompComparison,
}

/// What a JSONL text holds: good records, good split corrections and decomposition
/// comparisons, bad lines, blank lines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub feedback: Vec<Feedback>,
    pub splits: Vec<SplitFeedback>,
    pub decompositions: Vec<DecompComparison>,
    pub bad: Vec<(usize, String)>,
    pub blank: usize,
}

/// Parses and validates JSONL text.
pub fn parse_jsonl(text: &str) -> Parsed {
    let mut out = Parsed::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            out.blank += 1;
            continue;
        }
        if line.trim_start().starts_with("{\"split\"") {
            match serde_json::from_str::<SplitLine>(line) {
                Ok(SplitLine { split }) => match split.validate() {
                    Ok(()) => out.splits.push(split),
                    Err(e) => out.bad.push((n, format!("bad split correction: {e}"))),
                },
                Err(e) => out.bad.push((n, format!("not a split correction: {e}"))),
            }
            continue;
        }
        if line.trim_start().starts_with("{\"decomposition\"") {
            match serde_json::from_str::<DecompLine>(line) {
                Ok(DecompLine { mut decomposition }) => match decomposition.validate() {
                    Ok(()) => out.decompositions.push(decomposition),
                    Err(e) => out.bad.push((n, format!("bad decomposition comparison: {e}"))),
                },
                Err(e) => out.bad.push((n, format!("not a decomposition comparison: {e}"))),
            }
            continue;
        }
        match serde_json::from_str::<Feedback>(line) {
            Ok(mut fb) => match fb.validate() {
                Ok(()) => out.feedback.push(fb),
                Err(e) => out.bad.push((n, e.0)),
            },
            Err(e) => out.bad.push((n, format!("not a feedback record: {e}"))),
        }
    }
    out
}

/// Imports a JSONL file (all or nothing unless `skip_bad`), feedback and split corrections in
/// one atomic batch.
pub fn import_file(
    store: &Store,
    path: &Path,
    skip_bad: bool,
) -> Result<ImportReport, FeedbackError> {
    let bytes = std::fs::read(path)
        .map_err(|source| FeedbackError::Io { path: path.display().to_string(), source })?;
    let text = String::from_utf8(bytes).map_err(|e| FeedbackError::BadLines {
        path: path.display().to_string(),
        bad: vec![(0, format!("the file is not UTF-8 text: {e}"))],
    })?;
    let parsed = parse_jsonl(&text);
    if !parsed.bad.is_empty() && !skip_bad {
        return Err(FeedbackError::BadLines { path: path.display().to_string(), bad: parsed.bad });
    }
    let mut items: Vec<(String, serde_json::Value)> = Vec::new();
    let encode = |e: serde_json::Error| {
        FeedbackError::Store(crate::store::StoreError::Encode { table: "feedback", source: e })
    };
    for fb in &parsed.feedback {
        items.push((fb.key(), serde_json::to_value(fb).map_err(encode)?));
    }
    for split in &parsed.splits {
        items.push((split.key(), serde_json::to_value(split).map_err(encode)?));
    }
    for d in &parsed.decompositions {
        items.push((d.key(), serde_json::to_value(d).map_err(encode)?));
    }
    store.put_batch(Table::Feedback, &items)?;
    store.flush()?;
    Ok(ImportReport {
        imported: parsed.feedback.len(),
        splits: parsed.splits.len(),
        decompositions: parsed.decompositions.len(),
        blank: parsed.blank,
        bad: parsed.bad,
    })
}

/// Writes records and split corrections as JSONL.
pub fn write_jsonl(
    out: &mut dyn Write,
    records: &[Feedback],
    splits: &[SplitFeedback],
) -> std::io::Result<()> {
    write_jsonl_all(out, records, splits, &[])
}

/// Writes records, split corrections and decomposition comparisons as JSONL.
pub fn write_jsonl_all(
    out: &mut dyn Write,
    records: &[Feedback],
    splits: &[SplitFeedback],
    decompositions: &[DecompComparison],
) -> std::io::Result<()> {
    for fb in records {
        serde_json::to_writer(&mut *out, fb)?;
        out.write_all(b"\n")?;
    }
    for split in splits {
        serde_json::to_writer(&mut *out, &SplitLine { split: split.clone() })?;
        out.write_all(b"\n")?;
    }
    for d in decompositions {
        serde_json::to_writer(&mut *out, &DecompLine { decomposition: d.clone() })?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// One line of TRL's preference format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrlRow {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// The row's source document or book, when known: rows of one source never straddle the
    /// train/validation/test split. Without it, rows are grouped by near-duplicate prompts.
    #[serde(default, alias = "book", skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Which feedback implied the pair (`comparison`, `likert`, `correction`, `demonstration`,
    /// `critique`, `synthetic`); `comparison` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Loss weight (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f32>,
    /// Probability that `chosen` wins (default 1; 0.5 is a tie).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<f32>,
    /// Human reference summaries of the prompt, when known (the reference-overlap baseline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
}

impl TrlRow {
    /// The row as a pair (its group not yet joined with near-duplicates), or what is wrong.
    pub fn into_pair(self) -> Result<Pair, String> {
        if self.chosen.trim().is_empty() || self.rejected.trim().is_empty() {
            return Err("chosen and rejected must not be empty".into());
        }
        let origin = match &self.kind {
            None => Origin::Comparison,
            Some(k) => Origin::parse(k).ok_or_else(|| {
                format!("unknown kind '{k}' (one of {})", Origin::ALL.map(Origin::name).join(", "))
            })?,
        };
        let weight = self.weight.unwrap_or(1.0);
        if !weight.is_finite() || weight <= 0.0 || weight > 100.0 {
            return Err(format!("weight {weight} is not in (0, 100]"));
        }
        let target = self.target.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&target) {
            return Err(format!("target {target} is not a probability"));
        }
        if self.height.is_some_and(|h| h > 64) {
            return Err(format!("height {:?} is implausible (at most 64)", self.height));
        }
        let group = match &self.group {
            Some(g) => super::groups::book_group(g),
            None => super::text_hash(&self.prompt),
        };
        let mut pair = Pair::new(
            self.height.unwrap_or(0),
            &self.prompt,
            &self.chosen,
            &self.rejected,
            target,
            &group,
        )
        .with_origin(origin)
        .with_weight(weight);
        pair.references = self.references;
        Ok(pair)
    }
}

/// A rated summary (a Likert rating from outside rrm): `{prompt, completion, likert: {overall,
/// coverage?, accuracy?, coherence?}, labeler?, height?, group?}`, scores on 1–7 (a missing
/// dimension takes `overall`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatingRow {
    pub prompt: String,
    pub completion: String,
    pub likert: RatingScores,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labeler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, alias = "book", skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Always `likert` when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// Likert scores of a [`RatingRow`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatingScores {
    pub overall: u8,
    #[serde(default)]
    pub coverage: Option<u8>,
    #[serde(default)]
    pub accuracy: Option<u8>,
    #[serde(default)]
    pub coherence: Option<u8>,
}

impl RatingRow {
    /// The row as a validated Likert [`Feedback`] record (the prompt's hash is its input key;
    /// its group, when given, is its book).
    pub fn into_feedback(self) -> Result<Feedback, String> {
        if self.kind.as_deref().is_some_and(|k| k != "likert") {
            return Err(format!("a rating row's kind must be likert (got {:?})", self.kind));
        }
        let s = &self.likert;
        let scores = Likert {
            overall: s.overall,
            coverage: s.coverage.unwrap_or(s.overall),
            accuracy: s.accuracy.unwrap_or(s.overall),
            coherence: s.coherence.unwrap_or(s.overall),
        };
        let labeler = self.labeler.unwrap_or_else(|| "external".to_string());
        let mut fb = Feedback::new(
            &labeler,
            &super::text_hash(&self.prompt),
            &self.prompt,
            self.height.unwrap_or(0),
            FeedbackKind::Likert { summary: Judged::new(self.completion), scores },
        )
        .at(self.group, None);
        fb.time_unix = 0;
        fb.id = fb.compute_id();
        fb.validate().map_err(|e| e.0)?;
        Ok(fb)
    }
}

/// The TRL rows of `records`: every pair with a clear winner (ties have no chosen side).
pub fn trl_rows(records: &[Feedback]) -> Vec<TrlRow> {
    to_pairs(records)
        .into_iter()
        .filter(|p| p.target > 0.5)
        .map(|p| TrlRow {
            prompt: p.input,
            chosen: p.chosen,
            rejected: p.rejected,
            height: Some(p.height),
            group: None,
            kind: Some(p.origin.name().to_string()),
            weight: None,
            target: None,
            references: Vec::new(),
        })
        .collect()
}

/// Writes records in TRL's format, one JSON object per line.
pub fn write_trl(out: &mut dyn Write, records: &[Feedback]) -> std::io::Result<()> {
    for row in trl_rows(records) {
        serde_json::to_writer(&mut *out, &row)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads a TRL preference file as pairs (height 0 when absent). Every line must parse; bad lines
/// are reported by number. Rows are grouped for the train/validation/test split by their `group`
/// (or `book`) field when given, and always with near-duplicate prompts ([`super::groups`]).
pub fn read_trl(path: &Path) -> Result<Vec<Pair>, FeedbackError> {
    let data = read_data(path)?;
    if let Some(first) = data.records.first() {
        return Err(FeedbackError::BadLines {
            path: path.display().to_string(),
            bad: vec![(
                0,
                format!(
                    "holds {} feedback or rating record(s) (the first from labeler {}), not only \
                     TRL rows",
                    data.records.len(),
                    first.labeler
                ),
            )],
        });
    }
    let mut pairs = data.pairs;
    super::groups::assign(&mut pairs);
    Ok(pairs)
}

/// What a training or evaluation data file holds: TRL pairs, and feedback records (our JSONL
/// records, and rating rows made into Likert records) that [`super::learn::build`] turns into
/// pairs and ratings.
#[derive(Debug, Clone, Default)]
pub struct DataFile {
    pub pairs: Vec<Pair>,
    pub records: Vec<Feedback>,
}

/// Reads a data file: one JSON object per line, each a TRL row (`prompt`, `chosen`,
/// `rejected`, optional `height`, `group`, `kind`, `weight`, `target`, `references`), a rating
/// row ([`RatingRow`]), or one of our feedback records. Every line must parse and validate; bad
/// lines are reported by number. Groups are as given (`book:<group>`, else the prompt's hash):
/// [`super::learn::build`] joins them with near-duplicate inputs.
pub fn read_data(path: &Path) -> Result<DataFile, FeedbackError> {
    let file = std::fs::File::open(path)
        .map_err(|source| FeedbackError::Io { path: path.display().to_string(), source })?;
    let mut out = DataFile::default();
    let mut bad = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                bad.push((i + 1, "the line is not UTF-8 text".to_string()));
                continue;
            }
            Err(source) => {
                return Err(FeedbackError::Io { path: path.display().to_string(), source })
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                bad.push((i + 1, format!("not JSON: {e}")));
                continue;
            }
        };
        let has = |k: &str| value.get(k).is_some();
        if has("chosen") || has("rejected") {
            match serde_json::from_value::<TrlRow>(value).map_err(|e| e.to_string()) {
                Ok(row) => match row.into_pair() {
                    Ok(p) => out.pairs.push(p),
                    Err(e) => bad.push((i + 1, e)),
                },
                Err(e) => {
                    bad.push((i + 1, format!("not a TRL row {{prompt, chosen, rejected}}: {e}")))
                }
            }
        } else if has("completion") {
            match serde_json::from_value::<RatingRow>(value).map_err(|e| e.to_string()) {
                Ok(row) => match row.into_feedback() {
                    Ok(fb) => out.records.push(fb),
                    Err(e) => bad.push((i + 1, e)),
                },
                Err(e) => bad
                    .push((i + 1, format!("not a rating row {{prompt, completion, likert}}: {e}"))),
            }
        } else {
            match serde_json::from_value::<Feedback>(value) {
                Ok(mut fb) => match fb.validate() {
                    Ok(()) => out.records.push(fb),
                    Err(e) => bad.push((i + 1, e.0)),
                },
                Err(e) => bad.push((
                    i + 1,
                    format!(
                        "neither a TRL row {{prompt, chosen, rejected}}, a rating row {{prompt, \
                         completion, likert}} nor a feedback record: {e}"
                    ),
                )),
            }
        }
    }
    if !bad.is_empty() {
        return Err(FeedbackError::BadLines { path: path.display().to_string(), bad });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::{all, FeedbackKind, Judged, Preference};

    fn record(a: &str, b: &str) -> Feedback {
        Feedback::new(
            "ann",
            "key",
            "The input text.",
            0,
            FeedbackKind::Comparison {
                a: Judged::new(a),
                b: Judged::new(b),
                prefer: Preference::A,
                confidence: 5,
            },
        )
    }

    fn jsonl(records: &[Feedback]) -> String {
        let mut out = Vec::new();
        write_jsonl(&mut out, records, &[]).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn import_is_all_or_nothing_unless_skip_bad() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let mut text = jsonl(&[record("x", "y"), record("p", "q")]);
        text.push_str("{not json\n\n");
        text.push_str(&jsonl(&[record("m", "n")]).replace("\"confidence\":5", "\"confidence\":12"));
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, &text).unwrap();
        match import_file(&store, &path, false) {
            Err(FeedbackError::BadLines { bad, .. }) => {
                assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), vec![3, 5]);
                assert!(bad[1].1.contains("confidence") || bad[1].1.contains("id"), "{bad:?}");
            }
            other => panic!("expected bad lines, got {other:?}"),
        }
        assert!(all(&store).unwrap().is_empty(), "a bad file imports nothing");
        let report = import_file(&store, &path, true).unwrap();
        assert_eq!(report.imported, 2);
        assert_eq!(report.blank, 1);
        assert_eq!(all(&store).unwrap().len(), 2);
        // Re-importing the same records stores them once.
        import_file(&store, &path, true).unwrap();
        assert_eq!(all(&store).unwrap().len(), 2);
    }

    #[test]
    fn export_roundtrips_and_trl_has_the_three_fields() {
        let records = vec![record("good one", "bad one")];
        let parsed = parse_jsonl(&jsonl(&records));
        assert!(parsed.bad.is_empty());
        assert_eq!(parsed.feedback, records);
        let mut out = Vec::new();
        write_trl(&mut out, &records).unwrap();
        let line: serde_json::Value =
            serde_json::from_str(String::from_utf8(out).unwrap().trim()).unwrap();
        assert_eq!(line["prompt"], "The input text.");
        assert_eq!(line["chosen"], "good one");
        assert_eq!(line["rejected"], "bad one");
        assert_eq!(line["height"], 0);
    }

    #[test]
    fn split_corrections_travel_with_the_export() {
        use crate::feedback::split::{SplitAction, SplitFeedback};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let split = SplitFeedback {
            book: crate::book::BookId::of_text("a book"),
            action: SplitAction::Split { at: 40 },
            nodes: vec!["h0.2".into()],
            node_hashes: vec!["ab12".into()],
            created: 7,
        };
        let mut out = Vec::new();
        write_jsonl(&mut out, &[record("x", "y")], std::slice::from_ref(&split)).unwrap();
        let path = dir.path().join("all.jsonl");
        std::fs::write(&path, &out).unwrap();
        let report = import_file(&store, &path, false).unwrap();
        assert_eq!((report.imported, report.splits), (1, 1));
        let back: Vec<SplitFeedback> = store
            .scan::<SplitFeedback>(Table::Feedback, crate::feedback::split::KEY_PREFIX)
            .unwrap()
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        assert_eq!(back, vec![split]);
        // A bad split line is named by number and nothing is stored.
        let dir2 = tempfile::tempdir().unwrap();
        let store2 = Store::open(dir2.path().join("db")).unwrap();
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(
            &bad,
            format!("{}{{\"split\": {{\"book\": 3}}}}\n", String::from_utf8(out).unwrap()),
        )
        .unwrap();
        match import_file(&store2, &bad, false) {
            Err(FeedbackError::BadLines { bad, .. }) => assert_eq!(bad[0].0, 3),
            other => panic!("{other:?}"),
        }
        assert!(store2.is_empty(Table::Feedback).unwrap());
    }

    #[test]
    fn decomposition_comparisons_travel_with_the_export() {
        use crate::feedback::decomp::{self, tests::sample, DecompAnswer, Side};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let d1 = sample(DecompAnswer::Prefer { prefer: Preference::A, confidence: 6 });
        let d2 = sample(DecompAnswer::BadBoundary { side: Side::A, at: 119 });
        let timed = record("x", "y").timed(Some(1234));
        let mut out = Vec::new();
        write_jsonl_all(&mut out, std::slice::from_ref(&timed), &[], &[d1.clone(), d2.clone()])
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().filter(|l| l.starts_with("{\"decomposition\"")).count(), 2);
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, &text).unwrap();
        let report = import_file(&store, &path, false).unwrap();
        assert_eq!((report.imported, report.decompositions), (1, 2));
        let mut back = decomp::all(&store).unwrap();
        back.sort_by(|a, b| a.id.cmp(&b.id));
        let mut want = vec![d1, d2];
        want.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(back, want);
        assert_eq!(all(&store).unwrap(), vec![timed]);
        // The TRL export leaves them out (they are not text preferences).
        let mut trl = Vec::new();
        write_trl(&mut trl, &all(&store).unwrap()).unwrap();
        assert!(!String::from_utf8(trl).unwrap().contains("decomposition"));
        // A tampered line is named by number; nothing of the file is stored.
        let store2 = Store::open(dir.path().join("db2")).unwrap();
        let bad = text.replacen("\"labeler\":\"ann\"", "\"labeler\":\"eve\"", 1);
        let bad_path = dir.path().join("bad.jsonl");
        std::fs::write(&bad_path, format!("{bad}{{\"decomposition\": {{\"book\": 1}}}}\n"))
            .unwrap();
        let err = import_file(&store2, &bad_path, false).unwrap_err().to_string();
        assert!(err.contains("line 4: not a decomposition comparison"), "{err}");
        assert!(decomp::all(&store2).unwrap().is_empty() && all(&store2).unwrap().is_empty());
        // An old export (no decomposition lines, no judge_ms) still imports.
        let old_path = dir.path().join("old.jsonl");
        std::fs::write(&old_path, jsonl(&[record("p", "q")])).unwrap();
        let report = import_file(&store2, &old_path, false).unwrap();
        assert_eq!((report.imported, report.decompositions), (1, 0));
    }

    #[test]
    fn trl_read_reports_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\"}\n{\"prompt\":1}\n",
        )
        .unwrap();
        match read_trl(&path) {
            Err(FeedbackError::BadLines { bad, .. }) => assert_eq!(bad[0].0, 2),
            other => panic!("{other:?}"),
        }
    }
    #[test]
    fn data_files_hold_pairs_with_kinds_rating_rows_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let rec = serde_json::to_string(&record("alpha text", "beta text")).unwrap();
        std::fs::write(
            &path,
            format!(
                "{{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\",\"kind\":\"demonstration\",\"weight\":0.5,\"references\":[\"ref\"],\"group\":\"doc1\"}}\n\
                 {{\"prompt\":\"p\",\"completion\":\"c\",\"likert\":{{\"overall\":6}},\"labeler\":\"x\"}}\n{rec}\n"
            ),
        )
        .unwrap();
        let d = read_data(&path).unwrap();
        assert_eq!(d.pairs.len(), 1);
        let p = &d.pairs[0];
        assert_eq!((p.origin, p.weight, p.references.len()), (Origin::Demonstration, 0.5, 1));
        assert_eq!(d.records.len(), 2);
        assert!(
            matches!(d.records[0].kind, FeedbackKind::Likert { ref scores, .. } if scores.overall == 6 && scores.coverage == 6)
        );
        // read_trl refuses what it cannot use rather than dropping it.
        assert!(read_trl(&path).is_err());
        for bad in [
            "{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\",\"kind\":\"vibes\"}",
            "{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\",\"weight\":-1}",
            "{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\",\"target\":2}",
            "{\"prompt\":\"p\",\"completion\":\"c\",\"likert\":{\"overall\":9}}",
        ] {
            std::fs::write(&path, format!("{bad}\n")).unwrap();
            match read_data(&path) {
                Err(FeedbackError::BadLines { bad: lines, .. }) => {
                    assert_eq!(lines[0].0, 1, "{bad}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
