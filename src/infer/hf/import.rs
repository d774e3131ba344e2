//! Hugging Face folder → GGUF tensors and metadata, and PEFT adapters merged into a GGUF.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

use super::{
    gguf_name, io_err, malformed, md_u64, permute_rows, permuted_heads, read_gguf_header,
    read_json, vocab, Family, HfError, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, BLOCK_NAMES,
    CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE,
};

/// A model ready to be written as GGUF: metadata and tensors, in file order.
#[derive(Debug)]
pub struct GgufParts {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<(String, QTensor)>,
}

/// The shape of a model, from its config.json.
#[derive(Debug, Clone)]
pub(crate) struct HfConfig {
    pub family: Family,
    pub hidden: usize,
    pub ffn: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    pub context_length: usize,
    pub vocab_size: Option<usize>,
    pub tie: Option<bool>,
}

impl HfConfig {
    pub fn read(dir: &Path) -> Result<HfConfig, HfError> {
        let path = dir.join(CONFIG_FILE);
        let c = read_json(&path)?;
        Self::parse(&c, &path)
    }

    fn parse(c: &Json, path: &Path) -> Result<HfConfig, HfError> {
        let model_type = c.get("model_type").and_then(Json::as_str).ok_or_else(|| {
            HfError::Missing { path: path.to_path_buf(), what: "`model_type`".into() }
        })?;
        let family = Family::of(model_type).ok_or_else(|| HfError::UnknownModelType {
            path: path.to_path_buf(),
            model_type: model_type.to_string(),
        })?;
        let int = |key: &str| -> Result<Option<usize>, HfError> {
            match c.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                    malformed(path, format!("`{key}` is {v}, not a non-negative integer"))
                }),
            }
        };
        let need = |key: &str| -> Result<usize, HfError> {
            int(key)?.ok_or_else(|| HfError::Missing {
                path: path.to_path_buf(),
                what: format!("`{key}`"),
            })
        };
        let hidden = need("hidden_size")?;
        let n_head = need("num_attention_heads")?;
        let n_kv_head = int("num_key_value_heads")?.unwrap_or(n_head);
        if n_head == 0 || n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
            return Err(malformed(
                path,
                format!("{n_head} attention heads cannot share {n_kv_head} key/value heads"),
            ));
        }
        let head_dim = match int("head_dim")? {
            Some(d) => d,
            None if hidden.is_multiple_of(n_head) => hidden / n_head,
            None => {
                return Err(malformed(path, format!("hidden_size {hidden} is not {n_head} heads")))
            }
        };
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(malformed(path, format!("head dimension {head_dim} is not even")));
        }
        let float = |key: &str| c.get(key).and_then(Json::as_f64);
        if let Some(act) = c.get("hidden_act").and_then(Json::as_str) {
            if act != "silu" {
                return Err(HfError::Unsupported {
                    path: path.to_path_buf(),
                    message: format!("hidden_act `{act}` (only silu)"),
                });
            }
        }
        // transformers 5 writes `rope_parameters` ({rope_theta, rope_type}); older versions a
        // top-level `rope_theta` and `rope_scaling`. Only plain RoPE runs here.
        let rope = c.get("rope_parameters").filter(|v| !v.is_null());
        for (key, v) in [("rope_scaling", c.get("rope_scaling")), ("rope_parameters", rope)] {
            let Some(v) = v.filter(|v| !v.is_null()) else { continue };
            let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Json::as_str);
            if kind.is_some_and(|k| k != "default") || (kind.is_none() && key == "rope_scaling") {
                return Err(HfError::Unsupported {
                    path: path.to_path_buf(),
                    message: format!("{key} {v} (the engine runs plain RoPE)"),
                });
            }
        }
        let rope_theta = float("rope_theta")
            .or_else(|| rope.and_then(|r| r.get("rope_theta")).and_then(Json::as_f64))
            .unwrap_or(10_000.0);
        if c.get("use_sliding_window").and_then(Json::as_bool) == Some(true) {
            return Err(HfError::Unsupported {
                path: path.to_path_buf(),
                message: "use_sliding_window (the engine attends to the whole context)".into(),
            });
        }
        if c.get("mlp_bias").and_then(Json::as_bool) == Some(true) {
            return Err(HfError::Unsupported {
                path: path.to_path_buf(),
                message: "mlp_bias (the engine's MLP has no biases)".into(),
            });
        }
        if let Some(p) = float("partial_rotary_factor").filter(|p| *p != 1.0) {
            return Err(HfError::Unsupported {
                path: path.to_path_buf(),
                message: format!("partial_rotary_factor {p}"),
            });
        }
        Ok(HfConfig {
            family,
            hidden,
            ffn: need("intermediate_size")?,
            n_layer: need("num_hidden_layers")?,
            n_head,
            n_kv_head,
            head_dim,
            rms_eps: float("rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            context_length: int("max_position_embeddings")?.unwrap_or(2048),
            vocab_size: int("vocab_size")?,
            tie: c.get("tie_word_embeddings").and_then(Json::as_bool),
        })
    }

    /// The shape every GGUF tensor must have (rows first), for a vocabulary of `vocab` rows.
    /// Biases are listed for every projection; which are required is up to the family.
    pub fn shapes(&self, vocab: usize) -> BTreeMap<String, Vec<usize>> {
        let (h, q, kv, f) =
            (self.hidden, self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.ffn);
        let mut m = BTreeMap::new();
        m.insert("token_embd.weight".into(), vec![vocab, h]);
        m.insert("output.weight".into(), vec![vocab, h]);
        m.insert("output_norm.weight".into(), vec![h]);
        for i in 0..self.n_layer {
            let dims: [(&str, Vec<usize>); 9] = [
                ("attn_norm", vec![h]),
                ("ffn_norm", vec![h]),
                ("attn_q", vec![q, h]),
                ("attn_k", vec![kv, h]),
                ("attn_v", vec![kv, h]),
                ("attn_output", vec![h, q]),
                ("ffn_gate", vec![f, h]),
                ("ffn_up", vec![f, h]),
                ("ffn_down", vec![h, f]),
            ];
            for (name, shape) in dims {
                if shape.len() == 2 {
                    m.insert(format!("blk.{i}.{name}.bias"), vec![shape[0]]);
                }
                m.insert(format!("blk.{i}.{name}.weight"), shape);
            }
        }
        m
    }
}

/// The safetensors files of a folder: `model.safetensors`, or every shard its index names.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, HfError> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let json = read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| malformed(&index, "no `weight_map` object"))?;
        let mut shards = BTreeSet::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                malformed(&index, format!("the file of `{tensor}` is not a string"))
            })?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(malformed(&index, format!("shard name `{file}` is not a file name")));
            }
            shards.insert(file.to_string());
        }
        let mut out = Vec::new();
        for s in shards {
            let p = dir.join(&s);
            if !p.is_file() {
                return Err(HfError::Missing {
                    path: dir.to_path_buf(),
                    what: format!("the shard `{s}` named by {INDEX_FILE}"),
                });
            }
            out.push(p);
        }
        return Ok(out);
    }
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(HfError::Missing {
        path: dir.to_path_buf(),
        what: format!("`{WEIGHTS_FILE}` or `{INDEX_FILE}`"),
    })
}

/// Reads every tensor of a safetensors file as a candle tensor on the CPU (F32, F16, BF16, F64).
pub(crate) fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>, HfError> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| malformed(path, format!("not a readable safetensors file: {e}")))?;
    let mut out = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    for name in names {
        let view = st.tensor(&name).map_err(|e| malformed(path, format!("`{name}`: {e}")))?;
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F64 => DType::F64,
            other => {
                return Err(HfError::Unsupported {
                    path: path.to_path_buf(),
                    message: format!("tensor `{name}` is {other:?} (F32, F16, BF16 are read)"),
                })
            }
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
            .map_err(|e| malformed(path, format!("`{name}`: {e}")))?;
        out.push((name, t));
    }
    Ok(out)
}

/// The GGUF weight type a tensor of this dtype is stored as (llama.cpp keeps F16 and BF16; 1-D
/// tensors are always F32).
fn gguf_dtype(dtype: DType, rank: usize) -> GgmlDType {
    match (rank, dtype) {
        (1, _) => GgmlDType::F32,
        (_, DType::F16) => GgmlDType::F16,
        (_, DType::BF16) => GgmlDType::BF16,
        _ => GgmlDType::F32,
    }
}

fn file_type(dtype: DType) -> u32 {
    match dtype {
        DType::F16 => 1,
        DType::BF16 => 32,
        _ => 0,
    }
}

fn tensor_err(path: &Path, name: &str, e: candle_core::Error) -> HfError {
    malformed(path, format!("tensor `{name}`: {e}"))
}

/// Whether the config in `dir` names a `…ForSequenceClassification` architecture.
fn is_sequence_classifier(dir: &Path) -> bool {
    super::read_json(&dir.join(super::CONFIG_FILE)).is_ok_and(|c| {
        c.get("architectures").and_then(|a| a.as_array()).is_some_and(|a| {
            a.iter().filter_map(|v| v.as_str()).any(|n| n.ends_with("ForSequenceClassification"))
        })
    })
}

/// Converts the Hugging Face model folder `dir` (llama or qwen2) into GGUF tensors and metadata.
pub fn convert_folder(dir: &Path) -> Result<GgufParts, HfError> {
    let config = HfConfig::read(dir)?;
    let family = config.family;
    // A sequence-classification checkpoint (a reward model) converts to its backbone; its head
    // (`score.weight`) is read by the reward import, not here.
    let classifier = is_sequence_classifier(dir);
    let mut tensors: BTreeMap<String, (Tensor, PathBuf)> = BTreeMap::new();
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for file in weight_files(dir)? {
        for (name, t) in read_safetensors(&file)? {
            if name.ends_with("rotary_emb.inv_freq") || (classifier && name == "score.weight") {
                continue;
            }
            let Some(g) = gguf_name(&name) else {
                return Err(HfError::Unsupported {
                    path: file.clone(),
                    message: format!(
                        "tensor `{name}` is not part of a {} model's weights",
                        family.name()
                    ),
                });
            };
            *dtypes.entry(format!("{:?}", t.dtype())).or_default() += 1;
            if tensors.insert(g, (t, file.clone())).is_some() {
                return Err(malformed(&file, format!("tensor `{name}` appears twice")));
            }
        }
    }
    let vocab_rows = match tensors.get("token_embd.weight") {
        Some((t, _)) => t.dims()[0],
        None => {
            return Err(HfError::Missing {
                path: dir.to_path_buf(),
                what: "the tensor `model.embed_tokens.weight`".into(),
            })
        }
    };
    if let Some(v) = config.vocab_size.filter(|v| *v != vocab_rows) {
        return Err(HfError::Shape {
            path: dir.to_path_buf(),
            name: "model.embed_tokens.weight".into(),
            actual: tensors["token_embd.weight"].0.dims().to_vec(),
            expected: vec![v, config.hidden],
        });
    }
    let tied = config.tie.unwrap_or(false) || !tensors.contains_key("output.weight");
    if tied {
        tensors.remove("output.weight");
    }
    let shapes = config.shapes(vocab_rows);
    // Every weight is there with its shape; biases only where the family has them.
    for (name, shape) in &shapes {
        let is_bias = name.ends_with(".bias");
        let qkv_bias =
            is_bias && [".attn_q.", ".attn_k.", ".attn_v."].iter().any(|m| name.contains(m));
        let required = if is_bias {
            family == Family::Qwen2 && qkv_bias
        } else {
            name != "output.weight" || !tied
        };
        match tensors.get(name) {
            Some((t, file)) if t.dims() != shape.as_slice() => {
                return Err(HfError::Shape {
                    path: file.clone(),
                    name: super::hf_name(name).unwrap_or_else(|| name.clone()),
                    actual: t.dims().to_vec(),
                    expected: shape.clone(),
                })
            }
            None if required => {
                return Err(HfError::Missing {
                    path: dir.to_path_buf(),
                    what: format!(
                        "the tensor `{}`",
                        super::hf_name(name).unwrap_or_else(|| name.clone())
                    ),
                })
            }
            _ => {}
        }
    }
    if let Some((name, (_, file))) = tensors.iter().find(|(n, _)| !shapes.contains_key(*n)) {
        return Err(HfError::Unsupported {
            path: file.clone(),
            message: format!(
                "tensor `{}` does not belong to a {}-layer model",
                super::hf_name(name).unwrap_or_else(|| name.clone()),
                config.n_layer
            ),
        });
    }
    if family == Family::Llama && tensors.keys().any(|n| n.ends_with(".bias")) {
        let has_o_bias =
            tensors.keys().any(|n| n.contains(".attn_output.") && n.ends_with(".bias"));
        if has_o_bias {
            return Err(HfError::Unsupported {
                path: dir.to_path_buf(),
                message: "an output-projection bias (attention_bias with o_proj)".into(),
            });
        }
    }
    // The model's weight type: the most common one among its tensors.
    let main_dtype = tensors
        .values()
        .filter(|(t, _)| t.rank() == 2)
        .fold(HashMap::<DType, usize>::new(), |mut m, (t, _)| {
            *m.entry(t.dtype()).or_default() += 1;
            m
        })
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map_or(DType::F32, |(d, _)| d);

    let mut out_tensors = Vec::with_capacity(tensors.len());
    for (name, (t, file)) in tensors {
        let module = name.split('.').nth(2).unwrap_or("");
        let t = match permuted_heads(family, module, config.n_head, config.n_kv_head) {
            Some(heads) => permute_rows(&t, heads).map_err(|e| tensor_err(&file, &name, e))?,
            None => t,
        };
        let q = QTensor::quantize(&t, gguf_dtype(t.dtype(), t.rank()))
            .map_err(|e| tensor_err(&file, &name, e))?;
        out_tensors.push((name, q));
    }
    order_tensors(&mut out_tensors);

    let a = family.name();
    let general_name =
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.name".into(), Value::String(general_name)),
        ("general.file_type".into(), Value::U32(file_type(main_dtype))),
        (format!("{a}.block_count"), Value::U32(config.n_layer as u32)),
        (format!("{a}.context_length"), Value::U32(config.context_length as u32)),
        (format!("{a}.embedding_length"), Value::U32(config.hidden as u32)),
        (format!("{a}.feed_forward_length"), Value::U32(config.ffn as u32)),
        (format!("{a}.attention.head_count"), Value::U32(config.n_head as u32)),
        (format!("{a}.attention.head_count_kv"), Value::U32(config.n_kv_head as u32)),
        (format!("{a}.rope.freq_base"), Value::F32(config.rope_theta as f32)),
        (format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(config.rms_eps as f32)),
        (format!("{a}.vocab_size"), Value::U32(vocab_rows as u32)),
        (format!("{a}.rope.dimension_count"), Value::U32(config.head_dim as u32)),
    ];
    if config.head_dim * config.n_head != config.hidden {
        md.push((format!("{a}.attention.key_length"), Value::U32(config.head_dim as u32)));
        md.push((format!("{a}.attention.value_length"), Value::U32(config.head_dim as u32)));
    }
    md.extend(vocab::metadata(dir, vocab_rows)?);
    md.sort_by(|x, y| x.0.cmp(&y.0));
    Ok(GgufParts { metadata: md, tensors: out_tensors })
}

/// llama.cpp's order: the embedding, the blocks in order (norms and projections), then the
/// output norm and the output.
fn order_tensors(t: &mut [(String, QTensor)]) {
    let rank = |name: &str| -> (usize, usize, usize, String) {
        if name == "token_embd.weight" {
            return (0, 0, 0, String::new());
        }
        if let Some(rest) = name.strip_prefix("blk.") {
            let (layer, module) = rest.split_once('.').unwrap_or((rest, ""));
            let module_rank = BLOCK_NAMES
                .iter()
                .position(|(_, g)| module.starts_with(&format!("{g}.")))
                .unwrap_or(BLOCK_NAMES.len());
            return (1, layer.parse().unwrap_or(usize::MAX), module_rank, module.to_string());
        }
        (2, 0, usize::from(name == "output.weight"), name.to_string())
    };
    t.sort_by_key(|(name, _)| rank(name));
}

/// A PEFT LoRA adapter: per GGUF weight name, its `A` (r × in), `B` (out × r, in the Hugging
/// Face row order) and scale.
#[derive(Debug)]
pub struct Adapter {
    pub dir: PathBuf,
    pub pairs: BTreeMap<String, (Tensor, Tensor, f64)>,
}

fn peft_module(name: &str) -> Option<(String, &'static str)> {
    // base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight (`.default` optional).
    let rest = name.strip_prefix("base_model.model.")?;
    let rest = rest.strip_suffix(".weight")?;
    let rest = rest.strip_suffix(".default").unwrap_or(rest);
    let (module, which) = rest.rsplit_once('.')?;
    let which = match which {
        "lora_A" => "A",
        "lora_B" => "B",
        _ => return None,
    };
    let g = gguf_name(&format!("{module}.weight"))?;
    Some((g, which))
}

/// Reads a PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
pub fn read_adapter(dir: &Path) -> Result<Adapter, HfError> {
    let cpath = dir.join(ADAPTER_CONFIG_FILE);
    let c = read_json(&cpath)?;
    let unsupported = |message: String| HfError::Unsupported { path: cpath.clone(), message };
    let peft_type = c.get("peft_type").and_then(Json::as_str).unwrap_or("LORA");
    if !peft_type.eq_ignore_ascii_case("lora") {
        return Err(unsupported(format!("peft_type `{peft_type}` (only LORA adapters)")));
    }
    if c.get("use_dora").and_then(Json::as_bool) == Some(true) {
        return Err(unsupported("DoRA adapters (use_dora)".into()));
    }
    if let Some(m) = c.get("modules_to_save").and_then(Json::as_array).filter(|m| !m.is_empty()) {
        return Err(unsupported(format!(
            "modules_to_save {m:?} (fully trained modules beside the adapters)"
        )));
    }
    let alpha = c
        .get("lora_alpha")
        .and_then(Json::as_f64)
        .ok_or_else(|| HfError::Missing { path: cpath.clone(), what: "`lora_alpha`".into() })?;
    let rslora = c.get("use_rslora").and_then(Json::as_bool).unwrap_or(false);
    if c.get("fan_in_fan_out").and_then(Json::as_bool) == Some(true) {
        // PEFT itself turns it off for nn.Linear layers (all of llama's and qwen2's).
        tracing::warn!("{}: fan_in_fan_out ignored for linear layers", cpath.display());
    }
    let alpha_pattern: Vec<(String, f64)> = c
        .get("alpha_pattern")
        .and_then(Json::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect())
        .unwrap_or_default();
    let wpath = dir.join(ADAPTER_WEIGHTS_FILE);
    if !wpath.is_file() {
        return Err(HfError::Missing {
            path: dir.to_path_buf(),
            what: format!("`{ADAPTER_WEIGHTS_FILE}`"),
        });
    }
    let mut halves: BTreeMap<String, (Option<Tensor>, Option<Tensor>, String)> = BTreeMap::new();
    for (name, t) in read_safetensors(&wpath)? {
        let Some((g, which)) = peft_module(&name) else {
            return Err(HfError::Unsupported {
                path: wpath.clone(),
                message: format!(
                    "tensor `{name}` (only LoRA A/B of the attention and MLP projections)"
                ),
            });
        };
        if t.rank() != 2 {
            return Err(malformed(&wpath, format!("`{name}` is not a matrix")));
        }
        let t = t.to_dtype(DType::F32).map_err(|e| tensor_err(&wpath, &name, e))?;
        let module = name.split(".lora_").next().unwrap_or(&name).to_string();
        let e = halves.entry(g).or_insert((None, None, module));
        if which == "A" {
            e.0 = Some(t);
        } else {
            e.1 = Some(t);
        }
    }
    let mut pairs = BTreeMap::new();
    for (g, (a, b, module)) in halves {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(malformed(&wpath, format!("`{module}` has only one of lora_A and lora_B")));
        };
        let r = a.dims()[0];
        if b.dims()[1] != r {
            return Err(malformed(
                &wpath,
                format!("`{module}`: lora_A has rank {r}, lora_B {:?}", b.dims()),
            ));
        }
        let hf_module = module.strip_prefix("base_model.model.").unwrap_or(&module);
        let alpha = alpha_pattern
            .iter()
            .find(|(k, _)| hf_module == k || hf_module.ends_with(&format!(".{k}")))
            .map_or(alpha, |(_, a)| *a);
        let scale = if rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
        pairs.insert(g, (a, b, scale));
    }
    if pairs.is_empty() {
        return Err(malformed(&wpath, "no LoRA tensors"));
    }
    Ok(Adapter { dir: dir.to_path_buf(), pairs })
}

/// How a matrix of a base stored as `base` is stored once an adapter is merged into it: a float
/// type stays; a quantized one becomes Q8_0, or F16 when its rows are not a multiple of Q8_0's
/// 32-value block (the rule of `lm::export` for trained policies).
pub fn merged_matrix_dtype(base: GgmlDType, dims: &[usize]) -> GgmlDType {
    match base {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => base,
        _ if dims.last().is_some_and(|k| k % 32 == 0) => GgmlDType::Q8_0,
        _ => GgmlDType::F16,
    }
}

/// The base GGUF's tensors with `adapter` merged in (`W += scale·B·A`, `B`'s rows permuted like
/// the weight's). Merged matrices keep a float type (F32/F16/BF16); in a quantized base they
/// become Q8_0 ([`merged_matrix_dtype`]), as `rrm policy train` exports the same merge, so a
/// LoRA policy exported for PEFT and loaded back is the model that was trained and measured.
/// The other tensors are copied as they are.
pub fn merge_adapter(base: &Path, adapter: &Adapter) -> Result<GgufParts, HfError> {
    let mismatch = |message: String| HfError::AdapterMismatch {
        path: adapter.dir.clone(),
        base: base.to_path_buf(),
        message,
    };
    let (mut file, content, arch, family) = read_gguf_header(base)?;
    let n_head = md_u64(&content.metadata, &format!("{arch}.attention.head_count"))
        .ok_or_else(|| malformed(base, format!("no `{arch}.attention.head_count`")))?
        as usize;
    let n_kv_head = md_u64(&content.metadata, &format!("{arch}.attention.head_count_kv"))
        .map_or(n_head, |x| x as usize);
    for name in adapter.pairs.keys() {
        if !content.tensor_infos.contains_key(name) {
            return Err(mismatch(format!(
                "the base has no `{}`",
                super::hf_name(name).unwrap_or_else(|| name.clone())
            )));
        }
    }
    let mut names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let q = content
            .tensor(&mut file, &name, &Device::Cpu)
            .map_err(|e| malformed(base, format!("tensor `{name}`: {e}")))?;
        let Some((a, b, scale)) = adapter.pairs.get(&name) else {
            tensors.push((name, q));
            continue;
        };
        let hf = super::hf_name(&name).unwrap_or_else(|| name.clone());
        let dims = q.shape().dims().to_vec();
        if dims.len() != 2 || a.dims()[1] != dims[1] || b.dims()[0] != dims[0] {
            return Err(mismatch(format!(
                "`{hf}` is {dims:?} in the base; the adapter's B·A is [{}, {}]",
                b.dims()[0],
                a.dims()[1]
            )));
        }
        let module = name.split('.').nth(2).unwrap_or("");
        let b = match permuted_heads(family, module, n_head, n_kv_head) {
            Some(heads) => permute_rows(b, heads).map_err(|e| tensor_err(base, &name, e))?,
            None => b.clone(),
        };
        let merge = || -> candle_core::Result<QTensor> {
            let w = q.dequantize(&Device::Cpu)?;
            let delta = (b.matmul(a)? * *scale)?;
            let w = (w + delta)?;
            QTensor::quantize(&w, merged_matrix_dtype(q.dtype(), &dims))
        };
        tensors.push((name.clone(), merge().map_err(|e| tensor_err(base, &name, e))?));
    }
    order_tensors(&mut tensors);
    let mut metadata: Vec<(String, Value)> = content.metadata.into_iter().collect();
    metadata.sort_by(|x, y| x.0.cmp(&y.0));
    Ok(GgufParts { metadata, tensors })
}
