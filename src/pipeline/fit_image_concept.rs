//! Fitting an image concept, the one way every edge does it: `act-studio fit-image`, the
//! app's image fit form (through the worker) and scripts build an [`ImageFitRequest`] and call
//! [`fit_image_concept`] (AcT paper §5: style control and concept negation; the data path is
//! in docs/ARCHITECTURE.md, "Fitting an image concept").
//!
//! The request names the prompts as the user gave them (a built-in concept, two prompt
//! files, or the prompts themselves); [`fit_image_concept`] reads them, keeps at most `limit`
//! per side (spread over the lists), names the concept, and fits causally in one batch or
//! simultaneously `chunk` prompts at a time ([`super::diffusion_fit`]).

use std::path::{Path, PathBuf};

use crate::diffusion::error::DiffusionError;
pub use crate::diffusion::hooks::SamplePooling;
use crate::diffusion::pipeline::SdPipeline;
use crate::transport::{FitConfig, MapsFile, Method, Support};

use super::diffusion_fit::{DEFAULT_IMAGE_PRESET, ImageFitOptions, fit_image_maps};
use super::fit_model::Estimation;
use super::image_concepts::{PromptPair, image_concept_for};

/// Where the prompts of an image concept come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageConceptSource {
    /// A built-in concept (`style:NAME`, `negate:NAME`, `remove:trees`).
    Builtin(String),
    /// Two text files, one prompt per line (blank lines skipped).
    Files {
        /// Prompts moved away from.
        source: PathBuf,
        /// Prompts moved towards.
        target: PathBuf,
    },
    /// Prompts given directly.
    Prompts(PromptPair),
}

/// One image-concept fit: which prompts, where in the pipeline, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFitRequest {
    /// The prompts.
    pub concept: ImageConceptSource,
    /// Concept name (`None` or blank: the built-in name or the target file's stem).
    pub name: Option<String>,
    /// Hook preset, or names / `prefix*` patterns, comma-separated
    /// ([`super::diffusion_fit::select_hooks`]); blank: what the concept asks for
    /// ([`PromptPair::hooks`]), else [`DEFAULT_IMAGE_PRESET`].
    pub hooks: String,
    /// Estimator (`None`: what the concept asks for, [`PromptPair::method`], else Linear-AcT).
    pub method: Option<Method>,
    /// Support (`Unbounded` suits images: maps fitted at one step act at every step).
    pub support: Support,
    /// Use at most this many prompts per side, spread over the lists (0 = all).
    pub limit: usize,
    /// Latent size of the fitting step, in pixels (`None`: the model's).
    pub size: Option<usize>,
    /// Schedule length of the fitting trajectories (or whose first step the activations come
    /// from; `None`: the model's).
    pub steps: Option<usize>,
    /// Seed of the shared initial latents.
    pub seed: u64,
    /// Causal (one batch of all prompts, each map fitted with the earlier ones applied) or
    /// simultaneous (unsteered activations recorded `chunk` prompts per pass).
    pub estimation: Estimation,
    /// Prompts per forward pass with simultaneous estimation.
    pub chunk: usize,
    /// Fit along the denoising trajectories of the `steps` schedule, one map per step
    /// ([`ImageFitOptions::trajectory`]; causal), instead of on the first step only.
    pub trajectory: bool,
    /// One sample per prompt (its mean) or per pixel / token; `None`: what the concept asks
    /// for ([`PromptPair::pooling`]), else the mean.
    pub pooling: Option<SamplePooling>,
}

impl ImageFitRequest {
    /// A request for `concept` with the CLI's defaults: the concept's hook points (else the
    /// default preset), the concept's method (else Linear-AcT), unbounded support, 32 prompts per side, the model's size
    /// and steps, seed 0, causal along trajectories.
    pub fn new(concept: ImageConceptSource) -> Self {
        Self {
            concept,
            name: None,
            hooks: String::new(),
            method: None,
            support: Support::Unbounded,
            limit: 32,
            size: None,
            steps: None,
            seed: 0,
            estimation: Estimation::Causal,
            chunk: 8,
            trajectory: true,
            pooling: None,
        }
    }
}

/// A fitted image concept.
#[derive(Debug)]
pub struct FittedImageConcept {
    /// The maps, with their metadata, ready to save or steer with.
    pub maps: MapsFile,
    /// The concept's name.
    pub name: String,
    /// Source and target prompts used.
    pub counts: (usize, usize),
}

/// Reads prompts from a text file, one per line (blank lines skipped).
pub fn read_prompts(path: &Path) -> Result<Vec<String>, DiffusionError> {
    let text = crate::transport::regular_file::read_regular_to_string(path).map_err(|source| {
        DiffusionError::Io {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let v: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if v.is_empty() {
        return Err(DiffusionError::BadInput(format!(
            "{} has no prompts",
            path.display()
        )));
    }
    Ok(v)
}

/// The prompt pair a request names, limited and named as asked; a built-in name is looked
/// up in the model folder's own concepts first (`folder`, [`image_concept_for`]).
pub fn prompt_pair(req: &ImageFitRequest, folder: Option<&Path>) -> Result<PromptPair, DiffusionError> {
    let mut pair = match &req.concept {
        ImageConceptSource::Builtin(name) => {
            image_concept_for(name.trim(), folder).map_err(|e| DiffusionError::BadInput(e.to_string()))?
        }
        ImageConceptSource::Files { source, target } => PromptPair {
            name: target
                .file_stem()
                .map_or("concept".into(), |s| s.to_string_lossy().into_owned()),
            source: read_prompts(source)?,
            target: read_prompts(target)?,
            pooling: None,
            hooks: None,
            method: None,
        },
        ImageConceptSource::Prompts(p) => p.clone(),
    };
    pair.limit(req.limit);
    if let Some(n) = req.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        pair.name = n.to_string();
    }
    Ok(pair)
}

/// The hook points a fit uses: the request's, else the concept's, else the default preset.
pub fn hook_selection<'a>(req: &'a ImageFitRequest, pair: &'a PromptPair) -> &'a str {
    let asked = req.hooks.trim();
    if !asked.is_empty() {
        return asked;
    }
    pair.hooks
        .as_deref()
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .unwrap_or(DEFAULT_IMAGE_PRESET)
}

/// Reads the prompts and fits the concept's maps on `pipe`; `progress(done, total)` counts
/// fitted hook points and returns `false` to cancel ([`DiffusionError::Cancelled`]).
pub fn fit_image_concept(
    pipe: &SdPipeline,
    req: &ImageFitRequest,
    progress: &mut (dyn FnMut(usize, usize) -> bool + Send),
) -> Result<FittedImageConcept, DiffusionError> {
    let pair = prompt_pair(req, Some(pipe.folder()))?;
    if req.trajectory && req.estimation == Estimation::Simultaneous {
        return Err(DiffusionError::BadInput(
            "fitting along denoising trajectories is causal; fit on the first step for simultaneous estimation".into(),
        ));
    }
    if req.estimation == Estimation::Simultaneous && req.chunk == 0 {
        return Err(DiffusionError::BadInput(
            "the chunk (prompts per forward pass) must be at least 1".into(),
        ));
    }
    let hooks = hook_selection(req, &pair);
    if req.hooks.trim().is_empty()
        && let Err(e) = super::diffusion_fit::select_hooks(pipe.hook_sites(), hooks)
    {
        return Err(DiffusionError::BadInput(format!(
            "concept `{}` asks for hook points `{hooks}` (its \"hooks\" in {}): {e}",
            pair.name,
            super::image_concepts::FOLDER_CONCEPTS
        )));
    }
    let mut opts = ImageFitOptions::new(
        pipe,
        FitConfig {
            method: req.method.or(pair.method).unwrap_or(Method::LinearAct),
            support: req.support,
        },
        hooks,
        req.seed,
        req.size,
        req.steps,
    );
    opts.estimation = req.estimation;
    opts.chunk = req.chunk;
    opts.trajectory = req.trajectory;
    opts.pooling = req.pooling.or(pair.pooling).unwrap_or_default();
    let maps = fit_image_maps(pipe, &pair, &opts, progress)?;
    Ok(FittedImageConcept {
        maps,
        counts: (pair.source.len(), pair.target.len()),
        name: pair.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_s_hooks_win_then_the_concept_s_then_the_default() {
        let mut pair = PromptPair {
            name: "negate:red".into(),
            source: vec!["a red circle".into()],
            target: vec!["a circle".into()],
            pooling: None,
            hooks: None,
            method: None,
        };
        let mut req = ImageFitRequest::new(ImageConceptSource::Prompts(pair.clone()));
        assert_eq!(hook_selection(&req, &pair), DEFAULT_IMAGE_PRESET);
        pair.hooks = Some("unet-cross-attention".into());
        assert_eq!(hook_selection(&req, &pair), "unet-cross-attention");
        req.hooks = "  ".into();
        assert_eq!(hook_selection(&req, &pair), "unet-cross-attention");
        req.hooks = " text-encoder-norms ".into();
        assert_eq!(hook_selection(&req, &pair), "text-encoder-norms");
    }

    #[test]
    fn a_request_names_limits_and_reads_its_prompts() {
        let dir = std::env::temp_dir().join(format!("act-fit-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let (s, t) = (dir.join("plain.txt"), dir.join("neon.txt"));
        std::fs::write(&s, "a cat\n\n a dog \na cow\n").ok();
        std::fs::write(&t, "a neon cat\na neon dog\na neon cow\n").ok();
        let mut req = ImageFitRequest::new(ImageConceptSource::Files {
            source: s.clone(),
            target: t.clone(),
        });
        let pair = prompt_pair(&req, None).map_err(|e| e.to_string());
        assert_eq!(pair.as_ref().map(|p| p.name.as_str()), Ok("neon"));
        assert_eq!(
            pair.as_ref().map(|p| p.source.clone()),
            Ok(vec!["a cat".to_string(), "a dog".into(), "a cow".into()])
        );
        req.limit = 2;
        req.name = Some("  glow ".into());
        let pair = prompt_pair(&req, None).map_err(|e| e.to_string());
        assert_eq!(
            pair.as_ref().map(|p| (p.name.as_str(), p.target.len())),
            Ok(("glow", 2))
        );
        std::fs::write(&s, "\n  \n").ok();
        let err = prompt_pair(&req, None).map(|_| ()).map_err(|e| e.to_string());
        assert!(matches!(&err, Err(e) if e.contains("has no prompts")), "{err:?}");
        let missing = ImageFitRequest::new(ImageConceptSource::Files {
            source: dir.join("nope.txt"),
            target: t,
        });
        assert!(prompt_pair(&missing, None).is_err());
        let unknown = ImageFitRequest::new(ImageConceptSource::Builtin("style:nothing-like-it".into()));
        assert!(prompt_pair(&unknown, None).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn builtin_concepts_are_found_by_name() {
        let req = ImageFitRequest::new(ImageConceptSource::Builtin("remove:trees".into()));
        let pair = prompt_pair(&req, None).map_err(|e| e.to_string());
        assert!(
            matches!(&pair, Ok(p) if p.name == "remove:trees" && p.source.len() <= 32),
            "{pair:?}"
        );
    }
}
