//! Our VAE decoder and schedulers against candle-transformers' Stable Diffusion reference
//! implementations and the diffusers formulas, on tiny random weights.

mod sd_common;

use std::collections::HashMap;
use std::path::Path;

use act_studio::diffusion::DiffusionError;
use act_studio::diffusion::scheduler::{
    BetaSchedule, NoiseSource, Prediction, Scheduler, SchedulerConfig, SchedulerKind, Spacing,
};
use act_studio::diffusion::vae::{VaeConfig, VaeDecoder};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::{
    ddim::DDIMSchedulerConfig,
    euler_ancestral_discrete::{EulerAncestralDiscreteScheduler, EulerAncestralDiscreteSchedulerConfig},
    schedulers::{
        PredictionType, Scheduler as CScheduler, SchedulerConfig as CSchedulerConfig, TimestepSpacing,
    },
    vae::AutoEncoderKL,
};
use sd_common::compare::max_abs_diff;
use sd_common::tiny_vae::{TinyVae, write_scheduler_config, write_tiny_vae, write_tiny_vae_named};

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

fn max_abs(a: &Tensor) -> f32 {
    a.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn candle_vae(dir: &Path, cfg: &TinyVae) -> AutoEncoderKL {
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join(WEIGHTS)], DType::F32, &Device::Cpu) }
        .unwrap();
    AutoEncoderKL::new(vb, 3, 3, cfg.candle_config()).unwrap()
}

/// (a) Our decoder equals candle-transformers' `AutoEncoderKL::decode` on the same weights.
#[test]
fn vae_decode_matches_candle_autoencoder_kl() {
    for (label, cfg, seed) in [
        ("small", TinyVae::small(), 1u64),
        ("three_levels", TinyVae::three_levels(), 2),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vae");
        write_tiny_vae(&dir, &cfg, seed).unwrap();
        let ours = VaeDecoder::load(&dir, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(ours.config().block_out_channels, cfg.block_out_channels);
        assert_eq!(ours.config().scaling_factor, cfg.scaling_factor);
        assert_eq!(ours.header_sha256().len(), 64);
        let reference = candle_vae(&dir, &cfg);

        let z = NoiseSource::new(seed + 100)
            .randn(&[2, 4, 8, 6], &Device::Cpu)
            .unwrap();
        let want = reference.decode(&z).unwrap();
        let got = ours.decode_raw(&z).unwrap();
        let up = 1 << (cfg.block_out_channels.len() - 1);
        assert_eq!(got.dims(), &[2, 3, 8 * up, 6 * up]);
        let d = max_abs_diff(&got, &want);
        println!(
            "{label}: decode_raw vs candle AutoEncoderKL::decode: max |Δ| = {d:e} (max |y| = {})",
            max_abs(&want)
        );
        assert!(d < 1e-4, "{label}: max |Δ| = {d}");

        // decode_latents divides by the scaling factor first.
        let latents = (&z * cfg.scaling_factor).unwrap();
        let d2 = max_abs_diff(&ours.decode_latents(&latents).unwrap(), &want);
        println!("{label}: decode_latents(z·scaling) vs candle: max |Δ| = {d2:e}");
        assert!(d2 < 1e-4, "{label}: decode_latents max |Δ| = {d2}");
    }
}

/// (b) The decoder loads and runs in f16 and stays close to f32.
#[test]
fn vae_f16_load_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vae");
    let cfg = TinyVae::small();
    write_tiny_vae(&dir, &cfg, 3).unwrap();
    let f32_dec = VaeDecoder::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let f16_dec = VaeDecoder::load(&dir, DType::F16, &Device::Cpu).unwrap();
    assert_eq!(f16_dec.dtype(), DType::F16);
    let z = NoiseSource::new(4).randn(&[1, 4, 8, 8], &Device::Cpu).unwrap();
    let y16 = f16_dec.decode_raw(&z).unwrap();
    assert_eq!(y16.dtype(), DType::F16);
    assert_eq!(y16.dims(), &[1, 3, 16, 16]);
    let y32 = f32_dec.decode_raw(&z).unwrap();
    let d = max_abs_diff(&y16, &y32);
    let scale = max_abs(&y32);
    println!("f16 vs f32 decode: max |Δ| = {d:e}, max |y| = {scale}");
    assert!(
        d.is_finite() && d <= 0.02 * scale.max(1.0),
        "f16 drifted: {d} vs {scale}"
    );
}

/// (c) Legacy attention names (`query`/`key`/`value`/`proj_attn`), and 1×1-conv-shaped
/// attention weights, load and give the same decoder.
#[test]
fn vae_legacy_attention_names_load() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = TinyVae::small();
    let modern = tmp.path().join("modern/vae");
    let legacy = tmp.path().join("legacy/vae");
    write_tiny_vae(&modern, &cfg, 5).unwrap();
    write_tiny_vae_named(&legacy, &cfg, 5, true).unwrap();
    let names = candle_core::safetensors::load(legacy.join(WEIGHTS), &Device::Cpu).unwrap();
    assert!(names.contains_key("decoder.mid_block.attentions.0.query.weight"));
    assert!(!names.contains_key("decoder.mid_block.attentions.0.to_q.weight"));

    let z = NoiseSource::new(6).randn(&[1, 4, 4, 4], &Device::Cpu).unwrap();
    let y_modern = VaeDecoder::load(&modern, DType::F32, &Device::Cpu)
        .unwrap()
        .decode_raw(&z)
        .unwrap();
    let y_legacy = VaeDecoder::load(&legacy, DType::F32, &Device::Cpu)
        .unwrap()
        .decode_raw(&z)
        .unwrap();
    let d = max_abs_diff(&y_modern, &y_legacy);
    println!("legacy vs modern attention names: max |Δ| = {d:e}");
    assert!(d < 1e-6);
    let d_ref = max_abs_diff(&y_legacy, &candle_vae(&legacy, &cfg).decode(&z).unwrap());
    println!("legacy names vs candle: max |Δ| = {d_ref:e}");
    assert!(d_ref < 1e-4);

    // Attention projections stored as [c, c, 1, 1] convolutions.
    let conv_dir = tmp.path().join("conv/vae");
    std::fs::create_dir_all(&conv_dir).unwrap();
    std::fs::copy(legacy.join("config.json"), conv_dir.join("config.json")).unwrap();
    let mut tensors = names.clone();
    for k in ["query", "key", "value", "proj_attn"] {
        let name = format!("decoder.mid_block.attentions.0.{k}.weight");
        let w = tensors[&name].clone();
        let (o, i) = w.dims2().unwrap();
        tensors.insert(name, w.reshape((o, i, 1, 1)).unwrap());
    }
    candle_core::safetensors::save(&tensors, conv_dir.join(WEIGHTS)).unwrap();
    let y_conv = VaeDecoder::load(&conv_dir, DType::F32, &Device::Cpu)
        .unwrap()
        .decode_raw(&z)
        .unwrap();
    assert!(max_abs_diff(&y_conv, &y_legacy) < 1e-6);
}

fn sd_config(dir: &Path, class: &str, spacing: &str, prediction: &str) -> SchedulerConfig {
    write_scheduler_config(dir, class, spacing, prediction).unwrap();
    SchedulerConfig::from_file(&dir.join("scheduler_config.json")).unwrap()
}

fn randn(ns: &mut NoiseSource, shape: &[usize]) -> Tensor {
    ns.randn(shape, &Device::Cpu).unwrap()
}

/// (d) DDIM (eta 0): timesteps and every step equal candle-transformers' `DDIMScheduler`.
#[test]
fn ddim_matches_candle() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ns = NoiseSource::new(11);
    let mut worst = 0f32;
    for (pred, cpred) in [
        ("epsilon", PredictionType::Epsilon),
        ("v_prediction", PredictionType::VPrediction),
    ] {
        for (spacing, cspacing) in [
            ("leading", TimestepSpacing::Leading),
            ("trailing", TimestepSpacing::Trailing),
        ] {
            let cfg = sd_config(&tmp.path().join("scheduler"), "DDIMScheduler", spacing, pred);
            assert_eq!(cfg.class, SchedulerKind::Ddim);
            assert!(!cfg.set_alpha_to_one && !cfg.clip_sample);
            for steps in [1usize, 5, 10, 50] {
                let mut ours = Scheduler::new(&cfg, SchedulerKind::Ddim, steps).unwrap();
                let mut theirs = DDIMSchedulerConfig {
                    prediction_type: cpred,
                    timestep_spacing: cspacing,
                    ..Default::default()
                }
                .build(steps)
                .unwrap();
                let cts: Vec<f64> = theirs.timesteps().iter().map(|&t| t as f64).collect();
                assert_eq!(ours.timesteps(), cts.as_slice(), "{pred} {spacing} {steps}");
                assert_eq!(ours.init_noise_sigma(), theirs.init_noise_sigma());
                for (i, &t) in theirs.timesteps().to_vec().iter().enumerate().take(4) {
                    let x = randn(&mut ns, &[2, 4, 5, 3]);
                    let m = randn(&mut ns, &[2, 4, 5, 3]);
                    let want = theirs.step(&m, t, &x).unwrap();
                    let got = ours.step(&m, i, &x, &mut ns).unwrap();
                    let scaled = ours.scale_model_input(&x, i).unwrap();
                    assert_eq!(max_abs_diff(&scaled, &x), 0.0);
                    let d = max_abs_diff(&got, &want);
                    worst = worst.max(d);
                    assert!(d < 1e-5, "{pred} {spacing} {steps} step {i}: max |Δ| = {d}");
                }
            }
        }
    }
    println!("DDIM vs candle DDIMScheduler: max |Δ| over all steps = {worst:e}");
}

/// (e) Euler ancestral: timesteps, σ's, initial σ, input scaling and the final (noise-free)
/// step equal candle-transformers' scheduler; a noisy step equals the diffusers formula with
/// the replayed noise.
#[test]
fn euler_ancestral_matches_candle_and_diffusers_formula() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ns = NoiseSource::new(21);
    let shape = [1usize, 4, 6, 6];
    let mut worst_final = 0f32;
    let mut worst_noisy = 0f32;
    for (pred, cpred) in [
        ("epsilon", PredictionType::Epsilon),
        ("v_prediction", PredictionType::VPrediction),
    ] {
        // candle's trailing spacing equals diffusers' only when T / steps is an integer.
        for (spacing, cspacing) in [
            ("leading", TimestepSpacing::Leading),
            ("trailing", TimestepSpacing::Trailing),
        ] {
            let cfg = sd_config(
                &tmp.path().join("scheduler"),
                "EulerAncestralDiscreteScheduler",
                spacing,
                pred,
            );
            assert_eq!(cfg.class, SchedulerKind::EulerAncestral);
            for steps in [1usize, 2, 4, 10, 25] {
                let mut ours = Scheduler::new(&cfg, SchedulerKind::EulerAncestral, steps).unwrap();
                let mut theirs = EulerAncestralDiscreteScheduler::new(
                    steps,
                    EulerAncestralDiscreteSchedulerConfig {
                        prediction_type: cpred,
                        timestep_spacing: cspacing,
                        ..Default::default()
                    },
                )
                .unwrap();
                let label = format!("{pred} {spacing} {steps}");
                let cts: Vec<usize> = theirs.timesteps().to_vec();
                let cts_f: Vec<f64> = cts.iter().map(|&t| t as f64).collect();
                assert_eq!(ours.timesteps(), cts_f.as_slice(), "{label}");
                assert!(
                    (ours.init_noise_sigma() - theirs.init_noise_sigma()).abs() < 1e-9,
                    "{label}"
                );
                // candle's σ_t = add_noise(0, 1, t).
                let zeros = Tensor::zeros(1, DType::F64, &Device::Cpu).unwrap();
                let ones = Tensor::ones(1, DType::F64, &Device::Cpu).unwrap();
                let mut csig: Vec<f64> = cts
                    .iter()
                    .map(|&t| {
                        theirs
                            .add_noise(&zeros, ones.clone(), t)
                            .unwrap()
                            .to_vec1::<f64>()
                            .unwrap()[0]
                    })
                    .collect();
                csig.push(0.0);
                assert_eq!(ours.sigmas().len(), steps + 1);
                for (a, b) in ours.sigmas().iter().zip(&csig) {
                    assert!((a - b).abs() < 1e-9 * b.max(1.0), "{label}: σ {a} vs {b}");
                }
                let x = randn(&mut ns, &shape);
                for (i, &t) in cts.iter().enumerate() {
                    let a = ours.scale_model_input(&x, i).unwrap();
                    let b = theirs.scale_model_input(x.clone(), t).unwrap();
                    assert!(max_abs_diff(&a, &b) < 1e-6, "{label}: scale_model_input");
                }
                // The last step adds no noise (σ_up = 0): deterministic in candle too.
                let last = steps - 1;
                let m = randn(&mut ns, &shape);
                let want = theirs.step(&m, cts[last], &x).unwrap();
                let before = ns.clone();
                let got = ours.step(&m, last, &x, &mut ns).unwrap();
                assert_eq!(before, ns, "no noise drawn on the last step");
                let d = max_abs_diff(&got, &want);
                worst_final = worst_final.max(d);
                assert!(d < 1e-5, "{label}: last step max |Δ| = {d}");

                // A noisy step, by hand (diffusers' EulerAncestralDiscreteScheduler.step).
                if steps >= 2 {
                    let i = 0;
                    let (s, s_next) = (csig[i], csig[i + 1]);
                    let s_up = (s_next * s_next * (s * s - s_next * s_next) / (s * s)).sqrt();
                    let s_down = (s_next * s_next - s_up * s_up).sqrt();
                    let x0 = match pred {
                        "epsilon" => (&x - (&m * s).unwrap()).unwrap(),
                        _ => ((&m * (-s / (s * s + 1.0).sqrt())).unwrap() + (&x / (s * s + 1.0)).unwrap())
                            .unwrap(),
                    };
                    let derivative = ((&x - x0).unwrap() / s).unwrap();
                    let mut replay = ns.clone();
                    let noise = replay.randn(&shape, &Device::Cpu).unwrap();
                    let want = ((&x + (derivative * (s_down - s)).unwrap()).unwrap()
                        + (&noise * s_up).unwrap())
                    .unwrap();
                    let got = ours.step(&m, i, &x, &mut ns).unwrap();
                    assert_eq!(ns, replay, "the step draws exactly one noise tensor");
                    let d = max_abs_diff(&got, &want);
                    worst_noisy = worst_noisy.max(d);
                    assert!(d < 1e-4, "{label}: noisy step max |Δ| = {d}");
                    // step_with_noise with the same tensor gives the same.
                    let again = ours.step_with_noise(&m, i, &x, Some(&noise)).unwrap();
                    assert_eq!(max_abs_diff(&again, &got), 0.0);
                }
            }
        }
    }
    println!("Euler ancestral vs candle, last step: max |Δ| = {worst_final:e}");
    println!("Euler ancestral vs diffusers formula, noisy step: max |Δ| = {worst_noisy:e}");
}

/// (f) Euler discrete: trailing 1 step from pure noise lands on `x − σ·ε` (ε-prediction) or
/// diffusers' v formula; trailing/leading timesteps as diffusers.
#[test]
fn euler_discrete_one_step_and_spacings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("scheduler");
    let cfg = sd_config(&dir, "EulerDiscreteScheduler", "trailing", "epsilon");
    assert_eq!(cfg.class, SchedulerKind::EulerDiscrete);
    assert_eq!(cfg.spacing, Spacing::Trailing);
    assert_eq!(cfg.steps_offset, 1);
    let mut s = Scheduler::new(&cfg, SchedulerKind::EulerDiscrete, 1).unwrap();
    assert_eq!(s.timesteps(), &[999.0]);
    let ac = cfg.alphas_cumprod();
    let sigma = ((1.0 - ac[999]) / ac[999]).sqrt();
    assert!((s.sigmas()[0] - sigma).abs() < 1e-12 && s.sigmas()[1] == 0.0);
    assert!(
        (s.init_noise_sigma() - sigma).abs() < 1e-12,
        "trailing: init σ = σ_max"
    );

    let mut ns = NoiseSource::new(31);
    let x = (randn(&mut ns, &[1, 4, 8, 8]) * s.init_noise_sigma()).unwrap();
    let eps = randn(&mut ns, &[1, 4, 8, 8]);
    let scaled = s.scale_model_input(&x, 0).unwrap();
    assert!(max_abs_diff(&scaled, &(&x / (sigma * sigma + 1.0).sqrt()).unwrap()) < 1e-6);
    let x0 = s.step(&eps, 0, &x, &mut ns).unwrap();
    let want = (&x - (&eps * sigma).unwrap()).unwrap();
    let d = max_abs_diff(&x0, &want);
    println!("Euler 1 trailing step (ε) vs x − σ·ε: max |Δ| = {d:e}");
    assert!(d < 1e-5);

    // The same with euler-a (SD-Turbo): one step adds no noise.
    let mut a = Scheduler::new(&cfg, SchedulerKind::EulerAncestral, 1).unwrap();
    assert_eq!(a.timesteps(), &[999.0]);
    let x0a = a.step(&eps, 0, &x, &mut ns).unwrap();
    assert!(max_abs_diff(&x0a, &want) < 1e-5);

    // v-prediction.
    let vcfg = sd_config(&dir, "EulerDiscreteScheduler", "trailing", "v_prediction");
    assert_eq!(vcfg.prediction, Prediction::VPrediction);
    let mut v = Scheduler::new(&vcfg, SchedulerKind::EulerDiscrete, 1).unwrap();
    let got = v.step(&eps, 0, &x, &mut ns).unwrap();
    let want = ((&eps * (-sigma / (sigma * sigma + 1.0).sqrt())).unwrap()
        + (&x / (sigma * sigma + 1.0)).unwrap())
    .unwrap();
    let dv = max_abs_diff(&got, &want);
    println!("Euler 1 trailing step (v) vs diffusers formula: max |Δ| = {dv:e}");
    assert!(dv < 1e-5);

    let mut s4 = Scheduler::new(&cfg, SchedulerKind::EulerDiscrete, 4).unwrap();
    assert_eq!(s4.timesteps(), &[999.0, 749.0, 499.0, 249.0]);
    let lead = sd_config(&dir, "EulerDiscreteScheduler", "leading", "epsilon");
    let l4 = Scheduler::new(&lead, SchedulerKind::EulerDiscrete, 4).unwrap();
    assert_eq!(l4.timesteps(), &[751.0, 501.0, 251.0, 1.0]);
    let sig_l = ((1.0 - ac[751]) / ac[751]).sqrt();
    assert!(
        (l4.init_noise_sigma() - (sig_l * sig_l + 1.0).sqrt()).abs() < 1e-12,
        "leading: √(σ²+1)"
    );
    let d4 = Scheduler::new(&lead, SchedulerKind::Ddim, 4).unwrap();
    assert_eq!(d4.timesteps(), &[751.0, 501.0, 251.0, 1.0]);

    // A multi-step Euler step: x + (x − x0)/σ · (σ_next − σ) = x + ε (σ_next − σ).
    let m = randn(&mut ns, &[1, 4, 8, 8]);
    let got = s4.step(&m, 1, &x, &mut ns).unwrap();
    let (s1, s2) = (s4.sigmas()[1], s4.sigmas()[2]);
    let want = (&x + (&m * (s2 - s1)).unwrap()).unwrap();
    assert!(max_abs_diff(&got, &want) < 1e-4);
}

/// (g) NoiseSource is reproducible and roughly standard normal.
#[test]
fn noise_source_reproducible_and_standard_normal() {
    let a = NoiseSource::new(42).randn(&[100_000], &Device::Cpu).unwrap();
    let b = NoiseSource::new(42).randn(&[100_000], &Device::Cpu).unwrap();
    let c = NoiseSource::new(43).randn(&[100_000], &Device::Cpu).unwrap();
    assert_eq!(a.dtype(), DType::F32);
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert!(max_abs_diff(&a, &c) > 1.0);
    let v = a.to_vec1::<f32>().unwrap();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
    let within1 = v.iter().filter(|x| x.abs() < 1.0).count() as f64 / n;
    let kurt = v.iter().map(|&x| (f64::from(x) - mean).powi(4)).sum::<f64>() / n / (var * var);
    println!("NoiseSource 100k: mean {mean:.4}, var {var:.4}, P(|x|<1) {within1:.4}, kurtosis {kurt:.3}");
    assert!(mean.abs() < 0.015, "mean {mean}");
    assert!((var - 1.0).abs() < 0.02, "var {var}");
    assert!((within1 - 0.6827).abs() < 0.01, "P(|x|<1) {within1}");
    assert!((kurt - 3.0).abs() < 0.1, "kurtosis {kurt}");
    // Shape and a continued stream.
    let mut s = NoiseSource::new(42);
    let first = s.randn(&[2, 3], &Device::Cpu).unwrap();
    assert_eq!(first.dims(), &[2, 3]);
    let second = s.randn(&[2, 3], &Device::Cpu).unwrap();
    assert!(max_abs_diff(&first, &second) > 0.0);
    // As torch.randn, a draw depends on its size, not only on the stream position: the
    // same 6 values come back for the same call, not as the start of a longer draw.
    let again = NoiseSource::new(42).randn(&[6], &Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&first.flatten_all().unwrap(), &again), 0.0);
    let flat = first.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_ne!(flat.as_slice(), &v[..6]);
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join(WEIGHTS);
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, &path).unwrap();
}

/// (h) Bad inputs are clear errors, never panics.
#[test]
fn bad_inputs_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // Steps.
    let cfg = SchedulerConfig::default();
    for kind in SchedulerKind::ALL {
        let e = Scheduler::new(&cfg, kind, 0).unwrap_err();
        assert!(matches!(e, DiffusionError::BadInput(_)), "{e}");
        assert!(Scheduler::new(&cfg, kind, 1001).is_err());
    }
    // squaredcos_cap_v2 is supported (diffusers' betas_for_alpha_bar).
    let sdir = tmp.path().join("scheduler");
    std::fs::create_dir_all(&sdir).unwrap();
    let sp = sdir.join("scheduler_config.json");
    std::fs::write(
        &sp,
        r#"{"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2", "clip_sample": false}"#,
    )
    .unwrap();
    let cos = SchedulerConfig::from_file(&sp).unwrap();
    assert_eq!(cos.beta_schedule, BetaSchedule::SquaredCosCapV2);
    let b = cos.betas();
    // diffusers: betas[0] = 1 − ᾱ(1/1000)/ᾱ(0) ≈ 4.1e-5; betas[-1] = 0.999.
    let ab = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
    assert!((b[0] - (1.0 - ab(0.001) / ab(0.0))).abs() < 1e-15);
    assert_eq!(b[999], 0.999);
    for kind in SchedulerKind::ALL {
        let mut s = Scheduler::new(&cos, kind, 10).unwrap();
        let x = Tensor::ones((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let y = s.step(&x, 0, &x, &mut NoiseSource::new(0)).unwrap();
        assert!(
            y.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|v| v.is_finite())
        );
    }
    // An unsupported schedule, a malformed file, a missing file.
    std::fs::write(&sp, r#"{"beta_schedule": "sigmoid"}"#).unwrap();
    let e = SchedulerConfig::from_file(&sp).unwrap_err().to_string();
    assert!(
        e.contains("sigmoid") && e.contains("scheduler_config.json"),
        "{e}"
    );
    std::fs::write(&sp, "{not json").unwrap();
    assert!(matches!(
        SchedulerConfig::from_file(&sp),
        Err(DiffusionError::BadConfig { .. })
    ));
    assert!(matches!(
        SchedulerConfig::from_file(&tmp.path().join("nope.json")),
        Err(DiffusionError::Io { .. })
    ));
    assert!("lms".parse::<SchedulerKind>().is_err());

    // VAE: a missing tensor.
    let cfg = TinyVae::small();
    let missing = tmp.path().join("missing/vae");
    write_tiny_vae(&missing, &cfg, 7).unwrap();
    let gone = "decoder.up_blocks.1.resnets.1.conv2.weight";
    rewrite_weights(&missing, |t| {
        t.remove(gone).unwrap();
    });
    let e = VaeDecoder::load(&missing, DType::F32, &Device::Cpu).unwrap_err();
    println!("missing tensor: {e}");
    assert!(
        matches!(e, DiffusionError::BadWeights { .. }) && e.to_string().contains(gone),
        "{e}"
    );

    // A wrongly shaped one.
    let shaped = tmp.path().join("shaped/vae");
    write_tiny_vae(&shaped, &cfg, 7).unwrap();
    let name = "decoder.conv_out.weight";
    rewrite_weights(&shaped, |t| {
        t.insert(
            name.to_string(),
            Tensor::zeros((3, 32, 1, 1), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = VaeDecoder::load(&shaped, DType::F32, &Device::Cpu).unwrap_err();
    println!("wrong shape: {e}");
    assert!(
        matches!(e, DiffusionError::BadWeights { .. }) && e.to_string().contains(name),
        "{e}"
    );

    // No mid-block attention at all.
    let noattn = tmp.path().join("noattn/vae");
    write_tiny_vae(&noattn, &cfg, 7).unwrap();
    rewrite_weights(&noattn, |t| t.retain(|k, _| !k.contains("mid_block.attentions")));
    let e = VaeDecoder::load(&noattn, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("decoder.mid_block.attentions.0.to_q.weight"), "{e}");

    // The decoder alone is enough (the encoder tensors are not read).
    let dec_only = tmp.path().join("deconly/vae");
    write_tiny_vae(&dec_only, &cfg, 7).unwrap();
    rewrite_weights(&dec_only, |t| {
        t.retain(|k, _| !k.starts_with("encoder.") && k != "quant_conv.weight" && k != "quant_conv.bias")
    });
    let dec = VaeDecoder::load(&dec_only, DType::F32, &Device::Cpu).unwrap();

    // Wrong latent shape.
    let z = Tensor::zeros((1, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(dec.decode_raw(&z), Err(DiffusionError::BadInput(_))));
    let z = Tensor::zeros((4, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(dec.decode_raw(&z), Err(DiffusionError::BadInput(_))));

    // Bad VAE configs.
    let cdir = tmp.path().join("cfg");
    std::fs::create_dir_all(&cdir).unwrap();
    let cp = cdir.join("config.json");
    for bad in [
        r#"{"block_out_channels": [30, 64], "norm_num_groups": 8}"#,
        r#"{"block_out_channels": []}"#,
        r#"{"up_block_types": ["AttnUpDecoderBlock2D"]}"#,
        r#"{"act_fn": "gelu"}"#,
        r#"{"scaling_factor": -1}"#,
        r#"{"layers_per_block": "two"}"#,
        r#"{"_class_name": "AutoencoderTiny"}"#,
    ] {
        std::fs::write(&cp, bad).unwrap();
        let e = VaeConfig::from_file(&cp).unwrap_err();
        assert!(matches!(e, DiffusionError::BadConfig { .. }), "{bad}: {e}");
    }
    std::fs::write(&cp, "{}").unwrap();
    assert_eq!(VaeConfig::from_file(&cp).unwrap(), VaeConfig::default());

    // A folder without config.json, or without weights.
    let empty = tmp.path().join("empty/vae");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(matches!(
        VaeDecoder::load(&empty, DType::F32, &Device::Cpu),
        Err(DiffusionError::MissingComponent { .. })
    ));
    std::fs::copy(missing.join("config.json"), empty.join("config.json")).unwrap();
    assert!(matches!(
        VaeDecoder::load(&empty, DType::F32, &Device::Cpu),
        Err(DiffusionError::MissingComponent { .. })
    ));
}
