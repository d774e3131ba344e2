//! `rrm eval` in a workspace: summarizing documents with references through the ordinary
//! decompose-and-compose path (same cache as `rrm summarize`, trees stored like any book's),
//! the reward ensemble that scores the roots, learning curves and best-of-N from the stored
//! feedback and candidates, and the report over everything stored.

use std::path::Path;
use std::sync::Arc;

use super::{summarize, Result, Workspace, WorkspaceError};
use crate::compose::{ComposeOptions, Models, RunRecord, Selector};
use crate::decompose::learned::EvalRow;
use crate::decompose::Decomposer;
use crate::eval::curves::{
    self, BestOfN, CurvePoint, LearningCurve, BEST_OF_N_KEY, LEARNING_CURVE_KEY,
};
use crate::eval::references::Document;
use crate::eval::report::{self, PolicyLog, ReportData, Written, DECOMPOSITION_KEY, POLICY_PREFIX};
use crate::eval::runs::{self, BootstrapOptions, DocScores};
use crate::eval::summaries::{self, DocProgress, Scorers};
use crate::eval::EvalError;
use crate::feedback::sim::SimLabeler;
use crate::reward::train::TrainConfig;
use crate::reward::RewardSelector;
use crate::store::Table;

/// The simulated labeler that scores summaries in evaluations.
pub fn labeler() -> SimLabeler {
    SimLabeler::new("sim-coverage", 0.0)
}

/// The reward ensemble `spec` names as a scorer (mean and std of a summary), λ = `pessimism`.
pub fn reward_scorer(
    ws: &Workspace,
    spec: &str,
    pessimism: f32,
    encoder: &str,
    progress: bool,
) -> Result<Arc<RewardSelector>> {
    if !pessimism.is_finite() || pessimism < 0.0 {
        return Err(WorkspaceError::Invalid(format!(
            "the pessimism λ must be a non-negative number (got {pessimism})"
        )));
    }
    let model = summarize::load_reward_model(ws, spec)?;
    let encoder = ws.encoder(encoder, progress)?;
    let cache = super::embeddings::cache(ws.store());
    Ok(Arc::new(RewardSelector::new(Arc::new(model), encoder, Some(cache), pessimism)?))
}

/// What summarizes the documents of an evaluation.
pub struct Summarizer<'a> {
    /// The model of every node, or per level.
    pub models: Models,
    pub selector: Arc<dyn Selector>,
    pub options: ComposeOptions,
    pub decomposer: &'a dyn Decomposer,
    pub scorers: Scorers,
    /// Also store each document's references as demonstrations at its root.
    pub demonstrations: Option<Demonstrations>,
}

/// Human reference summaries as training signal for the upper levels: each reference becomes a
/// demonstration (`rrm policy train --method sft --labeler LABELER`) at the document's root,
/// whose input is its children's summaries as this composition wrote them. The tree's root is
/// where a whole-story summary fits; lower nodes summarize parts of the story, which no
/// reference does.
#[derive(Debug, Clone)]
pub struct Demonstrations {
    pub labeler: String,
    /// Cut each reference at a sentence end within this many words (see
    /// [`crate::eval::references::cut_at_sentence`]); `None` keeps it whole.
    pub max_words: Option<usize>,
    /// Keep only the reference's sentences whose content words the root's input supports at
    /// least this well: a sentence's unsupported rate ([`crate::grounding`], against the
    /// children's summaries) at most `1 − min_support`, and no name the input lacks. `None`
    /// keeps every sentence. A person's summary says what the story says; the root sees only
    /// its children's summaries, so imitating the rest teaches the policy to invent.
    pub min_support: Option<f64>,
}

impl Demonstrations {
    /// Stores one demonstration per reference of `doc` at the root (`set`), skipping one this
    /// labeler already gave for the same input and text (a re-run stores nothing new); returns
    /// how many were stored.
    fn store(
        &self,
        ws: &Workspace,
        doc: &Document,
        book: &crate::book::Book,
        root_label: &str,
        set: &crate::compose::CandidateSet,
    ) -> Result<usize> {
        use crate::feedback::{self, Feedback, FeedbackKind, Judged};
        if self.labeler.trim().is_empty() {
            return Err(WorkspaceError::Invalid("the demonstrations' labeler is empty".into()));
        }
        let have: std::collections::HashSet<String> = feedback::all(ws.store())?
            .into_iter()
            .filter(|f| f.labeler == self.labeler && f.input_key == set.input_key)
            .filter_map(|f| match f.kind {
                FeedbackKind::Demonstration { summary } => Some(summary.hash),
                _ => None,
            })
            .collect();
        let mut stored = 0;
        let source = crate::grounding::Source::new(&set.input);
        for reference in &doc.references {
            let kept = match self.min_support {
                Some(min) => crate::eval::references::sentences(reference)
                    .into_iter()
                    .filter(|s| {
                        let r = source.check(s);
                        r.unsupported_names == 0 && r.unsupported_rate <= 1.0 - min
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                None => reference.split_whitespace().collect::<Vec<_>>().join(" "),
            };
            let text = match self.max_words {
                Some(n) => crate::eval::references::cut_at_sentence(&kept, n),
                None => kept,
            };
            let summary = Judged::new(text);
            if summary.text.is_empty() || have.contains(&summary.hash) {
                continue;
            }
            let fb = Feedback::new(
                &self.labeler,
                &set.input_key,
                &set.input,
                set.height,
                FeedbackKind::Demonstration { summary },
            )
            .at(Some(book.id().to_string()), Some(root_label.to_string()));
            feedback::put(ws.store(), fb)?;
            stored += 1;
        }
        Ok(stored)
    }
}

/// Documents composed at once: one document's upper levels hold a node or two, too few to fill
/// the engine's batch, so a second document's leaves fill it.
const DOCUMENTS_AT_ONCE: usize = 2;

/// Summarizes and scores every document, results in input order: each is recorded as a book,
/// decomposed (its tree stored), composed with the cache, and its root scored; up to
/// [`DOCUMENTS_AT_ONCE`] are in flight together so the engine batches across them. Fails on the
/// first document that fails (what was composed stays cached; no run is stored by this function).
pub async fn summarize_documents(
    ws: &Workspace,
    s: &Summarizer<'_>,
    docs: &[Document],
    progress: &dyn DocProgress,
) -> Result<Vec<DocScores>> {
    use futures::{StreamExt as _, TryStreamExt as _};
    futures::stream::iter(docs.iter().enumerate())
        .map(|(i, doc)| async move {
            progress.document(i, docs.len(), doc);
            summarize_document(ws, s, doc, progress).await
        })
        .buffered(DOCUMENTS_AT_ONCE)
        .try_collect()
        .await
}

async fn summarize_document(
    ws: &Workspace,
    s: &Summarizer<'_>,
    doc: &Document,
    progress: &dyn DocProgress,
) -> Result<DocScores> {
    let book = summaries::book_of(doc)?;
    let tree = summarize::decompose(ws, &book, s.decomposer)?;
    let report = summarize::compose(
        ws,
        &book,
        &tree,
        s.models.clone(),
        Arc::clone(&s.selector),
        s.options.clone(),
        progress.observer(),
    )
    .await?;
    let missing = |what: &str| EvalError::Document { id: doc.id.clone(), what: what.into() };
    // This composition's own record: the newest run of this tree with the same model, selector
    // and options. (A fully cached re-run writes no new record, so the newest run of the tree
    // may be another configuration's, whose root had another input.)
    let (model, selector) = (s.models.default_model().identity().hash.clone(), s.selector.id());
    let models_at = s.models.identities_at();
    let run = RunRecord::for_book(ws.store(), book.id().as_str())?
        .into_iter()
        .rev()
        .find(|r| {
            r.matches(&tree)
                && r.model.hash == model
                && r.models_at == models_at
                && r.selector == selector
                && r.options == s.options
                && !r.outputs.is_empty()
        })
        .ok_or_else(|| missing("no run record after composing"))?;
    let label = &tree.node(tree.root()).label;
    let (_, set) = run
        .node_result(ws.store(), label)?
        .ok_or_else(|| missing("the root has no stored output"))?;
    let set = set.ok_or_else(|| missing("the root's candidates are not stored"))?;
    if let Some(d) = &s.demonstrations {
        let n = d.store(ws, doc, &book, label, &set)?;
        tracing::info!(doc = %doc.id, stored = n, "references stored as demonstrations at the root");
    }
    let mut scores = summaries::score(doc, &book, &report, (set.height, &set.input), &s.scorers)?;
    scores.run_id = Some(run.run_id.clone());
    Ok(scores)
}

/// The reward models' learning curve and calibration from the stored feedback; stored for the
/// report.
pub fn learning_curve(
    ws: &Workspace,
    encoder: &str,
    repeats: usize,
    config: &TrainConfig,
    progress: bool,
    on_point: impl FnMut(&CurvePoint),
) -> Result<LearningCurve> {
    if config.members == 0 || config.members > 32 {
        return Err(WorkspaceError::Invalid(format!(
            "the ensemble size must be between 1 and 32 (got {})",
            config.members
        )));
    }
    let records = crate::feedback::all(ws.store())?;
    let pairs = crate::feedback::to_pairs(&records);
    let encoder = ws.encoder(encoder, progress)?;
    let cache = super::embeddings::cache(ws.store());
    let lc =
        curves::learning_curve(encoder.as_ref(), Some(cache), &pairs, repeats, config, on_point)?;
    ws.store().put(Table::Meta, LEARNING_CURVE_KEY, &lc)?;
    ws.store().flush()?;
    Ok(lc)
}

/// Best-of-N with reward model `spec` as the proxy and the simulated labeler as the gold
/// score, over stored nodes with at least `candidates` sampled candidates; stored for the
/// report.
pub fn best_of_n(
    ws: &Workspace,
    spec: &str,
    candidates: usize,
    encoder: &str,
    progress: bool,
    on_node: impl FnMut(usize, usize),
) -> Result<BestOfN> {
    if candidates < 2 {
        return Err(WorkspaceError::Invalid(format!(
            "best-of-N needs at least 2 candidates per node (got {candidates})"
        )));
    }
    let model = summarize::load_reward_model(ws, spec)?;
    let (nodes, excluded) = curves::sampled_nodes(ws.store(), candidates)?;
    let encoder = ws.encoder(encoder, progress)?;
    let cache = super::embeddings::cache(ws.store());
    let b = curves::best_of_n(
        &model,
        encoder.as_ref(),
        Some(cache),
        &labeler(),
        &nodes,
        excluded,
        on_node,
    )?;
    ws.store().put(Table::Meta, BEST_OF_N_KEY, &b)?;
    ws.store().flush()?;
    Ok(b)
}

/// Reads `rrm decomposer eval --json` rows (one per line) and keeps the per-book rows for the
/// report. All or nothing: bad lines are named by number and nothing is stored.
pub fn import_decomposition(ws: &Workspace, path: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EvalError::Io { path: path.display().to_string(), source: e })?;
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<EvalRow>(line) {
            // The per-method means and the count-matched protocol are not per-book bars.
            Ok(r) if r.book != "MEAN" && !r.method.contains('@') => rows.push(r),
            Ok(_) => {}
            Err(e) => bad.push((i + 1, format!("not a `decomposer eval --json` row: {e}"))),
        }
    }
    if !bad.is_empty() {
        return Err(EvalError::BadLines { path: path.display().to_string(), lines: bad }.into());
    }
    if rows.is_empty() {
        return Err(EvalError::Data(format!("{}: no decomposition rows", path.display())).into());
    }
    ws.store().put(Table::Meta, DECOMPOSITION_KEY, &rows)?;
    ws.store().flush()?;
    Ok(rows.len())
}

/// Reads a policy-training log (`NAME=FILE.jsonl`: JSONL of {step|round, loss, kl, reward}) and
/// keeps it for the report.
pub fn import_policy_log(ws: &Workspace, spec: &str) -> Result<PolicyLog> {
    let Some((name, file)) = spec.split_once('=') else {
        return Err(WorkspaceError::Invalid(format!(
            "a policy log is named NAME=FILE.jsonl (got '{spec}')"
        )));
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| EvalError::Io { path: file.to_string(), source: e })?;
    let log = report::parse_policy_log(name, &text).map_err(|e| match e {
        EvalError::BadLines { lines, .. } => EvalError::BadLines { path: file.to_string(), lines },
        EvalError::NoDocuments { .. } => {
            EvalError::Data(format!("{file}: no log point (the file is empty)"))
        }
        other => other,
    })?;
    ws.store().put(Table::Meta, &format!("{POLICY_PREFIX}{name}"), &log)?;
    ws.store().flush()?;
    Ok(log)
}

/// Writes the report over everything stored into `out`. `compare` lists the run pairs (A, B)
/// to draw; empty: every run against the oldest.
pub fn write_report(
    ws: &Workspace,
    out: &Path,
    compare: &[(String, String)],
    bootstrap: BootstrapOptions,
) -> Result<Written> {
    let store = ws.store();
    let mut all = runs::all(store)?;
    all.sort_by_key(|r| r.created_unix);
    let comparisons: Vec<(String, String)> = if compare.is_empty() {
        all.iter().skip(1).map(|r| (r.name.clone(), all[0].name.clone())).collect()
    } else {
        compare.to_vec()
    };
    for (a, b) in &comparisons {
        for n in [a, b] {
            if !runs::exists(store, n)? {
                return Err(EvalError::UnknownRun(n.clone()).into());
            }
        }
    }
    let data = ReportData {
        runs: all,
        comparisons,
        learning_curve: store.get::<LearningCurve>(Table::Meta, LEARNING_CURVE_KEY)?,
        best_of_n: store.get::<BestOfN>(Table::Meta, BEST_OF_N_KEY)?,
        decomposition: store
            .get::<Vec<EvalRow>>(Table::Meta, DECOMPOSITION_KEY)?
            .unwrap_or_default(),
        policy: store
            .scan::<PolicyLog>(Table::Meta, POLICY_PREFIX)?
            .into_iter()
            .map(|(_, l)| l)
            .collect(),
        bootstrap,
    };
    Ok(report::write(out, &data)?)
}
