//! `rrm eval` as a user runs it, on a tiny random model written by the test: a run stored
//! whole, a cached re-run, compare with intervals, the report with "no data yet" for what is
//! missing, and bad references files refused before anything is stored.

use std::path::PathBuf;

use assert_cmd::Command;
use predicates::prelude::*;
use rrm::infer::testing::{tiny_gguf, TinyOptions};

struct Ws {
    dir: tempfile::TempDir,
    model: PathBuf,
}

impl Ws {
    fn new() -> Ws {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny.gguf");
        tiny_gguf(&model, 11, &TinyOptions { context_length: 2048, ..TinyOptions::default() })
            .unwrap();
        Ws { dir, model }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn rrm(&self) -> Command {
        let mut cmd = Command::cargo_bin("rrm").unwrap();
        cmd.current_dir(self.dir.path())
            .env("RRM_DB", self.path("db"))
            .env("RRM_TREES", self.path("trees"))
            .env("RRM_MODEL", &self.model)
            .env_remove("RRM_LOG");
        cmd
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// A small tree: short leaves and outputs, so the tiny model's context holds every prompt.
fn story(name: &str, n: usize) -> String {
    let mut t = String::new();
    for i in 0..n {
        t.push_str(&format!(
            "{name} rowed to the island on day {i} and counted the gulls on the old stone pier. \
             The keeper's daughter watched the tide and wrote the numbers in a ledger.\n\n"
        ));
    }
    t
}

fn references_file(ws: &Ws) -> PathBuf {
    let lines = [
        serde_json::json!({"id": "marigold", "text": story("Marigold", 12),
            "references": ["Marigold rows to the island and counts gulls.", "A girl counts gulls on a pier."]}),
        serde_json::json!({"metadata": {"uid": "tobias"}, "document": story("Tobias", 9),
            "questions": [{"question_text": "What is the plot of the story?",
                "responses": [{"response_text": "Tobias counts gulls while the keeper's daughter keeps a ledger."}]}]}),
    ];
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    ws.write("refs.jsonl", &(text.join("\n") + "\n"))
}

#[test]
fn summaries_are_scored_stored_compared_and_reported() {
    let ws = Ws::new();
    let refs = references_file(&ws);
    let out = ws
        .rrm()
        .args(["-q", "eval", "summaries", "--references"])
        .arg(&refs)
        .args([
            "--run",
            "greedy",
            "--chunk-tokens",
            "60",
            "--fanout",
            "2..3",
            "--output-tokens",
            "8,10,12",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let docs = run["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1]["id"], "tobias");
    assert!(docs[0]["rouge"]["rouge1_max"].as_f64().unwrap() >= 0.0);
    assert!(docs[0]["labeler"].as_f64().is_some());
    // The same name again is refused; with --replace it is served from the cache.
    ws.rrm()
        .args(["-q", "eval", "summaries", "--references"])
        .arg(&refs)
        .args([
            "--run",
            "greedy",
            "--chunk-tokens",
            "60",
            "--fanout",
            "2..3",
            "--output-tokens",
            "8,10,12",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains("exists already"));
    let again = ws
        .rrm()
        .args(["-q", "eval", "summaries", "--references"])
        .arg(&refs)
        .args([
            "--run",
            "sampled",
            "--chunk-tokens",
            "60",
            "--fanout",
            "2..3",
            "--output-tokens",
            "8,10,12",
            "--temperature",
            "0.9",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    ws.rrm()
        .args(["eval", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("greedy").and(predicate::str::contains("sampled")));
    // Each run's own outputs stay inspectable: `--run` names the evaluation run (and `--book`
    // its document), while without it the newest run's outputs are shown.
    let sampled: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    let summary_of =
        |run: &serde_json::Value| run["documents"][0]["summary"].as_str().unwrap().to_string();
    // With an evaluation run the document id names the book; otherwise the tree file does.
    let book_id = run["documents"][0]["book_id"].as_str().unwrap().to_string();
    let tree_file = ws.path("trees").join(format!("{book_id}.json")).display().to_string();
    let root_output = |target: &str, run: Option<&str>| {
        let mut cmd = ws.rrm();
        cmd.args(["tree", "show", target, "--json"]);
        if let Some(run) = run {
            cmd.args(["--run", run]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let tree: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let root = tree["root"].as_str().unwrap().to_string();
        let mut cmd = ws.rrm();
        cmd.args(["node", "show", &root, "--book", target, "--json"]);
        if let Some(run) = run {
            cmd.args(["--run", run]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let node: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (tree["run"]["run_id"].clone(), node["output"].as_str().unwrap().trim().to_string())
    };
    let (greedy_id, greedy_root) = root_output("marigold", Some("greedy"));
    let (sampled_id, sampled_root) = root_output("marigold", Some("sampled"));
    assert_eq!(greedy_root, summary_of(&run));
    assert_eq!(sampled_root, summary_of(&sampled));
    assert_ne!(greedy_id, sampled_id);
    assert_eq!(root_output(&tree_file, None), (sampled_id.clone(), sampled_root.clone()));
    // Without `--run` a document id still names its book: the newest run's outputs.
    assert_eq!(root_output("marigold", None), (sampled_id.clone(), sampled_root));
    // A summarize run id (or its prefix) names a run too.
    let prefix = &greedy_id.as_str().unwrap()[..16];
    assert_eq!(root_output(&tree_file, Some(prefix)), (greedy_id, greedy_root));
    // Best-of-N at the root only: below it the greedy decode, served from the greedy run's cache.
    let out = ws
        .rrm()
        .args(["-q", "eval", "summaries", "--references"])
        .arg(&refs)
        .args(["--run", "root2", "--chunk-tokens", "60", "--fanout", "2..3"])
        .args(["--output-tokens", "8,10,12", "--best-of", "2", "--best-of-at", "root", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root2: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(root2["documents"][0]["computed"], 1, "only the root is generated: {root2}");
    let candidates = |label: &str| {
        let out = ws
            .rrm()
            .args(["node", "show", label, "--book", "marigold", "--run", "root2", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let node: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        node["result"]["candidates"]["candidates"].as_array().unwrap().len()
    };
    let tree: serde_json::Value = serde_json::from_slice(
        &ws.rrm().args(["tree", "show", &tree_file, "--json"]).output().unwrap().stdout,
    )
    .unwrap();
    assert_eq!(candidates(tree["root"].as_str().unwrap()), 2);
    assert_eq!(candidates("h0.0"), 1);
    // Grounded consensus (minimum Bayes risk) picks at the root among three candidates, its
    // three agreement utilities recorded for each; below the root the greedy cache serves.
    let out = ws
        .rrm()
        .args(["-q", "eval", "summaries", "--references"])
        .arg(&refs)
        .args(["--run", "root3c", "--chunk-tokens", "60", "--fanout", "2..3"])
        .args(["--output-tokens", "8,10,12", "--best-of", "3", "--best-of-at", "root"])
        .args(["--reward-model", "consensus", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root3: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(root3["documents"][0]["computed"], 1, "only the root is picked anew: {root3}");
    let out = ws
        .rrm()
        .args(["node", "show", tree["root"].as_str().unwrap(), "--book", "marigold"])
        .args(["--run", "root3c", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let node: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let picked = &node["result"]["output"];
    assert!(picked["selector"].as_str().unwrap().starts_with("consensus@1"), "{node}");
    let scores = picked["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 3, "{node}");
    for s in scores {
        let agree = s["parts"]["agree_rouge1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&agree), "{s}");
        assert_eq!(s["members"].as_array().unwrap().len(), 3, "{s}");
    }
    // It ranks candidates against each other, so it cannot judge a pair file.
    std::fs::write(
        ws.path("pair.jsonl"),
        "{\"prompt\":\"a\",\"chosen\":\"a\",\"rejected\":\"b\"}\n",
    )
    .unwrap();
    ws.rrm()
        .args(["reward", "eval", "--model", "consensus", "--data", "pair.jsonl"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--best-of N"));
    ws.rrm()
        .args(["node", "show", "h0.0", "--book", &tree_file, "--run", "no-such-run"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("'no-such-run' names no evaluation run or summarize run"));
    // A second file that gives the id to another text: the id alone no longer says which book.
    let other = serde_json::json!({"id": "marigold", "text": story("Rosalind", 6),
        "references": ["Rosalind counts gulls."]});
    let other_refs = ws.write("other.jsonl", &format!("{other}\n"));
    ws.rrm()
        .args(["-q", "eval", "summaries", "--references"])
        .arg(&other_refs)
        .args(["--run", "other", "--chunk-tokens", "60", "--fanout", "2..3"])
        .args(["--output-tokens", "8,10,12"])
        .assert()
        .success();
    ws.rrm().args(["tree", "show", "marigold"]).assert().failure().stderr(
        predicate::str::contains("several evaluation runs")
            .and(predicate::str::contains("--run NAME")),
    );
    ws.rrm()
        .args(["tree", "show", "marigold", "--run", "no-such-run"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("'no-such-run' names no evaluation run"));
    ws.rrm()
        .args(["eval", "compare", "sampled", "greedy", "--resamples", "500"])
        .assert()
        .success()
        .stdout(predicate::str::contains("95% interval").and(predicate::str::contains("rouge1")));
    let out = ws.rrm().args(["eval", "compare", "sampled", "greedy", "--json"]).output().unwrap();
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["documents"], 2);
    assert!(
        c["metrics"]["rouge1"]["low"].as_f64().unwrap()
            <= c["metrics"]["rouge1"]["high"].as_f64().unwrap()
    );
    ws.rrm()
        .args(["eval", "show", "greedy", "--resamples", "200"])
        .assert()
        .success()
        .stdout(predicate::str::contains("marigold").and(predicate::str::contains("lead")));
    ws.rrm()
        .args(["eval", "report", "--out", "report", "--resamples", "200"])
        .assert()
        .success()
        .stdout(predicate::str::contains("no data yet"));
    let html = std::fs::read_to_string(ws.path("report/index.html")).unwrap();
    assert!(html.contains("runs.svg") && html.contains("compare.svg"));
    assert!(html.contains("no data yet"));
    assert!(ws.path("report/runs.csv").exists());
    ws.rrm().args(["eval", "remove", "sampled"]).assert().success();
    ws.rrm()
        .args(["eval", "show", "sampled"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no evaluation run"));
}

#[test]
fn bad_references_are_refused_and_nothing_is_stored() {
    let ws = Ws::new();
    let bad = ws.write(
        "bad.jsonl",
        "{\"id\": \"a\", \"text\": \"fine\", \"references\": [\"ok\"]}\n{oops\n{\"id\": \"b\", \"text\": \"x\", \"references\": []}\n",
    );
    ws.rrm()
        .args(["eval", "summaries", "--references"])
        .arg(&bad)
        .args(["--run", "r"])
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("line 2")
                .and(predicate::str::contains("line 3"))
                .and(predicate::str::contains("no reference summary"))
                .and(predicate::str::contains("panicked").not()),
        );
    let empty = ws.write("empty.jsonl", "\n\n");
    ws.rrm()
        .args(["eval", "summaries", "--references"])
        .arg(&empty)
        .args(["--run", "r"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no document"));
    ws.rrm()
        .args(["eval", "summaries", "--references", "missing.jsonl", "--run", "r"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("missing.jsonl"));
    ws.rrm()
        .args(["eval", "summaries", "--references"])
        .arg(&bad)
        .args(["--run", "no/slash"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("invalid run name"));
    ws.rrm()
        .args(["eval", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("no evaluation runs"));
}

/// The demonstrations a labeler gave, as `rrm feedback export` writes them: (node, text).
fn demonstrations(ws: &Ws, labeler: &str) -> Vec<(String, String)> {
    let out = ws.rrm().args(["-q", "feedback", "export"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["labeler"] == labeler && r["kind"] == "demonstration")
        .map(|r| {
            (r["node"].as_str().unwrap().to_string(), r["summary"]["text"].as_str().unwrap().into())
        })
        .collect()
}

#[test]
fn references_become_demonstrations_at_the_root_once() {
    let ws = Ws::new();
    let refs = references_file(&ws);
    let run = |name: &str, extra: &[&str]| {
        let out = ws
            .rrm()
            .args(["-q", "eval", "summaries", "--references"])
            .arg(&refs)
            .args(["--run", name, "--chunk-tokens", "60", "--fanout", "2..3"])
            .args(["--output-tokens", "8,10,12"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let words = ["--store-demonstrations", "people", "--demonstration-words", "7"];
    run("a", &words);
    let stored = demonstrations(&ws, "people");
    // Three references in all, each at its document's root, cut at a sentence end.
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(stored.iter().all(|(node, _)| node.starts_with('h') && node != "h0.0"), "{stored:?}");
    let texts: Vec<&str> = stored.iter().map(|(_, t)| t.as_str()).collect();
    assert!(texts.contains(&"A girl counts gulls on a pier."), "{texts:?}");
    // Over seven words with no sentence end inside them: cut at seven.
    assert!(texts.contains(&"Marigold rows to the island and counts"), "{texts:?}");
    // A re-run stores nothing twice.
    run("b", &words);
    assert_eq!(demonstrations(&ws, "people").len(), 3);
    // Support 1: only sentences whose every content word and name the root's input has.
    run("c", &["--store-demonstrations", "strict", "--demonstration-support", "1"]);
    assert!(demonstrations(&ws, "strict").len() < 3);
    let err = ws
        .rrm()
        .args(["eval", "summaries", "--references"])
        .arg(&refs)
        .args(["--run", "d", "--store-demonstrations", "x", "--demonstration-support", "1.5"])
        .output()
        .unwrap();
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("--demonstration-support"));
}
