//! Features of (node input, candidate summary) from the frozen sentence encoder: the input's
//! and the summary's embeddings, their elementwise product and difference, their cosine, and
//! length features. Inputs longer than the encoder's window are embedded in windows and pooled
//! ([`embed_long`]). Embeddings go through a [`SharedCache`] (the workspace's is over the store),
//! so retraining and rescoring never re-encode a text.

use std::collections::HashMap;

use crate::infer::encoder::{embed_long, EncoderError, SharedCache};
use crate::infer::{Encoder, InferError};

/// Length features after the four embedding blocks: log summary words, log input words,
/// summary/input word ratio, cosine of the two embeddings.
pub const EXTRA_FEATURES: usize = 4;

/// The feature dimension for an encoder of dimension `dim`.
pub fn feature_dim(dim: usize) -> usize {
    4 * dim + EXTRA_FEATURES
}

/// Embeds texts once each (through an optional shared cache, usually the store's) and builds
/// feature rows.
pub struct Featurizer<'e> {
    encoder: &'e dyn Encoder,
    cache: Option<SharedCache>,
    memo: HashMap<String, Vec<f32>>,
}

impl<'e> Featurizer<'e> {
    pub fn new(encoder: &'e dyn Encoder, cache: Option<SharedCache>) -> Featurizer<'e> {
        Featurizer { encoder, cache, memo: HashMap::new() }
    }

    pub fn dim(&self) -> usize {
        feature_dim(self.encoder.dim())
    }

    /// Embeds every text not seen yet (long ones windowed and pooled), in one batch, and makes
    /// the cache durable, so a later run finds these even if this one is killed.
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
        let embeddings = match &self.cache {
            Some(cache) => {
                let mut guard = cache.lock().map_err(|_| {
                    InferError::Encoder(EncoderError::Cache(
                        "the embedding cache lock is poisoned".into(),
                    ))
                })?;
                let out = embed_long(self.encoder, &todo, Some(&mut *guard))?;
                guard.flush().map_err(|e| InferError::Encoder(EncoderError::Cache(e)))?;
                out
            }
            None => embed_long(self.encoder, &todo, None)?,
        };
        for (t, e) in todo.into_iter().zip(embeddings) {
            self.memo.insert(t.to_string(), e);
        }
        Ok(())
    }

    /// The feature row of (`input`, `summary`). Both must have been prepared: a text never
    /// embedded is an error, not a row of zeros.
    pub fn row(&self, input: &str, summary: &str) -> Result<Vec<f32>, InferError> {
        let get = |t: &str| {
            self.memo.get(t).ok_or_else(|| {
                InferError::InvalidRequest(format!(
                    "reward features: the text {:?} was not embedded before use (call prepare first)",
                    t.chars().take(40).collect::<String>()
                ))
            })
        };
        Ok(features(get(input)?, get(summary)?, input, summary))
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
