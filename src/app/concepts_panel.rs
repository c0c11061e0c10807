//! Concepts panel: built-in concepts and user datasets (any spec: `FILE[#FIELD][,NAME=VALUE]`
//! or `builtin:NAME`), an inline editor with counts and token lengths, and "make a concept
//! from a description" with the loaded model.

use std::path::Path;

use eframe::egui;

use crate::pipeline::concepts::manifest;
use crate::pipeline::dataset::{DatasetSpec, save_lines};
use crate::worker::Command;

use super::{DialogResult, StudioApp};

/// Draws the panel.
pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) {
    let current = manifest()
        .concepts
        .iter()
        .find(|c| {
            format!("builtin:{}", c.source) == app.settings.source
                && format!("builtin:{}", c.target) == app.settings.target
        })
        .map_or("(your datasets)".to_string(), |c| c.name.clone());
    egui::ComboBox::from_label("built-in concept")
        .selected_text(current)
        .show_ui(ui, |ui| {
            for c in &manifest().concepts {
                if ui
                    .selectable_label(false, &c.name)
                    .on_hover_text(&c.description)
                    .clicked()
                {
                    app.settings.source = format!("builtin:{}", c.source);
                    app.settings.target = format!("builtin:{}", c.target);
                    app.settings.concept_name = c.name.clone();
                }
            }
        });
    dataset_row(app, ui, true);
    dataset_row(app, ui, false);
    user_datasets(app, ui);
    ui.horizontal(|ui| {
        ui.add(
            egui::TextEdit::singleline(&mut app.describe)
                .hint_text("describe a concept, e.g. rainy autumn days")
                .desired_width(170.0),
        );
        ui.add(
            egui::DragValue::new(&mut app.describe_samples)
                .range(4..=500)
                .suffix(" sentences"),
        );
        let ready = app.model.is_some() && !app.describe.trim().is_empty();
        if ui
            .add_enabled(ready, egui::Button::new("Make"))
            .on_hover_text("sample sentences about it from the loaded model")
            .clicked()
        {
            let (description, samples) = (app.describe.trim().to_string(), app.describe_samples);
            app.send(Command::MakeConcept { description, samples });
        }
    });
    editor(app, ui);
}

fn dataset_row(app: &mut StudioApp, ui: &mut egui::Ui, source: bool) {
    ui.horizontal(|ui| {
        ui.label(if source { "source" } else { "target" });
        let text = if source {
            &mut app.settings.source
        } else {
            &mut app.settings.target
        };
        ui.add(egui::TextEdit::singleline(text).desired_width(170.0))
            .on_hover_text("FILE (.txt, .jsonl, .csv, .json)[#FIELD][,NAME=VALUE…] or builtin:NAME");
        let spec = text.clone();
        if ui.small_button("…").on_hover_text("choose a file").clicked() {
            let d = rfd::FileDialog::new().add_filter("datasets", &["txt", "jsonl", "csv", "tsv", "json"]);
            app.dialog(
                d,
                false,
                false,
                if source {
                    DialogResult::SourceFile
                } else {
                    DialogResult::TargetFile
                },
            );
        }
        if ui
            .small_button("view")
            .on_hover_text("open in the editor")
            .clicked()
        {
            match spec.parse::<DatasetSpec>() {
                Ok(s) => app.send(Command::LoadDataset(s)),
                Err(e) => app.error(e.to_string()),
            }
        }
    });
}

/// The user's datasets: use one as source or target, view it, remove it from the list.
fn user_datasets(app: &mut StudioApp, ui: &mut egui::Ui) {
    egui::CollapsingHeader::new(format!("your datasets ({})", app.settings.user_datasets.len()))
        .id_salt("user-datasets")
        .show(ui, |ui| {
            let mut remove = None;
            for (i, spec) in app.settings.user_datasets.clone().into_iter().enumerate() {
                ui.horizontal(|ui| {
                    ui.label(&spec);
                    if ui.small_button("source").clicked() {
                        app.settings.source = spec.clone();
                    }
                    if ui.small_button("target").clicked() {
                        app.settings.target = spec.clone();
                    }
                    if ui.small_button("view").clicked() {
                        match spec.parse::<DatasetSpec>() {
                            Ok(s) => app.send(Command::LoadDataset(s)),
                            Err(e) => app.error(e.to_string()),
                        }
                    }
                    if ui
                        .small_button("remove")
                        .on_hover_text("from this list; the file stays")
                        .clicked()
                    {
                        remove = Some(i);
                    }
                });
            }
            if let Some(i) = remove {
                app.settings.user_datasets.remove(i);
            }
            if ui.button("Add file…").clicked() {
                let d =
                    rfd::FileDialog::new().add_filter("datasets", &["txt", "jsonl", "csv", "tsv", "json"]);
                app.dialog(d, false, false, DialogResult::AddDataset);
            }
        });
}

fn editor(app: &mut StudioApp, ui: &mut egui::Ui) {
    let Some(ed) = app.editor.as_mut() else { return };
    ui.separator();
    let lines: Vec<&str> = ed.text.lines().filter(|l| !l.trim().is_empty()).collect();
    let n = lines.len();
    let stats = if ed.token_lens.len() == n && n > 0 {
        let mean = ed.token_lens.iter().sum::<usize>() as f64 / n as f64;
        let max = ed.token_lens.iter().max().copied().unwrap_or(0);
        format!("{n} samples, {mean:.1} tokens on average, longest {max}")
    } else {
        format!("{n} samples")
    };
    ui.label(format!("{} — {stats}", ed.origin));
    egui::ScrollArea::vertical()
        .max_height(180.0)
        .id_salt("editor")
        .show(ui, |ui| {
            ui.add(
                egui::TextEdit::multiline(&mut ed.text)
                    .desired_width(f32::INFINITY)
                    .desired_rows(8),
            );
        });
    let mut close = false;
    ui.horizontal(|ui| {
        if ui.button("Save as…").clicked() {
            let d = rfd::FileDialog::new()
                .add_filter("text", &["txt"])
                .set_file_name("concept.txt");
            app.dialog(d, true, false, DialogResult::SaveDataset);
        }
        if ui.button("Close").clicked() {
            close = true;
        }
    });
    if close {
        app.editor = None;
    }
}

/// Saves the editor's samples (one per line, atomically) and uses the file as the target set.
pub fn save_editor(app: &mut StudioApp, path: &Path) {
    let Some(ed) = &app.editor else { return };
    let samples: Vec<String> = ed.text.lines().map(str::to_string).collect();
    match save_lines(path, &samples) {
        Ok(()) => {
            app.settings.target = path.display().to_string();
            app.settings.add_dataset(app.settings.target.clone());
            if let Some(stem) = path.file_stem() {
                app.settings.concept_name = stem.to_string_lossy().into_owned();
            }
            app.info(format!("saved {} and chose it as the target set", path.display()));
        }
        Err(e) => app.error(e.to_string()),
    }
}
