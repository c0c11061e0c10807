//! Steering panel: the stack of concepts, each with its λ as a number (the sliders are in the
//! λ bar above the output), on/off, range (±1 or ±2), order and remove; the token scope.
//! Every change to the stack regenerates the output.

use eframe::egui;

use crate::transport::TokenScope;

use super::{Mode, StudioApp};

/// Draws the panel.
pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) {
    if app.stack.is_empty() {
        ui.label("No concepts yet: fit one or load maps.");
    }
    let mut released = false;
    let mut remove = None;
    let mut swap = None;
    let n = app.stack.len();
    for (i, e) in app.stack.iter_mut().enumerate() {
        ui.horizontal(|ui| {
            released |= ui
                .checkbox(&mut e.concept.enabled, "")
                .on_hover_text("on/off")
                .changed();
            ui.strong(&e.concept.name);
            let r = super::lambda_bar::range(e);
            let value = ui.add(
                egui::DragValue::new(&mut e.concept.lambda)
                    .range(r)
                    .speed(0.01)
                    .fixed_decimals(2)
                    .prefix("λ "),
            );
            if value.drag_stopped() || (value.changed() && !value.dragged()) {
                released = true;
            }
            if e.concept.lambda.abs() > 1.0 {
                ui.colored_label(egui::Color32::from_rgb(230, 160, 40), "extrapolate");
            }
        });
        ui.horizontal(|ui| {
            ui.add_space(24.0);
            ui.checkbox(&mut e.extended, "±2")
                .on_hover_text("λ from −2 to 2 (extrapolation) instead of −1 to 1");
            if !e.extended && e.concept.lambda.abs() > 1.0 {
                e.concept.lambda = e.concept.lambda.clamp(-1.0, 1.0);
                released = true;
            }
            if ui
                .add_enabled(i > 0, egui::Button::new("up").small())
                .on_hover_text("apply earlier")
                .clicked()
            {
                swap = Some((i - 1, i));
            }
            if ui
                .add_enabled(i + 1 < n, egui::Button::new("down").small())
                .on_hover_text("apply later")
                .clicked()
            {
                swap = Some((i, i + 1));
            }
            if ui.small_button("remove").on_hover_text("remove").clicked() {
                remove = Some(i);
            }
            let meta = e.concept.maps.meta();
            ui.small(format!(
                "{}, {} hooks, {}",
                meta.method.label(),
                meta.hook_points.len(),
                meta.fingerprint.architecture
            ));
        });
    }
    if let Some((a, b)) = swap {
        app.stack.swap(a, b);
        released = true;
    }
    if let Some(i) = remove {
        app.stack.remove(i);
        app.plots.concept = 0;
        app.plots.invalidate();
        released = true;
    }
    let before = app.scope;
    if app.mode == Mode::Text {
        egui::ComboBox::from_label("token scope")
            .selected_text(app.scope.name())
            .show_ui(ui, |ui| {
                for s in [
                    TokenScope::All,
                    TokenScope::LastToken,
                    TokenScope::PromptOnly,
                    TokenScope::GeneratedOnly,
                ] {
                    ui.selectable_value(&mut app.scope, s, s.name());
                }
            });
    }
    ui.checkbox(&mut app.settings.live, "regenerate when a slider is released");
    if released || before != app.scope {
        app.lambda_released();
    }
}
