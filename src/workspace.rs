//! The books, trees, runs and feedback of one user, over one database: the library API that every
//! front end (the CLI, the web app, the evaluation harness) calls.
//!
//! A [`Workspace`] owns the [`Store`] and the folders (books, task trees, reward checkpoints,
//! models). It answers the questions a front end asks — which book is `alice`, what is the tree
//! of this book, which node is `h1.3`, what does that node summarize, which candidates can be
//! compared next, what should be rated next — and performs the actions — summarize a book, draw
//! candidates, record an answer, collect garbage, check the database. Front ends parse, call,
//! and print; they decide nothing.
//!
//! - [`books`]: opening books by path or catalog id, their records, and whether a recorded book's
//!   file is still there ([`BookStatus`]).
//! - [`trees`]: saving and finding task trees (the store is the source of truth; the file in the
//!   trees folder is a copy of it, checked by hash) and nodes ([`LoadedTree`]).
//! - [`rating`]: a node prepared for rating ([`RatingTarget`]), its candidates, drawing more,
//!   recording answers.
//! - [`queue`]: what to rate next, ranked by the reward ensemble's disagreement; asked nodes and
//!   pairs in flight.
//! - [`summarize`]: decomposing and composing a book, selectors.
//! - [`ask`]: `summarize --ask` (budgets, the asking selector) and its measurement.
//! - [`embeddings`]: the sentence-embedding cache over the store.
//! - [`check`]: `rrm db check [--repair]`.
//! - [`corrections`]: split corrections for the learned decomposer.
//! - [`gc`]: which books are live, and garbage collection of the node cache.
//! - [`labelers`]: the people who rate in the web app, and their sign-in tokens (hashed).
//! - [`overview`]: books with their trees and counts, and per-node counts (the web app's books
//!   and tree pages).
//! - [`views`]: the JSON shapes of trees and nodes (CLI `--json` and the web API).
//! - [`decomposers`]: building a decomposer from a [`decomposers::DecomposerSpec`].
//! - [`policy`]: training the summarizer from the workspace's feedback, evaluating it on
//!   held-out books, measuring training throughput.
//!
//! Imports every library module; nothing but front ends imports it.

pub mod ask;
pub mod books;
pub mod check;
pub mod corrections;
pub mod decomposer_tuning;
pub mod decomposers;
pub mod decompositions;
pub mod embeddings;
pub mod eval;
pub mod gc;
pub mod labelers;
pub mod overview;
pub mod policy;
pub mod queue;
pub mod rating;
pub mod summarize;
pub mod trees;
pub mod views;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::book::{Book, BookError, Catalog, CatalogError};
use crate::compose::ComposeError;
use crate::decompose::learned::LearnedError;
use crate::decompose::DecomposeError;
use crate::feedback::FeedbackError;
use crate::infer::encoder::{EncoderOptions, MiniLmEncoder};
use crate::infer::engine::DeviceChoice;
use crate::infer::{Encoder, InferError};
use crate::reward::RewardError;
use crate::store::{Store, StoreError};
use crate::tree::TreeError;

pub use books::BookStatus;
pub use rating::RatingTarget;
pub use trees::LoadedTree;

/// Environment variable naming another catalog file instead of the built-in one.
pub const CATALOG_ENV: &str = "RRM_CATALOG";

/// What went wrong, typed by the module that failed, or a workspace-level lookup that found
/// nothing.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Book(#[from] BookError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Decompose(#[from] DecomposeError),
    #[error(transparent)]
    Learned(#[from] LearnedError),
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error(transparent)]
    Feedback(#[from] FeedbackError),
    #[error(transparent)]
    Reward(#[from] RewardError),
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error(transparent)]
    Policy(Box<crate::policy::PolicyError>),
    /// Boxed: evaluation errors are large and rare.
    #[error(transparent)]
    Eval(Box<crate::eval::EvalError>),
    /// Something named does not exist (a node, a tree, a candidate); the message says what and
    /// how to get it.
    #[error("{0}")]
    NotFound(String),
    /// A value given is out of range or inconsistent; the message names it.
    #[error("{0}")]
    Invalid(String),
}

impl From<crate::eval::EvalError> for WorkspaceError {
    fn from(e: crate::eval::EvalError) -> WorkspaceError {
        WorkspaceError::Eval(Box::new(e))
    }
}

pub type Result<T, E = WorkspaceError> = std::result::Result<T, E>;

/// The folders and database of a workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceConfig {
    pub db: PathBuf,
    pub books_dir: PathBuf,
    pub trees_dir: PathBuf,
    /// Reward checkpoints (default: `reward/` beside the database).
    pub reward_dir: Option<PathBuf>,
    /// Fetched models (default: `RRM_MODELS`, else the user's cache folder).
    pub models_dir: Option<PathBuf>,
    /// Where the sentence encoder runs (default `Auto`: a CUDA GPU when built with
    /// `--features cuda` and one is there, else the CPU).
    pub encoder_device: DeviceChoice,
}

impl WorkspaceConfig {
    /// The defaults relative to the working directory: `.rrm/db`, `books/`, `task_trees/`.
    pub fn new(db: impl Into<PathBuf>) -> WorkspaceConfig {
        WorkspaceConfig {
            db: db.into(),
            books_dir: PathBuf::from("books"),
            trees_dir: PathBuf::from("task_trees"),
            reward_dir: None,
            models_dir: None,
            encoder_device: DeviceChoice::Auto,
        }
    }
}

/// One user's books, trees, runs, feedback and models over one open database.
#[derive(Clone)]
pub struct Workspace {
    store: Store,
    books_dir: PathBuf,
    trees_dir: PathBuf,
    reward_dir: PathBuf,
    models_dir: PathBuf,
    encoder_device: DeviceChoice,
    catalog: Arc<Catalog>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("db", &self.store.path())
            .field("books_dir", &self.books_dir)
            .field("trees_dir", &self.trees_dir)
            .finish()
    }
}

impl Workspace {
    /// Opens the database (creating it) and the catalog (`RRM_CATALOG`, else the built-in one).
    pub fn open(config: &WorkspaceConfig) -> Result<Workspace> {
        let store = Store::open(&config.db)?;
        Workspace::with_store(store, config)
    }

    /// A workspace over an already open store (the web app holds one for its whole life).
    pub fn with_store(store: Store, config: &WorkspaceConfig) -> Result<Workspace> {
        let reward_dir = config
            .reward_dir
            .clone()
            .unwrap_or_else(|| config.db.parent().unwrap_or_else(|| Path::new(".")).join("reward"));
        Ok(Workspace {
            store,
            books_dir: config.books_dir.clone(),
            trees_dir: config.trees_dir.clone(),
            reward_dir,
            models_dir: crate::infer::fetch::models_dir(config.models_dir.as_deref()),
            encoder_device: config.encoder_device,
            catalog: Arc::new(load_catalog()?),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn books_dir(&self) -> &Path {
        &self.books_dir
    }

    pub fn trees_dir(&self) -> &Path {
        &self.trees_dir
    }

    pub fn reward_dir(&self) -> &Path {
        &self.reward_dir
    }

    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Loads (fetching on first use) the sentence encoder `spec` (a registry name or a model
    /// folder) from the workspace's models folder, on the workspace's encoder device.
    pub fn encoder(&self, spec: &str, progress: bool) -> Result<Arc<dyn Encoder>> {
        let options = EncoderOptions::on(self.encoder_device.device()?);
        let encoder = MiniLmEncoder::resolve_and_load(spec, &self.models_dir, progress, options)?;
        Ok(Arc::new(encoder))
    }

    /// Opens BOOK (a file or a catalog id, fetched on first use) and records it.
    pub fn open_book(&self, spec: &str, lossy: bool, progress: &dyn Fn(&str)) -> Result<Book> {
        books::open(self, spec, lossy, progress)
    }
}

/// The catalog: the file named by `RRM_CATALOG` if set, else the built-in one.
pub fn load_catalog() -> Result<Catalog, CatalogError> {
    match std::env::var_os(CATALOG_ENV).filter(|p| !p.is_empty()) {
        Some(path) => Catalog::load(Path::new(&path)),
        None => Catalog::builtin(),
    }
}
