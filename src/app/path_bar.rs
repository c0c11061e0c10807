//! The path bar: every file action of the app by typed path, for desktops without a
//! file-picker service and for people who prefer to paste paths. The file buttons of the
//! panels open dialogs that end in the same actions.

use std::path::PathBuf;

use eframe::egui;

use crate::worker::Command;

use super::{StudioApp, output_panel};

/// Draws the bar: a path field and what can be done with it.
pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.label("path");
        ui.add(
            egui::TextEdit::singleline(&mut app.path_bar)
                .hint_text("type or paste a file or folder path")
                .desired_width(f32::INFINITY),
        );
    });
    let typed = app.path_bar.trim().to_string();
    let path = (!typed.is_empty()).then(|| PathBuf::from(typed));
    ui.horizontal_wrapped(|ui| {
        let has = path.is_some();
        if ui
            .add_enabled(has, egui::Button::new("Open model").small())
            .on_hover_text("a GGUF file or a Hugging Face folder")
            .clicked()
            && let Some(p) = path.clone()
        {
            app.load_model(p);
        }
        if ui
            .add_enabled(has, egui::Button::new("Open diffusion").small())
            .on_hover_text("a diffusers folder")
            .clicked()
            && let Some(p) = path.clone()
        {
            app.load_image_model(p);
        }
        let can_load = has && (app.model.is_some() || app.image_model.is_some());
        if ui
            .add_enabled(can_load, egui::Button::new("Load maps").small())
            .clicked()
            && let Some(p) = path.clone()
        {
            app.send(Command::LoadMaps(p));
        }
        let i = app.fit.save_index.min(app.stack.len().saturating_sub(1));
        let which = app
            .stack
            .get(i)
            .map(|e| (e.concept.name.clone(), e.concept.maps.clone()));
        if let Some((name, maps)) = which
            && ui
                .add_enabled(has, egui::Button::new("Save maps").small())
                .on_hover_text(format!("save `{name}` (chosen in the Fit panel) here"))
                .clicked()
            && let Some(p) = path.clone()
        {
            app.send(Command::SaveMaps(maps, p));
        }
        if ui
            .add_enabled(has, egui::Button::new("Export output").small())
            .on_hover_text("both columns and their settings, as Markdown")
            .clicked()
            && let Some(p) = path.clone()
        {
            output_panel::export_output(app, &p);
        }
        if ui
            .add_enabled(
                has && !app.history.is_empty(),
                egui::Button::new("Export history").small(),
            )
            .on_hover_text("every run as JSON Lines")
            .clicked()
            && let Some(p) = path
        {
            app.export_history(&p);
        }
    });
}
