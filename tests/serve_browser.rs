//! The web app in a real browser: headless Chromium driven over WebDriver (Debian's `chromium`
//! and `chromium-driver`; `.ci/run` installs them). A labeler signs in, opens the next item,
//! answers with the keyboard alone (comparisons with confidence, Likert, a critique, a skip),
//! drills into a child and back; then the feedback read through the CLI's export holds exactly
//! those answers. Screenshots of the rating screen are kept under
//! `target/tmp/serve-browser/`, with the labeler's answers per minute in `metrics.json`.
//!
//! Without chromium and chromedriver on PATH the test says so and passes, except under CI
//! (`CI` set), where it fails.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use rrm::serve::testing::{fixture, Fixture, SCRIPT};
use rrm::serve::{self, ServeConfig};
use rrm::workspace::labelers;
use serde_json::{json, Value};

const CHROME_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
];

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
    })
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Kills chromedriver (and with it the browser) when the test ends, however it ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn press(c: &Client, keys: &[char]) {
    let mut actions = KeyActions::new("keyboard".into());
    for &k in keys {
        actions = actions.then(KeyAction::Down { value: k }).then(KeyAction::Up { value: k });
    }
    c.perform_actions(actions).await.unwrap();
}

async fn ctrl_enter(c: &Client) {
    let ctrl: char = Key::Control.into();
    let enter: char = Key::Enter.into();
    let actions = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: ctrl })
        .then(KeyAction::Down { value: enter })
        .then(KeyAction::Up { value: enter })
        .then(KeyAction::Up { value: ctrl });
    c.perform_actions(actions).await.unwrap();
}

async fn typing(c: &Client, text: &str) {
    let chars: Vec<char> = text.chars().collect();
    press(c, &chars).await;
}

/// Waits until the page's URL differs from `old` and the rating screen (or `selector`) is there.
async fn wait_page(c: &Client, old: &str, selector: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let url = c.current_url().await.unwrap().to_string();
        if url != old && c.find(Locator::Css(selector)).await.is_ok() {
            return url;
        }
        if Instant::now() >= deadline {
            let source = c.source().await.unwrap_or_default();
            let dir = artifacts();
            std::fs::write(dir.join("failed.html"), &source).unwrap();
            if let Ok(png) = c.screenshot().await {
                std::fs::write(dir.join("failed.png"), png).unwrap();
            }
            panic!("no page with {selector} after {old} (now at {url}); the page:\n{source}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every record `rrm feedback export` prints for the database at `db` (run after the server
/// has let it go).
fn exported(db: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_rrm"))
        .args(["feedback", "export"])
        .env("RRM_DB", db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn text_of(c: &Client, selector: &str) -> String {
    c.find(Locator::Css(selector)).await.unwrap().text().await.unwrap()
}

async fn value_of(c: &Client, selector: &str) -> String {
    c.find(Locator::Css(selector)).await.unwrap().attr("value").await.unwrap().unwrap_or_default()
}

/// Starts chromedriver and a headless Chromium session with a fresh profile.
async fn browser(chrome: &Path, chromedriver: &Path) -> (Driver, Client, tempfile::TempDir) {
    let port = free_port();
    let driver = Driver(
        Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = CHROME_FLAGS.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": chrome.display().to_string(), "args": args }),
    );
    let c = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session");
    // Every navigation and script under a limit: a server that stops answering fails the test.
    let limits = fantoccini::wd::TimeoutConfiguration::new(
        Some(Duration::from_secs(20)),
        Some(Duration::from_secs(20)),
        Some(Duration::ZERO),
    );
    c.update_timeouts(limits).await.expect("WebDriver timeouts");
    (driver, c, profile)
}

fn tools() -> Option<(PathBuf, PathBuf)> {
    Some((which(&["chromium", "chromium-browser", "google-chrome"])?, which(&["chromedriver"])?))
}

/// The browser and its driver; without them the test says it skipped (and fails under CI).
fn tools_or_skip() -> Option<(PathBuf, PathBuf)> {
    let found = tools();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs chromium and chromedriver (.ci/run installs them with apt-get)"
        );
        eprintln!("skipped: chromium and chromedriver are not on PATH (apt-get install chromium chromium-driver)");
    }
    found
}

/// What the test answered, to find in the export afterwards.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    kind: &'static str,
    node: String,
    hashes: Vec<String>,
    detail: String,
}

async fn pair(c: &Client) -> (String, String, String) {
    (
        text_of(c, "#node-id").await,
        value_of(c, "#answer input[name=a]").await,
        value_of(c, "#answer input[name=b]").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labeler_rates_with_the_keyboard_in_a_real_browser() {
    let Some((chrome, chromedriver)) = tools_or_skip() else { return };
    let Fixture { dir, config, ws, model: _, book_id, drawn: _ } = {
        let f = fixture(10, 6, 3).await;
        f
    };
    let token = labelers::add(&ws, "ann", false).unwrap();
    let mut cfg = ServeConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.generator = rrm::infer::spec::GeneratorSpec {
        model: Some(dir.path().join("tiny.gguf").display().to_string()),
        ..rrm::infer::spec::GeneratorSpec::local_default()
    };
    cfg.reward_model = None;
    let (state, listener) = serve::bind(ws, cfg).await.unwrap();
    let url = state.url();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::serve(state, listener, async move {
        let _ = stopped.await;
    }));

    let (_driver, c, _profile) = browser(&chrome, &chromedriver).await;

    // Sign in.
    c.goto(&format!("{url}/login")).await.unwrap();
    let field = c.find(Locator::Css("#token")).await.unwrap();
    field.send_keys(&token).await.unwrap();
    let enter: char = Key::Enter.into();
    press(&c, &[enter]).await;
    let home = wait_page(&c, &format!("{url}/login"), "table.books").await;
    assert_eq!(home, format!("{url}/"));
    assert!(text_of(&c, "#me").await.contains("ann"));
    // The hostile title is text, and no script of the book ran.
    assert!(text_of(&c, "table.books").await.contains(SCRIPT));
    assert!(c.get_alert_text().await.is_err(), "an alert is open: the book's script ran");

    // `n`: the next queued item.
    let mut expected: Vec<Expected> = Vec::new();
    press(&c, &['n']).await;
    let mut here = wait_page(&c, &home, "#answer").await;
    // The first rating screen: chosen summary 1, the confidence prompt showing.
    let shots = artifacts();
    press(&c, &['1']).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(text_of(&c, "#prompt").await.contains("How sure?"));
    std::fs::write(shots.join("rating.png"), c.screenshot().await.unwrap()).unwrap();
    press(&c, &[Key::Escape.into()]).await;

    // `g`: what the input does not support is marked in both summaries, and unmarked again.
    let marks = c.find_all(Locator::Css("#pair mark.ungrounded")).await.unwrap();
    assert!(!marks.is_empty(), "the tiny model's candidates invent words: some are marked");
    let highlighted = || async {
        c.execute(
            "return document.body.classList.contains('show-grounding') && \
             getComputedStyle(document.querySelector('#pair mark.ungrounded')).backgroundColor",
            vec![],
        )
        .await
        .unwrap()
    };
    assert_eq!(highlighted().await, serde_json::json!(false), "off by default");
    press(&c, &['g']).await;
    let on = highlighted().await;
    assert!(on.as_str().is_some_and(|bg| bg != "rgba(0, 0, 0, 0)"), "marked when on: {on}");
    assert_eq!(text_of(&c, "#grounding-state").await, "on");
    std::fs::write(shots.join("rating-grounding.png"), c.screenshot().await.unwrap()).unwrap();
    press(&c, &['g']).await;
    assert_eq!(highlighted().await, serde_json::json!(false));

    // Scripted comparisons: key, confidence; auto-advance takes each to the next item.
    let answers = [
        ('1', '7'),
        ('2', '9'),
        ('t', '3'),
        ('1', '5'),
        ('2', '8'),
        ('1', '6'),
        ('2', '4'),
        ('t', '2'),
    ];
    let started = Instant::now();
    for (i, (key, confidence)) in answers.iter().enumerate() {
        let (node, a, b) = pair(&c).await;
        press(&c, &[*key, *confidence]).await;
        here = wait_page(&c, &here, "#answer, #empty").await;
        let prefer = match key {
            '1' => "a",
            '2' => "b",
            _ => "tie",
        };
        expected.push(Expected {
            kind: "comparison",
            node,
            hashes: vec![a, b],
            detail: format!("{prefer}/{confidence}"),
        });
        assert!(
            c.find(Locator::Css("#answer")).await.is_ok(),
            "the queue ran dry after {} answers",
            i + 1
        );
    }
    let elapsed = started.elapsed();
    let per_minute = answers.len() as f64 * 60.0 / elapsed.as_secs_f64();

    // Likert on summary 2: l 2 then four scores; the page stays on the pair.
    let (node, a, b) = pair(&c).await;
    press(&c, &['l', '2', '5', '6', '4', '7']).await;
    here = wait_page(&c, &here, "#notice").await;
    assert!(text_of(&c, "#notice").await.contains("Likert ratings stored"));
    expected.push(Expected {
        kind: "likert",
        node: node.clone(),
        hashes: vec![b.clone()],
        detail: "5647".into(),
    });
    // A critique of summary 1, typed into the text box, saved with Ctrl+Enter.
    press(&c, &['c', '1']).await;
    let critique = "Misses who counted the ships.";
    typing(&c, critique).await;
    ctrl_enter(&c).await;
    here = wait_page(&c, &here, "#notice").await;
    assert!(text_of(&c, "#notice").await.contains("Critique stored"));
    expected.push(Expected {
        kind: "critique",
        node: node.clone(),
        hashes: vec![a.clone()],
        detail: critique.into(),
    });
    // Skip this pair: the next item is another one, nothing stored.
    press(&c, &['s']).await;
    here = wait_page(&c, &here, "#answer, #empty").await;
    if c.find(Locator::Css("#answer")).await.is_ok() {
        let (n2, a2, b2) = pair(&c).await;
        assert!(!(n2 == node && a2 == a && b2 == b), "the skipped pair came back at once");
    }

    // Drill down: a parent's child, read in place, then opened, then back up with `u`.
    c.goto(&format!("{url}/books/{book_id}/nodes/h1.0")).await.unwrap();
    here = wait_page(&c, &here, "ol.children").await;
    let details = c.find(Locator::Css("details.child-input")).await.unwrap();
    let inner = details.find(Locator::Css("p")).await.unwrap();
    assert!(!inner.is_displayed().await.unwrap());
    details.find(Locator::Css("summary")).await.unwrap().click().await.unwrap();
    assert!(inner.is_displayed().await.unwrap(), "the child's input opens in place");
    std::fs::write(shots.join("parent.png"), c.screenshot().await.unwrap()).unwrap();
    let child = c.find(Locator::Css("a.child-link")).await.unwrap();
    let child_id = child.text().await.unwrap();
    child.click().await.unwrap();
    here = wait_page(&c, &here, "#node-id").await;
    assert_eq!(text_of(&c, "#node-id").await, child_id);
    press(&c, &['u']).await;
    here = wait_page(&c, &here, "#node-id").await;
    assert_eq!(text_of(&c, "#node-id").await, "h1.0");
    c.back().await.unwrap();
    wait_page(&c, &here, "#node-id").await;
    assert_eq!(text_of(&c, "#node-id").await, child_id);
    // The raw-text toggle.
    press(&c, &['r']).await;
    assert!(c.find(Locator::Css("#input-raw")).await.unwrap().is_displayed().await.unwrap());

    c.close().await.unwrap();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    // The feedback, through the CLI (the server has let the database go).
    let records = exported(&config.db);
    let got: Vec<Expected> = records
        .iter()
        .map(|r| {
            assert_eq!(r["labeler"], "ann");
            assert_eq!(r["book"], book_id.as_str());
            // Every answer the pages sent carries its time to judge.
            assert!(r["judge_ms"].is_u64(), "no judge_ms: {r}");
            let h = |k: &str| r[k]["hash"].as_str().unwrap_or_default().to_string();
            match r["kind"].as_str().unwrap() {
                "comparison" => Expected {
                    kind: "comparison",
                    node: r["node"].as_str().unwrap().into(),
                    hashes: vec![h("a"), h("b")],
                    detail: format!("{}/{}", r["prefer"].as_str().unwrap(), r["confidence"]),
                },
                "likert" => Expected {
                    kind: "likert",
                    node: r["node"].as_str().unwrap().into(),
                    hashes: vec![h("summary")],
                    detail: ["coverage", "accuracy", "coherence", "overall"]
                        .iter()
                        .map(|k| r["scores"][k].to_string())
                        .collect(),
                },
                "critique" => Expected {
                    kind: "critique",
                    node: r["node"].as_str().unwrap().into(),
                    hashes: vec![h("summary")],
                    detail: r["critique"].as_str().unwrap().into(),
                },
                other => panic!("unexpected record kind {other}"),
            }
        })
        .collect();
    let key = |e: &Expected| format!("{}|{}|{:?}|{}", e.kind, e.node, e.hashes, e.detail);
    let mut want: Vec<String> = expected.iter().map(key).collect();
    let mut have: Vec<String> = got.iter().map(key).collect();
    want.sort();
    have.sort();
    assert_eq!(have, want, "the export holds exactly the answers given");

    let metrics = json!({
        "comparisons": answers.len(),
        "seconds": elapsed.as_secs_f64(),
        "answers_per_minute": per_minute,
        "note": "scripted keys (no reading time): the app's own ceiling per labeler",
    });
    std::fs::write(shots.join("metrics.json"), serde_json::to_string_pretty(&metrics).unwrap())
        .unwrap();
    eprintln!(
        "browser: {} comparisons in {:.2} s = {per_minute:.0} answers/minute (scripted keys); screenshots in {}",
        answers.len(),
        elapsed.as_secs_f64(),
        shots.display()
    );
}

/// The acceptance check by hand, with the real default model: a server started by a person
/// (`rrm decompose alice && rrm serve`, local mode), a new user who presses only keys: `n` for
/// the next item, `d` to draw candidates when there are none, then three comparisons.
/// `RRM_SERVE_URL=http://127.0.0.1:8080 cargo test --test serve_browser -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a running `rrm serve` (RRM_SERVE_URL) over a real book and model"]
async fn a_new_user_rates_a_real_book_with_the_keyboard() {
    let url = std::env::var("RRM_SERVE_URL").expect("RRM_SERVE_URL");
    let (chrome, chromedriver) = tools().expect("chromium and chromedriver");
    let (_driver, c, _profile) = browser(&chrome, &chromedriver).await;
    let shots = artifacts();
    c.goto(&url).await.unwrap();
    let home = wait_page(&c, "about:blank", "main").await;
    press(&c, &['n']).await;
    let mut here = wait_page(&c, &home, "#answer, #empty").await;
    if c.find(Locator::Css("#empty")).await.is_ok() {
        press(&c, &['d']).await;
        let t0 = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(40 * 60);
        while c.find(Locator::Css("#answer")).await.is_err() {
            assert!(Instant::now() < deadline, "no candidates after 40 minutes");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        eprintln!("drawing candidates took {:.0} s", t0.elapsed().as_secs_f64());
        here = c.current_url().await.unwrap().to_string();
    }
    std::fs::write(shots.join("real-rating.png"), c.screenshot().await.unwrap()).unwrap();
    press(&c, &['g']).await;
    std::fs::write(shots.join("real-rating-grounding.png"), c.screenshot().await.unwrap()).unwrap();
    press(&c, &['g']).await;
    let started = Instant::now();
    let mut done = 0;
    for (key, confidence) in [('1', '6'), ('2', '7'), ('t', '4')] {
        if c.find(Locator::Css("#answer")).await.is_err() {
            break;
        }
        press(&c, &[key, confidence]).await;
        here = wait_page(&c, &here, "#answer, #empty").await;
        done += 1;
    }
    eprintln!("{done} comparisons in {:.1} s (scripted keys)", started.elapsed().as_secs_f64());
    assert!(done >= 1);
    c.close().await.unwrap();
}

/// Waits until a new page shows `selector`: the caller marked the old one
/// (`window.rrmMarked = true`) before the key that leaves it, which may reload the same address
/// (`n` on a leased pair).
async fn wait_new_page(c: &Client, selector: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let marked = c.execute("return window.rrmMarked === true;", vec![]).await;
        if marked.ok() == Some(Value::Bool(false)) && c.find(Locator::Css(selector)).await.is_ok() {
            return;
        }
        if Instant::now() >= deadline {
            let source = c.source().await.unwrap_or_default();
            panic!("no new page with {selector}; the page:\n{source}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs `rrm ARGS` in `dir` on database `db`, with a limit; panics with its output on failure.
fn rrm(dir: &Path, db: &Path, args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rrm"))
        .args(args)
        .current_dir(dir)
        .env("RRM_DB", db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rrm starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("rrm {args:?} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rrm {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The README's "Rating in the browser", word for word, from an empty database: `rrm decompose
/// BOOK`, `rrm serve`, open the page, `n` (no node has two candidates: the page says so and
/// offers `d`), `d` (candidates drawn inside the server; the page moves on by itself), rate the
/// pair with the keys, `n` again; then Ctrl-C, and the CLI finds exactly that answer in a
/// clean database. The real CLI binary, a real browser; the model is a tiny random one (the
/// same walk with the default model: `a_new_user_rates_a_real_book_with_the_keyboard`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_follows_the_readme_from_an_empty_database() {
    let Some((chrome, chromedriver)) = tools_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::write(dir.path().join("orchard.txt"), rrm::serve::testing::book_text(60)).unwrap();
    let model = dir.path().join("tiny.gguf");
    let tiny = rrm::infer::testing::TinyOptions {
        context_length: 8192,
        ..rrm::infer::testing::TinyOptions::default()
    };
    rrm::infer::testing::tiny_gguf(&model, 5, &tiny).unwrap();

    let decomposed = rrm(dir.path(), &db, &["decompose", "orchard.txt"]);
    assert!(decomposed.contains("leaves"), "{decomposed}");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let model_arg = model.display().to_string();
    let server = Command::new(env!("CARGO_BIN_EXE_rrm"))
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--model", &model_arg])
        .current_dir(dir.path())
        .env("RRM_DB", &db)
        .env("RUST_LOG", "rrm=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
        .spawn()
        .expect("rrm serve starts");
    let server = Driver(server); // killed however the test ends
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "rrm serve did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (_driver, c, _profile) = browser(&chrome, &chromedriver).await;
    let shots = artifacts();
    c.goto(&url).await.unwrap();
    let home = wait_page(&c, "about:blank", "main").await;
    // n: nothing to rate yet; the page says so and offers d.
    press(&c, &['n']).await;
    wait_page(&c, &home, "#empty").await;
    let empty = text_of(&c, "#empty").await;
    assert!(empty.contains("Nothing to rate right now"), "{empty}");
    assert!(empty.contains("draw 2 candidates for 5 nodes"), "{empty}");
    std::fs::write(shots.join("readme-empty.png"), c.screenshot().await.unwrap()).unwrap();
    // d: draw inside the server; the page moves on by itself.
    c.execute("window.rrmMarked = true;", vec![]).await.unwrap();
    press(&c, &['d']).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while c.find(Locator::Css("#answer")).await.is_err() {
        let failed = c.find(Locator::Css("#empty .error")).await.is_ok();
        if failed || Instant::now() >= deadline {
            let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
            let page = c.source().await.unwrap_or_default();
            panic!("no candidates to rate after d (failed: {failed}); the page:\n{page}\nthe server:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(shots.join("readme-first-pair.png"), c.screenshot().await.unwrap()).unwrap();
    // Rate the pair with the keys: summary 2, sure 6; the next pair comes by itself.
    let (node, a, b) = pair(&c).await;
    c.execute("window.rrmMarked = true;", vec![]).await.unwrap();
    press(&c, &['2', '6']).await;
    wait_new_page(&c, "#answer, #empty").await;
    // n again.
    c.execute("window.rrmMarked = true;", vec![]).await.unwrap();
    press(&c, &['n']).await;
    wait_new_page(&c, "#answer, #empty").await;
    // The other pages still answer.
    for path in ["/", "/progress", "/jobs"] {
        c.goto(&format!("{url}{path}")).await.unwrap();
        wait_page(&c, "about:blank", "main").await;
    }
    c.close().await.unwrap();

    // Ctrl-C: the server stops promptly and lets the database go.
    let mut server = server;
    let status = Command::new("kill").args(["-INT", &server.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "rrm serve did not stop 30 s after Ctrl-C");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed: Value =
        serde_json::from_str(&rrm(dir.path(), &db, &["feedback", "list", "--json"])).unwrap();
    let records = listed.as_array().unwrap();
    assert_eq!(records.len(), 1, "exactly the one answer: {listed}");
    let r = &records[0];
    assert_eq!((r["node"].as_str(), r["prefer"].as_str()), (Some(node.as_str()), Some("b")), "{r}");
    assert_eq!(r["confidence"], 6);
    let hashes = [r["a"]["hash"].as_str().unwrap(), r["b"]["hash"].as_str().unwrap()];
    assert_eq!(hashes, [a.as_str(), b.as_str()], "{r}");
    rrm(dir.path(), &db, &["db", "check"]);
}

/// The decomposition-comparison screen: a labeler opens it from the nav, picks the book, sees
/// two segmentations of its span (each leaf by its first and last sentence, the text a click
/// away), answers with the keyboard (2, then confidence 7), and the answer is stored with its
/// time to judge and counted on the Progress page. A screenshot of the screen is kept as
/// `decomp-compare.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labeler_compares_two_decompositions_in_a_real_browser() {
    let Some((chrome, chromedriver)) = tools_or_skip() else { return };
    let rrm::serve::testing::Fixture { dir: _dir, config, ws, book_id, .. } =
        rrm::serve::testing::decomposed(30);
    let mut cfg = ServeConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.reward_model = None;
    let (state, listener) = serve::bind(ws, cfg).await.unwrap();
    let url = state.url();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::serve(state, listener, async move {
        let _ = stopped.await;
    }));
    let (_driver, c, _profile) = browser(&chrome, &chromedriver).await;
    let shots = artifacts();

    // From the nav to the book's pair (fixed chunking against a seeded draw of it: no encoder
    // needed here).
    c.goto(&format!("{url}/")).await.unwrap();
    c.find(Locator::Css("header nav a[href='/decompositions']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let list = wait_page(&c, &format!("{url}/"), "#decomp-books").await;
    assert!(text_of(&c, "#decomp-books").await.contains("Orchard"));
    c.goto(&format!("{url}/decompositions?book={book_id}&a=fixed&b=fixed:3")).await.unwrap();
    let here = wait_page(&c, &list, "#decomp-answer").await;
    let sides = c.find_all(Locator::Css("article.seg")).await.unwrap();
    assert_eq!(sides.len(), 2);
    let leaves = c.find_all(Locator::Css("article.seg li.leaf")).await.unwrap();
    assert!(leaves.len() >= 4, "both sides have leaves ({})", leaves.len());
    // The book's markup shows as text.
    assert!(c.get_alert_text().await.is_err(), "an alert is open: the book's script ran");
    // The full text is a click away.
    let details = c.find(Locator::Css("#cand-1 details.leaf-text summary")).await.unwrap();
    details.click().await.unwrap();
    let opened = c
        .execute("return document.querySelector('#cand-1 details.leaf-text').open", vec![])
        .await
        .unwrap();
    assert_eq!(opened, json!(true));
    details.click().await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    press(&c, &['2']).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(text_of(&c, "#prompt").await.contains("How sure?"));
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots.join("decomp-compare.png"), &png).unwrap();
    press(&c, &['7']).await;
    wait_page(&c, &here, "#notice").await;
    assert!(text_of(&c, "#notice").await.contains("stored"));
    // The same pair answered again (a double submit, or the page reopened) keeps the first
    // answer: the export below holds one record.
    c.goto(&here).await.unwrap();
    let again = wait_page(&c, "", "#decomp-answer").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    press(&c, &['1']).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    press(&c, &['3']).await;
    wait_page(&c, &again, "#notice").await;

    // Counted on the Progress page, with a time to judge.
    c.goto(&format!("{url}/progress")).await.unwrap();
    let row = text_of(&c, "#time-to-judge tr[data-kind=decomposition]").await;
    assert!(row.starts_with("decomposition 1 "), "{row}");
    assert!(row.ends_with(" s"), "a median time shows: {row}");
    let labeler_row = text_of(&c, "#by-labeler tbody tr").await;
    assert!(labeler_row.ends_with(" 1"), "the decomposition column counts it: {labeler_row}");
    std::fs::write(shots.join("decomp-progress.png"), c.screenshot().await.unwrap()).unwrap();

    c.close().await.unwrap();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    // Stored as the export carries it.
    let lines = exported(&config.db);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let d = &lines[0]["decomposition"];
    assert_eq!(d["book"], book_id.as_str());
    assert_eq!(d["answer"], "prefer");
    assert_eq!(d["confidence"], 7);
    assert!(d["judge_ms"].as_u64().is_some_and(|ms| ms >= 500), "{d}");
    let specs = [d["a"]["seed"].clone(), d["b"]["seed"].clone()];
    assert!(specs.contains(&json!(3)), "one side is the seeded draw: {specs:?}");
}
