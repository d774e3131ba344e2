//! Books in a workspace: opening them by path or catalog id, their records in the store, and
//! what became of a recorded book's file ([`BookStatus`]).
//!
//! A book's id is the hash of its normalized text, so a record says "this text was read from this
//! file". Books without a file (built from text, e.g. evaluation documents) keep their text in
//! [`Table::BookTexts`], so they can always be reopened.

use std::path::{Path, PathBuf};

use super::{Result, Workspace, WorkspaceError};
use crate::book::{self, Book, BookId, BookRecord, BookSource};
use crate::store::Table;

/// What became of a recorded book.
#[derive(Debug, Clone)]
pub enum BookStatus {
    /// Its file (or stored text) still holds the same text.
    Present(Box<Book>),
    /// The store has no record of this book id.
    Unknown,
    /// The record names a file that no longer exists.
    Missing { path: PathBuf },
    /// The file exists but cannot be read as a book (permissions, encoding, …).
    Unreadable { path: PathBuf, error: String },
    /// The file now holds a different text (the book was edited or replaced).
    Changed { path: PathBuf },
}

impl BookStatus {
    pub fn book(self) -> Option<Book> {
        match self {
            BookStatus::Present(book) => Some(*book),
            _ => None,
        }
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            BookStatus::Present(book) => format!("present ({})", book.source()),
            BookStatus::Unknown => "not recorded in the database".into(),
            BookStatus::Missing { path } => format!("its file {} is missing", path.display()),
            BookStatus::Unreadable { path, error } => {
                format!("its file {} cannot be read: {error}", path.display())
            }
            BookStatus::Changed { path } => {
                format!("its file {} now holds a different text", path.display())
            }
        }
    }
}

/// Opens `spec` (a file, or a catalog id fetched into the books folder on first use) and records
/// it.
pub fn open(ws: &Workspace, spec: &str, lossy: bool, progress: &dyn Fn(&str)) -> Result<Book> {
    let book = book::open(spec, ws.catalog(), ws.books_dir(), lossy, progress)?;
    record(ws, &book)?;
    Ok(book)
}

/// Records `book` in the store (its text too when it has no file).
pub fn record(ws: &Workspace, book: &Book) -> Result<()> {
    let store = ws.store();
    if book.source().path().is_none() {
        store.put(Table::BookTexts, book.id().as_str(), &book.text())?;
    }
    store.put(Table::Books, book.id().as_str(), &book.record())?;
    store.flush()?;
    Ok(())
}

/// The record of book `id`, if any.
pub fn record_of(ws: &Workspace, id: &BookId) -> Result<Option<BookRecord>> {
    Ok(ws.store().get::<BookRecord>(Table::Books, id.as_str())?)
}

/// What became of book `id`: reopened from its file (or stored text) when that still holds the
/// same text.
pub fn status(ws: &Workspace, id: &BookId) -> Result<BookStatus> {
    let Some(record) = record_of(ws, id)? else { return Ok(BookStatus::Unknown) };
    let lossy = record.normalization.replaced_bytes > 0;
    let Some(path) = record.source.path() else {
        // A book without a file: its text is in the store.
        let Some(text) = ws.store().get::<String>(Table::BookTexts, id.as_str())? else {
            return Ok(BookStatus::Missing { path: PathBuf::from("(text not stored)") });
        };
        let book = Book::from_text(record.title.clone(), text);
        return Ok(if book.id() == id {
            BookStatus::Present(Box::new(book))
        } else {
            BookStatus::Changed { path: PathBuf::from("(stored text)") }
        });
    };
    let path = path.to_path_buf();
    if !path.exists() {
        return Ok(BookStatus::Missing { path });
    }
    let book = match Book::from_path(&path, lossy) {
        Ok(book) => book.with_title(record.title.clone()).with_source(record.source.clone()),
        Err(err) => return Ok(BookStatus::Unreadable { path, error: err.to_string() }),
    };
    if book.id() != id {
        return Ok(BookStatus::Changed { path });
    }
    Ok(BookStatus::Present(Box::new(book)))
}

/// Book `id` reopened, if its file still holds the same text (anything else is logged).
pub fn by_id(ws: &Workspace, id: &BookId) -> Result<Option<Book>> {
    let status = status(ws, id)?;
    match status {
        BookStatus::Present(book) => Ok(Some(*book)),
        BookStatus::Unknown => Ok(None),
        other => {
            tracing::warn!("book {}: {}", id.short(), other.describe());
            Ok(None)
        }
    }
}

/// The books named on a command line: folders expand to their `.txt`/`.md` files, sorted.
pub fn expand(specs: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for spec in specs {
        let path = Path::new(spec);
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| {
                WorkspaceError::Book(book::BookError::Read { path: path.to_path_buf(), source })
            })?;
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "txt" || e == "md"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(WorkspaceError::Invalid(format!(
                    "the folder {spec} has no .txt or .md files"
                )));
            }
            out.extend(files.into_iter().map(|p| p.display().to_string()));
        } else {
            out.push(spec.clone());
        }
    }
    Ok(out)
}

/// A book whose source is not a file (e.g. a document of an evaluation set), recorded with its
/// text.
pub fn record_inline(ws: &Workspace, title: &str, text: &str) -> Result<Book> {
    let book = Book::from_text(title, text);
    debug_assert!(matches!(book.source(), BookSource::Inline));
    record(ws, &book)?;
    Ok(book)
}
