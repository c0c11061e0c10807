//! The image settings form, the Generate / strip / grid buttons and the images on screen.

use std::time::{Duration, Instant};

use eframe::egui;

use crate::diffusion::image_io::format_lambda;
use crate::diffusion::pipeline::ImageRequest;
use crate::diffusion::scheduler::SchedulerKind;
use crate::diffusion::steer::StepWindow;
use crate::pipeline::image_sheet::{ImageJob, ImageJobKind, ImageSlot};
use crate::pipeline::presets::parse_lambda_list;
use crate::worker::{Command, JobKind};

use super::super::{DialogResult, StudioApp};
use super::*;

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
    let r = app.settings.image.to_request()?;
    if r.prompt.trim().is_empty() {
        return Err("write a prompt first".into());
    }
    Ok(r)
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

/// Starts an image job, or, while another kind of job runs (a fit, a model or maps load),
/// keeps it waiting: [`StudioApp::pump`] starts it once the worker is free, built from the
/// settings and stack of that moment.
pub fn generate(app: &mut StudioApp, action: ImageAction) {
    if app.image_model.is_none() {
        app.error("open a diffusion model folder first".into());
        return;
    }
    if app.jobs.iter().any(|t| t.kind != JobKind::GenerateImages) {
        // A waiting pair with both images stays one with both.
        let keep_both = matches!(app.image.queued, Some(ImageAction::Pair { steered_only: false }));
        app.image.queued = match action {
            ImageAction::Pair { .. } if keep_both => Some(ImageAction::Pair { steered_only: false }),
            a => Some(a),
        };
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
    // A newer image job supersedes a running or waiting one (and no other kind of job).
    app.cancel_kind(JobKind::GenerateImages);
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
        kind,
        request: req,
        stack: app.image_stack(),
        window,
    };
    app.send(Command::GenerateImages(app.image.started, Box::new(job)));
}

/// Display size of a `w`×`h` image in at most `max` points on its longer side.
fn fit_size(w: u32, h: u32, max: f32) -> egui::Vec2 {
    let (w, h) = (w.max(1) as f32, h.max(1) as f32);
    let f = max.max(16.0) / w.max(h);
    egui::vec2(w * f, h * f)
}

/// A slot's picture: the preview of the image being made for it, else its image, else an
/// empty frame.
fn draw(
    ui: &mut egui::Ui,
    shown: Option<&Shown>,
    preview: Option<&Preview>,
    caption: &str,
    side: f32,
    placeholder: egui::Vec2,
) {
    ui.vertical(|ui| {
        match preview {
            Some(p) => ui.label(format!("{caption} · step {}/{}", p.step, p.steps)),
            None => ui.label(caption),
        };
        if let Some(p) = preview {
            show_preview(ui, p, side);
            return;
        }
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

/// A preview, scaled to `side` like the image it stands for.
fn show_preview(ui: &mut egui::Ui, p: &Preview, side: f32) {
    let size = fit_size(p.size[0], p.size[1], side);
    ui.add(egui::Image::new(egui::load::SizedTexture::new(
        p.texture.id(),
        size,
    )))
    .on_hover_text(format!("preview after step {} of {}", p.step, p.steps));
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
            let (frac, text) = match app.image.progress.map(|p| p.at) {
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
                app.cancel_kind(JobKind::GenerateImages);
            }
        }
        if app.image.queued.is_some() {
            let what = app.jobs.front().map_or("the worker", |t| t.kind.describe());
            ui.colored_label(
                egui::Color32::from_rgb(230, 160, 40),
                format!("waiting for {what} to end"),
            );
            if ui.button("Cancel").clicked() {
                app.image.queued = None;
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
                let preview = app.image.preview.as_ref();
                ui.horizontal_top(|ui| {
                    draw(
                        ui,
                        unsteered.as_deref(),
                        Preview::of(preview, ImageSlot::Unsteered),
                        "unsteered",
                        side,
                        placeholder(side),
                    );
                    draw(
                        ui,
                        steered.as_deref(),
                        Preview::of(preview, ImageSlot::Steered),
                        "steered",
                        side,
                        placeholder(side),
                    );
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
                            let slot = ImageSlot::Cell { row: r, col: c };
                            if let Some(p) = Preview::of(app.image.preview.as_ref(), slot) {
                                show_preview(ui, p, side);
                                continue;
                            }
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

/// Regenerate-on-release in image mode: only when a pair is shown.
pub fn lambda_released(app: &mut StudioApp, delay: Duration) {
    if app.settings.live && app.image_model.is_some() && matches!(app.image.pair(), Some((Some(_), _))) {
        app.image.regenerate_at = Some(Instant::now() + delay);
    }
}
