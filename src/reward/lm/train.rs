//! Training an LM reward ensemble: [`LmTrainConfig`], the split by group, each member's
//! optional linear probe (`probe.rs`) and fine-tuning steps (Bradley–Terry on packed pairs plus
//! the ordinal loss on ratings), validation choosing each member's step (`snapshot`), then the
//! temperature fitted on the validation pairs and the card's metrics on the test groups.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::card::{file_hash, LmCard};
use super::pack::{encode, end_token, head_of, head_scores, pack, pair_margins, TokenPair};
use super::score::metrics_by_height;
use super::{probe, LmMember, LmRewardModel, BACKBONE, LM_FORMAT_VERSION};
use crate::feedback::learn::{Kinds, Rating};
use crate::feedback::Pair;
use crate::infer::tokenizer::GgufTokenizer;
use crate::lm::model::LoadOptions;
use crate::lm::observe::{EvalLog, Observer, Quiet, StepLog};
use crate::lm::optim::{Accumulator, AdamW, ParamsAdamW, Schedule};
use crate::lm::{Checkpointing, LoraConfig, Mode, Packed, TrainableLlama};
use crate::reward::hybrid::{self, HybridCard, Row, FEATURES};
use crate::reward::train::{
    bt_loss_weighted, check_label_smoothing, fit_temperature, init_thresholds, keep_val_kinds,
    metrics, ordinal_loss, smooth_target, split_group_names,
};
use crate::reward::RewardError;

/// How an LM reward model is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmTrainConfig {
    /// LoRA (the default) or full fine-tuning. A LoRA seed is offset by the member index.
    pub mode: Mode,
    pub members: usize,
    /// Passes over the pairs (ignored when `steps` is set).
    pub epochs: usize,
    /// Optimizer steps per member (overrides `epochs`).
    pub steps: Option<usize>,
    /// Pairs per micro-batch.
    pub batch_pairs: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub lr: f64,
    pub head_lr: f64,
    pub weight_decay: f64,
    pub warmup: usize,
    /// Global gradient-norm clip (0: off).
    pub max_grad_norm: f64,
    /// Tokens per input (prompt + summary); a longer input loses its end (see `encode`).
    pub max_tokens: usize,
    pub seed: u64,
    /// Gradient checkpointing (see `TrainableLlama::set_checkpointing`); not part of the card.
    #[serde(default, skip_serializing)]
    pub grad_checkpoint: Checkpointing,
    /// Share of groups held out to choose each member's checkpoint, in percent.
    #[serde(default)]
    pub val_percent: u32,
    /// Share of groups held out for the card's metrics, in percent.
    #[serde(default)]
    pub test_percent: u32,
    /// Optimizer steps between validations (default: once per pass over the training pairs,
    /// and always after the last step).
    #[serde(default)]
    pub eval_every: Option<usize>,
    /// At most this many validation (and test) pairs are scored, a fixed sample: scoring
    /// costs a forward pass per pair.
    #[serde(default = "default_eval_pairs")]
    pub eval_pairs: usize,
    /// Weight of the Likert ratings' ordinal loss beside the pairs' Bradley–Terry loss (0:
    /// ratings teach only through the pairs they imply).
    #[serde(default)]
    pub ordinal_weight: f64,
    /// One scalar head per tree height (a node above the highest height trained uses that
    /// height's head) instead of one head for all heights, which are then told apart by the
    /// per-height prompt alone.
    #[serde(default)]
    pub head_per_height: bool,
    /// Label smoothing ε of the pairs' training targets (0: off; see [`smooth_target`]).
    #[serde(default)]
    pub label_smoothing: f32,
    /// The feedback kinds of the validation pairs that choose the checkpoint and fit the
    /// temperature (the others in the validation groups are set aside, not trained on).
    #[serde(default)]
    pub val_kinds: Kinds,
    /// Passes of a linear probe before fine-tuning: the head alone on the frozen model's
    /// features of every training pair, the pass chosen on the validation pairs (0: off; see
    /// `probe`). With `steps` 0 the probe is the whole training.
    #[serde(default)]
    pub probe_epochs: usize,
    /// A hybrid model ([`crate::reward::hybrid`]): the head's score plus `wᵀ·g` of grounding
    /// features, `w` fitted before the first step with the head at zero (step 0, validated like
    /// every step: the features-only model) and trained with the head. With `steps` 0 the
    /// features-only model is the whole training.
    #[serde(default)]
    pub hybrid: bool,
}

fn default_eval_pairs() -> usize {
    256
}

impl Default for LmTrainConfig {
    fn default() -> Self {
        LmTrainConfig {
            mode: Mode::Lora(LoraConfig::default()),
            members: 1,
            epochs: 1,
            steps: None,
            batch_pairs: 4,
            grad_accum: 1,
            lr: 1e-4,
            head_lr: 1e-3,
            weight_decay: 0.0,
            warmup: 0,
            max_grad_norm: 1.0,
            max_tokens: 1024,
            seed: 0,
            grad_checkpoint: Checkpointing::Auto,
            val_percent: 10,
            test_percent: 10,
            eval_every: None,
            eval_pairs: default_eval_pairs(),
            ordinal_weight: 0.5,
            head_per_height: false,
            label_smoothing: 0.0,
            val_kinds: Kinds::ALL,
            probe_epochs: 0,
            hybrid: false,
        }
    }
}

impl LmTrainConfig {
    fn validate(&self) -> Result<(), RewardError> {
        let bad = |m: &str| Err(RewardError::Invalid(m.to_string()));
        if self.members == 0 || self.members > 32 {
            return bad("members must be between 1 and 32");
        }
        if self.batch_pairs == 0 || self.grad_accum == 0 {
            return bad("the batch size and gradient accumulation must be at least 1");
        }
        if self.max_tokens < 8 {
            return bad("max tokens must be at least 8");
        }
        let no_steps = self.steps == Some(0) || (self.steps.is_none() && self.epochs == 0);
        if no_steps && self.probe_epochs == 0 && !self.hybrid {
            return bad("train for at least one step (or epoch), or probe for at least one pass");
        }
        if self.hybrid && self.probe_epochs > 0 {
            return bad(
                "a hybrid model starts from its grounding features, not from a linear probe: \
                        use one or the other",
            );
        }
        if self.probe_epochs > 10_000 {
            return bad("probe passes must be at most 10000");
        }
        if !(self.lr > 0.0 && self.head_lr > 0.0 && self.lr.is_finite() && self.head_lr.is_finite())
        {
            return bad("learning rates must be positive");
        }
        if self.weight_decay < 0.0 || self.max_grad_norm < 0.0 {
            return bad("weight decay and the gradient clip must not be negative");
        }
        if self.val_percent + self.test_percent >= 100 {
            return bad("the validation and test shares must leave groups to train on");
        }
        if !(0.0..=100.0).contains(&self.ordinal_weight) {
            return bad("the ordinal weight must be between 0 and 100");
        }
        if self.eval_every == Some(0) || self.eval_pairs == 0 {
            return bad("validate at least every step, on at least one pair");
        }
        check_label_smoothing(self.label_smoothing).map_err(RewardError::Invalid)?;
        if self.val_kinds == Kinds::NONE {
            return bad("validation needs at least one feedback kind");
        }
        if matches!(self.mode, Mode::Frozen) {
            return bad(
                "a frozen backbone has nothing to train beside the head; use lora or full (the \
                 head alone: lora with probe passes and 0 steps)",
            );
        }
        Ok(())
    }
}

/// A copy of a member's trainable tensors and head as they are now.
fn snapshot(
    body: &[(String, Var)],
    w: &Var,
    b: &Var,
    grounding: Option<&Var>,
) -> Result<LmMember, RewardError> {
    // Copies, not views: a view shares the variable's storage, and setting a variable to a
    // tensor derived from it is refused (and would alias the members).
    let weights: HashMap<String, Tensor> = body
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
        .collect::<candle_core::Result<_>>()?;
    Ok(LmMember {
        weights,
        head_w: w.as_tensor().detach().copy()?,
        head_b: b.as_tensor().detach().copy()?,
        grounding: grounding.map(|g| g.as_tensor().detach().copy()).transpose()?,
    })
}

/// Draws training batches: pairs from `train_idx` and as many ratings (of `rated`), each in a
/// fresh shuffled order once the last one is used up.
pub(super) struct Draw<'a> {
    train_idx: &'a [usize],
    order: Vec<usize>,
    rated: usize,
    rating_order: Vec<usize>,
}

impl<'a> Draw<'a> {
    pub(super) fn new(train_idx: &'a [usize], rated: usize) -> Draw<'a> {
        Draw { train_idx, order: Vec::new(), rated, rating_order: Vec::new() }
    }

    /// The next `n` pairs (indices into the pairs) and ratings (indices into the rated
    /// summaries).
    pub(super) fn next(
        &mut self,
        n: usize,
        rng: &mut rand::rngs::StdRng,
    ) -> (Vec<usize>, Vec<usize>) {
        let mut batch = Vec::with_capacity(n);
        while batch.len() < n.min(self.train_idx.len()) {
            if self.order.is_empty() {
                self.order = self.train_idx.to_vec();
                self.order.shuffle(rng);
            }
            batch.extend(self.order.pop());
        }
        let mut rbatch = Vec::with_capacity(n);
        while rbatch.len() < n.min(self.rated) {
            if self.rating_order.is_empty() {
                self.rating_order = (0..self.rated).collect();
                self.rating_order.shuffle(rng);
            }
            rbatch.extend(self.rating_order.pop());
        }
        (batch, rbatch)
    }
}

/// What a batch's scores are trained towards: `n` pairs (scores `2k`, `2k + 1`: chosen,
/// rejected) under Bradley–Terry, then the ratings' scores under the ordinal loss.
pub(super) struct BatchTargets {
    n: usize,
    t: Tensor,
    wt: Tensor,
    levels: Vec<u32>,
    rw: Vec<f32>,
    /// Every score's head row.
    pub(super) which: Tensor,
    /// A hybrid model's grounding features of every score, `(scores, FEATURES)`.
    grounding: Option<Tensor>,
}

impl BatchTargets {
    /// From each pair's (target, weight, height) and each rating's (level 0–6, weight,
    /// height), with `heads` head rows.
    pub(super) fn new(
        pairs: impl Iterator<Item = (f32, f32, u32)>,
        ratings: impl Iterator<Item = (u32, f32, u32)>,
        heads: usize,
        device: &Device,
    ) -> Result<BatchTargets, RewardError> {
        let (mut t, mut wt, mut which) = (Vec::new(), Vec::new(), Vec::new());
        for (target, weight, height) in pairs {
            t.push(target);
            wt.push(weight);
            which.extend([head_of(height, heads); 2]);
        }
        let (mut levels, mut rw) = (Vec::new(), Vec::new());
        for (level, weight, height) in ratings {
            levels.push(level);
            rw.push(weight);
            which.push(head_of(height, heads));
        }
        let n = t.len();
        Ok(BatchTargets {
            n,
            t: Tensor::from_vec(t, n, device)?,
            wt: Tensor::from_vec(wt, n, device)?,
            levels,
            rw,
            which: Tensor::new(which, device)?,
            grounding: None,
        })
    }

    /// The same targets with every score's grounding features (pairs' chosen and rejected,
    /// then the ratings', in the scores' order).
    fn with_grounding(
        mut self,
        rows: &[Row],
        device: &Device,
    ) -> Result<BatchTargets, RewardError> {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        self.grounding = Some(Tensor::from_vec(flat, (rows.len(), FEATURES), device)?);
        Ok(self)
    }

    /// The head's scores `all` plus `wᵀ·g` of each score's grounding features (hybrid).
    fn add_grounding(&self, all: Tensor, w: Option<&Var>) -> candle_core::Result<Tensor> {
        match (&self.grounding, w) {
            (Some(g), Some(w)) => all + g.matmul(&w.as_tensor().unsqueeze(1)?)?.squeeze(1)?,
            _ => Ok(all),
        }
    }

    /// The loss of the batch's scores `all` (in the order above).
    pub(super) fn loss(
        &self,
        all: &Tensor,
        thresholds: &Tensor,
        ordinal_weight: f64,
    ) -> candle_core::Result<Tensor> {
        let n = self.n;
        let r = all.narrow(0, 0, 2 * n)?.reshape((n, 2))?;
        let d = (r.narrow(1, 0, 1)? - r.narrow(1, 1, 1)?)?.squeeze(1)?;
        let bt = bt_loss_weighted(&d, &self.t, &self.wt)?;
        if self.levels.is_empty() {
            return Ok(bt);
        }
        let scores = all.narrow(0, 2 * n, self.levels.len())?;
        let ord = ordinal_loss(&scores, thresholds, &self.levels, &self.rw)?;
        bt + (ord * ordinal_weight)?
    }
}

pub(super) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn member_mode(mode: &Mode, member: usize) -> Mode {
    match mode {
        Mode::Lora(cfg) => Mode::Lora(LoraConfig {
            seed: cfg.seed.wrapping_add(1000 * member as u64),
            ..cfg.clone()
        }),
        m => m.clone(),
    }
}

impl LmRewardModel {
    /// Trains `config.members` members on `pairs` and Likert `ratings` (ordinal targets,
    /// weighted by `config.ordinal_weight`) from the base GGUF at `base` (CPU, f32): on the
    /// training groups, each member's checkpoint chosen on the validation groups, the card's
    /// metrics from the test groups.
    pub fn train(
        base: &Path,
        pairs: &[Pair],
        ratings: &[Rating],
        config: &LmTrainConfig,
        source: &str,
    ) -> Result<LmRewardModel, RewardError> {
        Self::train_observed(base, pairs, ratings, config, source, &Quiet)
    }

    /// [`LmRewardModel::train`], reporting each member's steps, validations and probe to
    /// `observer` as they happen (`started` once per member, with that member's steps).
    pub fn train_observed(
        base: &Path,
        pairs: &[Pair],
        ratings: &[Rating],
        config: &LmTrainConfig,
        source: &str,
        observer: &dyn Observer,
    ) -> Result<LmRewardModel, RewardError> {
        config.validate()?;
        if pairs.is_empty() {
            return Err(RewardError::NoData(String::new()));
        }
        let device = Device::Cpu;
        let base_hash = file_hash(base)?;
        // Pairs and ratings split together: a node's ratings never sit across from its pairs.
        let (val_groups, test_groups) = split_group_names(
            pairs.iter().map(|p| p.group.as_str()).chain(ratings.iter().map(|r| r.group.as_str())),
            config.val_percent,
            config.test_percent,
        );
        let train_ratings: Vec<&Rating> = if config.ordinal_weight > 0.0 {
            ratings
                .iter()
                .filter(|r| !val_groups.contains(&r.group) && !test_groups.contains(&r.group))
                .collect()
        } else {
            Vec::new()
        };
        let in_set = |set: &BTreeSet<String>| -> Vec<usize> {
            (0..pairs.len()).filter(|&i| set.contains(&pairs[i].group)).collect()
        };
        let train_idx: Vec<usize> = (0..pairs.len())
            .filter(|&i| {
                !val_groups.contains(&pairs[i].group) && !test_groups.contains(&pairs[i].group)
            })
            .collect();
        if train_idx.is_empty() {
            return Err(RewardError::NoData(" outside the held-out groups".into()));
        }
        // Fixed samples (the same for every member) of the validation and test pairs.
        let sample = |mut idx: Vec<usize>, salt: u64| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed ^ salt);
            idx.shuffle(&mut rng);
            idx.truncate(config.eval_pairs);
            idx.sort_unstable();
            idx
        };
        let val_idx = keep_val_kinds(in_set(&val_groups), &config.val_kinds, |&i| pairs[i].origin)?;
        let test_idx = in_set(&test_groups);
        observer.message(&format!(
            "{} training pairs, {} validation pairs ({}), {} test pairs; at most {} of each \
             held-out set scored",
            train_idx.len(),
            val_idx.len(),
            config.val_kinds.names().join(", "),
            test_idx.len(),
            config.eval_pairs
        ));
        let val_idx = sample(val_idx, 0x0076_616c);
        let test_idx = sample(test_idx, 0x7465_7374);
        let pair_heights: Vec<u32> = pairs.iter().map(|p| p.height).collect();
        // One head row, or one per height up to the highest in the data.
        let heads = if config.head_per_height {
            let top = pairs.iter().map(|p| p.height).chain(ratings.iter().map(|r| r.height));
            top.max().unwrap_or(0) as usize + 1
        } else {
            1
        };
        let mut members = Vec::with_capacity(config.members);
        let mut final_loss = Vec::new();
        let mut curves = Vec::with_capacity(config.members);
        let mut best_steps = Vec::with_capacity(config.members);
        let mut encoded: Option<(Vec<TokenPair>, usize)> = None;
        let mut rated: Vec<Vec<u32>> = Vec::with_capacity(train_ratings.len());
        let mut last: Option<(TrainableLlama, GgufTokenizer)> = None;
        let mut pair_steps = 0usize;
        let mut probe_features: Option<probe::Features> = None;
        let mut probe_seconds = 0.0;
        let mut probe_kept = Vec::with_capacity(config.members);
        // Hybrid: every pair's grounding features (chosen, rejected), the training ratings',
        // and `w` fitted on the training pairs (the same start for every member).
        let pair_g: Vec<[Row; 2]> = if config.hybrid {
            pairs
                .iter()
                .map(|p| {
                    let g = hybrid::features(&p.input, &[&p.chosen, &p.rejected]);
                    [g[0], g[1]]
                })
                .collect()
        } else {
            Vec::new()
        };
        let rating_g: Vec<Row> = if config.hybrid {
            train_ratings.iter().map(|r| hybrid::features(&r.input, &[&r.summary])[0]).collect()
        } else {
            Vec::new()
        };
        let fitted: Option<Row> = config.hybrid.then(|| {
            let diffs: Vec<Row> = train_idx
                .iter()
                .map(|&i| std::array::from_fn(|k| pair_g[i][0][k] - pair_g[i][1][k]))
                .collect();
            let t: Vec<f32> = train_idx
                .iter()
                .map(|&i| smooth_target(pairs[i].target, config.label_smoothing))
                .collect();
            let w: Vec<f32> = train_idx.iter().map(|&i| pairs[i].weight).collect();
            hybrid::fit(&diffs, &t, &w)
        });
        // The grounding part of pair `i`'s margin under weights `w`.
        let grounding_margin =
            |w: &[f32], i: usize| hybrid::dot(w, &pair_g[i][0]) - hybrid::dot(w, &pair_g[i][1]);
        // A batch's targets: each pair's (smoothed) target and weight, each rating's level
        // and weight, and every score's head row.
        let targets_of = |batch: &[usize],
                          rbatch: &[usize],
                          device: &Device|
         -> Result<BatchTargets, RewardError> {
            BatchTargets::new(
                batch.iter().map(|&i| {
                    let p = &pairs[i];
                    (smooth_target(p.target, config.label_smoothing), p.weight, p.height)
                }),
                rbatch.iter().map(|&i| {
                    let r = train_ratings[i];
                    (u32::from(r.overall.clamp(1, 7)) - 1, r.weight, r.height)
                }),
                heads,
                device,
            )
            .and_then(|t| {
                if !config.hybrid {
                    return Ok(t);
                }
                let rows: Vec<Row> = batch
                    .iter()
                    .flat_map(|&i| pair_g[i])
                    .chain(rbatch.iter().map(|&i| rating_g[i]))
                    .collect();
                t.with_grounding(&rows, device)
            })
        };
        let mut train_seconds = 0.0;
        for m in 0..config.members {
            let options = LoadOptions { mode: member_mode(&config.mode, m), dtype: DType::F32 };
            let (mut llama, tokenizer) = TrainableLlama::load(base, &device, &options)?;
            llama.set_checkpointing(config.grad_checkpoint);
            let end = end_token(&tokenizer)?;
            if encoded.is_none() {
                let mut out = Vec::with_capacity(pairs.len());
                let mut truncated = 0;
                for p in pairs {
                    let summaries = [p.chosen.as_str(), p.rejected.as_str()];
                    let (mut seqs, cut) =
                        encode(&tokenizer, end, config.max_tokens, p.height, &p.input, &summaries)?;
                    truncated += usize::from(cut);
                    let r = seqs.pop().unwrap_or_default();
                    let c = seqs.pop().unwrap_or_default();
                    out.push((c, r));
                }
                encoded = Some((out, truncated));
                for r in &train_ratings {
                    let summary = [r.summary.as_str()];
                    let (mut seqs, _) =
                        encode(&tokenizer, end, config.max_tokens, r.height, &r.input, &summary)?;
                    rated.push(seqs.pop().unwrap_or_default());
                }
            }
            let data = &encoded
                .as_ref()
                .map(|e| &e.0)
                .ok_or_else(|| RewardError::Invalid("internal: pairs were not encoded".into()))?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed.wrapping_add(m as u64));
            let hidden = llama.config.hidden;
            let std = 1.0 / (hidden as f64).sqrt();
            // A hybrid head starts at zero: step 0 scores the grounding features alone.
            let w0: Vec<f32> = (0..heads * hidden)
                .map(|_| (rng.random_range(-1.0..1.0) * std * 0.1) as f32)
                .map(|x| if config.hybrid { 0.0 } else { x })
                .collect();
            let ground_w = fitted
                .map(|w| Var::from_tensor(&Tensor::from_slice(&w, FEATURES, &device)?))
                .transpose()?;
            let head_w = Var::from_tensor(&Tensor::from_vec(w0, (heads, hidden), &device)?)?;
            let head_b = Var::from_tensor(&Tensor::zeros(heads, DType::F32, &device)?)?;
            let body = llama.trainable();
            // The ordinal model's thresholds train with the head; scoring does not need them.
            let thresholds = init_thresholds(&device)?;
            let head_vars = vec![
                ("head.weight".to_string(), head_w.clone()),
                ("head.bias".into(), head_b.clone()),
                ("ordinal.thresholds".into(), thresholds.clone()),
            ]
            .into_iter()
            .chain(ground_w.iter().map(|g| ("grounding.weight".to_string(), g.clone())))
            .collect::<Vec<_>>();
            let mut all_vars = body.clone();
            all_vars.extend(head_vars.iter().cloned());
            let params = ParamsAdamW {
                lr: config.lr,
                weight_decay: config.weight_decay,
                ..Default::default()
            };
            let mut opt_body = AdamW::new(body.clone(), params.clone())?;
            let mut opt_head =
                AdamW::new(head_vars.clone(), ParamsAdamW { lr: config.head_lr, ..params })?;
            let per_step = config.batch_pairs * config.grad_accum;
            let epoch_steps = train_idx.len().div_ceil(per_step).max(1);
            let total = config.steps.unwrap_or(config.epochs * epoch_steps);
            let eval_every = config.eval_every.unwrap_or(epoch_steps);
            let sched = Schedule { peak: 1.0, warmup: config.warmup, total, min_ratio: 0.1 };
            let mut acc = Accumulator::new(all_vars.len());
            let mut draw = Draw::new(&train_idx, rated.len());
            let mut losses: Vec<f64> = Vec::new();
            let mut curve = Vec::new();
            let mut best: Option<(f64, usize, LmMember)> = None;
            if config.members > 1 {
                observer.message(&format!("member {} of {}", m + 1, config.members));
            }
            if config.probe_epochs > 0 {
                if probe_features.is_none() {
                    observer.message(&format!(
                        "probe: the frozen model's features of {} training and {} validation pairs",
                        train_idx.len(),
                        val_idx.len()
                    ));
                    let p0 = Instant::now();
                    probe_features = Some(probe::Features::compute(
                        &llama,
                        data,
                        &rated,
                        &train_idx,
                        &val_idx,
                        config.max_tokens,
                    )?);
                    probe_seconds = p0.elapsed().as_secs_f64();
                    tracing::info!(
                        "probe features of {} training and {} validation pairs and {} ratings \
                         in {probe_seconds:.0} s",
                        train_idx.len(),
                        val_idx.len(),
                        rated.len()
                    );
                }
                let features = probe_features.as_ref().ok_or_else(|| {
                    RewardError::Invalid("internal: the probe features were not computed".into())
                })?;
                let fit = features.fit(
                    &mut Draw::new(&train_idx, rated.len()),
                    &targets_of,
                    &val_idx,
                    pairs,
                    [&head_w, &head_b, &thresholds],
                    config,
                    &mut rng,
                )?;
                observer.message(&format!(
                    "probe: pass {} of {} kept, validation log-loss {}",
                    fit.epoch,
                    config.probe_epochs,
                    fit.val_loss.map_or("-".into(), |l| format!("{l:.4}"))
                ));
                losses.extend(fit.last_epoch_losses);
                probe_kept.push(fit.epoch);
                if let Some(loss) = fit.val_loss {
                    curve.push((0, loss));
                    best = Some((loss, 0, snapshot(&body, &head_w, &head_b, None)?));
                }
            }
            if let (Some(w), false) = (&fitted, val_idx.is_empty()) {
                // Step 0 of a hybrid model: the head is zero, so the margins are the features'.
                let margins: Vec<f32> = val_idx.iter().map(|&i| grounding_margin(w, i)).collect();
                let t: Vec<f32> = val_idx.iter().map(|&i| pairs[i].target).collect();
                let loss = metrics(&margins, &t).log_loss;
                observer.message(&format!(
                    "hybrid: step 0 (grounding features alone), validation log-loss {loss:.4}"
                ));
                observer.eval(&EvalLog {
                    step: 0,
                    epoch: 0,
                    metrics: BTreeMap::from([("log_loss".to_string(), loss)]),
                });
                curve.push((0, loss));
                best = Some((loss, 0, snapshot(&body, &head_w, &head_b, ground_w.as_ref())?));
            }
            let started = Instant::now();
            let mut validating = 0.0;
            observer.started(total, None);
            for step in 0..total {
                let s0 = Instant::now();
                let (mut step_loss, mut step_tokens, mut step_pairs) = (0.0, 0, 0);
                for _ in 0..config.grad_accum {
                    let (batch, rbatch) = draw.next(config.batch_pairs, &mut rng);
                    // Chosen and rejected share the node's prompt: one packed row per pair;
                    // then one row per rated summary.
                    let mut packed: Vec<Packed> =
                        batch.iter().flat_map(|&i| pack(&[&data[i].0, &data[i].1])).collect();
                    packed.extend(rbatch.iter().flat_map(|&i| pack(&[&rated[i]])));
                    step_tokens += packed
                        .iter()
                        .map(|p| p.prompt.len() + p.completions.iter().map(Vec::len).sum::<usize>())
                        .sum::<usize>();
                    let n = batch.len();
                    let targets = targets_of(&batch, &rbatch, &device)?;
                    let mut heads = vec![head_w.clone(), head_b.clone(), thresholds.clone()];
                    heads.extend(ground_w.clone());
                    let (loss, grads) =
                        llama.packed_last_hidden_backward(&packed, &heads, |h| {
                            let all = head_scores(
                                h,
                                head_w.as_tensor(),
                                head_b.as_tensor(),
                                &targets.which,
                            )?;
                            let all = targets.add_grounding(all, ground_w.as_ref())?;
                            Ok(targets.loss(&all, thresholds.as_tensor(), config.ordinal_weight)?)
                        })?;
                    let lv = f64::from(loss.to_scalar::<f32>()?);
                    if !lv.is_finite() {
                        return Err(RewardError::Invalid(format!(
                            "member {m}: the loss became {lv} at step {step}; lower the learning \
                             rate"
                        )));
                    }
                    losses.push(lv);
                    step_loss += lv / config.grad_accum as f64;
                    acc.add(&all_vars, &grads, 1.0 / config.grad_accum as f64)?;
                    pair_steps += n;
                    step_pairs += n;
                }
                let grad_norm = acc.clip(config.max_grad_norm)?;
                let grads = acc.take();
                let scale = sched.lr(step);
                opt_body.set_lr(config.lr * scale);
                opt_head.set_lr(config.head_lr * scale);
                let (gb, gh) = grads.split_at(body.len());
                if !body.is_empty() {
                    opt_body.step_with(gb)?;
                }
                opt_head.step_with(gh)?;
                let done = step + 1;
                let epoch = done * per_step / train_idx.len().max(1);
                observer.step(&StepLog {
                    step: done,
                    epoch,
                    lr: config.lr * scale,
                    loss: step_loss,
                    grad_norm,
                    tokens: step_tokens,
                    seconds: s0.elapsed().as_secs_f64(),
                    metrics: BTreeMap::from([("pairs".to_string(), step_pairs as f64)]),
                });
                if !val_idx.is_empty() && (done % eval_every == 0 || done == total) {
                    let v0 = Instant::now();
                    let mut margins = pair_margins(
                        &llama,
                        data,
                        &pair_heights,
                        &val_idx,
                        head_w.as_tensor(),
                        head_b.as_tensor(),
                        config.max_tokens,
                    )?;
                    if let Some(g) = &ground_w {
                        let w = g.as_tensor().to_vec1::<f32>()?;
                        for (d, &i) in margins.iter_mut().zip(&val_idx) {
                            *d += grounding_margin(&w, i);
                        }
                    }
                    let t: Vec<f32> = val_idx.iter().map(|&i| pairs[i].target).collect();
                    let loss = metrics(&margins, &t).log_loss;
                    tracing::debug!("member {m}, step {done}: validation log-loss {loss:.4}");
                    observer.eval(&EvalLog {
                        step: done,
                        epoch,
                        metrics: BTreeMap::from([("log_loss".to_string(), loss)]),
                    });
                    curve.push((done, loss));
                    if best.as_ref().is_none_or(|b| loss < b.0) {
                        best = Some((
                            loss,
                            done,
                            snapshot(&body, &head_w, &head_b, ground_w.as_ref())?,
                        ));
                    }
                    validating += v0.elapsed().as_secs_f64();
                }
            }
            train_seconds += started.elapsed().as_secs_f64() - validating;
            let tail = losses.len().min(train_idx.len().div_ceil(config.batch_pairs).max(1));
            let tail = &losses[losses.len() - tail..];
            final_loss.push(tail.iter().sum::<f64>() / tail.len().max(1) as f64);
            let (step, member) = match best {
                Some((_, step, member)) => (step, member),
                None => (total, snapshot(&body, &head_w, &head_b, ground_w.as_ref())?),
            };
            best_steps.push(step);
            curves.push(curve);
            members.push(member);
            last = Some((llama, tokenizer));
        }
        let (llama, tokenizer) =
            last.ok_or_else(|| RewardError::Invalid("no member was trained".into()))?;
        let end = end_token(&tokenizer)?;
        let truncated = encoded.map_or(0, |e| e.1);
        let data_json = serde_json::to_vec(pairs)
            .map_err(|e| RewardError::Invalid(format!("hashing the data: {e}")))?;
        let held_out = !test_idx.is_empty();
        let hybrid_card = fitted.map(|w| {
            let mut h = HybridCard::new();
            h.fitted.insert("all".into(), w.to_vec());
            h.best_step.insert("all".into(), best_steps.clone());
            h
        });
        let card = LmCard {
            format: LM_FORMAT_VERSION,
            backbone: BACKBONE.into(),
            hash: String::new(),
            created_unix: now_unix(),
            base: base.display().to_string(),
            base_hash,
            hidden: llama.config.hidden,
            config: config.clone(),
            pairs: pairs.len(),
            train_pairs: train_idx.len(),
            train_ratings: train_ratings.len(),
            val_groups: val_groups.into_iter().collect(),
            test_groups: test_groups.into_iter().collect(),
            data_hash: blake3::hash(&data_json).to_hex()[..16].to_string(),
            source: source.to_string(),
            truncated,
            metrics: BTreeMap::new(),
            held_out,
            validation_metrics: BTreeMap::new(),
            report: None,
            validation_curve: curves,
            best_step: best_steps,
            heads,
            temperature: 1.0,
            temperature_fitted: false,
            validation_log_loss_uncalibrated: None,
            probe_epoch: probe_kept,
            probe_seconds,
            hybrid: hybrid_card,
            final_loss,
            train_seconds,
            pairs_per_second: pair_steps as f64 / train_seconds.max(1e-9),
        };
        let mut model = LmRewardModel::assemble(card, members, llama, tokenizer, end);
        let pick = |idx: &[usize]| idx.iter().map(|&i| pairs[i].clone()).collect::<Vec<Pair>>();
        if !val_idx.is_empty() {
            let val = pick(&val_idx);
            let margins = model.margins(&val)?;
            let targets: Vec<f32> = val.iter().map(|p| p.target).collect();
            let raw = metrics(&margins, &targets).log_loss;
            let fitted = fit_temperature(&margins, &targets);
            let t = fitted.unwrap_or(1.0);
            model.card.temperature = t;
            model.card.temperature_fitted = fitted.is_some();
            model.card.validation_log_loss_uncalibrated = Some(raw);
            // The calibrated margins are these over `t`: no second pass over the pairs.
            let calibrated: Vec<f32> = margins.iter().map(|&d| d / t as f32).collect();
            model.card.validation_metrics = metrics_by_height(&val, &calibrated);
            observer.message(&format!(
                "temperature {t:.3} on {} validation pairs (log-loss {raw:.4} before)",
                val.len()
            ));
        }
        let reported =
            if held_out { pick(&test_idx) } else { pick(&sample(train_idx, 0x0074_7261_696e)) };
        observer.message(&format!(
            "scoring {} {} pairs for the card",
            reported.len(),
            if held_out { "test" } else { "training" }
        ));
        let margins = model.margins(&reported)?;
        model.card.metrics = metrics_by_height(&reported, &margins);
        if held_out {
            let refs: Vec<&Pair> = reported.iter().collect();
            model.card.report = Some(crate::reward::eval::report(&margins, &refs));
        }
        Ok(model)
    }
}
