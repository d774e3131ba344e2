//! The flags several commands share, in one place: the workspace's folders, the sentence
//! encoder, the generator, the local model, the decomposer, node ids. Command files depend on
//! this file and the library only (never on each other).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::compose::{Level, Models};
use crate::decompose::fixed::parse_fanout;
use crate::decompose::ContextMode;
use crate::infer::engine::DeviceChoice;
use crate::infer::fetch;
use crate::infer::spec::{Backend, GeneratorSpec};
use crate::lm::Checkpointing;
use crate::workspace::decomposers::{DecomposerKind, DecomposerSpec};
use crate::workspace::WorkspaceConfig;

pub use crate::workspace::trees::ID_HELP;

/// Folder for fetched models.
#[derive(Debug, Clone, Args)]
pub struct ModelsDir {
    /// Folder for fetched models (default: RRM_MODELS, else the user's cache folder `rrm/models`).
    #[arg(long, global = true, env = "RRM_MODELS", value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
}

/// The folders of a workspace (the database is the global `--db`).
#[derive(Debug, Clone, Args)]
pub struct WorkspaceArgs {
    /// Folder for fetched books.
    #[arg(long, global = true, env = "RRM_BOOKS", default_value = "books", value_name = "DIR")]
    pub books_dir: PathBuf,
    /// Folder for task tree files (copies of the trees stored in the database).
    #[arg(
        long,
        global = true,
        env = "RRM_TREES",
        default_value = "task_trees",
        value_name = "DIR"
    )]
    pub trees_dir: PathBuf,
    /// Folder of reward model checkpoints (default: `reward/` beside the database).
    #[arg(long, global = true, env = "RRM_REWARD_DIR", value_name = "DIR")]
    pub reward_dir: Option<PathBuf>,
    #[command(flatten)]
    pub models: ModelsDir,
    /// Where the sentence encoder runs (auto: a CUDA GPU when built with `--features cuda` and
    /// one is there).
    #[arg(
        long,
        global = true,
        env = "RRM_ENCODER_DEVICE",
        default_value = "auto",
        value_parser = parse_device,
        value_name = "cpu|cuda|auto"
    )]
    pub encoder_device: DeviceChoice,
}

impl WorkspaceArgs {
    pub fn config(&self, db: &std::path::Path) -> WorkspaceConfig {
        WorkspaceConfig {
            db: db.to_path_buf(),
            books_dir: self.books_dir.clone(),
            trees_dir: self.trees_dir.clone(),
            reward_dir: self.reward_dir.clone(),
            models_dir: self.models.models_dir.clone(),
            encoder_device: self.encoder_device,
        }
    }
}

/// Which sentence encoder gives features and embeddings.
#[derive(Debug, Clone, Args)]
pub struct EncoderArgs {
    /// Sentence encoder: a registry name (fetched on first use) or a folder with
    /// model.safetensors, config.json and tokenizer.json.
    #[arg(long, global = true, default_value = fetch::DEFAULT_ENCODER, value_name = "NAME|DIR")]
    pub encoder: String,
}

/// How the composer draws and picks candidates (shared by `summarize` and `eval summaries`).
#[derive(Debug, Clone, Args)]
pub struct ComposeArgs {
    /// Candidates per node; the best is picked by mean log-probability, or by --reward-model.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub best_of: usize,
    /// Most sequences generated together.
    #[arg(long, default_value_t = 8, value_name = "B")]
    pub batch_size: usize,
    /// Sampling temperature (0: greedy). With --best-of > 1 a temperature of 0 becomes 0.8.
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// With --best-of N: draw the N candidates only at these levels (`root`, or a height: 0
    /// the leaves; repeat or separate by commas); every other node gets the single decode.
    /// Default: every level.
    #[arg(long, value_name = "LEVEL", value_delimiter = ',')]
    pub best_of_at: Vec<crate::compose::Level>,
    /// With --best-of N: the temperature of the sampled candidates only (default 0.8, or
    /// --temperature when above 0); candidate 1 stays the greedy decode.
    #[arg(long, value_name = "T")]
    pub sample_temperature: Option<f32>,
    /// Repetition penalty applied to recently generated tokens (1.0: off).
    #[arg(long, default_value_t = 1.15, value_name = "P")]
    pub repetition_penalty: f32,
    /// Seed for sampling (part of every cache key).
    #[arg(long = "sample-seed", default_value_t = 0, value_name = "S")]
    pub sample_seed: u64,
    /// With --best-of N: sample all N candidates. By default candidate 1 is the greedy decode
    /// (what --best-of 1 gives) and the other N−1 are sampled, so a reward pick can always
    /// keep it.
    #[arg(long)]
    pub all_sampled: bool,
}

impl ComposeArgs {
    /// The compose options these flags give (checked).
    pub fn options(&self) -> anyhow::Result<crate::compose::ComposeOptions> {
        if self.best_of == 0 {
            anyhow::bail!("--best-of must be at least 1");
        }
        if self.batch_size == 0 {
            anyhow::bail!("--batch-size must be at least 1");
        }
        let mut options = crate::compose::ComposeOptions {
            batch_size: self.batch_size,
            best_of: self.best_of,
            seed: self.sample_seed,
            greedy_first: !self.all_sampled,
            ..crate::compose::ComposeOptions::default()
        };
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            anyhow::bail!(
                "--repetition-penalty must be a positive number (got {})",
                self.repetition_penalty
            );
        }
        for sampling in [&mut options.sampling, &mut options.sampling_best_of] {
            sampling.repetition_penalty = self.repetition_penalty;
        }
        if let Some(t) = self.temperature {
            if !(0.0..=5.0).contains(&t) {
                anyhow::bail!("--temperature must be between 0 and 5 (got {t})");
            }
            options.sampling.temperature = t;
            if t > 0.0 {
                options.sampling_best_of.temperature = t;
            }
        }
        if !self.best_of_at.is_empty() {
            if self.best_of < 2 {
                anyhow::bail!(
                    "--best-of-at says where best-of-N draws its candidates; it needs --best-of \
                     2 or more"
                );
            }
            let mut levels = self.best_of_at.clone();
            levels.sort();
            levels.dedup();
            options.best_of_at = levels;
        }
        if let Some(t) = self.sample_temperature {
            if self.best_of < 2 {
                anyhow::bail!(
                    "--sample-temperature sets the sampled candidates of best-of-N; it needs \
                     --best-of 2 or more (a single decode follows --temperature)"
                );
            }
            if !(t > 0.0 && t <= 5.0) {
                anyhow::bail!(
                    "--sample-temperature must be above 0 and at most 5 (got {t}): sampled \
                     candidates at 0 would all be the greedy decode"
                );
            }
            options.sampling_best_of.temperature = t;
        }
        Ok(options)
    }
}

/// Where text generation runs.
#[derive(Debug, Clone, Args)]
pub struct GeneratorOptions {
    /// Generation backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Local)]
    pub backend: BackendArg,
    /// Local: a known model name (`rrm models list`) or a .gguf path. OpenAI: the served
    /// model's name.
    #[arg(long, env = "RRM_MODEL", value_name = "SPEC")]
    pub model: Option<String>,
    /// Local: where the model runs.
    #[arg(long, default_value = "auto", value_parser = parse_device, value_name = "cpu|cuda|auto")]
    pub device: DeviceChoice,
    /// OpenAI backend: the server's base URL, e.g. http://127.0.0.1:8000. Repeat it for
    /// replicas of the same model: requests go to the least loaded one, move off a dead one,
    /// and a late one is copied to another.
    #[arg(long = "endpoint", value_name = "URL")]
    pub endpoints: Vec<String>,
    /// OpenAI backend: requests in flight at once per endpoint, e.g. the server's parallel
    /// slots (default: the batch size).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub endpoint_slots: Option<u16>,
    /// OpenAI backend: the environment variable that holds the API key (none: no key sent).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// OpenAI backend: the served model's context window in tokens.
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub context_length: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// The embedded candle engine over a GGUF model (fetched on first use).
    Local,
    /// A server speaking the OpenAI chat-completions protocol (vLLM, llama.cpp server, Ollama).
    Openai,
}

pub fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
}

impl GeneratorOptions {
    /// Starts the generator these flags name (checking the flags each backend needs).
    pub fn start(
        &self,
        models: &ModelsDir,
        max_batch: usize,
        progress: bool,
    ) -> anyhow::Result<std::sync::Arc<dyn crate::infer::Generator>> {
        if self.backend == BackendArg::Local && !self.endpoints.is_empty() {
            anyhow::bail!(
                "--endpoint is for --backend openai (the local engine runs the model itself)"
            );
        }
        if self.backend == BackendArg::Openai {
            if self.endpoints.is_empty() {
                anyhow::bail!("--backend openai needs --endpoint URL (e.g. http://127.0.0.1:8000)");
            }
            if self.model.is_none() {
                anyhow::bail!("--backend openai needs --model NAME (the name the server serves)");
            }
        }
        Ok(self.spec(models).start(max_batch, progress)?)
    }

    pub fn spec(&self, models: &ModelsDir) -> GeneratorSpec {
        GeneratorSpec {
            backend: match self.backend {
                BackendArg::Local => Backend::Local,
                BackendArg::Openai => Backend::Openai,
            },
            model: self.model.clone(),
            models_dir: models.models_dir.clone(),
            device: self.device,
            endpoints: self.endpoints.clone(),
            endpoint_slots: self.endpoint_slots.map(usize::from),
            api_key_env: self.api_key_env.clone(),
            context_length: self.context_length,
        }
    }
}

/// Other models at chosen levels of the tree (`summarize`, `eval summaries`).
#[derive(Debug, Clone, Args)]
pub struct LevelModelArgs {
    /// Run another model at one level of the tree: `root=SPEC` (the root, whatever its
    /// height) or `H=SPEC` (every node at height H; 0 is the leaves); repeatable. E.g. a policy
    /// trained on demonstrations at the root, used only there, on the inputs the base model
    /// writes below it. Same backend and flags as --model; the nodes the base model runs keep
    /// their cached results. When no model is named (no --model, no RRM_MODEL, local backend)
    /// the root runs the built-in `squality-root` policy (policies/squality-root/README.md);
    /// `--model smollm2-135m` runs the base model everywhere.
    #[arg(long = "model-at", value_name = "LEVEL=SPEC", value_parser = parse_level_model)]
    pub model_at: Vec<(Level, String)>,
}

fn parse_level_model(s: &str) -> Result<(Level, String), String> {
    let (level, spec) = s.split_once('=').ok_or_else(|| {
        format!("`{s}` is not LEVEL=MODEL (e.g. root=my-policy or 0=smollm2-135m)")
    })?;
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(format!("`{s}` names no model after `=`"));
    }
    Ok((level.parse()?, spec.to_string()))
}

impl LevelModelArgs {
    /// The models named per level, with the default root policy added when no model at all was
    /// named (the base model is the default generator and nothing is asked of the root).
    pub fn levels(&self, generator: &GeneratorOptions) -> Vec<(Level, String)> {
        let mut levels = self.model_at.clone();
        let default_generator = generator.backend == BackendArg::Local && generator.model.is_none();
        if default_generator && !levels.iter().any(|(l, _)| *l == Level::Root) {
            levels.push((Level::Root, fetch::DEFAULT_ROOT_POLICY.to_string()));
        }
        levels
    }

    /// What [`Self::levels`] names, as generator specs with `generator`'s other settings (for
    /// `serve`, which starts them on first use).
    pub fn specs(
        &self,
        generator: &GeneratorOptions,
        models: &ModelsDir,
    ) -> Vec<(Level, GeneratorSpec)> {
        self.levels(generator)
            .into_iter()
            .map(|(level, spec)| {
                let options = GeneratorOptions { model: Some(spec), ..generator.clone() };
                (level, options.spec(models))
            })
            .collect()
    }

    /// Starts the model of every node (`generator`) and one per level of [`Self::levels`].
    pub fn start(
        &self,
        generator: &GeneratorOptions,
        models: &ModelsDir,
        max_batch: usize,
        progress: bool,
    ) -> anyhow::Result<Models> {
        let mut set = Models::new(generator.start(models, max_batch, progress)?);
        let mut seen = Vec::new();
        for (level, spec) in &self.levels(generator) {
            if seen.contains(level) {
                anyhow::bail!("--model-at names level {level} twice");
            }
            seen.push(*level);
            let options = GeneratorOptions { model: Some(spec.clone()), ..generator.clone() };
            let model = options
                .start(models, max_batch, progress)
                .with_context(|| format!("--model-at {level}={spec}"))?;
            set = set.at(*level, model);
        }
        Ok(set)
    }
}

/// Which local model and device (`generate`, `bench`).
#[derive(Debug, Clone, Args)]
pub struct LocalModelArgs {
    /// A known model name, a .gguf path, a folder with one, or ORG/NAME in the Hugging Face cache.
    #[arg(long, default_value = fetch::DEFAULT_GENERATOR, value_name = "SPEC")]
    pub model: String,
    /// Where the model runs.
    #[arg(long, default_value = "auto", value_parser = parse_device, value_name = "cpu|cuda|auto")]
    pub device: DeviceChoice,
    #[command(flatten)]
    pub models: ModelsDir,
}

impl LocalModelArgs {
    pub fn spec(&self) -> GeneratorSpec {
        GeneratorSpec {
            model: Some(self.model.clone()),
            models_dir: self.models.models_dir.clone(),
            device: self.device,
            ..GeneratorSpec::local_default()
        }
    }
}

/// How training trades memory for time (`policy train`, `reward train --backbone lm`).
#[derive(Debug, Clone, Args)]
pub struct CheckpointArgs {
    /// Gradient checkpointing: `on` keeps only each block's input in the forward pass and
    /// recomputes its activations in the backward (a fraction of the memory for one more forward
    /// pass); `auto` turns it on for each batch whose kept activations would pass half the memory
    /// available at load (the log says when); `off` never. `--grad-checkpoint` alone is `on`.
    #[arg(
        long,
        value_name = "auto|on|off",
        default_value = "auto",
        num_args = 0..=1,
        default_missing_value = "on"
    )]
    pub grad_checkpoint: Checkpointing,
}

/// How a book is split into a tree (shared by `decompose` and `summarize`).
#[derive(Debug, Clone, Args)]
pub struct DecomposerOptions {
    /// How to split the book.
    #[arg(long, value_enum, default_value_t = DecomposerArg::Fixed)]
    pub decomposer: DecomposerArg,
    /// With --decomposer learned: the boundary model (from `rrm decomposer train`); default:
    /// the model built into rrm (trained on four catalog books).
    #[arg(long, value_name = "PATH")]
    pub decomposer_model: Option<PathBuf>,
    /// Most tokens per leaf.
    #[arg(long, default_value_t = 600, value_name = "N")]
    pub chunk_tokens: usize,
    /// Children per parent, MIN..MAX (default: 5..13 for fixed chunking; 3..13 for the
    /// learned decomposers, whose parents follow chapters and a chapter is often only three or
    /// four leaves long).
    #[arg(long, value_parser = parse_fanout, value_name = "MIN..MAX")]
    pub fanout: Option<(usize, usize)>,
    /// Whether nodes read the outputs of earlier nodes at their height.
    #[arg(long, value_enum, default_value_t = ContextArg::None)]
    pub context: ContextArg,
    /// With --context previous: how many earlier nodes each one reads.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub context_window: usize,
    /// Jitter leaf sizes reproducibly with this seed.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Output caps in tokens by height (the last repeats).
    #[arg(long, value_delimiter = ',', default_value = "128,192,384", value_name = "N,N,..")]
    pub output_tokens: Vec<usize>,
    /// Most input tokens of a parent (its children's output caps must fit).
    #[arg(long, default_value_t = 2048, value_name = "N")]
    pub max_input_tokens: usize,
    /// With --decomposer learned: log-odds taken from a cut where the next leaf would not
    /// stand on its own (mid-quotation, a reply line, a pronoun before any name); 0 turns it off
    /// (default: the built-in setting).
    #[arg(long, value_name = "LOGODDS")]
    pub start_penalty: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecomposerArg {
    /// Fixed-size chunking (Wu et al. 2021).
    Fixed,
    /// A trained boundary scorer and an exact length-constrained segmentation.
    Learned,
    /// The untrained baseline: cuts where the embedding similarity of neighbouring sentence
    /// windows dips (TextTiling style), same segmentation.
    Similarity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContextArg {
    /// Leaves are independent.
    None,
    /// Nodes read the outputs of earlier nodes at the same height.
    Previous,
}

impl DecomposerOptions {
    pub fn spec(&self, encoder: &EncoderArgs) -> DecomposerSpec {
        DecomposerSpec {
            kind: match self.decomposer {
                DecomposerArg::Fixed => DecomposerKind::Fixed,
                DecomposerArg::Learned => DecomposerKind::Learned,
                DecomposerArg::Similarity => DecomposerKind::Similarity,
            },
            model: self.decomposer_model.clone(),
            encoder: encoder.encoder.clone(),
            chunk_tokens: self.chunk_tokens,
            fanout: self.fanout,
            context: match self.context {
                ContextArg::None => ContextMode::None,
                ContextArg::Previous => ContextMode::Previous,
            },
            context_window: self.context_window,
            seed: self.seed,
            output_tokens: self.output_tokens.clone(),
            max_input_tokens: self.max_input_tokens,
            start_penalty: self.start_penalty,
        }
    }
}

/// A spinner on stderr (hidden with `-q` or when stderr is not a terminal).
pub fn spinner(quiet: bool, message: impl Into<String>) -> ProgressBar {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(message.into());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// The name of whoever rates: `--labeler`, else `RRM_LABELER`, else `USER`, else "anonymous".
pub fn labeler(arg: &Option<String>) -> String {
    arg.clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "anonymous".to_string())
}

/// The async runtime a command runs library futures on (blocking work goes to its blocking
/// threads).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        generator: GeneratorOptions,
        #[command(flatten)]
        levels: LevelModelArgs,
    }

    fn levels(args: &[&str]) -> Vec<(Level, String)> {
        let cli = Cli::try_parse_from(std::iter::once("rrm").chain(args.iter().copied())).unwrap();
        cli.levels.levels(&cli.generator)
    }

    /// The compose flags alone, as clap parses them.
    #[derive(Parser)]
    struct ComposeCli {
        #[command(flatten)]
        compose: ComposeArgs,
    }

    fn compose(args: &[&str]) -> anyhow::Result<crate::compose::ComposeOptions> {
        ComposeCli::try_parse_from(std::iter::once("rrm").chain(args.iter().copied()))
            .unwrap()
            .compose
            .options()
    }

    #[test]
    fn sample_temperature_moves_the_sampled_candidates_only() {
        let default = compose(&["--best-of", "4"]).unwrap();
        assert_eq!(default.sampling.temperature, 0.0);
        assert_eq!(default.sampling_best_of.temperature, 0.8);
        let cooler = compose(&["--best-of", "4", "--sample-temperature", "0.5"]).unwrap();
        assert_eq!(cooler.sampling.temperature, 0.0, "candidate 1 stays greedy");
        assert_eq!(cooler.sampling_best_of.temperature, 0.5);
        assert!(cooler.greedy_first);
        // --temperature moves both (candidate 1 is what a single decode gives).
        let both = compose(&["--best-of", "4", "--temperature", "0.5"]).unwrap();
        assert_eq!((both.sampling.temperature, both.sampling_best_of.temperature), (0.5, 0.5));
        for bad in
            [&["--best-of", "4", "--sample-temperature", "0"][..], &["--sample-temperature", "0.5"]]
        {
            let err = compose(bad).unwrap_err().to_string();
            assert!(err.contains("--sample-temperature"), "{err}");
        }
    }

    #[test]
    fn best_of_at_names_the_levels_that_draw_candidates() {
        let everywhere = compose(&["--best-of", "4"]).unwrap();
        assert!(everywhere.best_of_at.is_empty());
        assert_eq!(everywhere.best_of_for(0, false), 4);
        let root = compose(&["--best-of", "4", "--best-of-at", "root"]).unwrap();
        assert_eq!(root.best_of_at, vec![crate::compose::Level::Root]);
        assert_eq!((root.best_of_for(0, false), root.best_of_for(2, true)), (1, 4));
        assert_eq!(root.sampling_for(1).temperature, 0.0, "below the root: the greedy decode");
        let two = compose(&["--best-of", "3", "--best-of-at", "1,0"]).unwrap();
        assert_eq!((two.best_of_for(0, false), two.best_of_for(1, false)), (3, 3));
        assert_eq!(two.best_of_for(2, true), 1);
        // Stored as words, so a run record reads back the same.
        let json = serde_json::to_string(&root).unwrap();
        assert!(json.contains(r#""best_of_at":["root"]"#), "{json}");
        assert_eq!(serde_json::from_str::<crate::compose::ComposeOptions>(&json).unwrap(), root);
        // Without it the stored options are what they were (cache keys and run ids unchanged).
        assert!(!serde_json::to_string(&everywhere).unwrap().contains("best_of_at"));
        let err = compose(&["--best-of-at", "root"]).unwrap_err().to_string();
        assert!(err.contains("--best-of 2"), "{err}");
        assert!(ComposeCli::try_parse_from(["rrm", "--best-of-at", "top"]).is_err());
    }

    #[test]
    fn the_root_policy_runs_only_when_no_model_is_named() {
        // RRM_MODEL names a model as --model does (then there is no default to check).
        if std::env::var_os("RRM_MODEL").is_some() {
            return;
        }
        let root = (Level::Root, fetch::DEFAULT_ROOT_POLICY.to_string());
        assert_eq!(levels(&[]), vec![root]);
        assert!(levels(&["--model", "smollm2-135m"]).is_empty());
        assert_eq!(levels(&["--model-at", "root=x.gguf"]), vec![(Level::Root, "x.gguf".into())]);
        let below = levels(&["--model-at", "0=x.gguf"]);
        assert_eq!(below.len(), 2, "{below:?}");
        assert!(
            levels(&["--backend", "openai", "--endpoint", "http://h", "--model", "m"]).is_empty()
        );
    }
}
