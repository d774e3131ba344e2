//! The trainable llama-family forward pass, read top to bottom: load options ([`Mode`],
//! [`LoadOptions`]), the weights ([`TrainableLlama::load`]), the forward pass over a
//! right-padded batch ([`TrainableLlama::hidden_states`]), and what training needs from it
//! (completion log-probabilities, logits, the trainable tensors, merged weights for export).
//!
//! A batch is `B` sequences right-padded to the longest, `T`; every sequence starts at position
//! 0, so a causal mask alone keeps real tokens from seeing padding (a pad only ever sees what
//! precedes it, and nothing reads a pad's output). Activations are `(B·T, hidden)` rows between
//! attention blocks; attention groups the query heads that share a KV head into the rows of one
//! matmul, as the engine does, so K and V are never copied per head.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::backprop::GradStore;
use candle_core::quantized::gguf_file::Content;
use candle_core::{CpuStorage, CudaStorage, DType, Device, Layout, Shape, Tensor, Var, D};
use serde::{Deserialize, Serialize};

use super::attention;
use super::lora::{self, Lora, LoraConfig, Target};
use super::{io_err, LmError};
use crate::infer::llama::{Arch, LlamaConfig};
use crate::infer::tokenizer::GgufTokenizer;

/// What is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Mode {
    /// Nothing: inference and reference log-probabilities.
    Frozen,
    /// LoRA adapters on the chosen projections; the base weights stay frozen.
    Lora(LoraConfig),
    /// Every weight (embedding, norms, projections).
    Full,
}

/// Whether the backward recomputes each block's activations from its input (gradient
/// checkpointing) instead of keeping them from the forward pass: a fraction of the memory for
/// one more forward pass through the trained blocks. How a run computes, never what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpointing {
    Off,
    On,
    /// On for a batch whose kept activations ([`TrainableLlama::kept_activation_bytes`]) would
    /// exceed the model's activation budget ([`TrainableLlama::set_activation_budget`]), off
    /// otherwise: short batches stay fast and long ones fit.
    #[default]
    Auto,
}

impl std::str::FromStr for Checkpointing {
    type Err = String;

    fn from_str(s: &str) -> Result<Checkpointing, String> {
        match s {
            "off" => Ok(Checkpointing::Off),
            "on" => Ok(Checkpointing::On),
            "auto" => Ok(Checkpointing::Auto),
            other => Err(format!("`{other}` is not a checkpointing setting (auto, on, off)")),
        }
    }
}

impl std::fmt::Display for Checkpointing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Checkpointing::Off => "off",
            Checkpointing::On => "on",
            Checkpointing::Auto => "auto",
        })
    }
}

/// The activation budget [`Checkpointing::Auto`] starts from: on the CPU half the memory the
/// system has available when the model is loaded (Linux), else 8 GiB.
fn default_activation_budget(device: &Device) -> u64 {
    const FALLBACK: u64 = 8 << 30;
    if !device.is_cpu() {
        return FALLBACK;
    }
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    });
    available.map_or(FALLBACK, |kib| kib * 1024 / 2)
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Frozen => "frozen",
            Mode::Lora(_) => "lora",
            Mode::Full => "full",
        }
    }
}

/// How to load a model for training.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub mode: Mode,
    /// F32 (the CPU default), BF16 or F16 on a GPU, F64 for gradient checks.
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { mode: Mode::Lora(LoraConfig::default()), dtype: DType::F32 }
    }
}

/// A weight: a constant, or a variable the optimizer updates.
#[derive(Debug, Clone)]
enum Weight {
    Frozen(Tensor),
    Trainable(Var),
}

impl Weight {
    fn new(t: Tensor, trainable: bool) -> candle_core::Result<Weight> {
        Ok(if trainable { Weight::Trainable(Var::from_tensor(&t)?) } else { Weight::Frozen(t) })
    }

    fn tensor(&self) -> &Tensor {
        match self {
            Weight::Frozen(t) => t,
            Weight::Trainable(v) => v.as_tensor(),
        }
    }
}

/// `x · wᵀ` for a constant `w` (out × in): the backward gives `x` its gradient and skips the
/// weight's, which candle's matmul computes (and allocates) even for constants.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(w, FrozenMatmul)
}

struct FrozenMatmul;

impl FrozenMatmul {
    fn dims(l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, usize, Layout)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("frozen matmul: input has {k} columns, the weight {k2}");
        }
        Ok((m, n, k, l2.transpose(0, 1)?))
    }
}

impl candle_core::CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, n, k, wt) = Self::dims(l1, l2)?;
        Ok((s1.matmul(s2, (1, m, n, k), l1, &wt)?, Shape::from((m, n))))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (m, n, k, wt) = Self::dims(l1, l2)?;
        Ok((s1.matmul(s2, (1, m, n, k), l1, &wt)?, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), None))
    }
}

/// A projection: weight (out × in), optional bias, optional LoRA adapter.
#[derive(Debug, Clone)]
struct Proj {
    /// GGUF name without `.weight` (`blk.3.attn_q`).
    name: String,
    w: Weight,
    b: Option<Weight>,
    lora: Option<Lora>,
}

impl Proj {
    /// `x·Wᵀ (+ bias) (+ the adapter's term)`; with `fused`, a frozen weight and its adapter
    /// run as one op where [`lora::fuses`] allows.
    fn forward(&self, x: &Tensor, adapters: bool, fused: bool) -> candle_core::Result<Tensor> {
        let lora = self.lora.as_ref().filter(|_| adapters);
        let mut y = match (&self.w, lora) {
            (Weight::Frozen(w), Some(l)) if fused && lora::fuses(x, w, l) => {
                lora::frozen_linear(x, w, l)?
            }
            (w, l) => {
                let y = match w {
                    Weight::Frozen(w) => frozen_matmul(x, w)?,
                    Weight::Trainable(w) => x.matmul(&w.as_tensor().t()?)?,
                };
                match l {
                    Some(l) => (y + l.forward(x)?)?,
                    None => y,
                }
            }
        };
        if let Some(b) = &self.b {
            y = y.broadcast_add(b.tensor())?;
        }
        Ok(y)
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: Weight,
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    ffn_norm: Weight,
    gate: Proj,
    up: Proj,
    down: Proj,
}

impl Block {
    fn projs(&self) -> [&Proj; 7] {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down]
    }

    /// Whether any of the block's tensors is trained (an adapter or a trainable weight).
    fn trains(&self) -> bool {
        let trainable = |w: &Weight| matches!(w, Weight::Trainable(_));
        trainable(&self.attn_norm)
            || trainable(&self.ffn_norm)
            || self
                .projs()
                .iter()
                .any(|p| p.lora.is_some() || trainable(&p.w) || p.b.as_ref().is_some_and(trainable))
    }
}

/// One sequence to score: `tokens[start..]` is the completion whose log-probability is wanted
/// (`1 <= start < tokens.len()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSpec {
    pub tokens: Vec<u32>,
    pub start: usize,
}

impl SeqSpec {
    pub fn new(prompt: &[u32], completion: &[u32]) -> SeqSpec {
        let mut tokens = prompt.to_vec();
        tokens.extend_from_slice(completion);
        SeqSpec { tokens, start: prompt.len() }
    }

    pub fn completion_len(&self) -> usize {
        self.tokens.len().saturating_sub(self.start)
    }
}

/// One row of a batch holding a prompt once and several completions after it: completion
/// `i` sees the prompt and itself, never another completion, and its positions continue from
/// the prompt's end. Scoring `K` completions of one prompt this way costs `P + ΣCᵢ` tokens
/// instead of `K·P + ΣCᵢ` (DPO's chosen and rejected, a node's candidates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub prompt: Vec<u32>,
    pub completions: Vec<Vec<u32>>,
}

/// A row as the forward pass sees it: tokens, their positions, their segments (0: the prompt,
/// `i + 1`: completion `i`).
#[derive(Debug, Clone)]
struct Row {
    tokens: Vec<u32>,
    positions: Vec<u32>,
    segments: Vec<u32>,
}

/// Per completion: (index of the row whose output predicts the token, the token).
type Targets = Vec<Vec<(usize, u32)>>;

impl Row {
    fn plain(tokens: &[u32]) -> Row {
        Row {
            tokens: tokens.to_vec(),
            positions: (0..tokens.len() as u32).collect(),
            segments: vec![0; tokens.len()],
        }
    }

    fn packed(p: &Packed) -> Result<(Row, Targets), LmError> {
        if p.prompt.is_empty()
            || p.completions.is_empty()
            || p.completions.iter().any(Vec::is_empty)
        {
            return Err(LmError::Invalid(
                "a scored sequence needs a prompt and at least one non-empty completion".into(),
            ));
        }
        let n = p.prompt.len();
        let mut row = Row::plain(&p.prompt);
        let mut targets = Vec::with_capacity(p.completions.len());
        for (i, c) in p.completions.iter().enumerate() {
            let mut list = Vec::with_capacity(c.len());
            for (j, &tok) in c.iter().enumerate() {
                let predictor = if j == 0 { n - 1 } else { row.tokens.len() - 1 };
                list.push((predictor, tok));
                row.tokens.push(tok);
                row.positions.push((n + j) as u32);
                row.segments.push(i as u32 + 1);
            }
            targets.push(list);
        }
        Ok((row, targets))
    }
}

/// RoPE on interleaved pairs `(x₀, x₁)` of each head (llama GGUFs), differentiable; `x` is
/// `(B, heads, T, d)`, `cos`/`sin` are `(B, 1, T, d/2, 1)` gathered at each token's position.
fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    let x = x.reshape((b, h, t, d / 2, 2))?;
    let x0 = x.narrow(D::Minus1, 0, 1)?;
    let x1 = x.narrow(D::Minus1, 1, 1)?;
    let y0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
    let y1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
    Tensor::cat(&[y0, y1], D::Minus1)?.flatten_from(D::Minus2)
}

/// RoPE on the two halves of each head (qwen2), differentiable; shapes as in
/// [`rope_interleaved`].
fn rope_halves(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let (b, _, t, d) = x.dims4()?;
    let half = d / 2;
    let cos = cos.reshape((b, 1, t, half))?;
    let sin = sin.reshape((b, 1, t, half))?;
    let cos = Tensor::cat(&[&cos, &cos], D::Minus1)?;
    let sin = Tensor::cat(&[&sin, &sin], D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, d - half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// Log-probabilities of a batch's completions.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Per completion, the sum over its tokens: `(completions,)`, f32 (f64 for an f64 model).
    pub sums: Tensor,
    /// Per completion token, in sequence order: `(N,)`, f32.
    pub tokens: Tensor,
    /// Tokens per completion.
    pub counts: Vec<usize>,
}

/// The constants of one forward pass: batch size, padded length, token ids `(B·T,)`, RoPE
/// tables at each token's position, and what attention masks with: each token's segment id
/// for the fused op (padding: `u32::MAX`), or the dense additive mask where it is not used.
struct Pass {
    b: usize,
    t: usize,
    ids: Tensor,
    cos: Tensor,
    sin: Tensor,
    segments: Arc<Vec<u32>>,
    mask: Option<Tensor>,
}

/// A llama-family model whose forward pass can be differentiated.
#[derive(Debug)]
pub struct TrainableLlama {
    pub config: LlamaConfig,
    pub mode: Mode,
    /// The GGUF it was loaded from (its metadata is copied on export).
    pub path: PathBuf,
    device: Device,
    dtype: DType,
    embed: Weight,
    /// `output.weight` when the file has one; else the embedding is the output layer (tied).
    output: Option<Proj>,
    out_norm: Weight,
    blocks: Vec<Block>,
    cos: Tensor,
    sin: Tensor,
    adapters: bool,
    checkpointing: Checkpointing,
    /// Bytes of kept activations above which [`Checkpointing::Auto`] recomputes.
    activation_budget: u64,
    /// Whether `Auto` has said that it turned checkpointing on (said once a model).
    auto_announced: AtomicBool,
    /// Whether attention and LoRA projections may run as fused ops ([`Self::set_fused_ops`]).
    fused: bool,
}

fn model_err(path: &Path, message: impl std::fmt::Display) -> LmError {
    LmError::Model { path: path.to_path_buf(), message: message.to_string() }
}

impl TrainableLlama {
    /// Loads a GGUF file (any weight type, dequantized) with its tokenizer. A file that is not
    /// a llama-family model, or is truncated, is an error naming it.
    pub fn load(
        path: &Path,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<(TrainableLlama, GgufTokenizer), LmError> {
        if !matches!(options.dtype, DType::F32 | DType::F64 | DType::BF16 | DType::F16) {
            return Err(LmError::Invalid(format!(
                "training dtype {:?} is not a float type",
                options.dtype
            )));
        }
        if let Mode::Lora(cfg) = &options.mode {
            cfg.validate().map_err(LmError::Invalid)?;
        }
        let mut file = File::open(path).map_err(|e| io_err(path, e))?;
        let content = Content::read(&mut file)
            .map_err(|e| model_err(path, format!("not a readable GGUF file: {e}")))?;
        let config = LlamaConfig::from_gguf(&content)
            .map_err(|e| model_err(path, format!("{e}; training needs a llama-family model")))?;
        if !matches!(config.arch, Arch::Llama | Arch::Qwen2) {
            return Err(LmError::UnsupportedFamily {
                path: path.to_path_buf(),
                family: config.arch.name(),
            });
        }
        if let Mode::Lora(LoraConfig { top_layers: Some(top), .. }) = &options.mode {
            if *top > config.n_layer {
                return Err(LmError::Invalid(format!(
                    "LoRA top layers {top} is more than the model's {} blocks",
                    config.n_layer
                )));
            }
        }
        let tokenizer = GgufTokenizer::from_metadata(&content.metadata)
            .map_err(|e| model_err(path, format!("tokenizer: {e}")))?;
        let dtype = options.dtype;
        let mut read = |name: &str, shape: &[usize]| -> Result<Tensor, LmError> {
            let q = content
                .tensor(&mut file, name, &Device::Cpu)
                .map_err(|e| model_err(path, format!("tensor `{name}`: {e}")))?;
            if q.shape().dims() != shape {
                return Err(model_err(
                    path,
                    format!("tensor `{name}` has shape {:?}, expected {shape:?}", q.shape().dims()),
                ));
            }
            let t = q.dequantize(&Device::Cpu).map_err(|e| model_err(path, e))?;
            Ok(t.to_dtype(dtype)?.to_device(device)?)
        };
        let full = matches!(options.mode, Mode::Full);
        let lora_cfg = match &options.mode {
            Mode::Lora(cfg) => Some(cfg.clone()),
            _ => None,
        };
        let lora_dtype = match dtype {
            DType::F64 => DType::F64,
            _ => DType::F32,
        };
        let mut rng = lora::rng(lora_cfg.as_ref().map_or(0, |c| c.seed));
        let c = config.clone();
        let (h, hd) = (c.hidden, c.head_dim);
        let has = |name: &str| content.tensor_infos.contains_key(name);
        let embed = Weight::new(read("token_embd.weight", &[c.vocab_size, h])?, full)?;
        let output = if has("output.weight") {
            Some(Proj {
                name: "output".into(),
                w: Weight::new(read("output.weight", &[c.vocab_size, h])?, full)?,
                b: None,
                lora: None,
            })
        } else {
            None
        };
        let out_norm = Weight::new(read("output_norm.weight", &[h])?, full)?;
        let mut blocks = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let mut proj = |target: Target, out: usize, inp: usize| -> Result<Proj, LmError> {
                let name = format!("blk.{i}.{}", target.gguf_name());
                let w = Weight::new(read(&format!("{name}.weight"), &[out, inp])?, full)?;
                let bias = format!("{name}.bias");
                let b =
                    if has(&bias) { Some(Weight::new(read(&bias, &[out])?, full)?) } else { None };
                let lora = match &lora_cfg {
                    Some(cfg)
                        if cfg.targets.contains(&target) && cfg.adapts_block(i, c.n_layer) =>
                    {
                        Some(Lora::new(inp, out, cfg, lora_dtype, device, &mut rng)?)
                    }
                    _ => None,
                };
                Ok(Proj { name, w, b, lora })
            };
            let q = proj(Target::Q, c.n_head * hd, h)?;
            let k = proj(Target::K, c.n_kv_head * hd, h)?;
            let v = proj(Target::V, c.n_kv_head * hd, h)?;
            let o = proj(Target::O, h, c.n_head * hd)?;
            let gate = proj(Target::Gate, c.ffn, h)?;
            let up = proj(Target::Up, c.ffn, h)?;
            let down = proj(Target::Down, h, c.ffn)?;
            let attn_norm = Weight::new(read(&format!("blk.{i}.attn_norm.weight"), &[h])?, full)?;
            let ffn_norm = Weight::new(read(&format!("blk.{i}.ffn_norm.weight"), &[h])?, full)?;
            blocks.push(Block { attn_norm, q, k, v, o, ffn_norm, gate, up, down });
        }
        let (cos, sin) = rope_tables(&c, dtype, device)?;
        let model = TrainableLlama {
            config,
            mode: options.mode.clone(),
            path: path.to_path_buf(),
            device: device.clone(),
            dtype,
            embed,
            output,
            out_norm,
            blocks,
            cos,
            sin,
            adapters: true,
            checkpointing: Checkpointing::default(),
            activation_budget: default_activation_budget(device),
            auto_announced: AtomicBool::new(false),
            fused: true,
        };
        Ok((model, tokenizer))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Turns the LoRA adapters on or off: off, the model is its base (the DPO reference).
    pub fn set_adapters(&mut self, on: bool) {
        self.adapters = on;
    }

    pub fn adapters_enabled(&self) -> bool {
        self.adapters
    }

    /// The final-normed hidden states of plain sequences, right-padded into one batch:
    /// `(B·T, hidden)` and `T`.
    pub fn hidden_states(&self, seqs: &[&[u32]]) -> Result<(Tensor, usize), LmError> {
        let rows: Vec<Row> = seqs.iter().map(|s| Row::plain(s)).collect();
        self.forward_rows(&rows, false)
    }

    /// The constants of a forward pass over packed rows, right-padded to the longest.
    fn prepare(&self, rows: &[Row]) -> Result<Pass, LmError> {
        let c = &self.config;
        let b = rows.len();
        let t = rows.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
        if b == 0 || rows.iter().any(|r| r.tokens.is_empty()) {
            return Err(LmError::Invalid("empty batch or empty sequence".into()));
        }
        let longest = rows.iter().flat_map(|r| r.positions.iter()).max().map_or(0, |&p| p + 1);
        if longest as usize > c.context_length {
            return Err(LmError::Invalid(format!(
                "a sequence of {longest} tokens does not fit the model's context of {}",
                c.context_length
            )));
        }
        let mut ids = Vec::with_capacity(b * t);
        let mut positions = Vec::with_capacity(b * t);
        for r in rows {
            if let Some(&bad) = r.tokens.iter().find(|&&x| x as usize >= c.vocab_size) {
                return Err(LmError::Invalid(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            let pad = t - r.tokens.len();
            ids.extend_from_slice(&r.tokens);
            ids.extend(std::iter::repeat_n(0u32, pad));
            positions.extend_from_slice(&r.positions);
            positions.extend(std::iter::repeat_n(0u32, pad));
        }
        let ids = Tensor::from_vec(ids, b * t, &self.device)?;
        let pos = Tensor::from_vec(positions, b * t, &self.device)?;
        let half = c.head_dim / 2;
        let cos = self.cos.index_select(&pos, 0)?.reshape((b, 1, t, half, 1))?;
        let sin = self.sin.index_select(&pos, 0)?.reshape((b, 1, t, half, 1))?;
        let segments: Vec<u32> = rows
            .iter()
            .flat_map(|r| (0..t).map(|i| r.segments.get(i).copied().unwrap_or(u32::MAX)))
            .collect();
        let mask = if self.fuses_attention() { None } else { Some(self.mask(&segments, t)?) };
        Ok(Pass { b, t, ids, cos, sin, segments: Arc::new(segments), mask })
    }

    /// One transformer block: `(B·T, hidden)` rows in and out.
    fn block(&self, blk: &Block, x: &Tensor, p: &Pass) -> candle_core::Result<Tensor> {
        let (on, fused) = (self.adapters, self.fused);
        let eps = self.config.rms_eps as f32;
        let hn = candle_nn::ops::rms_norm_slow(x, blk.attn_norm.tensor(), eps)?;
        let q = blk.q.forward(&hn, on, fused)?;
        let k = blk.k.forward(&hn, on, fused)?;
        let v = blk.v.forward(&hn, on, fused)?;
        let att = self.attention(&q, &k, &v, p, (&p.cos, &p.sin))?;
        let x = (x + blk.o.forward(&att, on, fused)?)?;
        let hn = candle_nn::ops::rms_norm_slow(&x, blk.ffn_norm.tensor(), eps)?;
        let gate = blk.gate.forward(&hn, on, fused)?.silu()?;
        let up = blk.up.forward(&hn, on, fused)?;
        x + blk.down.forward(&(gate * up)?, on, fused)?
    }

    fn final_norm(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm_slow(x, self.out_norm.tensor(), self.config.rms_eps as f32)
    }

    /// The forward pass over packed rows: final-normed hidden states `(B·T, hidden)` and `T`.
    /// Without `grad` every block's output is detached, so no activation outlives its block
    /// (trainable weights would otherwise keep the whole graph alive until the result is
    /// dropped: a forward pass for reference log-probabilities or scoring would need as much
    /// memory as a training step).
    fn forward_rows(&self, rows: &[Row], grad: bool) -> Result<(Tensor, usize), LmError> {
        let p = self.prepare(rows)?;
        let mut x = self.embed.tensor().index_select(&p.ids, 0)?;
        for blk in &self.blocks {
            x = self.block(blk, &x, &p)?;
            if !grad {
                x = x.detach();
            }
        }
        let x = self.final_norm(&x)?;
        Ok((if grad { x } else { x.detach() }, p.t))
    }

    /// Sets gradient checkpointing for [`Self::packed_backward`] and
    /// [`Self::packed_last_hidden_backward`]: on, the backward keeps only each block's input from
    /// the forward pass and recomputes one block's activations at a time (memory: one block's
    /// graph instead of all of them; time: one more forward pass); `Auto` decides per batch.
    pub fn set_checkpointing(&mut self, checkpointing: Checkpointing) {
        self.checkpointing = checkpointing;
    }

    /// The kept-activation bytes above which [`Checkpointing::Auto`] recomputes.
    pub fn set_activation_budget(&mut self, bytes: u64) {
        self.activation_budget = bytes;
    }

    /// An estimate of the peak memory a backward without checkpointing needs for `batch` rows
    /// padded to `t` tokens: every block from the lowest trained one up keeps, per token, about
    /// ten hidden-sized tensors and four FFN-sized ones, plus, unless attention is fused, three
    /// attention rows (scores, masked scores, probabilities: `heads × t` each); the backward
    /// allocates about as much again for their gradients (`rrm bench train` prints it beside
    /// the measured peak).
    pub fn kept_activation_bytes(&self, batch: usize, t: usize) -> u64 {
        let c = &self.config;
        let kept_blocks = self.blocks.len() - self.lowest_trained_block();
        let rows = if self.fuses_attention() { 0 } else { 3 * c.n_head * t };
        let per_token = 10 * c.hidden + 4 * c.ffn + rows;
        let elem = self.dtype.size_in_bytes();
        (2 * elem * batch * t * kept_blocks * per_token) as u64
    }

    /// The lowest block the backward must reach: 0 when the embedding trains, else the lowest
    /// block with a trained tensor (the number of blocks when none has one).
    fn lowest_trained_block(&self) -> usize {
        if matches!(self.embed, Weight::Trainable(_)) {
            0
        } else {
            self.blocks.iter().position(Block::trains).unwrap_or(self.blocks.len())
        }
    }

    /// Whether the backward over `batch` rows padded to `t` tokens recomputes block activations.
    pub fn recomputes(&self, batch: usize, t: usize) -> bool {
        match self.checkpointing {
            Checkpointing::Off => false,
            Checkpointing::On => true,
            Checkpointing::Auto => self.kept_activation_bytes(batch, t) > self.activation_budget,
        }
    }

    /// [`Self::recomputes`] for `rows`; the first time `Auto` turns checkpointing on, it says so.
    fn checkpoints(&self, rows: &[Row]) -> bool {
        let t = rows.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
        let on = self.recomputes(rows.len(), t);
        if on
            && self.checkpointing == Checkpointing::Auto
            && !self.auto_announced.swap(true, Ordering::Relaxed)
        {
            let kept = self.kept_activation_bytes(rows.len(), t);
            tracing::info!(
                "gradient checkpointing on: a batch of {} rows × {t} tokens would keep \
                         ~{:.1} GiB of activations, over the budget of {:.1} GiB \
                         (--grad-checkpoint off|on decides instead)",
                rows.len(),
                kept as f64 / (1u64 << 30) as f64,
                self.activation_budget as f64 / (1u64 << 30) as f64
            );
        }
        on
    }

    /// `head(hidden, T)` over the final-normed hidden states of `rows`, and the gradients of
    /// that loss for every trainable tensor (keyed by the variables of [`Self::trainable`]) and
    /// for the `extra` variables the head uses.
    fn backward_rows(
        &self,
        rows: &[Row],
        extra: &[Var],
        head: impl FnOnce(&Tensor, usize) -> Result<Tensor, LmError>,
    ) -> Result<(Tensor, GradStore), LmError> {
        let vars: Vec<Tensor> = (self.trainable().into_iter().map(|(_, v)| v))
            .chain(extra.iter().cloned())
            .map(|v| v.as_tensor().clone())
            .collect();
        let mut all = GradStore::default();
        if !self.checkpoints(rows) {
            let (hidden, t) = self.forward_rows(rows, true)?;
            let loss = head(&hidden, t)?;
            take_grads(&vars, &mut loss.backward()?, &mut all)?;
            return Ok((loss, all));
        }
        let p = self.prepare(rows)?;
        // Forward, keeping only each block's input; each block's graph is dropped with it.
        let mut inputs = Vec::with_capacity(self.blocks.len());
        let mut x = self.embed.tensor().index_select(&p.ids, 0)?.detach();
        for blk in &self.blocks {
            let y = self.block(blk, &x, &p)?.detach();
            inputs.push(x);
            x = y;
        }
        let missing = || LmError::Invalid("checkpointed backward: no gradient reached".into());
        let last = Var::from_tensor(&x)?;
        let loss = head(&self.final_norm(last.as_tensor())?, p.t)?;
        let mut grads = loss.backward()?;
        take_grads(&vars, &mut grads, &mut all)?;
        let mut g = grads.remove(last.as_tensor()).ok_or_else(missing)?;
        drop(grads);
        // Backward, block by block from the top: recompute the block from its input, then
        // backpropagate its output's gradient (the gradient of Σ y·g at y is g). Below the
        // lowest block that trains, with a frozen embedding, no gradient is wanted.
        let lowest = self.lowest_trained_block();
        for (blk, x) in self.blocks.iter().zip(inputs).skip(lowest).rev() {
            let input = Var::from_tensor(&x)?;
            let y = self.block(blk, input.as_tensor(), &p)?;
            let mut grads = (y * &g)?.sum_all()?.backward()?;
            take_grads(&vars, &mut grads, &mut all)?;
            g = grads.remove(input.as_tensor()).ok_or_else(missing)?;
        }
        if let Weight::Trainable(embed) = &self.embed {
            let x = embed.as_tensor().index_select(&p.ids, 0)?;
            take_grads(&vars, &mut (x * &g)?.sum_all()?.backward()?, &mut all)?;
        }
        Ok((loss, all))
    }

    /// The additive attention masks `(B, 1, group·T, T)`, each row's laid out as the rows of a
    /// head group: a token sees the tokens before it in its own segment and in the prompt
    /// (segment 0). Padding (after every real token) is never seen by a real token.
    /// `segments` holds each row's `t` segment ids (padding: `u32::MAX`), as the fused op reads
    /// them.
    fn mask(&self, segments: &[u32], t: usize) -> candle_core::Result<Tensor> {
        let group = self.config.n_head / self.config.n_kv_head;
        let b = segments.len() / t.max(1);
        let mut m = vec![-1e9f32; b * group * t * t];
        for (bi, row) in segments.chunks(t).enumerate() {
            let seg = |i: usize| row[i];
            for q in 0..t {
                let sq = seg(q);
                let base = (bi * group * t + q) * t;
                for k in 0..=q {
                    let sk = seg(k);
                    if sk == 0 || sk == sq {
                        m[base + k] = 0.0;
                    }
                }
            }
            // The other rows of the head group repeat the first.
            let first = bi * group * t * t;
            for g in 1..group {
                m.copy_within(first..first + t * t, first + g * t * t);
            }
        }
        Tensor::from_vec(m, (b, 1, group * t, t), &self.device)?.to_dtype(self.dtype)
    }

    /// Whether attention runs as [`attention::fused_attention`] (f32 on the CPU, unless fused
    /// ops are turned off) rather than out of candle's ops with a dense mask.
    pub fn fuses_attention(&self) -> bool {
        self.fused && self.device.is_cpu() && self.dtype == DType::F32
    }

    /// Runs attention and each frozen projection with its LoRA adapter as single ops where
    /// they apply (f32 on the CPU; the default), or everything out of candle's ops (for
    /// measuring one against the other; the results agree to rounding).
    pub fn set_fused_ops(&mut self, on: bool) {
        self.fused = on;
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        p: &Pass,
        (cos, sin): (&Tensor, &Tensor),
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, t) = (p.b, p.t);
        let (nh, nkv, hd) = (c.n_head, c.n_kv_head, c.head_dim);
        let group = nh / nkv;
        let heads = |x: &Tensor, n: usize| -> candle_core::Result<Tensor> {
            x.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = (heads(q, nh)?, heads(k, nkv)?, heads(v, nkv)?);
        let rope = |x: &Tensor| match c.arch {
            Arch::Llama => rope_interleaved(x, cos, sin),
            // Only llama and qwen2 models load here (`UnsupportedFamily` otherwise).
            Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 => rope_halves(x, cos, sin),
        };
        let (q, k) = (rope(&q)?, rope(&k)?);
        let scale = 1.0 / (hd as f64).sqrt();
        let o = match &p.mask {
            None => attention::fused_attention(&(q * scale)?, &k, &v, p.segments.clone())?,
            Some(mask) => {
                // The query heads that share a KV head become the rows of one matmul.
                let q = (q.contiguous()?.reshape((b, nkv, group * t, hd))? * scale)?;
                let att = q.matmul(&k.t()?)?.broadcast_add(mask)?;
                let att = if matches!(self.dtype, DType::BF16 | DType::F16) {
                    let att = candle_nn::ops::softmax(&att.to_dtype(DType::F32)?, D::Minus1)?;
                    att.to_dtype(self.dtype)?
                } else {
                    candle_nn::ops::softmax(&att, D::Minus1)?
                };
                att.matmul(&v)?.reshape((b, nh, t, hd))? // (b, nkv, group·t, hd)
            }
        };
        o.transpose(1, 2)?.reshape((b * t, nh * hd))
    }

    /// Logits (f32; f64 for an f64 model) of hidden-state rows `(N, hidden)`: `(N, vocab)`.
    pub fn logits_of(&self, hidden: &Tensor) -> Result<Tensor, LmError> {
        let y = match &self.output {
            Some(p) => p.forward(hidden, self.adapters, self.fused)?,
            None => match &self.embed {
                Weight::Frozen(w) => frozen_matmul(hidden, w)?,
                Weight::Trainable(w) => hidden.matmul(&w.as_tensor().t()?)?,
            },
        };
        Ok(y.to_dtype(self.out_dtype())?)
    }

    /// The dtype of logits and log-probabilities: f32, or f64 for an f64 model.
    fn out_dtype(&self) -> DType {
        if self.dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }

    /// Logits at every position of each sequence: `(B, T, vocab)` (padding rows included).
    pub fn logits(&self, seqs: &[&[u32]]) -> Result<Tensor, LmError> {
        let (h, t) = self.hidden_states(seqs)?;
        Ok(self.logits_of(&h)?.reshape((seqs.len(), t, self.config.vocab_size))?)
    }

    /// Log-probabilities of each sequence's completion tokens under the model.
    pub fn completion_logprobs(&self, seqs: &[SeqSpec]) -> Result<Scored, LmError> {
        let packed: Vec<Packed> = seqs
            .iter()
            .map(|s| {
                if s.start == 0 || s.start >= s.tokens.len() {
                    return Err(LmError::Invalid(format!(
                        "a sequence of {} tokens has its completion starting at {} (need a \
                         prompt and at least one completion token)",
                        s.tokens.len(),
                        s.start
                    )));
                }
                Ok(Packed {
                    prompt: s.tokens[..s.start].to_vec(),
                    completions: vec![s.tokens[s.start..].to_vec()],
                })
            })
            .collect::<Result<_, _>>()?;
        self.packed_logprobs(&packed)
    }

    /// Log-probabilities of every completion of packed rows (a prompt computed once, several
    /// completions after it, each seeing only the prompt and itself). The result lists the
    /// completions row by row, in order. Like every forward pass here but the `*_backward`
    /// ones, it keeps no graph through the blocks: gradients come from [`Self::packed_backward`].
    pub fn packed_logprobs(&self, packed: &[Packed]) -> Result<Scored, LmError> {
        let (rows, targets_of) = packed_rows(packed)?;
        let (hidden, t) = self.forward_rows(&rows, false)?;
        self.score_packed(&hidden, t, &targets_of)
    }

    /// `loss_of` the log-probabilities of `packed` (as [`Self::packed_logprobs`] computes them)
    /// and its gradients for every trainable tensor, checkpointed as
    /// [`Self::set_checkpointing`] says.
    pub fn packed_backward(
        &self,
        packed: &[Packed],
        loss_of: impl FnOnce(&Scored) -> Result<Tensor, LmError>,
    ) -> Result<(Tensor, GradStore), LmError> {
        let (rows, targets_of) = packed_rows(packed)?;
        self.backward_rows(&rows, &[], |hidden, t| {
            loss_of(&self.score_packed(hidden, t, &targets_of)?)
        })
    }

    /// The final hidden state at the last token of every completion of packed rows:
    /// `(completions, hidden)`, row by row in order (a scalar head's input; a node's candidates
    /// after one shared prompt cost the prompt once).
    pub fn packed_last_hidden(&self, packed: &[Packed]) -> Result<Tensor, LmError> {
        let (rows, _) = packed_rows(packed)?;
        let (hidden, t) = self.forward_rows(&rows, false)?;
        self.select_ends(&hidden, t, packed)
    }

    /// `loss_of` the hidden states of [`Self::packed_last_hidden`] and its gradients for every
    /// trainable tensor and for `head_vars` (a head's weights that `loss_of` uses),
    /// checkpointed as [`Self::set_checkpointing`] says.
    pub fn packed_last_hidden_backward(
        &self,
        packed: &[Packed],
        head_vars: &[Var],
        loss_of: impl FnOnce(&Tensor) -> Result<Tensor, LmError>,
    ) -> Result<(Tensor, GradStore), LmError> {
        let (rows, _) = packed_rows(packed)?;
        self.backward_rows(&rows, head_vars, |hidden, t| {
            loss_of(&self.select_ends(hidden, t, packed)?)
        })
    }

    /// The rows of each completion's last token in right-padded hidden states `(B·T, hidden)`.
    fn select_ends(&self, hidden: &Tensor, t: usize, packed: &[Packed]) -> Result<Tensor, LmError> {
        let mut ends = Vec::new();
        for (bi, p) in packed.iter().enumerate() {
            let mut at = p.prompt.len();
            for c in &p.completions {
                at += c.len();
                ends.push((bi * t + at - 1) as u32);
            }
        }
        let n = ends.len();
        Ok(hidden.index_select(&Tensor::from_vec(ends, n, &self.device)?, 0)?)
    }

    /// Completion log-probabilities from the hidden states of packed rows.
    fn score_packed(
        &self,
        hidden: &Tensor,
        t: usize,
        targets_of: &[Targets],
    ) -> Result<Scored, LmError> {
        let mut idx = Vec::new();
        let mut targets = Vec::new();
        let mut counts = Vec::new();
        for (bi, per_completion) in targets_of.iter().enumerate() {
            for list in per_completion {
                for &(row, tok) in list {
                    idx.push((bi * t + row) as u32);
                    targets.push(tok);
                }
                counts.push(list.len());
            }
        }
        let n = idx.len();
        let idx = Tensor::from_vec(idx, n, &self.device)?;
        let targets = Tensor::from_vec(targets, (n, 1), &self.device)?;
        let logits = self.logits_of(&hidden.index_select(&idx, 0)?)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let tokens = logp.gather(&targets, 1)?.squeeze(1)?;
        // Per-completion sums as one matmul with a 0/1 segment matrix (completions × N).
        let mut seg = vec![0f32; counts.len() * n];
        let mut at = 0;
        for (ci, &cnt) in counts.iter().enumerate() {
            for j in at..at + cnt {
                seg[ci * n + j] = 1.0;
            }
            at += cnt;
        }
        let seg =
            Tensor::from_vec(seg, (counts.len(), n), &self.device)?.to_dtype(self.out_dtype())?;
        let sums = seg.matmul(&tokens.unsqueeze(1)?)?.squeeze(1)?;
        Ok(Scored { sums, tokens, counts })
    }

    /// The tensors the optimizer updates, by stable names: `blk.N.attn_q.lora_a` / `.lora_b` for
    /// adapters, GGUF names (`blk.N.attn_q.weight`, `token_embd.weight`, …) in full
    /// fine-tuning. Empty when frozen.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        let mut weight = |name: String, w: &Weight| {
            if let Weight::Trainable(v) = w {
                out.push((name, v.clone()));
            }
        };
        weight("token_embd.weight".into(), &self.embed);
        weight("output_norm.weight".into(), &self.out_norm);
        if let Some(p) = &self.output {
            weight("output.weight".into(), &p.w);
        }
        for (i, blk) in self.blocks.iter().enumerate() {
            weight(format!("blk.{i}.attn_norm.weight"), &blk.attn_norm);
            weight(format!("blk.{i}.ffn_norm.weight"), &blk.ffn_norm);
            for p in blk.projs() {
                weight(format!("{}.weight", p.name), &p.w);
                if let Some(b) = &p.b {
                    weight(format!("{}.bias", p.name), b);
                }
            }
        }
        for blk in &self.blocks {
            for p in blk.projs() {
                if let Some(l) = &p.lora {
                    out.push((format!("{}.lora_a", p.name), l.a.clone()));
                    out.push((format!("{}.lora_b", p.name), l.b.clone()));
                }
            }
        }
        out
    }

    /// The LoRA adapter on projection `proj` (a GGUF name without `.weight`: `blk.3.attn_q`),
    /// when the model carries one there.
    pub fn lora(&self, proj: &str) -> Option<&Lora> {
        self.blocks.iter().flat_map(|b| b.projs()).find(|p| p.name == proj)?.lora.as_ref()
    }

    /// Number of trainable scalars.
    pub fn trainable_count(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Sets the trainable tensors from `tensors` (a checkpoint); every one must be there with
    /// its shape.
    pub fn load_trainable(&self, tensors: &HashMap<String, Tensor>) -> Result<(), LmError> {
        for (name, var) in self.trainable() {
            let t = tensors.get(&name).ok_or_else(|| {
                LmError::Invalid(format!("the checkpoint has no tensor `{name}`"))
            })?;
            if t.dims() != var.dims() {
                return Err(LmError::Invalid(format!(
                    "checkpoint tensor `{name}` has shape {:?}, the model wants {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// Every weight as the engine reads it (GGUF names), LoRA merged in, f32 on the CPU.
    pub fn merged_tensors(&self) -> Result<Vec<(String, Tensor)>, LmError> {
        let cpu = |t: &Tensor| -> candle_core::Result<Tensor> {
            t.to_dtype(DType::F32)?.to_device(&Device::Cpu)
        };
        let mut out = vec![
            ("token_embd.weight".to_string(), cpu(self.embed.tensor())?),
            ("output_norm.weight".to_string(), cpu(self.out_norm.tensor())?),
        ];
        if let Some(p) = &self.output {
            out.push(("output.weight".into(), cpu(p.w.tensor())?));
        }
        for (i, blk) in self.blocks.iter().enumerate() {
            out.push((format!("blk.{i}.attn_norm.weight"), cpu(blk.attn_norm.tensor())?));
            out.push((format!("blk.{i}.ffn_norm.weight"), cpu(blk.ffn_norm.tensor())?));
            for p in blk.projs() {
                let mut w = cpu(p.w.tensor())?;
                if let Some(l) = &p.lora {
                    w = (w + cpu(&l.delta()?)?)?;
                }
                out.push((format!("{}.weight", p.name), w));
                if let Some(b) = &p.b {
                    out.push((format!("{}.bias", p.name), cpu(b.tensor())?));
                }
            }
        }
        Ok(out)
    }
}

/// RoPE tables `(context, head_dim / 2)`, as the engine computes them.
/// The rows of packed sequences and, per row, its completions' targets.
fn packed_rows(packed: &[Packed]) -> Result<(Vec<Row>, Vec<Targets>), LmError> {
    packed.iter().map(Row::packed).collect::<Result<Vec<_>, _>>().map(|v| v.into_iter().unzip())
}

/// Moves the gradients of `vars` out of `grads` into `into`, adding to what is there (a tied
/// embedding gets gradients from two places).
fn take_grads(
    vars: &[Tensor],
    grads: &mut GradStore,
    into: &mut GradStore,
) -> candle_core::Result<()> {
    for v in vars {
        if let Some(g) = grads.remove(v) {
            let sum = match into.remove(v) {
                Some(old) => (old + g)?,
                None => g,
            };
            into.insert(v, sum);
        }
    }
    Ok(())
}

fn rope_tables(
    cfg: &LlamaConfig,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let inv: Vec<f32> =
        (0..half).map(|i| 1.0 / cfg.rope_base.powf(2.0 * i as f32 / cfg.head_dim as f32)).collect();
    let n = cfg.context_length;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}
