//! The HTML pages: books, a book's tree, the rating screen, the next item, progress and
//! agreement, jobs, sign-in. Server-rendered with minijinja (auto-escaping on: every book and
//! model text is escaped); the client script (`static/app.js`) adds the keyboard. Every form
//! carries the session's CSRF token.

use std::collections::HashSet;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;
use serde_json::{json, Value};

use super::answers::{self, AnswerForm};
use super::ask::{self as asking, AskParams, Reply};
use super::auth::{pair_key, set_cookie, Identity};
use super::jobs::{self, JobState};
use super::report::{self, Served};
use super::views::{self, CandidateView};
use super::{blocking, Failure, Shared};
use crate::feedback::{self, stats, ComparedPairs};
use crate::workspace::{labelers, overview};

const BASE: &str = include_str!("templates/base.html");
const BOOKS: &str = include_str!("templates/books.html");
const TREE: &str = include_str!("templates/tree.html");
const NODE: &str = include_str!("templates/node.html");
const EMPTY: &str = include_str!("templates/empty.html");
const PROGRESS: &str = include_str!("templates/progress.html");
const JOBS: &str = include_str!("templates/jobs.html");
const LOGIN: &str = include_str!("templates/login.html");
const ERROR: &str = include_str!("templates/error.html");
const ASK: &str = include_str!("templates/ask.html");
const DECOMPOSITIONS: &str = include_str!("templates/decompositions.html");
const REPORT: &str = include_str!("templates/report.html");
const SCRIPT: &str = include_str!("static/app.js");
const STYLE: &str = include_str!("static/app.css");

/// The templates (names end in `.html`, so minijinja escapes every value).
pub fn templates() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    for (name, source) in [
        ("base.html", BASE),
        ("books.html", BOOKS),
        ("tree.html", TREE),
        ("node.html", NODE),
        ("empty.html", EMPTY),
        ("progress.html", PROGRESS),
        ("jobs.html", JOBS),
        ("login.html", LOGIN),
        ("error.html", ERROR),
        ("ask.html", ASK),
        ("decompositions.html", DECOMPOSITIONS),
        ("report.html", REPORT),
    ] {
        if let Err(err) = env.add_template(name, source) {
            tracing::error!("template {name}: {err}");
        }
    }
    env
}

/// A failure answered as a page.
pub struct PageError(pub Failure);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let env = templates();
        let body = env
            .get_template("error.html")
            .and_then(|t| {
                t.render(json!({
                    "status": self.0.status.as_u16(),
                    "reason": self.0.status.canonical_reason().unwrap_or(""),
                    "message": self.0.message,
                    "page": "error",
                }))
            })
            .unwrap_or_else(|_| "error".to_string());
        (self.0.status, Html(body)).into_response()
    }
}

impl<E: Into<Failure>> From<E> for PageError {
    fn from(e: E) -> PageError {
        PageError(e.into())
    }
}

pub(super) type PageResult = Result<Response, PageError>;

/// Renders `name` with `ctx` plus what every page shows (who, CSRF token, running jobs).
pub(super) fn render(state: &Shared, who: &Identity, name: &str, mut ctx: Value) -> PageResult {
    if let Some(obj) = ctx.as_object_mut() {
        obj.insert("me".into(), json!(who.labeler));
        obj.insert("csrf".into(), json!(who.csrf));
        obj.insert("tokens_required".into(), json!(state.tokens_required));
        obj.insert("auto_advance".into(), json!(state.config.auto_advance));
        obj.insert("running_jobs".into(), json!(state.jobs.running()));
    }
    let html = state
        .templates
        .get_template(name)
        .and_then(|t| t.render(&ctx))
        .map_err(|e| Failure::internal(format!("rendering {name}: {e}")))?;
    Ok(Html(html).into_response())
}

pub(super) fn form<T>(f: Result<Form<T>, FormRejection>) -> Result<T, Failure> {
    f.map(|Form(t)| t).map_err(|e| Failure::new(e.status(), e.body_text()))
}

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Failure> {
    q.map(|Query(t)| t).map_err(|e| Failure::new(e.status(), e.body_text()))
}

pub(super) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

pub async fn not_found() -> PageError {
    PageError(Failure::not_found("there is no such page"))
}

pub async fn script() -> Response {
    static_file(SCRIPT, "text/javascript; charset=utf-8")
}

pub async fn style() -> Response {
    static_file(STYLE, "text/css; charset=utf-8")
}

fn static_file(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

// --- sign-in ---

pub async fn login_form(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
) -> PageResult {
    render(&state, &who, "login.html", json!({ "page": "login", "error": null }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LoginForm {
    pub csrf: String,
    pub token: String,
}

pub async fn login(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    f: Result<Form<LoginForm>, FormRejection>,
) -> PageResult {
    let f = form(f)?;
    who.check_csrf(&f.csrf)?;
    let ws = state.ws.clone();
    let token = f.token.clone();
    let found = blocking(move || Ok(labelers::authenticate(&ws, &token)?)).await?;
    let Some(labeler) = found else {
        let mut page = render(
            &state,
            &who,
            "login.html",
            json!({ "page": "login", "error": "That token does not belong to any labeler." }),
        )?;
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(page);
    };
    // A new session id on sign-in (no fixation).
    if let Some(old) = &who.session {
        state.sessions.remove(old);
    }
    let id = state.sessions.create(Some(labeler.name));
    let mut r = see_other("/");
    r.headers_mut().append(header::SET_COOKIE, set_cookie(Some(&id)));
    Ok(r)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrfForm {
    pub csrf: String,
}

pub async fn logout(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    f: Result<Form<CsrfForm>, FormRejection>,
) -> PageResult {
    who.check_csrf(&form(f)?.csrf)?;
    if let Some(id) = &who.session {
        state.sessions.remove(id);
    }
    let mut r = see_other("/login");
    r.headers_mut().append(header::SET_COOKIE, set_cookie(None));
    Ok(r)
}

// --- books and trees ---

pub async fn books(State(state): State<Shared>, Extension(who): Extension<Identity>) -> PageResult {
    let labeler = who.labeler()?.to_string();
    let s = state.clone();
    let books = blocking(move || {
        let items = s.queue.items(Some(&labeler), s.config.overlap);
        Ok(overview::books(&s.ws, &s.queue.records(), &items)?)
    })
    .await?;
    render(&state, &who, "books.html", json!({ "page": "books", "books": books }))
}

pub async fn tree(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path(book): Path<String>,
) -> PageResult {
    let s = state.clone();
    let (header, root) = blocking(move || {
        let id = s.book_id(&book)?;
        let loaded = s.tree(&id)?;
        let records = s.queue.records();
        let scorer = s.scorer();
        let model = scorer.as_ref().map(|m| (m.model.as_ref(), m.encoder.as_ref()));
        let root = overview::tree_nodes(&s.ws, &loaded, &records, model)?;
        Ok((crate::workspace::views::tree_header_json(&loaded), root))
    })
    .await?;
    render(&state, &who, "tree.html", json!({ "page": "tree", "tree": header, "root": root }))
}

// --- the rating screen ---

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NodeQuery {
    pub a: Option<String>,
    pub b: Option<String>,
    pub job: Option<String>,
    /// The kind of answer just stored (a notice).
    pub done: Option<String>,
}

fn stored_notice(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "comparison" => "Comparison stored.",
        "likert" => "Likert ratings stored.",
        "demonstration" => "Your summary is stored.",
        "correction" => "Your edit is stored.",
        "critique" => "Critique stored.",
        "skipped" => "Skipped.",
        _ => return None,
    })
}

pub async fn node(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path((book, label)): Path<(String, String)>,
    q: Result<Query<NodeQuery>, QueryRejection>,
) -> PageResult {
    let q = query(q)?;
    let labeler = who.labeler()?.to_string();
    let s = state.clone();
    let ctx = blocking(move || {
        let book_id = s.book_id(&book)?;
        let target = answers::target(&s, &book_id, &label)?;
        let cands = answers::candidates(&s, &target)?;
        let view = views::node_view(&s.ws, &target, cands.len());
        let find = |h: &Option<String>| {
            h.as_deref().and_then(|h| cands.iter().position(|c| c.hash == h))
        };
        // The pair: as asked (from /next), else this labeler's first open pair of the node.
        let mut compared_all = false;
        let pair = match (find(&q.a), find(&q.b)) {
            (Some(i), Some(j)) if i != j => Some((i, j)),
            _ if cands.len() >= 2 => {
                let hashes: Vec<String> = cands.iter().map(|c| c.hash.clone()).collect();
                let records = s.queue.records();
                let open = ComparedPairs::from_records(&records).open_pairs(
                    &target.input.input_key,
                    &hashes,
                    Some(&labeler),
                    None,
                );
                let (i, j) = open.first().copied().unwrap_or_else(|| {
                    compared_all = true;
                    (0, 1)
                });
                if views::blind_order(&labeler, &cands[i].hash, &cands[j].hash) {
                    Some((i, j))
                } else {
                    Some((j, i))
                }
            }
            _ => None,
        };
        let job = q.job.as_deref().and_then(|j| j.parse::<u64>().ok()).and_then(|j| s.jobs.get(j));
        let drawing = job.as_ref().is_some_and(|j| j.state == JobState::Running);
        Ok(json!({
            "page": "node",
            "node": view,
            "pair": pair.map(|(i, j)| {
                let source = crate::grounding::Source::new(&view.input);
                vec![CandidateView::checked(&cands[i], &source), CandidateView::checked(&cands[j], &source)]
            }),
            "compared_all": compared_all,
            "job": job,
            "drawing": drawing,
            "notice": q.done.as_deref().and_then(stored_notice),
        }))
    })
    .await?;
    render(&state, &who, "node.html", ctx)
}

pub async fn answer(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path((book, label)): Path<(String, String)>,
    f: Result<Form<AnswerForm>, FormRejection>,
) -> PageResult {
    let f = form(f)?;
    who.check_csrf(&f.csrf)?;
    let f = f.checked()?;
    let labeler = who.labeler()?.to_string();
    let answer = f.answer()?;
    let judge_ms = f.judge_ms()?;
    let s = state.clone();
    let (book_id, fb) = blocking(move || {
        let book_id = s.book_id(&book)?;
        let fb = answers::store(&s, &labeler, &book_id, &label, &answer, judge_ms)?;
        Ok((book_id, fb))
    })
    .await?;
    let node = fb.node.clone().unwrap_or_default();
    let here = format!("/books/{book_id}/nodes/{node}");
    Ok(match fb.kind.name() {
        "comparison" if f.advance == "1" => see_other("/next"),
        "comparison" => see_other(&format!("{here}?done=comparison")),
        kind => see_other(&format!("{here}?a={}&b={}&done={kind}", f.a, f.b)),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SkipForm {
    pub csrf: String,
    pub a: String,
    pub b: String,
}

pub async fn skip(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path((book, label)): Path<(String, String)>,
    f: Result<Form<SkipForm>, FormRejection>,
) -> PageResult {
    let f = form(f)?;
    who.check_csrf(&f.csrf)?;
    let labeler = who.labeler()?.to_string();
    let s = state.clone();
    let input_key = blocking(move || {
        let book_id = s.book_id(&book)?;
        Ok(answers::target(&s, &book_id, &label)?.input.input_key)
    })
    .await?;
    if let Some(session) = &who.session {
        state.sessions.skip(session, pair_key(&input_key, &f.a, &f.b));
    }
    state.queue.release(&labeler);
    Ok(see_other("/next"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DrawForm {
    pub csrf: String,
    pub k: String,
    /// draw-many: how many nodes.
    pub n: String,
}

fn small_number(name: &str, value: &str, default: usize, max: usize) -> Result<usize, Failure> {
    if value.trim().is_empty() {
        return Ok(default);
    }
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(Failure::bad_request(format!("{name} must be a number from 1 to {max}"))),
    }
}

pub async fn draw(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path((book, label)): Path<(String, String)>,
    f: Result<Form<DrawForm>, FormRejection>,
) -> PageResult {
    let f = form(f)?;
    who.check_csrf(&f.csrf)?;
    let labeler = who.labeler()?.to_string();
    let k = small_number("k", &f.k, 2, 16)?;
    let s = state.clone();
    let (book_id, label) = blocking(move || {
        let id = s.book_id(&book)?;
        let tree = s.tree(&id)?;
        let nid = tree.node_id(&label)?;
        Ok((id, tree.tree.node(nid).label.clone()))
    })
    .await?;
    let job = jobs::draw(&state, &labeler, &book_id, &label, k);
    Ok(see_other(&format!("/books/{book_id}/nodes/{label}?job={job}")))
}

pub async fn draw_many(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path(book): Path<String>,
    f: Result<Form<DrawForm>, FormRejection>,
) -> PageResult {
    let f = form(f)?;
    who.check_csrf(&f.csrf)?;
    let labeler = who.labeler()?.to_string();
    let k = small_number("k", &f.k, 2, 16)?;
    let n = small_number("n", &f.n, 5, 200)?;
    let s = state.clone();
    let book_id = blocking(move || s.book_id(&book)).await?;
    let job = jobs::draw_many(&state, &labeler, &book_id, n, k);
    Ok(see_other(&format!("/next?job={job}")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SummarizeForm {
    pub csrf: String,
    #[serde(flatten)]
    pub ask: AskParams,
}

pub async fn summarize(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path(book): Path<String>,
    f: Result<Form<SummarizeForm>, FormRejection>,
) -> PageResult {
    let f = form(f)?;
    who.check_csrf(&f.csrf)?;
    let labeler = who.labeler()?.to_string();
    let ask = f.ask.settings()?;
    let s = state.clone();
    let book_id = blocking(move || s.book_id(&book)).await?;
    jobs::summarize_book(&state, &labeler, &book_id, ask);
    Ok(see_other("/jobs"))
}

pub async fn train(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    f: Result<Form<CsrfForm>, FormRejection>,
) -> PageResult {
    who.check_csrf(&form(f)?.csrf)?;
    jobs::train(&state, who.labeler()?);
    Ok(see_other("/jobs"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NextQuery {
    pub job: Option<String>,
}

/// The next queued item for this labeler (reserved for them), or a page that says the queue is
/// empty and offers to draw candidates.
pub async fn next(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    q: Result<Query<NextQuery>, QueryRejection>,
) -> PageResult {
    let q = query(q)?;
    let labeler = who.labeler()?.to_string();
    // A running `summarize --ask` waits on these: they come before every ranked item.
    if let Some(id) = state.asks.next_for(&labeler) {
        return Ok(see_other(&format!("/asks/{id}")));
    }
    let skipped: HashSet<_> = who.skipped.clone();
    let s = state.clone();
    let (who_next, fresh) = (labeler.clone(), who.fresh);
    let next = blocking(move || {
        if fresh {
            // No session came with the request (a link from elsewhere): show, lease nothing.
            Ok(s.queue.peek(&who_next, s.config.overlap, &skipped))
        } else {
            Ok(s.queue.next(&who_next, s.config.overlap, &skipped).map(|n| n.item))
        }
    })
    .await?;
    if let Some(item) = next {
        let (book, node) = (item.book.unwrap_or_default(), item.node.unwrap_or_default());
        let (a, b) = if views::blind_order(&labeler, &item.a_hash, &item.b_hash) {
            (item.a_hash, item.b_hash)
        } else {
            (item.b_hash, item.a_hash)
        };
        return Ok(see_other(&format!("/books/{book}/nodes/{node}?a={a}&b={b}")));
    }
    let s = state.clone();
    let books = blocking(move || {
        let mut out = Vec::new();
        let records = s.queue.records();
        for b in overview::books(&s.ws, &records, &[])? {
            if b.has_tree {
                let needing = jobs::needs_candidates(&s, &b.id).unwrap_or(0);
                out.push(json!({ "book": b, "needing": needing }));
            }
        }
        Ok(out)
    })
    .await?;
    let job = q.job.as_deref().and_then(|j| j.parse::<u64>().ok()).and_then(|j| state.jobs.get(j));
    let running = job.as_ref().is_some_and(|j| j.state == JobState::Running);
    render(
        &state,
        &who,
        "empty.html",
        json!({ "page": "empty", "books": books, "job": job, "drawing": running }),
    )
}

// --- progress and jobs ---

pub async fn progress(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
) -> PageResult {
    let s = state.clone();
    let ctx = blocking(move || {
        let records = s.queue.records();
        Ok(json!({
            "page": "progress",
            "progress": stats::progress_all(&records, &feedback::decomp::all(s.ws.store())?),
            "agreement": feedback::agreement(&records),
            "by_height": stats::agreement_by_height(&records)
                .into_iter()
                .map(|(h, a)| json!({ "height": h, "a": a }))
                .collect::<Vec<_>>(),
            "kinds": ["comparison", "likert", "demonstration", "correction", "critique", "decomposition"],
            // Decomposition comparisons are about spans of a book, not nodes of one height.
            "height_kinds": ["comparison", "likert", "demonstration", "correction", "critique"],
            "has_model": s.scorer().is_some(),
        }))
    })
    .await?;
    render(&state, &who, "progress.html", ctx)
}

pub async fn jobs(State(state): State<Shared>, Extension(who): Extension<Identity>) -> PageResult {
    render(&state, &who, "jobs.html", json!({ "page": "jobs", "jobs": state.jobs.all() }))
}

/// Cancels a running job (its finished work stays stored).
pub async fn cancel_job(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
    f: Result<Form<CsrfForm>, FormRejection>,
) -> PageResult {
    who.check_csrf(&form(f)?.csrf)?;
    who.labeler()?;
    state.jobs.cancel_named(&id)?;
    Ok(see_other("/jobs"))
}

// --- the evaluation report ---

/// `/report` → `/report/` (the page links its figures by relative names).
pub async fn report_redirect() -> Response {
    see_other("/report/")
}

/// The evaluation report, drawn from the store (or a page that says how to make a run).
pub async fn report_index(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
) -> PageResult {
    report_page(state, who, "index.html".into()).await
}

/// A file the report links (`<figure>.svg`, `<figure>.csv`): only names the drawing wrote.
pub async fn report_file(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
) -> PageResult {
    report_page(state, who, name).await
}

async fn report_page(state: Shared, who: Identity, name: String) -> PageResult {
    let s = state.clone();
    let index = name == "index.html";
    match blocking(move || report::file(&s, &name)).await? {
        Served::File { body, content_type } => Ok(report::response(body, content_type)),
        Served::NoRuns if index => render(&state, &who, "report.html", json!({ "page": "report" })),
        Served::NoRuns => Err(Failure::not_found(
            "no evaluation run is stored, so the report has no files (see /report/)",
        )
        .into()),
    }
}

// --- questions of running `summarize --ask` jobs ---

fn question_id(id: &str) -> Result<u64, Failure> {
    id.parse().map_err(|_| {
        Failure::not_found(format!("no question '{}'", id.chars().take(30).collect::<String>()))
    })
}

/// The rating screen for a question a running summary waits on (comparisons only).
pub async fn asked(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> PageResult {
    let labeler = who.labeler()?;
    let id = question_id(&id)?;
    let q = if who.fresh {
        // Shown to a request without a session: reserved for nobody.
        state.asks.get(id).ok_or_else(|| {
            Failure::not_found(format!(
                "no waiting question {id}: it was answered already, or its job ended (press n)"
            ))
        })?
    } else {
        state.asks.open_for(id, labeler)?
    };
    let s = state.clone();
    let book = q.book.clone();
    let title = blocking(move || {
        Ok(s.tree(&book).ok().and_then(|t| t.book.as_ref().map(|b| b.title().to_string())))
    })
    .await?
    .unwrap_or_else(|| q.book.clone());
    let pair: Vec<Value> = [&q.a, &q.b]
        .iter()
        .map(
            |c| json!({ "hash": c.hash, "text": c.text, "paragraphs": views::paragraphs(&c.text) }),
        )
        .collect();
    render(
        &state,
        &who,
        "ask.html",
        json!({
            "page": "ask",
            "q": q,
            "book_title": title,
            "paragraphs": views::paragraphs(&q.input),
            "pair": pair,
        }),
    )
}

pub async fn ask_answer(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
    f: Result<Form<AnswerForm>, FormRejection>,
) -> PageResult {
    let f = form(f)?;
    who.check_csrf(&f.csrf)?;
    let labeler = who.labeler()?.to_string();
    let id = question_id(&id)?;
    let answers::Answer::Comparison { a, b, prefer, confidence } = f.answer()? else {
        return Err(Failure::bad_request(
            "a running summary asks which summary is better: answer with 1, 2 or t",
        )
        .into());
    };
    let s = state.clone();
    let reply = Reply::Prefer { prefer, confidence, judge_ms: f.judge_ms()? };
    blocking(move || asking::answer(&s, id, &labeler, &a, &b, reply)).await?;
    Ok(see_other("/next"))
}

pub async fn ask_skip(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
    f: Result<Form<CsrfForm>, FormRejection>,
) -> PageResult {
    who.check_csrf(&form(f)?.csrf)?;
    let labeler = who.labeler()?.to_string();
    let id = question_id(&id)?;
    let s = state.clone();
    blocking(move || asking::answer(&s, id, &labeler, "", "", Reply::Skip)).await?;
    Ok(see_other("/next"))
}
