//! Per-level reward models: given a node's input text and a candidate summary, a scalar.
//!
//! - [`features`]: features from the frozen sentence encoder (cached embeddings, long inputs
//!   windowed and pooled).
//! - [`model`]: the MLP heads, an ensemble of `K` per tree height (or one shared ensemble with a
//!   height embedding).
//! - [`train`]: Bradley–Terry training with bootstrap ensembles and early stopping, the split by
//!   book, and the metrics.
//! - [`hybrid`]: grounding features beside either backbone's learned score (`--hybrid`).
//! - [`consensus`]: grounded minimum-Bayes-risk selection, the candidate the node's other
//!   candidates agree with most on what the input supports (no feedback, picks only).
//! - [`support`]: `lm-support`, a language model's support for a summary (how much reading the
//!   input raises its probability), a reward with no feedback beside [`grounded`]'s lexical one.
//! - [`lm`]: the language-model reward model (the trainable llama with a scalar head on the
//!   last token, LoRA by default), its Bradley–Terry training, checkpoints and selector.
//! - [`RewardModel`]: a trained checkpoint (safetensors + a JSON [`Card`]: data used, metrics,
//!   encoder hash) saved under a folder with a `latest` pointer; [`RewardSelector`] plugs it
//!   into the composer through the `Selector` seam, picking by ensemble mean − λ·std.
//!
//! Imports `feedback` (pairs), `infer` (the `Encoder` seam), `store` (the embedding cache) and
//! the `compose` selector seam; never the CLI.

pub mod consensus;
pub mod data;
pub mod eval;
pub mod features;
pub mod grounded;
pub mod hybrid;
pub mod lm;
pub mod model;
pub mod support;
/// Synthetic books and candidates of known quality (the `testing` feature: tests and benches).
#[cfg(any(test, feature = "testing"))]
pub mod synth;
pub mod train;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::compose::select::SelectError;
use crate::compose::{Candidate, CandidateScore, Selector};
use crate::feedback::learn::{Rating, TrainingData};
use crate::feedback::Pair;
use crate::infer::encoder::SharedCache;
use crate::infer::{Encoder, InferError, ModelIdentity};
use features::Featurizer;
use model::{mean_std, Heads, Scope};
use train::{Metrics, PairTensors, RatingTensors, TrainConfig};

/// Version of the checkpoint layout.
pub const FORMAT_VERSION: u32 = 1;
/// The weights file of a checkpoint.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The card of a checkpoint.
pub const CARD_FILE: &str = "card.json";
/// The file in the checkpoints folder naming the newest checkpoint.
pub const LATEST_FILE: &str = "latest";

#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error("no training pairs{0}")]
    NoData(String),
    #[error(transparent)]
    Encoder(#[from] InferError),
    #[error("reward model tensors: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error(
        "the reward model {hash} was trained with encoder {trained}, but the encoder loaded is \
         {loaded}"
    )]
    EncoderMismatch { hash: String, trained: String, loaded: String },
    #[error("the reward model {hash} has no trained head at all (its card lists no heights)")]
    NoHead { hash: String },
    /// The language-model backbone (loading, forward, tokenizer).
    #[error(transparent)]
    Lm(#[from] crate::lm::LmError),
    #[error("{0}")]
    Invalid(String),
    /// A Hugging Face checkpoint that could not be read or converted.
    #[error(transparent)]
    Hf(#[from] Box<crate::infer::hf::HfError>),
}

impl From<crate::infer::hf::HfError> for RewardError {
    fn from(e: crate::infer::hf::HfError) -> Self {
        RewardError::Hf(Box::new(e))
    }
}

/// What a checkpoint was trained on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    pub pairs: usize,
    pub train_pairs: usize,
    pub val_pairs: usize,
    /// Pairs of the test groups (the reported metrics are on these).
    #[serde(default)]
    pub test_pairs: usize,
    pub groups: usize,
    /// The validation groups: they chose each member's epoch.
    pub val_groups: Vec<String>,
    /// The test groups: never seen in training or epoch choice.
    #[serde(default)]
    pub test_groups: Vec<String>,
    pub pairs_by_height: BTreeMap<u32, usize>,
    /// Where the pairs came from (`store`, or a file path).
    pub source: String,
    /// Likert ratings used as ordinal targets.
    #[serde(default)]
    pub ratings: usize,
    /// Pairs per feedback kind (`comparison`, `likert`, …) and `ordinal` for the ratings.
    #[serde(default)]
    pub by_kind: BTreeMap<String, usize>,
}

/// The JSON card stored beside a checkpoint's weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Card {
    pub format: u32,
    /// blake3 of the weights file (hex, first 16 characters): the checkpoint's name.
    pub hash: String,
    pub created_unix: u64,
    pub encoder: ModelIdentity,
    pub encoder_max_tokens: usize,
    pub feature_dim: usize,
    /// `h0`, `h1`, … or `shared`.
    pub scopes: Vec<String>,
    pub config: TrainConfig,
    pub data: DataSummary,
    /// Per height (`h0`, …) and `all`, on the test books (never used for training or for
    /// choosing the epoch); on the training pairs when there is no test book (`held_out` false).
    pub metrics: BTreeMap<String, Metrics>,
    /// The same on the validation books, which chose the epoch (optimistic; for comparison).
    #[serde(default)]
    pub validation_metrics: BTreeMap<String, Metrics>,
    /// The test pairs' report beside the length and reference-overlap baselines, on every pair
    /// and on the length-balanced ones (absent without test books).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<eval::EvalReport>,
    /// Whether `metrics` are on held-out test books (false: on the training pairs, for want of
    /// a second book).
    pub held_out: bool,
    pub epochs: BTreeMap<String, Vec<usize>>,
    pub train_seconds: f64,
    pub featurize_seconds: f64,
    /// A hybrid model's grounding part (`config.hybrid`): the features' version, the fitted
    /// `w` per scope and the epoch each member kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hybrid: Option<hybrid::HybridCard>,
}

/// A trained reward model: the card and the heads.
#[derive(Debug, Clone)]
pub struct RewardModel {
    pub card: Card,
    pub heads: Heads,
}

fn parse_scope(s: &str) -> Option<Scope> {
    if s == "shared" {
        Some(Scope::Shared)
    } else {
        s.strip_prefix('h').and_then(|h| h.parse().ok()).map(Scope::Height)
    }
}

/// Builds feature tensors of `pairs` (their texts must have been prepared).
pub fn pair_tensors(
    featurizer: &Featurizer<'_>,
    pairs: &[&Pair],
) -> Result<PairTensors, RewardError> {
    pair_tensors_as(featurizer, pairs, false)
}

/// The width of a feature row: the encoder's features, then for a hybrid model the grounding
/// features.
fn row_dim(featurizer: &Featurizer<'_>, hybrid: bool) -> usize {
    featurizer.dim() + if hybrid { hybrid::FEATURES } else { 0 }
}

/// [`pair_tensors`]; with `hybrid` every row ends in its grounding features.
pub fn pair_tensors_as(
    featurizer: &Featurizer<'_>,
    pairs: &[&Pair],
    hybrid: bool,
) -> Result<PairTensors, RewardError> {
    let d = row_dim(featurizer, hybrid);
    let mut c = Vec::with_capacity(pairs.len() * d);
    let mut r = Vec::with_capacity(pairs.len() * d);
    for p in pairs {
        c.extend(featurizer.row(&p.input, &p.chosen)?);
        r.extend(featurizer.row(&p.input, &p.rejected)?);
        if hybrid {
            let g = hybrid::features(&p.input, &[&p.chosen, &p.rejected]);
            c.extend(g[0]);
            r.extend(g[1]);
        }
    }
    Ok(PairTensors {
        chosen: Tensor::from_vec(c, (pairs.len(), d), &Device::Cpu)?,
        rejected: Tensor::from_vec(r, (pairs.len(), d), &Device::Cpu)?,
        target: pairs.iter().map(|p| p.target).collect(),
        heights: pairs.iter().map(|p| p.height).collect(),
        weight: pairs.iter().map(|p| p.weight).collect(),
    })
}

/// Builds feature tensors of Likert `ratings` (their texts must have been prepared).
pub fn rating_tensors(
    featurizer: &Featurizer<'_>,
    ratings: &[&Rating],
) -> Result<RatingTensors, RewardError> {
    rating_tensors_as(featurizer, ratings, false)
}

/// [`rating_tensors`]; with `hybrid` every row ends in its grounding features.
pub fn rating_tensors_as(
    featurizer: &Featurizer<'_>,
    ratings: &[&Rating],
    hybrid: bool,
) -> Result<RatingTensors, RewardError> {
    let d = row_dim(featurizer, hybrid);
    let mut x = Vec::with_capacity(ratings.len() * d);
    for r in ratings {
        x.extend(featurizer.row(&r.input, &r.summary)?);
        if hybrid {
            x.extend(hybrid::features(&r.input, &[&r.summary])[0]);
        }
    }
    Ok(RatingTensors {
        x: Tensor::from_vec(x, (ratings.len(), d), &Device::Cpu)?,
        level: ratings.iter().map(|r| u32::from(r.overall.clamp(1, 7)) - 1).collect(),
        heights: ratings.iter().map(|r| r.height).collect(),
        weight: ratings.iter().map(|r| r.weight).collect(),
    })
}

/// Embeds every text of `data` (pairs and ratings).
pub fn prepare_data(
    featurizer: &mut Featurizer<'_>,
    data: &TrainingData,
) -> Result<(), InferError> {
    prepare_pairs(featurizer, &data.pairs)?;
    let mut texts: Vec<&str> = Vec::new();
    let mut seen = BTreeSet::new();
    for r in &data.ratings {
        for t in [&r.input, &r.summary] {
            if seen.insert(t.as_str()) {
                texts.push(t);
            }
        }
    }
    for chunk in texts.chunks(512) {
        featurizer.prepare(chunk)?;
    }
    Ok(())
}

/// Embeds every text of `pairs` (through the store's cache when given).
pub fn prepare_pairs(featurizer: &mut Featurizer<'_>, pairs: &[Pair]) -> Result<(), InferError> {
    let mut texts: Vec<&str> = Vec::new();
    let mut seen = BTreeSet::new();
    for p in pairs {
        for t in [&p.input, &p.chosen, &p.rejected] {
            if seen.insert(t.as_str()) {
                texts.push(t);
            }
        }
    }
    // Bounded chunks keep memory flat and make the cache durable in steps.
    for chunk in texts.chunks(512) {
        featurizer.prepare(chunk)?;
    }
    Ok(())
}

impl RewardModel {
    /// Trains on `pairs` (already filtered to the heights wanted): split by group, one ensemble
    /// per height (or shared), metrics per height on the held-out groups.
    pub fn train(
        encoder: &dyn Encoder,
        cache: Option<SharedCache>,
        pairs: &[Pair],
        config: &TrainConfig,
        source: &str,
    ) -> Result<RewardModel, RewardError> {
        let data = TrainingData { pairs: pairs.to_vec(), ratings: Vec::new() };
        Self::train_data(encoder, cache, &data, config, source)
    }

    /// Trains on pairs and Likert ratings ([`crate::feedback::learn::build`]): the pairs'
    /// Bradley–Terry loss plus the ratings' ordinal loss, split by group.
    pub fn train_data(
        encoder: &dyn Encoder,
        cache: Option<SharedCache>,
        data: &TrainingData,
        config: &TrainConfig,
        source: &str,
    ) -> Result<RewardModel, RewardError> {
        if data.pairs.is_empty() && data.ratings.is_empty() {
            return Err(RewardError::NoData(String::new()));
        }
        let t0 = Instant::now();
        let mut featurizer = Featurizer::new(encoder, cache);
        prepare_data(&mut featurizer, data)?;
        let featurize_seconds = t0.elapsed().as_secs_f64();
        Self::train_prepared_data(&featurizer, encoder, data, config, source, featurize_seconds)
    }

    /// [`RewardModel::train`] with every text already embedded in `featurizer`.
    pub fn train_prepared(
        featurizer: &Featurizer<'_>,
        encoder: &dyn Encoder,
        pairs: &[Pair],
        config: &TrainConfig,
        source: &str,
        featurize_seconds: f64,
    ) -> Result<RewardModel, RewardError> {
        let data = TrainingData { pairs: pairs.to_vec(), ratings: Vec::new() };
        Self::train_prepared_data(featurizer, encoder, &data, config, source, featurize_seconds)
    }

    /// [`RewardModel::train_data`] with every text already embedded in `featurizer`.
    pub fn train_prepared_data(
        featurizer: &Featurizer<'_>,
        encoder: &dyn Encoder,
        data: &TrainingData,
        config: &TrainConfig,
        source: &str,
        featurize_seconds: f64,
    ) -> Result<RewardModel, RewardError> {
        train::check_label_smoothing(config.label_smoothing).map_err(RewardError::Invalid)?;
        let t0 = Instant::now();
        let pairs = &data.pairs;
        let hy = config.hybrid;
        let mut hybrid_card = hy.then(hybrid::HybridCard::new);
        let (val_groups, test_groups) = train::split_group_names(
            pairs
                .iter()
                .map(|p| p.group.as_str())
                .chain(data.ratings.iter().map(|r| r.group.as_str())),
            config.val_percent,
            config.test_percent,
        );
        let in_train = |g: &String| !test_groups.contains(g) && !val_groups.contains(g);
        let train_ratings: Vec<&Rating> =
            data.ratings.iter().filter(|r| in_train(&r.group)).collect();
        let val_ratings: Vec<&Rating> = data
            .ratings
            .iter()
            .filter(|r| config.val_kinds.ordinal && val_groups.contains(&r.group))
            .collect();
        let test: Vec<&Pair> = pairs.iter().filter(|p| test_groups.contains(&p.group)).collect();
        let val: Vec<&Pair> = train::keep_val_kinds(
            pairs.iter().filter(|p| val_groups.contains(&p.group)).collect(),
            &config.val_kinds,
            |p| p.origin,
        )?;
        let train: Vec<&Pair> = pairs
            .iter()
            .filter(|p| !test_groups.contains(&p.group) && !val_groups.contains(&p.group))
            .collect();
        if train.is_empty() && train_ratings.is_empty() {
            return Err(RewardError::NoData(" outside the held-out books".into()));
        }
        let heights: BTreeSet<u32> =
            pairs.iter().map(|p| p.height).chain(data.ratings.iter().map(|r| r.height)).collect();
        let scopes: Vec<Scope> = if config.shared {
            vec![Scope::Shared]
        } else {
            heights.iter().map(|&h| Scope::Height(h)).collect()
        };
        let dim = featurizer.dim();
        let mut heads = Heads::default();
        let mut epochs = BTreeMap::new();
        for &scope in &scopes {
            let in_scope = |p: &&&Pair| match scope {
                Scope::Shared => true,
                Scope::Height(h) => p.height == h,
            };
            let rated = |r: &&&Rating| match scope {
                Scope::Shared => true,
                Scope::Height(h) => r.height == h,
            };
            let tr: Vec<&Pair> = train.iter().filter(in_scope).copied().collect();
            let va: Vec<&Pair> = val.iter().filter(in_scope).copied().collect();
            let trr: Vec<&Rating> = train_ratings.iter().filter(rated).copied().collect();
            let var: Vec<&Rating> = val_ratings.iter().filter(rated).copied().collect();
            if tr.is_empty() && trr.is_empty() {
                tracing::warn!("height scope {} has no training pairs; skipped", scope.name());
                continue;
            }
            let tr = pair_tensors_as(featurizer, &tr, hy)?;
            let va = if va.is_empty() { None } else { Some(pair_tensors_as(featurizer, &va, hy)?) };
            let trr =
                if trr.is_empty() { None } else { Some(rating_tensors_as(featurizer, &trr, hy)?) };
            let var =
                if var.is_empty() { None } else { Some(rating_tensors_as(featurizer, &var, hy)?) };
            let trained = train::train_ensemble_full(
                &tr,
                trr.as_ref(),
                va.as_ref(),
                var.as_ref(),
                dim,
                scope,
                config,
            )?;
            if let (Some(card), Some(w)) = (hybrid_card.as_mut(), trained.fitted) {
                card.fitted.insert(scope.name(), w);
                card.best_step.insert(scope.name(), trained.best_epoch);
            }
            heads.by_scope.insert(scope, trained.heads);
            epochs.insert(scope.name(), trained.epochs);
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        let held_out = !test.is_empty();
        let metrics_on = |set: &[&Pair]| -> Result<BTreeMap<String, Metrics>, RewardError> {
            let mut out = BTreeMap::new();
            if set.is_empty() {
                return Ok(out);
            }
            for &h in &heights {
                let at: Vec<&Pair> = set.iter().filter(|p| p.height == h).copied().collect();
                if !at.is_empty() && heads.for_height(h).is_some() {
                    out.insert(
                        format!("h{h}"),
                        train::evaluate(&heads, &pair_tensors_as(featurizer, &at, hy)?)?,
                    );
                }
            }
            out.insert(
                "all".into(),
                train::evaluate(&heads, &pair_tensors_as(featurizer, set, hy)?)?,
            );
            Ok(out)
        };
        let metrics = if held_out { metrics_on(&test)? } else { metrics_on(&train)? };
        let report = if held_out {
            let margins =
                train::ensemble_margins(&heads, &pair_tensors_as(featurizer, &test, hy)?)?;
            Some(eval::report(&margins, &test))
        } else {
            None
        };
        let validation_metrics = metrics_on(&val)?;
        let mut pairs_by_height = BTreeMap::new();
        for p in pairs {
            *pairs_by_height.entry(p.height).or_default() += 1;
        }
        let groups: BTreeSet<&str> = pairs.iter().map(|p| p.group.as_str()).collect();
        let card = Card {
            format: FORMAT_VERSION,
            hash: String::new(),
            created_unix: crate::feedback::unix_now(),
            encoder: encoder.identity().clone(),
            encoder_max_tokens: encoder.max_tokens(),
            feature_dim: dim,
            scopes: heads.by_scope.keys().map(|s| s.name()).collect(),
            config: config.clone(),
            data: DataSummary {
                pairs: pairs.len(),
                train_pairs: train.len(),
                val_pairs: val.len(),
                test_pairs: test.len(),
                groups: groups.len(),
                val_groups: val_groups.into_iter().collect(),
                test_groups: test_groups.into_iter().collect(),
                pairs_by_height,
                source: source.to_string(),
                ratings: data.ratings.len(),
                by_kind: data.counts(),
            },
            metrics,
            report,
            validation_metrics,
            held_out,
            epochs,
            train_seconds,
            featurize_seconds,
            hybrid: hybrid_card,
        };
        Ok(RewardModel { card, heads })
    }

    /// Saves under `dir/<hash>/` and points `dir/latest` at it. Returns the checkpoint folder.
    pub fn save(&mut self, dir: &Path) -> Result<PathBuf, RewardError> {
        let heads = &self.heads;
        let card = &mut self.card;
        publish_checkpoint(
            dir,
            WEIGHTS_FILE,
            |weights| Ok(candle_core::safetensors::save(&heads.to_tensors(), weights)?),
            |hash| {
                card.hash = hash.to_string();
                serde_json::to_vec_pretty(&*card)
            },
        )
    }

    /// Resolves `spec`: `latest` (in `dir`), a checkpoint hash in `dir`, or a checkpoint folder.
    pub fn resolve(spec: &str, dir: &Path) -> Result<PathBuf, RewardError> {
        let path = if spec == "latest" {
            let latest = dir.join(LATEST_FILE);
            let name = std::fs::read_to_string(&latest).map_err(|_| RewardError::File {
                path: latest.clone(),
                reason: "no reward model trained yet (run `rrm reward train`)".into(),
            })?;
            dir.join(name.trim())
        } else if Path::new(spec).join(CARD_FILE).exists() {
            PathBuf::from(spec)
        } else {
            dir.join(spec)
        };
        if !path.join(CARD_FILE).exists() {
            return Err(RewardError::File {
                path,
                reason: format!("not a reward checkpoint (no {CARD_FILE})"),
            });
        }
        Ok(path)
    }

    /// Loads a checkpoint folder.
    pub fn load(path: &Path) -> Result<RewardModel, RewardError> {
        let card_path = path.join(CARD_FILE);
        let bad = |p: &Path, reason: String| RewardError::File { path: p.to_path_buf(), reason };
        let text = std::fs::read(&card_path).map_err(|e| bad(&card_path, e.to_string()))?;
        let card: Card = serde_json::from_slice(&text)
            .map_err(|e| bad(&card_path, format!("not a reward model card: {e}")))?;
        if card.format != FORMAT_VERSION {
            return Err(bad(&card_path, format!("unknown checkpoint format {}", card.format)));
        }
        let weights = path.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&weights).map_err(|e| bad(&weights, e.to_string()))?;
        if blake3::hash(&bytes).to_hex()[..16] != card.hash {
            return Err(bad(
                &weights,
                "does not match the card's hash (corrupt or replaced)".into(),
            ));
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let scopes: Vec<Scope> = card
            .scopes
            .iter()
            .map(|s| parse_scope(s).ok_or_else(|| bad(&card_path, format!("unknown scope {s}"))))
            .collect::<Result<_, _>>()?;
        let heads = Heads::from_tensors(&tensors, &scopes, card.config.members.max(1))
            .map_err(|e| bad(&weights, e))?;
        check_hybrid(&card, &heads).map_err(|e| bad(&weights, e))?;
        Ok(RewardModel { card, heads })
    }

    /// Whether the heads score `learned + wᵀ·g` (their rows end in the grounding features).
    pub fn is_hybrid(&self) -> bool {
        self.card.config.hybrid
    }

    /// Checks that `encoder` is the one this model was trained with.
    pub fn check_encoder(&self, encoder: &dyn Encoder) -> Result<(), RewardError> {
        if encoder.identity().hash != self.card.encoder.hash {
            return Err(RewardError::EncoderMismatch {
                hash: self.card.hash.clone(),
                trained: self.card.encoder.name.clone(),
                loaded: encoder.identity().name.clone(),
            });
        }
        Ok(())
    }

    /// The head scope that scores nodes of `height`: the shared one, that height's own, or —
    /// said in the log, since it was never trained on that height — the nearest trained height's.
    pub fn scope_for(&self, height: u32) -> Result<Scope, RewardError> {
        let (scope, _) = self
            .heads
            .for_height(height)
            .ok_or_else(|| RewardError::NoHead { hash: self.card.hash.clone() })?;
        if let Scope::Height(h) = scope {
            // Once per model and height: best-of-N asks for every node of the height.
            static WARNED: std::sync::Mutex<BTreeSet<(String, u32)>> =
                std::sync::Mutex::new(BTreeSet::new());
            let first = |hash: &str| {
                WARNED.lock().map(|mut w| w.insert((hash.to_string(), height))).unwrap_or(true)
            };
            if h != height && first(&self.card.hash) {
                tracing::warn!(
                    "reward model {} has no head for height {height}; scoring with the head of \
                     the nearest trained height {h}",
                    self.card.hash
                );
            }
        }
        Ok(scope)
    }

    /// Per-member scores (K × n) of `summaries` of `input` at `height`: exactly one score per
    /// member and summary, or an error.
    pub fn member_scores(
        &self,
        featurizer: &mut Featurizer<'_>,
        height: u32,
        input: &str,
        summaries: &[&str],
    ) -> Result<Vec<Vec<f32>>, RewardError> {
        if summaries.is_empty() {
            return Ok(Vec::new());
        }
        self.scope_for(height)?;
        let mut texts = vec![input];
        texts.extend_from_slice(summaries);
        featurizer.prepare(&texts)?;
        let hy = self.is_hybrid();
        let d = row_dim(featurizer, hy);
        let grounding = if hy { hybrid::features(input, summaries) } else { Vec::new() };
        let mut rows: Vec<f32> = Vec::with_capacity(summaries.len() * d);
        for (i, s) in summaries.iter().enumerate() {
            rows.extend(featurizer.row(input, s)?);
            rows.extend(grounding.get(i).into_iter().flatten());
        }
        let x = Tensor::from_vec(rows, (summaries.len(), d), &Device::Cpu)?;
        let scores = self
            .heads
            .scores(&x, height)?
            .ok_or_else(|| RewardError::NoHead { hash: self.card.hash.clone() })?;
        if scores.is_empty() || scores.iter().any(|m| m.len() != summaries.len()) {
            return Err(RewardError::File {
                path: PathBuf::from(&self.card.hash),
                reason: format!(
                    "the ensemble gave {} member(s) with {:?} scores for {} summaries",
                    scores.len(),
                    scores.iter().map(Vec::len).collect::<Vec<_>>(),
                    summaries.len()
                ),
            });
        }
        Ok(scores)
    }

    /// The ensemble-mean margin (chosen − rejected) of every pair, embedding what is needed.
    pub fn margins(
        &self,
        featurizer: &mut Featurizer<'_>,
        pairs: &[Pair],
    ) -> Result<Vec<f32>, RewardError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        prepare_pairs(featurizer, pairs)?;
        for h in pairs.iter().map(|p| p.height).collect::<BTreeSet<u32>>() {
            self.scope_for(h)?;
        }
        let all: Vec<&Pair> = pairs.iter().collect();
        Ok(train::ensemble_margins(
            &self.heads,
            &pair_tensors_as(featurizer, &all, self.is_hybrid())?,
        )?)
    }

    /// Evaluates on pairs (embedding what is needed).
    pub fn evaluate(
        &self,
        featurizer: &mut Featurizer<'_>,
        pairs: &[Pair],
    ) -> Result<BTreeMap<String, Metrics>, RewardError> {
        prepare_pairs(featurizer, pairs)?;
        let heights: BTreeSet<u32> = pairs.iter().map(|p| p.height).collect();
        let mut out = BTreeMap::new();
        for h in heights {
            // Says in the log when a height has no head of its own and a nearer one scores it.
            self.scope_for(h)?;
            let at: Vec<&Pair> = pairs.iter().filter(|p| p.height == h).collect();
            out.insert(
                format!("h{h}"),
                train::evaluate(&self.heads, &pair_tensors_as(featurizer, &at, self.is_hybrid())?)?,
            );
        }
        let all: Vec<&Pair> = pairs.iter().collect();
        out.insert(
            "all".into(),
            train::evaluate(&self.heads, &pair_tensors_as(featurizer, &all, self.is_hybrid())?)?,
        );
        Ok(out)
    }
}

/// Whether the card and the heads agree on being hybrid, and the card's features are the ones
/// this build computes.
fn check_hybrid(card: &Card, heads: &Heads) -> Result<(), String> {
    let hybrid = card.config.hybrid;
    match (heads.hybrid(), &card.hybrid) {
        (Some(h), _) if h != hybrid => {
            return Err(format!(
                "the card says the model is {}hybrid, its heads {} grounding weights",
                if hybrid { "" } else { "not " },
                if h { "have" } else { "have no" }
            ))
        }
        (None, _) => return Err("some heads have grounding weights and some do not".into()),
        (_, None) if hybrid => {
            return Err("the card says the model is hybrid but records no features".into())
        }
        _ => {}
    }
    if let Some(h) = &card.hybrid {
        h.check()?;
    }
    for head in heads.by_scope.values().flatten() {
        if let Some(g) = &head.grounding {
            if g.as_tensor().dims() != [hybrid::FEATURES] {
                return Err(format!(
                    "grounding weights of shape {:?}, expected [{}]",
                    g.as_tensor().dims(),
                    hybrid::FEATURES
                ));
            }
        }
    }
    Ok(())
}

/// How much the ensemble members disagree about candidate `i` against `j`: the standard
/// deviation over members of the score difference (`per_member`: K × n scores).
pub fn pair_disagreement(per_member: &[Vec<f32>], i: usize, j: usize) -> f64 {
    crate::compose::select::spread_of_differences(
        per_member.iter().filter_map(|s| Some(f64::from(*s.get(i)? - *s.get(j)?))),
    )
    .unwrap_or(0.0)
}

/// The reward ensemble as a [`Selector`]: score = mean − λ·std over the ensemble's members, each
/// centred over the node's candidates ([`ensemble_scores`]); the parts record `mean` and `std`.
pub struct RewardSelector {
    model: Arc<RewardModel>,
    encoder: Arc<dyn Encoder>,
    cache: Option<SharedCache>,
    pessimism: f32,
}

impl RewardSelector {
    pub fn new(
        model: Arc<RewardModel>,
        encoder: Arc<dyn Encoder>,
        cache: Option<SharedCache>,
        pessimism: f32,
    ) -> Result<RewardSelector, RewardError> {
        model.check_encoder(encoder.as_ref())?;
        Ok(RewardSelector { model, encoder, cache, pessimism })
    }

    /// Mean and std of each summary of `input`.
    pub fn mean_std(
        &self,
        height: u32,
        input: &str,
        summaries: &[&str],
    ) -> Result<Vec<(f32, f32)>, RewardError> {
        Ok(mean_std(&self.member_scores(height, input, summaries)?))
    }

    /// Per-member scores (K × n) of `summaries` of `input`.
    pub fn member_scores(
        &self,
        height: u32,
        input: &str,
        summaries: &[&str],
    ) -> Result<Vec<Vec<f32>>, RewardError> {
        let mut featurizer = Featurizer::new(self.encoder.as_ref(), self.cache.clone());
        self.model.member_scores(&mut featurizer, height, input, summaries)
    }
}

impl Selector for RewardSelector {
    fn id(&self) -> String {
        // `centred`: picks made before members were centred are not reused.
        format!("reward:{}:lambda={}:centred", self.model.card.hash, self.pessimism)
    }

    fn score(
        &self,
        height: u32,
        input: &str,
        candidates: &[Candidate],
    ) -> Result<Vec<CandidateScore>, SelectError> {
        let texts: Vec<&str> = candidates.iter().map(|c| c.text.as_str()).collect();
        let members = self
            .member_scores(height, input, &texts)
            .map_err(|e| SelectError { selector: self.id(), message: e.to_string() })?;
        Ok(ensemble_scores(&members, self.pessimism))
    }
}

/// A reward ensemble's selection score per candidate of one node (`per_member`: K × n).
///
/// Bradley–Terry fixes each member's scores only up to an offset of its own (the loss sees
/// differences; the final bias gets no gradient), so raw member scores disagree by offsets that
/// say nothing about the candidates. Each member is therefore centred over the node's candidates
/// first. `score` = mean − λ·std of the centred scores; the parts keep `mean` and `std`, and
/// `members` the centred scores, from which the spread of any pair's difference follows
/// ([`crate::compose::select::pair_spread`]). A single candidate gets 0 from every member.
pub fn ensemble_scores(per_member: &[Vec<f32>], pessimism: f32) -> Vec<CandidateScore> {
    let centred: Vec<Vec<f32>> = per_member
        .iter()
        .map(|m| {
            let centre = m.iter().sum::<f32>() / m.len().max(1) as f32;
            m.iter().map(|x| x - centre).collect()
        })
        .collect();
    mean_std(&centred)
        .into_iter()
        .enumerate()
        .map(|(i, (mean, std))| {
            let mut s = CandidateScore::new(mean - pessimism * std);
            s.parts.insert("mean".into(), mean);
            s.parts.insert("std".into(), std);
            s.members = centred.iter().map(|m| m[i]).collect();
            s
        })
        .collect()
}

/// Writes a checkpoint atomically: the weights (`write_weights` into `weights_name`) and the card
/// (`card_json`, given the weights' hash: the first 16 hex digits of their blake3) into a
/// temporary folder in `dir`, renamed to `dir/<hash>/`, then `dir/latest` pointed at it. A kill
/// at any point leaves the previous `latest` whole. Returns the checkpoint folder.
pub(crate) fn publish_checkpoint(
    dir: &Path,
    weights_name: &str,
    write_weights: impl FnOnce(&Path) -> Result<(), RewardError>,
    card_json: impl FnOnce(&str) -> Result<Vec<u8>, serde_json::Error>,
) -> Result<PathBuf, RewardError> {
    let file_err = |path: &Path, e: &dyn std::fmt::Display| RewardError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, &e))?;
    let tmp =
        tempfile::Builder::new().prefix(".ckpt-").tempdir_in(dir).map_err(|e| file_err(dir, &e))?;
    let weights = tmp.path().join(weights_name);
    write_weights(&weights)?;
    let bytes = std::fs::read(&weights).map_err(|e| file_err(&weights, &e))?;
    let hash = blake3::hash(&bytes).to_hex()[..16].to_string();
    let card = card_json(&hash).map_err(|e| file_err(dir, &e))?;
    std::fs::write(tmp.path().join(CARD_FILE), card).map_err(|e| file_err(dir, &e))?;
    let target = dir.join(&hash);
    if target.join(CARD_FILE).is_file() && target.join(weights_name).is_file() {
        // The same weights are already published whole (the folder is named by their hash):
        // keep that folder. Deleting and replacing it would leave a window in which a kill
        // leaves `latest` naming a half-deleted checkpoint (found by the kill test: retraining
        // on the same data gives the same weights).
        drop(tmp);
    } else {
        if target.exists() {
            // An incomplete folder of this hash (a kill mid-publish before this change): move
            // it aside in one rename, then delete it.
            let stale = dir.join(format!(".stale-{hash}-{}", std::process::id()));
            std::fs::rename(&target, &stale).map_err(|e| file_err(&target, &e))?;
            std::fs::remove_dir_all(&stale).map_err(|e| file_err(&stale, &e))?;
        }
        let kept = tmp.keep();
        std::fs::rename(&kept, &target).map_err(|e| file_err(&target, &e))?;
    }
    let latest = dir.join(LATEST_FILE);
    let tmp_latest = dir.join(".latest.tmp");
    std::fs::write(&tmp_latest, format!("{hash}\n")).map_err(|e| file_err(&tmp_latest, &e))?;
    std::fs::rename(&tmp_latest, &latest).map_err(|e| file_err(&latest, &e))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::sim::{self, SimLabeler};
    use crate::feedback::{self, Feedback};
    use crate::infer::testing::BowEncoder;

    /// Simulated comparisons on synthetic books (one group per book).
    fn pairs(books: usize) -> Vec<Pair> {
        let nodes = synth::corpus(3, books, 3, 1, 4);
        let labeler = SimLabeler::new("sim", 0.0);
        let mut rng = sim::rng(5);
        let mut records = Vec::new();
        for n in &nodes {
            for i in 0..n.candidates.len() {
                for j in i + 1..n.candidates.len() {
                    let kind =
                        labeler.compare(&n.input, &n.candidates[i], &n.candidates[j], &mut rng);
                    records.push(
                        Feedback::new(
                            "sim",
                            &feedback::text_hash(&n.input),
                            &n.input,
                            n.height,
                            kind,
                        )
                        .at(Some(n.book.clone()), None),
                    );
                }
            }
        }
        feedback::to_pairs(&records)
    }

    #[test]
    fn publishing_the_same_weights_again_keeps_the_whole_checkpoint_and_repairs_a_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        let publish = |card: &'static str| {
            publish_checkpoint(
                dir.path(),
                "w.bin",
                |p| {
                    std::fs::write(p, b"weights").map_err(|e| RewardError::File {
                        path: p.to_path_buf(),
                        reason: e.to_string(),
                    })
                },
                move |_| Ok(card.as_bytes().to_vec()),
            )
            .unwrap()
        };
        let first = publish("first");
        let second = publish("second");
        assert_eq!(first, second);
        // Content-addressed: the whole folder stays as it was.
        assert_eq!(std::fs::read_to_string(first.join(CARD_FILE)).unwrap(), "first");
        // A folder left without its card (a kill mid-delete) is replaced whole.
        std::fs::remove_file(first.join(CARD_FILE)).unwrap();
        let third = publish("third");
        assert_eq!(std::fs::read_to_string(third.join(CARD_FILE)).unwrap(), "third");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn member_offsets_do_not_count_as_disagreement() {
        // Two members that rank three candidates identically but sit 5 apart: before centring
        // each candidate's std was 2.5 and pessimism subtracted pure offset noise.
        let s = ensemble_scores(&[vec![0.0, 1.0, 2.0], vec![5.0, 6.0, 7.0]], 1.0);
        for c in &s {
            assert!(c.parts["std"].abs() < 1e-6, "{c:?}");
            assert_eq!(c.members.len(), 2);
        }
        assert!(s[2].score > s[1].score && s[1].score > s[0].score);
        // Real disagreement stays: the members swap candidates 0 and 1.
        let s = ensemble_scores(&[vec![0.0, 1.0], vec![1.0, 0.0]], 1.0);
        assert!(s[0].parts["std"] > 0.4);
    }

    #[test]
    fn reported_metrics_are_on_test_books_never_used_to_choose_the_epoch() {
        let encoder = BowEncoder::new();
        let pairs = pairs(8);
        let config = TrainConfig { members: 2, max_epochs: 5, ..TrainConfig::default() };
        let model = RewardModel::train(&encoder, None, &pairs, &config, "test").unwrap();
        let data = &model.card.data;
        assert!(!data.test_groups.is_empty() && !data.val_groups.is_empty(), "{data:?}");
        let test: BTreeSet<&String> = data.test_groups.iter().collect();
        assert!(data.val_groups.iter().all(|g| !test.contains(g)), "validation and test overlap");
        assert!(model.card.held_out);
        assert_eq!(model.card.metrics["all"].pairs, data.test_pairs);
        assert_eq!(model.card.validation_metrics["all"].pairs, data.val_pairs);
        assert_eq!(data.train_pairs + data.val_pairs + data.test_pairs, pairs.len());
    }

    #[test]
    fn a_model_without_heads_is_an_error_not_silence() {
        let encoder = BowEncoder::new();
        let config = TrainConfig { members: 1, max_epochs: 2, ..TrainConfig::default() };
        let mut model = RewardModel::train(&encoder, None, &pairs(3), &config, "test").unwrap();
        model.heads.by_scope.clear();
        let mut featurizer = Featurizer::new(&encoder, None);
        let err = model.member_scores(&mut featurizer, 0, "input text", &["a", "b"]).unwrap_err();
        assert!(matches!(err, RewardError::NoHead { .. }), "{err}");
    }

    #[test]
    fn features_of_a_text_never_embedded_are_an_error_not_zeros() {
        let encoder = BowEncoder::new();
        let mut featurizer = Featurizer::new(&encoder, None);
        featurizer.prepare(&["the input passage"]).unwrap();
        assert!(featurizer.row("the input passage", "never embedded").is_err());
        featurizer.prepare(&["never embedded"]).unwrap();
        assert!(featurizer.row("the input passage", "never embedded").is_ok());
    }
    #[test]
    fn likert_ratings_alone_train_through_the_ordinal_loss_and_the_card_reports_baselines() {
        use crate::feedback::learn::Rating;
        let encoder = BowEncoder::new();
        // Summaries about the input's topic are rated high, off-topic ones low.
        let mut ratings = Vec::new();
        for book in 0..10 {
            let input = format!("the miller {book} watched the river flood the old mill {book}");
            for (k, (text, overall)) in [
                (format!("the mill flooded and the miller {book} watched"), 7u8),
                (format!("the river rose over the mill of miller {book}"), 6),
                (format!("ships sailed to distant islands {book}"), 2),
                (format!("a cat slept on a warm roof {book}"), 1),
            ]
            .into_iter()
            .enumerate()
            {
                ratings.push(Rating {
                    height: 0,
                    input: input.clone(),
                    summary: text,
                    overall,
                    labeler: format!("l{k}"),
                    group: format!("book:b{book}"),
                    weight: 1.0,
                });
            }
        }
        let data = TrainingData { pairs: Vec::new(), ratings };
        let config = TrainConfig { members: 1, max_epochs: 60, ..TrainConfig::default() };
        let model = RewardModel::train_data(&encoder, None, &data, &config, "test").unwrap();
        assert_eq!(model.card.data.ratings, 40);
        assert_eq!(model.card.data.by_kind["ordinal"], 40);
        let mut featurizer = Featurizer::new(&encoder, None);
        let input = "the miller 3 watched the river flood the old mill 3";
        let s = model
            .member_scores(
                &mut featurizer,
                0,
                input,
                &["the mill flooded and the miller 3 watched", "a cat slept on a warm roof 3"],
            )
            .unwrap();
        assert!(s[0][0] > s[0][1], "{s:?}");

        // With pairs and test books, the card carries the report beside the baselines.
        let config = TrainConfig { members: 1, max_epochs: 5, ..TrainConfig::default() };
        let model = RewardModel::train(&encoder, None, &pairs(8), &config, "test").unwrap();
        let report = model.card.report.as_ref().expect("a report on the test pairs");
        assert_eq!(report.all.model.pairs, model.card.data.test_pairs);
        assert!((0.0..=1.0).contains(&report.all.length_accuracy));
    }

    /// The features-only model's margin of a pair: `wᵀ·(g(chosen) − g(rejected))`, with the
    /// `w` fitted for the pair's height.
    fn features_margin(card: &hybrid::HybridCard, p: &Pair) -> f32 {
        let w = &card.fitted[&format!("h{}", p.height)];
        let g = hybrid::features(&p.input, &[&p.chosen, &p.rejected]);
        hybrid::dot(w, &g[0]) - hybrid::dot(w, &g[1])
    }

    #[test]
    fn hybrid_step_zero_is_the_features_only_model() {
        let encoder = BowEncoder::new();
        let pairs = pairs(4);
        // No epochs: every member is its step 0.
        let config = TrainConfig {
            members: 2,
            max_epochs: 0,
            val_percent: 0,
            test_percent: 0,
            hybrid: true,
            ..TrainConfig::default()
        };
        let model = RewardModel::train(&encoder, None, &pairs, &config, "test").unwrap();
        let card = model.card.hybrid.as_ref().expect("a hybrid card");
        assert_eq!(card.features, hybrid::VERSION);
        let w = &card.fitted["h0"];
        // The fitted w is the logistic regression on the training pairs' feature differences.
        let leaves: Vec<&Pair> = pairs.iter().filter(|p| p.height == 0).collect();
        let diffs: Vec<hybrid::Row> = leaves
            .iter()
            .map(|p| {
                let g = hybrid::features(&p.input, &[&p.chosen, &p.rejected]);
                std::array::from_fn(|k| g[0][k] - g[1][k])
            })
            .collect();
        let targets: Vec<f32> = leaves.iter().map(|p| p.target).collect();
        let weights: Vec<f32> = leaves.iter().map(|p| p.weight).collect();
        let direct = hybrid::fit(&diffs, &targets, &weights);
        for (a, b) in w.iter().zip(direct) {
            assert!((a - b).abs() < 1e-4, "{w:?} vs {direct:?}");
        }
        assert!(w.iter().any(|&x| x != 0.0), "{w:?}");
        // Every member scores every summary exactly wᵀ·g.
        let p = leaves[0];
        let texts = [p.chosen.as_str(), p.rejected.as_str(), "an unrelated sentence"];
        let mut featurizer = Featurizer::new(&encoder, None);
        let s = model.member_scores(&mut featurizer, 0, &p.input, &texts).unwrap();
        let g = hybrid::features(&p.input, &texts);
        assert_eq!(s.len(), 2);
        for member in &s {
            for (score, g) in member.iter().zip(&g) {
                assert!((score - hybrid::dot(w, g)).abs() < 1e-5, "{member:?} vs {g:?}");
            }
        }
        let margins = model.margins(&mut featurizer, &pairs).unwrap();
        for (m, p) in margins.iter().zip(&pairs) {
            assert!((m - features_margin(card, p)).abs() < 1e-4);
        }
    }

    #[test]
    fn hybrid_validation_is_never_above_its_features_and_save_load_keeps_the_scores() {
        let encoder = BowEncoder::new();
        let pairs = pairs(8);
        let config =
            TrainConfig { members: 3, max_epochs: 15, hybrid: true, ..TrainConfig::default() };
        let mut model = RewardModel::train(&encoder, None, &pairs, &config, "test").unwrap();
        let data = model.card.data.clone();
        assert!(!data.val_groups.is_empty());
        let hy = model.card.hybrid.clone().unwrap();
        assert_eq!(hy.best_step["h0"].len(), 3);
        // On the validation pairs the ensemble's weighted loss is at most the features' (each
        // member kept a step no worse than step 0; the mean margin, by convexity, no worse).
        let val: Vec<Pair> =
            pairs.iter().filter(|p| data.val_groups.contains(&p.group)).cloned().collect();
        let loss = |margins: &[f32]| -> f64 {
            let (mut total, mut weight) = (0.0, 0.0);
            for (d, p) in margins.iter().zip(&val) {
                let (d, t, wt) = (f64::from(*d), f64::from(p.target), f64::from(p.weight));
                let sp = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
                total += wt * (t * sp(-d) + (1.0 - t) * sp(d));
                weight += wt;
            }
            total / weight
        };
        let mut featurizer = Featurizer::new(&encoder, None);
        let model_loss = loss(&model.margins(&mut featurizer, &val).unwrap());
        let features: Vec<f32> = val.iter().map(|p| features_margin(&hy, p)).collect();
        assert!(model_loss <= loss(&features) + 1e-4, "{model_loss} vs {}", loss(&features));

        // Save → load: the same card and the same scores.
        let dir = tempfile::tempdir().unwrap();
        let path = model.save(dir.path()).unwrap();
        let loaded = RewardModel::load(&path).unwrap();
        assert!(loaded.is_hybrid() && loaded.card.hybrid == model.card.hybrid);
        let p = &pairs[1];
        let texts = [p.chosen.as_str(), p.rejected.as_str()];
        let before = model.member_scores(&mut featurizer, 0, &p.input, &texts).unwrap();
        let after = loaded.member_scores(&mut featurizer, 0, &p.input, &texts).unwrap();
        assert_eq!(before, after);
        assert_eq!(
            model.margins(&mut featurizer, &pairs).unwrap(),
            loaded.margins(&mut featurizer, &pairs).unwrap()
        );
    }

    #[test]
    fn a_hybrid_checkpoint_that_does_not_add_up_is_refused() {
        let encoder = BowEncoder::new();
        let config =
            TrainConfig { members: 1, max_epochs: 2, hybrid: true, ..TrainConfig::default() };
        let mut model = RewardModel::train(&encoder, None, &pairs(3), &config, "test").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = model.save(dir.path()).unwrap();
        let card_path = path.join(CARD_FILE);
        let original: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&card_path).unwrap()).unwrap();
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut card = original.clone();
            f(&mut card);
            std::fs::write(&card_path, serde_json::to_vec(&card).unwrap()).unwrap();
            RewardModel::load(&path).unwrap_err().to_string()
        };
        // Other features than this build computes.
        let err = edit(&|c| c["hybrid"]["features"] = "grounding-features@0".into());
        assert!(err.contains("grounding-features@0"), "{err}");
        // The card says not hybrid, the heads have grounding weights.
        let err = edit(&|c| c["config"]["hybrid"] = false.into());
        assert!(err.contains("not hybrid"), "{err}");
        // Hybrid without the features' record.
        let err = edit(&|c| {
            c.as_object_mut().unwrap().remove("hybrid");
        });
        assert!(err.contains("records no features"), "{err}");
        std::fs::write(&card_path, serde_json::to_vec(&original).unwrap()).unwrap();
        assert!(RewardModel::load(&path).is_ok());
        // Rows without the grounding columns are an error, not a silent score.
        let x = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let head = &model.heads.by_scope.values().next().unwrap()[0];
        assert!(head.forward(&x, None).is_err());
    }
}
