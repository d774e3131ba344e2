//! The boundary scorer: a small MLP (or, with `hidden: 0`, logistic regression) over
//! standardized gap features, trained in candle with a class-weighted logistic loss, saved as
//! safetensors with its configuration in the header's metadata.
//!
//! Its score for a gap is a calibrated log-odds that a boundary lies there: training reweights
//! the rare positives to balance the classes (and reweights subsampled negatives back), and the
//! log of that balancing factor is subtracted again at scoring time, so the segmentation
//! program sums log-odds (the log-likelihood of a boundary set under independent gaps).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::features::FeatureConfig;
use super::LearnedError;

/// The `format` of a model file's metadata.
pub const MODEL_FORMAT: &str = "rrm-boundary-model";
/// Bump on any incompatible change of the file or of the features.
pub const MODEL_VERSION: u32 = 2;
const META_KEY: &str = "rrm";

/// The default boundary model, built into rrm: logistic regression over the default features
/// and the `minilm-l6` encoder, trained on [`DEFAULT_TRAINING_BOOKS`] with the default
/// training settings. Regenerate it (after a feature or format change) with
/// `rrm decomposer train --books alice,paradise-lost,as-you-like-it,botchan --out
/// src/decompose/learned/default_model.safetensors`.
const DEFAULT_MODEL: &[u8] = include_bytes!("default_model.safetensors");

/// The catalog books the built-in default model was trained on (chapters, books, acts and
/// scenes of four public-domain texts of different kinds: a children's novel, an epic poem,
/// a play and a translated novel).
pub const DEFAULT_TRAINING_BOOKS: &[&str] =
    &["alice", "paradise-lost", "as-you-like-it", "botchan"];

/// What a model file records besides its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub format: String,
    pub version: u32,
    pub features: FeatureConfig,
    /// The encoder the features were computed with (its name and weights' hash).
    pub encoder_name: String,
    pub encoder_hash: String,
    pub encoder_dim: usize,
    /// Hidden units (0: logistic regression).
    pub hidden: usize,
    /// Subtracted from the raw logit to undo the class balancing.
    pub prior_shift: f32,
    pub training: TrainSummary,
}

/// How a model was trained (for the record).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub books: Vec<String>,
    pub gaps: usize,
    pub positives: usize,
    pub feedback_examples: usize,
    pub epochs: usize,
    pub final_loss: f32,
    /// Set when the model was then fitted to preferences between segmentations
    /// (`rrm decomposer tune`): the signals, pairs and held-out figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferences: Option<super::prefer::TuneReport>,
}

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub hidden: usize,
    pub epochs: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Negatives kept (a deterministic sample, reweighted); positives are all kept.
    pub max_negatives: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        // Logistic regression: on held-out books it beat a 16-unit MLP (which fit the training
        // books almost perfectly and generalized worse).
        TrainConfig {
            hidden: 0,
            epochs: 300,
            learning_rate: 0.01,
            weight_decay: 0.01,
            max_negatives: 30_000,
            seed: 17,
        }
    }
}

/// Labeled feature rows: `rows` is `labels.len() × dim`, row-major.
#[derive(Debug, Clone, Default)]
pub struct TrainingData {
    pub dim: usize,
    pub rows: Vec<f32>,
    pub labels: Vec<bool>,
    /// Per-row weights (1 for structure, more for people's corrections).
    pub weights: Vec<f32>,
}

impl TrainingData {
    pub fn new(dim: usize) -> TrainingData {
        TrainingData { dim, ..TrainingData::default() }
    }

    pub fn push(&mut self, row: &[f32], label: bool, weight: f32) {
        self.rows.extend_from_slice(row);
        self.labels.push(label);
        self.weights.push(weight);
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A trained boundary scorer.
#[derive(Debug, Clone)]
pub struct BoundaryModel {
    meta: ModelMeta,
    mean: Vec<f32>,
    std: Vec<f32>,
    /// (hidden, dim) and (hidden); absent for logistic regression.
    l1: Option<(Tensor, Tensor)>,
    /// (1, hidden or dim) and (1).
    l2: (Tensor, Tensor),
}

/// SplitMix64, for reproducible initialization and sampling.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

pub(super) fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    // relu(x) + ln(1 + exp(-|x|)), stable for large |x|.
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

impl BoundaryModel {
    /// Trains a model on `data` (see the module docs). Fails when there is no positive or no
    /// negative example.
    pub fn train(
        data: &TrainingData,
        mut meta: ModelMeta,
        config: &TrainConfig,
    ) -> Result<BoundaryModel, LearnedError> {
        let dim = data.dim;
        let positives = data.labels.iter().filter(|&&l| l).count();
        let negatives = data.len() - positives;
        if positives == 0 || negatives == 0 {
            return Err(LearnedError::Training(format!(
                "need both boundary and non-boundary gaps; got {positives} boundaries among {} \
                 gaps (do the training books have chapter headings?)",
                data.len()
            )));
        }
        // Keep every positive and a sample of negatives, reweighted.
        let keep = (config.max_negatives as f32 / negatives as f32).min(1.0);
        let mut rng = Rng(config.seed);
        let mut chosen = Vec::new();
        for i in 0..data.len() {
            if data.labels[i] {
                chosen.push((i, data.weights[i]));
            } else if keep >= 1.0 || rng.uniform() < keep {
                chosen.push((i, data.weights[i] / keep));
            }
        }
        let n = chosen.len();
        let (w_pos, w_neg) = chosen.iter().fold((0f64, 0f64), |(p, q), &(i, w)| {
            if data.labels[i] {
                (p + f64::from(w), q)
            } else {
                (p, q + f64::from(w))
            }
        });
        let balance = (w_neg / w_pos.max(1e-9)).max(1.0);
        // Standardize.
        let mut mean = vec![0f64; dim];
        for &(i, _) in &chosen {
            for (m, x) in mean.iter_mut().zip(&data.rows[i * dim..(i + 1) * dim]) {
                *m += f64::from(*x);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut var = vec![0f64; dim];
        for &(i, _) in &chosen {
            for ((v, m), x) in var.iter_mut().zip(&mean).zip(&data.rows[i * dim..(i + 1) * dim]) {
                *v += (f64::from(*x) - m).powi(2);
            }
        }
        let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let std: Vec<f32> = var.iter().map(|&v| ((v / n as f64).sqrt() as f32).max(1e-3)).collect();
        let mut xs = Vec::with_capacity(n * dim);
        let mut ys = Vec::with_capacity(n);
        let mut ws = Vec::with_capacity(n);
        for &(i, w) in &chosen {
            for d in 0..dim {
                xs.push((data.rows[i * dim + d] - mean[d]) / std[d]);
            }
            ys.push(if data.labels[i] { 1f32 } else { 0.0 });
            ws.push(if data.labels[i] { w * balance as f32 } else { w });
        }
        let device = Device::Cpu;
        let xs = Tensor::from_vec(xs, (n, dim), &device)?;
        let ys = Tensor::from_vec(ys, n, &device)?;
        let total_w: f32 = ws.iter().sum();
        let ws = (Tensor::from_vec(ws, n, &device)? / f64::from(total_w.max(1e-9)))?;

        let hidden = config.hidden;
        let mut init = |rows: usize, cols: usize| -> candle_core::Result<Var> {
            let scale = (1.0 / cols as f32).sqrt();
            let values: Vec<f32> =
                (0..rows * cols).map(|_| (rng.uniform() * 2.0 - 1.0) * scale).collect();
            Var::from_tensor(&Tensor::from_vec(values, (rows, cols), &device)?)
        };
        let l1 = if hidden > 0 {
            Some((
                init(hidden, dim)?,
                Var::from_tensor(&Tensor::zeros(hidden, DType::F32, &device)?)?,
            ))
        } else {
            None
        };
        let l2_in = if hidden > 0 { hidden } else { dim };
        let l2 = (init(1, l2_in)?, Var::from_tensor(&Tensor::zeros(1, DType::F32, &device)?)?);
        let mut vars = vec![l2.0.clone(), l2.1.clone()];
        if let Some((w, b)) = &l1 {
            vars.push(w.clone());
            vars.push(b.clone());
        }
        let mut opt = AdamW::new(
            vars,
            ParamsAdamW {
                lr: config.learning_rate,
                weight_decay: config.weight_decay,
                ..ParamsAdamW::default()
            },
        )?;
        let mut final_loss = f32::NAN;
        for _ in 0..config.epochs {
            let z = forward(
                &xs,
                l1.as_ref().map(|(w, b)| (w.as_tensor(), b.as_tensor())),
                (l2.0.as_tensor(), l2.1.as_tensor()),
            )?;
            let per_row = (softplus(&z)? - (&z * &ys)?)?;
            let loss = (per_row * &ws)?.sum_all()?;
            opt.backward_step(&loss)?;
            final_loss = loss.to_scalar::<f32>()?;
        }
        meta.hidden = hidden;
        meta.prior_shift = balance.ln() as f32;
        meta.training.gaps = data.len();
        meta.training.positives = positives;
        meta.training.epochs = config.epochs;
        meta.training.final_loss = final_loss;
        Ok(BoundaryModel {
            meta,
            mean,
            std,
            l1: l1.map(|(w, b)| (w.as_tensor().clone(), b.as_tensor().clone())),
            l2: (l2.0.as_tensor().clone(), l2.1.as_tensor().clone()),
        })
    }

    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// The segmentation limits `rrm decomposer tune` fitted this model under, when recorded.
    pub fn tuned_limits(&self) -> Option<super::TuneLimits> {
        self.meta.training.preferences.as_ref()?.config.as_ref()?.limits
    }

    /// blake3 of the model's parameters (hex): tells two models apart whose metadata agree.
    pub fn hash(&self) -> Result<String, LearnedError> {
        let mut hasher = blake3::Hasher::new();
        let mut add = |values: &[f32]| {
            for v in values {
                hasher.update(&v.to_le_bytes());
            }
        };
        add(&self.mean);
        add(&self.std);
        let mut tensors = vec![&self.l2.0, &self.l2.1];
        if let Some((w, b)) = &self.l1 {
            tensors.extend([w, b]);
        }
        for t in tensors {
            add(&t.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(hasher.finalize().to_hex().to_string())
    }

    /// The feature standardization (mean, std per column).
    pub(super) fn standardization(&self) -> (&[f32], &[f32]) {
        (&self.mean, &self.std)
    }

    /// The layers' parameters: (hidden weight, bias) if any, and the output (weight, bias).
    #[allow(clippy::type_complexity)]
    pub(super) fn params(&self) -> (Option<(Tensor, Tensor)>, (Tensor, Tensor)) {
        (self.l1.clone(), self.l2.clone())
    }

    /// This model with other parameters of the same shapes and `meta`.
    pub(super) fn with_params(
        &self,
        meta: ModelMeta,
        l1: Option<(Tensor, Tensor)>,
        l2: (Tensor, Tensor),
    ) -> BoundaryModel {
        BoundaryModel { meta, mean: self.mean.clone(), std: self.std.clone(), l1, l2 }
    }

    /// Feature columns this model expects.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Calibrated log-odds of a boundary for each row of `rows` (`n × dim`).
    pub fn score(&self, rows: &[f32]) -> Result<Vec<f32>, LearnedError> {
        let dim = self.dim();
        if dim == 0 || !rows.len().is_multiple_of(dim) {
            return Err(LearnedError::Training(format!(
                "feature rows of {} values do not split into rows of {dim}",
                rows.len()
            )));
        }
        let n = rows.len() / dim;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut xs = Vec::with_capacity(rows.len());
        for row in rows.chunks_exact(dim) {
            xs.extend(row.iter().zip(&self.mean).zip(&self.std).map(|((x, m), s)| (x - m) / s));
        }
        let xs = Tensor::from_vec(xs, (n, dim), &Device::Cpu)?;
        let z = forward(&xs, self.l1.as_ref().map(|(w, b)| (w, b)), (&self.l2.0, &self.l2.1))?;
        let shift = self.meta.prior_shift;
        Ok(z.to_vec1::<f32>()?.into_iter().map(|v| v - shift).collect())
    }

    /// Writes the model as safetensors, with [`ModelMeta`] as JSON in the header.
    pub fn save(&self, path: &Path) -> Result<(), LearnedError> {
        let write_err =
            |reason: String| LearnedError::ModelFile { path: path.to_path_buf(), reason };
        let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = vec![
            ("mean".into(), self.mean.clone(), vec![self.mean.len()]),
            ("std".into(), self.std.clone(), vec![self.std.len()]),
        ];
        let mut add = |name: &str, t: &Tensor| -> Result<(), LearnedError> {
            let shape = t.dims().to_vec();
            tensors.push((name.into(), t.flatten_all()?.to_vec1::<f32>()?, shape));
            Ok(())
        };
        if let Some((w, b)) = &self.l1 {
            add("l1.weight", w)?;
            add("l1.bias", b)?;
        }
        add("l2.weight", &self.l2.0)?;
        add("l2.bias", &self.l2.1)?;
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .into_iter()
            .map(|(name, values, shape)| {
                (name, values.iter().flat_map(|v| v.to_le_bytes()).collect(), shape)
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, data, shape)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| write_err(e.to_string()))?;
        let meta = serde_json::to_string(&self.meta).map_err(|e| write_err(e.to_string()))?;
        let metadata = HashMap::from([(META_KEY.to_string(), meta)]);
        let out =
            safetensors::serialize(views, Some(metadata)).map_err(|e| write_err(e.to_string()))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| write_err(format!("cannot create its folder: {e}")))?;
        }
        // Write beside and rename, so a crash never leaves a truncated model.
        let tmp = path.with_extension("safetensors.tmp");
        std::fs::write(&tmp, out).map_err(|e| write_err(format!("cannot be written: {e}")))?;
        std::fs::rename(&tmp, path).map_err(|e| write_err(format!("cannot be written: {e}")))?;
        Ok(())
    }

    /// The built-in default model (see [`DEFAULT_MODEL`]).
    pub fn built_in() -> Result<BoundaryModel, LearnedError> {
        Self::from_bytes(DEFAULT_MODEL, Path::new("<the built-in default model>"))
    }

    /// Reads a model written by [`BoundaryModel::save`]. A missing, truncated or foreign file
    /// is an error naming it.
    pub fn load(path: &Path) -> Result<BoundaryModel, LearnedError> {
        let bytes = std::fs::read(path).map_err(|e| LearnedError::ModelFile {
            path: path.to_path_buf(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                "not found (train one with `rrm decomposer train --books ... --out PATH`)".into()
            } else {
                format!("cannot be read: {e}")
            },
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a model file's bytes; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<BoundaryModel, LearnedError> {
        let bad = |reason: String| LearnedError::ModelFile { path: PathBuf::from(path), reason };
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
            bad(format!("not a boundary model (safetensors) file, or truncated: {e}"))
        })?;
        let meta_json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| bad("a safetensors file, but not an rrm boundary model".into()))?;
        let meta: ModelMeta = serde_json::from_str(meta_json)
            .map_err(|e| bad(format!("its metadata is malformed: {e}")))?;
        if meta.format != MODEL_FORMAT {
            return Err(bad(format!("format is '{}', expected '{MODEL_FORMAT}'", meta.format)));
        }
        if meta.version != MODEL_VERSION {
            return Err(bad(format!(
                "model version {} (this rrm reads {MODEL_VERSION}); retrain it",
                meta.version
            )));
        }
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("truncated or corrupt: {e}")))?;
        let dim = meta.features.dim(meta.encoder_dim);
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, LearnedError> {
            let view = st.tensor(name).map_err(|_| bad(format!("tensor '{name}' is missing")))?;
            if view.dtype() != safetensors::Dtype::F32 || view.shape() != shape {
                return Err(bad(format!(
                    "tensor '{name}' is {:?} {:?}, expected F32 {shape:?}",
                    view.dtype(),
                    view.shape()
                )));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if values.iter().any(|v| !v.is_finite()) {
                return Err(bad(format!("tensor '{name}' holds non-finite values")));
            }
            Ok(values)
        };
        let device = Device::Cpu;
        let tensor = |values: Vec<f32>, shape: &[usize]| -> Result<Tensor, LearnedError> {
            Ok(Tensor::from_vec(values, shape, &device)?)
        };
        if let Ok(view) = st.tensor("mean") {
            if view.shape() != [dim] {
                return Err(bad(format!(
                    "it has {:?} feature columns where this rrm computes {dim} for its settings \
                     (trained by an rrm with other features, e.g. before `pronoun_after` joined \
                     the prose features); retrain it",
                    view.shape()
                )));
            }
        }
        let mean = get("mean", &[dim])?;
        let std = get("std", &[dim])?;
        if std.iter().any(|&s| s <= 0.0) {
            return Err(bad("tensor 'std' holds non-positive values".into()));
        }
        let h = meta.hidden;
        let l1 = if h > 0 {
            Some((
                tensor(get("l1.weight", &[h, dim])?, &[h, dim])?,
                tensor(get("l1.bias", &[h])?, &[h])?,
            ))
        } else {
            None
        };
        let l2_in = if h > 0 { h } else { dim };
        let l2 = (
            tensor(get("l2.weight", &[1, l2_in])?, &[1, l2_in])?,
            tensor(get("l2.bias", &[1])?, &[1])?,
        );
        Ok(BoundaryModel { meta, mean, std, l1, l2 })
    }
}

/// Logits (n) for standardized rows `xs` (n, dim).
pub(super) fn forward(
    xs: &Tensor,
    l1: Option<(&Tensor, &Tensor)>,
    l2: (&Tensor, &Tensor),
) -> candle_core::Result<Tensor> {
    let h = match l1 {
        Some((w, b)) => xs.matmul(&w.t()?)?.broadcast_add(b)?.relu()?,
        None => xs.clone(),
    };
    h.matmul(&l2.0.t()?)?.broadcast_add(l2.1)?.squeeze(1)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Metadata of a test model over `dim` columns (the prefer tests use it too).
    pub(in crate::decompose::learned) fn meta(dim: usize) -> ModelMeta {
        ModelMeta {
            format: MODEL_FORMAT.into(),
            version: MODEL_VERSION,
            features: FeatureConfig { windows: vec![], sentence_embeddings: true, prose: false },
            encoder_name: "test".into(),
            encoder_hash: "0".into(),
            encoder_dim: dim.saturating_sub(super::super::features::LAYOUT_FEATURES.len()) / 2,
            hidden: 0,
            prior_shift: 0.0,
            training: TrainSummary::default(),
        }
    }

    /// Rows whose first column decides the label.
    fn data() -> TrainingData {
        let dim = super::super::features::LAYOUT_FEATURES.len() + 2;
        let mut d = TrainingData::new(dim);
        let mut rng = Rng(3);
        for i in 0..600 {
            let label = i % 20 == 0;
            let mut row: Vec<f32> = (0..dim).map(|_| rng.uniform()).collect();
            row[0] = if label { 2.0 + rng.uniform() } else { rng.uniform() };
            d.push(&row, label, 1.0);
        }
        d
    }

    #[test]
    fn learns_a_separable_rule_and_round_trips() {
        let d = data();
        for hidden in [0, 8] {
            let config = TrainConfig { hidden, epochs: 200, ..TrainConfig::default() };
            let model = BoundaryModel::train(&d, meta(d.dim), &config).unwrap();
            let scores = model.score(&d.rows).unwrap();
            let lowest_pos = (0..d.len()).filter(|&i| d.labels[i]).map(|i| scores[i]);
            let highest_neg = (0..d.len()).filter(|&i| !d.labels[i]).map(|i| scores[i]);
            let (lo, hi) =
                (lowest_pos.fold(f32::MAX, f32::min), highest_neg.fold(f32::MIN, f32::max));
            assert!(lo > hi, "hidden {hidden}: positives from {lo}, negatives up to {hi}");
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.safetensors");
            model.save(&path).unwrap();
            let loaded = BoundaryModel::load(&path).unwrap();
            assert_eq!(loaded.meta(), model.meta());
            assert_eq!(loaded.score(&d.rows).unwrap(), scores);
        }
    }

    #[test]
    fn bad_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.safetensors");
        let err = BoundaryModel::load(&missing).unwrap_err().to_string();
        assert!(err.contains("none.safetensors") && err.contains("not found"), "{err}");
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"this is not a model").unwrap();
        let err = BoundaryModel::load(&junk).unwrap_err().to_string();
        assert!(err.contains("junk.safetensors"), "{err}");
        // A real model, truncated.
        let d = data();
        let config = TrainConfig { hidden: 0, epochs: 5, ..TrainConfig::default() };
        let model = BoundaryModel::train(&d, meta(d.dim), &config).unwrap();
        let good = dir.path().join("good.safetensors");
        model.save(&good).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
        let err = BoundaryModel::load(&cut).unwrap_err().to_string();
        assert!(err.contains("cut.safetensors") && err.contains("truncated"), "{err}");
        // No positives: a clear training error.
        let mut none = TrainingData::new(2);
        none.push(&[0.0, 1.0], false, 1.0);
        assert!(BoundaryModel::train(&none, meta(d.dim), &config).is_err());
    }
}
