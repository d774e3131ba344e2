//! The llama-family forward pass (llama; qwen2 with its attention biases; qwen3 with per-head
//! Q/K norms; gemma3 with Q/K norms, post-norms, a GELU FFN, scaled embeddings and sliding-window
//! attention on its local layers) on CPU kernels or candle ops, built for batched generation.
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
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::kernels::{self, gemm::F16Weights, pool::Pool, q8::Q8Weights};
use super::tokenizer::GgufTokenizer;
use super::InferError;

mod host_attention;

/// Which member of the family: decides the RoPE layout, the attention biases and norms, and
/// the block's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama (and SmolLM, Mistral-style GGUFs): interleaved RoPE pairs, no biases.
    Llama,
    /// Qwen2: RoPE on the two halves of a head, biases on Q, K and V.
    Qwen2,
    /// Qwen3: as Qwen2 without biases, with an RMS norm over each Q and K head before RoPE.
    Qwen3,
    /// Gemma 3: Q/K head norms, norms after attention and after the FFN (before each residual
    /// add), GELU (tanh) gate, embeddings scaled by √hidden, sliding-window attention with its
    /// own RoPE base on the local layers.
    Gemma3,
}

impl Arch {
    /// RoPE on the two halves of each head (NeoX layout) rather than on interleaved pairs.
    pub fn rope_halves(self) -> bool {
        !matches!(self, Arch::Llama)
    }

    /// The GGUF `general.architecture` name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// The FFN's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Silu,
    /// GELU, tanh approximation.
    GeluTanh,
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
    /// An RMS norm over each Q and K head (`attn_q_norm`, `attn_k_norm`) before RoPE.
    pub qk_norm: bool,
    /// Norms of the attention and FFN outputs before their residual adds
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    pub act: Act,
    /// The token embeddings are multiplied by this (gemma3: √hidden).
    pub embed_scale: Option<f32>,
    /// Queries are multiplied by this before the scores (1/√head_dim unless the family says
    /// otherwise).
    pub attn_scale: f32,
    /// Sliding-window attention: a query at position p sees keys at positions > p − window, on
    /// the layers where [`Self::swa_layers`] is true.
    pub sliding_window: Option<usize>,
    /// Per layer: whether it is a local (sliding-window) layer. Empty without a window.
    pub swa_layers: Vec<bool>,
    /// The RoPE base of the local layers.
    pub rope_base_swa: f32,
    /// `cap · tanh(logits / cap)` on the output (gemma's final soft-capping), when set.
    pub logit_softcap: Option<f32>,
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
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            other => {
                return Err(format!(
                    "architecture `{other}` is not supported (llama, qwen2, qwen3, gemma3)"
                ))
            }
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
        let key_length = md_usize(md, &format!("{arch_name}.attention.key_length"));
        if n_head == 0
            || n_kv_head == 0
            || n_head % n_kv_head != 0
            || (key_length.is_none() && hidden % n_head != 0)
        {
            return Err(format!(
                "inconsistent head counts: {n_head} heads, {n_kv_head} KV heads, hidden {hidden}"
            ));
        }
        let head_dim = key_length.unwrap_or(hidden / n_head);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(format!("head dimension {head_dim} is zero or odd"));
        }
        if let Some(v) = md_usize(md, &format!("{arch_name}.attention.value_length")) {
            if v != head_dim {
                return Err(format!("value length {v} differs from key length {head_dim}"));
            }
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
        let gemma = arch == Arch::Gemma3;
        // Gemma 3 (as llama.cpp reads it): a window makes every sixth layer global (or the
        // pattern the file gives), the others local with RoPE base 10000 unless the file says.
        let sliding_window = if gemma {
            md_usize(md, &format!("{arch_name}.attention.sliding_window")).filter(|&w| w > 0)
        } else {
            None
        };
        let swa_layers = match sliding_window {
            None => Vec::new(),
            Some(_) => {
                let key = format!("{arch_name}.attention.sliding_window_pattern");
                match md.get(&key) {
                    Some(Value::Array(flags)) => {
                        let flags: Vec<bool> = flags
                            .iter()
                            .map(|v| matches!(v, Value::Bool(true)))
                            .chain(std::iter::repeat(false))
                            .take(n_layer)
                            .collect();
                        flags
                    }
                    _ => {
                        let n = md_usize(md, &key).unwrap_or(6);
                        (0..n_layer).map(|l| n == 0 || l % n < n - 1).collect()
                    }
                }
            }
        };
        // llama.cpp's rule: the 27B model (62 layers) scales queries by hidden / heads.
        let attn_scale = if gemma && n_layer == 62 {
            1.0 / ((hidden / n_head) as f32).sqrt()
        } else {
            1.0 / (head_dim as f32).sqrt()
        };
        if gemma
            && md_f64(md, &format!("{arch_name}.rope.scaling.factor")).is_some_and(|f| f != 1.0)
        {
            return Err(
                "gemma3 with RoPE scaling (the 4B model and larger) is not supported".into()
            );
        }
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
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            post_norms: gemma,
            act: if gemma { Act::GeluTanh } else { Act::Silu },
            embed_scale: gemma.then(|| (hidden as f32).sqrt()),
            attn_scale,
            sliding_window,
            swa_layers,
            rope_base_swa: md_f64(md, &format!("{arch_name}.rope.freq_base_swa"))
                .unwrap_or(10_000.0) as f32,
            logit_softcap: md_f64(md, &format!("{arch_name}.final_logit_softcapping"))
                .filter(|&c| c > 0.0)
                .map(|c| c as f32),
        })
    }
}

impl LlamaConfig {
    /// The sliding window of layer `li`, if it is a local layer.
    pub fn window(&self, li: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.swa_layers.get(li).copied().unwrap_or(false))
    }
}

/// A linear layer: its weight in the forms the device's kernels read, and an optional bias.
#[derive(Debug, Clone)]
enum Linear {
    /// On the CPU: 8-bit blocks for generated rows (decode) and, for the layers prompt rows go
    /// through, f16 panels for the prefill GEMM.
    Cpu { q8: Arc<Q8Weights>, dense: Option<Arc<F16Weights>>, bias: Option<Vec<f32>> },
    /// On other devices: the weight as shipped, through candle.
    Device { w: QMatMul, b: Option<Tensor> },
}

impl Linear {
    /// Output features.
    fn n(&self) -> candle_core::Result<usize> {
        match self {
            Linear::Cpu { q8, .. } => Ok(q8.n()),
            Linear::Device { w, .. } => match w {
                QMatMul::QTensor(t) => Ok(t.shape().dims2()?.0),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.dim(0),
            },
        }
    }

    /// `x (rows, k)` as a tensor; rows split by `prompt` as in [`Self::host`] on the CPU.
    fn apply(&self, x: &Tensor, prompt: &[bool], k: &Kernels) -> candle_core::Result<Tensor> {
        match self {
            Linear::Device { w, b } => {
                let y = w.forward(&x.contiguous()?)?;
                match b {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            Linear::Cpu { .. } => {
                let rows = x.dim(0)?;
                let n = self.n()?;
                let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let mut out = vec![0f32; rows * n];
                self.host(&xs, prompt, &mut out, false, k)?;
                Tensor::from_vec(out, (rows, n), x.device())
            }
        }
    }

    /// `out (m, n) [+]= x (m, k) · wᵀ + b` on CPU buffers: rows with `prompt[r]` through the
    /// f16 GEMM, the others through the 8-bit matmul. Which path a row takes depends only on
    /// whether it is a prompt token, never on what else is in the step, and each path computes
    /// a row from that row alone, so a sequence's result does not depend on its batch.
    fn host(
        &self,
        x: &[f32],
        prompt: &[bool],
        out: &mut [f32],
        accumulate: bool,
        k: &Kernels,
    ) -> candle_core::Result<()> {
        let Linear::Cpu { q8, dense, bias } = self else {
            candle_core::bail!("internal error: a device layer on the CPU path")
        };
        let m = prompt.len();
        let n = q8.n();
        let dense = dense.as_deref().filter(|_| k.prefill_gemm);
        let n_prompt = if dense.is_some() { prompt.iter().filter(|&&p| p).count() } else { 0 };
        if n_prompt > 0 && n_prompt < m {
            // A mixed step: each kind of row on its own path, then back in place.
            let kin = q8.k();
            for kind in [true, false] {
                let idx: Vec<usize> = (0..m).filter(|&r| prompt[r] == kind).collect();
                let xs: Vec<f32> =
                    idx.iter().flat_map(|&r| &x[r * kin..(r + 1) * kin]).copied().collect();
                let mut ys = vec![0f32; idx.len() * n];
                self.host(&xs, &vec![kind; idx.len()], &mut ys, false, k)?;
                for (j, &r) in idx.iter().enumerate() {
                    let (dst, src) = (&mut out[r * n..(r + 1) * n], &ys[j * n..(j + 1) * n]);
                    if accumulate {
                        dst.iter_mut().zip(src).for_each(|(o, y)| *o += y);
                    } else {
                        dst.copy_from_slice(src);
                    }
                }
            }
            return Ok(());
        }
        match dense {
            Some(d) if n_prompt == m => {
                kernels::gemm::matmul(x, m, d, out, accumulate, k.level, k.pool)
            }
            _ => kernels::q8::matmul(x, m, q8, out, accumulate, k.level, k.pool),
        }
        if let Some(b) = bias {
            for row in out.chunks_exact_mut(n) {
                row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
        }
        Ok(())
    }
}

/// The CPU kernels' settings for one step.
struct Kernels<'a> {
    level: kernels::Level,
    pool: &'a Pool,
    /// Prompt rows through the f16 GEMM (else everything through the quantized path).
    prefill_gemm: bool,
}

#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Tensor,
    attn_norm_host: Vec<f32>,
    ffn_norm_host: Vec<f32>,
    /// Q, K and V.
    qkv: Projections,
    wo: Linear,
    ffn_norm: Tensor,
    /// Gate and up.
    gate_up: Projections,
    w_down: Linear,
    /// Per-head norms of Q and K (qwen3, gemma3).
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    /// Norms of the attention and FFN outputs (gemma3).
    post_attn_norm: Option<Norm>,
    post_ffn_norm: Option<Norm>,
}

/// An RMS norm's weight, as a tensor and as a plain buffer.
#[derive(Debug, Clone)]
struct Norm {
    t: Tensor,
    host: Vec<f32>,
}

/// RoPE tables for one base: `(context_length, head_dim / 2)`, as tensors and plain buffers.
#[derive(Debug)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
    cos_host: Vec<f32>,
    sin_host: Vec<f32>,
}

impl Rope {
    fn new(cfg: &LlamaConfig, base: f32, device: &Device) -> candle_core::Result<Self> {
        let (cos_host, sin_host) = rope_tables(cfg, base);
        let half = cfg.head_dim / 2;
        Ok(Self {
            cos: Tensor::from_slice(&cos_host, (cfg.context_length, half), device)?,
            sin: Tensor::from_slice(&sin_host, (cfg.context_length, half), device)?,
            cos_host,
            sin_host,
        })
    }
}

/// In place: an RMS norm over each `w.len()`-wide piece of `x` (the heads of a Q or K row).
fn rms_norm_heads(x: &mut [f32], w: &[f32], eps: f32) {
    for head in x.chunks_exact_mut(w.len()) {
        let ms = head.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        head.iter_mut().zip(w).for_each(|(v, w)| *v *= inv * w);
    }
}

/// GELU, tanh approximation.
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
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
    fn forward(
        &self,
        x: &Tensor,
        prompt: &[bool],
        k: &Kernels,
    ) -> candle_core::Result<Vec<Tensor>> {
        match self {
            Self::Separate(ls) => ls.iter().map(|l| l.apply(x, prompt, k)).collect(),
            Self::Fused { w, sizes } => {
                let y = w.apply(x, prompt, k)?;
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
    out_norm_host: Vec<f32>,
    output: Linear,
    /// RoPE tables of the global layers (every layer without a sliding window).
    rope: Rope,
    /// RoPE tables of the local (sliding-window) layers, when their base differs.
    rope_swa: Option<Rope>,
    /// Attention over plain CPU buffers (the default on CPU) rather than tensor ops.
    host_attention: bool,
    /// Prompt rows run the f16 GEMM (CPU).
    prefill_gemm: bool,
    /// Reused activation buffers of the CPU forward pass.
    scratch: std::sync::Mutex<Scratch>,
}

/// What a forward pass gives per sequence: logits, or the final hidden state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Logits,
    Hidden,
}

/// Activation buffers of the CPU forward pass, kept between steps (fresh multi-megabyte
/// allocations per layer cost page faults and zeroing).
#[derive(Debug, Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    /// A layer's output before its post-norm (gemma3).
    post: Vec<f32>,
}

/// The keys and values a sequence has seen, one preallocated `(n_kv_head, capacity, head_dim)`
/// buffer per layer, filled from the front.
#[derive(Debug)]
pub struct KvCache {
    store: KvStore,
    len: usize,
    capacity: usize,
    /// Positions before this are the prompt (their rows take the prefill GEMM on CPU); set by
    /// [`KvCache::set_prompt_len`], else to the end of the first step's tokens.
    prompt_len: Option<usize>,
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
    /// Declares the first `n` positions the prompt, for a prompt fed in several steps (chunked
    /// prefill). Without it, the first step's tokens are the prompt.
    pub fn set_prompt_len(&mut self, n: usize) {
        self.prompt_len = Some(n);
    }
    /// Forgets every position from `n` on (a shared prompt scored with one completion after
    /// another: each completion's keys are overwritten by the next one's).
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }
    /// Bytes of K/V this cache holds.
    pub fn bytes(&self) -> usize {
        match &self.store {
            KvStore::Host(kv) => kv.bytes(),
            KvStore::Tensors { k, v } => {
                k.iter().chain(v).map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
            }
        }
    }
}

fn model_err(path: &Path, message: impl std::fmt::Display) -> InferError {
    InferError::Model { path: path.to_path_buf(), message: message.to_string() }
}

/// How [`LlamaModel::load`] readies the weights of linear layers for the device.
struct WeightPrep {
    cpu: bool,
    /// On CPU, also keep f16 panels for the prefill GEMM.
    dense: bool,
}

impl WeightPrep {
    /// One weight as stored in the file, with its bias.
    fn linear(&self, t: QTensor, b: Option<Tensor>) -> candle_core::Result<Linear> {
        if !self.cpu {
            return Ok(Linear::Device { w: QMatMul::from_qtensor(t)?, b });
        }
        let f = t.dequantize(&Device::Cpu)?;
        self.cpu_linear(&f, b)
    }

    /// A CPU layer from f32 weights `(n, k)`.
    fn cpu_linear(&self, f: &Tensor, b: Option<Tensor>) -> candle_core::Result<Linear> {
        let (n, k) = f.dims2()?;
        let v = f.flatten_all()?.to_vec1::<f32>()?;
        let dense = self.dense.then(|| Arc::new(F16Weights::from_rows(&v, n, k)));
        let q8 = Arc::new(Q8Weights::from_rows(&v, n, k));
        let bias = b.map(|b| b.flatten_all()?.to_vec1::<f32>()).transpose()?;
        Ok(Linear::Cpu { q8, dense, bias })
    }

    /// Weights (and biases) stacked by rows into one CPU layer: one pass over the input for
    /// several projections of it (Q, K, V; gate, up).
    fn stacked(&self, parts: Vec<(QTensor, Option<Tensor>)>) -> candle_core::Result<Linear> {
        let ws = parts
            .iter()
            .map(|(w, _)| w.dequantize(&Device::Cpu))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let w = Tensor::cat(&ws, 0)?;
        let b = if parts.iter().any(|(_, b)| b.is_some()) {
            let bs = parts
                .iter()
                .map(|(w, b)| match b {
                    Some(b) => Ok(b.to_device(&Device::Cpu)?),
                    None => Tensor::zeros(w.shape().dims()[0], DType::F32, &Device::Cpu),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Some(Tensor::cat(&bs, 0)?)
        } else {
            None
        };
        self.cpu_linear(&w, b)
    }
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
        // On CPU every layer also gets f16 panels, for the prefill GEMM.
        let prep = WeightPrep { cpu, dense: true };
        // The output layer only sees each sequence's last row: no GEMM copy.
        let out_prep = WeightPrep { cpu, dense: false };
        let dense = |t: QTensor| -> Result<Tensor, InferError> {
            t.dequantize(device).map_err(|e| model_err(path, e))
        };
        let (h, hd, nh, nkv) = (cfg.hidden, cfg.head_dim, cfg.n_head, cfg.n_kv_head);
        let qwen = cfg.arch == Arch::Qwen2;
        let norm = |q: QTensor| -> Result<Norm, InferError> {
            let t = dense(q)?;
            let host = t.to_vec1::<f32>().map_err(|e| model_err(path, e))?;
            Ok(Norm { t, host })
        };
        let has = |name: &str| content.tensor_infos.contains_key(name);
        let tok_embd_q = read("token_embd.weight", &[cfg.vocab_size, h])?;
        let out_name = if has("output.weight") { "output.weight" } else { "token_embd.weight" };
        let output = out_prep
            .linear(read(out_name, &[cfg.vocab_size, h])?, None)
            .map_err(|e| model_err(path, e))?;
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
                            .map(|(w, b)| prep.linear(w, b).map_err(|e| model_err(path, e)))
                            .collect::<Result<Vec<_>, _>>()
                            .map(Projections::Separate);
                    }
                    let sizes: Vec<usize> =
                        parts.iter().map(|(w, _)| w.shape().dims()[0]).collect();
                    let w = prep.stacked(parts).map_err(|e| model_err(path, e))?;
                    Ok(Projections::Fused { w, sizes })
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
            let wo = prep.linear(w, b).map_err(|e| model_err(path, e))?;
            let (w, b) = raw("ffn_down", h, cfg.ffn, false)?;
            let w_down = prep.linear(w, b).map_err(|e| model_err(path, e))?;
            let attn_norm = dense(read(&format!("{p}.attn_norm.weight"), &[h])?)?;
            let ffn_norm = dense(read(&format!("{p}.ffn_norm.weight"), &[h])?)?;
            let host = |t: &Tensor| -> Result<Vec<f32>, InferError> {
                t.to_vec1::<f32>().map_err(|e| model_err(path, e))
            };
            let (attn_norm_host, ffn_norm_host) = (host(&attn_norm)?, host(&ffn_norm)?);
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    Some(norm(read(&format!("{p}.attn_q_norm.weight"), &[hd])?)?),
                    Some(norm(read(&format!("{p}.attn_k_norm.weight"), &[hd])?)?),
                )
            } else {
                (None, None)
            };
            let (post_attn_norm, post_ffn_norm) = if cfg.post_norms {
                (
                    Some(norm(read(&format!("{p}.post_attention_norm.weight"), &[h])?)?),
                    Some(norm(read(&format!("{p}.post_ffw_norm.weight"), &[h])?)?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                q_norm,
                k_norm,
                post_attn_norm,
                post_ffn_norm,
                attn_norm,
                attn_norm_host,
                ffn_norm_host,
                qkv,
                wo,
                ffn_norm,
                gate_up,
                w_down,
            });
        }
        let out_norm = dense(read("output_norm.weight", &[h])?)?;
        let rope = Rope::new(&cfg, cfg.rope_base, device).map_err(|e| model_err(path, e))?;
        let rope_swa = if cfg.swa_layers.iter().any(|&l| l) && cfg.rope_base_swa != cfg.rope_base {
            Some(Rope::new(&cfg, cfg.rope_base_swa, device).map_err(|e| model_err(path, e))?)
        } else {
            None
        };
        let model = LlamaModel {
            config: cfg,
            device: device.clone(),
            tok_embd,
            layers,
            out_norm_host: out_norm.to_vec1::<f32>().map_err(|e| model_err(path, e))?,
            out_norm,
            output,
            rope,
            rope_swa,
            host_attention: device.is_cpu(),
            prefill_gemm: true,
            scratch: Default::default(),
        };
        Ok(LoadedGguf { model, tokenizer, path: path.to_path_buf() })
    }

    /// Uses the tensor-op attention (the GPU path) even on the CPU; for tests that check both
    /// paths agree. Caches made before the switch do not fit the model after it.
    #[doc(hidden)]
    pub fn use_tensor_attention(&mut self) {
        self.host_attention = false;
    }

    /// Runs every step through the quantized matmuls, as before the prefill GEMM existed; for
    /// tests that compare the two paths.
    #[doc(hidden)]
    pub fn use_quantized_prefill(&mut self) {
        self.prefill_gemm = false;
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
            return Ok(KvCache { store, len: 0, capacity, prompt_len: None });
        }
        let shape = (c.n_kv_head, capacity, c.head_dim);
        let mut k = Vec::with_capacity(c.n_layer);
        let mut v = Vec::with_capacity(c.n_layer);
        for _ in 0..c.n_layer {
            k.push(Tensor::zeros(shape, DType::F32, &self.device)?);
            v.push(Tensor::zeros(shape, DType::F32, &self.device)?);
        }
        Ok(KvCache { store: KvStore::Tensors { k, v }, len: 0, capacity, prompt_len: None })
    }

    /// Runs one step for a batch of sequences: each gets its new `tokens` appended to its cache,
    /// and the result holds, per sequence, the logits after its last new token: `(B, vocab)`.
    pub fn forward(&self, batch: &mut [(&[u32], &mut KvCache)]) -> candle_core::Result<Tensor> {
        self.forward_to(batch, Out::Logits)
    }

    /// [`Self::forward`], giving per sequence the final hidden state after its last new token
    /// (after the output norm, before the output layer): `(B, hidden)`, f32. What a scalar head
    /// reads (the LM reward model's scoring).
    pub fn forward_hidden(
        &self,
        batch: &mut [(&[u32], &mut KvCache)],
    ) -> candle_core::Result<Tensor> {
        self.forward_to(batch, Out::Hidden)
    }

    fn forward_to(
        &self,
        batch: &mut [(&[u32], &mut KvCache)],
        out: Out,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut prompt = Vec::new();
        let mut spans = Vec::with_capacity(batch.len());
        for (toks, cache) in batch.iter_mut() {
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
            let prompt_len = *cache.prompt_len.get_or_insert(cache.len + toks.len());
            spans.push((tokens.len(), toks.len(), cache.len));
            tokens.extend_from_slice(toks);
            positions.extend((cache.len..cache.len + toks.len()).map(|p| p as u32));
            prompt.extend((cache.len..cache.len + toks.len()).map(|p| p < prompt_len));
        }
        let k = Kernels {
            level: kernels::level(),
            pool: Pool::global(),
            prefill_gemm: self.prefill_gemm,
        };
        let logits = if self.host_attention {
            self.forward_host(tokens, &positions, &spans, &prompt, batch, &k, out)?
        } else {
            self.forward_tensors(tokens, &positions, &spans, &prompt, batch, &k, out)?
        };
        for (bi, &(_, t, _)) in spans.iter().enumerate() {
            batch[bi].1.len += t;
        }
        Ok(logits)
    }

    /// The CPU forward pass over plain buffers: the kernels of [`super::kernels`] on their
    /// pool, candle only for the quantized matmuls of generated rows and the output layer.
    #[allow(clippy::too_many_arguments)]
    fn forward_host(
        &self,
        tokens: Vec<u32>,
        positions: &[u32],
        spans: &[(usize, usize, usize)],
        prompt: &[bool],
        batch: &mut [(&[u32], &mut KvCache)],
        k: &Kernels,
        out: Out,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let n = tokens.len();
        let (hd, nh, nkv, d) = (c.hidden, c.n_head, c.n_kv_head, c.head_dim);
        let eps = c.rms_eps as f32;
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let sc = &mut *guard;
        let ids = Tensor::from_vec(tokens, n, &self.device)?;
        sc.x = self.tok_embd.embedding(&ids)?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(s) = c.embed_scale {
            sc.x.iter_mut().for_each(|v| *v *= s);
        }
        sc.h.resize(n * hd, 0.0);
        sc.qkv.resize(n * (nh + 2 * nkv) * d, 0.0);
        sc.attn.resize(n * nh * d, 0.0);
        sc.gate_up.resize(n * 2 * c.ffn, 0.0);
        sc.act.resize(n * c.ffn, 0.0);
        if c.post_norms {
            sc.post.resize(n * hd, 0.0);
        }
        let mut caches = batch
            .iter_mut()
            .map(|(_, cache)| match &mut cache.store {
                KvStore::Host(kv) => Ok((kv, cache.capacity)),
                KvStore::Tensors { .. } => {
                    candle_core::bail!("a device cache was given to the CPU model")
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let width = (nh + 2 * nkv) * d;
        for (li, layer) in self.layers.iter().enumerate() {
            let (Projections::Fused { w: qkv, .. }, Projections::Fused { w: gate_up, .. }) =
                (&layer.qkv, &layer.gate_up)
            else {
                candle_core::bail!("internal error: CPU layers have fused projections")
            };
            kernels::ops::rms_norm(&sc.x, &layer.attn_norm_host, eps, &mut sc.h, k.level, k.pool);
            qkv.host(&sc.h, prompt, &mut sc.qkv, false, k)?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                for row in sc.qkv.chunks_exact_mut(width) {
                    let (q, rest) = row.split_at_mut(nh * d);
                    rms_norm_heads(q, &qn.host, eps);
                    rms_norm_heads(&mut rest[..nkv * d], &kn.host, eps);
                }
            }
            let rope = self.rope_of(li);
            let step = host_attention::Step {
                cfg: c,
                layer: li,
                positions,
                spans,
                cos: &rope.cos_host,
                sin: &rope.sin_host,
                window: c.window(li),
                level: k.level,
                pool: k.pool,
            };
            host_attention::attention(&step, &mut sc.qkv, &mut caches, &mut sc.attn);
            match &layer.post_attn_norm {
                Some(pn) => {
                    layer.wo.host(&sc.attn, prompt, &mut sc.post, false, k)?;
                    kernels::ops::rms_norm(&sc.post, &pn.host, eps, &mut sc.h, k.level, k.pool);
                    sc.x.iter_mut().zip(&sc.h).for_each(|(x, h)| *x += h);
                }
                None => layer.wo.host(&sc.attn, prompt, &mut sc.x, true, k)?,
            }
            kernels::ops::rms_norm(&sc.x, &layer.ffn_norm_host, eps, &mut sc.h, k.level, k.pool);
            gate_up.host(&sc.h, prompt, &mut sc.gate_up, false, k)?;
            match c.act {
                Act::Silu => {
                    kernels::ops::silu_mul(&sc.gate_up, c.ffn, &mut sc.act, k.level, k.pool)
                }
                Act::GeluTanh => {
                    for (gu, out) in
                        sc.gate_up.chunks_exact(2 * c.ffn).zip(sc.act.chunks_exact_mut(c.ffn))
                    {
                        let (g, u) = gu.split_at(c.ffn);
                        for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
                            *o = gelu_tanh(*g) * u;
                        }
                    }
                }
            }
            match &layer.post_ffn_norm {
                Some(pn) => {
                    layer.w_down.host(&sc.act, prompt, &mut sc.post, false, k)?;
                    kernels::ops::rms_norm(&sc.post, &pn.host, eps, &mut sc.h, k.level, k.pool);
                    sc.x.iter_mut().zip(&sc.h).for_each(|(x, h)| *x += h);
                }
                None => layer.w_down.host(&sc.act, prompt, &mut sc.x, true, k)?,
            }
        }
        let last: Vec<f32> = spans
            .iter()
            .flat_map(|&(s, t, _)| &sc.x[(s + t - 1) * hd..(s + t) * hd])
            .copied()
            .collect();
        let mut normed = vec![0f32; last.len()];
        kernels::ops::rms_norm(&last, &self.out_norm_host, eps, &mut normed, k.level, k.pool);
        if out == Out::Hidden {
            return Tensor::from_vec(normed, (spans.len(), hd), &self.device);
        }
        // Every sequence's last row through the 8-bit path, prompt or not.
        let decode_rows = vec![false; spans.len()];
        let mut logits = vec![0f32; spans.len() * c.vocab_size];
        self.output.host(&normed, &decode_rows, &mut logits, false, k)?;
        if let Some(cap) = c.logit_softcap {
            logits.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
        Tensor::from_vec(logits, (spans.len(), c.vocab_size), &self.device)
    }

    /// The RoPE tables of layer `li`.
    fn rope_of(&self, li: usize) -> &Rope {
        match &self.rope_swa {
            Some(r) if self.config.window(li).is_some() => r,
            _ => &self.rope,
        }
    }

    /// The forward pass with tensor ops (devices other than the CPU; on the CPU, for tests).
    #[allow(clippy::too_many_arguments)]
    fn forward_tensors(
        &self,
        tokens: Vec<u32>,
        positions: &[u32],
        spans: &[(usize, usize, usize)],
        prompt: &[bool],
        batch: &mut [(&[u32], &mut KvCache)],
        k: &Kernels,
        out: Out,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let dev = &self.device;
        let n = tokens.len();
        let ids = Tensor::from_vec(tokens, n, dev)?;
        let mut x = self.tok_embd.embedding(&ids)?;
        if let Some(s) = c.embed_scale {
            x = (x * s as f64)?;
        }
        let eps = c.rms_eps as f32;
        // RoPE rows and causal masks, shared by all layers (one set per kind of layer).
        let prep = self.tensor_prep(positions, spans, None, &self.rope)?;
        let prep_swa = match c.sliding_window {
            Some(w) if c.swa_layers.iter().any(|&l| l) => Some(self.tensor_prep(
                positions,
                spans,
                Some(w),
                self.rope_swa.as_ref().unwrap_or(&self.rope),
            )?),
            _ => None,
        };
        let post = |y: Tensor, norm: &Option<Norm>| -> candle_core::Result<Tensor> {
            match norm {
                Some(n) => candle_nn::ops::rms_norm(&y, &n.t, eps),
                None => Ok(y),
            }
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let mut qkv = layer.qkv.forward(&h, prompt, k)?.into_iter();
            let (Some(mut q), Some(mut kk), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
                candle_core::bail!("internal error: the QKV projection gave fewer than 3 parts")
            };
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                let d = c.head_dim;
                q = candle_nn::ops::rms_norm(&q.reshape((n * c.n_head, d))?, &qn.t, eps)?
                    .reshape((n, c.n_head * d))?;
                kk = candle_nn::ops::rms_norm(&kk.reshape((n * c.n_kv_head, d))?, &kn.t, eps)?
                    .reshape((n, c.n_kv_head * d))?;
            }
            let p = match (&prep_swa, c.window(li)) {
                (Some(p), Some(_)) => p,
                _ => &prep,
            };
            let attn = self.tensor_attention(li, &q, &kk, &v, p, spans, batch)?;
            x = (x + post(layer.wo.apply(&attn, prompt, k)?, &layer.post_attn_norm)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let mut gate_up = layer.gate_up.forward(&h, prompt, k)?.into_iter();
            let (Some(gate), Some(up)) = (gate_up.next(), gate_up.next()) else {
                candle_core::bail!("internal error: the gate/up projection gave fewer than 2 parts")
            };
            let gate = match c.act {
                Act::Silu => candle_nn::ops::silu(&gate)?,
                Act::GeluTanh => gate.gelu()?,
            };
            let down = layer.w_down.apply(&(gate * up)?, prompt, k)?;
            x = (x + post(down, &layer.post_ffn_norm)?)?;
        }
        let last: Vec<u32> = spans.iter().map(|&(s, t, _)| (s + t - 1) as u32).collect();
        let last = Tensor::from_vec(last, spans.len(), dev)?;
        let x = x.index_select(&last, 0)?;
        let x = candle_nn::ops::rms_norm(&x, &self.out_norm, eps)?;
        if out == Out::Hidden {
            return x.to_dtype(DType::F32);
        }
        let decode_rows = vec![false; spans.len()];
        let logits = self.output.apply(&x, &decode_rows, k)?.to_dtype(DType::F32)?;
        match c.logit_softcap {
            Some(cap) => (logits / cap as f64)?.tanh()? * cap as f64,
            None => Ok(logits),
        }
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
        window: Option<usize>,
        rope: &Rope,
    ) -> candle_core::Result<TensorPrep> {
        let dev = &self.device;
        let group = self.config.n_head / self.config.n_kv_head;
        let pos = Tensor::from_slice(positions, positions.len(), dev)?;
        Ok(TensorPrep {
            cos: rope.cos.index_select(&pos, 0)?.contiguous()?,
            sin: rope.sin.index_select(&pos, 0)?.contiguous()?,
            masks: spans
                .iter()
                .map(|&(_, t, p0)| causal_mask(t, p0, group, window, dev))
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
        let scale = c.attn_scale as f64;
        // (N, heads*d) -> (1, heads, N, d)
        let q =
            q.reshape((n, c.n_head, c.head_dim))?.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
        let k =
            k.reshape((n, c.n_kv_head, c.head_dim))?.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
        let v = v.reshape((n, c.n_kv_head, c.head_dim))?.transpose(0, 1)?;
        let (q, k) = if c.arch.rope_halves() {
            (
                candle_nn::rotary_emb::rope(&q, &prep.cos, &prep.sin)?,
                candle_nn::rotary_emb::rope(&k, &prep.cos, &prep.sin)?,
            )
        } else {
            (
                candle_nn::rotary_emb::rope_i(&q, &prep.cos, &prep.sin)?,
                candle_nn::rotary_emb::rope_i(&k, &prep.cos, &prep.sin)?,
            )
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
/// rows `(group * t, p0 + t)` (each query head group repeats the `t` rows); with a sliding
/// `window`, a query at p also never sees keys at p − window or before. `None` when `t == 1`
/// and no window cuts the cache: a single new token may see all of it.
fn causal_mask(
    t: usize,
    p0: usize,
    group: usize,
    window: Option<usize>,
    dev: &Device,
) -> candle_core::Result<Option<Tensor>> {
    let len = p0 + t;
    if t == 1 && window.is_none_or(|w| len <= w) {
        return Ok(None);
    }
    let mut m = vec![0f32; group * t * len];
    for g in 0..group {
        for r in 0..t {
            let row = &mut m[(g * t + r) * len..(g * t + r + 1) * len];
            for v in row.iter_mut().skip(p0 + r + 1) {
                *v = f32::NEG_INFINITY;
            }
            if let Some(w) = window {
                // Keys at positions ≤ p − w are outside the window of the query at p.
                let first = (p0 + r + 1).saturating_sub(w);
                row[..first].iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
            }
        }
    }
    Ok(Some(Tensor::from_vec(m, (1, group * t, len), dev)?))
}

fn rope_tables(cfg: &LlamaConfig, base: f32) -> (Vec<f32>, Vec<f32>) {
    let half = cfg.head_dim / 2;
    let max = cfg.context_length;
    let inv: Vec<f32> =
        (0..half).map(|i| 1.0 / base.powf(2.0 * i as f32 / cfg.head_dim as f32)).collect();
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
