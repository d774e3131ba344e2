//! Test helpers: tiny llama-family models with random weights, written as GGUF files.
//!
//! [`tiny_llama_gguf`] writes, in a few milliseconds, a complete model file the local engine
//! loads like a real one: llama metadata, F32 weights drawn from a seeded RNG, and a byte-level
//! BPE tokenizer (every byte is a token, plus a few merges and the ChatML special tokens
//! `<|endoftext|>` = 0, `<|im_start|>` = 1, `<|im_end|>` = 2) with a ChatML chat template. The
//! text it generates is noise, but deterministic for a seed, which is what tests of batching,
//! caching and scheduling need.
//!
//! [`BowEncoder`] is a deterministic bag-of-words sentence encoder for tests of code that needs
//! an [`Encoder`](super::Encoder) but not a real model.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use super::tokenizer::byte_to_char_table;
use super::{Encoder, InferError, ModelIdentity};

/// A deterministic bag-of-words "encoder": hashed counts of words longer than three characters,
/// L2-normalized, in [`BowEncoder::DIM`] dimensions.
pub struct BowEncoder {
    identity: ModelIdentity,
}

impl BowEncoder {
    pub const DIM: usize = 64;

    pub fn new() -> BowEncoder {
        BowEncoder { identity: ModelIdentity { name: "bow".into(), hash: "bow-test".into() } }
    }
}

impl Default for BowEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder for BowEncoder {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }
    fn dim(&self) -> usize {
        Self::DIM
    }
    fn max_tokens(&self) -> usize {
        256
    }
    fn count_tokens(&self, text: &str) -> usize {
        text.split_whitespace().count() + 2
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, InferError> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0f32; Self::DIM];
                for w in t.split(|c: char| !c.is_alphanumeric()).filter(|w| w.len() > 3) {
                    let h = blake3::hash(w.to_lowercase().as_bytes());
                    v[h.as_bytes()[0] as usize % Self::DIM] += 1.0;
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                v.iter_mut().for_each(|x| *x /= norm);
                v
            })
            .collect())
    }
}

/// The shape of a tiny test model.
#[derive(Debug, Clone)]
pub struct TinyOptions {
    /// `"llama"` or `"qwen2"` (adds Q/K/V biases and uses the split-halves RoPE).
    pub arch: &'static str,
    pub hidden: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub ffn: usize,
    pub context_length: usize,
    /// Share the token embedding with the output layer (no `output.weight`), as SmolLM2 does.
    pub tied: bool,
}

impl Default for TinyOptions {
    fn default() -> Self {
        Self {
            arch: "llama",
            hidden: 64,
            n_layer: 2,
            n_head: 4,
            n_kv_head: 2,
            ffn: 96,
            context_length: 512,
            tied: true,
        }
    }
}

const MERGES: &[(&str, &str)] = &[("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")];
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The vocabulary of the tiny models: 3 special tokens, 256 byte tokens, then the merges.
pub fn tiny_vocab() -> Vec<String> {
    let mut tokens: Vec<String> =
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].iter().map(|s| s.to_string()).collect();
    tokens.extend(byte_to_char_table().iter().map(|c| c.to_string()));
    tokens.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    tokens
}

/// Writes a tiny random llama model (default [`TinyOptions`]) to `path`.
pub fn tiny_llama_gguf(path: &Path, seed: u64) -> Result<(), InferError> {
    tiny_gguf(path, seed, &TinyOptions::default())
}

/// Writes a tiny random model of the given shape to `path`.
pub fn tiny_gguf(path: &Path, seed: u64, o: &TinyOptions) -> Result<(), InferError> {
    let err = |e: candle_core::Error| InferError::Model {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tokens = tiny_vocab();
    let vocab = tokens.len();
    let head_dim = o.hidden / o.n_head;
    let mut tensor = |shape: &[usize], std: f32| -> Result<QTensor, InferError> {
        let n: usize = shape.iter().product();
        // Uniform with the requested standard deviation.
        let a = std * 3f32.sqrt();
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-a..a)).collect();
        let t = Tensor::from_vec(data, shape, &Device::Cpu).map_err(err)?;
        QTensor::quantize(&t, GgmlDType::F32).map_err(err)
    };
    let ones = |n: usize| -> Result<QTensor, InferError> {
        let t = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).map_err(err)?;
        QTensor::quantize(&t, GgmlDType::F32).map_err(err)
    };
    let mut named: Vec<(String, QTensor)> = Vec::new();
    named.push(("token_embd.weight".into(), tensor(&[vocab, o.hidden], 0.5)?));
    if !o.tied {
        named.push(("output.weight".into(), tensor(&[vocab, o.hidden], 0.5)?));
    }
    named.push(("output_norm.weight".into(), ones(o.hidden)?));
    let w_std = 1.0 / (o.hidden as f32).sqrt();
    for i in 0..o.n_layer {
        let p = format!("blk.{i}");
        named.push((format!("{p}.attn_norm.weight"), ones(o.hidden)?));
        named.push((format!("{p}.ffn_norm.weight"), ones(o.hidden)?));
        named
            .push((format!("{p}.attn_q.weight"), tensor(&[o.n_head * head_dim, o.hidden], w_std)?));
        named.push((
            format!("{p}.attn_k.weight"),
            tensor(&[o.n_kv_head * head_dim, o.hidden], w_std)?,
        ));
        named.push((
            format!("{p}.attn_v.weight"),
            tensor(&[o.n_kv_head * head_dim, o.hidden], w_std)?,
        ));
        if o.arch == "qwen2" {
            named.push((format!("{p}.attn_q.bias"), tensor(&[o.n_head * head_dim], 0.1)?));
            named.push((format!("{p}.attn_k.bias"), tensor(&[o.n_kv_head * head_dim], 0.1)?));
            named.push((format!("{p}.attn_v.bias"), tensor(&[o.n_kv_head * head_dim], 0.1)?));
        }
        named.push((
            format!("{p}.attn_output.weight"),
            tensor(&[o.hidden, o.n_head * head_dim], w_std)?,
        ));
        named.push((format!("{p}.ffn_gate.weight"), tensor(&[o.ffn, o.hidden], w_std)?));
        named.push((format!("{p}.ffn_up.weight"), tensor(&[o.ffn, o.hidden], w_std)?));
        named.push((
            format!("{p}.ffn_down.weight"),
            tensor(&[o.hidden, o.ffn], 1.0 / (o.ffn as f32).sqrt())?,
        ));
    }

    let a = o.arch;
    let mut types = vec![Value::I32(3); 3];
    types.extend(std::iter::repeat_n(Value::I32(1), vocab - 3));
    let md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.name".into(), Value::String(format!("tiny-{a}-{seed}"))),
        (format!("{a}.context_length"), Value::U32(o.context_length as u32)),
        (format!("{a}.embedding_length"), Value::U32(o.hidden as u32)),
        (format!("{a}.block_count"), Value::U32(o.n_layer as u32)),
        (format!("{a}.feed_forward_length"), Value::U32(o.ffn as u32)),
        (format!("{a}.attention.head_count"), Value::U32(o.n_head as u32)),
        (format!("{a}.attention.head_count_kv"), Value::U32(o.n_kv_head as u32)),
        (format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (format!("{a}.rope.freq_base"), Value::F32(10_000.0)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(MERGES.iter().map(|(a, b)| Value::String(format!("{a} {b}"))).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.chat_template".into(), Value::String(CHATML.into())),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let file = std::fs::File::create(path)
        .map_err(|e| InferError::Io { path: path.to_path_buf(), error: e })?;
    let mut w = std::io::BufWriter::new(file);
    candle_core::quantized::gguf_file::write(&mut w, &md_refs, &t_refs).map_err(err)?;
    use std::io::Write as _;
    w.flush().map_err(|e| InferError::Io { path: path.to_path_buf(), error: e })?;
    Ok(())
}
