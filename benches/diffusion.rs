//! UNet benchmarks (run with `cargo bench --bench diffusion`): one denoising step of our
//! hookable UNet and of candle-transformers' `UNet2DConditionModel` on the same random
//! weights, side by side in one run, medians of repeated runs (interleaved, so machine noise
//! hits both alike):
//!
//! - the tiny SD 1.5-shaped UNet of the tests at 32×32 latents (256 px);
//! - a mid-size SD 1.5-shaped UNet (channels 128/256/512/512, 2 ResNets per block, 8 heads,
//!   text width 768; ≈ 1/6 of SD 1.5's widths) at 32×32 latents (256 px), batch 2 as with
//!   classifier-free guidance;
//! - ours with Linear-AcT maps active at every UNet norm (λ = 1), for the steering overhead;
//! - one whole image of the demo model (`models/act-shapes-t2i`) at its defaults.
//!
//! `ACT_BENCH_REPS` sets the repetitions (default 5). `ACT_BENCH_FULL=1` adds SD 1.5's exact
//! UNet shape (860 M parameters, random weights, ≈ 7 GB of memory for both UNets) at 64×64
//! latents (512 px), batch 2.

#[path = "../tests/sd_common/pt_safetensors.rs"]
mod pt_safetensors;
#[path = "../tests/sd_common/tiny_unet.rs"]
#[allow(dead_code)]
mod tiny_unet;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use act_studio::diffusion::hooks::{DiffHooks, HookRegistry, NoDiffHooks};
use act_studio::diffusion::pipeline::{LoadOptions, SdPipeline};
use act_studio::diffusion::steer::{DiffSteeringHooks, StepWindow};
use act_studio::diffusion::unet::{UNet, UNetCond, UNetConfig};
use act_studio::pipeline::image_sheet::{ImageJob, ImageJobKind, render_images};
use act_studio::transport::{
    DatasetInfo, HookMap, MapsFile, MapsMeta, Method, ModelFingerprint, SteeringStack, Support,
};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use pt_safetensors::save_pt_safetensors;
use tiny_unet::{TinyUnet, write_tiny_unet};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Maps with ω ≈ 1, small β at every UNet hook point (unbounded support).
fn all_norm_maps(reg: &HookRegistry) -> SteeringStack {
    let hooks: Vec<(String, HookMap)> = reg
        .sites()
        .iter()
        .map(|s| {
            let d = s.dim;
            let omega = (0..d).map(|j| 0.9 + 0.2 * ((j * 7 % 11) as f32 / 11.0)).collect();
            let beta = (0..d).map(|j| 0.05 * ((j * 5 % 7) as f32 - 3.0)).collect();
            let map = HookMap::new(
                Method::LinearAct,
                Support::Unbounded,
                omega,
                beta,
                vec![f32::NEG_INFINITY; d],
                vec![f32::INFINITY; d],
                Default::default(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            (s.name.clone(), map)
        })
        .collect();
    let info = DatasetInfo {
        name: "bench".into(),
        sha256: String::new(),
        count: 0,
    };
    let meta = MapsMeta::new(
        "bench",
        Method::LinearAct,
        Support::Unbounded,
        "mean",
        "causal",
        ModelFingerprint::arrays(0),
        info.clone(),
        info,
    );
    let mut stack = SteeringStack::default();
    stack.push(
        Arc::new(MapsFile::new(meta, hooks).unwrap_or_else(|e| panic!("{e}"))),
        1.0,
    );
    stack
}

/// Sums the time spent in another hook object's `on_activation`.
struct Timed<'a> {
    inner: &'a mut dyn DiffHooks,
    spent: f64,
}

impl DiffHooks for Timed<'_> {
    fn wants(&self, id: usize) -> bool {
        self.inner.wants(id)
    }
    fn on_activation(
        &mut self,
        id: usize,
        act: act_studio::diffusion::DiffActivation<'_>,
    ) -> act_studio::diffusion::Result<act_studio::runtime::HookFlow> {
        let t = Instant::now();
        let r = self.inner.on_activation(id, act);
        self.spent += t.elapsed().as_secs_f64();
        r
    }
}

fn bench(label: &str, tiny: &TinyUnet, latent: usize, batch: usize, tokens: usize, reps: usize) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    write_tiny_unet(dir.path(), tiny, 1).unwrap_or_else(|e| panic!("{e}"));
    let dev = Device::Cpu;
    let file = dir.path().join("diffusion_pytorch_model.safetensors");
    let params: usize = candle_core::safetensors::load(&file, &dev)
        .unwrap_or_else(|e| panic!("{e}"))
        .values()
        .map(Tensor::elem_count)
        .sum();
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&file], DType::F32, &dev) }
        .unwrap_or_else(|e| panic!("{e}"));
    let theirs =
        UNet2DConditionModel::new(vb, 4, 4, false, tiny.candle_config()).unwrap_or_else(|e| panic!("{e}"));
    let mut cfg = UNetConfig::from_file(&dir.path().join("config.json")).unwrap_or_else(|e| panic!("{e}"));
    cfg.geglu_tanh = true; // the same GELU as candle's, so the work is identical
    let mut reg = HookRegistry::default();
    let ours =
        UNet::load_with_config(dir.path(), cfg, DType::F32, &dev, &mut reg).unwrap_or_else(|e| panic!("{e}"));
    let stack = all_norm_maps(&reg);
    let mut steer = DiffSteeringHooks::new(&stack, reg.sites(), 0, StepWindow::ALL, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{label}: {:.1} M parameters, {} hook points, set up in {:.1} s",
        params as f64 / 1e6,
        reg.len(),
        t0.elapsed().as_secs_f64()
    );
    let x = Tensor::randn(0f32, 1.0, (batch, 4, latent, latent), &dev).unwrap_or_else(|e| panic!("{e}"));
    let text = Tensor::randn(0f32, 1.0, (batch, tokens, tiny.cross_attention_dim), &dev)
        .unwrap_or_else(|e| panic!("{e}"));
    let cond = UNetCond {
        text: &text,
        text_time: None,
    };
    let run_ours = |hooks: &mut dyn DiffHooks| {
        let t = Instant::now();
        let y = ours
            .forward(&x, 500.0, &cond, hooks)
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = y.sum_all().and_then(|s| s.to_scalar::<f32>());
        t.elapsed().as_secs_f64()
    };
    let run_theirs = || {
        let t = Instant::now();
        let y = theirs.forward(&x, 500.0, &text).unwrap_or_else(|e| panic!("{e}"));
        let _ = y.sum_all().and_then(|s| s.to_scalar::<f32>());
        t.elapsed().as_secs_f64()
    };
    // Warm up.
    run_ours(&mut NoDiffHooks);
    run_theirs();
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        a.push(run_ours(&mut NoDiffHooks));
        b.push(run_theirs());
        c.push(run_ours(&mut steer));
    }
    // Paired per-repetition ratios (neighbouring runs share the machine's mood).
    let speed = median(a.iter().zip(&b).map(|(a, b)| b / a).collect());
    let overhead = median(a.iter().zip(&c).map(|(a, c)| c / a - 1.0).collect());
    // Time spent inside the steering hooks themselves, per step.
    let mut timed = Timed {
        inner: &mut steer,
        spent: 0.0,
    };
    let total = run_ours(&mut timed);
    let (a, b, c) = (median(a), median(b), median(c));
    println!(
        "{label:<28} ours {:>8.1} ms | candle {:>8.1} ms | speed ours/candle {speed:.2}× | steered {:>8.1} ms \
         (paired overhead {:+.1} %; inside the hooks {:.2} ms = {:.2} % of a step)",
        a * 1e3,
        b * 1e3,
        c * 1e3,
        overhead * 100.0,
        timed.spent * 1e3,
        timed.spent / total * 100.0
    );
}

/// One image of the demo model (`models/act-shapes-t2i`) at its defaults, prompt to pixels
/// (issue 17's "one image ≤ 1 s"), median of `reps` after a warm-up.
fn bench_demo_image(reps: usize) {
    let dir = Path::new("models/act-shapes-t2i");
    if !dir.join("model_index.json").exists() {
        println!("demo image model: {} is missing; skipped", dir.display());
        return;
    }
    let pipe = SdPipeline::load(dir, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut request = pipe.default_request("a red circle");
    request.seed = 7;
    let (steps, guidance) = (request.steps, request.guidance);
    let job = ImageJob {
        kind: ImageJobKind::Pair { unsteered: false },
        request,
        stack: SteeringStack::default(),
        window: None,
    };
    let once = || {
        let t = Instant::now();
        render_images(&pipe, &job, &mut |_| true, &mut |_, _, _| {}).unwrap_or_else(|e| panic!("{e}"));
        t.elapsed().as_secs_f64()
    };
    once();
    let times: Vec<f64> = (0..reps).map(|_| once()).collect();
    let (lo, hi) = times
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, h), &t| (l.min(t), h.max(t)));
    println!(
        "demo image model, one 64×64 image ({steps} steps, guidance {guidance}): median {:.2} s (min {lo:.2}, max {hi:.2})",
        median(times)
    );
}

fn main() {
    let reps: usize = std::env::var("ACT_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    println!("UNet step, median of {reps} (batch, latent, text tokens as noted)");
    bench("tiny SD1.5, 1×32×32", &TinyUnet::sd15(32), 32, 1, 77, reps);
    let mid = TinyUnet {
        blocks: vec![
            (128, Some(1), 8),
            (256, Some(1), 8),
            (512, Some(1), 8),
            (512, None, 8),
        ],
        layers_per_block: 2,
        cross_attention_dim: 768,
        linear_projection: false,
        text_time: None,
    };
    bench("mid SD1.5-shaped, 2×32×32", &mid, 32, 2, 77, reps);
    if std::env::var_os("ACT_BENCH_FULL").is_some() {
        // SD 1.5's exact UNet shape (860 M parameters) at 512 px with the CFG batch.
        let full = TinyUnet {
            blocks: vec![
                (320, Some(1), 8),
                (640, Some(1), 8),
                (1280, Some(1), 8),
                (1280, None, 8),
            ],
            layers_per_block: 2,
            cross_attention_dim: 768,
            linear_projection: false,
            text_time: None,
        };
        bench("full SD1.5-shaped, 2×64×64", &full, 64, 2, 77, reps);
    }
    bench_demo_image(reps);
}
