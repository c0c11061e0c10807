//! What the image commands (`fit-image`, `imagine`, `strip`) share: the model, settings and
//! steering flags and their parsers, loading the pipeline, building the request and steering
//! stack, and rendering with a progress bar.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::DType;
use image::RgbImage;

use super::common::progress_bar;
use crate::diffusion::image_io::{ImageMeta, read_png_meta};
use crate::diffusion::pipeline::{ImageRequest, LoadOptions, SdPipeline};
use crate::diffusion::scheduler::SchedulerKind;
use crate::diffusion::steer::StepWindow;
use crate::pipeline::image_sheet::{
    ImageJob, ImageSlot, RenderProgress, apply_png_settings, png_window, render_images,
};
use crate::pipeline::presets::parse_named_lambda;
use crate::pipeline::steering::{SteeringTarget, load_steering_stack};
use crate::transport::{SteeringStack, TokenScope};

/// The model folder and precision.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageModelArgs {
    /// A diffusers folder (model_index.json, text_encoder/, unet/, vae/, tokenizer/,
    /// scheduler/; SDXL also text_encoder_2/, tokenizer_2/).
    #[arg(long)]
    pub model: PathBuf,
    /// Weights and activations precision: f32 or f16.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: DType,
}

pub(super) fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
    match s.trim().to_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "fp16" => Ok(DType::F16),
        other => Err(format!("`{other}`: expected f32 or f16")),
    }
}

fn parse_scheduler(s: &str) -> std::result::Result<SchedulerKind, String> {
    s.parse::<SchedulerKind>().map_err(|e| e.to_string())
}

/// Settings of one image; unset values come from `--settings-from` or the model's defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageSettingsArgs {
    /// The prompt.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Negative prompt (used with guidance > 1).
    #[arg(long)]
    pub negative: Option<String>,
    /// Seed of the initial latents.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Denoising steps (default: the folder's `_act_studio_defaults`, else 1 for
    /// Turbo/Lightning folders, else 25).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance (default: the folder's, else 0 for Turbo, else 7.5; ≤ 1
    /// disables it).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Width in pixels (multiple of 8).
    #[arg(long)]
    pub width: Option<usize>,
    /// Height in pixels (multiple of 8).
    #[arg(long)]
    pub height: Option<usize>,
    /// Sampler: euler, euler-a, ddim, pndm, dpm++2m or dpm++2m-karras (default: the folder's,
    /// euler-a for Turbo).
    #[arg(long, value_parser = parse_scheduler)]
    pub scheduler: Option<SchedulerKind>,
    /// Take every setting not given here from a PNG this tool wrote.
    #[arg(long)]
    pub settings_from: Option<PathBuf>,
}

/// Steering of images.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageSteerArgs {
    /// Maps files fitted with `fit-image` on this model (repeatable).
    #[arg(long = "maps")]
    pub maps: Vec<PathBuf>,
    /// Strength of a concept, NAME=VALUE (repeatable; default 1).
    #[arg(long = "lambda", value_parser = parse_named_lambda)]
    pub lambdas: Vec<(String, f32)>,
    /// Steer only denoising steps START:END (0-based, END exclusive; e.g. 0:10). Steps count
    /// UNet evaluations: pndm makes one more than --steps.
    #[arg(long, value_parser = parse_window)]
    pub steer_steps: Option<StepWindow>,
}

fn parse_window(s: &str) -> std::result::Result<StepWindow, String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected START:END, e.g. 0:10"))?;
    let start: usize = a
        .trim()
        .parse()
        .map_err(|_| format!("`{a}` is not a step number"))?;
    let end: usize = if b.trim().is_empty() {
        usize::MAX
    } else {
        b.trim()
            .parse()
            .map_err(|_| format!("`{b}` is not a step number"))?
    };
    if end <= start {
        return Err(format!("`{s}`: the window is empty"));
    }
    Ok(StepWindow { start, end })
}

/// Checks an image command's output PNG against what it reads (the settings PNG and the maps
/// files) before the model loads.
pub(super) fn check_image_output(
    out: &std::path::Path,
    s: &ImageSettingsArgs,
    steer: &ImageSteerArgs,
) -> Result<()> {
    let inputs: Vec<&std::path::Path> = s
        .settings_from
        .iter()
        .chain(&steer.maps)
        .map(PathBuf::as_path)
        .collect();
    super::common::check_output("--out", out, &inputs)
}

pub(super) fn load_pipeline(a: &ImageModelArgs) -> Result<SdPipeline> {
    let started = std::time::Instant::now();
    let p = SdPipeline::load(
        &a.model,
        &LoadOptions {
            dtype: a.dtype,
            ..Default::default()
        },
    )
    .with_context(|| format!("loading diffusion model {}", a.model.display()))?;
    eprintln!(
        "loaded {} ({}, {} hook points) in {:.1} s",
        p.name(),
        p.family().name(),
        p.hook_sites().len(),
        started.elapsed().as_secs_f64()
    );
    for w in p.warnings() {
        eprintln!("warning: {w}");
    }
    Ok(p)
}

/// The request from `--settings-from`, the flags and the model's defaults (flags win).
pub(super) fn request(pipe: &SdPipeline, s: &ImageSettingsArgs) -> Result<(ImageRequest, Option<ImageMeta>)> {
    let from = match &s.settings_from {
        Some(p) => Some(read_png_meta(p).with_context(|| format!("reading settings from {}", p.display()))?),
        None => None,
    };
    let mut r = pipe.default_request("");
    if let Some(m) = &from {
        for note in apply_png_settings(&mut r, m) {
            eprintln!("note: {note}");
        }
    }
    if let Some(p) = &s.prompt {
        r.prompt = p.clone();
    }
    anyhow::ensure!(
        !r.prompt.trim().is_empty(),
        "give --prompt (or --settings-from an image)"
    );
    if let Some(n) = &s.negative {
        r.negative_prompt = n.clone();
    }
    r.seed = s.seed.unwrap_or(r.seed);
    r.steps = s.steps.unwrap_or(r.steps);
    r.guidance = s.guidance.unwrap_or(r.guidance);
    r.width = s.width.unwrap_or(r.width);
    r.height = s.height.unwrap_or(r.height);
    r.scheduler = s.scheduler.unwrap_or(r.scheduler);
    pipe.validate(&r)?;
    Ok((r, from))
}

/// The steering stack of `--maps`/`--lambda` (λ from `--settings-from` when not given).
pub(super) fn stack(
    pipe: &SdPipeline,
    a: &ImageSteerArgs,
    from: Option<&ImageMeta>,
) -> Result<SteeringStack> {
    let mut lambdas: Vec<(String, f32)> = from.map(|m| m.lambdas.clone()).unwrap_or_default();
    lambdas.retain(|(n, _)| a.lambdas.iter().all(|(m, _)| m != n));
    lambdas.extend(a.lambdas.iter().cloned());
    if a.maps.is_empty() {
        lambdas.retain(|(n, _)| a.lambdas.iter().any(|(m, _)| m == n));
    }
    let stack = load_steering_stack(
        &SteeringTarget::diffusion(pipe),
        &a.maps,
        &lambdas,
        TokenScope::All,
    )?;
    Ok(stack.unwrap_or_default())
}

/// `--steer-steps`, else the window stored in `--settings-from`, else every step.
pub(super) fn steer_window(a: &ImageSteerArgs, from: Option<&ImageMeta>) -> StepWindow {
    a.steer_steps
        .or_else(|| from.and_then(png_window))
        .unwrap_or(StepWindow::ALL)
}

/// Makes the job's images with a progress bar, returning them in order with their settings.
pub(super) fn render(pipe: &SdPipeline, job: &ImageJob) -> Result<Vec<(ImageSlot, RgbImage, ImageMeta)>> {
    let images = job.kind.images();
    let bar = progress_bar((images * job.request.steps) as u64, "rendering");
    let mut progress = |p: RenderProgress| {
        bar.set_length((p.images * p.steps) as u64);
        bar.set_position((p.image * p.steps + p.step) as u64);
        bar.set_message(format!("image {} of {}", p.image + 1, p.images));
        true
    };
    let mut out = Vec::with_capacity(images);
    render_images(pipe, job, &mut progress, &mut |slot, img, meta| {
        out.push((slot, img, meta))
    })?;
    bar.finish_and_clear();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn windows_and_dtypes_parse() {
        assert_eq!(super::parse_window("2:5").map(|w| (w.start, w.end)), Ok((2, 5)));
        assert_eq!(super::parse_window("3:").map(|w| w.end), Ok(usize::MAX));
        assert!(super::parse_window("5:5").is_err() && super::parse_window("x").is_err());
        assert!(super::parse_dtype("f16").is_ok() && super::parse_dtype("int8").is_err());
    }
}
