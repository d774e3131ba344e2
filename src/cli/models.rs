//! `rrm models pull|list` (fetched model files) and `rrm generate` (one prompt through the local
//! engine, for manual checks).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::infer::engine::{DeviceChoice, EngineConfig, LocalGenerator};
use crate::infer::fetch::{self, ModelKind, REGISTRY};
use crate::infer::lazy::LazyGenerator;
use crate::infer::{ChatMessage, GenerationRequest, Generator, InferError, SamplingParams};

use super::Context;

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Folder for fetched models (default: the user's cache folder, `rrm/models`).
    #[arg(long, global = true, env = "RRM_MODELS", value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Fetch a known model (default: all of them), verifying its hash.
    Pull {
        /// A name from `rrm models list`.
        name: Option<String>,
        /// Fetch again even if the files are present.
        #[arg(long)]
        force: bool,
    },
    /// List the known models and whether they are fetched.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(ctx: &mut Context, args: ModelsArgs) -> anyhow::Result<()> {
    let dir = fetch::models_dir(args.models_dir.as_deref());
    match args.command {
        ModelsCommand::Pull { name, force } => {
            let models: Vec<_> = match &name {
                Some(n) => vec![fetch::registry_model(n).with_context(|| {
                    let known: Vec<_> = REGISTRY.iter().map(|m| m.name).collect();
                    format!("unknown model `{n}` (known: {})", known.join(", "))
                })?],
                None => REGISTRY.iter().collect(),
            };
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the models folder {}", dir.display()))?;
            for m in models {
                if !force && fetch::is_present(m, &dir) {
                    if !ctx.quiet {
                        println!(
                            "{}: already in {}",
                            m.name,
                            fetch::model_folder(m, &dir).display()
                        );
                    }
                    continue;
                }
                let folder = fetch::pull(m, &dir, !ctx.quiet)
                    .with_context(|| format!("fetching {}", m.name))?;
                if !ctx.quiet {
                    println!("{}: fetched and verified into {}", m.name, folder.display());
                }
            }
            Ok(())
        }
        ModelsCommand::List { json } => {
            let trained = crate::policy::registry::list(&dir);
            let mut rows: Vec<serde_json::Value> = REGISTRY
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "name": m.name,
                        "kind": m.kind,
                        "description": m.description,
                        "package": format!("{}=={}", m.package, m.version),
                        "present": fetch::is_present(m, &dir),
                        "folder": fetch::model_folder(m, &dir),
                    })
                })
                .collect();
            rows.extend(trained.iter().map(|(folder, card)| {
                serde_json::json!({
                    "name": card.name, "kind": "policy", "folder": folder, "present": true,
                    "card": card,
                })
            }));
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!("models folder: {}", dir.display());
            for m in REGISTRY {
                let kind = match m.kind {
                    ModelKind::Generator => "generator",
                    ModelKind::Encoder => "encoder",
                };
                let present = if fetch::is_present(m, &dir) { "fetched" } else { "not fetched" };
                println!("  {:<14} {:<9} {:<11} {}", m.name, kind, present, m.description);
            }
            for (_, c) in &trained {
                let beta = c.beta.map_or(String::new(), |b| format!(", β {b}"));
                println!(
                    "  {:<14} {:<9} {:<11} trained from {} by {}{beta} ({}, {} training example(s))",
                    c.name,
                    "policy",
                    "trained",
                    c.base.name,
                    c.method.name(),
                    c.export_format.name(),
                    c.data.train_examples
                );
            }
            Ok(())
        }
    }
}

/// Which local model and device: shared by `generate` and `bench`.
#[derive(Debug, Clone, Args)]
pub struct LocalModelArgs {
    /// A known model name, a .gguf path, a folder with one, or ORG/NAME in the Hugging Face cache.
    #[arg(long, default_value = fetch::DEFAULT_GENERATOR, value_name = "SPEC")]
    pub model: String,
    /// Folder for fetched models (default: the user's cache folder, `rrm/models`).
    #[arg(long, env = "RRM_MODELS", value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Where the model runs.
    #[arg(long, default_value = "auto", value_parser = parse_device, value_name = "cpu|cuda|auto")]
    pub device: DeviceChoice,
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
}

impl LocalModelArgs {
    /// Resolves (fetching on first use) and loads the model.
    pub fn load(&self, config: EngineConfig, progress: bool) -> anyhow::Result<LocalGenerator> {
        let dir = fetch::models_dir(self.models_dir.as_deref());
        let resolved = fetch::resolve_model_with(&self.model, &dir, progress)
            .with_context(|| format!("finding the model `{}`", self.model))?;
        let device = self.device.device()?;
        LocalGenerator::load(&resolved.path, resolved.sha256, &device, config)
            .with_context(|| format!("loading the model {}", resolved.path.display()))
    }

    /// Resolves (fetching on first use) the model now, and loads it when first used: a run that
    /// finds everything cached never reads the weights.
    pub fn load_lazy(&self, config: EngineConfig, progress: bool) -> anyhow::Result<LazyGenerator> {
        let dir = fetch::models_dir(self.models_dir.as_deref());
        let resolved = fetch::resolve_model_with(&self.model, &dir, progress)
            .with_context(|| format!("finding the model `{}`", self.model))?;
        let identity = LocalGenerator::identity_of(&resolved.path, resolved.sha256.clone())?;
        let device = self.device.device()?;
        Ok(LazyGenerator::new(identity, move || {
            let path = resolved.path;
            LocalGenerator::load(&path, resolved.sha256, &device, config)
                .map(|g| Arc::new(g) as Arc<dyn Generator>)
                .map_err(|e| {
                    InferError::Other(format!("loading the model {}: {e}", path.display()))
                })
        }))
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The user message.
    #[arg(long)]
    pub prompt: String,
    /// An optional system message (default: the model's own template default).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub max_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub temperature: f32,
    #[arg(long, default_value_t = 0.95, value_name = "P")]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the completion as JSON (text, token ids, log-probabilities, finish reason).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: LocalModelArgs,
}

pub fn generate(ctx: &mut Context, args: GenerateArgs) -> anyhow::Result<()> {
    let generator = args.model.load(EngineConfig::default(), !ctx.quiet)?;
    let mut messages = Vec::new();
    if let Some(s) = args.system {
        messages.push(ChatMessage::system(s));
    }
    messages.push(ChatMessage::user(args.prompt));
    let mut sampling = SamplingParams::greedy();
    sampling.temperature = args.temperature;
    sampling.top_p = args.top_p;
    let request =
        GenerationRequest { messages, max_tokens: args.max_tokens, sampling, seed: args.seed };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let start = std::time::Instant::now();
    let mut out = rt.block_on(generator.generate(vec![request])).context("generating")?;
    let elapsed = start.elapsed().as_secs_f64();
    let completion = out.pop().context("the engine returned no completion")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&completion)?);
    } else {
        println!("{}", completion.text);
        std::io::stdout().flush()?;
        if !ctx.quiet {
            eprintln!(
                "[{} prompt + {} generated tokens in {elapsed:.2}s, finish: {:?}]",
                completion.prompt_tokens, completion.completion_tokens, completion.finish
            );
        }
    }
    Ok(())
}
