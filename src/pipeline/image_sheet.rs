//! Making images, the one way every edge does it: `act-studio imagine` / `strip`, the app's
//! image mode (through the worker) and scripts build an [`ImageJob`] and call
//! [`render_images`]; the λ strip or λ × seed grid is put together by [`compose_sheet`], and
//! the settings stored in a PNG this tool wrote become a request with [`apply_png_settings`]
//! (AcT paper §5, Fig. 6–7: one column per strength; docs/ARCHITECTURE.md, "Making images").

use image::RgbImage;

use crate::diffusion::error::DiffusionError;
use crate::diffusion::image_io::{
    GridLabels, ImageMeta, compose_grid, format_lambda, strip, tensor_to_images,
};
use crate::diffusion::pipeline::{ImageRequest, SdPipeline};
use crate::diffusion::scheduler::SchedulerKind;
use crate::diffusion::steer::StepWindow;
use crate::transport::SteeringStack;

/// Gutter between the images of a grid, in pixels.
pub const GRID_GAP: usize = 8;

/// What an image job makes.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageJobKind {
    /// The steered image, and the unsteered one too when `unsteered` (same request).
    Pair {
        /// Also make the unsteered image.
        unsteered: bool,
    },
    /// One image per λ of `concept` (the rest of the stack as it is), at the request's seed.
    Strip {
        /// The concept whose λ varies.
        concept: String,
        /// λ values, one image each.
        lambdas: Vec<f32>,
    },
    /// A λ × seed grid: one row per seed, one column per λ.
    Grid {
        /// The concept whose λ varies.
        concept: String,
        /// λ values (columns).
        lambdas: Vec<f32>,
        /// Seeds (rows).
        seeds: Vec<u64>,
    },
}

/// One image request: what to make, from which settings, steered how.
#[derive(Debug, Clone)]
pub struct ImageJob {
    /// What to make.
    pub kind: ImageJobKind,
    /// The settings (every image of the job starts from them).
    pub request: ImageRequest,
    /// The steering stack (concepts fitted on other models are left out).
    pub stack: SteeringStack,
    /// Steer only these denoising steps (`None`: every step).
    pub window: Option<StepWindow>,
}

/// Where an image of a job goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSlot {
    /// The unsteered image of a pair.
    Unsteered,
    /// The steered image of a pair.
    Steered,
    /// A cell of a strip (row 0) or grid.
    Cell {
        /// Row (seed index).
        row: usize,
        /// Column (λ index).
        col: usize,
    },
}

/// Progress of a job: image `image` (0-based) of `images`, step `step` of `steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderProgress {
    /// Image being made (0-based).
    pub image: usize,
    /// Images in the job.
    pub images: usize,
    /// Denoising steps done for this image.
    pub step: usize,
    /// Denoising steps per image.
    pub steps: usize,
}

impl ImageJobKind {
    /// How many images the job makes.
    pub fn images(&self) -> usize {
        match self {
            ImageJobKind::Pair { unsteered } => 1 + usize::from(*unsteered),
            ImageJobKind::Strip { lambdas, .. } => lambdas.len(),
            ImageJobKind::Grid { lambdas, seeds, .. } => lambdas.len() * seeds.len(),
        }
    }
}

/// `stack` with every concept at λ = 0 (the unsteered image's settings keep the names).
fn at_zero(stack: &SteeringStack) -> SteeringStack {
    let mut s = stack.clone();
    for c in &mut s.concepts {
        c.lambda = 0.0;
    }
    s
}

/// Receives per-step previews of the images a job is making.
pub trait PreviewSink {
    /// Whether a preview of the image for `slot` after step `step` of `steps` is wanted
    /// (each costs a small VAE decode or a linear map: a sink throttles them).
    fn wants(&mut self, slot: ImageSlot, step: usize, steps: usize) -> bool;
    /// The preview ([`SdPipeline::preview_image`] of the step's predicted clean latents).
    fn preview(&mut self, slot: ImageSlot, step: usize, steps: usize, image: RgbImage);
}

/// No previews.
pub struct NoPreviews;

impl PreviewSink for NoPreviews {
    fn wants(&mut self, _: ImageSlot, _: usize, _: usize) -> bool {
        false
    }
    fn preview(&mut self, _: ImageSlot, _: usize, _: usize, _: RgbImage) {}
}

/// Makes the job's images one at a time (a strip or grid row by row), handing each to
/// `on_image` with the settings that reproduce it as soon as it is decoded;
/// `progress` returning `false` cancels ([`DiffusionError::Cancelled`]).
pub fn render_images(
    pipe: &SdPipeline,
    job: &ImageJob,
    progress: &mut dyn FnMut(RenderProgress) -> bool,
    on_image: &mut dyn FnMut(ImageSlot, RgbImage, ImageMeta),
) -> Result<(), DiffusionError> {
    render_images_previewed(pipe, job, progress, on_image, &mut NoPreviews)
}

/// [`render_images`], with per-step previews of each image for `previews`.
pub fn render_images_previewed(
    pipe: &SdPipeline,
    job: &ImageJob,
    progress: &mut dyn FnMut(RenderProgress) -> bool,
    on_image: &mut dyn FnMut(ImageSlot, RgbImage, ImageMeta),
    previews: &mut dyn PreviewSink,
) -> Result<(), DiffusionError> {
    pipe.validate(&job.request)?;
    if let Some(w) = job.window
        && w.end <= w.start
    {
        return Err(DiffusionError::BadInput(format!(
            "the steered steps {}..{} are empty",
            w.start, w.end
        )));
    }
    // Only the concepts fitted on this pipeline steer it.
    let mut stack = job.stack.clone();
    stack
        .concepts
        .retain(|c| &c.maps.meta().fingerprint == pipe.fingerprint());
    let images = job.kind.images();
    let window = job.window;
    let mut render = |req: &ImageRequest, stack: &SteeringStack, image: usize, slot: ImageSlot| {
        let mut step_progress = |step: usize, steps: usize| {
            progress(RenderProgress {
                image,
                images,
                step,
                steps,
            })
        };
        let steps = req.steps;
        let mut preview = |step: usize, x0: &candle_core::Tensor| {
            // A preview that fails to draw is skipped: the image itself goes on.
            if previews.wants(slot, step, steps)
                && let Ok(img) = pipe.preview_image(x0)
            {
                previews.preview(slot, step, steps, img);
            }
            Ok(())
        };
        let x = pipe.generate_previewed(
            req,
            stack,
            window.unwrap_or(StepWindow::ALL),
            &mut step_progress,
            Some(&mut preview),
        )?;
        tensor_to_images(&x)?
            .into_iter()
            .next()
            .ok_or_else(|| DiffusionError::Backend("the VAE returned no image".into()))
    };
    let req = &job.request;
    let (concept, lambdas, seeds) = match &job.kind {
        ImageJobKind::Pair { unsteered } => {
            let steered_is_plain = pipe
                .steering(&stack, window.unwrap_or(StepWindow::ALL), req)?
                .is_empty();
            if *unsteered {
                let plain = render(req, &SteeringStack::default(), 0, ImageSlot::Unsteered)?;
                on_image(
                    ImageSlot::Unsteered,
                    plain.clone(),
                    pipe.image_meta(req, &at_zero(&stack), window),
                );
                if steered_is_plain {
                    // Nothing steers (every λ is 0): the steered image is the same.
                    on_image(ImageSlot::Steered, plain, pipe.image_meta(req, &stack, window));
                    return Ok(());
                }
            }
            let img = render(req, &stack, images - 1, ImageSlot::Steered)?;
            on_image(ImageSlot::Steered, img, pipe.image_meta(req, &stack, window));
            return Ok(());
        }
        ImageJobKind::Strip { concept, lambdas } => (concept, lambdas, vec![req.seed]),
        ImageJobKind::Grid {
            concept,
            lambdas,
            seeds,
        } => (concept, lambdas, seeds.clone()),
    };
    check_sheet(lambdas, &seeds)?;
    match stack.concepts.iter_mut().find(|c| &c.name == concept) {
        Some(c) => c.enabled = true,
        None => {
            return Err(DiffusionError::BadInput(format!(
                "no concept named `{concept}` fitted on {} is in the steering stack{}",
                pipe.name(),
                if stack.concepts.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (it holds {})",
                        stack
                            .concepts
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )));
        }
    }
    for (row, &seed) in seeds.iter().enumerate() {
        let mut r = req.clone();
        r.seed = seed;
        for (col, &l) in lambdas.iter().enumerate() {
            stack.set_lambda(concept, l);
            let img = render(
                &r,
                &stack,
                row * lambdas.len() + col,
                ImageSlot::Cell { row, col },
            )?;
            on_image(
                ImageSlot::Cell { row, col },
                img,
                pipe.image_meta(&r, &stack, window),
            );
        }
    }
    Ok(())
}

/// A strip or grid needs at least one λ and one seed, and finite λ.
fn check_sheet(lambdas: &[f32], seeds: &[u64]) -> Result<(), DiffusionError> {
    if lambdas.is_empty() || seeds.is_empty() {
        return Err(DiffusionError::BadInput(
            "give at least one λ and one seed".into(),
        ));
    }
    if let Some(l) = lambdas.iter().find(|l| !l.is_finite()) {
        return Err(DiffusionError::BadInput(format!(
            "λ = {l} is not a finite number"
        )));
    }
    Ok(())
}

/// Puts row-major `images` together: a labelled λ strip for one seed, a λ × seed grid with
/// column and row labels for several.
pub fn compose_sheet(
    images: &[RgbImage],
    lambdas: &[f32],
    seeds: &[u64],
) -> Result<RgbImage, DiffusionError> {
    if images.len() != lambdas.len() * seeds.len() {
        return Err(DiffusionError::BadInput(format!(
            "the sheet is incomplete ({} of {} images)",
            images.len(),
            lambdas.len() * seeds.len()
        )));
    }
    if seeds.len() == 1 {
        return strip(images, lambdas);
    }
    let labels = GridLabels {
        columns: lambdas
            .iter()
            .map(|&l| format!("λ={}", format_lambda(l)))
            .collect(),
        rows: seeds.iter().map(|s| format!("seed {s}")).collect(),
    };
    compose_grid(images, lambdas.len(), GRID_GAP, &labels)
}

/// Index of the cell whose settings a saved sheet carries: the first seed, the concept at
/// the largest λ shown (so opening the sheet's settings reproduces its strongest image).
pub fn sheet_settings_cell(lambdas: &[f32]) -> usize {
    (0..lambdas.len())
        .max_by(|&a, &b| lambdas[a].total_cmp(&lambdas[b]))
        .unwrap_or(0)
}

/// Sets `req` from the settings stored in a PNG this tool wrote. Values the file lacks or
/// holds out of range (0 steps, a non-finite guidance, a zero size) leave `req` as it is;
/// the returned notes say what was not taken and why.
pub fn apply_png_settings(req: &mut ImageRequest, m: &ImageMeta) -> Vec<String> {
    let mut notes = Vec::new();
    req.prompt = m.prompt.clone();
    req.negative_prompt = m.negative_prompt.clone();
    req.seed = m.seed;
    if m.steps > 0 {
        req.steps = m.steps;
    }
    if m.guidance.is_finite() {
        req.guidance = m.guidance;
    }
    if m.width > 0 && m.height > 0 {
        req.width = m.width;
        req.height = m.height;
    }
    match m.scheduler.parse::<SchedulerKind>() {
        Ok(k) => req.scheduler = k,
        Err(_) if m.scheduler.is_empty() => {}
        Err(_) => notes.push(format!(
            "unknown sampler `{}` kept as {}",
            m.scheduler,
            req.scheduler.name()
        )),
    }
    notes
}

/// The steered steps stored in a PNG's settings (`None`: every step).
pub fn png_window(m: &ImageMeta) -> Option<StepWindow> {
    m.steer_window.map(|(start, end)| StepWindow { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ImageRequest {
        ImageRequest {
            prompt: "a cat".into(),
            negative_prompt: String::new(),
            seed: 1,
            steps: 25,
            guidance: 7.5,
            width: 64,
            height: 64,
            scheduler: SchedulerKind::EulerAncestral,
        }
    }

    #[test]
    fn png_settings_fill_a_request_and_keep_what_is_out_of_range() {
        let mut r = request();
        let m = ImageMeta {
            prompt: "a neon dog".into(),
            seed: 9,
            steps: 0,
            guidance: f32::NAN,
            width: 32,
            height: 0,
            scheduler: "warp-drive".into(),
            ..Default::default()
        };
        let notes = apply_png_settings(&mut r, &m);
        assert_eq!((r.prompt.as_str(), r.seed), ("a neon dog", 9));
        assert_eq!((r.steps, r.guidance, r.width, r.height), (25, 7.5, 64, 64));
        assert_eq!(r.scheduler, SchedulerKind::EulerAncestral);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("warp-drive"));
        let m = ImageMeta {
            steps: 4,
            guidance: 0.0,
            width: 48,
            height: 40,
            scheduler: "ddim".into(),
            ..Default::default()
        };
        assert!(apply_png_settings(&mut r, &m).is_empty());
        assert_eq!((r.steps, r.guidance, r.width, r.height), (4, 0.0, 48, 40));
        assert_eq!(r.scheduler, SchedulerKind::Ddim);
    }

    #[test]
    fn sheets_are_strips_for_one_seed_and_grids_for_several() {
        let img = |v: u8| RgbImage::from_pixel(8, 8, image::Rgb([v, v, v]));
        let four: Vec<RgbImage> = (0..4).map(|i| img(i * 60)).collect();
        let strip = compose_sheet(&four, &[0.0, 0.5, 1.0, 2.0], &[3]);
        let grid = compose_sheet(&four, &[0.0, 1.0], &[3, 4]);
        let (s, g) = (strip.map_err(|e| e.to_string()), grid.map_err(|e| e.to_string()));
        assert!(s.is_ok() && g.is_ok(), "{:?} {:?}", s.err(), g.err());
        if let (Ok(s), Ok(g)) = (s, g) {
            assert!(
                s.width() >= 4 * 8 && s.height() < g.height(),
                "{:?} {:?}",
                s.dimensions(),
                g.dimensions()
            );
        }
        assert!(compose_sheet(&four[..3], &[0.0, 1.0], &[3, 4]).is_err());
        assert_eq!(sheet_settings_cell(&[0.0, 2.0, 1.0]), 1);
        assert_eq!(sheet_settings_cell(&[]), 0);
        assert!(check_sheet(&[0.0, f32::INFINITY], &[1]).is_err());
        assert!(check_sheet(&[], &[1]).is_err() && check_sheet(&[1.0], &[]).is_err());
        let kind = ImageJobKind::Grid {
            concept: "c".into(),
            lambdas: vec![0.0, 1.0, 2.0],
            seeds: vec![1, 2],
        };
        assert_eq!(kind.images(), 6);
        assert_eq!(ImageJobKind::Pair { unsteered: true }.images(), 2);
    }
}
