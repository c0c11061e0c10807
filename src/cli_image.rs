//! Text-to-image commands: `fit-image`, `imagine` and `strip` (AcT paper §5: style control
//! and concept negation on Stable Diffusion).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::DType;
use image::RgbImage;

use crate::diffusion::image_io::{
    GridLabels, ImageMeta, compose_grid, format_lambda, read_png_meta, save_png, side_by_side, strip,
    tensor_to_images,
};
use crate::diffusion::pipeline::{ImageRequest, LoadOptions, SdPipeline};
use crate::diffusion::scheduler::SchedulerKind;
use crate::diffusion::steer::StepWindow;
use crate::pipeline::diffusion_fit::{DEFAULT_IMAGE_PRESET, IMAGE_PRESETS, ImageFitOptions, fit_image_maps};
use crate::pipeline::image_concepts::{PromptPair, builtin_image_concept, builtin_image_concepts};
use crate::pipeline::presets::{parse_lambda, parse_named_lambda};
use crate::pipeline::steering::{SteeringTarget, load_steering_stack};
use crate::transport::{FitConfig, Method, SteeringStack, Support, TokenScope};

use super::cli_steer::progress_bar;

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

fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
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
    /// Denoising steps (default: 1 for Turbo/Lightning folders, else 25).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance (default: 0 for Turbo, else 7.5; ≤ 1 disables it).
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

/// Arguments of `fit-image`.
#[derive(Debug, clap::Args)]
pub struct FitImageArgs {
    #[command(flatten)]
    pub model: ImageModelArgs,
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
    /// text-encoder-norms, all-norms) or names / `prefix*` patterns, comma-separated.
    #[arg(long, default_value = DEFAULT_IMAGE_PRESET)]
    pub hooks: String,
    /// Estimator.
    #[arg(long, default_value = "linear-act")]
    pub method: Method,
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
    /// Schedule length whose first step the activations come from (default: the model's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed of the shared initial latents.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fit every map on unsteered activations, recording `--chunk` prompts per pass (bounded
    /// memory for many prompts, e.g. with `--limit 0`), instead of causally in one batch.
    #[arg(long)]
    pub simultaneous: bool,
    /// Prompts per forward pass with `--simultaneous`.
    #[arg(long, default_value_t = 8)]
    pub chunk: usize,
    /// List the built-in image concepts and presets, then exit.
    #[arg(long)]
    pub list: bool,
    /// Output maps file.
    #[arg(long, required_unless_present = "list")]
    pub out: Option<PathBuf>,
}

/// Arguments of `imagine`.
#[derive(Debug, clap::Args)]
pub struct ImagineArgs {
    #[command(flatten)]
    pub model: ImageModelArgs,
    #[command(flatten)]
    pub settings: ImageSettingsArgs,
    #[command(flatten)]
    pub steer: ImageSteerArgs,
    /// Also generate the unsteered image and write both side by side.
    #[arg(long)]
    pub compare: bool,
    /// Output PNG (settings stored in tEXt chunks).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `strip`.
#[derive(Debug, clap::Args)]
pub struct StripArgs {
    #[command(flatten)]
    pub model: ImageModelArgs,
    #[command(flatten)]
    pub settings: ImageSettingsArgs,
    #[command(flatten)]
    pub steer: ImageSteerArgs,
    /// The concept whose λ varies (default: the only loaded one).
    #[arg(long)]
    pub concept: Option<String>,
    /// λ values, one column each.
    #[arg(long = "lambdas", value_delimiter = ',', default_value = "0,0.25,0.5,0.75,1", value_parser = parse_lambda)]
    pub strip_lambdas: Vec<f32>,
    /// Seeds, one row each (a λ × seed grid); default: the settings' seed.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
}

fn load_pipeline(a: &ImageModelArgs) -> Result<SdPipeline> {
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

fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading prompts {}", path.display()))?;
    let v: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    anyhow::ensure!(!v.is_empty(), "{} has no prompts", path.display());
    Ok(v)
}

/// `fit-image`.
pub fn fit_image(a: &FitImageArgs) -> Result<()> {
    if a.list {
        println!("built-in image concepts:");
        for (n, d) in builtin_image_concepts() {
            println!("  {n:<24} {d}");
        }
        println!("hook presets:");
        for (n, d) in IMAGE_PRESETS {
            println!("  {n:<24} {d}");
        }
        return Ok(());
    }
    let out = a.out.as_ref().context("--out is required")?;
    let mut pair: PromptPair = match (&a.concept, &a.source, &a.target) {
        (Some(c), _, _) => builtin_image_concept(c)?,
        (None, Some(s), Some(t)) => PromptPair {
            name: t
                .file_stem()
                .map_or("concept".into(), |s| s.to_string_lossy().into_owned()),
            source: read_prompts(s)?,
            target: read_prompts(t)?,
        },
        _ => anyhow::bail!("give --concept NAME (see --list) or --source and --target prompt files"),
    };
    pair.limit(a.limit);
    if let Some(n) = &a.name {
        pair.name = n.clone();
    }
    let pipe = load_pipeline(&a.model)?;
    let mut opts = ImageFitOptions::new(
        &pipe,
        FitConfig {
            method: a.method,
            support: a.support,
        },
        &a.hooks,
        a.seed,
        a.size,
        a.steps,
    );
    if a.simultaneous {
        opts.estimation = crate::pipeline::fit_model::Estimation::Simultaneous;
        opts.chunk = a.chunk;
    }
    let bar = progress_bar(0, "fitting hook points");
    let started = std::time::Instant::now();
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        true
    };
    let maps = fit_image_maps(&pipe, &pair, &opts, &mut progress)
        .with_context(|| format!("fitting `{}`", pair.name))?;
    bar.finish_and_clear();
    maps.save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "fitted `{}` at {} hook points on {} + {} prompts in {:.1} s → {}",
        pair.name,
        maps.meta().hook_points.len(),
        pair.source.len(),
        pair.target.len(),
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// The request from `--settings-from`, the flags and the model's defaults (flags win).
fn request(pipe: &SdPipeline, s: &ImageSettingsArgs) -> Result<(ImageRequest, Option<ImageMeta>)> {
    let from = match &s.settings_from {
        Some(p) => Some(read_png_meta(p).with_context(|| format!("reading settings from {}", p.display()))?),
        None => None,
    };
    let mut r = pipe.default_request("");
    if let Some(m) = &from {
        r.prompt = m.prompt.clone();
        r.negative_prompt = m.negative_prompt.clone();
        r.seed = m.seed;
        r.steps = m.steps;
        r.guidance = m.guidance;
        r.width = m.width;
        r.height = m.height;
        if let Ok(k) = m.scheduler.parse() {
            r.scheduler = k;
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
fn stack(pipe: &SdPipeline, a: &ImageSteerArgs, from: Option<&ImageMeta>) -> Result<SteeringStack> {
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
fn steer_window(a: &ImageSteerArgs, from: Option<&ImageMeta>) -> StepWindow {
    a.steer_steps
        .or_else(|| {
            from.and_then(|m| m.steer_window)
                .map(|(start, end)| StepWindow { start, end })
        })
        .unwrap_or(StepWindow::ALL)
}

fn render(
    pipe: &SdPipeline,
    r: &ImageRequest,
    stack: &SteeringStack,
    window: StepWindow,
    what: &str,
) -> Result<RgbImage> {
    let bar = progress_bar(r.steps as u64, what);
    let mut progress = |i: usize, n: usize| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
        true
    };
    let x = pipe.generate(r, stack, window, &mut progress)?;
    bar.finish_and_clear();
    tensor_to_images(&x)?
        .into_iter()
        .next()
        .context("the VAE returned no image")
}

/// `imagine`.
pub fn imagine(a: &ImagineArgs) -> Result<()> {
    let pipe = load_pipeline(&a.model)?;
    let (r, from) = request(&pipe, &a.settings)?;
    let stack = stack(&pipe, &a.steer, from.as_ref())?;
    let window = steer_window(&a.steer, from.as_ref());
    let started = std::time::Instant::now();
    let steered = render(&pipe, &r, &stack, window, "steered")?;
    let img = if a.compare {
        let plain = render(&pipe, &r, &SteeringStack::default(), window, "unsteered")?;
        side_by_side(&plain, &steered, "unsteered", "steered")?
    } else {
        steered
    };
    save_png(&a.out, &img, Some(&pipe.image_meta(&r, &stack, Some(window))))
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote {} in {:.1} s",
        a.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `strip`: one column per λ of the chosen concept, one row per seed.
pub fn strip_cmd(a: &StripArgs) -> Result<()> {
    anyhow::ensure!(!a.strip_lambdas.is_empty(), "--lambdas is empty");
    anyhow::ensure!(
        a.strip_lambdas.iter().all(|l| l.is_finite()),
        "--lambdas must be finite numbers"
    );
    anyhow::ensure!(!a.steer.maps.is_empty(), "strip needs a --maps file");
    let pipe = load_pipeline(&a.model)?;
    let (r, from) = request(&pipe, &a.settings)?;
    let mut stack = stack(&pipe, &a.steer, from.as_ref())?;
    let name = match &a.concept {
        Some(n) => n.clone(),
        None if stack.concepts.len() == 1 => stack.concepts[0].name.clone(),
        None => anyhow::bail!(
            "several concepts are loaded; choose the one to vary with --concept ({})",
            stack
                .concepts
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    anyhow::ensure!(
        stack.concepts.iter().any(|c| c.name == name),
        "no loaded concept is named `{name}`"
    );
    let window = steer_window(&a.steer, from.as_ref());
    let seeds = if a.seeds.is_empty() {
        vec![r.seed]
    } else {
        a.seeds.clone()
    };
    let started = std::time::Instant::now();
    let mut images = Vec::new();
    for &seed in &seeds {
        let mut rs = r.clone();
        rs.seed = seed;
        for &l in &a.strip_lambdas {
            stack.set_lambda(&name, l);
            images.push(render(
                &pipe,
                &rs,
                &stack,
                window,
                &format!("seed {seed}, λ={}", format_lambda(l)),
            )?);
        }
    }
    let sheet = if seeds.len() == 1 {
        strip(&images, &a.strip_lambdas)?
    } else {
        let labels = GridLabels {
            columns: a
                .strip_lambdas
                .iter()
                .map(|&l| format!("λ={}", format_lambda(l)))
                .collect(),
            rows: seeds.iter().map(|s| format!("seed {s}")).collect(),
        };
        compose_grid(&images, a.strip_lambdas.len(), 8, &labels)?
    };
    // The sheet's settings: the first seed, the concept at the largest λ shown.
    let top = a.strip_lambdas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    stack.set_lambda(&name, top);
    save_png(&a.out, &sheet, Some(&pipe.image_meta(&r, &stack, Some(window))))
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote {} ({} × {} images) in {:.1} s",
        a.out.display(),
        seeds.len(),
        a.strip_lambdas.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        crate::cli::Cli::command().debug_assert();
    }

    #[test]
    fn windows_and_dtypes_parse() {
        assert_eq!(super::parse_window("2:5").map(|w| (w.start, w.end)), Ok((2, 5)));
        assert_eq!(super::parse_window("3:").map(|w| w.end), Ok(usize::MAX));
        assert!(super::parse_window("5:5").is_err() && super::parse_window("x").is_err());
        assert!(super::parse_dtype("f16").is_ok() && super::parse_dtype("int8").is_err());
    }
}
