//! The JSON API under `/api/`: everything the pages do, for scripts and other front ends. Trees
//! and nodes come in the shapes `rrm tree show --json` and `rrm node show --json` print, queue
//! items as `rrm feedback queue --json`, records as `rrm feedback list --json`, exports as
//! `rrm feedback export`. Errors are `{"error": message}` with a 4xx/5xx status.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::answers::{self, Answer};
use super::ask::{self as asking, AskParams, Reply};
use super::auth::Identity;
use super::views::CandidateView;
use super::{blocking, jobs, json_failure, Failure, Shared};
use crate::feedback::{self, io, stats};
use crate::workspace::{corrections, overview, views};

/// A failure answered as JSON.
pub struct ApiError(pub Failure);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_failure(&self.0)
    }
}

impl<E: Into<Failure>> From<E> for ApiError {
    fn from(e: E) -> ApiError {
        ApiError(e.into())
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Failure> {
    q.map(|Query(t)| t).map_err(|e| Failure::new(e.status(), e.body_text()))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Failure> {
    b.map(|Json(t)| t).map_err(|e| Failure::new(e.status(), e.body_text()))
}

pub async fn not_found() -> ApiError {
    ApiError(Failure::not_found("no such API endpoint (see the README for /api/)"))
}

pub async fn me(State(state): State<Shared>, Extension(who): Extension<Identity>) -> ApiResult {
    ok(json!({
        "labeler": who.labeler,
        "tokens_required": state.tokens_required,
        "overlap": state.config.overlap,
        "auto_advance": state.config.auto_advance,
    }))
}

pub async fn books(State(state): State<Shared>, Extension(who): Extension<Identity>) -> ApiResult {
    let labeler = who.labeler()?.to_string();
    let books = blocking(move || {
        let items = state.queue.items(Some(&labeler), state.config.overlap);
        Ok(overview::books(&state.ws, &state.queue.records(), &items)?)
    })
    .await?;
    ok(json!(books))
}

pub async fn tree(State(state): State<Shared>, Path(book): Path<String>) -> ApiResult {
    let value = blocking(move || {
        let id = state.book_id(&book)?;
        let loaded = state.tree(&id)?;
        let records = state.queue.records();
        let scorer = state.scorer();
        let model = scorer.as_ref().map(|s| (s.model.as_ref(), s.encoder.as_ref()));
        let root = overview::tree_nodes(&state.ws, &loaded, &records, model)?;
        Ok(json!({ "tree": views::tree_header_json(&loaded), "root": root }))
    })
    .await?;
    ok(value)
}

#[derive(Debug, Deserialize)]
pub struct BookQuery {
    pub book: Option<String>,
}

pub async fn node(
    State(state): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<BookQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let value = blocking(move || {
        let (book_id, label) = state.find_node(&id, q.book.as_deref())?;
        let loaded = state.tree(&book_id)?;
        let nid = loaded.node_id(&label)?;
        let tree = &loaded.tree;
        let mut value = views::node_json(tree, nid, loaded.book.as_ref(), true);
        value["book"] = json!({ "id": tree.book_id(), "title": tree.book_title() });
        if let Some(run) = &loaded.run {
            if let Some((output, candidates)) = run.node_result(state.ws.store(), &label)? {
                value["result"] = json!({ "output": output, "candidates": candidates });
            }
        }
        if let Ok(target) = answers::target(&state, &book_id, &label) {
            let cands = answers::candidates(&state, &target)?;
            value["input"] = json!(target.input.input);
            value["input_key"] = json!(target.input.input_key);
            value["stored_candidates"] =
                json!(cands.iter().map(CandidateView::of).collect::<Vec<_>>());
        }
        Ok(value)
    })
    .await?;
    ok(value)
}

pub async fn candidates(
    State(state): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<BookQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let value = blocking(move || {
        let (book_id, label) = state.find_node(&id, q.book.as_deref())?;
        let target = answers::target(&state, &book_id, &label)?;
        let cands = answers::candidates(&state, &target)?;
        Ok(json!(cands.iter().map(CandidateView::of).collect::<Vec<_>>()))
    })
    .await?;
    ok(value)
}

#[derive(Debug, Deserialize)]
pub struct DrawQuery {
    pub book: Option<String>,
    pub k: Option<usize>,
}

pub async fn draw(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
    q: Result<Query<DrawQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let labeler = who.labeler()?.to_string();
    let k = q.k.unwrap_or(2);
    if k == 0 || k > 16 {
        return Err(Failure::bad_request(format!("k must be from 1 to 16 (got {k})")).into());
    }
    let s = state.clone();
    let (book_id, label) = blocking(move || s.find_node(&id, q.book.as_deref())).await?;
    let job = jobs::draw(&state, &labeler, &book_id, &label, k);
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": job }))).into_response())
}

/// `POST /api/books/{book}/summarize[?ask=1&best_of=2&budget=N&threshold=T&order=ranked|arrival]`.
pub async fn summarize(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path(book): Path<String>,
    q: Result<Query<AskParams>, QueryRejection>,
) -> ApiResult {
    let labeler = who.labeler()?.to_string();
    let ask = query(q)?.settings()?;
    let s = state.clone();
    let book_id = blocking(move || s.book_id(&book)).await?;
    let job = jobs::summarize_book(&state, &labeler, &book_id, ask);
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": job }))).into_response())
}

pub async fn train(State(state): State<Shared>, Extension(who): Extension<Identity>) -> ApiResult {
    let job = jobs::train(&state, who.labeler()?);
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": job }))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct QueueQuery {
    /// How many items (default 20).
    pub n: Option<usize>,
    /// `true`: the queue for everyone, not only for the asking labeler.
    pub all: Option<bool>,
}

pub async fn queue(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    q: Result<Query<QueueQuery>, QueueRejection>,
) -> ApiResult {
    let q = query(q)?;
    let labeler = who.labeler()?.to_string();
    let items = blocking(move || {
        let who = if q.all.unwrap_or(false) { None } else { Some(labeler.as_str()) };
        Ok(state.queue.items(who, state.config.overlap))
    })
    .await?;
    ok(json!(items.into_iter().take(q.n.unwrap_or(20)).collect::<Vec<_>>()))
}

type QueueRejection = QueryRejection;

/// The next item for the asking labeler, reserved for them: the item, both candidates (in the
/// order to show them) and the page's address. `{"item": null}` when the queue is empty.
pub async fn next(State(state): State<Shared>, Extension(who): Extension<Identity>) -> ApiResult {
    let labeler = who.labeler()?.to_string();
    let value = blocking(move || {
        // The texts come from the same snapshot as the hashes they are named by.
        let next = state.queue.next(&labeler, state.config.overlap, &who.skipped);
        let Some(super::queue::Next { item, a_text, b_text }) = next else {
            return Ok(json!({ "item": null }));
        };
        let (book, node) =
            (item.book.clone().unwrap_or_default(), item.node.clone().unwrap_or_default());
        let a_first = super::views::blind_order(&labeler, &item.a_hash, &item.b_hash);
        let (first, second) = if a_first {
            ((item.a_hash.clone(), a_text), (item.b_hash.clone(), b_text))
        } else {
            ((item.b_hash.clone(), b_text), (item.a_hash.clone(), a_text))
        };
        Ok(json!({
            "item": item,
            "book": book,
            "node": node,
            "a": { "hash": first.0, "text": first.1 },
            "b": { "hash": second.0, "text": second.1 },
            "url": format!("/books/{book}/nodes/{node}?a={}&b={}", first.0, second.0),
        }))
    })
    .await?;
    ok(value)
}

#[derive(Debug, Deserialize)]
pub struct FeedbackQuery {
    pub labeler: Option<String>,
    pub kind: Option<String>,
}

pub async fn feedback_list(
    State(state): State<Shared>,
    q: Result<Query<FeedbackQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let value = blocking(move || {
        let records = state.queue.records();
        let picked: Vec<&feedback::Feedback> = records
            .iter()
            .filter(|f| q.kind.as_deref().is_none_or(|k| f.kind.name() == k))
            .filter(|f| q.labeler.as_deref().is_none_or(|l| f.labeler == l))
            .collect();
        Ok(json!(picked))
    })
    .await?;
    ok(value)
}

/// `POST /api/feedback`: `{"book": ID, "node": LABEL, "kind": …, …}` (see [`Answer`]).
#[derive(Debug, Deserialize)]
pub struct FeedbackRequest {
    pub book: String,
    pub node: String,
    #[serde(flatten)]
    pub answer: Answer,
    /// Milliseconds from the item shown to the answer, when the client measured it.
    #[serde(default)]
    pub judge_ms: Option<u64>,
}

pub async fn feedback_post(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    b: Result<Json<FeedbackRequest>, JsonRejection>,
) -> ApiResult {
    let req = body(b)?;
    let labeler = who.labeler()?.to_string();
    let fb = blocking(move || {
        let book = state.book_id(&req.book)?;
        answers::store(&state, &labeler, &book, &req.node, &req.answer, req.judge_ms)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": fb.id, "kind": fb.kind.name(), "record": fb })))
        .into_response())
}

pub async fn progress(State(state): State<Shared>) -> ApiResult {
    let value = blocking(move || {
        let records = state.queue.records();
        Ok(json!({
            "progress": stats::progress_all(&records, &feedback::decomp::all(state.ws.store())?),
            "agreement": feedback::agreement(&records),
            "by_height": stats::agreement_by_height(&records),
        }))
    })
    .await?;
    ok(value)
}

#[derive(Debug, Deserialize)]
pub struct ExportQuery {
    pub format: Option<String>,
}

/// The same files as `rrm feedback export [--format trl]`.
pub async fn export(
    State(state): State<Shared>,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let format = q.format.unwrap_or_else(|| "jsonl".into());
    let bytes = blocking(move || {
        let records = feedback::all(state.ws.store())?;
        let mut buf = Vec::new();
        let written = match format.as_str() {
            "jsonl" => io::write_jsonl_all(
                &mut buf,
                &records,
                &corrections::all(&state.ws)?,
                &feedback::decomp::all(state.ws.store())?,
            ),
            "trl" => io::write_trl(&mut buf, &records),
            other => {
                return Err(Failure::bad_request(format!(
                    "unknown export format '{}' (jsonl or trl)",
                    other.chars().take(20).collect::<String>()
                )))
            }
        };
        written.map_err(|e| Failure::internal(format!("writing the export: {e}")))?;
        Ok((buf, format))
    })
    .await?;
    let (buf, format) = bytes;
    let name = if format == "trl" { "feedback-trl.jsonl" } else { "feedback.jsonl" };
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        buf,
    )
        .into_response())
}

pub async fn jobs(State(state): State<Shared>) -> ApiResult {
    ok(json!(state.jobs.all()))
}

/// `POST /api/jobs/{id}/cancel`: the job stops at its next step; what it finished stays stored.
pub async fn cancel_job(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult {
    who.labeler()?;
    let job = state.jobs.cancel_named(&id)?;
    Ok((StatusCode::ACCEPTED, Json(json!(job))).into_response())
}

pub async fn job(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let job = id.parse::<u64>().ok().and_then(|id| state.jobs.get(id));
    match job {
        Some(job) => ok(json!(job)),
        None => Err(Failure::not_found(format!(
            "no job '{}' (see /api/jobs)",
            id.chars().take(20).collect::<String>()
        ))
        .into()),
    }
}

/// `GET /api/asks`: the questions running `summarize --ask` jobs wait on, oldest first.
pub async fn asks(State(state): State<Shared>, Extension(who): Extension<Identity>) -> ApiResult {
    who.labeler()?;
    ok(json!({ "asks": state.asks.all() }))
}

/// The answer to a question: the pair as shown and a preference, or `{"skip": true}`.
#[derive(Debug, Deserialize)]
pub struct AskAnswer {
    #[serde(default)]
    pub a: String,
    #[serde(default)]
    pub b: String,
    pub prefer: Option<feedback::Preference>,
    pub confidence: Option<u8>,
    #[serde(default)]
    pub skip: bool,
}

/// `POST /api/asks/{id}`: answers a question (stored and flushed, then the job goes on).
pub async fn ask_answer(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
    b: Result<Json<AskAnswer>, JsonRejection>,
) -> ApiResult {
    let labeler = who.labeler()?.to_string();
    let id: u64 = id.parse().map_err(|_| {
        Failure::not_found(format!("no question '{}'", id.chars().take(30).collect::<String>()))
    })?;
    let a = body(b)?;
    let reply = if a.skip {
        Reply::Skip
    } else {
        let prefer =
            a.prefer.ok_or_else(|| Failure::bad_request("give prefer (a, b or tie) or skip"))?;
        Reply::Prefer { prefer, confidence: a.confidence.unwrap_or(5), judge_ms: None }
    };
    let s = state.clone();
    let stored = blocking(move || asking::answer(&s, id, &labeler, &a.a, &a.b, reply)).await?;
    let status = if stored.is_some() { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({ "id": stored.as_ref().map(|f| f.id.clone()), "record": stored })))
        .into_response())
}
