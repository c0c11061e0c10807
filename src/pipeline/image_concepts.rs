//! Built-in prompt concepts for text-to-image steering (AcT paper §5), from the reference
//! prompt sets in assets/diffusion/ (see its ATTRIBUTION.md):
//!
//! - `style:NAME` — style control: plain captions → captions + the style's tags;
//! - `negate:NAME` — concept negation: captions + a phrase adding the concept → plain captions;
//! - `remove:trees` — captions with trees → the same scenes without.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::transport::DatasetInfo;

const STYLES: &str = include_str!("../../assets/diffusion/style_prompts.json");
const CAPTIONS: &str = include_str!("../../assets/diffusion/diffusion_prompts.json");
const CONCEPTS: &str = include_str!("../../assets/diffusion/diffusion_concept_prompts.json");

/// Source and target prompts of an image concept.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptPair {
    /// Concept name (`style:impressionism`, `negate:pink_elephant`, a file stem…).
    pub name: String,
    /// Prompts to move away from.
    pub source: Vec<String>,
    /// Prompts to move towards.
    pub target: Vec<String>,
}

impl PromptPair {
    /// Keeps at most `n` prompts per side, spread evenly over each list (the built-in
    /// captions are grouped by theme, so the first `n` would be biased); the same positions
    /// on both sides, so paired prompts stay paired. `n = 0` keeps everything.
    pub fn limit(&mut self, n: usize) {
        fn spread(v: &mut Vec<String>, n: usize) {
            let len = v.len();
            if n == 0 || len <= n {
                return;
            }
            *v = (0..n).map(|i| v[i * len / n].clone()).collect();
        }
        spread(&mut self.source, n);
        spread(&mut self.target, n);
    }
}

/// Why a concept could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageConceptError {
    /// Unknown built-in name.
    #[error("unknown image concept `{name}`; built-in ones: {known}")]
    Unknown { name: String, known: String },
    /// A prompt list is empty.
    #[error("image concept `{0}`: no prompts")]
    Empty(String),
}

fn json(text: &str) -> BTreeMap<String, Value> {
    serde_json::from_str(text).unwrap_or_default()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| s.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The plain captions the built-in concepts start from (98).
pub fn base_captions() -> Vec<String> {
    strings(json(CAPTIONS).get("none"))
}

/// Names of the built-in image concepts, with a one-line description each.
pub fn builtin_image_concepts() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in json(STYLES) {
        if k != "none" {
            let tags: String = v.as_str().unwrap_or("").chars().take(60).collect();
            out.push((
                format!("style:{k}"),
                format!("captions → captions + {k} tags ({tags}…)"),
            ));
        }
    }
    for k in json(CONCEPTS).keys().filter(|k| !k.starts_with("no_")) {
        out.push((
            format!("negate:{k}"),
            format!("captions + \"{}\" → plain captions", k.replace('_', " ")),
        ));
    }
    out.push((
        "remove:trees".into(),
        "scenes with trees → the same scenes without".into(),
    ));
    out
}

/// Style control: each caption → the caption followed by `, ` and the style's tags.
pub fn style_concept(style: &str, captions: &[String]) -> Result<PromptPair, ImageConceptError> {
    let styles = json(STYLES);
    let tags = styles
        .get(style)
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unknown(&format!("style:{style}")))?;
    if captions.is_empty() {
        return Err(ImageConceptError::Empty(format!("style:{style}")));
    }
    Ok(PromptPair {
        name: format!("style:{style}"),
        source: captions.to_vec(),
        target: captions
            .iter()
            .map(|c| format!("{}, {tags}", c.trim_end()))
            .collect(),
    })
}

/// Concept negation: caption + one of the concept's phrases (cycling) → the plain caption.
pub fn negation_concept(concept: &str, captions: &[String]) -> Result<PromptPair, ImageConceptError> {
    let phrases = strings(json(CONCEPTS).get(concept));
    if phrases.is_empty() || concept.starts_with("no_") {
        return Err(unknown(&format!("negate:{concept}")));
    }
    if captions.is_empty() {
        return Err(ImageConceptError::Empty(format!("negate:{concept}")));
    }
    Ok(PromptPair {
        name: format!("negate:{concept}"),
        source: captions
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} {}", c.trim_end(), phrases[i % phrases.len()]))
            .collect(),
        target: captions.to_vec(),
    })
}

fn unknown(name: &str) -> ImageConceptError {
    let known: Vec<String> = builtin_image_concepts().into_iter().map(|(n, _)| n).collect();
    ImageConceptError::Unknown {
        name: name.to_string(),
        known: known.join(", "),
    }
}

/// A built-in concept by name (`style:NAME`, `negate:NAME`, `remove:trees`).
pub fn builtin_image_concept(name: &str) -> Result<PromptPair, ImageConceptError> {
    if let Some(s) = name.strip_prefix("style:") {
        return style_concept(s, &base_captions());
    }
    if let Some(c) = name.strip_prefix("negate:") {
        return negation_concept(c, &base_captions());
    }
    if name == "remove:trees" {
        let c = json(CAPTIONS);
        return Ok(PromptPair {
            name: name.to_string(),
            source: strings(c.get("trees")),
            target: strings(c.get("no_trees")),
        });
    }
    Err(unknown(name))
}

/// Identity of a prompt list for the maps file.
pub fn prompts_info(name: &str, prompts: &[String]) -> DatasetInfo {
    let mut h = Sha256::new();
    for p in prompts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    DatasetInfo {
        name: name.to_string(),
        sha256: crate::transport::maps_file::hex(&h.finalize()),
        count: prompts.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_style_and_negation_like_the_reference() {
        let caps = base_captions();
        assert_eq!(caps.len(), 98);
        let s = builtin_image_concept("style:art_nouveau").unwrap();
        assert_eq!(s.source.len(), 98);
        assert!(s.target[0].starts_with(&s.source[0]));
        assert!(s.target[0].contains("Alphonse_Mucha"));
        let n = builtin_image_concept("negate:pink_elephant").unwrap();
        assert!(n.source[0].ends_with("a pink elephant."), "{}", n.source[0]);
        assert!(n.source[1].contains("containing a pink elephant"));
        assert_eq!(n.target[0], caps[0]);
        let t = builtin_image_concept("remove:trees").unwrap();
        assert_eq!((t.source.len(), t.target.len()), (20, 20));
        let mut few = s.clone();
        few.limit(4);
        assert_eq!(few.source.len(), 4);
        assert_eq!(few.source[1], s.source[24]);
        assert!(few.target[1].starts_with(&few.source[1]));
        let names = builtin_image_concepts();
        assert_eq!(names.len(), 10 + 6 + 1);
        for bad in ["style:none", "style:nope", "negate:no_cat", "x"] {
            let e = builtin_image_concept(bad).unwrap_err().to_string();
            assert!(e.contains("style:impressionism"), "{e}");
        }
    }
}
