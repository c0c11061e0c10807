//! Multiple-choice accuracy scored by log-likelihood, for TruthfulQA-MC / MMLU style files.
//!
//! Each question becomes the prompt `Question: {q}\nAnswer:` and each choice the continuation
//! ` {choice}`; the model picks the choice with the highest summed log-probability (`acc`), or
//! the highest per-byte log-probability (`acc_norm`, which does not favour short choices).
//!
//! Accepted files:
//! - `.jsonl` / `.json` (a list): objects with `question`, `choices` (list of strings) and
//!   `answer` (0-based index, a letter `A`…, or the text of the right choice); or TruthfulQA's
//!   `mc1_targets: {choices, labels}` (the choice labelled 1 is right);
//! - `.csv` in MMLU's layout: `question, choice…, answer-letter` per row, with or without a
//!   header row.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use crate::runtime::{Hooks, LoadedModel};

use super::perplexity::token_logprobs;

/// One question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McItem {
    /// The question.
    pub question: String,
    /// Two or more choices.
    pub choices: Vec<String>,
    /// Index of the right choice.
    pub answer: usize,
}

/// Why an MC file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct McError {
    origin: String,
    message: String,
}

fn err(origin: &str, message: impl Into<String>) -> McError {
    McError {
        origin: origin.to_string(),
        message: message.into(),
    }
}

/// Resolves an answer given as an index, a letter or the right choice's text.
fn answer_index(answer: &Value, choices: &[String], origin: &str) -> Result<usize, McError> {
    let idx = match answer {
        Value::Number(n) => n.as_u64().map(|v| v as usize),
        Value::String(s) => letter_or_text(s, choices),
        _ => None,
    };
    idx.filter(|&i| i < choices.len()).ok_or_else(|| {
        err(
            origin,
            format!("answer {answer} is not one of the {} choices", choices.len()),
        )
    })
}

fn letter_or_text(s: &str, choices: &[String]) -> Option<usize> {
    let t = s.trim();
    if let Some(i) = choices.iter().position(|c| c.trim() == t) {
        return Some(i);
    }
    let mut cs = t.chars();
    match (cs.next(), cs.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => Some((c.to_ascii_uppercase() as u8 - b'A') as usize),
        _ => t.parse().ok(),
    }
}

/// A one-letter answer (`A` = 0); MMLU's CSV layout gives answers only as letters.
fn letter(s: &str) -> Option<usize> {
    let mut cs = s.trim().chars();
    match (cs.next(), cs.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => Some((c.to_ascii_uppercase() as u8 - b'A') as usize),
        _ => None,
    }
}

fn item_from_json(v: &Value, origin: &str) -> Result<McItem, McError> {
    let obj = v.as_object().ok_or_else(|| err(origin, "expected an object"))?;
    let question = obj
        .get("question")
        .and_then(Value::as_str)
        .ok_or_else(|| err(origin, "no `question` string"))?
        .to_string();
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array()?
            .iter()
            .map(|c| c.as_str().map(str::to_string))
            .collect()
    };
    let (choices, answer) = if let Some(t) = obj.get("mc1_targets") {
        let choices = t.get("choices").and_then(strings);
        let labels: Option<Vec<i64>> = t
            .get("labels")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_i64).collect());
        let (Some(choices), Some(labels)) = (choices, labels) else {
            return Err(err(origin, "`mc1_targets` needs `choices` and `labels` lists"));
        };
        let answer = labels
            .iter()
            .position(|&l| l == 1)
            .filter(|_| labels.len() == choices.len())
            .ok_or_else(|| err(origin, "`mc1_targets.labels` must mark one choice with 1"))?;
        (choices, answer)
    } else {
        let choices = obj
            .get("choices")
            .and_then(strings)
            .ok_or_else(|| err(origin, "no `choices` list of strings"))?;
        let answer = obj.get("answer").ok_or_else(|| err(origin, "no `answer`"))?;
        let a = answer_index(answer, &choices, origin)?;
        (choices, a)
    };
    if choices.len() < 2 {
        return Err(err(origin, "a question needs at least two choices"));
    }
    Ok(McItem {
        question,
        choices,
        answer,
    })
}

/// Parses MC items from file text of format `ext` (`jsonl`, `json` or `csv`).
pub fn parse_mc(text: &str, ext: &str, origin: &str) -> Result<Vec<McItem>, McError> {
    let items = match ext {
        "jsonl" | "ndjson" => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let o = format!("{origin}, line {}", i + 1);
                let v: Value = serde_json::from_str(l).map_err(|e| err(&o, format!("not JSON: {e}")))?;
                item_from_json(&v, &o)
            })
            .collect::<Result<Vec<_>, _>>()?,
        "json" => {
            let v: Value = serde_json::from_str(text).map_err(|e| err(origin, format!("not JSON: {e}")))?;
            let arr = v
                .as_array()
                .ok_or_else(|| err(origin, "expected a list of questions"))?;
            arr.iter()
                .enumerate()
                .map(|(i, q)| item_from_json(q, &format!("{origin}, item {i}")))
                .collect::<Result<Vec<_>, _>>()?
        }
        "csv" => parse_mmlu_csv(text, origin)?,
        _ => return Err(err(origin, "multiple-choice files must be .jsonl, .json or .csv")),
    };
    if items.is_empty() {
        return Err(err(origin, "no questions"));
    }
    Ok(items)
}

fn parse_mmlu_csv(text: &str, origin: &str) -> Result<Vec<McItem>, McError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut out = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let o = format!("{origin}, row {}", i + 1);
        let rec = rec.map_err(|e| err(&o, e.to_string()))?;
        let f: Vec<String> = rec.iter().map(str::to_string).collect();
        if f.len() < 4 {
            return Err(err(&o, "expected question, two or more choices, answer"));
        }
        let choices = f[1..f.len() - 1].to_vec();
        let Some(answer) = letter(&f[f.len() - 1]).filter(|&a| a < choices.len()) else {
            if i == 0 {
                continue; // a header row
            }
            return Err(err(
                &o,
                format!("answer `{}` is not a choice letter", f[f.len() - 1]),
            ));
        };
        out.push(McItem {
            question: f[0].clone(),
            choices,
            answer,
        });
    }
    Ok(out)
}

/// Reads an MC file.
pub fn read_mc(path: &Path) -> Result<Vec<McItem>, McError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| err(&origin, e.to_string()))?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    parse_mc(&text, &ext, &origin)
}

/// MC results.
#[derive(Debug, Clone, PartialEq)]
pub struct McResult {
    /// Fraction right by summed log-probability.
    pub accuracy: f64,
    /// Fraction right by log-probability per byte of the choice.
    pub accuracy_norm: f64,
    /// Questions scored.
    pub questions: usize,
    /// Per question: the chosen index (summed log-probability).
    pub picks: Vec<usize>,
}

/// Scores every item (all choices of all questions in padded batches, dense path).
pub fn score_mc(
    m: &LoadedModel,
    items: &[McItem],
    hooks: &mut dyn Hooks,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> crate::runtime::Result<McResult> {
    let mut seqs = Vec::new();
    let mut spans = Vec::new(); // (question, choice, continuation start)
    for (qi, item) in items.iter().enumerate() {
        let prompt = format!("Question: {}\nAnswer:", item.question.trim());
        let p_ids = m.tokenizer.encode(&prompt)?;
        for (ci, c) in item.choices.iter().enumerate() {
            let mut ids = p_ids.clone();
            ids.extend(m.tokenizer.encode_plain(&format!(" {}", c.trim()))?);
            spans.push((qi, ci, p_ids.len()));
            seqs.push(ids);
        }
    }
    let lps = token_logprobs(m, &seqs, hooks, cancel, progress)?;
    let mut best: Vec<(f64, usize, f64, usize)> =
        vec![(f64::NEG_INFINITY, 0, f64::NEG_INFINITY, 0); items.len()];
    for ((qi, ci, start), lp) in spans.into_iter().zip(&lps) {
        // lp[t] scores token t + 1: the continuation's tokens are start.. → lp[start - 1..].
        let sum: f64 = lp[start.saturating_sub(1)..].iter().sum();
        let bytes = items[qi].choices[ci].trim().len().max(1) as f64;
        let b = &mut best[qi];
        if sum > b.0 {
            (b.0, b.1) = (sum, ci);
        }
        if sum / bytes > b.2 {
            (b.2, b.3) = (sum / bytes, ci);
        }
    }
    let n = items.len().max(1) as f64;
    let right = |f: fn(&(f64, usize, f64, usize)) -> usize| {
        best.iter().zip(items).filter(|(b, it)| f(b) == it.answer).count() as f64 / n
    };
    Ok(McResult {
        accuracy: right(|b| b.1),
        accuracy_norm: right(|b| b.3),
        questions: items.len(),
        picks: best.iter().map(|b| b.1).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_layout() {
        let j = r#"{"question": "2+2?", "choices": ["3", "4"], "answer": 1}
{"question": "Sky?", "choices": ["blue", "green"], "answer": "A"}
{"question": "Cat?", "choices": ["meow", "woof"], "answer": "meow"}
{"question": "T?", "mc1_targets": {"choices": ["x", "y", "z"], "labels": [0, 1, 0]}}"#;
        let items = parse_mc(j, "jsonl", "t").unwrap();
        assert_eq!(items.iter().map(|i| i.answer).collect::<Vec<_>>(), [1, 0, 0, 1]);
        let csv = "question,A,B,C,D,answer\nWhat?,a,b,c,d,C\n\"Why, then?\",e,f,g,h,a\nLetters?,B,A,C,D,A\n";
        let items = parse_mc(csv, "csv", "t").unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!((items[0].answer, items[1].answer), (2, 0));
        assert_eq!(
            items[2].answer, 0,
            "a CSV answer is a letter, even when a choice reads like one"
        );
        assert_eq!(items[1].question, "Why, then?");
        let arr = r#"[{"question": "q", "choices": ["a", "b"], "answer": 0}]"#;
        assert_eq!(parse_mc(arr, "json", "t").unwrap().len(), 1);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let e = parse_mc(
            r#"{"question": "q", "choices": ["a", "b"], "answer": 5}"#,
            "jsonl",
            "f",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not one of the 2 choices"), "{e}");
        let e = parse_mc(
            r#"{"question": "q", "choices": ["a"], "answer": 0}"#,
            "jsonl",
            "f",
        )
        .unwrap_err();
        assert!(e.to_string().contains("two choices"), "{e}");
        let e = parse_mc("{", "jsonl", "f").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = parse_mc("q,a,b,Z\n", "csv", "f").unwrap_err();
        assert!(e.to_string().contains("no questions"), "{e}");
        let e = parse_mc("h,h,h,h\nq,a,b,Z\n", "csv", "f").unwrap_err();
        assert!(e.to_string().contains("row 2"), "{e}");
        assert!(parse_mc("", "txt", "f").is_err());
    }
}
