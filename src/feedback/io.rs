//! JSONL import and export of feedback, and TRL's preference format.
//!
//! - Our JSONL: one [`Feedback`] record per line, exactly as stored, and one line
//!   `{"split": {…}}` per split correction ([`SplitFeedback`]). Import validates every line
//!   first and reports each bad one by its 1-based number; with any bad line nothing is stored
//!   (all or nothing), unless `skip_bad`, which stores the good lines and reports the bad. The
//!   good records are written in one atomic batch, so a crash mid-import stores none.
//! - TRL (`{"prompt", "chosen", "rejected"}`, optional `"height"`): exported from comparisons,
//!   corrections and Likert pairs (ties left out); read back as [`Pair`]s by [`read_trl`] for
//!   training and evaluating reward models on external preference sets.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::split::SplitFeedback;
use super::{to_pairs, Feedback, FeedbackError, Pair};
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

/// What a JSONL text holds: good records, good split corrections, bad lines, blank lines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub feedback: Vec<Feedback>,
    pub splits: Vec<SplitFeedback>,
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
    store.put_batch(Table::Feedback, &items)?;
    store.flush()?;
    Ok(ImportReport {
        imported: parsed.feedback.len(),
        splits: parsed.splits.len(),
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
    for fb in records {
        serde_json::to_writer(&mut *out, fb)?;
        out.write_all(b"\n")?;
    }
    for split in splits {
        serde_json::to_writer(&mut *out, &SplitLine { split: split.clone() })?;
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
    let file = std::fs::File::open(path)
        .map_err(|source| FeedbackError::Io { path: path.display().to_string(), source })?;
    let mut pairs = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line =
            line.map_err(|source| FeedbackError::Io { path: path.display().to_string(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<TrlRow>(&line) {
            Ok(row) if row.chosen.trim().is_empty() || row.rejected.trim().is_empty() => {
                bad.push((i + 1, "chosen and rejected must not be empty".to_string()))
            }
            Ok(row) => pairs.push(Pair {
                height: row.height.unwrap_or(0),
                group: match &row.group {
                    Some(g) => super::groups::book_group(g),
                    None => super::text_hash(&row.prompt),
                },
                input: row.prompt,
                chosen: row.chosen,
                rejected: row.rejected,
                target: 1.0,
            }),
            Err(e) => bad.push((i + 1, format!("not a TRL row {{prompt, chosen, rejected}}: {e}"))),
        }
    }
    if !bad.is_empty() {
        return Err(FeedbackError::BadLines { path: path.display().to_string(), bad });
    }
    super::groups::assign(&mut pairs);
    Ok(pairs)
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
}
