//! Trained policies under the models folder: `<models>/<NAME>/<NAME>.gguf` (the merged
//! weights, with the base model's tokenizer and chat template) and `card.json` (base model,
//! data, method, β, rounds, metrics). `rrm models list` lists them; `--model NAME` resolves to
//! the GGUF like any model (`infer::fetch`), so the composer's cache keys (which hash the model
//! file) change with it: old summaries stay, new ones are computed.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use serde::{Deserialize, Serialize};

use super::{io_err, unix_now, Method, PolicyError};
use crate::infer::engine::file_sha256;
use crate::infer::fetch;
use crate::infer::ModelIdentity;
use crate::lm::export::{write_gguf, ExportFormat};
use crate::lm::model::{Mode, TrainableLlama};

pub const CARD_FILE: &str = "card.json";
const FORMAT: u32 = 1;

/// What a policy was trained on, split by book.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataCard {
    /// `store` or a file path.
    pub source: String,
    /// blake3 of the examples used.
    pub hash: String,
    pub train_groups: Vec<String>,
    /// Book ids in the training groups (when known).
    #[serde(default)]
    pub train_books: Vec<String>,
    pub val_groups: Vec<String>,
    pub test_groups: Vec<String>,
    pub train_examples: usize,
    pub val_examples: usize,
    pub test_examples: usize,
    /// Examples cut to the prompt and completion limits (`data::fit`; none is left out).
    #[serde(default)]
    pub truncated: usize,
    /// Who labeled the data (feedback labelers), when known.
    pub labelers: Vec<String>,
}

/// The JSON card beside a trained policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyCard {
    pub format: u32,
    pub kind: String,
    pub name: String,
    /// The GGUF file's name in the folder, and its sha256.
    pub file: String,
    pub sha256: String,
    pub export_format: ExportFormat,
    pub base: ModelIdentity,
    pub method: Method,
    pub mode: Mode,
    pub beta: Option<f64>,
    pub rounds: Option<usize>,
    /// The training settings.
    pub config: serde_json::Value,
    pub data: DataCard,
    /// Training, validation and (for rm-dpo) per-round metrics.
    pub metrics: serde_json::Value,
    pub created_unix: u64,
    pub train_seconds: f64,
}

impl PolicyCard {
    /// A card to fill in before [`register`] (which sets the file and its hash).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        base: ModelIdentity,
        method: Method,
        mode: Mode,
        export_format: ExportFormat,
        config: serde_json::Value,
        data: DataCard,
    ) -> PolicyCard {
        PolicyCard {
            format: FORMAT,
            kind: "policy".into(),
            name: name.to_string(),
            file: String::new(),
            sha256: String::new(),
            export_format,
            base,
            method,
            mode,
            beta: None,
            rounds: None,
            config,
            data,
            metrics: serde_json::Value::Null,
            created_unix: unix_now(),
            train_seconds: 0.0,
        }
    }
}

/// A name a policy can be registered under: letters, digits, `.`, `_`, `-`; not a registry
/// model's name.
pub fn validate_name(name: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(PolicyError::Invalid(format!(
            "`{name}` is not a valid model name (letters, digits, '.', '_', '-'; at most 64)"
        )));
    }
    if fetch::registry_model(name).is_some() {
        return Err(PolicyError::Invalid(format!("`{name}` is the name of a known base model")));
    }
    Ok(())
}

/// Exports `model` and writes its card under `models_dir/<card.name>/`. An existing policy of
/// that name is an error unless `overwrite`. Returns the GGUF's path.
pub fn register(
    models_dir: &Path,
    mut card: PolicyCard,
    model: &TrainableLlama,
    overwrite: bool,
) -> Result<(PathBuf, PolicyCard), PolicyError> {
    validate_name(&card.name)?;
    let folder = models_dir.join(&card.name);
    if folder.join(CARD_FILE).exists() && !overwrite {
        return Err(PolicyError::File {
            path: folder,
            reason: "a trained model of this name exists (choose another --name, or --overwrite)"
                .into(),
        });
    }
    std::fs::create_dir_all(&folder).map_err(|e| io_err(&folder, e))?;
    let file = format!("{}.gguf", card.name);
    let gguf = folder.join(&file);
    let extra = vec![
        ("general.name".to_string(), Value::String(card.name.clone())),
        ("rrm.policy.method".to_string(), Value::String(card.method.name().into())),
        ("rrm.policy.base_sha256".to_string(), Value::String(card.base.hash.clone())),
        ("rrm.policy.data_hash".to_string(), Value::String(card.data.hash.clone())),
    ];
    write_gguf(model, &gguf, card.export_format, &extra)?;
    card.file = file;
    card.sha256 = file_sha256(&gguf)?;
    let card_path = folder.join(CARD_FILE);
    let tmp = folder.join(".card.json.tmp");
    let json = serde_json::to_vec_pretty(&card).map_err(|e| PolicyError::Invalid(e.to_string()))?;
    std::fs::write(&tmp, json).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, &card_path).map_err(|e| io_err(&card_path, e))?;
    Ok((gguf, card))
}

/// Reads the card in `folder`.
pub fn load_card(folder: &Path) -> Result<PolicyCard, PolicyError> {
    let path = folder.join(CARD_FILE);
    let bytes = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
    let card: PolicyCard = serde_json::from_slice(&bytes).map_err(|e| PolicyError::File {
        path: path.clone(),
        reason: format!("not a policy card: {e}"),
    })?;
    if card.format != FORMAT || card.kind != "policy" {
        return Err(PolicyError::File {
            path,
            reason: "not a policy card of a known format".into(),
        });
    }
    Ok(card)
}

/// Every trained policy in `models_dir` (folders with a readable card), by name.
pub fn list(models_dir: &Path) -> Vec<(PathBuf, PolicyCard)> {
    let mut out: Vec<(PathBuf, PolicyCard)> = std::fs::read_dir(models_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(CARD_FILE).is_file())
        .filter_map(|e| load_card(&e.path()).ok().map(|c| (e.path(), c)))
        .collect();
    out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    out
}

/// The card of the trained policy called `name`, if there is one.
pub fn find(models_dir: &Path, name: &str) -> Option<PolicyCard> {
    validate_name(name).ok()?;
    load_card(&models_dir.join(name)).ok()
}
