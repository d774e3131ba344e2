//! Which model summarizes which node: one model for the whole tree, or another at chosen levels.
//!
//! A policy trained on one level's task (say, the root's: children's summaries → a person's
//! summary of the whole story) is off its training distribution anywhere else, and its inputs
//! there are what the base model wrote below it. [`Models`] runs it only where it was trained:
//! `Models::new(base).at(Level::Root, sft)`. Each node's cache key hashes its own model, so the
//! nodes the base model runs share their stored results with a run of the base alone.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::infer::{Generator, ModelIdentity};

/// A level of a task tree a model (or best-of-N) can be assigned to. Stored as its display
/// form (`root`, or a height such as `0`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub enum Level {
    /// The root, whatever its height.
    Root,
    /// Every node at this height (0: the leaves).
    Height(u32),
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Root => f.write_str("root"),
            Level::Height(h) => write!(f, "{h}"),
        }
    }
}

impl From<Level> for String {
    fn from(level: Level) -> String {
        level.to_string()
    }
}

impl TryFrom<String> for Level {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl Level {
    /// Whether a node of `height` (`root`: the tree's root) is at this level.
    pub fn holds(&self, height: u32, root: bool) -> bool {
        match self {
            Level::Root => root,
            Level::Height(h) => *h == height,
        }
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "root" => Ok(Level::Root),
            h => h.parse().map(Level::Height).map_err(|_| {
                format!("`{s}` is not a tree level (a height such as 0 for the leaves, or `root`)")
            }),
        }
    }
}

/// The model of every node, with per-level exceptions. The root's entry wins over its height's.
#[derive(Clone)]
pub struct Models {
    default: Arc<dyn Generator>,
    at: Vec<(Level, Arc<dyn Generator>)>,
}

impl From<Arc<dyn Generator>> for Models {
    fn from(default: Arc<dyn Generator>) -> Self {
        Models::new(default)
    }
}

impl<G: Generator + 'static> From<Arc<G>> for Models {
    fn from(default: Arc<G>) -> Self {
        Models::new(default)
    }
}

impl Models {
    /// One model for every node.
    pub fn new(default: Arc<dyn Generator>) -> Self {
        Models { default, at: Vec::new() }
    }

    /// Runs `model` at `level` instead (a later entry for the same level replaces it).
    pub fn at(mut self, level: Level, model: Arc<dyn Generator>) -> Self {
        self.at.retain(|(l, _)| *l != level);
        self.at.push((level, model));
        self.at.sort_by_key(|(l, _)| *l);
        self
    }

    /// The model of every node without an exception.
    pub fn default_model(&self) -> &Arc<dyn Generator> {
        &self.default
    }

    /// The model that summarizes a node at `height` (`is_root`: the tree's root).
    pub fn for_node(&self, height: u32, is_root: bool) -> &Arc<dyn Generator> {
        let find = |level: Level| self.at.iter().find(|(l, _)| *l == level).map(|(_, g)| g);
        is_root
            .then(|| find(Level::Root))
            .flatten()
            .or_else(|| find(Level::Height(height)))
            .unwrap_or(&self.default)
    }

    /// Every distinct model, the default first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Generator>> {
        std::iter::once(&self.default).chain(self.at.iter().map(|(_, g)| g))
    }

    /// The exceptions by level (`root`, `0`, `1`, …): empty for one model.
    pub fn identities_at(&self) -> BTreeMap<String, ModelIdentity> {
        self.at.iter().map(|(l, g)| (l.to_string(), g.identity().clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::{Completion, GenerationRequest, InferError};

    struct Named(ModelIdentity);

    impl Generator for Named {
        fn identity(&self) -> &ModelIdentity {
            &self.0
        }
        fn context_length(&self) -> Result<usize, InferError> {
            Ok(2048)
        }
        fn count_tokens(&self, text: &str) -> Result<usize, InferError> {
            Ok(text.split_whitespace().count())
        }
        fn generate(
            &self,
            _requests: Vec<GenerationRequest>,
        ) -> futures::future::BoxFuture<'_, Result<Vec<Completion>, InferError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    fn named(name: &str) -> Arc<dyn Generator> {
        Arc::new(Named(ModelIdentity { name: name.into(), hash: format!("{name}-hash") }))
    }

    #[test]
    fn levels_parse_and_print() {
        assert_eq!("root".parse::<Level>(), Ok(Level::Root));
        assert_eq!("2".parse::<Level>(), Ok(Level::Height(2)));
        let err = "top".parse::<Level>().unwrap_err();
        assert!(err.contains("`top`") && err.contains("root"), "{err}");
        assert_eq!(Level::Height(0).to_string(), "0");
    }

    #[test]
    fn the_root_entry_wins_then_the_height_then_the_default() {
        let models = Models::new(named("base"))
            .at(Level::Height(1), named("mid"))
            .at(Level::Root, named("top"));
        let name = |h, root| models.for_node(h, root).identity().name.clone();
        assert_eq!(name(0, false), "base");
        assert_eq!(name(1, false), "mid");
        assert_eq!(name(1, true), "top");
        assert_eq!(name(2, true), "top");
        assert_eq!(name(2, false), "base");
        let at = models.identities_at();
        assert_eq!(at.keys().collect::<Vec<_>>(), ["1", "root"]);
        assert_eq!(models.all().count(), 3);
        // A one-model set has no exceptions, so its runs record none.
        assert!(Models::new(named("base")).identities_at().is_empty());
    }
}
