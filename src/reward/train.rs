//! Bradley–Terry training of the reward heads, the split by book, early stopping, and the
//! evaluation metrics (accuracy, log-loss, expected calibration error).
//!
//! Loss per pair with margin `d = r(chosen) − r(rejected)` and target `t` (1 for a preference,
//! 0.5 for a tie): `t·softplus(−d) + (1−t)·softplus(d)`, i.e. `−log σ(d)` for a clear preference.
//! Each ensemble member gets its own seed and a bootstrap sample of the training pairs; training
//! stops when the validation loss has not improved for `patience` epochs and keeps the best
//! epoch's weights. Label smoothing ε moves every training target toward a coin,
//! `t → (1−ε)·t + ε/2`: the loss then has its minimum at a finite margin, `ln((1−ε/2)/(ε/2))`
//! for a clear preference, so pairs that are already told apart stop pulling and the margins
//! stay in a range where σ(margin) can be a probability. Validation and test targets are never
//! smoothed.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::model::{height_tensor, mean_std, Head, Heads, Scope};
use crate::feedback::learn::Kinds;
use crate::feedback::Pair;

/// How to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Ensemble members per scope.
    pub members: usize,
    pub hidden: usize,
    pub max_epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Epochs without validation improvement before stopping.
    pub patience: usize,
    /// Share of split groups (books) held out for validation (early stopping), in percent.
    pub val_percent: u32,
    /// Share of split groups held out for the test metrics the card reports, in percent.
    #[serde(default = "default_test_percent")]
    pub test_percent: u32,
    /// One ensemble for all heights, with a height embedding.
    pub shared: bool,
    pub seed: u64,
    /// Weight of the ordinal (Likert) loss beside the pairs' Bradley–Terry loss.
    #[serde(default = "default_ordinal_weight")]
    pub ordinal_weight: f64,
    /// Label smoothing ε of the training targets (0: off); see the module docs.
    #[serde(default)]
    pub label_smoothing: f32,
    /// The feedback kinds of the validation pairs that choose the epoch (the others in the
    /// validation groups are set aside, not trained on).
    #[serde(default)]
    pub val_kinds: Kinds,
    /// Hybrid heads ([`super::hybrid`]): each member's score is the MLP's plus `wᵀ·g` of the
    /// grounding features, `w` fitted first and trained jointly; epoch 0 is the features-only
    /// model and validation may keep it.
    #[serde(default)]
    pub hybrid: bool,
    /// Set from another thread to stop training at the next epoch (not part of the card).
    #[serde(skip)]
    pub stop: StopFlag,
}

/// A flag another thread sets to stop work at its next step (equal to every other flag, so
/// configurations compare by their settings alone).
#[derive(Debug, Clone, Default)]
pub struct StopFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl StopFlag {
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl PartialEq for StopFlag {
    fn eq(&self, _: &StopFlag) -> bool {
        true
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            members: 4,
            hidden: 64,
            max_epochs: 40,
            batch_size: 512,
            learning_rate: 3e-3,
            weight_decay: 1e-3,
            patience: 4,
            val_percent: 20,
            test_percent: 20,
            shared: false,
            seed: 0,
            ordinal_weight: default_ordinal_weight(),
            label_smoothing: 0.0,
            val_kinds: Kinds::ALL,
            hybrid: false,
            stop: StopFlag::default(),
        }
    }
}

/// A training target after label smoothing `eps`: `(1−ε)·t + ε/2`.
pub fn smooth_target(target: f32, eps: f32) -> f32 {
    (1.0 - eps) * target + eps / 2.0
}

/// Keeps the validation pairs of `kinds`; an error when the validation groups hold pairs but
/// none of these kinds (training would otherwise go on without the validation asked for).
pub fn keep_val_kinds<T>(
    val: Vec<T>,
    kinds: &Kinds,
    origin: impl Fn(&T) -> crate::feedback::Origin,
) -> Result<Vec<T>, super::RewardError> {
    let all = val.len();
    let kept: Vec<T> = val.into_iter().filter(|p| kinds.allows(origin(p))).collect();
    if all > 0 && kept.is_empty() {
        return Err(super::RewardError::Invalid(format!(
            "none of the {all} validation pairs is of the validation kinds ({}); choose other \
             kinds or a larger validation share",
            kinds.names().join(", ")
        )));
    }
    Ok(kept)
}

/// Checks a label smoothing ε: 0 ≤ ε < 1 (at 1 every target is a coin).
pub fn check_label_smoothing(eps: f32) -> Result<(), String> {
    if (0.0..1.0).contains(&eps) {
        Ok(())
    } else {
        Err(format!("label smoothing must be at least 0 and below 1, got {eps}"))
    }
}

fn default_test_percent() -> u32 {
    0
}

fn default_ordinal_weight() -> f64 {
    0.5
}

/// Evaluation of a model on a set of pairs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub pairs: usize,
    /// Pairs with a clear winner (ties count only in the log-loss).
    pub decided: usize,
    /// Share of decided pairs where the chosen text scores higher (ensemble mean); a pair the
    /// model scores level counts half, as it does for the baselines beside it (a lexical
    /// reward such as `grounding` often scores two summaries the same).
    pub accuracy: f64,
    /// Mean Bradley–Terry log-loss with P(chosen wins) = σ(mean margin).
    pub log_loss: f64,
    /// Expected calibration error over 10 confidence bins.
    pub ece: f64,
}

/// Pairs as feature tensors: row i of `chosen` and `rejected` is pair i.
pub struct PairTensors {
    pub chosen: Tensor,
    pub rejected: Tensor,
    pub target: Vec<f32>,
    pub heights: Vec<u32>,
    /// Loss weight per pair.
    pub weight: Vec<f32>,
}

impl PairTensors {
    pub fn len(&self) -> usize {
        self.target.len()
    }

    pub fn is_empty(&self) -> bool {
        self.target.is_empty()
    }

    /// The same pairs with their targets smoothed by `eps` ([`smooth_target`]).
    pub fn smoothed(&self, eps: f32) -> PairTensors {
        PairTensors {
            chosen: self.chosen.clone(),
            rejected: self.rejected.clone(),
            target: self.target.iter().map(|&t| smooth_target(t, eps)).collect(),
            heights: self.heights.clone(),
            weight: self.weight.clone(),
        }
    }

    /// The rows at `idx`.
    pub fn select(&self, idx: &[u32]) -> candle_core::Result<PairTensors> {
        let t = Tensor::from_slice(idx, idx.len(), self.chosen.device())?;
        Ok(PairTensors {
            chosen: self.chosen.index_select(&t, 0)?,
            rejected: self.rejected.index_select(&t, 0)?,
            target: idx.iter().map(|&i| self.target[i as usize]).collect(),
            heights: idx.iter().map(|&i| self.heights[i as usize]).collect(),
            weight: idx.iter().map(|&i| self.weight[i as usize]).collect(),
        })
    }
}

/// Likert ratings as feature rows: row i of `x` got `level[i]` (overall − 1, 0..=6).
pub struct RatingTensors {
    pub x: Tensor,
    pub level: Vec<u32>,
    pub heights: Vec<u32>,
    pub weight: Vec<f32>,
}

impl RatingTensors {
    pub fn len(&self) -> usize {
        self.level.len()
    }

    pub fn is_empty(&self) -> bool {
        self.level.is_empty()
    }

    pub fn select(&self, idx: &[u32]) -> candle_core::Result<RatingTensors> {
        let t = Tensor::from_slice(idx, idx.len(), self.x.device())?;
        Ok(RatingTensors {
            x: self.x.index_select(&t, 0)?,
            level: idx.iter().map(|&i| self.level[i as usize]).collect(),
            heights: idx.iter().map(|&i| self.heights[i as usize]).collect(),
            weight: idx.iter().map(|&i| self.weight[i as usize]).collect(),
        })
    }
}

/// Levels of the Likert scale (1–7): the ordinal model has `LEVELS − 1` thresholds.
pub const LEVELS: usize = 7;

/// The ordinal model's thresholds: `θ₁ = t₀`, `θₖ = θₖ₋₁ + softplus(dₖ)`, so they stay
/// ordered. One `Var` of `LEVELS − 1` raw values, initialized evenly from −2.5 to 2.5.
pub fn init_thresholds(device: &Device) -> candle_core::Result<candle_core::Var> {
    let gap = (1f32.exp() - 1.0).ln(); // softplus⁻¹(1)
    let mut raw = vec![-2.5f32];
    raw.extend(std::iter::repeat_n(gap, LEVELS - 2));
    candle_core::Var::from_vec(raw, LEVELS - 1, device)
}

fn thresholds(raw: &Tensor) -> candle_core::Result<Tensor> {
    let n = raw.dim(0)?;
    let first = raw.narrow(0, 0, 1)?;
    let rest = softplus(&raw.narrow(0, 1, n - 1)?)?;
    let steps = Tensor::cat(&[&first, &rest], 0)?;
    // Cumulative sum as a lower-triangular matmul.
    let mut tri = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..=i {
            tri[i * n + j] = 1.0;
        }
    }
    let tri = Tensor::from_vec(tri, (n, n), raw.device())?.to_dtype(raw.dtype())?;
    tri.matmul(&steps.unsqueeze(1)?)?.squeeze(1)
}

/// Weighted mean negative log-likelihood of Likert `levels` (0-based) under the cumulative-logit
/// model `P(level ≤ k) = σ(θₖ − score)`.
pub fn ordinal_loss(
    scores: &Tensor,
    raw_thresholds: &Tensor,
    levels: &[u32],
    weight: &[f32],
) -> candle_core::Result<Tensor> {
    let n = scores.dim(0)?;
    let dev = scores.device();
    let theta = thresholds(raw_thresholds)?; // (K−1)
    let k1 = theta.dim(0)?;
    let diff = theta.unsqueeze(0)?.broadcast_sub(&scores.unsqueeze(1)?)?; // (n, K−1)
    let cum = candle_nn::ops::sigmoid(&diff)?;
    let zeros = Tensor::zeros((n, 1), cum.dtype(), dev)?;
    let ones = Tensor::ones((n, 1), cum.dtype(), dev)?;
    let padded = Tensor::cat(&[&zeros, &cum, &ones], 1)?; // (n, K+1)
    let hi: Vec<u32> = levels.iter().map(|&l| (l as usize).min(k1) as u32 + 1).collect();
    let lo: Vec<u32> = hi.iter().map(|&h| h - 1).collect();
    let hi = Tensor::from_vec(hi, (n, 1), dev)?;
    let lo = Tensor::from_vec(lo, (n, 1), dev)?;
    let p = (padded.gather(&hi, 1)? - padded.gather(&lo, 1)?)?.squeeze(1)?;
    let nll = p.clamp(1e-6f32, 1.0f32)?.log()?.neg()?;
    let w = Tensor::from_slice(weight, n, dev)?.to_dtype(nll.dtype())?;
    let total = w.sum_all()?.to_scalar::<f32>()?.max(1e-9);
    (nll * w)?.sum_all()? / f64::from(total)
}

/// The groups (books, or clusters of near-identical inputs) of the validation set (it chooses
/// the epoch) and of the test set (it gives the reported metrics); all others train. The split
/// is [`crate::feedback::groups::held_out`], the one the policy's split uses too: a stable
/// hash of the group decides. With three or more groups each set gets at least one; with two,
/// one trains and one is the test set (no validation: training runs its full epochs); with one,
/// nothing is held out.
pub fn split_groups(
    pairs: &[Pair],
    val_percent: u32,
    test_percent: u32,
) -> (BTreeSet<String>, BTreeSet<String>) {
    split_group_names(pairs.iter().map(|p| p.group.as_str()), val_percent, test_percent)
}

/// [`split_groups`] over group names (of pairs and ratings together).
pub fn split_group_names<'a>(
    names: impl Iterator<Item = &'a str>,
    val_percent: u32,
    test_percent: u32,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let none = BTreeSet::new();
    let h = crate::feedback::groups::held_out(names, val_percent, test_percent, &none, &none);
    (h.val, h.test)
}

fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// Mean Bradley–Terry loss of margins `d` against targets `t` (tensors of the same shape).
pub fn bt_loss(d: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
    let win = (t * softplus(&d.neg()?)?)?;
    let lose = ((t.ones_like()? - t)? * softplus(d)?)?;
    (win + lose)?.mean_all()
}

/// The Bradley–Terry loss with a weight per pair: `Σ wᵢ·lossᵢ / Σ wᵢ`.
pub fn bt_loss_weighted(d: &Tensor, t: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let win = (t * softplus(&d.neg()?)?)?;
    let lose = ((t.ones_like()? - t)? * softplus(d)?)?;
    let total = w.sum_all()?.to_scalar::<f32>()?.max(1e-9);
    ((win + lose)? * w)?.sum_all()? / f64::from(total)
}

fn margins(head: &Head, batch: &PairTensors, shared: bool) -> candle_core::Result<Tensor> {
    let heights =
        if shared { Some(height_tensor(&batch.heights, batch.chosen.device())?) } else { None };
    let c = head.forward(&batch.chosen, heights.as_ref())?;
    let r = head.forward(&batch.rejected, heights.as_ref())?;
    c - r
}

fn pair_loss(head: &Head, data: &PairTensors, shared: bool) -> candle_core::Result<Tensor> {
    let dev = data.chosen.device();
    let t = Tensor::from_slice(&data.target, data.len(), dev)?;
    let w = Tensor::from_slice(&data.weight, data.len(), dev)?;
    bt_loss_weighted(&margins(head, data, shared)?, &t, &w)
}

fn rating_loss(
    head: &Head,
    thresholds: &Tensor,
    data: &RatingTensors,
    shared: bool,
) -> candle_core::Result<Tensor> {
    let heights = if shared { Some(height_tensor(&data.heights, data.x.device())?) } else { None };
    let scores = head.forward(&data.x, heights.as_ref())?;
    ordinal_loss(&scores, thresholds, &data.level, &data.weight)
}

/// The training objective on `pairs` and `ratings` (either may be absent): the pairs'
/// Bradley–Terry loss plus `ordinal_weight` times the ratings' ordinal loss.
fn objective(
    head: &Head,
    thresholds: &Tensor,
    pairs: Option<&PairTensors>,
    ratings: Option<&RatingTensors>,
    shared: bool,
    ordinal_weight: f64,
) -> candle_core::Result<Option<Tensor>> {
    let mut loss: Option<Tensor> = None;
    if let Some(p) = pairs.filter(|p| !p.is_empty()) {
        loss = Some(pair_loss(head, p, shared)?);
    }
    if let Some(r) = ratings.filter(|r| !r.is_empty() && ordinal_weight > 0.0) {
        let l = (rating_loss(head, thresholds, r, shared)? * ordinal_weight)?;
        loss = Some(match loss {
            Some(x) => (x + l)?,
            None => l,
        });
    }
    Ok(loss)
}

/// Trains one ensemble for `scope` on the `train` pairs (and Likert `ratings`, if any),
/// early-stopping on the validation pairs and ratings when there are any. Returns the heads and
/// the epochs each ran.
pub fn train_ensemble(
    train: &PairTensors,
    val: Option<&PairTensors>,
    feature_dim: usize,
    scope: Scope,
    config: &TrainConfig,
) -> candle_core::Result<(Vec<Head>, Vec<usize>)> {
    train_ensemble_with(train, None, val, None, feature_dim, scope, config)
}

/// [`train_ensemble`] with ratings beside the pairs.
#[allow(clippy::too_many_arguments)]
pub fn train_ensemble_with(
    train: &PairTensors,
    ratings: Option<&RatingTensors>,
    val: Option<&PairTensors>,
    val_ratings: Option<&RatingTensors>,
    feature_dim: usize,
    scope: Scope,
    config: &TrainConfig,
) -> candle_core::Result<(Vec<Head>, Vec<usize>)> {
    let t = train_ensemble_full(train, ratings, val, val_ratings, feature_dim, scope, config)?;
    Ok((t.heads, t.epochs))
}

/// What [`train_ensemble_full`] trained.
pub struct Trained {
    pub heads: Vec<Head>,
    /// Epochs each member ran.
    pub epochs: Vec<usize>,
    /// The epoch each member kept (the last one run without validation; 0: the initial head,
    /// for a hybrid head the features-only model).
    pub best_epoch: Vec<usize>,
    /// The grounding weights fitted before training (hybrid only).
    pub fitted: Option<Vec<f32>>,
}

/// The grounding features' differences (chosen − rejected) of `data`, whose rows end in them.
fn grounding_diffs(data: &PairTensors) -> candle_core::Result<Vec<super::hybrid::Row>> {
    let g = super::hybrid::FEATURES;
    let cols = data.chosen.dim(1)?;
    if cols < g {
        candle_core::bail!("hybrid training needs {g} grounding features per row, got {cols}");
    }
    let d = (data.chosen.narrow(1, cols - g, g)? - data.rejected.narrow(1, cols - g, g)?)?;
    Ok(d.to_vec2::<f32>()?
        .into_iter()
        .map(|r| {
            let mut row = [0f32; super::hybrid::FEATURES];
            row.copy_from_slice(&r);
            row
        })
        .collect())
}

/// [`train_ensemble_with`], saying which epoch each member kept and, for hybrid heads
/// (`config.hybrid`: the rows end in [`super::hybrid::FEATURES`] grounding features,
/// `feature_dim` counts the encoder's alone), the fitted grounding weights.
#[allow(clippy::too_many_arguments)]
pub fn train_ensemble_full(
    train: &PairTensors,
    ratings: Option<&RatingTensors>,
    val: Option<&PairTensors>,
    val_ratings: Option<&RatingTensors>,
    feature_dim: usize,
    scope: Scope,
    config: &TrainConfig,
) -> candle_core::Result<Trained> {
    let device = Device::Cpu;
    let shared = scope == Scope::Shared;
    let smoothed;
    let train = if config.label_smoothing > 0.0 {
        smoothed = train.smoothed(config.label_smoothing);
        &smoothed
    } else {
        train
    };
    let n = train.len();
    let nr = ratings.map_or(0, RatingTensors::len);
    let has_val = val.is_some_and(|v| !v.is_empty())
        || (val_ratings.is_some_and(|v| !v.is_empty()) && config.ordinal_weight > 0.0);
    // Hybrid: `w` fitted on the training pairs (smoothed targets, loss weights), the same
    // start for every member.
    let fitted = if config.hybrid {
        let diffs = if n == 0 { Vec::new() } else { grounding_diffs(train)? };
        Some(super::hybrid::fit(&diffs, &train.target, &train.weight).to_vec())
    } else {
        None
    };
    let mut heads = Vec::new();
    let mut epochs_run = Vec::new();
    let mut best_epochs = Vec::new();
    for k in 0..config.members.max(1) {
        let seed = config.seed.wrapping_mul(1_000_003).wrapping_add(k as u64 * 7919 + 1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Bootstrap samples (member 0 sees the data as it is).
        let boot = |len: usize, rng: &mut rand::rngs::StdRng| -> Vec<u32> {
            if k == 0 || len == 0 {
                (0..len as u32).collect()
            } else {
                (0..len).map(|_| rng.random_range(0..len as u32)).collect()
            }
        };
        let sample = boot(n, &mut rng);
        let rsample = boot(nr, &mut rng);
        let mut head = Head::init(feature_dim, config.hidden, shared, seed, &device)?;
        if let Some(w) = &fitted {
            head = head.into_hybrid(w)?;
        }
        let theta = init_thresholds(&device)?;
        let mut vars = head.vars();
        if nr > 0 {
            vars.push(theta.clone());
        }
        let params = ParamsAdamW {
            lr: config.learning_rate,
            weight_decay: config.weight_decay,
            ..ParamsAdamW::default()
        };
        let mut opt = AdamW::new(vars, params)?;
        let mut best: Option<(f32, Vec<Tensor>)> = None;
        let mut best_epoch = 0;
        let mut since_best = 0;
        let mut epochs = 0;
        let max_epochs = match (config.max_epochs, has_val) {
            (0, _) => 0,
            (m, true) => m,
            (m, false) => m / 3 + 1,
        };
        let val_loss = |head: &Head| -> candle_core::Result<f32> {
            Ok(objective(head, theta.as_tensor(), val, val_ratings, shared, config.ordinal_weight)?
                .map(|t| t.to_scalar::<f32>())
                .transpose()?
                .unwrap_or(0.0))
        };
        let copy = |head: &Head| -> candle_core::Result<Vec<Tensor>> {
            head.vars().iter().map(|v| v.as_tensor().copy()).collect()
        };
        if has_val && fitted.is_some() {
            // Step 0, the features-only model, is a candidate like every epoch.
            best = Some((val_loss(&head)?, copy(&head)?));
        }
        let batch = config.batch_size.max(1);
        let steps = n.div_ceil(batch).max(nr.div_ceil(batch)).max(1);
        for _ in 0..max_epochs {
            if config.stop.is_set() {
                candle_core::bail!("training was cancelled");
            }
            epochs += 1;
            let mut order = sample.clone();
            order.shuffle(&mut rng);
            let mut rorder = rsample.clone();
            rorder.shuffle(&mut rng);
            for step in 0..steps {
                let slice = |v: &[u32]| -> Vec<u32> {
                    let per = v.len().div_ceil(steps);
                    v.iter().skip(step * per).take(per).copied().collect()
                };
                let (pi, ri) = (slice(&order), slice(&rorder));
                let pb = if pi.is_empty() { None } else { Some(train.select(&pi)?) };
                let rb = match ratings {
                    Some(r) if !ri.is_empty() => Some(r.select(&ri)?),
                    _ => None,
                };
                if let Some(loss) = objective(
                    &head,
                    theta.as_tensor(),
                    pb.as_ref(),
                    rb.as_ref(),
                    shared,
                    config.ordinal_weight,
                )? {
                    opt.backward_step(&loss)?;
                }
            }
            if has_val {
                let l = val_loss(&head)?;
                if best.as_ref().is_none_or(|(b, _)| l < *b - 1e-5) {
                    best = Some((l, copy(&head)?));
                    best_epoch = epochs;
                    since_best = 0;
                } else {
                    since_best += 1;
                    if since_best >= config.patience {
                        break;
                    }
                }
            }
        }
        if let Some((_, snapshot)) = best {
            for (var, t) in head.vars().iter().zip(snapshot) {
                var.set(&t)?;
            }
        } else {
            best_epoch = epochs;
        }
        heads.push(head);
        epochs_run.push(epochs);
        best_epochs.push(best_epoch);
    }
    Ok(Trained { heads, epochs: epochs_run, best_epoch: best_epochs, fitted })
}

/// Metrics of the ensemble `heads` (the mean of the members' margins) on `data`.
pub fn evaluate(heads: &Heads, data: &PairTensors) -> candle_core::Result<Metrics> {
    let margins = ensemble_margins(heads, data)?;
    Ok(metrics(&margins, &data.target))
}

/// The ensemble-mean margin of every pair (chosen − rejected), by each pair's height.
pub fn ensemble_margins(heads: &Heads, data: &PairTensors) -> candle_core::Result<Vec<f32>> {
    let mut by_height: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (i, &h) in data.heights.iter().enumerate() {
        by_height.entry(h).or_default().push(i as u32);
    }
    let mut out = vec![0f32; data.len()];
    for (h, idx) in by_height {
        let sub = data.select(&idx)?;
        let (Some(c), Some(r)) = (heads.scores(&sub.chosen, h)?, heads.scores(&sub.rejected, h)?)
        else {
            continue;
        };
        let (mc, mr) = (mean_std(&c), mean_std(&r));
        for (j, &i) in idx.iter().enumerate() {
            out[i as usize] = mc[j].0 - mr[j].0;
        }
    }
    Ok(out)
}

/// Accuracy, log-loss and calibration from margins and targets.
pub fn metrics(margins: &[f32], targets: &[f32]) -> Metrics {
    let mut m = Metrics { pairs: margins.len(), ..Metrics::default() };
    if margins.is_empty() {
        return m;
    }
    let mut correct = 0f64;
    let mut loss = 0f64;
    let mut bins = [(0usize, 0f64, 0f64); 10];
    for (&d, &t) in margins.iter().zip(targets) {
        let p = 1.0 / (1.0 + (-f64::from(d)).exp());
        let p = p.clamp(1e-7, 1.0 - 1e-7);
        let t = f64::from(t);
        loss += -(t * p.ln() + (1.0 - t) * (1.0 - p).ln());
        if (t - 0.5).abs() > 1e-6 {
            m.decided += 1;
            let right = if d == 0.0 {
                0.5
            } else if (d > 0.0) == (t > 0.5) {
                1.0
            } else {
                0.0
            };
            correct += right;
            let conf = p.max(1.0 - p);
            let bin = (((conf - 0.5) * 20.0) as usize).min(9);
            bins[bin].0 += 1;
            bins[bin].1 += conf;
            bins[bin].2 += right;
        }
    }
    m.log_loss = loss / margins.len() as f64;
    if m.decided > 0 {
        m.accuracy = correct / m.decided as f64;
        m.ece = bins
            .iter()
            .filter(|b| b.0 > 0)
            .map(|&(n, conf, right)| {
                (n as f64 / m.decided as f64) * (conf / n as f64 - right / n as f64).abs()
            })
            .sum();
    }
    m
}

/// Fewer validation pairs than this fit no temperature: a handful of pairs the model ranks
/// right drives the fit toward ever sharper probabilities (a run with 16 validation pairs, 15
/// right, fitted T = 0.08).
pub const MIN_TEMPERATURE_PAIRS: usize = 32;

/// The temperature `T` (margins divided by it) that minimizes the log-loss of `margins`
/// against `targets`: Platt-style scaling with one parameter, fitted on validation pairs, so an
/// overconfident model's probabilities shrink toward ½ (T > 1) and a timid one's grow (T < 1,
/// at most twofold) while its ranking and accuracy stay the same. Golden-section search over
/// ln T in [ln ½, ln 20] (the log-loss is unimodal in 1/T); `None` when there is too little to
/// fit on ([`MIN_TEMPERATURE_PAIRS`], or no margin that is not 0): use 1.
pub fn fit_temperature(margins: &[f32], targets: &[f32]) -> Option<f64> {
    if margins.len() < MIN_TEMPERATURE_PAIRS || margins.iter().all(|&d| d == 0.0) {
        return None;
    }
    let loss = |log_t: f64| -> f64 {
        let t = log_t.exp();
        let scaled: Vec<f32> = margins.iter().map(|&d| (f64::from(d) / t) as f32).collect();
        metrics(&scaled, targets).log_loss
    };
    let (mut a, mut b) = (0.5f64.ln(), 20f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (loss(c), loss(d));
    for _ in 0..60 {
        if fc < fd {
            (b, d, fd) = (d, c, fc);
            c = b - g * (b - a);
            fc = loss(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + g * (b - a);
            fd = loss(d);
        }
    }
    Some(((a + b) / 2.0).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bt_loss_values_and_gradient() {
        let dev = Device::Cpu;
        let d = candle_core::Var::from_slice(&[0.0f32, 2.0, -2.0], 3, &dev).unwrap();
        let t = Tensor::from_slice(&[1.0f32, 1.0, 0.5], 3, &dev).unwrap();
        let loss = bt_loss(d.as_tensor(), &t).unwrap();
        let expect = ((2f32).ln()
            + (1.0 + (-2f32).exp()).ln()
            + 0.5 * (1.0 + (-2f32).exp()).ln()
            + 0.5 * (1.0 + 2f32.exp()).ln())
            / 3.0;
        assert!((loss.to_scalar::<f32>().unwrap() - expect).abs() < 1e-5);
        // d/dd of −log σ(d) is −(1 − σ(d)) (over the mean's 3), negative: raising the margin
        // lowers the loss; for a tie the gradient pulls the margin toward 0.
        let grads = loss.backward().unwrap();
        let g = grads.get(d.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!((g[0] - (-0.5 / 3.0)).abs() < 1e-5, "{g:?}");
        assert!(g[1] < 0.0 && g[1] > g[0]);
        assert!(g[2] < 0.0, "a tie at −2 pushes the margin up: {g:?}");
    }

    #[test]
    fn metrics_on_known_margins() {
        let m = metrics(&[2.0, -1.0, 0.5, 0.0], &[1.0, 1.0, 1.0, 0.5]);
        assert_eq!(m.decided, 3);
        assert!((m.accuracy - 2.0 / 3.0).abs() < 1e-9);
        assert!(m.log_loss > 0.0 && m.ece >= 0.0 && m.ece <= 1.0);
        // A decided pair scored level counts half (as the baselines count it), and a model
        // that scores every pair level is at a coin's accuracy and perfectly calibrated.
        let m = metrics(&[2.0, 0.0], &[1.0, 1.0]);
        assert!((m.accuracy - 0.75).abs() < 1e-9, "{}", m.accuracy);
        let level = metrics(&[0.0; 4], &[1.0, 0.0, 1.0, 1.0]);
        assert!((level.accuracy - 0.5).abs() < 1e-9 && level.ece.abs() < 1e-9);
    }

    #[test]
    fn temperature_recovers_the_scale_of_overconfident_margins() {
        // Soft targets σ(z) with margins 4z: the log-loss is lowest exactly at T = 4.
        let z: Vec<f32> = (0..40).map(|i| (i as f32 - 20.0) / 8.0).collect();
        let targets: Vec<f32> = z.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect();
        let margins: Vec<f32> = z.iter().map(|&z| 4.0 * z).collect();
        let t = fit_temperature(&margins, &targets).unwrap();
        assert!((t - 4.0).abs() < 1e-3, "{t}");
        let scaled: Vec<f32> = margins.iter().map(|&d| d / t as f32).collect();
        let (before, after) = (metrics(&margins, &targets), metrics(&scaled, &targets));
        assert!(after.log_loss < before.log_loss);
        assert_eq!(after.accuracy, before.accuracy);
        // A timid model (margins z·2/3) is sharpened: T = 2/3; sharpening stops at ½.
        let timid: Vec<f32> = z.iter().map(|&z| z * 2.0 / 3.0).collect();
        assert!((fit_temperature(&timid, &targets).unwrap() - 2.0 / 3.0).abs() < 1e-3);
        let timid: Vec<f32> = z.iter().map(|&z| z / 4.0).collect();
        assert!((fit_temperature(&timid, &targets).unwrap() - 0.5).abs() < 1e-3);
        // Too little to fit on: no temperature.
        assert_eq!(fit_temperature(&[], &[]), None);
        assert_eq!(fit_temperature(&margins[..16], &targets[..16]), None);
        assert_eq!(fit_temperature(&[0.0; 40], &[1.0; 40]), None);
    }

    #[test]
    fn validation_split_is_by_group_and_never_empty() {
        let pair = |g: &str| Pair::new(0, "i", "c", "r", 1.0, g);
        let pairs: Vec<Pair> = (0..10).map(|i| pair(&format!("book{}", i % 5))).collect();
        let (val, test) = split_groups(&pairs, 20, 20);
        assert!(!val.is_empty() && !test.is_empty() && val.len() + test.len() < 5);
        assert!(val.is_disjoint(&test));
        let (v1, t1) = split_groups(&[pair("one")], 20, 20);
        assert!(v1.is_empty() && t1.is_empty());
        let (v2, t2) = split_groups(&[pair("one"), pair("two")], 20, 20);
        assert!(v2.is_empty() && t2.len() == 1);
    }

    /// Rows of `dim` features, chosen over rejected, every pair clearly decided, at height 0.
    fn decided_pairs(chosen: Vec<f32>, rejected: Vec<f32>, dim: usize) -> PairTensors {
        let n = chosen.len() / dim;
        PairTensors {
            chosen: Tensor::from_vec(chosen, (n, dim), &Device::Cpu).unwrap(),
            rejected: Tensor::from_vec(rejected, (n, dim), &Device::Cpu).unwrap(),
            target: vec![1.0; n],
            heights: vec![0; n],
            weight: vec![1.0; n],
        }
    }

    #[test]
    fn training_learns_a_separable_preference() {
        // Feature 0 decides: chosen rows have +1, rejected −1, the rest is noise.
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let n = 200;
        let dim = 6;
        let mut c = Vec::new();
        let mut r = Vec::new();
        for _ in 0..n {
            for side in [&mut c, &mut r] {
                for j in 0..dim {
                    side.push(if j == 0 { 0.0f32 } else { rng.random_range(-1.0f32..1.0) });
                }
            }
            let last = c.len() - dim;
            c[last] = 1.0;
            let last = r.len() - dim;
            r[last] = -1.0;
        }
        let data = decided_pairs(c, r, dim);
        let config = TrainConfig { members: 2, max_epochs: 30, ..TrainConfig::default() };
        for scope in [Scope::Height(0), Scope::Shared] {
            let (heads, _) = train_ensemble(&data, None, dim, scope, &config).unwrap();
            let heads = Heads { by_scope: [(scope, heads)].into_iter().collect() };
            let m = evaluate(&heads, &data).unwrap();
            assert!(m.accuracy > 0.95, "{scope:?}: {m:?}");
        }
    }
    #[test]
    fn a_set_stop_flag_ends_training_at_the_next_epoch() {
        // Finding 7 of the web-app issue: training inside `rrm serve` ignored the cancel flag.
        let dim = 2;
        let data = decided_pairs(vec![1.0, 0.0, 1.0, 0.5], vec![-1.0, 0.0, -1.0, 0.5], dim);
        let config = TrainConfig { members: 1, max_epochs: 5, ..TrainConfig::default() };
        assert!(train_ensemble(&data, None, dim, Scope::Height(0), &config).is_ok());
        config.stop.set();
        let err = train_ensemble(&data, None, dim, Scope::Height(0), &config).unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err}");
        // The flag does not make two configurations differ.
        assert_eq!(config, TrainConfig { members: 1, max_epochs: 5, ..TrainConfig::default() });
    }

    #[test]
    fn label_smoothing_keeps_margins_near_their_finite_optimum() {
        // One informative feature, every pair clearly decided: without smoothing the margins
        // grow as long as training runs; with ε = 0.2 the loss is lowest at ln 9 ≈ 2.2.
        let n = 64;
        let dim = 3;
        let row = |sign: f32, i: usize| [sign, (i % 7) as f32 / 7.0 - 0.5, (i % 3) as f32 - 1.0];
        let c: Vec<f32> = (0..n).flat_map(|i| row(1.0, i)).collect();
        let r: Vec<f32> = (0..n).flat_map(|i| row(-1.0, i + 1)).collect();
        let data = decided_pairs(c, r, dim);
        let mean_margin = |eps: f32| {
            let config = TrainConfig {
                members: 1,
                max_epochs: 1200,
                batch_size: 16,
                learning_rate: 1e-2,
                weight_decay: 0.0,
                label_smoothing: eps,
                ..TrainConfig::default()
            };
            let scope = Scope::Height(0);
            let (heads, _) = train_ensemble(&data, None, dim, scope, &config).unwrap();
            let heads = Heads { by_scope: [(scope, heads)].into_iter().collect() };
            let m = ensemble_margins(&heads, &data).unwrap();
            assert!(m.iter().all(|&d| d > 0.0), "ε {eps}: every pair still told apart");
            m.iter().sum::<f32>() / n as f32
        };
        let (plain, smoothed) = (mean_margin(0.0), mean_margin(0.2));
        let optimum = (0.9f32 / 0.1).ln();
        assert!((smoothed - optimum).abs() < 0.5, "smoothed {smoothed}, optimum {optimum}");
        assert!(plain > optimum + 2.0, "plain {plain}");
        // The targets themselves, and the bounds on ε.
        assert!((smooth_target(1.0, 0.2) - 0.9).abs() < 1e-6);
        assert!((smooth_target(0.5, 0.2) - 0.5).abs() < 1e-6);
        assert_eq!(smooth_target(0.0, 0.0), 0.0);
        assert!(check_label_smoothing(0.0).is_ok() && check_label_smoothing(0.99).is_ok());
        let err = check_label_smoothing(1.0).unwrap_err();
        assert!(err.contains("below 1") && err.contains("got 1"), "{err}");
        assert!(check_label_smoothing(-0.1).is_err() && check_label_smoothing(f32::NAN).is_err());
    }

    #[test]
    fn validation_kinds_keep_only_their_pairs_and_say_when_none_are_left() {
        use crate::feedback::Origin;
        let pair = |origin: Origin| Pair { origin, ..Pair::new(0, "i", "c", "r", 1.0, "g") };
        let val = vec![pair(Origin::Demonstration), pair(Origin::Synthetic), pair(Origin::Likert)];
        let synthetic = Kinds::parse("synthetic").unwrap();
        let kept = keep_val_kinds(val.clone(), &synthetic, |p| p.origin).unwrap();
        assert_eq!(kept, vec![pair(Origin::Synthetic)]);
        assert_eq!(keep_val_kinds(val.clone(), &Kinds::ALL, |p| p.origin).unwrap(), val);
        let none = Kinds::parse("comparison").unwrap();
        let err = keep_val_kinds(val, &none, |p| p.origin).unwrap_err().to_string();
        assert!(err.contains("none of the 3 validation pairs") && err.contains("comparison"));
        // No validation groups at all is not an error: there is nothing to keep.
        assert!(keep_val_kinds(Vec::<Pair>::new(), &none, |p| p.origin).unwrap().is_empty());
    }

    #[test]
    fn ordinal_loss_prefers_scores_matching_the_level_and_thresholds_stay_ordered() {
        let dev = Device::Cpu;
        let raw = init_thresholds(&dev).unwrap();
        let theta = thresholds(raw.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!(theta.windows(2).all(|w| w[1] > w[0]), "{theta:?}");
        let loss = |score: f32, level: u32| {
            let s = Tensor::from_slice(&[score], 1, &dev).unwrap();
            ordinal_loss(&s, raw.as_tensor(), &[level], &[1.0]).unwrap().to_scalar::<f32>().unwrap()
        };
        // A top rating is likelier for a high score, a bottom one for a low score.
        assert!(loss(4.0, 6) < loss(-4.0, 6));
        assert!(loss(-4.0, 0) < loss(4.0, 0));
        // Weights: a zero-weight row changes nothing.
        let s = Tensor::from_slice(&[4.0f32, -4.0], 2, &dev).unwrap();
        let l = ordinal_loss(&s, raw.as_tensor(), &[6, 6], &[1.0, 0.0]).unwrap();
        assert!((l.to_scalar::<f32>().unwrap() - loss(4.0, 6)).abs() < 1e-5);
    }
}
