//! The app's job model, driven headlessly with egui_kittest on the demo model: a double click
//! on Fit runs one fit; Generate pressed during the fit waits for it and then steers with the
//! concept it produced (the columns differ, and the steered one says which λ made it); Stop
//! drops the waiting generation and leaves the fit running; the stack (maps, λ, on/off)
//! comes back after a restart; and at the window's minimum size every control of the output
//! is on screen.

mod common;

use common::app::wait;

use act_studio::app::settings::Settings;
use act_studio::app::{AppOptions, StudioApp};
use act_studio::transport::TokenScope;
use act_studio::worker::JobKind;
use eframe::egui::{self, accesskit};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

fn harness(settings: Settings, opts: AppOptions, size: egui::Vec2) -> Harness<'static, StudioApp> {
    Harness::builder()
        .with_size(size)
        .with_max_steps(8)
        .build_eframe(move |cc| StudioApp::with_settings(&cc.egui_ctx, settings, opts))
}

fn click(h: &mut Harness<'static, StudioApp>, label: &str) {
    h.get_by_role_and_label(accesskit::Role::Button, label).click();
    h.step();
}

#[test]
fn generate_during_a_fit_steers_with_it_stop_spares_the_fit_and_the_stack_survives_a_restart() {
    let Some(model) = common::demo_model() else { return };
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let opts = AppOptions {
        model: Some(model.clone()),
        no_autoload: true,
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    };
    let mut h = harness(Settings::default(), opts.clone(), egui::vec2(1400.0, 900.0));
    wait(&mut h, "the model", 60, |a| a.model.is_some() && !a.busy());
    h.state_mut().fit.limit = 16;
    h.state_mut().settings.max_tokens = 16;
    h.step();

    // A double click on Fit runs one fit: the button is disabled once a fit is under way.
    click(&mut h, "Fit concept");
    let fit = h.get_by_role_and_label(accesskit::Role::Button, "Fit concept");
    fit.click();
    h.step();
    let fits = h.state().jobs.iter().filter(|t| t.kind == JobKind::Fit).count();
    assert_eq!(fits, 1, "a second click queued another fit");

    // Generate during the fit waits; Stop drops it and the fit goes on.
    click(&mut h, "Generate");
    assert_eq!(
        h.state().output.queued,
        Some(false),
        "the generation waits for the fit"
    );
    assert!(h.query_by_label_contains("waiting for the fit").is_some());
    click(&mut h, "Stop");
    assert_eq!(h.state().output.queued, None);
    assert!(h.state().has_job(JobKind::Fit), "Stop must not touch the fit");
    assert!(
        !h.state().jobs.iter().any(|t| t.cancelled()),
        "Stop cancelled a job that is not a generation"
    );

    // Generate again during the fit: it runs after the fit, with the fitted concept at λ = 1.
    click(&mut h, "Generate");
    wait(&mut h, "the fit and the generation", 300, |a| {
        !a.stack.is_empty() && !a.busy() && a.output.queued.is_none() && a.output.steered_run.is_some()
    });
    let out = h.state().output.clone();
    assert!(!out.unsteered.is_empty());
    assert_ne!(
        out.steered, out.unsteered,
        "the steered column ignored the concept fitted meanwhile"
    );
    let run = out
        .steered_run
        .clone()
        .unwrap_or_else(|| panic!("no settings on the column"));
    assert_eq!(run.concepts.len(), 1);
    assert_eq!(
        (run.concepts[0].name.as_str(), run.concepts[0].lambda),
        ("football", 1.0)
    );
    assert!(
        h.query_by_label_contains("football λ=1.00").is_some(),
        "the column says what made it"
    );
    assert_eq!(h.state().history.len(), 1, "the run is in the history");

    // Exports carry what reproduces the run: the model's fingerprint, λ and the maps hash.
    let md = data.path().join("run.md");
    let jsonl = data.path().join("runs.jsonl");
    for (file, button) in [(&md, "Export output"), (&jsonl, "Export history")] {
        h.state_mut().path_bar = file.display().to_string();
        h.step();
        click(&mut h, button);
    }
    let sha = run.concepts[0].maps_sha256.clone();
    assert_eq!(sha.len(), 64, "{sha}");
    let fingerprint = h
        .state()
        .model
        .as_ref()
        .map(|m| m.fingerprint.clone())
        .unwrap_or_default();
    for file in [&md, &jsonl] {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for want in [sha.as_str(), fingerprint.as_str(), "football"] {
            assert!(text.contains(want), "{} lacks {want}:\n{text}", file.display());
        }
    }

    // Switching the concept off regenerates; the column then says no concept was on.
    h.state_mut().stack[0].concept.enabled = false;
    h.state_mut().lambda_released();
    let started = h.state().output.started;
    wait(&mut h, "the regeneration", 120, |a| {
        a.output.started > started && !a.busy() && a.output.steered_run.is_some()
    });
    assert_eq!(h.state().output.steered, out.unsteered, "off is unsteered");

    // Ten quick Generate clicks: never more than one generation in the worker, each click
    // supersedes the last, and the columns fill with the last one's text.
    let started = h.state().output.started;
    for _ in 0..10 {
        click(&mut h, "Generate");
        let n = h
            .state()
            .jobs
            .iter()
            .filter(|t| t.kind == JobKind::Generate)
            .count();
        assert!(n <= 1, "{n} generations in the worker at once");
    }
    wait(&mut h, "the last generation", 120, |a| {
        !a.busy() && a.output.queued.is_none() && a.output.steered_run.is_some()
    });
    let ran = h.state().output.started - started;
    assert!((1..=10).contains(&ran), "{ran} generations ran for ten clicks");
    assert_eq!(
        h.state().output.steered,
        out.unsteered,
        "the concept is still off"
    );

    // Maps saved through the path bar join the recent maps.
    let saved_maps = data.path().join("mine.safetensors");
    h.state_mut().path_bar = saved_maps.display().to_string();
    h.step();
    click(&mut h, "Save maps");
    wait(&mut h, "the maps to be saved", 60, |a| !a.busy());
    assert!(saved_maps.is_file());
    assert_eq!(h.state().settings.recent_maps.first(), Some(&saved_maps));
    assert!(h.query_by_label("recent maps").is_some());

    // The plots draw for it, with their exports.
    h.get_by_label("Plots").click();
    h.run_ok();
    for label in ["neuron CSV…", "hook points CSV…", "PNG…"] {
        assert!(h.query_by_label(label).is_some(), "no `{label}` on the plots tab");
    }
    h.get_by_label("Output").click();
    h.run_ok();

    // A sweep with your own keywords, at the form's (greedy) settings.
    h.state_mut().stack[0].concept.enabled = true;
    {
        let a = h.state_mut();
        a.sweep.lambdas = "0, 1".into();
        a.sweep.samples = 1;
        a.sweep.heldout = 0;
        a.sweep.keywords = "football, goal, match".into();
        a.settings.max_tokens = 8;
    }
    click(&mut h, "Run sweep");
    wait(&mut h, "the sweep", 120, |a| {
        !a.busy() && !a.sweep.rows.is_empty()
    });
    let rows = h.state().sweep.rows.clone();
    assert_eq!(rows.iter().map(|r| r.lambda).collect::<Vec<_>>(), [0.0, 1.0]);
    assert!(
        rows.iter()
            .all(|r| r.presence.is_some() && r.generations.len() == 1)
    );
    h.state_mut().stack[0].concept.enabled = false;

    // Restart: the concept (kept in the data folder) comes back with its λ and on/off.
    h.state_mut().stack[0].concept.lambda = -0.4;
    h.state_mut().scope = TokenScope::LastToken;
    let saved = h.state().settings_to_save();
    assert_eq!(saved.stack.len(), 1);
    assert!(
        saved.stack[0].path.starts_with(data.path()),
        "{:?}",
        saved.stack[0].path
    );
    drop(h);
    let mut h = harness(saved, opts, egui::vec2(1400.0, 900.0));
    wait(&mut h, "the restored stack", 60, |a| {
        !a.stack.is_empty() && !a.busy()
    });
    let e = &h.state().stack[0];
    assert_eq!(e.concept.name, "football");
    assert_eq!(e.concept.lambda, -0.4);
    assert!(!e.concept.enabled);
    assert_eq!(
        h.state().scope,
        TokenScope::LastToken,
        "the token scope is kept too"
    );
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let _slider = h.get_by_role_and_label(accesskit::Role::Slider, "football");
}

#[test]
fn at_the_minimum_window_size_every_output_control_is_on_screen() {
    let opts = AppOptions {
        no_autoload: true,
        ..Default::default()
    };
    let size = egui::vec2(900.0, 600.0);
    let mut h = harness(Settings::default(), opts, size);
    h.run_ok();
    let window = egui::Rect::from_min_size(egui::Pos2::ZERO, size);
    for label in ["Generate", "Stop", "Copy both", "Export…", "Run sweep"] {
        let r = h.get_by_role_and_label(accesskit::Role::Button, label).rect();
        assert!(window.contains_rect(r), "`{label}` is cut off at 900×600: {r:?}");
    }
    for label in ["Unsteered", "Steered"] {
        let r = h.get_by_label(label).rect();
        assert!(window.contains_rect(r), "`{label}` is cut off at 900×600: {r:?}");
    }
}
