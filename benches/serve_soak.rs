//! A soak of the web app: scripted clients issue random requests over every route — pages, the
//! JSON API, answers, jobs (draws, a summary with questions), questions and their answers, the
//! report, exports, wrong addresses — against `rrm serve` in this process, over loopback only,
//! while a draw job and an asking summarize job run inside it. Bounded in count and time; it
//! stops by itself.
//!
//! Checks: every request answers within its timeout (no hang) and none is a 5xx; the p99 latency
//! stays under [`P99_LIMIT`]; the server answers `/` afterwards and stops within its grace; every
//! answer acknowledged with 201 is stored exactly once, no labeler has two comparisons of one
//! pair, and `rrm db check` finds the database clean.
//!
//! `cargo bench --bench serve_soak`: 16 clients for 60 s. Under `cargo test --all-targets` (no
//! `--bench` argument) 4 clients for 6 s check the same things. `RRM_SOAK=CLIENTSxSECONDS`
//! (e.g. `32x120`) sets the size.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rrm::feedback::{self, FeedbackKind};
use rrm::serve::testing::{fixture, Fixture};
use rrm::serve::{self, ServeConfig};
use rrm::store::Store;
use rrm::workspace::labelers;
use serde_json::{json, Value};
use support::{cpu, report};

mod support;

/// The bound the soak holds every route's p99 latency to.
const P99_LIMIT: Duration = Duration::from_secs(3);
/// A request that takes longer is a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
    name: String,
    book: String,
    labels: Vec<String>,
    rng: StdRng,
    /// route class → latencies.
    latency: BTreeMap<&'static str, Vec<Duration>>,
    statuses: BTreeMap<u16, usize>,
    /// (route class, status) → count, for the statuses other than 200.
    by_status: BTreeMap<(&'static str, u16), usize>,
    /// Ids of answers acknowledged with 201.
    stored: Vec<String>,
    failures: Vec<String>,
}

impl Client {
    async fn call(&mut self, class: &'static str, req: reqwest::RequestBuilder) -> Option<Value> {
        let t0 = Instant::now();
        let sent = req.bearer_auth(&self.token).timeout(REQUEST_TIMEOUT).send().await;
        let r = match sent {
            Ok(r) => r,
            Err(e) => {
                self.failures.push(format!("{}: {class}: no answer ({e})", self.name));
                return None;
            }
        };
        let status = r.status().as_u16();
        let body = r.bytes().await;
        self.latency.entry(class).or_default().push(t0.elapsed());
        *self.statuses.entry(status).or_default() += 1;
        if status != 200 {
            let n = self.by_status.entry((class, status)).or_default();
            if *n == 0 && status >= 400 && std::env::var_os("RRM_SOAK_VERBOSE").is_some() {
                println!(
                    "  first {status} of {class}: {}",
                    String::from_utf8_lossy(body.as_deref().unwrap_or_default())
                );
            }
            *n += 1;
        }
        let Ok(body) = body else {
            self.failures.push(format!("{}: {class}: the body did not arrive", self.name));
            return None;
        };
        if status >= 500 {
            let text = String::from_utf8_lossy(&body);
            self.failures.push(format!("{}: {class}: {status} {text}", self.name));
        }
        let value = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
        if status == 201 && class == "POST /api/feedback" {
            if let Some(id) = value["id"].as_str() {
                self.stored.push(id.to_string());
            }
        }
        Some(value)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.url))
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.url))
    }

    /// One random request (weighted towards what labelers do most: next and answer).
    async fn step(&mut self) {
        let label = self.labels[self.rng.random_range(0..self.labels.len())].clone();
        let book = self.book.clone();
        match self.rng.random_range(0..100) {
            0..=29 => {
                let next = self.call("GET /api/queue/next", self.get("/api/queue/next")).await;
                if let Some(next) = next.filter(|n| !n["item"].is_null()) {
                    let prefer = ["a", "b", "tie"][self.rng.random_range(0..3)];
                    let body = json!({
                        "book": next["book"], "node": next["node"], "kind": "comparison",
                        "a": next["a"]["hash"], "b": next["b"]["hash"],
                        "prefer": prefer,
                        "confidence": self.rng.random_range(1..=9),
                    });
                    self.call("POST /api/feedback", self.post("/api/feedback").json(&body)).await;
                }
            }
            30..=37 => {
                let asks = self.call("GET /api/asks", self.get("/api/asks")).await;
                let q = asks.map(|a| a["asks"][0].clone()).unwrap_or(Value::Null);
                if let Some(id) = q["id"].as_u64() {
                    let body = if self.rng.random_bool(0.8) {
                        json!({"a": q["a"]["hash"], "b": q["b"]["hash"], "prefer": "a", "confidence": 6})
                    } else {
                        json!({"skip": true})
                    };
                    let req = self.post(&format!("/api/asks/{id}")).json(&body);
                    self.call("POST /api/asks/ID", req).await;
                }
            }
            38..=45 => {
                self.call("GET /next", self.get("/next")).await;
            }
            46..=53 => {
                self.call("GET /", self.get("/")).await;
            }
            54..=59 => {
                let path = format!("/books/{book}/nodes/{label}");
                self.call("GET node page", self.get(&path)).await;
            }
            60..=63 => {
                self.call("GET tree page", self.get(&format!("/books/{book}"))).await;
            }
            64..=67 => {
                self.call("GET /progress", self.get("/progress")).await;
            }
            68..=70 => {
                self.call("GET /jobs", self.get("/jobs")).await;
            }
            71..=73 => {
                self.call("GET /report/", self.get("/report/")).await;
            }
            74..=76 => {
                let format = if self.rng.random_bool(0.5) { "jsonl" } else { "trl" };
                let path = format!("/api/export?format={format}");
                self.call("GET /api/export", self.get(&path)).await;
            }
            77..=80 => {
                let path = format!("/api/nodes/{label}?book={book}");
                self.call("GET /api/nodes/ID", self.get(&path)).await;
            }
            81..=83 => {
                self.call("GET /api/books/ID/tree", self.get(&format!("/api/books/{book}/tree")))
                    .await;
            }
            84..=86 => {
                self.call("GET /api/queue", self.get("/api/queue?n=50")).await;
            }
            87..=88 => {
                self.call("GET /api/progress", self.get("/api/progress")).await;
            }
            89..=90 => {
                self.call("GET /api/feedback", self.get("/api/feedback")).await;
            }
            91..=92 => {
                self.call("GET /api/jobs", self.get("/api/jobs")).await;
            }
            93..=94 => {
                let path = format!("/api/nodes/{label}/draw?book={book}&k=2");
                self.call("POST draw", self.post(&path)).await;
            }
            95 => {
                let path = format!("/api/books/{book}/summarize?ask=1&best_of=2&budget=4");
                self.call("POST summarize", self.post(&path)).await;
            }
            96..=97 => {
                self.call("GET unknown", self.get("/api/nope")).await;
            }
            _ => {
                let path = format!("/api/nodes/{label}/candidates?book={book}");
                self.call("GET /api/nodes/ID/candidates", self.get(&path)).await;
            }
        }
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let size = std::env::var("RRM_SOAK").ok().and_then(|v| {
        let (c, s) = v.split_once('x')?;
        Some((c.parse().ok()?, s.parse().ok()?))
    });
    let (clients, seconds): (usize, u64) = match size {
        Some(size) => size,
        None if full => (16, 60),
        None => (4, 6),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let f = fixture(24, 6, 3).await;
        let generator = f.generator_spec();
        let Fixture { dir, config, ws, book_id, .. } = f;
        let mut tokens = Vec::new();
        for i in 0..clients {
            let name = format!("soak{i:02}");
            tokens.push((name.clone(), labelers::add(&ws, &name, false).unwrap()));
        }
        let mut cfg = ServeConfig::new("127.0.0.1:0".parse().unwrap());
        cfg.reward_model = None;
        cfg.generator = generator;
        cfg.ask_wait = Duration::from_secs(3);
        cfg.shutdown_grace = Duration::from_secs(5);
        let (state, listener) = serve::bind(ws, cfg).await.unwrap();
        let url = state.url();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve::serve(state, listener, async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
        let book = book_id.clone();
        let labels: Vec<String> =
            ["h0.0", "h0.1", "h0.2", "h0.3", "h0.5", "h1.0", "h1.1", "h2.0"].map(String::from).into();

        println!("serve_soak: {clients} clients for {seconds} s over loopback {url}");
        println!("  cpu: {}", cpu());
        // The jobs running through the soak: a draw for many nodes, and a summary that asks.
        let (_, first) = &tokens[0];
        for path in [
            format!("/books/{book}/draw"),
            format!("/api/books/{book}/summarize?ask=1&best_of=3&budget=6"),
        ] {
            let r = http
                .post(format!("{url}{path}"))
                .bearer_auth(first)
                .form(&[("n", "12"), ("k", "3")])
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .expect("starting a job");
            assert!(r.status().is_success() || r.status().is_redirection(), "{path}: {}", r.status());
        }

        let started = Instant::now();
        let until = started + Duration::from_secs(seconds);
        let tasks: Vec<_> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, (name, token))| {
                let mut c = Client {
                    http: http.clone(),
                    url: url.clone(),
                    token,
                    name,
                    book: book.clone(),
                    labels: labels.clone(),
                    rng: StdRng::seed_from_u64(i as u64),
                    latency: BTreeMap::new(),
                    statuses: BTreeMap::new(),
                    by_status: BTreeMap::new(),
                    stored: Vec::new(),
                    failures: Vec::new(),
                };
                tokio::spawn(async move {
                    while Instant::now() < until {
                        c.step().await;
                    }
                    c
                })
            })
            .collect();
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.expect("a client task"));
        }
        let wall = started.elapsed();

        // The server still answers, then stops within its grace.
        let home = http.get(format!("{url}/")).bearer_auth(&done[0].token).timeout(REQUEST_TIMEOUT).send().await;
        assert_eq!(home.map(|r| r.status().as_u16()).ok(), Some(200), "GET / after the soak");
        let jobs: Value = http
            .get(format!("{url}/api/jobs"))
            .bearer_auth(&done[0].token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let t0 = Instant::now();
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .expect("the server stopped within 60 s")
            .unwrap()
            .unwrap();
        let stop_time = t0.elapsed();

        let failures: Vec<&String> = done.iter().flat_map(|c| &c.failures).collect();
        let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
        let mut by_status: BTreeMap<(&str, u16), usize> = BTreeMap::new();
        let mut by_class: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
        for c in &done {
            for (s, n) in &c.statuses {
                *statuses.entry(*s).or_default() += n;
            }
            for (k, n) in &c.by_status {
                *by_status.entry(*k).or_default() += n;
            }
            for (k, v) in &c.latency {
                by_class.entry(k).or_default().extend(v);
            }
        }
        let requests: usize = statuses.values().sum();
        let mut all: Vec<Duration> = by_class.values().flatten().copied().collect();
        all.sort();
        let p99 = support::percentile(&all, 0.99);
        println!(
            "  {requests} requests in {:.1} s ({:.0}/s), statuses {statuses:?}",
            wall.as_secs_f64(),
            requests as f64 / wall.as_secs_f64()
        );
        println!("  other than 200, by route: {by_status:?}");
        report("all routes", all.clone());
        for (class, v) in by_class {
            report(class, v);
        }
        let kinds: HashMap<String, usize> = jobs.as_array().into_iter().flatten().fold(
            HashMap::new(),
            |mut m, j| {
                *m.entry(format!("{} {}", j["kind"].as_str().unwrap_or(""), j["state"].as_str().unwrap_or("")))
                    .or_default() += 1;
                m
            },
        );
        println!("  jobs: {kinds:?}; stopped {:.2} s after the signal", stop_time.as_secs_f64());
        assert!(failures.is_empty(), "{} requests failed: {failures:?}", failures.len());
        assert!(p99 < P99_LIMIT, "p99 {p99:?} over the {P99_LIMIT:?} bound");

        // Every acknowledged answer stored once; no labeler twice on a pair.
        let store = Store::open(&config.db).expect("the database, released by the server");
        let records = feedback::all(&store).unwrap();
        let ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        let acknowledged: Vec<&String> = done.iter().flat_map(|c| &c.stored).collect();
        for id in &acknowledged {
            assert!(ids.contains(id.as_str()), "acknowledged answer {id} was lost");
        }
        let mut seen = HashSet::new();
        for r in &records {
            if let FeedbackKind::Comparison { a, b, .. } = &r.kind {
                let (x, y) = if a.hash <= b.hash { (&a.hash, &b.hash) } else { (&b.hash, &a.hash) };
                assert!(
                    seen.insert((r.labeler.clone(), r.input_key.clone(), x.clone(), y.clone())),
                    "{} has two comparisons of one pair",
                    r.labeler
                );
            }
        }
        drop(store);
        let _keep = &dir;
        let check = std::process::Command::new(env!("CARGO_BIN_EXE_rrm"))
            .args(["db", "check"])
            .env("RRM_DB", &config.db)
            .output()
            .expect("rrm db check runs");
        assert!(
            check.status.success(),
            "rrm db check: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        println!(
            "  {} answers acknowledged, all stored once ({} records); rrm db check: clean; p99 {:.0} ms (bound {} ms)",
            acknowledged.len(),
            records.len(),
            p99.as_secs_f64() * 1000.0,
            P99_LIMIT.as_millis()
        );
    });
}
