//! The web app under the conditions that hung or corrupted it (issue: `rrm serve` stops
//! answering after `n` on an empty queue), each request under a timeout so a hang fails in
//! seconds: the empty queue of a freshly decomposed book, jobs that panic, fail or are
//! cancelled, a slow first model load, questions nobody answers, requests from other sites and
//! without a session, hashes with control characters, and a shutdown with a request that never
//! finishes.

mod serve_common;

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rrm::feedback::{self, Feedback, FeedbackKind, Judged};
use rrm::infer::lazy::LazyGenerator;
use rrm::infer::ModelIdentity;
use rrm::serve::testing::{decomposed, fixture, Fixture};
use rrm::serve::{self, jobs, AppState, Failure};
use serde_json::{json, Value};
use serve_common::{config, state, wait_for_job, Client, ADDR};

/// The three `curl` lines, in process: a new user's database after `rrm decompose`
/// alone, `GET /`, `GET /next` (the empty queue), `GET /` again — with a session and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_on_the_empty_queue_of_a_decomposed_book_answers_and_so_does_everything_after() {
    let f = decomposed(6);
    let state = state(&f, 1);
    let mut c = Client::new(&state);
    assert_eq!(c.get("/").await.status, StatusCode::OK);
    let next = c.get("/next").await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.body);
    assert!(next.body.contains("id=\"empty\""), "the empty-queue page: {}", next.body);
    assert!(next.body.contains("draw 2 candidates for 5 nodes"), "it offers d: {}", next.body);
    for path in ["/", "/progress", "/jobs", "/api/books", "/api/queue", "/api/progress"] {
        let r = c.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
    }
    // curl sends no cookie: the same three answers.
    for path in ["/", "/next", "/"] {
        let r = Client::new(&state).get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path} without a session: {}", r.body);
    }
    // `d`: candidates for leaves of a book that has no summary yet are rated like any others.
    let csrf = c.csrf().await;
    let r = c
        .post_form(
            &format!("/books/{}/draw", f.book_id),
            &[("csrf", &csrf), ("n", "2"), ("k", "2")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let job: u64 = r.location().rsplit('=').next().unwrap().parse().unwrap();
    let done = wait_for_job(&mut c, job).await;
    assert_eq!(done["state"], "done", "{done}");
    let next = c.get("/next").await;
    assert_eq!(next.status, StatusCode::SEE_OTHER, "{}", next.body);
    assert!(next.location().contains("/nodes/h0."), "a leaf to rate: {}", next.location());
    assert_eq!(c.get(&next.location()).await.status, StatusCode::OK);
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not after 60 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn a_record(f: &Fixture, note: &str) -> Feedback {
    let kind = FeedbackKind::Demonstration { summary: Judged::new(format!("written {note}")) };
    Feedback::new("tester", "some-input-key", "an input", 0, kind)
        .at(Some(f.book_id.clone()), Some("h0.0".into()))
}

/// Finding 6: a panicking job stayed Running forever (and, de-duplicated by title, could never
/// run again); a failing job skipped the queue's refresh, so what it stored stayed invisible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_panic_or_fail_end_and_what_they_stored_shows() {
    let f = fixture(6, 1, 2).await;
    let state = state(&f, 1);
    let mut c = Client { bearer: None, ..Client::new(&state) };
    c.get("/").await;
    let panicking = |state: &serve::Shared| {
        jobs::start(state, "test", "panics".into(), "tester", None, true, |_, _, _| async {
            if std::hint::black_box(true) {
                panic!("a bug in the job");
            }
            Ok::<_, Failure>(String::new())
        })
    };
    let first = panicking(&state);
    let done = wait_for_job(&mut c, first).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(done["message"].as_str().unwrap().contains("a bug in the job"), "{done}");
    let second = panicking(&state);
    assert_ne!(second, first, "the same job starts again once the first has ended");
    wait_for_job(&mut c, second).await;

    let before = c.get("/api/feedback").await.json().as_array().unwrap().len();
    let record = a_record(&f, "by a job that then fails");
    let id = jobs::start(&state, "test", "fails".into(), "tester", None, true, |s, _, _| {
        let record = record.clone();
        async move {
            feedback::put(s.ws.store(), record).map_err(Failure::from)?;
            Err::<String, _>(Failure::internal("failed after storing"))
        }
    });
    let done = wait_for_job(&mut c, id).await;
    assert_eq!(done["state"], "failed", "{done}");
    let after = c.get("/api/feedback").await.json();
    assert_eq!(after.as_array().unwrap().len(), before + 1, "the stored record shows: {after}");
}

/// Finding 4: the model's first load ran on an async worker, and no request was answered until
/// it finished. On one worker thread, a 5-second load must not stop `GET /`.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_slow_first_model_load_does_not_stop_requests() {
    let f = fixture(6, 0, 2).await;
    let state = state(&f, 1);
    let spec = f.generator_spec();
    let identity = ModelIdentity { name: "slow tiny".into(), hash: "slow-tiny".into() };
    let slow = LazyGenerator::new(identity, move || {
        std::thread::sleep(Duration::from_secs(5));
        let g = spec.start(8, false)?;
        g.context_length()?;
        Ok(g)
    });
    state.use_generator(Arc::new(slow));
    let mut c = Client::new(&state);
    c.get("/").await;
    let csrf = c.csrf().await;
    let r = c
        .post_json(&format!("/api/nodes/h0.0/draw?book={}", f.book_id), Some(&csrf), &json!({}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let job = r.json()["job"].as_u64().unwrap();
    // Let the job reach the load.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    assert_eq!(c.get("/").await.status, StatusCode::OK);
    let waited = t0.elapsed();
    assert!(waited < Duration::from_millis(2500), "GET / waited {waited:?} for the model load");
    let done = wait_for_job(&mut c, job).await;
    assert_eq!(done["state"], "done", "{done}");
}

async fn start_asking(c: &mut Client, f: &Fixture, budget: usize) -> u64 {
    let r = c
        .post_json(
            &format!("/api/books/{}/summarize?ask=1&best_of=2&budget={budget}", f.book_id),
            None,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    r.json()["job"].as_u64().unwrap()
}

async fn first_question(c: &mut Client) -> Value {
    let mut q = Value::Null;
    wait_until("a question", async || {
        q = c.get("/api/asks").await.json()["asks"][0].clone();
        q.is_object()
    })
    .await;
    q
}

/// Finding 2: one unanswered question stalled a whole `--ask` run and nothing could stop it;
/// `/next` reserved the question for 15 minutes to a labeler who never opened it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_questions_end_and_asking_jobs_can_be_cancelled() {
    let ann = |f: &Fixture| rrm::workspace::labelers::add(&f.ws, "ann", false).unwrap();
    let bob = |f: &Fixture| rrm::workspace::labelers::add(&f.ws, "bob", false).unwrap();

    // Nobody answers within ask_wait: the node goes on with the ensemble's pick.
    let f = fixture(6, 0, 2).await;
    let token = ann(&f);
    let mut cfg = config(&f, 1);
    cfg.ask_wait = Duration::from_millis(800);
    let state = AppState::new(f.ws.clone(), cfg, ADDR.parse().unwrap()).unwrap();
    let mut c = Client { bearer: Some(token), ..Client::new(&state) };
    let job = start_asking(&mut c, &f, 1).await;
    first_question(&mut c).await;
    let done = wait_for_job(&mut c, job).await;
    assert_eq!(done["state"], "done", "{done}");
    assert!(c.get("/api/asks").await.json()["asks"].as_array().unwrap().is_empty());

    // A long wait, cancelled: the job ends Cancelled, its question goes, and it can run again.
    let f = fixture(6, 0, 2).await;
    let (ta, tb) = (ann(&f), bob(&f));
    let state = AppState::new(f.ws.clone(), config(&f, 1), ADDR.parse().unwrap()).unwrap();
    let mut a = Client { bearer: Some(ta), ..Client::new(&state) };
    let mut b = Client { bearer: Some(tb), ..Client::new(&state) };
    let job = start_asking(&mut a, &f, 2).await;
    let q = first_question(&mut a).await;
    let id = q["id"].as_u64().unwrap();
    // /next points at it and reserves nothing; opening its page does.
    assert_eq!(a.get("/next").await.location(), format!("/asks/{id}"));
    assert_eq!(b.get("/next").await.location(), format!("/asks/{id}"), "not reserved by a");
    assert_eq!(a.get(&format!("/asks/{id}")).await.status, StatusCode::OK);
    assert_ne!(b.get("/next").await.location(), format!("/asks/{id}"), "reserved once shown");
    assert_eq!(b.get(&format!("/asks/{id}")).await.status, StatusCode::CONFLICT);

    let r = a.post_json(&format!("/api/jobs/{job}/cancel"), None, &json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let done = wait_for_job(&mut a, job).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert!(a.get("/api/asks").await.json()["asks"].as_array().unwrap().is_empty());
    let again = start_asking(&mut a, &f, 2).await;
    assert_ne!(again, job, "a cancelled job does not block running it again");
    first_question(&mut a).await;
    // The Jobs page offers the same: a cancel button on each running job.
    let page = a.get("/jobs").await;
    assert!(page.body.contains(&format!("action=\"/jobs/{again}/cancel\"")), "{}", page.body);
    let r = a.post_form(&format!("/jobs/{again}/cancel"), &[("csrf", "")]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(wait_for_job(&mut a, again).await["state"], "cancelled");
    let missing = a.post_json("/api/jobs/999/cancel", None, &json!({})).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

/// Finding 8, last part: answers to asked questions skipped the duplicate check, so a labeler
/// asked the same pair twice (a re-run) stored two opinions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_about_a_pair_already_compared_stores_nothing_new() {
    let f = fixture(6, 0, 2).await;
    let token = rrm::workspace::labelers::add(&f.ws, "ann", false).unwrap();
    let state = state(&f, 1);
    let mut c = Client { bearer: Some(token), ..Client::new(&state) };
    let answer = |q: &Value, prefer: &str| json!({"a": q["a"]["hash"], "b": q["b"]["hash"], "prefer": prefer, "confidence": 7});
    let job = start_asking(&mut c, &f, 1).await;
    let q1 = first_question(&mut c).await;
    let r = c.post_json(&format!("/api/asks/{}", q1["id"]), None, &answer(&q1, "b")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let first = r.json()["record"].clone();
    wait_for_job(&mut c, job).await;
    let count = c.get("/api/feedback").await.json().as_array().unwrap().len();

    // Another run (another budget: not cached) asks again; questions of other nodes are
    // skipped until the same node's comes (nodes ask side by side, in no fixed order).
    let job = start_asking(&mut c, &f, 1000).await;
    let mut q2 = Value::Null;
    wait_until("the same node's question", async || {
        for q in c.get("/api/asks").await.json()["asks"].as_array().cloned().unwrap_or_default() {
            if q["input_key"] == q1["input_key"] {
                q2 = q;
                return true;
            }
            c.post_json(&format!("/api/asks/{}", q["id"]), None, &json!({"skip": true})).await;
        }
        false
    })
    .await;
    let sorted = |q: &Value| {
        let mut p = [q["a"]["hash"].to_string(), q["b"]["hash"].to_string()];
        p.sort();
        p
    };
    assert_eq!(sorted(&q2), sorted(&q1), "the same pair");
    let r = c.post_json(&format!("/api/asks/{}", q2["id"]), None, &answer(&q2, "a")).await;
    assert!(r.status.is_success(), "{}", r.body);
    assert_eq!(r.json()["id"], first["id"], "the earlier record stands");
    c.post_json(&format!("/api/jobs/{job}/cancel"), None, &json!({})).await;
    wait_for_job(&mut c, job).await;
    let after = c.get("/api/feedback").await.json().as_array().unwrap().len();
    assert_eq!(after, count, "no second record of the same pair by the same labeler");
}

/// Finding 8: any web page could make the browser `GET /next` (leasing the real user's pairs);
/// requests without a session leased too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_from_other_sites_or_without_a_session_lease_nothing() {
    let f = fixture(6, 3, 3).await;
    let state = state(&f, 1);
    let mut c = Client::new(&state);
    c.get("/").await;
    let cross = c
        .send(
            c.request("GET", "/next")
                .header("sec-fetch-site", "cross-site")
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN, "{}", cross.body);
    assert_eq!(state.queue.leases(), 0);
    let sessionless = Client::new(&state).get("/next").await;
    assert_eq!(sessionless.status, StatusCode::SEE_OTHER, "it shows the next pair");
    assert!(sessionless.location().contains("/nodes/"), "{}", sessionless.location());
    assert_eq!(state.queue.leases(), 0, "a request without a session leases nothing");
    let api = Client::new(&state).get("/api/queue/next").await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED, "{}", api.body);
    // The user's own browser, same origin: leased.
    let own = c
        .send(
            c.request("GET", "/next")
                .header("sec-fetch-site", "same-origin")
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(own.status, StatusCode::SEE_OTHER, "{}", own.body);
    assert_eq!(state.queue.leases(), 1);
}

/// Finding 8: the `a`/`b` fields of an answer went into the redirect after the write, so a
/// control character gave a 500 after storing, and the retry stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_with_a_control_character_is_refused_before_anything_is_stored() {
    let f = fixture(6, 1, 3).await;
    let state = state(&f, 1);
    let mut c = Client::new(&state);
    c.get("/").await;
    let csrf = c.csrf().await;
    let node = &f.drawn[0];
    let cands = c.get(&format!("/api/nodes/{node}/candidates?book={}", f.book_id)).await.json();
    let (a, b) = (cands[0]["hash"].as_str().unwrap(), cands[1]["hash"].as_str().unwrap());
    let count = || feedback::all(f.ws.store()).unwrap().len();
    let before = count();
    let path = format!("/books/{}/nodes/{node}/answer", f.book_id);
    let bad_a = format!("{a}\r\nX-Injected: 1");
    let fields = |a: &str| {
        vec![
            ("csrf", csrf.clone()),
            ("kind", "likert".to_string()),
            ("side", "1".into()),
            ("a", a.to_string()),
            ("b", b.to_string()),
            ("coverage", "5".into()),
            ("accuracy", "5".into()),
            ("coherence", "5".into()),
            ("overall", "5".into()),
        ]
    };
    let owned = fields(&bad_a);
    let refs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = c.post_form(&path, &refs).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(count(), before, "nothing stored");
    let owned = fields(a);
    let refs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = c.post_form(&path, &refs).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(r.location().contains(&format!("a={a}")), "{}", r.location());
    assert_eq!(count(), before + 1);
    assert!(r.headers.get("x-injected").is_none());
}

/// Finding 7: graceful shutdown waited forever for a request that never finishes (here a
/// client that sent half its headers), keeping the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_request_that_never_finishes_ends_within_the_grace() {
    let f = fixture(4, 0, 2).await;
    let mut cfg = config(&f, 1);
    cfg.addr = "127.0.0.1:0".parse().unwrap();
    cfg.shutdown_grace = Duration::from_millis(500);
    let (state, listener) = serve::bind(f.ws.clone(), cfg).await.unwrap();
    let port = state.addr.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::serve(state, listener, async {
        let _ = stopped.await;
    }));
    // A complete request first: the server answers.
    let mut ok = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    ok.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        ok,
        "GET /static/app.css HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut ok, &mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // Then one that never finishes: headers cut off, the connection held open.
    let mut half = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        half,
        "POST /api/feedback HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 1000\r\n\r\n{{"
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let owner = rrm::store::Owner::file(&f.config.db);
    assert!(owner.exists(), "the owner file while serving");
    let t0 = Instant::now();
    stop.send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(15), server).await;
    assert!(ended.is_ok(), "serve did not return 15 s after the stop");
    ended.unwrap().unwrap().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(!owner.exists(), "no job runs: the owner file is gone");
    drop(half);
}
