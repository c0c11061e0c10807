//! The λ bar above the output: one slider per concept of the mode's stack (text concepts in
//! text mode, the pipeline's image concepts in image mode), right beside what it steers.
//! λ runs from −1 to 1 (negative pushes away from the target), or −2 to 2 with "±2"
//! (extrapolation). Releasing a slider or switching a concept on or off regenerates.

use eframe::egui;

use super::{Mode, StackEntry, StudioApp};

/// The λ range of an entry.
pub fn range(e: &StackEntry) -> std::ops::RangeInclusive<f32> {
    if e.extended { -2.0..=2.0 } else { -1.0..=1.0 }
}

/// Whether this entry steers the output of `mode`.
fn belongs(app: &StudioApp, e: &StackEntry, mode: Mode) -> bool {
    let fp = &e.concept.maps.meta().fingerprint;
    match mode {
        Mode::Text => !fp.is_diffusion(),
        Mode::Image => app.image_model.as_ref().map(|m| &m.fingerprint) == Some(fp),
    }
}

/// Draws the bar (nothing when the mode has no concept).
pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) {
    let mode = app.mode;
    let shown: Vec<usize> = (0..app.stack.len())
        .filter(|&i| belongs(app, &app.stack[i], mode))
        .collect();
    if shown.is_empty() {
        return;
    }
    let mut changed = false;
    ui.horizontal_wrapped(|ui| {
        ui.strong("λ");
        for i in shown {
            let e = &mut app.stack[i];
            let (name, r) = (e.concept.name.clone(), range(e));
            ui.group(|ui| {
                changed |= ui
                    .checkbox(&mut e.concept.enabled, "")
                    .on_hover_text("on/off")
                    .changed();
                let slider = ui.add(
                    egui::Slider::new(&mut e.concept.lambda, r)
                        .text(name)
                        .fixed_decimals(2),
                );
                if slider.drag_stopped() || (slider.changed() && !slider.dragged()) {
                    changed = true;
                }
                if e.concept.lambda.abs() > 1.0 {
                    ui.colored_label(egui::Color32::from_rgb(230, 160, 40), "extrapolating");
                }
            });
        }
    });
    if changed {
        app.lambda_released();
    }
}
