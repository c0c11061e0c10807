//! `strip`: a λ strip (1 × N) or a λ × seed grid of images from the same initial latents.

use std::path::PathBuf;

use anyhow::{Context, Result};
use image::RgbImage;

use super::image_args::{
    ImageModelArgs, ImageSettingsArgs, ImageSteerArgs, check_image_output, load_pipeline, render, request,
    stack, steer_window,
};
use crate::diffusion::image_io::save_png;
use crate::pipeline::image_sheet::{ImageJob, ImageJobKind, compose_sheet, sheet_settings_cell};
use crate::pipeline::presets::parse_lambda;

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
    #[arg(long = "lambdas", value_delimiter = ',', default_value = "0,0.25,0.5,0.75,1", allow_hyphen_values = true, value_parser = parse_lambda)]
    pub strip_lambdas: Vec<f32>,
    /// Seeds, one row each (a λ × seed grid); default: the settings' seed.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
}

/// `strip`: one column per λ of the chosen concept, one row per seed.
pub fn strip_cmd(a: &StripArgs) -> Result<()> {
    anyhow::ensure!(!a.steer.maps.is_empty(), "strip needs a --maps file");
    check_image_output(&a.out, &a.settings, &a.steer)?;
    let pipe = load_pipeline(&a.model)?;
    let (r, from) = request(&pipe, &a.settings)?;
    let stack = stack(&pipe, &a.steer, from.as_ref())?;
    let concept = match &a.concept {
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
    let seeds = if a.seeds.is_empty() {
        vec![r.seed]
    } else {
        a.seeds.clone()
    };
    let lambdas = a.strip_lambdas.clone();
    let job = ImageJob {
        kind: ImageJobKind::Grid {
            concept,
            lambdas: lambdas.clone(),
            seeds: seeds.clone(),
        },
        request: r,
        stack,
        window: Some(steer_window(&a.steer, from.as_ref())),
    };
    let started = std::time::Instant::now();
    let mut cells = render(&pipe, &job)?;
    let meta = cells
        .get(sheet_settings_cell(&lambdas))
        .map(|(_, _, m)| m.clone())
        .unwrap_or_default();
    let images: Vec<RgbImage> = cells.drain(..).map(|(_, img, _)| img).collect();
    let sheet = compose_sheet(&images, &lambdas, &seeds)?;
    save_png(&a.out, &sheet, Some(&meta)).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote {} ({} × {} images) in {:.1} s",
        a.out.display(),
        seeds.len(),
        lambdas.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
