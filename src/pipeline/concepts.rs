//! The concept datasets shipped with the app (assets/concepts/, compiled into the binary so
//! they work from any folder): a neutral source set, topic concepts, sentiment, a Jigsaw
//! toxicity sample, toxic-leaning prompts and Wikipedia passages, described by `manifest.json`.

use std::sync::OnceLock;

use serde::Deserialize;

use super::dataset::{Dataset, DatasetError, DatasetSpec, parse_dataset, read_dataset_file};

/// The files of assets/concepts/, by name.
const FILES: &[(&str, &str)] = &[
    ("neutral.txt", include_str!("../../assets/concepts/neutral.txt")),
    ("football.txt", include_str!("../../assets/concepts/football.txt")),
    ("cooking.txt", include_str!("../../assets/concepts/cooking.txt")),
    ("ocean.txt", include_str!("../../assets/concepts/ocean.txt")),
    ("space.txt", include_str!("../../assets/concepts/space.txt")),
    ("music.txt", include_str!("../../assets/concepts/music.txt")),
    ("weddings.txt", include_str!("../../assets/concepts/weddings.txt")),
    (
        "sentiment_positive.txt",
        include_str!("../../assets/concepts/sentiment_positive.txt"),
    ),
    (
        "sentiment_negative.txt",
        include_str!("../../assets/concepts/sentiment_negative.txt"),
    ),
    (
        "jigsaw_sample.csv",
        include_str!("../../assets/concepts/jigsaw_sample.csv"),
    ),
    (
        "toxic_prompts.txt",
        include_str!("../../assets/concepts/toxic_prompts.txt"),
    ),
    (
        "wikipedia_passages.csv",
        include_str!("../../assets/concepts/wikipedia_passages.csv"),
    ),
];

const MANIFEST: &str = include_str!("../../assets/concepts/manifest.json");

/// One shipped dataset.
#[derive(Debug, Clone, Deserialize)]
pub struct BuiltinSet {
    /// Name used in `builtin:NAME`.
    pub name: String,
    /// File in assets/concepts/.
    pub file: String,
    /// Field/column and filters, as after `#` in a dataset spec.
    #[serde(default)]
    pub selector: Option<String>,
    /// What it holds.
    pub description: String,
    /// Licence and attribution.
    pub licence: String,
}

/// A ready-made concept: which set to move from and to, and the words that show it in text.
#[derive(Debug, Clone, Deserialize)]
pub struct BuiltinConcept {
    /// Concept name (the `--lambda NAME=` of its maps).
    pub name: String,
    /// What steering with it does.
    pub description: String,
    /// Source set name.
    pub source: String,
    /// Target set name.
    pub target: String,
    /// Presence keywords: a word, `prefix*`, or a phrase of words (case-insensitive).
    pub keywords: Vec<String>,
}

/// The parsed manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Shipped datasets.
    pub sets: Vec<BuiltinSet>,
    /// Shipped concepts.
    pub concepts: Vec<BuiltinConcept>,
}

/// The manifest compiled into the binary.
pub fn manifest() -> &'static Manifest {
    static M: OnceLock<Manifest> = OnceLock::new();
    M.get_or_init(|| {
        // The manifest is part of the source tree; the unit tests below parse it.
        serde_json::from_str(MANIFEST)
            .unwrap_or_else(|e| panic!("assets/concepts/manifest.json is invalid: {e}"))
    })
}

/// A shipped concept by name.
pub fn builtin_concept(name: &str) -> Result<&'static BuiltinConcept, DatasetError> {
    let m = manifest();
    m.concepts
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| DatasetError::UnknownBuiltin {
            name: name.to_string(),
            available: m
                .concepts
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Reads a shipped dataset by name.
pub fn builtin_dataset(name: &str) -> Result<Dataset, DatasetError> {
    let m = manifest();
    let unknown = || DatasetError::UnknownBuiltin {
        name: name.to_string(),
        available: m
            .sets
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let set = m.sets.iter().find(|s| s.name == name).ok_or_else(unknown)?;
    let text = FILES
        .iter()
        .find(|(f, _)| *f == set.file)
        .map(|(_, t)| *t)
        .ok_or_else(unknown)?;
    let ext = set.file.rsplit_once('.').map_or("txt", |(_, e)| e);
    let spec = format!("builtin:{name}");
    let (field, filters) = match set.selector.as_deref() {
        Some(sel) => match format!("x#{sel}").parse()? {
            DatasetSpec::File { field, filters, .. } => (field, filters),
            DatasetSpec::Builtin(_) => (None, Vec::new()),
        },
        None => (None, Vec::new()),
    };
    let mut d = parse_dataset(text, ext, field.as_deref(), &filters, name, &spec)?;
    d.name = name.to_string();
    Ok(d)
}

/// Reads the dataset a spec names: a built-in set ([`builtin_dataset`]) or a file
/// ([`read_dataset_file`]).
pub fn load_dataset(spec: &DatasetSpec) -> Result<Dataset, DatasetError> {
    match spec {
        DatasetSpec::Builtin(name) => builtin_dataset(name),
        DatasetSpec::File { path, field, filters } => {
            read_dataset_file(path, field.as_deref(), filters, &spec.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_set_loads_with_the_promised_size_and_no_duplicates() {
        let m = manifest();
        assert_eq!(m.version, 1);
        for set in &m.sets {
            let d = builtin_dataset(&set.name).unwrap_or_else(|e| panic!("{}: {e}", set.name));
            let need = match set.name.as_str() {
                "neutral" => 600,
                "sentiment-positive" | "sentiment-negative" => 200,
                "jigsaw-toxic" => 11,
                "jigsaw-non-toxic" => 38,
                "wikipedia" => 100,
                "toxic-prompts" => 400,
                _ => 150,
            };
            assert!(
                d.samples.len() >= need,
                "{}: {} samples",
                set.name,
                d.samples.len()
            );
            let mut uniq: Vec<String> = d.samples.iter().map(|s| s.to_lowercase()).collect();
            uniq.sort();
            uniq.dedup();
            assert_eq!(uniq.len(), d.samples.len(), "{} has duplicates", set.name);
        }
        assert_eq!(builtin_dataset("jigsaw-toxic").unwrap().samples.len(), 11);
    }

    #[test]
    fn every_concept_names_existing_sets() {
        for c in &manifest().concepts {
            assert!(builtin_dataset(&c.source).is_ok(), "{}", c.name);
            assert!(builtin_dataset(&c.target).is_ok(), "{}", c.name);
        }
        assert!(builtin_concept("football").is_ok());
        let e = builtin_concept("zebras").unwrap_err().to_string();
        assert!(e.contains("football"), "{e}");
        let e = builtin_dataset("zebras").unwrap_err().to_string();
        assert!(e.contains("neutral"), "{e}");
    }

    #[test]
    fn files_table_covers_the_manifest() {
        for set in &manifest().sets {
            assert!(
                FILES.iter().any(|(f, _)| *f == set.file),
                "{} not compiled in",
                set.file
            );
        }
    }
}
