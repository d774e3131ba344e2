//! Load on the web app: simulated labelers at once, each asking for its next item and
//! answering it over HTTP (loopback only), against `rrm serve` running in this process on a
//! workspace with a tiny random model. Checks that every answer is stored exactly once (none
//! lost, none duplicated, no labeler given a pair twice, no pair beyond the overlap) and reports
//! the latency of `GET /api/queue/next` and `POST /api/feedback` (p50/p95/max).
//!
//! `cargo bench --bench serve_load`: 50 labelers × 20 answers (1,000 records), overlap 3.
//! Under `cargo test --all-targets` (no `--bench` argument) a small run checks the same things.
//! `RRM_LOAD=LABELERSxANSWERS` (e.g. `10x5`) sets the size.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rrm::feedback::{self, FeedbackKind};
use rrm::serve::testing::{fixture, Fixture};
use rrm::serve::{self, ServeConfig};
use rrm::store::Store;
use rrm::workspace::labelers;
use serde_json::{json, Value};
use support::{cpu, report};

mod support;

const OVERLAP: usize = 3;

struct Outcome {
    labeler: String,
    ids: Vec<String>,
    pairs: Vec<String>,
    next: Vec<Duration>,
    answer: Vec<Duration>,
    ran_dry: bool,
}

async fn labeler(
    http: reqwest::Client,
    url: String,
    name: String,
    token: String,
    answers: usize,
) -> Outcome {
    let mut out = Outcome {
        labeler: name,
        ids: Vec::new(),
        pairs: Vec::new(),
        next: Vec::new(),
        answer: Vec::new(),
        ran_dry: false,
    };
    for i in 0..answers {
        let t0 = Instant::now();
        let next: Value = http
            .get(format!("{url}/api/queue/next"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET /api/queue/next")
            .json()
            .await
            .expect("JSON from /api/queue/next");
        out.next.push(t0.elapsed());
        if next["item"].is_null() {
            out.ran_dry = true;
            break;
        }
        let (a, b) =
            (next["a"]["hash"].as_str().unwrap_or(""), next["b"]["hash"].as_str().unwrap_or(""));
        let mut pair = [a.to_string(), b.to_string()];
        pair.sort();
        out.pairs.push(format!("{}|{}|{}", next["item"]["input_key"], pair[0], pair[1]));
        let body = json!({
            "book": next["book"], "node": next["node"], "kind": "comparison",
            "a": a, "b": b, "prefer": if i % 3 == 0 { "a" } else if i % 3 == 1 { "b" } else { "tie" },
            "confidence": 1 + (i % 9),
        });
        let t1 = Instant::now();
        let r = http
            .post(format!("{url}/api/feedback"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("POST /api/feedback");
        let status = r.status();
        let reply: Value = r.json().await.expect("JSON from /api/feedback");
        out.answer.push(t1.elapsed());
        assert_eq!(status.as_u16(), 201, "{reply}");
        out.ids.push(reply["id"].as_str().unwrap_or_default().to_string());
    }
    out
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (labelers_n, answers_n) = match std::env::var("RRM_LOAD").ok().and_then(|v| {
        let (l, a) = v.split_once('x')?;
        Some((l.parse().ok()?, a.parse().ok()?))
    }) {
        Some(size) => size,
        None if full => (50usize, 20usize),
        None => (5, 4),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        // 20 leaves with 8 candidates each (28 pairs a node): 560 pairs × overlap 3 = 1,680 slots.
        let Fixture { dir, config, ws, model, book_id: _, drawn } = fixture(22, 20, 7).await;
        let mut tokens = Vec::new();
        for i in 0..labelers_n {
            let name = format!("sim{i:02}");
            tokens.push((name.clone(), labelers::add(&ws, &name, false).unwrap()));
        }
        let mut cfg = ServeConfig::new("127.0.0.1:0".parse().unwrap());
        cfg.overlap = OVERLAP;
        cfg.reward_model = None;
        cfg.generator = rrm::infer::spec::GeneratorSpec {
            model: Some(model.display().to_string()),
            ..rrm::infer::spec::GeneratorSpec::local_default()
        };
        let (state, listener) = serve::bind(ws, cfg).await.unwrap();
        let url = state.url();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve::serve(state, listener, async move {
            let _ = stopped.await;
        }));

        println!(
            "serve_load: {labelers_n} labelers × {answers_n} answers, overlap {OVERLAP}, {} nodes with candidates, loopback {url}",
            drawn.len()
        );
        println!("  cpu: {}", cpu());
        let http = reqwest::Client::builder().pool_max_idle_per_host(labelers_n).build().unwrap();
        let started = Instant::now();
        let tasks: Vec<_> = tokens
            .iter()
            .map(|(name, token)| {
                tokio::spawn(labeler(http.clone(), url.clone(), name.clone(), token.clone(), answers_n))
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.expect("a labeler task"));
        }
        let wall = started.elapsed();
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();

        // Every answer stored exactly once.
        let store = Store::open(&config.db).expect("the database, released by the server");
        let records = feedback::all(&store).unwrap();
        let answered: usize = outcomes.iter().map(|o| o.ids.len()).sum();
        let dry = outcomes.iter().filter(|o| o.ran_dry).count();
        let stored_ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        for o in &outcomes {
            for id in &o.ids {
                assert!(stored_ids.contains(id.as_str()), "answer {id} of {} was lost", o.labeler);
            }
            let unique: HashSet<&String> = o.pairs.iter().collect();
            assert_eq!(unique.len(), o.pairs.len(), "{} was given a pair twice", o.labeler);
        }
        assert_eq!(records.len(), answered, "stored records ≠ answers acknowledged");
        let mut per_pair: HashMap<(String, String, String), HashSet<&str>> = HashMap::new();
        for r in &records {
            if let FeedbackKind::Comparison { a, b, .. } = &r.kind {
                let (x, y) = if a.hash <= b.hash { (&a.hash, &b.hash) } else { (&b.hash, &a.hash) };
                let who = per_pair.entry((r.input_key.clone(), x.clone(), y.clone())).or_default();
                assert!(who.insert(r.labeler.as_str()), "{} compared a pair twice", r.labeler);
            }
        }
        let widest = per_pair.values().map(HashSet::len).max().unwrap_or(0);
        assert!(widest <= OVERLAP, "a pair went to {widest} labelers (overlap {OVERLAP})");
        let expected = labelers_n * answers_n;
        if dry == 0 {
            assert_eq!(records.len(), expected);
        }
        println!(
            "  stored {} of {expected} answers ({} labelers ran out of pairs), none lost or duplicated; \
             {} pairs judged, at most {widest} labelers per pair",
            records.len(),
            dry,
            per_pair.len()
        );
        println!(
            "  wall {:.2} s, {:.0} answers/s",
            wall.as_secs_f64(),
            records.len() as f64 / wall.as_secs_f64().max(1e-9)
        );
        let all = |f: fn(&Outcome) -> &Vec<Duration>| outcomes.iter().flat_map(|o| f(o).iter().copied()).collect::<Vec<_>>();
        report("GET  /api/queue/next", all(|o| &o.next));
        report("POST /api/feedback", all(|o| &o.answer));
        drop(dir);
    });
}
