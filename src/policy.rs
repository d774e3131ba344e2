//! Training the summarizer itself from feedback: behaviour cloning (SFT), DPO, and rounds of
//! DPO on pairs the reward ensemble labels (rm-dpo), on the trainable forward of [`crate::lm`].
//!
//! - [`data`]: training examples from the store's feedback (demonstrations and corrections as
//!   targets; comparisons, Likert pairs and corrections as preference pairs) or a TRL-format
//!   JSONL file; the split by book into train / validation / test; prompts are exactly the
//!   composer's chat prompts per height (`compose::prompt`).
//! - [`train`]: the training loop (completion-only SFT loss, TRL's sigmoid DPO loss with
//!   reference log-probabilities computed once, label smoothing and an RPO-style NLL term),
//!   gradient accumulation, clipping, warm-up + cosine, checkpoints every N steps from which a
//!   killed run resumes.
//! - [`sample`]: drawing candidates with the engine from a model being trained (exported to a
//!   temporary GGUF), post-processed as the composer does.
//! - [`rmdpo`]: reward-model rounds: sample K, label pairs by the ensemble's mean − λ·std
//!   (uncertain pairs skipped), DPO, repeat; KL(π‖π_ref) per round.
//! - [`kl`]: KL(π‖π_ref) estimated on samples from π, scored on the weights that sampled, end
//!   tokens included, per sequence and per token, with the samples cut at their cap counted.
//! - [`reference`]: people's summaries of a prompt as rm-dpo's labeler (`--reward-model
//!   reference`): model-vs-model pairs by ROUGE against them, less unsupported content.
//! - [`judge`]: the judges an evaluation uses: the simulated labeler, an independent simulated
//!   preference, the reward ensemble.
//! - [`eval`]: policy against baseline, node by node: win rates per height and at the root,
//!   length, loop rate.
//! - [`registry`]: trained policies as GGUFs with a JSON card under the models folder, and the
//!   base's zero-step export (the baseline a policy is compared with).
//!
//! Imports `lm`, `infer`, `compose` (prompts, text post-processing), `feedback` and `reward`;
//! never the CLI.

pub mod data;
pub mod eval;
pub mod job;
pub mod judge;
pub mod kl;
pub mod reference;
pub mod registry;
pub mod rmdpo;
pub mod sample;
#[cfg(test)]
mod tests;
pub mod train;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How a policy is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Behaviour cloning on demonstrations and corrections.
    Sft,
    /// Direct preference optimization on preference pairs.
    Dpo,
    /// Rounds of sampling, reward-ensemble labels and DPO.
    RmDpo,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Sft => "sft",
            Method::Dpo => "dpo",
            Method::RmDpo => "rm-dpo",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sft" => Ok(Method::Sft),
            "dpo" => Ok(Method::Dpo),
            "rm-dpo" | "rmdpo" => Ok(Method::RmDpo),
            other => Err(format!("unknown method `{other}` (sft, dpo, rm-dpo)")),
        }
    }
}

/// Everything that can go wrong in this module.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Lm(#[from] crate::lm::LmError),
    #[error(transparent)]
    Feedback(#[from] crate::feedback::FeedbackError),
    #[error(transparent)]
    Infer(#[from] crate::infer::InferError),
    #[error(transparent)]
    Reward(#[from] crate::reward::RewardError),
    #[error(transparent)]
    Prompt(#[from] crate::compose::prompt::PromptError),
    #[error(transparent)]
    Tokenizer(#[from] crate::infer::tokenizer::TokenizerError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("no training data: {0}")]
    NoData(String),
    /// A data file with bad lines (1-based numbers and what is wrong); nothing was used.
    #[error("{}: {} bad line(s):\n{}", path.display(), bad.len(), format_bad(bad))]
    BadLines { path: PathBuf, bad: Vec<(usize, String)> },
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "stopped before the end; run the same command again to resume from the last checkpoint"
    )]
    Interrupted,
}

fn format_bad(bad: &[(usize, String)]) -> String {
    let mut lines: Vec<String> =
        bad.iter().take(20).map(|(n, e)| format!("  line {n}: {e}")).collect();
    if bad.len() > 20 {
        lines.push(format!("  … and {} more", bad.len() - 20));
    }
    lines.join("\n")
}

pub(crate) fn io_err(path: &std::path::Path, error: std::io::Error) -> PolicyError {
    PolicyError::Io { path: path.to_path_buf(), error }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
