//! Recursive composition: summarizes a [`TaskTree`] bottom-up with a [`Generator`], caching
//! every node's result by content.
//!
//! The scheduler keeps a ready set: a node is ready when all its inputs (children and, with
//! previous context on, its context sources) have outputs. Ready nodes are sent to the generator
//! concurrently, up to the batch size in sequences; the generator batches them together, and a
//! parent is sent as soon as its last child finishes, not when the whole level is done.
//!
//! Cache: a node's *generation key* is a blake3 hash of its input text, its context text, the
//! template id and version, the model's hash, the sampling parameters, the output cap, the
//! number of candidates and the seed; its *output key* adds the selector's identity. Candidates
//! are stored under the generation key, the chosen output under the output key, and both are
//! flushed before the node counts as done: a crash loses at most the nodes in flight, and a
//! re-run does no model work for anything already stored.
//!
//! Imports `book`, `tree`, `infer` (seams only) and `store`; never the CLI.

pub mod cache;
pub mod prompt;
pub mod sample;
pub mod select;
pub mod text;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

use crate::book::Book;
use crate::infer::{
    Completion, FinishReason, GenerationRequest, Generator, InferError, ModelIdentity,
    SamplingParams,
};
use crate::store::{Store, StoreError, Table};
use crate::tree::{NodeId, NodeKind, TaskTree};

pub use select::{CandidateScore, MeanLogprob, Selector};

/// Version of the post-processing applied to raw completions (trim, loop cut). Part of every key.
const POSTPROCESS_VERSION: u32 = 1;

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
        }
    }
}

impl ComposeOptions {
    fn sampling_for_candidates(&self) -> &SamplingParams {
        if self.best_of > 1 {
            &self.sampling_best_of
        } else {
            &self.sampling
        }
    }
}

/// One generated candidate summary of a node, after post-processing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The summary as stored and shown (trimmed, loop cut).
    pub text: String,
    /// The model's raw completion.
    pub raw_text: String,
    pub completion_tokens: usize,
    pub mean_logprob: Option<f32>,
    pub sum_logprob: Option<f32>,
    pub finish: FinishReason,
    /// The raw completion looped and was cut.
    pub looped: bool,
    pub seed: u64,
}

/// All candidates of a node, stored under its generation key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateSet {
    pub gen_key: String,
    /// What the node summarizes, independent of model and sampling ([`input_key`]): feedback
    /// and reward models key on this.
    pub input_key: String,
    pub height: u32,
    /// The text the node summarizes (a passage, or its children's summaries joined).
    pub input: String,
    /// Previous context shown before the input, if any.
    pub context: Option<String>,
    pub model: ModelIdentity,
    pub template: String,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub prompt_tokens: usize,
    pub candidates: Vec<Candidate>,
    pub elapsed_ms: u64,
    pub created_unix: u64,
}

/// The chosen output of a node, stored under its output key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeOutput {
    pub output_key: String,
    pub gen_key: String,
    pub input_key: String,
    pub text: String,
    pub chosen: usize,
    pub selector: String,
    pub scores: Vec<CandidateScore>,
}

/// Where a book's last composition put each node's output: the map from the tree to the
/// content-addressed store. Stored in [`Table::Meta`] under `run/<book-id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub book_id: String,
    pub model: ModelIdentity,
    pub selector: String,
    pub options: ComposeOptions,
    /// Node label → output key, for every node of the tree.
    pub outputs: BTreeMap<String, String>,
    pub root_label: String,
    /// The content hash of the tree's root (covers every leaf and the grouping): outputs are
    /// attached to a tree only when it is the tree this run composed.
    pub tree_hash: String,
    pub finished_unix: u64,
}

impl RunRecord {
    pub fn meta_key(book_id: &str) -> String {
        format!("run/{book_id}")
    }

    /// The last composition of the book `book_id`, if any.
    pub fn load(store: &Store, book_id: &str) -> Result<Option<RunRecord>, StoreError> {
        store.get(Table::Meta, &Self::meta_key(book_id))
    }

    /// Every run record in the store.
    pub fn all(store: &Store) -> Result<Vec<RunRecord>, StoreError> {
        Ok(store.scan::<RunRecord>(Table::Meta, "run/")?.into_iter().map(|(_, r)| r).collect())
    }

    /// Whether this run composed `tree` (same root content hash).
    pub fn matches(&self, tree: &TaskTree) -> bool {
        tree.node(tree.root()).content_hash == self.tree_hash
    }

    /// The stored result of node `label`: its chosen output and all its candidates.
    pub fn node_result(
        &self,
        store: &Store,
        label: &str,
    ) -> Result<Option<(NodeOutput, Option<CandidateSet>)>, StoreError> {
        let Some(key) = self.outputs.get(label) else { return Ok(None) };
        let Some(output) = store.get::<NodeOutput>(Table::Outputs, key)? else { return Ok(None) };
        let candidates = store.get::<CandidateSet>(Table::Candidates, &output.gen_key)?;
        Ok(Some((output, candidates)))
    }

    /// Fills the output slot of every node of `tree` this run has a stored output for, if the
    /// tree is the one this run composed. Returns how many nodes got an output.
    pub fn attach(&self, store: &Store, tree: &mut TaskTree) -> Result<usize, StoreError> {
        if !self.matches(tree) {
            return Ok(0);
        }
        let mut attached = 0;
        for id in tree.nodes_topological() {
            let label = tree.node(id).label.clone();
            if let Some(key) = self.outputs.get(&label) {
                if let Some(out) = store.get::<NodeOutput>(Table::Outputs, key)? {
                    tree.set_output(id, Some(out.text));
                    attached += 1;
                }
            }
        }
        Ok(attached)
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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Prompt(#[from] prompt::PromptError),
    #[error(transparent)]
    Select(#[from] select::SelectError),
    #[error("node {node}: the generator returned {got} completions for {want} requests")]
    Protocol { node: String, got: usize, want: usize },
    #[error("task tree is for book {tree} but the book given is {book}")]
    BookMismatch { tree: String, book: String },
    #[error("node {node}: {what}")]
    Tree { node: String, what: String },
}

/// Walks a task tree bottom-up with a generator, a selector and the store.
pub struct Composer {
    generator: Arc<dyn Generator>,
    selector: Arc<dyn Selector>,
    store: Store,
    options: ComposeOptions,
}

/// A node ready to run: its prompt input, its keys, and whether its result is stored.
struct Prepared {
    id: NodeId,
    label: String,
    height: u32,
    input: String,
    context: Option<String>,
    input_key: String,
    gen_key: String,
    output_key: String,
    requests: Vec<GenerationRequest>,
}

impl Composer {
    pub fn new(
        generator: Arc<dyn Generator>,
        selector: Arc<dyn Selector>,
        store: Store,
        options: ComposeOptions,
    ) -> Self {
        Self { generator, selector, store, options }
    }

    pub fn options(&self) -> &ComposeOptions {
        &self.options
    }

    /// Summarizes `tree` (built from `book`) up to its root.
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
        // With a height limit, only the nodes up to it (a leaf-level pass, say).
        let limit = self.options.max_height.unwrap_or(u32::MAX);
        let order: Vec<NodeId> = tree
            .nodes_topological()
            .into_iter()
            .filter(|&id| tree.node(id).height <= limit)
            .collect();
        observer.started(order.len());

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
        let mut output_keys: BTreeMap<String, String> = BTreeMap::new();
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
        loop {
            // Fill the batch: cached nodes complete at once, the rest go to the generator.
            while let Some(&id) = ready.front() {
                let prepared = self.prepare(book, tree, id, &outputs)?;
                if let Some(out) =
                    self.store.get::<NodeOutput>(Table::Outputs, &prepared.output_key)?
                {
                    ready.pop_front();
                    report.cache_hits += 1;
                    observer.node_done(&prepared.label, true, 0);
                    output_keys.insert(prepared.label.clone(), prepared.output_key.clone());
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
                let need = prepared.requests.len();
                if sequences_in_flight > 0 && sequences_in_flight + need > self.options.batch_size {
                    break;
                }
                ready.pop_front();
                // Candidates may be stored from a run that died before picking: reuse them.
                if let Some(set) =
                    self.store.get::<CandidateSet>(Table::Candidates, &prepared.gen_key)?
                {
                    let out = self.select_and_store(&prepared, &set)?;
                    report.cache_hits += 1;
                    observer.node_done(&prepared.label, true, 0);
                    output_keys.insert(prepared.label.clone(), prepared.output_key.clone());
                    outputs.insert(id, out.text);
                    release(id, &dependents, &mut waiting, &mut ready);
                    continue;
                }
                sequences_in_flight += need;
                twins.insert(prepared.gen_key.clone(), Vec::new());
                let generator = Arc::clone(&self.generator);
                in_flight.push(async move {
                    let t0 = Instant::now();
                    let result = generator.generate(prepared.requests.clone()).await;
                    (prepared, result, t0.elapsed())
                });
            }
            let Some((prepared, result, elapsed)) = in_flight.next().await else {
                break;
            };
            sequences_in_flight -= prepared.requests.len();
            let completions = result.map_err(|source| ComposeError::Generate {
                node: prepared.label.clone(),
                source,
            })?;
            let set = self.candidate_set(&prepared, completions, elapsed)?;
            report.prompt_tokens += set.prompt_tokens;
            let generated: usize = set.candidates.iter().map(|c| c.completion_tokens).sum();
            report.tokens_generated += generated;
            self.store.put(Table::Candidates, &prepared.gen_key, &set)?;
            let out = self.select_and_store(&prepared, &set)?;
            report.computed += 1;
            report.computed_labels.push(prepared.label.clone());
            observer.node_done(&prepared.label, false, generated);
            output_keys.insert(prepared.label.clone(), prepared.output_key.clone());
            release(prepared.id, &dependents, &mut waiting, &mut ready);
            for (twin, label) in twins.remove(&prepared.gen_key).unwrap_or_default() {
                report.cache_hits += 1;
                observer.node_done(&label, true, 0);
                output_keys.insert(label, prepared.output_key.clone());
                outputs.insert(twin, out.text.clone());
                release(twin, &dependents, &mut waiting, &mut ready);
            }
            outputs.insert(prepared.id, out.text);
        }

        let root = tree.root();
        let root_label = tree.node(root).label.clone();
        let tree_hash = tree.node(root).content_hash.clone();
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
        let run = RunRecord {
            book_id: book.id().to_string(),
            model: self.generator.identity().clone(),
            selector: self.selector.id(),
            options: self.options.clone(),
            outputs: output_keys,
            root_label,
            tree_hash,
            finished_unix: unix_now(),
        };
        self.store.put(Table::Meta, &RunRecord::meta_key(&run.book_id), &run)?;
        self.store.flush()?;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Builds a node's input text, context, keys and requests from its inputs' outputs.
    fn prepare(
        &self,
        book: &Book,
        tree: &TaskTree,
        id: NodeId,
        outputs: &HashMap<NodeId, String>,
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
            // Room left in the window after the prompt without context and the answer.
            let bare = prompt::render(template, &input, None)?;
            let used =
                bare.iter().map(|m| self.generator.count_tokens(&m.content) + 8).sum::<usize>()
                    + max_tokens
                    + 32;
            let room = self.generator.context_length().saturating_sub(used).min(1024);
            let generator = Arc::clone(&self.generator);
            let count = move |s: &str| generator.count_tokens(s);
            Some(prompt::truncate_context_start(&joined, room, &count))
        };
        let messages = prompt::render(template, &input, context.as_deref())?;
        let sampling = self.options.sampling_for_candidates().clone();
        let best_of = self.options.best_of.max(1);

        let input_key = input_key(template, &input, context.as_deref());
        let gen_key = hash_parts(&[
            "rrm-node-v2",
            &input_key,
            &POSTPROCESS_VERSION.to_string(),
            &self.generator.identity().hash,
            &serde_json::to_string(&sampling).unwrap_or_default(),
            &max_tokens.to_string(),
            &best_of.to_string(),
            &self.options.seed.to_string(),
            &format!("{}:{}", self.options.loop_ngram, self.options.loop_max_repeats),
        ]);
        let output_key = hash_parts(&["rrm-output-v1", &gen_key, &self.selector.id()]);
        let requests = (0..best_of)
            .map(|i| GenerationRequest {
                messages: messages.clone(),
                max_tokens,
                sampling: sampling.clone(),
                seed: candidate_seed(&gen_key, i),
            })
            .collect();
        Ok(Prepared {
            id,
            label,
            height: node.height,
            input,
            context,
            input_key,
            gen_key,
            output_key,
            requests,
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
            .map(|(c, req)| self.postprocess(c, req.seed))
            .collect();
        let first = &prepared.requests[0];
        Ok(CandidateSet {
            gen_key: prepared.gen_key.clone(),
            input_key: prepared.input_key.clone(),
            height: prepared.height,
            input: prepared.input.clone(),
            context: prepared.context.clone(),
            model: self.generator.identity().clone(),
            template: format!(
                "{}@{}",
                prompt::template_for(prepared.height).id,
                prompt::template_for(prepared.height).version
            ),
            sampling: first.sampling.clone(),
            max_tokens: first.max_tokens,
            prompt_tokens,
            candidates,
            elapsed_ms: elapsed.as_millis() as u64,
            created_unix: unix_now(),
        })
    }

    /// Trims a raw completion to whole sentences and cuts loops.
    fn postprocess(&self, c: Completion, seed: u64) -> Candidate {
        let raw = c.text.trim().to_string();
        let (mut text, looped) =
            match text::cut_loop(&raw, self.options.loop_ngram, self.options.loop_max_repeats) {
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

    fn select_and_store(
        &self,
        prepared: &Prepared,
        set: &CandidateSet,
    ) -> Result<NodeOutput, ComposeError> {
        let scores = if set.candidates.len() == 1 {
            vec![CandidateScore::new(set.candidates[0].mean_logprob.unwrap_or(0.0))]
        } else {
            self.selector.score(prepared.height, &prepared.input, &set.candidates)?
        };
        let chosen = select::argmax(&scores);
        let out = NodeOutput {
            output_key: prepared.output_key.clone(),
            gen_key: prepared.gen_key.clone(),
            input_key: prepared.input_key.clone(),
            text: set.candidates.get(chosen).map(|c| c.text.clone()).unwrap_or_default(),
            chosen,
            selector: self.selector.id(),
            scores,
        };
        self.store.put(Table::Outputs, &prepared.output_key, &out)?;
        self.store.flush()?;
        Ok(out)
    }
}

/// The key of what a node summarizes: template (id and version), input text and context. It
/// does not depend on the model or sampling, so feedback on a node applies to candidates from
/// any model, and survives re-decomposition when the same passage recurs.
pub fn input_key(template: &prompt::Template, input: &str, context: Option<&str>) -> String {
    hash_parts(&[
        "rrm-input-v1",
        template.id,
        &template.version.to_string(),
        input,
        context.unwrap_or("\u{0}none"),
    ])
}

/// blake3 over length-prefixed parts, so that no two different part lists hash alike.
fn hash_parts(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for part in parts {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_hex().to_string()
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

/// A candidate's seed depends only on the node's content key and its index: the same content
/// anywhere in any book gets the same candidates.
fn candidate_seed(gen_key: &str, index: usize) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(gen_key.as_bytes());
    h.update(&(index as u64).to_le_bytes());
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
