//! Twin models: the exact shapes, weight types, tokenizer and metadata of a real model, with
//! seeded random weights. They exist to measure speed where the real weights cannot go (the
//! GPU machine accepts at most 64 MiB of files; the default policy model alone is 98 MB).
//!
//! A *skeleton* is what travels: for a GGUF model, a GGUF file with every metadata entry of the
//! original (tokenizer and chat template included) and no tensor data, the tensors' names, types
//! and shapes listed under `rrm.twin.*` keys (about 2 MB for SmolLM2); for a BERT sentence
//! encoder, a folder with the original `config.json` and `tokenizer.json`. *Inflating* a
//! skeleton writes a loadable model of the same size: every matrix the same type and shape,
//! filled with uniform noise of a sensible scale (norm weights 1, biases 0).
//!
//! The work per token of a twin is the real model's: same matmuls, same quantized kernels, same
//! tokenizer. Its text is noise: the rows of the control tokens (end of text, end of turn) are
//! zero in the embedding, so it never stops before its token cap (the real 135M model rarely
//! does either). What it cannot stand in for is anything that depends on what the model writes.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

use super::encoder::{CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE};
use super::InferError;

/// Metadata key: the tensors' names, in file order.
const NAMES: &str = "rrm.twin.tensor_names";
/// Metadata key: each tensor's GGML type, by name (`Q4_1`, `F32`, …).
const TYPES: &str = "rrm.twin.tensor_types";
/// Metadata key: each tensor's shape, comma-separated dimensions (candle order: rows first).
const SHAPES: &str = "rrm.twin.tensor_shapes";
/// Metadata key: the sha256 of the model the skeleton was taken from.
const SOURCE: &str = "rrm.twin.source_sha256";

/// What a skeleton holds, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkeletonSummary {
    pub tensors: usize,
    /// Bytes of tensor data an inflated twin holds (the original's size, less headers).
    pub data_bytes: u64,
    pub source_sha256: String,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> InferError + '_ {
    move |error| InferError::Io { path: path.to_path_buf(), error }
}

fn model_err(path: &Path, message: impl std::fmt::Display) -> InferError {
    InferError::Model { path: path.to_path_buf(), message: message.to_string() }
}

/// Every GGML type candle can hold, by the name `Debug` gives it.
const DTYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q8_1,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::Q8K,
];

fn dtype_name(dtype: GgmlDType) -> String {
    format!("{dtype:?}")
}

fn dtype_from_name(name: &str) -> Option<GgmlDType> {
    DTYPES.iter().copied().find(|d| dtype_name(*d) == name)
}

fn tensor_bytes(dtype: GgmlDType, elems: usize) -> u64 {
    (elems / dtype.block_size().max(1)) as u64 * dtype.type_size() as u64
}

fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[(String, QTensor)],
) -> Result<(), InferError> {
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut w = std::io::BufWriter::new(file);
    candle_core::quantized::gguf_file::write(&mut w, &md, &ts).map_err(|e| model_err(path, e))?;
    w.flush().map_err(io_err(path))
}

fn read_content(path: &Path) -> Result<Content, InferError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    Content::read(&mut file).map_err(|e| model_err(path, format!("not a readable GGUF file: {e}")))
}

/// Writes the skeleton of the GGUF model at `model` to `out` (a GGUF file without tensor data).
pub fn gguf_skeleton(model: &Path, out: &Path) -> Result<SkeletonSummary, InferError> {
    let content = read_content(model)?;
    if content.metadata.contains_key(NAMES) {
        return Err(model_err(model, "is already a twin skeleton"));
    }
    let source_sha256 = super::engine::file_sha256(model)?;
    let mut infos: Vec<_> = content.tensor_infos.iter().collect();
    infos.sort_by_key(|(_, info)| info.offset);
    let mut metadata: Vec<(String, Value)> =
        content.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let strings =
        |f: &dyn Fn(&(&String, &candle_core::quantized::gguf_file::TensorInfo)) -> String| {
            Value::Array(infos.iter().map(|i| Value::String(f(i))).collect())
        };
    metadata.push((NAMES.into(), strings(&|(name, _)| name.to_string())));
    metadata.push((TYPES.into(), strings(&|(_, info)| dtype_name(info.ggml_dtype))));
    metadata.push((
        SHAPES.into(),
        strings(&|(_, info)| {
            info.shape.dims().iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
        }),
    ));
    metadata.push((SOURCE.into(), Value::String(source_sha256.clone())));
    write_gguf(out, &metadata, &[])?;
    Ok(SkeletonSummary {
        tensors: infos.len(),
        data_bytes: infos
            .iter()
            .map(|(_, i)| tensor_bytes(i.ggml_dtype, i.shape.elem_count()))
            .sum(),
        source_sha256,
    })
}

fn string_array(
    md: &HashMap<String, Value>,
    key: &str,
    path: &Path,
) -> Result<Vec<String>, InferError> {
    let Some(Value::Array(values)) = md.get(key) else {
        return Err(model_err(path, format!("is not a twin skeleton (no `{key}` list)")));
    };
    values
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(model_err(path, format!("`{key}` holds a non-string {other:?}"))),
        })
        .collect()
}

/// Ids of the control tokens (GGUF token type 3): end of text, turn markers.
fn control_tokens(md: &HashMap<String, Value>) -> Vec<usize> {
    match md.get("tokenizer.ggml.token_type") {
        Some(Value::Array(types)) => types
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(t, Value::I32(3) | Value::U32(3)))
            .map(|(i, _)| i)
            .collect(),
        _ => Vec::new(),
    }
}

/// Uniform noise with standard deviation `std`, `n` values.
fn noise(rng: &mut rand::rngs::StdRng, n: usize, std: f32) -> Vec<f32> {
    let a = std * 3f32.sqrt();
    (0..n).map(|_| rng.random_range(-a..a)).collect()
}

/// Inflates the GGUF skeleton at `skeleton` into a full twin model at `out`, weights drawn from
/// `seed`. Returns the twin's tensor data size in bytes.
pub fn gguf_inflate(skeleton: &Path, out: &Path, seed: u64) -> Result<u64, InferError> {
    let content = read_content(skeleton)?;
    let md = &content.metadata;
    let names = string_array(md, NAMES, skeleton)?;
    let types = string_array(md, TYPES, skeleton)?;
    let shapes = string_array(md, SHAPES, skeleton)?;
    if names.len() != types.len() || names.len() != shapes.len() {
        return Err(model_err(skeleton, "the twin tensor lists differ in length"));
    }
    let control = control_tokens(md);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tensors = Vec::with_capacity(names.len());
    let mut bytes = 0u64;
    for ((name, ty), shape) in names.iter().zip(&types).zip(&shapes) {
        let dtype = dtype_from_name(ty)
            .ok_or_else(|| model_err(skeleton, format!("tensor `{name}`: unknown type {ty}")))?;
        let dims =
            shape.split(',').map(|d| d.parse::<usize>()).collect::<Result<Vec<_>, _>>().map_err(
                |_| model_err(skeleton, format!("tensor `{name}`: bad shape `{shape}`")),
            )?;
        let n: usize = dims.iter().product();
        let values = match dims.as_slice() {
            // Norm weights multiply, biases add.
            [_] if name.ends_with(".bias") => vec![0f32; n],
            [_] => vec![1f32; n],
            [rows, cols] => {
                let embedding = name.starts_with("token_embd") || name == "output.weight";
                let std = if embedding { 0.05 } else { 1.0 / (*cols as f32).sqrt() };
                let mut v = noise(&mut rng, n, std);
                if embedding {
                    for &id in control.iter().filter(|&&id| id < *rows) {
                        v[id * cols..(id + 1) * cols].fill(0.0);
                    }
                }
                v
            }
            _ => noise(&mut rng, n, 0.02),
        };
        let t = Tensor::from_vec(values, dims.as_slice(), &Device::Cpu)
            .and_then(|t| QTensor::quantize(&t, dtype))
            .map_err(|e| model_err(skeleton, format!("tensor `{name}` as {ty}: {e}")))?;
        bytes += tensor_bytes(dtype, n);
        tensors.push((name.clone(), t));
    }
    let mut metadata: Vec<(String, Value)> = md
        .iter()
        .filter(|(k, _)| !k.starts_with("rrm.twin."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let source = md.get(SOURCE).and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    metadata.retain(|(k, _)| k != "general.name");
    metadata.push((
        "general.name".into(),
        Value::String(format!("twin (seed {seed}) of {}", &source[..source.len().min(12)])),
    ));
    write_gguf(out, &metadata, &tensors)?;
    Ok(bytes)
}

/// Copies a BERT encoder's `config.json` and `tokenizer.json` from `model_dir` into `out_dir`:
/// the encoder's skeleton.
pub fn bert_skeleton(model_dir: &Path, out_dir: &Path) -> Result<(), InferError> {
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    for file in [CONFIG_FILE, TOKENIZER_FILE] {
        let from = model_dir.join(file);
        std::fs::copy(&from, out_dir.join(file)).map_err(io_err(&from))?;
    }
    Ok(())
}

/// Writes random weights for the BERT described by `dir/config.json` into `dir/model.safetensors`
/// (drawn from `seed`): the encoder's twin, loadable by [`super::encoder::MiniLmEncoder`].
pub fn bert_inflate(dir: &Path, seed: u64) -> Result<u64, InferError> {
    use candle_transformers::models::bert::{BertModel, Config};
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read(&config_path).map_err(io_err(&config_path))?;
    let config: Config = serde_json::from_slice(&text)
        .map_err(|e| model_err(&config_path, format!("not a BERT config: {e}")))?;
    // Building the model over a VarMap creates every parameter with its name and shape.
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    BertModel::load(vb, &config).map_err(|e| model_err(&config_path, e))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut params: Vec<(String, candle_core::Var)> = varmap
        .data()
        .lock()
        .map_err(|_| InferError::Other("poisoned".into()))?
        .clone()
        .into_iter()
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let mut bytes = 0u64;
    for (name, var) in &params {
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let values = if name.ends_with("bias") || name.ends_with("beta") {
            vec![0f32; n]
        } else if name.contains("LayerNorm") || name.ends_with("gamma") {
            vec![1f32; n]
        } else if name.contains("embeddings") {
            noise(&mut rng, n, 0.05)
        } else {
            noise(&mut rng, n, 1.0 / (*dims.last().unwrap_or(&1) as f32).sqrt())
        };
        let t = Tensor::from_vec(values, dims.as_slice(), &Device::Cpu)
            .map_err(|e| model_err(&config_path, e))?;
        var.set(&t).map_err(|e| model_err(&config_path, e))?;
        bytes += 4 * n as u64;
    }
    let out = dir.join(MODEL_FILE);
    varmap.save(&out).map_err(|e| model_err(&out, e))?;
    Ok(bytes)
}

/// What [`skeleton`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skeleton {
    /// A GGUF generator's skeleton (a file).
    Gguf(SkeletonSummary),
    /// A BERT encoder's skeleton (a folder).
    Bert,
}

/// Writes the skeleton of the model at `model`: a BERT encoder folder gives a folder at `out`,
/// a GGUF file a GGUF skeleton file.
pub fn skeleton(model: &Path, out: &Path) -> Result<Skeleton, InferError> {
    if model.is_dir() {
        bert_skeleton(model, out)?;
        Ok(Skeleton::Bert)
    } else {
        gguf_skeleton(model, out).map(Skeleton::Gguf)
    }
}

/// Writes the twin of `skeleton` (a skeleton folder or file) at `out` with weights drawn from
/// `seed`; returns the bytes of weights written. An encoder skeleton folder may be inflated in
/// place (`out` the same folder).
pub fn inflate(skeleton: &Path, out: &Path, seed: u64) -> Result<u64, InferError> {
    if skeleton.is_dir() {
        if out != skeleton {
            bert_skeleton(skeleton, out)?;
        }
        bert_inflate(out, seed)
    } else {
        gguf_inflate(skeleton, out, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::llama::LlamaModel;
    use crate::infer::testing::{tiny_gguf, TinyOptions};

    #[test]
    fn a_twin_has_the_shapes_types_and_tokenizer_of_its_model() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.gguf");
        let opts = TinyOptions { weights: GgmlDType::Q4_1, ..TinyOptions::default() };
        tiny_gguf(&real, 3, &opts).unwrap();
        let skeleton = dir.path().join("skeleton.gguf");
        let summary = gguf_skeleton(&real, &skeleton).unwrap();
        assert!(
            std::fs::metadata(&skeleton).unwrap().len() < std::fs::metadata(&real).unwrap().len()
        );
        let twin = dir.path().join("twin.gguf");
        let bytes = gguf_inflate(&skeleton, &twin, 7).unwrap();
        assert_eq!(bytes, summary.data_bytes);

        let (a, b) = (read_content(&real).unwrap(), read_content(&twin).unwrap());
        assert_eq!(a.tensor_infos.len(), b.tensor_infos.len());
        for (name, info) in &a.tensor_infos {
            let other = &b.tensor_infos[name];
            assert_eq!(
                (info.ggml_dtype, info.shape.dims()),
                (other.ggml_dtype, other.shape.dims())
            );
        }
        assert!(!b.metadata.keys().any(|k| k.starts_with("rrm.twin.")));
        let real = LlamaModel::load(&real, &Device::Cpu).unwrap();
        let twin = LlamaModel::load(&twin, &Device::Cpu).unwrap();
        assert_eq!(real.model.config, twin.model.config);
        let text = "<|im_start|>user\nthe cat<|im_end|>";
        assert_eq!(real.tokenizer.encode(text).unwrap(), twin.tokenizer.encode(text).unwrap());

        // Same seed, same file; the control tokens can never win.
        let again = dir.path().join("again.gguf");
        gguf_inflate(&skeleton, &again, 7).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("twin.gguf")).unwrap(),
            std::fs::read(&again).unwrap()
        );
        let mut cache = twin.model.new_cache(16).unwrap();
        let logits = twin.model.forward(&mut [(&[1u32, 40, 41, 42][..], &mut cache)]).unwrap();
        let row = &logits.to_vec2::<f32>().unwrap()[0];
        let best = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert!(row[0] < best && row[2] < best);
        // A skeleton is no model, and a model is no skeleton.
        assert!(gguf_inflate(&dir.path().join("real.gguf"), &again, 1).is_err());
        assert!(gguf_skeleton(&skeleton, &dir.path().join("s2.gguf")).is_err());
    }

    #[test]
    fn an_encoder_twin_loads_and_embeds_like_its_model() {
        use crate::infer::encoder::MiniLmEncoder;
        use crate::infer::testing::tiny_bert;
        use crate::infer::Encoder as _;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        tiny_bert(&real, 1).unwrap();
        let skeleton = dir.path().join("skeleton");
        bert_skeleton(&real, &skeleton).unwrap();
        assert!(!skeleton.join(MODEL_FILE).exists());
        let twin = dir.path().join("twin");
        bert_skeleton(&skeleton, &twin).unwrap();
        let bytes = bert_inflate(&twin, 2).unwrap();
        assert_eq!(
            bytes + 8,
            std::fs::metadata(twin.join(MODEL_FILE)).unwrap().len() - header_len(&twin)
        );
        let (real, twin) =
            (MiniLmEncoder::load(&real).unwrap(), MiniLmEncoder::load(&twin).unwrap());
        assert_eq!(real.dim(), twin.dim());
        let text = "The cat sat on the mat by the river.";
        assert_eq!(real.count_tokens(text), twin.count_tokens(text));
        let e = twin.embed(&[text, "a dog ran"]).unwrap();
        assert_eq!(e.len(), 2);
        assert!((e[0].iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
    }

    /// Bytes of a safetensors file's header (its 8-byte length prefix not counted).
    fn header_len(dir: &Path) -> u64 {
        let bytes = std::fs::read(dir.join(MODEL_FILE)).unwrap();
        u64::from_le_bytes(bytes[..8].try_into().unwrap())
    }
}
