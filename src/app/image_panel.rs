//! Image mode: the Stable Diffusion side of the app. Settings of one image (prompt, negative
//! prompt, seed, steps, guidance, size, sampler, steered steps), a pair (unsteered |
//! steered, same request), a λ strip or a λ × seed grid, each image shown as a texture made
//! once when it arrives; saving PNGs that carry their settings, and loading settings back
//! from such a PNG. The image-concept fit form lives here too (the fit panel calls it).

use std::path::Path;
use std::time::{Duration, Instant};

use eframe::egui;
use image::RgbImage;

use crate::diffusion::image_io::{
    GridLabels, ImageMeta, compose_grid, format_lambda, read_png_meta, save_png, side_by_side, strip,
};
use crate::diffusion::pipeline::ImageRequest;
use crate::diffusion::scheduler::SchedulerKind;
use crate::diffusion::steer::StepWindow;
use crate::pipeline::diffusion_fit::IMAGE_PRESETS;
use crate::pipeline::image_concepts::builtin_image_concepts;
use crate::pipeline::presets::parse_lambda_list;
use crate::transport::{Method, Support};
use crate::worker::{
    Command, ImageConceptSource, ImageFitJob, ImageJob, ImageJobKind, ImageModelInfo, ImageProgress,
    ImageResult, ImageSlot, JobKind, Progress,
};

use super::{DialogResult, Mode, StudioApp};

/// Gutter between images of a saved grid.
const GRID_GAP: usize = 8;

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
    /// Concept varied by strips and grids.
    pub sheet_concept: String,
    /// Estimator of image fits.
    pub fit_method: Method,
    /// Support of image fits.
    pub fit_support: Support,
    /// The built-in image concepts (name, description).
    pub builtin: Vec<(String, String)>,
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
            sheet_concept: String::new(),
            fit_method: Method::LinearAct,
            fit_support: Support::Unbounded,
            builtin: builtin_image_concepts(),
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

/// Parses a comma-separated list (`what` names it in the error).
fn parse_list<T: std::str::FromStr>(text: &str, what: &str) -> Result<Vec<T>, String> {
    let v: Option<Vec<T>> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect();
    match v {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("`{text}` is not a list of {what}")),
    }
}

/// The request of the image settings.
pub fn request(app: &StudioApp) -> Result<ImageRequest, String> {
    let s = &app.settings.image;
    let scheduler: SchedulerKind = s.scheduler.parse().map_err(|e| format!("{e}"))?;
    if s.prompt.trim().is_empty() {
        return Err("write a prompt first".into());
    }
    Ok(ImageRequest {
        prompt: s.prompt.clone(),
        negative_prompt: s.negative.clone(),
        seed: s.seed,
        steps: s.steps,
        guidance: s.guidance,
        width: s.width,
        height: s.height,
        scheduler,
    })
}

/// The steered steps of the settings (`None`: all).
fn window(app: &StudioApp) -> Result<Option<StepWindow>, String> {
    let s = &app.settings.image;
    if s.steer_all {
        return Ok(None);
    }
    if s.steer_end <= s.steer_start {
        return Err(format!(
            "the steered steps {}..{} are empty: the end must be after the start",
            s.steer_start, s.steer_end
        ));
    }
    Ok(Some(StepWindow {
        start: s.steer_start,
        end: s.steer_end,
    }))
}

/// Settings text that decides the unsteered image.
fn unsteered_key(app: &StudioApp, req: &ImageRequest) -> String {
    format!("{req:?}|{:?}", app.image_model.as_ref().map(|m| &m.path))
}

/// Image concepts of the stack fitted on the loaded pipeline.
fn sheet_concepts(app: &StudioApp) -> Vec<String> {
    let fp = app.image_model.as_ref().map(|m| &m.fingerprint);
    app.stack
        .iter()
        .filter(|e| Some(&e.concept.maps.meta().fingerprint) == fp)
        .map(|e| e.concept.name.clone())
        .collect()
}

/// Starts an image job.
pub fn generate(app: &mut StudioApp, action: ImageAction) {
    if app.image_model.is_none() {
        app.error("open a diffusion model folder first".into());
        return;
    }
    let (req, window) = match request(app).and_then(|r| window(app).map(|w| (r, w))) {
        Ok(x) => x,
        Err(e) => {
            app.error(e);
            return;
        }
    };
    let concepts = sheet_concepts(app);
    let concept = || -> Result<String, String> {
        if concepts.contains(&app.image.sheet_concept) {
            Ok(app.image.sheet_concept.clone())
        } else {
            concepts
                .first()
                .cloned()
                .ok_or_else(|| "fit an image concept (or load its maps) to make a λ strip".to_string())
        }
    };
    let parsed = match action {
        ImageAction::Pair { .. } => Ok(None),
        ImageAction::Strip => concept().and_then(|c| {
            let l = parse_lambda_list(&app.settings.image.strip_lambdas)?;
            Ok(Some((SheetKind::Strip, c, l, vec![req.seed])))
        }),
        ImageAction::Grid => concept().and_then(|c| {
            let l = parse_lambda_list(&app.settings.image.grid_lambdas)?;
            let s: Vec<u64> = parse_list(&app.settings.image.grid_seeds, "seeds (whole numbers)")?;
            Ok(Some((SheetKind::Grid, c, l, s)))
        }),
    };
    let sheet = match parsed {
        Ok(s) => s,
        Err(e) => {
            app.error(e);
            return;
        }
    };
    // Stop a running image job (never another kind of job: the cancel flag is shared).
    if app.running == Some(JobKind::GenerateImages) {
        app.cancel();
    }
    let kind = match (action, sheet) {
        (ImageAction::Pair { steered_only }, _) => {
            let key = unsteered_key(app, &req);
            let have = matches!(app.image.pair(), Some((Some(_), _)));
            let unsteered = !(steered_only && have && app.image.unsteered_key.as_deref() == Some(&key));
            if unsteered {
                app.image.view = ImageView::Pair {
                    unsteered: None,
                    steered: None,
                };
                app.image.unsteered_key = None;
                app.image.pending_key = Some(key);
                app.image.unsteered_runs += 1;
            }
            ImageJobKind::Pair { unsteered }
        }
        (_, Some((kind, concept, lambdas, seeds))) => {
            app.image.sheet_concept = concept.clone();
            app.image.view = ImageView::Sheet {
                kind,
                concept: concept.clone(),
                lambdas: lambdas.clone(),
                seeds: seeds.clone(),
                cells: vec![None; lambdas.len() * seeds.len()],
            };
            match kind {
                SheetKind::Strip => ImageJobKind::Strip { concept, lambdas },
                SheetKind::Grid => ImageJobKind::Grid {
                    concept,
                    lambdas,
                    seeds,
                },
            }
        }
        // A strip or grid always has its sheet.
        (_, None) => return,
    };
    app.image.started += 1;
    app.image.generating = true;
    app.image.progress = None;
    app.image.requested = Some(Instant::now());
    let job = ImageJob {
        id: app.image.started,
        kind,
        request: req,
        stack: app.image_stack(),
        window,
    };
    app.send(Command::GenerateImages(Box::new(job)));
}

/// A texture of `img`, shrunk when it is larger than the GPU allows.
fn texture(ctx: &egui::Context, name: String, img: &RgbImage) -> egui::TextureHandle {
    let max = ctx.input(|i| i.max_texture_side).max(1) as u32;
    let (w, h) = img.dimensions();
    let small;
    let img = if w > max || h > max {
        let f = max as f32 / w.max(h) as f32;
        let (nw, nh) = (((w as f32 * f) as u32).max(1), ((h as f32 * f) as u32).max(1));
        small = image::imageops::resize(img, nw, nh, image::imageops::FilterType::Triangle);
        &small
    } else {
        img
    };
    let color = egui::ColorImage::from_rgb([img.width() as usize, img.height() as usize], img.as_raw());
    // Small images (tests, previews) are magnified: keep their pixels sharp.
    let opts = if w.max(h) < 256 {
        egui::TextureOptions::NEAREST
    } else {
        egui::TextureOptions::LINEAR
    };
    ctx.load_texture(name, color, opts)
}

/// A new diffusion model: its defaults, and concepts of other models leave the stack.
pub fn model_loaded(app: &mut StudioApp, info: ImageModelInfo) {
    app.settings.remember_image_model(info.path.clone());
    let r = &info.default_request;
    let s = &mut app.settings.image;
    s.steps = r.steps;
    s.guidance = r.guidance;
    s.width = r.width;
    s.height = r.height;
    s.scheduler = r.scheduler.name().to_string();
    app.info(format!(
        "loaded {} ({}, {} hook points; {} steps, guidance {}, {}×{}, {}){}",
        info.name,
        info.family,
        info.hook_points.len(),
        r.steps,
        r.guidance,
        r.width,
        r.height,
        r.scheduler.name(),
        info.warnings
            .iter()
            .map(|w| format!("; warning: {w}"))
            .collect::<String>()
    ));
    let text_fp = app.model.as_ref().map(|m| m.fingerprint.clone());
    app.stack.retain(|e| {
        let fp = &e.concept.maps.meta().fingerprint;
        *fp == info.fingerprint || text_fp.as_deref() == Some(fp.to_string().as_str())
    });
    app.plots.concept = 0;
    app.plots.invalidate();
    app.image.view = ImageView::Empty;
    app.image.unsteered_key = None;
    app.image.pending_key = None;
    app.image_model = Some(info);
    app.mode = Mode::Image;
}

/// The pipeline is gone (a new one is loading, or failed to load). Its concepts stay in the
/// stack: they steer it again if the same folder is loaded back.
pub fn model_unloaded(app: &mut StudioApp) {
    app.image_model = None;
    app.image.view = ImageView::Empty;
    app.image.unsteered_key = None;
    app.image.pending_key = None;
    app.mode = Mode::Text;
}

/// Step progress of an image job.
pub fn progress(app: &mut StudioApp, p: ImageProgress) {
    if p.id != app.image.started {
        return;
    }
    app.image.progress = Some(p);
    app.progress = Some(Progress {
        stage: format!(
            "image {} of {}, step {} of {}",
            p.image + 1,
            p.images,
            p.step,
            p.steps
        ),
        done: p.image * p.steps + p.step,
        total: p.images * p.steps,
        started: app.image.requested.unwrap_or_else(Instant::now),
    });
}

/// An image arrived: make its texture once and put it in its place.
pub fn image_arrived(app: &mut StudioApp, r: ImageResult) {
    if r.id != app.image.started {
        return;
    }
    let name = format!("image-{}-{:?}", r.id, r.slot);
    let shown = Shown {
        texture: texture(&app.ctx, name, &r.image),
        image: r.image,
        meta: r.meta,
    };
    match (&mut app.image.view, r.slot) {
        (ImageView::Pair { unsteered, .. }, ImageSlot::Unsteered) => {
            *unsteered = Some(Box::new(shown));
            app.image.unsteered_key = app.image.pending_key.take();
        }
        (ImageView::Pair { steered, .. }, ImageSlot::Steered) => {
            *steered = Some(Box::new(shown));
            app.image.steered_runs += 1;
        }
        (ImageView::Sheet { lambdas, cells, .. }, ImageSlot::Cell { row, col }) => {
            if col < lambdas.len()
                && let Some(c) = cells.get_mut(row * lambdas.len() + col)
            {
                *c = Some(shown);
            }
        }
        _ => {}
    }
}

/// An image job ended.
pub fn job_done(app: &mut StudioApp, id: usize, complete: bool) {
    if id != app.image.started {
        return;
    }
    app.image.generating = false;
    app.image.progress = None;
    if !complete {
        app.image.pending_key = None;
    }
}

/// The image (and its settings) that "Save" writes.
pub fn image_to_save(view: &ImageView, what: SaveWhat) -> Result<(RgbImage, ImageMeta), String> {
    let e = |e: crate::diffusion::DiffusionError| e.to_string();
    match view {
        ImageView::Empty => Err("no image to save yet: generate one first".into()),
        ImageView::Pair { unsteered, steered } => match (what, unsteered, steered) {
            (SaveWhat::SideBySide, Some(u), Some(s)) => Ok((
                side_by_side(&u.image, &s.image, "unsteered", "steered").map_err(e)?,
                s.meta.clone(),
            )),
            (SaveWhat::SideBySide, _, _) => Err("both images of the pair are needed".into()),
            (SaveWhat::Current, _, Some(s)) | (SaveWhat::Current, Some(s), None) => {
                Ok((s.image.clone(), s.meta.clone()))
            }
            (SaveWhat::Current, None, None) => Err("no image to save yet: generate one first".into()),
        },
        ImageView::Sheet {
            kind,
            lambdas,
            seeds,
            cells,
            ..
        } => {
            let images: Vec<RgbImage> = cells.iter().flatten().map(|s| s.image.clone()).collect();
            if images.len() != cells.len() {
                return Err(format!(
                    "the {} is incomplete ({} of {} images): generate it again",
                    if *kind == SheetKind::Strip {
                        "strip"
                    } else {
                        "grid"
                    },
                    images.len(),
                    cells.len()
                ));
            }
            let sheet = match kind {
                SheetKind::Strip => strip(&images, lambdas).map_err(e)?,
                SheetKind::Grid => {
                    let labels = GridLabels {
                        columns: lambdas
                            .iter()
                            .map(|&l| format!("λ={}", format_lambda(l)))
                            .collect(),
                        rows: seeds.iter().map(|s| format!("seed {s}")).collect(),
                    };
                    compose_grid(&images, lambdas.len(), GRID_GAP, &labels).map_err(e)?
                }
            };
            // The sheet's settings: the first seed, the concept at the largest λ shown (as the CLI).
            let top = (0..lambdas.len())
                .max_by(|&a, &b| lambdas[a].total_cmp(&lambdas[b]))
                .unwrap_or(0);
            let meta = cells
                .get(top)
                .and_then(|c| c.as_ref())
                .map(|s| s.meta.clone())
                .unwrap_or_default();
            Ok((sheet, meta))
        }
    }
}

/// Writes the shown image(s) with their settings to `path`, atomically.
pub fn save(app: &mut StudioApp, path: &Path, what: SaveWhat) {
    let r = image_to_save(&app.image.view, what)
        .and_then(|(img, meta)| save_png(path, &img, Some(&meta)).map_err(|e| e.to_string()));
    match r {
        Ok(()) => app.info(format!("saved {}", path.display())),
        Err(e) => app.error(format!("{}: {e}", path.display())),
    }
}

/// Fills the image settings (and λ of stack concepts with the same names) from a PNG.
pub fn load_settings(app: &mut StudioApp, path: &Path) {
    let m = match read_png_meta(path) {
        Ok(m) => m,
        Err(e) => {
            app.error(format!("cannot load settings: {e}"));
            return;
        }
    };
    let mut notes = Vec::new();
    let s = &mut app.settings.image;
    s.prompt = m.prompt.clone();
    s.negative = m.negative_prompt.clone();
    s.seed = m.seed;
    if m.steps > 0 {
        s.steps = m.steps;
    }
    if m.guidance.is_finite() {
        s.guidance = m.guidance;
    }
    if m.width > 0 && m.height > 0 {
        s.width = m.width;
        s.height = m.height;
    }
    match m.scheduler.parse::<SchedulerKind>() {
        Ok(k) => s.scheduler = k.name().to_string(),
        Err(_) if m.scheduler.is_empty() => {}
        Err(_) => notes.push(format!(
            "unknown sampler `{}` kept as {}",
            m.scheduler, s.scheduler
        )),
    }
    match m.steer_window {
        Some((a, b)) => {
            s.steer_all = false;
            s.steer_start = a;
            s.steer_end = b;
        }
        None => s.steer_all = true,
    }
    let mut set = 0;
    let mut missing = Vec::new();
    for (name, l) in &m.lambdas {
        match app.stack.iter_mut().find(|e| &e.concept.name == name) {
            Some(e) if l.is_finite() => {
                e.concept.lambda = *l;
                if *l > 1.0 {
                    e.extended = true;
                }
                if let Some((_, h)) = m.maps_sha256.iter().find(|(n, _)| n == name)
                    && *h != e.concept.maps.meta().data_sha256
                {
                    notes.push(format!("`{name}` has other maps than the image's"));
                }
                set += 1;
            }
            Some(_) => notes.push(format!("λ of `{name}` is not a number")),
            None => missing.push(name.clone()),
        }
    }
    if !missing.is_empty() {
        notes.push(format!("not in the stack: {}", missing.join(", ")));
    }
    if let Some(im) = &app.image_model
        && !m.model_fingerprint.is_empty()
        && m.model_fingerprint != im.fingerprint.weights_header_sha256
    {
        notes.push(format!("made with another model ({})", m.model));
    }
    let mut msg = format!(
        "settings from {}: seed {}, {} steps, {}×{}; λ set for {set} of {} concepts",
        path.display(),
        m.seed,
        m.steps,
        m.width,
        m.height,
        m.lambdas.len()
    );
    if !notes.is_empty() {
        msg.push_str(" (");
        msg.push_str(&notes.join("; "));
        msg.push(')');
    }
    app.info(msg);
}

/// Sends the image fit described by the form.
pub fn start_fit(app: &mut StudioApp) {
    let s = &app.settings.image;
    let concept = if s.fit_builtin {
        if s.fit_concept.trim().is_empty() {
            app.error("choose a built-in image concept".into());
            return;
        }
        ImageConceptSource::Builtin(s.fit_concept.trim().to_string())
    } else {
        if s.fit_source.trim().is_empty() || s.fit_target.trim().is_empty() {
            app.error("choose a source and a target prompt file (one prompt per line)".into());
            return;
        }
        ImageConceptSource::Files {
            source: s.fit_source.trim().into(),
            target: s.fit_target.trim().into(),
        }
    };
    let job = ImageFitJob {
        concept,
        name: Some(s.fit_name.trim().to_string()).filter(|n| !n.is_empty()),
        hooks: s.fit_hooks.clone(),
        method: app.image.fit_method,
        support: app.image.fit_support,
        limit: (s.fit_limit > 0).then_some(s.fit_limit),
        size: (s.fit_size > 0).then_some(s.fit_size),
        steps: Some(s.steps.max(1)),
        seed: s.seed,
    };
    app.send(Command::FitImage(Box::new(job)));
}

/// Display size of a `w`×`h` image in at most `max` points on its longer side.
fn fit_size(w: u32, h: u32, max: f32) -> egui::Vec2 {
    let (w, h) = (w.max(1) as f32, h.max(1) as f32);
    let f = max.max(16.0) / w.max(h);
    egui::vec2(w * f, h * f)
}

fn draw(ui: &mut egui::Ui, shown: Option<&Shown>, caption: &str, side: f32, placeholder: egui::Vec2) {
    ui.vertical(|ui| {
        ui.label(caption);
        match shown {
            Some(s) => {
                let size = fit_size(s.image.width(), s.image.height(), side);
                ui.add(egui::Image::new(egui::load::SizedTexture::new(
                    s.texture.id(),
                    size,
                )))
                .on_hover_text(format!(
                    "seed {}, {} steps, λ {}",
                    s.meta.seed,
                    s.meta.steps,
                    s.meta
                        .lambdas
                        .iter()
                        .map(|(n, l)| format!("{n}={}", format_lambda(*l)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            None => {
                let (rect, _) = ui.allocate_exact_size(placeholder, egui::Sense::hover());
                ui.painter().rect_filled(rect, 4.0, ui.visuals().faint_bg_color);
            }
        }
    });
}

/// The image settings and buttons, and the result.
pub fn show_output(app: &mut StudioApp, ui: &mut egui::Ui) {
    let Some(model) = app.image_model.clone() else {
        ui.label("Open a diffusion model folder (model panel) to generate images.");
        return;
    };
    let s = &mut app.settings.image;
    ui.add(
        egui::TextEdit::multiline(&mut s.prompt)
            .hint_text("prompt")
            .desired_rows(2)
            .desired_width(f32::INFINITY),
    );
    ui.add(
        egui::TextEdit::singleline(&mut s.negative)
            .hint_text("negative prompt (used with guidance > 1)")
            .desired_width(f32::INFINITY),
    );
    ui.horizontal_wrapped(|ui| {
        ui.label("seed");
        ui.add(egui::DragValue::new(&mut s.seed));
        if ui.button("random").on_hover_text("a new random seed").clicked() {
            s.seed = u64::from(rand::random::<u32>());
        }
        ui.label("steps");
        ui.add(egui::DragValue::new(&mut s.steps).range(1..=1000));
        ui.label("guidance");
        ui.add(egui::DragValue::new(&mut s.guidance).range(0.0..=50.0).speed(0.1))
            .on_hover_text("classifier-free guidance; ≤ 1 turns it off (Turbo models use 0)");
        ui.label("size");
        ui.add(egui::DragValue::new(&mut s.width).range(8..=4096).speed(8.0));
        ui.label("×");
        ui.add(egui::DragValue::new(&mut s.height).range(8..=4096).speed(8.0));
        egui::ComboBox::from_label("sampler")
            .selected_text(s.scheduler.clone())
            .show_ui(ui, |ui| {
                for k in SchedulerKind::ALL {
                    ui.selectable_value(&mut s.scheduler, k.name().to_string(), k.name());
                }
            });
    });
    ui.horizontal_wrapped(|ui| {
        ui.checkbox(&mut s.steer_all, "steer all steps");
        ui.add_enabled_ui(!s.steer_all, |ui| {
            ui.label("steer steps");
            ui.add(egui::DragValue::new(&mut s.steer_start).range(0..=1000));
            ui.label("to");
            ui.add(egui::DragValue::new(&mut s.steer_end).range(1..=1000))
                .on_hover_text("0-based, end excluded");
        });
        ui.small(format!(
            "{} ({}, {} hook points)",
            model.name,
            model.family,
            model.hook_points.len()
        ));
    });
    ui.horizontal_wrapped(|ui| {
        if ui
            .button("Generate")
            .on_hover_text("unsteered and steered, same seed")
            .clicked()
        {
            generate(app, ImageAction::Pair { steered_only: false });
        }
        ui.separator();
        let concepts = sheet_concepts(app);
        if !concepts.contains(&app.image.sheet_concept)
            && let Some(c) = concepts.first()
        {
            app.image.sheet_concept = c.clone();
        }
        egui::ComboBox::from_id_salt("sheet-concept")
            .selected_text(if concepts.is_empty() {
                "no image concept".to_string()
            } else {
                app.image.sheet_concept.clone()
            })
            .show_ui(ui, |ui| {
                for c in &concepts {
                    ui.selectable_value(&mut app.image.sheet_concept, c.clone(), c);
                }
            });
        ui.label("λ");
        ui.add(egui::TextEdit::singleline(&mut app.settings.image.strip_lambdas).desired_width(120.0));
        let ready = !concepts.is_empty();
        if ui
            .add_enabled(ready, egui::Button::new("λ strip"))
            .on_hover_text("one image per λ of the chosen concept, same seed")
            .clicked()
        {
            generate(app, ImageAction::Strip);
        }
        ui.separator();
        ui.label("grid λ");
        ui.add(egui::TextEdit::singleline(&mut app.settings.image.grid_lambdas).desired_width(90.0));
        ui.label("seeds");
        ui.add(egui::TextEdit::singleline(&mut app.settings.image.grid_seeds).desired_width(90.0));
        if ui
            .add_enabled(ready, egui::Button::new("λ × seed grid"))
            .on_hover_text("one row per seed, one column per λ")
            .clicked()
        {
            generate(app, ImageAction::Grid);
        }
    });
    ui.horizontal(|ui| {
        if app.image.generating {
            let (frac, text) = match app.image.progress {
                Some(p) if p.steps > 0 && p.images > 0 => (
                    (p.image * p.steps + p.step) as f32 / (p.images * p.steps) as f32,
                    format!(
                        "image {} of {}, step {} of {}",
                        p.image + 1,
                        p.images,
                        p.step,
                        p.steps
                    ),
                ),
                _ => (0.0, "starting…".to_string()),
            };
            ui.add(egui::ProgressBar::new(frac).text(text).desired_width(320.0));
            if ui.button("Cancel").clicked() {
                app.cancel();
            }
        }
        let has = !matches!(app.image.view, ImageView::Empty);
        if ui.add_enabled(has, egui::Button::new("Save PNG…")).clicked() {
            let d = rfd::FileDialog::new()
                .add_filter("PNG", &["png"])
                .set_file_name("image.png");
            app.dialog(d, true, false, |p| DialogResult::SaveImage(p, SaveWhat::Current));
        }
        if matches!(app.image.pair(), Some((Some(_), Some(_))))
            && ui
                .button("Save both…")
                .on_hover_text("unsteered and steered side by side")
                .clicked()
        {
            let d = rfd::FileDialog::new()
                .add_filter("PNG", &["png"])
                .set_file_name("pair.png");
            app.dialog(d, true, false, |p| {
                DialogResult::SaveImage(p, SaveWhat::SideBySide)
            });
        }
        if ui.button("Load settings from image…").clicked() {
            let d = rfd::FileDialog::new().add_filter("PNG", &["png"]);
            app.dialog(d, false, false, DialogResult::LoadImageSettings);
        }
    });
    ui.separator();
    show_result(app, ui);
}

fn show_result(app: &StudioApp, ui: &mut egui::Ui) {
    let avail = ui.available_width();
    let max_h = (ui.available_height() - 40.0).max(64.0);
    let s = &app.settings.image;
    let placeholder = |side: f32| fit_size(s.width as u32, s.height as u32, side);
    egui::ScrollArea::both()
        .id_salt("image-result")
        .show(ui, |ui| match &app.image.view {
            ImageView::Empty => {
                ui.label("Generate to see the unsteered and steered images side by side.");
            }
            ImageView::Pair { unsteered, steered } => {
                let side = ((avail - 24.0) / 2.0).min(max_h).min(768.0);
                ui.horizontal_top(|ui| {
                    draw(ui, unsteered.as_deref(), "unsteered", side, placeholder(side));
                    draw(ui, steered.as_deref(), "steered", side, placeholder(side));
                });
            }
            ImageView::Sheet {
                kind,
                concept,
                lambdas,
                seeds,
                cells,
            } => {
                let n = lambdas.len().max(1) as f32;
                let rows = if *kind == SheetKind::Strip {
                    1
                } else {
                    seeds.len().max(1)
                };
                let label_w = if *kind == SheetKind::Grid { 80.0 } else { 0.0 };
                let side = ((avail - label_w - 8.0 * n) / n)
                    .min((max_h - 24.0 * rows as f32) / rows as f32)
                    .clamp(48.0, 384.0);
                ui.small(format!("`{concept}`"));
                egui::Grid::new("image-sheet").spacing([8.0, 8.0]).show(ui, |ui| {
                    if *kind == SheetKind::Grid {
                        ui.label("");
                    }
                    for &l in lambdas {
                        ui.label(format!("λ={}", format_lambda(l)));
                    }
                    ui.end_row();
                    for r in 0..rows {
                        if *kind == SheetKind::Grid {
                            ui.label(format!("seed {}", seeds.get(r).copied().unwrap_or_default()));
                        }
                        for c in 0..lambdas.len() {
                            let cell = cells.get(r * lambdas.len() + c).and_then(Option::as_ref);
                            match cell {
                                Some(s) => {
                                    let size = fit_size(s.image.width(), s.image.height(), side);
                                    ui.add(egui::Image::new(egui::load::SizedTexture::new(
                                        s.texture.id(),
                                        size,
                                    )));
                                }
                                None => {
                                    let (rect, _) =
                                        ui.allocate_exact_size(placeholder(side), egui::Sense::hover());
                                    ui.painter().rect_filled(rect, 4.0, ui.visuals().faint_bg_color);
                                }
                            }
                        }
                        ui.end_row();
                    }
                });
            }
        });
}

/// The image-concept fit form (the fit panel in image mode).
pub fn show_fit(app: &mut StudioApp, ui: &mut egui::Ui) {
    let s = &mut app.settings.image;
    ui.horizontal(|ui| {
        ui.radio_value(&mut s.fit_builtin, true, "built-in concept");
        ui.radio_value(&mut s.fit_builtin, false, "prompt files");
    });
    if s.fit_builtin {
        let builtin = &app.image.builtin;
        egui::ComboBox::from_label("concept")
            .selected_text(s.fit_concept.clone())
            .height(400.0)
            .show_ui(ui, |ui| {
                for (name, help) in builtin {
                    ui.selectable_value(&mut s.fit_concept, name.clone(), name)
                        .on_hover_text(help);
                }
            });
    } else {
        let mut pick = None;
        ui.horizontal(|ui| {
            ui.label("source");
            ui.add(egui::TextEdit::singleline(&mut s.fit_source).desired_width(180.0))
                .on_hover_text("prompts moved away from, one per line");
            if ui.small_button("…").clicked() {
                pick = Some(true);
            }
        });
        ui.horizontal(|ui| {
            ui.label("target");
            ui.add(egui::TextEdit::singleline(&mut s.fit_target).desired_width(180.0))
                .on_hover_text("prompts moved towards, one per line");
            if ui.small_button("…").clicked() {
                pick = Some(false);
            }
        });
        if let Some(source) = pick {
            let d = rfd::FileDialog::new().add_filter("prompts", &["txt"]);
            if source {
                app.dialog(d, false, false, DialogResult::ImageSourceFile);
            } else {
                app.dialog(d, false, false, DialogResult::ImageTargetFile);
            }
        }
    }
    let s = &mut app.settings.image;
    ui.horizontal(|ui| {
        ui.label("name");
        ui.add(
            egui::TextEdit::singleline(&mut s.fit_name)
                .hint_text("default: the concept or target file")
                .desired_width(180.0),
        );
    });
    let f = &mut app.image;
    egui::ComboBox::from_label("method")
        .selected_text(f.fit_method.label())
        .show_ui(ui, |ui| {
            for m in Method::ALL {
                ui.selectable_value(&mut f.fit_method, m, m.label());
            }
        });
    egui::ComboBox::from_label("image support")
        .selected_text(f.fit_support.to_string())
        .show_ui(ui, |ui| {
            ui.selectable_value(
                &mut f.fit_support,
                Support::Unbounded,
                Support::Unbounded.to_string(),
            )
            .on_hover_text("maps fitted at one step act at every step: the default for images");
            for sup in Support::OFFERED {
                if sup != Support::Unbounded {
                    ui.selectable_value(&mut f.fit_support, sup, sup.to_string());
                }
            }
        });
    egui::ComboBox::from_label("hooks")
        .selected_text(s.fit_hooks.clone())
        .show_ui(ui, |ui| {
            for (p, help) in IMAGE_PRESETS {
                if ui
                    .selectable_label(s.fit_hooks == *p, *p)
                    .on_hover_text(*help)
                    .clicked()
                {
                    s.fit_hooks = p.to_string();
                }
            }
        });
    ui.horizontal(|ui| {
        ui.label("or");
        ui.add(egui::TextEdit::singleline(&mut s.fit_hooks).desired_width(180.0))
            .on_hover_text("hook point names or `prefix*` patterns, comma-separated");
    });
    ui.horizontal(|ui| {
        ui.label("prompts per side");
        ui.add(egui::DragValue::new(&mut s.fit_limit).range(0..=10_000))
            .on_hover_text("0 = all");
        ui.label("fitting size");
        ui.add(egui::DragValue::new(&mut s.fit_size).range(0..=4096).speed(8.0))
            .on_hover_text("pixels of the latents the activations come from; 0 = the model's");
    });
    let can = app.image_model.is_some() && app.running != Some(JobKind::FitImage);
    if ui
        .add_enabled(can, egui::Button::new("Fit image concept"))
        .on_hover_text("one denoising step of every prompt; the concept joins the steering stack")
        .clicked()
    {
        start_fit(app);
    }
    if app.running == Some(JobKind::FitImage)
        && let Some(p) = app.progress.clone()
    {
        ui.horizontal(|ui| {
            let frac = if p.total > 0 {
                p.done as f32 / p.total as f32
            } else {
                0.0
            };
            ui.add(
                egui::ProgressBar::new(frac)
                    .text(format!("{}/{} hook points", p.done, p.total))
                    .desired_width(220.0),
            );
            if ui.button("Cancel fit").clicked() {
                app.cancel();
            }
        });
    }
}

/// Regenerate-on-release in image mode: only when a pair is shown.
pub fn lambda_released(app: &mut StudioApp, delay: Duration) {
    if app.settings.live && app.image_model.is_some() && matches!(app.image.pair(), Some((Some(_), _))) {
        app.image.regenerate_at = Some(Instant::now() + delay);
    }
}
