//! Prompt templates per tree height, versioned.
//!
//! Height 0 summarizes a passage of the book; higher heights combine consecutive summaries into
//! one. With previous context on, the outputs of earlier same-depth nodes come first, truncated
//! from the start to fit (Wu et al. 2021). A template's `id` and `version` enter every node's
//! cache key: change the text, bump the version.

use minijinja::{context, Environment};

use crate::infer::ChatMessage;

/// A prompt template: a system message and a user message (minijinja), with an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub id: &'static str,
    pub version: u32,
    pub system: &'static str,
    pub user: &'static str,
}

/// Summarize a passage of the book (height 0).
pub const LEAF: Template = Template {
    id: "leaf",
    version: 1,
    system: "You are a careful literary assistant. You write short, faithful summaries of \
             book passages: who does what, where, and why, in plain prose.",
    user: "{% if context %}Summary of the story so far:\n{{ context }}\n\n{% endif %}\
           Passage:\n{{ input }}\n\n\
           Summarize the passage above in a few sentences. Mention the characters by name \
           and the main events, in order.",
};

/// Combine consecutive summaries into one (height ≥ 1).
pub const COMBINE: Template = Template {
    id: "combine",
    version: 2,
    system: "You are a careful literary assistant. You write short, faithful summaries of \
             books: who does what, where, and why, in plain prose.",
    user: "{% if context %}Summary of the story so far:\n{{ context }}\n\n{% endif %}\
           Here are summaries of consecutive parts of a book, one paragraph each, in order:\n\n\
           {{ input }}\n\n\
           Write one coherent summary of these parts as a single paragraph of plain prose. \
           Keep the main characters and events, in order.",
};

/// The template for a node of `height`.
pub fn template_for(height: u32) -> &'static Template {
    if height == 0 {
        &LEAF
    } else {
        &COMBINE
    }
}

#[derive(Debug, thiserror::Error)]
#[error("prompt template {id} v{version} failed to render: {source}")]
pub struct PromptError {
    pub id: &'static str,
    pub version: u32,
    #[source]
    pub source: minijinja::Error,
}

/// Renders `template` into chat messages for an `input` (the passage, or the children's
/// summaries joined) and optional previous `context`.
pub fn render(
    template: &Template,
    input: &str,
    context: Option<&str>,
) -> Result<Vec<ChatMessage>, PromptError> {
    let env = Environment::new();
    let err = |source| PromptError { id: template.id, version: template.version, source };
    let user = env
        .render_str(template.user, context! { input => input, context => context.unwrap_or("") })
        .map_err(err)?;
    Ok(vec![ChatMessage::system(template.system), ChatMessage::user(user)])
}

/// Joins the children's summaries into a combine prompt's input: one paragraph each, in
/// order. (Numbered "Part 1:" labels were tried first: the small model copied them into its
/// output.)
pub fn join_children(summaries: &[&str]) -> String {
    summaries.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect::<Vec<_>>().join("\n\n")
}

/// Keeps the end of `context` so that it takes at most `max_tokens` by `count`: previous
/// context is truncated from the start (the most recent events matter most).
pub fn truncate_context_start<E>(
    context: &str,
    max_tokens: usize,
    count: &dyn Fn(&str) -> Result<usize, E>,
) -> Result<String, E> {
    if count(context)? <= max_tokens {
        return Ok(context.to_string());
    }
    // Binary search on the char boundary where the tail fits.
    let boundaries: Vec<usize> = context.char_indices().map(|(i, _)| i).collect();
    let (mut lo, mut hi) = (0usize, boundaries.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if count(&context[boundaries[mid]..])? <= max_tokens {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let tail = boundaries.get(lo).map_or("", |&b| &context[b..]);
    // Start at a word boundary.
    Ok(match tail.find(char::is_whitespace) {
        Some(ws) if lo > 0 => format!("…{}", tail[ws..].trim_start()),
        _ => tail.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_leaf_with_and_without_context() {
        let plain = render(&LEAF, "Alice sat by the river.", None).unwrap();
        assert_eq!(plain.len(), 2);
        assert!(plain[1].content.contains("Alice sat by the river."));
        assert!(!plain[1].content.contains("so far"));
        let ctx = render(&LEAF, "Alice sat.", Some("Earlier, a rabbit ran.")).unwrap();
        assert!(ctx[1].content.starts_with("Summary of the story so far:\nEarlier, a rabbit ran."));
    }

    #[test]
    fn context_is_truncated_from_the_start() {
        let words = |s: &str| Ok::<_, ()>(s.split_whitespace().count());
        let text = "one two three four five six seven eight";
        let kept = truncate_context_start(text, 3, &words).unwrap();
        assert!(kept.ends_with("six seven eight"), "{kept}");
        assert!(kept.split_whitespace().count() <= 4);
        assert_eq!(truncate_context_start(text, 100, &words).unwrap(), text);
        // A counter that fails is an error, not a guess.
        let failing = |_: &str| Err::<usize, &str>("no tokenizer");
        assert_eq!(truncate_context_start(text, 3, &failing), Err("no tokenizer"));
    }
}
