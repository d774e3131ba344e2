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
//! - GETs that change state (`/next` and `/api/queue/next` lease a pair, `/asks/{id}` reserves a
//!   question, `/report/` may redraw) are refused when the browser marks the request as coming
//!   from another site (`Sec-Fetch-Site`), and change nothing for a request without an existing
//!   session ([`Identity::fresh`]: `/next` and `/asks/{id}` only show, `/api/queue/next` asks
//!   for a session): a web page elsewhere cannot make your browser take pairs from your queue.
//! - Sessions end after [`SessionLimits::idle`] without a request. A session the browser never
//!   sent back (a cookieless flood makes only those) waits in a small first-in-first-out tier
//!   and is the only kind evicted for room, in O(1): a flood cannot sign anyone out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::sync::{rank, Guarded};
use super::{json_failure, Failure, Shared};
use crate::workspace::labelers::{self, constant_time_eq};

pub const COOKIE: &str = "rrm_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

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
    pub last_seen: Instant,
    /// The browser sent the cookie back at least once.
    pub returned: bool,
    /// Pairs this session skipped (not offered again while it lasts).
    pub skipped: HashSet<PairKey>,
}

/// How long sessions live and how many are kept.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// A session unused this long is gone.
    pub idle: Duration,
    /// Sessions whose cookie never came back, kept at most (the oldest go first).
    pub max_new: usize,
    /// Sessions in use, kept at most (the oldest go first).
    pub max_returned: usize,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits { idle: Duration::from_secs(12 * 3600), max_new: 1_000, max_returned: 10_000 }
    }
}

#[derive(Default)]
struct SessionMap {
    map: HashMap<String, Session>,
    /// Ids in creation order, of sessions not yet returned (stale ids are skipped on eviction).
    new: VecDeque<String>,
    /// Ids in the order they first came back.
    returned: VecDeque<String>,
}

pub struct Sessions {
    inner: Guarded<SessionMap>,
    limits: SessionLimits,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions::with_limits(SessionLimits::default())
    }
}

fn random_hex() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Sessions {
    pub fn with_limits(limits: SessionLimits) -> Sessions {
        Sessions { inner: Guarded::new("sessions", rank::LEAF, SessionMap::default()), limits }
    }

    /// A new session; returns its id. Evicts only the oldest never-returned session when that
    /// tier is full (O(1) amortized).
    pub fn create(&self, labeler: Option<String>) -> String {
        let id = random_hex();
        let now = Instant::now();
        let session = Session {
            labeler,
            csrf: random_hex(),
            created: now,
            last_seen: now,
            returned: false,
            skipped: HashSet::new(),
        };
        let max = self.limits.max_new.max(1);
        self.inner.with(|s| {
            while s.new.len() >= max {
                let Some(old) = s.new.pop_front() else { break };
                if s.map.get(&old).is_some_and(|x| !x.returned) {
                    s.map.remove(&old);
                }
            }
            s.new.push_back(id.clone());
            s.map.insert(id.clone(), session);
        });
        id
    }

    /// The session `id` if it is alive; counts as a use (it stays alive, and a first return
    /// moves it to the sessions in use).
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let (idle, max) = (self.limits.idle, self.limits.max_returned.max(1));
        self.inner.with(|s| {
            let alive = s.map.get(id).map(|x| now.duration_since(x.last_seen) < idle)?;
            if !alive {
                s.map.remove(id);
                return None;
            }
            let first_return = s.map.get(id).is_some_and(|x| !x.returned);
            if first_return {
                while s.returned.len() >= max {
                    let Some(old) = s.returned.pop_front() else { break };
                    if old != id {
                        s.map.remove(&old);
                    }
                }
                s.returned.push_back(id.to_string());
            }
            let x = s.map.get_mut(id)?;
            x.returned = true;
            x.last_seen = now;
            Some(x.clone())
        })
    }

    pub fn remove(&self, id: &str) {
        self.inner.with(|s| {
            s.map.remove(id);
        });
    }

    /// How many sessions are kept.
    pub fn len(&self) -> usize {
        self.inner.with(|s| s.map.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers that the session skipped a pair.
    pub fn skip(&self, id: &str, pair: PairKey) {
        self.inner.with(|s| {
            if let Some(x) = s.map.get_mut(id) {
                x.skipped.insert(pair);
            }
        });
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
    /// The session was made by this very request (the browser sent none): GETs that would
    /// lease or reserve only show.
    pub fresh: bool,
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

/// Whether `host` (a Host header, or the authority of an Origin) names this server. On port
/// 80 browsers send the bare host, without the port.
pub fn host_allowed(addr: std::net::SocketAddr, host: &str) -> bool {
    let port = addr.port();
    let ip = match addr.ip() {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    let hosts = [ip.as_str(), "127.0.0.1", "localhost", "[::1]"];
    hosts.iter().any(|h| {
        host.eq_ignore_ascii_case(&format!("{h}:{port}"))
            || (port == 80 && host.eq_ignore_ascii_case(h))
    })
}

/// GETs that change state: a lease, a reservation, a redraw (see the module docs).
fn changes_state(method: &Method, path: &str) -> bool {
    *method == Method::GET
        && (path == "/next"
            || path == "/api/queue/next"
            || path.starts_with("/asks/")
            || path.starts_with("/report"))
}

/// Whether the browser says the request comes from another site (a page elsewhere made it).
fn from_another_site(headers: &HeaderMap) -> bool {
    headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.eq_ignore_ascii_case("cross-site") || v.eq_ignore_ascii_case("same-site")
    })
}

/// The session layer: finds or starts the session, authenticates bearer tokens, checks Host,
/// Origin and (for API POSTs) the CSRF header, sends people who are not signed in to /login.
pub async fn layer(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string);
    if !state.tokens_required {
        if let Some(host) = &host {
            if !host_allowed(state.addr, host) {
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
    let side_effects = changes_state(req.method(), &path);
    if side_effects && from_another_site(&headers) {
        return refuse(
            &path,
            Failure::forbidden("a request from another site is refused here: open rrm itself"),
        );
    }
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
                    fresh: false,
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
    if new && side_effects && is_api(&path) {
        // A request without this browser's session: nothing is leased for it.
        let mut r = json_failure(&Failure::new(
            StatusCode::UNAUTHORIZED,
            "no session: open / first, or send Authorization: Bearer TOKEN",
        ));
        r.headers_mut().append(header::SET_COOKIE, set_cookie(Some(&id)));
        return r;
    }
    req.extensions_mut().insert(Identity {
        labeler: session.labeler.clone(),
        csrf: session.csrf.clone(),
        session: Some(id.clone()),
        skipped: session.skipped.clone(),
        fresh: new,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookieless_flood_signs_nobody_out_and_idle_sessions_end() {
        let limits =
            SessionLimits { idle: Duration::from_millis(300), max_new: 50, max_returned: 100 };
        let sessions = Sessions::with_limits(limits);
        let ann = sessions.create(Some("ann".into()));
        assert!(sessions.get(&ann).is_some(), "her browser sent the cookie back");
        for _ in 0..5_000 {
            sessions.create(None);
        }
        assert!(sessions.get(&ann).is_some(), "the flood evicted only sessions never returned");
        assert!(sessions.len() <= 51, "{} sessions kept", sessions.len());
        std::thread::sleep(Duration::from_millis(350));
        assert!(sessions.get(&ann).is_none(), "idle past the limit: gone");
    }

    #[test]
    fn port_80_accepts_the_bare_host_browsers_send() {
        let on80: std::net::SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert!(host_allowed(on80, "127.0.0.1"));
        assert!(host_allowed(on80, "localhost"));
        assert!(host_allowed(on80, "127.0.0.1:80"));
        assert!(!host_allowed(on80, "evil.example"));
        let on8080: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(host_allowed(on8080, "localhost:8080"));
        assert!(!host_allowed(on8080, "localhost"));
        assert!(!host_allowed(on8080, "evil.example:8080"));
    }
}
