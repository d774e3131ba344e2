//! Learning the boundary model from preferences between whole segmentations: which of two
//! decompositions of the same text led to the better summary (ROUGE against people's
//! summaries, the grounded check against the source), which a person said gives the better
//! subtasks (`rrm decomposer compare`), or which a simulated labeler prefers.
//!
//! The segmentation program picks the cuts that maximize the summed gap log-odds (minus a
//! length prior that does not depend on the model). So a segmentation's model score is
//! `s(S) = Σ_{g ∈ cuts(S)} z(g)`, and a preference "A over B" is a Bradley–Terry label on
//! `s(A) − s(B)`, which only the gaps one side cuts and the other does not move. A boundary
//! marked bad is the pair "without that cut over with it". [`BoundaryModel::tune`] fits every
//! parameter to these labels, anchored to the starting model by `λ/2 · ‖θ − θ₀‖²` (few,
//! noisy labels must not undo what the book structure taught), and keeps the step with the
//! lowest loss on held-out groups (documents), the starting model included.

use std::collections::BTreeSet;

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::features::Units;
use super::model::{softplus, BoundaryModel};
use super::LearnedError;

/// One preference between two segmentations of one text.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentationPair {
    /// Feature rows (`n × dim`, raw) of the gaps side A cuts and side B does not.
    pub only_a: Vec<f32>,
    /// … and of the gaps B cuts and A does not.
    pub only_b: Vec<f32>,
    /// Probability that A is the better segmentation: 1, 0, or 0.5 for a tie.
    pub target: f32,
    pub weight: f32,
    /// What held-out validation splits by (the document or book).
    pub group: String,
    /// Where the label came from (`rouge`, `grounded`, `simulated`, `people`).
    pub signal: String,
}

/// Preferences over segmentations, ready for [`BoundaryModel::tune`].
#[derive(Debug, Clone, Default)]
pub struct PreferenceData {
    pub dim: usize,
    pub pairs: Vec<SegmentationPair>,
}

impl PreferenceData {
    pub fn new(dim: usize) -> PreferenceData {
        PreferenceData { dim, pairs: Vec::new() }
    }

    /// Adds "A over B with probability `target`" for two segmentations given by the gaps they
    /// cut (indices into the text's gap `rows`). Returns `false`, adding nothing, when both cut
    /// the same gaps (nothing to learn) or a gap is out of range.
    #[allow(clippy::too_many_arguments)]
    pub fn push_cuts(
        &mut self,
        rows: &[f32],
        a: &[usize],
        b: &[usize],
        target: f32,
        weight: f32,
        group: &str,
        signal: &str,
    ) -> bool {
        let dim = self.dim;
        let n_gaps = rows.len().checked_div(dim).unwrap_or(0);
        let a: BTreeSet<usize> = a.iter().copied().collect();
        let b: BTreeSet<usize> = b.iter().copied().collect();
        if a == b || a.iter().chain(&b).any(|&g| g >= n_gaps) {
            return false;
        }
        let gather = |only: Vec<&usize>| -> Vec<f32> {
            only.into_iter().flat_map(|&g| rows[g * dim..(g + 1) * dim].iter().copied()).collect()
        };
        self.pairs.push(SegmentationPair {
            only_a: gather(a.difference(&b).collect()),
            only_b: gather(b.difference(&a).collect()),
            target: target.clamp(0.0, 1.0),
            weight,
            group: group.to_string(),
            signal: signal.to_string(),
        });
        true
    }

    /// Pairs per signal, in order of first appearance.
    pub fn signals(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for p in &self.pairs {
            match out.iter_mut().find(|(s, _)| *s == p.signal) {
                Some((_, n)) => *n += 1,
                None => out.push((p.signal.clone(), 1)),
            }
        }
        out
    }
}

/// The gaps where leaves starting at byte `offsets` begin (offset 0 and offsets past the last
/// unit have none), sorted and without repeats.
pub fn cut_gaps(units: &Units, offsets: &[usize]) -> Vec<usize> {
    let set: BTreeSet<usize> = offsets.iter().filter_map(|&o| units.gap_at(o)).collect();
    set.into_iter().collect()
}

/// Settings of [`BoundaryModel::tune`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneConfig {
    /// Full-batch steps.
    pub epochs: usize,
    pub learning_rate: f64,
    /// λ of the anchor `λ/2 · ‖θ − θ₀‖²` to the starting model (per pair of the batch).
    pub anchor: f64,
    /// Share of groups held out to pick the step (none when there is one group).
    pub val_fraction: f64,
    pub seed: u64,
    /// The segmentation limits the preferences were drawn under (recorded in the model file,
    /// so a later run with other limits can say so; absent in files tuned before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<TuneLimits>,
}

impl Default for TuneConfig {
    fn default() -> Self {
        TuneConfig {
            epochs: 200,
            learning_rate: 0.01,
            anchor: 1.0,
            val_fraction: 0.25,
            seed: 0,
            limits: None,
        }
    }
}

/// The leaf size and fanout a boundary model was tuned under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TuneLimits {
    pub chunk_tokens: usize,
    pub fanout_min: usize,
    pub fanout_max: usize,
}

impl TuneLimits {
    /// The limits of `config`.
    pub fn of(config: &super::LearnedConfig) -> Self {
        TuneLimits {
            chunk_tokens: config.chunk_tokens,
            fanout_min: config.fanout_min,
            fanout_max: config.fanout_max,
        }
    }

    /// `--chunk-tokens N --fanout MIN..MAX`, as a user would type them.
    pub fn flags(&self) -> String {
        format!(
            "--chunk-tokens {} --fanout {}..{}",
            self.chunk_tokens, self.fanout_min, self.fanout_max
        )
    }

    /// What to tell a user who runs a model tuned under `self` with the limits `now`; `None`
    /// when they agree.
    pub fn mismatch(&self, now: &TuneLimits) -> Option<String> {
        (self != now).then(|| {
            format!(
                "this boundary model was tuned under `{}`, and this run uses `{}`: its \
                 preferences were learned for other leaves (pass the same limits to use it as tuned)",
                self.flags(),
                now.flags()
            )
        })
    }
}

/// Pair accuracy (ties left out) and mean weighted Bradley–Terry loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PairMetrics {
    pub pairs: usize,
    pub accuracy: Option<f64>,
    pub loss: Option<f64>,
}

/// What tuning did (recorded in the model file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TuneReport {
    /// Pairs per signal.
    pub signals: Vec<(String, usize)>,
    pub train_groups: Vec<String>,
    pub val_groups: Vec<String>,
    pub config: Option<TuneConfig>,
    pub train_before: PairMetrics,
    pub train_after: PairMetrics,
    pub val_before: PairMetrics,
    pub val_after: PairMetrics,
    /// The step kept (0: the starting model).
    pub kept_step: usize,
    /// The fitted inverse temperature β of `P(A ≻ B) = σ(β · (s(A) − s(B)))` at that step: a
    /// segmentation's score sums many gaps, so the raw difference overstates how sure a
    /// preference is. β only calibrates the pairs; the segmentation never sees it.
    #[serde(default)]
    pub beta: f64,
}

/// The pairs as tensors: all rows stacked, and a (pairs × rows) matrix of +1 (A's rows) and
/// −1 (B's rows), so that `M · z` is every pair's `s(A) − s(B)` before the prior shift.
struct Batch {
    rows: Tensor,
    signs: Tensor,
    /// `(n_a − n_b)` per pair: the calibration shift's share of `s(A) − s(B)`.
    counts: Vec<f32>,
    targets: Tensor,
    weights: Tensor,
    targets_v: Vec<f32>,
    weights_v: Vec<f32>,
}

impl Batch {
    fn new(
        model: &BoundaryModel,
        pairs: &[&SegmentationPair],
    ) -> Result<Option<Batch>, LearnedError> {
        let dim = model.dim();
        let (mean, std) = model.standardization();
        let total: usize = pairs.iter().map(|p| (p.only_a.len() + p.only_b.len()) / dim).sum();
        if pairs.is_empty() || total == 0 {
            return Ok(None);
        }
        let mut xs = Vec::with_capacity(total * dim);
        let mut signs = vec![0f32; pairs.len() * total];
        let mut counts = Vec::with_capacity(pairs.len());
        let mut r = 0;
        for (i, p) in pairs.iter().enumerate() {
            for (rows, sign) in [(&p.only_a, 1f32), (&p.only_b, -1f32)] {
                for row in rows.chunks_exact(dim) {
                    xs.extend(row.iter().zip(mean).zip(std).map(|((x, m), s)| (x - m) / s));
                    signs[i * total + r] = sign;
                    r += 1;
                }
            }
            counts.push(((p.only_a.len() / dim) as f32) - ((p.only_b.len() / dim) as f32));
        }
        let device = Device::Cpu;
        let targets_v: Vec<f32> = pairs.iter().map(|p| p.target).collect();
        let weights_v: Vec<f32> = pairs.iter().map(|p| p.weight.max(0.0)).collect();
        let sum_w: f32 = weights_v.iter().sum::<f32>().max(1e-9);
        Ok(Some(Batch {
            rows: Tensor::from_vec(xs, (total, dim), &device)?,
            signs: Tensor::from_vec(signs, (pairs.len(), total), &device)?,
            counts,
            targets: Tensor::from_vec(targets_v.clone(), pairs.len(), &device)?,
            weights: Tensor::from_vec(
                weights_v.iter().map(|w| w / sum_w).collect::<Vec<f32>>(),
                pairs.len(),
                &device,
            )?,
            targets_v,
            weights_v,
        }))
    }

    /// Every pair's `s(A) − s(B)` under the parameters.
    fn margins(&self, params: &Params<'_>, shift: f32) -> candle_core::Result<Tensor> {
        let z = params.forward(&self.rows)?;
        let diff = self.signs.matmul(&z.unsqueeze(1)?)?.squeeze(1)?;
        let shifts: Vec<f32> = self.counts.iter().map(|c| -c * shift).collect();
        let diff = (diff + Tensor::from_vec(shifts, self.counts.len(), &Device::Cpu)?)?;
        diff.broadcast_mul(&params.log_beta.exp()?)
    }

    /// Weighted mean Bradley–Terry loss (cross-entropy against the targets).
    fn loss(&self, margins: &Tensor) -> candle_core::Result<Tensor> {
        let per = (softplus(margins)? - (margins * &self.targets)?)?;
        (per * &self.weights)?.sum_all()
    }

    fn metrics(&self, margins: &Tensor) -> Result<PairMetrics, LearnedError> {
        let m = margins.to_vec1::<f32>()?;
        let mut right = 0usize;
        let mut decided = 0usize;
        let (mut loss, mut total_w) = (0f64, 0f64);
        for ((&d, &t), &w) in m.iter().zip(&self.targets_v).zip(&self.weights_v) {
            if (t - 0.5).abs() > 1e-6 {
                decided += 1;
                if (d > 0.0) == (t > 0.5) {
                    right += 1;
                }
            }
            let d = f64::from(d);
            let sp = d.max(0.0) + (-d.abs()).exp().ln_1p();
            loss += f64::from(w) * (sp - d * f64::from(t));
            total_w += f64::from(w);
        }
        Ok(PairMetrics {
            pairs: m.len(),
            accuracy: (decided > 0).then(|| right as f64 / decided as f64),
            loss: (total_w > 0.0).then(|| loss / total_w),
        })
    }
}

/// The parameters being tuned, as tensors (a model's, or the optimizer's variables).
struct Params<'a> {
    l1: Option<(&'a Tensor, &'a Tensor)>,
    l2: (&'a Tensor, &'a Tensor),
    /// ln β, shape (1).
    log_beta: &'a Tensor,
}

impl Params<'_> {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        super::model::forward(xs, self.l1, self.l2)
    }
}

impl BoundaryModel {
    /// This model fitted to preferences between segmentations (see the module docs); the
    /// standardization and calibration shift stay. Fails when no pair has a gap to learn from.
    pub fn tune(
        &self,
        data: &PreferenceData,
        config: &TuneConfig,
    ) -> Result<(BoundaryModel, TuneReport), LearnedError> {
        if data.dim != self.dim() {
            return Err(LearnedError::Training(format!(
                "preference rows have {} features; the model expects {}",
                data.dim,
                self.dim()
            )));
        }
        if !(config.anchor.is_finite() && config.anchor >= 0.0) {
            return Err(LearnedError::Training(format!(
                "the anchor λ must be a non-negative number (got {})",
                config.anchor
            )));
        }
        let (train_groups, val_groups) = split_groups(data, config);
        let train: Vec<&SegmentationPair> =
            data.pairs.iter().filter(|p| !val_groups.contains(&p.group)).collect();
        let val: Vec<&SegmentationPair> =
            data.pairs.iter().filter(|p| val_groups.contains(&p.group)).collect();
        let Some(train_batch) = Batch::new(self, &train)? else {
            return Err(LearnedError::Training(
                "no preference pair to learn from (every pair cut the same gaps, or none was \
                 given)"
                    .into(),
            ));
        };
        let val_batch = Batch::new(self, &val)?;
        let shift = self.meta().prior_shift;
        let (l1_0, l2_0) = self.params();
        let device = Device::Cpu;
        // Fresh storage: a trained model's tensors may still be variables, which
        // `Var::from_tensor` would share, and the optimizer would then change `self`.
        let var = |t: &Tensor| Var::from_tensor(&t.copy()?);
        let l1 = match &l1_0 {
            Some((w, b)) => Some((var(w)?, var(b)?)),
            None => None,
        };
        let l2 = (var(&l2_0.0)?, var(&l2_0.1)?);
        let log_beta = Var::from_tensor(&Tensor::zeros(1, candle_core::DType::F32, &device)?)?;
        // The model's parameters and their starting values (the anchor); β is not anchored.
        let mut anchored = vec![(l2.0.clone(), l2_0.0.clone()), (l2.1.clone(), l2_0.1.clone())];
        if let (Some((w, b)), Some((w0, b0))) = (&l1, &l1_0) {
            anchored.extend([(w.clone(), w0.clone()), (b.clone(), b0.clone())]);
        }
        let mut vars: Vec<Var> = anchored.iter().map(|(v, _)| v.clone()).collect();
        vars.push(log_beta.clone());
        let mut opt = AdamW::new(
            vars,
            ParamsAdamW { lr: config.learning_rate, weight_decay: 0.0, ..ParamsAdamW::default() },
        )?;
        let snapshot = || -> candle_core::Result<State> {
            Ok(State {
                l1: match &l1 {
                    Some((w, b)) => Some((w.as_tensor().copy()?, b.as_tensor().copy()?)),
                    None => None,
                },
                l2: (l2.0.as_tensor().copy()?, l2.1.as_tensor().copy()?),
                log_beta: log_beta.as_tensor().copy()?,
            })
        };
        let evaluate = |state: &State, batch: &Batch| -> Result<PairMetrics, LearnedError> {
            batch.metrics(&batch.margins(&state.params(), shift)?)
        };
        let initial = snapshot()?;
        let train_before = evaluate(&initial, &train_batch)?;
        let val_before = match &val_batch {
            Some(b) => evaluate(&initial, b)?,
            None => PairMetrics::default(),
        };
        let mut best = (initial, val_before.loss.unwrap_or(f64::INFINITY), 0usize);
        for step in 1..=config.epochs {
            let p = Params {
                l1: l1.as_ref().map(|(w, b)| (w.as_tensor(), b.as_tensor())),
                l2: (l2.0.as_tensor(), l2.1.as_tensor()),
                log_beta: log_beta.as_tensor(),
            };
            let margins = train_batch.margins(&p, shift)?;
            let mut loss = train_batch.loss(&margins)?;
            if config.anchor > 0.0 {
                for (v, a) in &anchored {
                    let d = (v.as_tensor() - a)?;
                    loss = (loss + (d.sqr()?.sum_all()? * (config.anchor / 2.0))?)?;
                }
            }
            opt.backward_step(&loss)?;
            if let Some(vb) = &val_batch {
                let now = snapshot()?;
                let m = evaluate(&now, vb)?;
                if let Some(l) = m.loss.filter(|l| *l < best.1) {
                    best = (now, l, step);
                }
            }
        }
        if val_batch.is_none() {
            best = (snapshot()?, f64::NAN, config.epochs);
        }
        let (kept, _, kept_step) = best;
        let train_after = evaluate(&kept, &train_batch)?;
        let val_after = match &val_batch {
            Some(b) => evaluate(&kept, b)?,
            None => PairMetrics::default(),
        };
        let beta = f64::from(kept.log_beta.exp()?.to_vec1::<f32>()?[0]);
        let report = TuneReport {
            signals: data.signals(),
            train_groups,
            val_groups: val_groups.into_iter().collect(),
            config: Some(config.clone()),
            train_before,
            train_after,
            val_before,
            val_after,
            kept_step,
            beta,
        };
        let mut meta = self.meta().clone();
        meta.training.preferences = Some(report.clone());
        Ok((self.with_params(meta, kept.l1, kept.l2), report))
    }
}

/// A copy of the parameters at one step.
struct State {
    l1: Option<(Tensor, Tensor)>,
    l2: (Tensor, Tensor),
    log_beta: Tensor,
}

impl State {
    fn params(&self) -> Params<'_> {
        Params {
            l1: self.l1.as_ref().map(|(w, b)| (w, b)),
            l2: (&self.l2.0, &self.l2.1),
            log_beta: &self.log_beta,
        }
    }
}

/// Groups sorted by a seeded hash; the first `val_fraction` of them (at least one, never all)
/// are held out.
fn split_groups(data: &PreferenceData, config: &TuneConfig) -> (Vec<String>, BTreeSet<String>) {
    let groups: BTreeSet<&str> = data.pairs.iter().map(|p| p.group.as_str()).collect();
    let mut order: Vec<(String, &str)> = groups
        .iter()
        .map(|g| {
            let mut h = blake3::Hasher::new();
            h.update(&config.seed.to_le_bytes());
            h.update(g.as_bytes());
            (h.finalize().to_hex().to_string(), *g)
        })
        .collect();
    order.sort();
    let n = order.len();
    let n_val = if n < 2 || config.val_fraction <= 0.0 {
        0
    } else {
        ((n as f64 * config.val_fraction).round() as usize).clamp(1, n - 1)
    };
    let val: BTreeSet<String> = order[..n_val].iter().map(|(_, g)| g.to_string()).collect();
    let train = order[n_val..].iter().map(|(_, g)| g.to_string()).collect();
    (train, val)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decompose::learned::model::tests::meta;
    use crate::decompose::learned::model::{TrainConfig, TrainingData};

    /// A model that learned from "structure" that feature 0 marks boundaries; feature 1 is
    /// noise it ignores.
    fn start_model() -> BoundaryModel {
        let mut data = TrainingData::new(2);
        for i in 0..200 {
            let label = i % 10 == 0;
            let x0 = if label { 1.0 } else { 0.0 };
            let x1 = ((i * 7919) % 13) as f32 / 13.0;
            data.push(&[x0, x1], label, 1.0);
        }
        BoundaryModel::train(&data, meta(2), &TrainConfig { epochs: 200, ..TrainConfig::default() })
            .unwrap()
    }

    /// Gap rows of a text of `n` gaps: feature 0 on every 5th gap, feature 1 on every 7th.
    fn rows(n: usize) -> Vec<f32> {
        (0..n)
            .flat_map(|g| [f32::from(u8::from(g % 5 == 0)), f32::from(u8::from(g % 7 == 0))])
            .collect()
    }

    /// Preferences that favour cutting where feature 1 is on: segmentations with more such
    /// cuts win, in several groups.
    fn prefer_feature_1(groups: usize) -> PreferenceData {
        let mut data = PreferenceData::new(2);
        let rows = rows(70);
        for group in 0..groups {
            for k in 0..6usize {
                let sevens: Vec<usize> = (0..70).filter(|g| g % 7 == 0).take(k + 2).collect();
                let fives: Vec<usize> =
                    (0..70).filter(|g| g % 5 == 0 && g % 7 != 0).take(k + 2).collect();
                let name = format!("doc{group}");
                assert!(data.push_cuts(&rows, &sevens, &fives, 1.0, 1.0, &name, "simulated"));
            }
        }
        data
    }

    #[test]
    fn pairs_keep_only_the_gaps_one_side_cuts() {
        let mut data = PreferenceData::new(2);
        let rows = rows(10);
        assert!(!data.push_cuts(&rows, &[1, 3], &[3, 1], 1.0, 1.0, "d", "s"), "same cuts");
        assert!(!data.push_cuts(&rows, &[1, 30], &[2], 1.0, 1.0, "d", "s"), "out of range");
        assert!(data.push_cuts(&rows, &[1, 3, 5], &[3, 6], 1.0, 1.0, "d", "s"));
        let p = &data.pairs[0];
        assert_eq!(p.only_a, [rows[2..4].to_vec(), rows[10..12].to_vec()].concat());
        assert_eq!(p.only_b, rows[12..14].to_vec());
        assert_eq!(data.signals(), vec![("s".to_string(), 1)]);
    }

    #[test]
    fn tuning_moves_the_model_toward_the_preferred_cuts_and_records_it() {
        let start = start_model();
        let before = start.score(&[0.0, 1.0]).unwrap()[0];
        let data = prefer_feature_1(8);
        let config =
            TuneConfig { epochs: 150, learning_rate: 0.05, anchor: 0.01, ..TuneConfig::default() };
        let (tuned, report) = start.tune(&data, &config).unwrap();
        let after = tuned.score(&[0.0, 1.0]).unwrap()[0];
        assert!(after > before + 0.5, "feature 1 gained weight: {before} -> {after}");
        assert_eq!(report.val_groups.len(), 2, "a quarter of 8 groups held out");
        assert!(report.kept_step > 0);
        let (b, a) = (report.val_before.loss.unwrap(), report.val_after.loss.unwrap());
        assert!(a < b, "held-out loss fell: {b} -> {a}");
        assert_eq!(report.val_after.accuracy, Some(1.0));
        assert_eq!(tuned.meta().training.preferences.as_ref(), Some(&report));
        assert_ne!(tuned.hash().unwrap(), start.hash().unwrap());
    }

    #[test]
    fn a_strong_anchor_keeps_the_start_and_contrary_labels_keep_step_zero() {
        let start = start_model();
        let x = [1.0, 0.0, 0.0, 1.0];
        let data = prefer_feature_1(8);
        let anchored = TuneConfig { anchor: 1e4, ..TuneConfig::default() };
        let (tuned, _) = start.tune(&data, &anchored).unwrap();
        for (s, t) in start.score(&x).unwrap().iter().zip(tuned.score(&x).unwrap()) {
            assert!((s - t).abs() < 0.05, "{s} vs {t}");
        }
        // Held-out groups that say the opposite of the training groups: no step beats the
        // start on them, so the start is kept.
        let mut data = prefer_feature_1(8);
        let (_, val) = split_groups(&data, &TuneConfig::default());
        for p in data.pairs.iter_mut().filter(|p| val.contains(&p.group)) {
            p.target = 0.0;
        }
        let config = TuneConfig { anchor: 0.0, learning_rate: 0.05, ..TuneConfig::default() };
        let (tuned, report) = start.tune(&data, &config).unwrap();
        assert_eq!(report.kept_step, 0);
        assert_eq!(tuned.score(&x).unwrap(), start.score(&x).unwrap());
    }

    #[test]
    fn bad_input_is_refused() {
        let start = start_model();
        let empty = PreferenceData::new(2);
        assert!(start.tune(&empty, &TuneConfig::default()).is_err());
        let wrong = PreferenceData::new(3);
        let err = start.tune(&wrong, &TuneConfig::default()).unwrap_err().to_string();
        assert!(err.contains("3 features"), "{err}");
        let data = prefer_feature_1(2);
        let bad = TuneConfig { anchor: -1.0, ..TuneConfig::default() };
        assert!(start.tune(&data, &bad).unwrap_err().to_string().contains("anchor"));
    }

    #[test]
    fn a_run_under_other_limits_is_told_which_ones_the_model_was_tuned_under() {
        let tuned = TuneLimits { chunk_tokens: 200, fanout_min: 3, fanout_max: 13 };
        assert_eq!(tuned.mismatch(&tuned), None);
        let now = TuneLimits { chunk_tokens: 600, ..tuned };
        let note = tuned.mismatch(&now).unwrap();
        assert!(note.contains("--chunk-tokens 200 --fanout 3..13"), "{note}");
        assert!(note.contains("--chunk-tokens 600"), "{note}");
        // Files tuned before the limits were kept read as "not recorded".
        let old: TuneConfig = serde_json::from_str(
            r#"{"epochs":1,"learning_rate":0.1,"anchor":1.0,"val_fraction":0.25,"seed":0}"#,
        )
        .unwrap();
        assert_eq!(old.limits, None);
    }
}
