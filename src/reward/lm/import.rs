//! Reward models trained elsewhere. A Hugging Face sequence-classification checkpoint with one
//! label — what TRL's `RewardTrainer` saves (`LlamaForSequenceClassification`,
//! `Qwen2ForSequenceClassification`), with a LoRA adapter merged — becomes an LM reward
//! checkpoint: its backbone converted to a GGUF (cached like any Hugging Face model, see
//! [`crate::infer::hf`]), its `score` row the head, no adapters ([`Mode::Frozen`]), one member.
//!
//! rrm reads the score at the end-of-turn token after the summary, as a sequence-classification
//! model reads it at the last token that is not padding; the two agree when the training inputs
//! were the node's prompt + summary + end of turn (scripts/trl/train_reward.py builds them so)
//! and the padding token is not the end-of-turn token. The card says where the model came from
//! and has no metrics: `rrm reward eval --model HASH --data FILE.jsonl` measures it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::{file_hash, LmCard, LmTrainConfig, BACKBONE, LM_FORMAT_VERSION, LM_WEIGHTS_FILE};
use crate::infer::hf;
use crate::lm::Mode;
use crate::reward::RewardError;

/// The name of the classification head's weight in a Hugging Face checkpoint.
const SCORE_WEIGHT: &str = "score.weight";

/// What an import wrote.
#[derive(Debug)]
pub struct Imported {
    /// The checkpoint folder (`<reward dir>/<hash>`).
    pub path: PathBuf,
    pub card: LmCard,
}

fn invalid(path: &Path, reason: impl Into<String>) -> RewardError {
    RewardError::File { path: path.to_path_buf(), reason: reason.into() }
}

/// The head row of a one-label sequence-classification checkpoint in `dir`, checked against its
/// config: `(architecture, hidden size, score row)`.
fn read_head(dir: &Path) -> Result<(String, Tensor), RewardError> {
    let config_path = dir.join("config.json");
    let text = std::fs::read(&config_path).map_err(|e| invalid(&config_path, e.to_string()))?;
    let config: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| invalid(&config_path, format!("not JSON: {e}")))?;
    let architectures: Vec<&str> = config
        .get("architectures")
        .and_then(|a| a.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let Some(arch) = architectures.iter().find(|a| a.ends_with("ForSequenceClassification")) else {
        return Err(invalid(
            &config_path,
            format!(
                "names the architectures {architectures:?}; a reward model is a \
                 `…ForSequenceClassification` with one label (what TRL's RewardTrainer saves)"
            ),
        ));
    };
    // transformers' default is two labels when the config says nothing.
    let labels = config
        .get("num_labels")
        .and_then(|v| v.as_u64())
        .or_else(|| config.get("id2label").and_then(|m| m.as_object()).map(|m| m.len() as u64))
        .unwrap_or(2);
    if labels != 1 {
        return Err(invalid(
            &config_path,
            format!("has {labels} labels; a reward model has one (num_labels = 1)"),
        ));
    }
    let hidden = config
        .get("hidden_size")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| invalid(&config_path, "has no `hidden_size`".to_string()))?
        as usize;
    let files: Vec<PathBuf> = hf::model_input_files(dir)?
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    // Memory-mapped: only the head is read, not the whole model.
    // SAFETY: the files are not modified while mapped (a concurrent writer would be a user
    // error that could at worst give wrong numbers, which the shape check below may catch).
    let weights = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
        .map_err(|e| invalid(dir, format!("reading the safetensors: {e}")))?;
    let score = weights.load(SCORE_WEIGHT, &Device::Cpu).map_err(|_| {
        invalid(dir, format!("has no tensor `{SCORE_WEIGHT}` (the classification head)"))
    })?;
    if score.dims() != [1, hidden] {
        return Err(invalid(
            dir,
            format!("`{SCORE_WEIGHT}` has shape {:?}, expected [1, {hidden}]", score.dims()),
        ));
    }
    Ok((arch.to_string(), score.to_dtype(DType::F32)?))
}

/// Imports the sequence-classification checkpoint in `dir` into `reward_dir` (converting its
/// backbone into the cache under `models_dir`). `max_tokens` is the input length the model
/// scores (prompt + summary; longer inputs lose the end of the text summarized).
pub fn import_hf(
    dir: &Path,
    reward_dir: &Path,
    models_dir: &Path,
    max_tokens: usize,
) -> Result<Imported, RewardError> {
    if hf::is_adapter_dir(dir) && !hf::is_model_dir(dir) {
        return Err(invalid(
            dir,
            "is a PEFT adapter; import the model with the adapter merged (TRL: \
             `model.merge_and_unload().save_pretrained(DIR)`; scripts/trl/train_reward.py \
             writes it beside the adapter)",
        ));
    }
    if !hf::is_model_dir(dir) {
        return Err(invalid(
            dir,
            "is not a Hugging Face model folder (config.json and model.safetensors)",
        ));
    }
    if max_tokens < 16 {
        return Err(RewardError::Invalid(format!(
            "max tokens {max_tokens} is too small to hold a prompt and a summary"
        )));
    }
    let (arch, head_w) = read_head(dir)?;
    let hidden = head_w.dims()[1];
    let base = hf::cached_conversion(dir, models_dir)?;
    let base_hash = file_hash(&base)?;
    let head_b = Tensor::zeros(1, DType::F32, &Device::Cpu)?;
    let config = LmTrainConfig { mode: Mode::Frozen, members: 1, max_tokens, ..Default::default() };
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut card = LmCard {
        hybrid: None,
        format: LM_FORMAT_VERSION,
        backbone: BACKBONE.to_string(),
        hash: String::new(),
        created_unix,
        base: base.display().to_string(),
        base_hash,
        hidden,
        config,
        pairs: 0,
        train_pairs: 0,
        train_ratings: 0,
        val_groups: Vec::new(),
        test_groups: Vec::new(),
        data_hash: String::new(),
        source: format!("imported from {} ({arch})", dir.display()),
        truncated: 0,
        metrics: Default::default(),
        held_out: false,
        validation_metrics: Default::default(),
        report: None,
        validation_curve: Vec::new(),
        best_step: Vec::new(),
        temperature: 1.0,
        heads: 1,
        temperature_fitted: false,
        validation_log_loss_uncalibrated: None,
        probe_epoch: Vec::new(),
        probe_seconds: 0.0,
        final_loss: Vec::new(),
        train_seconds: 0.0,
        pairs_per_second: 0.0,
    };
    // The head alone does not identify the model (two imports could share a head row and differ
    // in backbone), and the checkpoint is named by its weights file's hash: the file's metadata
    // names the backbone, so the hash covers both.
    let head: Vec<(String, Vec<usize>, Vec<u8>)> =
        [("m0.head.weight", head_w), ("m0.head.bias", head_b)]
            .into_iter()
            .map(|(name, t)| {
                let values = t.flatten_all()?.to_vec1::<f32>()?;
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                Ok((name.to_string(), t.dims().to_vec(), bytes))
            })
            .collect::<Result<_, candle_core::Error>>()?;
    // One key: a map of several would be written in a random order, and the same import would
    // get a new hash each time.
    let metadata: std::collections::HashMap<String, String> =
        [("base_hash".to_string(), card.base_hash.clone())].into_iter().collect();
    let card_ref = &mut card;
    let path = crate::reward::publish_checkpoint(
        reward_dir,
        LM_WEIGHTS_FILE,
        |weights| {
            let views = head
                .iter()
                .map(|(name, shape, bytes)| {
                    safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        shape.clone(),
                        bytes,
                    )
                    .map(|view| (name.clone(), view))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(weights, e.to_string()))?;
            safetensors::serialize_to_file(views, Some(metadata), weights)
                .map_err(|e| invalid(weights, e.to_string()))
        },
        |hash| {
            card_ref.hash = hash.to_string();
            serde_json::to_vec_pretty(&*card_ref)
        },
    )?;
    Ok(Imported { path, card })
}
