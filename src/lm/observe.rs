//! What a training loop over the trainable LM reports while it runs: its steps, its
//! validations and free-form messages, to an [`Observer`] (a progress bar in the CLI, a job's
//! status in the web app, nothing in tests). Policy training (SFT, DPO, reward-model rounds)
//! and the LM reward model's training report through the same trait.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One logged optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub epoch: usize,
    pub lr: f64,
    pub loss: f64,
    pub grad_norm: f64,
    /// Tokens through the forward passes of this step.
    pub tokens: usize,
    pub seconds: f64,
    /// DPO: `reward_accuracy`, `margin`, `chosen_reward`, `rejected_reward`.
    pub metrics: BTreeMap<String, f64>,
}

/// Metrics on the validation examples (after an epoch, or every so many steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalLog {
    pub step: usize,
    pub epoch: usize,
    pub metrics: BTreeMap<String, f64>,
}

/// Progress reports from the loop.
pub trait Observer {
    fn started(&self, _total_steps: usize, _resumed_from: Option<usize>) {}
    fn step(&self, _log: &StepLog) {}
    fn eval(&self, _log: &EvalLog) {}
    fn message(&self, _text: &str) {}
    /// Asked after every forward pass by loops that checkpoint as they go (policy training):
    /// stop now, as a kill would; the run resumes from its last checkpoint.
    fn stop(&self) -> bool {
        false
    }
}

/// An observer that reports nothing.
pub struct Quiet;
impl Observer for Quiet {}
