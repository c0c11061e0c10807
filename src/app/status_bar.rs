//! The status line: progress of the running job (stage, k of n, ETA) with Cancel, the
//! speed of the last generation's columns (tokens/s), and the last message or error.

use eframe::egui;

use super::StudioApp;

/// Draws the bar.
pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        if let Some(p) = app.progress.clone() {
            let frac = if p.total > 0 {
                p.done as f32 / p.total as f32
            } else {
                0.0
            };
            let elapsed = p.started.elapsed().as_secs_f32();
            let eta = if p.done > 0 && p.total > p.done {
                format!(
                    ", eta {:.0} s",
                    elapsed / p.done as f32 * (p.total - p.done) as f32
                )
            } else {
                String::new()
            };
            let text = if p.total > 0 {
                format!("{}: {}/{} ({elapsed:.0} s{eta})", p.stage, p.done, p.total)
            } else {
                format!("{} ({elapsed:.0} s)", p.stage)
            };
            ui.add(egui::ProgressBar::new(frac).text(text).desired_width(420.0));
            if ui.button("Cancel").clicked() {
                app.cancel();
            }
        } else if app.busy() {
            ui.label("working…");
            if ui.button("Cancel").clicked() {
                app.cancel();
            }
        }
        let rates: Vec<String> = ["unsteered", "steered"]
            .iter()
            .zip(&app.output.rates)
            .filter_map(|(name, r)| r.per_second().map(|t| format!("{name} {t:.1} tok/s")))
            .collect();
        if !rates.is_empty() {
            ui.label(rates.join(" · "))
                .on_hover_text("decode speed of each column (they run in turn, so each gets about half)");
        }
        if let Some((msg, is_error)) = &app.status {
            if *is_error {
                ui.colored_label(egui::Color32::from_rgb(220, 80, 80), format!("error: {msg}"));
            } else {
                ui.label(msg);
            }
        }
    });
}
