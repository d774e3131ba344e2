//! Features of (node input, candidate summary) from the frozen sentence encoder: the input's
//! and the summary's embeddings, their elementwise product and difference, their cosine, and
//! length features. Inputs longer than the encoder's window are embedded in windows and pooled
//! ([`embed_long`]). Embeddings are cached by text hash in [`Table::Embeddings`] through
//! [`StoreCache`], so retraining and rescoring never re-encode a text.

use std::collections::HashMap;

use crate::infer::encoder::{embed_long, CacheError, EmbeddingCache, EmbeddingKey};
use crate::infer::{Encoder, InferError};
use crate::store::{Store, Table};

/// Length features after the four embedding blocks: log summary words, log input words,
/// summary/input word ratio, cosine of the two embeddings.
pub const EXTRA_FEATURES: usize = 4;

/// The feature dimension for an encoder of dimension `dim`.
pub fn feature_dim(dim: usize) -> usize {
    4 * dim + EXTRA_FEATURES
}

/// An [`EmbeddingCache`] over the store's embeddings table (values: JSON arrays of f32).
pub struct StoreCache {
    store: Store,
}

impl StoreCache {
    pub fn new(store: Store) -> StoreCache {
        StoreCache { store }
    }
}

impl EmbeddingCache for StoreCache {
    fn get(&mut self, key: &EmbeddingKey) -> Result<Option<Vec<f32>>, CacheError> {
        Ok(self.store.get::<Vec<f32>>(Table::Embeddings, &hex::encode(key))?)
    }

    fn put(&mut self, key: &EmbeddingKey, embedding: &[f32]) -> Result<(), CacheError> {
        Ok(self.store.put(Table::Embeddings, &hex::encode(key), &embedding)?)
    }
}

/// Embeds texts once each (through an optional store cache) and builds feature rows.
pub struct Featurizer<'e> {
    encoder: &'e dyn Encoder,
    store: Option<Store>,
    memo: HashMap<String, Vec<f32>>,
}

impl<'e> Featurizer<'e> {
    pub fn new(encoder: &'e dyn Encoder, store: Option<Store>) -> Featurizer<'e> {
        Featurizer { encoder, store, memo: HashMap::new() }
    }

    pub fn dim(&self) -> usize {
        feature_dim(self.encoder.dim())
    }

    /// Embeds every text not seen yet (long ones windowed and pooled), in one batch.
    pub fn prepare(&mut self, texts: &[&str]) -> Result<(), InferError> {
        let mut todo: Vec<&str> = Vec::new();
        for &t in texts {
            if !self.memo.contains_key(t) && !todo.contains(&t) {
                todo.push(t);
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let embeddings = match &self.store {
            Some(store) => {
                let mut cache = StoreCache::new(store.clone());
                let out = embed_long(self.encoder, &todo, Some(&mut cache))?;
                // Durable cache: a later run finds these even if this one is killed.
                let _ = store.flush();
                out
            }
            None => embed_long(self.encoder, &todo, None)?,
        };
        for (t, e) in todo.into_iter().zip(embeddings) {
            self.memo.insert(t.to_string(), e);
        }
        Ok(())
    }

    /// The feature row of (`input`, `summary`); both must have been prepared.
    pub fn row(&self, input: &str, summary: &str) -> Vec<f32> {
        let d = self.encoder.dim();
        let zero = vec![0f32; d];
        let u = self.memo.get(input).unwrap_or(&zero);
        let v = self.memo.get(summary).unwrap_or(&zero);
        features(u, v, input, summary)
    }
}

/// The feature row from two embeddings and the two texts.
pub fn features(u: &[f32], v: &[f32], input: &str, summary: &str) -> Vec<f32> {
    let mut row = Vec::with_capacity(4 * u.len() + EXTRA_FEATURES);
    row.extend_from_slice(u);
    row.extend_from_slice(v);
    row.extend(u.iter().zip(v).map(|(a, b)| a * b));
    row.extend(u.iter().zip(v).map(|(a, b)| a - b));
    let wi = input.split_whitespace().count() as f32;
    let ws = summary.split_whitespace().count() as f32;
    row.push((1.0 + ws).ln() / 5.0);
    row.push((1.0 + wi).ln() / 8.0);
    row.push((ws / wi.max(1.0)).min(2.0));
    row.push(u.iter().zip(v).map(|(a, b)| a * b).sum());
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_layout() {
        let u = [1.0, 0.0];
        let v = [0.5, 0.5];
        let row = features(&u, &v, "one two three four", "one two");
        assert_eq!(row.len(), feature_dim(2));
        assert_eq!(&row[4..6], &[0.5, 0.0]);
        assert_eq!(&row[6..8], &[0.5, -0.5]);
        assert!((row[10] - 0.5).abs() < 1e-6);
        assert!((row[11] - 0.5).abs() < 1e-6);
    }
}
