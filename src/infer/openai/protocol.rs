//! The chat-completions wire format: the request body rrm sends, the parts of a reply it reads,
//! and how a reply becomes a [`Completion`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::OpenAiConfig;
use super::OpenAiError;
use crate::infer::{ChatMessage, Completion, FinishReason, GenerationRequest, SamplingParams};

/// The JSON body of a chat completion request.
#[derive(Debug, Serialize)]
pub(super) struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    pub(super) max_tokens: usize,
    temperature: f32,
    top_p: f32,
    seed: u64,
    n: u32,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) logprobs: Option<bool>,
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

pub(super) fn request_body<'a>(
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
pub(super) struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

impl ChatResponse {
    /// The completion's length in tokens, when the server says.
    pub(super) fn completion_tokens(&self) -> Option<usize> {
        self.usage.as_ref().and_then(|u| u.completion_tokens)
    }
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

pub(super) fn completion(
    reply: ChatResponse,
    request: &GenerationRequest,
    url: &str,
) -> Result<Completion, OpenAiError> {
    let malformed =
        |reason: &str| OpenAiError::Malformed { url: url.to_string(), reason: reason.into() };
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
        // The server's token ids are unknown here.
        stop_token: None,
        prompt_tokens,
        completion_tokens,
    })
}

/// One token per four characters, rounded up: the server's tokenizer is unknown here.
pub(super) fn approx_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// The first 200 characters of a reply body, for error messages.
pub(super) fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(200).collect()
}

/// What an error reply says: `{"error": {"message": ...}}`, `{"error": "..."}`,
/// `{"message": ...}`, or the start of the body.
pub(super) fn server_message(bytes: &[u8]) -> String {
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
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.25 "), Some(Duration::from_millis(250)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
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
