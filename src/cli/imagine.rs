//! `imagine`: one image, optionally steered (and beside the unsteered one), to a PNG.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::image_args::{
    ImageModelArgs, ImageSettingsArgs, ImageSteerArgs, check_image_output, load_pipeline, render, request,
    stack, steer_window,
};
use crate::diffusion::image_io::{save_png, side_by_side};
use crate::pipeline::image_sheet::{ImageJob, ImageJobKind, ImageSlot};

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

/// `imagine`.
pub fn imagine(a: &ImagineArgs) -> Result<()> {
    check_image_output(&a.out, &a.settings, &a.steer)?;
    let pipe = load_pipeline(&a.model)?;
    let (r, from) = request(&pipe, &a.settings)?;
    let job = ImageJob {
        kind: ImageJobKind::Pair { unsteered: a.compare },
        request: r,
        stack: stack(&pipe, &a.steer, from.as_ref())?,
        window: Some(steer_window(&a.steer, from.as_ref())),
    };
    let started = std::time::Instant::now();
    let images = render(&pipe, &job)?;
    let find = |slot| images.iter().find(|(s, _, _)| *s == slot);
    let (_, steered, meta) = find(ImageSlot::Steered).context("no steered image was made")?;
    let img = match find(ImageSlot::Unsteered) {
        Some((_, plain, _)) => side_by_side(plain, steered, "unsteered", "steered")?,
        None => steered.clone(),
    };
    save_png(&a.out, &img, Some(meta)).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote {} in {:.1} s",
        a.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
