//! What the web app's in-process tests share: a client over the router (tower `oneshot`) that
//! keeps the session cookie, with **every request under a timeout** (a hang fails the test in
//! seconds instead of stalling the suite), and the server state over a fixture.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use rrm::serve::testing::Fixture;
use rrm::serve::{self, AppState, ServeConfig, Shared};
use serde_json::Value;
use tower::ServiceExt;

pub const ADDR: &str = "127.0.0.1:8080";

/// How long any one request may take before the test calls it a hang.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(20);

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn cookie(&self) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("rrm_session=") && !v.contains("Max-Age=0"))
            .map(|v| v.split(';').next().unwrap_or_default().to_string())
    }

    pub fn location(&self) -> String {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

pub struct Client {
    pub app: Router,
    pub cookie: Option<String>,
    pub bearer: Option<String>,
}

impl Client {
    pub fn new(state: &Shared) -> Client {
        Client { app: serve::router(Arc::clone(state)), cookie: None, bearer: None }
    }

    pub async fn send(&mut self, req: Request<Body>) -> Reply {
        let what = format!("{} {}", req.method(), req.uri());
        let response = tokio::time::timeout(REQUEST_LIMIT, self.app.clone().oneshot(req))
            .await
            .unwrap_or_else(|_| panic!("{what} did not answer within {REQUEST_LIMIT:?}: a hang"))
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = tokio::time::timeout(
            REQUEST_LIMIT,
            axum::body::to_bytes(response.into_body(), 10 << 20),
        )
        .await
        .unwrap_or_else(|_| panic!("the body of {what} did not arrive within {REQUEST_LIMIT:?}"))
        .unwrap();
        let reply = Reply { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() };
        if let Some(c) = reply.cookie() {
            self.cookie = Some(c);
        }
        reply
    }

    pub fn request(&self, method: &str, path: &str) -> axum::http::request::Builder {
        let mut b = Request::builder().method(method).uri(path).header(header::HOST, ADDR);
        if let Some(c) = &self.cookie {
            b = b.header(header::COOKIE, c);
        }
        if let Some(t) = &self.bearer {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        let req = self.request("GET", path).body(Body::empty()).unwrap();
        self.send(req).await
    }

    pub async fn post_json(&mut self, path: &str, csrf: Option<&str>, body: &Value) -> Reply {
        let mut b = self.request("POST", path).header(header::CONTENT_TYPE, "application/json");
        if let Some(c) = csrf {
            b = b.header("x-csrf-token", c);
        }
        let req = b.body(Body::from(body.to_string())).unwrap();
        self.send(req).await
    }

    pub async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let req = self
            .request("POST", path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        self.send(req).await
    }

    /// The CSRF token of the session (from a page's meta tag).
    pub async fn csrf(&mut self) -> String {
        let page = self.get("/login").await;
        let marker = "name=\"csrf-token\" content=\"";
        let start = page.body.find(marker).expect("a csrf meta tag") + marker.len();
        page.body[start..].split('"').next().unwrap_or_default().to_string()
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn config(f: &Fixture, overlap: usize) -> ServeConfig {
    let mut c = ServeConfig::new(ADDR.parse().unwrap());
    c.overlap = overlap;
    c.local_labeler = "tester".into();
    c.generator = f.generator_spec();
    c.reward_model = None;
    c
}

pub fn state(f: &Fixture, overlap: usize) -> Shared {
    AppState::new(f.ws.clone(), config(f, overlap), ADDR.parse().unwrap()).unwrap()
}

pub async fn wait_for_job(c: &mut Client, id: u64) -> Value {
    for _ in 0..600 {
        let job = c.get(&format!("/api/jobs/{id}")).await.json();
        if job["state"] != "running" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}
