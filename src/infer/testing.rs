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
    /// `"llama"`, `"qwen2"` (adds Q/K/V biases and uses the split-halves RoPE), `"qwen3"`
    /// (Q/K head norms) or `"gemma3"` (Q/K head norms, post-norms, GELU, a SentencePiece
    /// tokenizer with byte pieces and no chat template, sliding-window layers when
    /// [`Self::sliding_window`] is set).
    pub arch: &'static str,
    pub hidden: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub ffn: usize,
    pub context_length: usize,
    /// Share the token embedding with the output layer (no `output.weight`), as SmolLM2 does.
    pub tied: bool,
    /// The type of the weight matrices (F32 by default; `Q4_1`, `Q8_0`… like real files).
    /// Norm weights and biases stay F32.
    pub weights: GgmlDType,
    /// `attention.key_length` when it differs from `hidden / n_head` (qwen3, gemma3).
    pub head_dim: Option<usize>,
    /// gemma3: `attention.sliding_window` (every sixth layer global, as llama.cpp reads it).
    pub sliding_window: Option<usize>,
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
            weights: GgmlDType::F32,
            head_dim: None,
            sliding_window: None,
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
    let spm = o.arch == "gemma3";
    let tokens = if spm { tiny_spm_vocab().0 } else { tiny_vocab() };
    let vocab = tokens.len();
    let head_dim = o.head_dim.unwrap_or(o.hidden / o.n_head);
    let mut tensor = |shape: &[usize], std: f32| -> Result<QTensor, InferError> {
        let n: usize = shape.iter().product();
        // Uniform with the requested standard deviation.
        let a = std * 3f32.sqrt();
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-a..a)).collect();
        let t = Tensor::from_vec(data, shape, &Device::Cpu).map_err(err)?;
        let dtype = if shape.len() == 2 { o.weights } else { GgmlDType::F32 };
        QTensor::quantize(&t, dtype).map_err(err)
    };
    let ones = |n: usize| -> Result<QTensor, InferError> {
        let t = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).map_err(err)?;
        QTensor::quantize(&t, GgmlDType::F32).map_err(err)
    };
    // Norm weights around 1, different per norm (a swapped norm would show).
    let mut norm_rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x6e6f_726d);
    let mut norm = |n: usize| -> Result<QTensor, InferError> {
        let data: Vec<f32> = (0..n).map(|_| norm_rng.random_range(0.6f32..1.4)).collect();
        let t = Tensor::from_vec(data, n, &Device::Cpu).map_err(err)?;
        QTensor::quantize(&t, GgmlDType::F32).map_err(err)
    };
    let mut extra: Vec<(String, QTensor)> = Vec::new();
    for i in 0..o.n_layer {
        let p = format!("blk.{i}");
        if o.arch == "qwen3" || o.arch == "gemma3" {
            extra.push((format!("{p}.attn_q_norm.weight"), norm(head_dim)?));
            extra.push((format!("{p}.attn_k_norm.weight"), norm(head_dim)?));
        }
        if o.arch == "gemma3" {
            extra.push((format!("{p}.post_attention_norm.weight"), norm(o.hidden)?));
            extra.push((format!("{p}.post_ffw_norm.weight"), norm(o.hidden)?));
        }
    }
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

    named.extend(extra);
    let a = o.arch;
    let mut types = vec![Value::I32(3); 3];
    types.extend(std::iter::repeat_n(Value::I32(1), vocab - 3));
    let mut md: Vec<(String, Value)> = vec![
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
    ];
    if let Some(d) = o.head_dim {
        md.push((format!("{a}.attention.key_length"), Value::U32(d as u32)));
        md.push((format!("{a}.attention.value_length"), Value::U32(d as u32)));
    }
    if let Some(w) = o.sliding_window {
        md.push((format!("{a}.attention.sliding_window"), Value::U32(w as u32)));
        // The global layers' base differs from the local layers' 10000, as in Gemma 3.
        md.retain(|(k, _)| k != &format!("{a}.rope.freq_base"));
        md.push((format!("{a}.rope.freq_base"), Value::F32(1_000_000.0)));
    }
    if spm {
        let (tokens, scores, types) = tiny_spm_vocab();
        md.extend([
            ("tokenizer.ggml.model".into(), Value::String("llama".into())),
            ("tokenizer.ggml.pre".into(), Value::String("default".into())),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            ),
            (
                "tokenizer.ggml.scores".into(),
                Value::Array(scores.into_iter().map(Value::F32).collect()),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.unknown_token_id".into(), Value::U32(3)),
            ("tokenizer.ggml.padding_token_id".into(), Value::U32(0)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
            ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)),
        ]);
        return write_gguf(path, &md, &named);
    }
    md.extend(vec![
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
    ]);
    write_gguf(path, &md, &named)
}

/// The pieces of the tiny SentencePiece vocabulary, joined pieces with their scores (higher
/// joins first).
const SPM_PIECES: &[(&str, f32)] = &[
    ("\u{2581}t", -1.0),
    ("he", -2.0),
    ("\u{2581}the", -3.0),
    ("in", -4.0),
    ("\u{2581}a", -5.0),
    ("er", -6.0),
    ("\u{2581}\u{2581}", -7.0),
    ("an", -8.0),
];

/// The tiny SentencePiece vocabulary (gemma3 test models): `<pad>` `<eos>` `<bos>` `<unk>`,
/// `<start_of_turn>` `<end_of_turn>` (control), `\n` (user-defined), the 256 byte pieces
/// `<0xXX>`, `▁` and the printable ASCII characters, then [`SPM_PIECES`]. Returns tokens,
/// scores and token types.
pub fn tiny_spm_vocab() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens: Vec<String> = Vec::new();
    let mut scores = Vec::new();
    let mut types = Vec::new();
    let mut push = |t: String, score: f32, ty: i32| {
        tokens.push(t);
        scores.push(score);
        types.push(ty);
    };
    for (t, ty) in [
        ("<pad>", 3),
        ("<eos>", 3),
        ("<bos>", 3),
        ("<unk>", 2),
        ("<start_of_turn>", 3),
        ("<end_of_turn>", 3),
        ("\n", 4),
    ] {
        push(t.to_string(), -1000.0, ty);
    }
    for b in 0..=255u8 {
        push(format!("<0x{b:02X}>"), 0.0, 6);
    }
    push("\u{2581}".to_string(), -100.0, 1);
    for (i, c) in (0x21u8..=0x7e).enumerate() {
        push((c as char).to_string(), -200.0 - i as f32, 1);
    }
    for (p, score) in SPM_PIECES {
        push(p.to_string(), *score, 1);
    }
    (tokens, scores, types)
}

fn write_gguf(
    path: &Path,
    md: &[(String, Value)],
    named: &[(String, QTensor)],
) -> Result<(), InferError> {
    let err = |e: candle_core::Error| InferError::Model {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
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

/// Words of the tiny BERT's vocabulary (after the five specials `[PAD]` `[UNK]` `[CLS]` `[SEP]`
/// `[MASK]`, ids 0–4).
const BERT_WORDS: &[&str] = &[
    "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park", "book", "is", "long", ".",
    ",", "river", "night", "and", "by", "morning",
];

/// Writes a tiny BERT sentence encoder into `dir` (`config.json`, `tokenizer.json`, random
/// `model.safetensors` from `seed`): 2 layers, 32-d, 512 positions, a lower-casing word-level
/// tokenizer that adds `[CLS]` and `[SEP]`.
pub fn tiny_bert(dir: &Path, seed: u64) -> Result<(), InferError> {
    use tokenizers::models::bpe::Vocab;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::normalizers::utils::Lowercase;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::{AddedToken, Tokenizer};

    let err = |e: Box<dyn std::error::Error + Send + Sync>| InferError::Model {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let vocab: Vocab = specials
        .iter()
        .chain(BERT_WORDS)
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let model = WordLevel::builder().vocab(vocab).unk_token("[UNK]".into()).build().map_err(err)?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(Lowercase)).map_err(err)?;
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    let template = TemplateProcessing::builder()
        .try_single("[CLS] $0 [SEP]")
        .and_then(|t| t.try_pair("[CLS] $A [SEP] $B:1 [SEP]:1"))
        .map_err(|e| err(e.into()))?
        .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
        .build()
        .map_err(|e| err(e.into()))?;
    tokenizer.with_post_processor(Some(template));
    tokenizer.add_special_tokens(specials.map(|s| AddedToken::from(s, true))).map_err(err)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| InferError::Io { path: dir.to_path_buf(), error: e })?;
    tokenizer.save(dir.join(super::encoder::TOKENIZER_FILE), false).map_err(err)?;
    let config = serde_json::json!({
        "vocab_size": specials.len() + BERT_WORDS.len(), "hidden_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "max_position_embeddings": 512,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
        "pad_token_id": 0, "model_type": "bert"
    });
    let path = dir.join(super::encoder::CONFIG_FILE);
    std::fs::write(&path, config.to_string()).map_err(|e| InferError::Io { path, error: e })?;
    super::twin::bert_inflate(dir, seed)?;
    Ok(())
}
