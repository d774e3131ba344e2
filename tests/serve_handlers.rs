//! The web app's handlers in process (tower `oneshot`), over a workspace with a hostile book
//! summarized by a tiny random model: escaping, sessions and CSRF, the JSON API and its errors,
//! answers stored once, overlap between labelers, jobs, the owner file.

mod serve_common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use rrm::serve::testing::{fixture, Fixture, IMG, SCRIPT};
use rrm::serve::{self, AppState, ServeError};
use rrm::workspace::labelers;
use serde_json::{json, Value};
use serve_common::{config, state, wait_for_job, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_is_escaped_everywhere() {
    let f = fixture(8, 3, 3).await;
    let state = state(&f, 1);
    let mut c = Client::new(&state);
    let book = f.book_id.clone();

    let home = c.get("/").await;
    assert_eq!(home.status, StatusCode::OK, "{}", home.body);
    let set = home.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let csp = home.headers.get(header::CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    for page in [home.body.clone(), c.get(&format!("/books/{book}")).await.body] {
        assert!(page.contains("The Orchard &lt;script&gt;alert("), "{page}");
        assert!(!page.contains(SCRIPT));
    }
    // The leaves whose passages carry markup, and the parent that shows them in place.
    let mut seen_script = false;
    let mut seen_img = false;
    for node in ["h0.0", "h0.1", "h0.2", "h0.3", "h1.0", "h1.1"] {
        let page = c.get(&format!("/books/{book}/nodes/{node}")).await;
        assert_eq!(page.status, StatusCode::OK, "{node}: {}", page.body);
        assert!(!page.body.contains(SCRIPT), "{node} shows raw script");
        assert!(!page.body.contains(IMG), "{node} shows raw img");
        assert!(!page.body.contains("<img"), "{node}");
        seen_script |= page.body.contains("&lt;script&gt;alert(");
        seen_img |= page.body.contains("&lt;img src=x onerror=alert(1)&gt;");
    }
    assert!(seen_script && seen_img, "the hostile paragraphs were not shown at all");
    // The API returns the text as JSON strings (escaped by JSON, served as JSON).
    let api = c.get(&format!("/api/books/{book}/tree")).await;
    assert_eq!(api.headers.get(header::CONTENT_TYPE).unwrap(), "application/json");
    assert!(api.json()["tree"]["book"]["title"].as_str().unwrap().contains(SCRIPT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answers_once_and_refuses_bad_input() {
    let f = fixture(8, 3, 3).await;
    let state = state(&f, 1);
    let mut c = Client::new(&state);
    let book = f.book_id.clone();

    // Shapes and 404s.
    let me = c.get("/api/me").await.json();
    assert_eq!(me["labeler"], "tester");
    let books = c.get("/api/books").await.json();
    assert_eq!(books.as_array().unwrap().len(), 1);
    assert_eq!(books[0]["id"], book.as_str());
    let node = c.get("/api/nodes/h0.0").await.json();
    assert_eq!(node["id"], "h0.0");
    assert!(node["text"].is_string() && node["input"].is_string());
    assert!(node["stored_candidates"].as_array().unwrap().len() >= 2, "{node}");
    let missing = c.get("/api/nodes/h9.9").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json()["error"].as_str().unwrap().contains("no node 'h9.9'"));
    let bad_book = c.get("/api/nodes/h0.0?book=zzzz").await;
    assert_eq!(bad_book.status, StatusCode::NOT_FOUND, "{}", bad_book.body);
    assert_eq!(c.get("/api/nope").await.status, StatusCode::NOT_FOUND);
    let page404 = c.get("/books/deadbeefdeadbeef").await;
    assert_eq!(page404.status, StatusCode::NOT_FOUND);
    assert!(page404.body.contains("no book with a task tree"), "{}", page404.body);
    assert_eq!(c.get(&format!("/books/{book}/nodes/h77.0")).await.status, StatusCode::NOT_FOUND);

    // The next item, and an answer to it.
    let next = c.get("/api/queue/next").await.json();
    let (node, a, b) = (
        next["node"].as_str().unwrap().to_string(),
        next["a"]["hash"].as_str().unwrap().to_string(),
        next["b"]["hash"].as_str().unwrap().to_string(),
    );
    let answer = json!({"book": book, "node": node, "kind": "comparison", "a": a, "b": b, "prefer": "b", "confidence": 8});
    let no_csrf = c.post_json("/api/feedback", None, &answer).await;
    assert_eq!(no_csrf.status, StatusCode::FORBIDDEN, "{}", no_csrf.body);
    let csrf = c.csrf().await;
    let stored = c.post_json("/api/feedback", Some(&csrf), &answer).await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.body);
    let id = stored.json()["id"].as_str().unwrap().to_string();
    assert_eq!(stored.json()["record"]["labeler"], "tester");
    // A second submit of the same comparison stores nothing new.
    let again = c.post_json("/api/feedback", Some(&csrf), &answer).await;
    assert_eq!(again.json()["id"], id.as_str());
    let listed = c.get("/api/feedback").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // The next item is another pair.
    let next2 = c.get("/api/queue/next").await.json();
    assert!(next2["item"].is_object());
    assert!(
        !(next2["node"] == node.as_str()
            && next2["a"]["hash"] == a.as_str()
            && next2["b"]["hash"] == b.as_str())
    );

    // Malformed and wrong answers: 4xx with a message, never a panic.
    for (body, what) in [
        (
            json!({"book": book, "node": node, "kind": "comparison", "a": a, "b": a, "prefer": "a", "confidence": 5}),
            "same candidate",
        ),
        (
            json!({"book": book, "node": node, "kind": "comparison", "a": a, "b": b, "prefer": "a", "confidence": 12}),
            "confidence",
        ),
        (
            json!({"book": book, "node": node, "kind": "comparison", "a": "ffff0000", "b": b, "prefer": "a", "confidence": 5}),
            "no candidate",
        ),
        (
            json!({"book": book, "node": node, "kind": "comparison", "a": "<b>", "b": b, "prefer": "a", "confidence": 5}),
            "hash",
        ),
        (
            json!({"book": book, "node": node, "kind": "likert", "summary": a, "coverage": 0, "accuracy": 1, "coherence": 1, "overall": 1}),
            "coverage",
        ),
        (
            json!({"book": book, "node": node, "kind": "critique", "summary": a, "text": "  "}),
            "empty",
        ),
        (json!({"book": book, "node": node, "kind": "poem"}), "poem"),
        (json!({"book": book, "node": "h0.99", "kind": "demonstration", "text": "x"}), "no node"),
        (json!({"node": node}), "book"),
    ] {
        let r = c.post_json("/api/feedback", Some(&csrf), &body).await;
        assert!(r.status.is_client_error(), "{what}: {} {}", r.status, r.body);
        let message = r.json()["error"].as_str().unwrap().to_string();
        assert!(message.contains(what), "{what}: {message}");
    }
    let raw = c
        .request("POST", "/api/feedback")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-csrf-token", &csrf)
        .body(Body::from("{\"book\": [1,2"))
        .unwrap();
    let r = c.send(raw).await;
    assert!(r.status.is_client_error(), "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("JSON"), "{}", r.body);
    let huge =
        json!({"book": book, "node": node, "kind": "demonstration", "text": "x".repeat(400_000)});
    assert_eq!(
        c.post_json("/api/feedback", Some(&csrf), &huge).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let long =
        json!({"book": book, "node": node, "kind": "demonstration", "text": "x".repeat(30_000)});
    assert_eq!(
        c.post_json("/api/feedback", Some(&csrf), &long).await.status,
        StatusCode::BAD_REQUEST
    );

    // Forms: the CSRF field, bad numbers, then good answers that redirect.
    let path = format!("/books/{book}/nodes/{node}/answer");
    let likert = [
        ("kind", "likert"),
        ("a", a.as_str()),
        ("b", b.as_str()),
        ("side", "2"),
        ("coverage", "5"),
        ("accuracy", "6"),
        ("coherence", "4"),
        ("overall", "5"),
    ];
    let r = c.post_form(&path, &likert).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let mut with_csrf = likert.to_vec();
    with_csrf.push(("csrf", &csrf));
    let r = c.post_form(&path, &with_csrf).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(r.location().contains("done=likert"), "{}", r.location());
    let r = c
        .post_form(
            &path,
            &[
                ("csrf", &csrf),
                ("kind", "comparison"),
                ("a", &a),
                ("b", &b),
                ("prefer", "a"),
                ("confidence", "abc"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("confidence must be a number"), "{}", r.body);
    let critique = "Too short; it misses the ledger. <script>x</script>";
    let r = c
        .post_form(
            &path,
            &[
                ("csrf", &csrf),
                ("kind", "critique"),
                ("a", &a),
                ("b", &b),
                ("side", "1"),
                ("text", critique),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = c
        .post_form(
            &path,
            &[("csrf", &csrf), ("kind", "demonstration"), ("text", "Letters go to the harbour.")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = c
        .post_form(
            &path,
            &[
                ("csrf", &csrf),
                ("kind", "correction"),
                ("a", &a),
                ("b", &b),
                ("side", "1"),
                ("text", "An edited summary of the week."),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = c
        .post_form(
            &path,
            &[
                ("csrf", &csrf),
                ("kind", "comparison"),
                ("a", &a),
                ("b", &b),
                ("prefer", "tie"),
                ("confidence", "3"),
                ("advance", "1"),
            ],
        )
        .await;
    assert_eq!(r.location(), "/next");
    let kinds: Vec<String> = c
        .get("/api/feedback")
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    for k in ["comparison", "likert", "critique", "demonstration", "correction"] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing in {kinds:?}");
    }
    let garbage = c
        .request("POST", &path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("%%%&&==\u{0}"))
        .unwrap();
    assert!(c.send(garbage).await.status.is_client_error());

    // Host and Origin checks.
    let evil = Request::builder()
        .uri("/")
        .header(header::HOST, "rebind.example:8080")
        .body(Body::empty())
        .unwrap();
    assert_eq!(c.send(evil).await.status, StatusCode::FORBIDDEN);
    let cross = c
        .request("POST", "/api/feedback")
        .header(header::ORIGIN, "http://rebind.example")
        .header("x-csrf-token", &csrf)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(answer.to_string()))
        .unwrap();
    assert_eq!(c.send(cross).await.status, StatusCode::FORBIDDEN);

    // Progress, agreement and exports (the same files as the CLI writes).
    let progress = c.get("/api/progress").await.json();
    assert_eq!(progress["progress"]["by_labeler"]["tester"]["total"], 5);
    let page = c.get("/progress").await;
    assert!(page.body.contains("tester") && page.body.contains("Export TRL"));
    let jsonl = c.get("/api/export?format=jsonl").await;
    assert_eq!(jsonl.body.lines().count(), 5);
    assert!(jsonl
        .headers
        .get(header::CONTENT_DISPOSITION)
        .unwrap()
        .to_str()
        .unwrap()
        .contains("attachment"));
    let trl = c.get("/api/export?format=trl").await;
    assert!(trl.body.lines().count() >= 1, "{}", trl.body);
    assert_eq!(c.get("/api/export?format=xml").await.status, StatusCode::BAD_REQUEST);

    // A job: draw candidates for a node that has one.
    let before = c.get(&format!("/api/nodes/h0.5/candidates?book={book}")).await.json();
    let r = c
        .post_json(&format!("/api/nodes/h0.5/draw?book={book}&k=2"), Some(&csrf), &json!({}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let job = wait_for_job(&mut c, r.json()["job"].as_u64().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    let after = c.get(&format!("/api/nodes/h0.5/candidates?book={book}")).await.json();
    assert!(after.as_array().unwrap().len() > before.as_array().unwrap().len(), "{job}");
    assert!(c.get("/jobs").await.body.contains("draw 2 candidates for h0.5"));
    assert_eq!(c.get("/api/jobs/99").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelers_sign_in_and_overlap_is_kept() {
    let f = fixture(8, 3, 4).await;
    let ann = labelers::add(&f.ws, "ann", false).unwrap();
    let bob = labelers::add(&f.ws, "bob", false).unwrap();
    let cy = labelers::add(&f.ws, "cy", false).unwrap();
    let state = state(&f, 2);
    assert!(state.tokens_required);

    // Pages send strangers to sign in; the API answers 401.
    let mut anon = Client::new(&state);
    let r = anon.get("/").await;
    assert_eq!((r.status, r.location().as_str()), (StatusCode::SEE_OTHER, "/login"));
    assert_eq!(anon.get("/api/books").await.status, StatusCode::UNAUTHORIZED);
    let login = anon.get("/login").await;
    assert!(login.body.contains("Sign in"));
    let csrf = anon.csrf().await;
    let wrong = anon.post_form("/login", &[("csrf", &csrf), ("token", "rrm_0000")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let old_cookie = anon.cookie.clone();
    let no_csrf = anon.post_form("/login", &[("token", &ann)]).await;
    assert_eq!(no_csrf.status, StatusCode::FORBIDDEN);
    let ok = anon.post_form("/login", &[("csrf", &csrf), ("token", &ann)]).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    assert_ne!(anon.cookie, old_cookie, "a new session id on sign-in");
    let home = anon.get("/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.body.contains(">ann<"), "{}", home.body);

    // Overlap 2: ann and bob may get the same pair, cy then gets another; nobody twice.
    let mut clients: Vec<Client> = [&ann, &bob, &cy]
        .iter()
        .map(|t| Client { bearer: Some(t.to_string()), ..Client::new(&state) })
        .collect();
    let key = |v: &Value| {
        let mut p = [
            v["a"]["hash"].as_str().unwrap().to_string(),
            v["b"]["hash"].as_str().unwrap().to_string(),
        ];
        p.sort();
        format!("{}/{}/{}", v["node"], p[0], p[1])
    };
    let mut seen: Vec<std::collections::HashSet<String>> = vec![Default::default(); 3];
    let mut per_pair: std::collections::HashMap<String, usize> = Default::default();
    for round in 0..6 {
        for (i, c) in clients.iter_mut().enumerate() {
            let next = c.get("/api/queue/next").await.json();
            if next["item"].is_null() {
                continue;
            }
            let k = key(&next);
            assert!(seen[i].insert(k.clone()), "labeler {i} got {k} twice (round {round})");
            let r = c
                .post_json(
                    "/api/feedback",
                    None,
                    &json!({"book": next["book"], "node": next["node"], "kind": "comparison",
                            "a": next["a"]["hash"], "b": next["b"]["hash"], "prefer": "a", "confidence": 6}),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            *per_pair.entry(k).or_default() += 1;
        }
    }
    assert!(per_pair.values().all(|&n| n <= 2), "{per_pair:?}");
    assert!(per_pair.values().any(|&n| n == 2), "no pair was shared: {per_pair:?}");
    let records = c_records(&mut clients[0]).await;
    assert!(records.iter().all(|r| ["ann", "bob", "cy"].contains(&r["labeler"].as_str().unwrap())));
    let progress = clients[0].get("/api/progress").await.json();
    assert!(progress["agreement"]["shared_pairs"].as_u64().unwrap() >= 1, "{progress}");
    assert!(progress["by_height"]["0"].is_object(), "{progress}");
    let bad =
        Client { bearer: Some("rrm_nope".into()), ..Client::new(&state) }.get("/api/me").await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);

    // Without labelers, only loopback addresses.
    let g = fixture(3, 0, 2).await;
    let open: SocketAddr = "0.0.0.0:0".parse().unwrap();
    match AppState::new(g.ws.clone(), config(&g, 1), open) {
        Err(ServeError::OpenWithoutLabelers { .. }) => {}
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

async fn c_records(c: &mut Client) -> Vec<Value> {
    c.get("/api/feedback").await.json().as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_owns_the_database_and_says_so() {
    let f = fixture(3, 0, 2).await;
    let mut cfg = config(&f, 1);
    cfg.addr = "127.0.0.1:0".parse().unwrap();
    let (state, listener) = serve::bind(f.ws.clone(), cfg).await.unwrap();
    let url = state.url();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::serve(state, listener, async move {
        let _ = stopped.await;
    }));
    let owner = rrm::store::Owner::file(&f.config.db);
    for _ in 0..100 {
        if owner.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let db = f.config.db.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_rrm"))
            .args(["feedback", "list"])
            .env("RRM_DB", &db)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("`rrm serve` at {url} (pid {})", std::process::id())),
        "{stderr}"
    );
    assert!(stderr.contains("Ctrl-C"), "{stderr}");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(!owner.exists(), "the owner file is removed at the end");
}

/// `summarize --ask` under the web app: a summarize job with asking puts its question at the
/// head of the queue (`/next` opens it), waits, and goes on with the answer; the answer is one
/// stored comparison with the labeler who gave it; a skip lets the job go on without a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_ask_waits_at_the_head_of_the_queue() {
    let f = fixture(6, 2, 3).await;
    let ann = labelers::add(&f.ws, "ann", false).unwrap();
    let bob = labelers::add(&f.ws, "bob", false).unwrap();
    let state = state(&f, 1);
    let mut c = Client { bearer: Some(ann.clone()), ..Client::new(&state) };
    let mut b = Client { bearer: Some(bob.clone()), ..Client::new(&state) };
    let before = c.get("/api/feedback").await.json();
    let before = before.as_array().map_or(0, Vec::len);

    // Bad settings are refused before any job starts.
    let bad = c
        .post_json(&format!("/api/books/{}/summarize?ask=1&best_of=1", f.book_id), None, &json!({}))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    let bad = c
        .post_json(
            &format!("/api/books/{}/summarize?ask=1&best_of=2&budget=2&order=sideways", f.book_id),
            None,
            &json!({}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert!(bad.body.contains("ranked"), "{}", bad.body);
    // Best of 2, no reward model: it asks at every node, two questions at most.
    let r = c
        .post_json(
            &format!("/api/books/{}/summarize?ask=1&best_of=2&budget=2", f.book_id),
            None,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let job = r.json()["job"].as_u64().unwrap();

    let mut answered = Vec::new();
    for round in 0..2 {
        // Wait for the job's question.
        let mut asks = Value::Null;
        for _ in 0..600 {
            asks = c.get("/api/asks").await.json();
            if !asks["asks"].as_array().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let q = asks["asks"][0].clone();
        assert!(q.is_object(), "no question came: {asks}");
        assert_eq!(q["job"].as_u64(), Some(job));
        let id = q["id"].as_u64().unwrap();
        // The head of ann's queue; reserved for her, so bob does not get it.
        let next = c.get("/next").await;
        assert_eq!((next.status, next.location()), (StatusCode::SEE_OTHER, format!("/asks/{id}")));
        let page = c.get(&format!("/asks/{id}")).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("waits for you"), "{}", page.body);
        assert!(!page.body.contains(SCRIPT), "unescaped markup on the question page");
        assert_ne!(b.get("/next").await.location(), format!("/asks/{id}"));
        let taken = b.post_json(&format!("/api/asks/{id}"), None, &json!({"skip": true})).await;
        assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.body);
        // A pair that is not the question's is refused, and the question stays.
        let wrong = c
            .post_json(
                &format!("/api/asks/{id}"),
                None,
                &json!({"a": "00", "b": "11", "prefer": "a"}),
            )
            .await;
        assert_eq!(wrong.status, StatusCode::BAD_REQUEST, "{}", wrong.body);
        if round == 0 {
            let r = c
                .post_json(
                    &format!("/api/asks/{id}"),
                    None,
                    &json!({"a": q["a"]["hash"], "b": q["b"]["hash"], "prefer": "b", "confidence": 8}),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            let record = r.json()["record"].clone();
            assert_eq!(record["labeler"], "ann");
            assert_eq!(record["prefer"], "b");
            assert_eq!(record["node"], q["node"]);
            answered.push(record);
        } else {
            let r = c.post_json(&format!("/api/asks/{id}"), None, &json!({"skip": true})).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        }
        // Answered once: a second answer finds no question.
        let again = c.post_json(&format!("/api/asks/{id}"), None, &json!({"skip": true})).await;
        assert_eq!(again.status, StatusCode::NOT_FOUND);
    }
    let done = wait_for_job(&mut c, job).await;
    assert_eq!(done["state"], "done", "{done}");
    assert!(done["message"].as_str().unwrap().contains("asked 2 question(s)"), "{done}");
    assert!(c.get("/api/asks").await.json()["asks"].as_array().unwrap().is_empty());
    // Exactly one new record: the answer, stored once (not again by the selector).
    let after = c.get("/api/feedback").await.json();
    let after = after.as_array().unwrap();
    assert_eq!(after.len(), before + 1, "{after:?}");
    assert!(after.iter().any(|r| r["id"] == answered[0]["id"]));
}

fn eval_doc(id: &str, r1: f64) -> rrm::eval::runs::DocScores {
    use rrm::eval::rouge::RougeMulti;
    rrm::eval::runs::DocScores {
        id: id.into(),
        book_id: format!("book-{id}"),
        document_words: 100,
        summary: "a summary".into(),
        summary_words: 10,
        references: 2,
        reference_words: 12.0,
        rouge: RougeMulti {
            rouge1_max: r1,
            rouge2_max: r1 / 2.0,
            rouge_l_max: r1 * 0.8,
            rouge1_mean: r1 * 0.9,
            rouge2_mean: r1 / 3.0,
            rouge_l_mean: r1 * 0.7,
        },
        lead: RougeMulti { rouge1_max: 0.2, ..RougeMulti::default() },
        length_ratio: 10.0 / 12.0,
        reward: None,
        reward_std: None,
        labeler: Some(r1),
        labeler_lead: Some(0.1),
        grounding: None,
        nodes: 3,
        computed: 3,
        tokens_generated: 30,
        run_id: None,
    }
}

fn save_eval_run(f: &Fixture, name: &str, created_unix: u64, shift: f64) {
    let run = rrm::eval::runs::EvalRun {
        name: name.into(),
        created_unix,
        settings: json!({}),
        documents: ["d1", "d2", "d3"].iter().map(|d| eval_doc(d, 0.3 + shift)).collect(),
        seconds: 1.0,
    };
    rrm::eval::runs::save(f.ws.store(), &run, false).unwrap();
}

/// `/report/`: the page `rrm eval report` writes, drawn from the store by the same function; a
/// page that says how to make a run when none is stored; only the files the drawing wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eval_report_is_served_from_the_store() {
    let f = fixture(3, 0, 2).await;
    let state = state(&f, 1);
    let mut c = Client::new(&state);
    assert!(c.get("/").await.body.contains("href=\"/report/\""), "the navigation links it");

    // No run stored: a clear page, not an error.
    let r = c.get("/report").await;
    assert_eq!((r.status, r.location().as_str()), (StatusCode::SEE_OTHER, "/report/"));
    let page = c.get("/report/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("No evaluation run is stored yet"), "{}", page.body);
    assert!(page.body.contains("rrm eval summaries --references"), "{}", page.body);
    assert_eq!(c.get("/report/runs.svg").await.status, StatusCode::NOT_FOUND);

    // One run: the report's page, with its figure served as SVG and its data as CSV.
    save_eval_run(&f, "greedy", 100, 0.0);
    let page = c.get("/report/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    assert!(page.body.contains("rrm evaluation report") && page.body.contains("greedy"));
    assert!(page.body.contains("<img src=\"runs.svg\""), "{}", page.body);
    assert!(page.body.contains("href=\"/\""), "a way back into the app");
    let csp = page.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
    let svg = c.get("/report/runs.svg").await;
    assert_eq!(svg.status, StatusCode::OK, "{}", svg.body);
    assert_eq!(svg.headers[header::CONTENT_TYPE], "image/svg+xml");
    assert!(svg.body.contains("<svg"), "{}", svg.body);
    let csv = c.get("/report/runs.csv").await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(csv.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/csv"));
    assert!(csv.body.contains("greedy"), "{}", csv.body);
    assert_eq!(c.get("/report/index.html").await.status, StatusCode::OK);
    // A figure without data was not written, so it is not served.
    assert_eq!(c.get("/report/compare.svg").await.status, StatusCode::NOT_FOUND);

    // A second run changes the store: the report is drawn again, the comparison with it.
    save_eval_run(&f, "bo4", 200, 0.1);
    let page = c.get("/report/").await;
    assert!(page.body.contains("bo4") && page.body.contains("compare.svg"), "{}", page.body);
    let svg = c.get("/report/compare.svg").await;
    assert_eq!(
        (svg.status, svg.headers[header::CONTENT_TYPE].to_str().unwrap()),
        (StatusCode::OK, "image/svg+xml")
    );

    // Nothing but the names the drawing wrote.
    for path in [
        "/report/..%2Fconf",
        "/report/..%2F..%2Fdb%2Fconf",
        "/report/%2Fetc%2Fpasswd",
        "/report/../conf",
        "/report/..",
        "/report/.",
        "/report/index.html%00",
        "/report/runs.svg%2F..%2F..%2Fconf",
    ] {
        let r = c.get(path).await;
        assert!(
            matches!(r.status, StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST),
            "{path}: {} {}",
            r.status,
            r.body
        );
    }
}

/// The web app's Summarize runs the level models `rrm summarize` would (`--model-at`, the
/// built-in root policy): after a run of the base model alone, a run with another model at the
/// root computes only the root; the other nodes come from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summarize_in_the_web_app_runs_the_root_model() {
    let f = fixture(6, 0, 1).await;
    let top = f.dir.path().join("top.gguf");
    let tiny = rrm::infer::testing::TinyOptions { context_length: 2048, ..Default::default() };
    rrm::infer::testing::tiny_gguf(&top, 12, &tiny).unwrap();
    let ann = labelers::add(&f.ws, "ann", false).unwrap();
    let summarize = |cfg: serve::ServeConfig| {
        let (ws, book, ann) = (f.ws.clone(), f.book_id.clone(), ann.clone());
        async move {
            let state = AppState::new(ws, cfg, serve_common::ADDR.parse().unwrap()).unwrap();
            let mut c = Client { bearer: Some(ann), ..Client::new(&state) };
            let r = c.post_json(&format!("/api/books/{book}/summarize"), None, &json!({})).await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
            let done = wait_for_job(&mut c, r.json()["job"].as_u64().unwrap()).await;
            assert_eq!(done["state"], "done", "{done}");
            done["message"].as_str().unwrap().to_string()
        }
    };
    let base = summarize(config(&f, 1)).await;
    assert!(base.contains("0 from cache"), "{base}");
    let mut cfg = config(&f, 1);
    let spec = rrm::infer::spec::GeneratorSpec {
        model: Some(top.display().to_string()),
        ..f.generator_spec()
    };
    cfg.level_generators = vec![(rrm::compose::Level::Root, spec)];
    let mixed = summarize(cfg).await;
    assert!(mixed.contains("(1 generated,"), "only the root is new: {mixed} (before: {base})");
}
