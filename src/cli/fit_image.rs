//! `fit-image`: fit transport maps on a Stable Diffusion folder (AcT paper §5: style control
//! and concept negation).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::common::{check_output, progress_bar};
use super::image_args::{ImageModelArgs, load_pipeline};
use crate::pipeline::diffusion_fit::{DEFAULT_IMAGE_PRESET, IMAGE_PRESETS};
use crate::pipeline::fit_image_concept::{
    ImageConceptSource, ImageFitRequest, SamplePooling, fit_image_concept,
};
use crate::pipeline::fit_model::Estimation;
use crate::pipeline::image_concepts::image_concepts_for;
use crate::transport::{Method, Support};

/// Arguments of `fit-image`.
#[derive(Debug, clap::Args)]
pub struct FitImageArgs {
    /// A diffusers folder (model_index.json, text_encoder/, unet/, vae/, tokenizer/,
    /// scheduler/; SDXL also text_encoder_2/, tokenizer_2/). Not needed with --list.
    #[arg(long, required_unless_present = "list")]
    pub model: Option<PathBuf>,
    /// Weights and activations precision: f32 or f16.
    #[arg(long, default_value = "f32", value_parser = super::image_args::parse_dtype)]
    pub dtype: candle_core::DType,
    /// A built-in concept: style:NAME, negate:NAME or remove:trees (`--list` shows them).
    #[arg(long, conflicts_with_all = ["source", "target"])]
    pub concept: Option<String>,
    /// Source prompts (moved away from): a text file, one prompt per line.
    #[arg(long, requires = "target")]
    pub source: Option<PathBuf>,
    /// Target prompts (moved towards), one per line.
    #[arg(long, requires = "source")]
    pub target: Option<PathBuf>,
    /// Concept name in the maps file (default: the built-in name or the target file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Hook points: a preset (unet-norms, unet-groupnorms, unet-layernorms,
    /// unet-cross-attention, text-encoder-norms, all-norms) or names / `prefix*` patterns,
    /// comma-separated (default: what the concept asks for, else unet-norms).
    #[arg(long)]
    pub hooks: Option<String>,
    /// Estimator: linear-act, mean-act, gaussian, joint-gaussian, aura, iti-m, det0 (default:
    /// what the concept asks for, else linear-act; the demo model's negate:* ask for
    /// joint-gaussian).
    #[arg(long)]
    pub method: Option<Method>,
    /// Support: unbounded (default for images: maps fitted at one step act at every step,
    /// where activations leave the fitted step's range) or qLO-HI.
    #[arg(long, default_value = "unbounded")]
    pub support: Support,
    /// Use at most this many prompts per side (0 = all). All prompts of both sides go
    /// through the UNet as one batch, so this bounds memory: 32 + 32 prompts at 512 px on
    /// SD 1.5 hold a few GB of activations.
    #[arg(long, default_value_t = 32)]
    pub limit: usize,
    /// Size of the latents the activations come from (pixels; default: the model's).
    #[arg(long)]
    pub size: Option<usize>,
    /// Schedule length of the fitting trajectories, or whose first step the activations come
    /// from with --first-step (default: the model's; fewer steps fit faster, and the maps
    /// of the nearest fitted timestep act at each step of any schedule).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed of the shared initial latents.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fit every map on unsteered activations of the first step, recording `--chunk` prompts
    /// per pass (bounded memory for many prompts, e.g. with `--limit 0`), instead of causally
    /// in one batch (implies --first-step).
    #[arg(long)]
    pub simultaneous: bool,
    /// Prompts per forward pass with `--simultaneous`.
    #[arg(long, default_value_t = 8)]
    pub chunk: usize,
    /// Fit on the first denoising step only, one map per hook point acting on both guidance
    /// branches at every step (the earlier way). By default maps are fitted along the
    /// denoising trajectories, one per step, on the conditional branch: on models with
    /// guidance this is what makes λ = 1 reach the target (see docs/ARCHITECTURE.md).
    #[arg(long)]
    pub first_step: bool,
    /// Samples of the fit: `mean` (one per prompt, the paper's rule; maps shift whole channels
    /// of 4-D activations) or `positions` (every pixel or token a sample, at most 256 per
    /// prompt; maps act pixel by pixel: for local features such as textures). Default: what
    /// the concept asks for (a model folder's concepts may), else `mean`.
    #[arg(long, value_parser = ["mean", "positions"])]
    pub pooling: Option<String>,
    /// List the built-in image concepts and presets, then exit.
    #[arg(long)]
    pub list: bool,
    /// Output maps file.
    #[arg(long, required_unless_present = "list")]
    pub out: Option<PathBuf>,
}

/// `fit-image`.
pub fn fit_image(a: &FitImageArgs) -> Result<()> {
    if a.list {
        let concepts = image_concepts_for(a.model.as_deref())?;
        match &a.model {
            Some(m) => outln!("image concepts for {}:", m.display()),
            None => outln!("built-in image concepts (give --model DIR to add the folder's own):"),
        }
        for (n, d) in concepts {
            outln!("  {n:<24} {d}");
        }
        outln!("hook presets (default: the concept's own, else {DEFAULT_IMAGE_PRESET}):");
        for (n, d) in IMAGE_PRESETS {
            outln!("  {n:<24} {d}");
        }
        return Ok(());
    }
    let out = a.out.as_ref().context("--out is required")?;
    let inputs: Vec<&Path> = a.source.iter().chain(&a.target).map(PathBuf::as_path).collect();
    check_output("--out", out, &inputs)?;
    let concept = match (&a.concept, &a.source, &a.target) {
        (Some(c), _, _) => ImageConceptSource::Builtin(c.clone()),
        (None, Some(s), Some(t)) => ImageConceptSource::Files {
            source: s.clone(),
            target: t.clone(),
        },
        _ => anyhow::bail!("give --concept NAME (see --list) or --source and --target prompt files"),
    };
    let req = ImageFitRequest {
        concept,
        name: a.name.clone(),
        hooks: a.hooks.clone().unwrap_or_default(),
        method: a.method,
        support: a.support,
        limit: a.limit,
        size: a.size,
        steps: a.steps,
        seed: a.seed,
        estimation: if a.simultaneous {
            Estimation::Simultaneous
        } else {
            Estimation::Causal
        },
        chunk: a.chunk,
        trajectory: !(a.first_step || a.simultaneous),
        pooling: a.pooling.as_deref().and_then(SamplePooling::parse),
    };
    let pipe = load_pipeline(&ImageModelArgs {
        model: a.model.clone().context("--model is required")?,
        dtype: a.dtype,
    })?;
    let bar = progress_bar(0, "fitting hook points");
    let started = std::time::Instant::now();
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        true
    };
    let fitted = fit_image_concept(&pipe, &req, &mut progress).context("fitting the image concept")?;
    bar.finish_and_clear();
    fitted
        .maps
        .save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "fitted `{}` at {} hook points on {} + {} prompts in {:.1} s → {}",
        fitted.name,
        fitted.maps.meta().hook_points.len(),
        fitted.counts.0,
        fitted.counts.1,
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}
