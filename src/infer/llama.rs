//! The llama-family forward pass (llama, and qwen2 with its attention biases) on candle ops and
//! quantized matmuls, built for batched generation.
//!
//! Read top to bottom: [`LlamaConfig`] (from GGUF metadata), the weights ([`LlamaModel::load`]),
//! the per-sequence [`KvCache`], and [`LlamaModel::forward`].
//!
//! Batching is *packed*: the new tokens of every sequence in a step (a whole prompt for a sequence
//! that just joined, one token for a decoding one) are concatenated into one `(N, hidden)`
//! activation, so every weight matrix is applied once per step to all rows, and no row is
//! padding. Each token carries its own position (RoPE is gathered per token). Attention is done
//! per sequence against that sequence's own cache, with a causal mask offset by what the cache
//! already holds, so a sequence's result does not depend on what else is in the batch.
//!
//! The KV cache of a sequence is allocated once, at its full length (prompt + max new tokens),
//! and written in place (`slice_set`): no `cat` per step. Grouped-query attention groups the
//! query heads that share a KV head into the rows of one matmul, so K/V are never copied per
//! query head.
//!
//! On CPU, weight types without fast kernels (Q4_0, Q4_1, Q5_0, Q5_1) are requantized to Q8_0
//! at load (measured severalfold faster here); on a GPU the weights stay as shipped.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::tokenizer::GgufTokenizer;
use super::InferError;

mod host_attention;

/// Which member of the family: decides the RoPE layout and the attention biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama (and SmolLM, Mistral-style GGUFs): interleaved RoPE pairs, no biases.
    Llama,
    /// Qwen2: RoPE on the two halves of a head, biases on Q, K and V.
    Qwen2,
}

/// The shape of the model, read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub rms_eps: f64,
    pub rope_base: f32,
    pub context_length: usize,
}

fn md_usize(md: &HashMap<String, Value>, key: &str) -> Option<usize> {
    md.get(key).and_then(|v| match v {
        Value::U8(x) => Some(*x as usize),
        Value::U16(x) => Some(*x as usize),
        Value::U32(x) => Some(*x as usize),
        Value::U64(x) => usize::try_from(*x).ok(),
        Value::I32(x) => usize::try_from(*x).ok(),
        Value::I64(x) => usize::try_from(*x).ok(),
        _ => None,
    })
}

fn md_f64(md: &HashMap<String, Value>, key: &str) -> Option<f64> {
    md.get(key).and_then(|v| match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        _ => None,
    })
}

impl LlamaConfig {
    /// Reads the config; `Err` is a message saying which key is missing or wrong.
    pub fn from_gguf(content: &Content) -> Result<Self, String> {
        let md = &content.metadata;
        let arch_name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or("no `general.architecture` metadata")?
            .clone();
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => return Err(format!("architecture `{other}` is not supported (llama, qwen2)")),
        };
        let need = |key: &str| -> Result<usize, String> {
            md_usize(md, &format!("{arch_name}.{key}"))
                .ok_or_else(|| format!("no `{arch_name}.{key}` metadata"))
        };
        let hidden = need("embedding_length")?;
        let n_head = need("attention.head_count")?;
        let n_layer = need("block_count")?;
        let n_kv_head =
            md_usize(md, &format!("{arch_name}.attention.head_count_kv")).unwrap_or(n_head);
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 || hidden % n_head != 0 {
            return Err(format!(
                "inconsistent head counts: {n_head} heads, {n_kv_head} KV heads, hidden {hidden}"
            ));
        }
        let head_dim =
            md_usize(md, &format!("{arch_name}.attention.key_length")).unwrap_or(hidden / n_head);
        if head_dim % 2 != 0 {
            return Err(format!("head dimension {head_dim} is odd"));
        }
        let ffn_shape =
            content.tensor_infos.get("blk.0.ffn_gate.weight").map(|t| t.shape.dims()[0]);
        let ffn = md_usize(md, &format!("{arch_name}.feed_forward_length"))
            .or(ffn_shape)
            .ok_or_else(|| format!("no `{arch_name}.feed_forward_length` metadata"))?;
        let vocab_size = content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or("no `token_embd.weight` tensor")?;
        Ok(Self {
            arch,
            vocab_size,
            hidden,
            n_layer,
            n_head,
            n_kv_head,
            head_dim,
            ffn,
            rms_eps: md_f64(md, &format!("{arch_name}.attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            rope_base: md_f64(md, &format!("{arch_name}.rope.freq_base")).unwrap_or(10_000.0)
                as f32,
            context_length: md_usize(md, &format!("{arch_name}.context_length")).unwrap_or(2048),
        })
    }
}

/// A linear layer: a (possibly quantized) weight and an optional bias.
#[derive(Debug, Clone)]
struct Linear {
    w: QMatMul,
    b: Option<Tensor>,
    /// Zero columns appended to the input (the weight was padded to a fast kernel's width).
    pad: usize,
}

/// Rows per matmul call on the CPU: the quantized input of a longer call no longer stays in
/// cache while the weight tiles stream past it (measured: a 2,400-row prefill ran ~35% slower
/// per token than a 300-row one).
const CPU_ROW_CHUNK: usize = 256;

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let rows = x.dim(0)?;
        let y = if x.device().is_cpu() && x.rank() == 2 && rows > CPU_ROW_CHUNK {
            let parts = (0..rows)
                .step_by(CPU_ROW_CHUNK)
                .map(|r| self.matmul(&x.narrow(0, r, CPU_ROW_CHUNK.min(rows - r))?))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&parts, 0)?
        } else {
            self.matmul(x)?
        };
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.pad > 0 {
            self.w.forward(&x.pad_with_zeros(candle_core::D::Minus1, 0, self.pad)?)
        } else {
            self.w.forward(&x.contiguous()?)
        }
    }
}

#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Tensor,
    /// Q, K and V.
    qkv: Projections,
    wo: Linear,
    ffn_norm: Tensor,
    /// Gate and up.
    gate_up: Projections,
    w_down: Linear,
}

/// Several projections of the same input: separate matmuls, or (on CPU) one matmul over the
/// weights stacked by rows, whose output is split again. Stacking quantizes the input once and
/// runs one parallel region instead of several.
#[derive(Debug, Clone)]
enum Projections {
    Separate(Vec<Linear>),
    Fused { w: Linear, sizes: Vec<usize> },
}

impl Projections {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        match self {
            Self::Separate(ls) => ls.iter().map(|l| l.forward(x)).collect(),
            Self::Fused { w, sizes } => {
                let y = w.forward(x)?;
                let mut at = 0;
                sizes
                    .iter()
                    .map(|&n| {
                        let part = y.narrow(candle_core::D::Minus1, at, n);
                        at += n;
                        part
                    })
                    .collect()
            }
        }
    }
}

/// A loaded llama-family model: weights, RoPE tables and the tokenizer from the same file.
#[derive(Debug)]
pub struct LlamaModel {
    pub config: LlamaConfig,
    device: Device,
    tok_embd: QMatMul,
    layers: Vec<Layer>,
    out_norm: Tensor,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    /// The same tables as plain buffers for the CPU attention.
    cos_host: Vec<f32>,
    sin_host: Vec<f32>,
    /// Attention over plain CPU buffers (the default on CPU) rather than tensor ops.
    host_attention: bool,
}

/// The keys and values a sequence has seen, one preallocated `(n_kv_head, capacity, head_dim)`
/// buffer per layer, filled from the front.
#[derive(Debug)]
pub struct KvCache {
    store: KvStore,
    len: usize,
    capacity: usize,
}

/// Where a cache lives: plain buffers on the CPU, tensors on other devices.
#[derive(Debug)]
enum KvStore {
    Host(host_attention::HostKv),
    Tensors { k: Vec<Tensor>, v: Vec<Tensor> },
}

impl KvCache {
    /// Positions already filled.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Positions this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

fn model_err(path: &Path, message: impl std::fmt::Display) -> InferError {
    InferError::Model { path: path.to_path_buf(), message: message.to_string() }
}

/// Whether `dtype` lacks a fast CPU kernel in candle and is better requantized to Q8_0.
fn slow_on_cpu(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

/// On x86 CPUs with VNNI, candle multiplies Q8_0 weights with a tiled int8 kernel when the
/// input width is a multiple of 256 (and falls back to a much slower per-row dot product
/// otherwise): weights are padded with zero columns to that width. `RRM_NO_PAD=1` turns it off.
fn cpu_pad_multiple() -> Option<usize> {
    if std::env::var_os("RRM_NO_PAD").is_some_and(|v| !v.is_empty() && v != "0") {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni")
        {
            return Some(256);
        }
    }
    None
}

/// Readies one weight for its device: on CPU, slow types are requantized to Q8_0, and Q8_0
/// weights are padded to `pad_to` input columns where that reaches a faster kernel. Returns
/// the weight and the number of zero columns its input needs.
fn prepare_weight(
    t: QTensor,
    cpu: bool,
    pad_to: Option<usize>,
) -> candle_core::Result<(QTensor, usize)> {
    let Ok((n, k)) = t.shape().dims2() else { return Ok((t, 0)) };
    if !cpu || k % 32 != 0 {
        return Ok((t, 0));
    }
    let to_q8 = slow_on_cpu(t.dtype()) || t.dtype() == GgmlDType::Q8_0;
    let pad = match pad_to {
        Some(m) if to_q8 && k % m != 0 && n % 16 == 0 => k.div_ceil(m) * m - k,
        _ => 0,
    };
    if pad == 0 && !slow_on_cpu(t.dtype()) {
        return Ok((t, 0));
    }
    let f = t.dequantize(&Device::Cpu)?;
    let f = if pad > 0 { f.pad_with_zeros(1, 0, pad)? } else { f };
    Ok((QTensor::quantize(&f, GgmlDType::Q8_0)?, pad))
}

/// Stacks weights (and biases) by rows on the CPU, as F32 when they are F32 and as Q8_0
/// otherwise (which [`prepare_weight`] then keeps).
fn stack_rows(
    parts: &[(QTensor, Option<Tensor>)],
) -> candle_core::Result<(QTensor, Option<Tensor>)> {
    let all_f32 = parts.iter().all(|(w, _)| w.dtype() == GgmlDType::F32);
    let ws = parts
        .iter()
        .map(|(w, _)| w.dequantize(&Device::Cpu))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let w = Tensor::cat(&ws, 0)?;
    let k = w.dim(1)?;
    let dtype = if all_f32 || k % 32 != 0 { GgmlDType::F32 } else { GgmlDType::Q8_0 };
    let w = QTensor::quantize(&w, dtype)?;
    let b = if parts.iter().any(|(_, b)| b.is_some()) {
        let bs = parts
            .iter()
            .map(|(w, b)| match b {
                Some(b) => Ok(b.clone()),
                None => Tensor::zeros(w.shape().dims()[0], DType::F32, &Device::Cpu),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Some(Tensor::cat(&bs, 0)?)
    } else {
        None
    };
    Ok((w, b))
}

/// Everything [`LlamaModel::load`] reads from one GGUF file.
#[derive(Debug)]
pub struct LoadedGguf {
    pub model: LlamaModel,
    pub tokenizer: GgufTokenizer,
    pub path: PathBuf,
}

impl LlamaModel {
    /// Loads a GGUF file: config, weights (requantized on CPU where that is faster) and tokenizer.
    /// A truncated or malformed file is an error naming it.
    pub fn load(path: &Path, device: &Device) -> Result<LoadedGguf, InferError> {
        let io_err = |e| InferError::Io { path: path.to_path_buf(), error: e };
        let mut file = File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        // Every length and tensor of the header is checked against the file first (a truncated
        // download, a damaged or hostile file): candle's reader trusts them.
        super::gguf_check::check(&mut file, file_len)
            .map_err(|e| model_err(path, format!("not a readable GGUF file: {e}")))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).map_err(io_err)?;
        let content = Content::read(&mut file)
            .map_err(|e| model_err(path, format!("not a readable GGUF file: {e}")))?;
        let config = LlamaConfig::from_gguf(&content).map_err(|e| model_err(path, e))?;
        let tokenizer =
            GgufTokenizer::from_metadata(&content.metadata).map_err(|e| model_err(path, e))?;
        let cfg = config.clone();
        let mut read = |name: &str, shape: &[usize]| -> Result<QTensor, InferError> {
            let t = content
                .tensor(&mut file, name, device)
                .map_err(|e| model_err(path, format!("tensor `{name}`: {e}")))?;
            if t.shape().dims() != shape {
                return Err(model_err(
                    path,
                    format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.shape().dims()),
                ));
            }
            Ok(t)
        };
        let cpu = device.is_cpu();
        let pad_to = if cpu { cpu_pad_multiple() } else { None };
        let matmul = |t: QTensor| -> Result<(QMatMul, usize), InferError> {
            let (t, pad) = prepare_weight(t, cpu, pad_to).map_err(|e| model_err(path, e))?;
            Ok((QMatMul::from_qtensor(t).map_err(|e| model_err(path, e))?, pad))
        };
        let dense = |t: QTensor| -> Result<Tensor, InferError> {
            t.dequantize(device).map_err(|e| model_err(path, e))
        };
        let (h, hd, nh, nkv) = (cfg.hidden, cfg.head_dim, cfg.n_head, cfg.n_kv_head);
        let qwen = cfg.arch == Arch::Qwen2;
        let has = |name: &str| content.tensor_infos.contains_key(name);
        let tok_embd_q = read("token_embd.weight", &[cfg.vocab_size, h])?;
        let out_name = if has("output.weight") { "output.weight" } else { "token_embd.weight" };
        let (w, pad) = matmul(read(out_name, &[cfg.vocab_size, h])?)?;
        let output = Linear { w, b: None, pad };
        let tok_embd = QMatMul::from_qtensor(tok_embd_q).map_err(|e| model_err(path, e))?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            // (weight, bias) of one projection, as stored.
            let mut raw = |name: &str,
                           out: usize,
                           inp: usize,
                           bias: bool|
             -> Result<(QTensor, Option<Tensor>), InferError> {
                let w = read(&format!("{p}.{name}.weight"), &[out, inp])?;
                let bname = format!("{p}.{name}.bias");
                let b =
                    if bias || has(&bname) { Some(dense(read(&bname, &[out])?)?) } else { None };
                Ok((w, b))
            };
            let projections =
                |parts: Vec<(QTensor, Option<Tensor>)>| -> Result<Projections, InferError> {
                    if !cpu {
                        return parts
                            .into_iter()
                            .map(|(w, b)| matmul(w).map(|(w, pad)| Linear { w, b, pad }))
                            .collect::<Result<Vec<_>, _>>()
                            .map(Projections::Separate);
                    }
                    let sizes: Vec<usize> =
                        parts.iter().map(|(w, _)| w.shape().dims()[0]).collect();
                    let stacked = stack_rows(&parts).map_err(|e| model_err(path, e))?;
                    let (w, pad) = matmul(stacked.0)?;
                    Ok(Projections::Fused { w: Linear { w, b: stacked.1, pad }, sizes })
                };
            let qkv = projections(vec![
                raw("attn_q", nh * hd, h, qwen)?,
                raw("attn_k", nkv * hd, h, qwen)?,
                raw("attn_v", nkv * hd, h, qwen)?,
            ])?;
            let gate_up = projections(vec![
                raw("ffn_gate", cfg.ffn, h, false)?,
                raw("ffn_up", cfg.ffn, h, false)?,
            ])?;
            let (w, b) = raw("attn_output", h, nh * hd, false)?;
            let (w, pad) = matmul(w)?;
            let wo = Linear { w, b, pad };
            let (w, b) = raw("ffn_down", h, cfg.ffn, false)?;
            let (w, pad) = matmul(w)?;
            let w_down = Linear { w, b, pad };
            let attn_norm = dense(read(&format!("{p}.attn_norm.weight"), &[h])?)?;
            let ffn_norm = dense(read(&format!("{p}.ffn_norm.weight"), &[h])?)?;
            layers.push(Layer { attn_norm, qkv, wo, ffn_norm, gate_up, w_down });
        }
        let out_norm = dense(read("output_norm.weight", &[h])?)?;
        let (cos_host, sin_host) = rope_tables(&cfg);
        let half = cfg.head_dim / 2;
        let (cos, sin) = (|| {
            let cos = Tensor::from_slice(&cos_host, (cfg.context_length, half), device)?;
            let sin = Tensor::from_slice(&sin_host, (cfg.context_length, half), device)?;
            candle_core::Result::Ok((cos, sin))
        })()
        .map_err(|e| model_err(path, e))?;
        let model = LlamaModel {
            config: cfg,
            device: device.clone(),
            tok_embd,
            layers,
            out_norm,
            output,
            cos,
            sin,
            cos_host,
            sin_host,
            host_attention: device.is_cpu(),
        };
        Ok(LoadedGguf { model, tokenizer, path: path.to_path_buf() })
    }

    /// Uses the tensor-op attention (the GPU path) even on the CPU; for tests that check both
    /// paths agree. Caches made before the switch do not fit the model after it.
    #[doc(hidden)]
    pub fn use_tensor_attention(&mut self) {
        self.host_attention = false;
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A zeroed cache for up to `capacity` positions (capped at the context length).
    pub fn new_cache(&self, capacity: usize) -> candle_core::Result<KvCache> {
        let c = &self.config;
        let capacity = capacity.min(c.context_length).max(1);
        if self.host_attention {
            let store = KvStore::Host(host_attention::HostKv::new(c, capacity));
            return Ok(KvCache { store, len: 0, capacity });
        }
        let shape = (c.n_kv_head, capacity, c.head_dim);
        let mut k = Vec::with_capacity(c.n_layer);
        let mut v = Vec::with_capacity(c.n_layer);
        for _ in 0..c.n_layer {
            k.push(Tensor::zeros(shape, DType::F32, &self.device)?);
            v.push(Tensor::zeros(shape, DType::F32, &self.device)?);
        }
        Ok(KvCache { store: KvStore::Tensors { k, v }, len: 0, capacity })
    }

    /// Runs one step for a batch of sequences: each gets its new `tokens` appended to its cache,
    /// and the result holds, per sequence, the logits after its last new token: `(B, vocab)`.
    pub fn forward(&self, batch: &mut [(&[u32], &mut KvCache)]) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let dev = &self.device;
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut spans = Vec::with_capacity(batch.len());
        for (toks, cache) in batch.iter() {
            if toks.is_empty() {
                candle_core::bail!("a sequence in the batch has no new tokens");
            }
            if cache.len + toks.len() > cache.capacity {
                candle_core::bail!(
                    "sequence of {} tokens does not fit its cache of {}",
                    cache.len + toks.len(),
                    cache.capacity
                );
            }
            if let Some(&bad) = toks.iter().find(|&&t| t as usize >= c.vocab_size) {
                candle_core::bail!("token id {bad} is outside the vocabulary of {}", c.vocab_size);
            }
            spans.push((tokens.len(), toks.len(), cache.len));
            tokens.extend_from_slice(toks);
            positions.extend((cache.len..cache.len + toks.len()).map(|p| p as u32));
        }
        let n = tokens.len();
        let ids = Tensor::from_vec(tokens, n, dev)?;
        let host = self.host_attention;
        let mut x = self.tok_embd.embedding(&ids)?;
        // The tensor path's RoPE rows and causal masks, shared by all layers.
        let tensor_prep = if host { None } else { Some(self.tensor_prep(&positions, &spans)?) };
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, c.rms_eps as f32)?;
            let mut qkv = layer.qkv.forward(&h)?.into_iter();
            let (Some(q), Some(k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
                candle_core::bail!("internal error: the QKV projection gave fewer than 3 parts")
            };
            let attn = match &tensor_prep {
                None => {
                    let mut caches = batch
                        .iter_mut()
                        .map(|(_, cache)| match &mut cache.store {
                            KvStore::Host(kv) => Ok((kv, cache.capacity)),
                            KvStore::Tensors { .. } => {
                                candle_core::bail!("a device cache was given to the CPU model")
                            }
                        })
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    host_attention::attention(
                        c,
                        li,
                        &q,
                        &k,
                        &v,
                        &positions,
                        &spans,
                        &mut caches,
                        &self.cos_host,
                        &self.sin_host,
                    )?
                }
                Some(prep) => self.tensor_attention(li, &q, &k, &v, prep, &spans, batch)?,
            };
            x = (x + layer.wo.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, c.rms_eps as f32)?;
            let mut gate_up = layer.gate_up.forward(&h)?.into_iter();
            let (Some(gate), Some(up)) = (gate_up.next(), gate_up.next()) else {
                candle_core::bail!("internal error: the gate/up projection gave fewer than 2 parts")
            };
            let gate = candle_nn::ops::silu(&gate)?;
            x = (x + layer.w_down.forward(&(gate * up)?)?)?;
        }
        for (bi, &(_, t, _)) in spans.iter().enumerate() {
            batch[bi].1.len += t;
        }
        let last: Vec<u32> = spans.iter().map(|&(s, t, _)| (s + t - 1) as u32).collect();
        let last = Tensor::from_vec(last, spans.len(), dev)?;
        let x = x.index_select(&last, 0)?;
        let x = candle_nn::ops::rms_norm(&x, &self.out_norm, c.rms_eps as f32)?;
        self.output.forward(&x)?.to_dtype(DType::F32)
    }
}

struct TensorPrep {
    cos: Tensor,
    sin: Tensor,
    masks: Vec<Option<Tensor>>,
}

impl LlamaModel {
    fn tensor_prep(
        &self,
        positions: &[u32],
        spans: &[(usize, usize, usize)],
    ) -> candle_core::Result<TensorPrep> {
        let dev = &self.device;
        let group = self.config.n_head / self.config.n_kv_head;
        let pos = Tensor::from_slice(positions, positions.len(), dev)?;
        Ok(TensorPrep {
            cos: self.cos.index_select(&pos, 0)?.contiguous()?,
            sin: self.sin.index_select(&pos, 0)?.contiguous()?,
            masks: spans
                .iter()
                .map(|&(_, t, p0)| causal_mask(t, p0, group, dev))
                .collect::<candle_core::Result<Vec<_>>>()?,
        })
    }

    /// Attention with tensor ops, for devices other than the CPU: RoPE on all rows at once,
    /// then per sequence a write into its cache and a masked attention over it.
    #[allow(clippy::too_many_arguments)]
    fn tensor_attention(
        &self,
        li: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        prep: &TensorPrep,
        spans: &[(usize, usize, usize)],
        batch: &mut [(&[u32], &mut KvCache)],
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let n = q.dim(0)?;
        let group = c.n_head / c.n_kv_head;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        // (N, heads*d) -> (1, heads, N, d)
        let q =
            q.reshape((n, c.n_head, c.head_dim))?.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
        let k =
            k.reshape((n, c.n_kv_head, c.head_dim))?.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
        let v = v.reshape((n, c.n_kv_head, c.head_dim))?.transpose(0, 1)?;
        let (q, k) = match c.arch {
            Arch::Llama => (
                candle_nn::rotary_emb::rope_i(&q, &prep.cos, &prep.sin)?,
                candle_nn::rotary_emb::rope_i(&k, &prep.cos, &prep.sin)?,
            ),
            Arch::Qwen2 => (
                candle_nn::rotary_emb::rope(&q, &prep.cos, &prep.sin)?,
                candle_nn::rotary_emb::rope(&k, &prep.cos, &prep.sin)?,
            ),
        };
        let q = (q.squeeze(0)? * scale)?;
        let k = k.squeeze(0)?;
        let mut outs = Vec::with_capacity(spans.len());
        for (bi, &(start, t, p0)) in spans.iter().enumerate() {
            let KvStore::Tensors { k: ck, v: cv } = &mut batch[bi].1.store else {
                candle_core::bail!("a CPU cache was given to the device model")
            };
            let k_new = k.narrow(1, start, t)?.contiguous()?;
            let v_new = v.narrow(1, start, t)?.contiguous()?;
            ck[li].slice_set(&k_new, 1, p0)?;
            cv[li].slice_set(&v_new, 1, p0)?;
            let len = p0 + t;
            let kk = ck[li].narrow(1, 0, len)?;
            let vv = cv[li].narrow(1, 0, len)?;
            // The query heads sharing a KV head become the rows of one matmul.
            let qi = q.narrow(1, start, t)?.contiguous()?.reshape((
                c.n_kv_head,
                group * t,
                c.head_dim,
            ))?;
            let att = qi.matmul(&kk.t()?)?;
            let att = match &prep.masks[bi] {
                Some(m) => att.broadcast_add(m)?,
                None => att,
            };
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let o = att.matmul(&vv)?; // (kv, g*t, d)
            let o = o
                .reshape((c.n_head, t, c.head_dim))?
                .transpose(0, 1)?
                .reshape((t, c.n_head * c.head_dim))?;
            outs.push(o);
        }
        if outs.len() == 1 {
            Ok(outs.swap_remove(0))
        } else {
            Tensor::cat(&outs, 0)
        }
    }
}

/// The additive mask for `t` new queries at positions `p0..p0+t`, laid out as the attention
/// rows `(group * t, p0 + t)` (each query head group repeats the `t` rows). `None` when `t == 1`:
/// a single new token may see the whole cache.
fn causal_mask(
    t: usize,
    p0: usize,
    group: usize,
    dev: &Device,
) -> candle_core::Result<Option<Tensor>> {
    if t == 1 {
        return Ok(None);
    }
    let len = p0 + t;
    let mut m = vec![0f32; group * t * len];
    for g in 0..group {
        for r in 0..t {
            let row = &mut m[(g * t + r) * len..(g * t + r + 1) * len];
            for v in row.iter_mut().skip(p0 + r + 1) {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Some(Tensor::from_vec(m, (1, group * t, len), dev)?))
}

fn rope_tables(cfg: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let half = cfg.head_dim / 2;
    let max = cfg.context_length;
    let inv: Vec<f32> =
        (0..half).map(|i| 1.0 / cfg.rope_base.powf(2.0 * i as f32 / cfg.head_dim as f32)).collect();
    let mut cos = Vec::with_capacity(max * half);
    let mut sin = Vec::with_capacity(max * half);
    for p in 0..max {
        for f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

/// Shape check helper kept for the tests: a `(B, vocab)` logits tensor as rows.
pub fn logits_rows(logits: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    logits.to_dtype(DType::F32)?.to_vec2::<f32>()
}
