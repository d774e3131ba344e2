//! CLI tests of `rrm books`, `rrm decompose`, `rrm tree show` and `rrm node show`, including bad
//! inputs: each must fail with a clear message naming the file or value, a non-zero exit code,
//! and no panic. Nothing here touches the network (see `books_fetch.rs` for that).

use std::path::PathBuf;

use assert_cmd::assert::Assert;
use assert_cmd::Command;

/// A scratch workspace: its own database, books and trees folders.
struct Ws {
    dir: tempfile::TempDir,
}

impl Ws {
    fn new() -> Ws {
        Ws { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn rrm(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rrm"));
        cmd.current_dir(self.dir.path())
            .env("RRM_DB", self.path("db"))
            .env("RRM_BOOKS", self.path("books"))
            .env("RRM_TREES", self.path("trees"))
            .env_remove("RRM_CATALOG")
            .env_remove("RRM_PIP")
            .env_remove("RRM_LOG");
        cmd
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn tree_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.path("trees"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }
}

/// Fails with exit code 1, says `needle` on stderr, and does not panic.
fn fails_with(assert: Assert, needle: &str) -> String {
    let out = assert.failure().code(1).get_output().clone();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains(needle), "stderr lacks {needle:?}:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    assert!(stderr.starts_with("error:") || stderr.contains("\nerror:"), "{stderr}");
    stderr
}

fn stdout(assert: Assert) -> String {
    String::from_utf8_lossy(&assert.success().get_output().stdout).into_owned()
}

/// A book of `chapters` chapters, each of `paragraphs` paragraphs of five sentences.
fn sample_book(chapters: usize, paragraphs: usize) -> String {
    let mut text = String::from("THE SAMPLE BOOK\n\nBy Nobody\n\n");
    for c in 1..=chapters {
        text.push_str(&format!("CHAPTER {c}\n\n"));
        for p in 0..paragraphs {
            for s in 0..5 {
                text.push_str(&format!(
                    "In chapter {c}, paragraph {p}, the traveller walked a little further, sentence {s}. "
                ));
            }
            text.push_str("\n\n");
        }
    }
    text
}

#[test]
fn help_has_an_example_per_command() {
    let ws = Ws::new();
    for args in [
        &["books", "--help"][..],
        &["tree", "--help"],
        &["node", "--help"],
        &["books", "list", "--help"],
        &["books", "fetch", "--help"],
        &["decompose", "--help"],
        &["tree", "show", "--help"],
        &["node", "show", "--help"],
    ] {
        let out = stdout(ws.rrm().args(args).assert());
        assert!(out.contains("rrm "), "{args:?}: {out}");
        assert!(out.to_lowercase().contains("example"), "{args:?}: {out}");
    }
}

#[test]
fn books_list_shows_the_catalog() {
    let ws = Ws::new();
    let out = stdout(ws.rrm().args(["books", "list"]).assert());
    for id in ["alice", "paradise-lost", "as-you-like-it", "electronic-texts", "botchan"] {
        assert!(out.contains(id), "{out}");
    }
    let json = stdout(ws.rrm().args(["books", "list", "--json"]).assert());
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 5);
    assert_eq!(rows[0]["fetched"], false);
}

#[test]
fn books_fetch_bad_inputs() {
    let ws = Ws::new();
    fails_with(
        ws.rrm().args(["books", "fetch", "nonesuch"]).assert(),
        "unknown book id 'nonesuch'",
    );
    let err =
        ws.rrm().args(["books", "fetch", "alice"]).env("RRM_PIP", "/nonexistent/pip").assert();
    fails_with(err, "pip was not found");
    assert!(!ws.path("books/alice.txt").exists());
    // A catalog id as BOOK when pip is missing: the same clear error.
    let err = ws.rrm().args(["decompose", "alice"]).env("RRM_PIP", "/nonexistent/pip").assert();
    fails_with(err, "pip was not found");
}

#[test]
fn decompose_reports_and_writes_the_tree() {
    let ws = Ws::new();
    let book = ws.write("sample.txt", sample_book(3, 12));
    let out = stdout(ws.rrm().arg("decompose").arg(&book).assert());
    assert!(out.contains("(3 chapters)"), "{out}");
    assert!(out.contains("tokens per leaf: min"), "{out}");
    let files = ws.tree_files();
    assert_eq!(files.len(), 1);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["decomposer"]["name"], "fixed");

    let report = stdout(
        ws.rrm()
            .arg("decompose")
            .arg(&book)
            .args(["--json", "--chunk-tokens", "100", "--seed", "3"])
            .assert(),
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(report["leaves"].as_u64().unwrap() > 3);
    assert!(report["leaf_tokens_max"].as_u64().unwrap() <= 100);
    assert_eq!(report["decomposer"]["config"]["seed"], 3);

    // tree show: the root first, every node on a line, depth limits.
    let out = stdout(ws.rrm().args(["tree", "show"]).arg(&book).assert());
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[1].starts_with("h"), "{out}");
    assert_eq!(
        lines.len() as u64 - 1,
        report["nodes_per_height"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>()
    );
    let root_only = stdout(ws.rrm().args(["tree", "show", "--depth", "0"]).arg(&book).assert());
    assert_eq!(root_only.lines().count(), 2, "{root_only}");
    let json = stdout(ws.rrm().args(["tree", "show", "--json"]).arg(&files[0]).assert());
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(json["nodes"][0]["preview"].as_str().unwrap().starts_with("THE SAMPLE BOOK"));

    // node show: by id with --book, by id across stored trees, by hash prefix.
    let out = stdout(ws.rrm().args(["node", "show", "h0.1", "--book"]).arg(&book).assert());
    assert!(out.contains("CHAPTER 1"), "{out}");
    assert!(out.contains("parent    h1.0"), "{out}");
    let out = stdout(ws.rrm().args(["node", "show", "h0.1"]).assert());
    assert!(out.contains("CHAPTER 1"), "{out}");
    let hash = json["nodes"][0]["hash"].as_str().unwrap();
    let out = stdout(ws.rrm().args(["node", "show", &hash[..8], "--json"]).assert());
    let node: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(node["id"], json["root"]);
}

#[test]
fn trees_are_also_in_the_store() {
    let ws = Ws::new();
    let book = ws.write("sample.txt", sample_book(2, 12));
    stdout(ws.rrm().arg("decompose").arg(&book).assert());
    std::fs::remove_dir_all(ws.path("trees")).unwrap();
    let out = stdout(ws.rrm().args(["tree", "show", "--depth", "1"]).arg(&book).assert());
    assert!(out.lines().nth(1).unwrap().starts_with('h'), "{out}");
    let out = stdout(ws.rrm().args(["node", "show", "h0.1"]).assert());
    assert!(out.contains("CHAPTER 1"), "{out}");
}

#[test]
fn context_previous_adds_context_edges() {
    let ws = Ws::new();
    let book = ws.write("sample.txt", sample_book(2, 12));
    stdout(
        ws.rrm()
            .arg("decompose")
            .arg(&book)
            .args(["--context", "previous", "--context-window", "2"])
            .assert(),
    );
    let out =
        stdout(ws.rrm().args(["node", "show", "h0.4", "--json", "--book"]).arg(&book).assert());
    let node: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(node["context"], serde_json::json!(["h0.2", "h0.3"]));
}

#[test]
fn missing_empty_binary_and_invalid_files() {
    let ws = Ws::new();
    fails_with(ws.rrm().args(["decompose", "no/such/book.txt"]).assert(), "no/such/book.txt");
    fails_with(
        ws.rrm().args(["decompose", "nonesuch"]).assert(),
        "neither a book file nor a catalog id",
    );
    let empty = ws.write("empty.txt", "");
    fails_with(ws.rrm().arg("decompose").arg(&empty).assert(), "empty.txt is empty");
    let blank = ws.write("blank.txt", "\r\n  \n\t\n");
    fails_with(ws.rrm().arg("decompose").arg(&blank).assert(), "is empty");
    let binary = ws.write("image.txt", [0x89, b'P', b'N', b'G', 0, 0, 0, 13, 0xff, 0xd8]);
    fails_with(ws.rrm().arg("decompose").arg(&binary).assert(), "looks binary");
    let mut bytes = b"Valid text. More valid text. ".to_vec();
    bytes.push(0xff);
    bytes.extend_from_slice(b" And again.");
    let bad = ws.write("latin1.txt", &bytes);
    let err = fails_with(ws.rrm().arg("decompose").arg(&bad).assert(), "not valid UTF-8");
    assert!(
        err.contains("latin1.txt") && err.contains("offset 29") && err.contains("--lossy"),
        "{err}"
    );
    let ok = ws.rrm().arg("decompose").arg(&bad).arg("--lossy").assert().success();
    let stderr = String::from_utf8_lossy(&ok.get_output().stderr).into_owned();
    assert!(stderr.contains("replaced 1 invalid UTF-8 byte"), "{stderr}");
    assert!(ws.tree_files().len() == 1);
}

#[test]
fn a_megabyte_without_newlines() {
    let ws = Ws::new();
    let sentences = "The quick brown fox jumps over the lazy dog again and again. ".repeat(17_000);
    assert!(sentences.len() > 1_000_000 && !sentences.contains('\n'));
    let path = ws.write("one-line.txt", &sentences);
    let report = stdout(ws.rrm().arg("decompose").arg(&path).arg("--json").assert());
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(report["leaves"].as_u64().unwrap() > 300);
    assert!(report["leaf_tokens_max"].as_u64().unwrap() <= 600);

    // No sentence ends, no spaces: still cut, at word and then character boundaries.
    let word = "abcdefghij".repeat(100_000);
    let path = ws.write("one-word.txt", &word);
    let report = stdout(ws.rrm().arg("decompose").arg(&path).arg("--json").assert());
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(report["leaf_tokens_max"].as_u64().unwrap() <= 600);
}

#[test]
fn a_book_shorter_than_one_leaf() {
    let ws = Ws::new();
    let path = ws.write("short.txt", "A very short story. It ends here.\n");
    let out = stdout(ws.rrm().arg("decompose").arg(&path).assert());
    assert!(out.contains("leaves    1 "), "{out}");
    assert!(out.contains("height    0"), "{out}");
    let shown = stdout(ws.rrm().args(["tree", "show"]).arg(&path).assert());
    assert_eq!(shown.lines().count(), 2, "{shown}");
    let node = stdout(ws.rrm().args(["node", "show", "h0.0", "--book"]).arg(&path).assert());
    assert!(node.contains("none (this is the root)") && node.contains("It ends here."), "{node}");
}

#[test]
fn corrupted_tree_files() {
    let ws = Ws::new();
    let book = ws.write("sample.txt", sample_book(2, 12));
    stdout(ws.rrm().arg("decompose").arg(&book).assert());
    let file = ws.tree_files().remove(0);
    let good = std::fs::read_to_string(&file).unwrap();
    let name = file.file_name().unwrap().to_string_lossy().into_owned();

    // Truncated JSON. The database holds the tree (the file is a copy of it): the stored tree is
    // shown and the damaged copy is named in a warning, not silently used or ignored.
    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    let out = ws.rrm().args(["tree", "show"]).arg(&book).assert().success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains(&name) && err.contains("differs"), "{err}");
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("h1.0"));
    fails_with(ws.rrm().args(["tree", "show"]).arg(&file).assert(), "not a valid task tree file");
    // Without the database's copy, the file is all there is: a damaged one is an error.
    let fresh = ws.path("fresh-db");
    fails_with(ws.rrm().arg("--db").arg(&fresh).args(["tree", "show"]).arg(&book).assert(), &name);

    // Well-formed JSON, broken tree: a leaf span that overlaps the previous one.
    let mut value: serde_json::Value = serde_json::from_str(&good).unwrap();
    value["nodes"][1]["span"]["start"] = 3.into();
    std::fs::write(&file, serde_json::to_string(&value).unwrap()).unwrap();
    let err = fails_with(
        ws.rrm().arg("--db").arg(&fresh).args(["tree", "show"]).arg(&book).assert(),
        "invalid task tree",
    );
    assert!(err.contains("h0.1") && err.contains("overlap"), "{err}");
    let err = fails_with(ws.rrm().args(["tree", "show"]).arg(&file).assert(), "invalid task tree");
    assert!(err.contains("h0.1") && err.contains("overlap"), "{err}");

    // A future format version.
    let mut value: serde_json::Value = serde_json::from_str(&good).unwrap();
    value["format_version"] = 7.into();
    std::fs::write(&file, serde_json::to_string(&value).unwrap()).unwrap();
    fails_with(ws.rrm().args(["tree", "show"]).arg(&file).assert(), "version 7");

    // Not a tree at all.
    let other = ws.write("other.json", "[1, 2, 3]");
    fails_with(ws.rrm().args(["tree", "show"]).arg(&other).assert(), "other.json");
    fails_with(ws.rrm().args(["tree", "show", "missing.json"]).assert(), "missing.json");
}

#[test]
fn unknown_nodes_and_missing_trees() {
    let ws = Ws::new();
    fails_with(ws.rrm().args(["node", "show", "h0.0"]).assert(), "no task trees yet");
    let book = ws.write("sample.txt", sample_book(2, 12));
    fails_with(ws.rrm().args(["tree", "show"]).arg(&book).assert(), "rrm decompose");
    stdout(ws.rrm().arg("decompose").arg(&book).assert());
    fails_with(ws.rrm().args(["node", "show", "h9.99"]).assert(), "no node 'h9.99'");
    fails_with(
        ws.rrm().args(["node", "show", "h9.99", "--book"]).arg(&book).assert(),
        "no node 'h9.99'",
    );
    fails_with(ws.rrm().args(["node", "show", "zz"]).assert(), "h1.7");

    // Two books: a bare id is ambiguous.
    let second = ws.write("second.txt", sample_book(1, 20));
    stdout(ws.rrm().arg("decompose").arg(&second).assert());
    fails_with(ws.rrm().args(["node", "show", "h0.0"]).assert(), "pass --book");
}

#[test]
fn bad_options_are_usage_errors() {
    let ws = Ws::new();
    let book = ws.write("sample.txt", sample_book(1, 3));
    for (flag, value, needle) in [
        ("--fanout", "9..3", "fanout"),
        ("--fanout", "five", "fanout"),
        ("--context", "everything", "everything"),
        ("--chunk-tokens", "lots", "chunk-tokens"),
    ] {
        let out =
            ws.rrm().arg("decompose").arg(&book).args([flag, value]).assert().failure().code(2);
        let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(stderr.contains(needle), "{flag} {value}: {stderr}");
    }
    let err = ws.rrm().arg("decompose").arg(&book).args(["--chunk-tokens", "2"]).assert();
    fails_with(err, "chunk tokens must be at least 8");
}

#[test]
fn catalog_override_is_validated() {
    let ws = Ws::new();
    let catalog = ws.write("catalog.toml", "[[book]]\nid = 1\n");
    let err = ws.rrm().args(["books", "list"]).env("RRM_CATALOG", &catalog).assert();
    fails_with(err, "catalog.toml");
}

/// `rrm books list | head` with the reader already gone: no panic, and not a normal exit.
#[test]
fn a_closed_stdout_ends_the_command_without_a_panic() {
    let ws = Ws::new();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rrm"))
        .args(["books", "list"])
        .env("RRM_DB", ws.path("db"))
        .env("RRM_BOOKS", ws.path("books"))
        .env("RRM_TREES", ws.path("trees"))
        .env_remove("RRM_CATALOG")
        .env_remove("RRM_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}
