//! Recursive composition: summarizes a [`TaskTree`] bottom-up with a [`Generator`], caching
//! every node's result by content.
//!
//! The scheduler keeps a ready set: a node is ready when all its inputs (children and, with
//! previous context on, its context sources) have outputs. Ready nodes are sent to the generator
//! concurrently, up to the batch size in sequences; the generator batches them together, and a
//! parent is sent as soon as its last child finishes, not when the whole level is done.
//!
//! Cache ([`keys`]): a node's *generation key* is a blake3 hash of its input text, its context
//! text, the template id and version, the model's hash, the sampling parameters, the output cap,
//! the number of candidates and the seed; its *output key* adds the selector's identity.
//! Candidates are stored under the generation key, the chosen output under the output key, and
//! both are flushed, with the run's record ([`RunRecord`]), before the node counts as done: a
//! crash loses at most the nodes in flight, and a re-run does no model work for anything already
//! stored.
//!
//! Nothing slow runs on the async runtime: the model's (lazy) load and the selector's scoring
//! (a reward model embeds texts) run on blocking threads.
//!
//! Imports `book`, `tree`, `infer` (seams only) and `store`; never the CLI.

pub mod ask;
pub mod cache;
pub mod keys;
pub mod models;
pub mod prompt;
pub mod record;
pub mod sample;
pub mod select;
pub mod text;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

use crate::book::Book;
use crate::infer::{
    Completion, FinishReason, GenerationRequest, Generator, InferError, SamplingParams,
};
use crate::store::{Store, StoreError, Table};
use crate::tree::{NodeId, NodeKind, TaskTree};

pub use keys::input_key;
pub use models::{Level, Models};
pub use record::{Candidate, CandidateOrigin, CandidateSet, NodeOutput, RunRecord};
pub use select::{CandidateScore, MeanLogprob, SelectNode, Selector};

/// Everything that decides what the composer generates, besides the tree and the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComposeOptions {
    /// Most sequences in flight at once (the generator's batch).
    pub batch_size: usize,
    /// Candidates per node.
    pub best_of: usize,
    /// Sampling for a single candidate (best_of = 1).
    pub sampling: SamplingParams,
    /// Sampling for best-of-N candidates (must be stochastic, or all N are the same).
    pub sampling_best_of: SamplingParams,
    pub seed: u64,
    /// Loop detection: a word n-gram of this size may occur at most `loop_max_repeats` times.
    pub loop_ngram: usize,
    pub loop_max_repeats: usize,
    /// Compose only the nodes up to this height (0: the leaves only); `None`: up to the root.
    #[serde(default)]
    pub max_height: Option<u32>,
    /// With best-of-N: candidate 0 is the single-candidate decode (`sampling`, greedy unless a
    /// temperature was asked for) and the others are sampled, so a selector can always fall
    /// back on what best-of-1 would have given. On by default; records written before it
    /// existed read as off, which is what those runs did.
    #[serde(default)]
    pub greedy_first: bool,
    /// Where best-of-N draws its `best_of` candidates: at every level when empty, else only at
    /// these levels (e.g. the root); every other node gets the single decode, as with
    /// `best_of = 1` (and shares its cached result).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub best_of_at: Vec<Level>,
}

impl Default for ComposeOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            best_of: 1,
            sampling: SamplingParams {
                temperature: 0.0,
                top_p: 1.0,
                top_k: None,
                repetition_penalty: 1.15,
                repetition_window: 64,
                no_repeat_ngram: Some(4),
            },
            sampling_best_of: SamplingParams {
                temperature: 0.8,
                top_p: 0.95,
                top_k: Some(50),
                repetition_penalty: 1.15,
                repetition_window: 64,
                no_repeat_ngram: Some(4),
            },
            seed: 0,
            loop_ngram: 4,
            loop_max_repeats: 3,
            max_height: None,
            greedy_first: true,
            best_of_at: Vec::new(),
        }
    }
}

impl ComposeOptions {
    /// How many candidates a node of `height` gets (`root`: the tree's root).
    pub fn best_of_for(&self, height: u32, root: bool) -> usize {
        let here =
            self.best_of_at.is_empty() || self.best_of_at.iter().any(|l| l.holds(height, root));
        if here {
            self.best_of.max(1)
        } else {
            1
        }
    }

    /// The sampling a node's `candidates` are drawn with.
    pub fn sampling_for(&self, candidates: usize) -> &SamplingParams {
        if candidates > 1 {
            &self.sampling_best_of
        } else {
            &self.sampling
        }
    }
}

/// What a composition did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComposeReport {
    /// The root's output; empty when a height limit stopped below the root.
    pub root_summary: String,
    /// Whether the root was composed (false with a height limit below it).
    pub complete: bool,
    pub nodes_total: usize,
    /// Nodes whose output was already stored.
    pub cache_hits: usize,
    /// Nodes whose candidates were generated in this run.
    pub computed: usize,
    /// Labels of the nodes generated in this run.
    pub computed_labels: Vec<String>,
    pub prompt_tokens: usize,
    pub tokens_generated: usize,
    pub elapsed: Duration,
}

/// Progress events, for a progress bar.
pub trait Observer: Send + Sync {
    fn started(&self, _total: usize) {}
    fn node_done(&self, _label: &str, _cached: bool, _tokens_generated: usize) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("generation failed for node {node}: {source}")]
    Generate { node: String, source: InferError },
    #[error("node {node}: {source}")]
    Model { node: String, source: InferError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Prompt(#[from] prompt::PromptError),
    #[error(transparent)]
    Select(#[from] select::SelectError),
    #[error("node {node}: the generator returned {got} completions for {want} requests")]
    Protocol { node: String, got: usize, want: usize },
    #[error("node {node}: the selector {selector} gave {got} scores for {want} candidates")]
    Scores { node: String, selector: String, got: usize, want: usize },
    #[error("task tree is for book {tree} but the book given is {book}")]
    BookMismatch { tree: String, book: String },
    #[error("node {node}: {what}")]
    Tree { node: String, what: String },
    #[error(
        "best-of-N is asked for only at {levels}, and the tree of {book} has no such level \
         (its heights are 0 to {max_height}, the root): no node would draw candidates"
    )]
    NoSuchLevel { levels: String, book: String, max_height: u32 },
    #[error("a background task of the composer failed: {0}")]
    Join(String),
}

/// Walks a task tree bottom-up with a generator, a selector and the store.
pub struct Composer {
    models: Models,
    selector: Arc<dyn Selector>,
    store: Store,
    options: ComposeOptions,
}

/// A node ready to run: its prompt input, its keys, and whether its result is stored.
#[derive(Clone)]
struct Prepared {
    id: NodeId,
    book_id: String,
    label: String,
    height: u32,
    input: String,
    context: Option<String>,
    input_key: String,
    gen_key: String,
    output_key: String,
    requests: Vec<GenerationRequest>,
    /// The model that summarizes this node.
    generator: Arc<dyn Generator>,
}

/// What an in-flight node comes back with: its candidates (new, or found stored) and the pick.
struct Finished {
    prepared: Prepared,
    set: CandidateSet,
    /// The candidates were generated now (not found stored).
    generated: bool,
    output: NodeOutput,
}

/// Runs blocking work (a model load, reward scoring) off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ComposeError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ComposeError::Join(e.to_string()))
}

impl Composer {
    /// `models`: one generator for every node, or [`Models`] with exceptions per level.
    pub fn new(
        models: impl Into<Models>,
        selector: Arc<dyn Selector>,
        store: Store,
        options: ComposeOptions,
    ) -> Self {
        Self { models: models.into(), selector, store, options }
    }

    pub fn options(&self) -> &ComposeOptions {
        &self.options
    }

    /// Summarizes `tree` (built from `book`) up to its root (or the height limit). Must run
    /// inside a tokio runtime (blocking work is handed to its blocking threads).
    pub async fn compose(
        &self,
        book: &Book,
        tree: &TaskTree,
        observer: &dyn Observer,
    ) -> Result<ComposeReport, ComposeError> {
        let started = Instant::now();
        if tree.book_id() != book.id() {
            return Err(ComposeError::BookMismatch {
                tree: tree.book_id().to_string(),
                book: book.id().to_string(),
            });
        }
        let opts = &self.options;
        if opts.best_of > 1
            && !opts.best_of_at.is_empty()
            && !tree.nodes_topological().into_iter().any(|id| {
                let node = tree.node(id);
                opts.best_of_for(node.height, id == tree.root()) > 1
            })
        {
            return Err(ComposeError::NoSuchLevel {
                levels: opts.best_of_at.iter().map(Level::to_string).collect::<Vec<_>>().join(","),
                book: format!("{} [{}]", tree.book_title(), tree.book_id().short()),
                max_height: tree.max_height(),
            });
        }
        // With a height limit, only the nodes up to it (a leaf-level pass, say).
        let limit = self.options.max_height.unwrap_or(u32::MAX);
        let order: Vec<NodeId> = tree
            .nodes_topological()
            .into_iter()
            .filter(|&id| tree.node(id).height <= limit)
            .collect();
        observer.started(order.len());

        // Previous context is truncated to the model's window: that needs the model loaded,
        // which happens here, on a blocking thread, not inside the scheduler.
        let has_context = order.iter().any(|&id| !tree.context_inputs(id).is_empty());
        let context_length = if has_context {
            // The smallest window of the models in use (each is loaded here).
            let models: Vec<_> = self.models.all().cloned().collect();
            let n = blocking(move || {
                models.iter().map(|g| g.context_length()).try_fold(usize::MAX, |m, n| Ok(m.min(n?)))
            })
            .await?
            .map_err(|source| ComposeError::Model {
                node: tree.node(tree.root()).label.clone(),
                source,
            })?;
            Some(n)
        } else {
            None
        };

        // Dependencies: children and previous-context sources.
        let mut waiting: HashMap<NodeId, usize> = HashMap::new();
        let mut dependents: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
        for &id in &order {
            let deps = deps_of(tree, id);
            waiting.insert(id, deps.len());
            for d in deps {
                dependents.entry(d).or_default().push(id);
            }
        }
        let mut ready: VecDeque<NodeId> =
            order.iter().copied().filter(|id| waiting[id] == 0).collect();
        let mut outputs: HashMap<NodeId, String> = HashMap::new();
        let mut run = RunRecord::start(
            tree,
            &self.models,
            self.selector.id(),
            self.options.clone(),
            std::time::SystemTime::now(),
        );
        // The run's record is written once it has something of its own (a node stored now), and
        // rewritten as nodes finish; a re-run that finds everything stored adds no record.
        let mut run_written = false;
        let mut report = ComposeReport {
            root_summary: String::new(),
            complete: false,
            nodes_total: order.len(),
            cache_hits: 0,
            computed: 0,
            computed_labels: Vec::new(),
            prompt_tokens: 0,
            tokens_generated: 0,
            elapsed: Duration::ZERO,
        };

        let mut in_flight = FuturesUnordered::new();
        let mut twins: HashMap<String, Vec<(NodeId, String)>> = HashMap::new();
        let mut sequences_in_flight = 0usize;
        // The first node that failed: nothing new starts after it, but the nodes already in
        // flight finish and are stored, so a failure loses no finished work.
        let mut failed: Option<ComposeError> = None;
        loop {
            // Fill the batch: stored outputs complete at once, the rest go to the generator (or,
            // when their candidates are stored from an interrupted run, to the selector).
            while let Some(&id) = ready.front().filter(|_| failed.is_none()) {
                let prepared = self.prepare(book, tree, id, &outputs, context_length)?;
                if let Some(out) =
                    self.store.get::<NodeOutput>(Table::Outputs, &prepared.output_key)?
                {
                    ready.pop_front();
                    report.cache_hits += 1;
                    observer.node_done(&prepared.label, true, 0);
                    run.outputs.insert(prepared.label.clone(), prepared.output_key.clone());
                    outputs.insert(id, out.text);
                    release(id, &dependents, &mut waiting, &mut ready);
                    continue;
                }
                // The same content already in flight (a repeated passage): wait for it.
                if let Some(waiters) = twins.get_mut(&prepared.gen_key) {
                    ready.pop_front();
                    waiters.push((id, prepared.label));
                    continue;
                }
                let stored =
                    self.store.get::<CandidateSet>(Table::Candidates, &prepared.gen_key)?;
                let need = if stored.is_some() { 0 } else { prepared.requests.len() };
                if need > 0
                    && sequences_in_flight > 0
                    && sequences_in_flight + need > self.options.batch_size
                {
                    break;
                }
                ready.pop_front();
                sequences_in_flight += need;
                twins.insert(prepared.gen_key.clone(), Vec::new());
                in_flight.push(self.run_node(prepared, stored));
            }
            let Some(result) = in_flight.next().await else {
                break;
            };
            let Finished { prepared, set, generated, output } = match result {
                Ok(finished) => finished,
                Err(err) => {
                    failed.get_or_insert(err);
                    continue;
                }
            };
            // Durable before the node counts as done: candidates, the pick, the run's record.
            if generated {
                sequences_in_flight -= prepared.requests.len();
                self.store.put(Table::Candidates, &prepared.gen_key, &set)?;
            }
            self.store.put(Table::Outputs, &prepared.output_key, &output)?;
            run.outputs.insert(prepared.label.clone(), prepared.output_key.clone());
            let twin_list = twins.remove(&prepared.gen_key).unwrap_or_default();
            for (_, label) in &twin_list {
                run.outputs.insert(label.clone(), prepared.output_key.clone());
            }
            run.updated_unix = keys::unix_now();
            self.store.put(Table::Meta, &run.key(), &run)?;
            self.store.flush()?;
            run_written = true;
            if generated {
                report.prompt_tokens += set.prompt_tokens;
                let tokens: usize = set.candidates.iter().map(|c| c.completion_tokens).sum();
                report.tokens_generated += tokens;
                report.computed += 1;
                report.computed_labels.push(prepared.label.clone());
                observer.node_done(&prepared.label, false, tokens);
            } else {
                report.cache_hits += 1;
                observer.node_done(&prepared.label, true, 0);
            }
            release(prepared.id, &dependents, &mut waiting, &mut ready);
            for (twin, label) in twin_list {
                report.cache_hits += 1;
                observer.node_done(&label, true, 0);
                outputs.insert(twin, output.text.clone());
                release(twin, &dependents, &mut waiting, &mut ready);
            }
            outputs.insert(prepared.id, output.text);
        }

        if let Some(err) = failed {
            return Err(err);
        }
        let root = tree.root();
        let root_label = tree.node(root).label.clone();
        report.complete = tree.node(root).height <= limit;
        report.root_summary = match outputs.get(&root) {
            Some(text) => text.clone(),
            None if !report.complete => String::new(),
            None => {
                return Err(ComposeError::Tree {
                    node: root_label,
                    what: "the root was never reached: the tree's dependencies have a cycle".into(),
                })
            }
        };
        run.complete = order.iter().all(|id| outputs.contains_key(id));
        run.finished_unix = keys::unix_now();
        run.updated_unix = run.finished_unix;
        let duplicate = !run_written
            && RunRecord::for_book(&self.store, &run.book_id)?.iter().any(|r| r.same_result(&run));
        if !duplicate {
            self.store.put(Table::Meta, &run.key(), &run)?;
            self.store.flush()?;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// One node in flight: generate its candidates (unless `stored`), then pick one on a
    /// blocking thread (a reward selector embeds texts).
    async fn run_node(
        &self,
        prepared: Prepared,
        stored: Option<CandidateSet>,
    ) -> Result<Finished, ComposeError> {
        let (set, generated) = match stored {
            Some(set) => (set, false),
            None => {
                let t0 = Instant::now();
                let completions =
                    prepared.generator.generate(prepared.requests.clone()).await.map_err(
                        |source| ComposeError::Generate { node: prepared.label.clone(), source },
                    )?;
                (self.candidate_set(&prepared, completions, t0.elapsed())?, true)
            }
        };
        let selector = Arc::clone(&self.selector);
        let node = prepared.clone();
        let candidates = set.candidates.clone();
        let scored = if candidates.len() > 1 {
            Some(
                blocking(move || {
                    let at = SelectNode {
                        book_id: &node.book_id,
                        label: &node.label,
                        height: node.height,
                        input: &node.input,
                        input_key: &node.input_key,
                    };
                    selector.score_node(&at, &candidates)
                })
                .await??,
            )
        } else {
            None
        };
        let output = self.pick(&prepared, &set, scored)?;
        Ok(Finished { prepared, set, generated, output })
    }

    /// Builds a node's input text, context, keys and requests from its inputs' outputs.
    fn prepare(
        &self,
        book: &Book,
        tree: &TaskTree,
        id: NodeId,
        outputs: &HashMap<NodeId, String>,
        context_length: Option<usize>,
    ) -> Result<Prepared, ComposeError> {
        let node = tree.node(id);
        let label = node.label.clone();
        let missing = |what: &str| ComposeError::Tree { node: label.clone(), what: what.into() };
        let input = match &node.kind {
            NodeKind::Leaf { span } => span
                .get(book.text())
                .ok_or_else(|| missing("leaf span lies outside the book"))?
                .to_string(),
            NodeKind::Internal { .. } => {
                let mut texts = Vec::new();
                for child in tree.children(id) {
                    texts.push(
                        outputs
                            .get(&child)
                            .map(String::as_str)
                            .ok_or_else(|| missing("a child has no output"))?,
                    );
                }
                prompt::join_children(&texts)
            }
        };
        let generator = Arc::clone(self.models.for_node(node.height, id == tree.root()));
        let context_sources = tree.context_inputs(id);
        let template = prompt::template_for(node.height);
        // The tree records each node's output cap (by height, from the decomposer's config).
        let max_tokens = node.output_tokens.max(1);
        let context = if context_sources.is_empty() {
            None
        } else {
            let mut parts = Vec::new();
            for src in context_sources {
                parts.push(
                    outputs
                        .get(&src)
                        .map(String::as_str)
                        .ok_or_else(|| missing("a context source has no output"))?,
                );
            }
            let joined = parts.join(" ");
            let model_err = |source| ComposeError::Model { node: label.clone(), source };
            let window = context_length.ok_or_else(|| missing("the model's window is unknown"))?;
            // Room left in the window after the prompt without context and the answer.
            let bare = prompt::render(template, &input, None)?;
            let mut used = max_tokens + 32;
            for m in &bare {
                used += generator.count_tokens(&m.content).map_err(model_err)? + 8;
            }
            let room = window.saturating_sub(used).min(1024);
            let counter = Arc::clone(&generator);
            let count = move |s: &str| counter.count_tokens(s);
            Some(prompt::truncate_context_start(&joined, room, &count).map_err(model_err)?)
        };
        let messages = prompt::render(template, &input, context.as_deref())?;
        let best_of = self.options.best_of_for(node.height, id == tree.root());
        let sampling = self.options.sampling_for(best_of).clone();
        let greedy_first = best_of > 1 && self.options.greedy_first;

        let input_key = input_key(template, &input, context.as_deref());
        let gen_key = keys::generation_key(
            &input_key,
            &keys::GenerationParts {
                model_hash: &generator.identity().hash,
                sampling: &sampling,
                max_tokens,
                best_of,
                seed: self.options.seed,
                loop_ngram: self.options.loop_ngram,
                loop_max_repeats: self.options.loop_max_repeats,
                greedy_first: greedy_first.then_some(&self.options.sampling),
            },
        );
        let output_key = keys::output_key(&gen_key, &self.selector.id());
        let requests = (0..best_of)
            .map(|i| GenerationRequest {
                messages: messages.clone(),
                max_tokens,
                sampling: if i == 0 && greedy_first {
                    self.options.sampling.clone()
                } else {
                    sampling.clone()
                },
                seed: keys::candidate_seed(&gen_key, i),
            })
            .collect();
        Ok(Prepared {
            id,
            book_id: tree.book_id().to_string(),
            label,
            height: node.height,
            input,
            context,
            input_key,
            gen_key,
            output_key,
            requests,
            generator,
        })
    }

    fn candidate_set(
        &self,
        prepared: &Prepared,
        completions: Vec<Completion>,
        elapsed: Duration,
    ) -> Result<CandidateSet, ComposeError> {
        if completions.len() != prepared.requests.len() {
            return Err(ComposeError::Protocol {
                node: prepared.label.clone(),
                got: completions.len(),
                want: prepared.requests.len(),
            });
        }
        let prompt_tokens = completions.first().map_or(0, |c| c.prompt_tokens);
        let candidates = completions
            .into_iter()
            .zip(&prepared.requests)
            .map(|(c, req)| {
                postprocess(c, req.seed, self.options.loop_ngram, self.options.loop_max_repeats)
            })
            .collect();
        let first = &prepared.requests[0];
        let template = prompt::template_for(prepared.height);
        Ok(CandidateSet {
            gen_key: prepared.gen_key.clone(),
            input_key: prepared.input_key.clone(),
            height: prepared.height,
            input: prepared.input.clone(),
            context: prepared.context.clone(),
            model: prepared.generator.identity().clone(),
            template: format!("{}@{}", template.id, template.version),
            sampling: first.sampling.clone(),
            max_tokens: first.max_tokens,
            prompt_tokens,
            candidates,
            elapsed_ms: elapsed.as_millis() as u64,
            created_unix: keys::unix_now(),
            origin: CandidateOrigin::Compose,
        })
    }

    /// The chosen output: the best-scored candidate (scores are checked: one per candidate), or
    /// the only one.
    fn pick(
        &self,
        prepared: &Prepared,
        set: &CandidateSet,
        scores: Option<Vec<CandidateScore>>,
    ) -> Result<NodeOutput, ComposeError> {
        let scores = scores.unwrap_or_default();
        if set.candidates.len() > 1 && scores.len() != set.candidates.len() {
            return Err(ComposeError::Scores {
                node: prepared.label.clone(),
                selector: self.selector.id(),
                got: scores.len(),
                want: set.candidates.len(),
            });
        }
        let chosen = select::argmax(&scores);
        let text = set.candidates.get(chosen).map(|c| c.text.clone()).ok_or_else(|| {
            ComposeError::Protocol { node: prepared.label.clone(), got: 0, want: 1 }
        })?;
        Ok(NodeOutput {
            output_key: prepared.output_key.clone(),
            gen_key: prepared.gen_key.clone(),
            input_key: prepared.input_key.clone(),
            text,
            chosen,
            selector: self.selector.id(),
            scores,
        })
    }
}

/// Trims a raw completion to whole sentences and cuts loops (a word `loop_ngram`-gram occurring
/// more than `loop_max_repeats` times).
pub(crate) fn postprocess(
    c: Completion,
    seed: u64,
    loop_ngram: usize,
    loop_max_repeats: usize,
) -> Candidate {
    let raw = c.text.trim().to_string();
    let (mut text, looped) = match text::cut_loop(&raw, loop_ngram, loop_max_repeats) {
        Some(cut) => (cut, true),
        None => (raw.clone(), false),
    };
    if !looped && c.finish != FinishReason::Stop {
        text = text::trim_to_last_sentence(&text).to_string();
    }
    Candidate {
        text,
        raw_text: raw,
        completion_tokens: c.completion_tokens,
        mean_logprob: c.mean_logprob(),
        sum_logprob: (!c.logprobs.is_empty()).then(|| c.logprobs.iter().sum()),
        finish: c.finish,
        looped,
        seed,
    }
}

fn deps_of(tree: &TaskTree, id: NodeId) -> Vec<NodeId> {
    let mut deps = tree.children(id);
    for c in tree.context_inputs(id) {
        if !deps.contains(&c) {
            deps.push(c);
        }
    }
    deps
}

fn release(
    done: NodeId,
    dependents: &HashMap<NodeId, Vec<NodeId>>,
    waiting: &mut HashMap<NodeId, usize>,
    ready: &mut VecDeque<NodeId>,
) {
    for &d in dependents.get(&done).map(Vec::as_slice).unwrap_or(&[]) {
        if let Some(n) = waiting.get_mut(&d) {
            *n -= 1;
            if *n == 0 {
                ready.push_back(d);
            }
        }
    }
}
