//! The OpenAI-compatible backend: [`Generator`] over `POST {endpoint}/v1/chat/completions`, the
//! protocol that vLLM, the llama.cpp server, Ollama and hosted services speak, at one endpoint
//! or at several replicas of the same model.
//!
//! One HTTP request per [`GenerationRequest`] (the server does the batching). Each endpoint takes
//! at most [`OpenAiConfig::concurrency`] requests at once (its slots); with several endpoints a
//! request goes to the least loaded healthy one ([`endpoints`]), so a fast replica takes more of
//! the work, a dead one is left alone after its first refused connection (tried again, one request
//! at a time, after a growing backoff), and a slow one's late requests are *hedged*: a copy goes
//! to another endpoint and the first reply wins ([`OpenAiConfig::hedge_factor`]).
//!
//! Each request asks for `logprobs` (with `top_logprobs: 1`, without which llama-cpp-python's
//! server returns none) and uses them when the server returns them (servers that reject the
//! fields are asked again without them, once for all). Transient failures — HTTP 429, 408 and
//! 5xx, a timeout, a connection reset mid-request — are retried with exponential backoff and
//! jitter, waiting at least what a `Retry-After` header says (in seconds), at another endpoint
//! when there is one. A refused connection moves the request to another endpoint without
//! spending a retry, and fails it only when no endpoint is reachable; an HTTP 4xx and a malformed
//! reply are not retried. Every error is an [`OpenAiError`] that names the URL and quotes the
//! server's message.
//!
//! How the [`SamplingParams`](super::SamplingParams) travel: `temperature`, `top_p`, `seed` and
//! `max_tokens` are standard fields. `top_k` and `repetition_penalty` are not; with
//! [`OpenAiConfig::sampling_extensions`] on (the default) they are sent under the names vLLM
//! (`top_k`, `repetition_penalty`) and the llama.cpp server (`top_k`, `repeat_penalty`) read and
//! other servers ignore; with it off (for hosted services that reject unknown fields) a repetition
//! penalty `r` becomes the standard `presence_penalty = clamp(5·(r−1), −2, 2)`, a heuristic, and
//! `top_k` is dropped. `presence_penalty` rather than `frequency_penalty`, because our penalty,
//! like it, applies once to every token already seen, however often (r = 1.2 gives 1.0). `no_repeat_ngram` has no equivalent in the protocol and is not sent. Seeds
//! are sent modulo 2³¹, which every server accepts.
//!
//! The remote tokenizer is unknown, so [`Generator::count_tokens`] approximates (one token per four
//! characters, rounded up) and token ids in a [`Completion`] are empty. The model's identity hash
//! is a blake3 hash of the model name and the normalized endpoints, sorted (so the order of
//! `--endpoint` flags does not matter, and a cache filled through one endpoint is reused only
//! through that same endpoint).

pub mod endpoints;
mod protocol;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::ModelIdentity;
use super::{Completion, GenerationRequest, Generator, InferError};
use endpoints::{EndpointStats, Lease, Outcome, Pool};
use protocol::{ChatRequest, ChatResponse};

/// Errors of the OpenAI-compatible backend.
#[derive(Debug, thiserror::Error)]
pub enum OpenAiError {
    /// The endpoint is not an `http://` or `https://` URL.
    #[error("endpoint {endpoint:?} is not an http:// or https:// URL")]
    BadEndpoint { endpoint: String },
    /// No endpoint was given.
    #[error("no endpoint given (e.g. http://127.0.0.1:8000)")]
    NoEndpoints,
    /// The environment variable that should hold the API key is unset or not UTF-8.
    #[error("the API key environment variable {var} is not set")]
    MissingApiKey { var: String },
    /// Nothing listens at the endpoint.
    #[error("cannot connect to {url}: connection refused (is the server running?)")]
    Refused { url: String },
    /// The connection could not be made for another reason (DNS, TLS, unreachable network).
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// None of several endpoints could be reached.
    #[error("no endpoint is reachable: {}", .errors.join("; "))]
    NoneReachable { errors: Vec<String> },
    /// No complete reply within the configured timeout.
    #[error("{url} did not reply within {:.1} s", timeout.as_secs_f64())]
    Timeout { url: String, timeout: Duration },
    /// The connection broke during the request (reset, closed early).
    #[error("connection to {url} failed: {reason}")]
    Transport { url: String, reason: String },
    /// The server answered with an error status.
    #[error("{url} answered HTTP {status}: {message}")]
    Status { url: String, status: u16, message: String },
    /// The server answered 2xx with something that is not a chat completion.
    #[error("malformed reply from {url}: {reason}")]
    Malformed { url: String, reason: String },
    /// A transient failure persisted through every retry.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: Box<OpenAiError> },
    /// The HTTP client could not be built (a TLS backend problem).
    #[error("building the HTTP client: {0}")]
    Client(String),
}

/// How to reach an OpenAI-compatible server (or several replicas of one model), and how hard to
/// try. Build it with [`OpenAiConfig::new`] or [`OpenAiConfig::replicas`] and adjust fields;
/// [`OpenAiGenerator::new`] turns it into a generator.
///
/// This is what the CLI's `--backend openai --endpoint URL [--endpoint URL…] --model NAME
/// [--endpoint-slots N] [--api-key-env VAR]` fills in.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiConfig {
    /// The servers' base URLs, e.g. `http://127.0.0.1:8000`; a trailing `/` or `/v1` is dropped,
    /// and requests go to `{endpoint}/v1/chat/completions`. All of them serve the same model.
    pub endpoints: Vec<String>,
    /// The model name the servers know (`"model"` in each request).
    pub model: String,
    /// The environment variable holding the API key, sent as `Authorization: Bearer KEY` to
    /// every endpoint. `None`: no authorization header (local servers).
    pub api_key_env: Option<String>,
    /// Requests in flight at once at each endpoint (its slots), at least 1.
    pub concurrency: usize,
    /// Limit on one attempt, from connecting to the last byte of the reply.
    pub timeout: Duration,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Retries after the first attempt, for transient failures.
    pub max_retries: u32,
    /// The first backoff; each failure in a row at an endpoint doubles it, up to `backoff_max`,
    /// and the wait is a random time between half of it and all of it.
    pub backoff_base: Duration,
    /// The longest backoff.
    pub backoff_max: Duration,
    /// A `Retry-After` longer than this is not waited for: the request fails instead.
    pub max_retry_after: Duration,
    /// The model's context window, as the caller knows it (the protocol does not say).
    pub context_length: usize,
    /// Ask for per-token log-probabilities.
    pub logprobs: bool,
    /// Send `top_k` and the repetition penalty as the non-standard fields vLLM and the llama.cpp
    /// server read (see the module docs).
    pub sampling_extensions: bool,
    /// With several endpoints: a request still unanswered after `hedge_factor` times what its
    /// `max_tokens` take at the pace seen so far (at least `hedge_min`) is sent to a second
    /// endpoint too, and the first reply wins. 0 turns hedging off.
    pub hedge_factor: f64,
    /// The shortest wait before hedging.
    pub hedge_min: Duration,
}

impl OpenAiConfig {
    /// A configuration with the defaults: no API key, 8 requests in flight, 300 s per attempt,
    /// 10 s to connect, 5 retries with backoff from 0.5 s to 30 s, `Retry-After` honoured up to
    /// 120 s, a context of 8192 tokens, logprobs and sampling extensions on, hedging after 3× the
    /// expected time (at least 5 s).
    pub fn new(endpoint: impl Into<String>, model: impl Into<String>) -> Self {
        Self::replicas(vec![endpoint.into()], model)
    }

    /// The same defaults, over several endpoints that serve the same model.
    pub fn replicas(endpoints: Vec<String>, model: impl Into<String>) -> Self {
        Self {
            endpoints,
            model: model.into(),
            api_key_env: None,
            concurrency: 8,
            timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            max_retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
            context_length: 8192,
            logprobs: true,
            sampling_extensions: true,
            hedge_factor: 3.0,
            hedge_min: Duration::from_secs(5),
        }
    }
}

/// A [`Generator`] backed by one or more OpenAI-compatible HTTP servers. Needs a tokio runtime.
pub struct OpenAiGenerator {
    client: reqwest::Client,
    api_key: Option<String>,
    config: OpenAiConfig,
    identity: ModelIdentity,
    pool: Pool,
    /// Cleared when a server rejects the `logprobs` field.
    logprobs: AtomicBool,
}

impl std::fmt::Debug for OpenAiGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the API key.
        f.debug_struct("OpenAiGenerator")
            .field("urls", &self.urls())
            .field("identity", &self.identity)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The base URL without a trailing `/` or `/v1`.
fn normalize_endpoint(endpoint: &str) -> Result<String, OpenAiError> {
    let trimmed = endpoint.trim().trim_end_matches('/');
    let base = trimmed.strip_suffix("/v1").unwrap_or(trimmed).trim_end_matches('/');
    let valid = reqwest::Url::parse(base)
        .map(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
        .unwrap_or(false);
    if valid {
        Ok(base.to_string())
    } else {
        Err(OpenAiError::BadEndpoint { endpoint: endpoint.to_string() })
    }
}

/// The identity hash of `model` served at `bases` (normalized, sorted, deduplicated): the
/// single-endpoint hash is what it always was, so caches filled before stay valid.
fn identity_hash(bases: &[String], model: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"openai\0");
    for (i, base) in bases.iter().enumerate() {
        if i > 0 {
            hasher.update(b"\x1f");
        }
        hasher.update(base.as_bytes());
    }
    hasher.update(b"\0");
    hasher.update(model.as_bytes());
    hasher.finalize().to_hex().to_string()
}

impl OpenAiGenerator {
    /// Builds the client: checks the endpoints, reads the API key from `config.api_key_env` (an
    /// unset variable is an error), and prepares the connection pool. Connects to nothing yet.
    pub fn new(config: OpenAiConfig) -> Result<Self, InferError> {
        Ok(Self::new_inner(config)?)
    }

    fn new_inner(mut config: OpenAiConfig) -> Result<Self, OpenAiError> {
        let mut bases = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let base = normalize_endpoint(endpoint)?;
            if !bases.contains(&base) {
                bases.push(base);
            }
        }
        if bases.is_empty() {
            return Err(OpenAiError::NoEndpoints);
        }
        let api_key = match &config.api_key_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(key) if !key.trim().is_empty() => Some(key.trim().to_string()),
                _ => return Err(OpenAiError::MissingApiKey { var: var.clone() }),
            },
        };
        config.concurrency = config.concurrency.max(1);
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(config.concurrency)
            .build()
            .map_err(|err| OpenAiError::Client(err.to_string()))?;
        let mut sorted = bases.clone();
        sorted.sort();
        let identity = ModelIdentity {
            name: config.model.clone(),
            hash: identity_hash(&sorted, &config.model),
        };
        Ok(Self {
            client,
            api_key,
            identity,
            pool: Pool::new(bases, &config),
            logprobs: AtomicBool::new(config.logprobs),
            config,
        })
    }

    /// The URL requests are posted to (the first endpoint's, with several).
    pub fn url(&self) -> &str {
        &self.pool.endpoint(0).url
    }

    /// Every endpoint's URL, in the order given.
    pub fn urls(&self) -> Vec<&str> {
        self.pool.endpoints().map(|e| e.url.as_str()).collect()
    }

    /// The configuration in use.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// What each endpoint did so far: replies, failures, hedges, requests in flight.
    pub fn endpoint_stats(&self) -> Vec<EndpointStats> {
        self.pool.stats()
    }

    /// One request: a slot at the least loaded healthy endpoint, an attempt (hedged at a second
    /// endpoint if it is late), and on failure another round, at another endpoint if one is up.
    async fn complete(&self, request: GenerationRequest) -> Result<Completion, OpenAiError> {
        let started = Instant::now();
        let mut transient: u32 = 0;
        let mut moved: u32 = 0;
        // The endpoint that failed this request last: the retry goes elsewhere when it can.
        let mut avoid: Option<usize> = None;
        loop {
            let logprobs = self.logprobs.load(Ordering::Relaxed);
            let body = protocol::request_body(&self.config, &request, logprobs);
            let lease = self.pool.lease(avoid.filter(|&i| self.pool.has_alternative(i))).await;
            let index = lease.index;
            match self.hedged_attempt(lease, &body).await {
                Ok((reply, url)) => {
                    let done = protocol::completion(reply, &request, url)?;
                    tracing::debug!(
                        url,
                        retries = transient,
                        tokens = done.completion_tokens,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "completed"
                    );
                    return Ok(done);
                }
                Err(Failure::Fatal(err)) => return Err(err),
                Err(Failure::LogprobsRejected(err)) => {
                    if !logprobs {
                        return Err(err);
                    }
                    tracing::warn!(url = self.url(), "server rejects logprobs; asking without");
                    self.logprobs.store(false, Ordering::Relaxed);
                }
                Err(Failure::Unreachable(err)) => {
                    moved += 1;
                    if self.pool.len() == 1 {
                        return Err(err);
                    }
                    if self.pool.all_unreachable() || moved > 8 * self.pool.len() as u32 {
                        return Err(self.none_reachable(err));
                    }
                    tracing::warn!(error = %err, "endpoint unreachable; moving the request");
                    avoid = Some(index);
                }
                Err(Failure::Transient { err, retry_after }) => {
                    transient += 1;
                    if transient > self.config.max_retries {
                        return Err(OpenAiError::GaveUp { attempts: transient, last: err.into() });
                    }
                    if let Some(wait) = retry_after.filter(|w| *w > self.config.max_retry_after) {
                        tracing::warn!(?wait, "server asks to wait longer than max_retry_after");
                        return Err(OpenAiError::GaveUp { attempts: transient, last: err.into() });
                    }
                    // The endpoint is out of rotation for its backoff; the next lease waits for
                    // it or takes another endpoint.
                    tracing::debug!(attempt = transient, error = %err, "retrying");
                    avoid = Some(index);
                }
            }
        }
    }

    /// The error when no endpoint answers: each endpoint's refusal.
    fn none_reachable(&self, last: OpenAiError) -> OpenAiError {
        let errors =
            self.pool.endpoints().map(|e| format!("{}: not reachable", e.url)).collect::<Vec<_>>();
        tracing::debug!(last = %last, "no endpoint reachable");
        OpenAiError::NoneReachable { errors }
    }

    /// One attempt at the leased endpoint; if no reply comes within [`Pool::hedge_after`], the
    /// endpoint leaves the rotation for a backoff and a copy goes to the first other endpoint
    /// with a free slot; the first success wins (the other attempt is dropped, which closes its
    /// connection and frees its slot).
    async fn hedged_attempt<'a>(
        &'a self,
        lease: Lease<'a>,
        body: &ChatRequest<'_>,
    ) -> Result<(ChatResponse, &'a str), Failure> {
        let first = lease.index;
        let primary = self.attempt(lease, body);
        tokio::pin!(primary);
        let Some(after) = self.pool.hedge_after(body.max_tokens) else {
            return primary.await;
        };
        tokio::select! {
            result = &mut primary => return result,
            _ = tokio::time::sleep(after) => {}
        }
        self.pool.record_slow(first);
        let second = tokio::select! {
            result = &mut primary => return result,
            second = self.pool.lease(Some(first)) => second,
        };
        tracing::info!(
            slow = self.pool.endpoint(first).url,
            to = self.pool.endpoint(second.index).url,
            waited_s = after.as_secs_f64(),
            "late reply; sending a copy to another endpoint"
        );
        let secondary = self.attempt(second, body);
        tokio::pin!(secondary);
        tokio::select! {
            result = &mut primary => match result {
                Ok(reply) => Ok(reply),
                Err(_) => secondary.await,
            },
            result = &mut secondary => match result {
                Ok(reply) => Ok(reply),
                Err(_) => primary.await,
            },
        }
    }

    /// One attempt at the leased endpoint, recorded in its health. The slot is held until the
    /// attempt ends.
    async fn attempt<'a>(
        &'a self,
        lease: Lease<'a>,
        body: &ChatRequest<'_>,
    ) -> Result<(ChatResponse, &'a str), Failure> {
        let index = lease.index;
        let url = self.pool.endpoint(index).url.as_str();
        let started = tokio::time::Instant::now();
        let result = self.post(url, body).await;
        let outcome = match &result {
            Ok(reply) => Outcome::Success {
                elapsed: started.elapsed(),
                tokens: reply.completion_tokens().unwrap_or(body.max_tokens),
            },
            Err(Failure::Transient { retry_after, .. }) => {
                Outcome::Transient { retry_after: *retry_after }
            }
            Err(Failure::Unreachable(_)) => Outcome::Unreachable,
            Err(Failure::Fatal(_) | Failure::LogprobsRejected(_)) => Outcome::Answered,
        };
        self.pool.record(index, &outcome);
        drop(lease);
        result.map(|reply| (reply, url))
    }

    async fn post(&self, url: &str, body: &ChatRequest<'_>) -> Result<ChatResponse, Failure> {
        let mut builder = self.client.post(url).json(body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = builder.send().await.map_err(|err| self.transport_failure(url, &err))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(protocol::parse_retry_after);
        let bytes = response.bytes().await.map_err(|err| self.transport_failure(url, &err))?;
        if status.is_success() {
            return serde_json::from_slice::<ChatResponse>(&bytes).map_err(|err| {
                Failure::Fatal(OpenAiError::Malformed {
                    url: url.to_string(),
                    reason: format!("{err}; the reply began {:?}", protocol::snippet(&bytes)),
                })
            });
        }
        let message = protocol::server_message(&bytes);
        let code = status.as_u16();
        let blames_logprobs = code == 400 && message.to_lowercase().contains("logprob");
        let err = OpenAiError::Status { url: url.to_string(), status: code, message };
        if code == 429 || code == 408 || status.is_server_error() {
            Err(Failure::Transient { err, retry_after })
        } else if blames_logprobs && body.logprobs.is_some() {
            Err(Failure::LogprobsRejected(err))
        } else {
            Err(Failure::Fatal(err))
        }
    }

    fn transport_failure(&self, url: &str, err: &reqwest::Error) -> Failure {
        let url = url.to_string();
        if err.is_timeout() {
            let timeout = self.config.timeout;
            return Failure::Transient {
                err: OpenAiError::Timeout { url, timeout },
                retry_after: None,
            };
        }
        if err.is_connect() {
            let refused = io_kind(err) == Some(std::io::ErrorKind::ConnectionRefused);
            return Failure::Unreachable(if refused {
                OpenAiError::Refused { url }
            } else {
                OpenAiError::Connect { url, reason: error_chain(err) }
            });
        }
        Failure::Transient {
            err: OpenAiError::Transport { url, reason: error_chain(err) },
            retry_after: None,
        }
    }
}

impl Drop for OpenAiGenerator {
    fn drop(&mut self) {
        if self.pool.len() > 1 {
            for stats in self.pool.stats() {
                tracing::info!(
                    endpoint = stats.endpoint,
                    completed = stats.completed,
                    failed = stats.failed,
                    hedged = stats.hedged,
                    "endpoint summary"
                );
            }
        }
    }
}

/// How one attempt failed.
enum Failure {
    /// Worth retrying, after at least `retry_after` when the server said so.
    Transient {
        err: OpenAiError,
        retry_after: Option<Duration>,
    },
    /// Nothing answered at the endpoint: try another.
    Unreachable(OpenAiError),
    /// A 400 that blames the `logprobs` field: ask again without it.
    LogprobsRejected(OpenAiError),
    Fatal(OpenAiError),
}

/// The first `std::io::ErrorKind` in an error's source chain.
fn io_kind(err: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = err.source();
    }
    None
}

/// An error and its sources, joined with `: `.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        let part = err.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = err.source();
    }
    text
}

/// The wait after failure number `failures + 1` in a row: `base · 2^failures`, at most `max`,
/// jittered down to between half and all of it, and never less than `retry_after`.
fn backoff(
    base: Duration,
    max: Duration,
    failures: u32,
    retry_after: Option<Duration>,
) -> Duration {
    use rand::Rng as _;
    let factor = 2u32.saturating_pow(failures.min(20));
    let ceiling = base.saturating_mul(factor).min(max);
    let jittered = ceiling.mul_f64(rand::rng().random_range(0.5..=1.0));
    retry_after.map_or(jittered, |wait| wait.max(jittered))
}

impl Generator for OpenAiGenerator {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn context_length(&self) -> Result<usize, InferError> {
        Ok(self.config.context_length)
    }

    /// An approximation: one token per four characters, rounded up (the server's tokenizer is
    /// unknown here).
    fn count_tokens(&self, text: &str) -> Result<usize, InferError> {
        Ok(protocol::approx_tokens(text))
    }

    /// Sends every request concurrently (at most `concurrency` in flight) and returns the
    /// completions in order; the first request that fails for good fails the call and cancels
    /// the rest.
    fn generate(
        &self,
        requests: Vec<GenerationRequest>,
    ) -> BoxFuture<'_, Result<Vec<Completion>, InferError>> {
        Box::pin(async move {
            let calls = requests.into_iter().map(|request| self.complete(request));
            Ok(futures::future::try_join_all(calls).await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized() {
        let ok = |e: &str| normalize_endpoint(e).ok();
        assert_eq!(ok("http://h:8000"), Some("http://h:8000".into()));
        assert_eq!(ok("http://h:8000/"), Some("http://h:8000".into()));
        assert_eq!(ok("http://h:8000/v1/"), Some("http://h:8000".into()));
        assert_eq!(ok("https://h/api/v1"), Some("https://h/api".into()));
        assert_eq!(ok("h:8000"), None);
        assert_eq!(ok("ftp://h"), None);
        assert_eq!(ok(""), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let mut config = OpenAiConfig::new("http://h", "m");
        config.backoff_base = Duration::from_millis(100);
        config.backoff_max = Duration::from_millis(1000);
        for attempt in 0..10 {
            let wait = backoff(config.backoff_base, config.backoff_max, attempt, None);
            let ceiling = Duration::from_millis(100 * 2u64.pow(attempt)).min(config.backoff_max);
            assert!(wait >= ceiling / 2 && wait <= ceiling, "{attempt}: {wait:?}");
        }
        let wait =
            backoff(config.backoff_base, config.backoff_max, 0, Some(Duration::from_secs(3)));
        assert_eq!(wait, Duration::from_secs(3));
    }
}
