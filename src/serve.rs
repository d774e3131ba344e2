//! `rrm serve`: the labeling web app — pages where people browse books and task trees and rate
//! nodes (several labelers at once), and a JSON API under `/api/` for everything the pages do.
//!
//! One process owns the database while it runs (sled admits one): the server holds the
//! [`Workspace`], writes an [`Owner`] file beside the database so other commands can say who
//! holds it, and runs long work (drawing candidates, summarizing a book, training reward models)
//! as [`jobs`] inside itself. Because nothing else writes the store, it keeps what the queue needs
//! in memory ([`queue::QueueState`]): the nodes with candidates, every feedback record, the pairs
//! handed out and not answered yet (leases), each refreshed when a job changes the store.
//!
//! - [`auth`]: sessions (an HTTP-only, SameSite=Strict cookie), sign-in with a labeler's token
//!   (or, with no labelers on a loopback address, the local user), bearer tokens for scripts,
//!   CSRF tokens, the Host check against DNS rebinding.
//! - [`answers`]: one path for every answer, from a form or JSON: validated against the node's
//!   stored candidates, written and flushed before the response.
//! - [`views`]: what the rating screen and the API show of a node.
//! - [`report`]: the evaluation report (`/report/`), drawn by the library's `write_report`.
//! - [`api`], [`pages`]: thin handlers (parse, call, render); templates and the client script
//!   live in `serve/templates/` and `serve/static/`.
//! - [`sync`]: the only lock kind used here, and **the rule every lock site follows**: state is
//!   reached through `Guarded::with(|state| …)`, no guard leaves the closure, nothing awaits
//!   inside it, and a lock taken again on the same thread (or out of rank order) panics naming
//!   both places instead of deadlocking. Under a lock: O(1) work, or a cheap copy (`Arc`s) that
//!   the rest of the work reads outside it, on the blocking pool when it touches the store.
//!
//! Handlers never panic on input: malformed forms, JSON and ids are 4xx answers with a message.

pub mod answers;
pub mod api;
pub mod ask;
pub mod auth;
pub mod decompositions;
pub mod jobs;
pub mod pages;
pub mod queue;
pub mod report;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;
pub mod views;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::compose::{Level, Models};
use crate::infer::spec::GeneratorSpec;
use crate::infer::{Encoder, Generator};
use crate::reward::RewardModel;
use crate::store::Owner;
use crate::workspace::{trees, LoadedTree, Workspace, WorkspaceError};
use sync::{rank, Guarded};

/// The largest request body accepted (answers are short texts; anything larger is refused).
pub const BODY_LIMIT: usize = 256 * 1024;

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen (127.0.0.1 by default; any other address needs labelers with tokens).
    pub addr: SocketAddr,
    /// Show each queued pair to this many different labelers.
    pub overlap: usize,
    /// After a comparison, go to the next queued item (each labeler can turn it off).
    pub auto_advance: bool,
    /// Who rates when no labelers exist (loopback only): the local user.
    pub local_labeler: String,
    /// The generator jobs draw candidates and summarize with (started on first use).
    pub generator: GeneratorSpec,
    /// Other models at chosen levels of a summarized tree (`--model-at`, and the built-in root
    /// policy when no model is named, as `rrm summarize` runs them); started on first use.
    pub level_generators: Vec<(Level, GeneratorSpec)>,
    /// The reward checkpoint for queue ranking and uncertainty (`latest`, a hash, a folder),
    /// or `None` for none.
    pub reward_model: Option<String>,
    /// The sentence encoder of reward models.
    pub encoder: String,
    /// How long a `summarize --ask` question waits for an answer before its node goes on with
    /// the ensemble's pick.
    pub ask_wait: Duration,
    /// On shutdown, how long requests in flight and running jobs get to finish.
    pub shutdown_grace: Duration,
}

impl ServeConfig {
    pub fn new(addr: SocketAddr) -> ServeConfig {
        ServeConfig {
            addr,
            overlap: 1,
            auto_advance: true,
            local_labeler: "local".into(),
            generator: GeneratorSpec::local_default(),
            level_generators: Vec::new(),
            reward_model: Some("latest".into()),
            encoder: crate::infer::fetch::DEFAULT_ENCODER.into(),
            ask_wait: Duration::from_secs(10 * 60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Workspace(Box<WorkspaceError>),
    #[error(
        "refusing to listen on {addr}: with no labelers, rrm serve listens on a loopback address \
         only (anyone who can reach it could rate as you). Add labelers first (`rrm labeler add \
         NAME` prints a sign-in token), or listen on 127.0.0.1"
    )]
    OpenWithoutLabelers { addr: SocketAddr },
    #[error("could not listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the server stopped: {0}")]
    Io(#[from] std::io::Error),
    #[error("the overlap must be between 1 and 100 (got {0})")]
    Overlap(usize),
}

impl From<WorkspaceError> for ServeError {
    fn from(err: WorkspaceError) -> ServeError {
        ServeError::Workspace(Box::new(err))
    }
}

/// A reward model with the encoder its features come from.
#[derive(Clone)]
pub struct Scorer {
    pub model: Arc<RewardModel>,
    pub encoder: Arc<dyn Encoder>,
}

/// Everything the handlers share.
pub struct AppState {
    pub ws: Workspace,
    pub config: ServeConfig,
    /// The address actually bound (the port may have been 0).
    pub addr: SocketAddr,
    /// Labelers with tokens exist: everyone signs in. Otherwise everyone is the local user.
    pub tokens_required: bool,
    pub sessions: auth::Sessions,
    pub queue: queue::Queue,
    pub jobs: jobs::Jobs,
    pub templates: minijinja::Environment<'static>,
    scorer: Guarded<Option<Scorer>>,
    pub writes: answers::WriteLocks,
    /// Questions of running `summarize --ask` jobs, at the head of every queue.
    pub asks: Arc<ask::AskHub>,
    /// The last drawn evaluation report (`/report/`).
    pub report: report::ReportCache,
    generator: tokio::sync::OnceCell<Arc<dyn Generator>>,
    level_generators: tokio::sync::OnceCell<Vec<(Level, Arc<dyn Generator>)>>,
    /// A generator to use instead of starting one from the config (see `use_generator`).
    preset: Guarded<Option<Arc<dyn Generator>>>,
    trees: TreeCache,
    /// The sentence encoder of the learned decomposer (loaded on first use).
    encoder: Guarded<Option<Arc<dyn Encoder>>>,
}

/// Loaded trees by book id. A tree read while a job changes the store is not kept: every
/// invalidation bumps a generation, and a load that began under an older one is returned but
/// not cached (else the cache could keep an old run after a job's write).
pub struct TreeCache<V = LoadedTree> {
    map: Guarded<(u64, HashMap<String, Arc<V>>)>,
}

impl<V> Default for TreeCache<V> {
    fn default() -> TreeCache<V> {
        TreeCache { map: Guarded::new("trees", rank::LEAF, (0, HashMap::new())) }
    }
}

impl<V> TreeCache<V> {
    /// The cached tree of `id`, or `load`'s (run outside the lock).
    pub fn get_or_load<E>(
        &self,
        id: &str,
        load: impl FnOnce() -> Result<V, E>,
    ) -> Result<Arc<V>, E> {
        let (generation, hit) = self.map.with(|(g, m)| (*g, m.get(id).cloned()));
        if let Some(t) = hit {
            return Ok(t);
        }
        let loaded = Arc::new(load()?);
        self.map.with(|(g, m)| {
            if *g == generation {
                m.insert(id.to_string(), Arc::clone(&loaded));
            }
        });
        Ok(loaded)
    }

    /// Forgets every tree (the store changed).
    pub fn invalidate(&self) {
        self.map.with(|(g, m)| {
            *g += 1;
            m.clear();
        });
    }
}

pub type Shared = Arc<AppState>;

impl AppState {
    /// The state over an open workspace: loads the feedback and the queue's nodes, and the reward
    /// model when one is named and exists.
    pub fn new(ws: Workspace, config: ServeConfig, addr: SocketAddr) -> Result<Shared, ServeError> {
        if config.overlap == 0 || config.overlap > 100 {
            return Err(ServeError::Overlap(config.overlap));
        }
        let tokens_required = !crate::workspace::labelers::all(&ws)?.is_empty();
        if !tokens_required && !addr.ip().is_loopback() {
            return Err(ServeError::OpenWithoutLabelers { addr });
        }
        let scorer = match &config.reward_model {
            Some(spec) => match crate::workspace::summarize::load_reward_model_if_any(&ws, spec)? {
                Some(model) => {
                    let encoder = ws.encoder(&config.encoder, false)?;
                    Some(Scorer { model: Arc::new(model), encoder })
                }
                None => None,
            },
            None => None,
        };
        let queue = queue::Queue::load(&ws, scorer.as_ref())?;
        Ok(Arc::new(AppState {
            templates: pages::templates(),
            ws,
            config,
            addr,
            tokens_required,
            sessions: auth::Sessions::default(),
            queue,
            jobs: jobs::Jobs::default(),
            scorer: Guarded::new("scorer", rank::LEAF, scorer),
            writes: answers::WriteLocks::default(),
            asks: Arc::new(ask::AskHub::default()),
            report: report::ReportCache::default(),
            generator: tokio::sync::OnceCell::new(),
            level_generators: tokio::sync::OnceCell::new(),
            preset: Guarded::new("preset generator", rank::LEAF, None),
            trees: TreeCache::default(),
            encoder: Guarded::new("sentence encoder", rank::LEAF, None),
        }))
    }

    /// The sentence encoder (`config.encoder`), loaded on first use (blocking: call it on the
    /// blocking pool; the load happens outside the lock, so two first calls may both load).
    pub fn sentence_encoder(&self) -> Result<Arc<dyn Encoder>, WorkspaceError> {
        if let Some(e) = self.encoder.with(|e| e.clone()) {
            return Ok(e);
        }
        let loaded = self.ws.encoder(&self.config.encoder, false)?;
        self.encoder.with(|e| *e = Some(Arc::clone(&loaded)));
        Ok(loaded)
    }

    /// Use `generator` for jobs instead of starting one from the config (before the first job;
    /// for programs that embed the server with a model of their own, and tests).
    pub fn use_generator(&self, generator: Arc<dyn Generator>) {
        self.preset.with(|p| *p = Some(generator));
    }

    /// The generator, started on first use: the model is fetched, resolved and **loaded on the
    /// blocking pool** (a local model's weights load lazily on first use; warming it here keeps
    /// that load off the async workers, which would otherwise stop answering requests for as
    /// long as it takes).
    pub async fn generator(&self) -> Result<Arc<dyn Generator>, WorkspaceError> {
        let spec = self.config.generator.clone();
        let preset = self.preset.with(|p| p.clone());
        self.generator
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    let g = match preset {
                        Some(g) => g,
                        None => spec.start(8, false)?,
                    };
                    g.context_length()?;
                    Ok::<_, crate::infer::InferError>(g)
                })
                .await
                .map_err(|e| WorkspaceError::Invalid(format!("starting the model: {e}")))?
                .map_err(WorkspaceError::from)
            })
            .await
            .cloned()
    }

    /// The models a summarize job composes with: the generator at every node, and the
    /// config's level generators where they apply (each started once, on the blocking pool).
    pub async fn models(&self) -> Result<Models, WorkspaceError> {
        let mut models = Models::new(self.generator().await?);
        let specs = self.config.level_generators.clone();
        let started = self
            .level_generators
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    specs
                        .into_iter()
                        .map(|(level, spec)| Ok((level, spec.start(8, false)?)))
                        .collect::<Result<Vec<_>, crate::infer::InferError>>()
                })
                .await
                .map_err(|e| WorkspaceError::Invalid(format!("starting the models: {e}")))?
                .map_err(WorkspaceError::from)
            })
            .await?;
        for (level, generator) in started {
            models = models.at(*level, Arc::clone(generator));
        }
        Ok(models)
    }

    /// The tree of book `book_id` with its book and newest run (cached until a job changes it).
    /// Blocking on a cache miss.
    pub fn tree(&self, book_id: &str) -> Result<Arc<LoadedTree>, WorkspaceError> {
        self.trees.get_or_load(book_id, || trees::by_book_id(&self.ws, book_id))
    }

    /// Forgets cached trees and reloads the queue's nodes (after a job wrote to the store).
    /// Blocking.
    pub fn store_changed(&self) -> Result<(), WorkspaceError> {
        // The queue first: pages then meet the new trees right after the queue knows them.
        let reloaded = self.queue.reload(&self.ws, self.scorer().as_ref());
        self.trees.invalidate();
        reloaded
    }

    /// The reward model in use, if any.
    pub fn scorer(&self) -> Option<Scorer> {
        self.scorer.with(|s| s.clone())
    }

    /// Uses `scorer` from now on (the queue ranks with it at its next reload).
    pub fn set_scorer(&self, scorer: Option<Scorer>) {
        self.scorer.with(|s| *s = scorer);
    }

    /// The id of the book with a stored tree that `spec` names (its id, or 8+ hex digits of it).
    pub fn book_id(&self, spec: &str) -> Result<String, Failure> {
        let spec = spec.trim().to_ascii_lowercase();
        let shown: String = spec.chars().take(70).collect();
        if spec.len() < 8 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Failure::not_found(format!(
                "no book '{shown}': name a book by its id (8+ hex digits; see /api/books)"
            )));
        }
        let ids = self.ws.store().scan_keys(crate::store::Table::TaskTrees, &spec)?;
        match ids.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Failure::not_found(format!("no book with a task tree has the id '{shown}'"))),
            _ => Err(Failure::bad_request(format!(
                "'{shown}' names {} books; give more digits",
                ids.len()
            ))),
        }
    }

    /// The book id and label of node `id` (a label or a content-hash prefix), in book `book`
    /// when given, else in whichever stored tree has it (an id in several trees is an error).
    pub fn find_node(&self, id: &str, book: Option<&str>) -> Result<(String, String), Failure> {
        let shown: String = id.chars().take(70).collect();
        let books = match book {
            Some(b) => vec![self.book_id(b)?],
            None => self.ws.store().keys(crate::store::Table::TaskTrees)?,
        };
        let mut found = Vec::new();
        for b in books {
            let loaded = self.tree(&b)?;
            if let Some(nid) = loaded.tree.find(id) {
                found.push((b, loaded.tree.node(nid).label.clone()));
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(Failure::not_found(format!(
                "no node '{shown}'{} ({})",
                if book.is_some() { " in that book's tree" } else { " in any stored tree" },
                crate::workspace::trees::ID_HELP
            ))),
            n => Err(Failure::bad_request(format!(
                "'{shown}' names nodes in {n} trees; add ?book=BOOK_ID"
            ))),
        }
    }

    /// The base URL people open.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A failure a handler answers with: a status and a message for the person or script.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::NOT_FOUND, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::FORBIDDEN, message)
    }

    pub fn internal(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<WorkspaceError> for Failure {
    fn from(err: WorkspaceError) -> Failure {
        let status = match &err {
            WorkspaceError::NotFound(_) => StatusCode::NOT_FOUND,
            WorkspaceError::Invalid(_) | WorkspaceError::Feedback(_) => StatusCode::BAD_REQUEST,
            // A node whose input cannot be rebuilt yet (its children are not summarized).
            WorkspaceError::Compose(crate::compose::ComposeError::Tree { .. }) => {
                StatusCode::CONFLICT
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!("{err}");
        }
        Failure::new(status, err.to_string())
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(err: crate::store::StoreError) -> Failure {
        Failure::from(WorkspaceError::from(err))
    }
}

impl From<crate::feedback::FeedbackError> for Failure {
    fn from(err: crate::feedback::FeedbackError) -> Failure {
        Failure::from(WorkspaceError::from(err))
    }
}

/// Runs blocking store work on the blocking pool (a panic there is a 500, not a crash).
pub async fn blocking<T, F>(f: F) -> Result<T, Failure>
where
    F: FnOnce() -> Result<T, Failure> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure::internal(format!("the request failed inside the server: {e}")))?
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Every route, with the security headers, the body limit and the session layer.
pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/me", get(api::me))
        .route("/books", get(api::books))
        .route("/books/{book}/tree", get(api::tree))
        .route("/books/{book}/summarize", post(api::summarize))
        .route("/nodes/{id}", get(api::node))
        .route("/nodes/{id}/candidates", get(api::candidates))
        .route("/nodes/{id}/draw", post(api::draw))
        .route("/queue", get(api::queue))
        .route("/queue/next", get(api::next))
        .route("/feedback", get(api::feedback_list).post(api::feedback_post))
        .route("/progress", get(api::progress))
        .route("/export", get(api::export))
        .route("/asks", get(api::asks))
        .route("/asks/{id}", post(api::ask_answer))
        .route("/jobs", get(api::jobs))
        .route("/jobs/{id}", get(api::job))
        .route("/jobs/{id}/cancel", post(api::cancel_job))
        .route("/reward/train", post(api::train))
        .fallback(api::not_found);
    Router::new()
        .route("/", get(pages::books))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/books/{book}", get(pages::tree))
        .route("/books/{book}/summarize", post(pages::summarize))
        .route("/books/{book}/draw", post(pages::draw_many))
        .route("/books/{book}/nodes/{node}", get(pages::node))
        .route("/books/{book}/nodes/{node}/answer", post(pages::answer))
        .route("/books/{book}/nodes/{node}/skip", post(pages::skip))
        .route("/books/{book}/nodes/{node}/draw", post(pages::draw))
        .route("/next", get(pages::next))
        .route("/asks/{id}", get(pages::asked))
        .route("/asks/{id}/answer", post(pages::ask_answer))
        .route("/asks/{id}/skip", post(pages::ask_skip))
        .route("/progress", get(pages::progress))
        .route("/decompositions", get(decompositions::page))
        .route("/decompositions/answer", post(decompositions::answer))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{id}/cancel", post(pages::cancel_job))
        .route("/report", get(pages::report_redirect))
        .route("/report/", get(pages::report_index))
        .route("/report/{name}", get(pages::report_file))
        .route("/reward/train", post(pages::train))
        .route("/static/app.js", get(pages::script))
        .route("/static/app.css", get(pages::style))
        .nest("/api", api)
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), auth::layer))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        // `same-origin`, not `no-referrer`: under `no-referrer` browsers send `Origin: null`
        // with a form's POST, which the Origin check would refuse.
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .with_state(state)
}

/// Serves until `shutdown` resolves, on an already bound listener. Writes the owner file beside
/// the database (and removes it at the end), and prints nothing: the caller says where it runs.
pub async fn serve(
    state: Shared,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let db = state.ws.store().path().to_path_buf();
    let owner = Owner {
        program: "rrm serve".into(),
        addr: Some(state.url()),
        pid: std::process::id(),
        started_unix: crate::feedback::unix_now(),
    };
    if let Err(err) = owner.write(&db) {
        tracing::warn!("could not write {}: {err}", Owner::file(&db).display());
    }
    let app = router(Arc::clone(&state));
    let grace = state.config.shutdown_grace;
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let server = std::future::IntoFuture::into_future(
        axum::serve(listener, app).with_graceful_shutdown(signal),
    );
    // Graceful, but bounded: a request that never finishes (a client that stopped sending)
    // does not keep the server, and the database, forever.
    let result = tokio::select! {
        r = server => r,
        _ = async {
            if stopped.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!("requests still open {grace:?} after the stop: closing them");
            Ok(())
        }
    };
    // Running jobs stop at their next step; the database is let go only once they have.
    state.jobs.cancel_all();
    let idle = state.jobs.wait_idle(grace.max(Duration::from_secs(1)) * 3).await;
    let flushed = state.ws.store().flush();
    if idle {
        Owner::remove(&db);
    } else {
        tracing::warn!(
            "{} job(s) still running at exit; {} stays until the process ends",
            state.jobs.running(),
            Owner::file(&db).display()
        );
    }
    result?;
    flushed.map_err(WorkspaceError::from)?;
    Ok(())
}

/// Binds `config.addr` and builds the state (refusing a non-loopback address without
/// labelers).
pub async fn bind(
    ws: Workspace,
    config: ServeConfig,
) -> Result<(Shared, tokio::net::TcpListener), ServeError> {
    let has_labelers = !crate::workspace::labelers::all(&ws)?.is_empty();
    if !has_labelers && !config.addr.ip().is_loopback() {
        return Err(ServeError::OpenWithoutLabelers { addr: config.addr });
    }
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind { addr: config.addr, source })?;
    let addr = listener.local_addr()?;
    let state = AppState::new(ws, config, addr)?;
    Ok((state, listener))
}

/// A JSON error body: `{"error": message}`.
pub fn json_failure(f: &Failure) -> Response {
    (f.status, axum::Json(serde_json::json!({ "error": f.message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 6 of the web-app issue: a tree read while a job wrote was cached after the
    /// job's invalidation, keeping the old run for good.
    #[test]
    fn a_tree_loaded_across_an_invalidation_is_not_kept() {
        let cache = TreeCache::<String>::default();
        let tree = || "a tree".to_string();
        let mut loads = 0;
        let _ = cache.get_or_load("b", || -> Result<_, ()> {
            loads += 1;
            cache.invalidate(); // a job wrote while this request read the store
            Ok(tree())
        });
        let _ = cache.get_or_load("b", || -> Result<_, ()> {
            loads += 1;
            Ok(tree())
        });
        assert_eq!(loads, 2, "the stale load was not cached");
        let _ = cache.get_or_load("b", || -> Result<_, ()> {
            loads += 1;
            Ok(tree())
        });
        assert_eq!(loads, 2, "a load under the current generation is cached");
    }
}
