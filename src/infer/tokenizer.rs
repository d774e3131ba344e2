//! Tokenizers built from GGUF metadata, and chat templates rendered with minijinja.
//!
//! A GGUF file of a GPT-2-style BPE model (llama 3, SmolLM, qwen2) carries its tokenizer as
//! metadata: `tokenizer.ggml.tokens`, `.merges`, `.token_type`, the special ids, and often a
//! Jinja chat template (`tokenizer.chat_template`). [`GgufTokenizer::from_metadata`] turns that
//! into a `tokenizers::Tokenizer`: BPE over the vocabulary and merges, a byte-level
//! pre-tokenizer without prefix space and a byte-level decoder; tokens of type 3 (control) and
//! 4 (user-defined) become special tokens, so `<|im_start|>` in a rendered prompt is one id.
//!
//! A SentencePiece model (`tokenizer.ggml.model = "llama"`: Gemma, Llama 2) carries pieces
//! with scores and no merges. llama.cpp tokenizes it by repeatedly joining the adjacent pair
//! whose joined piece is in the vocabulary with the highest score (leftmost on ties), spaces
//! written as `▁`, and characters outside the vocabulary as `<0xXX>` byte pieces. The same
//! thing as a `tokenizers` BPE: every split of a piece into two pieces is a merge, ranked by
//! the joined piece's score, with byte fallback and a `" " → "▁"` normalizer
//! ([`spm_tokenizer`]).
//!
//! [`ChatTemplate`] renders a list of [`ChatMessage`]s the way Hugging Face does (the template
//! sees `messages`, `add_generation_prompt`, `bos_token`, `eos_token`); a model without a
//! template gets a plain ChatML-like fallback.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{AddedToken, Tokenizer};

use super::{ChatMessage, Role};

/// Why a tokenizer or template could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("the model has no tokenizer metadata `{0}`")]
    Missing(&'static str),
    #[error("tokenizer metadata `{key}` is malformed: {message}")]
    Malformed { key: &'static str, message: String },
    #[error("unsupported tokenizer model `{0}` (byte-level BPE `gpt2` and SentencePiece `llama` are supported)")]
    Unsupported(String),
    #[error("building the tokenizer: {0}")]
    Build(String),
    #[error("tokenizing: {0}")]
    Encode(String),
    #[error("chat template: {0}")]
    Template(String),
}

/// A tokenizer built from a GGUF file, with the ids generation needs.
#[derive(Clone)]
pub struct GgufTokenizer {
    tokenizer: Tokenizer,
    /// Ids that end a sequence (the model's eos, and end-of-turn/end-of-text tokens).
    pub eos_ids: Vec<u32>,
    pub bos_id: Option<u32>,
    pub bos_token: String,
    pub eos_token: String,
    /// The chat template, from the model or the fallback.
    pub chat_template: ChatTemplate,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("eos_ids", &self.eos_ids)
            .field("bos_id", &self.bos_id)
            .finish()
    }
}

fn get<'a>(md: &'a HashMap<String, Value>, key: &'static str) -> Result<&'a Value, TokenizerError> {
    md.get(key).ok_or(TokenizerError::Missing(key))
}

fn string_array(
    md: &HashMap<String, Value>,
    key: &'static str,
) -> Result<Vec<String>, TokenizerError> {
    let values = get(md, key)?
        .to_vec()
        .map_err(|e| TokenizerError::Malformed { key, message: e.to_string() })?;
    values
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|e| TokenizerError::Malformed { key, message: e.to_string() })
        })
        .collect()
}

fn opt_u32(md: &HashMap<String, Value>, key: &'static str) -> Option<u32> {
    md.get(key).and_then(|v| match v {
        Value::U32(x) => Some(*x),
        Value::I32(x) => u32::try_from(*x).ok(),
        Value::U64(x) => u32::try_from(*x).ok(),
        Value::I64(x) => u32::try_from(*x).ok(),
        _ => None,
    })
}

fn f32_array(md: &HashMap<String, Value>, key: &'static str) -> Result<Vec<f32>, TokenizerError> {
    let values = get(md, key)?
        .to_vec()
        .map_err(|e| TokenizerError::Malformed { key, message: e.to_string() })?;
    values
        .iter()
        .map(|v| match v {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            other => Err(TokenizerError::Malformed {
                key,
                message: format!("expected numbers, found {:?}", other.value_type()),
            }),
        })
        .collect()
}

/// A GPT-2-style byte-level BPE from the vocabulary, the merges and the pre-tokenizer that
/// `tokenizer.ggml.pre` names.
fn bpe_tokenizer(
    md: &HashMap<String, Value>,
    tokens: &[String],
) -> Result<Tokenizer, TokenizerError> {
    let merges_raw = string_array(md, "tokenizer.ggml.merges").unwrap_or_default();
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let mut merges = Vec::with_capacity(merges_raw.len());
    for m in &merges_raw {
        let (a, b) = m.split_once(' ').ok_or_else(|| TokenizerError::Malformed {
            key: "tokenizer.ggml.merges",
            message: format!("merge `{m}` is not two tokens separated by a space"),
        })?;
        merges.push((a.to_string(), b.to_string()));
    }
    let pre = md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned();
    let pre = Pre::of(pre.as_deref());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre == Pre::Llama3)
        .build()
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    pre.install(&mut tokenizer)?;
    tokenizer.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    Ok(tokenizer)
}

/// The SentencePiece word boundary, written for a space.
const SPM_SPACE: &str = "\u{2581}";

/// A SentencePiece (score-ranked) model as a BPE: every way to write a piece as two pieces is
/// a merge, ranked by the joined piece's score (higher first; ties by id), which makes BPE's
/// lowest-rank-first, leftmost-on-ties rule the same as llama.cpp's highest-score-first
/// joining. Control (3) and byte (6) pieces are never built by joining; characters missing
/// from the vocabulary fall back to `<0xXX>` byte pieces.
fn spm_tokenizer(
    tokens: &[String],
    scores: &[f32],
    types: &[i64],
    add_space_prefix: bool,
) -> Result<Tokenizer, TokenizerError> {
    use tokenizers::decoders::{
        byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence as DecoderSequence,
        strip::Strip, DecoderWrapper,
    };
    use tokenizers::normalizers::{prepend::Prepend, replace::Replace, NormalizerWrapper};
    if scores.len() != tokens.len() {
        return Err(TokenizerError::Malformed {
            key: "tokenizer.ggml.scores",
            message: format!("{} scores for {} tokens", scores.len(), tokens.len()),
        });
    }
    let build = |e: tokenizers::Error| TokenizerError::Build(e.to_string());
    let ids: HashMap<&str, u32> =
        tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i as u32)).collect();
    let joinable = |i: usize| !matches!(types.get(i), Some(3) | Some(6));
    // (score, id of the joined piece, left, right)
    let mut ranked: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if !joinable(i) {
            continue;
        }
        for (cut, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(cut);
            if let (Some(&l), Some(&r)) = (ids.get(a), ids.get(b)) {
                if joinable(l as usize) && joinable(r as usize) {
                    ranked.push((scores[i], i as u32, l, r));
                }
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let merges: Vec<(String, String)> = ranked
        .iter()
        .map(|&(_, _, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect();
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .build()
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let space = Replace::new(" ", SPM_SPACE).map_err(build)?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        tokenizers::normalizers::Sequence::new(vec![
            NormalizerWrapper::Prepend(Prepend::new(SPM_SPACE.to_string())),
            NormalizerWrapper::Replace(space),
        ])
        .into()
    } else {
        space.into()
    };
    tokenizer.with_normalizer(Some(normalizer)).map_err(build)?;
    let mut decoders = vec![
        DecoderWrapper::Replace(Replace::new(SPM_SPACE, " ").map_err(build)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

impl GgufTokenizer {
    /// Builds the tokenizer from a GGUF file's metadata.
    pub fn from_metadata(md: &HashMap<String, Value>) -> Result<Self, TokenizerError> {
        let model = get(md, "tokenizer.ggml.model")?
            .to_string()
            .map_err(|e| TokenizerError::Malformed {
                key: "tokenizer.ggml.model",
                message: e.to_string(),
            })?
            .clone();
        if model != "gpt2" && model != "llama" {
            return Err(TokenizerError::Unsupported(model));
        }
        let tokens = string_array(md, "tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| TokenizerError::Malformed {
                    key: "tokenizer.ggml.token_type",
                    message: e.to_string(),
                })?
                .iter()
                .map(|v| match v {
                    Value::I32(x) => *x as i64,
                    Value::U32(x) => *x as i64,
                    Value::I64(x) => *x,
                    Value::U8(x) => *x as i64,
                    Value::I8(x) => *x as i64,
                    _ => 1,
                })
                .collect(),
            None => vec![1; tokens.len()],
        };
        let mut tokenizer = if model == "llama" {
            let scores = f32_array(md, "tokenizer.ggml.scores")?;
            let add_space_prefix = md
                .get("tokenizer.ggml.add_space_prefix")
                .is_some_and(|v| matches!(v, Value::Bool(true)));
            spm_tokenizer(&tokens, &scores, &types, add_space_prefix)?
        } else {
            bpe_tokenizer(md, &tokens)?
        };
        // Control tokens (type 3) are special; user-defined ones (type 4) are matched whole
        // too but kept in decoded text, as Hugging Face's `special: false` added tokens are.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter().chain(std::iter::repeat(&1)))
            .filter(|(_, &ty)| ty == 3 || ty == 4)
            .map(|(t, &ty)| {
                let token = AddedToken::from(t.clone(), ty == 3);
                // llama.cpp matches a SentencePiece model's tokens against the raw text.
                if model == "llama" {
                    token.normalized(false)
                } else {
                    token
                }
            })
            .collect();
        let (special, plain): (Vec<AddedToken>, Vec<AddedToken>) =
            added.into_iter().partition(|t| t.special);
        tokenizer.add_special_tokens(special).map_err(|e| TokenizerError::Build(e.to_string()))?;
        tokenizer.add_tokens(plain).map_err(|e| TokenizerError::Build(e.to_string()))?;
        if md.get("tokenizer.ggml.add_bos_token").is_some_and(|v| matches!(v, Value::Bool(true))) {
            if let Some(bos) = opt_u32(md, "tokenizer.ggml.bos_token_id")
                .and_then(|i| tokens.get(i as usize).map(|t| (t.clone(), i)))
            {
                // Only for `encode(text, true)` (a saved tokenizer.json used by transformers);
                // our own `encode` adds no special tokens.
                let template = tokenizers::processors::template::TemplateProcessing::builder()
                    .try_single(format!("{} $A", bos.0))
                    .and_then(|t| t.try_pair(format!("{} $A {} $B", bos.0, bos.0)))
                    .map_err(|e| TokenizerError::Build(e.to_string()))?
                    .special_tokens(vec![bos])
                    .build()
                    .map_err(|e| TokenizerError::Build(e.to_string()))?;
                tokenizer.with_post_processor(Some(template));
            }
        }

        let token =
            |id: Option<u32>| id.and_then(|i| tokens.get(i as usize)).cloned().unwrap_or_default();
        let bos_id = opt_u32(md, "tokenizer.ggml.bos_token_id");
        let eos_id = opt_u32(md, "tokenizer.ggml.eos_token_id");
        let mut eos_ids: Vec<u32> = eos_id.into_iter().collect();
        if let Some(eot) = opt_u32(md, "tokenizer.ggml.eot_token_id") {
            eos_ids.push(eot);
        }
        for name in
            ["<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>"]
        {
            if let Some(i) = tokens.iter().position(|t| t == name) {
                eos_ids.push(i as u32);
            }
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let chat_template = match md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok())
        {
            Some(source) => ChatTemplate::new(source.clone())?,
            // Gemma's turns when the file has no template (base models).
            None if tokens.iter().any(|t| t == "<start_of_turn>") => ChatTemplate::gemma(),
            None => ChatTemplate::fallback(),
        };
        Ok(Self {
            tokenizer,
            eos_ids,
            bos_id,
            bos_token: token(bos_id),
            eos_token: token(eos_id),
            chat_template,
        })
    }

    /// The underlying `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.tokenizer.decode(ids, true).map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Renders `messages` with the model's chat template, ending with the assistant's turn.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, TokenizerError> {
        self.chat_template.render(messages, &self.bos_token, &self.eos_token)
    }
}

/// The pre-tokenizer of a byte-level BPE model, by the name llama.cpp writes as
/// `tokenizer.ggml.pre` (it names the split of text into words before BPE merges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pre {
    /// GPT-2's word split (also what an unknown or missing name gets, as before).
    Gpt2,
    /// SmolLM, StarCoder: every digit on its own, then GPT-2's split.
    SmolLm,
    /// Qwen2: one regex (single digits, newlines kept apart), NFC-normalized text.
    Qwen2,
    /// Llama 3: the Qwen2 regex with up to three digits together; merges ignored for words in
    /// the vocabulary.
    Llama3,
}

/// Qwen2's split regex, as its tokenizer.json writes it.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split regex.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl Pre {
    /// Every pre-tokenizer we build, by llama.cpp name.
    pub const ALL: [(Pre, &'static str); 4] = [
        (Pre::SmolLm, "smollm"),
        (Pre::Qwen2, "qwen2"),
        (Pre::Llama3, "llama-bpe"),
        (Pre::Gpt2, "gpt2"),
    ];

    /// The pre-tokenizer a `tokenizer.ggml.pre` value names.
    pub fn of(name: Option<&str>) -> Pre {
        match name {
            Some("smollm" | "starcoder" | "refact" | "codeshell") => Pre::SmolLm,
            Some("qwen2" | "stablelm2") => Pre::Qwen2,
            Some("llama-bpe" | "llama3" | "dbrx" | "smaug-bpe") => Pre::Llama3,
            _ => Pre::Gpt2,
        }
    }

    /// The name written as `tokenizer.ggml.pre`.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(p, _)| *p == self).map_or("gpt2", |(_, n)| n)
    }

    fn install(self, tokenizer: &mut Tokenizer) -> Result<(), TokenizerError> {
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::pre_tokenizers::digits::Digits;
        use tokenizers::pre_tokenizers::sequence::Sequence;
        use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
        use tokenizers::pre_tokenizers::PreTokenizerWrapper as W;
        use tokenizers::SplitDelimiterBehavior;
        let build = |e: tokenizers::Error| TokenizerError::Build(e.to_string());
        let split = |regex: &str| -> Result<W, TokenizerError> {
            Ok(W::Split(
                Split::new(
                    SplitPattern::Regex(regex.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(build)?,
            ))
        };
        match self {
            Pre::Gpt2 => {
                tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
            }
            Pre::SmolLm => {
                tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                    W::Digits(Digits::new(true)),
                    W::ByteLevel(ByteLevel::new(false, true, true)),
                ])));
            }
            Pre::Qwen2 => {
                tokenizer
                    .with_normalizer(Some(tokenizers::normalizers::unicode::NFC))
                    .map_err(build)?;
                tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                    split(QWEN2_REGEX)?,
                    W::ByteLevel(ByteLevel::new(false, false, false)),
                ])));
            }
            Pre::Llama3 => {
                tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                    split(LLAMA3_REGEX)?,
                    W::ByteLevel(ByteLevel::new(false, true, false)),
                ])));
            }
        }
        Ok(())
    }
}

/// A Jinja chat template (Hugging Face's `chat_template`), rendered with minijinja.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
}

/// The template used when a model carries none: ChatML-like turns.
const FALLBACK_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n\
{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Gemma's turn format (`user` / `model`, no system role: a system message opens the first user
/// turn), beginning with the BOS token.
const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% set ns = namespace(system='') %}\
{% for message in messages %}{% if message.role == 'system' %}\
{% set ns.system = ns.system + message.content | trim + '\n\n' %}{% else %}\
<start_of_turn>{{ 'model' if message.role == 'assistant' else 'user' }}\n\
{% if message.role == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}\
{{ message.content | trim }}<end_of_turn>\n{% endif %}{% endfor %}\
{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

impl ChatTemplate {
    /// Checks that `source` compiles.
    pub fn new(source: String) -> Result<Self, TokenizerError> {
        let mut env = minijinja::Environment::new();
        env.add_template("chat", &source).map_err(|e| TokenizerError::Template(e.to_string()))?;
        Ok(Self { source })
    }

    /// The plain template for models without one.
    pub fn fallback() -> Self {
        Self { source: FALLBACK_TEMPLATE.to_string() }
    }

    /// Gemma's turns, for a Gemma model whose file carries no template.
    pub fn gemma() -> Self {
        Self { source: GEMMA_TEMPLATE.to_string() }
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` with `add_generation_prompt = true`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String, TokenizerError> {
        let mut env = minijinja::Environment::new();
        // Hugging Face templates call `raise_exception` for unsupported message orders.
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", &self.source)
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        let tmpl = env.get_template("chat").map_err(|e| TokenizerError::Template(e.to_string()))?;
        let messages: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| {
                minijinja::context! { role => role_name(m.role), content => m.content.as_str() }
            })
            .collect();
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => bos_token,
            eos_token => eos_token,
        })
        .map_err(|e| TokenizerError::Template(e.to_string()))
    }
}

/// GPT-2's reversible map from bytes to printable characters, used by byte-level BPE vocabularies.
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            let c = next;
            next += 1;
            c
        };
        table[b as usize] = char::from_u32(c).unwrap_or('?');
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_onto_printables() {
        let t = byte_to_char_table();
        let mut seen: Vec<char> = t.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
    }

    #[test]
    fn fallback_template_renders_chatml() {
        let out = ChatTemplate::fallback()
            .render(&[ChatMessage::system("S"), ChatMessage::user("Hi")], "", "")
            .unwrap();
        assert_eq!(out, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn bad_template_is_an_error() {
        assert!(ChatTemplate::new("{% for %}".into()).is_err());
    }
}
