//! Who is asking: sessions, sign-in, bearer tokens, CSRF, the Host and Origin checks.
//!
//! - A browser gets a session cookie (`rrm_session`: random, HTTP-only, SameSite=Strict) on its
//!   first request. With labelers in the store, the session is anonymous until the person signs
//!   in with their token (the session id is replaced then); with none (loopback only), every
//!   session is the local user's.
//! - Every session has a CSRF token: pages put it in each form (`csrf`) and in a `<meta>` for the
//!   client script, which sends it as `X-CSRF-Token`. A POST with the cookie and without the
//!   matching token is refused. A POST whose `Origin` is another site is refused too.
//! - Scripts send `Authorization: Bearer <token>` instead (no cookie, so no CSRF).
//! - Without tokens (loopback), a request whose `Host` is not this server's loopback address is
//!   refused: a web page cannot reach the app through a DNS name that points at 127.0.0.1.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::{json_failure, lock, Failure, Shared};
use crate::workspace::labelers::{self, constant_time_eq};

pub const COOKIE: &str = "rrm_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions kept at most (the oldest anonymous ones go first).
const MAX_SESSIONS: usize = 10_000;

/// (input key, lower hash, higher hash): a pair of candidates of a node.
pub type PairKey = (String, String, String);

pub fn pair_key(input_key: &str, a: &str, b: &str) -> PairKey {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    (input_key.to_string(), x.to_string(), y.to_string())
}

/// One browser's session.
#[derive(Debug, Clone)]
pub struct Session {
    pub labeler: Option<String>,
    pub csrf: String,
    pub created: Instant,
    /// Pairs this session skipped (not offered again while it lasts).
    pub skipped: HashSet<PairKey>,
}

#[derive(Debug, Default)]
pub struct Sessions {
    map: std::sync::Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Sessions {
    /// A new session; returns its id.
    pub fn create(&self, labeler: Option<String>) -> String {
        let id = random_hex();
        let mut map = lock(&self.map);
        if map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .filter(|(_, s)| s.labeler.is_none())
                .min_by_key(|(_, s)| s.created)
                .or_else(|| map.iter().min_by_key(|(_, s)| s.created))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(
            id.clone(),
            Session {
                labeler,
                csrf: random_hex(),
                created: Instant::now(),
                skipped: HashSet::new(),
            },
        );
        id
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        lock(&self.map).get(id).cloned()
    }

    pub fn remove(&self, id: &str) {
        lock(&self.map).remove(id);
    }

    /// Remembers that the session skipped a pair.
    pub fn skip(&self, id: &str, pair: PairKey) {
        if let Some(s) = lock(&self.map).get_mut(id) {
            s.skipped.insert(pair);
        }
    }
}

/// Who is asking, put into every request by [`layer`].
#[derive(Debug, Clone)]
pub struct Identity {
    pub labeler: Option<String>,
    /// The session's CSRF token (empty for bearer requests).
    pub csrf: String,
    /// The session id (none for bearer requests).
    pub session: Option<String>,
    pub skipped: HashSet<PairKey>,
}

impl Identity {
    /// The labeler, or a 401.
    pub fn labeler(&self) -> Result<&str, Failure> {
        self.labeler.as_deref().ok_or_else(|| {
            Failure::new(StatusCode::UNAUTHORIZED, "sign in first (POST /login with your token)")
        })
    }

    /// Checks a form's CSRF field (bearer requests carry none and need none).
    pub fn check_csrf(&self, given: &str) -> Result<(), Failure> {
        if self.session.is_none() {
            return Ok(());
        }
        if !given.is_empty() && constant_time_eq(given.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(Failure::forbidden(
                "the form's security token is missing or stale: reload the page and try again",
            ))
        }
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim().to_string())
        })
    })
}

/// `Set-Cookie` for a session id (or an expired one, to sign out).
pub fn set_cookie(id: Option<&str>) -> HeaderValue {
    let value = match id {
        Some(id) => format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict"),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("rrm_session="))
}

fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

fn is_public(path: &str) -> bool {
    path == "/login" || path.starts_with("/static/")
}

fn refuse(path: &str, f: Failure) -> Response {
    if is_api(path) {
        json_failure(&f)
    } else {
        (f.status, f.message).into_response()
    }
}

/// Whether `host` (a Host header, or the authority of an Origin) names this server.
fn host_allowed(state: &Shared, host: &str) -> bool {
    let port = state.addr.port();
    let allowed = [
        state.addr.to_string(),
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ];
    allowed.iter().any(|a| a.eq_ignore_ascii_case(host))
}

/// The session layer: finds or starts the session, authenticates bearer tokens, checks Host,
/// Origin and (for API POSTs) the CSRF header, sends people who are not signed in to /login.
pub async fn layer(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string);
    if !state.tokens_required {
        if let Some(host) = &host {
            if !host_allowed(&state, host) {
                return refuse(
                    &path,
                    Failure::forbidden(format!(
                        "this server answers only at {} (the Host '{host}' is not it)",
                        state.url()
                    )),
                );
            }
        }
    }
    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if unsafe_method {
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
            let authority = origin.split("://").nth(1).unwrap_or("");
            let same = host.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(authority));
            if !same {
                return refuse(&path, Failure::forbidden("a request from another site is refused"));
            }
        }
    }

    // Scripts: a bearer token.
    if let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let Some(token) = auth.strip_prefix("Bearer ") else {
            return refuse(
                &path,
                Failure::new(StatusCode::UNAUTHORIZED, "use Authorization: Bearer TOKEN"),
            );
        };
        let ws = state.ws.clone();
        let token = token.to_string();
        let found = super::blocking(move || Ok(labelers::authenticate(&ws, &token)?)).await;
        return match found {
            Ok(Some(l)) => {
                req.extensions_mut().insert(Identity {
                    labeler: Some(l.name),
                    csrf: String::new(),
                    session: None,
                    skipped: HashSet::new(),
                });
                next.run(req).await
            }
            Ok(None) => refuse(&path, Failure::new(StatusCode::UNAUTHORIZED, "unknown token")),
            Err(f) => refuse(&path, f),
        };
    }

    // Browsers: the session cookie.
    let existing =
        cookie_value(&headers, COOKIE).and_then(|id| state.sessions.get(&id).map(|s| (id, s)));
    let (id, session, new) = match existing {
        Some((id, s)) => (id, s, false),
        None => {
            let labeler = (!state.tokens_required).then(|| state.config.local_labeler.clone());
            let id = state.sessions.create(labeler);
            match state.sessions.get(&id) {
                Some(s) => (id, s, true),
                None => return refuse(&path, Failure::internal("the session was lost")),
            }
        }
    };
    if unsafe_method && is_api(&path) {
        let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !constant_time_eq(given.as_bytes(), session.csrf.as_bytes()) {
            return refuse(
                &path,
                Failure::forbidden(
                    "missing or stale X-CSRF-Token header (scripts: use Authorization: Bearer TOKEN)",
                ),
            );
        }
    }
    let signed_in = session.labeler.is_some();
    req.extensions_mut().insert(Identity {
        labeler: session.labeler.clone(),
        csrf: session.csrf.clone(),
        session: Some(id.clone()),
        skipped: session.skipped.clone(),
    });
    let mut response = if signed_in || is_public(&path) {
        next.run(req).await
    } else if is_api(&path) {
        json_failure(&Failure::new(
            StatusCode::UNAUTHORIZED,
            "sign in first: POST /login with your token, or send Authorization: Bearer TOKEN",
        ))
    } else {
        Redirect::to("/login").into_response()
    };
    if new {
        response.headers_mut().append(header::SET_COOKIE, set_cookie(Some(&id)));
    }
    response
}
