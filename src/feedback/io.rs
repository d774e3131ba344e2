//! JSONL import and export of feedback, and TRL's preference format.
//!
//! - Our JSONL: one [`Feedback`] record per line, exactly as stored. Import validates every
//!   line first and reports each bad one by its 1-based number; with any bad line nothing is
//!   stored (all or nothing), unless `skip_bad`, which stores the good lines and reports the bad.
//!   The good records are written in one atomic batch, so a crash mid-import stores none.
//! - TRL (`{"prompt", "chosen", "rejected"}`, optional `"height"`): exported from comparisons,
//!   corrections and Likert pairs (ties left out); read back as [`Pair`]s by [`read_trl`] for
//!   training and evaluating reward models on external preference sets.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{put_all, to_pairs, Feedback, FeedbackError, Pair};
use crate::store::Store;

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Records stored (including ones already present, which are overwritten by identical ones).
    pub imported: usize,
    /// Blank lines ignored.
    pub blank: usize,
    /// Bad lines (1-based number, what is wrong), skipped with `skip_bad`.
    pub bad: Vec<(usize, String)>,
}

/// Parses and validates JSONL text; returns the good records and the bad lines.
pub fn parse_jsonl(text: &str) -> (Vec<Feedback>, Vec<(usize, String)>, usize) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut blank = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            blank += 1;
            continue;
        }
        match serde_json::from_str::<Feedback>(line) {
            Ok(mut fb) => match fb.validate() {
                Ok(()) => good.push(fb),
                Err(e) => bad.push((n, e.0)),
            },
            Err(e) => bad.push((n, format!("not a feedback record: {e}"))),
        }
    }
    (good, bad, blank)
}

/// Imports a JSONL file (all or nothing unless `skip_bad`).
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
    let (good, bad, blank) = parse_jsonl(&text);
    if !bad.is_empty() && !skip_bad {
        return Err(FeedbackError::BadLines { path: path.display().to_string(), bad });
    }
    let imported = put_all(store, good)?;
    Ok(ImportReport { imported, blank, bad })
}

/// Writes records as JSONL.
pub fn write_jsonl(out: &mut dyn Write, records: &[Feedback]) -> std::io::Result<()> {
    for fb in records {
        serde_json::to_writer(&mut *out, fb)?;
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
/// are reported by number. Rows are grouped for the train/validation split by their prompt.
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
                group: super::text_hash(&row.prompt),
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
        write_jsonl(&mut out, records).unwrap();
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
        let (back, bad, _) = parse_jsonl(&jsonl(&records));
        assert!(bad.is_empty());
        assert_eq!(back, records);
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
