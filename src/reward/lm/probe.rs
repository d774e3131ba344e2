//! Linear probing before fine-tuning (`probe_epochs`): the scalar head is first fitted alone on
//! the frozen model's last-token hidden states of every training pair, then the adapters are
//! fine-tuned from it.
//!
//! Fine-tuning from a random head spends its first, most expensive steps teaching the head
//! what the backbone already tells apart, and on CPU a run sees only a few hundred pairs; a
//! frozen backbone's features cost one forward pass per pair, after which the head trains for
//! as many passes over all pairs as validation wants, in milliseconds. The adapters start at
//! zero (LoRA's `B`), so the fine-tuned model starts exactly where the probe ends. The probe
//! fits on standardised features (every hidden unit scaled to unit variance over the training
//! summaries, since a few units of a causal LM's final state are orders of magnitude larger
//! than the rest) and the scaling is folded back into the head: `w = w_z / σ`,
//! `b = b_z − Σ w_z μ / σ`.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};

use super::pack::{head_of, head_scores, last_hidden_rows, rows_of, score_budget, TokenPair};
use super::train::{BatchTargets, Draw, LmTrainConfig};
use crate::feedback::Pair;
use crate::lm::optim::{AdamW, ParamsAdamW};
use crate::lm::TrainableLlama;
use crate::reward::train::metrics;
use crate::reward::RewardError;

/// Makes a batch's targets from its pairs and ratings (indices into all pairs and into the
/// rated summaries).
pub(super) type TargetsOf<'a> =
    dyn Fn(&[usize], &[usize], &Device) -> Result<BatchTargets, RewardError> + 'a;

/// Pairs per forward chunk while the features are computed (for the progress log).
const CHUNK_PAIRS: usize = 32;

/// The frozen backbone's features of the training pairs, their ratings and the validation
/// pairs, computed once for every member (each member's adapters start at zero).
pub(super) struct Features {
    /// Standardised: rows `2k`, `2k + 1` are training pair `k`'s chosen and rejected summary,
    /// then one row per rated summary.
    train: Tensor,
    /// Row of each training pair (by its index among all pairs) in `train`, over 2.
    pos: HashMap<usize, usize>,
    /// Standardised validation features, rows `2k`, `2k + 1` for `val_idx[k]`.
    val: Tensor,
    mean: Tensor,
    std: Tensor,
}

/// What a probe fit chose.
pub(super) struct Fit {
    /// The pass over the training pairs whose head was kept (the last without validation).
    pub epoch: usize,
    /// Its validation log-loss (none without validation pairs).
    pub val_loss: Option<f64>,
    /// The training loss of each step of the last pass.
    pub last_epoch_losses: Vec<f64>,
}

impl Features {
    /// Last-token hidden states of the training pairs `train_idx` and validation pairs
    /// `val_idx` of `data`, and of the `rated` summaries, under `llama` as loaded.
    pub(super) fn compute(
        llama: &TrainableLlama,
        data: &[TokenPair],
        rated: &[Vec<u32>],
        train_idx: &[usize],
        val_idx: &[usize],
        max_tokens: usize,
    ) -> Result<Features, RewardError> {
        let hidden_of = |idx: &[usize], what: &str| -> Result<Tensor, RewardError> {
            let mut parts = Vec::new();
            for (c, chunk) in idx.chunks(CHUNK_PAIRS).enumerate() {
                let groups: Vec<Vec<Vec<u32>>> =
                    chunk.iter().map(|&i| vec![data[i].0.clone(), data[i].1.clone()]).collect();
                let (rows, _, _) = rows_of(&groups, &vec![0; groups.len()]);
                parts.push(last_hidden_rows(llama, &rows, score_budget(max_tokens))?);
                tracing::info!(
                    "probe features: {} of {} {what} pairs",
                    (c * CHUNK_PAIRS + chunk.len()),
                    idx.len()
                );
            }
            cat_rows(parts, llama)
        };
        let mut train = vec![hidden_of(train_idx, "training")?];
        if !rated.is_empty() {
            let groups: Vec<Vec<Vec<u32>>> = rated.iter().map(|s| vec![s.clone()]).collect();
            let (rows, _, _) = rows_of(&groups, &vec![0; groups.len()]);
            train.push(last_hidden_rows(llama, &rows, score_budget(max_tokens))?);
        }
        let train = cat_rows(train, llama)?;
        let val = hidden_of(val_idx, "validation")?;
        let mean = train.mean_keepdim(0)?;
        let var = train.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
        // A unit constant over the training summaries keeps its scale (and no division by 0).
        let std = (var.sqrt()? + 1e-4)?;
        let scale = |x: &Tensor| -> candle_core::Result<Tensor> {
            x.broadcast_sub(&mean)?.broadcast_div(&std)
        };
        Ok(Features {
            train: scale(&train)?,
            pos: train_idx.iter().enumerate().map(|(k, &i)| (i, k)).collect(),
            val: scale(&val)?,
            mean,
            std,
        })
    }

    /// Fits the head `[w, b, thresholds]` on the features for `config.probe_epochs` passes
    /// over the training pairs (batches from `draw`, targets from `targets_of`), from the
    /// head's values as they are, keeping the pass with the lowest log-loss on the validation
    /// pairs `val_idx` (the last without any); the kept head is written back into the
    /// variables, in the backbone's unstandardised coordinates.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fit(
        &self,
        draw: &mut Draw<'_>,
        targets_of: &TargetsOf<'_>,
        val_idx: &[usize],
        pairs: &[Pair],
        head: [&Var; 3],
        config: &LmTrainConfig,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<Fit, RewardError> {
        let device = self.train.device().clone();
        let [w, b, thresholds] = head;
        let vars: Vec<(String, Var)> = [("w", w), ("b", b), ("thresholds", thresholds)]
            .into_iter()
            .map(|(n, v)| Ok((n.to_string(), Var::from_tensor(&v.as_tensor().copy()?)?)))
            .collect::<candle_core::Result<_>>()?;
        let params = ParamsAdamW {
            lr: config.head_lr,
            weight_decay: config.weight_decay,
            ..Default::default()
        };
        let mut opt = AdamW::new(vars.clone(), params)?;
        let pair_rows = 2 * self.pos.len();
        let heads = w.dims()[0];
        let val_which: Vec<u32> =
            val_idx.iter().flat_map(|&i| [head_of(pairs[i].height, heads); 2]).collect();
        let val_which = Tensor::new(val_which, &device)?;
        let val_targets: Vec<f32> = val_idx.iter().map(|&i| pairs[i].target).collect();
        let steps = self.pos.len().div_ceil(config.batch_pairs).max(1);
        let mut best: Option<(f64, usize, [Tensor; 3])> = None;
        let mut last_epoch_losses = Vec::with_capacity(steps);
        let copy = |vars: &[(String, Var)]| -> candle_core::Result<[Tensor; 3]> {
            Ok([
                vars[0].1.as_tensor().copy()?,
                vars[1].1.as_tensor().copy()?,
                vars[2].1.as_tensor().copy()?,
            ])
        };
        for epoch in 1..=config.probe_epochs {
            last_epoch_losses.clear();
            for _ in 0..steps {
                let (batch, rbatch) = draw.next(config.batch_pairs, rng);
                let mut rows = Vec::with_capacity(2 * batch.len() + rbatch.len());
                for i in &batch {
                    let k = self.pos.get(i).copied().ok_or_else(|| {
                        RewardError::Invalid(format!("internal: pair {i} has no probe features"))
                    })?;
                    rows.extend([2 * k as u32, 2 * k as u32 + 1]);
                }
                rows.extend(rbatch.iter().map(|&j| (pair_rows + j) as u32));
                let x = self.train.index_select(&Tensor::new(rows, &device)?, 0)?;
                let targets = targets_of(&batch, &rbatch, &device)?;
                let all =
                    head_scores(&x, vars[0].1.as_tensor(), vars[1].1.as_tensor(), &targets.which)?;
                let loss = targets.loss(&all, vars[2].1.as_tensor(), config.ordinal_weight)?;
                let lv = f64::from(loss.to_scalar::<f32>()?);
                if !lv.is_finite() {
                    return Err(RewardError::Invalid(format!(
                        "the probe's loss became {lv} in pass {epoch}; lower the head learning rate"
                    )));
                }
                last_epoch_losses.push(lv);
                let grads = loss.backward()?;
                let g: Vec<Option<Tensor>> =
                    vars.iter().map(|(_, v)| grads.get(v.as_tensor()).cloned()).collect();
                opt.step_with(&g)?;
            }
            if val_idx.is_empty() {
                continue;
            }
            let s =
                head_scores(&self.val, vars[0].1.as_tensor(), vars[1].1.as_tensor(), &val_which)?
                    .to_vec1::<f32>()?;
            let margins: Vec<f32> = s.chunks(2).map(|c| c[0] - c[1]).collect();
            let loss = metrics(&margins, &val_targets).log_loss;
            tracing::debug!("probe pass {epoch}: validation log-loss {loss:.4}");
            if best.as_ref().is_none_or(|b| loss < b.0) {
                best = Some((loss, epoch, copy(&vars)?));
            }
        }
        let (val_loss, epoch, [wz, bz, th]) = match best {
            Some((loss, epoch, kept)) => (Some(loss), epoch, kept),
            None => (None, config.probe_epochs, copy(&vars)?),
        };
        // Back to the backbone's coordinates: w·(x − μ)/σ + b_z = (w/σ)·x + (b_z − Σ w μ/σ).
        let w_raw = wz.broadcast_div(&self.std)?;
        let shift = w_raw.broadcast_mul(&self.mean)?.sum(1)?;
        w.set(&w_raw)?;
        b.set(&(bz - shift)?)?;
        thresholds.set(&th)?;
        Ok(Fit { epoch, val_loss, last_epoch_losses })
    }
}

/// Row-wise concatenation (no rows: an empty `(0, hidden)` tensor).
fn cat_rows(parts: Vec<Tensor>, llama: &TrainableLlama) -> Result<Tensor, RewardError> {
    let parts: Vec<Tensor> = parts.into_iter().filter(|t| t.dims()[0] > 0).collect();
    if parts.is_empty() {
        return Ok(Tensor::zeros(
            (0, llama.config.hidden),
            candle_core::DType::F32,
            llama.device(),
        )?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}
