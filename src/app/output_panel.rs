//! Output panel: the λ bar, prompt and sampling settings, Generate/Stop, the unsteered and
//! steered columns side by side (same seed, streaming together), each headed by the settings
//! that made it (marked when they no longer match the form), the run history, and the λ
//! sweep.

use std::path::Path;

use eframe::egui;

use crate::transport::atomic_write;

use super::{DialogResult, Mode, RunSettings, StudioApp};

/// Draws the panel: the Text / Image switch, then the mode's output.
pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.selectable_value(&mut app.mode, Mode::Text, "Text");
        let can = app.image_model.is_some();
        ui.add_enabled_ui(can, |ui| {
            ui.selectable_value(&mut app.mode, Mode::Image, "Image")
                .on_disabled_hover_text("open a diffusion model folder first");
        });
        if !can {
            ui.small("image mode: open a diffusers folder in the Model panel (button or path bar)");
        }
    });
    super::lambda_bar::show(app, ui);
    if app.mode == Mode::Image && app.image_model.is_some() {
        super::image::show_output(app, ui);
        return;
    }
    show_text(app, ui);
}

fn show_text(app: &mut StudioApp, ui: &mut egui::Ui) {
    ui.add(
        egui::TextEdit::multiline(&mut app.settings.prompt)
            .hint_text("prompt (Ctrl+Enter generates, Esc stops)")
            .desired_rows(2)
            .desired_width(f32::INFINITY),
    );
    ui.horizontal_wrapped(|ui| {
        ui.checkbox(&mut app.settings.chat, "chat");
        ui.label("max tokens");
        ui.add(egui::DragValue::new(&mut app.settings.max_tokens).range(1..=2048));
        ui.label("temperature");
        ui.add(
            egui::DragValue::new(&mut app.settings.temperature)
                .range(0.0..=2.0)
                .speed(0.05),
        )
        .on_hover_text("0 = greedy");
        let sampled = app.settings.temperature > 0.0;
        ui.add_enabled_ui(sampled, |ui| {
            ui.label("top-k");
            ui.add(egui::DragValue::new(&mut app.settings.top_k).range(0..=1000))
                .on_hover_text("0 = off");
            ui.label("top-p");
            ui.add(
                egui::DragValue::new(&mut app.settings.top_p)
                    .range(0.01..=1.0)
                    .speed(0.01),
            )
            .on_hover_text("1 = off");
        });
        ui.label("seed");
        ui.add(egui::DragValue::new(&mut app.settings.seed));
        ui.checkbox(&mut app.settings.seed_locked, "lock")
            .on_hover_text("keep the seed between generations");
    });
    if app.settings.chat {
        ui.horizontal(|ui| {
            ui.label("system");
            ui.add(
                egui::TextEdit::singleline(&mut app.settings.system)
                    .hint_text("system prompt (optional)")
                    .desired_width(f32::INFINITY),
            );
        });
    }
    ui.horizontal_wrapped(|ui| {
        let can = app.model.is_some();
        if ui
            .add_enabled(can, egui::Button::new("Generate"))
            .on_hover_text("Ctrl+Enter")
            .clicked()
        {
            app.generate(false);
        }
        let stoppable = app.output.generating || app.output.queued.is_some();
        if ui
            .add_enabled(stoppable, egui::Button::new("Stop"))
            .on_hover_text("Esc: stops the generation (a fit goes on)")
            .clicked()
        {
            app.stop_generation();
        }
        if app.output.queued.is_some()
            && let Some(kind) = app.jobs.front().map(|t| t.kind)
        {
            ui.colored_label(
                egui::Color32::from_rgb(230, 160, 40),
                format!("waiting for {} to end", kind.describe()),
            );
        }
        if let Some(t) = app.output.release_to_token {
            ui.small(format!(
                "slider release to first steered token: {:.0} ms",
                t.as_secs_f64() * 1e3
            ));
        }
    });
    ui.separator();
    let height = (ui.available_height() * 0.5).max(120.0);
    let now = app.run_settings();
    let heads = [
        column_head(app.output.unsteered_run.as_ref(), &now.unsteered(), false),
        column_head(app.output.steered_run.as_ref(), &now, true),
    ];
    ui.columns(2, |cols| {
        column(
            &mut cols[0],
            "Unsteered",
            "out-unsteered",
            &app.output.unsteered,
            &heads[0],
            height,
        );
        column(
            &mut cols[1],
            "Steered",
            "out-steered",
            &app.output.steered,
            &heads[1],
            height,
        );
    });
    ui.horizontal_wrapped(|ui| {
        if ui.button("Copy both").clicked() {
            ui.ctx().copy_text(output_text(app));
        }
        if ui.button("Export…").clicked() {
            let d = rfd::FileDialog::new()
                .add_filter("text", &["md", "txt"])
                .set_file_name("steering.md");
            app.dialog(d, true, false, DialogResult::ExportOutput);
        }
        history(app, ui);
    });
    ui.separator();
    super::sweep_panel::show(app, ui);
}

/// What a column's header says: the settings that made it, and whether they still match.
struct Head {
    text: String,
    stale: bool,
}

fn column_head(made: Option<&RunSettings>, now: &RunSettings, steered: bool) -> Head {
    match made {
        Some(r) => Head {
            text: r.describe(steered),
            stale: r != now,
        },
        None => Head {
            text: String::new(),
            stale: false,
        },
    }
}

fn column(ui: &mut egui::Ui, title: &str, id: &str, text: &str, head: &Head, height: f32) {
    ui.horizontal_wrapped(|ui| {
        ui.strong(title);
        if head.stale {
            ui.colored_label(egui::Color32::from_rgb(230, 160, 40), "settings changed")
                .on_hover_text("made with other settings than the form's: generate again");
        }
    });
    if !head.text.is_empty() {
        ui.small(&head.text);
    }
    egui::ScrollArea::vertical()
        .id_salt(id)
        .max_height(height)
        .stick_to_bottom(true)
        .show(ui, |ui| {
            ui.add(egui::Label::new(text).wrap());
        });
}

/// The run history: reopen a run, export them all as JSON Lines.
fn history(app: &mut StudioApp, ui: &mut egui::Ui) {
    if app.history.is_empty() {
        return;
    }
    let mut open = None;
    egui::ComboBox::from_id_salt("history")
        .selected_text(format!("history ({})", app.history.len()))
        .width(220.0)
        .show_ui(ui, |ui| {
            for (i, r) in app.history.iter().enumerate().rev() {
                if ui.selectable_label(false, r.title()).clicked() {
                    open = Some(i);
                }
            }
        })
        .response
        .on_hover_text("finished runs, newest first: pick one to show it again");
    if let Some(i) = open {
        app.reopen_run(i);
    }
    if ui.button("Export history…").clicked() {
        let d = rfd::FileDialog::new()
            .add_filter("JSON Lines", &["jsonl"])
            .set_file_name("runs.jsonl");
        app.dialog(d, true, false, DialogResult::ExportHistory);
    }
}

/// Both columns as Markdown, each with what reproduces it: the model (path and
/// fingerprint), the prompt and sampling settings, and for the steered column each concept's
/// λ and maps hash and the token scope (as recorded when it was generated).
fn output_text(app: &StudioApp) -> String {
    let model = app.model.as_ref().map_or("(none)".to_string(), |m| {
        format!("{} ({})", m.path.display(), m.fingerprint)
    });
    let settings = |r: Option<&RunSettings>, steered: bool| -> String {
        let Some(r) = r else {
            return "settings: (incomplete column)".into();
        };
        let mut t = format!(
            "prompt: {:?}\nchat: {}, system: {:?}\n{}",
            r.prompt,
            r.chat,
            r.system,
            r.describe(steered)
        );
        if steered {
            for c in &r.concepts {
                t.push_str(&format!("\nmaps `{}`: sha256 {}", c.name, c.maps_sha256));
            }
        }
        t
    };
    format!(
        "model: {model}\n\n## Unsteered\n\n{}\n\n{}\n\n## Steered\n\n{}\n\n{}\n",
        settings(app.output.unsteered_run.as_ref(), false),
        app.output.unsteered,
        settings(app.output.steered_run.as_ref(), true),
        app.output.steered
    )
}

/// Writes both columns with their settings, atomically.
pub fn export_output(app: &mut StudioApp, path: &Path) {
    match atomic_write(path, output_text(app).as_bytes()) {
        Ok(()) => app.info(format!("exported {}", path.display())),
        Err(e) => app.error(format!("{}: {e}", path.display())),
    }
}
