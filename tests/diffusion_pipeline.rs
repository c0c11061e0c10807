//! The whole text-to-image pipeline on tiny random-weight folders in the diffusers layout:
//! generation end to end with PNG metadata, fitting, steering rules, and bad input.

mod sd_common;

use std::path::Path;
use std::sync::Arc;

use act_studio::diffusion::hooks::{ActShape, DiffActivation, DiffHooks, SamplePooling};
use act_studio::diffusion::image_io::{ImageMeta, read_png_meta, save_png, tensor_to_images};
use act_studio::diffusion::pipeline::{ImageRequest, LoadOptions, SdPipeline};
use act_studio::diffusion::scheduler::SchedulerKind;
use act_studio::diffusion::steer::{Chain, DiffSteeringHooks, StepWindow};
use act_studio::pipeline::diffusion_fit::{ImageFitOptions, fit_image_maps, select_hooks};
use act_studio::pipeline::fit_model::Estimation;
use act_studio::pipeline::image_concepts::PromptPair;
use act_studio::runtime::HookFlow;
use act_studio::transport::{FitConfig, MapsFile, Method, SteeringStack, Support};
use candle_core::Tensor;
use sd_common::maps::{linear_map, maps_file};
use sd_common::tiny_sd::{write_tiny_sd15, write_tiny_sdxl};

fn load(dir: &Path) -> SdPipeline {
    SdPipeline::load(dir, &LoadOptions::default()).unwrap()
}

fn request(p: &SdPipeline, prompt: &str, steps: usize, guidance: f32) -> ImageRequest {
    ImageRequest {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        seed: 42,
        steps,
        guidance,
        width: 32,
        height: 32,
        scheduler: p.scheduler_config().class,
    }
}

fn pair() -> PromptPair {
    let caps = [
        "a cat on a mat",
        "a dog in the park",
        "a photo of a tree",
        "a red car",
        "a small boat",
        "a house",
    ];
    PromptPair {
        name: "style".into(),
        source: caps.iter().map(|c| c.to_string()).collect(),
        target: caps
            .iter()
            .map(|c| format!("{c}, oil painting style, thick brush strokes"))
            .collect(),
        pooling: None,
        hooks: None,
        method: None,
    }
}

fn fit(p: &SdPipeline, hooks: &str) -> MapsFile {
    let opts = ImageFitOptions {
        config: FitConfig {
            method: Method::LinearAct,
            support: Support::Unbounded,
        },
        hooks: hooks.into(),
        request: request(p, "", 2, 0.0),
        step: 0,
        trajectory: false,
        estimation: act_studio::pipeline::fit_model::Estimation::Causal,
        chunk: 8,
        pooling: SamplePooling::Mean,
    };
    fit_image_maps(p, &pair(), &opts, &mut |_, _| true).unwrap()
}

fn fit_with(p: &SdPipeline, estimation: Estimation, chunk: usize) -> MapsFile {
    fit_pooled(p, estimation, chunk, SamplePooling::Mean)
}

fn fit_pooled(p: &SdPipeline, estimation: Estimation, chunk: usize, pooling: SamplePooling) -> MapsFile {
    let opts = ImageFitOptions {
        config: FitConfig {
            method: Method::LinearAct,
            support: Support::Unbounded,
        },
        hooks: "unet-norms".into(),
        request: request(p, "", 2, 0.0),
        step: 0,
        trajectory: false,
        estimation,
        chunk,
        pooling,
    };
    fit_image_maps(p, &pair(), &opts, &mut |_, _| true).unwrap()
}

fn run(p: &SdPipeline, r: &ImageRequest, stack: &SteeringStack, w: StepWindow) -> Tensor {
    p.generate(r, stack, w, &mut |_, _| true).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn stack_of(maps: MapsFile, lambda: f32) -> SteeringStack {
    let mut s = SteeringStack::default();
    s.push(Arc::new(maps), lambda);
    s
}

#[test]
fn sd15_end_to_end_png_with_metadata_and_lambda_zero_is_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&root, 1).unwrap();
    let p = load(&root);
    assert_eq!(p.family().name(), "sd1");
    let r = request(&p, "a photo of a cat", 3, 7.5);
    let plain = run(&p, &r, &SteeringStack::default(), StepWindow::ALL);
    assert_eq!(plain.dims(), &[1, 3, 32, 32]);
    // Deterministic: the same seed gives the same image.
    assert_eq!(
        bits(&plain),
        bits(&run(&p, &r, &SteeringStack::default(), StepWindow::ALL))
    );

    // Maps fitted on this model; λ = 0 is the unsteered image bit for bit, λ = 1 differs.
    let maps = fit(&p, "unet-norms");
    let n_unet = select_hooks(p.hook_sites(), "unet-norms").unwrap().len();
    // The cross-attention outputs are hook points of their own, one per transformer block,
    // outside every norm preset.
    let cross = select_hooks(p.hook_sites(), "unet-cross-attention").unwrap();
    let norm3 = p
        .hook_sites()
        .iter()
        .filter(|s| s.name.ends_with(".norm3"))
        .count();
    assert!(norm3 > 0);
    assert_eq!(cross.len(), norm3);
    for preset in ["unet-norms", "all-norms", "unet-layernorms", "text-encoder-norms"] {
        let ids = select_hooks(p.hook_sites(), preset).unwrap();
        assert!(
            ids.iter().all(|i| !cross.contains(i)),
            "{preset} takes a cross-attention output"
        );
    }
    for &i in &cross {
        let site = &p.hook_sites()[i];
        assert!(
            site.name.starts_with("unet.") && site.name.ends_with(".attn2"),
            "{}",
            site.name
        );
        assert_eq!(site.kind, act_studio::diffusion::HookSiteKind::CrossAttention);
    }
    assert_eq!(maps.meta().hook_points.len(), n_unet);
    let zero = run(&p, &r, &stack_of(maps.clone(), 0.0), StepWindow::ALL);
    assert_eq!(
        bits(&zero),
        bits(&plain),
        "λ = 0 must reproduce the unsteered image exactly"
    );
    let one = run(&p, &r, &stack_of(maps.clone(), 1.0), StepWindow::ALL);
    let d = (&one - &plain)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    println!("λ=1 vs unsteered: max |Δ pixel| = {d}");
    assert!(d > 1e-3);
    // Maps on the cross-attention outputs steer too, and are the identity at λ = 0.
    let cross_maps = fit(&p, "unet-cross-attention");
    assert_eq!(cross_maps.meta().hook_points.len(), cross.len());
    let zero = run(&p, &r, &stack_of(cross_maps.clone(), 0.0), StepWindow::ALL);
    assert_eq!(bits(&zero), bits(&plain), "cross-attention maps at λ = 0");
    let one = run(&p, &r, &stack_of(cross_maps, 1.0), StepWindow::ALL);
    let d_cross = sd_common::compare::max_abs_diff(&one, &plain);
    assert!(
        d_cross > 1e-4,
        "cross-attention maps at λ = 1 change nothing: {d_cross}"
    );
    // A step window steers only some steps: different from both.
    let late = run(
        &p,
        &r,
        &stack_of(maps.clone(), 1.0),
        StepWindow { start: 2, end: 3 },
    );
    assert_ne!(bits(&late), bits(&plain));
    assert_ne!(bits(&late), bits(&one));

    // PNG with its settings in tEXt chunks, read back.
    let img = tensor_to_images(&one).unwrap().remove(0);
    let meta = ImageMeta {
        prompt: r.prompt.clone(),
        seed: r.seed,
        steps: r.steps,
        guidance: r.guidance,
        width: 32,
        height: 32,
        scheduler: r.scheduler.name().into(),
        lambdas: vec![("style".into(), 1.0)],
        maps_sha256: vec![("style".into(), maps.meta().data_sha256.clone())],
        model: p.name(),
        ..Default::default()
    };
    let out = tmp.path().join("a.png");
    save_png(&out, &img, Some(&meta)).unwrap();
    assert_eq!(read_png_meta(&out).unwrap(), meta);
    let back = image::open(&out).unwrap().to_rgb8();
    assert_eq!(back, img);
}

#[test]
fn sdxl_turbo_structure_runs_with_guidance_negative_prompt_and_text_encoder_maps() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tiny-sdxl-turbo");
    write_tiny_sdxl(&root, 5).unwrap();
    let p = load(&root);
    assert_eq!(p.family().name(), "sdxl");
    assert!(p.is_few_step());
    let d = p.default_request("x");
    assert_eq!(
        (d.steps, d.guidance, d.scheduler),
        (1, 0.0, SchedulerKind::EulerAncestral)
    );
    let names: Vec<&str> = p.hook_sites().iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"text_encoder_2.final_layer_norm"));
    let mut r = request(&p, "a photo of a dog", 2, 3.0);
    let a = run(&p, &r, &SteeringStack::default(), StepWindow::ALL);
    r.negative_prompt = "blurry".into();
    let b = run(&p, &r, &SteeringStack::default(), StepWindow::ALL);
    assert_ne!(bits(&a), bits(&b), "the negative prompt must matter");
    // Text-encoder maps steer through the conditioning.
    let maps = fit(&p, "text-encoder-norms");
    assert!(
        maps.meta()
            .hook_points
            .iter()
            .all(|h| h.name.starts_with("text_encoder"))
    );
    // SDXL conditions on the first encoder's penultimate state: its last layer and final
    // norm cannot change the image, so fitting leaves them out.
    let fitted: Vec<&str> = maps.meta().hook_points.iter().map(|h| h.name.as_str()).collect();
    assert!(!fitted.contains(&"text_encoder.final_layer_norm"));
    assert!(!fitted.contains(&"text_encoder.layers.1.layer_norm2"));
    assert!(fitted.contains(&"text_encoder.layers.0.layer_norm2"));
    assert!(fitted.contains(&"text_encoder_2.final_layer_norm"));
    let steered = run(&p, &r, &stack_of(maps.clone(), 1.0), StepWindow::ALL);
    assert_ne!(bits(&steered), bits(&b));
    assert_eq!(
        bits(&run(&p, &r, &stack_of(maps, 0.0), StepWindow::ALL)),
        bits(&b)
    );
}

/// Records every channel's spatial mean and the per-pixel deviations at one hook.
struct Record {
    id: usize,
    seen: Vec<Vec<f32>>,
}

impl DiffHooks for Record {
    fn wants(&self, id: usize) -> bool {
        id == self.id
    }
    fn on_activation(
        &mut self,
        _: usize,
        act: DiffActivation<'_>,
    ) -> act_studio::diffusion::Result<HookFlow> {
        assert!(matches!(act.shape, ActShape::Spatial(_)));
        self.seen.push(act.data.to_vec());
        Ok(HookFlow::Stop)
    }
}

#[test]
fn spatial_mean_rule_shifts_exactly_one_channel_mean_and_keeps_deviations() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&root, 2).unwrap();
    let p = load(&root);
    let name = "unet.down_blocks.1.resnets.0.norm2";
    let id = p.hook_sites().iter().position(|s| s.name == name).unwrap();
    let c = p.hook_sites()[id].dim;
    // Linear-AcT map: identity everywhere except channel 3, moved by +0.75.
    let k = 3;
    let mut beta = vec![0.0f32; c];
    beta[k] = 0.75;
    let map = linear_map(vec![1.0; c], beta);
    let maps = maps_file("shift", p.fingerprint(), vec![(name.to_string(), map)]);
    let stack = stack_of(maps, 1.0);

    let r = request(&p, "a cat", 1, 0.0);
    let cond = p
        .encode_prompts(&["a cat"], &mut act_studio::diffusion::NoDiffHooks)
        .unwrap();
    let (x, _) = p.initial_noise(&r).unwrap();
    let unet_cond = act_studio::diffusion::unet::UNetCond {
        text: &cond.text,
        text_time: None,
    };
    let mut plain = Record { id, seen: vec![] };
    let _ = p.unet().forward(&x, 500.0, &unet_cond, &mut plain);
    let mut steer: DiffSteeringHooks = p.steering(&stack, StepWindow::ALL, &r).unwrap();
    let mut rec = Record { id, seen: vec![] };
    let _ = p
        .unet()
        .forward(&x, 500.0, &unet_cond, &mut Chain(&mut steer, &mut rec));
    let (a, b) = (&plain.seen[0], &rec.seen[0]);
    let hw = a.len() / c;
    let mut max_dev = 0.0f32;
    for ch in 0..c {
        let pa = &a[ch * hw..(ch + 1) * hw];
        let pb = &b[ch * hw..(ch + 1) * hw];
        let ma = pa.iter().sum::<f32>() / hw as f32;
        let mb = pb.iter().sum::<f32>() / hw as f32;
        let want = if ch == k { 0.75 } else { 0.0 };
        assert!(
            (mb - ma - want).abs() < 1e-5,
            "channel {ch}: mean moved {}",
            mb - ma
        );
        for (x, y) in pa.iter().zip(pb) {
            max_dev = max_dev.max(((y - mb) - (x - ma)).abs());
        }
    }
    println!("per-pixel deviations preserved within {max_dev:.1e}");
    assert!(max_dev < 1e-5);

    // Linear-AcT with ω ≠ 1 on a 4-D activation: the shift is T(m) − m on every pixel.
    let mut omega = vec![1.0f32; c];
    omega[k] = 0.5;
    let map = linear_map(omega, vec![0.0; c]);
    let mut data = a.clone();
    map.apply_4d(name, &mut data, [1, c, hw, 1], 1.0).unwrap();
    let pa = &a[k * hw..(k + 1) * hw];
    let m = pa.iter().sum::<f32>() / hw as f32;
    for (x, y) in pa.iter().zip(&data[k * hw..(k + 1) * hw]) {
        assert!((y - (x - 0.5 * m)).abs() < 1e-5);
    }
}

#[test]
fn bad_folders_and_foreign_maps_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sd");
    write_tiny_sd15(&root, 3).unwrap();
    let err = |dir: &Path| {
        SdPipeline::load(dir, &LoadOptions::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };

    // Missing component.
    let missing = tmp.path().join("no-vae");
    copy_dir(&root, &missing);
    std::fs::remove_dir_all(missing.join("vae")).unwrap();
    let e = err(&missing);
    assert!(e.contains("vae"), "{e}");
    assert!(err(&tmp.path().join("nowhere")).contains("nowhere"));

    // Mismatched shapes: a UNet expecting another text width.
    let wrong = tmp.path().join("wrong-width");
    copy_dir(&root, &wrong);
    let cfg_path = wrong.join("unet/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["cross_attention_dim"] = serde_json::json!(48);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = err(&wrong);
    assert!(e.contains("unet") && e.contains("attn2"), "{e}");

    // Scheduler options we do not implement load with a warning, not silently.
    let karras = tmp.path().join("karras");
    copy_dir(&root, &karras);
    let sp = karras.join("scheduler/scheduler_config.json");
    let mut sc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&sp).unwrap()).unwrap();
    sc["use_karras_sigmas"] = serde_json::json!(true);
    std::fs::write(&sp, sc.to_string()).unwrap();
    let w = SdPipeline::load(&karras, &LoadOptions::default())
        .unwrap()
        .warnings()
        .join(" ");
    assert!(w.contains("use_karras_sigmas"), "{w}");

    // A broken config.
    let broken = tmp.path().join("broken");
    copy_dir(&root, &broken);
    std::fs::write(broken.join("unet/config.json"), "{ not json").unwrap();
    assert!(err(&broken).contains("config.json"));

    // Maps fitted on another model.
    let p = load(&root);
    let other_root = tmp.path().join("other");
    write_tiny_sd15(&other_root, 99).unwrap();
    let other = load(&other_root);
    let maps = fit(&other, "unet-groupnorms");
    let path = tmp.path().join("other.safetensors");
    maps.save(&path).unwrap();
    let e = MapsFile::load_for(&path, p.fingerprint())
        .unwrap_err()
        .to_string();
    assert!(e.contains("sd1"), "{e}");

    // Impossible requests.
    let mut r = request(&p, "x", 0, 0.0);
    assert!(
        p.generate(&r, &SteeringStack::default(), StepWindow::ALL, &mut |_, _| true)
            .is_err()
    );
    r.steps = 1;
    r.width = 31;
    assert!(
        p.generate(&r, &SteeringStack::default(), StepWindow::ALL, &mut |_, _| true)
            .is_err()
    );
    // Cancel.
    r.width = 32;
    let e = p
        .generate(&r, &SteeringStack::default(), StepWindow::ALL, &mut |_, _| false)
        .unwrap_err();
    assert!(e.to_string().contains("cancel"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn f16_pipeline_runs_and_stays_close_to_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&root, 4).unwrap();
    let p32 = load(&root);
    let opts = LoadOptions {
        dtype: candle_core::DType::F16,
        ..Default::default()
    };
    let p16 = SdPipeline::load(&root, &opts).unwrap();
    let r = request(&p32, "a photo of a cat", 2, 0.0);
    let a = run(&p32, &r, &SteeringStack::default(), StepWindow::ALL);
    let b = run(&p16, &r, &SteeringStack::default(), StepWindow::ALL);
    let d = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    println!("f16 vs f32 image: max |Δ| = {d:.3e} (max |x| {scale:.2})");
    assert!(d < 0.05 * scale.max(1.0), "{d}");
    // f16 maps fitting works too and the maps apply.
    let maps = fit(&p16, "unet-groupnorms");
    let s = run(&p16, &r, &stack_of(maps, 1.0), StepWindow::ALL);
    assert_ne!(bits(&s), bits(&b));
}

/// Writes a tiny SD 1.5 folder to `$ACT_TINY_SD_DIR` (for the README's image-mode
/// screenshot: `act-studio app --image-model DIR --screenshot docs/app-image.png`).
#[test]
#[ignore = "writes a tiny model folder for screenshots; run on demand"]
fn write_tiny_folder_for_screenshots() {
    let dir = std::env::var_os("ACT_TINY_SD_DIR").expect("set ACT_TINY_SD_DIR");
    write_tiny_sd15(Path::new(&dir), 21).unwrap();
}

/// Largest |Δ| between two maps files' ω and β at hook point `name`.
fn param_diff(a: &MapsFile, b: &MapsFile, name: &str) -> f32 {
    let (x, y) = (a.hook(name).unwrap(), b.hook(name).unwrap());
    x.omega()
        .iter()
        .zip(y.omega())
        .chain(x.beta().iter().zip(y.beta()))
        .map(|(u, v)| (u - v).abs())
        .fold(0.0, f32::max)
}

#[test]
fn simultaneous_fitting_in_chunks_equals_one_batch_and_differs_from_causal() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&root, 6).unwrap();
    let p = load(&root);
    let causal = fit_with(&p, Estimation::Causal, 0);
    let whole = fit_with(&p, Estimation::Simultaneous, 100);
    let chunked = fit_with(&p, Estimation::Simultaneous, 5);
    assert_eq!(chunked.meta().estimation, "simultaneous");
    assert_eq!(causal.meta().estimation, "causal");
    let mut chunk_vs_whole = 0.0f32;
    let mut causal_vs_simultaneous = 0.0f32;
    for h in &whole.meta().hook_points {
        chunk_vs_whole = chunk_vs_whole.max(param_diff(&chunked, &whole, &h.name));
        causal_vs_simultaneous = causal_vs_simultaneous.max(param_diff(&causal, &whole, &h.name));
    }
    // The first hook point sees unsteered activations either way.
    let first = &whole.meta().hook_points[0].name;
    println!(
        "chunks of 5 vs one batch: max |Δ| = {chunk_vs_whole:.1e}; causal vs simultaneous: {causal_vs_simultaneous:.2}"
    );
    assert!(chunk_vs_whole < 1e-3, "{chunk_vs_whole}");
    assert!(param_diff(&causal, &whole, first) < 1e-3);
    assert!(
        causal_vs_simultaneous > 1e-2,
        "causal estimation must see earlier maps"
    );
}

/// Maps fitted on every pixel / token: recorded in chunks they equal one batch (each chunk's
/// samples land on the right side), they are marked as such in memory and in the metadata,
/// and they differ from maps fitted on per-prompt means.
#[test]
fn maps_fitted_on_positions_in_chunks_equal_one_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&root, 6).unwrap();
    let p = load(&root);
    let pos = SamplePooling::Positions;
    let whole = fit_pooled(&p, Estimation::Simultaneous, 100, pos);
    let chunked = fit_pooled(&p, Estimation::Simultaneous, 5, pos);
    let causal = fit_pooled(&p, Estimation::Causal, 0, pos);
    let means = fit_with(&p, Estimation::Simultaneous, 100);
    for m in [&whole, &chunked, &causal] {
        assert_eq!(m.meta().pooling, "positions");
        assert!(m.hooks().all(|(_, h)| h.per_position()));
    }
    assert!(means.hooks().all(|(_, h)| !h.per_position()));
    let (mut chunk_vs_whole, mut positions_vs_means) = (0.0f32, 0.0f32);
    for h in &whole.meta().hook_points {
        chunk_vs_whole = chunk_vs_whole.max(param_diff(&chunked, &whole, &h.name));
        positions_vs_means = positions_vs_means.max(param_diff(&means, &whole, &h.name));
    }
    println!("positions: chunks vs one batch max |Δ| {chunk_vs_whole:.1e}; vs means {positions_vs_means:.2}");
    assert!(chunk_vs_whole < 1e-3, "{chunk_vs_whole}");
    assert!(positions_vs_means > 1e-2, "{positions_vs_means}");
    // The first hook point sees unsteered activations in causal estimation too.
    let first = &whole.meta().hook_points[0].name;
    assert!(param_diff(&causal, &whole, first) < 1e-3);
}

/// Fitting along denoising trajectories gives one map per step and hook point (`HOOK@tK`
/// for the schedule's timesteps); steering with them picks each step's map, acts on the
/// conditional rows only (guidance's unconditional branch is the reference), is the
/// unsteered image bit for bit at λ = 0 and changes it at λ = 1.
#[test]
fn trajectory_maps_are_per_step_and_steer_the_conditional_branch() {
    use act_studio::diffusion::DiffPhase;
    use act_studio::diffusion::scheduler::Scheduler;
    use act_studio::transport::split_timestep;

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&root, 5).unwrap();
    let p = load(&root);
    let req = request(&p, "", 3, 5.0);
    let opts = ImageFitOptions {
        config: FitConfig {
            method: Method::LinearAct,
            support: Support::Unbounded,
        },
        hooks: "unet-norms".into(),
        request: req.clone(),
        step: 0,
        trajectory: true,
        estimation: Estimation::Causal,
        chunk: 8,
        pooling: SamplePooling::Mean,
    };
    let maps = fit_image_maps(&p, &pair(), &opts, &mut |_, _| true).unwrap();
    let timesteps = Scheduler::new(p.scheduler_config(), req.scheduler, req.steps)
        .unwrap()
        .timesteps()
        .to_vec();
    let hooks = select_hooks(p.hook_sites(), "unet-norms").unwrap().len();
    let names: Vec<String> = maps.hooks().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        names.len(),
        hooks * timesteps.len(),
        "one map per step and hook point"
    );
    for t in &timesteps {
        let at_t = names
            .iter()
            .filter(|n| split_timestep(n).1 == Some(t.round() as u64))
            .count();
        assert_eq!(at_t, hooks, "maps at timestep {t}");
    }
    assert!(
        maps.meta().estimation.contains("trajectories"),
        "{}",
        maps.meta().estimation
    );
    // Simultaneous estimation is refused along trajectories.
    let simultaneous = ImageFitOptions {
        estimation: Estimation::Simultaneous,
        ..opts.clone()
    };
    assert!(fit_image_maps(&p, &pair(), &simultaneous, &mut |_, _| true).is_err());

    // One hook point, fed two identical rows as [unconditional, conditional].
    let name = "unet.down_blocks.1.resnets.0.norm2";
    let id = p.hook_sites().iter().position(|s| s.name == name).unwrap();
    let c = p.hook_sites()[id].dim;
    let stack = stack_of(maps, 1.0);
    let mut steer = p.steering(&stack, StepWindow::ALL, &req).unwrap();
    let row: Vec<f32> = (0..c * 4).map(|i| (i as f32 * 0.37).sin()).collect();
    let at_step = |steer: &mut DiffSteeringHooks, step: usize| -> Vec<f32> {
        steer.begin(DiffPhase::Step {
            step,
            unconditional: 1,
        });
        assert!(steer.wants(id));
        let mut data = [row.clone(), row.clone()].concat();
        steer
            .on_activation(
                id,
                DiffActivation {
                    data: &mut data,
                    shape: ActShape::Spatial([2, c, 2, 2]),
                },
            )
            .unwrap();
        assert_eq!(
            &data[..row.len()],
            &row[..],
            "the unconditional row is left alone"
        );
        data[row.len()..].to_vec()
    };
    let first = at_step(&mut steer, 0);
    let last = at_step(&mut steer, timesteps.len() - 1);
    assert_ne!(first, row, "the conditional row is steered");
    assert_ne!(first, last, "each step has its own map");

    // Whole images: λ = 0 is the unsteered image bit for bit, λ = 1 differs.
    let mut r = request(&p, "a red car", 3, 5.0);
    r.seed = 9;
    let plain = run(&p, &r, &SteeringStack::default(), StepWindow::ALL);
    let mut zero = stack.clone();
    zero.concepts[0].lambda = 0.0;
    assert_eq!(bits(&run(&p, &r, &zero, StepWindow::ALL)), bits(&plain));
    assert_ne!(bits(&run(&p, &r, &stack, StepWindow::ALL)), bits(&plain));
}

/// Per-step previews: the sink is asked at every step of every image and gets pictures
/// only when it wants them — the VAE's for small latents, the linear latent → RGB map for
/// large ones (checked against its formula).
#[test]
fn previews_come_per_step_when_wanted() {
    use act_studio::pipeline::image_sheet::{
        ImageJob, ImageJobKind, ImageSlot, PreviewSink, render_images_previewed,
    };

    struct Every {
        asked: Vec<(ImageSlot, usize)>,
        got: Vec<(ImageSlot, usize, (u32, u32))>,
    }
    impl PreviewSink for Every {
        fn wants(&mut self, slot: ImageSlot, step: usize, _: usize) -> bool {
            self.asked.push((slot, step));
            step.is_multiple_of(2)
        }
        fn preview(&mut self, slot: ImageSlot, step: usize, _: usize, image: image::RgbImage) {
            self.got.push((slot, step, image.dimensions()));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tiny-sd15");
    write_tiny_sd15(&root, 6).unwrap();
    let p = load(&root);
    let job = ImageJob {
        kind: ImageJobKind::Pair { unsteered: true },
        request: request(&p, "a cat", 4, 0.0),
        stack: SteeringStack::default(),
        window: None,
    };
    let mut sink = Every {
        asked: vec![],
        got: vec![],
    };
    let mut images = 0;
    render_images_previewed(&p, &job, &mut |_| true, &mut |_, _, _| images += 1, &mut sink).unwrap();
    assert_eq!(images, 2);
    // Nothing steers, so the steered image is the unsteered one: one image is made.
    assert_eq!(
        sink.asked,
        (0..4).map(|s| (ImageSlot::Unsteered, s)).collect::<Vec<_>>()
    );
    assert_eq!(
        sink.got,
        vec![
            (ImageSlot::Unsteered, 0, (32, 32)),
            (ImageSlot::Unsteered, 2, (32, 32))
        ]
    );

    // Large latents: the linear approximation at latent resolution.
    let (h, w) = (40, 48);
    let vals: Vec<f32> = (0..4 * h * w).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
    let lat = Tensor::from_vec(vals.clone(), (1, 4, h, w), &candle_core::Device::Cpu).unwrap();
    let img = p.preview_image(&lat).unwrap();
    assert_eq!(img.dimensions(), (w as u32, h as u32));
    let factors = [
        [0.3512f32, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ];
    for (y, x) in [(0usize, 0usize), (7, 31), (39, 47)] {
        let i = y * w + x;
        let got = img.get_pixel(x as u32, y as u32);
        for (ch, &g) in got.0.iter().enumerate() {
            let lin: f32 = factors
                .iter()
                .enumerate()
                .map(|(k, f)| vals[k * h * w + i] * f[ch])
                .sum();
            let want = (((lin + 1.0) * 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
            assert_eq!(g, want, "({y}, {x}) channel {ch}");
        }
    }
}

/// A tiny SD 1.5 folder whose concepts file holds `negate:cat` (a cat → a dog) with the extra
/// JSON fields `extra`, loaded, and a first-step fit request for it at 32 px, 2 steps.
fn folder_with_negate_cat(
    extra: &str,
) -> (
    tempfile::TempDir,
    SdPipeline,
    act_studio::pipeline::fit_image_concept::ImageFitRequest,
) {
    use act_studio::pipeline::fit_image_concept::{ImageConceptSource, ImageFitRequest};
    use act_studio::pipeline::image_concepts::FOLDER_CONCEPTS;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sd");
    write_tiny_sd15(&root, 3).unwrap();
    std::fs::write(
        root.join(FOLDER_CONCEPTS),
        format!(
            r#"{{"concepts": [{{"name": "negate:cat", "source": ["a cat", "a black cat"], "target": ["a dog", "a black dog"], {extra}}}]}}"#
        ),
    )
    .unwrap();
    let p = load(&root);
    let req = ImageFitRequest {
        size: Some(32),
        steps: Some(2),
        trajectory: false,
        ..ImageFitRequest::new(ImageConceptSource::Builtin("negate:cat".into()))
    };
    (tmp, p, req)
}

/// A folder concept whose `"hooks"` match nothing is a clear error naming the concept and its
/// file; a request that names its own hook points is not affected.
#[test]
fn a_folder_concept_asking_for_unknown_hook_points_is_a_clear_error() {
    use act_studio::pipeline::fit_image_concept::fit_image_concept;
    use act_studio::pipeline::image_concepts::FOLDER_CONCEPTS;

    let (_tmp, p, mut req) = folder_with_negate_cat(r#""hooks": "unet.no_such_block*""#);
    let e = fit_image_concept(&p, &req, &mut |_, _| true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("negate:cat") && e.contains("unet.no_such_block*") && e.contains(FOLDER_CONCEPTS),
        "{e}"
    );
    req.hooks = "unet-cross-attention".into();
    let maps = fit_image_concept(&p, &req, &mut |_, _| true).unwrap();
    assert!(maps.maps.hooks().all(|(n, _)| n.ends_with(".attn2")));
}

/// A folder concept's `"method"` is used when the request names none: joint maps fitted on
/// every pixel of the cross-attention outputs carry a d × d matrix per hook point. Fitted on
/// per-prompt means they are refused at those token-shaped hook points (no spatial-mean rule
/// there), and a request's own method wins over the concept's.
#[test]
fn a_folder_concept_s_method_is_used_and_joint_maps_on_means_at_token_hooks_are_refused() {
    use act_studio::pipeline::fit_image_concept::{SamplePooling, fit_image_concept};

    let (_tmp, p, mut req) = folder_with_negate_cat(
        r#""hooks": "unet-cross-attention", "pooling": "positions", "method": "joint-gaussian""#,
    );
    let maps = fit_image_concept(&p, &req, &mut |_, _| true).unwrap().maps;
    assert_eq!(maps.meta().method, Method::JointGaussian);
    assert!(
        maps.hooks()
            .all(|(_, m)| m.matrix().is_some_and(|a| a.len() == m.dim() * m.dim()))
    );
    req.pooling = Some(SamplePooling::Mean);
    let e = fit_image_concept(&p, &req, &mut |_, _| true)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("positions") && e.contains(".attn2"), "{e}");
    req.method = Some(Method::LinearAct);
    let maps = fit_image_concept(&p, &req, &mut |_, _| true).unwrap().maps;
    assert_eq!(maps.meta().method, Method::LinearAct);
    assert!(maps.hooks().all(|(_, m)| m.matrix().is_none()));
}
