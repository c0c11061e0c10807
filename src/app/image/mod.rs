//! Image mode: the Stable Diffusion side of the app. Settings of one image (prompt, negative
//! prompt, seed, steps, guidance, size, sampler, steered steps), a pair (unsteered |
//! steered, same request), a λ strip or a λ × seed grid, each image shown as a texture made
//! once when it arrives; saving PNGs that carry their settings, and loading settings back
//! from such a PNG. The image-concept fit form lives here too (the fit panel calls it).
//!
//! - this file: the state of image mode;
//! - `output`: the settings form, the buttons and the images on screen;
//! - `events`: worker events of image jobs;
//! - `files`: saving images and loading settings from a PNG;
//! - `fit`: the image-concept fit form.

mod events;
mod files;
mod fit;
mod output;

use std::time::Instant;

use eframe::egui;
use image::RgbImage;

use crate::diffusion::image_io::ImageMeta;
use crate::pipeline::image_concepts::builtin_image_concepts;
use crate::pipeline::image_sheet::ImageSlot;
use crate::transport::{Method, Support};
use crate::worker::ImageProgress;

pub use events::{image_arrived, job_done, model_loaded, model_unloaded, preview_arrived, progress};
pub use files::{load_settings, save};
pub use fit::{show_fit, start_fit};
pub use output::{generate, lambda_released, show_output};

/// An image on screen: its pixels, the settings that made it, and its texture (made once).
#[derive(Clone)]
pub struct Shown {
    /// The pixels.
    pub image: RgbImage,
    /// The settings that reproduce it.
    pub meta: ImageMeta,
    /// The texture drawn every frame.
    pub texture: egui::TextureHandle,
}

/// A strip (one seed) or a grid (several).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SheetKind {
    /// One row, one image per λ.
    Strip,
    /// One row per seed, one column per λ.
    Grid,
}

/// What the image output shows.
#[derive(Clone, Default)]
pub enum ImageView {
    /// Nothing yet.
    #[default]
    Empty,
    /// Unsteered | steered.
    Pair {
        /// The unsteered image (kept while the request is unchanged).
        unsteered: Option<Box<Shown>>,
        /// The steered image.
        steered: Option<Box<Shown>>,
    },
    /// A λ strip or a λ × seed grid.
    Sheet {
        /// Strip or grid.
        kind: SheetKind,
        /// The concept whose λ varies.
        concept: String,
        /// Columns.
        lambdas: Vec<f32>,
        /// Rows.
        seeds: Vec<u64>,
        /// Row-major cells, filled as images arrive.
        cells: Vec<Option<Shown>>,
    },
}

/// What a button asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageAction {
    /// The pair; only the steered image when `steered_only` and the unsteered one is current.
    Pair {
        /// Keep the unsteered image if its request is unchanged.
        steered_only: bool,
    },
    /// A λ strip of the chosen concept.
    Strip,
    /// A λ × seed grid of the chosen concept.
    Grid,
}

/// What "Save" writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveWhat {
    /// The steered image of a pair, or the whole strip / grid.
    Current,
    /// Both images of a pair side by side.
    SideBySide,
}

/// Runtime state of image mode (the persisted settings are in `settings.image`).
#[derive(Clone)]
pub struct ImageState {
    /// What is shown.
    pub view: ImageView,
    /// Id of the latest image job (older jobs' images are dropped).
    pub started: usize,
    /// An image job is running.
    pub generating: bool,
    /// When the latest job was asked for.
    pub requested: Option<Instant>,
    /// Progress of the latest job.
    pub progress: Option<ImageProgress>,
    /// The request the unsteered image of the pair was made with.
    pub unsteered_key: Option<String>,
    /// The request of the unsteered image being made.
    pub pending_key: Option<String>,
    /// Unsteered images asked for so far.
    pub unsteered_runs: usize,
    /// Steered pair images received so far.
    pub steered_runs: usize,
    /// Regenerate the steered image at this time (debounced slider release).
    pub regenerate_at: Option<Instant>,
    /// An image job waits for another kind of job (a fit, a load) to end; it is built when
    /// it starts, so it steers with what that job produced.
    pub queued: Option<ImageAction>,
    /// Concept varied by strips and grids.
    pub sheet_concept: String,
    /// Estimator of image fits (`None`: the concept's own, else Linear-AcT).
    pub fit_method: Option<Method>,
    /// Support of image fits.
    pub fit_support: Support,
    /// The built-in image concepts (name, description); the loaded folder's own first.
    pub builtin: Vec<(String, String)>,
    /// Switch to image mode when the loading diffusion model arrives (not for the demo
    /// image model loaded at start).
    pub show_on_load: bool,
    /// The latest per-step preview of the image being made, shown in its slot until the
    /// image itself arrives.
    pub preview: Option<Preview>,
}

/// A per-step preview on screen.
#[derive(Clone)]
pub struct Preview {
    /// Where the image being made goes.
    pub slot: ImageSlot,
    /// Steps done.
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
    /// The picture.
    pub texture: egui::TextureHandle,
    /// Its size in pixels.
    pub size: [u32; 2],
}

impl Preview {
    /// The preview for `slot`, if it is the one being made.
    pub fn of(preview: Option<&Preview>, slot: ImageSlot) -> Option<&Preview> {
        preview.filter(|p| p.slot == slot)
    }
}

impl Default for ImageState {
    fn default() -> Self {
        Self {
            view: ImageView::Empty,
            started: 0,
            generating: false,
            requested: None,
            progress: None,
            unsteered_key: None,
            pending_key: None,
            unsteered_runs: 0,
            steered_runs: 0,
            regenerate_at: None,
            queued: None,
            sheet_concept: String::new(),
            fit_method: None,
            fit_support: Support::Unbounded,
            builtin: builtin_image_concepts(),
            show_on_load: true,
            preview: None,
        }
    }
}

impl ImageState {
    /// The pair's images, when a pair is shown.
    pub fn pair(&self) -> Option<(Option<&Shown>, Option<&Shown>)> {
        match &self.view {
            ImageView::Pair { unsteered, steered } => Some((unsteered.as_deref(), steered.as_deref())),
            _ => None,
        }
    }

    /// The strip's or grid's cells, when one is shown.
    pub fn cells(&self) -> Option<&[Option<Shown>]> {
        match &self.view {
            ImageView::Sheet { cells, .. } => Some(cells),
            _ => None,
        }
    }
}
