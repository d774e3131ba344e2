//! The language-model reward model: the trainable llama ([`crate::lm::TrainableLlama`], LoRA
//! adapters by default, full fine-tuning optional) with a scalar linear head on the final hidden
//! state of the last token.
//!
//! The input is what the policy sees — the composer's per-height prompt for the node, rendered
//! with the model's chat template — followed by the candidate summary and the end-of-turn token.
//! Inputs longer than `max_tokens` lose the end of the text summarized (the same cut for every
//! summary compared), so the instruction, the text's beginning and the summaries are kept.
//!
//! Training is Bradley–Terry (−log σ(r_c − r_r), against the pair's target probability and
//! weighted by the pair's weight) with AdamW, gradient accumulation and global-norm clipping.
//! The pairs are split by group (book, source document) like the MiniLM heads': validation
//! groups choose each member's checkpoint (the step with the lowest validation log-loss), test
//! groups give the card's metrics beside the length and reference-overlap baselines.
//! An ensemble is `K` members trained from different seeds (LoRA initialisation, head
//! initialisation and data order); the base model is loaded once for scoring and each member's
//! trainable tensors are swapped in, so `K` members cost `K` adapters, not `K` models.
//!
//! With `hybrid` ([`crate::reward::hybrid`]) each member's score is the head's plus `wᵀ·g` of
//! the summary's grounding features, `w` fitted on the training pairs before the first step
//! (the head at zero: step 0 is the features-only model, validated like every step) and
//! trained with the head. The features are added after the last hidden state, so the engine's
//! forward and the trainer's score them alike.
//!
//! A checkpoint is a folder with `lm_reward.safetensors` (every member's trainable tensors and
//! head, prefixed `m{i}.`) and `card.json` ([`LmCard`], `"backbone": "lm"`, with the base
//! model's hash, the data's hash and the metrics).

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::Tensor;

use crate::infer::tokenizer::GgufTokenizer;
use crate::lm::TrainableLlama;
use crate::reward::RewardError;

pub mod bench;
mod card;
mod engine;
pub mod import;
mod pack;
mod probe;
mod score;
mod train;

pub use card::{file_hash, is_lm_checkpoint, LmCard};
pub use score::{metrics_by_height, LmRewardSelector};
pub use train::LmTrainConfig;

/// Version of the LM checkpoint layout.
pub const LM_FORMAT_VERSION: u32 = 1;
/// The weights file of an LM reward checkpoint.
pub const LM_WEIGHTS_FILE: &str = "lm_reward.safetensors";
/// The `backbone` of an LM reward card.
pub const BACKBONE: &str = "lm";

/// One ensemble member: its trainable tensors (adapters or full weights) and its head.
#[derive(Debug, Clone)]
pub struct LmMember {
    pub weights: HashMap<String, Tensor>,
    /// `(heads, hidden)`: one row per height with `head_per_height`, else one row.
    pub head_w: Tensor,
    /// `(heads,)`.
    pub head_b: Tensor,
    /// A hybrid model's grounding weights `w` (`(FEATURES,)`): `wᵀ·g` of the summary's
    /// [`crate::reward::hybrid::features`] is added to the head's score.
    pub grounding: Option<Tensor>,
}

/// Which forward pass scores a loaded model's candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scoring {
    /// The inference engine's kernels ([`engine`]): the default.
    #[default]
    Engine,
    /// The trainer's forward, as training and validation score (for comparisons).
    Trainer,
}

/// A trained LM reward ensemble with its backbone loaded.
pub struct LmRewardModel {
    pub card: LmCard,
    pub members: Vec<LmMember>,
    llama: Mutex<TrainableLlama>,
    tokenizer: GgufTokenizer,
    end: u32,
    scoring: Scoring,
    /// The members on the engine, built on the first score.
    engine: Mutex<Option<std::sync::Arc<engine::EngineScorer>>>,
}

impl std::fmt::Debug for LmRewardModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmRewardModel").field("card", &self.card).finish_non_exhaustive()
    }
}

impl LmRewardModel {
    fn lock_llama(&self) -> Result<std::sync::MutexGuard<'_, TrainableLlama>, RewardError> {
        self.llama
            .lock()
            .map_err(|_| RewardError::Invalid("the reward model's lock is poisoned".into()))
    }

    fn assemble(
        card: LmCard,
        members: Vec<LmMember>,
        llama: TrainableLlama,
        tokenizer: GgufTokenizer,
        end: u32,
    ) -> LmRewardModel {
        LmRewardModel {
            card,
            members,
            llama: Mutex::new(llama),
            tokenizer,
            end,
            scoring: Scoring::default(),
            engine: Mutex::new(None),
        }
    }
}

#[cfg(test)]
mod tests;
