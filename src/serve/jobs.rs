//! Long work inside the server (it owns the database, so nothing else can do it meanwhile):
//! drawing candidates for a node or for many, summarizing a book, training the reward models.
//! Each job runs on the async runtime, reports progress, and ends Done, Failed or Cancelled
//! with a message; the jobs page and `/api/jobs` show them. A job that is already running is not
//! started twice.
//!
//! What every job gets from [`start`], whatever it does:
//! - Model calls are async; store I/O, scans and training go to the blocking pool, so no job
//!   ever stalls the workers that answer requests (the model's first load too: see
//!   [`super::AppState::generator`]).
//! - A job that panics ends Failed with the panic's message (it never stays Running, which would
//!   also block starting it again).
//! - After a job ends, however it ends, the queue and the tree cache reload: a summary that
//!   failed half-way still shows the nodes it finished.
//! - Each job can be cancelled on its own (`POST /api/jobs/{id}/cancel`, the Jobs page); the
//!   server's shutdown cancels them all and waits for them before it lets the database go.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use serde::Serialize;

use super::ask::{AskSettings, WebAsker};
use super::sync::{rank, Guarded};
use super::{answers, blocking, Failure, Scorer, Shared};
use crate::compose::sample;
use crate::compose::{ComposeOptions, MeanLogprob, Observer, Selector};
use crate::feedback;
use crate::reward::train::{StopFlag, TrainConfig};
use crate::reward::{RewardModel, RewardSelector};
use crate::workspace::{embeddings, rating, summarize, WorkspaceError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Done,
    Failed,
    Cancelled,
}

/// A job as the jobs page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: u64,
    /// `draw`, `draw-many`, `summarize`, `train`.
    pub kind: String,
    pub title: String,
    pub labeler: String,
    pub state: JobState,
    pub done: usize,
    pub total: usize,
    /// What it did, or why it failed.
    pub message: String,
    pub started_unix: u64,
    pub finished_unix: Option<u64>,
    /// Where to look when it is done (e.g. the node it drew candidates for).
    pub link: Option<String>,
}

/// A job's cancel signal: a flag for blocking code to poll and a wake-up for async code.
#[derive(Clone)]
pub struct Cancel {
    flag: StopFlag,
    notify: Arc<tokio::sync::Notify>,
}

impl Default for Cancel {
    fn default() -> Cancel {
        Cancel { flag: StopFlag::default(), notify: Arc::new(tokio::sync::Notify::new()) }
    }
}

impl Cancel {
    pub fn cancel(&self) {
        self.flag.set();
        self.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.is_set()
    }

    /// The flag itself (training polls it between epochs).
    pub fn flag(&self) -> StopFlag {
        self.flag.clone()
    }

    /// Resolves once the job is cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

struct Entry {
    job: Job,
    cancel: Cancel,
}

pub struct Jobs {
    list: Guarded<Vec<Entry>>,
    next: AtomicU64,
    shutting_down: AtomicBool,
}

impl Default for Jobs {
    fn default() -> Jobs {
        Jobs {
            list: Guarded::new("jobs", rank::LEAF, Vec::new()),
            next: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
        }
    }
}

impl Jobs {
    /// Every job, newest first.
    pub fn all(&self) -> Vec<Job> {
        self.list.with(|l| l.iter().rev().map(|e| e.job.clone()).collect())
    }

    pub fn get(&self, id: u64) -> Option<Job> {
        self.list.with(|l| l.iter().find(|e| e.job.id == id).map(|e| e.job.clone()))
    }

    pub fn running(&self) -> usize {
        self.list.with(|l| l.iter().filter(|e| e.job.state == JobState::Running).count())
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Job)) {
        self.list.with(|l| {
            if let Some(e) = l.iter_mut().find(|e| e.job.id == id) {
                f(&mut e.job);
            }
        });
    }

    pub fn progress(&self, id: u64, done: usize, total: usize) {
        self.update(id, |j| {
            j.done = done;
            j.total = total;
        });
    }

    /// Asks job `id` to stop at its next step. Returns the job, or `None` when there is none.
    pub fn cancel(&self, id: u64) -> Option<Job> {
        let found = self
            .list
            .with(|l| l.iter().find(|e| e.job.id == id).map(|e| (e.job.clone(), e.cancel.clone())));
        let (job, cancel) = found?;
        cancel.cancel();
        Some(job)
    }

    /// [`Jobs::cancel`] for an id as a route gives it (a 404 names it when there is no such job).
    pub fn cancel_named(&self, id: &str) -> Result<Job, Failure> {
        id.parse::<u64>().ok().and_then(|n| self.cancel(n)).ok_or_else(|| {
            Failure::not_found(format!(
                "no job '{}' (see /api/jobs)",
                id.chars().take(20).collect::<String>()
            ))
        })
    }

    /// Asks every running job to stop (the server is shutting down); jobs started later are
    /// cancelled at once.
    pub fn cancel_all(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let all: Vec<Cancel> = self.list.with(|l| l.iter().map(|e| e.cancel.clone()).collect());
        for c in all {
            c.cancel();
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Waits until no job runs, at most `limit`. Returns whether none runs.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.running() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "no message".into())
}

/// Starts `work` as a job, unless a job of the same kind and title is running (then its id).
/// `work` gets the state, the job's id and its cancel signal; see the module docs for what
/// every job gets around it.
/// With `drop_on_cancel`, a cancel drops the work at its next `.await` (its store writes are
/// each complete on their own); without, the work polls its [`Cancel`] itself and ends when it
/// sees it (training, whose writes happen on one blocking thread).
pub fn start<F, Fut>(
    state: &Shared,
    kind: &str,
    title: String,
    labeler: &str,
    link: Option<String>,
    drop_on_cancel: bool,
    work: F,
) -> u64
where
    F: FnOnce(Shared, u64, Cancel) -> Fut,
    Fut: Future<Output = Result<String, Failure>> + Send + 'static,
{
    let jobs = &state.jobs;
    let cancel = Cancel::default();
    let started = jobs.list.with(|list| {
        if let Some(e) = list.iter().find(|e| {
            e.job.state == JobState::Running && e.job.kind == kind && e.job.title == title
        }) {
            return Err(e.job.id);
        }
        let id = jobs.next.fetch_add(1, Ordering::SeqCst) + 1;
        list.push(Entry {
            job: Job {
                id,
                kind: kind.to_string(),
                title,
                labeler: labeler.to_string(),
                state: JobState::Running,
                done: 0,
                total: 0,
                message: String::new(),
                started_unix: feedback::unix_now(),
                finished_unix: None,
                link,
            },
            cancel: cancel.clone(),
        });
        Ok(id)
    });
    let id = match started {
        Ok(id) => id,
        Err(running) => return running,
    };
    if jobs.is_shutting_down() {
        cancel.cancel();
    }
    let fut = work(Arc::clone(state), id, cancel.clone());
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let run = async move {
            AssertUnwindSafe(fut).catch_unwind().await.unwrap_or_else(|payload| {
                Err(Failure::internal(format!(
                    "the job stopped on an internal error (a bug; please report it): {}",
                    panic_text(payload.as_ref())
                )))
            })
        };
        let outcome = if drop_on_cancel {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(Failure::internal("cancelled")),
                r = run => r,
            }
        } else {
            run.await
        };
        // Its questions go with it; whatever it did reaches the queue and the trees, also after
        // a failure.
        state.asks.withdraw_job(id);
        let refreshed = changed(&state).await;
        let cancelled = cancel.is_cancelled();
        match &outcome {
            Err(f) if !cancelled => tracing::warn!("job {id} failed: {}", f.message),
            _ => {}
        }
        state.jobs.update(id, |j| {
            j.finished_unix = Some(feedback::unix_now());
            match (outcome, refreshed) {
                (_, _) if cancelled => {
                    j.state = JobState::Cancelled;
                    j.message = "cancelled; what it finished is stored".into();
                }
                (Ok(message), Ok(())) => {
                    j.state = JobState::Done;
                    j.message = message;
                }
                (Ok(_), Err(f)) | (Err(f), _) => {
                    j.state = JobState::Failed;
                    j.message = f.message;
                }
            }
        });
    });
    id
}

/// After a job wrote to the store: the queue and the tree cache reload.
async fn changed(state: &Shared) -> Result<(), Failure> {
    let s = Arc::clone(state);
    blocking(move || Ok(s.store_changed()?)).await
}

/// Draws `k` candidates for `node` (already rebuilt) and stores them: the seed and the store
/// on the blocking pool, the generation on the model. Returns how many new texts it drew.
async fn draw_for(
    state: &Shared,
    generator: Arc<dyn crate::infer::Generator>,
    target: Arc<sample::NodeInput>,
    k: usize,
) -> Result<usize, Failure> {
    let (s, g, t) = (Arc::clone(state), Arc::clone(&generator), Arc::clone(&target));
    let (params, seed) =
        blocking(move || Ok(rating::draw_params(&s.ws, g.as_ref(), &t, k, None, None)?)).await?;
    let set = sample::generate(generator.as_ref(), &target, k, &params, seed)
        .await
        .map_err(WorkspaceError::from)?;
    let drawn = set.candidates.iter().filter(|c| !c.text.trim().is_empty()).count();
    let s = Arc::clone(state);
    blocking(move || Ok(sample::store_set(s.ws.store(), &set).map_err(WorkspaceError::from)?))
        .await?;
    Ok(drawn)
}

/// Draws `k` more candidates for node `label` of book `book_id`.
pub fn draw(state: &Shared, labeler: &str, book_id: &str, label: &str, k: usize) -> u64 {
    let (book, node) = (book_id.to_string(), label.to_string());
    let link = Some(format!("/books/{book}/nodes/{node}"));
    let title = format!("draw {k} candidates for {node} of {}", &book[..book.len().min(12)]);
    start(state, "draw", title, labeler, link, true, move |state, id, _cancel| async move {
        let s = Arc::clone(&state);
        let target = blocking(move || Ok(answers::target(&s, &book, &node)?.input)).await?;
        state.jobs.progress(id, 0, 1);
        let generator = state.generator().await?;
        let label = target.label.clone();
        let drawn = draw_for(&state, generator, Arc::new(target), k).await?;
        state.jobs.progress(id, 1, 1);
        Ok(format!("drew {drawn} candidates for node {label}"))
    })
}

/// Draws `k` candidates for up to `count` nodes of book `book_id` that have fewer than two:
/// lowest heights first, in book order (nodes whose inputs are not summarized yet are passed
/// over).
pub fn draw_many(state: &Shared, labeler: &str, book_id: &str, count: usize, k: usize) -> u64 {
    let book = book_id.to_string();
    let link = Some("/next".to_string());
    let title = format!("draw candidates for {count} nodes of {}", &book[..book.len().min(12)]);
    start(state, "draw-many", title, labeler, link, true, move |state, id, _cancel| async move {
        let s = Arc::clone(&state);
        let b = book.clone();
        let targets = blocking(move || {
            let loaded = s.tree(&b)?;
            let Some(book) = loaded.book.as_ref() else {
                return Err(Failure::not_found("the book's text is not available"));
            };
            let tree = &loaded.tree;
            let nodes = s.queue.snapshot().nodes;
            let mut order = tree.nodes_topological();
            order.sort_by_key(|&n| (tree.node(n).height, tree.node(n).index));
            let mut out = Vec::new();
            for nid in order {
                if out.len() >= count {
                    break;
                }
                let store = s.ws.store();
                let Ok(input) = sample::node_input(store, book, tree, loaded.run.as_ref(), nid)
                else {
                    continue;
                };
                if nodes.candidates(&input.input_key).is_none_or(|(c, _)| c.len() < 2) {
                    out.push(Arc::new(input));
                }
            }
            Ok(out)
        })
        .await?;
        if targets.is_empty() {
            return Ok("every node with an input already has two or more candidates".into());
        }
        let generator = state.generator().await?;
        let total = targets.len();
        state.jobs.progress(id, 0, total);
        // All at once: the engine batches concurrent requests together.
        let draws = targets.iter().map(|t| draw_for(&state, Arc::clone(&generator), t.clone(), k));
        let mut done = 0;
        let mut failed = Vec::new();
        for (t, r) in targets.iter().zip(futures::future::join_all(draws).await) {
            match r {
                Ok(_) => done += 1,
                Err(e) => failed.push(format!("{}: {}", t.label, e.message)),
            }
            state.jobs.progress(id, done, total);
        }
        if failed.is_empty() {
            Ok(format!("drew {k} candidates for each of {done} nodes"))
        } else {
            Err(Failure::internal(format!(
                "{} of {total} draws failed: {}",
                failed.len(),
                failed.join("; ")
            )))
        }
    })
}

struct JobObserver {
    state: Shared,
    id: u64,
    done: AtomicU64,
    total: AtomicU64,
}

impl Observer for JobObserver {
    fn started(&self, total: usize) {
        // A ranked ask composes twice (planning, then asking): each pass counts from zero.
        self.total.store(total as u64, Ordering::SeqCst);
        self.done.store(0, Ordering::SeqCst);
        self.state.jobs.progress(self.id, 0, total);
    }

    fn node_done(&self, _label: &str, _cached: bool, _tokens: usize) {
        let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        let total = self.total.load(Ordering::SeqCst);
        self.state.jobs.progress(self.id, done as usize, total as usize);
    }
}

/// Summarizes book `book_id` along its stored tree (cached nodes are instant); with `ask`,
/// labelers decide the nodes the reward ensemble is unsure of.
pub fn summarize_book(
    state: &Shared,
    labeler: &str,
    book_id: &str,
    ask: Option<AskSettings>,
) -> u64 {
    let book = book_id.to_string();
    let link = Some(format!("/books/{book}"));
    let title = format!(
        "summarize {}{}",
        &book[..book.len().min(12)],
        if ask.is_some() { ", asking where unsure" } else { "" }
    );
    start(state, "summarize", title, labeler, link, true, move |state, id, cancel| async move {
        let s = Arc::clone(&state);
        let loaded = blocking(move || Ok(s.tree(&book)?)).await?;
        let book = loaded.require_book()?.clone();
        let models = state.models().await?;
        let observer = JobObserver {
            state: Arc::clone(&state),
            id,
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
        };
        let mut options = ComposeOptions::default();
        let mut asking = None;
        let selector: Arc<dyn Selector> = match ask {
            None => Arc::new(MeanLogprob),
            Some(settings) => {
                if settings.best_of < 2 {
                    return Err(Failure::bad_request(
                        "asking chooses between candidates: it needs best-of 2 or more",
                    ));
                }
                options.best_of = settings.best_of;
                let (inner, mut threshold): (Arc<dyn Selector>, f32) = match state.scorer() {
                    Some(scorer) => {
                        let cache = embeddings::cache(state.ws.store());
                        let selector =
                            RewardSelector::new(scorer.model, scorer.encoder, Some(cache), 0.0)
                                .map_err(WorkspaceError::from)?;
                        (Arc::new(selector), settings.threshold)
                    }
                    None => (Arc::new(MeanLogprob), f32::INFINITY),
                };
                // Without a reward model there is no doubt to rank by: the first nodes are asked.
                if let (Some(budget), true, true) =
                    (settings.budget, settings.ranked, threshold.is_finite())
                {
                    threshold = crate::workspace::ask::ranked_threshold_for(
                        &state.ws,
                        &book,
                        &loaded.tree,
                        models.clone(),
                        Arc::clone(&inner),
                        options.clone(),
                        budget,
                        threshold,
                        &observer,
                    )
                    .await?;
                }
                let stop = cancel.flag();
                let asker = Arc::new(WebAsker {
                    hub: Arc::clone(&state.asks),
                    job: id,
                    cancelled: Box::new(move || stop.is_set()),
                    max_wait: state.config.ask_wait,
                });
                let s = crate::workspace::ask::asking_selector(
                    &state.ws,
                    inner,
                    asker,
                    threshold,
                    settings.budget,
                )?;
                asking = Some(Arc::clone(&s));
                s
            }
        };
        let report = summarize::compose(
            &state.ws,
            &book,
            &loaded.tree,
            models,
            selector,
            options,
            &observer,
        )
        .await?;
        Ok(format!(
            "{} nodes ({} generated, {} from cache) in {:.1} s{}",
            report.nodes_total,
            report.computed,
            report.cache_hits,
            report.elapsed.as_secs_f64(),
            match asking {
                Some(s) => format!("; asked {} question(s)", s.stats().asked),
                None => String::new(),
            }
        ))
    })
}

/// Trains the reward models on every stored preference pair and uses them for the queue.
pub fn train(state: &Shared, labeler: &str) -> u64 {
    let link = Some("/progress".to_string());
    let title = "train the reward models".to_string();
    start(state, "train", title, labeler, link, false, move |state, _id, cancel| async move {
        let s = Arc::clone(&state);
        let (card, scorer) = blocking(move || {
            let pairs = feedback::to_pairs(&s.queue.records());
            if pairs.is_empty() {
                return Err(Failure::bad_request(
                    "no preference pairs yet: compare some candidates first",
                ));
            }
            let encoder = s.ws.encoder(&s.config.encoder, false)?;
            let cache = embeddings::cache(s.ws.store());
            let config = TrainConfig { stop: cancel.flag(), ..TrainConfig::default() };
            let mut model =
                RewardModel::train(encoder.as_ref(), Some(cache), &pairs, &config, "store")
                    .map_err(WorkspaceError::from)?;
            if cancel.is_cancelled() {
                return Err(Failure::internal("cancelled before the model was saved"));
            }
            model.save(s.ws.reward_dir()).map_err(WorkspaceError::from)?;
            let card = model.card.clone();
            Ok((card, Scorer { model: Arc::new(model), encoder }))
        })
        .await?;
        state.set_scorer(Some(scorer));
        Ok(format!(
            "reward model {} on {} pairs",
            &card.hash[..card.hash.len().min(12)],
            card.data.pairs
        ))
    })
}

/// How many nodes of a book's tree whose inputs can be rebuilt have fewer than two candidates
/// (for the empty-queue page). Blocking: reads the store, then counts on a queue snapshot.
pub fn needs_candidates(state: &Shared, book_id: &str) -> Result<usize, Failure> {
    let loaded = state.tree(book_id)?;
    let keys = crate::workspace::overview::input_keys(&state.ws, &loaded)?;
    let nodes = state.queue.snapshot().nodes;
    Ok(keys.values().filter(|k| nodes.candidates(k).is_none_or(|(c, _)| c.len() < 2)).count())
}
