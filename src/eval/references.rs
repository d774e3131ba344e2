//! Reading documents with human reference summaries from JSONL, one document a line, in
//! either of two layouts:
//!
//! - plain: `{"id": "...", "text": "...", "references": ["...", ...]}` (`id` optional);
//! - SQuALITY (Wang et al. 2022): `{"metadata": {"uid", "passage_id", ...}, "document": "...",
//!   "questions": [{"question_text", "responses": [{"response_text"}, ...]}, ...]}`; the
//!   references are the responses to the first question ("What is the plot of the story?").
//!
//! All or nothing: every bad line is reported by its 1-based number (not JSON, neither layout,
//! no document text, no non-empty reference, a repeated id) and no document is returned when
//! any line is bad. Blank lines are skipped; a file with no document is an error.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::EvalError;

/// A document and its reference summaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// The id given in the file, or `line-N`.
    pub id: String,
    pub text: String,
    pub references: Vec<String>,
    /// 1-based line number in the file.
    pub line: usize,
}

/// A reference cut to at most `max_words` words, at the last sentence end inside them (a `.`,
/// `!` or `?`, possibly followed by closing quotes or brackets); with no sentence end inside,
/// at the word limit. Used to turn a human summary into a demonstration of the length the
/// policy writes, so a policy trained on it learns what people write, not to write longer.
pub fn cut_at_sentence(text: &str, max_words: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() <= max_words {
        return words.join(" ");
    }
    let inside = &words[..max_words];
    let cut = inside.iter().rposition(|w| ends_sentence(w)).map(|i| i + 1).unwrap_or(max_words);
    inside[..cut].join(" ")
}

/// The sentences of `text` (ends as [`cut_at_sentence`] reads them), whitespace normalized.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for w in text.split_whitespace() {
        current.push(w);
        if ends_sentence(w) {
            out.push(current.join(" "));
            current.clear();
        }
    }
    if !current.is_empty() {
        out.push(current.join(" "));
    }
    out
}

fn ends_sentence(word: &str) -> bool {
    word.trim_end_matches(['"', '\'', ')', ']', '”', '’']).ends_with(['.', '!', '?'])
}

/// Reads and checks a references file.
pub fn read_file(path: &Path) -> Result<Vec<Document>, EvalError> {
    let bytes = std::fs::read(path)
        .map_err(|source| EvalError::Io { path: path.display().to_string(), source })?;
    let text = String::from_utf8(bytes).map_err(|e| EvalError::BadLines {
        path: path.display().to_string(),
        lines: vec![(
            line_of_offset(e.as_bytes(), e.utf8_error().valid_up_to()),
            "not valid UTF-8".into(),
        )],
    })?;
    parse(&text).map_err(|e| match e {
        ParseError::Empty => EvalError::NoDocuments { path: path.display().to_string() },
        ParseError::Lines(lines) => EvalError::BadLines { path: path.display().to_string(), lines },
    })
}

fn line_of_offset(bytes: &[u8], offset: usize) -> usize {
    1 + bytes[..offset.min(bytes.len())].iter().filter(|&&b| b == b'\n').count()
}

/// Why a references text was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum ParseError {
    /// No document line at all.
    Empty,
    /// Bad lines: (1-based number, what is wrong).
    Lines(Vec<(usize, String)>),
}

/// Parses JSONL text (see the module docs).
pub fn parse(text: &str) -> Result<Vec<Document>, ParseError> {
    let mut docs = Vec::new();
    let mut bad = Vec::new();
    let mut ids = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line, n) {
            Ok(doc) => {
                if !ids.insert(doc.id.clone()) {
                    bad.push((n, format!("id '{}' appears on an earlier line", doc.id)));
                } else {
                    docs.push(doc);
                }
            }
            Err(why) => bad.push((n, why)),
        }
    }
    if !bad.is_empty() {
        return Err(ParseError::Lines(bad));
    }
    if docs.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(docs)
}

fn parse_line(line: &str, n: usize) -> Result<Document, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(obj) = &value else {
        return Err("not a JSON object".into());
    };
    let (id, text, references) = if obj.contains_key("document") || obj.contains_key("questions") {
        squality(obj)?
    } else if obj.contains_key("text") || obj.contains_key("references") {
        plain(obj)?
    } else {
        return Err("neither layout: expected {\"id\", \"text\", \"references\"} or SQuALITY's \
                    {\"document\", \"questions\"}"
            .into());
    };
    if text.trim().is_empty() {
        return Err("the document text is empty".into());
    }
    let references: Vec<String> = references.into_iter().filter(|r| !r.trim().is_empty()).collect();
    if references.is_empty() {
        return Err("the document has no reference summary".into());
    }
    Ok(Document { id: id.unwrap_or_else(|| format!("line-{n}")), text, references, line: n })
}

type Parsed = (Option<String>, String, Vec<String>);

fn string_field(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(x)) if key == "id" => Ok(Some(x.to_string())),
        Some(other) => Err(format!("\"{key}\" must be a string, not {}", kind(other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn plain(obj: &serde_json::Map<String, Value>) -> Result<Parsed, String> {
    let id = string_field(obj, "id")?;
    let text = string_field(obj, "text")?.ok_or("missing \"text\"")?;
    let refs = match obj.get("references") {
        None | Some(Value::Null) => return Err("missing \"references\"".into()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("references[{i}] must be a string, not {}", kind(other))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::String(s)) => vec![s.clone()],
        Some(other) => {
            return Err(format!("\"references\" must be an array of strings, not {}", kind(other)))
        }
    };
    Ok((id, text, refs))
}

fn squality(obj: &serde_json::Map<String, Value>) -> Result<Parsed, String> {
    let meta = obj.get("metadata").and_then(Value::as_object);
    let id = meta.and_then(|m| {
        ["uid", "passage_id"]
            .iter()
            .find_map(|k| m.get(*k).and_then(|v| v.as_str().map(str::to_string)))
    });
    let text = string_field(obj, "document")?.ok_or("missing \"document\"")?;
    let first = obj
        .get("questions")
        .and_then(Value::as_array)
        .and_then(|q| q.first())
        .ok_or("missing \"questions\" (an array whose first question has the responses)")?;
    let responses = first
        .get("responses")
        .and_then(Value::as_array)
        .ok_or("questions[0] has no \"responses\" array")?;
    let refs = responses
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.get("response_text").and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
                format!("questions[0].responses[{i}] has no string \"response_text\"")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((id, text, refs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_at_sentence_keeps_whole_sentences() {
        let text = "One two three. Four \"five six!\" Seven eight nine ten.";
        assert_eq!(cut_at_sentence(text, 100), text);
        assert_eq!(cut_at_sentence(text, 7), "One two three. Four \"five six!\"");
        assert_eq!(cut_at_sentence(text, 5), "One two three.");
        // No sentence end inside the limit: cut at the limit.
        assert_eq!(cut_at_sentence("a b c d e. f", 3), "a b c");
        assert_eq!(cut_at_sentence("a  b\n c", 10), "a b c");
        assert_eq!(
            sentences(text),
            ["One two three.", "Four \"five six!\"", "Seven eight nine ten."]
        );
        assert_eq!(sentences("no end  here"), ["no end here"]);
        assert!(sentences("  ").is_empty());
    }

    #[test]
    fn both_layouts() {
        let text = concat!(
            r#"{"id": "a", "text": "Once upon a time.", "references": ["A tale.", "A story."]}"#,
            "\n\n",
            r#"{"metadata": {"uid": "u1", "passage_id": "7"}, "document": "It rained.", "questions": [{"question_text": "What is the plot of the story?", "responses": [{"response_text": "Rain."}, {"response_text": "Weather."}]}, {"responses": [{"response_text": "other"}]}]}"#,
            "\n",
            r#"{"text": "No id here.", "references": "One."}"#,
        );
        let docs = parse(text).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].references, vec!["A tale.", "A story."]);
        assert_eq!((docs[1].id.as_str(), docs[1].line), ("u1", 3));
        assert_eq!(docs[1].references, vec!["Rain.", "Weather."]);
        assert_eq!(docs[2].id, "line-4");
    }

    #[test]
    fn bad_lines_are_named_by_number_and_nothing_is_returned() {
        let text = concat!(
            r#"{"id": "a", "text": "fine", "references": ["ok"]}"#,
            "\n",
            "{not json\n",
            r#"{"id": "b", "text": "no refs", "references": []}"#,
            "\n",
            r#"{"id": "c", "text": "", "references": ["x"]}"#,
            "\n",
            r#"{"foo": 1}"#,
            "\n",
            r#"{"id": "a", "text": "again", "references": ["y"]}"#,
            "\n",
            r#"{"document": "d", "questions": []}"#,
            "\n",
            r#"{"id": "e", "text": "t", "references": [" "]}"#,
        );
        let Err(ParseError::Lines(bad)) = parse(text) else { panic!("expected bad lines") };
        let numbers: Vec<usize> = bad.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, vec![2, 3, 4, 5, 6, 7, 8], "{bad:?}");
        assert!(bad[0].1.contains("not JSON"));
        assert!(bad[1].1.contains("no reference"));
        assert!(bad[2].1.contains("empty"));
        assert!(bad[3].1.contains("neither layout"));
        assert!(bad[4].1.contains("earlier line"));
        assert!(bad[6].1.contains("no reference"));
    }

    #[test]
    fn empty_input_is_an_error() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse("\n  \n"), Err(ParseError::Empty));
    }
}
