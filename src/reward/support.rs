//! The language model's support for a summary, as a reward with no feedback and no training:
//! how much reading the input raises a language model's log-probability of the summary, per
//! summary token. That is the pointwise mutual information of input and summary under the model,
//! `(log p(s | input) − log p(s)) / |s|`: a summary that says what the input says becomes far more
//! likely once the model has read it; one that invents names or events does not, and neither
//! does generic text that was likely anyway.
//!
//! Named `lm-support` (the base policy, SmolLM2-135M) or `lm-support:MODEL` (a GGUF of the
//! llama or qwen2 family the resolver knows; the f32 scorer runs no other) wherever a reward
//! model is named: `summarize --reward-model`, `reward eval --model`, the DPO labelling and
//! `policy eval` judges. It is the model-based counterpart of the lexical [`crate::grounding`]
//! check (which no entailment model on the package registries could replace);
//! docs/reward-human-data.md compares the two on FRANK's held-out factuality judgements.
//!
//! The input is cut to its first [`MAX_INPUT_TOKENS`] tokens and each summary to
//! [`MAX_SUMMARY_TOKENS`]; the input's prompt is computed once for all summaries of it. It has one
//! member, so pessimism leaves its scores alone and `--ask` never finds it unsure.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;

use crate::compose::select::SelectError;
use crate::compose::{Candidate, CandidateScore, Selector};
use crate::feedback::Pair;
use crate::infer::tokenizer::GgufTokenizer;
use crate::lm::model::Packed;
use crate::lm::TrainableLlama;
use crate::reward::RewardError;

/// The name users give it.
pub const NAME: &str = "lm-support";
/// Version of the score (template, cuts, normalization); part of every pick's id.
pub const VERSION: &str = "lm-support@1";
/// The model it reads with when the spec names none.
pub const DEFAULT_MODEL: &str = "smollm2-135m";
/// Input tokens kept (the beginning).
pub const MAX_INPUT_TOKENS: usize = 1024;
/// Summary tokens scored (the beginning).
pub const MAX_SUMMARY_TOKENS: usize = 256;
/// Log-odds per nat of support per token when a margin is read as a probability (log-loss,
/// calibration). Set once from the scale of the score, never fitted on an evaluation set.
pub const LOGIT_SCALE: f32 = 4.0;
/// The score of a summary with no tokens at all.
const EMPTY: f32 = -10.0;

/// The model spec `spec` names when it names this reward (`lm-support` or `lm-support:MODEL`),
/// `None` otherwise.
pub fn parse(spec: &str) -> Option<Result<String, String>> {
    let rest = spec.strip_prefix(NAME)?;
    if rest.is_empty() {
        return Some(Ok(DEFAULT_MODEL.to_string()));
    }
    let model = rest.strip_prefix(':')?;
    if model.trim().is_empty() {
        return Some(Err(format!("`{spec}` names no model after `{NAME}:`")));
    }
    Some(Ok(model.trim().to_string()))
}

/// The reward: a frozen language model (dequantized to f32, as the policy trainer scores) and
/// its tokenizer.
pub struct LmSupport {
    model: TrainableLlama,
    tokenizer: GgufTokenizer,
    /// The model file's blake3, so picks made with another model are not reused.
    hash: String,
    name: String,
}

impl std::fmt::Debug for LmSupport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmSupport").field("name", &self.name).field("hash", &self.hash).finish()
    }
}

impl LmSupport {
    /// Loads the GGUF at `path` (named `name` for people).
    pub fn load(path: &Path, name: &str) -> Result<LmSupport, RewardError> {
        let (model, tokenizer) = crate::policy::kl::load_scorer(path, &Device::Cpu)
            .map_err(|e| RewardError::Invalid(format!("{NAME}: {e}")))?;
        let hash = super::lm::file_hash(path)?;
        Ok(LmSupport { model, tokenizer, hash, name: name.to_string() })
    }

    /// The identity stored with every pick: version, model name and the file's hash.
    pub fn id(&self) -> String {
        format!("{VERSION}:{}:{}", self.name, &self.hash[..16.min(self.hash.len())])
    }

    fn encode(&self, text: &str, max: usize) -> Result<Vec<u32>, RewardError> {
        let mut t = self
            .tokenizer
            .encode(text)
            .map_err(|e| RewardError::Invalid(format!("{NAME}: tokenizing: {e}")))?;
        t.truncate(max);
        Ok(t)
    }

    /// Support per token of each of `summaries` of `input` (higher: the input explains more of
    /// the summary).
    pub fn scores(&self, input: &str, summaries: &[&str]) -> Result<Vec<f32>, RewardError> {
        let mut prompt = self.encode("Text:\n", usize::MAX)?;
        prompt.extend(self.encode(input, MAX_INPUT_TOKENS)?);
        prompt.extend(self.encode("\n\nSummary:\n", usize::MAX)?);
        let bare = self.encode("Summary:\n", usize::MAX)?;
        let mut tokens = Vec::with_capacity(summaries.len());
        for s in summaries {
            tokens.push(self.encode(s, MAX_SUMMARY_TOKENS)?);
        }
        let scored: Vec<Vec<u32>> = tokens.iter().filter(|t| !t.is_empty()).cloned().collect();
        let mut out = vec![EMPTY; summaries.len()];
        if scored.is_empty() {
            return Ok(out);
        }
        let with = self.model.packed_logprobs(&[Packed { prompt, completions: scored.clone() }])?;
        let without =
            self.model.packed_logprobs(&[Packed { prompt: bare, completions: scored }])?;
        let with: Vec<f32> = with.sums.to_vec1().map_err(crate::lm::LmError::from)?;
        let without: Vec<f32> = without.sums.to_vec1().map_err(crate::lm::LmError::from)?;
        let mut k = 0;
        for (slot, t) in out.iter_mut().zip(&tokens) {
            if !t.is_empty() {
                *slot = (with[k] - without[k]) / t.len() as f32;
                k += 1;
            }
        }
        Ok(out)
    }

    /// Margins (chosen − rejected, in log-odds) of `pairs`, for `rrm reward eval`: every input
    /// is read once for all the summaries of it.
    pub fn margins(&self, pairs: &[Pair]) -> Result<Vec<f32>, RewardError> {
        let mut by_input: HashMap<&str, Vec<&str>> = HashMap::new();
        for p in pairs {
            let summaries = by_input.entry(p.input.as_str()).or_default();
            for s in [p.chosen.as_str(), p.rejected.as_str()] {
                if !summaries.contains(&s) {
                    summaries.push(s);
                }
            }
        }
        let mut score: HashMap<(&str, &str), f32> = HashMap::new();
        for (input, summaries) in &by_input {
            for (s, v) in summaries.iter().zip(self.scores(input, summaries)?) {
                score.insert((input, s), v);
            }
        }
        Ok(pairs
            .iter()
            .map(|p| {
                let c = score[&(p.input.as_str(), p.chosen.as_str())];
                let r = score[&(p.input.as_str(), p.rejected.as_str())];
                LOGIT_SCALE * (c - r)
            })
            .collect())
    }
}

/// Loads the model `model_spec` names (fetched on first use, like every registry model).
pub fn load(model_spec: &str, models_dir: &Path) -> Result<LmSupport, RewardError> {
    let resolved = crate::infer::fetch::resolve_model(model_spec, models_dir)
        .map_err(|e| RewardError::Invalid(format!("{NAME}: model `{model_spec}`: {e}")))?;
    LmSupport::load(&resolved.path, &resolved.name)
}

/// The reward as a [`Selector`].
#[derive(Debug, Clone)]
pub struct LmSupportSelector {
    pub support: std::sync::Arc<LmSupport>,
    pub pessimism: f32,
}

impl Selector for LmSupportSelector {
    fn id(&self) -> String {
        format!("{}:lambda={}", self.support.id(), self.pessimism)
    }

    fn score(
        &self,
        _height: u32,
        input: &str,
        candidates: &[Candidate],
    ) -> Result<Vec<CandidateScore>, SelectError> {
        let texts: Vec<&str> = candidates.iter().map(|c| c.text.as_str()).collect();
        let scores = self
            .support
            .scores(input, &texts)
            .map_err(|e| SelectError { selector: self.id(), message: e.to_string() })?;
        let mut out = super::ensemble_scores(std::slice::from_ref(&scores), self.pessimism);
        for (s, v) in out.iter_mut().zip(&scores) {
            s.parts.insert("support_per_token".into(), *v);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_the_model() {
        assert_eq!(parse("lm-support"), Some(Ok(DEFAULT_MODEL.to_string())));
        assert_eq!(parse("lm-support:gemma3-270m"), Some(Ok("gemma3-270m".to_string())));
        assert!(matches!(parse("lm-support:"), Some(Err(_))));
        assert_eq!(parse("grounding"), None);
        assert_eq!(parse("lm-supportx"), None);
    }
}
