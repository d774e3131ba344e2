//! Choosing a decomposer: fixed chunking, or the learned boundary model (or its untrained
//! similarity baseline) with sentence embeddings cached in the workspace's store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{embeddings, Result, Workspace};
use crate::decompose::learned::{
    BoundaryModel, FeatureConfig, Featurizer, LearnedConfig, LearnedDecomposer, Scorer, TuneLimits,
};
use crate::decompose::{ContextMode, Decomposer, FixedChunker, FixedConfig};
use crate::infer::fetch::DEFAULT_ENCODER;

/// Which way of splitting a book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecomposerKind {
    /// Fixed-size chunking (Wu et al. 2021).
    #[default]
    Fixed,
    /// A trained boundary scorer and an exact length-constrained segmentation.
    Learned,
    /// The untrained baseline: cuts where neighbouring sentence windows are least similar.
    Similarity,
}

/// Everything that decides how a book is split (shared by decompose, summarize and eval).
#[derive(Debug, Clone, PartialEq)]
pub struct DecomposerSpec {
    pub kind: DecomposerKind,
    /// The boundary model for `Learned` (default: the one built into rrm).
    pub model: Option<PathBuf>,
    /// The sentence encoder for `Learned`/`Similarity` (a registry name or a folder).
    pub encoder: String,
    pub chunk_tokens: usize,
    /// Children per parent (default: 5..13 fixed, 3..13 learned).
    pub fanout: Option<(usize, usize)>,
    pub context: ContextMode,
    pub context_window: usize,
    pub seed: Option<u64>,
    pub output_tokens: Vec<usize>,
    pub max_input_tokens: usize,
    /// The learned decomposers' start penalty (default: [`LearnedConfig`]'s).
    pub start_penalty: Option<f64>,
}

impl Default for DecomposerSpec {
    fn default() -> Self {
        let fixed = FixedConfig::default();
        DecomposerSpec {
            kind: DecomposerKind::Fixed,
            model: None,
            encoder: DEFAULT_ENCODER.to_string(),
            chunk_tokens: fixed.chunk_tokens,
            fanout: None,
            context: fixed.context,
            context_window: fixed.context_window,
            seed: fixed.seed,
            output_tokens: fixed.output_tokens,
            max_input_tokens: fixed.max_input_tokens,
            start_penalty: None,
        }
    }
}

impl DecomposerSpec {
    /// The fixed chunker's configuration.
    pub fn fixed_config(&self) -> FixedConfig {
        let defaults = FixedConfig::default();
        FixedConfig {
            chunk_tokens: self.chunk_tokens,
            fanout_min: self.fanout.map_or(defaults.fanout_min, |f| f.0),
            fanout_max: self.fanout.map_or(defaults.fanout_max, |f| f.1),
            output_tokens: self.output_tokens.clone(),
            max_input_tokens: self.max_input_tokens,
            context: self.context,
            context_window: self.context_window,
            seed: self.seed,
            ..defaults
        }
    }

    /// The learned decomposer's configuration.
    pub fn learned_config(&self) -> LearnedConfig {
        let defaults = LearnedConfig::default();
        LearnedConfig {
            chunk_tokens: self.chunk_tokens,
            min_tokens: self.chunk_tokens / 5,
            target_tokens: self.chunk_tokens * 3 / 4,
            fanout_min: self.fanout.map_or(defaults.fanout_min, |f| f.0),
            fanout_max: self.fanout.map_or(defaults.fanout_max, |f| f.1),
            output_tokens: self.output_tokens.clone(),
            max_input_tokens: self.max_input_tokens,
            context: self.context,
            context_window: self.context_window,
            start_penalty: self.start_penalty.unwrap_or(defaults.start_penalty),
            ..defaults
        }
    }

    /// Builds the decomposer. The learned ones load their model first (a bad file fails before
    /// the encoder is fetched), then the encoder, and cache embeddings in the store.
    pub fn build(&self, ws: &Workspace, progress: bool) -> Result<Box<dyn Decomposer>> {
        Ok(match self.kind {
            DecomposerKind::Fixed => Box::new(FixedChunker::new(self.fixed_config())?),
            DecomposerKind::Learned | DecomposerKind::Similarity => {
                let scorer = if self.kind == DecomposerKind::Similarity {
                    Scorer::Similarity { window: 3 }
                } else {
                    let model = boundary_model(self.model.as_deref())?;
                    let now = TuneLimits::of(&self.learned_config());
                    if let Some(note) = model.tuned_limits().and_then(|t| t.mismatch(&now)) {
                        let path = self.model.as_deref().unwrap_or(Path::new("the model"));
                        tracing::warn!("{}: {note}", path.display());
                    }
                    Scorer::Model(model)
                };
                let encoder = ws.encoder(&self.encoder, progress)?;
                let mut featurizer = Featurizer::new(encoder, FeatureConfig::default());
                featurizer.cache = Some(embeddings::shared_cache(ws));
                Box::new(LearnedDecomposer::new(self.learned_config(), scorer, featurizer)?)
            }
        })
    }
}

/// The boundary model at `path`, or the built-in default.
pub fn boundary_model(path: Option<&Path>) -> Result<Arc<BoundaryModel>> {
    Ok(Arc::new(match path {
        Some(path) => BoundaryModel::load(path)?,
        None => BoundaryModel::built_in()?,
    }))
}
