//! A trainable llama-family language model on candle: the same GGUF the inference engine
//! serves, dequantized, with a forward pass that every trainable tensor gets a gradient through.
//!
//! - [`model`]: [`TrainableLlama`], loaded from a GGUF (f32 on the CPU; f32 or bf16 on CUDA),
//!   with hidden states, logits and completion log-probabilities of right-padded batches. Frozen
//!   weights multiply through [`model::frozen_matmul`], whose backward computes the input's
//!   gradient only (candle's own matmul computes the weight's gradient too, even for a
//!   constant: for LoRA that doubles the backward's cost).
//! - [`attention`]: attention on the CPU (f32) as one op with its own backward, which keeps
//!   one log-sum-exp per query instead of the `(heads, T, T)` score and probability tensors,
//!   and computes only the causal half; the model falls back to candle's ops elsewhere.
//! - [`lora`]: LoRA adapters (rank, alpha, target projections; A random, B zero), merged on
//!   export; a frozen projection and its adapter run as one op on the CPU
//!   ([`lora::frozen_linear`]), so the graph keeps one `(N, out)` tensor per projection, not four. Full fine-tuning is the other [`model::Mode`].
//! - [`optim`]: AdamW (candle-nn's update rule, with its state saved for resuming), gradient
//!   accumulation, clipping by global norm, warm-up + cosine schedule.
//! - [`checkpoint`]: atomic training checkpoints (trainable tensors, optimizer moments, a JSON
//!   state) that survive a kill at any point.
//! - [`peft`]: a PEFT LoRA adapter (TRL's output) loaded into the model's own adapters.
//! - [`export`]: the merged weights written as a GGUF (Q8_0, F16 or F32) with the base model's
//!   metadata (tokenizer, chat template), which the engine loads like any other model.
//!
//! The differentiable forms matter: in candle 0.11 the fused `rms_norm`, `softmax_last_dim`,
//! `rope`/`rope_i` and `layer_norm` ops have no backward, so this module uses `rms_norm_slow`,
//! `ops::softmax` (off the fused attention's path) and `rope_i_slow`/`rope_slow` (llama GGUFs
//! store Q and K permuted for the interleaved RoPE, as the engine reads them).
//!
//! Imports `infer` (the GGUF config and tokenizer, the vectorized `exp`) only.

pub mod attention;
pub mod bench;
pub mod checkpoint;
mod cpu;
pub mod export;
pub mod lora;
pub mod model;
pub mod observe;
pub mod optim;
pub mod peft;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use lora::{LoraConfig, Target};
pub use model::{Checkpointing, Mode, Packed, SeqSpec, TrainableLlama};

/// Everything that can go wrong in this module.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    /// A model file that cannot be used for training, naming the file.
    #[error("{}: {message}", path.display())]
    Model { path: PathBuf, message: String },
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: checkpoint: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Tokenizer(#[from] crate::infer::tokenizer::TokenizerError),
    #[error("{0}")]
    Invalid(String),
    /// A model family the inference engine runs but the trainer's forward pass does not.
    #[error("{}: the {family} family runs in the inference engine only; training, reference log-probabilities and LM reward models need a llama or qwen2 model", path.display())]
    UnsupportedFamily { path: PathBuf, family: &'static str },
}

pub(crate) fn io_err(path: &std::path::Path, error: std::io::Error) -> LmError {
    LmError::Io { path: path.to_path_buf(), error }
}
