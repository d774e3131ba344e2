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
//! names the row's book (default: none). Bad lines are reported by number and nothing is used.
//!
//! Split groups are the reward models' (`feedback::groups`): prompts of one book, or whose
//! inputs are near-duplicates, share a group, and [`Split::by_hash`] holds groups out by the
//! same rule as the reward models' split, so held-out prompts of one are held out by the other.

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
    /// The split group (`feedback::groups`): the component of the node's book and of every
    /// near-duplicate input.
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
    // passage → one group, over every record's input (so a demonstration of a passage that was
    // also compared, or of a near-copy of it, sits on the same side of the split).
    let items: Vec<(&str, String)> =
        records.iter().map(|fb| (fb.input.as_str(), fb.split_group())).collect();
    let names = feedback::groups::components(
        &items.iter().map(|(i, g)| (*i, g.as_str())).collect::<Vec<_>>(),
    );
    let mut group_of_input: BTreeMap<&str, &str> = BTreeMap::new();
    for (fb, name) in records.iter().zip(&names) {
        group_of_input.insert(fb.input.as_str(), name);
        if let Some(book) = &fb.book {
            out.book_groups.entry(book.clone()).or_insert_with(|| name.clone());
        }
    }
    for (fb, name) in records.iter().zip(&names) {
        let target = match &fb.kind {
            FeedbackKind::Demonstration { summary } => Some(&summary.text),
            FeedbackKind::Correction { edited, .. } => Some(&edited.text),
            _ => None,
        };
        if let Some(text) = target {
            let prompt = Prompt::for_node(&fb.input, fb.height, name)?;
            out.sft.push(SftExample { prompt, completion: text.clone() });
        }
    }
    for pair in feedback::to_pairs(records) {
        if pair.target <= 0.5 {
            out.skipped += 1;
            continue;
        }
        let group = group_of_input.get(pair.input.as_str()).map_or(pair.group.as_str(), |g| g);
        let prompt = Prompt::for_node(&pair.input, pair.height, group)?;
        out.prefs.push(PrefExample { prompt, chosen: pair.chosen, rejected: pair.rejected });
    }
    Ok(out)
}

/// Rewrites the groups of `data`'s prompts, each arriving as `book:<id>` (a named book or
/// group) or a key of its input, to the split groups of [`feedback::groups::components`]:
/// prompts of one book, or whose inputs are near-duplicates (the same passage with other
/// whitespace, case or punctuation, or word 5-gram shingle Jaccard ≥
/// [`feedback::groups::NEAR_DUPLICATE`]), share a group, named as the reward models name it.
/// Fills `book_groups`.
fn join_groups(data: &mut Dataset) {
    let names = {
        let items: Vec<(&str, &str)> = data
            .sft
            .iter()
            .map(|e| &e.prompt)
            .chain(data.prefs.iter().map(|e| &e.prompt))
            .map(|p| (p.input.as_str(), p.group.as_str()))
            .collect();
        feedback::groups::components(&items)
    };
    let prompts = data.sft.iter_mut().map(|e| &mut e.prompt);
    let prompts = prompts.chain(data.prefs.iter_mut().map(|e| &mut e.prompt));
    for (p, name) in prompts.zip(names) {
        if let Some(book) = p.group.strip_prefix("book:") {
            data.book_groups.entry(book.to_string()).or_insert_with(|| name.clone());
        }
        p.group = name;
    }
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
            let group =
                group_field.map_or_else(|| feedback::text_hash(s), feedback::groups::book_group);
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
            let group = group_field
                .map_or_else(|| feedback::text_hash(&input), feedback::groups::book_group);
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
    join_groups(&mut out);
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
    /// Splits `groups` by the split every trainer uses ([`feedback::groups::held_out`], a
    /// stable hash of each group): `test_percent` to test, `val_percent` to validation, so a
    /// group the policy holds out is held out by a reward model trained with percentages at
    /// least as large. Groups named in `force_test` (`force_val`) go to test (validation)
    /// whatever their hash. With three or more groups each part gets at least one (when its
    /// percentage is not 0); with two, one trains and one validates.
    pub fn by_hash(
        groups: &BTreeSet<String>,
        val_percent: u32,
        test_percent: u32,
        force_val: &BTreeSet<String>,
        force_test: &BTreeSet<String>,
    ) -> Split {
        let feedback::groups::HeldOut { mut val, mut test } = feedback::groups::held_out(
            groups.iter().map(String::as_str),
            val_percent,
            test_percent,
            force_val,
            force_test,
        );
        if groups.len() == 2 && val_percent > 0 && val.is_empty() {
            // The one held-out group validates (training needs it more than a test figure).
            if let Some(g) = test.iter().find(|g| !force_test.contains(*g)).cloned() {
                test.remove(&g);
                val.insert(g);
            }
        }
        let train = groups.iter().filter(|g| !val.contains(*g) && !test.contains(*g)).cloned();
        Split { train: train.collect(), val, test }
    }
}

/// Token ids of a prompt and its completions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encoded {
    pub prompt: Vec<u32>,
    pub completions: Vec<Vec<u32>>,
}

/// Tokenizes prompts and completions the way the engine sees them, cut to the limits.
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

    /// The prompt and completions, cut to the limits as TRL's DPO trainer cuts them (see
    /// [`fit`]); `truncated` says whether anything was cut.
    pub fn encode(&self, p: &Prompt, completions: &[&str]) -> Result<Fitted, PolicyError> {
        let prompt = self.prompt(p)?;
        let completions =
            completions.iter().map(|c| self.completion(c)).collect::<Result<Vec<_>, _>>()?;
        Ok(fit(
            prompt,
            completions,
            self.max_prompt_tokens,
            self.max_completion_tokens,
            self.tokenizer.bos_id,
        ))
    }
}

/// An example's tokens after [`fit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    pub encoded: Encoded,
    /// Whether the prompt or a completion was longer than its limit and was cut.
    pub truncated: bool,
}

/// Cuts a prompt and its completions to the limits the way TRL's DPO trainer does
/// (`truncation_mode="keep_end"`): a prompt longer than `max_prompt` keeps its last tokens (the
/// end of the input and the assistant turn's opening, next to the completion; a leading `bos`
/// stays in front), each completion longer than `max_completion` keeps its first tokens (and
/// loses its end token, so a cut completion teaches no ending). Nothing is dropped: the loss
/// sees the completions' openings, where a pair usually differs first. A limit of 0 counts as 1.
pub fn fit(
    mut prompt: Vec<u32>,
    mut completions: Vec<Vec<u32>>,
    max_prompt: usize,
    max_completion: usize,
    bos: Option<u32>,
) -> Fitted {
    let (max_prompt, max_completion) = (max_prompt.max(1), max_completion.max(1));
    let mut truncated = false;
    if prompt.len() > max_prompt {
        truncated = true;
        let keep_bos = max_prompt > 1 && bos.is_some() && prompt.first().copied() == bos;
        let tail = if keep_bos { max_prompt - 1 } else { max_prompt };
        let mut cut = Vec::with_capacity(max_prompt);
        if keep_bos {
            cut.push(prompt[0]);
        }
        cut.extend_from_slice(&prompt[prompt.len() - tail..]);
        prompt = cut;
    }
    for c in &mut completions {
        if c.len() > max_completion {
            truncated = true;
            c.truncate(max_completion);
        }
    }
    Fitted { encoded: Encoded { prompt, completions }, truncated }
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
        // The row's book names its split group, as the reward models' file reader names it.
        assert_eq!(d.prefs[0].prompt.group, group_of_book(&d, "b"));
        assert!(d.prefs[0].prompt.group.starts_with("g:"));
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

    /// A comparison and a demonstration of one node (input `input`) of `book`.
    fn node_feedback(book: Option<&str>, key: &str, input: &str) -> Vec<Feedback> {
        let cmp = Feedback::new(
            "ann",
            key,
            input,
            0,
            FeedbackKind::Comparison {
                a: Judged::new(format!("{input} in short")),
                b: Judged::new("Nothing happens."),
                prefer: Preference::A,
                confidence: 7,
            },
        )
        .at(book.map(str::to_string), None);
        let demo = Feedback::new(
            "bob",
            key,
            input,
            0,
            FeedbackKind::Demonstration { summary: Judged::new(format!("{input} (written)")) },
        )
        .at(book.map(str::to_string), None);
        vec![cmp, demo]
    }

    /// Inputs the reward model trains on when split at its default percentages (20 % + 20 %).
    fn reward_training_inputs(
        pairs: &[feedback::Pair],
        ratings: &[feedback::learn::Rating],
    ) -> BTreeSet<String> {
        let (val, test) = crate::reward::train::split_group_names(
            pairs.iter().map(|p| p.group.as_str()).chain(ratings.iter().map(|r| r.group.as_str())),
            20,
            20,
        );
        pairs
            .iter()
            .filter(|p| !val.contains(&p.group) && !test.contains(&p.group))
            .map(|p| p.input.clone())
            .collect()
    }

    /// Asserts that no prompt the policy holds out at its default percentages (10 % + 10 %) is
    /// in `reward_train`.
    fn assert_held_out_alike(policy: &Dataset, reward_train: &BTreeSet<String>) {
        let none = BTreeSet::new();
        let split = Split::by_hash(&policy.groups(), 10, 10, &none, &none);
        let held_out: Vec<&Prompt> = policy
            .sft
            .iter()
            .map(|e| &e.prompt)
            .chain(policy.prefs.iter().map(|e| &e.prompt))
            .filter(|p| !split.train.contains(&p.group))
            .collect();
        assert!(!held_out.is_empty() && !reward_train.is_empty());
        for p in held_out {
            assert!(
                !reward_train.contains(&p.input),
                "the policy holds out `{}` ({}), which the reward model trains on",
                p.input,
                p.group
            );
        }
    }

    #[test]
    fn the_policy_holds_out_only_what_the_reward_models_hold_out() {
        // Sixty books from the store: some with comparisons and demonstrations, some with
        // demonstrations only (which the reward model pairs with the node's candidates).
        let records: Vec<Feedback> = (0..60)
            .flat_map(|i| {
                let input = format!("Book {i} tells of a miller number {i} and the river {i}.");
                let fb = node_feedback(Some(&format!("book{i}")), &format!("k{i}"), &input);
                if i % 2 == 0 {
                    fb
                } else {
                    fb[1..].to_vec()
                }
            })
            .collect();
        let policy = from_feedback(&records).unwrap();
        let options = feedback::learn::LearnOptions::default();
        let reward = feedback::learn::build(&records, &[], &options, &|_| {
            vec!["A candidate a model wrote.".to_string()]
        });
        assert_held_out_alike(&policy, &reward_training_inputs(&reward.pairs, &reward.ratings));
        // The same TRL file read by both, rows naming their book.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.jsonl");
        let rows: String = (0..60)
            .map(|i| {
                format!(
                    "{{\"prompt\": \"Story {i} tells of a fox number {i} and hen {i}.\", \
                     \"chosen\": \"Fox {i}.\", \"rejected\": \"Nothing.\", \"book\": \"s{i}\"}}\n"
                )
            })
            .collect();
        std::fs::write(&path, rows).unwrap();
        let policy = read_jsonl(&path).unwrap();
        let reward = feedback::io::read_trl(&path).unwrap();
        assert_held_out_alike(&policy, &reward_training_inputs(&reward, &[]));
    }

    #[test]
    fn near_duplicate_prompts_share_a_split_group() {
        const PASSAGE: &str = "The miller walked down to the river at dawn, found the wheel \
            broken and the sluice gate open, and sent his son to fetch the smith from the town.";
        // From feedback: a demonstration of a re-wrapped copy of a compared passage, no book.
        let mut records = node_feedback(None, "k1", PASSAGE);
        let copy = PASSAGE.to_uppercase().replace(' ', "  ");
        records.extend(node_feedback(None, "k2", &copy)[1..].iter().cloned());
        records.extend(node_feedback(None, "k3", "A wholly different tale of a whale at sea."));
        let d = from_feedback(&records).unwrap();
        let group_of = |input: &str| {
            d.sft
                .iter()
                .map(|e| &e.prompt)
                .chain(d.prefs.iter().map(|e| &e.prompt))
                .find(|p| p.input == input)
                .map(|p| p.group.clone())
                .unwrap()
        };
        assert_eq!(group_of(PASSAGE), group_of(&copy));
        assert_ne!(group_of(PASSAGE), group_of("A wholly different tale of a whale at sea."));
        // From a TRL file: near-duplicate prompts without a book field, and one with a book.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dups.jsonl");
        let row = |prompt: &str, extra: &str| {
            format!(
                "{{\"prompt\": {}, \"chosen\": \"Good.\", \"rejected\": \"Bad.\"{extra}}}\n",
                serde_json::to_string(prompt).unwrap()
            )
        };
        let text = [
            row(PASSAGE, ""),
            row(&format!("{PASSAGE}\n"), ""),
            row(&PASSAGE.replace("dawn", "dusk").to_lowercase(), ""),
            row("Another story entirely, of a fox and a hen.", ""),
            row("A chapter of the same book as the fox.", r#", "book": "fables""#),
            row("Another story entirely, of a fox and a hen, told again.", r#", "book": "fables""#),
        ]
        .concat();
        std::fs::write(&path, text).unwrap();
        let d = read_jsonl(&path).unwrap();
        let g: Vec<&str> = d.prefs.iter().map(|e| e.prompt.group.as_str()).collect();
        assert_eq!((g[0], g[0]), (g[1], g[2]), "{g:?}");
        assert_ne!(g[0], g[3]);
        assert_eq!(g[4], g[5]);
        // The retold fox story is a near-duplicate of the first: it joins the book's group.
        assert_eq!(g[3], g[5]);
        assert_eq!(g[4], group_of_book(&d, "fables"));
        // Whatever the percentages, a group lies on one side of the split.
        let none = BTreeSet::new();
        for (v, t) in [(10, 10), (30, 30), (0, 50)] {
            let s = Split::by_hash(&d.groups(), v, t, &none, &none);
            assert_eq!(s.train.len() + s.val.len() + s.test.len(), d.groups().len());
        }
    }

    #[test]
    fn long_examples_are_truncated_not_dropped() {
        // A prompt of 10 tokens (BOS = 1 first) and two completions, against limits 6 and 3.
        let prompt: Vec<u32> = (1..=10).collect();
        let f = fit(prompt.clone(), vec![vec![20, 21, 22, 23, 2], vec![30, 2]], 6, 3, Some(1));
        assert!(f.truncated);
        // The prompt keeps its BOS and its end; completions keep their start.
        assert_eq!(f.encoded.prompt, vec![1, 6, 7, 8, 9, 10]);
        assert_eq!(f.encoded.completions, vec![vec![20, 21, 22], vec![30, 2]]);
        // Without a BOS in front, just the end.
        let f = fit(prompt.clone(), vec![vec![5]], 4, 3, Some(99));
        assert_eq!(f.encoded.prompt, vec![7, 8, 9, 10]);
        assert!(f.truncated);
        // Within the limits nothing changes.
        let f = fit(prompt.clone(), vec![vec![20, 2]], 10, 2, Some(1));
        assert!(!f.truncated);
        assert_eq!(f.encoded, Encoded { prompt, completions: vec![vec![20, 2]] });
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
