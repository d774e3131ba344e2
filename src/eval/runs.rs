//! Stored evaluation runs and their paired comparison.
//!
//! A run is written once, whole, when every document is scored: one JSON value under
//! `eval/run/<name>` in [`Table::Meta`], flushed. A run that fails half-way stores nothing
//! (the node outputs it computed stay cached, so a retry is fast).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::bootstrap::{self, PairedDiff};
use super::rouge::RougeMulti;
use super::EvalError;
use crate::store::{Store, Table};

/// The key prefix of runs in [`Table::Meta`].
pub const PREFIX: &str = "eval/run/";

/// One document's scores in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocScores {
    pub id: String,
    /// The book id the document got (blake3 of its normalized text).
    pub book_id: String,
    pub document_words: usize,
    pub summary: String,
    pub summary_words: usize,
    pub references: usize,
    pub reference_words: f64,
    /// The summary against the references (F1, max and mean over references).
    pub rouge: RougeMulti,
    /// The lead baseline (the document's first words, as many as the summary has).
    pub lead: RougeMulti,
    /// Summary words over the mean reference's words.
    pub length_ratio: f64,
    /// The reward ensemble's mean (and spread) on the root summary, when a model was given.
    pub reward: Option<f64>,
    pub reward_std: Option<f64>,
    /// The simulated labeler's score of the summary against the whole document.
    pub labeler: Option<f64>,
    pub labeler_lead: Option<f64>,
    /// The root summary checked against the whole document: unsupported-content rate, copied
    /// 4-gram share, coverage ([`crate::grounding`]). Absent in runs stored before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grounding: Option<RootGrounding>,
    pub nodes: usize,
    /// Nodes generated in this run (the rest came from the cache).
    pub computed: usize,
    pub tokens_generated: usize,
    /// The summarize run whose outputs made this summary: `rrm node show --run NAME` shows
    /// them. Absent in runs stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// What [`crate::grounding`] finds in a root summary, against the document and against the
/// root's own input (its children's summaries).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RootGrounding {
    /// Content words of the summary found nowhere in the document.
    pub unsupported_rate: f64,
    /// … found nowhere in the root's input (what the root model was given).
    pub unsupported_rate_input: f64,
    /// Invented names (capitalized words inside sentences) absent from the document.
    pub unsupported_names: usize,
    pub copied_4gram_share: f64,
    pub coverage: f64,
}

impl RootGrounding {
    pub fn new(document: &str, root_input: &str, summary: &str) -> RootGrounding {
        let whole = crate::grounding::check(document, summary);
        let input = crate::grounding::check(root_input, summary);
        RootGrounding {
            unsupported_rate: whole.unsupported_rate,
            unsupported_rate_input: input.unsupported_rate,
            unsupported_names: whole.unsupported_names,
            copied_4gram_share: whole.copied_4gram_share,
            coverage: whole.coverage,
        }
    }
}

/// A stored evaluation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRun {
    pub name: String,
    pub created_unix: u64,
    /// What produced the summaries: model, selector, compose options, decomposer, references.
    pub settings: serde_json::Value,
    pub documents: Vec<DocScores>,
    pub seconds: f64,
}

/// Checks a run name (it becomes part of a key and of file names in reports).
pub fn check_name(name: &str) -> Result<(), EvalError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(EvalError::BadRunName(name.to_string()))
    }
}

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// Stores `run` (refusing to overwrite unless `replace`) and flushes.
pub fn save(store: &Store, run: &EvalRun, replace: bool) -> Result<(), EvalError> {
    check_name(&run.name)?;
    if !replace && store.contains(Table::Meta, &key(&run.name))? {
        return Err(EvalError::RunExists(run.name.clone()));
    }
    store.put(Table::Meta, &key(&run.name), run)?;
    store.flush()?;
    Ok(())
}

/// Whether a run named `name` is stored.
pub fn exists(store: &Store, name: &str) -> Result<bool, EvalError> {
    Ok(store.contains(Table::Meta, &key(name))?)
}

pub fn load(store: &Store, name: &str) -> Result<EvalRun, EvalError> {
    store.get(Table::Meta, &key(name))?.ok_or_else(|| EvalError::UnknownRun(name.to_string()))
}

/// Every stored run, by name.
pub fn all(store: &Store) -> Result<Vec<EvalRun>, EvalError> {
    Ok(store.scan::<EvalRun>(Table::Meta, PREFIX)?.into_iter().map(|(_, r)| r).collect())
}

pub fn remove(store: &Store, name: &str) -> Result<bool, EvalError> {
    let removed = store.remove(Table::Meta, &key(name))?;
    store.flush()?;
    Ok(removed)
}

/// The per-document metrics a run is compared on, in display order.
pub const METRICS: &[&str] = &[
    "rouge1",
    "rouge2",
    "rougeL",
    "rouge1_mean",
    "rouge2_mean",
    "rougeL_mean",
    "length_ratio",
    "summary_words",
    "reward",
    "labeler",
    "unsupported",
    "unsupported_input",
    "copied_4grams",
];

/// A metric of a document (`None` when the run did not measure it).
pub fn metric(doc: &DocScores, name: &str) -> Option<f64> {
    Some(match name {
        "rouge1" => doc.rouge.rouge1_max,
        "rouge2" => doc.rouge.rouge2_max,
        "rougeL" => doc.rouge.rouge_l_max,
        "rouge1_mean" => doc.rouge.rouge1_mean,
        "rouge2_mean" => doc.rouge.rouge2_mean,
        "rougeL_mean" => doc.rouge.rouge_l_mean,
        "length_ratio" => doc.length_ratio,
        "summary_words" => doc.summary_words as f64,
        "reward" => return doc.reward,
        "labeler" => return doc.labeler,
        "lead_rouge1" => doc.lead.rouge1_max,
        "lead_rouge2" => doc.lead.rouge2_max,
        "lead_rougeL" => doc.lead.rouge_l_max,
        "lead_labeler" => return doc.labeler_lead,
        "unsupported" => return doc.grounding.map(|g| g.unsupported_rate),
        "unsupported_input" => return doc.grounding.map(|g| g.unsupported_rate_input),
        "copied_4grams" => return doc.grounding.map(|g| g.copied_4gram_share),
        _ => return None,
    })
}

/// How many resamples and which seed the comparisons use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BootstrapOptions {
    pub resamples: usize,
    pub level: f64,
    pub seed: u64,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        BootstrapOptions { resamples: 10_000, level: 0.95, seed: 0 }
    }
}

/// Two runs compared document by document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    /// Documents in both runs (compared), and in only one (left out).
    pub documents: usize,
    pub only_a: Vec<String>,
    pub only_b: Vec<String>,
    /// Metric → A − B with its interval and A's win rate.
    pub metrics: BTreeMap<String, PairedDiff>,
    pub order: Vec<String>,
}

/// Pairs `a` and `b` by document id and bootstraps every metric both measured.
pub fn compare(a: &EvalRun, b: &EvalRun, opts: BootstrapOptions) -> Result<Comparison, EvalError> {
    let b_docs: BTreeMap<&str, &DocScores> =
        b.documents.iter().map(|d| (d.id.as_str(), d)).collect();
    let pairs: Vec<(&DocScores, &DocScores)> =
        a.documents.iter().filter_map(|d| b_docs.get(d.id.as_str()).map(|e| (d, *e))).collect();
    if pairs.is_empty() {
        return Err(EvalError::NothingInCommon { a: a.name.clone(), b: b.name.clone() });
    }
    let a_ids: std::collections::BTreeSet<&str> =
        a.documents.iter().map(|d| d.id.as_str()).collect();
    let mut out = Comparison {
        a: a.name.clone(),
        b: b.name.clone(),
        documents: pairs.len(),
        only_a: a
            .documents
            .iter()
            .filter(|d| !b_docs.contains_key(d.id.as_str()))
            .map(|d| d.id.clone())
            .collect(),
        only_b: b
            .documents
            .iter()
            .filter(|d| !a_ids.contains(d.id.as_str()))
            .map(|d| d.id.clone())
            .collect(),
        metrics: BTreeMap::new(),
        order: Vec::new(),
    };
    for &name in METRICS {
        let values: Option<Vec<(f64, f64)>> =
            pairs.iter().map(|(x, y)| Some((metric(x, name)?, metric(y, name)?))).collect();
        let Some(values) = values else { continue };
        let (va, vb): (Vec<f64>, Vec<f64>) = values.into_iter().unzip();
        if let Some(d) = bootstrap::paired(&va, &vb, opts.resamples, opts.level, opts.seed) {
            out.metrics.insert(name.to_string(), d);
            out.order.push(name.to_string());
        }
    }
    Ok(out)
}

/// A run against its own lead baseline: metric → run − lead.
pub fn against_lead(run: &EvalRun, opts: BootstrapOptions) -> BTreeMap<String, PairedDiff> {
    let mut out = BTreeMap::new();
    for (name, lead) in [
        ("rouge1", "lead_rouge1"),
        ("rouge2", "lead_rouge2"),
        ("rougeL", "lead_rougeL"),
        ("labeler", "lead_labeler"),
    ] {
        let values: Option<Vec<(f64, f64)>> =
            run.documents.iter().map(|d| Some((metric(d, name)?, metric(d, lead)?))).collect();
        let Some(values) = values else { continue };
        let (va, vb): (Vec<f64>, Vec<f64>) = values.into_iter().unzip();
        if let Some(d) = bootstrap::paired(&va, &vb, opts.resamples, opts.level, opts.seed) {
            out.insert(name.to_string(), d);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn doc(id: &str, r1: f64, reward: Option<f64>) -> DocScores {
        DocScores {
            id: id.into(),
            book_id: format!("book-{id}"),
            document_words: 100,
            summary: "s".into(),
            summary_words: 10,
            references: 2,
            reference_words: 12.0,
            rouge: RougeMulti {
                rouge1_max: r1,
                rouge2_max: r1 / 2.0,
                rouge_l_max: r1 * 0.8,
                rouge1_mean: r1 * 0.9,
                rouge2_mean: r1 / 3.0,
                rouge_l_mean: r1 * 0.7,
            },
            lead: RougeMulti { rouge1_max: 0.2, ..RougeMulti::default() },
            length_ratio: 10.0 / 12.0,
            reward,
            reward_std: None,
            labeler: Some(r1),
            labeler_lead: Some(0.1),
            grounding: None,
            nodes: 3,
            computed: 3,
            tokens_generated: 30,
            run_id: None,
        }
    }

    pub fn run(name: &str, docs: Vec<DocScores>) -> EvalRun {
        EvalRun {
            name: name.into(),
            created_unix: 0,
            settings: serde_json::json!({}),
            documents: docs,
            seconds: 1.0,
        }
    }

    #[test]
    fn save_load_refuses_overwrite_and_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let r = run("greedy", vec![doc("a", 0.3, None)]);
        save(&store, &r, false).unwrap();
        let back = load(&store, "greedy").unwrap();
        assert_eq!((back.name.as_str(), back.documents.len()), ("greedy", 1));
        assert!((back.documents[0].rouge.rouge1_max - 0.3).abs() < 1e-12);
        assert!(matches!(save(&store, &r, false), Err(EvalError::RunExists(_))));
        save(&store, &r, true).unwrap();
        assert!(matches!(load(&store, "nope"), Err(EvalError::UnknownRun(_))));
        assert!(matches!(save(&store, &run("a/b", vec![]), false), Err(EvalError::BadRunName(_))));
        assert_eq!(all(&store).unwrap().len(), 1);
        assert!(remove(&store, "greedy").unwrap());
        assert!(all(&store).unwrap().is_empty());
    }

    #[test]
    fn compare_pairs_by_id_and_skips_unmeasured_metrics() {
        let a = run(
            "a",
            vec![doc("x", 0.40, Some(1.0)), doc("y", 0.30, Some(0.5)), doc("only-a", 0.1, None)],
        );
        let b =
            run("b", vec![doc("y", 0.20, None), doc("x", 0.35, Some(0.0)), doc("z", 0.5, None)]);
        let c = compare(&a, &b, BootstrapOptions { resamples: 500, ..Default::default() }).unwrap();
        assert_eq!(c.documents, 2);
        assert_eq!(c.only_a, vec!["only-a"]);
        assert_eq!(c.only_b, vec!["z"]);
        let r1 = &c.metrics["rouge1"];
        assert!((r1.diff - 0.075).abs() < 1e-12, "{r1:?}");
        assert_eq!(r1.win_rate, 1.0);
        // One document of b has no reward: the metric is left out, not half-compared.
        assert!(!c.metrics.contains_key("reward"));
        let none = run("n", vec![doc("q", 0.1, None)]);
        assert!(matches!(
            compare(&a, &none, Default::default()),
            Err(EvalError::NothingInCommon { .. })
        ));
        let lead = against_lead(&a, BootstrapOptions { resamples: 200, ..Default::default() });
        assert!((lead["rouge1"].diff - (0.8 / 3.0 - 0.2)).abs() < 1e-12);
    }
}
