//! The desktop app driven headlessly with egui_kittest (no display, no GPU): it starts, loads
//! the demo model (and Gemma 3 270M) and shows its hook points, fits a concept through the worker, generates both
//! columns (identical at λ = 0, different at λ = 1 after moving the slider), and survives a
//! corrupt model file.

mod common;

use common::app::wait;

use act_studio::app::settings::Settings;
use act_studio::app::{AppOptions, StudioApp};
use eframe::egui::{self, accesskit};
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};

fn harness(opts: AppOptions) -> Harness<'static, StudioApp> {
    Harness::builder()
        .with_size(egui::vec2(1400.0, 900.0))
        .with_max_steps(8)
        .build_eframe(move |cc| StudioApp::with_settings(&cc.egui_ctx, Settings::default(), opts))
}

/// The base URL of the app's running server (empty when none runs).
fn serving_url(app: &StudioApp) -> String {
    app.serving.as_ref().map(|s| s.url.clone()).unwrap_or_default()
}

#[test]
fn starts_without_a_model_and_says_how_to_get_one() {
    let mut h = harness(AppOptions {
        no_autoload: true,
        ..Default::default()
    });
    h.run_ok();
    assert!(h.query_by_label("Open GGUF…").is_some());
    assert!(h.query_by_label_contains("fetch-demo-model.sh").is_some());
    assert!(h.query_by_label_contains("No concepts yet").is_some());
}

#[test]
fn a_corrupt_model_file_shows_an_error_and_the_app_still_responds() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bad = tmp.path().join("broken.gguf");
    std::fs::write(&bad, b"GGUF but not really a model file").unwrap_or_else(|e| panic!("{e}"));
    let mut h = harness(AppOptions {
        model: Some(bad.clone()),
        no_autoload: true,
        ..Default::default()
    });
    wait(&mut h, "the load to fail", 30, |a| !a.busy());
    let (msg, is_error) = h.state().status.clone().unwrap_or_default();
    assert!(is_error && msg.contains("broken.gguf"), "{msg}");
    assert!(h.state().model.is_none());
    assert!(
        h.query_by_label_contains("error: ").is_some(),
        "the error is on screen"
    );
    // Still responsive: switch tabs.
    h.get_by_label("Plots").click();
    h.run_ok();
    assert!(h.query_by_label_contains("Fit a concept").is_some());
}

fn set_slider(h: &mut Harness<'static, StudioApp>, label: &str, value: f64) {
    let id = h
        .get_by_role_and_label(accesskit::Role::Slider, label)
        .accesskit_node()
        .id();
    h.event(egui::Event::AccessKitActionRequest(accesskit::ActionRequest {
        action: accesskit::Action::SetValue,
        target: id,
        data: Some(accesskit::ActionData::NumericValue(value)),
    }));
    h.step();
}

#[test]
fn the_whole_loop_on_the_demo_model() {
    let Some(model) = common::demo_model() else { return };
    // Default hook points on Llama: both norms of 30 layers.
    let both_norms = (0..30).flat_map(|l| [format!("layers.{l}.attn_norm"), format!("layers.{l}.mlp_norm")]);
    whole_loop(model, 150, both_norms.collect());
}

/// The same loop on Gemma 3 270M: its 7 hook points per layer are listed and the default
/// preset (the post-norms on Gemma) fits and steers through the same app code.
#[test]
fn the_whole_loop_on_gemma() {
    let Some(model) = common::gemma_model() else {
        return;
    };
    // Default hook points on Gemma: the post-norms of 18 layers.
    let post_norms = (0..18).flat_map(|l| {
        [
            format!("layers.{l}.post_attn_norm"),
            format!("layers.{l}.post_mlp_norm"),
        ]
    });
    whole_loop(model, 126, post_norms.collect());
}

/// Loads `model` (which has `n_hooks` hook points), fits the built-in football concept on 16 +
/// 16 sentences at the default preset (which must give `want_fitted`, by name), generates at
/// λ = 0 and λ = 1, and draws the plots.
fn whole_loop(model: std::path::PathBuf, n_hooks: usize, want_fitted: Vec<String>) {
    let mut h = harness(AppOptions {
        model: Some(model),
        no_autoload: true,
        ..Default::default()
    });
    wait(&mut h, "the model", 60, |a| a.model.is_some());
    let got = h.state().model.as_ref().map_or(0, |m| m.hook_points.len());
    assert_eq!(got, n_hooks);
    assert!(h.query_by_label(&format!("{n_hooks} hook points")).is_some());

    // A small fit: 16 + 16 built-in sentences at the default hook points.
    h.state_mut().fit.limit = 16;
    h.step();
    h.state_mut().frame_ms.clear();
    h.get_by_role_and_label(accesskit::Role::Button, "Fit concept")
        .click();
    wait(&mut h, "the fit", 120, |a| !a.stack.is_empty() && !a.busy());
    let (median, worst) = h.state().frame_stats().unwrap_or_default();
    println!("UI frame time while fitting: median {median:.2} ms, worst {worst:.2} ms");
    assert_eq!(h.state().stack[0].concept.name, "football");
    let fitted: Vec<String> = h.state().stack[0]
        .concept
        .maps
        .hooks()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(fitted, want_fitted, "the default preset's hook points");
    let _slider = h.get_by_role_and_label(accesskit::Role::Slider, "football");

    // λ = 0: both columns are the same text.
    set_slider(&mut h, "football", 0.0);
    assert_eq!(h.state().stack[0].concept.lambda, 0.0);
    h.state_mut().settings.max_tokens = 24;
    h.get_by_role_and_label(accesskit::Role::Button, "Generate")
        .click();
    wait(&mut h, "generation at λ = 0", 60, |a| {
        !a.busy() && !a.output.steered.is_empty()
    });
    let out = h.state().output.clone();
    assert!(!out.unsteered.is_empty());
    assert_eq!(out.unsteered, out.steered, "λ = 0 must equal the unsteered text");

    // Moving the slider to 1 regenerates the steered column only.
    let before = h.state().output.started;
    let unsteered_runs = h.state().output.unsteered_runs;
    set_slider(&mut h, "football", 1.0);
    assert_eq!(h.state().stack[0].concept.lambda, 1.0);
    assert!(
        h.state().output.regenerate_at.is_some(),
        "releasing the slider schedules a regeneration"
    );
    wait(&mut h, "regeneration at λ = 1", 60, |a| {
        a.output.started > before && !a.busy() && a.output.first_steered_token.is_some()
    });
    let after = h.state().output.clone();
    assert_eq!(
        after.unsteered_runs, unsteered_runs,
        "only the steered column is regenerated"
    );
    assert_eq!(after.unsteered, out.unsteered, "the unsteered column is kept");
    assert_ne!(after.steered, after.unsteered, "λ = 1 changes the text");
    if let Some(t) = after.release_to_token {
        println!(
            "slider release → first steered token: {:.0} ms",
            t.as_secs_f64() * 1e3
        );
    }
    // The Serve toggle serves the stack's concept over the OpenAI API, and stops.
    h.state_mut().settings.serve_port = 0;
    h.get_by_label("Serve").click();
    wait(&mut h, "the server", 30, |a| a.serving.is_some() && !a.busy());
    let url = serving_url(h.state());
    assert!(h.query_by_label(&url).is_some(), "the address is shown");
    let model = h
        .state()
        .serving
        .as_ref()
        .map(|s| s.model.clone())
        .unwrap_or_default();
    assert!(
        !model.is_empty() && h.query_by_label(&model).is_some(),
        "the model name is shown"
    );
    let models = common::http_get(&url, "/models");
    assert!(models.contains(&format!("\"id\":\"{model}\"")), "{models}");
    let concepts = common::http_get(&url, "/concepts");
    assert!(concepts.contains("\"name\":\"football\""), "{concepts}");
    h.get_by_label("Serve").click();
    wait(&mut h, "the server to stop", 30, |a| {
        a.serving.is_none() && !a.busy()
    });
    // Other machines may connect only with an API key: without one the toggle is disabled;
    // with one the server listens on every interface and asks for it.
    h.get_by_label("other machines").click();
    h.run_ok();
    assert!(h.state().settings.serve_network);
    assert!(
        h.get_by_label("Serve").accesskit_node().is_disabled(),
        "Serve is enabled for other machines without an API key"
    );
    h.state_mut().serve_key = "key-for-the-test".into();
    h.run_ok();
    h.get_by_label("Serve").click();
    wait(&mut h, "the network server", 30, |a| {
        a.serving.is_some() && !a.busy()
    });
    let url = serving_url(h.state());
    let port = url
        .trim_start_matches("http://0.0.0.0:")
        .trim_end_matches("/v1")
        .to_string();
    assert!(url.starts_with("http://0.0.0.0:"), "{url}");
    let (status, body) = common::http(&format!("127.0.0.1:{port}"), "GET", "/v1/models", "");
    assert_eq!(status, 401, "a request without the key: {body}");
    let (status, body) = common::http_with_key(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/v1/models",
        "",
        "key-for-the-test",
    );
    assert_eq!(status, 200, "a request with the key: {body}");
    h.get_by_label("Serve").click();
    wait(&mut h, "the network server to stop", 30, |a| {
        a.serving.is_none() && !a.busy()
    });

    // The plots draw for the fitted concept.
    h.get_by_label("Plots").click();
    h.run_ok();
    assert!(h.query_by_label_contains("ω = ").is_some());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
}
