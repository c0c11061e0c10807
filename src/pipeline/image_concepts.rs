//! Built-in prompt concepts for text-to-image steering (AcT paper §5), from the reference
//! prompt sets in assets/diffusion/ (see its ATTRIBUTION.md):
//!
//! - `style:NAME` — style control: plain captions → captions + the style's tags;
//! - `negate:NAME` — concept negation: captions + a phrase adding the concept → plain captions;
//! - `remove:trees` — captions with trees → the same scenes without.
//!
//! A diffusers folder may also carry its own concepts, written in its own caption language,
//! in `act_studio_concepts.json` ([`FOLDER_CONCEPTS`]; the demo model's `style:neon`,
//! `negate:red`, … are there). With a folder, its concepts come first and win over a
//! built-in of the same name ([`image_concepts_for`], [`image_concept_for`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::diffusion::hooks::SamplePooling;
use crate::transport::{DatasetInfo, Method};

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
    /// How the concept is best sampled when a fit does not say (a folder concept's
    /// `pooling`; `None`: the paper's per-prompt mean).
    pub pooling: Option<SamplePooling>,
    /// The hook points the concept is best fitted at when a fit does not say (a folder
    /// concept's `hooks`: a preset or names / `prefix*` patterns; `None`: the default preset).
    pub hooks: Option<String>,
    /// The estimator the concept is best fitted with when a fit does not say (a folder
    /// concept's `method`; `None`: Linear-AcT).
    pub method: Option<Method>,
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
    /// The folder's concepts file cannot be read or is malformed.
    #[error("{path}: {reason}")]
    FolderFile { path: String, reason: String },
}

/// The file in a diffusers folder that lists the folder's own concepts:
/// `{"concepts": [{"name": "style:neon", "about": "…", "source": ["…"], "target": ["…"]}, …]}`,
/// where a concept may add `"pooling": "positions"` (or `"mean"`), `"hooks": "PRESET"` (or
/// names / `prefix*` patterns) and `"method": "joint-gaussian"` (any estimator name) to say how
/// it is best fitted ([`SamplePooling`], [`super::diffusion_fit::select_hooks`], [`Method`]; a
/// fit request's own choice wins).
pub const FOLDER_CONCEPTS: &str = "act_studio_concepts.json";

/// A concept that a model folder defines for itself.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderConcept {
    /// Its prompts (and name).
    pub pair: PromptPair,
    /// One line on what it does.
    pub about: String,
}

/// The concepts of the diffusers folder `folder` ([`FOLDER_CONCEPTS`]); none when it has no
/// such file. Every concept needs a name and prompts on both sides.
pub fn folder_concepts(folder: &Path) -> Result<Vec<FolderConcept>, ImageConceptError> {
    let path = folder.join(FOLDER_CONCEPTS);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bad = |reason: String| ImageConceptError::FolderFile {
        path: path.display().to_string(),
        reason,
    };
    let text =
        crate::transport::regular_file::read_regular_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let list = v
        .get("concepts")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no `concepts` list".into()))?;
    let mut out: Vec<FolderConcept> = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let name = c.get("name").and_then(Value::as_str).map(str::trim).unwrap_or("");
        if name.is_empty() {
            return Err(bad(format!("concept {i} has no `name`")));
        }
        if out.iter().any(|o| o.pair.name == name) {
            return Err(bad(format!("concept `{name}` is listed twice")));
        }
        let (source, target) = (strings(c.get("source")), strings(c.get("target")));
        if source.is_empty() || target.is_empty() {
            return Err(bad(format!(
                "concept `{name}` needs `source` and `target` prompts"
            )));
        }
        let pooling = match c.get("pooling") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_str().and_then(SamplePooling::parse).ok_or_else(|| {
                bad(format!(
                    "concept `{name}`: `pooling` must be \"mean\" or \"positions\", not {v}"
                ))
            })?),
        };
        let hooks = match c.get("hooks") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_str()
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| {
                        bad(format!(
                            "concept `{name}`: `hooks` must be a preset or hook names, not {v}"
                        ))
                    })?
                    .to_string(),
            ),
        };
        let method = match c.get("method") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_str().and_then(|m| m.parse::<Method>().ok()).ok_or_else(|| {
                bad(format!(
                    "concept `{name}`: `method` must be an estimator name, not {v}"
                ))
            })?),
        };
        out.push(FolderConcept {
            pair: PromptPair {
                name: name.to_string(),
                source,
                target,
                pooling,
                hooks,
                method,
            },
            about: c.get("about").and_then(Value::as_str).unwrap_or("").to_string(),
        });
    }
    Ok(out)
}

/// The image concepts to offer for the model in `folder` (name, description): the folder's
/// own first, then the built-in ones it does not redefine.
pub fn image_concepts_for(folder: Option<&Path>) -> Result<Vec<(String, String)>, ImageConceptError> {
    let own = match folder {
        Some(f) => folder_concepts(f)?,
        None => Vec::new(),
    };
    let mut out: Vec<(String, String)> = own
        .iter()
        .map(|c| (c.pair.name.clone(), format!("(this model) {}", c.about)))
        .collect();
    out.extend(
        builtin_image_concepts()
            .into_iter()
            .filter(|(n, _)| !own.iter().any(|c| &c.pair.name == n)),
    );
    Ok(out)
}

/// The concept `name` for the model in `folder`: the folder's own, else a built-in one.
pub fn image_concept_for(name: &str, folder: Option<&Path>) -> Result<PromptPair, ImageConceptError> {
    if let Some(f) = folder
        && let Some(c) = folder_concepts(f)?.into_iter().find(|c| c.pair.name == name)
    {
        return Ok(c.pair);
    }
    builtin_image_concept(name).map_err(|e| match (e, folder) {
        (ImageConceptError::Unknown { name, .. }, Some(f)) => ImageConceptError::Unknown {
            name,
            known: image_concepts_for(Some(f))
                .map(|v| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
        },
        (e, _) => e,
    })
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
        pooling: None,
        hooks: None,
        method: None,
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
        pooling: None,
        hooks: None,
        method: None,
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
            pooling: None,
            hooks: None,
            method: None,
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

    #[test]
    fn folder_concepts_come_first_and_win_over_built_ins() {
        let dir = tempfile::tempdir().unwrap();
        assert!(folder_concepts(dir.path()).unwrap().is_empty());
        let write = |text: &str| std::fs::write(dir.path().join(FOLDER_CONCEPTS), text).unwrap();
        write(
            r#"{"concepts": [
            {"name": "style:neon", "about": "plain → neon", "source": ["a circle"], "target": ["a circle, neon style"]},
            {"name": "style:sketch", "about": "ours", "source": ["a square"], "target": ["a square, pencil sketch"], "pooling": "positions", "hooks": " unet-cross-attention ", "method": "joint-gaussian"}]}"#,
        );
        let list = image_concepts_for(Some(dir.path())).unwrap();
        assert_eq!(list[0].0, "style:neon");
        assert_eq!(list[1], ("style:sketch".into(), "(this model) ours".into()));
        assert_eq!(list.len(), 2 + builtin_image_concepts().len() - 1);
        let p = image_concept_for("style:sketch", Some(dir.path())).unwrap();
        assert_eq!(p.target, ["a square, pencil sketch"]);
        assert_eq!(p.pooling, Some(SamplePooling::Positions));
        assert_eq!(p.hooks.as_deref(), Some("unet-cross-attention"));
        assert_eq!(p.method, Some(Method::JointGaussian));
        assert_eq!(
            image_concept_for("style:neon", Some(dir.path())).unwrap().method,
            None
        );
        assert_eq!(
            image_concept_for("style:neon", Some(dir.path())).unwrap().pooling,
            None
        );
        assert_eq!(image_concept_for("style:sketch", None).unwrap().pooling, None);
        assert_eq!(
            image_concept_for("style:neon", Some(dir.path())).unwrap().hooks,
            None
        );
        assert_eq!(image_concept_for("style:sketch", None).unwrap().source.len(), 98);
        assert_eq!(
            image_concept_for("style:anime", Some(dir.path()))
                .unwrap()
                .source
                .len(),
            98
        );
        let e = image_concept_for("style:nope", Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("style:neon") && e.contains("style:anime"), "{e}");
        for (text, says) in [
            ("{", "not JSON"),
            ("{}", "no `concepts`"),
            (
                r#"{"concepts": [{"source": ["a"], "target": ["b"]}]}"#,
                "no `name`",
            ),
            (
                r#"{"concepts": [{"name": "x", "source": [], "target": ["b"]}]}"#,
                "needs `source`",
            ),
            (
                r#"{"concepts": [{"name": "x", "source": ["a"], "target": ["b"]}, {"name": "x", "source": ["a"], "target": ["b"]}]}"#,
                "twice",
            ),
            (
                r#"{"concepts": [{"name": "x", "source": ["a"], "target": ["b"], "pooling": "pixels"}]}"#,
                "`pooling` must be",
            ),
            (
                r#"{"concepts": [{"name": "x", "source": ["a"], "target": ["b"], "method": "telepathy"}]}"#,
                "`method` must be",
            ),
            (
                r#"{"concepts": [{"name": "x", "source": ["a"], "target": ["b"], "hooks": "  "}]}"#,
                "`hooks` must be",
            ),
            (
                r#"{"concepts": [{"name": "x", "source": ["a"], "target": ["b"], "hooks": ["unet-norms"]}]}"#,
                "`hooks` must be",
            ),
        ] {
            write(text);
            let e = image_concepts_for(Some(dir.path())).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(FOLDER_CONCEPTS), "{e}");
        }
    }
}
