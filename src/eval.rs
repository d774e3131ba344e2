//! Evaluation: summary quality against human references, paired comparisons of runs with
//! bootstrap intervals, the reward models' learning curve and calibration, best-of-N
//! over-optimization, and the plots and HTML report that show them.
//!
//! - [`stem`], [`rouge`]: ROUGE-1/2/L as the `rouge-score` package computes them (Porter
//!   stemming in NLTK's mode, its tokenizer), tested against figures computed with it.
//! - [`references`]: documents with reference summaries from JSONL (plain or SQuALITY layout),
//!   all or nothing, bad lines by number.
//! - [`summaries`]: summarizes each document through the ordinary [`crate::compose::Composer`]
//!   (cached, batched) and scores the root against the references, beside a lead baseline.
//! - [`runs`]: a run (name, settings, per-document scores) stored whole in `Table::Meta` under
//!   `eval/run/<name>`; [`runs::compare`] pairs two runs' documents.
//! - [`bootstrap`]: the seeded paired bootstrap and the win rate.
//! - [`curves`]: reward-model learning curves and calibration from stored feedback, and the
//!   best-of-N estimator over stored candidates (Gao et al. 2022).
//! - [`plot`], [`report`]: SVG figures (plotters) and one HTML page with the CSVs beside it.
//!
//! Imports `book`, `decompose`, `tree`, `compose`, `feedback`, `reward`, `infer` (seams) and
//! `store`; never the CLI.

pub mod bootstrap;
pub mod curves;
pub mod plot;
pub mod references;
pub mod report;
pub mod rouge;
pub mod runs;
pub mod stem;
pub mod summaries;

use crate::store::StoreError;

/// Everything evaluation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: no document (the file is empty or has only blank lines)")]
    NoDocuments { path: String },
    #[error("{path}: {} bad line(s), nothing evaluated:\n{}", lines.len(), format_lines(lines))]
    BadLines { path: String, lines: Vec<(usize, String)> },
    #[error("no evaluation run named '{0}' (see `rrm eval list`)")]
    UnknownRun(String),
    #[error("an evaluation run named '{0}' exists already (pass --replace to overwrite it)")]
    RunExists(String),
    #[error("invalid run name '{0}': use letters, digits, '.', '_' and '-' (at most 64)")]
    BadRunName(String),
    #[error("runs '{a}' and '{b}' have no document in common")]
    NothingInCommon { a: String, b: String },
    #[error("document {id}: {what}")]
    Document { id: String, what: String },
    #[error("{0}")]
    Data(String),
    #[error("drawing {file}: {message}")]
    Plot { file: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Compose(#[from] crate::compose::ComposeError),
    #[error(transparent)]
    Decompose(#[from] crate::decompose::DecomposeError),
    #[error(transparent)]
    Tree(#[from] crate::tree::TreeError),
    #[error(transparent)]
    Reward(#[from] crate::reward::RewardError),
    #[error(transparent)]
    Infer(#[from] crate::infer::InferError),
    #[error("reward model tensors: {0}")]
    Tensor(#[from] candle_core::Error),
}

fn format_lines(lines: &[(usize, String)]) -> String {
    const SHOWN: usize = 20;
    let mut out: Vec<String> =
        lines.iter().take(SHOWN).map(|(n, why)| format!("  line {n}: {why}")).collect();
    if lines.len() > SHOWN {
        out.push(format!("  … and {} more", lines.len() - SHOWN));
    }
    out.join("\n")
}
