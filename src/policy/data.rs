//! Training data for the policy: examples from stored feedback or a TRL-format file, the split
//! by book, and tokenization with the composer's prompts.
//!
//! A [`Prompt`] is what the composer would send for a node: the per-height template rendered
//! over the node's input (`compose::prompt::render`, without previous context: feedback
//! records keep the node's input but not its context). Completions are the judged or written
//! texts followed by the model's end-of-turn token, as TRL appends EOS, so a policy learns
//! where a summary ends.
//!
//! TRL files: one JSON object per line, `{"prompt", "chosen", "rejected"}` (preference) or
//! `{"prompt", "completion"}` (demonstration). A string prompt is a node's input (as
//! `rrm feedback export --format trl` writes it) and gets the template of `"height"` (default
//! 0); a list of `{"role", "content"}` messages is used as it is (TRL's conversational form,
//! where `chosen`/`rejected`/`completion` may be message lists too). `"group"` or `"book"`
//! names the split group (default: the prompt's hash). Bad lines are reported by number and
//! nothing is used.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{io_err, PolicyError};
use crate::compose::prompt;
use crate::feedback::{self, Feedback, FeedbackKind};
use crate::infer::tokenizer::GgufTokenizer;
use crate::infer::{ChatMessage, Role};

/// A node's prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub messages: Vec<ChatMessage>,
    /// The text summarized (for judges and reward models).
    pub input: String,
    pub height: u32,
    /// The split group: the book, else the input's key.
    pub group: String,
}

impl Prompt {
    /// The composer's prompt for a node of `height` summarizing `input`.
    pub fn for_node(input: &str, height: u32, group: &str) -> Result<Prompt, PolicyError> {
        Ok(Prompt {
            messages: prompt::render(prompt::template_for(height), input, None)?,
            input: input.to_string(),
            height,
            group: group.to_string(),
        })
    }
}

/// A demonstration: the prompt and the text to imitate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    pub prompt: Prompt,
    pub completion: String,
}

/// A preference: `chosen` is better than `rejected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefExample {
    pub prompt: Prompt,
    pub chosen: String,
    pub rejected: String,
}

/// The examples of one source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    pub sft: Vec<SftExample>,
    pub prefs: Vec<PrefExample>,
    /// `store` or the file's path.
    pub source: String,
    /// Ties and other records that gave no example.
    pub skipped: usize,
    /// Book id → its split group (books that share a near-duplicate passage share one, as in
    /// `feedback::groups`); what `--val-books` / `--test-books` and the card's books go by.
    #[serde(default)]
    pub book_groups: BTreeMap<String, String>,
}

impl Dataset {
    /// blake3 of the examples (what a card records as the data's identity).
    pub fn hash(&self) -> String {
        let bytes = serde_json::to_vec(&(&self.sft, &self.prefs)).unwrap_or_default();
        blake3::hash(&bytes).to_hex()[..16].to_string()
    }

    pub fn groups(&self) -> BTreeSet<String> {
        self.sft
            .iter()
            .map(|e| e.prompt.group.clone())
            .chain(self.prefs.iter().map(|e| e.prompt.group.clone()))
            .collect()
    }

    /// Keeps the examples whose group `keep` accepts.
    pub fn filter(&self, keep: impl Fn(&str) -> bool) -> Dataset {
        Dataset {
            sft: self.sft.iter().filter(|e| keep(&e.prompt.group)).cloned().collect(),
            prefs: self.prefs.iter().filter(|e| keep(&e.prompt.group)).cloned().collect(),
            source: self.source.clone(),
            skipped: self.skipped,
            book_groups: self.book_groups.clone(),
        }
    }
}

/// Examples from feedback records: demonstrations and corrections (the edited text) as SFT
/// targets; comparisons, Likert pairs and corrections as preference pairs (ties left out).
pub fn from_feedback(records: &[Feedback]) -> Result<Dataset, PolicyError> {
    let mut out = Dataset { source: "store".into(), ..Dataset::default() };
    // The split groups are the reward models' (`feedback::groups`): same book or near-duplicate
    // passage → one group.
    let pairs = feedback::to_pairs(records);
    let group_of_input: BTreeMap<&str, &str> =
        pairs.iter().map(|p| (p.input.as_str(), p.group.as_str())).collect();
    for fb in records {
        if let (Some(book), Some(g)) = (&fb.book, group_of_input.get(fb.input.as_str())) {
            out.book_groups.entry(book.clone()).or_insert_with(|| g.to_string());
        }
    }
    for fb in records {
        let target = match &fb.kind {
            FeedbackKind::Demonstration { summary } => Some(&summary.text),
            FeedbackKind::Correction { edited, .. } => Some(&edited.text),
            _ => None,
        };
        if let Some(text) = target {
            let group = match group_of_input.get(fb.input.as_str()) {
                Some(g) => g.to_string(),
                None => match &fb.book {
                    Some(b) => out.book_groups.get(b).cloned().unwrap_or_else(|| fb.split_group()),
                    None => fb.split_group(),
                },
            };
            let prompt = Prompt::for_node(&fb.input, fb.height, &group)?;
            out.sft.push(SftExample { prompt, completion: text.clone() });
        }
    }
    for pair in pairs {
        if pair.target <= 0.5 {
            out.skipped += 1;
            continue;
        }
        let prompt = Prompt::for_node(&pair.input, pair.height, &pair.group)?;
        out.prefs.push(PrefExample { prompt, chosen: pair.chosen, rejected: pair.rejected });
    }
    Ok(out)
}

/// The split group of book `id` in `data` (its own `book:<id>` key when it has no feedback).
pub fn group_of_book(data: &Dataset, id: &str) -> String {
    data.book_groups.get(id).cloned().unwrap_or_else(|| feedback::groups::book_group(id))
}

/// A message list, a string, or a TRL conversational completion (`[{role, content}]`).
fn text_or_messages(v: &serde_json::Value, field: &str) -> Result<String, String> {
    match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
        serde_json::Value::String(_) => Err(format!("`{field}` is empty")),
        serde_json::Value::Array(items) => {
            let last = items
                .iter()
                .rev()
                .find_map(|m| m.get("content").and_then(|c| c.as_str()))
                .ok_or_else(|| format!("`{field}` has no message with a `content`"))?;
            if last.trim().is_empty() {
                return Err(format!("`{field}` is empty"));
            }
            Ok(last.to_string())
        }
        _ => Err(format!("`{field}` must be a string or a list of messages")),
    }
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "system" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        other => Err(format!("unknown role `{other}`")),
    }
}

fn parse_line(line: &str) -> Result<(Prompt, Target), String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let height = match obj.get("height") {
        None | Some(serde_json::Value::Null) => 0,
        Some(h) => {
            h.as_u64().filter(|&h| h <= 64).ok_or("`height` must be a whole number from 0 to 64")?
                as u32
        }
    };
    let group_field = obj.get("group").or_else(|| obj.get("book")).and_then(|g| g.as_str());
    let prompt = match obj.get("prompt") {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
            let group = group_field.map_or_else(|| feedback::text_hash(s), str::to_string);
            Prompt::for_node(s, height, &group).map_err(|e| e.to_string())?
        }
        Some(serde_json::Value::Array(items)) if !items.is_empty() => {
            let mut messages = Vec::new();
            for m in items {
                let role =
                    m.get("role").and_then(|r| r.as_str()).ok_or("a message has no `role`")?;
                let content = m
                    .get("content")
                    .and_then(|c| c.as_str())
                    .ok_or("a message has no `content`")?;
                messages.push(ChatMessage { role: parse_role(role)?, content: content.into() });
            }
            let input = messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(|m| m.content.clone())
                .unwrap_or_default();
            let group = group_field.map_or_else(|| feedback::text_hash(&input), str::to_string);
            Prompt { messages, input, height, group }
        }
        Some(_) => return Err("`prompt` must be a non-empty string or list of messages".into()),
        None => return Err("no `prompt`".into()),
    };
    let target = match (obj.get("chosen"), obj.get("rejected"), obj.get("completion")) {
        (Some(c), Some(r), None) => {
            let (chosen, rejected) =
                (text_or_messages(c, "chosen")?, text_or_messages(r, "rejected")?);
            if chosen == rejected {
                return Err("`chosen` and `rejected` are the same text".into());
            }
            Target::Pair { chosen, rejected }
        }
        (None, None, Some(c)) => Target::Completion(text_or_messages(c, "completion")?),
        _ => {
            return Err("need either `chosen` and `rejected` (a preference) or `completion` \
                 (a demonstration)"
                .into())
        }
    };
    Ok((prompt, target))
}

enum Target {
    Completion(String),
    Pair { chosen: String, rejected: String },
}

/// Reads a TRL-format JSONL file (see the module docs). Every bad line is reported by number.
pub fn read_jsonl(path: &Path) -> Result<Dataset, PolicyError> {
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut out = Dataset { source: path.display().to_string(), ..Dataset::default() };
    let mut bad = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                bad.push((i + 1, format!("unreadable: {e}")));
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line) {
            Ok((prompt, Target::Completion(completion))) => {
                out.sft.push(SftExample { prompt, completion })
            }
            Ok((prompt, Target::Pair { chosen, rejected })) => {
                out.prefs.push(PrefExample { prompt, chosen, rejected })
            }
            Err(e) => bad.push((i + 1, e)),
        }
    }
    if !bad.is_empty() {
        return Err(PolicyError::BadLines { path: path.to_path_buf(), bad });
    }
    if out.sft.is_empty() && out.prefs.is_empty() {
        return Err(PolicyError::NoData(format!("{} has no examples", path.display())));
    }
    Ok(out)
}

/// Which groups (books) go to validation and test.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub train: BTreeSet<String>,
    pub val: BTreeSet<String>,
    pub test: BTreeSet<String>,
}

impl Split {
    /// Splits `groups` by a stable hash of each (as the reward models split by book):
    /// `test_percent` to test, `val_percent` to validation. Groups named in `force_test`
    /// (`force_val`) go to test (validation) whatever their hash. With three or more groups each part gets at least one (when
    /// its percentage is not 0); with two, one trains and one validates.
    pub fn by_hash(
        groups: &BTreeSet<String>,
        val_percent: u32,
        test_percent: u32,
        force_val: &BTreeSet<String>,
        force_test: &BTreeSet<String>,
    ) -> Split {
        let bucket = |g: &str| u32::from(blake3::hash(g.as_bytes()).as_bytes()[1]) * 100 / 256;
        let mut s = Split::default();
        for g in groups {
            let b = bucket(g);
            if force_test.contains(g) {
                s.test.insert(g.clone());
            } else if force_val.contains(g) {
                s.val.insert(g.clone());
            } else if b < test_percent {
                s.test.insert(g.clone());
            } else if b < test_percent + val_percent {
                s.val.insert(g.clone());
            } else {
                s.train.insert(g.clone());
            }
        }
        let take_from_train = |dest: &mut BTreeSet<String>, train: &mut BTreeSet<String>| {
            if let Some(g) = train.iter().min_by_key(|g| bucket(g)).cloned() {
                train.remove(&g);
                dest.insert(g);
            }
        };
        let n = groups.len();
        if n >= 3 {
            if test_percent > 0 && s.test.is_empty() && s.train.len() > 1 {
                take_from_train(&mut s.test, &mut s.train);
            }
            if val_percent > 0 && s.val.is_empty() && s.train.len() > 1 {
                take_from_train(&mut s.val, &mut s.train);
            }
        } else if n == 2 && val_percent > 0 && s.val.is_empty() {
            s.train.extend(std::mem::take(&mut s.test));
            if s.train.len() > 1 {
                take_from_train(&mut s.val, &mut s.train);
            }
        }
        if s.train.is_empty() {
            // Never train on nothing: move one group back.
            if let Some(g) = s.val.iter().next().cloned() {
                s.val.remove(&g);
                s.train.insert(g);
            } else if let Some(g) = s.test.iter().find(|g| !force_test.contains(*g)).cloned() {
                s.test.remove(&g);
                s.train.insert(g);
            }
        }
        s
    }
}

/// Token ids of a prompt and its completions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encoded {
    pub prompt: Vec<u32>,
    pub completions: Vec<Vec<u32>>,
}

/// Tokenizes prompts and completions the way the engine sees them.
#[derive(Debug, Clone)]
pub struct Encoder<'t> {
    tokenizer: &'t GgufTokenizer,
    end: u32,
    pub max_prompt_tokens: usize,
    pub max_completion_tokens: usize,
}

impl<'t> Encoder<'t> {
    pub fn new(
        tokenizer: &'t GgufTokenizer,
        max_prompt_tokens: usize,
        max_completion_tokens: usize,
    ) -> Result<Encoder<'t>, PolicyError> {
        let ids = tokenizer.encode(&tokenizer.eos_token)?;
        let end = match ids.as_slice() {
            [one] => *one,
            _ => *tokenizer.eos_ids.last().ok_or_else(|| {
                PolicyError::Invalid("the model's tokenizer has no end-of-sequence token".into())
            })?,
        };
        Ok(Encoder { tokenizer, end, max_prompt_tokens, max_completion_tokens })
    }

    /// The end-of-turn token appended to every completion.
    pub fn end_token(&self) -> u32 {
        self.end
    }

    pub fn prompt(&self, p: &Prompt) -> Result<Vec<u32>, PolicyError> {
        Ok(self.tokenizer.encode(&self.tokenizer.render_chat(&p.messages)?)?)
    }

    pub fn completion(&self, text: &str) -> Result<Vec<u32>, PolicyError> {
        let mut ids = self.tokenizer.encode(text.trim())?;
        ids.push(self.end);
        Ok(ids)
    }

    /// The prompt and completions, or `None` when one is longer than the limits.
    pub fn encode(&self, p: &Prompt, completions: &[&str]) -> Result<Option<Encoded>, PolicyError> {
        let prompt = self.prompt(p)?;
        if prompt.len() > self.max_prompt_tokens {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(completions.len());
        for c in completions {
            let ids = self.completion(c)?;
            if ids.len() > self.max_completion_tokens {
                return Ok(None);
            }
            out.push(ids);
        }
        Ok(Some(Encoded { prompt, completions: out }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::{Judged, Preference};

    #[test]
    fn feedback_becomes_examples_with_the_composers_prompt() {
        let cmp = Feedback::new(
            "ann",
            "k1",
            "Alice met the Rabbit.",
            0,
            FeedbackKind::Comparison {
                a: Judged::new("Alice met a rabbit."),
                b: Judged::new("A story."),
                prefer: Preference::B,
                confidence: 5,
            },
        )
        .at(Some("book1".into()), None);
        let tie = Feedback::new(
            "ann",
            "k1",
            "Alice met the Rabbit.",
            0,
            FeedbackKind::Comparison {
                a: Judged::new("x y"),
                b: Judged::new("y x"),
                prefer: Preference::Tie,
                confidence: 1,
            },
        );
        let demo = Feedback::new(
            "bob",
            "k2",
            "Parts.",
            1,
            FeedbackKind::Demonstration { summary: Judged::new("Written.") },
        );
        let fix = Feedback::new(
            "bob",
            "k3",
            "Passage.",
            0,
            FeedbackKind::Correction {
                original: Judged::new("Bad."),
                edited: Judged::new("Good."),
            },
        );
        let d = from_feedback(&[cmp, tie, demo, fix]).unwrap();
        assert_eq!(d.sft.len(), 2);
        assert_eq!(d.prefs.len(), 2);
        assert_eq!(d.skipped, 1);
        let p = &d.prefs[0];
        assert_eq!((p.chosen.as_str(), p.rejected.as_str()), ("A story.", "Alice met a rabbit."));
        assert_eq!(p.prompt.group, d.book_groups["book1"]);
        assert!(p.prompt.group.starts_with("g:"));
        let want = prompt::render(&prompt::LEAF, "Alice met the Rabbit.", None).unwrap();
        assert_eq!(p.prompt.messages, want);
        let demo = d.sft.iter().find(|e| e.completion == "Written.").unwrap();
        assert_eq!(demo.prompt.messages, prompt::render(&prompt::COMBINE, "Parts.", None).unwrap());
    }

    #[test]
    fn trl_files_read_with_bad_lines_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.jsonl");
        std::fs::write(
            &good,
            concat!(
                r#"{"prompt": "A passage.", "chosen": "Good.", "rejected": "Bad.", "height": 1, "book": "b"}"#,
                "\n\n",
                r#"{"prompt": [{"role": "user", "content": "Sum up X."}], "completion": [{"role": "assistant", "content": "X."}]}"#,
                "\n"
            ),
        )
        .unwrap();
        let d = read_jsonl(&good).unwrap();
        assert_eq!((d.prefs.len(), d.sft.len()), (1, 1));
        assert_eq!(d.prefs[0].prompt.height, 1);
        assert_eq!(d.prefs[0].prompt.group, "b");
        assert_eq!(d.sft[0].prompt.messages.len(), 1);
        assert_eq!(d.sft[0].completion, "X.");

        let bad = dir.path().join("bad.jsonl");
        std::fs::write(
            &bad,
            concat!(
                r#"{"prompt": "P", "chosen": "a", "rejected": "b"}"#,
                "\nnot json\n",
                r#"{"prompt": "P", "chosen": "a"}"#,
                "\n",
                r#"{"prompt": "", "completion": "c"}"#,
                "\n",
                r#"{"prompt": "P", "chosen": "same", "rejected": "same"}"#,
                "\n"
            ),
        )
        .unwrap();
        let msg = read_jsonl(&bad).unwrap_err().to_string();
        for n in ["line 2", "line 3", "line 4", "line 5"] {
            assert!(msg.contains(n), "{msg}");
        }
        assert!(!msg.contains("line 1:"), "{msg}");
        assert!(msg.contains("bad.jsonl"));
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "\n\n").unwrap();
        assert!(matches!(read_jsonl(&empty), Err(PolicyError::NoData(_))));
        assert!(read_jsonl(&dir.path().join("missing.jsonl"))
            .unwrap_err()
            .to_string()
            .contains("missing.jsonl"));
    }

    #[test]
    fn the_split_is_by_group_stable_and_never_empty() {
        let groups: BTreeSet<String> = (0..20).map(|i| format!("book{i}")).collect();
        let none = BTreeSet::new();
        let s = Split::by_hash(&groups, 10, 10, &none, &none);
        assert_eq!(s.train.len() + s.val.len() + s.test.len(), 20);
        assert!(!s.train.is_empty() && !s.val.is_empty() && !s.test.is_empty());
        assert!(s.train.is_disjoint(&s.test) && s.val.is_disjoint(&s.test));
        assert_eq!(s, Split::by_hash(&groups, 10, 10, &none, &none));
        let forced: BTreeSet<String> = ["book3".to_string()].into();
        assert!(Split::by_hash(&groups, 10, 10, &none, &forced).test.contains("book3"));
        let s = Split::by_hash(&groups, 0, 0, &forced, &none);
        assert_eq!((s.val.len(), s.test.len()), (1, 0));
        assert!(s.val.contains("book3"));
        let two: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let s = Split::by_hash(&two, 10, 10, &none, &none);
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (1, 1, 0));
        let one: BTreeSet<String> = ["a".to_string()].into();
        assert_eq!(Split::by_hash(&one, 50, 50, &none, &none).train.len(), 1);
    }
}
