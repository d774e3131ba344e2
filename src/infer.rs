//! Inference: model files (resolution, fetching, verification), tokenizers, batched text
//! generation and sentence embeddings.
//!
//! The seams are [`Generator`] (batched, async: the local candle engine and the OpenAI-compatible
//! client both implement it) and [`Encoder`]. Callers never see which backend they talk to; what
//! they see of a model is its [`ModelIdentity`], which enters cache keys.
//!
//! This module is a leaf: it imports nothing else from the crate.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub mod bench;
pub mod encoder;
pub mod encoder_bench;
pub mod engine;
pub mod fetch;
pub mod gguf_check;
pub mod hf;
pub mod kernels;
pub mod lazy;
pub mod llama;
pub mod openai;
pub mod sampling;
pub mod spec;
/// Tiny random models for tests (the `testing` feature; not part of the shipped API).
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tokenizer;
pub mod twin;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a chat prompt. Local models render these with their own chat template.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        Self { role: Role::System, content: content.into() }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: Role::User, content: content.into() }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self { role: Role::Assistant, content: content.into() }
    }
}

/// How the next token is chosen. `temperature == 0.0` means greedy (argmax).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Divides positive logits (multiplies negative ones) of tokens seen in the last
    /// `repetition_window` tokens of prompt and output. 1.0 disables it.
    pub repetition_penalty: f32,
    pub repetition_window: usize,
    /// Forbid any n-gram of this size from appearing twice in the output (`None`: off).
    pub no_repeat_ngram: Option<usize>,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: None,
            repetition_penalty: 1.0,
            repetition_window: 64,
            no_repeat_ngram: None,
        }
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

/// One prompt to complete, with everything that decides its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRequest {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Seeds this request's own sampler: the same request and seed give the same output whatever
    /// else shares the batch.
    pub seed: u64,
}

/// Why generation of a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted an end-of-sequence token.
    Stop,
    /// The sequence reached `max_tokens`.
    Length,
    /// The sequence reached the model's context window.
    ContextFull,
}

/// The result of one [`GenerationRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    /// Generated token ids (empty where a remote backend does not report them).
    pub token_ids: Vec<u32>,
    /// Log-probability of each generated token under the unmodified model distribution
    /// (empty where a remote backend does not report them).
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
    /// The end-of-sequence token that ended it (`finish` is `Stop`), where the backend says
    /// which: it is not in `token_ids` (the text ends before it), yet it is part of the
    /// sampled sequence, so a sequence's log-probability needs it.
    #[serde(default)]
    pub stop_token: Option<u32>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Completion {
    /// Mean log-probability per generated token, if known.
    pub fn mean_logprob(&self) -> Option<f32> {
        if self.logprobs.is_empty() {
            None
        } else {
            Some(self.logprobs.iter().sum::<f32>() / self.logprobs.len() as f32)
        }
    }
}

/// What identifies a model for caching: a name for people and a hash of its weights.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub name: String,
    /// sha256 of the model file, or for a remote backend a hash of endpoint + model name.
    pub hash: String,
}

/// A batched text generator. Implementations batch concurrent calls together (continuous
/// batching): callers may issue many `generate` calls at once and each resolves as soon as its
/// own sequences finish.
pub trait Generator: Send + Sync {
    fn identity(&self) -> &ModelIdentity;
    /// The model's context window in tokens (an error when the model could not be loaded).
    fn context_length(&self) -> Result<usize, InferError>;
    /// Number of tokens `text` takes in this model's tokenizer (an error when the model could not
    /// be loaded or the text cannot be tokenized: never a silent 0).
    fn count_tokens(&self, text: &str) -> Result<usize, InferError>;
    fn generate(
        &self,
        requests: Vec<GenerationRequest>,
    ) -> BoxFuture<'_, Result<Vec<Completion>, InferError>>;
}

/// Turns texts into fixed-size, L2-normalized embeddings.
pub trait Encoder: Send + Sync {
    fn identity(&self) -> &ModelIdentity;
    fn dim(&self) -> usize;
    /// Maximum tokens per input; longer inputs are truncated (callers window long texts).
    fn max_tokens(&self) -> usize;
    fn count_tokens(&self, text: &str) -> usize;
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, InferError>;
}

/// Everything that can go wrong in this module.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{0}")]
    Other(String),
    /// A model file that cannot be used (truncated, corrupted, unsupported), naming the file.
    #[error("{}: {message}", path.display())]
    Model { path: std::path::PathBuf, message: String },
    #[error("{}: {error}", path.display())]
    Io { path: std::path::PathBuf, error: std::io::Error },
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    #[error("the prompt has {tokens} tokens; the model's context holds {limit}")]
    PromptTooLong { tokens: usize, limit: usize },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("the generation engine has stopped")]
    EngineStopped,
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    /// The sentence encoder failed: a model file (named), the tokenizer, the forward pass, the
    /// embedding cache.
    #[error(transparent)]
    Encoder(#[from] encoder::EncoderError),
    /// The OpenAI-compatible backend failed: connection, timeout, HTTP status, malformed reply.
    #[error(transparent)]
    OpenAi(#[from] openai::OpenAiError),
}
