//! Our hookable UNet against candle-transformers' `UNet2DConditionModel` on tiny random
//! weights in the diffusers layout (SD 1.5 and SDXL structure), plus hook behaviour.

mod sd_common;

use std::path::Path;

use act_studio::diffusion::hooks::{DiffActivation, DiffHooks, HookRegistry, NoDiffHooks};
use act_studio::diffusion::unet::{UNet, UNetCond, UNetConfig};
use act_studio::runtime::HookFlow;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use rand::{SeedableRng, rngs::StdRng};
use sd_common::compare::max_abs_diff;
use sd_common::tiny_unet::{TinyUnet, randn, write_tiny_unet};

fn tensor(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(randn(rng, n), shape, &Device::Cpu).unwrap()
}

fn candle_unet(dir: &Path, tiny: &TinyUnet) -> UNet2DConditionModel {
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("diffusion_pytorch_model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    UNet2DConditionModel::new(vb, 4, 4, false, tiny.candle_config()).unwrap()
}

fn ours(dir: &Path, tanh: bool) -> (UNet, HookRegistry) {
    let mut cfg = UNetConfig::from_file(&dir.join("config.json")).unwrap();
    cfg.geglu_tanh = tanh;
    let mut reg = HookRegistry::default();
    let u = UNet::load_with_config(dir, cfg, DType::F32, &Device::Cpu, &mut reg).unwrap();
    (u, reg)
}

#[test]
fn sd15_structure_matches_candle() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = TinyUnet::sd15(32);
    write_tiny_unet(tmp.path(), &tiny, 1).unwrap();
    let reference = candle_unet(tmp.path(), &tiny);
    let (exact, reg) = ours(tmp.path(), true);
    let (erf, _) = ours(tmp.path(), false);
    let mut rng = StdRng::seed_from_u64(7);
    // 16×16 and an odd 12×10 latent (forced upsample sizes).
    for (h, w) in [(16, 16), (12, 10)] {
        let x = tensor(&mut rng, &[2, 4, h, w]);
        let text = tensor(&mut rng, &[2, 7, 32]);
        for t in [999.0, 421.5, 1.0] {
            let want = reference.forward(&x, t, &text).unwrap();
            let cond = UNetCond {
                text: &text,
                text_time: None,
            };
            let got = exact.forward(&x, t, &cond, &mut NoDiffHooks).unwrap();
            assert_eq!(got.dims(), want.dims());
            let d = max_abs_diff(&got, &want);
            let d_erf = max_abs_diff(&erf.forward(&x, t, &cond, &mut NoDiffHooks).unwrap(), &want);
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            println!(
                "SD1.5 tiny {h}x{w} t={t}: max |Δ| = {d:.2e} (erf GELU: {d_erf:.2e}; output max {scale:.2})"
            );
            assert!(d < 1e-4 * scale.max(1.0), "max |Δ| {d}");
        }
    }
    // Hook points: every ResNet norm1/norm2, every transformer norm and block norms, conv_norm_out.
    let names: Vec<&str> = reg.sites().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names[0], "unet.down_blocks.0.resnets.0.norm1");
    assert!(names.contains(&"unet.down_blocks.0.attentions.0.norm"));
    assert!(names.contains(&"unet.mid_block.attentions.0.transformer_blocks.0.norm3"));
    assert!(names.contains(&"unet.up_blocks.2.resnets.1.norm2"));
    assert_eq!(*names.last().unwrap(), "unet.conv_norm_out");
    // 3 down blocks × 1 resnet × 2 + 2 attn × 4 + mid (2 resnets × 2 + 4) + up 3 × 2 resnets × 2 + 2 × 2 attn × 4 + 1
    // norms, and one cross-attention output per transformer block (2 down + 1 mid + 4 up).
    let cross = names.iter().filter(|n| n.ends_with(".attn2")).count();
    assert_eq!(cross, 2 + 1 + 4);
    assert!(names.contains(&"unet.mid_block.attentions.0.transformer_blocks.0.attn2"));
    assert_eq!(names.len() - cross, 6 + 8 + 8 + 12 + 16 + 1);
}

/// Zeroes the SDXL added-conditioning output layer, so our output must equal candle's
/// (which has no `text_time` conditioning) exactly.
fn zero_add_embedding(dir: &Path) {
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let mut ts = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    for k in ["add_embedding.linear_2.weight", "add_embedding.linear_2.bias"] {
        let z = ts[k].zeros_like().unwrap();
        ts.insert(k.to_string(), z);
    }
    candle_core::safetensors::save(&ts, &path).unwrap();
}

#[test]
fn sdxl_structure_matches_candle_and_uses_text_time() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = TinyUnet::sdxl(64, 32);
    write_tiny_unet(tmp.path(), &tiny, 2).unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    let x = tensor(&mut rng, &[2, 4, 16, 16]);
    let text = tensor(&mut rng, &[2, 9, 64]);
    let pooled = tensor(&mut rng, &[2, 32]);
    let ids = Tensor::new(
        &[[128f32, 128., 0., 0., 128., 128.], [64., 64., 0., 0., 128., 128.]],
        &Device::Cpu,
    )
    .unwrap();
    let (live, _) = ours(tmp.path(), true);
    let cond = UNetCond {
        text: &text,
        text_time: Some((&pooled, &ids)),
    };
    let a = live.forward(&x, 500.0, &cond, &mut NoDiffHooks).unwrap();
    let ids2 = (&ids * 2.0).unwrap();
    let cond2 = UNetCond {
        text: &text,
        text_time: Some((&pooled, &ids2)),
    };
    let b = live.forward(&x, 500.0, &cond2, &mut NoDiffHooks).unwrap();
    assert!(max_abs_diff(&a, &b) > 1e-4, "time ids must change the output");
    let missing = live.forward(
        &x,
        500.0,
        &UNetCond {
            text: &text,
            text_time: None,
        },
        &mut NoDiffHooks,
    );
    assert!(missing.unwrap_err().to_string().contains("pooled"));

    zero_add_embedding(tmp.path());
    let reference = candle_unet(tmp.path(), &tiny);
    let (exact, _) = ours(tmp.path(), true);
    let want = reference.forward(&x, 500.0, &text).unwrap();
    let got = exact.forward(&x, 500.0, &cond, &mut NoDiffHooks).unwrap();
    let d = max_abs_diff(&got, &want);
    println!("SDXL tiny 16x16: max |Δ| = {d:.2e}");
    assert!(d < 1e-4, "max |Δ| {d}");
}

/// Records the mean of every channel at one hook, and adds `shift[c]` to channel `c` at another.
struct ShiftAt {
    id: usize,
    shift: Vec<f32>,
    seen: usize,
}

impl DiffHooks for ShiftAt {
    fn wants(&self, id: usize) -> bool {
        id == self.id
    }
    fn on_activation(
        &mut self,
        _: usize,
        act: DiffActivation<'_>,
    ) -> act_studio::diffusion::Result<HookFlow> {
        let c = act.shape.neurons();
        let hw = act.shape.row_len() / c;
        for (k, plane) in act.data.chunks_exact_mut(hw).enumerate() {
            plane.iter_mut().for_each(|v| *v += self.shift[k % c]);
        }
        self.seen += 1;
        Ok(HookFlow::Continue)
    }
}

#[test]
fn hooks_see_every_norm_and_can_change_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = TinyUnet::sd15(32);
    write_tiny_unet(tmp.path(), &tiny, 3).unwrap();
    let (u, reg) = ours(tmp.path(), false);
    let mut rng = StdRng::seed_from_u64(9);
    let x = tensor(&mut rng, &[1, 4, 8, 8]);
    let text = tensor(&mut rng, &[1, 5, 32]);
    let cond = UNetCond {
        text: &text,
        text_time: None,
    };
    let base = u.forward(&x, 10.0, &cond, &mut NoDiffHooks).unwrap();
    let id = reg.find("unet.mid_block.resnets.0.norm1").unwrap();
    let mut zero = ShiftAt {
        id,
        shift: vec![0.0; 64],
        seen: 0,
    };
    let same = u.forward(&x, 10.0, &cond, &mut zero).unwrap();
    assert_eq!(zero.seen, 1);
    assert_eq!(max_abs_diff(&base, &same), 0.0, "a no-op hook changes nothing");
    let mut shift = ShiftAt {
        id,
        shift: vec![0.5; 64],
        seen: 0,
    };
    let moved = u.forward(&x, 10.0, &cond, &mut shift).unwrap();
    assert!(max_abs_diff(&base, &moved) > 1e-3);
}

/// SDXL's added conditioning against a hand computation in f64: `time_embedding(sin(t)) +
/// add_embedding([pooled, sin(id₁), …, sin(id₆)])` (candle's UNet has no such path).
#[test]
fn sdxl_text_time_embedding_matches_a_hand_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = TinyUnet::sdxl(64, 32);
    write_tiny_unet(tmp.path(), &tiny, 4).unwrap();
    let (u, _) = ours(tmp.path(), false);
    let w = candle_core::safetensors::load(
        tmp.path().join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let get = |k: &str| -> (Vec<f64>, Vec<usize>) {
        let t = &w[k];
        let v = t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        (v, t.dims().to_vec())
    };
    // y = W x + b with W [out, in].
    let linear = |x: &[f64], name: &str| -> Vec<f64> {
        let (wv, dims) = get(&format!("{name}.weight"));
        let (bv, _) = get(&format!("{name}.bias"));
        (0..dims[0])
            .map(|o| bv[o] + (0..dims[1]).map(|i| wv[o * dims[1] + i] * x[i]).sum::<f64>())
            .collect()
    };
    let silu = |v: Vec<f64>| -> Vec<f64> { v.into_iter().map(|x| x / (1.0 + (-x).exp())).collect() };
    // diffusers get_timestep_embedding with flip_sin_to_cos = true, shift 0: [cos, sin].
    let sinus = |x: f64, dim: usize| -> Vec<f64> {
        let half = dim / 2;
        let f: Vec<f64> = (0..half)
            .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp())
            .collect();
        f.iter()
            .map(|f| (x * f).cos())
            .chain(f.iter().map(|f| (x * f).sin()))
            .collect()
    };
    let mut rng = StdRng::seed_from_u64(12);
    let pooled = tensor(&mut rng, &[1, 32]);
    let ids_v = [512f32, 384., 16., 8., 512., 512.];
    let ids = Tensor::new(&[ids_v], &Device::Cpu).unwrap();
    let text = tensor(&mut rng, &[1, 5, 64]);
    let t = 637.0;
    let cond = UNetCond {
        text: &text,
        text_time: Some((&pooled, &ids)),
    };
    let got: Vec<f32> = u
        .time_embedding(1, t, &cond)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();

    let base = linear(
        &silu(linear(&sinus(t, 32), "time_embedding.linear_1")),
        "time_embedding.linear_2",
    );
    let mut add_in: Vec<f64> = pooled
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    for id in ids_v {
        add_in.extend(sinus(f64::from(id), 8));
    }
    let add = linear(
        &silu(linear(&add_in, "add_embedding.linear_1")),
        "add_embedding.linear_2",
    );
    let want: Vec<f64> = base.iter().zip(&add).map(|(a, b)| a + b).collect();
    let d = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (f64::from(*g) - w).abs())
        .fold(0.0, f64::max);
    println!("SDXL text_time embedding vs f64 hand computation: max |Δ| = {d:.2e}");
    assert_eq!(got.len(), want.len());
    assert!(d < 1e-4, "{d}");
}
