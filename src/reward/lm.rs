//! The language-model reward model: the trainable llama ([`crate::lm::TrainableLlama`], LoRA
//! adapters by default, full fine-tuning optional) with a scalar linear head on the final hidden
//! state of the last token.
//!
//! The input is what the policy sees — the composer's per-height prompt for the node, rendered
//! with the model's chat template — followed by the candidate summary and the end-of-turn token.
//! Inputs longer than `max_tokens` lose the end of the text summarized (the same cut for every
//! summary compared), so the instruction, the text's beginning and the summaries are kept.
//!
//! Training is Bradley–Terry (−log σ(r_c − r_r), against the pair's target probability and
//! weighted by the pair's weight) with AdamW, gradient accumulation and global-norm clipping.
//! The pairs are split by group (book, source document) like the MiniLM heads': validation
//! groups choose each member's checkpoint (the step with the lowest validation log-loss), test
//! groups give the card's metrics beside the length and reference-overlap baselines.
//! An ensemble is `K` members trained from different seeds (LoRA initialisation, head
//! initialisation and data order); the base model is loaded once for scoring and each member's
//! trainable tensors are swapped in, so `K` members cost `K` adapters, not `K` models.
//!
//! A checkpoint is a folder with `lm_reward.safetensors` (every member's trainable tensors and
//! head, prefixed `m{i}.`) and `card.json` ([`LmCard`], `"backbone": "lm"`, with the base
//! model's hash, the data's hash and the metrics).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::model::mean_std;
use super::train::{
    bt_loss_weighted, check_label_smoothing, fit_temperature, init_thresholds, keep_val_kinds,
    metrics, ordinal_loss, smooth_target, split_group_names, Metrics,
};
use super::{RewardError, CARD_FILE};
use crate::compose::prompt;
use crate::compose::select::SelectError;
use crate::compose::{Candidate, CandidateScore, Selector};
use crate::feedback::learn::{Kinds, Rating};
use crate::feedback::Pair;
use crate::infer::tokenizer::GgufTokenizer;
use crate::lm::model::LoadOptions;
use crate::lm::observe::{EvalLog, Observer, Quiet, StepLog};
use crate::lm::optim::{Accumulator, AdamW, ParamsAdamW, Schedule};
use crate::lm::{Checkpointing, LmError, LoraConfig, Mode, Packed, TrainableLlama};

/// Version of the LM checkpoint layout.
pub const LM_FORMAT_VERSION: u32 = 1;
/// The weights file of an LM reward checkpoint.
pub const LM_WEIGHTS_FILE: &str = "lm_reward.safetensors";
/// The `backbone` of an LM reward card.
pub const BACKBONE: &str = "lm";

/// How an LM reward model is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmTrainConfig {
    /// LoRA (the default) or full fine-tuning. A LoRA seed is offset by the member index.
    pub mode: Mode,
    pub members: usize,
    /// Passes over the pairs (ignored when `steps` is set).
    pub epochs: usize,
    /// Optimizer steps per member (overrides `epochs`).
    pub steps: Option<usize>,
    /// Pairs per micro-batch.
    pub batch_pairs: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub lr: f64,
    pub head_lr: f64,
    pub weight_decay: f64,
    pub warmup: usize,
    /// Global gradient-norm clip (0: off).
    pub max_grad_norm: f64,
    /// Tokens per input (prompt + summary); a longer input loses its end (see `encode`).
    pub max_tokens: usize,
    pub seed: u64,
    /// Gradient checkpointing (see `TrainableLlama::set_checkpointing`); not part of the card.
    #[serde(default, skip_serializing)]
    pub grad_checkpoint: Checkpointing,
    /// Share of groups held out to choose each member's checkpoint, in percent.
    #[serde(default)]
    pub val_percent: u32,
    /// Share of groups held out for the card's metrics, in percent.
    #[serde(default)]
    pub test_percent: u32,
    /// Optimizer steps between validations (default: once per pass over the training pairs,
    /// and always after the last step).
    #[serde(default)]
    pub eval_every: Option<usize>,
    /// At most this many validation (and test) pairs are scored, a fixed sample: scoring
    /// costs a forward pass per pair.
    #[serde(default = "default_eval_pairs")]
    pub eval_pairs: usize,
    /// Weight of the Likert ratings' ordinal loss beside the pairs' Bradley–Terry loss (0:
    /// ratings teach only through the pairs they imply).
    #[serde(default)]
    pub ordinal_weight: f64,
    /// One scalar head per tree height (a node above the highest height trained uses that
    /// height's head) instead of one head for all heights, which are then told apart by the
    /// per-height prompt alone.
    #[serde(default)]
    pub head_per_height: bool,
    /// Label smoothing ε of the pairs' training targets (0: off; see [`smooth_target`]).
    #[serde(default)]
    pub label_smoothing: f32,
    /// The feedback kinds of the validation pairs that choose the checkpoint and fit the
    /// temperature (the others in the validation groups are set aside, not trained on).
    #[serde(default)]
    pub val_kinds: Kinds,
    /// Passes of a linear probe before fine-tuning: the head alone on the frozen model's
    /// features of every training pair, the pass chosen on the validation pairs (0: off; see
    /// `probe`). With `steps` 0 the probe is the whole training.
    #[serde(default)]
    pub probe_epochs: usize,
}

fn default_eval_pairs() -> usize {
    256
}

impl Default for LmTrainConfig {
    fn default() -> Self {
        LmTrainConfig {
            mode: Mode::Lora(LoraConfig::default()),
            members: 1,
            epochs: 1,
            steps: None,
            batch_pairs: 4,
            grad_accum: 1,
            lr: 1e-4,
            head_lr: 1e-3,
            weight_decay: 0.0,
            warmup: 0,
            max_grad_norm: 1.0,
            max_tokens: 1024,
            seed: 0,
            grad_checkpoint: Checkpointing::Auto,
            val_percent: 10,
            test_percent: 10,
            eval_every: None,
            eval_pairs: default_eval_pairs(),
            ordinal_weight: 0.5,
            head_per_height: false,
            label_smoothing: 0.0,
            val_kinds: Kinds::ALL,
            probe_epochs: 0,
        }
    }
}

impl LmTrainConfig {
    fn validate(&self) -> Result<(), RewardError> {
        let bad = |m: &str| Err(RewardError::Invalid(m.to_string()));
        if self.members == 0 || self.members > 32 {
            return bad("members must be between 1 and 32");
        }
        if self.batch_pairs == 0 || self.grad_accum == 0 {
            return bad("the batch size and gradient accumulation must be at least 1");
        }
        if self.max_tokens < 8 {
            return bad("max tokens must be at least 8");
        }
        let no_steps = self.steps == Some(0) || (self.steps.is_none() && self.epochs == 0);
        if no_steps && self.probe_epochs == 0 {
            return bad("train for at least one step (or epoch), or probe for at least one pass");
        }
        if self.probe_epochs > 10_000 {
            return bad("probe passes must be at most 10000");
        }
        if !(self.lr > 0.0 && self.head_lr > 0.0 && self.lr.is_finite() && self.head_lr.is_finite())
        {
            return bad("learning rates must be positive");
        }
        if self.weight_decay < 0.0 || self.max_grad_norm < 0.0 {
            return bad("weight decay and the gradient clip must not be negative");
        }
        if self.val_percent + self.test_percent >= 100 {
            return bad("the validation and test shares must leave groups to train on");
        }
        if !(0.0..=100.0).contains(&self.ordinal_weight) {
            return bad("the ordinal weight must be between 0 and 100");
        }
        if self.eval_every == Some(0) || self.eval_pairs == 0 {
            return bad("validate at least every step, on at least one pair");
        }
        check_label_smoothing(self.label_smoothing).map_err(RewardError::Invalid)?;
        if self.val_kinds == Kinds::NONE {
            return bad("validation needs at least one feedback kind");
        }
        if matches!(self.mode, Mode::Frozen) {
            return bad(
                "a frozen backbone has nothing to train beside the head; use lora or full (the \
                 head alone: lora with probe passes and 0 steps)",
            );
        }
        Ok(())
    }
}

/// What an LM checkpoint was trained on and how it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmCard {
    pub format: u32,
    /// Always [`BACKBONE`]: tells an LM checkpoint from a MiniLM one.
    pub backbone: String,
    /// blake3 of the weights file (hex, first 16 characters): the checkpoint's name.
    pub hash: String,
    pub created_unix: u64,
    /// The base GGUF as given at training time.
    pub base: String,
    /// blake3 of the base GGUF (hex): loading checks it.
    pub base_hash: String,
    pub hidden: usize,
    pub config: LmTrainConfig,
    /// All pairs given (training, validation and test groups).
    pub pairs: usize,
    /// Pairs of the training groups.
    #[serde(default)]
    pub train_pairs: usize,
    /// Likert ratings of the training groups used as ordinal targets.
    #[serde(default)]
    pub train_ratings: usize,
    /// The validation groups: they chose each member's checkpoint.
    #[serde(default)]
    pub val_groups: Vec<String>,
    /// The test groups: never trained on, never used for a choice.
    #[serde(default)]
    pub test_groups: Vec<String>,
    /// blake3 of the training pairs (their JSON).
    pub data_hash: String,
    pub source: String,
    /// Pairs that had to be cut to fit `max_tokens`.
    pub truncated: usize,
    /// Per height (`h0`, …) and `all`: on (a sample of) the test groups' pairs when there are
    /// any (`held_out`), else on a sample of the training pairs.
    pub metrics: BTreeMap<String, Metrics>,
    #[serde(default)]
    pub held_out: bool,
    /// The same on the validation sample, which chose the checkpoints (optimistic).
    #[serde(default)]
    pub validation_metrics: BTreeMap<String, Metrics>,
    /// The test sample beside the length and reference-overlap baselines, on every pair and
    /// on the length-balanced ones (absent without test groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<super::eval::EvalReport>,
    /// Per member, the validation log-loss after each validated step: `(step, log-loss)`.
    #[serde(default)]
    pub validation_curve: Vec<Vec<(usize, f64)>>,
    /// Per member, the optimizer step whose weights were kept.
    #[serde(default)]
    pub best_step: Vec<usize>,
    /// Every score is divided by this ([`super::train::fit_temperature`] on the validation
    /// pairs; 1 without validation groups): the probabilities σ(margin) are calibrated on data
    /// the model was not trained on, the ranking is untouched.
    #[serde(default = "unit_temperature")]
    pub temperature: f64,
    /// Head rows per member: 1, or with `head_per_height` one per height up to the highest
    /// trained (old cards: 1).
    #[serde(default = "one_head")]
    pub heads: usize,
    /// Whether `temperature` was fitted (enough validation pairs); not fitted, it is 1.
    #[serde(default)]
    pub temperature_fitted: bool,
    /// The validation log-loss before the temperature (the `validation_metrics` are after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_log_loss_uncalibrated: Option<f64>,
    /// Per member, the linear probe's pass whose head fine-tuning started from (empty
    /// without a probe); a `best_step` of 0 keeps the probe's head and zero adapters.
    #[serde(default)]
    pub probe_epoch: Vec<usize>,
    /// Seconds spent on the probe's features (one forward pass per training and validation
    /// pair), not in `train_seconds`.
    #[serde(default)]
    pub probe_seconds: f64,
    /// Mean Bradley–Terry loss of each member's last epoch.
    pub final_loss: Vec<f64>,
    pub train_seconds: f64,
    pub pairs_per_second: f64,
}

fn unit_temperature() -> f64 {
    1.0
}

fn one_head() -> usize {
    1
}

/// One ensemble member: its trainable tensors (adapters or full weights) and its head.
#[derive(Debug, Clone)]
pub struct LmMember {
    pub weights: HashMap<String, Tensor>,
    /// `(heads, hidden)`: one row per height with `head_per_height`, else one row.
    pub head_w: Tensor,
    /// `(heads,)`.
    pub head_b: Tensor,
}

/// Which forward pass scores a loaded model's candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scoring {
    /// The inference engine's kernels ([`engine`]): the default.
    #[default]
    Engine,
    /// The trainer's forward, as training and validation score (for comparisons).
    Trainer,
}

/// A trained LM reward ensemble with its backbone loaded.
pub struct LmRewardModel {
    pub card: LmCard,
    pub members: Vec<LmMember>,
    llama: Mutex<TrainableLlama>,
    tokenizer: GgufTokenizer,
    end: u32,
    scoring: Scoring,
    /// The members on the engine, built on the first score.
    engine: Mutex<Option<std::sync::Arc<engine::EngineScorer>>>,
}

impl std::fmt::Debug for LmRewardModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmRewardModel").field("card", &self.card).finish_non_exhaustive()
    }
}

/// A pair's chosen and rejected token sequences.
type TokenPair = (Vec<u32>, Vec<u32>);

pub mod bench;
mod engine;
pub mod import;
mod probe;

/// blake3 of a file, hex.
pub fn file_hash(path: &Path) -> Result<String, RewardError> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| RewardError::File { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut f, &mut h)
        .map_err(|e| RewardError::File { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(h.finalize().to_hex().to_string())
}

/// Whether `dir` holds an LM reward checkpoint (its card says `"backbone": "lm"`).
pub fn is_lm_checkpoint(dir: &Path) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        backbone: String,
    }
    std::fs::read(dir.join(CARD_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Probe>(&b).ok())
        .is_some_and(|p| p.backbone == BACKBONE)
}

/// The end-of-turn token appended to every summary (as the policy appends it).
fn end_token(tokenizer: &GgufTokenizer) -> Result<u32, RewardError> {
    let ids = tokenizer.encode(&tokenizer.eos_token).map_err(LmError::from)?;
    match ids.as_slice() {
        [one] => Ok(*one),
        _ => tokenizer.eos_ids.last().copied().ok_or_else(|| {
            RewardError::Invalid("the model's tokenizer has no end-of-sequence token".into())
        }),
    }
}

/// Tokens of (the composer's prompt for `input` at `height`) + each summary + end of turn, at
/// most `max_tokens` each; and whether anything was cut. When the longest does not fit, the
/// input loses its end, by the same cut for every summary (they are judged on the same text,
/// and the prompt's instruction and the input's beginning, where news and stories put the most,
/// stay); a summary too long even beside an empty input is cut from the left.
fn encode(
    tokenizer: &GgufTokenizer,
    end: u32,
    max_tokens: usize,
    height: u32,
    input: &str,
    summaries: &[&str],
) -> Result<(Vec<Vec<u32>>, bool), RewardError> {
    let head_of = |text: &str| -> Result<Vec<u32>, RewardError> {
        let messages = prompt::render(prompt::template_for(height), text, None)
            .map_err(|e| RewardError::Invalid(format!("prompt: {e}")))?;
        let chat = tokenizer.render_chat(&messages).map_err(LmError::from)?;
        Ok(tokenizer.encode(&chat).map_err(LmError::from)?)
    };
    let tails = summaries
        .iter()
        .map(|s| {
            let mut t = tokenizer.encode(s.trim()).map_err(LmError::from)?;
            t.push(end);
            Ok(t)
        })
        .collect::<Result<Vec<Vec<u32>>, RewardError>>()?;
    let longest = tails.iter().map(Vec::len).max().unwrap_or(0);
    let mut head = head_of(input)?;
    let cut = head.len() + longest > max_tokens;
    if cut {
        let input_ids = tokenizer.encode(input.trim()).map_err(LmError::from)?;
        let mut keep = input_ids.len().saturating_sub(head.len() + longest - max_tokens);
        // A cut text can tokenize a little differently once rendered: shrink until it fits.
        loop {
            let text = tokenizer.decode(&input_ids[..keep]).map_err(LmError::from)?;
            head = head_of(&text)?;
            let over = (head.len() + longest).saturating_sub(max_tokens);
            if over == 0 || keep == 0 {
                break;
            }
            keep = keep.saturating_sub(over);
        }
    }
    let seqs = tails
        .into_iter()
        .map(|t| {
            let mut ids = head.clone();
            ids.extend(t);
            if ids.len() > max_tokens {
                ids.drain(..ids.len() - max_tokens);
            }
            ids
        })
        .collect();
    Ok((seqs, cut))
}

/// Sequences scored together (a pair, a node's candidates) as packed rows: their common
/// prefix (the node's prompt and input, as far as they are the same) once, then each
/// one's rest; sequences with no common prefix, one row each. Completions keep `seqs`' order.
fn pack(seqs: &[&[u32]]) -> Vec<Packed> {
    let shortest = seqs.iter().map(|s| s.len()).min().unwrap_or(0);
    let common = seqs.iter().skip(1).fold(shortest.saturating_sub(1), |n, s| {
        n.min(seqs[0].iter().zip(s.iter()).take_while(|(a, b)| a == b).count())
    });
    if seqs.len() > 1 && common >= 1 {
        return vec![Packed {
            prompt: seqs[0][..common].to_vec(),
            completions: seqs.iter().map(|s| s[common..].to_vec()).collect(),
        }];
    }
    seqs.iter()
        .map(|s| {
            let cut = s.len().saturating_sub(1);
            Packed { prompt: s[..cut].to_vec(), completions: vec![s[cut..].to_vec()] }
        })
        .collect()
}

/// The final hidden state (f32) of every completion's last token of `rows` under the loaded
/// backbone, `(completions, hidden)` in the rows' completion order; several rows per forward
/// pass (similar lengths together, at most `budget` tokens with padding).
fn last_hidden_rows(
    llama: &TrainableLlama,
    rows: &[Packed],
    budget: usize,
) -> Result<Tensor, RewardError> {
    let mut idx: Vec<usize> = (0..rows.len()).collect();
    idx.sort_by_key(|&i| packed_len(&rows[i]));
    let mut first = Vec::with_capacity(rows.len());
    let mut n = 0;
    for r in rows {
        first.push(n);
        n += r.completions.len();
    }
    // Where each batch row lands among the completions, to put them back in order.
    let mut place = Vec::with_capacity(n);
    let mut parts = Vec::new();
    let mut at = 0;
    while at < idx.len() {
        let mut end = at + 1;
        while end < idx.len() && (end + 1 - at) * packed_len(&rows[idx[end]]) <= budget {
            end += 1;
        }
        let batch: Vec<Packed> = idx[at..end].iter().map(|&i| rows[i].clone()).collect();
        parts.push(llama.packed_last_hidden(&batch)?.to_dtype(DType::F32)?);
        for &i in &idx[at..end] {
            place.extend((0..rows[i].completions.len()).map(|c| first[i] + c));
        }
        at = end;
    }
    let hidden = llama.config.hidden;
    if parts.is_empty() {
        return Ok(Tensor::zeros((0, hidden), DType::F32, llama.device())?);
    }
    let stacked = Tensor::cat(&parts, 0)?;
    let mut back = vec![0u32; n];
    for (k, &p) in place.iter().enumerate() {
        back[p] = k as u32;
    }
    let back = Tensor::new(back, stacked.device())?;
    Ok(stacked.index_select(&back, 0)?)
}

/// Rewards of every completion of `rows` under the loaded backbone and a head (`heads[i]`: the
/// head row of `rows[i]`'s completions), batched as [`last_hidden_rows`]; in the rows'
/// completion order.
fn score_rows(
    llama: &TrainableLlama,
    rows: &[Packed],
    heads: &[u32],
    w: &Tensor,
    b: &Tensor,
    budget: usize,
) -> Result<Vec<f32>, RewardError> {
    let hidden = last_hidden_rows(llama, rows, budget)?;
    if hidden.dim(0)? == 0 {
        return Ok(Vec::new());
    }
    let which = head_rows(rows.iter().zip(heads).map(|(r, &h)| (h, r.completions.len())));
    let which = Tensor::new(which, w.device())?;
    Ok(head_scores(&hidden, w, b, &which)?.to_vec1::<f32>()?)
}

/// Tokens per forward pass when scoring.
fn score_budget(max_tokens: usize) -> usize {
    4 * max_tokens.max(256)
}

/// Margins (chosen − rejected) of the encoded pairs `idx` under the backbone as it is and a
/// head (validation during training).
#[allow(clippy::too_many_arguments)]
fn pair_margins(
    llama: &TrainableLlama,
    data: &[TokenPair],
    heights: &[u32],
    idx: &[usize],
    w: &Tensor,
    b: &Tensor,
    max_tokens: usize,
) -> Result<Vec<f32>, RewardError> {
    let groups: Vec<Vec<Vec<u32>>> =
        idx.iter().map(|&i| vec![data[i].0.clone(), data[i].1.clone()]).collect();
    let heads = w.dim(0)?;
    let group_heads: Vec<u32> = idx.iter().map(|&i| head_of(heights[i], heads)).collect();
    let (rows, row_heads, first) = rows_of(&groups, &group_heads);
    let s = score_rows(llama, &rows, &row_heads, w, b, score_budget(max_tokens))?;
    Ok(first.iter().map(|&f| s[f] - s[f + 1]).collect())
}

/// The packed rows of groups of sequences that share a prompt, each row's head (its group's,
/// from `heads`), and where each group's first score lands among the rows' completions.
fn rows_of(groups: &[Vec<Vec<u32>>], heads: &[u32]) -> (Vec<Packed>, Vec<u32>, Vec<usize>) {
    let mut rows = Vec::new();
    let mut row_heads = Vec::new();
    let mut first = Vec::with_capacity(groups.len());
    let mut n = 0;
    for (g, &h) in groups.iter().zip(heads) {
        first.push(n);
        n += g.len();
        if !g.is_empty() {
            let packed = pack(&g.iter().map(Vec::as_slice).collect::<Vec<_>>());
            row_heads.extend(std::iter::repeat_n(h, packed.len()));
            rows.extend(packed);
        }
    }
    (rows, row_heads, first)
}

/// The head row a node at `height` is scored with, among `heads` rows: its height's, or the
/// highest trained one's above it (one shared row: 0).
fn head_of(height: u32, heads: usize) -> u32 {
    height.min(heads.saturating_sub(1) as u32)
}

/// Per completion, its head row: `(head, completions)` per packed row, in order.
fn head_rows(rows: impl Iterator<Item = (u32, usize)>) -> Vec<u32> {
    rows.flat_map(|(h, n)| std::iter::repeat_n(h, n)).collect()
}

/// A copy of a member's trainable tensors and head as they are now.
fn snapshot(body: &[(String, Var)], w: &Var, b: &Var) -> Result<LmMember, RewardError> {
    // Copies, not views: a view shares the variable's storage, and setting a variable to a
    // tensor derived from it is refused (and would alias the members).
    let weights: HashMap<String, Tensor> = body
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
        .collect::<candle_core::Result<_>>()?;
    Ok(LmMember {
        weights,
        head_w: w.as_tensor().detach().copy()?,
        head_b: b.as_tensor().detach().copy()?,
    })
}

/// Draws training batches: pairs from `train_idx` and as many ratings (of `rated`), each in a
/// fresh shuffled order once the last one is used up.
struct Draw<'a> {
    train_idx: &'a [usize],
    order: Vec<usize>,
    rated: usize,
    rating_order: Vec<usize>,
}

impl<'a> Draw<'a> {
    fn new(train_idx: &'a [usize], rated: usize) -> Draw<'a> {
        Draw { train_idx, order: Vec::new(), rated, rating_order: Vec::new() }
    }

    /// The next `n` pairs (indices into the pairs) and ratings (indices into the rated
    /// summaries).
    fn next(&mut self, n: usize, rng: &mut rand::rngs::StdRng) -> (Vec<usize>, Vec<usize>) {
        let mut batch = Vec::with_capacity(n);
        while batch.len() < n.min(self.train_idx.len()) {
            if self.order.is_empty() {
                self.order = self.train_idx.to_vec();
                self.order.shuffle(rng);
            }
            batch.extend(self.order.pop());
        }
        let mut rbatch = Vec::with_capacity(n);
        while rbatch.len() < n.min(self.rated) {
            if self.rating_order.is_empty() {
                self.rating_order = (0..self.rated).collect();
                self.rating_order.shuffle(rng);
            }
            rbatch.extend(self.rating_order.pop());
        }
        (batch, rbatch)
    }
}

/// What a batch's scores are trained towards: `n` pairs (scores `2k`, `2k + 1`: chosen,
/// rejected) under Bradley–Terry, then the ratings' scores under the ordinal loss.
struct BatchTargets {
    n: usize,
    t: Tensor,
    wt: Tensor,
    levels: Vec<u32>,
    rw: Vec<f32>,
    /// Every score's head row.
    which: Tensor,
}

impl BatchTargets {
    /// From each pair's (target, weight, height) and each rating's (level 0–6, weight,
    /// height), with `heads` head rows.
    fn new(
        pairs: impl Iterator<Item = (f32, f32, u32)>,
        ratings: impl Iterator<Item = (u32, f32, u32)>,
        heads: usize,
        device: &Device,
    ) -> Result<BatchTargets, RewardError> {
        let (mut t, mut wt, mut which) = (Vec::new(), Vec::new(), Vec::new());
        for (target, weight, height) in pairs {
            t.push(target);
            wt.push(weight);
            which.extend([head_of(height, heads); 2]);
        }
        let (mut levels, mut rw) = (Vec::new(), Vec::new());
        for (level, weight, height) in ratings {
            levels.push(level);
            rw.push(weight);
            which.push(head_of(height, heads));
        }
        let n = t.len();
        Ok(BatchTargets {
            n,
            t: Tensor::from_vec(t, n, device)?,
            wt: Tensor::from_vec(wt, n, device)?,
            levels,
            rw,
            which: Tensor::new(which, device)?,
        })
    }

    /// The loss of the batch's scores `all` (in the order above).
    fn loss(
        &self,
        all: &Tensor,
        thresholds: &Tensor,
        ordinal_weight: f64,
    ) -> candle_core::Result<Tensor> {
        let n = self.n;
        let r = all.narrow(0, 0, 2 * n)?.reshape((n, 2))?;
        let d = (r.narrow(1, 0, 1)? - r.narrow(1, 1, 1)?)?.squeeze(1)?;
        let bt = bt_loss_weighted(&d, &self.t, &self.wt)?;
        if self.levels.is_empty() {
            return Ok(bt);
        }
        let scores = all.narrow(0, 2 * n, self.levels.len())?;
        let ord = ordinal_loss(&scores, thresholds, &self.levels, &self.rw)?;
        bt + (ord * ordinal_weight)?
    }
}

/// Tokens of a packed row.
fn packed_len(p: &Packed) -> usize {
    p.prompt.len() + p.completions.iter().map(Vec::len).sum::<usize>()
}

/// The scalar head over last-token hidden states `(B, hidden)`: `(B,)`, completion `i` scored
/// by head row `which[i]` of `w` `(heads, hidden)` and `b` `(heads,)`.
fn head_scores(h: &Tensor, w: &Tensor, b: &Tensor, which: &Tensor) -> candle_core::Result<Tensor> {
    let w = w.index_select(which, 0)?;
    let b = b.index_select(which, 0)?;
    (h.to_dtype(DType::F32)? * w)?.sum(1)? + b
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn member_mode(mode: &Mode, member: usize) -> Mode {
    match mode {
        Mode::Lora(cfg) => Mode::Lora(LoraConfig {
            seed: cfg.seed.wrapping_add(1000 * member as u64),
            ..cfg.clone()
        }),
        m => m.clone(),
    }
}

impl LmRewardModel {
    /// Trains `config.members` members on `pairs` and Likert `ratings` (ordinal targets,
    /// weighted by `config.ordinal_weight`) from the base GGUF at `base` (CPU, f32): on the
    /// training groups, each member's checkpoint chosen on the validation groups, the card's
    /// metrics from the test groups.
    pub fn train(
        base: &Path,
        pairs: &[Pair],
        ratings: &[Rating],
        config: &LmTrainConfig,
        source: &str,
    ) -> Result<LmRewardModel, RewardError> {
        Self::train_observed(base, pairs, ratings, config, source, &Quiet)
    }

    /// [`LmRewardModel::train`], reporting each member's steps, validations and probe to
    /// `observer` as they happen (`started` once per member, with that member's steps).
    pub fn train_observed(
        base: &Path,
        pairs: &[Pair],
        ratings: &[Rating],
        config: &LmTrainConfig,
        source: &str,
        observer: &dyn Observer,
    ) -> Result<LmRewardModel, RewardError> {
        config.validate()?;
        if pairs.is_empty() {
            return Err(RewardError::NoData(String::new()));
        }
        let device = Device::Cpu;
        let base_hash = file_hash(base)?;
        // Pairs and ratings split together: a node's ratings never sit across from its pairs.
        let (val_groups, test_groups) = split_group_names(
            pairs.iter().map(|p| p.group.as_str()).chain(ratings.iter().map(|r| r.group.as_str())),
            config.val_percent,
            config.test_percent,
        );
        let train_ratings: Vec<&Rating> = if config.ordinal_weight > 0.0 {
            ratings
                .iter()
                .filter(|r| !val_groups.contains(&r.group) && !test_groups.contains(&r.group))
                .collect()
        } else {
            Vec::new()
        };
        let in_set = |set: &BTreeSet<String>| -> Vec<usize> {
            (0..pairs.len()).filter(|&i| set.contains(&pairs[i].group)).collect()
        };
        let train_idx: Vec<usize> = (0..pairs.len())
            .filter(|&i| {
                !val_groups.contains(&pairs[i].group) && !test_groups.contains(&pairs[i].group)
            })
            .collect();
        if train_idx.is_empty() {
            return Err(RewardError::NoData(" outside the held-out groups".into()));
        }
        // Fixed samples (the same for every member) of the validation and test pairs.
        let sample = |mut idx: Vec<usize>, salt: u64| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed ^ salt);
            idx.shuffle(&mut rng);
            idx.truncate(config.eval_pairs);
            idx.sort_unstable();
            idx
        };
        let val_idx = keep_val_kinds(in_set(&val_groups), &config.val_kinds, |&i| pairs[i].origin)?;
        let test_idx = in_set(&test_groups);
        observer.message(&format!(
            "{} training pairs, {} validation pairs ({}), {} test pairs; at most {} of each \
             held-out set scored",
            train_idx.len(),
            val_idx.len(),
            config.val_kinds.names().join(", "),
            test_idx.len(),
            config.eval_pairs
        ));
        let val_idx = sample(val_idx, 0x0076_616c);
        let test_idx = sample(test_idx, 0x7465_7374);
        let pair_heights: Vec<u32> = pairs.iter().map(|p| p.height).collect();
        // One head row, or one per height up to the highest in the data.
        let heads = if config.head_per_height {
            let top = pairs.iter().map(|p| p.height).chain(ratings.iter().map(|r| r.height));
            top.max().unwrap_or(0) as usize + 1
        } else {
            1
        };
        let mut members = Vec::with_capacity(config.members);
        let mut final_loss = Vec::new();
        let mut curves = Vec::with_capacity(config.members);
        let mut best_steps = Vec::with_capacity(config.members);
        let mut encoded: Option<(Vec<TokenPair>, usize)> = None;
        let mut rated: Vec<Vec<u32>> = Vec::with_capacity(train_ratings.len());
        let mut last: Option<(TrainableLlama, GgufTokenizer)> = None;
        let mut pair_steps = 0usize;
        let mut probe_features: Option<probe::Features> = None;
        let mut probe_seconds = 0.0;
        let mut probe_kept = Vec::with_capacity(config.members);
        // A batch's targets: each pair's (smoothed) target and weight, each rating's level
        // and weight, and every score's head row.
        let targets_of = |batch: &[usize],
                          rbatch: &[usize],
                          device: &Device|
         -> Result<BatchTargets, RewardError> {
            BatchTargets::new(
                batch.iter().map(|&i| {
                    let p = &pairs[i];
                    (smooth_target(p.target, config.label_smoothing), p.weight, p.height)
                }),
                rbatch.iter().map(|&i| {
                    let r = train_ratings[i];
                    (u32::from(r.overall.clamp(1, 7)) - 1, r.weight, r.height)
                }),
                heads,
                device,
            )
        };
        let mut train_seconds = 0.0;
        for m in 0..config.members {
            let options = LoadOptions { mode: member_mode(&config.mode, m), dtype: DType::F32 };
            let (mut llama, tokenizer) = TrainableLlama::load(base, &device, &options)?;
            llama.set_checkpointing(config.grad_checkpoint);
            let end = end_token(&tokenizer)?;
            if encoded.is_none() {
                let mut out = Vec::with_capacity(pairs.len());
                let mut truncated = 0;
                for p in pairs {
                    let summaries = [p.chosen.as_str(), p.rejected.as_str()];
                    let (mut seqs, cut) =
                        encode(&tokenizer, end, config.max_tokens, p.height, &p.input, &summaries)?;
                    truncated += usize::from(cut);
                    let r = seqs.pop().unwrap_or_default();
                    let c = seqs.pop().unwrap_or_default();
                    out.push((c, r));
                }
                encoded = Some((out, truncated));
                for r in &train_ratings {
                    let summary = [r.summary.as_str()];
                    let (mut seqs, _) =
                        encode(&tokenizer, end, config.max_tokens, r.height, &r.input, &summary)?;
                    rated.push(seqs.pop().unwrap_or_default());
                }
            }
            let data = &encoded
                .as_ref()
                .map(|e| &e.0)
                .ok_or_else(|| RewardError::Invalid("internal: pairs were not encoded".into()))?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed.wrapping_add(m as u64));
            let hidden = llama.config.hidden;
            let std = 1.0 / (hidden as f64).sqrt();
            let w0: Vec<f32> = (0..heads * hidden)
                .map(|_| (rng.random_range(-1.0..1.0) * std * 0.1) as f32)
                .collect();
            let head_w = Var::from_tensor(&Tensor::from_vec(w0, (heads, hidden), &device)?)?;
            let head_b = Var::from_tensor(&Tensor::zeros(heads, DType::F32, &device)?)?;
            let body = llama.trainable();
            // The ordinal model's thresholds train with the head; scoring does not need them.
            let thresholds = init_thresholds(&device)?;
            let head_vars = vec![
                ("head.weight".to_string(), head_w.clone()),
                ("head.bias".into(), head_b.clone()),
                ("ordinal.thresholds".into(), thresholds.clone()),
            ];
            let mut all_vars = body.clone();
            all_vars.extend(head_vars.iter().cloned());
            let params = ParamsAdamW {
                lr: config.lr,
                weight_decay: config.weight_decay,
                ..Default::default()
            };
            let mut opt_body = AdamW::new(body.clone(), params.clone())?;
            let mut opt_head =
                AdamW::new(head_vars.clone(), ParamsAdamW { lr: config.head_lr, ..params })?;
            let per_step = config.batch_pairs * config.grad_accum;
            let epoch_steps = train_idx.len().div_ceil(per_step).max(1);
            let total = config.steps.unwrap_or(config.epochs * epoch_steps);
            let eval_every = config.eval_every.unwrap_or(epoch_steps);
            let sched = Schedule { peak: 1.0, warmup: config.warmup, total, min_ratio: 0.1 };
            let mut acc = Accumulator::new(all_vars.len());
            let mut draw = Draw::new(&train_idx, rated.len());
            let mut losses: Vec<f64> = Vec::new();
            let mut curve = Vec::new();
            let mut best: Option<(f64, usize, LmMember)> = None;
            if config.members > 1 {
                observer.message(&format!("member {} of {}", m + 1, config.members));
            }
            if config.probe_epochs > 0 {
                if probe_features.is_none() {
                    observer.message(&format!(
                        "probe: the frozen model's features of {} training and {} validation pairs",
                        train_idx.len(),
                        val_idx.len()
                    ));
                    let p0 = Instant::now();
                    probe_features = Some(probe::Features::compute(
                        &llama,
                        data,
                        &rated,
                        &train_idx,
                        &val_idx,
                        config.max_tokens,
                    )?);
                    probe_seconds = p0.elapsed().as_secs_f64();
                    tracing::info!(
                        "probe features of {} training and {} validation pairs and {} ratings \
                         in {probe_seconds:.0} s",
                        train_idx.len(),
                        val_idx.len(),
                        rated.len()
                    );
                }
                let features = probe_features.as_ref().ok_or_else(|| {
                    RewardError::Invalid("internal: the probe features were not computed".into())
                })?;
                let fit = features.fit(
                    &mut Draw::new(&train_idx, rated.len()),
                    &targets_of,
                    &val_idx,
                    pairs,
                    [&head_w, &head_b, &thresholds],
                    config,
                    &mut rng,
                )?;
                observer.message(&format!(
                    "probe: pass {} of {} kept, validation log-loss {}",
                    fit.epoch,
                    config.probe_epochs,
                    fit.val_loss.map_or("-".into(), |l| format!("{l:.4}"))
                ));
                losses.extend(fit.last_epoch_losses);
                probe_kept.push(fit.epoch);
                if let Some(loss) = fit.val_loss {
                    curve.push((0, loss));
                    best = Some((loss, 0, snapshot(&body, &head_w, &head_b)?));
                }
            }
            let started = Instant::now();
            let mut validating = 0.0;
            observer.started(total, None);
            for step in 0..total {
                let s0 = Instant::now();
                let (mut step_loss, mut step_tokens, mut step_pairs) = (0.0, 0, 0);
                for _ in 0..config.grad_accum {
                    let (batch, rbatch) = draw.next(config.batch_pairs, &mut rng);
                    // Chosen and rejected share the node's prompt: one packed row per pair;
                    // then one row per rated summary.
                    let mut packed: Vec<Packed> =
                        batch.iter().flat_map(|&i| pack(&[&data[i].0, &data[i].1])).collect();
                    packed.extend(rbatch.iter().flat_map(|&i| pack(&[&rated[i]])));
                    step_tokens += packed
                        .iter()
                        .map(|p| p.prompt.len() + p.completions.iter().map(Vec::len).sum::<usize>())
                        .sum::<usize>();
                    let n = batch.len();
                    let targets = targets_of(&batch, &rbatch, &device)?;
                    let heads = [head_w.clone(), head_b.clone(), thresholds.clone()];
                    let (loss, grads) =
                        llama.packed_last_hidden_backward(&packed, &heads, |h| {
                            let all = head_scores(
                                h,
                                head_w.as_tensor(),
                                head_b.as_tensor(),
                                &targets.which,
                            )?;
                            Ok(targets.loss(&all, thresholds.as_tensor(), config.ordinal_weight)?)
                        })?;
                    let lv = f64::from(loss.to_scalar::<f32>()?);
                    if !lv.is_finite() {
                        return Err(RewardError::Invalid(format!(
                            "member {m}: the loss became {lv} at step {step}; lower the learning \
                             rate"
                        )));
                    }
                    losses.push(lv);
                    step_loss += lv / config.grad_accum as f64;
                    acc.add(&all_vars, &grads, 1.0 / config.grad_accum as f64)?;
                    pair_steps += n;
                    step_pairs += n;
                }
                let grad_norm = acc.clip(config.max_grad_norm)?;
                let grads = acc.take();
                let scale = sched.lr(step);
                opt_body.set_lr(config.lr * scale);
                opt_head.set_lr(config.head_lr * scale);
                let (gb, gh) = grads.split_at(body.len());
                if !body.is_empty() {
                    opt_body.step_with(gb)?;
                }
                opt_head.step_with(gh)?;
                let done = step + 1;
                let epoch = done * per_step / train_idx.len().max(1);
                observer.step(&StepLog {
                    step: done,
                    epoch,
                    lr: config.lr * scale,
                    loss: step_loss,
                    grad_norm,
                    tokens: step_tokens,
                    seconds: s0.elapsed().as_secs_f64(),
                    metrics: BTreeMap::from([("pairs".to_string(), step_pairs as f64)]),
                });
                if !val_idx.is_empty() && (done % eval_every == 0 || done == total) {
                    let v0 = Instant::now();
                    let margins = pair_margins(
                        &llama,
                        data,
                        &pair_heights,
                        &val_idx,
                        head_w.as_tensor(),
                        head_b.as_tensor(),
                        config.max_tokens,
                    )?;
                    let t: Vec<f32> = val_idx.iter().map(|&i| pairs[i].target).collect();
                    let loss = metrics(&margins, &t).log_loss;
                    tracing::debug!("member {m}, step {done}: validation log-loss {loss:.4}");
                    observer.eval(&EvalLog {
                        step: done,
                        epoch,
                        metrics: BTreeMap::from([("log_loss".to_string(), loss)]),
                    });
                    curve.push((done, loss));
                    if best.as_ref().is_none_or(|b| loss < b.0) {
                        best = Some((loss, done, snapshot(&body, &head_w, &head_b)?));
                    }
                    validating += v0.elapsed().as_secs_f64();
                }
            }
            train_seconds += started.elapsed().as_secs_f64() - validating;
            let tail = losses.len().min(train_idx.len().div_ceil(config.batch_pairs).max(1));
            let tail = &losses[losses.len() - tail..];
            final_loss.push(tail.iter().sum::<f64>() / tail.len().max(1) as f64);
            let (step, member) = match best {
                Some((_, step, member)) => (step, member),
                None => (total, snapshot(&body, &head_w, &head_b)?),
            };
            best_steps.push(step);
            curves.push(curve);
            members.push(member);
            last = Some((llama, tokenizer));
        }
        let (llama, tokenizer) =
            last.ok_or_else(|| RewardError::Invalid("no member was trained".into()))?;
        let end = end_token(&tokenizer)?;
        let truncated = encoded.map_or(0, |e| e.1);
        let data_json = serde_json::to_vec(pairs)
            .map_err(|e| RewardError::Invalid(format!("hashing the data: {e}")))?;
        let held_out = !test_idx.is_empty();
        let card = LmCard {
            format: LM_FORMAT_VERSION,
            backbone: BACKBONE.into(),
            hash: String::new(),
            created_unix: now_unix(),
            base: base.display().to_string(),
            base_hash,
            hidden: llama.config.hidden,
            config: config.clone(),
            pairs: pairs.len(),
            train_pairs: train_idx.len(),
            train_ratings: train_ratings.len(),
            val_groups: val_groups.into_iter().collect(),
            test_groups: test_groups.into_iter().collect(),
            data_hash: blake3::hash(&data_json).to_hex()[..16].to_string(),
            source: source.to_string(),
            truncated,
            metrics: BTreeMap::new(),
            held_out,
            validation_metrics: BTreeMap::new(),
            report: None,
            validation_curve: curves,
            best_step: best_steps,
            heads,
            temperature: 1.0,
            temperature_fitted: false,
            validation_log_loss_uncalibrated: None,
            probe_epoch: probe_kept,
            probe_seconds,
            final_loss,
            train_seconds,
            pairs_per_second: pair_steps as f64 / train_seconds.max(1e-9),
        };
        let mut model = LmRewardModel::assemble(card, members, llama, tokenizer, end);
        let pick = |idx: &[usize]| idx.iter().map(|&i| pairs[i].clone()).collect::<Vec<Pair>>();
        if !val_idx.is_empty() {
            let val = pick(&val_idx);
            let margins = model.margins(&val)?;
            let targets: Vec<f32> = val.iter().map(|p| p.target).collect();
            let raw = metrics(&margins, &targets).log_loss;
            let fitted = fit_temperature(&margins, &targets);
            let t = fitted.unwrap_or(1.0);
            model.card.temperature = t;
            model.card.temperature_fitted = fitted.is_some();
            model.card.validation_log_loss_uncalibrated = Some(raw);
            // The calibrated margins are these over `t`: no second pass over the pairs.
            let calibrated: Vec<f32> = margins.iter().map(|&d| d / t as f32).collect();
            model.card.validation_metrics = metrics_by_height(&val, &calibrated);
            observer.message(&format!(
                "temperature {t:.3} on {} validation pairs (log-loss {raw:.4} before)",
                val.len()
            ));
        }
        let reported =
            if held_out { pick(&test_idx) } else { pick(&sample(train_idx, 0x0074_7261_696e)) };
        observer.message(&format!(
            "scoring {} {} pairs for the card",
            reported.len(),
            if held_out { "test" } else { "training" }
        ));
        let margins = model.margins(&reported)?;
        model.card.metrics = metrics_by_height(&reported, &margins);
        if held_out {
            let refs: Vec<&Pair> = reported.iter().collect();
            model.card.report = Some(super::eval::report(&margins, &refs));
        }
        Ok(model)
    }

    /// Per-member scores (K × n) of `summaries` of `input` at `height`, `batch` sequences at a
    /// time.
    pub fn member_scores(
        &self,
        height: u32,
        input: &str,
        summaries: &[&str],
    ) -> Result<Vec<Vec<f32>>, RewardError> {
        let max = self.card.config.max_tokens;
        let seqs = encode(&self.tokenizer, self.end, max, height, input, summaries)?.0;
        self.score_tokens(&[seqs], &[height])
    }

    /// Per-member scores (K × n) of tokenized sequences, given in groups that share a prompt
    /// (scored as packed rows, several rows per forward pass) and the groups' heights; scores
    /// in the groups' order.
    fn score_tokens(
        &self,
        groups: &[Vec<Vec<u32>>],
        heights: &[u32],
    ) -> Result<Vec<Vec<f32>>, RewardError> {
        let heads = self.card.heads;
        let heads: Vec<u32> = heights.iter().map(|&h| head_of(h, heads)).collect();
        let (rows, row_heads, _) = rows_of(groups, &heads);
        if rows.is_empty() {
            return Ok(vec![Vec::new(); self.members.len()]);
        }
        let budget = score_budget(self.card.config.max_tokens);
        let t = self.card.temperature as f32;
        let mut out = Vec::with_capacity(self.members.len());
        if self.scoring == Scoring::Engine {
            let engine = self.engine()?;
            let which =
                head_rows(row_heads.iter().zip(&rows).map(|(&h, r)| (h, r.completions.len())));
            for (i, m) in self.members.iter().enumerate() {
                let hidden = engine.last_hidden(i, &rows, budget)?;
                let which = Tensor::new(which.as_slice(), m.head_w.device())?;
                let scores =
                    head_scores(&hidden, &m.head_w, &m.head_b, &which)?.to_vec1::<f32>()?;
                out.push(scores.into_iter().map(|s| s / t).collect());
            }
            return Ok(out);
        }
        let llama = self.lock_llama()?;
        for m in &self.members {
            llama.load_trainable(&m.weights)?;
            let scores = score_rows(&llama, &rows, &row_heads, &m.head_w, &m.head_b, budget)?;
            out.push(scores.into_iter().map(|s| s / t).collect());
        }
        Ok(out)
    }

    fn lock_llama(&self) -> Result<std::sync::MutexGuard<'_, TrainableLlama>, RewardError> {
        self.llama
            .lock()
            .map_err(|_| RewardError::Invalid("the reward model's lock is poisoned".into()))
    }

    fn assemble(
        card: LmCard,
        members: Vec<LmMember>,
        llama: TrainableLlama,
        tokenizer: GgufTokenizer,
        end: u32,
    ) -> LmRewardModel {
        LmRewardModel {
            card,
            members,
            llama: Mutex::new(llama),
            tokenizer,
            end,
            scoring: Scoring::default(),
            engine: Mutex::new(None),
        }
    }

    /// Chooses the forward pass that scores candidates from now on ([`Scoring::Engine`] by
    /// default; the two agree to about 1e-2 of a score, the engine multiplying in f16).
    pub fn set_scoring(&mut self, scoring: Scoring) {
        self.scoring = scoring;
    }

    /// The members on the engine, built on first use.
    fn engine(&self) -> Result<std::sync::Arc<engine::EngineScorer>, RewardError> {
        let mut slot = self
            .engine
            .lock()
            .map_err(|_| RewardError::Invalid("the reward model's lock is poisoned".into()))?;
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let llama = self.lock_llama()?;
        let built =
            std::sync::Arc::new(engine::EngineScorer::build(&llama, &self.members, &llama.path)?);
        *slot = Some(built.clone());
        Ok(built)
    }

    /// The ensemble-mean margin (chosen − rejected) of every pair.
    pub fn margins(&self, pairs: &[Pair]) -> Result<Vec<f32>, RewardError> {
        let max = self.card.config.max_tokens;
        let mut groups = Vec::with_capacity(pairs.len());
        for p in pairs {
            let summaries = [p.chosen.as_str(), p.rejected.as_str()];
            groups.push(encode(&self.tokenizer, self.end, max, p.height, &p.input, &summaries)?.0);
        }
        let heights: Vec<u32> = pairs.iter().map(|p| p.height).collect();
        let scores = self.score_tokens(&groups, &heights)?;
        let stats = mean_std(&scores);
        Ok((0..pairs.len()).map(|i| stats[2 * i].0 - stats[2 * i + 1].0).collect())
    }

    /// Accuracy, log-loss and calibration per height and `all`.
    pub fn evaluate(&self, pairs: &[Pair]) -> Result<BTreeMap<String, Metrics>, RewardError> {
        Ok(metrics_by_height(pairs, &self.margins(pairs)?))
    }

    fn tensors(&self) -> HashMap<String, Tensor> {
        let mut t = HashMap::new();
        for (i, m) in self.members.iter().enumerate() {
            for (name, w) in &m.weights {
                t.insert(format!("m{i}.{name}"), w.clone());
            }
            t.insert(format!("m{i}.head.weight"), m.head_w.clone());
            t.insert(format!("m{i}.head.bias"), m.head_b.clone());
        }
        t
    }

    /// Saves under `dir/<hash>/` and points `dir/latest` at it. Returns the checkpoint folder.
    pub fn save(&mut self, dir: &Path) -> Result<PathBuf, RewardError> {
        let tensors = self.tensors();
        let card = &mut self.card;
        super::publish_checkpoint(
            dir,
            LM_WEIGHTS_FILE,
            |weights| Ok(candle_core::safetensors::save(&tensors, weights)?),
            |hash| {
                card.hash = hash.to_string();
                serde_json::to_vec_pretty(&*card)
            },
        )
    }

    /// Loads a checkpoint folder with its base model: `base` when given (its hash must match
    /// the card's), else the path on the card.
    pub fn load(path: &Path, base: Option<&Path>) -> Result<LmRewardModel, RewardError> {
        let bad = |p: &Path, reason: String| RewardError::File { path: p.to_path_buf(), reason };
        let card_path = path.join(CARD_FILE);
        let text = std::fs::read(&card_path).map_err(|e| bad(&card_path, e.to_string()))?;
        let card: LmCard = serde_json::from_slice(&text)
            .map_err(|e| bad(&card_path, format!("not an LM reward model card: {e}")))?;
        if card.format != LM_FORMAT_VERSION || card.backbone != BACKBONE {
            return Err(bad(
                &card_path,
                format!("unknown LM checkpoint format {} ({})", card.format, card.backbone),
            ));
        }
        let weights = path.join(LM_WEIGHTS_FILE);
        let bytes = std::fs::read(&weights).map_err(|e| bad(&weights, e.to_string()))?;
        if blake3::hash(&bytes).to_hex()[..16] != card.hash {
            return Err(bad(
                &weights,
                "does not match the card's hash (corrupt or replaced)".into(),
            ));
        }
        if !(card.temperature.is_finite() && card.temperature > 0.0) {
            return Err(bad(
                &card_path,
                format!("temperature {} is not a positive number", card.temperature),
            ));
        }
        let base_path = base.map_or_else(|| PathBuf::from(&card.base), Path::to_path_buf);
        let loaded = file_hash(&base_path)?;
        if loaded != card.base_hash {
            return Err(RewardError::Invalid(format!(
                "the LM reward model {} was trained on base model {} (blake3 {}), but {} has \
                 blake3 {loaded}",
                card.hash,
                card.base,
                &card.base_hash[..16.min(card.base_hash.len())],
                base_path.display()
            )));
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let options = LoadOptions { mode: card.config.mode.clone(), dtype: DType::F32 };
        let (llama, tokenizer) = TrainableLlama::load(&base_path, &Device::Cpu, &options)?;
        let names: Vec<String> = llama.trainable().into_iter().map(|(n, _)| n).collect();
        let mut members = Vec::with_capacity(card.config.members);
        for i in 0..card.config.members {
            let get = |name: &str| {
                tensors
                    .get(&format!("m{i}.{name}"))
                    .cloned()
                    .ok_or_else(|| bad(&weights, format!("member {i} has no tensor `{name}`")))
            };
            let mut w = HashMap::new();
            for n in &names {
                w.insert(n.clone(), get(n)?);
            }
            // A single head was saved as `(hidden,)` before heads per height.
            let (hidden, heads) = (llama.config.hidden, card.heads);
            let mut head_w = get("head.weight")?;
            if head_w.dims() == [hidden] {
                head_w = head_w.unsqueeze(0)?;
            }
            let head_b = get("head.bias")?;
            if head_w.dims() != [heads, hidden] || head_b.dims() != [heads] {
                return Err(bad(
                    &weights,
                    format!(
                        "member {i}: head of shape {:?} and bias {:?}, the card says {heads} \
                         head(s) of {hidden}",
                        head_w.dims(),
                        head_b.dims()
                    ),
                ));
            }
            members.push(LmMember { weights: w, head_w, head_b });
        }
        let end = end_token(&tokenizer)?;
        Ok(LmRewardModel::assemble(card, members, llama, tokenizer, end))
    }
}

/// Accuracy, log-loss and ECE per height (`h{H}`) and over `all`, from the pairs' margins.
pub fn metrics_by_height(pairs: &[Pair], margins: &[f32]) -> BTreeMap<String, Metrics> {
    let mut out = BTreeMap::new();
    let mut heights: Vec<u32> = pairs.iter().map(|p| p.height).collect();
    heights.sort_unstable();
    heights.dedup();
    for h in heights {
        let (m, t): (Vec<f32>, Vec<f32>) = pairs
            .iter()
            .zip(margins)
            .filter(|(p, _)| p.height == h)
            .map(|(p, &d)| (d, p.target))
            .unzip();
        out.insert(format!("h{h}"), metrics(&m, &t));
    }
    let t: Vec<f32> = pairs.iter().map(|p| p.target).collect();
    out.insert("all".into(), metrics(margins, &t));
    out
}

/// The LM reward ensemble as a [`Selector`]: score = mean − λ·std over the members, like
/// [`super::RewardSelector`].
pub struct LmRewardSelector {
    model: std::sync::Arc<LmRewardModel>,
    pessimism: f32,
}

impl LmRewardSelector {
    pub fn new(model: std::sync::Arc<LmRewardModel>, pessimism: f32) -> LmRewardSelector {
        LmRewardSelector { model, pessimism }
    }
}

impl Selector for LmRewardSelector {
    fn id(&self) -> String {
        format!("reward-lm:{}:lambda={}:centred", self.model.card.hash, self.pessimism)
    }

    fn score(
        &self,
        height: u32,
        input: &str,
        candidates: &[Candidate],
    ) -> Result<Vec<CandidateScore>, SelectError> {
        let texts: Vec<&str> = candidates.iter().map(|c| c.text.as_str()).collect();
        let members = self
            .model
            .member_scores(height, input, &texts)
            .map_err(|e| SelectError { selector: self.id(), message: e.to_string() })?;
        Ok(super::ensemble_scores(&members, self.pessimism))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::testing::{tiny_gguf, TinyOptions};

    fn tiny(dir: &Path) -> PathBuf {
        let path = dir.join("tiny.gguf");
        tiny_gguf(&path, 7, &TinyOptions::default()).unwrap();
        path
    }

    /// Chosen summaries contain "zebra", rejected ones never do.
    fn separable() -> Vec<Pair> {
        separable_pairs(8)
    }

    /// `n` such pairs, each its own group.
    fn separable_pairs(n: usize) -> Vec<Pair> {
        (0..n)
            .map(|i| {
                let input = format!("passage number {i} about animals");
                let (c, r) = (format!("zebra zebra {i}"), format!("cat dog {i}"));
                Pair::new(0, &input, &c, &r, 1.0, &format!("g{i}"))
            })
            .collect()
    }

    fn config() -> LmTrainConfig {
        LmTrainConfig {
            mode: Mode::Lora(LoraConfig { rank: 4, alpha: 8.0, ..LoraConfig::default() }),
            members: 2,
            steps: Some(40),
            batch_pairs: 4,
            lr: 1e-2,
            head_lr: 5e-2,
            max_tokens: 256,
            val_percent: 0,
            test_percent: 0,
            ..LmTrainConfig::default()
        }
    }

    /// Pairs that teach nothing (ties) and Likert ratings that do: the ordinal targets alone
    /// order the summaries.
    #[test]
    fn likert_ratings_teach_through_the_ordinal_loss() {
        let dir = tempfile::tempdir().unwrap();
        let base = tiny(dir.path());
        let ties: Vec<Pair> = separable().into_iter().map(|p| Pair { target: 0.5, ..p }).collect();
        let ratings: Vec<Rating> = (0..8)
            .flat_map(|i| {
                let input = format!("passage number {i} about animals");
                [(format!("zebra zebra {i}"), 7), (format!("cat dog {i}"), 1)].map(|(s, o)| {
                    Rating {
                        height: 0,
                        input: input.clone(),
                        summary: s,
                        overall: o,
                        labeler: "l".into(),
                        group: format!("g{i}"),
                        weight: 1.0,
                    }
                })
            })
            .collect();
        let c = LmTrainConfig { members: 1, ordinal_weight: 1.0, ..config() };
        let model = LmRewardModel::train(&base, &ties, &ratings, &c, "test").unwrap();
        assert_eq!(model.card.train_ratings, 16);
        let s = model.member_scores(
            0,
            "passage number 3 about animals",
            &["zebra zebra 3", "cat dog 3"],
        );
        let s = s.unwrap();
        assert!(s[0][0] > s[0][1] + 0.5, "{s:?}");
        // The same through a linear probe alone: the ratings' features train the head too.
        let probe = LmTrainConfig { steps: Some(0), probe_epochs: 40, ..c.clone() };
        let model = LmRewardModel::train(&base, &ties, &ratings, &probe, "test").unwrap();
        let s = model.member_scores(
            0,
            "passage number 5 about animals",
            &["zebra zebra 5", "cat dog 5"],
        );
        let s = s.unwrap();
        assert!(s[0][0] > s[0][1] + 0.5, "probe: {s:?}");
        // Without the ordinal loss the ties teach no order.
        let c = LmTrainConfig { ordinal_weight: 0.0, ..c };
        let model = LmRewardModel::train(&base, &ties, &ratings, &c, "test").unwrap();
        assert_eq!(model.card.train_ratings, 0);
    }

    /// What a training run told its observer.
    #[derive(Default)]
    struct Recorder(Mutex<Recorded>);
    #[derive(Default)]
    struct Recorded {
        started: Vec<usize>,
        steps: Vec<usize>,
        evals: Vec<(usize, f64)>,
        messages: Vec<String>,
    }
    impl Observer for Recorder {
        fn started(&self, total: usize, _: Option<usize>) {
            self.0.lock().unwrap().started.push(total);
        }
        fn step(&self, log: &StepLog) {
            assert!(log.loss.is_finite() && log.tokens > 0 && log.metrics["pairs"] > 0.0);
            self.0.lock().unwrap().steps.push(log.step);
        }
        fn eval(&self, log: &EvalLog) {
            self.0.lock().unwrap().evals.push((log.step, log.metrics["log_loss"]));
        }
        fn message(&self, text: &str) {
            self.0.lock().unwrap().messages.push(text.to_string());
        }
    }

    #[test]
    fn validation_groups_choose_the_checkpoint_and_test_groups_give_the_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let base = tiny(dir.path());
        let pairs = separable_pairs(16);
        let c = LmTrainConfig {
            members: 1,
            val_percent: 25,
            test_percent: 25,
            eval_every: Some(10),
            ..config()
        };
        let seen = Recorder::default();
        let model = LmRewardModel::train_observed(&base, &pairs, &[], &c, "test", &seen).unwrap();
        let card = &model.card;
        assert!(card.held_out && !card.test_groups.is_empty() && !card.val_groups.is_empty());
        // The observer saw every step once, in order, and each validation the card logs.
        let seen = seen.0.into_inner().unwrap();
        let total = c.steps.unwrap();
        assert_eq!(seen.started, vec![total]);
        assert_eq!(seen.steps, (1..=total).collect::<Vec<_>>());
        assert_eq!(seen.evals, card.validation_curve[0]);
        assert!(seen.messages[0].contains("training pairs"), "{:?}", seen.messages);
        assert!(card.test_groups.iter().all(|g| !card.val_groups.contains(g)));
        let held = card.test_groups.len() + card.val_groups.len();
        assert_eq!(card.train_pairs, 16 - held);
        // Validated after steps 10, 20, 30, 40; the kept step has the lowest log-loss.
        let curve = &card.validation_curve[0];
        assert_eq!(curve.iter().map(|c| c.0).collect::<Vec<_>>(), vec![10, 20, 30, 40]);
        let best = curve.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        assert_eq!(card.best_step, vec![best.0]);
        // The kept weights are the validated ones: before the temperature, the validation
        // pairs give the logged log-loss; the temperature fitted on them only lowers it.
        let val: Vec<Pair> =
            pairs.iter().filter(|p| card.val_groups.contains(&p.group)).cloned().collect();
        let raw = card.validation_log_loss_uncalibrated.unwrap();
        assert!((raw - best.1).abs() < 1e-4, "{raw} vs {best:?}");
        // Four validation pairs are too few to fit a temperature on.
        assert!(val.len() < crate::reward::train::MIN_TEMPERATURE_PAIRS);
        assert!(!card.temperature_fitted && card.temperature == 1.0, "{card:?}");
        let again = model.evaluate(&val).unwrap()["all"].log_loss;
        assert!(again <= raw + 1e-6, "{again} vs {raw}");
        assert!((again - card.validation_metrics["all"].log_loss).abs() < 1e-5);
        // The metrics are on the test groups, with the baselines beside them.
        let test = card.metrics["all"].pairs;
        assert_eq!(test, pairs.iter().filter(|p| card.test_groups.contains(&p.group)).count());
        assert_eq!(card.report.as_ref().unwrap().all.model.pairs, test);
        assert_eq!(card.metrics["all"].accuracy, 1.0, "{card:?}");
    }

    /// A probe alone (0 steps) keeps the validated pass's head, which scores through the whole
    /// model exactly as it did on the features; fine-tuning then starts from it (step 0).
    #[test]
    fn a_linear_probe_is_validated_like_a_step_and_fine_tuning_starts_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = tiny(dir.path());
        let pairs = separable_pairs(16);
        let c = LmTrainConfig {
            members: 1,
            steps: Some(0),
            probe_epochs: 30,
            val_percent: 25,
            ..config()
        };
        let model = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap();
        let card = &model.card;
        assert_eq!(card.best_step, vec![0]);
        assert!((1..=30).contains(&card.probe_epoch[0]), "{card:?}");
        let curve = &card.validation_curve[0];
        assert_eq!(curve.len(), 1);
        assert_eq!(curve[0].0, 0);
        // The head folded back out of standardised coordinates gives the probe's validation
        // log-loss through the full forward pass.
        let raw = card.validation_log_loss_uncalibrated.unwrap();
        assert!((raw - curve[0].1).abs() < 1e-3, "model {raw} vs probe {:?}", curve[0]);
        assert!(raw < 0.3, "{raw}");
        let train: Vec<Pair> =
            pairs.iter().filter(|p| !card.val_groups.contains(&p.group)).cloned().collect();
        assert!(model.margins(&train).unwrap().iter().all(|&d| d > 0.0));
        assert!(card.probe_seconds > 0.0 && card.train_seconds >= 0.0);
        // Probe, then fine-tuning: validated at step 0 (the probe) and after steps 5 and 10.
        let c = LmTrainConfig { steps: Some(10), eval_every: Some(5), ..c };
        let model = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap();
        let curve = &model.card.validation_curve[0];
        assert_eq!(curve.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 5, 10]);
        let best = curve.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        assert_eq!(model.card.best_step, vec![best.0]);
        // No steps and no probe: nothing to train.
        let c = LmTrainConfig { steps: Some(0), probe_epochs: 0, ..c };
        let err = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap_err().to_string();
        assert!(err.contains("probe"), "{err}");
    }

    /// Smoothed targets stop the margins near `ln((1−ε/2)/(ε/2))`; validation pairs are only
    /// those of the kinds asked for, from the validation groups.
    #[test]
    fn label_smoothing_bounds_margins_and_validation_keeps_its_kinds() {
        use crate::feedback::Origin;
        let dir = tempfile::tempdir().unwrap();
        let base = tiny(dir.path());
        // Eight groups, each with a demonstration pair and a synthetic one.
        let pairs: Vec<Pair> = separable()
            .into_iter()
            .flat_map(|p| {
                [Origin::Demonstration, Origin::Synthetic].map(|origin| Pair {
                    origin,
                    chosen: format!("{} {origin:?}", p.chosen),
                    ..p.clone()
                })
            })
            .collect();
        let synthetic = Kinds::parse("synthetic").unwrap();
        let c = LmTrainConfig { members: 1, steps: Some(60), val_percent: 25, ..config() };
        let margin = |eps: f32| {
            let c = LmTrainConfig { label_smoothing: eps, val_kinds: synthetic, ..c.clone() };
            let model = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap();
            let groups = &model.card.val_groups;
            assert!(!groups.is_empty());
            // One synthetic pair per validation group was validated on, not its demonstration.
            assert_eq!(model.card.validation_metrics["all"].pairs, groups.len());
            let train: Vec<Pair> =
                pairs.iter().filter(|p| !groups.contains(&p.group)).cloned().collect();
            let m = model.margins(&train).unwrap();
            assert!(m.iter().all(|&d| d > 0.0), "ε {eps}: {m:?}");
            m.iter().sum::<f32>() / m.len() as f32
        };
        let (plain, smoothed) = (margin(0.0), margin(0.5));
        let optimum = 3f32.ln();
        assert!(smoothed < optimum + 0.6, "smoothed {smoothed}, optimum {optimum}");
        assert!(plain > smoothed + 1.0, "plain {plain}, smoothed {smoothed}");
        // Kinds absent from the validation groups: an error, not a silent run without one.
        let c = LmTrainConfig { val_kinds: Kinds::parse("comparison").unwrap(), ..c };
        let err = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap_err().to_string();
        assert!(err.contains("validation kinds (comparison)"), "{err}");
        let c = LmTrainConfig { label_smoothing: 1.0, ..c };
        assert!(LmRewardModel::train(&base, &pairs, &[], &c, "test").is_err());
    }

    #[test]
    fn bt_loss_falls_to_full_train_accuracy_and_save_load_gives_identical_scores() {
        let dir = tempfile::tempdir().unwrap();
        let base = tiny(dir.path());
        let pairs = separable();
        let mut model = LmRewardModel::train(&base, &pairs, &[], &config(), "test").unwrap();
        assert_eq!(model.members.len(), 2);
        // Members differ (seeds), and the head moved off its tiny initialisation.
        let head = |m: &LmMember| m.head_w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(head(&model.members[0]), head(&model.members[1]));
        let all = &model.card.metrics["all"];
        assert_eq!(all.accuracy, 1.0, "{:?} loss {:?}", all, model.card.final_loss);
        assert!(model.card.final_loss.iter().all(|&l| l < 0.5), "{:?}", model.card.final_loss);
        let input = "passage number 3 about animals";
        let s = model.member_scores(0, input, &["zebra zebra 3", "cat dog 3"]).unwrap();
        let ckpt = model.save(&dir.path().join("rm")).unwrap();
        assert!(is_lm_checkpoint(&ckpt));
        let loaded = LmRewardModel::load(&ckpt, None).unwrap();
        let t = loaded.member_scores(0, input, &["zebra zebra 3", "cat dog 3"]).unwrap();
        assert_eq!(s, t);
        assert!(s.iter().all(|m| m[0] > m[1]), "{s:?}");
        // Through the selector: one score per candidate, mean − λ·std.
        let sel = LmRewardSelector::new(std::sync::Arc::new(loaded), 1.0);
        let cands: Vec<Candidate> = ["zebra zebra 3", "cat dog 3"]
            .iter()
            .map(|t| Candidate {
                text: t.to_string(),
                raw_text: t.to_string(),
                completion_tokens: 3,
                mean_logprob: None,
                sum_logprob: None,
                finish: crate::infer::FinishReason::Stop,
                looped: false,
                seed: 0,
            })
            .collect();
        let scores = sel.score(0, input, &cands).unwrap();
        assert_eq!(scores.len(), 2);
        assert!(scores[0].score > scores[1].score);

        // A checkpoint from before heads per height (head saved as `(hidden,)`, no `heads` on
        // the card) loads and scores the same.
        let weights = ckpt.join(LM_WEIGHTS_FILE);
        let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
        for m in 0..2 {
            let name = format!("m{m}.head.weight");
            let flat = tensors[&name].flatten_all().unwrap();
            tensors.insert(name, flat);
        }
        candle_core::safetensors::save(&tensors, &weights).unwrap();
        let card_path = ckpt.join(CARD_FILE);
        let mut card: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&card_path).unwrap()).unwrap();
        card.as_object_mut().unwrap().remove("heads");
        let bytes = std::fs::read(&weights).unwrap();
        card["hash"] = blake3::hash(&bytes).to_hex()[..16].into();
        std::fs::write(&card_path, serde_json::to_vec(&card).unwrap()).unwrap();
        let old = LmRewardModel::load(&ckpt, None).unwrap();
        assert_eq!(old.card.heads, 1);
        assert_eq!(old.member_scores(0, input, &["zebra zebra 3", "cat dog 3"]).unwrap(), s);
    }

    /// The engine's forward (f16 GEMM, blockwise attention, the prompt once per packed row and
    /// the cache cut back between completions) scores as the trainer's does: LoRA members each
    /// merged, and a frozen backbone shared by every member; one node's candidates and many
    /// pairs at once.
    #[test]
    fn engine_scores_equal_the_trainers() {
        let dir = tempfile::tempdir().unwrap();
        let base = tiny(dir.path());
        let pairs = separable();
        let mut lora = LmRewardModel::train(&base, &pairs, &[], &config(), "test").unwrap();
        let ckpt = lora.save(&dir.path().join("rm")).unwrap();
        // The same heads on the frozen backbone (what `rrm reward import` makes): the adapters
        // dropped from the checkpoint, the card's mode frozen.
        let weights = ckpt.join(LM_WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
        let heads: HashMap<String, Tensor> =
            tensors.into_iter().filter(|(n, _)| n.contains(".head.")).collect();
        let frozen_dir = dir.path().join("frozen");
        std::fs::create_dir_all(&frozen_dir).unwrap();
        candle_core::safetensors::save(&heads, frozen_dir.join(LM_WEIGHTS_FILE)).unwrap();
        let mut card: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ckpt.join(CARD_FILE)).unwrap()).unwrap();
        card["config"]["mode"] = serde_json::json!({"mode": "frozen"});
        let bytes = std::fs::read(frozen_dir.join(LM_WEIGHTS_FILE)).unwrap();
        card["hash"] = blake3::hash(&bytes).to_hex()[..16].into();
        std::fs::write(frozen_dir.join(CARD_FILE), serde_json::to_vec(&card).unwrap()).unwrap();
        let frozen = LmRewardModel::load(&frozen_dir, None).unwrap();

        for (name, mut model) in [("lora", lora), ("frozen", frozen)] {
            let input = "passage number 3 about animals, and then a longer tail of words";
            let cands = ["zebra zebra 3", "cat dog 3", "a zebra and a cat and a dog 3"];
            let engine = model.member_scores(0, input, &cands).unwrap();
            let engine_margins = model.margins(&pairs).unwrap();
            model.set_scoring(Scoring::Trainer);
            let trainer = model.member_scores(0, input, &cands).unwrap();
            let trainer_margins = model.margins(&pairs).unwrap();
            let gap = |a: &[f32], b: &[f32]| {
                a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
            };
            let spread = trainer.iter().flatten().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
            eprintln!("{name}: engine {engine:?} trainer {trainer:?}");
            for (e, t) in engine.iter().zip(&trainer) {
                assert!(gap(e, t) < 1e-2 * spread, "{name}: {e:?} vs {t:?}");
            }
            assert_eq!(engine_margins.len(), trainer_margins.len());
            assert!(
                gap(&engine_margins, &trainer_margins) < 1e-2 * spread,
                "{name}: {engine_margins:?} vs {trainer_margins:?}"
            );
        }
    }

    /// With a head per height, the same summaries can be preferred one way at height 0 and the
    /// other at height 1; a node above the highest trained height uses the highest head.
    #[test]
    fn heads_per_height_learn_what_each_height_prefers() {
        let dir = tempfile::tempdir().unwrap();
        let base = tiny(dir.path());
        let mut pairs = Vec::new();
        for i in 0..8 {
            let input = format!("passage number {i} about animals");
            let (zebra, cat) = (format!("zebra zebra {i}"), format!("cat dog {i}"));
            pairs.push(Pair::new(0, &input, &zebra, &cat, 1.0, &format!("g{i}")));
            pairs.push(Pair::new(1, &input, &cat, &zebra, 1.0, &format!("g{i}")));
        }
        let c = LmTrainConfig { members: 1, steps: Some(60), head_per_height: true, ..config() };
        let mut model = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap();
        assert_eq!(model.card.heads, 2);
        assert_eq!(model.members[0].head_w.dims(), [2, model.card.hidden]);
        let all = &model.card.metrics;
        assert_eq!(all["h0"].accuracy, 1.0, "{all:?}");
        assert_eq!(all["h1"].accuracy, 1.0, "{all:?}");
        let input = "passage number 3 about animals";
        let texts = ["zebra zebra 3", "cat dog 3"];
        let (h0, h1) = (
            model.member_scores(0, input, &texts).unwrap(),
            model.member_scores(1, input, &texts).unwrap(),
        );
        assert!(h0[0][0] > h0[0][1] && h1[0][1] > h1[0][0], "{h0:?} {h1:?}");
        let ckpt = model.save(&dir.path().join("rm")).unwrap();
        let loaded = LmRewardModel::load(&ckpt, None).unwrap();
        assert_eq!(loaded.member_scores(1, input, &texts).unwrap(), h1);
        // Height 5 was never trained: the highest head (height 1's) scores it.
        assert_eq!((head_of(5, 2), head_of(1, 2), head_of(0, 2), head_of(3, 1)), (1, 1, 0, 0));
        let h5 = loaded.member_scores(5, input, &texts).unwrap();
        assert!(h5[0].iter().all(|s| s.is_finite()), "{h5:?}");
    }

    /// The tiny model as the test configuration trains it (LoRA).
    fn tiny_llama(dir: &Path) -> TrainableLlama {
        let options = LoadOptions { mode: config().mode, dtype: DType::F32 };
        TrainableLlama::load(&tiny(dir), &Device::Cpu, &options).unwrap().0
    }

    #[test]
    fn packed_scores_equal_scores_one_sequence_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let llama = tiny_llama(dir.path());
        let h = llama.config.hidden as f64;
        let w = (Tensor::arange(0f64, h, &Device::Cpu).unwrap() / h).unwrap();
        let w = w.to_dtype(DType::F32).unwrap().unsqueeze(0).unwrap();
        let b = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let seqs: [&[u32]; 3] = [&[1, 5, 6, 7, 9], &[1, 5, 6, 8], &[1, 5, 6, 7]];
        let packed = pack(&seqs);
        assert_eq!(packed.len(), 1, "one shared prefix, one row");
        assert_eq!(packed[0].prompt, vec![1, 5, 6]);
        let together = score_rows(&llama, &packed, &[0], &w, &b, 4096).unwrap();
        for (i, s) in seqs.iter().enumerate() {
            let alone = score_rows(&llama, &pack(&[s]), &[0], &w, &b, 4096).unwrap();
            assert!((alone[0] - together[i]).abs() < 1e-4, "{i}: {} vs {}", alone[0], together[i]);
        }
        // Rows of different lengths, one forward pass each (shortest first) or all in one:
        // the scores come back in the rows' order either way.
        let rows: Vec<Packed> =
            [seqs[0], &[1, 2], seqs[1]].iter().flat_map(|s| pack(&[s])).collect();
        let one_by_one = score_rows(&llama, &rows, &[0, 0, 0], &w, &b, 1).unwrap();
        let at_once = score_rows(&llama, &rows, &[0, 0, 0], &w, &b, 4096).unwrap();
        assert!((one_by_one[0] - together[0]).abs() < 1e-4);
        assert!((one_by_one[2] - together[1]).abs() < 1e-4);
        for (a, o) in one_by_one.iter().zip(&at_once) {
            assert!((a - o).abs() < 1e-4, "{one_by_one:?} vs {at_once:?}");
        }
        // No common prefix: one row each, in order.
        let apart = pack(&[&[2, 3], &[4, 5, 6]]);
        assert_eq!(apart.len(), 2);
        assert_eq!(apart[1].completions, vec![vec![6]]);
    }

    #[test]
    fn the_head_and_adapters_get_gradients() {
        let dir = tempfile::tempdir().unwrap();
        let llama = tiny_llama(dir.path());
        let hidden = llama.config.hidden;
        // Two head rows (two heights): the first completion is scored by row 0, the second by 1.
        let ones = Tensor::ones((2, hidden), DType::F32, &Device::Cpu).unwrap();
        let w = Var::from_tensor(&ones).unwrap();
        let b = Var::from_tensor(&Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap()).unwrap();
        let which = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
        let packed = pack(&[&[1, 5, 6, 7], &[1, 8]]);
        let one = Tensor::ones(1, DType::F32, &Device::Cpu).unwrap();
        let heads = [w.clone(), b.clone()];
        let (_, grads) = llama
            .packed_last_hidden_backward(&packed, &heads, |h| {
                let r = head_scores(h, w.as_tensor(), b.as_tensor(), &which)?;
                let d = (r.narrow(0, 0, 1)? - r.narrow(0, 1, 1)?)?;
                Ok(bt_loss_weighted(&d, &one, &one)?)
            })
            .unwrap();
        let gw = grads.get(w.as_tensor()).expect("head weight gradient");
        let per_row = gw.abs().unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
        assert!(per_row.iter().all(|&g| g > 0.0), "every head row learns: {per_row:?}");
        let gb = grads.get(b.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!(gb[0] < 0.0 && gb[1] > 0.0, "chosen up, rejected down: {gb:?}");
        // A fresh LoRA's B is zero, so its A gets none yet; every B does.
        for (name, v) in llama.trainable() {
            if name.ends_with("lora_b") {
                assert!(grads.get(v.as_tensor()).is_some(), "no gradient for {name}");
            }
        }
    }

    #[test]
    fn truncation_cuts_the_input_end_and_keeps_the_summaries() {
        let dir = tempfile::tempdir().unwrap();
        let base = tiny(dir.path());
        let (_, tok) = TrainableLlama::load(&base, &Device::Cpu, &LoadOptions::default()).unwrap();
        let end = end_token(&tok).unwrap();
        let long = format!("opening words {}", "word ".repeat(500));
        let summaries = ["the summary", "a much longer summary of the passage"];
        // Room for the prompt, the longer summary and 24 tokens of the input.
        let max = encode(&tok, end, usize::MAX, 0, "", &summaries).unwrap().0[1].len() + 24;
        let (seqs, cut) = encode(&tok, end, max, 0, &long, &summaries).unwrap();
        assert!(cut);
        for (ids, s) in seqs.iter().zip(summaries) {
            assert!(ids.len() <= max, "{} > {max}", ids.len());
            let mut tail = tok.encode(s).unwrap();
            tail.push(end);
            assert!(ids.ends_with(&tail));
        }
        // The same cut input for both, and it keeps the prompt's start and the input's opening.
        let (a, b) = (&seqs[0], &seqs[1]);
        let shared = a.iter().zip(b.iter()).take_while(|(x, y)| x == y).count();
        assert!(shared >= a.len() - tok.encode("the summary").unwrap().len() - 1);
        let (whole, _) = encode(&tok, end, 4096, 0, &long, &summaries[..1]).unwrap();
        assert_eq!(a[..8], whole[0][..8]);
        assert!(tok.decode(a).unwrap().contains("opening words"));
        assert!(seqs[1].len() > max - 8, "the input fills what is left: {}", seqs[1].len());
        // Short enough: nothing cut, the same tokens as without a limit.
        let (short, cut) = encode(&tok, end, 4096, 0, "a short passage", &summaries).unwrap();
        assert!(!cut);
        assert!(short[0].len() < short[1].len());
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let base = tiny(dir.path());
        let err = LmRewardModel::train(&base, &[], &[], &config(), "test").unwrap_err();
        assert!(matches!(err, RewardError::NoData(_)), "{err}");
        let not_gguf = dir.path().join("x.gguf");
        std::fs::write(&not_gguf, b"not a model").unwrap();
        let err = LmRewardModel::train(&not_gguf, &separable(), &[], &config(), "t").unwrap_err();
        assert!(err.to_string().contains("x.gguf"), "{err}");
        let gpt2 = dir.path().join("gpt2.gguf");
        tiny_gguf(&gpt2, 7, &TinyOptions { arch: "gpt2", ..TinyOptions::default() }).unwrap();
        let err = LmRewardModel::train(&gpt2, &separable(), &[], &config(), "t").unwrap_err();
        assert!(err.to_string().contains("llama-family"), "{err}");
        for c in [
            LmTrainConfig { members: 0, ..config() },
            LmTrainConfig { val_percent: 60, test_percent: 40, ..config() },
            LmTrainConfig { eval_every: Some(0), ..config() },
        ] {
            assert!(matches!(
                LmRewardModel::train(&base, &separable(), &[], &c, "t").unwrap_err(),
                RewardError::Invalid(_)
            ));
        }
    }
}
