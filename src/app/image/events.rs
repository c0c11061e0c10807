//! Worker events of image jobs: a pipeline loaded or dropped, step progress, an image
//! arrived (its texture is made once, here), a job ended.

use std::time::Instant;

use eframe::egui;
use image::RgbImage;

use crate::pipeline::image_sheet::ImageSlot;
use crate::worker::{ImageModelInfo, ImagePreview, ImageProgress, ImageResult, Progress};

use super::super::{Mode, StudioApp};
use super::*;

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
    app.settings.image.set_sampling(r);
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
    let fp = info.fingerprint.to_string();
    app.image.builtin = info.concepts.clone();
    app.image_model = Some(info);
    if app.image.show_on_load {
        app.mode = Mode::Image;
    }
    app.image.show_on_load = true;
    app.restore_stack_for(&fp);
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
    let p = p.at;
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

/// A per-step preview arrived: it shows in its slot until the image itself arrives.
pub fn preview_arrived(app: &mut StudioApp, p: ImagePreview) {
    if p.id != app.image.started {
        return;
    }
    let (w, h) = p.image.dimensions();
    app.image.preview = Some(Preview {
        slot: p.slot,
        step: p.step,
        steps: p.steps,
        texture: texture(&app.ctx, "image-preview".into(), &p.image),
        size: [w, h],
    });
}

/// An image arrived: make its texture once and put it in its place.
pub fn image_arrived(app: &mut StudioApp, r: ImageResult) {
    if r.id != app.image.started {
        return;
    }
    if app.image.preview.as_ref().is_some_and(|p| p.slot == r.slot) {
        app.image.preview = None;
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
    app.image.preview = None;
    if !complete {
        app.image.pending_key = None;
    }
}
