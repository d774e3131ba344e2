//! `rrm summarize`, `tree show`, `node show` and `cache` as a user runs them, on a tiny random
//! model written by the test (fast and deterministic): first run, cached re-run, inspection,
//! garbage collection, bad arguments, and a real SIGKILL in the middle of a run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use assert_cmd::Command;
use rrm::infer::testing::{tiny_gguf, TinyOptions};

struct Ws {
    dir: tempfile::TempDir,
    model: PathBuf,
}

impl Ws {
    fn new(model: TinyOptions) -> Ws {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        tiny_gguf(&path, 11, &model).unwrap();
        Ws { dir, model: path }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rrm"));
        cmd.current_dir(self.dir.path())
            .env("RRM_DB", self.path("db"))
            .env("RRM_BOOKS", self.path("books"))
            .env("RRM_TREES", self.path("trees"))
            .env("RRM_MODEL", &self.model)
            .env_remove("RRM_LOG");
        cmd
    }

    fn rrm(&self) -> Command {
        Command::from_std(self.command())
    }

    fn write_book(&self, name: &str, edit: bool) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, book_text(edit)).unwrap();
        path
    }
}

fn book_text(edit: bool) -> String {
    let mut text = String::from("The Lighthouse Keeper\n\n");
    for chapter in 1..=3 {
        text.push_str(&format!("CHAPTER {chapter}.\n\n"));
        for para in 1..=5 {
            let name = if edit && chapter == 3 && para == 2 { "Ezekiel" } else { "Theodora" };
            text.push_str(&format!(
                "On the night of the {para}th storm of chapter {chapter}, {name} climbed the \
                 lighthouse stairs and trimmed the lamp while the ships of year {} waited \
                 outside the reef for the tide to turn.\n\n",
                1900 + chapter * 10 + para
            ));
        }
    }
    text
}

const SMALL_TREE: &[&str] =
    &["--chunk-tokens", "60", "--fanout", "2..3", "--output-tokens", "8,10,12"];

fn json_report(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(out));
    })
}

#[test]
fn summarize_then_rerun_from_cache_then_inspect() {
    let ws = Ws::new(TinyOptions { context_length: 2048, ..TinyOptions::default() });
    let book = ws.write_book("keeper.txt", false);

    let first =
        ws.rrm().arg("summarize").arg(&book).args(SMALL_TREE).arg("--json").assert().success();
    let first = json_report(&first.get_output().stdout);
    let total = first["report"]["nodes_total"].as_u64().unwrap();
    assert!(total >= 4, "{first}");
    assert!(first["report"]["computed"].as_u64().unwrap() >= 1);

    let second =
        ws.rrm().arg("summarize").arg(&book).args(SMALL_TREE).arg("--json").assert().success();
    let stderr = String::from_utf8_lossy(&second.get_output().stderr).into_owned();
    let second = json_report(&second.get_output().stdout);
    assert_eq!(second["report"]["computed"], 0, "a re-run does no model work");
    assert_eq!(second["report"]["cache_hits"].as_u64().unwrap(), total);
    assert_eq!(second["summary"], first["summary"]);
    assert!(stderr.contains("0 generated"), "{stderr}");

    // The tree shows outputs; a parent node lists its children with their summaries.
    let tree = ws.rrm().args(["tree", "show"]).arg(&book).assert().success();
    let tree = String::from_utf8_lossy(&tree.get_output().stdout).into_owned();
    assert!(tree.contains('»'), "outputs attached:\n{tree}");
    let node = ws.rrm().args(["node", "show", "h1.0", "--book"]).arg(&book).assert().success();
    let node = String::from_utf8_lossy(&node.get_output().stdout).into_owned();
    assert!(node.contains("candidate 0"), "{node}");
    assert!(node.contains("[h0.0]"), "children listed:\n{node}");
    let json =
        ws.rrm().args(["node", "show", "h0.0", "--json", "--book"]).arg(&book).assert().success();
    let json = json_report(&json.get_output().stdout);
    assert!(json["result"]["candidates"]["candidates"].as_array().is_some_and(|c| c.len() == 1));
    // Each candidate's grounding against its passage: a rate, and spans that are the text's own.
    let g = &json["result"]["grounding"][0];
    assert!(g["unsupported_rate"].as_f64().is_some_and(|r| (0.0..=1.0).contains(&r)), "{json}");
    let text = json["result"]["candidates"]["candidates"][0]["text"].as_str().unwrap();
    for span in g["spans"].as_array().unwrap() {
        let (a, b) =
            (span["start"].as_u64().unwrap() as usize, span["end"].as_u64().unwrap() as usize);
        assert_eq!(&text[a..b], span["text"].as_str().unwrap());
    }
    assert!(node.contains("grounding: "), "{node}");

    // After an edit, the old outputs of the changed nodes are garbage.
    std::fs::write(&book, book_text(true)).unwrap();
    let third =
        ws.rrm().arg("summarize").arg(&book).args(SMALL_TREE).arg("--json").assert().success();
    let third = json_report(&third.get_output().stdout);
    let recomputed = third["report"]["computed"].as_u64().unwrap();
    assert!(recomputed >= 1 && recomputed < total, "only the edited path: {third}");
    let gc = ws.rrm().args(["cache", "gc", "--json"]).assert().success();
    let gc = json_report(&gc.get_output().stdout);
    assert!(
        gc["runs_removed"].as_u64().unwrap() + gc["outputs_removed"].as_u64().unwrap() >= 1,
        "{gc}"
    );
    let stats = ws.rrm().args(["cache", "stats", "--json"]).assert().success();
    let stats = json_report(&stats.get_output().stdout);
    assert_eq!(stats["outputs"], stats["live_outputs"], "{stats}");
}

/// `--model-at root=SPEC`: another model summarizes the root only; every other node is the base
/// model's, shared with a run of the base alone through the cache.
#[test]
fn another_model_at_the_root_only() {
    let ws = Ws::new(TinyOptions { context_length: 2048, ..TinyOptions::default() });
    let top = ws.path("top.gguf");
    tiny_gguf(&top, 12, &TinyOptions { context_length: 2048, ..TinyOptions::default() }).unwrap();
    let book = ws.write_book("keeper.txt", false);
    let base =
        ws.rrm().arg("summarize").arg(&book).args(SMALL_TREE).arg("--json").assert().success();
    let base = json_report(&base.get_output().stdout);
    assert!(base["models_at"].as_object().is_some_and(|m| m.is_empty()), "{base}");

    let at = format!("root={}", top.display());
    let mixed = ws
        .rrm()
        .arg("summarize")
        .arg(&book)
        .args(SMALL_TREE)
        .args(["--model-at", &at, "--json"])
        .assert()
        .success();
    let mixed = json_report(&mixed.get_output().stdout);
    // Only the root is new: the base model's nodes come from the first run's cache.
    assert_eq!(mixed["report"]["computed"], 1, "{mixed}");
    assert_eq!(mixed["models_at"]["root"]["name"], "top", "{mixed}");
    let root = base["report"]["computed_labels"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(|l| l.as_str())
        .unwrap()
        .to_string();
    let model_of = |label: &str| {
        let out = ws
            .rrm()
            .args(["node", "show", label, "--json", "--book"])
            .arg(&book)
            .assert()
            .success();
        json_report(&out.get_output().stdout)["result"]["candidates"]["model"]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(model_of(&root), "top");
    assert_eq!(model_of("h0.0"), "tiny");

    // A level that is not one, and a model that does not exist, are named.
    let out =
        ws.rrm().arg("summarize").arg(&book).args(["--model-at", "top=x.gguf"]).assert().failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains("`top` is not a tree level"), "{stderr}");
    fails(
        &ws,
        &["summarize", book.to_str().unwrap(), "--model-at", "1=no-such-model"],
        "no-such-model",
    );
}

#[test]
fn several_books_and_out_file() {
    let ws = Ws::new(TinyOptions { context_length: 2048, ..TinyOptions::default() });
    std::fs::create_dir(ws.path("shelf")).unwrap();
    ws.write_book("shelf/a.txt", false);
    ws.write_book("shelf/b.md", true);
    ws.rrm()
        .arg("summarize")
        .arg(ws.path("shelf"))
        .args(SMALL_TREE)
        .arg("--out")
        .arg(ws.path("out"))
        .assert()
        .success();
    let files: Vec<_> = std::fs::read_dir(ws.path("out")).unwrap().flatten().collect();
    assert_eq!(files.len(), 2);
    // Both books composed together, in a database of their own: the same summaries (it only
    // fills the batch).
    ws.rrm()
        .arg("summarize")
        .arg(ws.path("shelf"))
        .args(SMALL_TREE)
        .args(["--books-at-once", "2", "--db"])
        .arg(ws.path("db-one"))
        .arg("--out")
        .arg(ws.path("out-one"))
        .assert()
        .success();
    for f in files {
        let one = std::fs::read_to_string(ws.path("out-one").join(f.file_name())).unwrap();
        assert_eq!(std::fs::read_to_string(f.path()).unwrap(), one, "{:?}", f.file_name());
    }
    let zero = ws.rrm().args(["summarize", "x.txt", "--books-at-once", "0"]).assert().failure();
    let stderr = String::from_utf8_lossy(&zero.get_output().stderr).into_owned();
    assert!(stderr.contains("--books-at-once"), "{stderr}");
}

fn fails(ws: &Ws, args: &[&str], needle: &str) {
    let out = ws.rrm().args(args).assert().failure().code(1);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains(needle), "stderr lacks {needle:?}:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let ws = Ws::new(TinyOptions::default());
    let book = ws.write_book("keeper.txt", false);
    let book = book.to_str().unwrap();
    fails(&ws, &["summarize", "no-such-book.txt"], "no-such-book");
    fails(&ws, &["summarize", book, "--best-of", "0"], "--best-of");
    // Best-of-N at a level the tree does not have would draw candidates nowhere.
    fails(&ws, &["summarize", book, "--best-of", "2", "--best-of-at", "9"], "no such level");
    fails(&ws, &["summarize", book, "--backend", "openai"], "--endpoint");
    fails(&ws, &["summarize", book, "--model", "no-such-model"], "no-such-model");
    let broken = ws.path("broken.gguf");
    std::fs::write(&broken, b"GGUF\x03\x00\x00\x00trunc").unwrap();
    fails(&ws, &["summarize", book, "--model", broken.to_str().unwrap()], "broken.gguf");
}

/// Labels of nodes reported done (and generated, not cached) in a `-v` log line.
fn done_label(line: &str) -> Option<String> {
    if !line.contains("node done") || !line.contains("cached=false") {
        return None;
    }
    let rest = &line[line.find("node=")? + 5..];
    Some(rest.split_whitespace().next()?.trim_matches('"').to_string())
}

#[test]
fn killed_mid_run_resumes_without_recomputing_finished_nodes() {
    // A bigger tiny model and batch 1 so the run takes long enough to be killed in the middle.
    let ws = Ws::new(TinyOptions {
        hidden: 256,
        n_layer: 4,
        n_head: 4,
        n_kv_head: 2,
        ffn: 512,
        context_length: 2048,
        ..TinyOptions::default()
    });
    let book = ws.write_book("keeper.txt", false);
    let args = [
        "--chunk-tokens",
        "40",
        "--fanout",
        "2..3",
        "--output-tokens",
        "48,48,48",
        "--batch-size",
        "1",
    ];
    let mut child = ws
        .command()
        .arg("-v")
        .arg("summarize")
        .arg(&book)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut done = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if let Some(label) = done_label(&line) {
            done.push(label);
            if done.len() == 3 {
                // SIGKILL: no destructor, no flush runs.
                child.kill().unwrap();
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run must have been killed, not finished");
    assert_eq!(done.len(), 3);

    let out = ws.rrm().arg("summarize").arg(&book).args(args).arg("--json").assert().success();
    let report = json_report(&out.get_output().stdout);
    let recomputed: Vec<String> = report["report"]["computed_labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for label in &done {
        assert!(!recomputed.contains(label), "{label} was finished before the kill: {report}");
    }
    assert!(report["report"]["cache_hits"].as_u64().unwrap() >= 3);
    // And the database is clean for the next command.
    ws.rrm().args(["cache", "stats"]).assert().success();
    let _ = Path::new(&ws.model);
}
