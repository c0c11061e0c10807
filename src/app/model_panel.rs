//! Model panel: open a GGUF file or a Hugging Face folder, recent models, the local HF cache,
//! and what the loaded model is (architecture, sizes, hook points, fingerprint).

use eframe::egui;

use super::{DEMO_MODEL, DialogResult, StudioApp};

/// Draws the panel.
pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        if ui.button("Open GGUF…").clicked() {
            let d = rfd::FileDialog::new().add_filter("GGUF model", &["gguf"]);
            app.dialog(d, false, false, DialogResult::OpenModel);
        }
        if ui.button("Open folder…").clicked() {
            app.dialog(rfd::FileDialog::new(), false, true, DialogResult::OpenModel);
        }
        if ui
            .button("Open diffusion folder…")
            .on_hover_text(
                "a Stable Diffusion folder in the diffusers layout (model_index.json, unet/, vae/, …)",
            )
            .clicked()
        {
            app.dialog(rfd::FileDialog::new(), false, true, DialogResult::OpenImageModel);
        }
        ui.checkbox(&mut app.settings.image_half, "f16").on_hover_text(
            "load diffusion models in half precision: half the memory (SDXL: ≈ 5 instead of \
             10 GB for the UNet), usually slower on a CPU; applies to the next load",
        );
    });
    super::path_bar::show(app, ui);
    image_model(app, ui);
    match &app.model {
        Some(m) => {
            egui::Grid::new("model-info").num_columns(2).show(ui, |ui| {
                ui.label("file");
                ui.label(m.path.display().to_string());
                ui.end_row();
                ui.label("architecture");
                ui.label(&m.architecture);
                ui.end_row();
                ui.label("layers");
                ui.label(m.n_layers.to_string());
                ui.end_row();
                ui.label("hidden size");
                ui.label(m.hidden_size.to_string());
                ui.end_row();
                ui.label("vocabulary");
                ui.label(m.vocab_size.to_string());
                ui.end_row();
            });
            egui::CollapsingHeader::new(format!("{} hook points", m.hook_points.len()))
                .id_salt("hook-points")
                .show(ui, |ui| {
                    egui::ScrollArea::vertical().max_height(160.0).show(ui, |ui| {
                        for h in &m.hook_points {
                            ui.monospace(h);
                        }
                    });
                });
            ui.small(format!("fingerprint: {}", m.fingerprint));
        }
        None if app.busy() => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("loading…");
            });
        }
        None => {
            ui.label(format!(
                "No model loaded. The demo model (SmolLM2-135M-Instruct) belongs at {DEMO_MODEL}: \
                 run models/fetch-demo-model.sh, or open a GGUF file or a Hugging Face folder."
            ));
        }
    }
    let recent: Vec<_> = app
        .settings
        .recent_models
        .iter()
        .filter(|p| app.model.as_ref().is_none_or(|m| &m.path != *p))
        .cloned()
        .collect();
    if !recent.is_empty() {
        ui.label("recent:");
        for p in recent {
            if ui.small_button(p.display().to_string()).clicked() {
                app.load_model(p);
            }
        }
    }
    if !app.hf_cache.is_empty() {
        ui.label("in the Hugging Face cache:");
        let cached: Vec<_> = app
            .hf_cache
            .iter()
            .map(|c| (c.name.clone(), c.path.clone()))
            .collect();
        for (name, path) in cached {
            if ui
                .small_button(name)
                .on_hover_text(path.display().to_string())
                .clicked()
            {
                app.load_model(path);
            }
        }
    }
}

/// The loaded diffusion pipeline (or how to get one) and recent diffusion folders.
fn image_model(app: &mut StudioApp, ui: &mut egui::Ui) {
    match &app.image_model {
        Some(m) => {
            ui.label(format!(
                "image model: {} ({}, {}, {} hook points)",
                m.name,
                m.family,
                m.dtype,
                m.hook_points.len()
            ))
            .on_hover_text(m.path.display().to_string());
            ui.small(format!("fingerprint: {}", m.fingerprint));
        }
        None if app.running == Some(crate::worker::JobKind::LoadImageModel) => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("loading the diffusion model…");
            });
        }
        None => {}
    }
    let recent: Vec<_> = app
        .settings
        .recent_image_models
        .iter()
        .filter(|p| app.image_model.as_ref().is_none_or(|m| &m.path != *p))
        .cloned()
        .collect();
    if !recent.is_empty() {
        ui.label("recent diffusion folders:");
        for p in recent {
            if ui.small_button(p.display().to_string()).clicked() {
                app.load_image_model(p);
            }
        }
    }
    ui.separator();
}
