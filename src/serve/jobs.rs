//! Long work inside the server (it owns the database, so nothing else can do it meanwhile):
//! drawing candidates for a node or for many, summarizing a book, training the reward models.
//! Each job runs on the async runtime (model calls are async; store and training work goes to
//! the blocking pool), reports progress, and ends Done or Failed with a message; the jobs page
//! and `/api/jobs` show them. A job that is already running is not started twice.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::ask::WebAsker;
use super::{answers, blocking, lock, Failure, Scorer, Shared};
use crate::compose::{ComposeOptions, MeanLogprob, Observer, Selector};
use crate::feedback;
use crate::reward::train::TrainConfig;
use crate::reward::{RewardModel, RewardSelector};
use crate::workspace::{embeddings, rating, summarize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Done,
    Failed,
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

#[derive(Default)]
pub struct Jobs {
    list: Mutex<Vec<Job>>,
    next: AtomicU64,
    cancelled: Arc<AtomicBool>,
}

impl Jobs {
    pub fn all(&self) -> Vec<Job> {
        let mut jobs = lock(&self.list).clone();
        jobs.reverse();
        jobs
    }

    pub fn get(&self, id: u64) -> Option<Job> {
        lock(&self.list).iter().find(|j| j.id == id).cloned()
    }

    pub fn running(&self) -> usize {
        lock(&self.list).iter().filter(|j| j.state == JobState::Running).count()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Job)) {
        if let Some(job) = lock(&self.list).iter_mut().find(|j| j.id == id) {
            f(job);
        }
    }

    pub fn progress(&self, id: u64, done: usize, total: usize) {
        self.update(id, |j| {
            j.done = done;
            j.total = total;
        });
    }

    /// Asks running jobs to stop at their next step (the server is shutting down).
    pub fn cancel_all(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// The flag [`Jobs::cancel_all`] sets (for work that polls it on another thread).
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.cancelled)
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// Starts `work` as a job, unless a job of the same kind and title is running (then its id).
fn spawn<F, Fut>(
    state: &Shared,
    kind: &str,
    title: String,
    labeler: &str,
    link: Option<String>,
    work: F,
) -> u64
where
    F: FnOnce(Shared, u64) -> Fut,
    Fut: Future<Output = Result<String, Failure>> + Send + 'static,
{
    let jobs = &state.jobs;
    let id = {
        let mut list = lock(&jobs.list);
        if let Some(j) =
            list.iter().find(|j| j.state == JobState::Running && j.kind == kind && j.title == title)
        {
            return j.id;
        }
        let id = jobs.next.fetch_add(1, Ordering::SeqCst) + 1;
        list.push(Job {
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
        });
        id
    };
    let fut = work(Arc::clone(state), id);
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let result = fut.await;
        if let Err(f) = &result {
            tracing::warn!("job {id} failed: {}", f.message);
        }
        state.jobs.update(id, |j| {
            j.finished_unix = Some(feedback::unix_now());
            match result {
                Ok(message) => {
                    j.state = JobState::Done;
                    j.message = message;
                }
                Err(f) => {
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

/// Draws `k` more candidates for node `label` of book `book_id`.
pub fn draw(state: &Shared, labeler: &str, book_id: &str, label: &str, k: usize) -> u64 {
    let (book, node) = (book_id.to_string(), label.to_string());
    let link = Some(format!("/books/{book}/nodes/{node}"));
    let title = format!("draw {k} candidates for {node} of {}", &book[..book.len().min(12)]);
    spawn(state, "draw", title, labeler, link, move |state, id| async move {
        let s = Arc::clone(&state);
        let target = blocking(move || answers::target(&s, &book, &node)).await?;
        state.jobs.progress(id, 0, 1);
        let generator = state.generator().await?;
        let cands = rating::draw(&state.ws, generator.as_ref(), &target, k, None, None).await?;
        state.jobs.progress(id, 1, 1);
        changed(&state).await?;
        Ok(format!("node {} has {} distinct candidates", target.label(), cands.len()))
    })
}

/// Draws `k` candidates for up to `count` nodes of book `book_id` that have fewer than two:
/// lowest heights first, in book order (nodes whose inputs are not summarized yet are passed
/// over).
pub fn draw_many(state: &Shared, labeler: &str, book_id: &str, count: usize, k: usize) -> u64 {
    let book = book_id.to_string();
    let link = Some("/next".to_string());
    let title = format!("draw candidates for {count} nodes of {}", &book[..book.len().min(12)]);
    spawn(state, "draw-many", title, labeler, link, move |state, id| async move {
        let s = Arc::clone(&state);
        let b = book.clone();
        let targets = blocking(move || {
            let loaded = s.tree(&b)?;
            let tree = &loaded.tree;
            let mut order = tree.nodes_topological();
            order.sort_by_key(|&n| (tree.node(n).height, tree.node(n).index));
            let mut out = Vec::new();
            for nid in order {
                if out.len() >= count {
                    break;
                }
                let Ok(target) = rating::finish(&s.ws, (*loaded).clone(), nid) else { continue };
                if answers::candidates(&s, &target)?.len() < 2 {
                    out.push(target);
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
        let draws =
            targets.iter().map(|t| rating::draw(&state.ws, generator.as_ref(), t, k, None, None));
        let mut done = 0;
        let mut failed = Vec::new();
        for (t, r) in targets.iter().zip(futures::future::join_all(draws).await) {
            match r {
                Ok(_) => done += 1,
                Err(e) => failed.push(format!("{}: {e}", t.label())),
            }
            state.jobs.progress(id, done, total);
        }
        changed(&state).await?;
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
        self.total.store(total as u64, Ordering::SeqCst);
        self.state.jobs.progress(self.id, 0, total);
    }

    fn node_done(&self, _label: &str, _cached: bool, _tokens: usize) {
        let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        let total = self.total.load(Ordering::SeqCst);
        self.state.jobs.progress(self.id, done as usize, total as usize);
    }
}

/// `summarize --ask` inside the server: where the reward ensemble cannot tell a node's two best
/// candidates apart, the job asks the labelers (see [`super::ask`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AskSettings {
    /// Candidates drawn per node to choose between (2 or more).
    pub best_of: usize,
    /// Ask when |mean_a − mean_b| < threshold · √(std_a² + std_b²). Without a reward model the
    /// job asks at every node (within the budget): there is no uncertainty to measure.
    pub threshold: f32,
    /// At most this many questions (`None`: no limit).
    pub budget: Option<usize>,
}

impl Default for AskSettings {
    fn default() -> AskSettings {
        AskSettings { best_of: 2, threshold: 1.0, budget: None }
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
    spawn(state, "summarize", title, labeler, link, move |state, id| async move {
        let s = Arc::clone(&state);
        let loaded = blocking(move || Ok(s.tree(&book)?)).await?;
        let book = loaded.require_book()?.clone();
        let generator = state.generator().await?;
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
                let (inner, threshold): (Arc<dyn Selector>, f32) = match state.scorer() {
                    Some(scorer) => {
                        let cache = embeddings::cache(state.ws.store());
                        let selector =
                            RewardSelector::new(scorer.model, scorer.encoder, Some(cache), 0.0)
                                .map_err(crate::workspace::WorkspaceError::from)?;
                        (Arc::new(selector), settings.threshold)
                    }
                    None => (Arc::new(MeanLogprob), f32::INFINITY),
                };
                let asker = Arc::new(WebAsker {
                    hub: Arc::clone(&state.asks),
                    job: id,
                    cancelled: state.jobs.cancel_flag(),
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
            generator,
            selector,
            options,
            &observer,
        )
        .await?;
        changed(&state).await?;
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
    spawn(
        state,
        "train",
        "train the reward models".into(),
        labeler,
        link,
        move |state, _id| async move {
            let s = Arc::clone(&state);
            let (card, scorer) = blocking(move || {
                let pairs = feedback::to_pairs(&lock(&s.queue).records);
                if pairs.is_empty() {
                    return Err(Failure::bad_request(
                        "no preference pairs yet: compare some candidates first",
                    ));
                }
                let encoder = s.ws.encoder(&s.config.encoder, false)?;
                let cache = embeddings::cache(s.ws.store());
                let mut model = RewardModel::train(
                    encoder.as_ref(),
                    Some(cache),
                    &pairs,
                    &TrainConfig::default(),
                    "store",
                )
                .map_err(crate::workspace::WorkspaceError::from)?;
                model.save(s.ws.reward_dir()).map_err(crate::workspace::WorkspaceError::from)?;
                let card = model.card.clone();
                Ok((card, Scorer { model: Arc::new(model), encoder }))
            })
            .await?;
            match state.scorer.write() {
                Ok(mut s) => *s = Some(scorer),
                Err(e) => *e.into_inner() = Some(scorer),
            }
            changed(&state).await?;
            Ok(format!(
                "reward model {} on {} pairs",
                &card.hash[..card.hash.len().min(12)],
                card.data.pairs
            ))
        },
    )
}

/// The node ids of a book's tree whose inputs can be rebuilt, with their candidate counts
/// (for the empty-queue page).
pub fn needs_candidates(state: &Shared, book_id: &str) -> Result<usize, Failure> {
    let loaded = state.tree(book_id)?;
    let q = lock(&state.queue);
    let keys = crate::workspace::overview::input_keys(&state.ws, &loaded)?;
    Ok(keys.values().filter(|k| q.candidates(k).is_none_or(|(c, _)| c.len() < 2)).count())
}
