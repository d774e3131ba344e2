//! Drawing extra candidates for one node (for rating), and finding a node's stored candidates.
//!
//! [`node_input`] rebuilds what a node summarizes from the run's stored outputs: a leaf's span
//! of the book, or its children's chosen outputs joined as the composer joins them (with the
//! previous context the run used, when the node's candidates are stored). [`sample`] generates
//! `k` candidates for it and stores them in [`Table::Candidates`] under a sampling key of their
//! own (`rrm-sample-v1`: never a composer key), with the node's input key, so raters and reward
//! models find them beside the composer's. [`candidates_for`] gathers every distinct candidate
//! text stored for an input key; [`node_index`] maps input keys to the books and labels of the
//! runs that composed them.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use super::keys::{self, input_key, unix_now};
use super::{
    postprocess, prompt, CandidateOrigin, CandidateSet, ComposeError, NodeOutput, RunRecord,
};
use crate::book::Book;
use crate::infer::{GenerationRequest, Generator, SamplingParams};
use crate::store::{Store, StoreError, Table};
use crate::tree::{NodeId, NodeKind, TaskTree};

/// What a node summarizes, rebuilt from the book and the run's stored outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInput {
    pub label: String,
    pub height: u32,
    pub input: String,
    pub context: Option<String>,
    pub input_key: String,
    pub max_tokens: usize,
    /// For an internal node: each child's label and chosen output.
    pub children: Vec<(String, String)>,
}

/// Rebuilds node `id`'s input. A leaf needs only the book; an internal node needs the run's
/// outputs of its children.
pub fn node_input(
    store: &Store,
    book: &Book,
    tree: &TaskTree,
    run: Option<&RunRecord>,
    id: NodeId,
) -> Result<NodeInput, ComposeError> {
    let node = tree.node(id);
    let label = node.label.clone();
    let missing = |what: &str| ComposeError::Tree { node: label.clone(), what: what.into() };
    let output_of = |child: NodeId| -> Result<Option<NodeOutput>, ComposeError> {
        let Some(run) = run else { return Ok(None) };
        let Some(key) = run.outputs.get(&tree.node(child).label) else { return Ok(None) };
        Ok(store.get::<NodeOutput>(Table::Outputs, key)?)
    };
    let mut children = Vec::new();
    let input = match &node.kind {
        NodeKind::Leaf { span } => span
            .get(book.text())
            .ok_or_else(|| missing("leaf span lies outside the book"))?
            .to_string(),
        NodeKind::Internal { .. } => {
            for child in tree.children(id) {
                let out = output_of(child)?.ok_or_else(|| {
                    missing("a child has no stored output (summarize the book first)")
                })?;
                children.push((tree.node(child).label.clone(), out.text));
            }
            let texts: Vec<&str> = children.iter().map(|(_, t)| t.as_str()).collect();
            prompt::join_children(&texts)
        }
    };
    // The context the run used, when this node's candidates are stored with the same input.
    let mut context = None;
    if !tree.context_inputs(id).is_empty() {
        if let Some(out) = output_of(id)? {
            if let Some(set) = store.get::<CandidateSet>(Table::Candidates, &out.gen_key)? {
                if set.input == input {
                    context = set.context;
                }
            }
        }
    }
    let template = prompt::template_for(node.height);
    Ok(NodeInput {
        label,
        height: node.height,
        input_key: input_key(template, &input, context.as_deref()),
        input,
        context,
        max_tokens: node.output_tokens.max(1),
        children,
    })
}

/// Generates `k` candidates for `node` with `sampling` and `seed`, stores them (flushed) and
/// returns the set. The same arguments give the same key, so a repeat is served from the store.
pub async fn sample(
    generator: &dyn Generator,
    store: &Store,
    node: &NodeInput,
    k: usize,
    sampling: &SamplingParams,
    seed: u64,
) -> Result<CandidateSet, ComposeError> {
    let gen_key = sample_key(generator, node, k.max(1), sampling, seed);
    if let Some(set) = store.get::<CandidateSet>(Table::Candidates, &gen_key)? {
        return Ok(set);
    }
    let set = generate(generator, node, k, sampling, seed).await?;
    store_set(store, &set)?;
    Ok(set)
}

/// Stores a drawn set under its key and flushes (blocking store I/O).
pub fn store_set(store: &Store, set: &CandidateSet) -> Result<(), ComposeError> {
    store.put(Table::Candidates, &set.gen_key, set)?;
    store.flush()?;
    Ok(())
}

/// Generates the set [`sample`] would store, without touching the store (so an async caller
/// can keep store I/O off its runtime: look the key up and store the set on a blocking thread).
pub async fn generate(
    generator: &dyn Generator,
    node: &NodeInput,
    k: usize,
    sampling: &SamplingParams,
    seed: u64,
) -> Result<CandidateSet, ComposeError> {
    let template = prompt::template_for(node.height);
    let k = k.max(1);
    let gen_key = sample_key(generator, node, k, sampling, seed);
    let messages = prompt::render(template, &node.input, node.context.as_deref())?;
    let requests: Vec<GenerationRequest> = (0..k)
        .map(|i| GenerationRequest {
            messages: messages.clone(),
            max_tokens: node.max_tokens,
            sampling: sampling.clone(),
            seed: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64),
        })
        .collect();
    let t0 = Instant::now();
    let completions = generator
        .generate(requests.clone())
        .await
        .map_err(|source| ComposeError::Generate { node: node.label.clone(), source })?;
    if completions.len() != k {
        return Err(ComposeError::Protocol {
            node: node.label.clone(),
            got: completions.len(),
            want: k,
        });
    }
    let prompt_tokens = completions.first().map_or(0, |c| c.prompt_tokens);
    let candidates = completions
        .into_iter()
        .zip(&requests)
        .map(|(c, req)| postprocess(c, req.seed, 4, 3))
        .collect();
    let set = CandidateSet {
        gen_key: gen_key.clone(),
        input_key: node.input_key.clone(),
        height: node.height,
        input: node.input.clone(),
        context: node.context.clone(),
        model: generator.identity().clone(),
        template: format!("{}@{}", template.id, template.version),
        sampling: sampling.clone(),
        max_tokens: node.max_tokens,
        prompt_tokens,
        candidates,
        elapsed_ms: t0.elapsed().as_millis() as u64,
        created_unix: unix_now(),
        origin: CandidateOrigin::Sample,
    };
    Ok(set)
}

/// The key under which [`sample`] stores `k` candidates of `node` drawn with `sampling` and
/// `seed` by `generator`.
pub fn sample_key(
    generator: &dyn Generator,
    node: &NodeInput,
    k: usize,
    sampling: &SamplingParams,
    seed: u64,
) -> String {
    keys::sample_key(
        &node.input_key,
        &generator.identity().hash,
        sampling,
        node.max_tokens,
        k.max(1),
        seed,
    )
}

/// A distinct candidate text stored for a node.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCandidate {
    pub text: String,
    /// blake3 of the text (hex): the candidate's id.
    pub hash: String,
    pub gen_key: String,
    pub index: usize,
    pub mean_logprob: Option<f32>,
}

/// Every distinct non-empty candidate text stored under `input_key`, in a stable order (oldest
/// set first, then by index).
pub fn candidates_for(store: &Store, input_key: &str) -> Result<Vec<StoredCandidate>, StoreError> {
    Ok(candidates_by_input(store)?.remove(input_key).map(|n| n.candidates).unwrap_or_default())
}

/// A node's stored candidates, gathered over every candidate set with its input key.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredNode {
    pub height: u32,
    pub input: String,
    pub candidates: Vec<StoredCandidate>,
}

/// Every input key with stored candidates → its distinct candidates (see [`candidates_for`]).
pub fn candidates_by_input(store: &Store) -> Result<BTreeMap<String, StoredNode>, StoreError> {
    let mut sets: Vec<CandidateSet> = store
        .scan_lenient::<CandidateSet>(Table::Candidates, "")?
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    sets.sort_by(|a, b| {
        a.created_unix.cmp(&b.created_unix).then_with(|| a.gen_key.cmp(&b.gen_key))
    });
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut out: BTreeMap<String, StoredNode> = BTreeMap::new();
    for set in sets {
        let node = out.entry(set.input_key.clone()).or_insert_with(|| StoredNode {
            height: set.height,
            input: set.input.clone(),
            candidates: Vec::new(),
        });
        for (i, c) in set.candidates.iter().enumerate() {
            if c.text.trim().is_empty() || !seen.insert((set.input_key.clone(), c.text.clone())) {
                continue;
            }
            node.candidates.push(StoredCandidate {
                hash: blake3::hash(c.text.as_bytes()).to_hex().to_string(),
                text: c.text.clone(),
                gen_key: set.gen_key.clone(),
                index: i,
                mean_logprob: c.mean_logprob,
            });
        }
    }
    Ok(out)
}

/// Where a node was composed: a book and the node's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    pub book_id: String,
    pub label: String,
    pub input_key: String,
    pub gen_key: String,
}

/// Input key → the nodes of the stored runs with that input (a passage that recurs maps to
/// several).
pub fn node_index(store: &Store) -> Result<BTreeMap<String, Vec<NodeRef>>, StoreError> {
    let mut index: BTreeMap<String, Vec<NodeRef>> = BTreeMap::new();
    for run in RunRecord::all(store)? {
        for (label, key) in &run.outputs {
            if let Some(out) = store.get::<NodeOutput>(Table::Outputs, key)? {
                index.entry(out.input_key.clone()).or_default().push(NodeRef {
                    book_id: run.book_id.clone(),
                    label: label.clone(),
                    input_key: out.input_key,
                    gen_key: out.gen_key,
                });
            }
        }
    }
    Ok(index)
}
