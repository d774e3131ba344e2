//! Training and evaluating the policy (the summarizer) in a workspace: the store's feedback or a
//! TRL file as data, books named by path or catalog id for the split and for evaluation, the
//! workspace's reward folder for the labeling ensemble, its models folder for the base model and
//! the registered result. The training itself is [`crate::policy`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::DType;

use super::{books, summarize, Result, Workspace, WorkspaceError};
use crate::compose::ComposeOptions;
use crate::feedback::{self, sim::SimLabeler};
use crate::infer::engine::{DeviceChoice, EngineConfig, LocalGenerator};
use crate::infer::fetch;
use crate::infer::spec::GeneratorSpec;
use crate::infer::{Generator, InferError, ModelIdentity};
use crate::lm::bench::{bench_train as measure, Objective, TrainBench};
use crate::lm::export::ExportFormat;
use crate::lm::model::{LoadOptions, Mode};
use crate::lm::{LoraConfig, Target};
use crate::policy::data::{self, Prompt};
use crate::policy::eval::{self, BaselineUsed, EvalReport};
use crate::policy::job::{self, JobReport, TrainJob};
use crate::policy::judge::{
    AltLabeler, EnsembleScorer, GroundingScorer, Judge, MemberScorer, SupportScorer,
};
use crate::policy::kl::{self, KlEstimate};
use crate::policy::reference::{ReferenceScorer, ReferenceWeights};
use crate::policy::registry;
use crate::policy::rmdpo::RmDpoConfig;
use crate::policy::sample::SampleOptions;
use crate::policy::train::{Observer, TrainConfig};
use crate::policy::Method;

/// The weights a training run adapts.
#[derive(Debug, Clone, PartialEq)]
pub enum Adapt {
    /// LoRA adapters: rank, alpha (default 2 × rank), target list (`q,k,v,o,gate,up,down`,
    /// `attn`, `mlp`, `all`), and optionally only in the top `top_layers` blocks.
    Lora { rank: usize, alpha: Option<f64>, targets: String, top_layers: Option<usize> },
    /// Every weight.
    Full,
}

impl Adapt {
    /// The trainer's mode (`seed` draws the adapters' A).
    pub fn mode(&self, seed: u64) -> Result<Mode> {
        Ok(match self {
            Adapt::Full => Mode::Full,
            Adapt::Lora { rank, alpha, targets, top_layers } => Mode::Lora(LoraConfig {
                rank: *rank,
                alpha: alpha.unwrap_or(2.0 * *rank as f64),
                targets: Target::parse_list(targets).map_err(WorkspaceError::Invalid)?,
                seed,
                top_layers: *top_layers,
            }),
        })
    }
}

/// One `rrm policy train`, as a user states it.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub method: Method,
    /// A TRL-format JSONL file instead of the stored feedback.
    pub data: Option<PathBuf>,
    /// Only feedback from these labelers / at these heights (empty: all).
    pub labelers: Vec<String>,
    pub heights: Vec<u32>,
    pub name: Option<String>,
    pub overwrite: bool,
    /// The model to start from (and the reference).
    pub base: String,
    pub device: DeviceChoice,
    /// `f32`, `bf16` (GPU) or `f16`.
    pub dtype: String,
    pub adapt: Adapt,
    /// Peak learning rate; `None`: the method's default (SFT 2e-4, DPO 1e-4 with LoRA; 2e-5 and
    /// 1e-6 in full).
    pub lr: Option<f64>,
    /// Everything else of the loop (its `lr` is replaced by the one above).
    pub train: TrainConfig,
    pub val_percent: u32,
    pub test_percent: u32,
    /// Books always held out (catalog ids or files).
    pub val_books: Vec<String>,
    pub test_books: Vec<String>,
    pub max_prompt_tokens: usize,
    pub max_completion_tokens: usize,
    /// rm-dpo: rounds, sampling, pessimism, pairs per prompt, KL samples (its `dpo` is replaced
    /// by the training config).
    pub rm: RmDpoConfig,
    pub rm_prompts: usize,
    pub heldout_prompts: usize,
    /// Training examples used (at most, spread evenly; 0: all).
    pub max_train_examples: usize,
    /// rm-dpo: the reward ensemble that labels (`latest`, a hash, a folder).
    pub reward_model: String,
    /// The sentence encoder of the reward ensemble.
    pub encoder: String,
    /// Judges measured on held-out prompts every rm-dpo round.
    pub judges: Vec<String>,
    pub export: ExportFormat,
    /// Folder of run folders (default: `policy/` beside the database).
    pub runs_dir: Option<PathBuf>,
    pub fresh: bool,
}

/// The judges `names` names: `sim-coverage` (the simulated labeler), `sim-alt` (an independent
/// simulated preference).
pub fn judges_named(names: &[String]) -> Result<Vec<Box<dyn Judge>>> {
    names
        .iter()
        .map(|n| -> Result<Box<dyn Judge>> {
            match n.as_str() {
                "sim-coverage" | "sim" => Ok(Box::new(SimLabeler::new("sim-coverage", 0.0))),
                "sim-alt" | "alt" => Ok(Box::new(AltLabeler::default())),
                other => Err(WorkspaceError::Invalid(format!(
                    "unknown judge `{other}` (sim-coverage, sim-alt)"
                ))),
            }
        })
        .collect()
}

/// The reward ensemble `spec` names as a scorer (`grounding`: the grounded reward, no
/// checkpoint; `lm-support[:MODEL]`: a language model's support, no checkpoint); `None` for `none`, and for `latest` when
/// nothing is trained yet unless `required`.
pub fn reward_scorer(
    ws: &Workspace,
    spec: &str,
    encoder: &str,
    required: bool,
    progress: bool,
) -> Result<Option<Box<dyn MemberScorer>>> {
    if spec == "none" {
        return Ok(None);
    }
    if ReferenceWeights::parse(spec).is_some() {
        return Err(WorkspaceError::Invalid(format!(
            "`{spec}` scores against people's summaries of the training prompts: it labels \
             rm-dpo's pairs (`policy train --method rm-dpo --reward-model {spec}`) and judges \
             nothing else; here name a reward model (`latest`, a hash, a folder, `grounding`, \
             `lm-support`)"
        )));
    }
    if crate::reward::consensus::is(spec) {
        return Err(WorkspaceError::Invalid(crate::reward::consensus::needs_candidates(
            "one summary at a time",
        )));
    }
    if let Some(grounded) = crate::reward::grounded::Grounded::parse(spec) {
        let grounded = grounded.map_err(WorkspaceError::Invalid)?;
        return Ok(Some(Box::new(GroundingScorer(grounded))));
    }
    if let Some(model) = crate::reward::support::parse(spec) {
        let model = model.map_err(WorkspaceError::Invalid)?;
        let support = crate::reward::support::load(&model, ws.models_dir())?;
        return Ok(Some(Box::new(SupportScorer(support))));
    }
    let model = if required {
        summarize::load_reward_model(ws, spec)?
    } else {
        match summarize::load_reward_model_if_any(ws, spec)? {
            Some(m) => m,
            None => return Ok(None),
        }
    };
    let encoder = ws.encoder(encoder, progress)?;
    let cache = super::embeddings::cache(ws.store());
    Ok(Some(Box::new(EnsembleScorer::new(Arc::new(model), encoder, Some(cache))?)))
}

fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(WorkspaceError::Invalid(format!("unknown dtype `{other}` (f32, bf16)"))),
    }
}

fn book_ids(ws: &Workspace, specs: &[String]) -> Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    for spec in specs {
        let book = books::open(ws, spec, false, &|_| {})?;
        ids.insert(book.id().as_str().to_string());
    }
    Ok(ids)
}

/// Builds the run `request` describes (data from the store or the file, the split's forced
/// books, the base model resolved, fetched on first use).
pub fn train_job(ws: &Workspace, request: &TrainRequest, progress: bool) -> Result<TrainJob> {
    let models_dir = ws.models_dir().to_path_buf();
    let base = fetch::resolve_model_with(&request.base, &models_dir, progress)
        .map_err(InferError::from)?;
    let identity = LocalGenerator::identity_of(&base.path, base.sha256.clone())?;
    let identity = ModelIdentity { name: base.name.clone(), ..identity };
    let dtype = parse_dtype(&request.dtype)?;
    let mode = request.adapt.mode(request.train.seed)?;
    let (data, labelers) = match &request.data {
        Some(path) => (data::read_jsonl(path)?, Vec::new()),
        None => {
            let records: Vec<_> = feedback::all(ws.store())?
                .into_iter()
                .filter(|f| request.labelers.is_empty() || request.labelers.contains(&f.labeler))
                .filter(|f| request.heights.is_empty() || request.heights.contains(&f.height))
                .collect();
            if records.is_empty() {
                let filtered = !(request.labelers.is_empty() && request.heights.is_empty());
                return Err(WorkspaceError::NotFound(format!(
                    "no stored feedback{} to train on (rate nodes with `rrm rate`, simulate with \
                     `rrm feedback simulate`, or pass --data FILE.jsonl)",
                    if filtered { " matches the filters" } else { "" }
                )));
            }
            let labelers: BTreeSet<String> = records.iter().map(|f| f.labeler.clone()).collect();
            (data::from_feedback(&records)?, labelers.into_iter().collect())
        }
    };
    let full = matches!(request.adapt, Adapt::Full);
    let lr = request.lr.unwrap_or(match (request.method, full) {
        (Method::Sft, false) => 2e-4,
        (_, false) => 1e-4,
        (Method::Sft, true) => 2e-5,
        (_, true) => 1e-6,
    });
    let train = TrainConfig { lr, ..request.train.clone() };
    train.validate()?;
    let rm = RmDpoConfig {
        pairs_per_prompt: request.rm.pairs_per_prompt.max(1),
        dpo: train.clone(),
        ..request.rm.clone()
    };
    Ok(TrainJob {
        method: request.method,
        base_path: base.path.clone(),
        base: identity,
        device: request.device.device()?,
        dtype,
        mode,
        data,
        val_percent: request.val_percent,
        test_percent: request.test_percent,
        force_val: book_ids(ws, &request.val_books)?,
        force_test: book_ids(ws, &request.test_books)?,
        max_prompt_tokens: request.max_prompt_tokens,
        max_completion_tokens: request.max_completion_tokens,
        train,
        rm,
        heldout_prompts: request.heldout_prompts,
        rm_prompts: request.rm_prompts,
        max_train_examples: request.max_train_examples,
        name: request.name.clone(),
        export_format: request.export,
        models_dir,
        runs_root: request
            .runs_dir
            .clone()
            .unwrap_or_else(|| job::default_runs_root(ws.store().path())),
        fresh: request.fresh,
        overwrite: request.overwrite,
        labelers,
    })
}

/// Trains, exports and registers the policy `request` describes (resuming an unfinished run of
/// the same settings).
pub fn train(
    ws: &Workspace,
    request: &TrainRequest,
    progress: bool,
    observer: &dyn Observer,
) -> Result<JobReport> {
    let job = train_job(ws, request, progress)?;
    let scorer = match ReferenceWeights::parse(&request.reward_model) {
        // People's summaries of the training prompts, from the same data.
        Some(weights) if request.method == Method::RmDpo => {
            let weights = weights.map_err(WorkspaceError::Invalid)?;
            let scorer = ReferenceScorer::from_dataset(&job.data, weights)
                .map_err(|e| WorkspaceError::Invalid(e.to_string()))?;
            Some(Box::new(scorer) as Box<dyn MemberScorer>)
        }
        _ if request.method == Method::RmDpo => {
            reward_scorer(ws, &request.reward_model, &request.encoder, true, progress)?
        }
        _ => None,
    };
    let judges = judges_named(&request.judges)?;
    let judge_refs: Vec<&dyn Judge> = judges.iter().map(|j| j.as_ref()).collect();
    Ok(job::run(&job, scorer.as_deref(), &judge_refs, observer)?)
}

/// One `rrm policy eval`.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// The trained policy (a registered name or a .gguf) and what it is compared with.
    pub model: String,
    pub baseline: String,
    /// Compare with the baseline's own file even when it is the policy's base (by default the
    /// base's zero-step export stands in for it: see [`choose_baseline`]).
    pub baseline_as_is: bool,
    /// Held-out books (files, folders, catalog ids).
    pub books: Vec<String>,
    pub max_height: Option<u32>,
    /// The reward ensemble to judge by (`latest`, a hash, a folder, `none`).
    pub reward_model: String,
    pub encoder: String,
    pub judges: Vec<String>,
    /// Held-out height-0 prompts for KL(policy‖baseline) (0: skip) and samples per prompt.
    pub kl_prompts: usize,
    pub kl_samples: usize,
    pub batch_size: usize,
    pub device: DeviceChoice,
    pub decomposer: super::decomposers::DecomposerSpec,
}

/// What an evaluation tells its front end as it goes.
pub trait EvalObserver {
    /// A step starts (`summarizing BOOK with both models`, `estimating KL`).
    fn stage(&self, _what: &str) {}
    /// A stage ended.
    fn stage_done(&self) {}
    /// Something worth a warning (a book the policy trained on).
    fn warn(&self, _text: &str) {}
}

impl EvalObserver for () {}

/// Summarizes the held-out books with both models and judges them node by node (the judges,
/// the reward ensemble if any), with KL(policy‖baseline) on held-out leaf prompts. The
/// baseline is the file [`choose_baseline`] picks (the report's `baseline_used` names it).
pub fn evaluate(
    ws: &Workspace,
    request: &EvalRequest,
    progress: bool,
    observer: &dyn EvalObserver,
) -> Result<EvalReport> {
    let card = registry::find(ws.models_dir(), &request.model);
    let judges = judges_named(&request.judges)?;
    let judge_refs: Vec<&dyn Judge> = judges.iter().map(|j| j.as_ref()).collect();
    let scorer = reward_scorer(ws, &request.reward_model, &request.encoder, false, progress)?;
    if scorer.is_none() && request.reward_model != "none" {
        observer.warn("no reward model yet: judging without it");
    }
    let decomposer = request.decomposer.build(ws, progress)?;
    let mut opened = Vec::new();
    for spec in books::expand(&request.books)? {
        opened.push(books::open(ws, &spec, false, &|_| {})?);
    }
    let batch = request.batch_size.max(1);
    let config = EngineConfig { max_batch: batch, ..EngineConfig::default() };
    let spec_of = |model: &str| GeneratorSpec {
        model: Some(model.to_string()),
        models_dir: Some(ws.models_dir().to_path_buf()),
        device: request.device,
        ..GeneratorSpec::local_default()
    };
    let baseline_used = choose_baseline(ws, request, card.as_ref(), progress)?;
    let policy: Arc<dyn Generator> =
        Arc::new(spec_of(&request.model).load_lazy(config.clone(), progress)?);
    let baseline_spec = baseline_used.file.to_string_lossy().into_owned();
    let baseline: Arc<dyn Generator> =
        Arc::new(spec_of(&baseline_spec).load_lazy(config, progress)?);
    let options =
        ComposeOptions { batch_size: batch, max_height: request.max_height, ..Default::default() };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| WorkspaceError::Invalid(format!("starting the async runtime: {e}")))?;
    let mut report = EvalReport {
        policy: policy.identity().name.clone(),
        baseline: match baseline_used.zero_step {
            Some(f) => format!("{} (zero-step {} export)", request.baseline, f.name()),
            None => baseline.identity().name.clone(),
        },
        trained_on: card.as_ref().map(|c| c.data.labelers.clone()).unwrap_or_default(),
        ..EvalReport::default()
    };
    let mut items = Vec::new();
    let mut kl_prompts = Vec::new();
    for book in &opened {
        let tree = summarize::decompose(ws, book, decomposer.as_ref())?;
        let seen = card
            .as_ref()
            .is_some_and(|c| c.data.train_books.iter().any(|b| b == book.id().as_str()));
        if seen {
            observer.warn(&format!("{} is among the policy's training books", book.title()));
            report.seen_books.push(book.title().to_string());
        }
        report.books.push(book.title().to_string());
        observer.stage(&format!("summarizing {} with both models", book.title()));
        let result = runtime.block_on(eval::compose_both(
            ws.store(),
            book,
            &tree,
            Arc::clone(&policy),
            Arc::clone(&baseline),
            &options,
        ));
        observer.stage_done();
        items.extend(result?);
        for &leaf in tree.leaves() {
            let node = tree.node(leaf);
            kl_prompts.push(Prompt::for_node(book.slice(node.covers), 0, book.id().as_str())?);
        }
    }
    let (heights, root) = eval::report(&items, &judge_refs, scorer.as_deref())?;
    report.heights = heights;
    report.root = root;
    if request.kl_prompts > 0 && !kl_prompts.is_empty() {
        observer.stage("estimating KL(policy‖baseline)");
        let result = estimate_kl(ws, request, &baseline_used.file, &kl_prompts);
        observer.stage_done();
        report.kl = Some(result?);
    }
    report.baseline_used = baseline_used;
    Ok(report)
}

/// The file the baseline side is: the zero-step export of the policy's base when the baseline
/// named is that base (the policy's card says its base, export format and dtype), else the
/// named model's own file. `--baseline-as-is` keeps the named file.
pub fn choose_baseline(
    ws: &Workspace,
    request: &EvalRequest,
    card: Option<&registry::PolicyCard>,
    progress: bool,
) -> Result<BaselineUsed> {
    let models_dir = ws.models_dir();
    let resolved = fetch::resolve_model_with(&request.baseline, models_dir, progress)
        .map_err(InferError::from)?;
    let as_is = |note: String| BaselineUsed {
        spec: request.baseline.clone(),
        file: resolved.path.clone(),
        zero_step: None,
        note,
    };
    if request.baseline_as_is {
        return Ok(as_is("the named model's own file (--baseline-as-is)".into()));
    }
    let Some(card) = card else {
        return Ok(as_is(format!(
            "the named model's own file: `{}` has no policy card, so how it was exported is \
             unknown",
            request.model
        )));
    };
    if registry::find(models_dir, &request.baseline).is_some() {
        return Ok(as_is("a trained policy, compared as it was registered".into()));
    }
    let sha = match &resolved.sha256 {
        Some(s) => s.clone(),
        None => crate::infer::engine::file_sha256(&resolved.path)?,
    };
    if sha != card.base.hash {
        return Ok(as_is(format!(
            "the named model's own file: it is not the base `{}` was trained from",
            card.name
        )));
    }
    let dtype = match card.config.get("dtype").and_then(|d| d.as_str()) {
        Some("BF16") => DType::BF16,
        Some("F16") => DType::F16,
        _ => DType::F32,
    };
    let file =
        registry::zero_step_export(models_dir, &resolved.path, &sha, card.export_format, dtype)?;
    Ok(BaselineUsed {
        spec: request.baseline.clone(),
        file,
        zero_step: Some(card.export_format),
        note: format!(
            "the policy's base exported as the policy was ({}, from {:?} weights) with no \
             training step, so quantization is not part of the difference",
            card.export_format.name(),
            dtype
        ),
    })
}

/// KL(policy‖baseline) on up to `kl_prompts` prompts spread evenly over `prompts`: sampled
/// from the policy's file, both sides scored on their own files' weights (`kl::estimate_files`).
fn estimate_kl(
    ws: &Workspace,
    request: &EvalRequest,
    baseline: &std::path::Path,
    prompts: &[Prompt],
) -> Result<KlEstimate> {
    let step = (prompts.len() / request.kl_prompts.max(1)).max(1);
    let chosen: Vec<Prompt> =
        prompts.iter().step_by(step).take(request.kl_prompts).cloned().collect();
    let policy = fetch::resolve_model_with(&request.model, ws.models_dir(), false)
        .map_err(InferError::from)?;
    let device = request.device.device()?;
    let opts = SampleOptions::pure(request.kl_samples.max(1), vec![128, 192, 384], 7919);
    let (estimate, _) = kl::estimate_files(&policy.path, baseline, &device, &chosen, &opts)?;
    Ok(estimate)
}

/// One `rrm bench train`.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    /// A known model name, a .gguf path, a folder with one.
    pub model: String,
    pub models_dir: Option<PathBuf>,
    pub device: DeviceChoice,
    /// `lora`, `full`.
    pub modes: Vec<String>,
    pub batch: usize,
    pub seq_len: usize,
    pub completion_len: usize,
    pub steps: usize,
    pub lora_rank: usize,
    pub lora_targets: String,
    pub lora_top_layers: Option<usize>,
    /// Each mode is measured once per entry: without and/or with gradient checkpointing.
    pub checkpointing: Vec<bool>,
    /// And once per entry here: with the fused ops (true) and/or candle's ops.
    pub fused_ops: Vec<bool>,
}

/// The model a bench measures, resolved (fetched on first use): its name.
pub fn bench_model(request: &BenchRequest, progress: bool) -> Result<fetch::ResolvedModel> {
    let dir = fetch::models_dir(request.models_dir.as_deref());
    Ok(fetch::resolve_model_with(&request.model, &dir, progress).map_err(InferError::from)?)
}

/// Measures training throughput for each mode, calling `row` as each one finishes.
pub fn bench_train(
    request: &BenchRequest,
    model: &fetch::ResolvedModel,
    row: &mut dyn FnMut(TrainBench) -> Result<()>,
) -> Result<()> {
    let device = request.device.device()?;
    for name in &request.modes {
        let objective = if name == "dpo" { Objective::Dpo } else { Objective::Sft };
        let adapt = match name.as_str() {
            "lora" | "dpo" => Adapt::Lora {
                rank: request.lora_rank,
                alpha: None,
                targets: request.lora_targets.clone(),
                top_layers: request.lora_top_layers,
            },
            "full" => Adapt::Full,
            other => {
                return Err(WorkspaceError::Invalid(format!(
                    "unknown mode `{other}` (lora, full, dpo: LoRA with DPO's loss)"
                )))
            }
        };
        let options = LoadOptions { mode: adapt.mode(0)?, dtype: DType::F32 };
        for &checkpointing in &request.checkpointing {
            for &fused in &request.fused_ops {
                let measured = measure(
                    &model.path,
                    &device,
                    &options,
                    objective,
                    checkpointing,
                    fused,
                    request.batch,
                    request.seq_len,
                    request.completion_len,
                    request.steps,
                )?;
                row(measured)?;
            }
        }
    }
    Ok(())
}

impl From<crate::policy::PolicyError> for WorkspaceError {
    fn from(e: crate::policy::PolicyError) -> Self {
        WorkspaceError::Policy(Box::new(e))
    }
}

impl From<crate::lm::LmError> for WorkspaceError {
    fn from(e: crate::lm::LmError) -> Self {
        WorkspaceError::Policy(Box::new(e.into()))
    }
}
