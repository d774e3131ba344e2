//! Trained policies under the models folder: `<models>/<NAME>/<NAME>.gguf` (the merged
//! weights, with the base model's tokenizer and chat template) and `card.json` (base model,
//! data, method, β, rounds, metrics). `rrm models list` lists them; `--model NAME` resolves to
//! the GGUF like any model (`infer::fetch`), so the composer's cache keys (which hash the model
//! file) change with it: old summaries stay, new ones are computed. A LoRA policy also keeps its
//! adapters (`adapter.safetensors` + `adapter.json`, `lm::export::write_adapter`).
//!
//! [`zero_step_export`] is the base model put through a policy's export with no training (the
//! base dequantized as the trainer loads it and written in the policy's weight type): the
//! baseline a trained policy is compared with, so the comparison is not also between a Q4_1
//! file and a Q8_0 one. It is cached under `<models>/zero-step/<key>.gguf` (key: blake3 of the
//! export version, the base file's sha256, the weight type and the dtype).
//!
//! [`export`] writes a policy (or its base, or any model spec) for other tools: a Hugging Face
//! folder, a PEFT adapter (with its base as a Hugging Face folder beside it), or the GGUF.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::{io_err, unix_now, Method, PolicyError};
use crate::infer::engine::file_sha256;
use crate::infer::fetch;
use crate::infer::hf::{self, HfDType, PeftExport};
use crate::infer::ModelIdentity;
use crate::lm::export::{
    read_adapter, write_adapter, write_gguf, ExportFormat, ADAPTER_CARD_FILE, ADAPTER_FILE,
};
use crate::lm::model::{LoadOptions, Mode, TrainableLlama};

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
    // LoRA adapters are kept beside the merged weights (for `rrm policy export --format peft`);
    // a model trained in full leaves none, and no stale ones of an earlier model of this name.
    if !write_adapter(model, &folder)? {
        for stale in [ADAPTER_FILE, ADAPTER_CARD_FILE] {
            let p = folder.join(stale);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
            }
        }
    }
    card.file = file;
    card.sha256 = file_sha256(&gguf)?;
    let card_path = folder.join(CARD_FILE);
    let tmp = folder.join(".card.json.tmp");
    let json = serde_json::to_vec_pretty(&card).map_err(|e| PolicyError::Invalid(e.to_string()))?;
    std::fs::write(&tmp, json).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, &card_path).map_err(|e| io_err(&card_path, e))?;
    Ok((gguf, card))
}

/// Folder of zero-step exports under the models folder.
pub const ZERO_STEP_DIR: &str = "zero-step";
/// Part of every zero-step cache key: change it when the export writes other bytes.
const ZERO_STEP_VERSION: &str = "rrm-zero-step-1";

/// The zero-step export of the base GGUF `base` (whose sha256 is `base_sha256`): loaded as
/// training loads it (frozen, in `dtype`), nothing trained, exported as [`register`] exports a
/// policy (`format`). Cached under `models_dir/zero-step/`; written on first use (to a
/// temporary file, fsynced, renamed). A LoRA policy exported before any step holds exactly
/// these weights.
pub fn zero_step_export(
    models_dir: &Path,
    base: &Path,
    base_sha256: &str,
    format: ExportFormat,
    dtype: DType,
) -> Result<PathBuf, PolicyError> {
    let mut h = blake3::Hasher::new();
    for part in [ZERO_STEP_VERSION, base_sha256, format.name(), &format!("{dtype:?}")] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    let key = h.finalize().to_hex()[..32].to_string();
    let out = models_dir.join(ZERO_STEP_DIR).join(format!("{key}.gguf"));
    if out.is_file() {
        return Ok(out);
    }
    tracing::info!("exporting {} with no training step to {}", base.display(), out.display());
    let frozen = LoadOptions { mode: Mode::Frozen, dtype };
    let (model, _) = TrainableLlama::load(base, &Device::Cpu, &frozen)?;
    let extra = vec![
        ("rrm.policy.method".to_string(), Value::String("zero-step".into())),
        ("rrm.policy.base_sha256".to_string(), Value::String(base_sha256.to_string())),
    ];
    write_gguf(&model, &out, format, &extra)?;
    Ok(out)
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

/// What `rrm policy export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// A Hugging Face folder (config.json, model.safetensors, tokenizer files).
    Hf,
    /// A PEFT LoRA adapter folder, the base as a Hugging Face folder in `base/` (unless named).
    Peft,
    /// The GGUF file itself.
    Gguf,
}

impl std::str::FromStr for ExportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "hf" | "huggingface" | "safetensors" => Ok(Self::Hf),
            "peft" | "lora" => Ok(Self::Peft),
            "gguf" => Ok(Self::Gguf),
            other => Err(format!("unknown export format `{other}` (hf, peft, gguf)")),
        }
    }
}

/// One export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// A trained policy's name, or (for `hf` and `gguf`) any model spec: a known model, a path.
    pub name: String,
    pub kind: ExportKind,
    pub out: PathBuf,
    /// Export the policy's base model instead of the policy.
    pub base: bool,
    /// Weight type of a Hugging Face export.
    pub dtype: HfDType,
    /// For `peft`: what `base_model_name_or_path` says (a Hub id, a path); default: the base
    /// exported as a Hugging Face folder into `<out>/base`, named by its absolute path.
    pub base_ref: Option<String>,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportReport {
    /// The GGUF the export was made from.
    pub source: PathBuf,
    /// Files and folders written.
    pub written: Vec<PathBuf>,
    /// For `peft`: the base model the adapter names.
    pub base_ref: Option<String>,
}

fn export_err(e: hf::HfError) -> PolicyError {
    PolicyError::Infer(crate::infer::InferError::Fetch(e.into()))
}

/// The GGUF a policy was trained from: the base its adapters recorded, else its card's base
/// name resolved as a model spec.
fn base_gguf(models_dir: &Path, folder: &Path, card: &PolicyCard) -> Result<PathBuf, PolicyError> {
    if let Some((adapter, _)) = read_adapter(folder)? {
        if adapter.base_path.is_file() {
            return Ok(adapter.base_path);
        }
    }
    let resolved = fetch::resolve_model_with(&card.base.name, models_dir, false).map_err(|e| {
        PolicyError::Invalid(format!(
            "the base model `{}` of policy `{}` cannot be found: {e}",
            card.base.name, card.name
        ))
    })?;
    Ok(resolved.path)
}

/// Exports a policy, its base, or a model for other tools (see [`ExportKind`]).
pub fn export(models_dir: &Path, req: &ExportRequest) -> Result<ExportReport, PolicyError> {
    let policy = find(models_dir, &req.name).map(|c| (models_dir.join(&req.name), c));
    let source = match (&policy, req.base) {
        (Some((folder, card)), false) => folder.join(&card.file),
        (Some((folder, card)), true) => base_gguf(models_dir, folder, card)?,
        (None, true) => {
            return Err(PolicyError::Invalid(format!(
                "`{}` is not a trained policy (--base exports a policy's base model; to export a \
                 model itself, name it without --base)",
                req.name
            )))
        }
        (None, false) => {
            fetch::resolve_model(&req.name, models_dir)
                .map_err(|e| PolicyError::Infer(e.into()))?
                .path
        }
    };
    if !source.is_file() {
        return Err(PolicyError::Invalid(format!(
            "`{}` is not a generator model file ({})",
            req.name,
            source.display()
        )));
    }
    let mut written = Vec::new();
    let mut base_ref = None;
    match req.kind {
        ExportKind::Gguf => {
            std::fs::create_dir_all(&req.out).map_err(|e| io_err(&req.out, e))?;
            let file = source.file_name().map_or_else(|| "model.gguf".into(), |n| n.to_owned());
            let dest = req.out.join(file);
            let tmp = req.out.join(".export.gguf.partial");
            std::fs::copy(&source, &tmp).map_err(|e| io_err(&tmp, e))?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| io_err(&tmp, e))?;
            std::fs::rename(&tmp, &dest).map_err(|e| io_err(&dest, e))?;
            written.push(dest);
        }
        ExportKind::Hf => {
            hf::export_hf(&source, &req.out, req.dtype).map_err(export_err)?;
            written.push(req.out.clone());
        }
        ExportKind::Peft => {
            let Some((folder, card)) = policy.as_ref().filter(|_| !req.base) else {
                return Err(PolicyError::Invalid(format!(
                    "`{}`: --format peft exports a trained LoRA policy's adapters (the base model \
                     has none; use --format hf)",
                    req.name
                )));
            };
            let Some((adapter, tensors)) = read_adapter(folder)? else {
                return Err(PolicyError::Invalid(format!(
                    "policy `{}` keeps no LoRA adapters (trained in full, or registered before \
                     adapters were kept): only its merged weights exist; export them with \
                     --format hf",
                    req.name
                )));
            };
            let base = base_gguf(models_dir, folder, card)?;
            let reference = match &req.base_ref {
                Some(r) => r.clone(),
                None => {
                    let dir = req.out.join("base");
                    hf::export_hf(&base, &dir, req.dtype).map_err(export_err)?;
                    written.push(dir.clone());
                    std::fs::canonicalize(&dir).unwrap_or(dir).to_string_lossy().into_owned()
                }
            };
            let layers = adapter.lora.top_layers.map(|_| {
                let mut l: Vec<usize> = tensors
                    .keys()
                    .filter_map(|n| n.strip_prefix("blk.")?.split('.').next()?.parse().ok())
                    .collect();
                l.sort_unstable();
                l.dedup();
                l
            });
            let peft = PeftExport {
                rank: adapter.lora.rank,
                alpha: adapter.lora.alpha,
                layers,
                base_ref: reference.clone(),
                tensors: &tensors,
            };
            hf::export_peft(&base, &peft, &req.out).map_err(export_err)?;
            written.push(req.out.clone());
            base_ref = Some(reference);
        }
    }
    Ok(ExportReport { source, written, base_ref })
}
