//! Text normalization: byte-order mark, line endings, Project Gutenberg header and footer.
//!
//! Everything else is kept byte for byte: no trimming, no whitespace folding, no Unicode
//! normalization. A book's identity is the hash of the text this module returns, so any change
//! here changes every book id: such a change must bump the tree format version.

use serde::{Deserialize, Serialize};

/// What [`normalize`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NormalizeReport {
    /// A leading byte-order mark was removed.
    pub bom_stripped: bool,
    /// CRLF pairs turned into LF.
    pub crlf_converted: usize,
    /// Lone CRs turned into LF.
    pub cr_converted: usize,
    /// Bytes of Project Gutenberg header removed (0: none found).
    pub gutenberg_header_bytes: usize,
    /// Bytes of Project Gutenberg footer (licence) removed (0: none found).
    pub gutenberg_footer_bytes: usize,
    /// Invalid UTF-8 bytes replaced by U+FFFD (only when reading lossily).
    pub replaced_bytes: usize,
}

/// Normalizes `raw`: strips a BOM, turns CRLF and CR into LF, and removes a Project Gutenberg
/// header and licence footer when their markers are present.
pub fn normalize(raw: &str) -> (String, NormalizeReport) {
    let mut report = NormalizeReport::default();
    let raw = match raw.strip_prefix('\u{FEFF}') {
        Some(rest) => {
            report.bom_stripped = true;
            rest
        }
        None => raw,
    };
    let text = normalize_line_endings(raw, &mut report);
    let (start, end) = gutenberg_body(&text);
    report.gutenberg_header_bytes = start;
    report.gutenberg_footer_bytes = text.len() - end;
    let text = if start == 0 && end == text.len() { text } else { text[start..end].to_string() };
    (text, report)
}

fn normalize_line_endings(raw: &str, report: &mut NormalizeReport) -> String {
    if !raw.contains('\r') {
        return raw.to_string();
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' {
            out.push_str(&raw[last..i]);
            out.push('\n');
            if bytes.get(i + 1) == Some(&b'\n') {
                report.crlf_converted += 1;
                i += 2;
            } else {
                report.cr_converted += 1;
                i += 1;
            }
            last = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&raw[last..]);
    out
}

/// The byte range of the body between a Gutenberg header and footer (the whole text if none).
fn gutenberg_body(text: &str) -> (usize, usize) {
    let half = text.len() / 2;
    let mut start = 0;
    let mut offset = 0;
    // Header: the last start marker in the first half of the text; the body begins after it.
    for line in text.split_inclusive('\n') {
        if offset > half {
            break;
        }
        if is_start_marker(line) {
            start = offset + line.len();
        }
        offset += line.len();
    }
    // Footer: the first end marker after the header and in the second half of the text.
    let mut end = text.len();
    let mut offset = start;
    for line in text[start..].split_inclusive('\n') {
        if offset >= half && is_end_marker(line) {
            end = offset;
            break;
        }
        offset += line.len();
    }
    (start, end.max(start))
}

fn is_start_marker(line: &str) -> bool {
    let t = line.trim();
    if t.len() > 200 {
        return false;
    }
    let up = t.to_ascii_uppercase();
    (up.starts_with("***") && up.contains("START OF") && up.contains("PROJECT GUTENBERG"))
        || up.starts_with("*END*THE SMALL PRINT")
        || up.starts_with("*END THE SMALL PRINT")
}

fn is_end_marker(line: &str) -> bool {
    let t = line.trim();
    if t.len() > 200 {
        return false;
    }
    let up = t.to_ascii_uppercase();
    (up.starts_with("***") && up.contains("END OF") && up.contains("PROJECT GUTENBERG"))
        || up.starts_with("END OF THE PROJECT GUTENBERG")
        || up.starts_with("END OF PROJECT GUTENBERG")
        || up.starts_with("*** START: FULL LICENSE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bom_and_line_endings() {
        let (t, r) = normalize("\u{FEFF}a\r\nb\rc\n");
        assert_eq!(t, "a\nb\nc\n");
        assert!(r.bom_stripped);
        assert_eq!((r.crlf_converted, r.cr_converted), (1, 1));
    }

    #[test]
    fn plain_text_is_unchanged() {
        let s = "  Some text.\n\n\tMore text  \n";
        assert_eq!(normalize(s).0, s);
    }

    #[test]
    fn strips_modern_header_and_footer() {
        let body = "Chapter 1\n\nIt was a dark night. ".repeat(20);
        let raw = format!(
            "The Project Gutenberg eBook of X\nlicence\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\n{body}\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicence text\n"
        );
        let (t, r) = normalize(&raw);
        assert_eq!(t, format!("{body}\n"));
        assert!(r.gutenberg_header_bytes > 0 && r.gutenberg_footer_bytes > 0);
    }

    #[test]
    fn strips_this_variant_and_end_of_line() {
        let body = "Words words words.\n".repeat(30);
        let raw = format!(
            "header\n***START OF THIS PROJECT GUTENBERG EBOOK Y***\n{body}End of Project Gutenberg's Y, by Z\n*** END OF THIS PROJECT GUTENBERG EBOOK Y ***\n"
        );
        assert_eq!(normalize(&raw).0, body);
    }

    #[test]
    fn strips_old_small_print_header() {
        let body = "Old text here.\n".repeat(30);
        let raw = format!(
            "small print\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n{body}End of the Project Gutenberg Etext of Z\n"
        );
        assert_eq!(normalize(&raw).0, body);
    }

    #[test]
    fn end_marker_early_in_text_is_not_a_footer() {
        let raw = format!("End of Project Gutenberg's intro\n{}", "Body line.\n".repeat(30));
        assert_eq!(normalize(&raw).0, raw);
    }
}
