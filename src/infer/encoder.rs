//! The sentence encoder: all-MiniLM-L6-v2 (a 6-layer BERT, 384-d) on candle's `BertModel`, with
//! mean pooling over the attention mask and L2 normalization, as sentence-transformers does.
//!
//! - [`MiniLmEncoder`] loads `model.safetensors`, `config.json` and `tokenizer.json` from a model
//!   directory ([`MiniLmEncoder::resolve_and_load`] finds or fetches it by name, by default
//!   `minilm-l6`) and implements [`Encoder`]. It tokenizes without padding, sorts the inputs by token
//!   length, runs them in batches padded to the batch's longest row (so short sentences do not pay
//!   for long ones), and returns the embeddings in the caller's order. The shipped tokenizer pads
//!   and truncates at a fixed 128; that is overridden: truncation at [`DEFAULT_MAX_TOKENS`] (256,
//!   what sentence-transformers uses for this model; at most the model's 512 positions).
//! - [`split_windows`] and [`embed_long`] embed texts longer than the encoder's window: each text
//!   is cut at word boundaries into windows that fit, and the window embeddings are averaged
//!   (weighted by their token counts) and renormalized. They work on any `&dyn Encoder`.
//! - [`EmbeddingCache`] is the hook through which a caller plugs in a store: [`embed_cached`] (and
//!   [`embed_long`], per window) looks embeddings up by [`embedding_key`] (a blake3 hash of the
//!   model, the window size and the text) and computes only the misses. This module knows nothing
//!   of the store; the caller implements the trait over it ([`embedding_to_bytes`] and
//!   [`embedding_from_bytes`] give the value encoding).
//!
//! Files: this one loads the model and runs it; `window.rs` embeds long texts in windows;
//! `cache.rs` is the embedding-cache hook.
//!
//! Embedding is CPU-bound and blocking (candle's kernels use `RAYON_NUM_THREADS` threads); async
//! callers run it under `tokio::task::spawn_blocking`.
//!
//! Errors name the file at fault: a missing, truncated or malformed `model.safetensors`,
//! `config.json` or `tokenizer.json` gives an [`EncoderError::File`], never a panic.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use sha2::{Digest, Sha256};
use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::{fetch, Encoder, InferError, ModelIdentity};

mod cache;
mod window;

pub use cache::{
    embed_cached, embedding_from_bytes, embedding_key, embedding_to_bytes, EmbeddingCache,
    EmbeddingKey, SharedCache,
};
pub use window::{embed_long, split_windows};

/// The weights file in a model directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// The BERT configuration file in a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// The Hugging Face tokenizer file in a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Tokens per input (special tokens included) unless configured otherwise: sentence-transformers'
/// `max_seq_length` for all-MiniLM-L6-v2.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// Errors of the encoder and of the embedding helpers.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// A model file is missing, unreadable, truncated or does not hold what it should.
    #[error("encoder model file {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// An option is out of range (for example more tokens than the model has positions).
    #[error("encoder option: {0}")]
    Option(String),
    /// The tokenizer failed on an input.
    #[error("tokenizing encoder input: {0}")]
    Tokenize(String),
    /// The forward pass failed (out of memory, a device error).
    #[error("encoder forward pass: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The caller's [`EmbeddingCache`] failed.
    #[error("embedding cache: {0}")]
    Cache(#[source] CacheError),
}

/// The error type an [`EmbeddingCache`] reports (the caller's store error, boxed).
pub type CacheError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How to load a [`MiniLmEncoder`].
#[derive(Debug, Clone)]
pub struct EncoderOptions {
    /// Where the model runs (`Device::Cpu` by default; `Device::new_cuda(0)` with `--features
    /// cuda`).
    pub device: Device,
    /// Tokens per input, special tokens included; longer inputs are truncated. At most the model's
    /// `max_position_embeddings` (512).
    pub max_tokens: usize,
    /// At most this many texts per forward pass.
    pub batch_size: usize,
    /// At most this many tokens (rows × padded length) per forward pass. Long rows are further
    /// limited so that one layer's attention scores (rows × heads × length², f32) stay under
    /// 24 MiB: larger buffers are fresh pages from the kernel on every allocation, which was
    /// measured to cost a fifth of the time on 256-token passages.
    pub max_batch_tokens: usize,
    /// The name in the model's [`ModelIdentity`] (the hash is always the weights' sha256).
    pub name: String,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            max_tokens: DEFAULT_MAX_TOKENS,
            batch_size: 32,
            max_batch_tokens: 8192,
            name: "all-MiniLM-L6-v2".to_string(),
        }
    }
}

/// all-MiniLM-L6-v2 (or any BERT sentence encoder in the same layout) on candle.
pub struct MiniLmEncoder {
    model: BertModel,
    /// Truncates at `max_tokens`, never pads: padding is done per batch here.
    tokenizer: Tokenizer,
    /// Neither truncates nor pads: for [`Encoder::count_tokens`].
    counter: Tokenizer,
    identity: ModelIdentity,
    dim: usize,
    heads: usize,
    pad_id: u32,
    options: EncoderOptions,
}

/// Bytes of attention scores one forward pass may hold per layer (see
/// [`EncoderOptions::max_batch_tokens`]).
const MAX_ATTENTION_BYTES: usize = 24 << 20;

impl std::fmt::Debug for MiniLmEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLmEncoder")
            .field("identity", &self.identity)
            .field("dim", &self.dim)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn file_error(path: &Path, reason: impl Into<String>) -> EncoderError {
    EncoderError::File { path: path.to_path_buf(), reason: reason.into() }
}

fn read_file(path: &Path) -> Result<Vec<u8>, EncoderError> {
    std::fs::read(path).map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            file_error(
                path,
                format!(
                    "not found (a model directory holds {MODEL_FILE}, {CONFIG_FILE} and \
                     {TOKENIZER_FILE})"
                ),
            )
        } else {
            file_error(path, format!("cannot be read: {err}"))
        }
    })
}

impl MiniLmEncoder {
    /// Loads the encoder from `dir` (which holds `model.safetensors`, `config.json` and
    /// `tokenizer.json`) on the CPU with the default options.
    pub fn load(dir: &Path) -> Result<Self, InferError> {
        Self::load_with(dir, EncoderOptions::default())
    }

    /// Resolves `spec` with [`fetch::resolve_model_with`] — a registered name such as
    /// [`fetch::DEFAULT_ENCODER`] (fetched into `models_dir` on first use, `progress`: with a
    /// spinner), a model folder, or a Hugging Face cache entry `ORG/NAME` — and loads it. The
    /// identity's name becomes the resolved model's name.
    pub fn resolve_and_load(
        spec: &str,
        models_dir: &Path,
        progress: bool,
        options: EncoderOptions,
    ) -> Result<Self, InferError> {
        let resolved = fetch::resolve_model_with(spec, models_dir, progress)?;
        Self::load_with(&resolved.path, EncoderOptions { name: resolved.name, ..options })
    }

    /// Loads the encoder from `dir` with explicit options (device, window, batch sizes).
    pub fn load_with(dir: &Path, options: EncoderOptions) -> Result<Self, InferError> {
        Ok(Self::load_inner(dir, options)?)
    }

    fn load_inner(dir: &Path, options: EncoderOptions) -> Result<Self, EncoderError> {
        if options.batch_size == 0 || options.max_batch_tokens == 0 {
            return Err(EncoderError::Option(
                "batch_size and max_batch_tokens must be at least 1".into(),
            ));
        }
        let config_path = dir.join(CONFIG_FILE);
        let config: BertConfig = serde_json::from_slice(&read_file(&config_path)?)
            .map_err(|err| file_error(&config_path, format!("not a BERT config: {err}")))?;
        if options.max_tokens < 2 || options.max_tokens > config.max_position_embeddings {
            return Err(EncoderError::Option(format!(
                "max_tokens is {} but must be between 2 and the model's {} positions",
                options.max_tokens, config.max_position_embeddings
            )));
        }

        let tokenizer_path = dir.join(TOKENIZER_FILE);
        let mut counter = Tokenizer::from_bytes(read_file(&tokenizer_path)?)
            .map_err(|err| file_error(&tokenizer_path, format!("not a tokenizer: {err}")))?;
        counter.with_padding(None);
        counter
            .with_truncation(None)
            .map_err(|err| file_error(&tokenizer_path, err.to_string()))?;
        let mut tokenizer = counter.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: options.max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|err| file_error(&tokenizer_path, err.to_string()))?;
        let vocab = counter.get_vocab_size(true);
        if vocab > config.vocab_size {
            return Err(file_error(
                &tokenizer_path,
                format!(
                    "has {vocab} tokens but {CONFIG_FILE} gives the model {} (mismatched files?)",
                    config.vocab_size
                ),
            ));
        }
        let pad_id = u32::try_from(config.pad_token_id).map_err(|_| {
            file_error(&config_path, format!("pad_token_id {} is too large", config.pad_token_id))
        })?;

        let model_path = dir.join(MODEL_FILE);
        let bytes = read_file(&model_path)?;
        let hash = hex::encode(Sha256::digest(&bytes));
        let vb = VarBuilder::from_slice_safetensors(&bytes, DType::F32, &options.device).map_err(
            |err| file_error(&model_path, format!("not a valid safetensors file: {err}")),
        )?;
        let model = BertModel::load(vb, &config).map_err(|err| {
            file_error(
                &model_path,
                format!("does not hold the model {CONFIG_FILE} describes: {err}"),
            )
        })?;
        drop(bytes);

        tracing::debug!(dir = %dir.display(), %hash, "loaded sentence encoder");
        Ok(Self {
            model,
            tokenizer,
            counter,
            identity: ModelIdentity { name: options.name.clone(), hash },
            dim: config.hidden_size,
            heads: config.num_attention_heads.max(1),
            pad_id,
            options,
        })
    }

    /// The options the encoder was loaded with.
    pub fn options(&self) -> &EncoderOptions {
        &self.options
    }

    /// Tokenizes `texts` (truncated at `max_tokens`, special tokens added).
    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoding>, EncoderError> {
        self.tokenizer
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(|err| EncoderError::Tokenize(err.to_string()))
    }

    /// Runs one batch of tokenized inputs, all of similar length, and returns pooled, normalized
    /// embeddings in the batch's order.
    fn forward_batch(&self, batch: &[&Encoding]) -> Result<Vec<Vec<f32>>, EncoderError> {
        let rows = batch.len();
        let width = batch.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for encoding in batch {
            let row = encoding.get_ids();
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(self.pad_id, width - row.len()));
            mask.extend(std::iter::repeat_n(1u32, row.len()));
            mask.extend(std::iter::repeat_n(0u32, width - row.len()));
        }
        let device = &self.options.device;
        let ids = Tensor::from_vec(ids, (rows, width), device)?;
        let type_ids = ids.zeros_like()?;
        let mask = Tensor::from_vec(mask, (rows, width), device)?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?; // (rows, width, dim)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (rows, width, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (rows, dim)
        let counts = mask.sum(1)?.clamp(1f32, f32::MAX)?; // (rows, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
        Ok(mean.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }

    fn embed_inner(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncoderError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let encodings = self.tokenize(texts)?;
        // Batch by length: sort by token count, cut batches, scatter results back.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let (mut start, mut batches) = (0, 0usize);
        while start < order.len() {
            let mut end = start;
            while end < order.len() && end - start < self.options.batch_size {
                // Sorted ascending, so the candidate row is the longest yet.
                let width = encodings[order[end]].get_ids().len();
                let rows = end - start + 1;
                let attention_bytes = rows * self.heads * width * width * 4;
                if rows > 1
                    && (rows * width > self.options.max_batch_tokens
                        || attention_bytes > MAX_ATTENTION_BYTES)
                {
                    break;
                }
                end += 1;
            }
            let batch: Vec<&Encoding> = order[start..end].iter().map(|&i| &encodings[i]).collect();
            for (&i, embedding) in order[start..end].iter().zip(self.forward_batch(&batch)?) {
                out[i] = embedding;
            }
            start = end;
            batches += 1;
        }
        tracing::debug!(
            texts = texts.len(),
            tokens = encodings.iter().map(|e| e.get_ids().len()).sum::<usize>(),
            batches,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "embedded"
        );
        Ok(out)
    }
}

impl Encoder for MiniLmEncoder {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn max_tokens(&self) -> usize {
        self.options.max_tokens
    }

    /// Tokens of `text` with the special tokens (`[CLS]`, `[SEP]`), without truncation: an input
    /// is embedded whole when this is at most [`Encoder::max_tokens`].
    fn count_tokens(&self, text: &str) -> usize {
        match self.counter.encode_fast(text, true) {
            Ok(encoding) => encoding.get_ids().len(),
            // The tokenizer fails only on pathological inputs; estimate rather than fail.
            Err(_) => text.split_whitespace().count() + 2,
        }
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, InferError> {
        Ok(self.embed_inner(texts)?)
    }
}

/// Cosine similarity of two embeddings (their dot product when both are normalized, as the
/// encoder's are). 0 when either is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;
    use serde_json::json;
    use std::collections::HashMap;

    const WORDS: &[&str] = &[
        "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park", "book", "is", "long",
        "very", "short", "and", "it", "was", ".", ",", "##s",
    ];
    const SPECIALS: &[&str] = &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

    /// Writes a tiny randomly initialized BERT (2 layers, 32-d, 64 positions) with a word-piece
    /// tokenizer that, like the shipped one, pads and truncates at a fixed 128.
    fn tiny_model(dir: &Path) {
        let vocab: serde_json::Map<String, serde_json::Value> = SPECIALS
            .iter()
            .chain(WORDS)
            .enumerate()
            .map(|(i, w)| (w.to_string(), json!(i)))
            .collect();
        let config = json!({
            "vocab_size": vocab.len(), "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "max_position_embeddings": 64, "type_vocab_size": 2,
            "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
            "model_type": "bert"
        });
        let special = |id: usize, content: &str| {
            json!({"id": id, "special": true, "content": content, "single_word": false,
                   "lstrip": false, "rstrip": false, "normalized": false})
        };
        let tokenizer = json!({
            "version": "1.0",
            "truncation": {"max_length": 128, "strategy": "LongestFirst", "stride": 0},
            "padding": {"strategy": {"Fixed": 128}, "direction": "Right", "pad_to_multiple_of": null,
                        "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
            "added_tokens": SPECIALS.iter().enumerate().map(|(i, s)| special(i, s)).collect::<Vec<_>>(),
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}},
                         {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
                "special_tokens": {
                    "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                    "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
                }
            },
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab}
        });
        std::fs::write(dir.join(CONFIG_FILE), config.to_string()).expect("write config");
        std::fs::write(dir.join(TOKENIZER_FILE), tokenizer.to_string()).expect("write tokenizer");
        let bert_config: BertConfig = serde_json::from_value(config).expect("config");
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        BertModel::load(vb, &bert_config).expect("random BERT");
        varmap.save(dir.join(MODEL_FILE)).expect("write weights");
    }

    fn options(max_tokens: usize, batch_size: usize) -> EncoderOptions {
        EncoderOptions { max_tokens, batch_size, max_batch_tokens: 64, ..EncoderOptions::default() }
    }

    fn load(dir: &Path, max_tokens: usize, batch_size: usize) -> MiniLmEncoder {
        MiniLmEncoder::load_with(dir, options(max_tokens, batch_size)).expect("load tiny model")
    }

    const TEXTS: &[&str] = &[
        "The cat sat on the mat.",
        "A dog ran.",
        "",
        "The book is very long, and it was long and the dog ran in the park and the cat sat.",
        "Short.",
        "The cat sat on the mat.",
        "Dogs ran in the park, cats sat on the mat.",
    ];

    fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], tolerance: f32) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.len(), y.len());
            let diff = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            assert!(diff <= tolerance, "max difference {diff}");
        }
    }

    #[test]
    fn batched_equals_single_and_order_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_model(dir.path());
        // Batches of 2 (and at most 64 tokens) force several batches of different widths.
        let encoder = load(dir.path(), 32, 2);
        assert_eq!(encoder.dim(), 32);
        let batched = encoder.embed(TEXTS).expect("batch");
        let single: Vec<Vec<f32>> =
            TEXTS.iter().map(|t| encoder.embed(&[t]).expect("single").remove(0)).collect();
        assert_close(&batched, &single, 1e-5);
        for embedding in &batched {
            let norm = embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        }
        assert_close(&batched[0..1], &batched[5..6], 1e-6);
        let mut reversed: Vec<&str> = TEXTS.to_vec();
        reversed.reverse();
        let mut back = encoder.embed(&reversed).expect("reversed");
        back.reverse();
        assert_close(&batched, &back, 1e-5);
        assert!(encoder.embed(&[]).expect("empty").is_empty());
    }

    #[test]
    fn shipped_fixed_padding_and_truncation_are_overridden() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_model(dir.path());
        let encoder = load(dir.path(), 8, 32);
        // With the shipped fixed padding to 128 this would exceed the 64 positions.
        assert_eq!(encoder.count_tokens("the cat sat"), 5);
        let long = "the cat sat on the mat and the dog ran in the park";
        assert_eq!(encoder.count_tokens(long), 15, "counting does not truncate");
        // Truncation keeps [CLS], the first six words and [SEP].
        let out = encoder.embed(&[long, "the cat sat on the mat and"]).expect("embed");
        assert_close(&out[0..1], &out[1..2], 1e-5);
        let too_many = MiniLmEncoder::load_with(dir.path(), options(65, 4));
        assert!(matches!(too_many, Err(InferError::Encoder(EncoderError::Option(_)))));
    }

    #[test]
    fn identity_is_the_weights_sha256() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_model(dir.path());
        let encoder = load(dir.path(), 32, 4);
        let bytes = std::fs::read(dir.path().join(MODEL_FILE)).expect("read");
        assert_eq!(encoder.identity().hash, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(encoder.identity().name, "all-MiniLM-L6-v2");
    }

    fn load_error(dir: &Path) -> String {
        match MiniLmEncoder::load_with(dir, options(32, 4)) {
            Ok(_) => panic!("loading should fail"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_model(dir.path());
        let model = dir.path().join(MODEL_FILE);
        let weights = std::fs::read(&model).expect("read");

        std::fs::write(&model, &weights[..weights.len() / 2]).expect("truncate");
        let message = load_error(dir.path());
        assert!(message.contains("model.safetensors"), "{message}");

        std::fs::write(&model, b"definitely not safetensors").expect("garble");
        let message = load_error(dir.path());
        assert!(
            message.contains("model.safetensors") && message.contains("safetensors file"),
            "{message}"
        );

        std::fs::remove_file(&model).expect("remove");
        let message = load_error(dir.path());
        assert!(
            message.contains("model.safetensors") && message.contains("not found"),
            "{message}"
        );
        std::fs::write(&model, &weights).expect("restore");

        let config_path = dir.path().join(CONFIG_FILE);
        let config = std::fs::read_to_string(&config_path).expect("read config");
        std::fs::write(&config_path, config.replace("\"hidden_size\":32", "\"hidden_size\":48"))
            .expect("edit config");
        let message = load_error(dir.path());
        assert!(
            message.contains("model.safetensors") && message.contains("does not hold"),
            "{message}"
        );
        std::fs::write(&config_path, "{\"vocab_size\": ").expect("garble config");
        let message = load_error(dir.path());
        assert!(message.contains("config.json"), "{message}");
        std::fs::write(&config_path, &config).expect("restore config");

        std::fs::write(&config_path, config.replace("\"vocab_size\":26", "\"vocab_size\":20"))
            .expect("shrink vocabulary");
        let message = load_error(dir.path());
        assert!(message.contains("tokenizer.json") && message.contains("26 tokens"), "{message}");
        std::fs::write(&config_path, &config).expect("restore config");

        std::fs::write(dir.path().join(TOKENIZER_FILE), "[1, 2, 3]").expect("garble tokenizer");
        let message = load_error(dir.path());
        assert!(message.contains("tokenizer.json"), "{message}");
        std::fs::remove_file(dir.path().join(TOKENIZER_FILE)).expect("remove tokenizer");
        let message = load_error(dir.path());
        assert!(message.contains("tokenizer.json") && message.contains("not found"), "{message}");
    }

    #[test]
    fn long_texts_are_windowed_and_pooled() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_model(dir.path());
        let encoder = load(dir.path(), 10, 4);
        let long = "the cat sat on the mat . the dog ran in the park , and it was very long . \
                    a book is short and the cats sat";
        let windows = split_windows(&encoder, long);
        assert!(windows.len() >= 3, "{windows:?}");
        for window in &windows {
            assert!(encoder.count_tokens(window) <= 10, "{window:?}");
        }
        let rejoined: Vec<&str> = windows.iter().flat_map(|w| w.split_whitespace()).collect();
        assert_eq!(rejoined, long.split_whitespace().collect::<Vec<_>>());
        assert_eq!(split_windows(&encoder, "the cat"), vec!["the cat"]);
        assert_eq!(split_windows(&encoder, ""), vec![""]);

        let out = embed_long(&encoder, &["the cat sat", long], None).expect("embed_long");
        assert_close(&out[0..1], &encoder.embed(&["the cat sat"]).expect("embed"), 1e-6);
        let norm = out[1].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        // The pooled embedding is the token-weighted mean of the windows' embeddings.
        let parts = encoder.embed(&windows).expect("windows");
        let mut mean = vec![0f32; encoder.dim()];
        for (window, embedding) in windows.iter().zip(&parts) {
            let weight = encoder.count_tokens(window) as f32;
            mean.iter_mut().zip(embedding).for_each(|(m, x)| *m += weight * x);
        }
        assert!(cosine(&mean, &out[1]) > 0.99999);
    }

    /// Counts what reaches the model.
    struct Counting<'a> {
        inner: &'a MiniLmEncoder,
        embedded: std::sync::atomic::AtomicUsize,
    }

    impl Counting<'_> {
        fn embedded(&self) -> usize {
            self.embedded.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Encoder for Counting<'_> {
        fn identity(&self) -> &ModelIdentity {
            self.inner.identity()
        }
        fn dim(&self) -> usize {
            self.inner.dim()
        }
        fn max_tokens(&self) -> usize {
            self.inner.max_tokens()
        }
        fn count_tokens(&self, text: &str) -> usize {
            self.inner.count_tokens(text)
        }
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, InferError> {
            self.embedded.fetch_add(texts.len(), std::sync::atomic::Ordering::SeqCst);
            self.inner.embed(texts)
        }
    }

    #[test]
    fn cache_serves_hits_and_computes_each_miss_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_model(dir.path());
        let inner = load(dir.path(), 10, 4);
        let encoder = Counting { inner: &inner, embedded: 0.into() };
        let mut cache: HashMap<EmbeddingKey, Vec<f32>> = HashMap::new();

        let first = embed_cached(&encoder, &mut cache, TEXTS).expect("first");
        assert_eq!(encoder.embedded(), TEXTS.len() - 1, "the repeated text is embedded once");
        assert_close(&first, &inner.embed(TEXTS).expect("plain"), 1e-5);
        let second = embed_cached(&encoder, &mut cache, TEXTS).expect("second");
        assert_eq!(encoder.embedded(), TEXTS.len() - 1, "all hits");
        assert_close(&first, &second, 0.0);

        // A stored value of the wrong size is recomputed and replaced.
        let key = embedding_key(&encoder, TEXTS[1]);
        cache.insert(key, vec![1.0; 3]);
        let third = embed_cached(&encoder, &mut cache, TEXTS).expect("third");
        assert_eq!(encoder.embedded(), TEXTS.len());
        assert_close(&first, &third, 1e-5);
        assert_eq!(cache.get(&key).map(Vec::len), Some(32));

        // Windows of long texts go through the cache too.
        let long = "the cat sat on the mat . the dog ran in the park , and it was very long";
        let before = encoder.embedded();
        let a = embed_long(&encoder, &[long], Some(&mut cache)).expect("long");
        let windows = split_windows(&encoder, long).len();
        assert_eq!(encoder.embedded(), before + windows);
        let b = embed_long(&encoder, &[long], Some(&mut cache)).expect("long again");
        assert_eq!(encoder.embedded(), before + windows);
        assert_close(&a, &b, 0.0);
    }

    #[test]
    fn keys_depend_on_model_window_and_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_model(dir.path());
        let a = load(dir.path(), 10, 4);
        let b = load(dir.path(), 12, 4);
        assert_eq!(embedding_key(&a, "x"), embedding_key(&a, "x"));
        assert_ne!(embedding_key(&a, "x"), embedding_key(&a, "y"));
        assert_ne!(embedding_key(&a, "x"), embedding_key(&b, "x"));
        let v = vec![0.5f32, -1.25, 3.0];
        assert_eq!(embedding_from_bytes(&embedding_to_bytes(&v)), Some(v));
        assert_eq!(embedding_from_bytes(&[1, 2, 3]), None);
    }
}
