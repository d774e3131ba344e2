//! Writing a trained model as a GGUF the engine serves: the merged weights (LoRA folded in),
//! quantized to Q8_0 or stored as F16/F32, with every metadata key of the base file (the
//! architecture, the tokenizer, the chat template) and a few of our own (`rrm.*`).
//!
//! One-dimensional tensors (norms, biases) stay F32, as llama.cpp writes them; a matrix whose
//! rows are not a multiple of 32 wide (Q8_0's block) falls back to F16. The file is written
//! under a temporary name and renamed, so a reader never sees half a model.

use std::io::Write as _;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use serde::{Deserialize, Serialize};

use super::model::TrainableLlama;
use super::{io_err, LmError};
use crate::infer::hf::merged_matrix_dtype;

/// The weight type of an exported model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// 8-bit blocks (the engine's fast CPU kernel; ~1/4 of F32's size).
    Q8_0,
    F16,
    /// Exact weights (for tests and comparisons).
    F32,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            other => Err(format!("unknown export format `{other}` (q8_0, f16, f32)")),
        }
    }
}

impl ExportFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::F16 => "f16",
            Self::F32 => "f32",
        }
    }

    /// llama.cpp's `general.file_type` code.
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
        }
    }
}

/// Writes `model`'s merged weights to `out` with the base file's metadata plus `extra` keys
/// (which replace base keys of the same name).
pub fn write_gguf(
    model: &TrainableLlama,
    out: &Path,
    format: ExportFormat,
    extra: &[(String, Value)],
) -> Result<(), LmError> {
    let base = &model.path;
    let mut file = std::fs::File::open(base).map_err(|e| io_err(base, e))?;
    let content = Content::read(&mut file).map_err(|e| LmError::Model {
        path: base.to_path_buf(),
        message: format!("not a readable GGUF file: {e}"),
    })?;
    let mut metadata: Vec<(String, Value)> = content
        .metadata
        .into_iter()
        .filter(|(k, _)| k != "general.file_type" && !extra.iter().any(|(e, _)| e == k))
        .collect();
    metadata.push(("general.file_type".into(), Value::U32(format.file_type())));
    metadata.extend(extra.iter().cloned());
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tensors = Vec::new();
    for (name, t) in model.merged_tensors()? {
        let dtype = match (t.rank(), format) {
            (1, _) | (_, ExportFormat::F32) => GgmlDType::F32,
            (_, ExportFormat::F16) => GgmlDType::F16,
            // The rule a PEFT adapter merged into a quantized base follows too.
            (_, ExportFormat::Q8_0) => merged_matrix_dtype(GgmlDType::Q8_0, t.dims()),
        };
        tensors.push((name, QTensor::quantize(&t, dtype)?));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    }
    let tmp = out.with_extension(format!("gguf.tmp-{}", std::process::id()));
    let result = (|| -> Result<(), LmError> {
        let f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        let mut w = std::io::BufWriter::new(f);
        let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        candle_core::quantized::gguf_file::write(&mut w, &md, &ts)?;
        w.flush().map_err(|e| io_err(&tmp, e))?;
        let f = w.into_inner().map_err(|e| io_err(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, out).map_err(|e| io_err(out, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The file beside a registered LoRA policy that keeps its adapters (`blk.N.attn_q.lora_a` /
/// `.lora_b`, in the GGUF's row order), so they can be exported for PEFT.
pub const ADAPTER_FILE: &str = "adapter.safetensors";
/// The adapters' settings and base, beside [`ADAPTER_FILE`].
pub const ADAPTER_CARD_FILE: &str = "adapter.json";

/// What [`ADAPTER_CARD_FILE`] holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterCard {
    pub lora: super::lora::LoraConfig,
    /// The GGUF the adapters were trained on.
    pub base_path: std::path::PathBuf,
    /// blake3 of [`ADAPTER_FILE`].
    pub blake3: String,
}

/// Writes `model`'s LoRA adapters into `folder` ([`ADAPTER_FILE`] and [`ADAPTER_CARD_FILE`],
/// each through a temporary file). Nothing is written for a model without adapters.
pub fn write_adapter(model: &TrainableLlama, folder: &Path) -> Result<bool, LmError> {
    let super::model::Mode::Lora(lora) = &model.mode else { return Ok(false) };
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = model
        .trainable()
        .into_iter()
        .filter(|(n, _)| n.ends_with(".lora_a") || n.ends_with(".lora_b"))
        .map(|(n, v)| {
            let t = v.as_tensor().to_dtype(candle_core::DType::F32)?;
            Ok((n, t.to_device(&candle_core::Device::Cpu)?))
        })
        .collect::<candle_core::Result<_>>()?;
    if tensors.is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(folder).map_err(|e| io_err(folder, e))?;
    let tmp = folder.join(format!(".{ADAPTER_FILE}.tmp-{}", std::process::id()));
    let path = folder.join(ADAPTER_FILE);
    candle_core::safetensors::save(&tensors, &tmp)?;
    let bytes = std::fs::read(&tmp).map_err(|e| io_err(&tmp, e))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    let card = AdapterCard {
        lora: lora.clone(),
        base_path: std::fs::canonicalize(&model.path).unwrap_or_else(|_| model.path.clone()),
        blake3: blake3::hash(&bytes).to_hex().to_string(),
    };
    let card_path = folder.join(ADAPTER_CARD_FILE);
    let tmp = folder.join(format!(".{ADAPTER_CARD_FILE}.tmp-{}", std::process::id()));
    let json = serde_json::to_vec_pretty(&card).map_err(|e| LmError::Invalid(e.to_string()))?;
    std::fs::write(&tmp, json).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, &card_path).map_err(|e| io_err(&card_path, e))?;
    Ok(true)
}

/// Reads the adapters [`write_adapter`] kept in `folder`, checking their hash. `Ok(None)` when
/// the folder has none (a model trained in full, or registered before adapters were kept).
#[allow(clippy::type_complexity)]
pub fn read_adapter(
    folder: &Path,
) -> Result<Option<(AdapterCard, std::collections::HashMap<String, candle_core::Tensor>)>, LmError>
{
    let card_path = folder.join(ADAPTER_CARD_FILE);
    let path = folder.join(ADAPTER_FILE);
    if !card_path.is_file() || !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&card_path).map_err(|e| io_err(&card_path, e))?;
    let card: AdapterCard = serde_json::from_slice(&bytes).map_err(|e| LmError::Model {
        path: card_path.clone(),
        message: format!("not an adapter card: {e}"),
    })?;
    let weights = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
    if blake3::hash(&weights).to_hex().as_str() != card.blake3 {
        return Err(LmError::Model {
            path,
            message: format!("the adapters' hash does not match {ADAPTER_CARD_FILE}"),
        });
    }
    let tensors = candle_core::safetensors::load_buffer(&weights, &candle_core::Device::Cpu)
        .map_err(|e| LmError::Model { path: path.clone(), message: e.to_string() })?;
    Ok(Some((card, tensors)))
}
