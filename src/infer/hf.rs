//! Hugging Face layouts in and out: checkpoints (`config.json` + safetensors + `tokenizer.json`)
//! of the llama and qwen2 families and PEFT LoRA adapters become GGUF files, and GGUF files
//! become Hugging Face folders and PEFT adapters again.
//!
//! **One mechanism in.** A Hugging Face folder is converted once into a GGUF file laid out as
//! llama.cpp's converter lays it out (`import.rs`: llama.cpp tensor names; llama's Q and K rows
//! permuted for the interleaved RoPE; qwen2's Q/K/V biases; no `output.weight` when the
//! embeddings are tied; the tokenizer as `tokenizer.ggml.*` metadata, `vocab.rs`). A PEFT
//! adapter is merged into its base's GGUF (`W += scale·B·A`, scale `alpha/r`, or `alpha/√r`
//! with rsLoRA) the same way. Both land in a content-addressed cache, `<models>/hf-gguf/<key>.gguf`
//! (key: blake3 of the converter version and every input file's bytes; written under a temporary
//! name, synced, renamed), and every component (engine, trainer, reward models) then loads that
//! GGUF through its ordinary path. `infer::fetch` calls [`cached_conversion`] and
//! [`cached_merge`] while resolving a model spec.
//!
//! **Out** (`export.rs`): a GGUF as a Hugging Face folder (config.json, model.safetensors with
//! Q/K rows un-permuted, tokenizer.json saved by `tokenizers` from the GGUF metadata,
//! tokenizer_config.json, generation_config.json), and trained LoRA adapters as a PEFT folder.
//!
//! Bad input is an [`HfError`] naming the file and what is wrong.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::QTensor;
use candle_core::Tensor;

mod export;
mod import;
#[cfg(test)]
mod tests;
mod vocab;

pub use export::{export_hf, export_peft, HfDType, PeftExport};
pub use import::{
    convert_folder, merge_adapter, merged_matrix_dtype, read_adapter, Adapter, GgufParts,
};

/// Changes whenever the converter would write different bytes for the same input (part of
/// every cache key).
pub const CONVERTER_VERSION: &str = "rrm-hf-gguf-3";

/// The cache folder under the models folder.
pub const CACHE_DIR: &str = "hf-gguf";

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Why a Hugging Face folder or adapter could not be read, converted or written.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("{}: missing {what}", path.display())]
    Missing { path: PathBuf, what: String },
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: {message}", path.display())]
    Malformed { path: PathBuf, message: String },
    #[error("{}: model_type `{model_type}` is not supported (llama, qwen2)", path.display())]
    UnknownModelType { path: PathBuf, model_type: String },
    #[error("{}: not supported: {message}", path.display())]
    Unsupported { path: PathBuf, message: String },
    #[error("{}: tensor `{name}` has shape {actual:?}, the config says {expected:?}", path.display())]
    Shape { path: PathBuf, name: String, actual: Vec<usize>, expected: Vec<usize> },
    #[error("{}: this adapter does not fit the base model {}: {message}", path.display(), base.display())]
    AdapterMismatch { path: PathBuf, base: PathBuf, message: String },
    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
}

pub(crate) fn io_err(path: &Path, error: std::io::Error) -> HfError {
    HfError::Io { path: path.to_path_buf(), error }
}

pub(crate) fn malformed(path: &Path, message: impl std::fmt::Display) -> HfError {
    HfError::Malformed { path: path.to_path_buf(), message: message.to_string() }
}

/// A GGUF file opened (for reading its tensors next), its header (metadata and tensor list; no
/// tensor data read), its architecture name and the family it belongs to: an unreadable file or
/// an architecture other than llama and qwen2 is an error naming the file.
pub(crate) fn read_gguf_header(
    path: &Path,
) -> Result<(std::fs::File, candle_core::quantized::gguf_file::Content, String, Family), HfError> {
    let mut file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)
        .map_err(|e| malformed(path, format!("not a readable GGUF file: {e}")))?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let family = Family::of(&arch).ok_or_else(|| HfError::Unsupported {
        path: path.to_path_buf(),
        message: format!("architecture `{arch}` (llama, qwen2)"),
    })?;
    Ok((file, content, arch, family))
}

/// Reads a JSON file; a missing file is [`HfError::Missing`].
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, HfError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (dir, name) = split_path(path);
            return Err(HfError::Missing { path: dir, what: name });
        }
        Err(e) => return Err(io_err(path, e)),
    };
    serde_json::from_slice(&bytes).map_err(|e| malformed(path, format!("not valid JSON: {e}")))
}

/// Reads a JSON file that may be absent.
pub(crate) fn read_json_opt(path: &Path) -> Result<Option<serde_json::Value>, HfError> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

fn split_path(path: &Path) -> (PathBuf, String) {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (dir, format!("`{name}`"))
}

/// Which family a checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
}

impl Family {
    /// The GGUF `general.architecture` (and the Hugging Face `model_type`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
        }
    }

    pub fn of(name: &str) -> Option<Family> {
        match name {
            "llama" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            _ => None,
        }
    }

    /// Whether Q and K rows are permuted between the two layouts (llama.cpp does it for llama,
    /// whose GGUF RoPE rotates interleaved pairs; qwen2's GGUF keeps the halves layout).
    pub fn permutes_qk(self) -> bool {
        self == Family::Llama
    }
}

/// Projections and norms of a block: (Hugging Face module under `model.layers.N.`, GGUF name
/// under `blk.N.`).
pub const BLOCK_NAMES: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// The GGUF name of a Hugging Face tensor name (`model.` prefix optional), if it is one of the
/// model's.
pub fn gguf_name(hf: &str) -> Option<String> {
    let rest = hf.strip_prefix("model.").unwrap_or(hf);
    match hf {
        "lm_head.weight" => return Some("output.weight".into()),
        _ if rest == "embed_tokens.weight" => return Some("token_embd.weight".into()),
        _ if rest == "norm.weight" => return Some("output_norm.weight".into()),
        _ => {}
    }
    let rest = rest.strip_prefix("layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = module.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (_, g) = BLOCK_NAMES.iter().find(|(h, _)| *h == module)?;
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// The Hugging Face name of a GGUF tensor name.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = module.rsplit_once('.')?;
    let (h, _) = BLOCK_NAMES.iter().find(|(_, g)| *g == module)?;
    Some(format!("model.layers.{layer}.{h}.{kind}"))
}

/// llama.cpp's Q/K row order for a llama GGUF: inside each of `heads` heads, row `2i + j` is the
/// Hugging Face row `j·d/2 + i`. `t` is `(heads·d, …)` (a weight, a bias, or LoRA's `B`).
pub fn permute_rows(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let cols: usize = dims[1..].iter().product();
    let d = rows / heads;
    t.reshape((heads, 2, d / 2, cols))?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

/// The inverse of [`permute_rows`].
pub fn unpermute_rows(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let cols: usize = dims[1..].iter().product();
    let d = rows / heads;
    t.reshape((heads, d / 2, 2, cols))?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

/// The number of heads whose rows a GGUF tensor holds, when its rows are permuted (llama's Q
/// and K weights and biases, and their LoRA `B`).
pub fn permuted_heads(
    family: Family,
    gguf_module: &str,
    n_head: usize,
    n_kv_head: usize,
) -> Option<usize> {
    if !family.permutes_qk() {
        return None;
    }
    match gguf_module {
        "attn_q" => Some(n_head),
        "attn_k" => Some(n_kv_head),
        _ => None,
    }
}

/// The input files of a Hugging Face model folder that a conversion reads (those present), in a
/// fixed order: config, weights (the index and its shards, or the single file), tokenizer files.
pub fn model_input_files(dir: &Path) -> Result<Vec<PathBuf>, HfError> {
    let mut files = vec![dir.join(CONFIG_FILE)];
    files.extend(import::weight_files(dir)?);
    if dir.join(INDEX_FILE).is_file() {
        files.push(dir.join(INDEX_FILE));
    }
    for name in [TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, GENERATION_CONFIG_FILE, CHAT_TEMPLATE_FILE]
    {
        if dir.join(name).is_file() {
            files.push(dir.join(name));
        }
    }
    Ok(files)
}

/// Whether `dir` looks like a Hugging Face model folder (config and safetensors weights).
pub fn is_model_dir(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file()
        && (dir.join(WEIGHTS_FILE).is_file() || dir.join(INDEX_FILE).is_file())
}

/// Whether `dir` is a PEFT adapter folder.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG_FILE).is_file()
}

/// Whether the Hugging Face folder `dir` holds a causal language model (its config names a
/// `model_type` we convert or an `…ForCausalLM` architecture), as opposed to, say, a BERT
/// encoder.
pub fn is_causal_lm_dir(dir: &Path) -> bool {
    if !is_model_dir(dir) {
        return false;
    }
    let Ok(config) = read_json(&dir.join(CONFIG_FILE)) else { return false };
    let model_type = config.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    Family::of(model_type).is_some()
        || config.get("architectures").and_then(|a| a.as_array()).is_some_and(|a| {
            a.iter().filter_map(|v| v.as_str()).any(|n| n.ends_with("ForCausalLM"))
        })
}

/// A cache key: blake3 of the converter version, `what`, and each file's name and bytes.
fn cache_key(what: &str, files: &[PathBuf]) -> Result<String, HfError> {
    let mut h = blake3::Hasher::new();
    h.update(CONVERTER_VERSION.as_bytes());
    h.update(b"\0");
    h.update(what.as_bytes());
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        h.update(b"\0");
        h.update(name.as_bytes());
        let mut file = std::fs::File::open(f).map_err(|e| io_err(f, e))?;
        let len = file.metadata().map_err(|e| io_err(f, e))?.len();
        h.update(&len.to_le_bytes());
        std::io::copy(&mut file, &mut h).map_err(|e| io_err(f, e))?;
    }
    Ok(h.finalize().to_hex()[..32].to_string())
}

/// The GGUF converted from the Hugging Face folder `dir`, from the cache under `models_dir`,
/// converting it on first use.
pub fn cached_conversion(dir: &Path, models_dir: &Path) -> Result<PathBuf, HfError> {
    let files = model_input_files(dir)?;
    let key = cache_key("model", &files)?;
    let out = models_dir.join(CACHE_DIR).join(format!("{key}.gguf"));
    if out.is_file() {
        return Ok(out);
    }
    tracing::info!("converting the Hugging Face model {} to {}", dir.display(), out.display());
    let parts = convert_folder(dir)?;
    write_gguf_atomic(&parts, &out)?;
    Ok(out)
}

/// The GGUF of `base` (a GGUF file) with the PEFT adapter in `adapter_dir` merged in, from the
/// cache under `models_dir`, merging it on first use.
pub fn cached_merge(
    base: &Path,
    adapter_dir: &Path,
    models_dir: &Path,
) -> Result<PathBuf, HfError> {
    let files = vec![
        base.to_path_buf(),
        adapter_dir.join(ADAPTER_CONFIG_FILE),
        adapter_dir.join(ADAPTER_WEIGHTS_FILE),
    ];
    for f in &files[1..] {
        if !f.is_file() {
            let (dir, what) = split_path(f);
            return Err(HfError::Missing { path: dir, what });
        }
    }
    let key = cache_key("adapter", &files)?;
    let out = models_dir.join(CACHE_DIR).join(format!("{key}.gguf"));
    if out.is_file() {
        return Ok(out);
    }
    tracing::info!("merging the adapter {} into {}", adapter_dir.display(), base.display());
    let adapter = read_adapter(adapter_dir)?;
    let parts = merge_adapter(base, &adapter)?;
    write_gguf_atomic(&parts, &out)?;
    Ok(out)
}

/// The base model an adapter names (`base_model_name_or_path`): a path relative to the adapter
/// folder when one exists there, else the value as written (a model spec).
pub fn adapter_base_spec(adapter_dir: &Path) -> Result<String, HfError> {
    let path = adapter_dir.join(ADAPTER_CONFIG_FILE);
    let config = read_json(&path)?;
    let base = config
        .get("base_model_name_or_path")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| HfError::Missing {
            path: path.clone(),
            what: "`base_model_name_or_path` (the base model to merge the adapter into)".into(),
        })?;
    let relative = adapter_dir.join(base);
    if !Path::new(base).is_absolute() && relative.exists() {
        return Ok(relative.to_string_lossy().into_owned());
    }
    Ok(base.to_string())
}

/// Writes `parts` as a GGUF at `out`: a temporary file in the same folder, synced, renamed.
pub fn write_gguf_atomic(parts: &GgufParts, out: &Path) -> Result<(), HfError> {
    let dir = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".convert-")
        .suffix(".gguf.partial")
        .tempfile_in(dir)
        .map_err(|e| io_err(dir, e))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        let md: Vec<(&str, &Value)> = parts.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> =
            parts.tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        candle_core::quantized::gguf_file::write(&mut w, &md, &ts)
            .map_err(|e| malformed(out, format!("writing GGUF: {e}")))?;
        w.flush().map_err(|e| io_err(out, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| io_err(out, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(out).map_err(|e| io_err(out, e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A metadata value as an unsigned integer.
pub(crate) fn md_u64(md: &HashMap<String, Value>, key: &str) -> Option<u64> {
    md.get(key).and_then(|v| match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    })
}
