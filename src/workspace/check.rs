//! `rrm db check [--repair]`: reads every record of every table as the type its owner expects,
//! validates what can be validated (feedback hashes, tree structure, keys that are content
//! hashes), and follows references (runs → outputs → candidate sets). With `repair`, records that
//! do not decode or do not validate are moved aside into [`Table::Quarantine`] (with the reason
//! and their raw bytes), so every scan reads clean again; nothing is deleted. Dangling references
//! are reported, not changed: the records that hold them are still good.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Result, Workspace};
use crate::book::BookRecord;
use crate::compose::{CandidateSet, NodeOutput, RunRecord};
use crate::decompose::learned::SplitFeedback;
use crate::feedback::{self, Feedback};
use crate::store::{Store, Table};
use crate::tree::TreeRecord;

/// What is wrong with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProblemKind {
    /// The value does not decode as its table's type.
    Corrupt,
    /// It decodes but fails validation (a hash that does not match, a key that is not its id).
    Invalid,
    /// It points at a record that does not exist.
    Dangling,
    /// A key no module of this rrm owns (left alone).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub table: String,
    pub key: String,
    pub kind: ProblemKind,
    pub message: String,
    /// Moved into the quarantine table by `--repair`.
    pub quarantined: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    pub table: String,
    pub records: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub tables: Vec<TableCount>,
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// No corrupt or invalid record is left in a table (dangling references and unknown keys are
    /// reported but do not make a database unclean).
    pub fn is_clean(&self) -> bool {
        self.problems.iter().all(|p| {
            p.quarantined || matches!(p.kind, ProblemKind::Dangling | ProblemKind::Unknown)
        })
    }

    pub fn count(&self, kind: ProblemKind) -> usize {
        self.problems.iter().filter(|p| p.kind == kind).count()
    }
}

struct Checker<'a> {
    store: &'a Store,
    repair: bool,
    report: CheckReport,
}

impl Checker<'_> {
    fn problem(
        &mut self,
        table: Table,
        key: &[u8],
        kind: ProblemKind,
        message: String,
    ) -> Result<()> {
        let movable = matches!(kind, ProblemKind::Corrupt | ProblemKind::Invalid);
        let quarantined = if self.repair && movable {
            self.store.quarantine(table, key, &message)?;
            true
        } else {
            false
        };
        self.report.problems.push(Problem {
            table: table.name().to_string(),
            key: String::from_utf8_lossy(key).into_owned(),
            kind,
            message,
            quarantined,
        });
        Ok(())
    }

    /// Decodes every record of `table` under `prefix` as `T` and runs `validate` on it.
    fn typed<T: DeserializeOwned>(
        &mut self,
        table: Table,
        prefix: &str,
        validate: &dyn Fn(&str, &T) -> std::result::Result<(), String>,
    ) -> Result<Vec<(String, T)>> {
        let mut good = Vec::new();
        for (k, v) in self.store.scan_raw(table, prefix)? {
            let key = String::from_utf8_lossy(&k).into_owned();
            match serde_json::from_slice::<T>(&v) {
                Err(e) => self.problem(table, &k, ProblemKind::Corrupt, e.to_string())?,
                Ok(value) => match validate(&key, &value) {
                    Err(why) => self.problem(table, &k, ProblemKind::Invalid, why)?,
                    Ok(()) => good.push((key, value)),
                },
            }
        }
        Ok(good)
    }
}

/// Checks (and with `repair`, quarantines bad records of) the whole database.
pub fn check(ws: &Workspace, repair: bool) -> Result<CheckReport> {
    let store = ws.store();
    let mut c = Checker { store, repair, report: CheckReport::default() };
    let ok = |_: &str, _: &_| Ok(());

    c.typed::<BookRecord>(Table::Books, "", &|key, r| {
        if r.id.as_str() == key {
            Ok(())
        } else {
            Err(format!("the record is of book {}, stored under another id", r.id.short()))
        }
    })?;
    c.typed::<String>(Table::BookTexts, "", &|key, text| {
        let id = crate::book::BookId::of_text(text);
        if id.as_str() == key {
            Ok(())
        } else {
            Err("the stored text does not hash to its book id".into())
        }
    })?;
    c.typed::<TreeRecord>(Table::TaskTrees, "", &|key, r| {
        if r.book_id.as_str() != key {
            return Err(format!(
                "the tree is of book {}, stored under another id",
                r.book_id.short()
            ));
        }
        r.tree().map(|_| ()).map_err(|e| e.to_string())
    })?;
    let outputs = c.typed::<NodeOutput>(Table::Outputs, "", &|key, o| {
        if o.output_key == key {
            Ok(())
        } else {
            Err("the output's own key differs from the key it is stored under".into())
        }
    })?;
    c.typed::<CandidateSet>(Table::Candidates, "", &|key, s| {
        if s.gen_key != key {
            return Err("the set's own key differs from the key it is stored under".into());
        }
        if s.candidates.is_empty() {
            return Err("the candidate set is empty".into());
        }
        Ok(())
    })?;
    c.typed::<Feedback>(Table::Feedback, feedback::KEY_PREFIX, &|key, f| {
        let mut f = f.clone();
        f.validate().map_err(|e| e.to_string())?;
        if f.key() == key {
            Ok(())
        } else {
            Err("the record's id does not match the key it is stored under".into())
        }
    })?;
    c.typed::<SplitFeedback>(
        Table::Feedback,
        crate::decompose::learned::feedback::KEY_PREFIX,
        &|key, f| {
            if f.key() == key {
                Ok(())
            } else {
                Err("the correction does not match the key it is stored under".into())
            }
        },
    )?;
    for (k, _) in store.scan_raw(Table::Feedback, "")? {
        let key = String::from_utf8_lossy(&k);
        if !key.starts_with(feedback::KEY_PREFIX)
            && !key.starts_with(crate::decompose::learned::feedback::KEY_PREFIX)
        {
            c.problem(
                Table::Feedback,
                &k,
                ProblemKind::Unknown,
                "a key no kind of feedback owns".into(),
            )?;
        }
    }
    c.typed::<Vec<f32>>(Table::Embeddings, "", &|_, e| {
        if e.is_empty() || e.iter().any(|x| !x.is_finite()) {
            Err("the embedding is empty or not finite".into())
        } else {
            Ok(())
        }
    })?;
    let runs =
        c.typed::<RunRecord>(Table::Meta, crate::compose::record::RUN_PREFIX, &|key, r| {
            if r.key() == key {
                Ok(())
            } else {
                Err("the run record does not match the key it is stored under".into())
            }
        })?;
    c.typed::<serde_json::Value>(Table::Quarantine, "", &ok)?;

    // References: runs → outputs → candidate sets.
    let output_keys: std::collections::HashSet<&str> =
        outputs.iter().map(|(k, _)| k.as_str()).collect();
    for (key, run) in &runs {
        let missing: Vec<&String> = run
            .outputs
            .iter()
            .filter(|(_, k)| !output_keys.contains(k.as_str()))
            .map(|(l, _)| l)
            .collect();
        if !missing.is_empty() {
            c.problem(
                Table::Meta,
                key.as_bytes(),
                ProblemKind::Dangling,
                format!(
                    "{} node output(s) of this run are not stored (e.g. {})",
                    missing.len(),
                    missing[0]
                ),
            )?;
        }
    }
    for (key, out) in &outputs {
        if !store.contains(Table::Candidates, &out.gen_key)? {
            c.problem(
                Table::Outputs,
                key.as_bytes(),
                ProblemKind::Dangling,
                format!(
                    "its candidate set {} is not stored",
                    &out.gen_key[..16.min(out.gen_key.len())]
                ),
            )?;
        }
    }
    if repair {
        store.flush()?;
    }
    for table in Table::ALL {
        c.report
            .tables
            .push(TableCount { table: table.name().to_string(), records: store.len(table)? });
    }
    Ok(c.report)
}
