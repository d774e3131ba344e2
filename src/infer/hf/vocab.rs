//! A Hugging Face tokenizer (`tokenizer.json`, `tokenizer_config.json`, `config.json`,
//! `generation_config.json`, `chat_template.jinja`) as GGUF tokenizer metadata, the way
//! llama.cpp's converter writes it: `tokenizer.ggml.model = gpt2`, the tokens by id (ids the
//! tokenizer does not use, up to the embedding's rows, as `[PAD<id>]` of type unused), the
//! merges as `"a b"`, token types (added special tokens control, other added tokens
//! user-defined), the bos/eos/pad/unk ids, `add_bos_token`, and the chat template.
//!
//! `tokenizer.ggml.pre` names the pre-tokenizer (how text is split into words before merges).
//! llama.cpp recognizes it by hashing the tokens of a probe text; we do the same in spirit: the
//! first of our pre-tokenizers ([`Pre::ALL`]) whose tokenizer gives exactly the Hugging Face
//! tokenizer's ids on a probe text is written, and a tokenizer none of them reproduces is an
//! error rather than a model that tokenizes differently from how it was trained.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;

use super::{
    malformed, read_json, read_json_opt, HfError, CHAT_TEMPLATE_FILE, CONFIG_FILE,
    GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
};
use crate::infer::tokenizer::{GgufTokenizer, Pre};

/// Texts both tokenizers must agree on: contractions, digit runs, whitespace runs, newlines,
/// accents, other scripts, emoji.
pub(crate) const PROBES: &[&str] = &[
    "Hello world! It's 2024, and I'm 12345 years old; we'd've said 3.14159 or 1,000,000.",
    "\n\n  The  quick\tbrown fox's café — naïve résumé.\r\n   indented\n\n\nend   ",
    "DON'T SHOUT'LL 你好，世界 🙂🙂 ｆｕｌｌ Ω≈ç√ x=1+2*3 <tag> ¡Hola! 100% $5.00",
];

fn tok_err(path: &Path, message: impl std::fmt::Display) -> HfError {
    HfError::Tokenizer { path: path.to_path_buf(), message: message.to_string() }
}

/// The content of a `*_token` entry of tokenizer_config.json (a string or `{content: …}`).
fn token_content(v: &Json) -> Option<&str> {
    match v {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content").and_then(Json::as_str),
        _ => None,
    }
}

/// An id from a config (`eos_token_id` may be a list: its first).
fn config_id(v: Option<&Json>) -> Option<u32> {
    match v? {
        Json::Number(n) => n.as_u64().and_then(|x| u32::try_from(x).ok()),
        Json::Array(a) => a.first().and_then(Json::as_u64).and_then(|x| u32::try_from(x).ok()),
        _ => None,
    }
}

/// The tokenizer metadata of the model folder `dir`, for an embedding of `vocab_rows` rows.
pub(crate) fn metadata(dir: &Path, vocab_rows: usize) -> Result<Vec<(String, Value)>, HfError> {
    let path = dir.join(TOKENIZER_FILE);
    let json = read_json(&path)?;
    let model = json.get("model").ok_or_else(|| tok_err(&path, "no `model`"))?;
    let kind = model.get("type").and_then(Json::as_str).unwrap_or("BPE");
    if kind != "BPE" {
        return Err(HfError::Unsupported {
            path: path.clone(),
            message: format!("tokenizer model `{kind}` (only byte-level BPE)"),
        });
    }
    if model.get("byte_fallback").and_then(Json::as_bool) == Some(true) {
        return Err(HfError::Unsupported {
            path: path.clone(),
            message: "a SentencePiece-style BPE tokenizer (byte_fallback); only byte-level BPE"
                .into(),
        });
    }
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| tok_err(&path, "no `model.vocab` object"))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab_rows];
    let mut types: Vec<i32> = vec![1; vocab_rows];
    let mut place = |id: u64, text: &str, ty: i32| -> Result<(), HfError> {
        let slot = usize::try_from(id).ok().filter(|&i| i < vocab_rows).ok_or_else(|| {
            tok_err(
                &path,
                format!(
                    "token `{text}` has id {id}, beyond the model's {vocab_rows} embedding rows"
                ),
            )
        })?;
        tokens[slot] = Some(text.to_string());
        types[slot] = ty;
        Ok(())
    };
    for (text, id) in vocab {
        let id =
            id.as_u64().ok_or_else(|| tok_err(&path, format!("the id of `{text}` is {id}")))?;
        place(id, text, 1)?;
    }
    for added in json.get("added_tokens").and_then(Json::as_array).into_iter().flatten() {
        let id = added.get("id").and_then(Json::as_u64);
        let text = added.get("content").and_then(Json::as_str);
        let (Some(id), Some(text)) = (id, text) else {
            return Err(tok_err(&path, format!("added token {added} has no id or content")));
        };
        let special = added.get("special").and_then(Json::as_bool).unwrap_or(false);
        place(id, text, if special { 3 } else { 4 })?;
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = 5;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let mut merges = Vec::new();
    for m in model.get("merges").and_then(Json::as_array).into_iter().flatten() {
        let merge = match m {
            Json::String(s) => s.clone(),
            Json::Array(pair) => match pair.as_slice() {
                [Json::String(a), Json::String(b)] => format!("{a} {b}"),
                _ => return Err(tok_err(&path, format!("merge {m} is not two tokens"))),
            },
            _ => return Err(tok_err(&path, format!("merge {m} is not two tokens"))),
        };
        merges.push(merge);
    }

    let by_text: HashMap<&str, u32> =
        tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i as u32)).collect();
    let tc = read_json_opt(&dir.join(TOKENIZER_CONFIG_FILE))?.unwrap_or(Json::Null);
    let config = read_json_opt(&dir.join(CONFIG_FILE))?.unwrap_or(Json::Null);
    let gen = read_json_opt(&dir.join(GENERATION_CONFIG_FILE))?.unwrap_or(Json::Null);
    let special_id = |what: &str| -> Option<u32> {
        tc.get(format!("{what}_token"))
            .and_then(token_content)
            .and_then(|t| by_text.get(t).copied())
            .or_else(|| config_id(config.get(format!("{what}_token_id"))))
            .or_else(|| config_id(gen.get(format!("{what}_token_id"))))
            .filter(|&i| (i as usize) < vocab_rows)
    };
    let specials: Vec<(&str, u32)> = [
        ("bos", "tokenizer.ggml.bos_token_id"),
        ("eos", "tokenizer.ggml.eos_token_id"),
        ("unk", "tokenizer.ggml.unknown_token_id"),
        ("pad", "tokenizer.ggml.padding_token_id"),
    ]
    .into_iter()
    .filter_map(|(what, key)| special_id(what).map(|id| (key, id)))
    .collect();
    let mut md: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(merges.into_iter().map(Value::String).collect()),
        ),
    ];
    md.extend(specials.into_iter().map(|(key, id)| (key.to_string(), Value::U32(id))));
    for (flag, key) in [
        ("add_bos_token", "tokenizer.ggml.add_bos_token"),
        ("add_eos_token", "tokenizer.ggml.add_eos_token"),
    ] {
        if let Some(b) = tc.get(flag).and_then(Json::as_bool) {
            md.push((key.into(), Value::Bool(b)));
        }
    }
    if let Some(t) = chat_template(dir, &tc)? {
        md.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    let pre = detect_pre(&path, &md)?;
    md.push(("tokenizer.ggml.pre".into(), Value::String(pre.name().into())));
    Ok(md)
}

/// The chat template: tokenizer_config.json's `chat_template` (a string, or a list of named
/// templates: `default`), else `chat_template.jinja`.
fn chat_template(dir: &Path, tc: &Json) -> Result<Option<String>, HfError> {
    let path = dir.join(TOKENIZER_CONFIG_FILE);
    match tc.get("chat_template") {
        Some(Json::String(s)) => return Ok(Some(s.clone())),
        Some(Json::Array(named)) => {
            let default =
                named.iter().find(|t| t.get("name").and_then(Json::as_str) == Some("default"));
            return match default.and_then(|t| t.get("template")).and_then(Json::as_str) {
                Some(s) => Ok(Some(s.to_string())),
                None => Err(malformed(&path, "`chat_template` is a list without a `default` one")),
            };
        }
        Some(Json::Null) | None => {}
        Some(other) => return Err(malformed(&path, format!("`chat_template` is {other}"))),
    }
    let file = dir.join(CHAT_TEMPLATE_FILE);
    if file.is_file() {
        return std::fs::read_to_string(&file).map(Some).map_err(|e| super::io_err(&file, e));
    }
    Ok(None)
}

/// The first of our pre-tokenizers that reproduces the Hugging Face tokenizer on [`PROBES`].
fn detect_pre(path: &Path, md: &[(String, Value)]) -> Result<Pre, HfError> {
    let hf = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| tok_err(path, format!("the tokenizers library cannot read it: {e}")))?;
    let want: Vec<Vec<u32>> = PROBES
        .iter()
        .map(|p| hf.encode(*p, false).map(|e| e.get_ids().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| tok_err(path, e))?;
    let mut map: HashMap<String, Value> = md.iter().cloned().collect();
    let mut first_difference = None;
    for (pre, name) in Pre::ALL {
        map.insert("tokenizer.ggml.pre".into(), Value::String(name.into()));
        let ours = GgufTokenizer::from_metadata(&map).map_err(|e| tok_err(path, e))?;
        let mut same = true;
        for (probe, want) in PROBES.iter().zip(&want) {
            let got = ours.encode(probe).map_err(|e| tok_err(path, e))?;
            if &got != want {
                same = false;
                first_difference.get_or_insert_with(|| {
                    format!("on {probe:?} the tokenizer gives {want:?}, `{name}` gives {got:?}")
                });
                break;
            }
        }
        if same {
            return Ok(pre);
        }
    }
    Err(HfError::Unsupported {
        path: path.to_path_buf(),
        message: format!(
            "a pre-tokenizer none of ours ({}) reproduces; {}",
            Pre::ALL.map(|(_, n)| n).join(", "),
            first_difference.unwrap_or_default()
        ),
    })
}
