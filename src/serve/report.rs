//! The evaluation report at `/report/`: the page `rrm eval report --out DIR` writes, drawn from
//! the store at request time by the same library function
//! ([`crate::workspace::eval::write_report`], every run against the oldest, the CLI's bootstrap
//! defaults) into a temporary folder.
//!
//! The folder is kept and reused while the store's evaluation records (`eval/…` in the meta
//! table: runs, learning curve, best-of-N, decomposition rows, policy logs) hash the same, so the
//! page and the figures it links come from one drawing. Only the file names that drawing wrote
//! are served (`index.html`, `<figure>.svg`, `<figure>.csv`): any other name, `..` included,
//! is a 404. With no run stored, the page says how to make one.

use std::collections::BTreeSet;
use std::path::Path;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::sync::{rank, Guarded};
use super::{Failure, Shared};
use crate::eval::runs::{self, BootstrapOptions};
use crate::store::Table;

/// The prefix of every record the report draws from.
const EVAL_PREFIX: &str = "eval/";

/// The report's own page carries an inline `<style>`; scripts stay forbidden.
const REPORT_CSP: &str = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; \
                          frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// A drawn report: its folder and the file names it wrote.
struct Drawn {
    fingerprint: String,
    dir: tempfile::TempDir,
    files: BTreeSet<String>,
}

/// The last drawn report, shared by the handlers. Drawing happens under its lock (a leaf: it
/// holds no other), on the blocking pool, so two requests never draw the same report twice.
pub struct ReportCache {
    drawn: Guarded<Option<Drawn>>,
}

impl Default for ReportCache {
    fn default() -> ReportCache {
        ReportCache { drawn: Guarded::new("report", rank::LEAF, None) }
    }
}

/// What a request for a report file gets.
pub enum Served {
    /// No evaluation run is stored.
    NoRuns,
    /// The file's bytes and content type.
    File { body: Vec<u8>, content_type: &'static str },
}

/// The hash of every evaluation record in the store (keys and values).
fn fingerprint(state: &Shared) -> Result<String, Failure> {
    let mut h = blake3::Hasher::new();
    for (k, v) in state.ws.store().scan_raw(Table::Meta, EVAL_PREFIX)? {
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(&k);
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(&v);
    }
    Ok(h.finalize().to_hex().to_string())
}

fn content_type(name: &str) -> &'static str {
    match Path::new(name).extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("csv") => "text/csv; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Draws the report when the store's evaluation records changed since the last drawing.
fn ensure_drawn(state: &Shared, drawn: &mut Option<Drawn>) -> Result<(), Failure> {
    let fingerprint = fingerprint(state)?;
    if drawn.as_ref().is_some_and(|d| d.fingerprint == fingerprint) {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("rrm-serve-report-")
        .tempdir()
        .map_err(|e| Failure::internal(format!("a temporary folder for the report: {e}")))?;
    let written = crate::workspace::eval::write_report(
        &state.ws,
        dir.path(),
        &[],
        BootstrapOptions::default(),
    )?;
    let files = std::iter::once(&written.index)
        .chain(&written.figures)
        .chain(&written.csvs)
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .collect();
    *drawn = Some(Drawn { fingerprint, dir, files });
    Ok(())
}

/// The report file `name` (`index.html` for the page), drawn if needed. Blocking.
pub fn file(state: &Shared, name: &str) -> Result<Served, Failure> {
    if state.ws.store().scan_keys(Table::Meta, runs::PREFIX)?.is_empty() {
        return Ok(Served::NoRuns);
    }
    let body = state.report.drawn.with(|drawn| {
        ensure_drawn(state, drawn)?;
        let Some(drawn) = drawn.as_ref() else {
            return Err(Failure::internal("the report was not drawn"));
        };
        // Only a name the drawing wrote: no path, no `..`, nothing else in the folder.
        if !drawn.files.contains(name) {
            let shown: String = name.chars().take(70).collect();
            return Err(Failure::not_found(format!("the report has no file '{shown}'")));
        }
        // Read under the lock: another drawing may replace the folder once it is let go.
        let path = drawn.dir.path().join(name);
        std::fs::read(&path)
            .map_err(|e| Failure::internal(format!("reading {}: {e}", path.display())))
    })?;
    let mut body = body;
    if name == "index.html" {
        body = with_navigation(body);
    }
    Ok(Served::File { body, content_type: content_type(name) })
}

/// The written page with a way back into the app at the top of its body.
fn with_navigation(body: Vec<u8>) -> Vec<u8> {
    let html = match String::from_utf8(body) {
        Ok(html) => html,
        Err(e) => return e.into_bytes(),
    };
    let nav = "<body>\n<p><a href=\"/\">← rrm</a> · <a href=\"/progress\">Progress</a> · \
               drawn from the store when it changes, the same page as \
               <code>rrm eval report --out DIR</code></p>";
    html.replacen("<body>", nav, 1).into_bytes()
}

/// A report file as a response (the page gets a CSP that admits its inline style).
pub fn response(body: Vec<u8>, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(REPORT_CSP));
    r
}
