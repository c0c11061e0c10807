//! What the app remembers between runs (eframe storage), kept apart from runtime state.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Persisted settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Recently loaded models, newest first.
    pub recent_models: Vec<PathBuf>,
    /// The prompt.
    pub prompt: String,
    /// Wrap the prompt in the chat template.
    pub chat: bool,
    /// New tokens per generation.
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    pub temperature: f32,
    /// Seed.
    pub seed: u64,
    /// Keep the seed between generations.
    pub seed_locked: bool,
    /// Source dataset spec.
    pub source: String,
    /// Target dataset spec.
    pub target: String,
    /// Concept name for the next fit.
    pub concept_name: String,
    /// Hook preset for the next fit.
    pub preset: String,
    /// Regenerate the steered column when a slider is released.
    pub live: bool,
    /// The user's own datasets (specs), in the order added.
    pub user_datasets: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            recent_models: Vec::new(),
            prompt: "Once upon a time".into(),
            chat: false,
            max_tokens: 48,
            temperature: 0.0,
            seed: 0,
            seed_locked: true,
            source: "builtin:neutral".into(),
            target: "builtin:football".into(),
            concept_name: "football".into(),
            preset: crate::cli::DEFAULT_PRESET.into(),
            live: true,
            user_datasets: Vec::new(),
        }
    }
}

impl Settings {
    /// Adds a dataset spec to the user's list (no repeats).
    pub fn add_dataset(&mut self, spec: String) {
        if !self.user_datasets.contains(&spec) {
            self.user_datasets.push(spec);
        }
    }

    /// Puts `path` first in the recent list (at most 8, no repeats).
    pub fn remember_model(&mut self, path: PathBuf) {
        self.recent_models.retain(|p| p != &path);
        self.recent_models.insert(0, path);
        self.recent_models.truncate(8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_models_are_unique_newest_first_and_bounded() {
        let mut s = Settings::default();
        for i in 0..10 {
            s.remember_model(format!("m{i}").into());
        }
        s.remember_model("m5".into());
        assert_eq!(s.recent_models.len(), 8);
        assert_eq!(s.recent_models[0], PathBuf::from("m5"));
        assert_eq!(
            s.recent_models
                .iter()
                .filter(|p| p.as_path() == std::path::Path::new("m5"))
                .count(),
            1
        );
    }

    #[test]
    fn user_datasets_are_kept_once_in_order() {
        let mut s = Settings::default();
        s.add_dataset("a.txt".into());
        s.add_dataset("b.csv#text".into());
        s.add_dataset("a.txt".into());
        assert_eq!(s.user_datasets, ["a.txt", "b.csv#text"]);
    }

    #[test]
    fn old_settings_with_missing_fields_still_load() {
        let s: Settings = serde_json::from_str(r#"{"prompt": "Hi"}"#).unwrap_or_default();
        assert_eq!(s.prompt, "Hi");
        assert_eq!(s.max_tokens, Settings::default().max_tokens);
    }
}
