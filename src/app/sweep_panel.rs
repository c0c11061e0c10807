//! The λ sweep: the first enabled text concept generated at several λ with the form's
//! prompt, sampling settings (temperature 0 is greedy: every sample is then the same text)
//! and your own presence keywords, scored for concept presence, toxicity and held-out
//! perplexity; a chart of the three against λ with 95 % intervals, a table with every
//! sample, and CSV exports of the summary and of every sample.

use std::path::Path;

use eframe::egui;
use egui_plot::{Legend, Line, Plot, PlotPoints, Points};

use crate::pipeline::dataset::DatasetSpec;
use crate::pipeline::eval::stats::Proportion;
use crate::pipeline::presets::parse_lambda_list;
use crate::pipeline::sweep::{SweepRow, sweep_csv, sweep_samples_csv};
use crate::pipeline::sweep_request::SweepRequest;
use crate::runtime::generate::GenerateOptions;
use crate::runtime::linear::MatPath;
use crate::transport::atomic_write;
use crate::worker::Command;

use super::{DialogResult, StudioApp};

/// The λ sweep form and results.
#[derive(Debug, Clone)]
pub struct SweepForm {
    /// λ values, comma-separated.
    pub lambdas: String,
    /// Samples per λ.
    pub samples: usize,
    /// Held-out texts for perplexity.
    pub heldout: usize,
    /// Presence keywords, comma-separated (empty: the built-in concept's, if any).
    pub keywords: String,
    /// Results.
    pub rows: Vec<SweepRow>,
}

impl Default for SweepForm {
    fn default() -> Self {
        Self {
            lambdas: "0, 0.25, 0.5, 0.75, 1".into(),
            samples: 4,
            heldout: 4,
            keywords: String::new(),
            rows: Vec::new(),
        }
    }
}

/// Draws the form, the chart and the table.
pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) {
    ui.horizontal_wrapped(|ui| {
        ui.strong("λ sweep");
        ui.label("λ");
        ui.add(egui::TextEdit::singleline(&mut app.sweep.lambdas).desired_width(140.0));
        ui.label("samples");
        ui.add(egui::DragValue::new(&mut app.sweep.samples).range(1..=256));
        ui.label("perplexity texts");
        ui.add(egui::DragValue::new(&mut app.sweep.heldout).range(0..=100));
        ui.label("keywords");
        ui.add(
            egui::TextEdit::singleline(&mut app.sweep.keywords)
                .hint_text("goal, striker, … (empty: built-in)")
                .desired_width(160.0),
        );
        let ready = app.model.is_some() && !app.stack.is_empty();
        if ui
            .add_enabled(ready, egui::Button::new("Run sweep"))
            .on_hover_text("sweeps the first enabled concept with the prompt and sampling settings above")
            .clicked()
        {
            start(app);
        }
        if !app.sweep.rows.is_empty() {
            if ui.button("Export CSV…").clicked() {
                let d = rfd::FileDialog::new()
                    .add_filter("CSV", &["csv"])
                    .set_file_name("sweep.csv");
                app.dialog(d, true, false, DialogResult::ExportSweep);
            }
            if ui.button("Export samples…").clicked() {
                let d = rfd::FileDialog::new()
                    .add_filter("CSV", &["csv"])
                    .set_file_name("sweep-samples.csv");
                app.dialog(d, true, false, DialogResult::ExportSweepSamples);
            }
        }
    });
    if app.sweep.rows.is_empty() {
        return;
    }
    chart(ui, &app.sweep.rows);
    table(ui, &app.sweep.rows);
}

/// `(λ, rate %, low %, high %)` of a proportion per row.
fn rates(rows: &[SweepRow], f: impl Fn(&SweepRow) -> Option<Proportion>) -> Vec<[f64; 4]> {
    rows.iter()
        .filter_map(|r| {
            let p = f(r)?;
            let (lo, hi) = p.wilson95();
            Some([r.lambda as f64, 100.0 * p.rate(), 100.0 * lo, 100.0 * hi])
        })
        .collect()
}

fn chart(ui: &mut egui::Ui, rows: &[SweepRow]) {
    let presence = rates(rows, |r| r.presence);
    let toxic = rates(rows, |r| Some(r.toxic));
    let ppl: Vec<[f64; 2]> = rows
        .iter()
        .filter_map(|r| Some([r.lambda as f64, r.perplexity?]))
        .collect();
    ui.columns(2, |cols| {
        Plot::new("sweep-rates")
            .height(160.0)
            .legend(Legend::default().position(egui_plot::Corner::LeftTop))
            .x_axis_label("λ")
            .y_axis_label("% of samples")
            .include_y(0.0)
            .include_y(100.0)
            .show(&mut cols[0], |p| {
                for (name, v, c) in [
                    (
                        "concept presence",
                        &presence,
                        egui::Color32::from_rgb(86, 150, 230),
                    ),
                    ("toxic", &toxic, egui::Color32::from_rgb(235, 130, 50)),
                ] {
                    let pts: Vec<[f64; 2]> = v.iter().map(|r| [r[0], r[1]]).collect();
                    p.line(Line::new(name, PlotPoints::from(pts.clone())).color(c).width(2.0));
                    p.points(Points::new(name, PlotPoints::from(pts)).color(c).radius(3.0));
                    for r in v {
                        let bar = PlotPoints::from(vec![[r[0], r[2]], [r[0], r[3]]]);
                        p.line(Line::new(format!("{name} 95 %"), bar).color(c.gamma_multiply(0.6)));
                    }
                }
            });
        Plot::new("sweep-perplexity")
            .height(160.0)
            .legend(Legend::default().position(egui_plot::Corner::LeftTop))
            .x_axis_label("λ")
            .y_axis_label("perplexity")
            .show(&mut cols[1], |p| {
                let c = egui::Color32::from_rgb(60, 190, 120);
                p.line(
                    Line::new("held-out perplexity", PlotPoints::from(ppl.clone()))
                        .color(c)
                        .width(2.0),
                );
                p.points(
                    Points::new("held-out perplexity", PlotPoints::from(ppl))
                        .color(c)
                        .radius(3.0),
                );
            });
    });
}

fn table(ui: &mut egui::Ui, rows: &[SweepRow]) {
    egui::ScrollArea::vertical().id_salt("sweep-rows").show(ui, |ui| {
        egui::Grid::new("sweep-table")
            .striped(true)
            .num_columns(5)
            .show(ui, |ui| {
                for h in ["λ", "presence", "toxicity", "perplexity", "samples"] {
                    ui.strong(h);
                }
                ui.end_row();
                for r in rows {
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

/// The keyword spec of the form (`None`: the concept's built-in keywords).
fn keyword_spec(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| format!("words:{t}"))
}

fn start(app: &mut StudioApp) {
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
            sampling: s.sampling(),
            path: MatPath::Quantized,
        },
        keywords: keyword_spec(&app.sweep.keywords),
        heldout: DatasetSpec::Builtin("wikipedia".into()),
        heldout_samples: app.sweep.heldout,
        heldout_tokens: 128,
        judge: None,
    };
    app.sweep.rows.clear();
    app.send(Command::Sweep(Box::new(req)));
}

/// Writes the sweep summary (or every sample) as CSV, atomically.
pub fn export(app: &mut StudioApp, path: &Path, samples: bool) {
    let bytes = if samples {
        sweep_samples_csv(&app.sweep.rows)
    } else {
        sweep_csv(&app.sweep.rows)
    };
    let r = bytes
        .map_err(|e| e.to_string())
        .and_then(|b| atomic_write(path, &b).map_err(|e| e.to_string()));
    match r {
        Ok(()) => app.info(format!("exported {}", path.display())),
        Err(e) => app.error(format!("{}: {e}", path.display())),
    }
}

/// "12 % [8–17]": a rate with its 95 % Wilson interval.
fn rate_with_interval(p: Proportion) -> String {
    let (lo, hi) = p.wilson95();
    format!("{:.0} % [{:.0}–{:.0}]", 100.0 * p.rate(), 100.0 * lo, 100.0 * hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_keywords_become_an_inline_spec() {
        assert_eq!(keyword_spec("  "), None);
        assert_eq!(
            keyword_spec(" goal, striker "),
            Some("words:goal, striker".into())
        );
    }
}
