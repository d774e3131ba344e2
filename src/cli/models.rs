//! `rrm models pull|list` (fetched model files) and `rrm generate` (one prompt through the local
//! engine, for manual checks).

use std::io::Write as _;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::args::{LocalModelArgs, ModelsDir};
use super::Context;
use crate::infer::engine::EngineConfig;
use crate::infer::fetch::{self, ModelKind, REGISTRY};
use crate::infer::{ChatMessage, GenerationRequest, Generator, SamplingParams};

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(flatten)]
    pub models: ModelsDir,
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
    let dir = fetch::models_dir(args.models.models_dir.as_deref());
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
            rows.extend(fetch::BUILTIN_ADAPTERS.iter().map(|a| {
                serde_json::json!({
                    "name": a.name, "kind": "adapter", "description": a.description,
                    "built_in": true, "present": true,
                    "default_at": (a.name == fetch::DEFAULT_ROOT_POLICY).then_some("root"),
                })
            }));
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
            for a in fetch::BUILTIN_ADAPTERS {
                let default = if a.name == fetch::DEFAULT_ROOT_POLICY {
                    " (the root's model when none is named)"
                } else {
                    ""
                };
                println!(
                    "  {:<14} {:<9} {:<11} {}{default}",
                    a.name, "adapter", "built in", a.description
                );
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
    let generator = args
        .model
        .spec()
        .load_local(EngineConfig::default(), ctx.progress())
        .with_context(|| format!("loading the model `{}`", args.model.model))?;
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
