//! Choosing and starting a generator from the command line: the local candle engine (default)
//! or an OpenAI-compatible server. Shared by every command that generates text.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use clap::{Args, ValueEnum};

use super::models::LocalModelArgs;
use crate::infer::engine::{DeviceChoice, EngineConfig};
use crate::infer::fetch::DEFAULT_GENERATOR;
use crate::infer::openai::{OpenAiConfig, OpenAiGenerator};
use crate::infer::Generator;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The embedded candle engine over a GGUF model (fetched on first use).
    Local,
    /// A server speaking the OpenAI chat-completions protocol (vLLM, llama.cpp server, Ollama).
    Openai,
}

/// Where text generation runs.
#[derive(Debug, Clone, Args)]
pub struct GeneratorOptions {
    /// Generation backend.
    #[arg(long, value_enum, default_value_t = Backend::Local)]
    pub backend: Backend,
    /// Local: a known model name (`rrm models list`) or a .gguf path. OpenAI: the served
    /// model's name.
    #[arg(long, env = "RRM_MODEL", value_name = "SPEC")]
    pub model: Option<String>,
    /// Folder for fetched models (default: the user's cache folder).
    #[arg(long, env = "RRM_MODELS", value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Local: where the model runs.
    #[arg(long, default_value = "auto", value_parser = parse_device, value_name = "cpu|cuda|auto")]
    pub device: DeviceChoice,
    /// OpenAI backend: the server's base URL, e.g. http://127.0.0.1:8000.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// OpenAI backend: the environment variable that holds the API key (none: no key sent).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// OpenAI backend: the served model's context window in tokens.
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub context_length: usize,
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
}

impl GeneratorOptions {
    /// Starts the generator; `max_batch` is the most sequences decoded together (local) or
    /// requests in flight (OpenAI).
    pub fn start(&self, max_batch: usize, quiet: bool) -> anyhow::Result<Arc<dyn Generator>> {
        match self.backend {
            Backend::Local => {
                let local = LocalModelArgs {
                    model: self.model.clone().unwrap_or_else(|| DEFAULT_GENERATOR.to_string()),
                    models_dir: self.models_dir.clone(),
                    device: self.device,
                };
                let config =
                    EngineConfig { max_batch: max_batch.max(1), ..EngineConfig::default() };
                Ok(Arc::new(local.load_lazy(config, !quiet)?))
            }
            Backend::Openai => {
                let Some(endpoint) = &self.endpoint else {
                    bail!("--backend openai needs --endpoint URL (e.g. http://127.0.0.1:8000)");
                };
                let Some(model) = &self.model else {
                    bail!("--backend openai needs --model NAME (the name the server serves)");
                };
                let mut config = OpenAiConfig::new(endpoint.clone(), model.clone());
                config.api_key_env = self.api_key_env.clone();
                config.concurrency = max_batch.max(1);
                config.context_length = self.context_length;
                Ok(Arc::new(OpenAiGenerator::new(config)?))
            }
        }
    }
}
