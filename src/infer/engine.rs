//! The local generator: a continuous-batching engine over [`LlamaModel`].
//!
//! One engine thread owns the model and every sequence's KV cache. [`LocalGenerator::generate`]
//! renders and tokenizes the prompts on the caller's side, sends them to the engine over a
//! channel, and awaits a oneshot reply. The engine loop:
//!
//! 1. takes in new jobs (blocking only when it has nothing to do);
//! 2. admits waiting sequences while the batch has room (`max_batch`), allocating each one's
//!    cache at its full length;
//! 3. runs one packed forward step of at most `max_step_tokens` rows: one token for every
//!    decoding sequence, and the rest of the budget as prompt chunks for the sequences still
//!    prefilling, oldest first (chunked prefill: a long prompt never stalls the decoding
//!    sequences for more than a step, and the step's activations stay bounded);
//! 4. samples each row with the sequence's own [`Sampler`]; a sequence that stops (end token,
//!    `max_tokens`, context full) leaves the batch at once, and a job's reply is sent as soon as
//!    its last sequence is done.
//!
//! Every sequence's result depends only on its own request and seed: the forward pass keeps
//! sequences apart (see [`super::llama`]) and each has its own RNG.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::Device;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::llama::{KvCache, LlamaModel};
use super::sampling::Sampler;
use super::tokenizer::GgufTokenizer;
use super::{Completion, FinishReason, GenerationRequest, Generator, InferError, ModelIdentity};

/// How the engine batches.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Most rows (decode tokens plus prompt tokens) in one forward step; prompts longer than
    /// what is left are fed in chunks over several steps. At least one prompt chunk runs per
    /// step while any prompt is pending.
    pub max_step_tokens: usize,
}

/// Step rows by default: enough rows for the prefill GEMM to run at full speed (it gains
/// little past a few hundred), few enough that a decode step waits at most one chunk.
pub const DEFAULT_STEP_TOKENS: usize = 512;

impl Default for EngineConfig {
    fn default() -> Self {
        Self { max_batch: 16, max_step_tokens: DEFAULT_STEP_TOKENS }
    }
}

/// Which device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    /// CUDA when built with it and a GPU is present, else CPU.
    #[default]
    Auto,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            "auto" => Ok(Self::Auto),
            other => Err(format!("unknown device `{other}` (cpu, cuda, auto)")),
        }
    }
}

impl DeviceChoice {
    /// The candle device.
    pub fn device(self) -> Result<Device, InferError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda if !candle_core::utils::cuda_is_available() => Err(InferError::Other(
                "this rrm was built without CUDA: build it with `--features cuda` to use --device cuda"
                    .into(),
            )),
            Self::Cuda => Device::new_cuda(0).map_err(|e| {
                // candle's error may carry a backtrace after its first line.
                let e = e.to_string();
                let first = e.lines().next().unwrap_or_default();
                InferError::Other(format!("cannot use CUDA device 0 (no GPU or driver?): {first}"))
            }),
            Self::Auto => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        }
    }
}

struct Prepared {
    prompt: Vec<u32>,
    request: GenerationRequest,
}

struct Job {
    prepared: Vec<Prepared>,
    reply: oneshot::Sender<Result<Vec<Completion>, InferError>>,
}

/// The local candle generator behind [`Generator`].
pub struct LocalGenerator {
    identity: ModelIdentity,
    tokenizer: Arc<GgufTokenizer>,
    context_length: usize,
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LocalGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalGenerator").field("identity", &self.identity).finish()
    }
}

/// sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String, InferError> {
    use sha2::Digest as _;
    let mut f = std::fs::File::open(path)
        .map_err(|e| InferError::Io { path: path.to_path_buf(), error: e })?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)
        .map_err(|e| InferError::Io { path: path.to_path_buf(), error: e })?;
    Ok(hex::encode(h.finalize()))
}

impl LocalGenerator {
    /// Loads a GGUF file and starts the engine. `sha256` is the file's hash when already known
    /// (a verified registry download); otherwise it is computed.
    pub fn load(
        path: &Path,
        sha256: Option<String>,
        device: &Device,
        config: EngineConfig,
    ) -> Result<Self, InferError> {
        let identity = Self::identity_of(path, sha256)?;
        Self::load_as(path, identity, device, config)
    }

    /// [`LocalGenerator::load`] under an identity already worked out.
    pub fn load_as(
        path: &Path,
        identity: ModelIdentity,
        device: &Device,
        config: EngineConfig,
    ) -> Result<Self, InferError> {
        let loaded = LlamaModel::load(path, device)?;
        Self::from_model(loaded.model, loaded.tokenizer, identity, config)
    }

    /// The identity [`LocalGenerator::load`] gives the model at `path`, without loading it.
    pub fn identity_of(path: &Path, sha256: Option<String>) -> Result<ModelIdentity, InferError> {
        let hash = match sha256 {
            Some(h) => h,
            None => file_sha256(path)?,
        };
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_string());
        Ok(ModelIdentity { name, hash })
    }

    /// Starts the engine thread over an already loaded model.
    pub fn from_model(
        model: LlamaModel,
        tokenizer: GgufTokenizer,
        identity: ModelIdentity,
        config: EngineConfig,
    ) -> Result<Self, InferError> {
        let context_length = model.config.context_length;
        let tokenizer = Arc::new(tokenizer);
        let (tx, rx) = mpsc::channel();
        let tok = tokenizer.clone();
        let thread = std::thread::Builder::new()
            .name("rrm-engine".into())
            .spawn(move || Engine::new(model, tok, config).run(rx))
            .map_err(|e| InferError::Other(format!("could not start the engine thread: {e}")))?;
        Ok(Self { identity, tokenizer, context_length, tx: Some(tx), thread: Some(thread) })
    }

    /// The tokenizer (with the chat template) of the loaded model.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    fn prepare(&self, requests: Vec<GenerationRequest>) -> Result<Vec<Prepared>, InferError> {
        requests
            .into_iter()
            .map(|request| {
                let text = self.tokenizer.render_chat(&request.messages)?;
                let prompt = self.tokenizer.encode(&text)?;
                if prompt.is_empty() {
                    return Err(InferError::InvalidRequest("the prompt is empty".into()));
                }
                if prompt.len() >= self.context_length {
                    return Err(InferError::PromptTooLong {
                        tokens: prompt.len(),
                        limit: self.context_length,
                    });
                }
                Ok(Prepared { prompt, request })
            })
            .collect()
    }
}

impl Drop for LocalGenerator {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Generator for LocalGenerator {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn context_length(&self) -> Result<usize, InferError> {
        Ok(self.context_length)
    }

    fn count_tokens(&self, text: &str) -> Result<usize, InferError> {
        Ok(self.tokenizer.encode(text)?.len())
    }

    fn generate(
        &self,
        requests: Vec<GenerationRequest>,
    ) -> BoxFuture<'_, Result<Vec<Completion>, InferError>> {
        let prepared = self.prepare(requests);
        Box::pin(async move {
            let prepared = prepared?;
            if prepared.is_empty() {
                return Ok(Vec::new());
            }
            let (reply, rx) = oneshot::channel();
            let tx = self.tx.as_ref().ok_or(InferError::EngineStopped)?;
            tx.send(Job { prepared, reply }).map_err(|_| InferError::EngineStopped)?;
            rx.await.map_err(|_| InferError::EngineStopped)?
        })
    }
}

struct Seq {
    job: u64,
    index: usize,
    prompt: Vec<u32>,
    generated: Vec<u32>,
    logprobs: Vec<f32>,
    max_tokens: usize,
    sampler: Sampler,
    cache: KvCache,
    /// Prompt tokens already in the cache.
    fed: usize,
}

impl Seq {
    fn prefilled(&self) -> bool {
        self.fed >= self.prompt.len()
    }
}

struct JobState {
    results: Vec<Option<Completion>>,
    remaining: usize,
    reply: Option<oneshot::Sender<Result<Vec<Completion>, InferError>>>,
}

struct Waiting {
    job: u64,
    index: usize,
    prepared: Prepared,
}

struct Engine {
    model: LlamaModel,
    tokenizer: Arc<GgufTokenizer>,
    config: EngineConfig,
    jobs: HashMap<u64, JobState>,
    waiting: VecDeque<Waiting>,
    active: Vec<Seq>,
    next_job: u64,
}

impl Engine {
    fn new(model: LlamaModel, tokenizer: Arc<GgufTokenizer>, config: EngineConfig) -> Self {
        Self {
            model,
            tokenizer,
            config,
            jobs: HashMap::new(),
            waiting: VecDeque::new(),
            active: Vec::new(),
            next_job: 0,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            if self.active.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(job) => self.enqueue(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.enqueue(job);
            }
            self.drop_cancelled();
            self.admit();
            if let Err(e) = self.step() {
                self.fail_active(&e.to_string());
            }
        }
    }

    fn enqueue(&mut self, job: Job) {
        let id = self.next_job;
        self.next_job += 1;
        let n = job.prepared.len();
        let mut state = JobState { results: vec![None; n], remaining: n, reply: Some(job.reply) };
        for (index, prepared) in job.prepared.into_iter().enumerate() {
            if prepared.request.max_tokens == 0 {
                state.results[index] = Some(Completion {
                    text: String::new(),
                    token_ids: Vec::new(),
                    logprobs: Vec::new(),
                    finish: FinishReason::Length,
                    stop_token: None,
                    prompt_tokens: prepared.prompt.len(),
                    completion_tokens: 0,
                });
                state.remaining -= 1;
            } else {
                self.waiting.push_back(Waiting { job: id, index, prepared });
            }
        }
        self.jobs.insert(id, state);
        self.finish_job_if_done(id);
    }

    fn admit(&mut self) {
        while self.active.len() < self.config.max_batch.max(1) {
            let Some(w) = self.waiting.pop_front() else { break };
            let len = w.prepared.prompt.len();
            let capacity = len + w.prepared.request.max_tokens;
            let mut cache = match self.model.new_cache(capacity) {
                Ok(c) => c,
                Err(e) => {
                    self.fail_job(
                        w.job,
                        InferError::Other(format!("allocating the KV cache: {e}")),
                    );
                    continue;
                }
            };
            cache.set_prompt_len(len);
            let req = w.prepared.request;
            self.active.push(Seq {
                job: w.job,
                index: w.index,
                prompt: w.prepared.prompt,
                generated: Vec::new(),
                logprobs: Vec::new(),
                max_tokens: req.max_tokens,
                sampler: Sampler::new(req.sampling, req.seed),
                cache,
                fed: 0,
            });
        }
    }

    /// The rows of the next step for each active sequence (0: it sits this step out): 1 for a
    /// decoding one, a chunk of its prompt for a prefilling one while the budget lasts.
    fn plan_step(&self) -> Vec<usize> {
        let decoding = self.active.iter().filter(|s| s.prefilled()).count();
        let mut budget = self.config.max_step_tokens.max(1).saturating_sub(decoding);
        let mut chunked = false;
        self.active
            .iter()
            .map(|s| {
                if s.prefilled() {
                    return 1;
                }
                let left = s.prompt.len() - s.fed;
                // The first prompt of the step runs even when decode rows took the budget.
                let take = if chunked { left.min(budget) } else { left.min(budget.max(1)) };
                budget -= take.min(budget);
                chunked |= take > 0;
                take
            })
            .collect()
    }

    fn step(&mut self) -> Result<(), candle_core::Error> {
        if self.active.is_empty() {
            return Ok(());
        }
        let rows = self.plan_step();
        let logits = {
            let mut inputs: Vec<(&[u32], &mut KvCache)> = self
                .active
                .iter_mut()
                .zip(&rows)
                .filter(|(_, &n)| n > 0)
                .map(|(s, &n)| {
                    let toks: &[u32] = if s.prefilled() {
                        std::slice::from_ref(s.generated.last().unwrap_or(&0))
                    } else {
                        &s.prompt[s.fed..s.fed + n]
                    };
                    (toks, &mut s.cache)
                })
                .collect();
            self.model.forward(&mut inputs)?
        };
        let logits = logits.to_vec2::<f32>()?;
        let ctx = self.model.config.context_length;
        let mut finished = Vec::new();
        let mut out_rows = logits.iter();
        for (i, (seq, &n)) in self.active.iter_mut().zip(&rows).enumerate() {
            if n == 0 {
                continue;
            }
            let Some(row) = out_rows.next() else { break };
            if !seq.prefilled() {
                seq.fed += n;
                if !seq.prefilled() {
                    // A chunk in the middle of the prompt: its logits are not needed.
                    continue;
                }
            }
            let (token, lp) = seq.sampler.sample(row, &seq.prompt, &seq.generated);
            let finish = if self.tokenizer.eos_ids.contains(&token) {
                Some(FinishReason::Stop)
            } else {
                seq.generated.push(token);
                seq.logprobs.push(lp);
                if seq.generated.len() >= seq.max_tokens {
                    Some(FinishReason::Length)
                } else if seq.cache.len() >= ctx || seq.cache.len() >= seq.cache.capacity() {
                    Some(FinishReason::ContextFull)
                } else {
                    None
                }
            };
            if let Some(f) = finish {
                let stop_token = (f == FinishReason::Stop).then_some(token);
                finished.push((i, f, stop_token));
            }
        }
        for (i, finish, stop_token) in finished.into_iter().rev() {
            let seq = self.active.swap_remove(i);
            let text = match self.tokenizer.decode(&seq.generated) {
                Ok(text) => text,
                Err(e) => {
                    // A sequence whose tokens cannot be decoded fails its whole request: an
                    // empty text would pass for a real (if terse) summary.
                    self.fail_job(
                        seq.job,
                        InferError::Other(format!(
                            "decoding {} generated tokens failed: {e}",
                            seq.generated.len()
                        )),
                    );
                    continue;
                }
            };
            let completion = Completion {
                text,
                completion_tokens: seq.generated.len(),
                prompt_tokens: seq.prompt.len(),
                token_ids: seq.generated,
                logprobs: seq.logprobs,
                finish,
                stop_token,
            };
            if let Some(job) = self.jobs.get_mut(&seq.job) {
                job.results[seq.index] = Some(completion);
                job.remaining -= 1;
            }
            self.finish_job_if_done(seq.job);
        }
        // Keep the batch in arrival order (swap_remove shuffled it): prompts are chunked
        // oldest first.
        self.active.sort_by_key(|s| (s.job, s.index));
        Ok(())
    }

    fn finish_job_if_done(&mut self, id: u64) {
        if self.jobs.get(&id).is_some_and(|j| j.remaining == 0) {
            if let Some(mut job) = self.jobs.remove(&id) {
                let results = job.results.drain(..).flatten().collect();
                if let Some(reply) = job.reply.take() {
                    let _ = reply.send(Ok(results));
                }
            }
        }
    }

    /// Forgets the jobs whose caller stopped waiting (its future was dropped).
    fn drop_cancelled(&mut self) {
        let gone: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.reply.as_ref().is_some_and(|r| r.is_closed()))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.waiting.retain(|w| w.job != id);
            self.active.retain(|s| s.job != id);
            self.jobs.remove(&id);
        }
    }

    fn fail_job(&mut self, id: u64, err: InferError) {
        self.waiting.retain(|w| w.job != id);
        self.active.retain(|s| s.job != id);
        if let Some(mut job) = self.jobs.remove(&id) {
            if let Some(reply) = job.reply.take() {
                let _ = reply.send(Err(err));
            }
        }
    }

    fn fail_active(&mut self, message: &str) {
        let ids: Vec<u64> = self.active.iter().map(|s| s.job).collect();
        for id in ids {
            self.fail_job(id, InferError::Other(format!("generation failed: {message}")));
        }
    }
}
