//! Scoring on the inference engine's kernels: a loaded LM reward model's members as
//! [`LlamaModel`]s (the engine's forward pass: f16 GEMM for many rows, blockwise attention over
//! an f16 KV cache), which needs no graph and no f32 copies of every activation. Training and
//! validation keep the trainer's forward; scoring a checkpoint (selection, `rrm reward eval`)
//! uses this one.
//!
//! A frozen backbone (`Mode::Frozen`: the members differ only in their heads, and TRL's reward
//! models imported by `rrm reward import`) is the base GGUF itself, loaded once. Members with
//! adapters or full weights are each merged into an F16 GGUF in a temporary file, loaded, and the
//! file removed.
//!
//! Packed rows keep their meaning: the prompt is computed once per row and each completion runs
//! after it in turn, the KV cache cut back to the prompt in between
//! ([`crate::infer::llama::KvCache::truncate`]).

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::LmMember;
use crate::infer::llama::{KvCache, LlamaModel};
use crate::lm::export::{write_gguf, ExportFormat};
use crate::lm::{Mode, Packed, TrainableLlama};
use crate::reward::RewardError;

/// The members' backbones on the engine.
pub(super) struct EngineScorer {
    /// One per member (the same model for every member of a frozen backbone).
    models: Vec<Arc<LlamaModel>>,
    hidden: usize,
}

fn load(path: &Path) -> Result<LlamaModel, RewardError> {
    Ok(LlamaModel::load(path, &Device::Cpu)?.model)
}

impl EngineScorer {
    /// The engine's copy of every member: `base` itself when nothing was trained, else each
    /// member's trainable tensors set on `llama` and its merged weights written and loaded.
    pub(super) fn build(
        llama: &TrainableLlama,
        members: &[LmMember],
        base: &Path,
    ) -> Result<EngineScorer, RewardError> {
        let hidden = llama.config.hidden;
        if llama.mode == Mode::Frozen {
            let model = Arc::new(load(base)?);
            return Ok(EngineScorer { models: vec![model; members.len()], hidden });
        }
        let dir = tempfile::tempdir()
            .map_err(|e| RewardError::Invalid(format!("a temporary folder: {e}")))?;
        let mut models = Vec::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            llama.load_trainable(&m.weights)?;
            let path = dir.path().join(format!("member-{i}.gguf"));
            write_gguf(llama, &path, ExportFormat::F16, &[])?;
            models.push(Arc::new(load(&path)?));
            // The model keeps its weights in memory: the file can go now.
            let _ = std::fs::remove_file(&path);
        }
        Ok(EngineScorer { models, hidden })
    }

    /// Final hidden states (after the output norm) at the last token of every completion of
    /// `rows` under member `member`: `(completions, hidden)` in the rows' completion order.
    /// Rows go through together up to about `budget` tokens per step.
    pub(super) fn last_hidden(
        &self,
        member: usize,
        rows: &[Packed],
        budget: usize,
    ) -> Result<Tensor, RewardError> {
        let model = &self.models[member];
        let mut out: Vec<Vec<Vec<f32>>> =
            rows.iter().map(|r| vec![Vec::new(); r.completions.len()]).collect();
        let len =
            |r: &Packed| r.prompt.len() + r.completions.iter().map(Vec::len).max().unwrap_or(0);
        let mut at = 0;
        while at < rows.len() {
            let mut end = at + 1;
            let mut tokens = len(&rows[at]);
            while end < rows.len() && tokens + len(&rows[end]) <= budget {
                tokens += len(&rows[end]);
                end += 1;
            }
            self.run_chunk(model, &rows[at..end], &mut out[at..end])?;
            at = end;
        }
        let flat: Vec<f32> = out.into_iter().flatten().flatten().collect();
        let n = flat.len() / self.hidden.max(1);
        Ok(Tensor::from_vec(flat, (n, self.hidden), &Device::Cpu)?)
    }

    /// One chunk of rows: step 0 feeds each prompt with its first completion, step `j` the
    /// `j`-th completion after the prompt (the cache cut back to the prompt first).
    fn run_chunk(
        &self,
        model: &LlamaModel,
        rows: &[Packed],
        out: &mut [Vec<Vec<f32>>],
    ) -> Result<(), RewardError> {
        let mut caches = Vec::with_capacity(rows.len());
        for r in rows {
            let longest = r.completions.iter().map(Vec::len).max().unwrap_or(0);
            let mut cache: KvCache = model.new_cache(r.prompt.len() + longest)?;
            // Every position through the prompt path (the GEMM on the CPU): scoring has no
            // generated rows.
            cache.set_prompt_len(usize::MAX);
            caches.push(cache);
        }
        let steps = rows.iter().map(|r| r.completions.len()).max().unwrap_or(0);
        // `j` is a step (the j-th completion of every row), not an index into one slice.
        #[allow(clippy::needless_range_loop)]
        for j in 0..steps {
            let firsts: Vec<Vec<u32>> = rows
                .iter()
                .map(|r| match r.completions.get(j) {
                    Some(c) if j == 0 => [r.prompt.as_slice(), c].concat(),
                    Some(c) => c.clone(),
                    None => Vec::new(),
                })
                .collect();
            let mut live: Vec<usize> = Vec::new();
            let mut batch: Vec<(&[u32], &mut KvCache)> = Vec::new();
            for (i, (toks, cache)) in firsts.iter().zip(caches.iter_mut()).enumerate() {
                if toks.is_empty() {
                    continue;
                }
                cache.truncate(rows[i].prompt.len());
                live.push(i);
                batch.push((toks.as_slice(), cache));
            }
            let hidden = model.forward_hidden(&mut batch)?.to_vec2::<f32>()?;
            for (i, h) in live.into_iter().zip(hidden) {
                out[i][j] = h;
            }
        }
        Ok(())
    }
}
