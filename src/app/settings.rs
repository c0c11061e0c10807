//! What the app remembers between runs (eframe storage), kept apart from runtime state.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::diffusion::error::DiffusionError;
use crate::diffusion::pipeline::ImageRequest;

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
    /// Top-k filter (0 = off).
    pub top_k: usize,
    /// Top-p (nucleus) filter (1 = off).
    pub top_p: f32,
    /// System message before the prompt (chat only).
    pub system: String,
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
    /// Recently loaded diffusion folders, newest first.
    pub recent_image_models: Vec<PathBuf>,
    /// Load diffusion models in f16 (half the memory) instead of f32.
    pub image_half: bool,
    /// Image mode: generation and fitting settings.
    pub image: ImageSettings,
    /// The steering stack of the last session, in order.
    pub stack: Vec<SavedConcept>,
    /// Recently loaded or saved maps files, newest first.
    pub recent_maps: Vec<PathBuf>,
    /// Which tokens are steered (`all`, `last`, `prompt`, `generated`).
    pub scope: String,
    /// The port the Serve toggle's server listens on.
    pub serve_port: u16,
    /// Let other machines connect (bind 0.0.0.0, an API key required) instead of only this
    /// one (127.0.0.1). The key itself is not saved.
    #[serde(default)]
    pub serve_network: bool,
    /// The layout these settings were saved in ([`SETTINGS_VERSION`]; 0 in files written
    /// before the field existed), for [`Settings::migrated`].
    #[serde(default)]
    pub version: u32,
}

/// The settings layout written now. 1: the image fit's hook choice is blank ("as the concept
/// asks") by default; before, it was `unet-norms`, saved as if the user had picked it.
pub const SETTINGS_VERSION: u32 = 1;

/// A stack entry as it is kept between sessions: where its maps are and how it was set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedConcept {
    /// The maps file.
    pub path: PathBuf,
    /// Concept name (as in the maps file).
    pub name: String,
    /// The fingerprint of the model the maps belong to, as text.
    pub fingerprint: String,
    /// Strength.
    pub lambda: f32,
    /// On or off.
    pub enabled: bool,
    /// λ range −2 … 2 instead of −1 … 1.
    pub extended: bool,
}

/// Image mode settings (persisted with the rest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageSettings {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt.
    pub negative: String,
    /// Seed of the initial latents.
    pub seed: u64,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance (≤ 1: off).
    pub guidance: f32,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Sampler: `euler`, `euler-a` or `ddim`.
    pub scheduler: String,
    /// Steer every denoising step.
    pub steer_all: bool,
    /// First steered step (when not all).
    pub steer_start: usize,
    /// One past the last steered step (when not all).
    pub steer_end: usize,
    /// λ values of a strip, comma-separated.
    pub strip_lambdas: String,
    /// λ values of a grid (columns).
    pub grid_lambdas: String,
    /// Seeds of a grid (rows).
    pub grid_seeds: String,
    /// Fit a built-in concept (else prompt files).
    pub fit_builtin: bool,
    /// Built-in concept to fit.
    pub fit_concept: String,
    /// Source prompts file.
    pub fit_source: String,
    /// Target prompts file.
    pub fit_target: String,
    /// Concept name (empty: the built-in name or the target file's stem).
    pub fit_name: String,
    /// Hook preset or names (blank: what the concept asks for).
    pub fit_hooks: String,
    /// Prompts per side (0 = all).
    pub fit_limit: usize,
    /// Latent size of the fitting step in pixels (0 = the model's).
    pub fit_size: usize,
    /// Fit along the denoising trajectories, one map per step on the conditional branch
    /// (the default), instead of on the first step.
    pub fit_trajectory: bool,
    /// With a first-step fit: every map on unsteered activations, `fit_chunk` prompts per
    /// pass (bounded memory), instead of causally in one batch.
    pub fit_simultaneous: bool,
    /// Prompts per forward pass of a simultaneous fit.
    pub fit_chunk: usize,
    /// Samples of a fit: `mean` (one per prompt), `positions` (every pixel / token), or
    /// empty for what the concept asks for.
    pub fit_pooling: String,
}

impl ImageSettings {
    /// The form as an image request (an unknown sampler name is an error).
    pub fn to_request(&self) -> Result<ImageRequest, String> {
        Ok(ImageRequest {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative.clone(),
            seed: self.seed,
            steps: self.steps,
            guidance: self.guidance,
            width: self.width,
            height: self.height,
            scheduler: self
                .scheduler
                .parse()
                .map_err(|e: DiffusionError| e.to_string())?,
        })
    }

    /// Fills the form from a request.
    pub fn set_request(&mut self, r: &ImageRequest) {
        self.prompt = r.prompt.clone();
        self.negative = r.negative_prompt.clone();
        self.seed = r.seed;
        self.set_sampling(r);
    }

    /// Fills the sampling settings (steps, guidance, size, sampler) from a request, keeping
    /// the prompt and seed.
    pub fn set_sampling(&mut self, r: &ImageRequest) {
        self.steps = r.steps;
        self.guidance = r.guidance;
        self.width = r.width;
        self.height = r.height;
        self.scheduler = r.scheduler.name().to_string();
    }
}

impl Default for ImageSettings {
    fn default() -> Self {
        Self {
            prompt: "a photo of a cat sitting on a wooden table".into(),
            negative: String::new(),
            seed: 0,
            steps: 25,
            guidance: 7.5,
            width: 512,
            height: 512,
            scheduler: "euler".into(),
            steer_all: true,
            steer_start: 0,
            steer_end: 10,
            strip_lambdas: "0, 0.25, 0.5, 0.75, 1".into(),
            grid_lambdas: "0, 0.5, 1".into(),
            grid_seeds: "0, 1, 2".into(),
            fit_builtin: true,
            fit_concept: "style:impressionism".into(),
            fit_source: String::new(),
            fit_target: String::new(),
            fit_name: String::new(),
            fit_hooks: String::new(),
            fit_limit: 32,
            fit_size: 0,
            fit_trajectory: true,
            fit_pooling: String::new(),
            fit_simultaneous: false,
            fit_chunk: 8,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            recent_models: Vec::new(),
            prompt: "Once upon a time".into(),
            chat: false,
            max_tokens: 48,
            temperature: 0.0,
            top_k: 50,
            top_p: 0.9,
            system: String::new(),
            seed: 0,
            seed_locked: true,
            source: "builtin:neutral".into(),
            target: "builtin:football".into(),
            concept_name: "football".into(),
            preset: crate::pipeline::presets::DEFAULT_PRESET.into(),
            live: true,
            user_datasets: Vec::new(),
            recent_image_models: Vec::new(),
            image_half: false,
            image: ImageSettings::default(),
            stack: Vec::new(),
            recent_maps: Vec::new(),
            scope: "all".into(),
            serve_port: 8080,
            serve_network: false,
            version: SETTINGS_VERSION,
        }
    }
}

impl Settings {
    /// Settings loaded from an earlier version brought to this one: values that were only the
    /// old defaults (never the user's choice) become the new defaults. Version 0 saved the
    /// image fit's hooks as `unet-norms` by default, which overrode the hook points a model
    /// folder's concepts ask for (the negations' cross-attention outputs); blank restores
    /// "as the concept asks".
    pub fn migrated(mut self) -> Self {
        if self.version < 1 && self.image.fit_hooks.trim() == "unet-norms" {
            self.image.fit_hooks.clear();
        }
        self.version = SETTINGS_VERSION;
        self
    }

    /// The form's sampling settings (temperature 0 is greedy).
    pub fn sampling(&self) -> crate::runtime::sampling::SamplingConfig {
        crate::runtime::sampling::SamplingConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            ..Default::default()
        }
    }

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

    /// Puts `path` first in the recent maps files (at most 8, no repeats).
    pub fn remember_maps(&mut self, path: PathBuf) {
        self.recent_maps.retain(|p| p != &path);
        self.recent_maps.insert(0, path);
        self.recent_maps.truncate(8);
    }

    /// Puts `path` first in the recent diffusion folders (at most 8, no repeats).
    pub fn remember_image_model(&mut self, path: PathBuf) {
        self.recent_image_models.retain(|p| p != &path);
        self.recent_image_models.insert(0, path);
        self.recent_image_models.truncate(8);
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

    #[test]
    fn the_old_default_image_hooks_give_way_to_what_the_concept_asks() {
        let load = |json: &str| serde_json::from_str::<Settings>(json).map(Settings::migrated);
        // Saved before the version field: `unet-norms` was the default, not a choice.
        let old = load(r#"{"image": {"fit_hooks": "unet-norms"}}"#);
        assert!(matches!(&old, Ok(s) if s.image.fit_hooks.is_empty() && s.version == SETTINGS_VERSION));
        // Another preset picked then, or `unet-norms` picked since: kept.
        let picked = load(r#"{"image": {"fit_hooks": "unet-groupnorms"}}"#);
        assert!(matches!(&picked, Ok(s) if s.image.fit_hooks == "unet-groupnorms"));
        let now = load(r#"{"version": 1, "image": {"fit_hooks": "unet-norms"}}"#);
        assert!(matches!(&now, Ok(s) if s.image.fit_hooks == "unet-norms"));
        // What is saved now carries the version.
        let saved = serde_json::to_string(&Settings::default()).unwrap_or_default();
        assert!(
            matches!(load(&saved), Ok(s) if s.version == SETTINGS_VERSION && s.image.fit_hooks.is_empty())
        );
    }
}
