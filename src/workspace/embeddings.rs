//! The sentence-embedding cache over the store ([`Table::Embeddings`]: hex key → JSON array of
//! f32), shared by the reward features and the learned decomposer, so no text is embedded twice
//! by the same encoder, across commands and runs.

use std::sync::{Arc, Mutex};

use super::Workspace;
use crate::infer::encoder::{CacheError, EmbeddingCache, EmbeddingKey, SharedCache};
use crate::infer::Encoder;
use crate::reward::features::Featurizer;
use crate::store::{Store, Table};

/// An [`EmbeddingCache`] over the store.
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

    fn flush(&mut self) -> Result<(), CacheError> {
        Ok(self.store.flush()?)
    }
}

/// The store's cache, shareable (reward features, the learned decomposer, selectors).
pub fn cache(store: &Store) -> SharedCache {
    Arc::new(Mutex::new(StoreCache::new(store.clone())))
}

/// The workspace's embedding cache.
pub fn shared_cache(ws: &Workspace) -> SharedCache {
    cache(ws.store())
}

/// A reward featurizer over `encoder` with the workspace's embedding cache.
pub fn featurizer<'e>(ws: &Workspace, encoder: &'e dyn Encoder) -> Featurizer<'e> {
    Featurizer::new(encoder, Some(cache(ws.store())))
}
