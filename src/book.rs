//! Books: reading a file, normalizing its text, and indexing it into paragraphs, sentences and
//! headings with byte spans. A [`Book`] is immutable and identified by the hash of its
//! normalized text ([`BookId`]).
//!
//! Submodules: `normalize` (BOM, line endings, Project Gutenberg boilerplate), `index`
//! (paragraphs, sentences, headings) and [`catalog`] (the books a fresh clone can fetch).
//!
//! This module is the bottom of the stack: it imports nothing else from the crate, and it never
//! changes a byte of the body text beyond what `normalize` documents (spans index that text).

pub mod catalog;
mod index;
mod normalize;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use catalog::{Catalog, CatalogEntry, CatalogError};
pub use index::{Heading, HeadingKind};
pub use normalize::{normalize, NormalizeReport};

/// Bytes scanned for NUL when deciding whether a file is binary.
const BINARY_SNIFF_BYTES: usize = 64 * 1024;

/// A half-open byte range `start..end` of a book's normalized text.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub const fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    pub const fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// The text of this span. Panics like slicing does when the span is outside `text` or not on
    /// `char` boundaries; use [`Span::get`] for spans that come from outside.
    pub fn slice<'a>(&self, text: &'a str) -> &'a str {
        &text[self.start..self.end]
    }

    /// The text of this span, or `None` when it is out of range or not on `char` boundaries.
    pub fn get<'a>(&self, text: &'a str) -> Option<&'a str> {
        text.get(self.start..self.end)
    }

    pub fn contains(&self, other: Span) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// The identity of a book: hex blake3 of its normalized text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BookId(String);

impl BookId {
    pub fn of_text(text: &str) -> BookId {
        BookId(blake3::hash(text.as_bytes()).to_hex().to_string())
    }

    /// Parses a full 64-digit hex id.
    pub fn parse(s: &str) -> Option<BookId> {
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| BookId(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for display.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

impl fmt::Display for BookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a book's text came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum BookSource {
    File { path: PathBuf },
    Catalog { id: String, path: PathBuf },
    Inline,
}

impl BookSource {
    /// The file the text was read from, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            BookSource::File { path } | BookSource::Catalog { path, .. } => Some(path),
            BookSource::Inline => None,
        }
    }
}

impl fmt::Display for BookSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BookSource::File { path } => write!(f, "{}", path.display()),
            BookSource::Catalog { id, path } => write!(f, "{} (catalog: {id})", path.display()),
            BookSource::Inline => f.write_str("(inline text)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error("could not read book file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("book file {path} is empty{}", if *.after_normalization { " after removing boilerplate and whitespace" } else { "" })]
    Empty { path: PathBuf, after_normalization: bool },
    #[error("book file {path} looks binary (NUL byte at offset {offset}); rrm reads plain text and Markdown")]
    Binary { path: PathBuf, offset: usize },
    #[error("book file {path} is not valid UTF-8: invalid byte at offset {offset} (pass --lossy to replace invalid bytes)")]
    InvalidUtf8 { path: PathBuf, offset: usize },
    #[error(
        "'{spec}' is neither a book file nor a catalog id (catalog: {known}; see `rrm books list`)"
    )]
    NotFound { spec: String, known: String },
    #[error("book '{id}': {source}")]
    Catalog { id: String, source: Box<CatalogError> },
}

/// An immutable, normalized, indexed book.
#[derive(Debug, Clone)]
pub struct Book {
    id: BookId,
    title: String,
    source: BookSource,
    text: String,
    paragraphs: Vec<Span>,
    sentences: Vec<Span>,
    headings: Vec<Heading>,
    report: NormalizeReport,
}

impl Book {
    /// Reads, normalizes and indexes a plain-text or Markdown file. Invalid UTF-8 is an error
    /// naming the byte offset, unless `lossy`, which replaces invalid bytes (and logs a warning
    /// with their count). Empty and binary files are errors.
    pub fn from_path(path: impl AsRef<Path>, lossy: bool) -> Result<Book, BookError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|source| BookError::Read { path: path.to_path_buf(), source })?;
        Book::from_bytes(&bytes, BookSource::File { path: path.to_path_buf() }, lossy)
    }

    /// Like [`Book::from_path`] for bytes already in memory; `source` names them in errors.
    pub fn from_bytes(bytes: &[u8], source: BookSource, lossy: bool) -> Result<Book, BookError> {
        let path = || source.path().map(Path::to_path_buf).unwrap_or_else(|| "(inline)".into());
        if bytes.is_empty() {
            return Err(BookError::Empty { path: path(), after_normalization: false });
        }
        let sniff = &bytes[..bytes.len().min(BINARY_SNIFF_BYTES)];
        if let Some(offset) = sniff.iter().position(|&b| b == 0) {
            return Err(BookError::Binary { path: path(), offset });
        }
        let (raw, replaced) = match std::str::from_utf8(bytes) {
            Ok(s) => (std::borrow::Cow::Borrowed(s), 0),
            Err(e) if !lossy => {
                return Err(BookError::InvalidUtf8 { path: path(), offset: e.valid_up_to() })
            }
            Err(_) => {
                let replaced: usize = bytes.utf8_chunks().map(|c| c.invalid().len()).sum();
                tracing::warn!(
                    "{}: replaced {replaced} invalid UTF-8 byte(s) with U+FFFD",
                    path().display()
                );
                (String::from_utf8_lossy(bytes), replaced)
            }
        };
        let (text, mut report) = normalize(&raw);
        report.replaced_bytes = replaced;
        if text.trim().is_empty() {
            return Err(BookError::Empty { path: path(), after_normalization: true });
        }
        let fallback = source
            .path()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "untitled".into());
        let title = guess_title(&raw, &text).unwrap_or(fallback);
        Ok(Book::build(title, text, source, report))
    }

    /// A book from text in memory (tests, other front ends). The text is normalized like a
    /// file's; it may be empty.
    pub fn from_text(title: impl Into<String>, text: impl AsRef<str>) -> Book {
        let (text, report) = normalize(text.as_ref());
        Book::build(title.into(), text, BookSource::Inline, report)
    }

    fn build(title: String, text: String, source: BookSource, report: NormalizeReport) -> Book {
        let index = index::index(&text);
        Book {
            id: BookId::of_text(&text),
            title,
            source,
            text,
            paragraphs: index.paragraphs,
            sentences: index.sentences,
            headings: index.headings,
            report,
        }
    }

    /// The same book under another title (e.g. the catalog's).
    pub fn with_title(mut self, title: impl Into<String>) -> Book {
        self.title = title.into();
        self
    }

    /// The same book with another recorded source (the text is unchanged).
    pub fn with_source(mut self, source: BookSource) -> Book {
        self.source = source;
        self
    }

    pub fn id(&self) -> &BookId {
        &self.id
    }

    /// The normalized text; every span of this book indexes it.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn title(&self) -> &str {
        &self.title
    }

    pub fn source(&self) -> &BookSource {
        &self.source
    }

    /// Paragraphs in order: blocks of non-blank lines (heading lines stand alone), trailing
    /// whitespace excluded.
    pub fn paragraphs(&self) -> &[Span] {
        &self.paragraphs
    }

    /// Sentences in order, each inside one paragraph, surrounding whitespace excluded.
    pub fn sentences(&self) -> &[Span] {
        &self.sentences
    }

    /// Chapter and section headings in order.
    pub fn headings(&self) -> &[Heading] {
        &self.headings
    }

    /// Headings of kind [`HeadingKind::Chapter`].
    pub fn chapters(&self) -> impl Iterator<Item = &Heading> {
        self.headings.iter().filter(|h| h.kind == HeadingKind::Chapter)
    }

    /// What normalization changed.
    pub fn normalization(&self) -> &NormalizeReport {
        &self.report
    }

    /// The text of `span` (`""` if the span does not fit this book).
    pub fn slice(&self, span: Span) -> &str {
        span.get(&self.text).unwrap_or("")
    }

    /// Whitespace-separated words (an inexpensive size measure).
    pub fn word_count(&self) -> usize {
        self.text.split_whitespace().count()
    }

    /// A summary for the store's `books` table.
    pub fn record(&self) -> BookRecord {
        BookRecord {
            id: self.id.clone(),
            title: self.title.clone(),
            source: self.source.clone(),
            bytes: self.text.len(),
            words: self.word_count(),
            paragraphs: self.paragraphs.len(),
            sentences: self.sentences.len(),
            headings: self.headings.len(),
            normalization: self.report.clone(),
        }
    }
}

/// What the store keeps about a book (table `books`, key: the book id). The text itself stays
/// in its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookRecord {
    pub id: BookId,
    pub title: String,
    pub source: BookSource,
    pub bytes: usize,
    pub words: usize,
    pub paragraphs: usize,
    pub sentences: usize,
    pub headings: usize,
    pub normalization: NormalizeReport,
}

/// Opens a book named by `spec`: a file path, or a catalog id (fetched into `books_dir` on first
/// use; a fetched file whose hash no longer matches is fetched again).
pub fn open(
    spec: &str,
    catalog: &Catalog,
    books_dir: &Path,
    lossy: bool,
    progress: &dyn Fn(&str),
) -> Result<Book, BookError> {
    let path = Path::new(spec);
    if path.exists() {
        return Book::from_path(path, lossy);
    }
    let Some(entry) = catalog.get(spec) else {
        if spec.contains(['/', '\\', '.']) {
            // It looks like a path: report the missing file.
            return Book::from_path(path, lossy);
        }
        let known = catalog.books.iter().map(|b| b.id.as_str()).collect::<Vec<_>>().join(", ");
        return Err(BookError::NotFound { spec: spec.to_string(), known });
    };
    let local = entry.local_path(books_dir);
    let cat_err = |source| BookError::Catalog { id: entry.id.clone(), source: Box::new(source) };
    let bytes = match std::fs::read(&local) {
        Ok(bytes) if catalog::verify(entry, &bytes).is_ok() => bytes,
        Ok(_) => {
            tracing::warn!("{}: hash differs from the catalog; fetching again", local.display());
            catalog::fetch(&[entry], books_dir, progress).map_err(cat_err)?;
            std::fs::read(&local)
                .map_err(|source| BookError::Read { path: local.clone(), source })?
        }
        Err(_) => {
            catalog::fetch(&[entry], books_dir, progress).map_err(cat_err)?;
            std::fs::read(&local)
                .map_err(|source| BookError::Read { path: local.clone(), source })?
        }
    };
    let source = BookSource::Catalog { id: entry.id.clone(), path: local };
    Ok(Book::from_bytes(&bytes, source, lossy)?.with_title(entry.title.clone()))
}

/// The title: a Gutenberg `Title:` line in the raw header, else the first non-empty line of the
/// body when it is short.
fn guess_title(raw: &str, body: &str) -> Option<String> {
    for line in raw.lines().take(60) {
        if let Some(t) = line.trim().strip_prefix("Title:") {
            if !t.trim().is_empty() {
                return Some(t.trim().to_string());
            }
        }
    }
    let first = body.lines().map(str::trim).find(|l| !l.is_empty())?;
    (first.chars().count() <= 80).then(|| first.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_the_hash_of_normalized_text() {
        let a = Book::from_text("a", "Hello.\r\nWorld.\r\n");
        let b = Book::from_text("b", "\u{FEFF}Hello.\nWorld.\n");
        assert_eq!(a.id(), b.id());
        assert_eq!(a.text(), "Hello.\nWorld.\n");
        assert_eq!(a.id().as_str().len(), 64);
        assert!(BookId::parse(a.id().as_str()).is_some());
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let missing = Book::from_path(dir.path().join("nope.txt"), false).unwrap_err();
        assert!(matches!(missing, BookError::Read { .. }), "{missing}");
        let empty = Book::from_path(p("empty.txt", b""), false).unwrap_err();
        assert!(matches!(empty, BookError::Empty { .. }));
        let blank = Book::from_path(p("blank.txt", b"\n \r\n\t"), false).unwrap_err();
        assert!(blank.to_string().contains("empty"));
        let bin = Book::from_path(p("bin.txt", b"abc\0def"), false).unwrap_err();
        assert!(matches!(bin, BookError::Binary { offset: 3, .. }));
        let bad = p("bad.txt", b"caf\xe9 au lait\xff");
        let err = Book::from_path(&bad, false).unwrap_err();
        assert!(matches!(err, BookError::InvalidUtf8 { offset: 3, .. }), "{err}");
        assert!(err.to_string().contains("bad.txt") && err.to_string().contains("offset 3"));
        let lossy = Book::from_path(&bad, true).unwrap();
        assert_eq!(lossy.normalization().replaced_bytes, 2);
        assert!(lossy.text().contains('\u{FFFD}'));
    }

    #[test]
    fn title_from_gutenberg_header_or_first_line() {
        let raw = format!(
            "Title: My Book\n*** START OF THE PROJECT GUTENBERG EBOOK MY BOOK ***\n{}",
            "Text.\n".repeat(20)
        );
        let b = Book::from_bytes(raw.as_bytes(), BookSource::Inline, false).unwrap();
        assert_eq!(b.title(), "My Book");
        assert!(!b.text().contains("Title:"));
        let b = Book::from_bytes(b"\n\n   A TALE  \n\nBody.", BookSource::Inline, false).unwrap();
        assert_eq!(b.title(), "A TALE");
    }

    #[test]
    fn open_reports_unknown_specs() {
        let catalog = Catalog::builtin().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = open("no-such-book", &catalog, dir.path(), false, &|_| {}).unwrap_err();
        assert!(err.to_string().contains("alice"), "{err}");
        let err = open("missing/file.txt", &catalog, dir.path(), false, &|_| {}).unwrap_err();
        assert!(matches!(err, BookError::Read { .. }));
    }
}
