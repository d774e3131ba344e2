//! One `rrm policy train` run from start to registered model: split the data by book, encode
//! it, load the base model, train (SFT, DPO or rm-dpo rounds) in a run folder named by a hash
//! of everything that decides the result (so running the same command again after a kill
//! resumes it), then export and register the policy with its card.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::data::{Dataset, Encoded, Encoder, Prompt, Split};
use super::judge::{Judge, MemberScorer};
use super::registry::{self, DataCard, PolicyCard};
use super::rmdpo::{self, RmDpoConfig, RmDpoInputs, RmDpoReport};
use super::train::{train, Observer, TrainConfig, TrainReport};
use super::{io_err, Method, PolicyError};
use crate::infer::ModelIdentity;
use crate::lm::export::ExportFormat;
use crate::lm::model::{LoadOptions, Mode, TrainableLlama};

/// Everything a training run needs.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub method: Method,
    /// The base model's GGUF and identity (the reference, unless trained from another policy).
    pub base_path: PathBuf,
    pub base: ModelIdentity,
    pub device: Device,
    pub dtype: DType,
    pub mode: Mode,
    pub data: Dataset,
    pub val_percent: u32,
    pub test_percent: u32,
    /// Groups (books) always held out for validation, and as test.
    pub force_val: BTreeSet<String>,
    pub force_test: BTreeSet<String>,
    pub max_prompt_tokens: usize,
    pub max_completion_tokens: usize,
    pub train: TrainConfig,
    /// For rm-dpo.
    pub rm: RmDpoConfig,
    /// Held-out prompts measured per rm-dpo round (at most).
    pub heldout_prompts: usize,
    /// Training prompts sampled each rm-dpo round (at most, spread evenly; 0: all).
    pub rm_prompts: usize,
    /// Training examples used (at most, spread evenly over the training split; 0: all): a
    /// quick run also skips the reference log-probabilities of the unused ones.
    pub max_train_examples: usize,
    pub name: Option<String>,
    pub export_format: ExportFormat,
    pub models_dir: PathBuf,
    /// Where run folders live (`<root>/<run hash>`).
    pub runs_root: PathBuf,
    /// Delete an unfinished run of the same settings and start over.
    pub fresh: bool,
    pub overwrite: bool,
    /// Feedback labelers behind the data, for the card.
    pub labelers: Vec<String>,
}

/// What a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobReport {
    pub name: String,
    pub gguf: PathBuf,
    pub run_dir: PathBuf,
    pub split: Split,
    pub card: PolicyCard,
    pub train: Option<TrainReport>,
    pub rounds: Option<RmDpoReport>,
}

fn distinct_prompts<'a>(prompts: impl Iterator<Item = &'a Prompt>) -> Vec<Prompt> {
    let mut seen = BTreeSet::new();
    prompts
        .filter(|p| seen.insert((p.height, p.input.clone(), p.messages.len())))
        .cloned()
        .collect()
}

/// Runs `job` (see the module docs). `scorer` (the reward ensemble) is needed by rm-dpo;
/// `judges` are measured on held-out prompts per round.
pub fn run(
    job: &TrainJob,
    scorer: Option<&dyn MemberScorer>,
    judges: &[&dyn Judge],
    observer: &dyn Observer,
) -> Result<JobReport, PolicyError> {
    if let Some(n) = &job.name {
        registry::validate_name(n)?;
    }
    let groups = job.data.groups();
    if groups.is_empty() {
        return Err(PolicyError::NoData(format!("{} has no examples", job.data.source)));
    }
    // Forced books name their split group (books sharing a passage share one).
    let to_groups = |books: &BTreeSet<String>| -> BTreeSet<String> {
        books.iter().map(|b| super::data::group_of_book(&job.data, b)).collect()
    };
    let (force_val, force_test) = (to_groups(&job.force_val), to_groups(&job.force_test));
    // A forced book that has no examples would silently change nothing: say so instead.
    for (flag, books) in [("--val-books", &job.force_val), ("--test-books", &job.force_test)] {
        if let Some(book) =
            books.iter().find(|b| !groups.contains(&super::data::group_of_book(&job.data, b)))
        {
            return Err(PolicyError::Invalid(format!(
                "{flag}: book {book} has no examples in {} (its feedback carries no book, or the \
                 data file has no book field); drop the flag or use --val-percent/--test-percent",
                job.data.source
            )));
        }
    }
    let split = Split::by_hash(&groups, job.val_percent, job.test_percent, &force_val, &force_test);
    let part = |set: &BTreeSet<String>| job.data.filter(|g| set.contains(g));
    let (train_set, val_set, test_set) = (part(&split.train), part(&split.val), part(&split.test));
    let (mut model, tokenizer) = TrainableLlama::load(
        &job.base_path,
        &job.device,
        &LoadOptions { mode: job.mode.clone(), dtype: job.dtype },
    )?;
    model.set_checkpointing(job.train.grad_checkpoint);
    let encoder = Encoder::new(&tokenizer, job.max_prompt_tokens, job.max_completion_tokens)?;
    let mut truncated = 0;
    let mut encode = |d: &Dataset| -> Result<Vec<Encoded>, PolicyError> {
        let fitted = match job.method {
            Method::Sft => d
                .sft
                .iter()
                .map(|e| encoder.encode(&e.prompt, &[&e.completion]))
                .collect::<Result<Vec<_>, _>>()?,
            Method::Dpo => d
                .prefs
                .iter()
                .map(|e| encoder.encode(&e.prompt, &[&e.chosen, &e.rejected]))
                .collect::<Result<Vec<_>, _>>()?,
            Method::RmDpo => Vec::new(),
        };
        truncated += fitted.iter().filter(|f| f.truncated).count();
        Ok(fitted.into_iter().map(|f| f.encoded).collect())
    };
    let mut train_items = encode(&train_set)?;
    if job.max_train_examples > 0 && train_items.len() > job.max_train_examples {
        // Spread evenly over the training examples (a deterministic subset).
        let step = train_items.len() as f64 / job.max_train_examples as f64;
        train_items = (0..job.max_train_examples)
            .map(|i| train_items[(i as f64 * step) as usize].clone())
            .collect();
    }
    let val_items = encode(&val_set)?;
    if truncated > 0 {
        tracing::info!(
            "{truncated} example(s) longer than {} prompt / {} completion tokens were truncated \
             (prompt kept from the end, completions from the start)",
            job.max_prompt_tokens,
            job.max_completion_tokens
        );
    }
    let test_count = match job.method {
        Method::Sft => test_set.sft.len(),
        _ => test_set.prefs.len(),
    };
    let examples = |d: &Dataset| match job.method {
        Method::Sft => d.sft.len(),
        _ => d.prefs.len(),
    };
    if job.method != Method::RmDpo && train_items.is_empty() {
        let what = if job.method == Method::Sft {
            "demonstrations or corrections"
        } else {
            "preference pairs (comparisons, Likert pairs, corrections)"
        };
        return Err(PolicyError::NoData(format!(
            "{}: no {what} in the training split ({} example(s) in all)",
            job.data.source,
            examples(&job.data)
        )));
    }
    let mut train_prompts = distinct_prompts(
        train_set.prefs.iter().map(|e| &e.prompt).chain(train_set.sft.iter().map(|e| &e.prompt)),
    );
    if job.rm_prompts > 0 && train_prompts.len() > job.rm_prompts {
        let step = train_prompts.len() as f64 / job.rm_prompts as f64;
        train_prompts = (0..job.rm_prompts)
            .map(|i| train_prompts[(i as f64 * step) as usize].clone())
            .collect();
    }
    let mut heldout = distinct_prompts(
        val_set.prefs.iter().map(|e| &e.prompt).chain(val_set.sft.iter().map(|e| &e.prompt)),
    );
    heldout.truncate(job.heldout_prompts);
    let run_hash = {
        let key = serde_json::json!({
            "method": job.method, "base": job.base.hash, "mode": job.mode,
            "dtype": format!("{:?}", job.dtype), "data": job.data.hash(), "split": &split,
            "limits": [job.max_prompt_tokens, job.max_completion_tokens, job.rm_prompts, job.heldout_prompts, job.max_train_examples],
            "train": &job.train, "rm": if job.method == Method::RmDpo { Some(&job.rm) } else { None },
        });
        blake3::hash(key.to_string().as_bytes()).to_hex()[..16].to_string()
    };
    let run_dir = job.runs_root.join(format!("{}-{run_hash}", job.method.name()));
    if job.fresh && run_dir.exists() {
        std::fs::remove_dir_all(&run_dir).map_err(|e| io_err(&run_dir, e))?;
    }
    std::fs::create_dir_all(&run_dir).map_err(|e| io_err(&run_dir, e))?;
    observer.message(&format!(
        "run folder {} (run the same command again to resume it)",
        run_dir.display()
    ));
    let (train_report, rounds) = match job.method {
        Method::Sft | Method::Dpo => {
            let r = train(
                &mut model,
                job.method,
                &train_items,
                &val_items,
                &job.train,
                &run_dir,
                None,
                observer,
            )?;
            (Some(r), None)
        }
        Method::RmDpo => {
            let scorer = scorer.ok_or_else(|| {
                PolicyError::Invalid("rm-dpo needs a reward model (--reward-model)".into())
            })?;
            let reference = if matches!(job.mode, Mode::Full) {
                Some(
                    TrainableLlama::load(
                        &job.base_path,
                        &job.device,
                        &LoadOptions { mode: Mode::Frozen, dtype: job.dtype },
                    )?
                    .0,
                )
            } else {
                None
            };
            // KL is measured against the base as the rounds' samples see the policy: exported
            // Q8_0 with no training step.
            let reference_gguf = registry::zero_step_export(
                &job.models_dir,
                &job.base_path,
                &job.base.hash,
                ExportFormat::Q8_0,
                job.dtype,
            )?;
            let inputs = RmDpoInputs {
                reference_gguf: &reference_gguf,
                encoder: &encoder,
                device: &job.device,
                train_prompts: &train_prompts,
                heldout_prompts: &heldout,
                scorer,
                judges,
                reference: reference.as_ref(),
            };
            let mut cfg = job.rm.clone();
            cfg.dpo = job.train.clone();
            (None, Some(rmdpo::run(&mut model, &inputs, &cfg, &run_dir, observer)?))
        }
    };
    let data_card = DataCard {
        source: job.data.source.clone(),
        hash: job.data.hash(),
        train_groups: split.train.iter().cloned().collect(),
        train_books: job
            .data
            .book_groups
            .iter()
            .filter(|(_, g)| split.train.contains(*g))
            .map(|(b, _)| b.clone())
            .collect(),
        val_groups: split.val.iter().cloned().collect(),
        test_groups: split.test.iter().cloned().collect(),
        train_examples: if job.method == Method::RmDpo {
            train_prompts.len()
        } else {
            train_items.len()
        },
        val_examples: if job.method == Method::RmDpo { heldout.len() } else { val_items.len() },
        test_examples: test_count,
        truncated,
        labelers: job.labelers.clone(),
    };
    let name = job
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}-{}", job.base.name, job.method.name(), &run_hash[..8]));
    let config = serde_json::json!({
        "train": &job.train,
        "rm": if job.method == Method::RmDpo { Some(&job.rm) } else { None },
        "dtype": format!("{:?}", job.dtype),
        "max_prompt_tokens": job.max_prompt_tokens,
        "max_completion_tokens": job.max_completion_tokens,
        "run_dir": run_dir,
    });
    let mut card = PolicyCard::new(
        &name,
        job.base.clone(),
        job.method,
        job.mode.clone(),
        job.export_format,
        config,
        data_card,
    );
    if job.method != Method::Sft {
        card.beta = Some(job.train.beta);
    }
    card.rounds = rounds.as_ref().map(|r| r.rounds.len());
    let mut metrics = serde_json::Map::new();
    if let Some(r) = &train_report {
        metrics.insert("train_last".into(), serde_json::json!(r.last));
        metrics.insert("val".into(), serde_json::json!(r.val_history.last().map(|v| &v.metrics)));
        metrics.insert(
            "val_before".into(),
            serde_json::json!(r.val_history.first().map(|v| &v.metrics)),
        );
        metrics.insert("steps".into(), serde_json::json!(r.steps));
        metrics.insert("tokens_per_s".into(), serde_json::json!(r.tokens_per_s));
        card.train_seconds = r.seconds;
    }
    if let Some(r) = &rounds {
        metrics.insert("rounds".into(), serde_json::json!(r.rounds));
        metrics.insert("final".into(), serde_json::json!(r.last));
        card.train_seconds = r.seconds;
    }
    card.metrics = serde_json::Value::Object(metrics);
    // The same run registered before (a re-run after it finished) may replace itself.
    let same_run = registry::find(&job.models_dir, &name)
        .is_some_and(|c| c.config.get("run_dir") == card.config.get("run_dir"));
    let (gguf, card) =
        registry::register(&job.models_dir, card, &model, job.overwrite || same_run)?;
    Ok(JobReport { name, gguf, run_dir, split, card, train: train_report, rounds })
}

/// Where run folders go by default: `<folder of the database>/policy`.
pub fn default_runs_root(db: &Path) -> PathBuf {
    db.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).join("policy")
}
