//! A tiny random-weight UNet in the diffusers layout, built with candle-transformers' own
//! UNet over a `VarMap` (so the tensor names are exactly the ones both implementations
//! read), every weight then redrawn from a seeded normal, saved as
//! `diffusion_pytorch_model.safetensors` beside a diffusers `config.json`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModel, UNet2DConditionModelConfig,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

/// Shape of a tiny UNet.
#[derive(Debug, Clone)]
pub struct TinyUnet {
    /// `(channels, transformer layers or None for a plain block, heads)` per down block.
    pub blocks: Vec<(usize, Option<usize>, usize)>,
    /// ResNets per down block.
    pub layers_per_block: usize,
    /// Text conditioning width.
    pub cross_attention_dim: usize,
    /// Linear projections (SD 2.x / SDXL).
    pub linear_projection: bool,
    /// SDXL `text_time`: `(addition_time_embed_dim, pooled width)`.
    pub text_time: Option<(usize, usize)>,
}

impl TinyUnet {
    /// SD 1.5 structure: cross-attention blocks then a plain one, conv projections.
    pub fn sd15(cross_attention_dim: usize) -> Self {
        Self {
            blocks: vec![(32, Some(1), 2), (64, Some(1), 2), (64, None, 2)],
            layers_per_block: 1,
            cross_attention_dim,
            linear_projection: false,
            text_time: None,
        }
    }

    /// SDXL structure: a plain first block, deeper transformers, linear projections, and the
    /// `text_time` added conditioning.
    pub fn sdxl(cross_attention_dim: usize, pooled: usize) -> Self {
        Self {
            blocks: vec![(32, None, 2), (64, Some(2), 2)],
            layers_per_block: 1,
            cross_attention_dim,
            linear_projection: true,
            text_time: Some((8, pooled)),
        }
    }

    /// candle-transformers' config for the same shape.
    pub fn candle_config(&self) -> UNet2DConditionModelConfig {
        UNet2DConditionModelConfig {
            blocks: self
                .blocks
                .iter()
                .map(|&(c, x, h)| BlockConfig {
                    out_channels: c,
                    use_cross_attn: x,
                    attention_head_dim: h,
                })
                .collect(),
            layers_per_block: self.layers_per_block,
            norm_num_groups: 32,
            cross_attention_dim: self.cross_attention_dim,
            use_linear_projection: self.linear_projection,
            ..Default::default()
        }
    }
}

/// Seeded standard normal draws (Box–Muller).
pub fn randn(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(1e-12);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

/// Redraws every variable: norm weights ≈ 1 ± 0.1, everything else N(0, 0.15²) (so deep
/// stacks neither explode nor vanish).
pub fn randomize(vm: &VarMap, seed: u64) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let data = vm
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let n = var.elem_count();
        let is_norm = name.contains("norm") && name.ends_with("weight");
        let v: Vec<f32> = randn(&mut rng, n)
            .into_iter()
            .map(|x| if is_norm { 1.0 + 0.1 * x } else { 0.15 * x })
            .collect();
        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
    }
    Ok(())
}

/// Writes `dir/config.json` and `dir/diffusion_pytorch_model.safetensors`.
pub fn write_tiny_unet(dir: &Path, cfg: &TinyUnet, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    UNet2DConditionModel::new(vb.clone(), 4, 4, false, cfg.candle_config())?;
    let temb = cfg.blocks[0].0 * 4;
    if let Some((tdim, pooled)) = cfg.text_time {
        let input = pooled + 6 * tdim;
        let _ = candle_nn::linear(input, temb, vb.pp("add_embedding.linear_1"))?;
        let _ = candle_nn::linear(temb, temb, vb.pp("add_embedding.linear_2"))?;
    }
    randomize(&vm, seed)?;
    let tensors: std::collections::HashMap<String, Tensor> = vm
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned VarMap"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    super::save_pt_safetensors(&tensors, &dir.join("diffusion_pytorch_model.safetensors"))?;
    let n = cfg.blocks.len();
    let down: Vec<&str> = cfg
        .blocks
        .iter()
        .map(|b| {
            if b.1.is_some() {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up: Vec<&str> = cfg
        .blocks
        .iter()
        .rev()
        .map(|b| {
            if b.1.is_some() {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            }
        })
        .collect();
    let mut config = json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.27.0",
        "in_channels": 4,
        "out_channels": 4,
        "sample_size": 8,
        "block_out_channels": cfg.blocks.iter().map(|b| b.0).collect::<Vec<_>>(),
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "attention_head_dim": cfg.blocks.iter().map(|b| b.2).collect::<Vec<_>>(),
        "transformer_layers_per_block": cfg.blocks.iter().map(|b| b.1.unwrap_or(1)).collect::<Vec<_>>(),
        "layers_per_block": cfg.layers_per_block,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": cfg.cross_attention_dim,
        "use_linear_projection": cfg.linear_projection,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "act_fn": "silu",
        "center_input_sample": false,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
    });
    if let Some((tdim, pooled)) = cfg.text_time {
        config["addition_embed_type"] = json!("text_time");
        config["addition_time_embed_dim"] = json!(tdim);
        config["projection_class_embeddings_input_dim"] = json!(pooled + 6 * tdim);
    }
    debug_assert_eq!(n, cfg.blocks.len());
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    Ok(())
}
