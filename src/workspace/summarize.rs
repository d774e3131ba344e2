//! Summarizing a book in a workspace: decompose it (the tree stored as its book's tree), then
//! compose it with a generator and a selector, every node's result cached in the store and the
//! run recorded as nodes finish.

use std::sync::Arc;

use super::{books, trees, Result, Workspace, WorkspaceError};
use crate::book::Book;
use crate::compose::{
    ComposeOptions, ComposeReport, Composer, MeanLogprob, Models, Observer, Selector,
};
use crate::decompose::Decomposer;
use crate::reward::{consensus, grounded, lm, support, RewardModel, RewardSelector};
use crate::tree::TaskTree;

/// Decomposes `book` and stores its tree (the record, then the file copy).
pub fn decompose(ws: &Workspace, book: &Book, decomposer: &dyn Decomposer) -> Result<TaskTree> {
    books::record(ws, book)?;
    let tree = decomposer.decompose(book)?;
    trees::save(ws, &tree)?;
    Ok(tree)
}

/// Summarizes `book` along `tree` (which must be its tree).
pub async fn compose(
    ws: &Workspace,
    book: &Book,
    tree: &TaskTree,
    models: impl Into<Models>,
    selector: Arc<dyn Selector>,
    options: ComposeOptions,
    observer: &dyn Observer,
) -> Result<ComposeReport> {
    let composer = Composer::new(models, selector, ws.store().clone(), options);
    Ok(composer.compose(book, tree, observer).await?)
}

/// How candidates are picked: the policy's own mean log-probability, or a reward model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SelectorSpec {
    /// `latest`, a checkpoint hash in the reward folder, a checkpoint folder, `grounding`
    /// (the summary checked against its input; no model), `consensus` (the candidate the others
    /// agree with most on what the input supports; no model) or `lm-support[:MODEL]` (a language
    /// model's support for the summary given its input; no checkpoint).
    pub reward_model: Option<String>,
    /// λ in mean − λ·std.
    pub pessimism: f32,
    /// The sentence encoder the reward model's features come from.
    pub encoder: String,
}

impl SelectorSpec {
    /// Builds the selector (loading the reward model and its encoder when one is named).
    pub fn build(&self, ws: &Workspace, progress: bool) -> Result<Arc<dyn Selector>> {
        let Some(spec) = &self.reward_model else { return Ok(Arc::new(MeanLogprob)) };
        if !self.pessimism.is_finite() || self.pessimism < 0.0 {
            return Err(WorkspaceError::Invalid(format!(
                "the pessimism λ must be a non-negative number (got {})",
                self.pessimism
            )));
        }
        if let Some(grounded) = grounded::Grounded::parse(spec) {
            // No model file: the summary checked against its input.
            let grounded = grounded.map_err(WorkspaceError::Invalid)?;
            return Ok(Arc::new(grounded::GroundingSelector {
                pessimism: self.pessimism,
                grounded,
            }));
        }
        if consensus::is(spec) {
            // No model file: the candidates' agreement on what the input supports.
            return Ok(Arc::new(consensus::ConsensusSelector { pessimism: self.pessimism }));
        }
        if let Some(model) = support::parse(spec) {
            // No checkpoint: a language model reads the input and each candidate.
            let model = model.map_err(WorkspaceError::Invalid)?;
            let support = Arc::new(support::load(&model, ws.models_dir())?);
            return Ok(Arc::new(support::LmSupportSelector { support, pessimism: self.pessimism }));
        }
        let path = RewardModel::resolve(spec, ws.reward_dir())?;
        if lm::is_lm_checkpoint(&path) {
            // The language-model backbone scores with its own base model; no sentence encoder.
            let model = lm::LmRewardModel::load(&path, None)?;
            return Ok(Arc::new(lm::LmRewardSelector::new(Arc::new(model), self.pessimism)));
        }
        let model = load_reward_model(ws, spec)?;
        let encoder = ws.encoder(&self.encoder, progress)?;
        let cache = super::embeddings::cache(ws.store());
        let selector = RewardSelector::new(Arc::new(model), encoder, Some(cache), self.pessimism)?;
        Ok(Arc::new(selector))
    }
}

/// The reward checkpoint `spec` names (`latest`, a hash in the workspace's reward folder, or a
/// folder).
pub fn load_reward_model(ws: &Workspace, spec: &str) -> Result<RewardModel> {
    let path = RewardModel::resolve(spec, ws.reward_dir())?;
    if lm::is_lm_checkpoint(&path) {
        return Err(WorkspaceError::Invalid(format!(
            "{} is a language-model reward model (`--backbone lm`); this command needs a MiniLM \
             one (`--reward-model` of `rrm summarize` and `rrm reward eval` take either)",
            path.display()
        )));
    }
    Ok(RewardModel::load(&path)?)
}

/// The reward checkpoint `spec` names, or `None` when `spec` is `latest` and nothing is trained
/// yet.
pub fn load_reward_model_if_any(ws: &Workspace, spec: &str) -> Result<Option<RewardModel>> {
    if spec == "latest" && RewardModel::resolve(spec, ws.reward_dir()).is_err() {
        return Ok(None);
    }
    load_reward_model(ws, spec).map(Some)
}
