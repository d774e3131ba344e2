//! The training loop: SFT (completion-only loss) and DPO, with gradient accumulation,
//! clipping, warm-up + cosine, validation, and checkpoints a killed run resumes from.
//!
//! DPO is TRL's sigmoid loss: with `π` and `ref` the summed completion log-probabilities under
//! the policy and the reference, `z = β·((π_c − π_r) − (ref_c − ref_r))` and
//! `loss = −(1 − ε)·log σ(z) − ε·log σ(−z)` (ε: label smoothing), plus, when asked, `α` times
//! the chosen completion's mean token NLL (RPO). The reference log-probabilities are computed
//! once, before the first step (the LoRA model with its adapters off, or the weights as they
//! start in full fine-tuning, or a given reference model), and saved in the run folder.
//!
//! A run folder holds the checkpoints ([`crate::lm::checkpoint`]) and `reference.json`. Data
//! order is a permutation seeded by (seed, epoch), so a resumed run skips exactly the
//! micro-batches it had consumed at its last checkpoint (always taken at an optimizer-step
//! boundary) and continues as if never stopped.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::data::Encoded;
use super::{io_err, Method, PolicyError};
use crate::lm::checkpoint;
use crate::lm::model::{Checkpointing, Mode, Packed, Scored, TrainableLlama};
use crate::lm::optim::{Accumulator, AdamW, ParamsAdamW, Schedule};

/// Hyper-parameters of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub lr: f64,
    pub epochs: usize,
    /// Stop after this many optimizer steps (a quick run).
    pub max_steps: Option<usize>,
    /// Examples (SFT) or pairs (DPO) per forward pass.
    pub batch: usize,
    /// Forward passes per optimizer step.
    pub grad_accum: usize,
    /// Fraction of the steps spent warming up.
    pub warmup_ratio: f64,
    /// The cosine ends at `lr · min_lr_ratio`.
    pub min_lr_ratio: f64,
    /// Global gradient-norm clip (0: off).
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    /// DPO's β.
    pub beta: f64,
    /// DPO's label smoothing ε (conservative DPO).
    pub label_smoothing: f64,
    /// Weight of the NLL term on the chosen completion (RPO); 0: off.
    pub rpo_alpha: f64,
    pub seed: u64,
    /// Optimizer steps between checkpoints.
    pub checkpoint_every: usize,
    /// Gradient checkpointing: recompute block activations in the backward (less memory, one
    /// more forward pass). How the run computes, not what it computes: not part of run keys.
    #[serde(default, skip_serializing)]
    pub grad_checkpoint: Checkpointing,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 5e-5,
            epochs: 1,
            max_steps: None,
            batch: 2,
            grad_accum: 4,
            warmup_ratio: 0.1,
            min_lr_ratio: 0.1,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            beta: 0.1,
            label_smoothing: 0.0,
            rpo_alpha: 0.0,
            seed: 0,
            checkpoint_every: 10,
            grad_checkpoint: Checkpointing::Auto,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |m: String| Err(PolicyError::Invalid(m));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate must be positive (got {})", self.lr));
        }
        if self.batch == 0 || self.grad_accum == 0 {
            return bad("batch and gradient accumulation must be at least 1".into());
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("need at least one epoch or --max-steps".into());
        }
        if self.max_steps == Some(0) {
            return bad("--max-steps must be at least 1".into());
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return bad(format!("β must be positive (got {})", self.beta));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return bad(format!(
                "label smoothing must be in [0, 0.5) (got {})",
                self.label_smoothing
            ));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) || !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad("warm-up ratio must be in [0, 1) and the minimum lr ratio in [0, 1]".into());
        }
        if self.rpo_alpha < 0.0 || self.max_grad_norm < 0.0 || self.weight_decay < 0.0 {
            return bad("RPO α, gradient clip and weight decay must not be negative".into());
        }
        Ok(())
    }
}

pub use crate::lm::observe::{EvalLog, Observer, Quiet, StepLog};

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub steps: usize,
    pub total_steps: usize,
    pub epochs: usize,
    pub train_examples: usize,
    pub val_examples: usize,
    pub train_tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// The step the run resumed from, if it did.
    pub resumed_from: Option<usize>,
    /// Means over the last quarter of the steps (at least the last one).
    pub last: BTreeMap<String, f64>,
    /// Before training and after every epoch.
    pub val_history: Vec<EvalLog>,
    pub steps_log: Vec<StepLog>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoopState {
    config_hash: String,
    step: usize,
    epoch: usize,
    cursor: usize,
    train_tokens: usize,
    seconds: f64,
    steps_log: Vec<StepLog>,
    val_history: Vec<EvalLog>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct References {
    hash: String,
    train: Vec<[f32; 2]>,
    val: Vec<[f32; 2]>,
}

const REFERENCE_FILE: &str = "reference.json";

fn hash_of(parts: &impl Serialize) -> String {
    blake3::hash(&serde_json::to_vec(parts).unwrap_or_default()).to_hex()[..16].to_string()
}

fn log_sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    // log σ(x) = −softplus(−x) = −(relu(−x) + log(1 + exp(−|x|)))
    let sp = (x.neg()?.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    sp.neg()
}

/// The summed completion log-probabilities `[chosen, rejected]` of each pair under `model`
/// as it is (no gradient kept).
pub fn pair_logprobs(
    model: &TrainableLlama,
    pairs: &[Encoded],
    batch: usize,
) -> Result<Vec<[f32; 2]>, PolicyError> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let rows: Vec<Packed> = chunk
            .iter()
            .map(|e| Packed { prompt: e.prompt.clone(), completions: e.completions.clone() })
            .collect();
        let s = model.packed_logprobs(&rows)?;
        let v = s.sums.detach().to_dtype(DType::F32)?.to_vec1::<f32>()?;
        for pair in v.chunks(2) {
            out.push([pair[0], pair.get(1).copied().unwrap_or(0.0)]);
        }
    }
    Ok(out)
}

/// The packed rows of a micro-batch and how many tokens they hold.
fn micro_rows(items: &[&Encoded]) -> (Vec<Packed>, usize) {
    let rows: Vec<Packed> = items
        .iter()
        .map(|e| Packed { prompt: e.prompt.clone(), completions: e.completions.clone() })
        .collect();
    let tokens: usize = items
        .iter()
        .map(|e| e.prompt.len() + e.completions.iter().map(Vec::len).sum::<usize>())
        .sum();
    (rows, tokens)
}

/// Scalar loss and metrics of one micro-batch, no gradient.
fn micro_loss(
    model: &TrainableLlama,
    method: Method,
    items: &[&Encoded],
    refs: &[[f32; 2]],
    cfg: &TrainConfig,
) -> Result<(Tensor, BTreeMap<String, f64>), PolicyError> {
    let (rows, _) = micro_rows(items);
    Ok(loss_of(&model.packed_logprobs(&rows)?, method, refs, cfg)?)
}

/// The loss of a micro-batch and its gradients for every trainable tensor (checkpointed when
/// the model is), with its metrics and token count.
fn micro_backward(
    model: &TrainableLlama,
    method: Method,
    items: &[&Encoded],
    refs: &[[f32; 2]],
    cfg: &TrainConfig,
) -> Result<(Tensor, GradStore, BTreeMap<String, f64>, usize), PolicyError> {
    let (rows, tokens) = micro_rows(items);
    let mut metrics = BTreeMap::new();
    let (loss, grads) = model.packed_backward(&rows, |s| {
        let (loss, m) = loss_of(s, method, refs, cfg)?;
        metrics = m;
        Ok(loss)
    })?;
    Ok((loss, grads, metrics, tokens))
}

/// SFT's or DPO's loss (TRL's definitions) and metrics from a micro-batch's log-probabilities;
/// `refs` are the reference's `[chosen, rejected]` sums per pair. Public for the TRL parity
/// test (`tests/trl_parity.rs`), which holds it to TRL's numbers.
pub fn loss_of(
    s: &Scored,
    method: Method,
    refs: &[[f32; 2]],
    cfg: &TrainConfig,
) -> candle_core::Result<(Tensor, BTreeMap<String, f64>)> {
    let mut metrics = BTreeMap::new();
    let loss = match method {
        Method::Sft => s.tokens.mean_all()?.neg()?.to_dtype(DType::F32)?,
        Method::Dpo | Method::RmDpo => {
            let p = s.counts.len() / 2;
            let dev = s.sums.device().clone();
            let sums = s.sums.to_dtype(DType::F32)?.reshape((p, 2))?;
            let pc = sums.narrow(1, 0, 1)?.squeeze(1)?;
            let pr = sums.narrow(1, 1, 1)?.squeeze(1)?;
            let rc: Vec<f32> = refs.iter().map(|r| r[0]).collect();
            let rr: Vec<f32> = refs.iter().map(|r| r[1]).collect();
            let rc = Tensor::from_vec(rc, p, &dev)?;
            let rr = Tensor::from_vec(rr, p, &dev)?;
            let chosen_reward = ((&pc - &rc)? * cfg.beta)?;
            let rejected_reward = ((&pr - &rr)? * cfg.beta)?;
            let z = (&chosen_reward - &rejected_reward)?;
            let eps = cfg.label_smoothing;
            let mut loss = ((log_sigmoid(&z)? * -(1.0 - eps))? - (log_sigmoid(&z.neg()?)? * eps)?)?
                .mean_all()?;
            if cfg.rpo_alpha > 0.0 {
                let lens: Vec<f32> = (0..p).map(|i| s.counts[2 * i].max(1) as f32).collect();
                let lens = Tensor::from_vec(lens, p, &dev)?;
                let nll = (pc.neg()? / lens)?.mean_all()?;
                metrics.insert("nll_chosen".into(), scalar(&nll)?);
                loss = (loss + (nll * cfg.rpo_alpha)?)?;
            }
            let zv = z.detach().to_vec1::<f32>()?;
            let acc = zv.iter().filter(|&&x| x > 0.0).count() as f64 / p as f64;
            metrics.insert("reward_accuracy".into(), acc);
            metrics.insert("margin".into(), zv.iter().map(|&x| x as f64).sum::<f64>() / p as f64);
            metrics.insert("chosen_reward".into(), scalar(&chosen_reward.mean_all()?)?);
            metrics.insert("rejected_reward".into(), scalar(&rejected_reward.mean_all()?)?);
            loss
        }
    };
    Ok((loss, metrics))
}

fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// Mean loss and metrics over `items`, no gradient.
fn evaluate(
    model: &TrainableLlama,
    method: Method,
    items: &[Encoded],
    refs: &[[f32; 2]],
    cfg: &TrainConfig,
) -> Result<BTreeMap<String, f64>, PolicyError> {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut n = 0usize;
    let refs_for = |i: usize, len: usize| -> Vec<[f32; 2]> {
        if refs.is_empty() {
            vec![[0.0; 2]; len]
        } else {
            refs[i..i + len].to_vec()
        }
    };
    for (ci, chunk) in items.chunks(cfg.batch.max(1)).enumerate() {
        let at = ci * cfg.batch.max(1);
        let refs = refs_for(at, chunk.len());
        let batch: Vec<&Encoded> = chunk.iter().collect();
        let (loss, metrics) = micro_loss(model, method, &batch, &refs, cfg)?;
        let w = chunk.len() as f64;
        *sums.entry("loss".into()).or_default() += scalar(&loss)? * w;
        for (k, v) in metrics {
            *sums.entry(k).or_default() += v * w;
        }
        n += chunk.len();
    }
    Ok(sums.into_iter().map(|(k, v)| (k, v / n.max(1) as f64)).collect())
}

/// Trains `model` (LoRA or full) on `train` with `method` (SFT: one completion per example;
/// DPO: `[chosen, rejected]`), resuming from the newest checkpoint in `run_dir` when there is
/// one. `reference`: the DPO reference when it is not the model itself with its adapters off
/// (or, in full fine-tuning, as it starts).
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &mut TrainableLlama,
    method: Method,
    train: &[Encoded],
    val: &[Encoded],
    cfg: &TrainConfig,
    run_dir: &Path,
    reference: Option<&TrainableLlama>,
    observer: &dyn Observer,
) -> Result<TrainReport, PolicyError> {
    cfg.validate()?;
    if train.is_empty() {
        return Err(PolicyError::NoData("no training examples fit the length limits".into()));
    }
    if matches!(model.mode, Mode::Frozen) {
        return Err(PolicyError::Invalid("the model was loaded frozen: nothing to train".into()));
    }
    let want = if method == Method::Sft { 1 } else { 2 };
    if train.iter().chain(val).any(|e| e.completions.len() != want) {
        return Err(PolicyError::Invalid(format!(
            "{} needs {want} completion(s) per example",
            method.name()
        )));
    }
    std::fs::create_dir_all(run_dir).map_err(|e| io_err(run_dir, e))?;
    let config_hash = hash_of(&(method, cfg, train, val, &model.mode));
    let vars = model.trainable();
    let params = ParamsAdamW { lr: cfg.lr, weight_decay: cfg.weight_decay, ..Default::default() };
    let mut opt = AdamW::new(vars.clone(), params)?;
    let mut state = LoopState {
        config_hash: config_hash.clone(),
        step: 0,
        epoch: 0,
        cursor: 0,
        train_tokens: 0,
        seconds: 0.0,
        steps_log: Vec::new(),
        val_history: Vec::new(),
    };
    let mut resumed_from = None;
    if let Some(ck) = checkpoint::load_latest(run_dir)? {
        let saved: LoopState = serde_json::from_value(ck.state.clone()).map_err(|e| {
            PolicyError::File { path: ck.path.clone(), reason: format!("checkpoint state: {e}") }
        })?;
        if saved.config_hash != config_hash {
            return Err(PolicyError::File {
                path: run_dir.to_path_buf(),
                reason: "holds a run with other data or settings (start afresh, or use another \
                         run folder)"
                    .into(),
            });
        }
        model.load_trainable(&ck.weights)?;
        opt.load_state(&ck.optim, ck.step)
            .map_err(|reason| PolicyError::File { path: ck.path.clone(), reason })?;
        resumed_from = Some(ck.step);
        state = saved;
    }

    // Reference log-probabilities, computed once.
    let refs = if method == Method::Sft {
        References { hash: config_hash.clone(), train: Vec::new(), val: Vec::new() }
    } else {
        let path = run_dir.join(REFERENCE_FILE);
        let saved: Option<References> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|r: &References| r.hash == config_hash);
        match saved {
            Some(r) => r,
            None => {
                if resumed_from.is_some() && reference.is_none() && matches!(model.mode, Mode::Full)
                {
                    return Err(PolicyError::File {
                        path,
                        reason: "missing: the reference of a resumed full fine-tuning run \
                                 cannot be recomputed"
                            .into(),
                    });
                }
                observer.message("computing reference log-probabilities");
                let compute = |m: &TrainableLlama| -> Result<References, PolicyError> {
                    Ok(References {
                        hash: config_hash.clone(),
                        train: pair_logprobs(m, train, cfg.batch)?,
                        val: pair_logprobs(m, val, cfg.batch)?,
                    })
                };
                let r = match reference {
                    Some(m) => compute(m)?,
                    None => {
                        let was = model.adapters_enabled();
                        model.set_adapters(false);
                        let r = compute(model);
                        model.set_adapters(was);
                        r?
                    }
                };
                let json =
                    serde_json::to_vec(&r).map_err(|e| PolicyError::Invalid(e.to_string()))?;
                let tmp = run_dir.join(".reference.json.tmp");
                std::fs::write(&tmp, json).map_err(|e| io_err(&tmp, e))?;
                std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
                r
            }
        }
    };

    let micro_per_epoch = train.len().div_ceil(cfg.batch);
    let steps_per_epoch = micro_per_epoch.div_ceil(cfg.grad_accum);
    let total_steps = cfg.max_steps.unwrap_or(steps_per_epoch * cfg.epochs.max(1));
    let schedule = Schedule {
        peak: cfg.lr,
        warmup: (cfg.warmup_ratio * total_steps as f64).ceil() as usize,
        total: total_steps,
        min_ratio: cfg.min_lr_ratio,
    };
    observer.started(total_steps, resumed_from);
    if state.step == 0 && state.val_history.is_empty() && !val.is_empty() {
        let metrics = evaluate(model, method, val, &refs.val, cfg)?;
        let log = EvalLog { step: 0, epoch: 0, metrics };
        observer.eval(&log);
        state.val_history.push(log);
    }
    let save =
        |state: &LoopState, opt: &AdamW, model: &TrainableLlama| -> Result<(), PolicyError> {
            let weights =
                model.trainable().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect();
            let json =
                serde_json::to_value(state).map_err(|e| PolicyError::Invalid(e.to_string()))?;
            checkpoint::save(run_dir, state.step, &weights, &opt.state_tensors(), &json, 2)?;
            Ok(())
        };
    let mut acc = Accumulator::new(vars.len());
    let scale = 1.0 / cfg.grad_accum as f64;
    while state.step < total_steps {
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            cfg.seed ^ (state.epoch as u64).wrapping_mul(0x9E37_79B9),
        );
        order.shuffle(&mut rng);
        let micro: Vec<&[usize]> = order.chunks(cfg.batch).collect();
        let mut step_loss = 0.0;
        let mut step_metrics: BTreeMap<String, f64> = BTreeMap::new();
        let mut step_tokens = 0;
        let mut started = Instant::now();
        while state.cursor < micro.len() && state.step < total_steps {
            let idx = micro[state.cursor];
            let items: Vec<&Encoded> = idx.iter().map(|&i| &train[i]).collect();
            let batch_refs: Vec<[f32; 2]> =
                idx.iter().map(|&i| refs.train.get(i).copied().unwrap_or([0.0; 2])).collect();
            let (loss, grads, metrics, tokens) =
                micro_backward(model, method, &items, &batch_refs, cfg)?;
            acc.add(&vars, &grads, scale)?;
            step_loss += scalar(&loss)? * scale;
            for (k, v) in metrics {
                *step_metrics.entry(k).or_default() += v * scale;
            }
            step_tokens += tokens;
            state.cursor += 1;
            if observer.stop() {
                return Err(PolicyError::Interrupted);
            }
            if acc.micro == cfg.grad_accum || state.cursor == micro.len() {
                let k = acc.micro as f64 * scale;
                let grad_norm = acc.clip(cfg.max_grad_norm)?;
                let lr = schedule.lr(state.step);
                opt.set_lr(lr);
                opt.step_with(&acc.take())?;
                let seconds = started.elapsed().as_secs_f64();
                state.step += 1;
                state.train_tokens += step_tokens;
                state.seconds += seconds;
                let log = StepLog {
                    step: state.step,
                    epoch: state.epoch,
                    lr,
                    loss: step_loss / k,
                    grad_norm,
                    tokens: step_tokens,
                    seconds,
                    metrics: step_metrics.iter().map(|(n, v)| (n.clone(), v / k)).collect(),
                };
                observer.step(&log);
                state.steps_log.push(log);
                let epoch_done = state.cursor == micro.len();
                if epoch_done {
                    state.epoch += 1;
                    state.cursor = 0;
                    if !val.is_empty() {
                        let metrics = evaluate(model, method, val, &refs.val, cfg)?;
                        let log = EvalLog { step: state.step, epoch: state.epoch, metrics };
                        observer.eval(&log);
                        state.val_history.push(log);
                    }
                }
                if state.step.is_multiple_of(cfg.checkpoint_every.max(1))
                    || state.step == total_steps
                {
                    save(&state, &opt, model)?;
                }
                step_loss = 0.0;
                step_metrics.clear();
                step_tokens = 0;
                started = Instant::now();
                if epoch_done {
                    break; // a new order for the next epoch
                }
            }
        }
    }
    if checkpoint::list(run_dir).last().map(|c| c.0) != Some(state.step) {
        save(&state, &opt, model)?;
    }
    let n = state.steps_log.len();
    let tail = &state.steps_log[n - (n / 4).max(1).min(n)..];
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    for log in tail {
        *last.entry("loss".into()).or_default() += log.loss / tail.len() as f64;
        for (k, v) in &log.metrics {
            *last.entry(k.clone()).or_default() += v / tail.len() as f64;
        }
    }
    Ok(TrainReport {
        steps: state.step,
        total_steps,
        epochs: state.epoch,
        train_examples: train.len(),
        val_examples: val.len(),
        train_tokens: state.train_tokens,
        seconds: state.seconds,
        tokens_per_s: state.train_tokens as f64 / state.seconds.max(1e-9),
        resumed_from,
        last,
        val_history: state.val_history,
        steps_log: state.steps_log,
    })
}
