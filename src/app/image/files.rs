//! Saving what is shown as a PNG that carries its settings, and loading settings back from
//! such a PNG (the merge itself is `pipeline::image_sheet::apply_png_settings`).

use std::path::Path;

use image::RgbImage;

use crate::diffusion::image_io::{ImageMeta, read_png_meta, save_png, side_by_side};
use crate::diffusion::scheduler::SchedulerKind;
use crate::pipeline::image_sheet::{apply_png_settings, compose_sheet, sheet_settings_cell};

use super::super::StudioApp;
use super::*;

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
            let sheet = compose_sheet(&images, lambdas, seeds).map_err(e)?;
            let meta = cells
                .get(sheet_settings_cell(lambdas))
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
    let s = &mut app.settings.image;
    // The current settings as a request, overwritten by the file's (one merge for CLI and app).
    if s.scheduler.parse::<SchedulerKind>().is_err() {
        s.scheduler = SchedulerKind::EulerDiscrete.name().to_string();
    }
    let Ok(mut r) = s.to_request() else {
        return;
    };
    let mut notes = apply_png_settings(&mut r, &m);
    s.set_request(&r);
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
