//! Fit panel: method, hook preset or layer range, pooling, support, causal or simultaneous;
//! the fit runs on the worker (progress and Cancel in the status bar) and its concept joins
//! the steering stack. Maps are saved and loaded here too.

use eframe::egui;

use crate::pipeline::fit_concept::FitRequest;
use crate::pipeline::fit_model::Estimation;
use crate::pipeline::pooling::Pooling;
use crate::pipeline::presets::PRESETS;
use crate::transport::{Method, Support};
use crate::worker::Command;

use super::settings::Settings;
use super::{DialogResult, Mode, StudioApp};

/// The fit form.
#[derive(Debug, Clone)]
pub struct FitForm {
    /// Estimator.
    pub method: Method,
    /// Pooling.
    pub pooling: Pooling,
    /// Support (`None`: the method's default).
    pub support: Option<Support>,
    /// Causal estimation.
    pub causal: bool,
    /// At most this many samples per side (0 = all).
    pub limit: usize,
    /// Maps to save: stack index.
    pub save_index: usize,
}

impl FitForm {
    /// Defaults (the CLI's).
    pub fn from_settings(_s: &Settings) -> Self {
        Self {
            method: Method::LinearAct,
            pooling: Pooling::Mean,
            support: None,
            causal: true,
            limit: 0,
            save_index: 0,
        }
    }
}

/// Draws the panel (the image-concept form in image mode).
pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) {
    if app.mode == Mode::Image && app.image_model.is_some() {
        super::image::show_fit(app, ui);
        maps_row(app, ui);
        return;
    }
    ui.horizontal(|ui| {
        ui.label("name");
        ui.text_edit_singleline(&mut app.settings.concept_name);
    });
    let f = &mut app.fit;
    egui::ComboBox::from_label("method")
        .selected_text(f.method.label())
        .show_ui(ui, |ui| {
            // Joint maps are refused on text (pipeline::fit_model::JOINT_ON_TEXT).
            for m in Method::ALL.into_iter().filter(|m| !m.is_joint()) {
                ui.selectable_value(&mut f.method, m, m.label());
            }
        });
    let preset_base = app.settings.preset.split(':').next().unwrap_or("").to_string();
    egui::ComboBox::from_label("hook points")
        .selected_text(&app.settings.preset)
        .show_ui(ui, |ui| {
            for (p, help) in PRESETS {
                if ui
                    .selectable_label(preset_base == p, p)
                    .on_hover_text(help)
                    .clicked()
                {
                    app.settings.preset = p.to_string();
                }
            }
        });
    ui.horizontal(|ui| {
        ui.label("or");
        ui.add(egui::TextEdit::singleline(&mut app.settings.preset).desired_width(160.0))
            .on_hover_text(
                "a preset with a layer range (all-ln:0-14) or hook point names (layers.3.mlp_norm,…)",
            );
    });
    egui::ComboBox::from_label("pooling")
        .selected_text(f.pooling.name())
        .show_ui(ui, |ui| {
            for p in [Pooling::Mean, Pooling::Max, Pooling::Last] {
                ui.selectable_value(&mut f.pooling, p, p.name());
            }
        });
    let support_text = f
        .support
        .map_or(format!("{} (method default)", f.method.default_support()), |s| {
            s.to_string()
        });
    egui::ComboBox::from_label("support")
        .selected_text(support_text)
        .show_ui(ui, |ui| {
            ui.selectable_value(&mut f.support, None, "method default");
            for s in Support::OFFERED {
                ui.selectable_value(&mut f.support, Some(s), s.to_string());
            }
        });
    ui.checkbox(
        &mut f.causal,
        "causal (each layer fitted with the earlier maps applied)",
    );
    ui.horizontal(|ui| {
        ui.label("samples per side");
        ui.add(egui::DragValue::new(&mut f.limit).range(0..=100_000))
            .on_hover_text("0 = all");
    });
    let fitting = app.has_job(crate::worker::JobKind::Fit);
    let can_fit = app.model.is_some() && !app.settings.concept_name.trim().is_empty() && !fitting;
    ui.horizontal(|ui| {
        if ui
            .add_enabled(can_fit, egui::Button::new("Fit concept"))
            .on_disabled_hover_text("one fit at a time: wait for it or cancel it")
            .clicked()
        {
            start_fit(app);
        }
        if fitting && ui.button("Cancel fit").clicked() {
            app.cancel_kind(crate::worker::JobKind::Fit);
        }
    });
    maps_row(app, ui);
}

/// Save the maps of a stack concept, or load maps (for the language model or the diffusion
/// pipeline, whichever they were fitted on).
fn maps_row(app: &mut StudioApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        if !app.stack.is_empty() {
            let i = app.fit.save_index.min(app.stack.len() - 1);
            egui::ComboBox::from_id_salt("save-which")
                .selected_text(app.stack[i].concept.name.clone())
                .show_ui(ui, |ui| {
                    for (k, e) in app.stack.iter().enumerate() {
                        ui.selectable_value(&mut app.fit.save_index, k, &e.concept.name);
                    }
                });
            if ui.button("Save maps…").clicked() {
                let name = format!("{}.safetensors", app.stack[i].concept.name);
                let d = rfd::FileDialog::new()
                    .add_filter("maps", &["safetensors"])
                    .set_file_name(name);
                // The maps chosen now are saved, whatever happens to the stack meanwhile.
                let maps = app.stack[i].concept.maps.clone();
                app.dialog(d, true, false, move |p| DialogResult::SaveMaps(maps, p));
            }
        }
        let can_load = app.model.is_some() || app.image_model.is_some();
        if ui
            .add_enabled(can_load, egui::Button::new("Load maps…"))
            .clicked()
        {
            let d = rfd::FileDialog::new().add_filter("maps", &["safetensors"]);
            app.dialog(d, false, false, DialogResult::LoadMaps);
        }
        if can_load && !app.settings.recent_maps.is_empty() {
            let mut pick = None;
            ui.menu_button("recent maps", |ui| {
                for p in &app.settings.recent_maps {
                    let name = p
                        .file_name()
                        .map_or(p.display().to_string(), |n| n.to_string_lossy().into());
                    if ui
                        .selectable_label(false, name)
                        .on_hover_text(p.display().to_string())
                        .clicked()
                    {
                        pick = Some(p.clone());
                    }
                }
            });
            if let Some(p) = pick {
                app.send(Command::LoadMaps(p));
            }
        }
    });
}

/// Sends the fit described by the form and the concepts panel.
pub fn start_fit(app: &mut StudioApp) {
    let parse = |s: &str| {
        s.parse()
            .map_err(|e: crate::pipeline::dataset::DatasetError| e.to_string())
    };
    let (source, target) = match (parse(&app.settings.source), parse(&app.settings.target)) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => {
            app.error(e);
            return;
        }
    };
    let f = &app.fit;
    let job = FitRequest {
        name: app.settings.concept_name.trim().to_string(),
        source,
        target,
        limit: (f.limit > 0).then_some(f.limit),
        method: f.method,
        preset: app.settings.preset.clone(),
        pooling: f.pooling,
        support: f.support,
        estimation: if f.causal {
            Estimation::Causal
        } else {
            Estimation::Simultaneous
        },
        keep_samples: true,
    };
    if app.has_job(crate::worker::JobKind::Fit) {
        return;
    }
    app.send(Command::Fit(Box::new(job)));
}
