//! KL(π‖π_ref) on prompts, estimated from samples of π: the mean over samples `y ~ π(·|x)` of
//! `log π(y|x) − log π_ref(y|x)`, the usual Monte-Carlo estimate RLHF reports. What exactly is
//! measured:
//!
//! - **The whole sequence.** `y` is the sampled tokens and, when the sample ended by stopping,
//!   the end-of-sequence token it stopped with ([`Sampled::stop_token`]; the engine leaves it out
//!   of the text and the token ids, and for samples that do not name it, the chat template's end
//!   token `<|im_end|>` stands in). A sample cut at its token cap (or the context window) has no
//!   end token: its difference is that of the prefix, so the estimate is the KL of the sequences
//!   as the cap cuts them (never more than the uncut KL), and [`KlEstimate::truncated`] says how
//!   many samples were cut. A sample that stopped at once (only the end token) counts too.
//! - **Per sequence and per token.** [`KlEstimate::mean`] is nats per sequence;
//!   [`KlEstimate::per_token`] is the summed differences over the summed scored tokens (end
//!   tokens included).
//! - **The model that sampled is the model scored.** [`estimate_files`] samples π with the
//!   engine from a GGUF and scores both sides with the trainer's f32 forward over the weights
//!   of the GGUFs named (the policy's file dequantized; the reference's likewise), so a policy
//!   exported Q8_0 is scored as the Q8_0 model that drew the samples, not as the f32 weights it
//!   was exported from. (The trainer's logits match the engine's to about 1e-3 on SmolLM2; the
//!   engine's CPU kernels round activations, the trainer does not.) Against its base, the
//!   reference is the base's zero-step export ([`super::registry::zero_step_export`]), so both
//!   sides went through the same quantization.

use std::path::Path;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::data::{Encoder, Prompt};
use super::sample::{sample_gguf, SampleOptions, Sampled};
use super::PolicyError;
use crate::infer::tokenizer::GgufTokenizer;
use crate::infer::FinishReason;
use crate::lm::model::{LoadOptions, Mode, Packed, TrainableLlama};

/// A KL estimate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KlEstimate {
    /// Nats per sequence (the mean over samples).
    pub mean: f64,
    /// Standard error of the mean.
    pub std_err: f64,
    pub samples: usize,
    /// Mean scored length in tokens (the end token included where a sample stopped).
    pub mean_tokens: f64,
    /// Nats per token: the summed differences over the summed scored tokens.
    #[serde(default)]
    pub per_token: f64,
    /// Samples cut at their token cap (or the model's context) instead of stopping: their
    /// difference is that of a prefix.
    #[serde(default)]
    pub truncated: usize,
    /// The model that drew the samples and was scored as π (a file name), and π_ref's.
    #[serde(default)]
    pub policy: String,
    #[serde(default)]
    pub reference: String,
}

impl KlEstimate {
    /// One line for people: per sequence, per token, and how many samples were cut.
    pub fn describe(&self) -> String {
        format!(
            "{:.2} ± {:.2} nats per sequence, {:.4} per token ({} samples, {:.0} tokens on \
             average, {} cut at the token cap)",
            self.mean, self.std_err, self.per_token, self.samples, self.mean_tokens, self.truncated
        )
    }
}

/// The tokens whose log-probabilities make up `log π(y|x)` of sample `s`: its generated tokens
/// and, when it stopped, its end token (`end` where the sample does not name it). `None` when
/// there is nothing to score (a sample cut at a cap of 0 tokens).
pub fn scored_tokens(s: &Sampled, end: u32) -> Option<Vec<u32>> {
    let mut tokens = s.token_ids.clone();
    if s.finish == FinishReason::Stop {
        tokens.push(s.stop_token.unwrap_or(end));
    }
    (!tokens.is_empty()).then_some(tokens)
}

/// Scored rows (one per prompt with anything to score) and how many scored samples were cut.
fn rows(
    encoder: &Encoder<'_>,
    prompts: &[Prompt],
    samples: &[Vec<Sampled>],
) -> Result<(Vec<Packed>, usize), PolicyError> {
    let mut out = Vec::new();
    let mut truncated = 0;
    for (p, s) in prompts.iter().zip(samples) {
        let scored: Vec<&Sampled> =
            s.iter().filter(|x| scored_tokens(x, encoder.end_token()).is_some()).collect();
        if scored.is_empty() {
            continue;
        }
        truncated += scored.iter().filter(|x| x.finish != FinishReason::Stop).count();
        let completions =
            scored.iter().filter_map(|x| scored_tokens(x, encoder.end_token())).collect();
        out.push(Packed { prompt: encoder.prompt(p)?, completions });
    }
    Ok((out, truncated))
}

fn sums(model: &TrainableLlama, rows: &[Packed]) -> Result<(Vec<f64>, Vec<usize>), PolicyError> {
    let mut v = Vec::new();
    let mut n = Vec::new();
    for r in rows {
        let s = model.packed_logprobs(std::slice::from_ref(r))?;
        let x = s.sums.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?;
        v.extend(x);
        n.extend(s.counts);
    }
    Ok((v, n))
}

/// Estimates KL(π‖π_ref) from `samples[i]` drawn from π for `prompts[i]`, π scored by `policy`
/// and π_ref by `reference`. The samples must come from the weights `policy` holds (see the
/// module docs; [`estimate_files`] makes sure of it).
pub fn estimate(
    policy: &TrainableLlama,
    reference: &TrainableLlama,
    encoder: &Encoder<'_>,
    prompts: &[Prompt],
    samples: &[Vec<Sampled>],
) -> Result<KlEstimate, PolicyError> {
    let (rows, truncated) = rows(encoder, prompts, samples)?;
    if rows.is_empty() {
        return Ok(KlEstimate::default());
    }
    let (lp, counts) = sums(policy, &rows)?;
    let (lr, _) = sums(reference, &rows)?;
    let d: Vec<f64> = lp.iter().zip(&lr).map(|(a, b)| a - b).collect();
    let n = d.len() as f64;
    let total = d.iter().sum::<f64>();
    let tokens = counts.iter().sum::<usize>();
    let mean = total / n;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    Ok(KlEstimate {
        mean,
        std_err: (var / n).sqrt(),
        samples: d.len(),
        mean_tokens: tokens as f64 / n,
        per_token: total / tokens.max(1) as f64,
        truncated,
        policy: String::new(),
        reference: String::new(),
    })
}

/// Loads the GGUF at `path` into the trainer for scoring (frozen, f32: a quantized file's
/// weights dequantized exactly), with its tokenizer.
pub fn load_scorer(
    path: &Path,
    device: &Device,
) -> Result<(TrainableLlama, GgufTokenizer), PolicyError> {
    let frozen = LoadOptions { mode: Mode::Frozen, dtype: DType::F32 };
    Ok(TrainableLlama::load(path, device, &frozen)?)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into())
}

/// Samples π from the GGUF `policy` with the engine (`options`: [`SampleOptions::pure`] for an
/// unbiased estimate) and estimates KL(π‖π_ref) with both sides scored by the trainer over the
/// weights of `policy` and `reference` (see the module docs); prompts are encoded with the
/// policy's tokenizer. Returns the samples too.
pub fn estimate_files(
    policy: &Path,
    reference: &Path,
    device: &Device,
    prompts: &[Prompt],
    options: &SampleOptions,
) -> Result<(KlEstimate, Vec<Vec<Sampled>>), PolicyError> {
    let samples = sample_gguf(policy, device, prompts, options)?;
    let (p, tokenizer) = load_scorer(policy, device)?;
    let (r, _) = load_scorer(reference, device)?;
    // Prompts are scored whole: no limit cuts them.
    let encoder = Encoder::new(&tokenizer, usize::MAX, usize::MAX)?;
    let mut kl = estimate(&p, &r, &encoder, prompts, &samples)?;
    kl.policy = file_name(policy);
    kl.reference = file_name(reference);
    Ok((kl, samples))
}
