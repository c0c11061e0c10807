//! The image-concept fit form: built-in concept or prompt files, method, support, hooks,
//! causal or simultaneous; it sends an `ImageFitRequest` to the worker.

use eframe::egui;

use crate::pipeline::diffusion_fit::{DEFAULT_IMAGE_PRESET, IMAGE_PRESETS};
use crate::pipeline::fit_image_concept::{ImageConceptSource, ImageFitRequest, SamplePooling};
use crate::pipeline::fit_model::Estimation;
use crate::transport::{Method, Support};
use crate::worker::{Command, JobKind};

use super::super::{DialogResult, StudioApp};

/// The method entry that leaves the choice to the concept.
const CONCEPT_METHOD: &str = "as the concept asks";

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
    let req = ImageFitRequest {
        concept,
        name: Some(s.fit_name.trim().to_string()).filter(|n| !n.is_empty()),
        hooks: s.fit_hooks.clone(),
        method: app.image.fit_method,
        support: app.image.fit_support,
        limit: s.fit_limit,
        size: (s.fit_size > 0).then_some(s.fit_size),
        steps: Some(s.steps.max(1)),
        seed: s.seed,
        estimation: if s.fit_simultaneous && !s.fit_trajectory {
            Estimation::Simultaneous
        } else {
            Estimation::Causal
        },
        chunk: s.fit_chunk.max(1),
        trajectory: s.fit_trajectory,
        pooling: SamplePooling::parse(&s.fit_pooling),
    };
    app.send(Command::FitImage(Box::new(req)));
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
        .selected_text(f.fit_method.map_or(CONCEPT_METHOD, |m| m.label()))
        .show_ui(ui, |ui| {
            ui.selectable_value(&mut f.fit_method, None, CONCEPT_METHOD)
                .on_hover_text("the method the concept names (the demo model's negate:* use Joint Gaussian OT), else Linear-AcT");
            for m in Method::ALL {
                ui.selectable_value(&mut f.fit_method, Some(m), m.label());
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
    let shown = if s.fit_hooks.trim().is_empty() {
        "as the concept asks".to_string()
    } else {
        s.fit_hooks.clone()
    };
    egui::ComboBox::from_label("hooks")
        .selected_text(shown)
        .show_ui(ui, |ui| {
            if ui
                .selectable_label(s.fit_hooks.trim().is_empty(), "as the concept asks")
                .on_hover_text(format!(
                    "the model folder's concepts may name their hook points (negations: the cross-attention outputs); others use {DEFAULT_IMAGE_PRESET}"
                ))
                .clicked()
            {
                s.fit_hooks.clear();
            }
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
    ui.horizontal(|ui| {
        let shown = match SamplePooling::parse(&s.fit_pooling) {
            Some(SamplePooling::Mean) => "one per prompt (mean)",
            Some(SamplePooling::Positions) => "every pixel / token",
            None => "as the concept asks",
        };
        egui::ComboBox::new("image_fit_pooling", "samples")
            .selected_text(shown)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut s.fit_pooling, String::new(), "as the concept asks")
                    .on_hover_text("the model folder's concepts may ask for every pixel; others use the mean");
                ui.selectable_value(&mut s.fit_pooling, "mean".into(), "one per prompt (mean)")
                    .on_hover_text("the paper's rule: each prompt's mean over pixels or tokens; 4-D maps shift whole channels");
                ui.selectable_value(&mut s.fit_pooling, "positions".into(), "every pixel / token")
                    .on_hover_text(
                        "each pixel or token is a sample and the maps act pixel by pixel: for local \
                         features such as textures (pixel art), which per-prompt means dilute",
                    );
            });
    });
    ui.checkbox(&mut s.fit_trajectory, "along the denoising trajectory")
        .on_hover_text(
            "one map per denoising step, fitted causally on the activations it will meet and \
             acting on the prompt's (conditional) branch, so guidance amplifies it: what makes \
             λ = 1 reach the target on models with guidance. Takes the steps × the time of a \
             first-step fit. Off: one map per hook point from the first step, on every branch",
        );
    ui.add_enabled_ui(!s.fit_trajectory, |ui| {
        ui.horizontal(|ui| {
            ui.checkbox(&mut s.fit_simultaneous, "simultaneous")
                .on_hover_text(
                    "fit every map on unsteered activations, a few prompts per pass: bounded \
                     memory for many prompts (causal, the default, runs all prompts as one batch)",
                );
            ui.add_enabled_ui(s.fit_simultaneous, |ui| {
                ui.label("prompts per pass");
                ui.add(egui::DragValue::new(&mut s.fit_chunk).range(1..=256));
            });
        });
    });
    let can = app.image_model.is_some() && app.running != Some(JobKind::FitImage);
    if ui
        .add_enabled(can, egui::Button::new("Fit image concept"))
        .on_hover_text("the concept's prompts go through the model; the concept joins the steering stack")
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
                    .text(format!("{}/{} maps", p.done, p.total))
                    .desired_width(220.0),
            );
            if ui.button("Cancel fit").clicked() {
                app.cancel_kind(JobKind::FitImage);
            }
        });
    }
}
