//! The model card and the checkpoint on disk: [`LmCard`] (what a checkpoint was trained on and
//! how it did), `save` (every member's trainable tensors and head in one safetensors file,
//! published through `publish_checkpoint`) and `load` (hashes of the weights and the base
//! model checked, the heads' shapes against the card).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::pack::end_token;
use super::train::LmTrainConfig;
use super::{LmMember, LmRewardModel, BACKBONE, LM_FORMAT_VERSION, LM_WEIGHTS_FILE};
use crate::lm::model::LoadOptions;
use crate::lm::TrainableLlama;
use crate::reward::hybrid::FEATURES;
use crate::reward::train::Metrics;

/// A member's grounding weights in the weights file: `m{i}.grounding.weight`.
const GROUNDING_TENSOR: &str = "grounding.weight";
use crate::reward::{RewardError, CARD_FILE};

/// What an LM checkpoint was trained on and how it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmCard {
    pub format: u32,
    /// Always [`BACKBONE`]: tells an LM checkpoint from a MiniLM one.
    pub backbone: String,
    /// blake3 of the weights file (hex, first 16 characters): the checkpoint's name.
    pub hash: String,
    pub created_unix: u64,
    /// The base GGUF as given at training time.
    pub base: String,
    /// blake3 of the base GGUF (hex): loading checks it.
    pub base_hash: String,
    pub hidden: usize,
    pub config: LmTrainConfig,
    /// All pairs given (training, validation and test groups).
    pub pairs: usize,
    /// Pairs of the training groups.
    #[serde(default)]
    pub train_pairs: usize,
    /// Likert ratings of the training groups used as ordinal targets.
    #[serde(default)]
    pub train_ratings: usize,
    /// The validation groups: they chose each member's checkpoint.
    #[serde(default)]
    pub val_groups: Vec<String>,
    /// The test groups: never trained on, never used for a choice.
    #[serde(default)]
    pub test_groups: Vec<String>,
    /// blake3 of the training pairs (their JSON).
    pub data_hash: String,
    pub source: String,
    /// Pairs that had to be cut to fit `max_tokens`.
    pub truncated: usize,
    /// Per height (`h0`, …) and `all`: on (a sample of) the test groups' pairs when there are
    /// any (`held_out`), else on a sample of the training pairs.
    pub metrics: BTreeMap<String, Metrics>,
    #[serde(default)]
    pub held_out: bool,
    /// The same on the validation sample, which chose the checkpoints (optimistic).
    #[serde(default)]
    pub validation_metrics: BTreeMap<String, Metrics>,
    /// The test sample beside the length and reference-overlap baselines, on every pair and
    /// on the length-balanced ones (absent without test groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::reward::eval::EvalReport>,
    /// Per member, the validation log-loss after each validated step: `(step, log-loss)`.
    #[serde(default)]
    pub validation_curve: Vec<Vec<(usize, f64)>>,
    /// Per member, the optimizer step whose weights were kept.
    #[serde(default)]
    pub best_step: Vec<usize>,
    /// Every score is divided by this ([`crate::reward::train::fit_temperature`] on the validation
    /// pairs; 1 without validation groups): the probabilities σ(margin) are calibrated on data
    /// the model was not trained on, the ranking is untouched.
    #[serde(default = "unit_temperature")]
    pub temperature: f64,
    /// Head rows per member: 1, or with `head_per_height` one per height up to the highest
    /// trained (old cards: 1).
    #[serde(default = "one_head")]
    pub heads: usize,
    /// Whether `temperature` was fitted (enough validation pairs); not fitted, it is 1.
    #[serde(default)]
    pub temperature_fitted: bool,
    /// The validation log-loss before the temperature (the `validation_metrics` are after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_log_loss_uncalibrated: Option<f64>,
    /// Per member, the linear probe's pass whose head fine-tuning started from (empty
    /// without a probe); a `best_step` of 0 keeps the probe's head and zero adapters.
    #[serde(default)]
    pub probe_epoch: Vec<usize>,
    /// Seconds spent on the probe's features (one forward pass per training and validation
    /// pair), not in `train_seconds`.
    #[serde(default)]
    pub probe_seconds: f64,
    /// A hybrid model's grounding part (`config.hybrid`): the features' version, the `w`
    /// fitted before the first step (`all`) and the step each member kept (0: features only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hybrid: Option<crate::reward::hybrid::HybridCard>,
    /// Mean Bradley–Terry loss of each member's last epoch.
    pub final_loss: Vec<f64>,
    pub train_seconds: f64,
    pub pairs_per_second: f64,
}

pub(super) fn unit_temperature() -> f64 {
    1.0
}

pub(super) fn one_head() -> usize {
    1
}

/// blake3 of a file, hex.
pub fn file_hash(path: &Path) -> Result<String, RewardError> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| RewardError::File { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut f, &mut h)
        .map_err(|e| RewardError::File { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(h.finalize().to_hex().to_string())
}

/// Whether `dir` holds an LM reward checkpoint (its card says `"backbone": "lm"`).
pub fn is_lm_checkpoint(dir: &Path) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        backbone: String,
    }
    std::fs::read(dir.join(CARD_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Probe>(&b).ok())
        .is_some_and(|p| p.backbone == BACKBONE)
}

impl LmRewardModel {
    fn tensors(&self) -> HashMap<String, Tensor> {
        let mut t = HashMap::new();
        for (i, m) in self.members.iter().enumerate() {
            for (name, w) in &m.weights {
                t.insert(format!("m{i}.{name}"), w.clone());
            }
            t.insert(format!("m{i}.head.weight"), m.head_w.clone());
            t.insert(format!("m{i}.head.bias"), m.head_b.clone());
            if let Some(g) = &m.grounding {
                t.insert(format!("m{i}.{GROUNDING_TENSOR}"), g.clone());
            }
        }
        t
    }

    /// Saves under `dir/<hash>/` and points `dir/latest` at it. Returns the checkpoint folder.
    pub fn save(&mut self, dir: &Path) -> Result<PathBuf, RewardError> {
        let tensors = self.tensors();
        let card = &mut self.card;
        crate::reward::publish_checkpoint(
            dir,
            LM_WEIGHTS_FILE,
            |weights| Ok(candle_core::safetensors::save(&tensors, weights)?),
            |hash| {
                card.hash = hash.to_string();
                serde_json::to_vec_pretty(&*card)
            },
        )
    }

    /// Loads a checkpoint folder with its base model: `base` when given (its hash must match
    /// the card's), else the path on the card.
    pub fn load(path: &Path, base: Option<&Path>) -> Result<LmRewardModel, RewardError> {
        let bad = |p: &Path, reason: String| RewardError::File { path: p.to_path_buf(), reason };
        let card_path = path.join(CARD_FILE);
        let text = std::fs::read(&card_path).map_err(|e| bad(&card_path, e.to_string()))?;
        let card: LmCard = serde_json::from_slice(&text)
            .map_err(|e| bad(&card_path, format!("not an LM reward model card: {e}")))?;
        if card.format != LM_FORMAT_VERSION || card.backbone != BACKBONE {
            return Err(bad(
                &card_path,
                format!("unknown LM checkpoint format {} ({})", card.format, card.backbone),
            ));
        }
        let weights = path.join(LM_WEIGHTS_FILE);
        let bytes = std::fs::read(&weights).map_err(|e| bad(&weights, e.to_string()))?;
        if blake3::hash(&bytes).to_hex()[..16] != card.hash {
            return Err(bad(
                &weights,
                "does not match the card's hash (corrupt or replaced)".into(),
            ));
        }
        match (&card.hybrid, card.config.hybrid) {
            (Some(h), true) => h.check().map_err(|e| bad(&card_path, e))?,
            (None, true) => {
                return Err(bad(&card_path, "hybrid, but records no grounding features".into()))
            }
            _ => {}
        }
        if !(card.temperature.is_finite() && card.temperature > 0.0) {
            return Err(bad(
                &card_path,
                format!("temperature {} is not a positive number", card.temperature),
            ));
        }
        let base_path = base.map_or_else(|| PathBuf::from(&card.base), Path::to_path_buf);
        let loaded = file_hash(&base_path)?;
        if loaded != card.base_hash {
            return Err(RewardError::Invalid(format!(
                "the LM reward model {} was trained on base model {} (blake3 {}), but {} has \
                 blake3 {loaded}",
                card.hash,
                card.base,
                &card.base_hash[..16.min(card.base_hash.len())],
                base_path.display()
            )));
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let options = LoadOptions { mode: card.config.mode.clone(), dtype: DType::F32 };
        let (llama, tokenizer) = TrainableLlama::load(&base_path, &Device::Cpu, &options)?;
        let names: Vec<String> = llama.trainable().into_iter().map(|(n, _)| n).collect();
        let mut members = Vec::with_capacity(card.config.members);
        for i in 0..card.config.members {
            let get = |name: &str| {
                tensors
                    .get(&format!("m{i}.{name}"))
                    .cloned()
                    .ok_or_else(|| bad(&weights, format!("member {i} has no tensor `{name}`")))
            };
            let mut w = HashMap::new();
            for n in &names {
                w.insert(n.clone(), get(n)?);
            }
            // A single head was saved as `(hidden,)` before heads per height.
            let (hidden, heads) = (llama.config.hidden, card.heads);
            let mut head_w = get("head.weight")?;
            if head_w.dims() == [hidden] {
                head_w = head_w.unsqueeze(0)?;
            }
            let head_b = get("head.bias")?;
            if head_w.dims() != [heads, hidden] || head_b.dims() != [heads] {
                return Err(bad(
                    &weights,
                    format!(
                        "member {i}: head of shape {:?} and bias {:?}, the card says {heads} \
                         head(s) of {hidden}",
                        head_w.dims(),
                        head_b.dims()
                    ),
                ));
            }
            let grounding =
                match (card.config.hybrid, tensors.get(&format!("m{i}.{GROUNDING_TENSOR}"))) {
                    (true, Some(g)) if g.dims() == [FEATURES] => Some(g.clone()),
                    (true, Some(g)) => {
                        return Err(bad(
                            &weights,
                            format!(
                            "member {i}: grounding weights of shape {:?}, expected [{FEATURES}]",
                            g.dims()
                        ),
                        ))
                    }
                    (true, None) => {
                        return Err(bad(
                            &weights,
                            format!("member {i} of a hybrid model has no grounding weights"),
                        ))
                    }
                    (false, Some(_)) => {
                        return Err(bad(
                            &weights,
                            format!(
                        "member {i} has grounding weights, the card says the model is not hybrid"
                    ),
                        ))
                    }
                    (false, None) => None,
                };
            members.push(LmMember { weights: w, head_w, head_b, grounding });
        }
        let end = end_token(&tokenizer)?;
        Ok(LmRewardModel::assemble(card, members, llama, tokenizer, end))
    }
}
