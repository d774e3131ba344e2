//! Decomposition: turning a [`Book`] into a [`TaskTree`].
//!
//! The seam is [`Decomposer`]; implementations are files under `decompose/`: [`fixed`]
//! (fixed-size chunking after Wu et al. 2021) and, later, `learned` (a boundary scorer and a
//! dynamic program). A decomposer only proposes leaf spans and groupings ([`TreeSpec`]);
//! [`TaskTree::build`] validates them, so whatever a decomposer does, the tree downstream is
//! well formed. Token counting goes through [`TokenCounter`], so the policy model's real
//! tokenizer can replace the fast approximation without touching any decomposer.
//!
//! This module imports `book` and `tree` only; it never reads files, never touches the store
//! and never runs a model itself.

pub mod fixed;
pub mod learned;
pub mod oversee;

use std::sync::Arc;

pub use fixed::{ContextMode, FixedChunker, FixedConfig};

use crate::book::Book;
use crate::tree::{DecomposerInfo, TaskTree, TreeError};

#[allow(unused_imports)] // for the docs above
use crate::tree::TreeSpec;

#[derive(Debug, thiserror::Error)]
pub enum DecomposeError {
    #[error("book '{title}' has no text to decompose")]
    EmptyBook { title: String },
    #[error("invalid decomposer configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Learned(#[from] learned::LearnedError),
}

/// Something that splits a book into a tree of summarization tasks.
pub trait Decomposer {
    /// Short name recorded in the tree (`fixed`, `learned`).
    fn name(&self) -> &str;

    /// The configuration, recorded in the tree so that it says how it was built.
    fn config(&self) -> serde_json::Value;

    /// Name and configuration together, as [`TaskTree`] records them.
    fn info(&self) -> DecomposerInfo {
        DecomposerInfo { name: self.name().to_string(), config: self.config() }
    }

    fn decompose(&self, book: &Book) -> Result<TaskTree, DecomposeError>;
}

/// Counts tokens of a text, for sizing chunks. Implementations must be cheap enough to call once
/// per sentence of a book.
pub trait TokenCounter: Send + Sync {
    fn count(&self, text: &str) -> usize;

    /// Recorded in the tree's configuration.
    fn name(&self) -> &str {
        "custom"
    }
}

/// A fast tokenizer-free estimate, calibrated to English BPE vocabularies (about 1.3 tokens
/// per word): a run of letters and digits is one token per started 6 characters, every other
/// visible character is one token, whitespace is free except that a run of line breaks is one
/// token.
///
/// Splitting a text at whitespace before a visible character never changes the sum of the
/// counts; splitting anywhere else can only raise it. So a chunk's count is at most the sum of
/// its parts' counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApproxCounter;

impl TokenCounter for ApproxCounter {
    fn count(&self, text: &str) -> usize {
        let mut tokens = 0;
        let mut run = 0usize;
        let mut in_newlines = false;
        for c in text.chars() {
            let wordy = if c.is_ascii() {
                c.is_ascii_alphanumeric()
            } else {
                c.is_alphanumeric() && (c as u32) < 0x2E80
            };
            if wordy {
                run += 1;
                in_newlines = false;
                continue;
            }
            if run > 0 {
                tokens += 1 + (run - 1) / 6;
                run = 0;
            }
            if c == '\n' {
                if !in_newlines {
                    tokens += 1;
                    in_newlines = true;
                }
                continue;
            }
            in_newlines = false;
            if !c.is_whitespace() {
                tokens += 1;
            }
        }
        if run > 0 {
            tokens += 1 + (run - 1) / 6;
        }
        tokens
    }

    fn name(&self) -> &str {
        "approx"
    }
}

/// Counts with a real `tokenizers` tokenizer (e.g. the policy model's, built from its GGUF).
/// Falls back to [`ApproxCounter`] for a text the tokenizer rejects.
pub struct TokenizerCounter {
    tokenizer: Arc<tokenizers::Tokenizer>,
    name: String,
}

impl TokenizerCounter {
    /// `name` identifies the tokenizer in recorded configs (e.g. the model's file name).
    pub fn new(tokenizer: Arc<tokenizers::Tokenizer>, name: impl Into<String>) -> TokenizerCounter {
        TokenizerCounter { tokenizer, name: name.into() }
    }
}

impl TokenCounter for TokenizerCounter {
    fn count(&self, text: &str) -> usize {
        match self.tokenizer.encode_fast(text, false) {
            Ok(encoding) => encoding.len(),
            Err(_) => ApproxCounter.count(text),
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// The decomposer named `name` with default settings, if there is one.
pub fn by_name(name: &str) -> Option<Box<dyn Decomposer>> {
    match name {
        "fixed" => FixedChunker::new(FixedConfig::default()).ok().map(|d| Box::new(d) as _),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approx_counts() {
        let c = ApproxCounter;
        assert_eq!(c.count(""), 0);
        assert_eq!(c.count("   "), 0);
        assert_eq!(c.count("the cat sat."), 4);
        assert_eq!(c.count("conversation"), 2);
        assert_eq!(c.count("a\n\n\nb"), 3);
        assert_eq!(c.count("`Oh dear!'"), 5);
    }

    #[test]
    fn tokenizer_counter_counts_with_the_tokenizer() {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
            "decoder":null,"model":{"type":"WordLevel","vocab":{"the":0,"cat":1,"[UNK]":2},
            "unk_token":"[UNK]"}}"#;
        let tokenizer: tokenizers::Tokenizer = json.parse().unwrap();
        let counter = TokenizerCounter::new(Arc::new(tokenizer), "wordlevel-test");
        assert_eq!(counter.count("the cat sat."), 4);
        assert_eq!(counter.name(), "wordlevel-test");
        let chunker = FixedChunker::new(FixedConfig::default()).unwrap();
        let chunker = chunker.with_counter(Arc::new(counter));
        let tree = chunker.decompose(&Book::from_text("t", "the cat. the cat.")).unwrap();
        assert_eq!(tree.decomposer().config["token_counter"], "wordlevel-test");
        assert_eq!(tree.node(tree.root()).input_tokens, 6);
    }

    #[test]
    fn approx_is_additive_at_whitespace_and_subadditive_elsewhere() {
        let c = ApproxCounter;
        let text = "Alice was beginning\n\nto get very-tired of sitting.  Yes!";
        for (i, _) in text.char_indices() {
            let (a, b) = text.split_at(i);
            let parts = c.count(a) + c.count(b);
            assert!(parts >= c.count(text), "{i}");
            if a.ends_with(char::is_whitespace) && !b.starts_with(char::is_whitespace) {
                assert_eq!(parts, c.count(text), "{i}");
            }
        }
    }
}
