//! Steering panel: the stack of concepts, each with its λ as a number (the sliders are in the
//! λ bar above the output), on/off, range (±1 or ±2), order and remove; the token scope.
//! Every change to the stack regenerates the output. Below, the Serve toggle: the same
//! concepts over an OpenAI-compatible API (a port; other machines only with an API key).

use std::sync::Arc;

use eframe::egui;

use crate::serve::ServeOptions;
use crate::transport::{MapsFile, TokenScope};
use crate::worker::{Command, JobKind, ServeRequest};

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
    if app.mode == Mode::Text {
        ui.separator();
        serve_controls(app, ui);
    }
}

/// The text concepts of the stack (what the server offers), by name.
fn text_concepts(app: &StudioApp) -> Vec<Arc<MapsFile>> {
    app.stack
        .iter()
        .map(|e| e.concept.maps.clone())
        .filter(|m| !m.meta().fingerprint.is_diffusion())
        .collect()
}

/// Asks the worker to (re)start the server with the stack's text concepts, on this machine
/// only or (with an API key) for other machines too.
pub fn start_serving(app: &mut StudioApp) {
    let key = app.serve_key.trim().to_string();
    let options = ServeOptions {
        host: if app.settings.serve_network {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        }
        .into(),
        port: app.settings.serve_port,
        api_key: (!key.is_empty()).then_some(key),
        ..ServeOptions::default()
    };
    let concepts = text_concepts(app);
    app.send(Command::Serve(Some(Box::new(ServeRequest { concepts, options }))));
}

/// One row: an optional small label, `text` in monospace, and a button copying `text`.
fn copyable(ui: &mut egui::Ui, label: Option<&str>, text: &str, hover: &str) {
    ui.horizontal(|ui| {
        if let Some(l) = label {
            ui.small(l);
        }
        ui.monospace(text);
        if ui.small_button("copy").on_hover_text(hover).clicked() {
            ui.ctx().copy_text(text.to_string());
        }
    });
}

/// Whether the Serve settings allow a start: other machines may connect only with a key.
pub fn serve_settings_ok(app: &StudioApp) -> bool {
    !app.settings.serve_network || !app.serve_key.trim().is_empty()
}

/// The Serve toggle: an OpenAI-compatible API, steered per request with the stack's concepts
/// (`"steering": {"NAME": λ}` in a request body), on this machine or, with an API key, on the
/// network.
fn serve_controls(app: &mut StudioApp, ui: &mut egui::Ui) {
    let busy = app.has_job(JobKind::Serve);
    let mut on = app.serving.is_some();
    let settings_ok = serve_settings_ok(app);
    ui.horizontal(|ui| {
        let toggle = ui
            .add_enabled(
                app.model.is_some() && !busy && (on || settings_ok),
                egui::Checkbox::new(&mut on, "Serve"),
            )
            .on_hover_text(
                "An OpenAI-compatible API (chat and text completions) for any client; each \
                 request picks its concept strengths: \"steering\": {\"NAME\": λ}",
            )
            .on_disabled_hover_text(if settings_ok {
                "load a model first"
            } else {
                "set an API key to let other machines connect"
            });
        ui.add_enabled(
            app.serving.is_none(),
            egui::DragValue::new(&mut app.settings.serve_port)
                .range(0..=65535)
                .prefix("port "),
        )
        .on_hover_text("0: any free port");
        if toggle.changed() {
            if on {
                start_serving(app);
            } else {
                app.send(Command::Serve(None));
            }
        }
    });
    ui.add_enabled_ui(app.serving.is_none(), |ui| {
        ui.horizontal(|ui| {
            ui.checkbox(&mut app.settings.serve_network, "other machines")
                .on_hover_text(
                    "listen on every network interface (0.0.0.0) instead of this machine only \
                     (127.0.0.1); needs an API key",
                );
            ui.add(
                egui::TextEdit::singleline(&mut app.serve_key)
                    .password(true)
                    .hint_text("API key")
                    .desired_width(120.0),
            )
            .on_hover_text(
                "clients send it as `Authorization: Bearer KEY` (the openai package's api_key); \
                 empty: no key (this machine only). Not saved.",
            );
        });
    });
    let Some(s) = app.serving.clone() else {
        return;
    };
    if s.url.contains("://0.0.0.0:") {
        ui.small("other machines: this machine's address in place of 0.0.0.0");
    }
    copyable(ui, None, &s.url, "copy the base URL");
    copyable(ui, Some("model:"), &s.model, "copy the model name requests give");
    ui.small(if s.concepts.is_empty() {
        "concepts: none (unsteered only)".to_string()
    } else {
        format!("concepts: {}", s.concepts.join(", "))
    });
    let now: Vec<String> = text_concepts(app)
        .iter()
        .map(|m| m.meta().concept.clone())
        .collect();
    if now != s.concepts
        && ui
            .add_enabled(!busy, egui::Button::new("serve the current stack").small())
            .on_hover_text("restart the server with the concepts now in the stack")
            .clicked()
    {
        start_serving(app);
    }
}
