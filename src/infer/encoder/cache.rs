//! The embedding-cache hook: [`EmbeddingCache`] (implemented by callers over their store; a
//! `HashMap` for memory), the key of an embedding, its byte encoding, and [`embed_cached`].

use std::collections::HashMap;

use super::{CacheError, EncoderError};
use crate::infer::{Encoder, InferError};

/// The key of a cached embedding.
pub type EmbeddingKey = [u8; 32];

/// Where embeddings are kept between runs. The caller implements it over its store (this module
/// never imports the store); a `HashMap` implements it for in-memory use.
pub trait EmbeddingCache {
    /// The embedding stored under `key`, if any.
    fn get(&mut self, key: &EmbeddingKey) -> Result<Option<Vec<f32>>, CacheError>;
    /// Stores `embedding` under `key`.
    fn put(&mut self, key: &EmbeddingKey, embedding: &[f32]) -> Result<(), CacheError>;
    /// Makes what was put so far durable (a no-op for memory caches).
    fn flush(&mut self) -> Result<(), CacheError> {
        Ok(())
    }
}

/// An embedding cache shared between threads and owners (a store-backed one, usually).
pub type SharedCache = std::sync::Arc<std::sync::Mutex<dyn EmbeddingCache + Send>>;

impl EmbeddingCache for HashMap<EmbeddingKey, Vec<f32>> {
    fn get(&mut self, key: &EmbeddingKey) -> Result<Option<Vec<f32>>, CacheError> {
        Ok(HashMap::get(self, key).cloned())
    }

    fn put(&mut self, key: &EmbeddingKey, embedding: &[f32]) -> Result<(), CacheError> {
        self.insert(*key, embedding.to_vec());
        Ok(())
    }
}

/// The cache key of `text`'s embedding under `encoder`: blake3 over a version tag, the model's
/// hash, the window size (it decides truncation) and the text.
pub fn embedding_key(encoder: &dyn Encoder, text: &str) -> EmbeddingKey {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"rrm.embedding.v1\0");
    hasher.update(encoder.identity().hash.as_bytes());
    hasher.update(b"\0");
    hasher.update(&(encoder.max_tokens() as u64).to_le_bytes());
    hasher.update(text.as_bytes());
    *hasher.finalize().as_bytes()
}

/// Little-endian `f32`s: how an embedding is stored as bytes.
pub fn embedding_to_bytes(embedding: &[f32]) -> Vec<u8> {
    embedding.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The inverse of [`embedding_to_bytes`]; `None` when the length is not a multiple of 4.
pub fn embedding_from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect(),
    )
}

/// [`Encoder::embed`] through a cache: looks every text up by [`embedding_key`], embeds only the
/// misses (each distinct text once), stores them, and returns all embeddings in order. A cached
/// value of the wrong dimension is treated as a miss and overwritten.
pub fn embed_cached(
    encoder: &dyn Encoder,
    cache: &mut dyn EmbeddingCache,
    texts: &[&str],
) -> Result<Vec<Vec<f32>>, InferError> {
    let dim = encoder.dim();
    let keys: Vec<EmbeddingKey> = texts.iter().map(|text| embedding_key(encoder, text)).collect();
    let mut out: Vec<Option<Vec<f32>>> = Vec::with_capacity(texts.len());
    let mut misses: HashMap<EmbeddingKey, usize> = HashMap::new();
    let mut miss_texts: Vec<&str> = Vec::new();
    for (key, text) in keys.iter().zip(texts) {
        let hit = cache.get(key).map_err(EncoderError::Cache)?.filter(|e| e.len() == dim);
        if hit.is_none() && !misses.contains_key(key) {
            misses.insert(*key, miss_texts.len());
            miss_texts.push(text);
        }
        out.push(hit);
    }
    if !miss_texts.is_empty() {
        let computed = encoder.embed(&miss_texts)?;
        for (text, embedding) in miss_texts.iter().zip(&computed) {
            cache.put(&embedding_key(encoder, text), embedding).map_err(EncoderError::Cache)?;
        }
        for (slot, key) in out.iter_mut().zip(&keys) {
            if slot.is_none() {
                *slot = misses.get(key).and_then(|&i| computed.get(i)).cloned();
            }
        }
    }
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}
