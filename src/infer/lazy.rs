//! A generator that loads its model on first use.
//!
//! A fully cached run needs the model's identity (it enters every cache key) but never its
//! weights: [`LazyGenerator`] answers [`Generator::identity`] from what is known up front (name and
//! file hash) and runs the loader only when text is generated or tokens are counted. A failed
//! load is reported by every later `generate` call.

use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;

use super::{Completion, GenerationRequest, Generator, InferError, ModelIdentity};

type Loader = Box<dyn FnOnce() -> Result<Arc<dyn Generator>, InferError> + Send>;

pub struct LazyGenerator {
    identity: ModelIdentity,
    loader: Mutex<Option<Loader>>,
    loaded: OnceLock<Result<Arc<dyn Generator>, String>>,
}

impl LazyGenerator {
    /// `identity` must be the identity the loaded generator reports.
    pub fn new(
        identity: ModelIdentity,
        loader: impl FnOnce() -> Result<Arc<dyn Generator>, InferError> + Send + 'static,
    ) -> Self {
        Self { identity, loader: Mutex::new(Some(Box::new(loader))), loaded: OnceLock::new() }
    }

    /// Whether the model has been loaded (or its load attempted).
    pub fn is_loaded(&self) -> bool {
        self.loaded.get().is_some()
    }

    fn get(&self) -> Result<&Arc<dyn Generator>, InferError> {
        let loaded = self.loaded.get_or_init(|| {
            let loader = self.loader.lock().ok().and_then(|mut l| l.take());
            match loader {
                Some(load) => load().map_err(|e| e.to_string()),
                None => Err("the model loader ran already and failed".to_string()),
            }
        });
        loaded.as_ref().map_err(|message| InferError::Other(message.clone()))
    }
}

impl Generator for LazyGenerator {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn context_length(&self) -> Result<usize, InferError> {
        self.get()?.context_length()
    }

    fn count_tokens(&self, text: &str) -> Result<usize, InferError> {
        self.get()?.count_tokens(text)
    }

    fn generate(
        &self,
        requests: Vec<GenerationRequest>,
    ) -> BoxFuture<'_, Result<Vec<Completion>, InferError>> {
        match self.get() {
            Ok(g) => g.generate(requests),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_without_loading_and_errors_reported_on_use() {
        let id = ModelIdentity { name: "m".into(), hash: "h".into() };
        let lazy = LazyGenerator::new(id.clone(), || Err(InferError::Other("no weights".into())));
        assert_eq!(lazy.identity(), &id);
        assert!(!lazy.is_loaded());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let err = rt.block_on(lazy.generate(vec![])).unwrap_err();
        assert!(err.to_string().contains("no weights"));
        assert!(lazy.is_loaded());
        // A failed load is an error for every use, never a silent zero.
        let err = lazy.count_tokens("abc").unwrap_err();
        assert!(err.to_string().contains("no weights"), "{err}");
        assert!(lazy.context_length().is_err());
    }
}
