//! Our diffusion pipeline against diffusers itself (PyTorch), on tiny random-weight folders.
//!
//! `tests/fixtures/diffusers/reference.safetensors` was written by
//! `tests/fixtures/diffusers/make_reference.py` (diffusers 0.31, transformers 4.46, torch 2.5
//! on the CPU) from the folders that `write_reference_folders` writes; see that script for how
//! to regenerate it. The tests rebuild the same folders, check that their weights are the ones
//! the fixture was made from, and compare.

mod sd_common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use act_studio::diffusion::NoDiffHooks;
use act_studio::diffusion::clip_tokenizer::ClipTokenizer;
use act_studio::diffusion::image_io::tensor_to_images;
use act_studio::diffusion::pipeline::{ImageRequest, LoadOptions, SdPipeline};
use act_studio::diffusion::scheduler::{NoiseSource, SchedulerKind};
use act_studio::diffusion::steer::StepWindow;
use act_studio::diffusion::unet::UNetCond;
use act_studio::transport::SteeringStack;
use candle_core::{Device, Tensor};
use sd_common::compare::max_abs_diff as max_abs;
use sd_common::maps::{linear_map, maps_file};
use sd_common::tiny_sd::{write_tiny_sd2, write_tiny_sd15, write_tiny_sdxl};
use sha2::{Digest, Sha256};

/// Seeds of the tiny folders the fixture was made from.
const SD15_SEED: u64 = 5;
const SDXL_SEED: u64 = 6;
const SD2_SEED: u64 = 8;

fn write_folders(root: &Path) -> anyhow::Result<()> {
    write_tiny_sd15(&root.join("sd15"), SD15_SEED)?;
    write_tiny_sdxl(&root.join("sdxl"), SDXL_SEED)?;
    write_tiny_sd2(&root.join("sd2"), SD2_SEED)?;
    Ok(())
}

/// Writes the tiny folders for `make_reference.py` into `$ACT_DIFFUSERS_REF_DIR`.
#[test]
#[ignore = "writes the folders the diffusers fixture is made from"]
fn write_reference_folders() {
    let dir = std::env::var_os("ACT_DIFFUSERS_REF_DIR").expect("set ACT_DIFFUSERS_REF_DIR");
    write_folders(Path::new(&dir)).unwrap();
}

/// Relative tolerance for whole denoising loops (f32 noise accumulated over the steps; the
/// tiny random models' latents grow to hundreds).
const LATENTS_REL: f32 = 5e-5;

const FIXTURE: &str = "tests/fixtures/diffusers/reference.safetensors";

struct Fixture {
    t: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
}

impl Fixture {
    fn load() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
        let bytes = std::fs::read(&path).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap_or_default();
        let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        Self { t, meta }
    }

    fn get(&self, name: &str) -> &Tensor {
        self.t
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
    }

    fn meta(&self, key: &str) -> &str {
        self.meta
            .get(key)
            .unwrap_or_else(|| panic!("fixture has no metadata {key}"))
    }
}

/// SHA-256 over every safetensors file of `folder` in path order, as `make_reference.py`.
fn weights_digest(folder: &Path) -> String {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "safetensors") {
                out.push(p);
            }
        }
    }
    let mut files = vec![];
    walk(folder, &mut files);
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.strip_prefix(folder).unwrap().to_string_lossy().as_bytes());
        h.update(std::fs::read(&f).unwrap());
    }
    format!("{:x}", h.finalize())
}

/// The tiny folders, checked to be the ones the fixture was made from.
fn folders(fx: &Fixture) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_folders(tmp.path()).unwrap();
    for (name, key) in [
        ("sd15", "sd15_weights_sha256"),
        ("sdxl", "sdxl_weights_sha256"),
        ("sd2", "sd2_weights_sha256"),
    ] {
        assert_eq!(
            weights_digest(&tmp.path().join(name)),
            fx.meta(key),
            "the tiny {name} folder's weights changed since the fixture was made: \
             regenerate it with tests/fixtures/diffusers/make_reference.py"
        );
    }
    tmp
}

fn load(dir: &Path) -> SdPipeline {
    SdPipeline::load(dir, &LoadOptions::default()).unwrap()
}

fn max_mag(a: &Tensor) -> f32 {
    a.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .fold(0.0f32, |m, x| m.max(x.abs()))
}

/// Compares `ours` with the fixture's `name`, printing max |Δ|: it must stay within `rel`
/// times the largest reference magnitude (at least 1).
fn check(fx: &Fixture, name: &str, ours: &Tensor, rel: f32) -> f32 {
    let want = fx.get(name);
    let d = max_abs(ours, want);
    let mag = max_mag(want);
    println!("{name}: max |Δ| {d:.2e} (values up to {mag:.2})");
    let tol = rel * mag.max(1.0);
    assert!(d <= tol, "{name}: max |Δ| {d:e} > {tol:e}");
    d
}

#[test]
fn noise_matches_torch_randn() {
    let fx = Fixture::load();
    let dev = Device::Cpu;
    let a = NoiseSource::new(42).randn(&[1, 4, 8, 8], &dev).unwrap();
    check(&fx, "randn.s42.1x4x8x8", &a, 1e-6);
    let b = NoiseSource::new(0).randn(&[1, 4, 5, 7], &dev).unwrap();
    check(&fx, "randn.s0.1x4x5x7", &b, 1e-6);
    let mut g = NoiseSource::new(7);
    for (i, shape) in [&[3usize][..], &[3], &[20], &[5], &[1, 4, 4, 4]]
        .iter()
        .enumerate()
    {
        let t = g.randn(shape, &dev).unwrap();
        check(&fx, &format!("randn.s7.call{i}"), &t, 1e-6);
    }
}

#[test]
fn tokenizer_text_encoder_unet_and_vae_match_diffusers() {
    let fx = Fixture::load();
    let tmp = folders(&fx);
    let root = tmp.path().join("sd15");
    let tok = ClipTokenizer::load(&root.join("tokenizer")).unwrap();
    let ids = tok
        .encode_batch(&[fx.meta("token_prompt"), fx.meta("prompt")])
        .unwrap();
    let want: Vec<Vec<i64>> = fx.get("sd15.ids").to_vec2::<i64>().unwrap();
    for (ours, want) in ids.iter().zip(&want) {
        let ours: Vec<i64> = ours.iter().map(|&i| i64::from(i)).collect();
        assert_eq!(&ours, want, "token ids differ from CLIPTokenizer's");
    }

    // SDXL's tokenizers: tokenizer_2 pads with `!`, which CLIPTokenizer also matches inside
    // prompts (as the pad id rather than BPE's `!</w>`).
    for (i, dir) in ["tokenizer", "tokenizer_2"].iter().enumerate() {
        let tok = ClipTokenizer::load(&tmp.path().join("sdxl").join(dir)).unwrap();
        let ids = tok
            .encode_batch(&[fx.meta("bang_prompt"), fx.meta("prompt")])
            .unwrap();
        let want: Vec<Vec<i64>> = fx.get(&format!("sdxl.ids{}", i + 1)).to_vec2().unwrap();
        for (ours, want) in ids.iter().zip(&want) {
            let ours: Vec<i64> = ours.iter().map(|&i| i64::from(i)).collect();
            assert_eq!(&ours, want, "{dir}: token ids differ from CLIPTokenizer's");
        }
    }

    let p = load(&root);
    let cond = p.encode_prompts(&[fx.meta("prompt")], &mut NoDiffHooks).unwrap();
    check(&fx, "sd15.text", &cond.text, 1e-5);

    let text = fx.get("sd15.text");
    let text2 = Tensor::cat(&[text, &(text * 0.5).unwrap()], 0).unwrap();
    let c = UNetCond {
        text: &text2,
        text_time: None,
    };
    let out = p
        .unet()
        .forward(fx.get("sd15.unet.x"), 421.0, &c, &mut NoDiffHooks)
        .unwrap();
    check(&fx, "sd15.unet.out", &out, 1e-5);

    let img = p.decode(fx.get("sd15.vae.z")).unwrap();
    check(&fx, "sd15.vae.out", &img, 1e-5);
}

fn request(fx: &Fixture, steps: usize, guidance: f32, negative: &str, s: SchedulerKind) -> ImageRequest {
    let size: usize = fx.meta("size").parse().unwrap();
    ImageRequest {
        prompt: fx.meta("prompt").into(),
        negative_prompt: negative.into(),
        seed: fx.meta("seed").parse().unwrap(),
        steps,
        guidance,
        width: size,
        height: size,
        scheduler: s,
    }
}

fn denoise(p: &SdPipeline, r: &ImageRequest, stack: Option<&SteeringStack>) -> Tensor {
    let mut steer = stack.map(|s| p.steering(s, StepWindow::ALL, r).unwrap());
    p.denoise(r, steer.as_mut(), &mut |_, _| true).unwrap()
}

#[test]
fn sd15_pipelines_match_diffusers_latents() {
    let fx = Fixture::load();
    let tmp = folders(&fx);
    let p = load(&tmp.path().join("sd15"));
    let neg = fx.meta("negative").to_string();
    for (name, kind) in [
        ("euler", SchedulerKind::EulerDiscrete),
        ("ddim", SchedulerKind::Ddim),
        ("euler_a", SchedulerKind::EulerAncestral),
        ("pndm", SchedulerKind::Pndm),
        ("dpm", SchedulerKind::DpmSolverMultistep),
        ("dpm_karras", SchedulerKind::DpmSolverMultistepKarras),
    ] {
        let steps = if name.starts_with("pndm") || name.starts_with("dpm") {
            6
        } else {
            4
        };
        let r = request(&fx, steps, 7.5, &neg, kind);
        let lat = denoise(&p, &r, None);
        check(&fx, &format!("sd15.latents.{name}"), &lat, LATENTS_REL);
        if name == "euler" {
            // Decoded and turned into 8-bit pixels as diffusers does (round(255 · clamp)).
            let img = &tensor_to_images(&p.decode(&lat).unwrap()).unwrap()[0];
            let want = fx.get("sd15.image.euler").flatten_all().unwrap();
            let want = want.to_vec1::<f32>().unwrap();
            let worst = img
                .as_raw()
                .iter()
                .zip(&want)
                .map(|(&o, &w)| (f32::from(o) - (w * 255.0).round()).abs())
                .fold(0.0, f32::max);
            println!("sd15.image.euler: max 8-bit difference {worst}");
            assert!(img.as_raw().len() == want.len() && worst <= 1.0);
        }
    }
}

/// AcT maps applied by our hooks give the latents that PyTorch forward hooks on the same
/// diffusers modules give: the hook points sit where the reference's module hooks act
/// (GroupNorm output before SiLU, LayerNorm outputs), and the 4-D spatial-mean rule and the
/// 3-D per-token rule agree.
#[test]
fn sd15_steered_latents_match_diffusers_forward_hooks() {
    let fx = Fixture::load();
    let tmp = folders(&fx);
    let p = load(&tmp.path().join("sd15"));
    let stack = fixture_stack(&fx, &p, "steer_hooks", "steer");
    let neg = fx.meta("negative").to_string();
    let r = request(&fx, 4, 7.5, &neg, SchedulerKind::EulerDiscrete);
    let steered = denoise(&p, &r, Some(&stack));
    check(&fx, "sd15.latents.euler.steered", &steered, LATENTS_REL);
    // The steering is far larger than the agreement.
    let moved = max_abs(&steered, fx.get("sd15.latents.euler"));
    println!("steering moved the latents by up to {moved:.2}");
    assert!(moved > 0.05);
}

/// The same on the SDXL structure, with guidance: maps in both text encoders (before the
/// penultimate states the UNet reads) and in the UNet.
#[test]
fn sdxl_steered_latents_match_diffusers_forward_hooks() {
    let fx = Fixture::load();
    let tmp = folders(&fx);
    let p = load(&tmp.path().join("sdxl"));
    let stack = fixture_stack(&fx, &p, "steer_hooks_xl", "steer_xl");
    let neg = fx.meta("negative").to_string();
    let r = request(&fx, 3, 5.0, &neg, SchedulerKind::EulerAncestral);
    let steered = denoise(&p, &r, Some(&stack));
    check(&fx, "sdxl.latents.guided.steered", &steered, LATENTS_REL);
    let moved = max_abs(&steered, fx.get("sdxl.latents.guided"));
    println!("steering moved the latents by up to {moved:.2}");
    assert!(moved > 0.05);
}

/// The fixture's random Linear-AcT maps (hook names in metadata `hooks_key`, ω and β under
/// `{prefix}.{name}.omega|beta`) as a stack at the fixture's λ.
fn fixture_stack(fx: &Fixture, p: &SdPipeline, hooks_key: &str, prefix: &str) -> SteeringStack {
    let hooks: Vec<String> = serde_json::from_str(fx.meta(hooks_key)).unwrap();
    let lambda: f32 = fx.meta("lambda").parse().unwrap();
    let mut maps = vec![];
    for name in &hooks {
        let omega = fx
            .get(&format!("{prefix}.{name}.omega"))
            .to_vec1::<f32>()
            .unwrap();
        let beta = fx.get(&format!("{prefix}.{name}.beta")).to_vec1::<f32>().unwrap();
        maps.push((name.clone(), linear_map(omega, beta)));
    }
    let mut stack = SteeringStack::default();
    stack.push(Arc::new(maps_file("fixture", p.fingerprint(), maps)), lambda);
    stack
}

#[test]
fn sdxl_pipelines_match_diffusers_latents() {
    let fx = Fixture::load();
    let tmp = folders(&fx);
    let p = load(&tmp.path().join("sdxl"));
    let turbo = request(&fx, 1, 0.0, "", SchedulerKind::EulerAncestral);
    check(&fx, "sdxl.latents.turbo", &denoise(&p, &turbo, None), LATENTS_REL);
    let neg = fx.meta("negative").to_string();
    let guided = request(&fx, 3, 5.0, &neg, SchedulerKind::EulerAncestral);
    check(
        &fx,
        "sdxl.latents.guided",
        &denoise(&p, &guided, None),
        LATENTS_REL,
    );
    let dpm = request(&fx, 4, 5.0, &neg, SchedulerKind::DpmSolverMultistep);
    check(&fx, "sdxl.latents.dpm", &denoise(&p, &dpm, None), LATENTS_REL);
}

/// SD 2.x structure: v-prediction with every sampler, linspace spacing (the folder's DDIM and
/// the others built from its config), a GELU text encoder padded with `!`.
#[test]
fn sd2_v_prediction_pipelines_match_diffusers_latents() {
    let fx = Fixture::load();
    let tmp = folders(&fx);
    let p = load(&tmp.path().join("sd2"));
    let neg = fx.meta("negative").to_string();
    for (name, kind) in [
        ("ddim", SchedulerKind::Ddim),
        ("euler", SchedulerKind::EulerDiscrete),
        ("euler_a", SchedulerKind::EulerAncestral),
        ("pndm", SchedulerKind::Pndm),
        ("dpm", SchedulerKind::DpmSolverMultistep),
    ] {
        let r = request(&fx, 5, 7.5, &neg, kind);
        let lat = denoise(&p, &r, None);
        check(&fx, &format!("sd2.latents.{name}"), &lat, LATENTS_REL);
    }
}
