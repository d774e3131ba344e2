//! GGUF → Hugging Face folder (what transformers' `AutoModelForCausalLM.from_pretrained` and
//! vLLM load), and trained LoRA adapters → PEFT folder. The inverse of `import.rs`: Hugging Face
//! tensor names, llama's Q/K rows un-permuted, the tokenizer saved by `tokenizers` from the
//! GGUF metadata.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::{
    hf_name, io_err, malformed, md_u64, permuted_heads, read_gguf_header, unpermute_rows, Family,
    HfError,
};
use crate::infer::llama::LlamaConfig;
use crate::infer::tokenizer::GgufTokenizer;

/// The weight type of an exported Hugging Face model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfDType {
    /// Exact (a quantized GGUF's weights as it computes with them).
    F32,
    F16,
    BF16,
}

impl std::str::FromStr for HfDType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            other => Err(format!("unknown weight type `{other}` (f32, f16, bf16)")),
        }
    }
}

impl HfDType {
    fn candle(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
        }
    }
    fn st(self) -> safetensors::Dtype {
        match self {
            Self::F32 => safetensors::Dtype::F32,
            Self::F16 => safetensors::Dtype::F16,
            Self::BF16 => safetensors::Dtype::BF16,
        }
    }
    fn torch(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HfError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::Builder::new().prefix(".export-").tempfile_in(dir).map_err(|e| io_err(dir, e))?;
    use std::io::Write as _;
    tmp.write_all(bytes).map_err(|e| io_err(path, e))?;
    tmp.as_file().sync_all().map_err(|e| io_err(path, e))?;
    set_readable(tmp.path());
    tmp.persist(path).map_err(|e| io_err(path, e.error))?;
    Ok(())
}

fn set_readable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), HfError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| malformed(path, e))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Writes named tensors as a safetensors file (`{"format": "pt"}` metadata, as transformers
/// expects), through a temporary file.
fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    dtype: HfDType,
) -> Result<(), HfError> {
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t =
            t.to_dtype(dtype.candle()).map_err(|e| malformed(path, format!("`{name}`: {e}")))?;
        let bytes = tensor_bytes(&t).map_err(|e| malformed(path, format!("`{name}`: {e}")))?;
        data.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(dtype.st(), shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| malformed(path, format!("`{n}`: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let bytes = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| malformed(path, format!("writing safetensors: {e}")))?;
    write_atomic(path, &bytes)
}

fn tensor_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => t.to_vec1::<half::f16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec1::<half::bf16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        other => candle_core::bail!("cannot write {other:?}"),
    })
}

/// The shortest decimal of an f32 metadata value, as an f64 (`1e-5`, not `9.99999974e-6`).
fn clean(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// Writes the GGUF model `gguf` as a Hugging Face folder in `out` (created if needed; files of
/// the same names are replaced): `config.json`, `model.safetensors`, `tokenizer.json`,
/// `tokenizer_config.json`, `generation_config.json`.
pub fn export_hf(gguf: &Path, out: &Path, dtype: HfDType) -> Result<(), HfError> {
    let (mut file, content, _, family) = read_gguf_header(gguf)?;
    let cfg = LlamaConfig::from_gguf(&content)
        .map_err(|message| HfError::Unsupported { path: gguf.to_path_buf(), message })?;
    let tokenizer = GgufTokenizer::from_metadata(&content.metadata)
        .map_err(|e| HfError::Tokenizer { path: gguf.to_path_buf(), message: e.to_string() })?;
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;

    let mut tensors = BTreeMap::new();
    let mut names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    names.sort();
    for name in names {
        let hf = hf_name(&name).ok_or_else(|| HfError::Unsupported {
            path: gguf.to_path_buf(),
            message: format!("tensor `{name}` has no Hugging Face name"),
        })?;
        if family == Family::Llama && name.ends_with(".bias") {
            return Err(HfError::Unsupported {
                path: gguf.to_path_buf(),
                message: format!("a llama model with biases (`{name}`)"),
            });
        }
        let err = |e: candle_core::Error| malformed(gguf, format!("tensor `{name}`: {e}"));
        let q = content.tensor(&mut file, &name, &Device::Cpu).map_err(err)?;
        let t = q.dequantize(&Device::Cpu).map_err(err)?;
        let module = name.split('.').nth(2).unwrap_or("");
        let t = match permuted_heads(family, module, cfg.n_head, cfg.n_kv_head) {
            Some(heads) => unpermute_rows(&t, heads).map_err(err)?,
            None => t,
        };
        tensors.insert(hf, t);
    }
    let tied = !tensors.contains_key("lm_head.weight");
    write_safetensors(&out.join(super::WEIGHTS_FILE), &tensors, dtype)?;
    drop(tensors);

    let md = &content.metadata;
    let id = |key: &str| md_u64(md, key);
    let bos = id("tokenizer.ggml.bos_token_id");
    let eos = id("tokenizer.ggml.eos_token_id");
    let pad = id("tokenizer.ggml.padding_token_id");
    let rope_theta = clean(cfg.rope_base);
    let eps = clean(cfg.rms_eps as f32);
    let mut config = json!({
        "architectures": [match family { Family::Llama => "LlamaForCausalLM", Family::Qwen2 => "Qwen2ForCausalLM" }],
        "model_type": family.name(),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.ffn,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": eps,
        "rope_theta": rope_theta,
        "rope_scaling": null,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": tied,
        "use_cache": true,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": dtype.torch(),
    });
    if let Some(obj) = config.as_object_mut() {
        match family {
            Family::Llama => {
                obj.insert("attention_bias".into(), json!(false));
                obj.insert("mlp_bias".into(), json!(false));
            }
            Family::Qwen2 => {
                obj.insert("use_sliding_window".into(), json!(false));
                obj.insert("sliding_window".into(), json!(null));
                obj.insert("max_window_layers".into(), json!(cfg.n_layer));
            }
        }
    }
    write_json(&out.join(super::CONFIG_FILE), &config)?;

    let tok_path = out.join(super::TOKENIZER_FILE);
    let tmp = out.join(".tokenizer.json.partial");
    tokenizer
        .inner()
        .save(&tmp, false)
        .map_err(|e| HfError::Tokenizer { path: tok_path.clone(), message: e.to_string() })?;
    set_readable(&tmp);
    std::fs::rename(&tmp, &tok_path).map_err(|e| io_err(&tok_path, e))?;

    let token = |i: Option<u64>| -> serde_json::Value {
        i.and_then(|i| tokenizer.inner().id_to_token(i as u32)).map_or(json!(null), |t| json!(t))
    };
    let flag = |key: &str| match md.get(key) {
        Some(candle_core::quantized::gguf_file::Value::Bool(b)) => json!(b),
        _ => json!(false),
    };
    let tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(bos),
        "eos_token": token(eos),
        "pad_token": token(pad),
        "unk_token": token(id("tokenizer.ggml.unknown_token_id")),
        "add_bos_token": flag("tokenizer.ggml.add_bos_token"),
        "add_eos_token": flag("tokenizer.ggml.add_eos_token"),
        "chat_template": md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()),
        "model_max_length": cfg.context_length,
        "clean_up_tokenization_spaces": false,
    });
    write_json(&out.join(super::TOKENIZER_CONFIG_FILE), &tc)?;
    let generation = json!({
        "bos_token_id": bos,
        "eos_token_id": tokenizer.eos_ids,
        "pad_token_id": pad,
    });
    write_json(&out.join(super::GENERATION_CONFIG_FILE), &generation)?;
    Ok(())
}

/// A trained LoRA adapter to write in PEFT's layout.
#[derive(Debug)]
pub struct PeftExport<'a> {
    pub rank: usize,
    pub alpha: f64,
    /// `layers_to_transform` (adapters only in some blocks), or every block.
    pub layers: Option<Vec<usize>>,
    /// What `base_model_name_or_path` says.
    pub base_ref: String,
    /// The adapters by rrm's names: `blk.N.attn_q.lora_a` (r × in) and `.lora_b` (out × r, rows
    /// in the GGUF order).
    pub tensors: &'a HashMap<String, Tensor>,
}

/// Writes `adapter` (trained on the GGUF `base`) as a PEFT folder in `out`:
/// `adapter_config.json` and `adapter_model.safetensors`.
pub fn export_peft(base: &Path, adapter: &PeftExport<'_>, out: &Path) -> Result<(), HfError> {
    let (_, content, _, family) = read_gguf_header(base)?;
    let cfg = LlamaConfig::from_gguf(&content)
        .map_err(|message| HfError::Unsupported { path: base.to_path_buf(), message })?;
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let weights = out.join(super::ADAPTER_WEIGHTS_FILE);
    let mut tensors = BTreeMap::new();
    let mut modules = BTreeSet::new();
    for (name, t) in adapter.tensors {
        let (proj, which) = match name.rsplit_once('.') {
            Some((p, "lora_a")) => (p, "lora_A"),
            Some((p, "lora_b")) => (p, "lora_B"),
            _ => return Err(malformed(&weights, format!("`{name}` is not a LoRA A or B tensor"))),
        };
        let hf = hf_name(&format!("{proj}.weight"))
            .ok_or_else(|| malformed(&weights, format!("`{name}` names no projection")))?;
        let module = hf.strip_suffix(".weight").unwrap_or(&hf);
        let err = |e: candle_core::Error| malformed(&weights, format!("`{name}`: {e}"));
        let t = t.to_dtype(DType::F32).and_then(|t| t.to_device(&Device::Cpu)).map_err(err)?;
        let gguf_module = proj.split('.').nth(2).unwrap_or("");
        let t = match (which, permuted_heads(family, gguf_module, cfg.n_head, cfg.n_kv_head)) {
            ("lora_B", Some(heads)) => unpermute_rows(&t, heads).map_err(err)?,
            _ => t,
        };
        if let Some(short) = module.rsplit('.').next() {
            modules.insert(short.to_string());
        }
        tensors.insert(format!("base_model.model.{module}.{which}.weight"), t);
    }
    write_safetensors(&weights, &tensors, HfDType::F32)?;
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": adapter.base_ref,
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "lora_dropout": 0.0,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": adapter.layers,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    });
    write_json(&out.join(super::ADAPTER_CONFIG_FILE), &config)
}
