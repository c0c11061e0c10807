//! Image mode of the desktop app, driven headlessly with egui_kittest on a tiny random-weight
//! Stable Diffusion 1.5 folder: load it, fit a small image concept through the worker, make a
//! pair (identical at λ = 0; moving the slider to 1 regenerates only the steered image), a λ
//! strip and a λ × seed grid, save a PNG and load its settings back into a fresh app; text and
//! image concepts side by side in one stack (with the demo language model, when present).

mod common;

use common::app::wait;
mod sd_common;

use std::path::Path;

use act_studio::app::settings::Settings;
use act_studio::app::{AppOptions, ImageAction, Mode, SaveWhat, StudioApp};
use act_studio::diffusion::image_io::read_png_meta;
use act_studio::worker::Command;
use eframe::egui::{self, accesskit};
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use sd_common::tiny_sd::write_tiny_sd15;

type H = Harness<'static, StudioApp>;

fn harness(opts: AppOptions) -> H {
    Harness::builder()
        .with_size(egui::vec2(1400.0, 900.0))
        .with_max_steps(8)
        .build_eframe(move |cc| StudioApp::with_settings(&cc.egui_ctx, Settings::default(), opts))
}

fn set_slider(h: &mut H, label: &str, value: f64) {
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

fn click(h: &mut H, label: &str) {
    h.get_by_role_and_label(accesskit::Role::Button, label).click();
    h.step();
}

/// An app with the tiny SD 1.5 folder loaded and tiny settings (32 × 32 pixels, 2 steps).
fn loaded(model: &Path) -> H {
    let mut h = harness(AppOptions {
        image_model: Some(model.to_path_buf()),
        no_autoload: true,
        ..Default::default()
    });
    wait(&mut h, "the diffusion model", 60, |a| {
        a.image_model.is_some() && !a.busy()
    });
    let a = h.state_mut();
    assert_eq!(
        a.mode,
        Mode::Image,
        "loading a diffusion model switches to image mode"
    );
    let s = &mut a.settings.image;
    s.prompt = "a photo of a cat on a mat".into();
    s.seed = 7;
    s.steps = 2;
    s.width = 32;
    s.height = 32;
    s.fit_builtin = true;
    s.fit_concept = "negate:cat".into();
    s.fit_limit = 4;
    s.fit_size = 32;
    h.step();
    h
}

fn fit(h: &mut H) {
    click(h, "Fit image concept");
    wait(h, "the image fit", 120, |a| !a.stack.is_empty() && !a.busy());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    assert_eq!(h.state().stack[0].concept.name, "negate:cat");
}

#[test]
fn image_mode_pair_slider_strip_grid_save_and_settings() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&model, 11).unwrap_or_else(|e| panic!("{e}"));
    let mut h = loaded(&model);
    let info = h
        .state()
        .image_model
        .clone()
        .unwrap_or_else(|| panic!("no image model"));
    assert_eq!(info.family, "sd1");
    let line = format!(
        "image model: tiny-sd15 (sd1, f32, {} hook points)",
        info.hook_points.len()
    );
    assert!(h.query_by_label(&line).is_some(), "{line}");
    assert!(h.query_by_label("Open diffusion folder…").is_some());

    fit(&mut h);
    let _slider = h.get_by_role_and_label(accesskit::Role::Slider, "negate:cat");

    // λ = 0: the steered image is the unsteered one, pixel for pixel.
    set_slider(&mut h, "negate:cat", 0.0);
    assert_eq!(h.state().stack[0].concept.lambda, 0.0);
    click(&mut h, "Generate");
    wait(&mut h, "the pair at λ = 0", 60, |a| {
        !a.busy() && matches!(a.image.pair(), Some((Some(_), Some(_))))
    });
    let (u0, s0) = match h.state().image.pair() {
        Some((Some(u), Some(s))) => (u.clone(), s.clone()),
        _ => panic!("no pair"),
    };
    assert_eq!(u0.image.dimensions(), (32, 32));
    assert_eq!(u0.image, s0.image, "λ = 0 must equal the unsteered image");
    assert_eq!(s0.meta.lambdas, vec![("negate:cat".to_string(), 0.0)]);
    assert!(h.query_by_label("unsteered").is_some() && h.query_by_label("steered").is_some());

    // Releasing the slider at λ = 1 regenerates only the steered image.
    let runs = h.state().image.unsteered_runs;
    let steered = h.state().image.steered_runs;
    set_slider(&mut h, "negate:cat", 1.0);
    assert_eq!(h.state().stack[0].concept.lambda, 1.0);
    assert!(
        h.state().image.regenerate_at.is_some(),
        "releasing the slider schedules a regeneration"
    );
    wait(&mut h, "the steered image at λ = 1", 60, |a| {
        a.image.steered_runs > steered && !a.busy() && !a.image.generating
    });
    let (u1, s1) = match h.state().image.pair() {
        Some((Some(u), Some(s))) => (u.clone(), s.clone()),
        _ => panic!("no pair after the slider"),
    };
    assert_eq!(
        h.state().image.unsteered_runs,
        runs,
        "the unsteered image is not regenerated"
    );
    assert_eq!(u1.image, u0.image, "the unsteered image is kept");
    assert_eq!(u1.texture.id(), u0.texture.id(), "its texture is kept too");
    assert_ne!(s1.image, u1.image, "λ = 1 changes the image");
    assert_eq!(s1.meta.lambdas, vec![("negate:cat".to_string(), 1.0)]);

    // Save the pair's steered image with its settings.
    let png = tmp.path().join("steered.png");
    h.state_mut().save_image_png(&png, SaveWhat::Current);
    let meta = read_png_meta(&png).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (meta.prompt.as_str(), meta.seed, meta.steps),
        ("a photo of a cat on a mat", 7, 2)
    );
    let back = image::open(&png).unwrap_or_else(|e| panic!("{e}")).to_rgb8();
    assert_eq!(back, s1.image);
    let both = tmp.path().join("both.png");
    h.state_mut().save_image_png(&both, SaveWhat::SideBySide);
    let sbs = image::open(&both).unwrap_or_else(|e| panic!("{e}")).to_rgb8();
    assert!(sbs.width() > 64 && sbs.height() > 32);

    // A strip of 3 λ.
    h.state_mut().settings.image.strip_lambdas = "0, 0.5, 1".into();
    h.step();
    click(&mut h, "λ strip");
    wait(&mut h, "the λ strip", 60, |a| {
        !a.busy() && a.image.cells().is_some_and(|c| c.iter().all(Option::is_some))
    });
    let cells: Vec<_> = h
        .state()
        .image
        .cells()
        .unwrap_or_default()
        .iter()
        .flatten()
        .cloned()
        .collect();
    assert_eq!(cells.len(), 3);
    assert_eq!(cells[0].image, u0.image, "the λ = 0 cell is the unsteered image");
    assert_eq!(cells[2].image, s1.image, "the λ = 1 cell is the steered image");
    assert!(h.query_by_label("λ=0.5").is_some());
    let strip_png = tmp.path().join("strip.png");
    h.state_mut().save_image_png(&strip_png, SaveWhat::Current);
    let sheet = image::open(&strip_png)
        .unwrap_or_else(|e| panic!("{e}"))
        .to_rgb8();
    assert!(sheet.width() >= 3 * 32 && sheet.height() > 32);
    let strip_meta = read_png_meta(&strip_png).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(strip_meta.lambdas, vec![("negate:cat".to_string(), 1.0)]);

    // A 2 λ × 2 seed grid.
    h.state_mut().settings.image.grid_lambdas = "0, 1".into();
    h.state_mut().settings.image.grid_seeds = "7, 8".into();
    h.step();
    click(&mut h, "λ × seed grid");
    wait(&mut h, "the grid", 60, |a| {
        !a.busy()
            && a.image
                .cells()
                .is_some_and(|c| c.len() == 4 && c.iter().all(Option::is_some))
    });
    let grid: Vec<_> = h
        .state()
        .image
        .cells()
        .unwrap_or_default()
        .iter()
        .flatten()
        .cloned()
        .collect();
    assert_eq!(grid[0].image, u0.image, "seed 7, λ = 0");
    assert_ne!(grid[2].image, grid[0].image, "seed 8 differs from seed 7");
    assert_eq!(grid[3].meta.seed, 8);
    assert!(h.query_by_label("seed 8").is_some());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);

    // A fresh app (no model at all) takes the settings from the PNG.
    let mut fresh = harness(AppOptions {
        no_autoload: true,
        ..Default::default()
    });
    fresh.run_ok();
    assert_ne!(fresh.state().settings.image.prompt, "a photo of a cat on a mat");
    fresh.state_mut().load_image_settings(&png);
    let s = &fresh.state().settings.image;
    assert_eq!(s.prompt, "a photo of a cat on a mat");
    assert_eq!((s.seed, s.steps, s.width, s.height), (7, 2, 32, 32));
    assert!(s.steer_all);
    let (msg, is_error) = fresh.state().status.clone().unwrap_or_default();
    assert!(!is_error && msg.contains("not in the stack: negate:cat"), "{msg}");

    // The loaded app: λ of the stack concept comes back too.
    set_slider(&mut h, "negate:cat", 0.25);
    h.state_mut().settings.image.prompt = "something else".into();
    h.state_mut().load_image_settings(&png);
    assert_eq!(h.state().settings.image.prompt, "a photo of a cat on a mat");
    assert_eq!(h.state().stack[0].concept.lambda, 1.0);

    // A PNG without settings: a clear message, nothing changed.
    let junk = tmp.path().join("plain.png");
    image::RgbImage::new(4, 4)
        .save(&junk)
        .unwrap_or_else(|e| panic!("{e}"));
    fresh.state_mut().load_image_settings(&junk);
    let (msg, is_error) = fresh.state().status.clone().unwrap_or_default();
    assert!(is_error && msg.contains("no AcT Studio settings"), "{msg}");
    assert_eq!(fresh.state().settings.image.prompt, "a photo of a cat on a mat");
}

#[test]
fn image_maps_save_and_load_against_the_pipeline_and_bad_input_is_an_error() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&model, 3).unwrap_or_else(|e| panic!("{e}"));
    let (src, tgt) = (tmp.path().join("plain.txt"), tmp.path().join("painted.txt"));
    std::fs::write(&src, "a cat\na dog on a hill\na red boat\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        &tgt,
        "a cat, oil painting\na dog on a hill, oil painting\na red boat, oil painting\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut h = loaded(&model);

    // Prompt files, text-encoder hooks only.
    {
        let s = &mut h.state_mut().settings.image;
        s.fit_builtin = false;
        s.fit_source = src.display().to_string();
        s.fit_target = tgt.display().to_string();
        s.fit_hooks = "text-encoder-norms".into();
    }
    h.step();
    click(&mut h, "Fit image concept");
    wait(&mut h, "the fit from prompt files", 120, |a| {
        !a.stack.is_empty() && !a.busy()
    });
    assert_eq!(h.state().stack[0].concept.name, "painted");

    // Saved maps load back, checked against the diffusion pipeline (no language model here).
    let maps = h.state().stack[0].concept.maps.clone();
    let path = tmp.path().join("painted.safetensors");
    h.state_mut().send(Command::SaveMaps(maps, path.clone()));
    wait(&mut h, "saving maps", 30, |a| !a.busy());
    h.state_mut().stack.clear();
    h.state_mut().send(Command::LoadMaps(path));
    wait(&mut h, "loading maps", 30, |a| !a.busy());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    assert_eq!(h.state().stack.len(), 1);

    // Maps of another SD folder are refused with a clear message.
    let other = tmp.path().join("other-sd15");
    write_tiny_sd15(&other, 99).unwrap_or_else(|e| panic!("{e}"));
    let mut h2 = loaded(&other);
    h2.state_mut()
        .send(Command::LoadMaps(tmp.path().join("painted.safetensors")));
    wait(&mut h2, "refusing foreign maps", 30, |a| !a.busy());
    let (msg, is_error) = h2.state().status.clone().unwrap_or_default();
    assert!(is_error && msg.contains("painted.safetensors"), "{msg}");
    assert!(h2.state().stack.is_empty());

    // Bad settings are errors in the status line, not panics.
    h.state_mut().settings.image.width = 33;
    h.state_mut()
        .generate_images(ImageAction::Pair { steered_only: false });
    wait(&mut h, "a bad size to fail", 30, |a| !a.busy());
    let (msg, is_error) = h.state().status.clone().unwrap_or_default();
    assert!(is_error && msg.contains("multiples"), "{msg}");
    assert!(!h.state().image.generating);
    h.state_mut().settings.image.width = 32;
    h.state_mut().settings.image.steer_all = false;
    h.state_mut().settings.image.steer_start = 2;
    h.state_mut().settings.image.steer_end = 1;
    h.state_mut()
        .generate_images(ImageAction::Pair { steered_only: false });
    let (msg, is_error) = h.state().status.clone().unwrap_or_default();
    assert!(is_error && msg.contains("empty"), "{msg}");
    h.state_mut().settings.image.steer_all = true;
    h.state_mut().settings.image.strip_lambdas = "0, x".into();
    h.state_mut().generate_images(ImageAction::Strip);
    let (msg, is_error) = h.state().status.clone().unwrap_or_default();
    assert!(is_error && msg.contains("not a list"), "{msg}");

    // A folder that is not a diffusion model: an error, and the app still responds.
    h.state_mut().load_image_model(tmp.path().join("nope"));
    wait(&mut h, "the bad folder to fail", 30, |a| !a.busy());
    let (msg, is_error) = h.state().status.clone().unwrap_or_default();
    assert!(is_error && msg.contains("nope"), "{msg}");
    assert!(h.state().image_model.is_none());
    h.run_ok();
    assert!(h.query_by_label("Open diffusion folder…").is_some());
}

#[test]
fn cancel_stops_a_grid_and_its_images_never_land() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&model, 5).unwrap_or_else(|e| panic!("{e}"));
    let mut h = loaded(&model);
    fit(&mut h);
    {
        let s = &mut h.state_mut().settings.image;
        s.steps = 40;
        s.grid_lambdas = "0, 0.5, 1".into();
        s.grid_seeds = "1, 2, 3, 4".into();
    }
    // Cancel: the grid stops early.
    h.state_mut().generate_images(ImageAction::Grid);
    wait(&mut h, "the grid to start", 60, |a| a.image.progress.is_some());
    h.state_mut().cancel();
    wait(&mut h, "the grid to stop", 60, |a| !a.busy());
    let made = h
        .state()
        .image
        .cells()
        .map_or(0, |c| c.iter().filter(|x| x.is_some()).count());
    assert!(made < 12, "the grid stopped early ({made} of 12)");
    assert!(!h.state().image.generating);
    let (msg, is_error) = h.state().status.clone().unwrap_or_default();
    assert!(!is_error && msg.contains("stopped"), "{msg}");

    // A new pair stops a running grid, and nothing of the grid lands in it.
    h.state_mut().generate_images(ImageAction::Grid);
    wait(&mut h, "the second grid to start", 60, |a| {
        a.image.progress.is_some()
    });
    h.state_mut().settings.image.steps = 2;
    click(&mut h, "Generate");
    wait(&mut h, "the pair", 60, |a| {
        !a.busy() && matches!(a.image.pair(), Some((Some(_), Some(_))))
    });
    for _ in 0..5 {
        h.step();
    }
    assert!(
        h.state().image.cells().is_none(),
        "a stopped grid's images must not land"
    );
    let (u, s) = match h.state().image.pair() {
        Some((Some(u), Some(s))) => (u.meta.clone(), s.meta.clone()),
        _ => panic!("no pair"),
    };
    assert_eq!((u.steps, s.steps, s.seed), (2, 2, 7));
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
}

#[test]
fn text_and_image_concepts_share_the_stack_and_each_steers_its_own_model() {
    let Some(demo) = common::demo_model() else { return };
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&model, 13).unwrap_or_else(|e| panic!("{e}"));
    let mut h = harness(AppOptions {
        model: Some(demo.clone()),
        image_model: Some(model.clone()),
        no_autoload: true,
        ..Default::default()
    });
    wait(&mut h, "both models", 60, |a| {
        a.model.is_some() && a.image_model.is_some() && !a.busy()
    });
    {
        let s = &mut h.state_mut().settings.image;
        s.prompt = "a cat".into();
        (s.steps, s.width, s.height) = (2, 32, 32);
        (s.fit_concept, s.fit_limit, s.fit_size) = ("negate:cat".into(), 3, 32);
    }
    h.step();
    click(&mut h, "Fit image concept");
    wait(&mut h, "the image fit", 60, |a| a.stack.len() == 1 && !a.busy());

    // A small text fit in text mode.
    h.state_mut().mode = Mode::Text;
    h.state_mut().settings.preset = "all-ln:0-1".into();
    h.state_mut().fit.limit = 4;
    h.step();
    click(&mut h, "Fit concept");
    wait(&mut h, "the text fit", 120, |a| a.stack.len() == 2 && !a.busy());
    let names = |st: act_studio::transport::SteeringStack| -> Vec<String> {
        st.concepts.into_iter().map(|c| c.name).collect()
    };
    assert_eq!(names(h.state().steering_stack()), ["football"]);
    assert_eq!(names(h.state().image_stack()), ["negate:cat"]);

    // Text generation steers with the text concept only.
    h.state_mut().settings.max_tokens = 4;
    click(&mut h, "Generate");
    wait(&mut h, "text", 60, |a| !a.busy() && !a.output.steered.is_empty());

    // Image mode: the pair, steered by the image concept only.
    h.state_mut().mode = Mode::Image;
    h.step();
    click(&mut h, "Generate");
    wait(&mut h, "the pair", 60, |a| {
        !a.busy() && matches!(a.image.pair(), Some((Some(_), Some(_))))
    });
    let lambdas = match h.state().image.pair() {
        Some((_, Some(s))) => s.meta.lambdas.clone(),
        _ => Vec::new(),
    };
    assert_eq!(lambdas, vec![("negate:cat".to_string(), 1.0)]);

    // Reloading the language model keeps the image concept (and its own).
    h.state_mut().load_model(demo);
    wait(&mut h, "the reload", 60, |a| !a.busy());
    assert_eq!(h.state().stack.len(), 2);
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
}

/// The "f16" box loads the next diffusion model in half precision, which then generates.
#[test]
fn f16_checkbox_loads_the_model_in_half_precision() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&model, 12).unwrap_or_else(|e| panic!("{e}"));
    let mut h = harness(AppOptions {
        no_autoload: true,
        ..Default::default()
    });
    assert!(!h.state().settings.image_half);
    h.get_by_role_and_label(accesskit::Role::CheckBox, "f16").click();
    h.step();
    assert!(h.state().settings.image_half, "the box sets the setting");
    h.state_mut().load_image_model(model.clone());
    wait(&mut h, "the f16 model", 60, |a| {
        a.image_model.is_some() && !a.busy()
    });
    let info = h
        .state()
        .image_model
        .clone()
        .unwrap_or_else(|| panic!("no model"));
    assert_eq!(info.dtype, "f16");
    let s = &mut h.state_mut().settings.image;
    s.prompt = "a red car".into();
    (s.steps, s.width, s.height) = (2, 32, 32);
    h.step();
    click(&mut h, "Generate");
    wait(&mut h, "an f16 image", 60, |a| {
        !a.busy() && matches!(a.image.pair(), Some((Some(_), _)))
    });
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let (u, _) = h.state().image.pair().unwrap_or_else(|| panic!("no pair"));
    let u = u.unwrap_or_else(|| panic!("no unsteered image"));
    assert_eq!(u.image.dimensions(), (32, 32));
}

/// The app's image fit is the CLI's: the same `ImageFitRequest` through the worker gives the
/// maps `pipeline::fit_image_concept` returns directly: along the denoising trajectory by
/// default, and on the first step (causal, or simultaneous with a few prompts per pass when
/// that box is ticked) once the trajectory box is unticked.
#[test]
fn the_image_fit_form_sends_the_pipeline_request_causal_or_simultaneous() {
    use act_studio::diffusion::pipeline::{LoadOptions, SdPipeline};
    use act_studio::pipeline::fit_image_concept::{ImageConceptSource, ImageFitRequest, fit_image_concept};
    use act_studio::pipeline::fit_model::Estimation;

    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&model, 11).unwrap_or_else(|e| panic!("{e}"));
    let mut h = loaded(&model);
    assert!(
        h.state().settings.image.fit_trajectory,
        "trajectory fits by default"
    );
    h.get_by_role_and_label(accesskit::Role::CheckBox, "along the denoising trajectory")
        .click();
    h.step();
    assert!(!h.state().settings.image.fit_trajectory, "the box unticks");
    h.get_by_role_and_label(accesskit::Role::CheckBox, "simultaneous")
        .click();
    h.step();
    assert!(h.state().settings.image.fit_simultaneous, "the box ticks");
    h.state_mut().settings.image.fit_chunk = 3;
    h.step();
    fit(&mut h);
    let from_app = h.state().stack[0].concept.maps.clone();
    assert_eq!(from_app.meta().estimation, "simultaneous");

    let pipe = SdPipeline::load(&model, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let s = &h.state().settings.image;
    let req = ImageFitRequest {
        name: None,
        hooks: s.fit_hooks.clone(),
        limit: s.fit_limit,
        size: Some(s.fit_size),
        steps: Some(s.steps),
        seed: s.seed,
        estimation: Estimation::Simultaneous,
        chunk: 3,
        trajectory: false,
        ..ImageFitRequest::new(ImageConceptSource::Builtin("negate:cat".into()))
    };
    let direct = fit_image_concept(&pipe, &req, &mut |_, _| true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(direct.counts, (4, 4));
    let params = |m: &act_studio::transport::MapsFile| -> Vec<(String, Vec<f32>, Vec<f32>)> {
        m.hooks()
            .map(|(n, h)| (n.to_string(), h.omega().to_vec(), h.beta().to_vec()))
            .collect()
    };
    assert!(!params(&direct.maps).is_empty());
    assert_eq!(
        params(&from_app),
        params(&direct.maps),
        "the app's maps are the pipeline's"
    );
    let causal = fit_image_concept(
        &pipe,
        &ImageFitRequest {
            estimation: Estimation::Causal,
            ..req.clone()
        },
        &mut |_, _| true,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(causal.maps.meta().estimation, "causal");
    assert_ne!(
        params(&causal.maps),
        params(&direct.maps),
        "causal and simultaneous maps differ"
    );
    // A trajectory fit is causal only, with one map per step and hook point.
    let both = ImageFitRequest {
        trajectory: true,
        ..req.clone()
    };
    assert!(fit_image_concept(&pipe, &both, &mut |_, _| true).is_err());
    let traj = fit_image_concept(
        &pipe,
        &ImageFitRequest {
            estimation: Estimation::Causal,
            ..both
        },
        &mut |_, _| true,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (per_step, base) = (traj.maps.hooks().count(), causal.maps.hooks().count());
    assert!(
        per_step % base == 0 && per_step / base >= s.steps,
        "one map per step and hook point: {per_step} maps, {base} hook points, {} steps",
        s.steps
    );
    assert!(traj.maps.meta().estimation.contains("trajectories"));
}

/// The fit form's "samples" choice reaches the request: "every pixel / token" fits maps on
/// positions, the same maps as the pipeline's with `pooling: Some(Positions)`.
#[test]
fn the_image_fit_form_can_sample_every_pixel() {
    use act_studio::diffusion::pipeline::{LoadOptions, SdPipeline};
    use act_studio::pipeline::fit_image_concept::{
        ImageConceptSource, ImageFitRequest, SamplePooling, fit_image_concept,
    };

    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&model, 11).unwrap_or_else(|e| panic!("{e}"));
    let mut h = loaded(&model);
    assert_eq!(
        h.state().settings.image.fit_pooling,
        "",
        "the concept's choice by default"
    );
    h.get_by_label("samples").click();
    h.run();
    h.get_by_label("every pixel / token").click();
    h.run();
    assert_eq!(h.state().settings.image.fit_pooling, "positions");
    fit(&mut h);
    let from_app = h.state().stack[0].concept.maps.clone();
    assert_eq!(from_app.meta().pooling, "positions");
    assert!(from_app.hooks().all(|(_, m)| m.per_position()));

    let pipe = SdPipeline::load(&model, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let s = &h.state().settings.image;
    let req = ImageFitRequest {
        hooks: s.fit_hooks.clone(),
        limit: s.fit_limit,
        size: Some(s.fit_size),
        steps: Some(s.steps),
        seed: s.seed,
        pooling: Some(SamplePooling::Positions),
        ..ImageFitRequest::new(ImageConceptSource::Builtin("negate:cat".into()))
    };
    let direct = fit_image_concept(&pipe, &req, &mut |_, _| true).unwrap_or_else(|e| panic!("{e}"));
    let params = |m: &act_studio::transport::MapsFile| -> Vec<(String, Vec<f32>, Vec<f32>)> {
        m.hooks()
            .map(|(n, h)| (n.to_string(), h.omega().to_vec(), h.beta().to_vec()))
            .collect()
    };
    assert_eq!(
        params(&from_app),
        params(&direct.maps),
        "the app's maps are the pipeline's"
    );
}

/// Generate pressed while an image concept is being fitted waits for the fit, then steers
/// with the concept it produced (the request is built when the worker is free).
#[test]
fn generate_during_an_image_fit_waits_and_steers_with_the_new_concept() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&model, 21).unwrap_or_else(|e| panic!("{e}"));
    let mut h = loaded(&model);
    click(&mut h, "Fit image concept");
    assert!(h.state().busy(), "the fit is under way");
    click(&mut h, "Generate");
    assert!(h.state().image.queued.is_some(), "the pair waits for the fit");
    wait(&mut h, "the fit and then the pair", 180, |a| {
        !a.busy() && a.image.queued.is_none() && matches!(a.image.pair(), Some((Some(_), Some(_))))
    });
    let (u, s) = match h.state().image.pair() {
        Some((Some(u), Some(s))) => (u.clone(), s.clone()),
        _ => panic!("no pair"),
    };
    assert_eq!(
        s.meta.lambdas,
        vec![("negate:cat".to_string(), 1.0)],
        "steered with the new concept"
    );
    assert_ne!(s.image, u.image, "λ = 1 of the new concept changes the image");
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
}

/// The hooks box starts at "as the concept asks": a model folder's concept that names its hook
/// points (`"hooks"` in `act_studio_concepts.json`) is fitted there, and a preset picked in the
/// box wins over it.
#[test]
fn the_image_fit_form_takes_the_concept_s_hook_points_unless_one_is_picked() {
    use act_studio::pipeline::image_concepts::{FOLDER_CONCEPTS, image_concept_for};

    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&model, 11).unwrap_or_else(|e| panic!("{e}"));
    let pair = image_concept_for("negate:cat", None).unwrap_or_else(|e| panic!("{e}"));
    let concepts = serde_json::json!({"concepts": [{
        "name": "negate:cat",
        "about": "the built-in prompts, at the cross-attention outputs",
        "source": pair.source,
        "target": pair.target,
        "hooks": "unet-cross-attention",
    }]});
    std::fs::write(model.join(FOLDER_CONCEPTS), concepts.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let mut h = loaded(&model);
    assert_eq!(
        h.state().settings.image.fit_hooks,
        "",
        "the concept's choice by default"
    );
    fit(&mut h);
    let names = |h: &H| -> Vec<String> {
        h.state().stack[0]
            .concept
            .maps
            .hooks()
            .map(|(n, _)| n.to_string())
            .collect()
    };
    let first = names(&h);
    assert!(!first.is_empty());
    assert!(
        first.iter().all(|n| n.contains(".attn2")),
        "fitted at the concept's hook points: {first:?}"
    );

    h.get_by_label("hooks").click();
    h.run();
    h.get_by_label("unet-norms").click();
    h.run();
    assert_eq!(h.state().settings.image.fit_hooks, "unet-norms");
    h.state_mut().stack.clear();
    h.step();
    fit(&mut h);
    let second = names(&h);
    assert!(!second.is_empty());
    assert!(
        second.iter().all(|n| !n.contains(".attn2")),
        "fitted at the picked preset: {second:?}"
    );
}
