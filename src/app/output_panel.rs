//! Output panel: prompt and sampling settings, Generate/Stop, the unsteered and steered
//! columns side by side (same seed), and the λ sweep table with perplexity per λ.

use std::path::Path;

use eframe::egui;

use crate::pipeline::dataset::DatasetSpec;
use crate::pipeline::eval::stats::Proportion;
use crate::pipeline::presets::parse_lambda_list;
use crate::pipeline::sweep::sweep_csv;
use crate::pipeline::sweep_request::SweepRequest;
use crate::runtime::generate::GenerateOptions;
use crate::runtime::linear::MatPath;
use crate::runtime::sampling::SamplingConfig;
use crate::transport::atomic_write;
use crate::worker::Command;

use super::{DialogResult, Mode, StudioApp};

/// Draws the panel: the Text / Image switch, then the mode's output.
pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.selectable_value(&mut app.mode, Mode::Text, "Text");
        let can = app.image_model.is_some();
        ui.add_enabled_ui(can, |ui| {
            ui.selectable_value(&mut app.mode, Mode::Image, "Image")
                .on_disabled_hover_text("open a diffusion model folder first");
        });
    });
    if app.mode == Mode::Image && app.image_model.is_some() {
        super::image::show_output(app, ui);
        return;
    }
    show_text(app, ui);
}

fn show_text(app: &mut StudioApp, ui: &mut egui::Ui) {
    ui.add(
        egui::TextEdit::multiline(&mut app.settings.prompt)
            .hint_text("prompt")
            .desired_rows(2)
            .desired_width(f32::INFINITY),
    );
    ui.horizontal(|ui| {
        ui.checkbox(&mut app.settings.chat, "chat");
        ui.label("max tokens");
        ui.add(egui::DragValue::new(&mut app.settings.max_tokens).range(1..=2048));
        ui.label("temperature");
        ui.add(
            egui::DragValue::new(&mut app.settings.temperature)
                .range(0.0..=2.0)
                .speed(0.05),
        );
        ui.label("seed");
        ui.add(egui::DragValue::new(&mut app.settings.seed));
        ui.checkbox(&mut app.settings.seed_locked, "lock")
            .on_hover_text("keep the seed between generations");
        let can = app.model.is_some();
        if ui.add_enabled(can, egui::Button::new("Generate")).clicked() {
            app.generate(false);
        }
        if ui
            .add_enabled(app.output.generating, egui::Button::new("Stop"))
            .clicked()
        {
            app.cancel();
        }
        if let Some(t) = app.output.release_to_token {
            ui.small(format!(
                "slider release to first steered token: {:.0} ms",
                t.as_secs_f64() * 1e3
            ));
        }
    });
    ui.separator();
    let height = (ui.available_height() * 0.55).max(160.0);
    ui.columns(2, |cols| {
        column(
            &mut cols[0],
            "Unsteered",
            "out-unsteered",
            &app.output.unsteered,
            height,
        );
        column(
            &mut cols[1],
            "Steered",
            "out-steered",
            &app.output.steered,
            height,
        );
    });
    ui.horizontal(|ui| {
        if ui.button("Copy both").clicked() {
            ui.ctx().copy_text(output_text(app));
        }
        if ui.button("Export…").clicked() {
            let d = rfd::FileDialog::new()
                .add_filter("text", &["md", "txt"])
                .set_file_name("steering.md");
            app.dialog(d, true, false, DialogResult::ExportOutput);
        }
    });
    ui.separator();
    sweep(app, ui);
}

fn column(ui: &mut egui::Ui, title: &str, id: &str, text: &str, height: f32) {
    ui.strong(title);
    egui::ScrollArea::vertical()
        .id_salt(id)
        .max_height(height)
        .stick_to_bottom(true)
        .show(ui, |ui| {
            ui.add(egui::Label::new(text).wrap());
        });
}

fn output_text(app: &StudioApp) -> String {
    let lambdas: Vec<String> = app
        .stack
        .iter()
        .filter(|e| e.concept.enabled)
        .map(|e| format!("{}={}", e.concept.name, e.concept.lambda))
        .collect();
    format!(
        "prompt: {}\nseed: {}, temperature: {}, steering: {}\n\n## Unsteered\n\n{}\n\n## Steered\n\n{}\n",
        app.settings.prompt,
        app.settings.seed,
        app.settings.temperature,
        lambdas.join(", "),
        app.output.unsteered,
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

/// Writes the sweep table as CSV, atomically.
pub fn export_sweep(app: &mut StudioApp, path: &Path) {
    let r = sweep_csv(&app.sweep.rows)
        .map_err(|e| e.to_string())
        .and_then(|b| atomic_write(path, &b).map_err(|e| e.to_string()));
    match r {
        Ok(()) => app.info(format!("exported {}", path.display())),
        Err(e) => app.error(format!("{}: {e}", path.display())),
    }
}

fn sweep(app: &mut StudioApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.strong("λ sweep");
        ui.label("λ");
        ui.add(egui::TextEdit::singleline(&mut app.sweep.lambdas).desired_width(140.0));
        ui.label("samples");
        ui.add(egui::DragValue::new(&mut app.sweep.samples).range(1..=256));
        ui.label("perplexity texts");
        ui.add(egui::DragValue::new(&mut app.sweep.heldout).range(0..=100));
        let ready = app.model.is_some() && !app.stack.is_empty();
        if ui
            .add_enabled(ready, egui::Button::new("Run sweep"))
            .on_hover_text("sweeps the first enabled concept")
            .clicked()
        {
            start_sweep(app);
        }
        if !app.sweep.rows.is_empty() && ui.button("Export CSV…").clicked() {
            let d = rfd::FileDialog::new()
                .add_filter("CSV", &["csv"])
                .set_file_name("sweep.csv");
            app.dialog(d, true, false, DialogResult::ExportSweep);
        }
    });
    if app.sweep.rows.is_empty() {
        return;
    }
    egui::ScrollArea::vertical().id_salt("sweep-rows").show(ui, |ui| {
        egui::Grid::new("sweep-table")
            .striped(true)
            .num_columns(5)
            .show(ui, |ui| {
                for h in ["λ", "presence", "toxicity", "perplexity", "samples"] {
                    ui.strong(h);
                }
                ui.end_row();
                for r in &app.sweep.rows {
                    ui.label(format!("{:.2}", r.lambda));
                    ui.label(r.presence.map_or("—".into(), rate_with_interval));
                    ui.label(rate_with_interval(r.toxic));
                    ui.label(r.perplexity.map_or("—".into(), |p| format!("{p:.2}")));
                    ui.vertical(|ui| {
                        for g in &r.generations {
                            ui.label(g.split_whitespace().collect::<Vec<_>>().join(" "));
                        }
                    });
                    ui.end_row();
                }
            });
    });
}

fn start_sweep(app: &mut StudioApp) {
    let lambdas = match parse_lambda_list(&app.sweep.lambdas) {
        Ok(l) => l,
        Err(e) => {
            app.error(e);
            return;
        }
    };
    let Some(concept) = app
        .stack
        .iter()
        .find(|e| e.concept.enabled && !e.concept.maps.meta().fingerprint.is_diffusion())
        .map(|e| e.concept.name.clone())
    else {
        app.error("no enabled concept to sweep".into());
        return;
    };
    let s = &app.settings;
    let req = SweepRequest {
        stack: app.steering_stack(),
        concept: Some(concept),
        lambdas,
        prompts: vec![s.prompt.clone()],
        chat: s.chat,
        samples: app.sweep.samples,
        generate: GenerateOptions {
            max_tokens: s.max_tokens.max(1),
            sampling: SamplingConfig {
                temperature: if s.temperature > 0.0 { s.temperature } else { 1.0 },
                seed: s.seed,
                ..Default::default()
            },
            path: MatPath::Quantized,
        },
        keywords: None,
        heldout: DatasetSpec::Builtin("wikipedia".into()),
        heldout_samples: app.sweep.heldout,
        heldout_tokens: 128,
        judge: None,
    };
    app.sweep.rows.clear();
    app.send(Command::Sweep(Box::new(req)));
}

/// "12 % [8–17]": a rate with its 95 % Wilson interval.
fn rate_with_interval(p: Proportion) -> String {
    let (lo, hi) = p.wilson95();
    format!("{:.0} % [{:.0}–{:.0}]", 100.0 * p.rate(), 100.0 * lo, 100.0 * hi)
}
