//! Naming a generator and starting it: the local candle engine over a GGUF (fetched on first use,
//! loaded on first use) or an OpenAI-compatible server.
//!
//! [`GeneratorSpec`] is what a user says ("the default model on the CPU", "this .gguf on cuda",
//! "model X at this endpoint"); [`GeneratorSpec::start`] turns it into a running [`Generator`].
//! The CLI, the web app and the evaluation harness all start generators through it.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::engine::{DeviceChoice, EngineConfig, LocalGenerator};
use super::fetch::{self, DEFAULT_GENERATOR};
use super::lazy::LazyGenerator;
use super::openai::{OpenAiConfig, OpenAiGenerator};
use super::{Generator, InferError, ModelIdentity};

/// Where text generation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// rrm's own batched candle engine over a GGUF file.
    #[default]
    Local,
    /// A server speaking the OpenAI chat-completions protocol.
    Openai,
}

/// A generator as a user names it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GeneratorSpec {
    pub backend: Backend,
    /// Local: a registry name, a `.gguf` path, a folder with one, or `ORG/NAME` in the Hugging
    /// Face cache (default: the registry's default generator). OpenAI: the served model's name.
    pub model: Option<String>,
    /// Folder for fetched models (default: `RRM_MODELS`, else the user's cache folder).
    pub models_dir: Option<PathBuf>,
    pub device: DeviceChoice,
    /// OpenAI: the base URLs of the servers (replicas of one model).
    pub endpoints: Vec<String>,
    /// OpenAI: requests in flight at once per endpoint (default: the batch size).
    pub endpoint_slots: Option<usize>,
    /// OpenAI: the environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// OpenAI: the served model's context window in tokens.
    pub context_length: usize,
}

impl GeneratorSpec {
    /// The default local model on the default device.
    pub fn local_default() -> GeneratorSpec {
        GeneratorSpec { context_length: 8192, ..GeneratorSpec::default() }
    }

    /// The models folder this spec uses.
    pub fn models_dir(&self) -> PathBuf {
        fetch::models_dir(self.models_dir.as_deref())
    }

    /// Starts the generator. `max_batch` is the most sequences decoded together (local) or
    /// requests in flight per endpoint unless `endpoint_slots` says otherwise (OpenAI). A local model is resolved (fetched on first use) now and
    /// loaded when first used, so a fully cached run never reads the weights.
    pub fn start(
        &self,
        max_batch: usize,
        progress: bool,
    ) -> Result<Arc<dyn Generator>, InferError> {
        match self.backend {
            Backend::Local => {
                let config =
                    EngineConfig { max_batch: max_batch.max(1), ..EngineConfig::default() };
                Ok(Arc::new(self.load_lazy(config, progress)?))
            }
            Backend::Openai => {
                if self.endpoints.is_empty() {
                    return Err(InferError::InvalidRequest(
                        "the openai backend needs an endpoint URL (e.g. http://127.0.0.1:8000)"
                            .into(),
                    ));
                }
                let model = self.model.clone().ok_or_else(|| {
                    InferError::InvalidRequest(
                        "the openai backend needs a model name (the name the server serves)".into(),
                    )
                })?;
                let mut config = OpenAiConfig::replicas(self.endpoints.clone(), model);
                config.api_key_env = self.api_key_env.clone();
                config.concurrency = self.endpoint_slots.unwrap_or(max_batch).max(1);
                if self.context_length > 0 {
                    config.context_length = self.context_length;
                }
                Ok(Arc::new(OpenAiGenerator::new(config)?))
            }
        }
    }

    fn local_model(&self) -> &str {
        self.model.as_deref().unwrap_or(DEFAULT_GENERATOR)
    }

    /// Resolves (fetching on first use) and loads the local model now.
    pub fn load_local(
        &self,
        config: EngineConfig,
        progress: bool,
    ) -> Result<LocalGenerator, InferError> {
        let resolved = fetch::resolve_model_with(self.local_model(), &self.models_dir(), progress)?;
        let identity = identity(&resolved)?;
        let device = self.device.device()?;
        LocalGenerator::load_as(&resolved.path, identity, &device, config)
    }

    /// Resolves (fetching on first use) the local model now; loads it when first used.
    pub fn load_lazy(
        &self,
        config: EngineConfig,
        progress: bool,
    ) -> Result<LazyGenerator, InferError> {
        let resolved = fetch::resolve_model_with(self.local_model(), &self.models_dir(), progress)?;
        let identity = identity(&resolved)?;
        let device = self.device.device()?;
        Ok(LazyGenerator::new(identity.clone(), move || {
            let path = resolved.path;
            LocalGenerator::load_as(&path, identity, &device, config)
                .map(|g| Arc::new(g) as Arc<dyn Generator>)
                .map_err(|e| {
                    InferError::Other(format!("loading the model {}: {e}", path.display()))
                })
        }))
    }
}

/// The identity of a resolved local model: its file's stem and hash, except for a file the
/// resolver made (a Hugging Face conversion or a merged adapter, named by its cache key), which
/// goes by the name it was asked for (`squality-root`, the adapter folder's name).
fn identity(resolved: &fetch::ResolvedModel) -> Result<ModelIdentity, InferError> {
    let mut identity = LocalGenerator::identity_of(&resolved.path, resolved.sha256.clone())?;
    let made_here = resolved
        .path
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|dir| dir == super::hf::CACHE_DIR);
    if made_here {
        identity.name = resolved.name.clone();
    }
    Ok(identity)
}
