//! Drawing candidate summaries from a policy with the inference engine, post-processed exactly
//! as the composer post-processes its candidates (a loop is cut; a completion that ran to its
//! cap is trimmed to its last whole sentence).
//!
//! A model being trained is exported to a GGUF first (see [`crate::lm::export`]); the engine
//! then samples with its KV cache and continuous batching, far faster than the trainer's
//! forward could.

use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::data::Prompt;
use super::PolicyError;
use crate::compose::text;
use crate::infer::engine::{EngineConfig, LocalGenerator};
use crate::infer::{Completion, FinishReason, GenerationRequest, Generator, SamplingParams};

/// How candidates are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleOptions {
    /// Candidates per prompt.
    pub k: usize,
    pub sampling: SamplingParams,
    /// Output cap by height (the last repeats), as the tree's caps.
    pub max_tokens: Vec<usize>,
    pub seed: u64,
    /// Sequences the engine decodes together.
    pub batch: usize,
    /// Post-processing: a word n-gram of this size may occur at most `loop_max_repeats` times.
    pub loop_ngram: usize,
    pub loop_max_repeats: usize,
}

impl Default for SampleOptions {
    fn default() -> Self {
        // The composer's best-of-N sampling.
        Self {
            k: 4,
            sampling: SamplingParams {
                temperature: 0.8,
                top_p: 0.95,
                top_k: Some(50),
                repetition_penalty: 1.15,
                repetition_window: 64,
                no_repeat_ngram: Some(4),
            },
            max_tokens: vec![128, 192, 384],
            seed: 0,
            batch: 16,
            loop_ngram: 4,
            loop_max_repeats: 3,
        }
    }
}

impl SampleOptions {
    /// Plain sampling from the model's distribution (temperature 1, nothing cut): what a KL
    /// estimate needs.
    pub fn pure(k: usize, max_tokens: Vec<usize>, seed: u64) -> SampleOptions {
        SampleOptions {
            k,
            sampling: SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                top_k: None,
                repetition_penalty: 1.0,
                repetition_window: 64,
                no_repeat_ngram: None,
            },
            max_tokens,
            seed,
            ..SampleOptions::default()
        }
    }

    fn cap(&self, height: u32) -> usize {
        let i = (height as usize).min(self.max_tokens.len().saturating_sub(1));
        self.max_tokens.get(i).copied().unwrap_or(128)
    }
}

/// One drawn candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampled {
    /// Post-processed, as the composer stores it.
    pub text: String,
    /// The model's raw completion.
    pub raw: String,
    /// The generated token ids (raw), without the end-of-sequence token.
    pub token_ids: Vec<u32>,
    pub looped: bool,
    pub finish: FinishReason,
    /// The end-of-sequence token the sample stopped with (`finish` is `Stop`, from the local
    /// engine); `None` in samples stored before it was kept.
    #[serde(default)]
    pub stop_token: Option<u32>,
}

/// The composer's post-processing of a raw completion.
pub fn postprocess(c: &Completion, loop_ngram: usize, loop_max_repeats: usize) -> (String, bool) {
    let raw = c.text.trim().to_string();
    match text::cut_loop(&raw, loop_ngram, loop_max_repeats) {
        Some(cut) => (cut, true),
        None if c.finish != FinishReason::Stop => {
            (text::trim_to_last_sentence(&raw).to_string(), false)
        }
        None => (raw, false),
    }
}

fn request_seed(seed: u64, prompt: usize, k: usize) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"rrm-policy-sample-v1");
    h.update(&seed.to_le_bytes());
    h.update(&(prompt as u64).to_le_bytes());
    h.update(&(k as u64).to_le_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// Draws `options.k` candidates for every prompt with `generator`.
pub async fn sample_with(
    generator: &dyn Generator,
    prompts: &[Prompt],
    options: &SampleOptions,
) -> Result<Vec<Vec<Sampled>>, PolicyError> {
    let mut requests = Vec::with_capacity(prompts.len() * options.k);
    for (pi, p) in prompts.iter().enumerate() {
        for k in 0..options.k {
            requests.push(GenerationRequest {
                messages: p.messages.clone(),
                max_tokens: options.cap(p.height),
                sampling: options.sampling.clone(),
                seed: request_seed(options.seed, pi, k),
            });
        }
    }
    let completions = generator.generate(requests).await?;
    if completions.len() != prompts.len() * options.k {
        return Err(PolicyError::Invalid(format!(
            "the engine returned {} completions for {} requests",
            completions.len(),
            prompts.len() * options.k
        )));
    }
    let mut out: Vec<Vec<Sampled>> = Vec::with_capacity(prompts.len());
    for chunk in completions.chunks(options.k.max(1)) {
        out.push(
            chunk
                .iter()
                .map(|c| {
                    let (text, looped) =
                        postprocess(c, options.loop_ngram, options.loop_max_repeats);
                    Sampled {
                        text,
                        raw: c.text.clone(),
                        token_ids: c.token_ids.clone(),
                        looped,
                        finish: c.finish,
                        stop_token: c.stop_token,
                    }
                })
                .collect(),
        );
    }
    Ok(out)
}

/// Loads the GGUF at `path` in the engine and draws candidates (see [`sample_with`]).
pub fn sample_gguf(
    path: &Path,
    device: &Device,
    prompts: &[Prompt],
    options: &SampleOptions,
) -> Result<Vec<Vec<Sampled>>, PolicyError> {
    if options.k == 0 {
        return Err(PolicyError::Invalid("need at least one candidate per prompt".into()));
    }
    let config = EngineConfig { max_batch: options.batch.max(1), ..EngineConfig::default() };
    let generator = LocalGenerator::load(path, Some(String::new()), device, config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PolicyError::Invalid(format!("starting the async runtime: {e}")))?;
    runtime.block_on(sample_with(&generator, prompts, options))
}
