//! The decomposition-comparison screen (`/decompositions`): two segmentations of one span of a
//! book, shown blind as 1 and 2, each leaf by its first and last sentence and its length (the
//! text a click away); the labeler says which gives the better subtasks, or marks one bad
//! boundary. Drawing the segmentations (and loading the sentence encoder on first use) runs on
//! the blocking pool; the answer re-draws both sides and stores only when they are still what
//! was shown (named by a hash of their cuts), so what is stored is what the decomposers drew;
//! a labeler's second answer about the same two cuts keeps the first.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::{Extension, Form};
use serde::Deserialize;
use serde_json::json;

use super::answers::judge_ms_field;
use super::auth::Identity;
use super::pages::{form, query, render, see_other, PageResult};
use super::views::blind_order;
use super::{blocking, Failure, Shared};
use crate::book::{BookId, Span};
use crate::feedback::decomp::{DecompAnswer, Side};
use crate::feedback::Preference;
use crate::workspace::decompositions::{self, Candidate, Drawn, Pair, PairSpec};
use crate::workspace::{books, overview};

/// What the page is asked for.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DecompQuery {
    /// A book id (or 4+ hex digits of one).
    pub book: Option<String>,
    /// A node label of the book's tree (default: the first chapter).
    pub span: Option<String>,
    pub a: Option<String>,
    pub b: Option<String>,
    /// `1` after an answer was stored.
    pub done: Option<String>,
}

/// What the answer form sends.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DecompForm {
    pub csrf: String,
    pub book: String,
    pub span: String,
    pub start: String,
    pub end: String,
    /// The candidates shown first and second, and hashes of their cuts.
    pub s1: String,
    pub s2: String,
    pub h1: String,
    pub h2: String,
    /// `1`, `2` or `t`.
    pub prefer: String,
    pub confidence: String,
    /// `SIDE:N`: the N-th boundary (from 1) of side 1 or 2 is bad.
    pub bad: String,
    pub judge_ms: String,
}

fn cuts_hash(d: &Drawn) -> String {
    let text: Vec<String> = d.segmentation.boundaries.iter().map(|b| b.to_string()).collect();
    blake3::hash(text.join(",").as_bytes()).to_hex()[..16].to_string()
}

fn candidate(name: &str, value: Option<&str>, default: &str) -> Result<Candidate, Failure> {
    value
        .filter(|v| !v.trim().is_empty())
        .unwrap_or(default)
        .parse::<Candidate>()
        .map_err(|e| Failure::bad_request(format!("{name}: {e}")))
}

/// Draws the pair (blocking: on the blocking pool).
fn draw_pair(
    s: &Shared,
    book: &str,
    node: Option<String>,
    a: Candidate,
    b: Candidate,
) -> Result<(crate::book::Book, Pair), Failure> {
    let id = s.book_id(book)?;
    let book_id = BookId::parse(&id)
        .ok_or_else(|| Failure::bad_request(format!("'{id}' is not a book id")))?;
    let book = books::by_id(&s.ws, &book_id)?.ok_or_else(|| {
        Failure::not_found(format!("the text of book {} is not available", book_id.short()))
    })?;
    let encoder =
        if a.needs_encoder() || b.needs_encoder() { Some(s.sentence_encoder()?) } else { None };
    let spec = PairSpec { node, a, b, model: None };
    let pair = decompositions::pair(&s.ws, &book, &spec, encoder)?;
    Ok((book, pair))
}

pub async fn page(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    q: Result<Query<DecompQuery>, QueryRejection>,
) -> PageResult {
    let q = query(q)?;
    let labeler = who.labeler()?.to_string();
    let a = candidate("a", q.a.as_deref(), "fixed")?;
    let b = candidate("b", q.b.as_deref(), "learned")?;
    let s = state.clone();
    let ctx = blocking(move || {
        let Some(book) = q.book.clone().filter(|b| !b.trim().is_empty()) else {
            let items = s.queue.items(Some(&labeler), s.config.overlap);
            let books = overview::books(&s.ws, &s.queue.records(), &items)?;
            return Ok(json!({ "page": "decompositions", "books": books, "cand_a": a.label(), "cand_b": b.label() }));
        };
        let node = q.span.clone().filter(|n| !n.trim().is_empty());
        let (_, pair) = draw_pair(&s, &book, node, a, b)?;
        let a_first =
            blind_order(&labeler, &pair.a.segmentation.label(), &pair.b.segmentation.label());
        let (one, two) = if a_first { (&pair.a, &pair.b) } else { (&pair.b, &pair.a) };
        Ok(json!({
            "page": "decompositions",
            "pair": {
                "book": pair.book,
                "title": pair.title,
                "node": pair.node,
                "start": pair.start,
                "end": pair.end,
                "tokens": pair.tokens,
            },
            "sides": [
                { "n": 1, "spec": one.segmentation.label(), "hash": cuts_hash(one), "leaves": one.leaves },
                { "n": 2, "spec": two.segmentation.label(), "hash": cuts_hash(two), "leaves": two.leaves },
            ],
            "a": a.label(),
            "b": b.label(),
            "notice": q.done.as_deref().map(|_| "Decomposition comparison stored."),
        }))
    })
    .await?;
    render(&state, &who, "decompositions.html", ctx)
}

pub async fn answer(
    State(state): State<Shared>,
    Extension(who): Extension<Identity>,
    f: Result<Form<DecompForm>, FormRejection>,
) -> PageResult {
    let f = form(f)?;
    who.check_csrf(&f.csrf)?;
    let labeler = who.labeler()?.to_string();
    let judge_ms = judge_ms_field(&f.judge_ms)?;
    let s1 = candidate("s1", Some(&f.s1), "")?;
    let s2 = candidate("s2", Some(&f.s2), "")?;
    let number = |name: &str, v: &str| {
        v.trim().parse::<usize>().map_err(|_| {
            Failure::bad_request(format!(
                "{name} must be a byte offset (got '{}')",
                v.chars().take(20).collect::<String>()
            ))
        })
    };
    let span = Span::new(number("start", &f.start)?, number("end", &f.end)?);
    // What was answered, about the sides as shown (1 and 2).
    let answer = if !f.bad.trim().is_empty() {
        let parsed = f.bad.trim().split_once(':').and_then(|(side, n)| {
            let side = match side {
                "1" => Side::A,
                "2" => Side::B,
                _ => return None,
            };
            n.parse::<usize>().ok().filter(|&n| n >= 1).map(|n| (side, n))
        });
        let (side, n) = parsed.ok_or_else(|| {
            Failure::bad_request(format!(
                "bad must be SIDE:N (side 1 or 2, boundary from 1), not '{}'",
                f.bad.chars().take(20).collect::<String>()
            ))
        })?;
        Err((side, n))
    } else {
        let prefer = match f.prefer.trim() {
            "1" | "a" => Preference::A,
            "2" | "b" => Preference::B,
            "t" | "tie" => Preference::Tie,
            other => {
                return Err(Failure::bad_request(format!(
                    "prefer must be 1, 2 or t (got '{}')",
                    other.chars().take(20).collect::<String>()
                ))
                .into())
            }
        };
        let confidence = match f.confidence.trim() {
            "" => 5,
            c => match c.parse::<u8>() {
                Ok(n) if (1..=9).contains(&n) => n,
                _ => {
                    return Err(Failure::bad_request(format!(
                        "confidence must be a number from 1 to 9 (got '{}')",
                        c.chars().take(20).collect::<String>()
                    ))
                    .into())
                }
            },
        };
        Ok(DecompAnswer::Prefer { prefer, confidence })
    };
    let s = state.clone();
    let (book_id, node) = (f.book.clone(), f.span.clone());
    let (h1, h2) = (f.h1.trim().to_string(), f.h2.trim().to_string());
    let redirect = blocking(move || {
        let node_opt = Some(node.clone()).filter(|n| !n.trim().is_empty());
        let (book, pair) = draw_pair(&s, &book_id, node_opt, s1, s2)?;
        if (pair.start, pair.end) != (span.start, span.end)
            || cuts_hash(&pair.a) != h1
            || cuts_hash(&pair.b) != h2
        {
            return Err(Failure::new(
                axum::http::StatusCode::CONFLICT,
                "the segmentations changed since the page was shown (a new model or tree?); \
                 reload the page and answer again",
            ));
        }
        let answer = match answer {
            Ok(a) => a,
            Err((side, n)) => {
                let drawn = if side == Side::A { &pair.a } else { &pair.b };
                let at = drawn.segmentation.boundaries.get(n - 1).copied().ok_or_else(|| {
                    Failure::bad_request(format!(
                        "side {} has {} boundaries, not {n}",
                        if side == Side::A { 1 } else { 2 },
                        drawn.segmentation.boundaries.len()
                    ))
                })?;
                DecompAnswer::BadBoundary { side, at }
            }
        };
        // One labeler's answers one at a time, and a second answer about the same two cuts
        // returns the first (a double submit is not a second opinion, as for node pairs).
        let shown = (&pair.a.segmentation, &pair.b.segmentation);
        s.writes.for_labeler(&labeler).with(|_| -> Result<(), Failure> {
            if decompositions::earlier(&s.ws, &labeler, book.id().as_str(), span, shown)?.is_none()
            {
                decompositions::record(
                    &s.ws,
                    &labeler,
                    &book,
                    shown,
                    span,
                    pair.node.clone(),
                    answer,
                    judge_ms,
                )?;
            }
            Ok(())
        })?;
        let mut to = format!(
            "/decompositions?book={}&a={}&b={}&done=1",
            pair.book,
            pair.a.segmentation.label(),
            pair.b.segmentation.label()
        );
        if let Some(n) = pair.node.as_ref().filter(|n| {
            n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
        }) {
            to.push_str(&format!("&span={n}"));
        }
        Ok(to)
    })
    .await?;
    Ok(see_other(&redirect))
}
