//! Learned decomposition: a boundary scorer over sentence gaps and an exact, length-constrained
//! segmentation, behind the same [`Decomposer`] seam as fixed chunking.
//!
//! - [`features`]: units (sentences, over-long ones cut into word pieces), the gap features
//!   (encoder similarity of sentence windows on each side at several sizes and their
//!   TextTiling depth, paragraph break, blank lines, heading on the next line, quote changes,
//!   lengths, position, the embeddings of the two sentences at the gap), and the book with its
//!   headings hidden ([`features::strip_headings`]) for training and evaluation.
//! - [`model`]: the scorer, a small MLP trained in candle, saved as safetensors.
//! - [`segment`]: the dynamic program: leaves maximize the summed gap log-odds minus a length
//!   prior with every leaf's tokens in `[min_tokens, chunk_tokens]`; the same program groups
//!   leaves into parents (fanout limits, the score of a leaf boundary as the parent boundary
//!   score), level by level up to one root.
//! - [`eval`]: Pk and WindowDiff; [`evaluate`](mod@evaluate) runs any decomposers on books with
//!   their headings hidden and scores their parents' boundaries against the chapter breaks.
//! - [`train`](mod@train): training rows from books (chapter structure in several views, split
//!   corrections) and the boundary model's training.
//! - [`feedback`]: split/merge corrections, the sixth feedback kind, as training labels.
//! - [`prefer`]: fitting the boundary model to preferences between whole segmentations (the
//!   summaries they led to, people's decomposition comparisons, a simulated labeler).
//!
//! [`LearnedDecomposer`] scores gaps with a trained [`BoundaryModel`] ([`Scorer::Model`]) or, as
//! the untrained baseline, with the depth of the embedding-similarity valley
//! ([`Scorer::Similarity`], TextTiling style). Embeddings go through an optional
//! [`EmbeddingCache`] that the caller backs with its store. This module never reads book files
//! and never touches the store.

pub mod eval;
pub mod evaluate;
pub mod features;
pub mod feedback;
pub mod model;
pub mod prefer;
pub mod segment;
pub mod train;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{oversee, ApproxCounter, ContextMode, DecomposeError, Decomposer, TokenCounter};
use crate::book::{Book, Span};
use crate::infer::encoder::{embed_cached, EmbeddingKey};
use crate::infer::{Encoder, InferError};
use crate::tree::{output_cap, LeafSpec, TaskTree, TreeSpec};

pub use evaluate::{evaluate, evaluate_count, means, EvalRow};
pub use features::{strip_headings, FeatureConfig, Hide, Units};
pub use feedback::{SplitAction, SplitFeedback};
pub use model::{BoundaryModel, ModelMeta, TrainConfig, TrainSummary, TrainingData};
pub use prefer::{
    cut_gaps, PairMetrics, PreferenceData, SegmentationPair, TuneConfig, TuneLimits, TuneReport,
};
pub use segment::{segment, LengthPrior, SegmentError};
pub use train::{train, training_data, TrainingBook, Views};

/// Score of a cut inside a sentence (only taken when a sentence alone exceeds the leaf limit).
const INTRA_SENTENCE_SCORE: f32 = -20.0;
/// Weight of a split correction relative to one structure label.
pub const FEEDBACK_WEIGHT: f32 = 5.0;

/// The default [`LearnedConfig::start_penalty`]: chosen on the first 24 SQuALITY training stories
/// and the validation books (Moby Dick, Frankenstein, A Christmas Carol), where 2 raised the
/// leaves' self-contained starts from 0.80 to 0.95 and 0.56 to 0.85 for +0.012 Pk (1: 0.92,
/// 0.76; 4: 0.99, 0.87 for +0.046 Pk). See docs/decomposition.md.
pub const DEFAULT_START_PENALTY: f64 = 2.0;

#[derive(Debug, thiserror::Error)]
pub enum LearnedError {
    /// A model file that cannot be used, naming it.
    #[error("boundary model file {}: {reason}", path.display())]
    ModelFile { path: std::path::PathBuf, reason: String },
    #[error("the boundary model was trained with encoder {model} but the encoder loaded is {loaded}; retrain it or load that encoder")]
    EncoderMismatch { model: String, loaded: String },
    #[error("training the boundary model: {0}")]
    Training(String),
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error("boundary model computation: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

/// Settings of [`LearnedDecomposer`]; all recorded in the trees it builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LearnedConfig {
    /// Most tokens per leaf.
    pub chunk_tokens: usize,
    /// Fewest tokens per leaf (a book shorter than this is one leaf).
    pub min_tokens: usize,
    /// The length prior: leaves near `target_tokens` are preferred with this weight (in log-odds
    /// units at a leaf of twice the target).
    pub target_tokens: usize,
    pub length_weight: f64,
    pub fanout_min: usize,
    pub fanout_max: usize,
    /// Prior weight pulling group sizes towards the middle of the fanout range.
    pub group_weight: f64,
    /// Log-odds added to the score of every cut between parents. The model is calibrated on
    /// the sentence gaps of its training books; on other books their chapter breaks score
    /// lower (layouts and styles differ), and with no bias parents come out as large as the
    /// fanout allows, several chapters each. Chosen on validation books (see ARCHITECTURE.md).
    /// The untrained similarity scorer's scores are not log-odds: it gets no bias.
    pub parent_bias: f64,
    /// Log-odds taken from every gap where a leaf starting there would not stand on its own
    /// (`oversee::start_problem`: inside a sentence or a quotation, a reply line of a
    /// dialogue, a pronoun before any name): a prior for leaves a person can judge without
    /// the text before them, beside the length prior. Not for the similarity scorer (its
    /// scores are not log-odds). Records written before it existed read as 0.
    #[serde(default)]
    pub start_penalty: f64,
    pub output_tokens: Vec<usize>,
    pub max_input_tokens: usize,
    pub context: ContextMode,
    pub context_window: usize,
    /// A seeded draw instead of the best segmentation: the exact DP under gap scores perturbed
    /// by Gumbel noise (see [`Sample`]); `None` (the default) for the best one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<Sample>,
}

/// A reproducible draw of a segmentation ("perturb and MAP"): every gap's log-odds gets
/// `scale ×` a standard Gumbel variable drawn from `seed` and the gap's index, and the exact DP
/// runs on the perturbed scores. Scale 0 is the best segmentation; larger scales wander further.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub seed: u64,
    pub scale: f64,
}

impl Sample {
    /// The default scale: one log-odd unit of noise per gap.
    pub const SCALE: f64 = 1.0;

    /// `scores` with this draw's noise added.
    pub fn perturb(&self, scores: &mut [f32]) {
        for (g, s) in scores.iter_mut().enumerate() {
            // SplitMix64 of (seed, gap): reproducible across platforms and crate updates.
            let mut z = self.seed ^ (g as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            // Uniform in (0, 1), then Gumbel.
            let u = ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let gumbel = -(-u.ln()).ln();
            *s += (self.scale * gumbel) as f32;
        }
    }
}

impl Default for LearnedConfig {
    fn default() -> Self {
        LearnedConfig {
            chunk_tokens: 600,
            min_tokens: 120,
            target_tokens: 450,
            length_weight: 0.5,
            fanout_min: 3,
            fanout_max: 13,
            group_weight: 0.2,
            parent_bias: 3.0,
            start_penalty: DEFAULT_START_PENALTY,
            output_tokens: vec![128, 192, 384],
            max_input_tokens: 2048,
            context: ContextMode::None,
            context_window: 3,
            sample: None,
        }
    }
}

impl LearnedConfig {
    pub fn validate(&self) -> Result<(), DecomposeError> {
        let err = |m: String| Err(DecomposeError::Config(m));
        if self.chunk_tokens < 8 {
            return err(format!("chunk tokens must be at least 8 (got {})", self.chunk_tokens));
        }
        if self.min_tokens > self.chunk_tokens {
            return err(format!(
                "min leaf tokens {} exceed the chunk tokens {}",
                self.min_tokens, self.chunk_tokens
            ));
        }
        if self.fanout_min < 2 || self.fanout_max < self.fanout_min {
            return err(format!(
                "fanout must be MIN..MAX with 2 <= MIN <= MAX (got {}..{})",
                self.fanout_min, self.fanout_max
            ));
        }
        if self.output_tokens.is_empty() || self.output_tokens.contains(&0) {
            return err("output caps must be a non-empty list of positive numbers".into());
        }
        if !(self.length_weight >= 0.0 && self.group_weight >= 0.0) {
            return err("prior weights must be non-negative".into());
        }
        if self.sample.is_some_and(|s| !(s.scale.is_finite() && s.scale >= 0.0)) {
            return err("the sampling scale must be a non-negative number".into());
        }
        if !(self.start_penalty.is_finite() && self.start_penalty >= 0.0) {
            return err(format!(
                "the start penalty must be a non-negative number (got {})",
                self.start_penalty
            ));
        }
        if !self.parent_bias.is_finite() {
            return err(format!(
                "the parent bias must be a finite number (got {})",
                self.parent_bias
            ));
        }
        Ok(())
    }
}

/// How gaps are scored.
#[derive(Debug, Clone)]
pub enum Scorer {
    /// A trained boundary model.
    Model(Arc<BoundaryModel>),
    /// Untrained baseline: the standardized TextTiling depth of the similarity of `window`
    /// sentences on each side (a cut where similarity dips), minus one where no paragraph ends.
    Similarity { window: usize },
}

/// A shared embedding cache (the caller's store, or memory).
pub use crate::infer::encoder::SharedCache;

/// Embeds sentences and computes gap features.
#[derive(Clone)]
pub struct Featurizer {
    pub encoder: Arc<dyn Encoder>,
    pub cache: Option<SharedCache>,
    pub counter: Arc<dyn TokenCounter>,
    pub features: FeatureConfig,
}

impl std::fmt::Debug for Featurizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Featurizer")
            .field("encoder", self.encoder.identity())
            .field("counter", &self.counter.name())
            .field("features", &self.features)
            .finish()
    }
}

/// Units, sentence embeddings and gap feature rows (row-major) of one book.
pub type GapRows = (Units, Vec<Vec<f32>>, Vec<f32>);

/// An in-memory [`EmbeddingCache`] for callers without a store.
pub fn memory_cache() -> SharedCache {
    Arc::new(Mutex::new(HashMap::<EmbeddingKey, Vec<f32>>::new()))
}

impl Featurizer {
    pub fn new(encoder: Arc<dyn Encoder>, features: FeatureConfig) -> Featurizer {
        Featurizer { encoder, cache: None, counter: Arc::new(ApproxCounter), features }
    }

    /// Embeddings of every sentence of `book`, through the cache when there is one.
    pub fn sentence_embeddings(&self, book: &Book) -> Result<Vec<Vec<f32>>, LearnedError> {
        let texts: Vec<&str> = book.sentences().iter().map(|s| book.slice(*s)).collect();
        let started = std::time::Instant::now();
        let out = match &self.cache {
            Some(cache) => {
                let mut guard = cache.lock().map_err(|_| {
                    LearnedError::Training("the embedding cache was poisoned by a panic".into())
                })?;
                embed_cached(self.encoder.as_ref(), &mut *guard, &texts)?
            }
            None => self.encoder.embed(&texts)?,
        };
        tracing::debug!(sentences = texts.len(), elapsed = ?started.elapsed(), "sentences embedded");
        Ok(out)
    }

    /// Units of `book` (leaf limit `max_tokens`), their sentence embeddings and gap feature rows.
    pub fn gaps(&self, book: &Book, max_tokens: usize) -> Result<GapRows, LearnedError> {
        let units = features::units(book, self.counter.as_ref(), max_tokens);
        let embeddings = self.sentence_embeddings(book)?;
        let rows = features::gap_features(book, &units, &embeddings, &self.features);
        Ok((units, embeddings, rows))
    }
}

/// The learned decomposer (see the module docs).
#[derive(Debug, Clone)]
pub struct LearnedDecomposer {
    config: LearnedConfig,
    scorer: Scorer,
    featurizer: Featurizer,
}

impl LearnedDecomposer {
    /// A decomposer scoring with `scorer`, embedding with `featurizer`'s encoder. A model must
    /// have been trained with the same encoder and features.
    pub fn new(
        config: LearnedConfig,
        scorer: Scorer,
        mut featurizer: Featurizer,
    ) -> Result<LearnedDecomposer, DecomposeError> {
        config.validate()?;
        if let Scorer::Model(model) = &scorer {
            let meta = model.meta();
            let loaded = featurizer.encoder.identity();
            if meta.encoder_hash != loaded.hash || meta.encoder_dim != featurizer.encoder.dim() {
                return Err(LearnedError::EncoderMismatch {
                    model: format!("{} ({})", meta.encoder_name, short(&meta.encoder_hash)),
                    loaded: format!("{} ({})", loaded.name, short(&loaded.hash)),
                }
                .into());
            }
            featurizer.features = meta.features.clone();
        }
        Ok(LearnedDecomposer { config, scorer, featurizer })
    }

    pub fn learned_config(&self) -> &LearnedConfig {
        &self.config
    }

    pub fn featurizer(&self) -> &Featurizer {
        &self.featurizer
    }

    /// Calibrated boundary scores of every gap between units.
    pub fn gap_scores(&self, book: &Book) -> Result<(Units, Vec<f32>), LearnedError> {
        let (units, _, rows) = self.featurizer.gaps(book, self.config.chunk_tokens)?;
        let n_gaps = units.len().saturating_sub(1);
        let mut scores = match &self.scorer {
            Scorer::Model(model) => model.score(&rows)?,
            Scorer::Similarity { window } => {
                similarity_scores(&self.featurizer.features, &rows, n_gaps, *window)
            }
        };
        for (score, pair) in scores.iter_mut().zip(units.sentence.windows(2)) {
            if pair[0] == pair[1] {
                *score = INTRA_SENTENCE_SCORE;
            }
        }
        Ok((units, scores))
    }

    /// Leaves and parent groups for `book`.
    pub fn plan(&self, book: &Book) -> Result<TreeSpec, DecomposeError> {
        let c = &self.config;
        let units = features::units(book, self.featurizer.counter.as_ref(), c.chunk_tokens);
        if units.is_empty() {
            return Err(DecomposeError::EmptyBook { title: book.title().to_string() });
        }
        let total: usize = units.tokens.iter().sum();
        let (units, mut scores) = if total <= c.chunk_tokens {
            // One leaf: no model needed.
            (units, Vec::new())
        } else {
            self.gap_scores(book).map_err(DecomposeError::from)?
        };
        if c.start_penalty > 0.0 && matches!(self.scorer, Scorer::Model(_)) {
            for (g, score) in scores.iter_mut().enumerate() {
                if let Some(&at) = units.starts.get(g + 1) {
                    if oversee::start_problem(book, at).is_some() {
                        *score -= c.start_penalty as f32;
                    }
                }
            }
        }
        if let Some(sample) = &c.sample {
            sample.perturb(&mut scores);
        }
        let ends = if total <= c.chunk_tokens {
            vec![units.len()]
        } else {
            let prior =
                LengthPrior { target: c.target_tokens.max(1) as f64, weight: c.length_weight };
            match segment(&units.tokens, &scores, c.min_tokens, c.chunk_tokens, prior) {
                Ok(ends) => ends,
                Err(SegmentError::Infeasible { .. }) => {
                    tracing::warn!(
                        "{}: no cut has every leaf within [{}, {}] tokens; dropping the minimum",
                        book.title(),
                        c.min_tokens,
                        c.chunk_tokens
                    );
                    segment(&units.tokens, &scores, 0, c.chunk_tokens, prior)
                        .map_err(LearnedError::from)?
                }
                Err(other) => return Err(LearnedError::from(other).into()),
            }
        };
        let mut leaves = Vec::with_capacity(ends.len());
        let mut leaf_scores = Vec::with_capacity(ends.len());
        let mut start = 0;
        for &end in &ends {
            let span = Span::new(units.starts[start], units.span(end - 1).end);
            leaves.push(LeafSpec { span, input_tokens: units.tokens[start..end].iter().sum() });
            if start > 0 {
                leaf_scores.push(scores[start - 1]);
            }
            start = end;
        }
        let groups = self.groups(&leaf_scores)?;
        let context_window = match c.context {
            ContextMode::None => 0,
            ContextMode::Previous => c.context_window,
        };
        Ok(TreeSpec { leaves, groups, output_tokens: c.output_tokens.clone(), context_window })
    }

    /// Group sizes per level above the leaves; `scores[i]` scores the boundary between node
    /// `i` and node `i + 1` of the leaf level. A parent boundary keeps its leaf boundary's score.
    pub fn groups(&self, scores: &[f32]) -> Result<Vec<Vec<usize>>, DecomposeError> {
        let c = &self.config;
        let mut levels = Vec::new();
        // The bias is in log-odds: the similarity baseline's scores are on another scale.
        let bias = match self.scorer {
            Scorer::Model(_) => c.parent_bias as f32,
            Scorer::Similarity { .. } => 0.0,
        };
        let mut scores: Vec<f32> = scores.iter().map(|s| s + bias).collect();
        let mut n = scores.len() + 1;
        let mut height = 0u32;
        while n > 1 {
            let cap = output_cap(&c.output_tokens, height).max(1);
            let max = c.fanout_max.min(c.max_input_tokens / cap).max(2);
            let sizes = if n <= max {
                vec![n]
            } else {
                let k = n.div_ceil(max);
                let min = c.fanout_min.min(n / k).max(1);
                let prior = LengthPrior {
                    target: (c.fanout_min + c.fanout_max) as f64 / 2.0,
                    weight: c.group_weight,
                };
                let ends =
                    segment(&vec![1; n], &scores, min, max, prior).map_err(LearnedError::from)?;
                let mut sizes = Vec::with_capacity(ends.len());
                let mut start = 0;
                for end in ends {
                    sizes.push(end - start);
                    start = end;
                }
                if sizes.len() >= n {
                    // Never a level that does not shrink: an even split instead.
                    let (base, extra) = (n / k, n % k);
                    (0..k).map(|i| base + usize::from(i < extra)).collect()
                } else {
                    sizes
                }
            };
            let mut next = Vec::with_capacity(sizes.len().saturating_sub(1));
            let mut pos = 0;
            for &size in &sizes[..sizes.len() - 1] {
                pos += size;
                next.push(scores[pos - 1]);
            }
            scores = next;
            n = sizes.len();
            levels.push(sizes);
            height += 1;
        }
        Ok(levels)
    }
}

/// The untrained baseline's scores: the depth feature of `window` standardized over the book,
/// shifted so that a cut needs a depth one standard deviation above the mean; gaps without a
/// paragraph break lose one more.
fn similarity_scores(
    features: &FeatureConfig,
    rows: &[f32],
    n_gaps: usize,
    window: usize,
) -> Vec<f32> {
    let dim = rows.len() / n_gaps.max(1);
    let names = features.names(0);
    let k = features.windows.iter().position(|&w| w == window).unwrap_or(0);
    let depth_col = 2 * k + 1;
    let para_col = names.iter().position(|n| n == "paragraph_break").unwrap_or(0);
    if n_gaps == 0 || dim == 0 {
        return Vec::new();
    }
    let depths: Vec<f32> = (0..n_gaps).map(|g| rows[g * dim + depth_col]).collect();
    let mean = depths.iter().sum::<f32>() / n_gaps as f32;
    let var = depths.iter().map(|d| (d - mean).powi(2)).sum::<f32>() / n_gaps as f32;
    let std = var.sqrt().max(1e-6);
    (0..n_gaps)
        .map(|g| {
            let z = (depths[g] - mean) / std - 1.0;
            if rows[g * dim + para_col] > 0.5 {
                z
            } else {
                z - 1.0
            }
        })
        .collect()
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

impl Decomposer for LearnedDecomposer {
    fn name(&self) -> &str {
        match self.scorer {
            Scorer::Model(_) => "learned",
            Scorer::Similarity { .. } => "similarity",
        }
    }

    fn config(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.config).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("token_counter".into(), self.featurizer.counter.name().into());
            let encoder = self.featurizer.encoder.identity();
            map.insert(
                "encoder".into(),
                format!("{} ({})", encoder.name, short(&encoder.hash)).into(),
            );
            match &self.scorer {
                Scorer::Model(model) => {
                    let meta = model.meta();
                    let hash = model.hash().unwrap_or_default();
                    map.insert(
                        "model".into(),
                        serde_json::json!({
                            "hash": short(&hash),
                            "hidden": meta.hidden,
                            "features": meta.features,
                            "books": meta.training.books,
                            "feedback_examples": meta.training.feedback_examples,
                        }),
                    );
                }
                Scorer::Similarity { window } => {
                    map.insert("similarity_window".into(), (*window).into());
                }
            }
        }
        value
    }

    fn decompose(&self, book: &Book) -> Result<TaskTree, DecomposeError> {
        let _span =
            tracing::debug_span!("decompose", decomposer = self.name(), book = book.id().short())
                .entered();
        let started = std::time::Instant::now();
        let spec = self.plan(book)?;
        tracing::debug!(leaves = spec.leaves.len(), elapsed = ?started.elapsed(), "planned");
        Ok(TaskTree::build(book, self.info(), &spec)?)
    }
}

#[cfg(test)]
mod tests;
