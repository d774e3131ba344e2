//! The OpenAI-compatible backend against a local HTTP server started inside each test, which
//! speaks `/v1/chat/completions` and misbehaves on cue: 429 then success, 5xx until the client
//! gives up, non-JSON, wrong-shaped JSON, 4xx with a message, slowness past the timeout, connection
//! resets, and servers that reject `logprobs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use rrm::infer::openai::{OpenAiConfig, OpenAiError, OpenAiGenerator};
use rrm::infer::{
    ChatMessage, Completion, FinishReason, GenerationRequest, Generator, InferError, SamplingParams,
};
use serde_json::{json, Value};

/// What the test server answers: status, extra headers, body, and a delay before answering.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Self { status, headers: Vec::new(), body: body.to_string(), delay: Duration::ZERO }
    }
}

/// Decides the reply from the call number (0-based), the request body and its headers.
type Script = dyn Fn(usize, &Value, &HeaderMap) -> Reply + Send + Sync;

struct Server {
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    bodies: Mutex<Vec<Value>>,
    script: Box<Script>,
}

async fn handle(State(server): State<Arc<Server>>, headers: HeaderMap, body: String) -> Response {
    let call = server.calls.fetch_add(1, Ordering::SeqCst);
    let now = server.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    server.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if let Ok(mut bodies) = server.bodies.lock() {
        bodies.push(body.clone());
    }
    let reply = (server.script)(call, &body, &headers);
    tokio::time::sleep(reply.delay).await;
    server.in_flight.fetch_sub(1, Ordering::SeqCst);
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, reply.body).into_response();
    for (name, value) in reply.headers {
        if let Ok(value) = value.parse() {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// Starts a server on 127.0.0.1 (a free port) that answers with `script`; returns its base URL.
async fn serve(
    script: impl Fn(usize, &Value, &HeaderMap) -> Reply + Send + Sync + 'static,
) -> (String, Arc<Server>) {
    let server = Arc::new(Server {
        calls: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        bodies: Mutex::new(Vec::new()),
        script: Box::new(script),
    });
    let app =
        Router::new().route("/v1/chat/completions", post(handle)).with_state(Arc::clone(&server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), server)
}

/// A successful chat completion with the given content, logprobs and finish reason.
fn success(content: &str, logprobs: Option<&[f32]>, finish: &str) -> Reply {
    let logprobs = logprobs.map(|values| {
        json!({ "content": values.iter().map(|l| json!({"token": "t", "logprob": l, "top_logprobs": []})).collect::<Vec<_>>() })
    });
    Reply::json(
        200,
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "test-model",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": logprobs,
                "finish_reason": finish,
            }],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        }),
    )
}

/// A config for fast tests: tiny backoff, short timeouts.
fn config(base: &str) -> OpenAiConfig {
    let mut config = OpenAiConfig::new(base, "test-model");
    config.backoff_base = Duration::from_millis(5);
    config.backoff_max = Duration::from_millis(20);
    config.timeout = Duration::from_secs(10);
    config.max_retries = 3;
    config
}

fn request(seed: u64) -> GenerationRequest {
    GenerationRequest {
        messages: vec![
            ChatMessage::system("You summarize."),
            ChatMessage::user("The cat sat on the mat."),
        ],
        max_tokens: 32,
        sampling: SamplingParams { temperature: 0.5, top_p: 0.9, ..SamplingParams::greedy() },
        seed,
    }
}

async fn generate_one(generator: &OpenAiGenerator, seed: u64) -> Result<Completion, InferError> {
    let mut out = generator.generate(vec![request(seed)]).await?;
    Ok(out.remove(0))
}

fn openai_error(result: Result<Completion, InferError>) -> OpenAiError {
    match result {
        Err(InferError::OpenAi(err)) => err,
        Err(other) => panic!("expected an OpenAiError, got {other:?}"),
        Ok(completion) => panic!("expected an error, got {completion:?}"),
    }
}

#[tokio::test]
async fn completes_with_logprobs_usage_and_the_right_request() {
    let (base, server) =
        serve(|_, _, _| success("A cat sat.", Some(&[-0.5, -0.25, -1.0]), "stop")).await;
    let generator = OpenAiGenerator::new(config(&format!("{base}/v1/"))).expect("generator");
    assert_eq!(generator.url(), format!("{base}/v1/chat/completions"));
    let completion = generate_one(&generator, 7).await.expect("completion");
    assert_eq!(completion.text, "A cat sat.");
    assert_eq!(completion.logprobs, vec![-0.5, -0.25, -1.0]);
    assert_eq!(completion.finish, FinishReason::Stop);
    assert_eq!((completion.prompt_tokens, completion.completion_tokens), (12, 3));
    assert!(completion.token_ids.is_empty());
    assert!((completion.mean_logprob().unwrap_or(0.0) + 0.5833).abs() < 1e-3);

    let bodies = server.bodies.lock().expect("bodies").clone();
    let body = &bodies[0];
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["max_tokens"], 32);
    assert_eq!(body["seed"], 7);
    assert_eq!(body["logprobs"], true);
    assert_eq!(body["top_logprobs"], 1);
    assert_eq!(body["stream"], false);
    assert!((body["temperature"].as_f64().unwrap_or(0.0) - 0.5).abs() < 1e-6);
    assert!((body["top_p"].as_f64().unwrap_or(0.0) - 0.9).abs() < 1e-6);
    assert_eq!(body["messages"][0], json!({"role": "system", "content": "You summarize."}));
    assert_eq!(body["messages"][1]["role"], "user");
}

#[tokio::test]
async fn identity_depends_on_endpoint_and_model() {
    let a = OpenAiGenerator::new(OpenAiConfig::new("http://127.0.0.1:1/v1", "m")).expect("a");
    let b = OpenAiGenerator::new(OpenAiConfig::new("http://127.0.0.1:1/", "m")).expect("b");
    let c = OpenAiGenerator::new(OpenAiConfig::new("http://127.0.0.1:1", "n")).expect("c");
    let d = OpenAiGenerator::new(OpenAiConfig::new("http://127.0.0.1:2", "m")).expect("d");
    assert_eq!(a.identity(), b.identity());
    assert_ne!(a.identity().hash, c.identity().hash);
    assert_ne!(a.identity().hash, d.identity().hash);
    assert_eq!(c.identity().name, "n");
    assert_eq!(a.count_tokens("abcdefgh").unwrap(), 2);
    assert!(matches!(
        OpenAiGenerator::new(OpenAiConfig::new("localhost:8000", "m")),
        Err(InferError::OpenAi(OpenAiError::BadEndpoint { .. }))
    ));
}

#[tokio::test]
async fn finish_reasons_map() {
    let (base, _) = serve(|call, _, _| match call {
        0 => success("x", None, "length"),
        1 => {
            let mut reply = success("x", None, "length");
            reply.body = reply.body.replace("\"completion_tokens\":3", "\"completion_tokens\":32");
            reply
        }
        _ => success("x", None, "content_filter"),
    })
    .await;
    let generator = OpenAiGenerator::new(config(&base)).expect("generator");
    // "length" before max_tokens (32) was reached: the context filled up.
    assert_eq!(generate_one(&generator, 0).await.expect("0").finish, FinishReason::ContextFull);
    assert_eq!(generate_one(&generator, 0).await.expect("1").finish, FinishReason::Length);
    let other = generate_one(&generator, 0).await.expect("2");
    assert_eq!(other.finish, FinishReason::Stop);
    assert!(other.logprobs.is_empty() && other.mean_logprob().is_none());
}

#[tokio::test]
async fn many_requests_keep_order_and_respect_concurrency() {
    let (base, server) = serve(|_, body, _| {
        let seed = body["seed"].as_u64().unwrap_or(0);
        let mut reply = success(&format!("seed {seed}"), None, "stop");
        // Later requests answer sooner, so completion order differs from request order.
        reply.delay = Duration::from_millis(80 - 6 * seed.min(12));
        reply
    })
    .await;
    let mut config = config(&base);
    config.concurrency = 3;
    let generator = OpenAiGenerator::new(config).expect("generator");
    let requests: Vec<GenerationRequest> = (0..12).map(request).collect();
    let out = generator.generate(requests).await.expect("completions");
    let texts: Vec<String> = out.into_iter().map(|c| c.text).collect();
    let expected: Vec<String> = (0..12).map(|s| format!("seed {s}")).collect();
    assert_eq!(texts, expected);
    assert_eq!(server.calls.load(Ordering::SeqCst), 12);
    let peak = server.max_in_flight.load(Ordering::SeqCst);
    assert!((2..=3).contains(&peak), "peak in flight {peak}");
}

// Tokio's paused clock: waits are measured in virtual time (deterministic, no wall clock).
#[tokio::test(start_paused = true)]
async fn retries_429_and_honours_retry_after() {
    let (base, server) = serve(|call, _, _| {
        if call == 0 {
            let mut reply = Reply::json(429, json!({"error": {"message": "slow down"}}));
            reply.headers.push(("retry-after", "0.3".into()));
            reply
        } else {
            success("fine", None, "stop")
        }
    })
    .await;
    let generator = OpenAiGenerator::new(config(&base)).expect("generator");
    let start = Instant::now();
    let completion = generate_one(&generator, 1).await.expect("completion after a retry");
    assert_eq!(completion.text, "fine");
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);
    assert!(start.elapsed() >= Duration::from_millis(300), "waited {:?}", start.elapsed());
}

#[tokio::test]
async fn too_long_retry_after_fails_at_once() {
    let (base, server) = serve(|_, _, _| {
        let mut reply = Reply::json(429, json!({"error": "quota exceeded"}));
        reply.headers.push(("retry-after", "3600".into()));
        reply
    })
    .await;
    let generator = OpenAiGenerator::new(config(&base)).expect("generator");
    let err = openai_error(generate_one(&generator, 1).await);
    assert!(matches!(err, OpenAiError::GaveUp { attempts: 1, .. }), "{err}");
    assert!(err.to_string().contains("quota exceeded"), "{err}");
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn server_errors_exhaust_the_retries() {
    let (base, server) =
        serve(|_, _, _| Reply::json(500, json!({"error": {"message": "boom"}}))).await;
    let mut config = config(&base);
    config.max_retries = 2;
    let generator = OpenAiGenerator::new(config).expect("generator");
    let err = openai_error(generate_one(&generator, 1).await);
    match &err {
        OpenAiError::GaveUp { attempts, last } => {
            assert_eq!(*attempts, 3);
            assert!(matches!(**last, OpenAiError::Status { status: 500, .. }), "{last}");
        }
        other => panic!("expected GaveUp, got {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("500") && message.contains("boom"), "{message}");
    assert_eq!(server.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn non_json_reply_is_malformed_and_not_retried() {
    let (base, server) = serve(|_, _, _| Reply {
        status: 200,
        headers: vec![("content-type", "text/html".into())],
        body: "<html>oops, a proxy page</html>".into(),
        delay: Duration::ZERO,
    })
    .await;
    let generator = OpenAiGenerator::new(config(&base)).expect("generator");
    let err = openai_error(generate_one(&generator, 1).await);
    assert!(matches!(err, OpenAiError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("oops, a proxy page"), "{err}");
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn wrong_shaped_json_is_malformed() {
    let (base, _) = serve(|call, _, _| match call {
        0 => Reply::json(200, json!({"result": "hello"})),
        1 => Reply::json(200, json!({"choices": []})),
        _ => Reply::json(200, json!({"choices": [{"index": 0, "finish_reason": "stop"}]})),
    })
    .await;
    let generator = OpenAiGenerator::new(config(&base)).expect("generator");
    for expected in ["choices", "no choices", "neither a message nor text"] {
        let err = openai_error(generate_one(&generator, 1).await);
        assert!(matches!(err, OpenAiError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[tokio::test]
async fn client_errors_quote_the_server_and_are_not_retried() {
    let (base, server) = serve(|_, _, _| {
        Reply::json(404, json!({"error": {"message": "The model `test-model` does not exist."}}))
    })
    .await;
    let generator = OpenAiGenerator::new(config(&base)).expect("generator");
    let err = openai_error(generate_one(&generator, 1).await);
    assert!(matches!(err, OpenAiError::Status { status: 404, .. }), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
}

// Tokio's paused clock: waits are measured in virtual time (deterministic, no wall clock).
#[tokio::test(start_paused = true)]
async fn connection_refused_is_reported_at_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    let generator = OpenAiGenerator::new(config(&format!("http://{addr}"))).expect("generator");
    let start = Instant::now();
    let err = openai_error(generate_one(&generator, 1).await);
    assert!(matches!(err, OpenAiError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
}

// Tokio's paused clock: waits are measured in virtual time (deterministic, no wall clock).
#[tokio::test(start_paused = true)]
async fn slow_server_times_out() {
    let (base, server) = serve(|_, _, _| {
        let mut reply = success("late", None, "stop");
        reply.delay = Duration::from_secs(5);
        reply
    })
    .await;
    let mut config = config(&base);
    config.timeout = Duration::from_millis(200);
    config.max_retries = 1;
    let generator = OpenAiGenerator::new(config).expect("generator");
    let start = Instant::now();
    let err = openai_error(generate_one(&generator, 1).await);
    match &err {
        OpenAiError::GaveUp { attempts: 2, last } => {
            assert!(matches!(**last, OpenAiError::Timeout { .. }), "{last}");
        }
        other => panic!("expected GaveUp after a timeout, got {other}"),
    }
    assert!(err.to_string().contains("did not reply within 0.2 s"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connection_resets_are_retried() {
    // A server that accepts each connection and closes it without a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    let mut config = config(&format!("http://{addr}"));
    config.max_retries = 2;
    let generator = OpenAiGenerator::new(config).expect("generator");
    let err = openai_error(generate_one(&generator, 1).await);
    match &err {
        OpenAiError::GaveUp { attempts: 3, last } => {
            assert!(matches!(**last, OpenAiError::Transport { .. }), "{last}");
        }
        other => panic!("expected GaveUp after resets, got {other}"),
    }
    assert!(accepted.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn servers_that_reject_logprobs_are_asked_without_them() {
    let (base, server) = serve(|_, body, _| {
        if body.get("logprobs").is_some() {
            Reply::json(400, json!({"error": {"message": "logprobs is not supported"}}))
        } else {
            success("no logprobs here", None, "stop")
        }
    })
    .await;
    let generator = OpenAiGenerator::new(config(&base)).expect("generator");
    let first = generate_one(&generator, 1).await.expect("first");
    assert_eq!(first.text, "no logprobs here");
    assert!(first.logprobs.is_empty());
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);
    generate_one(&generator, 2).await.expect("second");
    assert_eq!(server.calls.load(Ordering::SeqCst), 3, "logprobs stay off once rejected");
}

#[tokio::test]
async fn api_key_is_sent_as_a_bearer_token() {
    // An environment variable every process has: setting one here could race other threads that
    // read the environment.
    let var = "PATH";
    let key = std::env::var(var).expect("PATH is set").trim().to_string();
    let expected = format!("Bearer {key}");
    let (base, _) = serve(move |_, _, headers| {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        if auth == expected {
            success("authorized", None, "stop")
        } else {
            Reply::json(401, json!({"error": {"message": "invalid api key"}}))
        }
    })
    .await;
    let mut with_key = config(&base);
    with_key.api_key_env = Some(var.into());
    let generator = OpenAiGenerator::new(with_key).expect("generator");
    assert_eq!(generate_one(&generator, 1).await.expect("completion").text, "authorized");
    assert!(!format!("{generator:?}").contains(&key), "Debug must not print the key");

    let without = OpenAiGenerator::new(config(&base)).expect("generator");
    let err = openai_error(generate_one(&without, 1).await);
    assert!(matches!(err, OpenAiError::Status { status: 401, .. }), "{err}");

    let mut unset = config(&base);
    unset.api_key_env = Some("RRM_TEST_OPENAI_KEY_UNSET_9C1D".into());
    match OpenAiGenerator::new(unset) {
        Err(InferError::OpenAi(OpenAiError::MissingApiKey { var })) => {
            assert_eq!(var, "RRM_TEST_OPENAI_KEY_UNSET_9C1D");
        }
        other => panic!("expected MissingApiKey, got {other:?}"),
    }
}

// ---- Several endpoints (replicas of one model) ----

/// A base URL where nothing listens.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{addr}")
}

/// A config over several endpoints for fast tests.
fn replicas(bases: &[&str]) -> OpenAiConfig {
    let mut config = config(bases[0]);
    config.endpoints = bases.iter().map(|b| b.to_string()).collect();
    config
}

/// Every text of `out`, which must be `seed N` for request N.
fn assert_in_order(out: Vec<Completion>, n: u64) {
    let texts: Vec<String> = out.into_iter().map(|c| c.text).collect();
    let expected: Vec<String> = (0..n).map(|s| format!("seed {s}")).collect();
    assert_eq!(texts, expected);
}

fn echo_seed(delay: Duration) -> impl Fn(usize, &Value, &HeaderMap) -> Reply {
    move |_, body, _| {
        let seed = body["seed"].as_u64().unwrap_or(0);
        let mut reply = success(&format!("seed {seed}"), None, "stop");
        reply.delay = delay;
        reply
    }
}

#[tokio::test]
async fn replicas_share_the_work_within_their_slots() {
    let (a, server_a) = serve(echo_seed(Duration::from_millis(30))).await;
    let (b, server_b) = serve(echo_seed(Duration::from_millis(30))).await;
    let mut config = replicas(&[&a, &b]);
    config.concurrency = 2;
    let generator = OpenAiGenerator::new(config).expect("generator");
    assert_eq!(generator.urls().len(), 2);
    let out = generator.generate((0..16).map(request).collect()).await.expect("completions");
    assert_in_order(out, 16);
    let (calls_a, calls_b) =
        (server_a.calls.load(Ordering::SeqCst), server_b.calls.load(Ordering::SeqCst));
    assert_eq!(calls_a + calls_b, 16);
    assert!(calls_a >= 4 && calls_b >= 4, "uneven split {calls_a}/{calls_b}");
    assert!(server_a.max_in_flight.load(Ordering::SeqCst) <= 2);
    assert!(server_b.max_in_flight.load(Ordering::SeqCst) <= 2);
    let stats = generator.endpoint_stats();
    assert_eq!(stats.iter().map(|s| s.completed).sum::<u64>(), 16);
    assert!(stats.iter().all(|s| s.failed == 0 && s.in_flight == 0));
}

#[tokio::test]
async fn a_dead_replica_is_left_alone_and_its_requests_move() {
    let dead = dead_endpoint();
    let (live, server) = serve(echo_seed(Duration::from_millis(5))).await;
    let mut config = replicas(&[&dead, &live]);
    config.concurrency = 4;
    config.backoff_base = Duration::from_millis(200);
    config.backoff_max = Duration::from_secs(2);
    let generator = OpenAiGenerator::new(config).expect("generator");
    let out = generator.generate((0..12).map(request).collect()).await.expect("completions");
    assert_in_order(out, 12);
    assert_eq!(server.calls.load(Ordering::SeqCst), 12);
    let stats = generator.endpoint_stats();
    assert_eq!(stats[0].completed, 0);
    // Refused by the requests sent before the first refusal was known (at most its 4 slots),
    // then out of rotation (half-open: one try per backoff).
    assert!((1..=6).contains(&stats[0].failed), "{stats:?}");
    assert_eq!(stats[1].completed, 12);
}

#[tokio::test]
async fn a_replica_that_dies_mid_run_loses_nothing() {
    // The first replica answers its first three calls, then every later one fails as a killed
    // server behind a proxy would (503), and its requests move to the second.
    let (a, server_a) = serve(|call, body, _| {
        if call < 3 {
            echo_seed(Duration::from_millis(20))(call, body, &HeaderMap::new())
        } else {
            Reply::json(503, json!({"error": {"message": "upstream is gone"}}))
        }
    })
    .await;
    let (b, server_b) = serve(echo_seed(Duration::from_millis(20))).await;
    let mut config = replicas(&[&a, &b]);
    config.concurrency = 2;
    config.max_retries = 2;
    config.backoff_base = Duration::from_millis(50);
    config.backoff_max = Duration::from_secs(1);
    let generator = OpenAiGenerator::new(config).expect("generator");
    let out = generator.generate((0..20).map(request).collect()).await.expect("completions");
    assert_in_order(out, 20);
    let stats = generator.endpoint_stats();
    assert!(stats[0].completed <= 3, "{stats:?}");
    assert_eq!(stats[0].completed + stats[1].completed, 20, "{stats:?}");
    assert!(server_a.calls.load(Ordering::SeqCst) < 12, "the dead replica kept getting work");
    assert!(server_b.calls.load(Ordering::SeqCst) >= 17);
}

#[tokio::test]
async fn a_late_reply_is_hedged_at_another_replica() {
    // The first replica answers its first four calls at once, then hangs for a minute.
    let (a, _) = serve(|call, body, _| {
        let delay = if call < 4 { Duration::ZERO } else { Duration::from_secs(60) };
        echo_seed(delay)(call, body, &HeaderMap::new())
    })
    .await;
    let (b, _) = serve(echo_seed(Duration::from_millis(10))).await;
    let mut config = replicas(&[&a, &b]);
    config.concurrency = 1;
    config.hedge_min = Duration::from_millis(200);
    let generator = OpenAiGenerator::new(config).expect("generator");
    // Learn the pace from quick replies at both replicas (one request at a time, so the
    // rotation alternates between them and the first replica answers four of them).
    for seed in 0..8 {
        generate_one(&generator, seed).await.expect("warm-up");
    }
    let start = Instant::now();
    let out = generator.generate((0..6).map(request).collect()).await.expect("completions");
    assert_in_order(out, 6);
    assert!(start.elapsed() < Duration::from_secs(20), "waited for the hung replica");
    let stats = generator.endpoint_stats();
    assert!(stats[0].hedged >= 1, "{stats:?}");
}

#[tokio::test]
async fn no_reachable_replica_is_a_clear_error() {
    let (a, b) = (dead_endpoint(), dead_endpoint());
    let generator = OpenAiGenerator::new(replicas(&[&a, &b])).expect("generator");
    let err = openai_error(generate_one(&generator, 1).await);
    assert!(matches!(err, OpenAiError::NoneReachable { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&a) && text.contains(&b), "{text}");
}

#[tokio::test]
async fn replica_identity_ignores_order_and_duplicates() {
    let one = OpenAiGenerator::new(OpenAiConfig::new("http://127.0.0.1:1", "m")).expect("one");
    let ab = OpenAiConfig::replicas(
        vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2/v1".into()],
        "m",
    );
    let ba = OpenAiConfig::replicas(
        vec![
            "http://127.0.0.1:2".into(),
            "http://127.0.0.1:1/".into(),
            "http://127.0.0.1:2".into(),
        ],
        "m",
    );
    let ab = OpenAiGenerator::new(ab).expect("ab");
    let ba = OpenAiGenerator::new(ba).expect("ba");
    assert_eq!(ab.identity(), ba.identity());
    assert_ne!(ab.identity().hash, one.identity().hash);
    assert_eq!(ba.urls().len(), 2, "duplicates are dropped");
    assert!(matches!(
        OpenAiGenerator::new(OpenAiConfig::replicas(Vec::new(), "m")),
        Err(InferError::OpenAi(OpenAiError::NoEndpoints))
    ));
    assert!(matches!(
        OpenAiGenerator::new(OpenAiConfig::replicas(vec!["http://a".into(), "b:1".into()], "m")),
        Err(InferError::OpenAi(OpenAiError::BadEndpoint { endpoint })) if endpoint == "b:1"
    ));
}
