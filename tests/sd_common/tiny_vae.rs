//! A tiny random-weight diffusers `AutoencoderKL` (`vae/`) and a `scheduler/` config.
//!
//! The tensor names are exactly those candle-transformers' `AutoEncoderKL` asks for (encoder
//! and decoder), obtained by building it over a `VarMap`, with the mid-block attention renamed
//! to the current diffusers names (`to_q`, `to_k`, `to_v`, `to_out.0`) unless the legacy names
//! (`query`, `key`, `value`, `proj_attn`) are asked for.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use serde_json::json;

use super::tiny_clip::SeededRng;

/// Architecture of the tiny VAE.
#[derive(Debug, Clone)]
pub struct TinyVae {
    /// Channels per level (encoder order); the decoder upscales by `2^(len − 1)`.
    pub block_out_channels: Vec<usize>,
    /// ResNets per encoder level (the decoder has one more).
    pub layers_per_block: usize,
    /// GroupNorm groups; must divide every entry of `block_out_channels`.
    pub norm_num_groups: usize,
    /// Written as `scaling_factor` in `config.json`.
    pub scaling_factor: f64,
}

impl TinyVae {
    /// Two levels `[32, 64]` (×2 upscaling), one layer per block, 8 groups, SD's scaling.
    pub fn small() -> Self {
        Self {
            block_out_channels: vec![32, 64],
            layers_per_block: 1,
            norm_num_groups: 8,
            scaling_factor: 0.18215,
        }
    }

    /// Three levels `[16, 32, 32]` (×4 upscaling, shortcut convs and a same-width level),
    /// two layers per block, 8 groups, SDXL's scaling.
    pub fn three_levels() -> Self {
        Self {
            block_out_channels: vec![16, 32, 32],
            layers_per_block: 2,
            norm_num_groups: 8,
            scaling_factor: 0.13025,
        }
    }

    /// candle-transformers' config for the same architecture.
    pub fn candle_config(&self) -> AutoEncoderKLConfig {
        AutoEncoderKLConfig {
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            latent_channels: 4,
            norm_num_groups: self.norm_num_groups,
            use_quant_conv: true,
            use_post_quant_conv: true,
        }
    }
}

/// Writes `dir/config.json` and `dir/diffusion_pytorch_model.safetensors` (f32) for `cfg`,
/// with the current diffusers attention names.
pub fn write_tiny_vae(dir: &Path, cfg: &TinyVae, seed: u64) -> anyhow::Result<()> {
    write_tiny_vae_named(dir, cfg, seed, false)
}

/// The tensors candle's `AutoEncoderKL` needs (name → shape), with the legacy attention names.
fn candle_tensor_shapes(cfg: &TinyVae) -> anyhow::Result<Vec<(String, Vec<usize>)>> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    AutoEncoderKL::new(vb, 3, 3, cfg.candle_config()).context("building candle's AutoEncoderKL")?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned varmap"))?;
    let mut shapes: Vec<(String, Vec<usize>)> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().dims().to_vec()))
        .collect();
    shapes.sort();
    Ok(shapes)
}

/// Renames the legacy mid-block attention names to the current diffusers ones.
fn modern_name(name: &str) -> String {
    for (old, new) in [
        (".attentions.0.query.", ".attentions.0.to_q."),
        (".attentions.0.key.", ".attentions.0.to_k."),
        (".attentions.0.value.", ".attentions.0.to_v."),
        (".attentions.0.proj_attn.", ".attentions.0.to_out.0."),
    ] {
        if name.contains(old) {
            return name.replace(old, new);
        }
    }
    name.to_string()
}

/// As [`write_tiny_vae`]; `legacy_attention` keeps the old names `query`/`key`/`value`/
/// `proj_attn` for the mid-block attention.
pub fn write_tiny_vae_named(
    dir: &Path,
    cfg: &TinyVae,
    seed: u64,
    legacy_attention: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let n = cfg.block_out_channels.len();
    let config = json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.27.0",
        "act_fn": "silu",
        "block_out_channels": cfg.block_out_channels,
        "down_block_types": vec!["DownEncoderBlock2D"; n],
        "up_block_types": vec!["UpDecoderBlock2D"; n],
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "layers_per_block": cfg.layers_per_block,
        "norm_num_groups": cfg.norm_num_groups,
        "sample_size": 8usize << (n - 1),
        "scaling_factor": cfg.scaling_factor,
        "force_upcast": true,
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;

    let mut rng = SeededRng::new(seed);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, shape) in candle_tensor_shapes(cfg)? {
        let len: usize = shape.iter().product();
        let mut v = rng.normal_vec(len, 0.0, 1.0);
        // GroupNorm affine parameters: weights around 1, small biases.
        let module = name.rsplit('.').nth(1).unwrap_or("");
        let is_norm = module.contains("norm");
        let (scale, shift) = match (is_norm, name.ends_with(".weight")) {
            (true, true) => (0.1, 1.0),
            (true, false) => (0.1, 0.0),
            _ => (0.2, 0.0),
        };
        v.iter_mut().for_each(|x| *x = *x * scale + shift);
        let t = Tensor::from_vec(v, shape, &Device::Cpu)?;
        let name = if legacy_attention {
            name
        } else {
            modern_name(&name)
        };
        tensors.insert(name, t);
    }
    super::save_pt_safetensors(&tensors, &dir.join("diffusion_pytorch_model.safetensors"))?;
    Ok(())
}

/// Writes `dir/scheduler_config.json` with Stable Diffusion's training schedule
/// (scaled-linear betas 0.00085…0.012 over 1000 steps, steps_offset 1) and the given
/// `_class_name`, `timestep_spacing` and `prediction_type`.
pub fn write_scheduler_config(
    dir: &Path,
    class: &str,
    spacing: &str,
    prediction: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let config = json!({
        "_class_name": class,
        "_diffusers_version": "0.27.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": false,
        "num_train_timesteps": 1000,
        "prediction_type": prediction,
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        "timestep_spacing": spacing,
        "trained_betas": null,
    });
    std::fs::write(
        dir.join("scheduler_config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    Ok(())
}
