//! The OpenAI-compatible backend: [`Generator`] over `POST {endpoint}/v1/chat/completions`, the
//! protocol that vLLM, the llama.cpp server, Ollama and hosted services speak.
//!
//! One HTTP request per [`GenerationRequest`] (the server does the batching), at most
//! [`OpenAiConfig::concurrency`] in flight. Each request asks for `logprobs` (with
//! `top_logprobs: 1`, without which llama-cpp-python's server returns none) and uses them when
//! the server returns them (servers that reject the fields are asked again without them, once for
//! all). Transient failures — HTTP 429, 408 and 5xx, a timeout, a connection reset mid-request —
//! are retried with exponential backoff and jitter, waiting at least what a `Retry-After` header
//! says (in seconds); a refused connection, an HTTP 4xx and a malformed reply are not retried and
//! surface as an [`OpenAiError`] that names the URL and quotes the server's message.
//!
//! How the [`SamplingParams`] travel: `temperature`, `top_p`, `seed` and
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
//! is a blake3 hash of the normalized endpoint and the model name.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::{ChatMessage, Completion, FinishReason, GenerationRequest, Generator, InferError};
use super::{ModelIdentity, SamplingParams};

/// Errors of the OpenAI-compatible backend.
#[derive(Debug, thiserror::Error)]
pub enum OpenAiError {
    /// The endpoint is not an `http://` or `https://` URL.
    #[error("endpoint {endpoint:?} is not an http:// or https:// URL")]
    BadEndpoint { endpoint: String },
    /// The environment variable that should hold the API key is unset or not UTF-8.
    #[error("the API key environment variable {var} is not set")]
    MissingApiKey { var: String },
    /// Nothing listens at the endpoint.
    #[error("cannot connect to {url}: connection refused (is the server running?)")]
    Refused { url: String },
    /// The connection could not be made for another reason (DNS, TLS, unreachable network).
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
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

/// How to reach an OpenAI-compatible server, and how hard to try. Build it with
/// [`OpenAiConfig::new`] and adjust fields; [`OpenAiGenerator::new`] turns it into a generator.
///
/// This is what the CLI's `--backend openai --endpoint URL --model NAME [--api-key-env VAR]`
/// fills in.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiConfig {
    /// The server's base URL, e.g. `http://127.0.0.1:8000`; a trailing `/` or `/v1` is dropped,
    /// and requests go to `{endpoint}/v1/chat/completions`.
    pub endpoint: String,
    /// The model name the server knows (`"model"` in each request).
    pub model: String,
    /// The environment variable holding the API key, sent as `Authorization: Bearer KEY`.
    /// `None`: no authorization header (local servers).
    pub api_key_env: Option<String>,
    /// Requests in flight at once, at least 1.
    pub concurrency: usize,
    /// Limit on one attempt, from connecting to the last byte of the reply.
    pub timeout: Duration,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Retries after the first attempt, for transient failures.
    pub max_retries: u32,
    /// The first backoff; each retry doubles it, up to `backoff_max`, and waits a random time
    /// between half of it and all of it.
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
}

impl OpenAiConfig {
    /// A configuration with the defaults: no API key, 8 requests in flight, 300 s per attempt,
    /// 10 s to connect, 5 retries with backoff from 0.5 s to 30 s, `Retry-After` honoured up to
    /// 120 s, a context of 8192 tokens, logprobs and sampling extensions on.
    pub fn new(endpoint: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
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
        }
    }
}

/// A [`Generator`] backed by an OpenAI-compatible HTTP server. Needs a tokio runtime.
pub struct OpenAiGenerator {
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
    config: OpenAiConfig,
    identity: ModelIdentity,
    permits: Arc<Semaphore>,
    /// Cleared when the server rejects the `logprobs` field.
    logprobs: AtomicBool,
}

impl std::fmt::Debug for OpenAiGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the API key.
        f.debug_struct("OpenAiGenerator")
            .field("url", &self.url)
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

impl OpenAiGenerator {
    /// Builds the client: checks the endpoint, reads the API key from `config.api_key_env` (an
    /// unset variable is an error), and prepares the connection pool. Connects to nothing yet.
    pub fn new(config: OpenAiConfig) -> Result<Self, InferError> {
        Ok(Self::new_inner(config)?)
    }

    fn new_inner(mut config: OpenAiConfig) -> Result<Self, OpenAiError> {
        let base = normalize_endpoint(&config.endpoint)?;
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
        let hash = {
            let mut hasher = blake3::Hasher::new();
            hasher.update(b"openai\0");
            hasher.update(base.as_bytes());
            hasher.update(b"\0");
            hasher.update(config.model.as_bytes());
            hasher.finalize().to_hex().to_string()
        };
        Ok(Self {
            client,
            url: format!("{base}/v1/chat/completions"),
            api_key,
            identity: ModelIdentity { name: config.model.clone(), hash },
            permits: Arc::new(Semaphore::new(config.concurrency)),
            logprobs: AtomicBool::new(config.logprobs),
            config,
        })
    }

    /// The URL requests are posted to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The configuration in use.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// One request, with retries. Holds a concurrency permit throughout, backoff included, so an
    /// overloaded server is not hit harder.
    async fn complete(&self, request: GenerationRequest) -> Result<Completion, OpenAiError> {
        let _permit = self.permits.acquire().await.map_err(|_| OpenAiError::Transport {
            url: self.url.clone(),
            reason: "the generator was shut down".into(),
        })?;
        let started = std::time::Instant::now();
        let mut attempt: u32 = 0;
        loop {
            let logprobs = self.logprobs.load(Ordering::Relaxed);
            let body = request_body(&self.config, &request, logprobs);
            match self.attempt(&body).await {
                Ok(reply) => {
                    let done = completion(reply, &request, self)?;
                    tracing::debug!(
                        url = %self.url,
                        attempts = attempt + 1,
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
                    tracing::warn!(url = %self.url, "server rejects logprobs; asking without");
                    self.logprobs.store(false, Ordering::Relaxed);
                }
                Err(Failure::Transient { err, retry_after }) => {
                    if attempt >= self.config.max_retries {
                        return Err(OpenAiError::GaveUp {
                            attempts: attempt + 1,
                            last: err.into(),
                        });
                    }
                    if let Some(wait) = retry_after.filter(|w| *w > self.config.max_retry_after) {
                        tracing::warn!(?wait, "server asks to wait longer than max_retry_after");
                        return Err(OpenAiError::GaveUp {
                            attempts: attempt + 1,
                            last: err.into(),
                        });
                    }
                    let wait = backoff(&self.config, attempt, retry_after);
                    tracing::debug!(url = %self.url, attempt, ?wait, error = %err, "retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt(&self, body: &ChatRequest<'_>) -> Result<ChatResponse, Failure> {
        let mut builder = self.client.post(&self.url).json(body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = builder.send().await.map_err(|err| self.transport_failure(&err))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = response.bytes().await.map_err(|err| self.transport_failure(&err))?;
        if status.is_success() {
            return serde_json::from_slice::<ChatResponse>(&bytes).map_err(|err| {
                Failure::Fatal(OpenAiError::Malformed {
                    url: self.url.clone(),
                    reason: format!("{err}; the reply began {:?}", snippet(&bytes)),
                })
            });
        }
        let message = server_message(&bytes);
        let code = status.as_u16();
        let blames_logprobs = code == 400 && message.to_lowercase().contains("logprob");
        let err = OpenAiError::Status { url: self.url.clone(), status: code, message };
        if code == 429 || code == 408 || status.is_server_error() {
            Err(Failure::Transient { err, retry_after })
        } else if blames_logprobs && body.logprobs.is_some() {
            Err(Failure::LogprobsRejected(err))
        } else {
            Err(Failure::Fatal(err))
        }
    }

    fn transport_failure(&self, err: &reqwest::Error) -> Failure {
        let url = self.url.clone();
        if err.is_timeout() {
            let timeout = self.config.timeout;
            return Failure::Transient {
                err: OpenAiError::Timeout { url, timeout },
                retry_after: None,
            };
        }
        if err.is_connect() {
            let refused = io_kind(err) == Some(std::io::ErrorKind::ConnectionRefused);
            return Failure::Fatal(if refused {
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

/// How one attempt failed.
enum Failure {
    /// Worth retrying, after at least `retry_after` when the server said so.
    Transient {
        err: OpenAiError,
        retry_after: Option<Duration>,
    },
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

/// The first 200 characters of a reply body, for error messages.
fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(200).collect()
}

/// What an error reply says: `{"error": {"message": ...}}`, `{"error": "..."}`,
/// `{"message": ...}`, or the start of the body.
fn server_message(bytes: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let found = value
            .pointer("/error/message")
            .or_else(|| value.get("error"))
            .or_else(|| value.get("message"))
            .or_else(|| value.get("detail"));
        match found {
            Some(serde_json::Value::String(message)) => return message.clone(),
            Some(other) if !other.is_null() => return other.to_string(),
            _ => {}
        }
    }
    let text = snippet(bytes);
    if text.trim().is_empty() {
        "(empty reply)".to_string()
    } else {
        text.trim().to_string()
    }
}

/// `Retry-After` in seconds (integer or decimal). The HTTP-date form is not understood and is
/// ignored (the computed backoff applies).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

/// The wait before retry number `attempt + 1`: `backoff_base · 2^attempt`, at most `backoff_max`,
/// jittered down to between half and all of it, and never less than `retry_after`.
fn backoff(config: &OpenAiConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    use rand::Rng as _;
    let factor = 2u32.saturating_pow(attempt.min(20));
    let ceiling = config.backoff_base.saturating_mul(factor).min(config.backoff_max);
    let jittered = ceiling.mul_f64(rand::rng().random_range(0.5..=1.0));
    retry_after.map_or(jittered, |wait| wait.max(jittered))
}

/// The JSON body of a chat completion request.
#[derive(Debug, Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    max_tokens: usize,
    temperature: f32,
    top_p: f32,
    seed: u64,
    n: u32,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<bool>,
    /// 1 with `logprobs`: llama-cpp-python's server returns logprobs only when it is at least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repetition_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repeat_penalty: Option<f32>,
}

fn request_body<'a>(
    config: &'a OpenAiConfig,
    request: &'a GenerationRequest,
    logprobs: bool,
) -> ChatRequest<'a> {
    let SamplingParams { temperature, top_p, top_k, repetition_penalty, .. } = request.sampling;
    let penalized = repetition_penalty.is_finite() && (repetition_penalty - 1.0).abs() > 1e-6;
    let extensions = config.sampling_extensions;
    ChatRequest {
        model: &config.model,
        messages: &request.messages,
        max_tokens: request.max_tokens,
        temperature: temperature.max(0.0),
        top_p: if top_p > 0.0 && top_p <= 1.0 { top_p } else { 1.0 },
        seed: request.seed & 0x7fff_ffff,
        n: 1,
        stream: false,
        logprobs: logprobs.then_some(true),
        top_logprobs: logprobs.then_some(1),
        presence_penalty: (penalized && !extensions)
            .then(|| (5.0 * (repetition_penalty - 1.0)).clamp(-2.0, 2.0)),
        top_k: top_k.filter(|_| extensions),
        repetition_penalty: (penalized && extensions).then_some(repetition_penalty),
        repeat_penalty: (penalized && extensions).then_some(repetition_penalty),
    }
}

/// The parts of a chat completion reply that are used; everything else is ignored.
#[derive(Debug, Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<ReplyMessage>,
    /// The legacy completions shape, which some servers still use.
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<ChoiceLogprobs>,
}

#[derive(Debug, Deserialize)]
struct ReplyMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChoiceLogprobs {
    #[serde(default)]
    content: Option<Vec<TokenLogprob>>,
}

#[derive(Debug, Deserialize)]
struct TokenLogprob {
    #[serde(default)]
    logprob: Option<f32>,
}

#[derive(Debug, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<usize>,
    #[serde(default)]
    completion_tokens: Option<usize>,
}

fn completion(
    reply: ChatResponse,
    request: &GenerationRequest,
    generator: &OpenAiGenerator,
) -> Result<Completion, OpenAiError> {
    let malformed =
        |reason: &str| OpenAiError::Malformed { url: generator.url.clone(), reason: reason.into() };
    let choice = reply.choices.into_iter().next().ok_or_else(|| malformed("no choices"))?;
    let text = match (choice.message, choice.text) {
        (Some(message), _) => message.content.unwrap_or_default(),
        (None, Some(text)) => text,
        (None, None) => return Err(malformed("the choice has neither a message nor text")),
    };
    // All or nothing: a partial list would misalign with the tokens.
    let logprobs: Vec<f32> = choice
        .logprobs
        .and_then(|l| l.content)
        .and_then(|tokens| tokens.into_iter().map(|t| t.logprob).collect::<Option<Vec<f32>>>())
        .unwrap_or_default();
    let usage = reply.usage.unwrap_or(Usage { prompt_tokens: None, completion_tokens: None });
    let completion_tokens = usage.completion_tokens.unwrap_or_else(|| {
        if logprobs.is_empty() {
            approx_tokens(&text)
        } else {
            logprobs.len()
        }
    });
    let prompt_tokens = usage
        .prompt_tokens
        .unwrap_or_else(|| request.messages.iter().map(|m| approx_tokens(&m.content)).sum());
    let finish = match choice.finish_reason.as_deref() {
        Some("length") if completion_tokens < request.max_tokens => FinishReason::ContextFull,
        Some("length") => FinishReason::Length,
        Some("stop" | "eos" | "stop_sequence" | "end_turn") | None => FinishReason::Stop,
        Some(other) => {
            tracing::debug!(finish_reason = other, "unknown finish_reason, taken as a stop");
            FinishReason::Stop
        }
    };
    Ok(Completion {
        text,
        token_ids: Vec::new(),
        logprobs,
        finish,
        prompt_tokens,
        completion_tokens,
    })
}

/// One token per four characters, rounded up: the server's tokenizer is unknown here.
fn approx_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
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
        Ok(approx_tokens(text))
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
    fn retry_after_in_seconds() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.25 "), Some(Duration::from_millis(250)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let mut config = OpenAiConfig::new("http://h", "m");
        config.backoff_base = Duration::from_millis(100);
        config.backoff_max = Duration::from_millis(1000);
        for attempt in 0..10 {
            let wait = backoff(&config, attempt, None);
            let ceiling = Duration::from_millis(100 * 2u64.pow(attempt)).min(config.backoff_max);
            assert!(wait >= ceiling / 2 && wait <= ceiling, "{attempt}: {wait:?}");
        }
        let wait = backoff(&config, 0, Some(Duration::from_secs(3)));
        assert_eq!(wait, Duration::from_secs(3));
    }

    #[test]
    fn server_messages_are_extracted() {
        assert_eq!(server_message(br#"{"error":{"message":"bad model"}}"#), "bad model");
        assert_eq!(server_message(br#"{"error":"nope"}"#), "nope");
        assert_eq!(server_message(br#"{"detail":"missing field"}"#), "missing field");
        assert_eq!(server_message(b"Bad Gateway"), "Bad Gateway");
        assert_eq!(server_message(b""), "(empty reply)");
    }

    #[test]
    fn sampling_maps_to_fields() {
        let mut config = OpenAiConfig::new("http://h", "m");
        let mut request = GenerationRequest {
            messages: vec![ChatMessage::user("hi")],
            max_tokens: 16,
            sampling: SamplingParams {
                temperature: 0.7,
                top_k: Some(40),
                ..SamplingParams::greedy()
            },
            seed: u64::MAX,
        };
        request.sampling.repetition_penalty = 1.2;
        let body = serde_json::to_value(request_body(&config, &request, true)).unwrap_or_default();
        assert_eq!(body["seed"], 0x7fff_ffff);
        assert_eq!(body["top_k"], 40);
        assert_eq!(body["logprobs"], true);
        assert_eq!(body["top_logprobs"], 1);
        assert!(body.get("presence_penalty").is_none());
        assert!((body["repetition_penalty"].as_f64().unwrap_or(0.0) - 1.2).abs() < 1e-6);
        config.sampling_extensions = false;
        let body = serde_json::to_value(request_body(&config, &request, false)).unwrap_or_default();
        assert!(body.get("top_k").is_none() && body.get("repetition_penalty").is_none());
        assert!(body.get("logprobs").is_none() && body.get("top_logprobs").is_none());
        assert!((body["presence_penalty"].as_f64().unwrap_or(0.0) - 1.0).abs() < 1e-6);
    }
}
