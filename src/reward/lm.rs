//! The language-model reward model: the trainable llama ([`crate::lm::TrainableLlama`], LoRA
//! adapters by default, full fine-tuning optional) with a scalar linear head on the final hidden
//! state of the last token.
//!
//! The input is what the policy sees — the composer's per-height prompt for the node, rendered
//! with the model's chat template — followed by the candidate summary and the end-of-turn token.
//! Inputs longer than `max_tokens` are cut from the left, so the summary is always kept.
//!
//! Training is Bradley–Terry (−log σ(r_c − r_r), against the pair's target probability and
//! weighted by the pair's weight) with AdamW, gradient accumulation and global-norm clipping.
//! An ensemble is `K` members trained from different seeds (LoRA initialisation, head
//! initialisation and data order); the base model is loaded once for scoring and each member's
//! trainable tensors are swapped in, so `K` members cost `K` adapters, not `K` models.
//!
//! A checkpoint is a folder with `lm_reward.safetensors` (every member's trainable tensors and
//! head, prefixed `m{i}.`) and `card.json` ([`LmCard`], `"backbone": "lm"`, with the base
//! model's hash, the data's hash and the metrics).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::model::mean_std;
use super::train::{bt_loss_weighted, metrics, Metrics};
use super::{RewardError, CARD_FILE};
use crate::compose::prompt;
use crate::compose::select::SelectError;
use crate::compose::{Candidate, CandidateScore, Selector};
use crate::feedback::Pair;
use crate::infer::tokenizer::GgufTokenizer;
use crate::lm::model::LoadOptions;
use crate::lm::optim::{Accumulator, AdamW, ParamsAdamW, Schedule};
use crate::lm::{LmError, LoraConfig, Mode, Packed, TrainableLlama};

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
    /// Tokens per input (prompt + summary), cut from the left.
    pub max_tokens: usize,
    pub seed: u64,
    /// Gradient checkpointing (see `TrainableLlama::set_checkpointing`); not part of the card.
    #[serde(default, skip_serializing)]
    pub grad_checkpoint: bool,
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
            grad_checkpoint: false,
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
        if self.steps == Some(0) || (self.steps.is_none() && self.epochs == 0) {
            return bad("train for at least one step (or epoch)");
        }
        if !(self.lr > 0.0 && self.head_lr > 0.0 && self.lr.is_finite() && self.head_lr.is_finite())
        {
            return bad("learning rates must be positive");
        }
        if self.weight_decay < 0.0 || self.max_grad_norm < 0.0 {
            return bad("weight decay and the gradient clip must not be negative");
        }
        if matches!(self.mode, Mode::Frozen) {
            return bad("a frozen backbone has nothing to train beside the head; use lora or full");
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
    pub pairs: usize,
    /// blake3 of the training pairs (their JSON).
    pub data_hash: String,
    pub source: String,
    /// Pairs that had to be cut from the left to fit `max_tokens`.
    pub truncated: usize,
    /// On the training pairs (`all`, per height `h0`, …).
    pub metrics: BTreeMap<String, Metrics>,
    /// Mean Bradley–Terry loss of each member's last epoch.
    pub final_loss: Vec<f64>,
    pub train_seconds: f64,
    pub pairs_per_second: f64,
}

/// One ensemble member: its trainable tensors (adapters or full weights) and its head.
#[derive(Debug, Clone)]
pub struct LmMember {
    pub weights: HashMap<String, Tensor>,
    /// `(hidden,)`.
    pub head_w: Tensor,
    /// `(1,)`.
    pub head_b: Tensor,
}

/// A trained LM reward ensemble with its backbone loaded.
pub struct LmRewardModel {
    pub card: LmCard,
    pub members: Vec<LmMember>,
    llama: Mutex<TrainableLlama>,
    tokenizer: GgufTokenizer,
    end: u32,
}

impl std::fmt::Debug for LmRewardModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmRewardModel").field("card", &self.card).finish_non_exhaustive()
    }
}

/// A pair's chosen and rejected token sequences.
type TokenPair = (Vec<u32>, Vec<u32>);

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

/// Tokens of (the composer's prompt for `input` at `height`) + `summary` + end of turn, cut
/// from the left to `max_tokens`; and whether it was cut.
fn encode(
    tokenizer: &GgufTokenizer,
    end: u32,
    max_tokens: usize,
    height: u32,
    input: &str,
    summary: &str,
) -> Result<(Vec<u32>, bool), RewardError> {
    let messages = prompt::render(prompt::template_for(height), input, None)
        .map_err(|e| RewardError::Invalid(format!("prompt: {e}")))?;
    let chat = tokenizer.render_chat(&messages).map_err(LmError::from)?;
    let mut ids = tokenizer.encode(&chat).map_err(LmError::from)?;
    ids.extend(tokenizer.encode(summary.trim()).map_err(LmError::from)?);
    ids.push(end);
    if ids.len() > max_tokens {
        let cut = ids.len() - max_tokens;
        ids.drain(..cut);
        return Ok((ids, true));
    }
    Ok((ids, false))
}

/// Rewards of every completion of packed rows (row by row) under the loaded backbone and a
/// head.
fn rewards(
    llama: &TrainableLlama,
    packed: &[Packed],
    w: &Tensor,
    b: &Tensor,
) -> Result<Tensor, RewardError> {
    Ok(head_scores(&llama.packed_last_hidden(packed)?, w, b)?)
}

/// Sequences scored together (a pair, a node's candidates) as packed rows: their common
/// prefix (the node's prompt, unless a cut from the left made them differ) once, then each
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

/// Tokens of a packed row.
fn packed_len(p: &Packed) -> usize {
    p.prompt.len() + p.completions.iter().map(Vec::len).sum::<usize>()
}

/// The scalar head over last-token hidden states `(B, hidden)`: `(B,)`.
fn head_scores(h: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    h.to_dtype(DType::F32)?.matmul(&w.unsqueeze(1)?)?.squeeze(1)?.broadcast_add(b)
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
    /// Trains `config.members` members on `pairs` from the base GGUF at `base` (CPU, f32).
    pub fn train(
        base: &Path,
        pairs: &[Pair],
        config: &LmTrainConfig,
        source: &str,
    ) -> Result<LmRewardModel, RewardError> {
        config.validate()?;
        if pairs.is_empty() {
            return Err(RewardError::NoData(String::new()));
        }
        let t0 = Instant::now();
        let device = Device::Cpu;
        let base_hash = file_hash(base)?;
        let mut members = Vec::with_capacity(config.members);
        let mut final_loss = Vec::new();
        let mut encoded: Option<(Vec<TokenPair>, usize)> = None;
        let mut last: Option<(TrainableLlama, GgufTokenizer)> = None;
        let mut pair_steps = 0usize;
        for m in 0..config.members {
            let options = LoadOptions { mode: member_mode(&config.mode, m), dtype: DType::F32 };
            let (mut llama, tokenizer) = TrainableLlama::load(base, &device, &options)?;
            llama.set_checkpointing(config.grad_checkpoint);
            let end = end_token(&tokenizer)?;
            if encoded.is_none() {
                let mut out = Vec::with_capacity(pairs.len());
                let mut truncated = 0;
                for p in pairs {
                    let enc =
                        |s: &str| encode(&tokenizer, end, config.max_tokens, p.height, &p.input, s);
                    let (c, tc) = enc(&p.chosen)?;
                    let (r, tr) = enc(&p.rejected)?;
                    truncated += usize::from(tc || tr);
                    out.push((c, r));
                }
                encoded = Some((out, truncated));
            }
            let data = &encoded
                .as_ref()
                .map(|e| &e.0)
                .ok_or_else(|| RewardError::Invalid("internal: pairs were not encoded".into()))?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed.wrapping_add(m as u64));
            let hidden = llama.config.hidden;
            let std = 1.0 / (hidden as f64).sqrt();
            let w0: Vec<f32> =
                (0..hidden).map(|_| (rng.random_range(-1.0..1.0) * std * 0.1) as f32).collect();
            let head_w = Var::from_tensor(&Tensor::from_vec(w0, hidden, &device)?)?;
            let head_b = Var::from_tensor(&Tensor::zeros(1, DType::F32, &device)?)?;
            let body = llama.trainable();
            let head_vars = vec![
                ("head.weight".to_string(), head_w.clone()),
                ("head.bias".into(), head_b.clone()),
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
            let total = config
                .steps
                .unwrap_or_else(|| config.epochs * data.len().div_ceil(per_step).max(1));
            let sched = Schedule { peak: 1.0, warmup: config.warmup, total, min_ratio: 0.1 };
            let mut acc = Accumulator::new(all_vars.len());
            let mut order: Vec<usize> = Vec::new();
            let mut losses: Vec<f64> = Vec::new();
            for step in 0..total {
                for _ in 0..config.grad_accum {
                    let mut batch = Vec::with_capacity(config.batch_pairs);
                    while batch.len() < config.batch_pairs.min(data.len()) {
                        if order.is_empty() {
                            order = (0..data.len()).collect();
                            order.shuffle(&mut rng);
                        }
                        if let Some(i) = order.pop() {
                            batch.push(i);
                        }
                    }
                    // Chosen and rejected share the node's prompt: one packed row per pair.
                    let packed: Vec<Packed> =
                        batch.iter().flat_map(|&i| pack(&[&data[i].0, &data[i].1])).collect();
                    let n = batch.len();
                    let t: Vec<f32> = batch.iter().map(|&i| pairs[i].target).collect();
                    let wt: Vec<f32> = batch.iter().map(|&i| pairs[i].weight).collect();
                    let t = Tensor::from_vec(t, n, &device)?;
                    let wt = Tensor::from_vec(wt, n, &device)?;
                    let heads = [head_w.clone(), head_b.clone()];
                    let (loss, grads) =
                        llama.packed_last_hidden_backward(&packed, &heads, |h| {
                            let r = head_scores(h, head_w.as_tensor(), head_b.as_tensor())?;
                            let r = r.reshape((n, 2))?;
                            let d = (r.narrow(1, 0, 1)? - r.narrow(1, 1, 1)?)?.squeeze(1)?;
                            Ok(bt_loss_weighted(&d, &t, &wt)?)
                        })?;
                    let lv = f64::from(loss.to_scalar::<f32>()?);
                    if !lv.is_finite() {
                        return Err(RewardError::Invalid(format!(
                            "member {m}: the loss became {lv} at step {step}; lower the learning \
                             rate"
                        )));
                    }
                    losses.push(lv);
                    acc.add(&all_vars, &grads, 1.0 / config.grad_accum as f64)?;
                    pair_steps += n;
                }
                acc.clip(config.max_grad_norm)?;
                let grads = acc.take();
                let scale = sched.lr(step);
                opt_body.set_lr(config.lr * scale);
                opt_head.set_lr(config.head_lr * scale);
                let (gb, gh) = grads.split_at(body.len());
                if !body.is_empty() {
                    opt_body.step_with(gb)?;
                }
                opt_head.step_with(gh)?;
            }
            let tail = losses.len().min(data.len().div_ceil(config.batch_pairs).max(1));
            let tail = &losses[losses.len() - tail..];
            final_loss.push(tail.iter().sum::<f64>() / tail.len().max(1) as f64);
            // Copies, not views: a view shares the variable's storage, and setting a variable
            // to a tensor derived from it is refused (and would alias the members).
            let weights: HashMap<String, Tensor> = body
                .iter()
                .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
                .collect::<candle_core::Result<_>>()?;
            members.push(LmMember {
                weights,
                head_w: head_w.as_tensor().detach().copy()?,
                head_b: head_b.as_tensor().detach().copy()?,
            });
            last = Some((llama, tokenizer));
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        let (llama, tokenizer) =
            last.ok_or_else(|| RewardError::Invalid("no member was trained".into()))?;
        let end = end_token(&tokenizer)?;
        let truncated = encoded.map_or(0, |e| e.1);
        let data_json = serde_json::to_vec(pairs)
            .map_err(|e| RewardError::Invalid(format!("hashing the data: {e}")))?;
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
            data_hash: blake3::hash(&data_json).to_hex()[..16].to_string(),
            source: source.to_string(),
            truncated,
            metrics: BTreeMap::new(),
            final_loss,
            train_seconds,
            pairs_per_second: pair_steps as f64 / train_seconds.max(1e-9),
        };
        let mut model = LmRewardModel { card, members, llama: Mutex::new(llama), tokenizer, end };
        model.card.metrics = model.evaluate(pairs)?;
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
        let seqs: Vec<Vec<u32>> = summaries
            .iter()
            .map(|s| {
                encode(&self.tokenizer, self.end, self.card.config.max_tokens, height, input, s)
                    .map(|e| e.0)
            })
            .collect::<Result<_, _>>()?;
        self.score_tokens(&[seqs])
    }

    /// Per-member scores (K × n) of tokenized sequences, given in groups that share a prompt
    /// (scored as packed rows, several rows per forward pass); scores in the groups' order.
    fn score_tokens(&self, groups: &[Vec<Vec<u32>>]) -> Result<Vec<Vec<f32>>, RewardError> {
        let rows: Vec<Packed> = groups
            .iter()
            .filter(|g| !g.is_empty())
            .flat_map(|g| pack(&g.iter().map(Vec::as_slice).collect::<Vec<_>>()))
            .collect();
        let n: usize = groups.iter().map(Vec::len).sum();
        if rows.is_empty() {
            return Ok(vec![Vec::new(); self.members.len()]);
        }
        let llama = self
            .llama
            .lock()
            .map_err(|_| RewardError::Invalid("the reward model's lock is poisoned".into()))?;
        // Similar lengths together: less padding. Each row's completions stay in order.
        let mut idx: Vec<usize> = (0..rows.len()).collect();
        idx.sort_by_key(|&i| packed_len(&rows[i]));
        let mut first = Vec::with_capacity(rows.len());
        let mut at = 0;
        for r in &rows {
            first.push(at);
            at += r.completions.len();
        }
        let budget = 4 * self.card.config.max_tokens.max(256);
        let mut out = vec![vec![0f32; n]; self.members.len()];
        for (k, m) in self.members.iter().enumerate() {
            llama.load_trainable(&m.weights)?;
            let mut at = 0;
            while at < idx.len() {
                let mut end = at + 1;
                while end < idx.len() && (end + 1 - at) * packed_len(&rows[idx[end]]) <= budget {
                    end += 1;
                }
                let batch: Vec<Packed> = idx[at..end].iter().map(|&i| rows[i].clone()).collect();
                let r = rewards(&llama, &batch, &m.head_w, &m.head_b)?.to_vec1::<f32>()?;
                let mut j = 0;
                for &i in &idx[at..end] {
                    for c in 0..rows[i].completions.len() {
                        out[k][first[i] + c] = r[j];
                        j += 1;
                    }
                }
                at = end;
            }
        }
        Ok(out)
    }

    /// The ensemble-mean margin (chosen − rejected) of every pair.
    pub fn margins(&self, pairs: &[Pair]) -> Result<Vec<f32>, RewardError> {
        let max = self.card.config.max_tokens;
        let mut groups = Vec::with_capacity(pairs.len());
        for p in pairs {
            let chosen = encode(&self.tokenizer, self.end, max, p.height, &p.input, &p.chosen)?.0;
            let rejected =
                encode(&self.tokenizer, self.end, max, p.height, &p.input, &p.rejected)?.0;
            groups.push(vec![chosen, rejected]);
        }
        let scores = self.score_tokens(&groups)?;
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
            let head_w = get("head.weight")?;
            if head_w.dims() != [llama.config.hidden] {
                return Err(bad(
                    &weights,
                    format!("member {i}: head of shape {:?}", head_w.dims()),
                ));
            }
            members.push(LmMember { weights: w, head_w, head_b: get("head.bias")? });
        }
        let end = end_token(&tokenizer)?;
        Ok(LmRewardModel { card, members, llama: Mutex::new(llama), tokenizer, end })
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
        format!("reward-lm:{}:lambda={}", self.model.card.hash, self.pessimism)
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
        Ok(super::pessimistic_scores(&mean_std(&members), self.pessimism))
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
        (0..8)
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
            ..LmTrainConfig::default()
        }
    }

    #[test]
    fn bt_loss_falls_to_full_train_accuracy_and_save_load_gives_identical_scores() {
        let dir = tempfile::tempdir().unwrap();
        let base = tiny(dir.path());
        let pairs = separable();
        let mut model = LmRewardModel::train(&base, &pairs, &config(), "test").unwrap();
        assert_eq!(model.members.len(), 2);
        // Members differ (seeds), and the head moved off its tiny initialisation.
        assert_ne!(
            model.members[0].head_w.to_vec1::<f32>().unwrap(),
            model.members[1].head_w.to_vec1::<f32>().unwrap()
        );
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
        let w = w.to_dtype(DType::F32).unwrap();
        let b = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let seqs: [&[u32]; 3] = [&[1, 5, 6, 7, 9], &[1, 5, 6, 8], &[1, 5, 6, 7]];
        let packed = pack(&seqs);
        assert_eq!(packed.len(), 1, "one shared prefix, one row");
        assert_eq!(packed[0].prompt, vec![1, 5, 6]);
        let together = rewards(&llama, &packed, &w, &b).unwrap().to_vec1::<f32>().unwrap();
        for (i, s) in seqs.iter().enumerate() {
            let alone = rewards(&llama, &pack(&[s]), &w, &b).unwrap().to_vec1::<f32>().unwrap();
            assert!((alone[0] - together[i]).abs() < 1e-4, "{i}: {} vs {}", alone[0], together[i]);
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
        let w = Var::from_tensor(&Tensor::ones(hidden, DType::F32, &Device::Cpu).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()).unwrap();
        let packed = pack(&[&[1, 5, 6, 7], &[1, 8]]);
        let one = Tensor::ones(1, DType::F32, &Device::Cpu).unwrap();
        let heads = [w.clone(), b.clone()];
        let (_, grads) = llama
            .packed_last_hidden_backward(&packed, &heads, |h| {
                let r = head_scores(h, w.as_tensor(), b.as_tensor())?;
                let d = (r.narrow(0, 0, 1)? - r.narrow(0, 1, 1)?)?;
                Ok(bt_loss_weighted(&d, &one, &one)?)
            })
            .unwrap();
        let gw = grads.get(w.as_tensor()).expect("head weight gradient");
        assert!(gw.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        assert!(grads.get(b.as_tensor()).is_some());
        // A fresh LoRA's B is zero, so its A gets none yet; every B does.
        for (name, v) in llama.trainable() {
            if name.ends_with("lora_b") {
                assert!(grads.get(v.as_tensor()).is_some(), "no gradient for {name}");
            }
        }
    }

    #[test]
    fn truncation_keeps_the_summary() {
        let dir = tempfile::tempdir().unwrap();
        let base = tiny(dir.path());
        let (_, tok) = TrainableLlama::load(&base, &Device::Cpu, &LoadOptions::default()).unwrap();
        let end = end_token(&tok).unwrap();
        let long = "word ".repeat(500);
        let (ids, cut) = encode(&tok, end, 32, 0, &long, "the summary").unwrap();
        assert!(cut);
        assert_eq!(ids.len(), 32);
        let mut tail = tok.encode("the summary").unwrap();
        tail.push(end);
        assert!(ids.ends_with(&tail));
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let base = tiny(dir.path());
        let err = LmRewardModel::train(&base, &[], &config(), "test").unwrap_err();
        assert!(matches!(err, RewardError::NoData(_)), "{err}");
        let not_gguf = dir.path().join("x.gguf");
        std::fs::write(&not_gguf, b"not a model").unwrap();
        let err = LmRewardModel::train(&not_gguf, &separable(), &config(), "t").unwrap_err();
        assert!(err.to_string().contains("x.gguf"), "{err}");
        let gpt2 = dir.path().join("gpt2.gguf");
        tiny_gguf(&gpt2, 7, &TinyOptions { arch: "gpt2", ..TinyOptions::default() }).unwrap();
        let err = LmRewardModel::train(&gpt2, &separable(), &config(), "t").unwrap_err();
        assert!(err.to_string().contains("llama-family"), "{err}");
        let c = LmTrainConfig { members: 0, ..config() };
        assert!(matches!(
            LmRewardModel::train(&base, &separable(), &c, "t").unwrap_err(),
            RewardError::Invalid(_)
        ));
    }
}
