//! "Make a concept from a description": sample sentences about a topic from the loaded
//! instruction model, clean and deduplicate them, and return a dataset the user can edit and
//! save (see [`super::dataset::save_lines`]).

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;

use crate::runtime::generate::GenerateOptions;
use crate::runtime::generate_many::generate_many;
use crate::runtime::linear::MatPath;
use crate::runtime::sampling::SamplingConfig;
use crate::runtime::tokenizer::ChatMessage;
use crate::runtime::{LoadedModel, NoHooks, Result, RuntimeError};

/// How many sentences to make and how.
#[derive(Debug, Clone, Copy)]
pub struct DescribeOptions {
    /// Distinct sentences wanted.
    pub samples: usize,
    /// Longest sentence in tokens.
    pub max_tokens: usize,
    /// Seed of the first draw.
    pub seed: u64,
    /// Sampling temperature (higher: more varied).
    pub temperature: f32,
}

impl Default for DescribeOptions {
    fn default() -> Self {
        Self {
            samples: 100,
            max_tokens: 48,
            seed: 7,
            temperature: 1.0,
        }
    }
}

/// Prompt wordings, rotated between rounds for variety.
const WORDINGS: &[&str] = &[
    "Write one sentence about {}. Reply with the sentence only.",
    "Write a short, everyday sentence that mentions {}. Reply with the sentence only.",
    "Write one sentence someone might say about {}. Reply with the sentence only.",
    "Describe something about {} in one sentence. Reply with the sentence only.",
];

/// The sentence in a raw reply: first non-empty line, without list marks, quotes or a
/// "Sure, here is…:" preamble; `None` when too short or cut off mid-way with no words.
pub fn clean_reply(reply: &str) -> Option<String> {
    let mut line = reply.lines().map(str::trim).find(|l| !l.is_empty())?;
    if let Some((head, tail)) = line.split_once(':')
        && head.split_whitespace().count() <= 6
        && !tail.trim().is_empty()
        && (head.to_lowercase().contains("here") || head.to_lowercase().contains("sentence"))
    {
        line = tail.trim();
    }
    let line = strip_list_mark(line)
        .trim()
        .trim_matches(|c: char| c == '"' || c == '“' || c == '”' || c == '\'')
        .trim();
    // A reply cut off by the token limit keeps its complete sentences, if any.
    let line = if line.ends_with(['.', '!', '?', '"', '”', ')', '\'']) {
        line
    } else {
        line.rfind(['.', '!', '?']).map_or("", |i| &line[..=i])
    };
    (line.split_whitespace().count() >= 4).then(|| line.to_string())
}

/// `line` without a leading list mark (`-`, `*`, `•`, or `12.` / `3)` followed by a space).
fn strip_list_mark(line: &str) -> &str {
    let t = line.trim_start_matches(['-', '*', '•']).trim_start();
    if t.len() < line.len() {
        return t;
    }
    let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let rest = &line[digits..];
    match rest.strip_prefix(['.', ')']) {
        Some(after) if digits > 0 && after.starts_with(' ') => after.trim_start(),
        _ => line,
    }
}

/// The key two sentences share when they differ only in case, spacing or punctuation.
fn dedup_key(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Samples up to `opts.samples` distinct sentences about `description` (at most four rounds
/// of draws); `progress(found, wanted)` after each round. Fails when nothing usable came out.
pub fn concept_from_description(
    m: &LoadedModel,
    description: &str,
    opts: &DescribeOptions,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<String>> {
    let description = description.trim();
    if description.is_empty() {
        return Err(RuntimeError::BadInput("the concept description is empty".into()));
    }
    if opts.samples == 0 {
        return Ok(Vec::new());
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(opts.samples);
    for round in 0..4 * WORDINGS.len() {
        if out.len() >= opts.samples {
            break;
        }
        let ask = WORDINGS[round % WORDINGS.len()].replace("{}", description);
        let prompt = m.tokenizer.render_chat(&[ChatMessage::user(&ask)], true)?;
        let ids = m.tokenizer.encode(&prompt)?;
        let want = (opts.samples - out.len()).clamp(4, 32);
        let gen_opts = GenerateOptions {
            max_tokens: opts.max_tokens,
            sampling: SamplingConfig {
                temperature: opts.temperature,
                top_k: 0,
                top_p: 0.95,
                repetition_penalty: 1.0,
                frequency_penalty: 0.0,
                presence_penalty: 0.0,
                seed: opts.seed.wrapping_add(1000 * round as u64),
            },
            path: MatPath::Quantized,
        };
        let gens = generate_many(m, &ids, want, &gen_opts, &mut NoHooks, cancel, &mut |_| {})?;
        for g in gens {
            if let Some(s) = clean_reply(&g.text)
                && seen.insert(dedup_key(&s))
                && out.len() < opts.samples
            {
                out.push(s);
            }
        }
        progress(out.len(), opts.samples);
    }
    if out.is_empty() {
        return Err(RuntimeError::BadInput(format!(
            "the model gave no usable sentence about `{description}`"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_cleaned() {
        assert_eq!(
            clean_reply("\n  \"The match ended in a draw.\"\nMore text").as_deref(),
            Some("The match ended in a draw.")
        );
        assert_eq!(
            clean_reply("Sure, here is a sentence: Goals win games, they say.").as_deref(),
            Some("Goals win games, they say.")
        );
        assert_eq!(
            clean_reply("1. The striker scored twice today.").as_deref(),
            Some("The striker scored twice today.")
        );
        assert_eq!(
            clean_reply("- Fans sang all night long.").as_deref(),
            Some("Fans sang all night long.")
        );
        assert_eq!(clean_reply("Too short."), None);
        assert_eq!(
            clean_reply("1990 was a wet year for us.").as_deref(),
            Some("1990 was a wet year for us.")
        );
        assert_eq!(
            clean_reply("2) Goals decide every match here.").as_deref(),
            Some("Goals decide every match here.")
        );
        assert_eq!(
            clean_reply("The fans cheered very loudly. The keeper then dived to the").as_deref(),
            Some("The fans cheered very loudly.")
        );
        assert_eq!(clean_reply("The keeper then dived to the"), None);
        assert_eq!(clean_reply("   "), None);
    }

    #[test]
    fn dedup_ignores_case_and_punctuation() {
        assert_eq!(dedup_key("The  ball, rolled!"), dedup_key("the ball rolled"));
        assert_ne!(dedup_key("the ball rolled"), dedup_key("the ball stopped"));
    }
}
