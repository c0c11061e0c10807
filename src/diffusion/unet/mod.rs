//! Our own UNet (diffusers `UNet2DConditionModel`) with a hook point at every normalisation
//! layer: each ResNet's `norm1`/`norm2`, each transformer's GroupNorm `norm` and its blocks'
//! LayerNorms `norm1`/`norm2`/`norm3`, and `conv_norm_out` — the paper's SDXL choice (AcT
//! §5.1). Covers SD 1.x/2.x (and Turbo) and SDXL (two-encoder conditioning, `text_time`
//! added embedding).
//!
//! ```text
//! latents [b, 4, h, w], t, text [b, 77, ctx] (+ SDXL: pooled [b, 1280], time ids [b, 6])
//!   → conv_in → down blocks (skips) → mid block → up blocks (skips) → hook(norm) → SiLU → conv_out
//!   → noise (or v) prediction [b, 4, h, w]
//! ```

pub mod attention;
pub mod blocks;
pub mod config;
pub mod norm;
pub mod resnet;

use std::path::Path;

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::diffusion::conv::Conv2d;

use super::error::{DiffusionError, Result};
use super::hooks::{DiffHooks, HookRegistry};
use super::weights::{load_component, weights_error};

use blocks::{DownBlock, MidBlock, UpBlock};
pub use config::{BlockSpec, TextTimeEmbed, UNetConfig};
use norm::HookedGroupNorm;
use resnet::conv3;

/// The conditioning of one UNet call.
#[derive(Debug, Clone, Copy)]
pub struct UNetCond<'a> {
    /// Text embeddings `[b, tokens, cross_attention_dim]`.
    pub text: &'a Tensor,
    /// SDXL only: pooled text embedding `[b, pooled]` and time ids `[b, 6]`
    /// (original h, w, crop top, left, target h, w).
    pub text_time: Option<(&'a Tensor, &'a Tensor)>,
}

/// Sinusoidal embedding of `t: [b]` → `[b, dim]` (diffusers `get_timestep_embedding`),
/// always computed in f32 (in f16, angles near t = 999 or time ids of 1024 would be off by
/// up to half a radian); the result is f32.
pub fn timestep_embedding(t: &Tensor, dim: usize, flip_sin_to_cos: bool, shift: f64) -> Result<Tensor> {
    let t = t.to_dtype(DType::F32)?;
    let half = dim / 2;
    let exponent =
        (Tensor::arange(0u32, half as u32, t.device())?.to_dtype(DType::F32)? * -f64::ln(10000.0))?;
    let freqs = (exponent / (half as f64 - shift))?.exp()?;
    let e = t.unsqueeze(D::Minus1)?.broadcast_mul(&freqs.unsqueeze(0)?)?;
    let (cos, sin) = (e.cos()?, e.sin()?);
    let e = if flip_sin_to_cos {
        Tensor::cat(&[&cos, &sin], D::Minus1)?
    } else {
        Tensor::cat(&[&sin, &cos], D::Minus1)?
    };
    Ok(if dim % 2 == 1 {
        e.pad_with_zeros(D::Minus1, 0, 1)?
    } else {
        e
    })
}

#[derive(Debug)]
struct TimeMlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimeMlp {
    fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(Self {
            linear_1: candle_nn::linear(cin, cout, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(cout, cout, vb.pp("linear_2"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self
            .linear_2
            .forward(&candle_nn::ops::silu(&self.linear_1.forward(x)?)?)?)
    }
}

/// The UNet.
#[derive(Debug)]
pub struct UNet {
    cfg: UNetConfig,
    conv_in: Conv2d,
    time_embedding: TimeMlp,
    add_embedding: Option<TimeMlp>,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    conv_norm_out: HookedGroupNorm,
    conv_out: Conv2d,
    dtype: DType,
    header_sha256: String,
}

impl UNet {
    /// Loads `dir` (a diffusers `unet/` folder: `config.json` and safetensors), registering
    /// its hook points after those already in `reg`.
    pub fn load(dir: &Path, dtype: DType, device: &Device, reg: &mut HookRegistry) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(DiffusionError::MissingComponent {
                folder: dir.parent().unwrap_or(dir).to_path_buf(),
                what: "unet/config.json".into(),
            });
        }
        let cfg = UNetConfig::from_file(&cfg_path)?;
        Self::load_with_config(dir, cfg, dtype, device, reg)
    }

    /// Like [`UNet::load`] with an already parsed (possibly adjusted) config.
    pub fn load_with_config(
        dir: &Path,
        cfg: UNetConfig,
        dtype: DType,
        device: &Device,
        reg: &mut HookRegistry,
    ) -> Result<Self> {
        let w = load_component(dir, dtype, device)?;
        let mut unet = Self::new(cfg, w.vb, reg).map_err(|e| match e {
            DiffusionError::Backend(reason) => DiffusionError::BadWeights {
                component: "unet".into(),
                reason,
            },
            other => other,
        })?;
        unet.header_sha256 = w.header_sha256;
        Ok(unet)
    }

    /// Builds the UNet from `vb` rooted at the UNet's tensors.
    pub fn new(cfg: UNetConfig, vb: VarBuilder, reg: &mut HookRegistry) -> Result<Self> {
        let dtype = vb.dtype();
        let c0 = cfg.blocks[0].channels;
        let temb = cfg.time_embed_dim();
        let conv_in = conv3(cfg.in_channels, c0, vb.pp("conv_in")).map_err(weights_error("unet"))?;
        let time_embedding = TimeMlp::new(vb.pp("time_embedding"), c0, temb)?;
        let add_embedding = match cfg.text_time {
            Some(tt) => Some(TimeMlp::new(vb.pp("add_embedding"), tt.input_dim, temb)?),
            None => None,
        };
        let n = cfg.blocks.len();
        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            down.push(DownBlock::new(&cfg, i, vb.pp(format!("down_blocks.{i}")), reg)?);
        }
        let mid = MidBlock::new(&cfg, vb.pp("mid_block"), reg)?;
        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            up.push(UpBlock::new(&cfg, i, vb.pp(format!("up_blocks.{i}")), reg)?);
        }
        let conv_norm_out = HookedGroupNorm::new(
            cfg.norm_num_groups,
            c0,
            cfg.norm_eps,
            vb.pp("conv_norm_out"),
            reg,
            "unet.conv_norm_out".into(),
        )?;
        let conv_out = conv3(c0, cfg.out_channels, vb.pp("conv_out"))?;
        Ok(Self {
            cfg,
            conv_in,
            time_embedding,
            add_embedding,
            down,
            mid,
            up,
            conv_norm_out,
            conv_out,
            dtype,
            header_sha256: String::new(),
        })
    }

    /// The parsed config.
    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }
    /// Compute dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Hex SHA-256 of the weights' safetensors headers (empty when built from a VarBuilder).
    pub fn header_sha256(&self) -> &str {
        &self.header_sha256
    }

    /// Predicts noise (or v) for `latents: [b, in_channels, h, w]` at timestep `t`.
    pub fn forward(
        &self,
        latents: &Tensor,
        t: f64,
        cond: &UNetCond<'_>,
        hooks: &mut dyn DiffHooks,
    ) -> Result<Tensor> {
        let (b, c, h, w) = latents.dims4()?;
        if c != self.cfg.in_channels {
            return Err(DiffusionError::BadInput(format!(
                "UNet input has {c} channels, the model takes {}",
                self.cfg.in_channels
            )));
        }
        let (tb, _, td) = cond.text.dims3()?;
        if tb != b || td != self.cfg.cross_attention_dim {
            return Err(DiffusionError::BadInput(format!(
                "text conditioning is {:?}; the UNet needs [{b}, tokens, {}]",
                cond.text.dims(),
                self.cfg.cross_attention_dim
            )));
        }
        let x = if self.cfg.center_input_sample {
            ((latents * 2.0)? - 1.0)?
        } else {
            latents.clone()
        };
        let x = x.to_dtype(self.dtype)?;
        let text = cond.text.to_dtype(self.dtype)?;
        let emb = self.time_embedding(b, t, cond)?;
        let temb = candle_nn::ops::silu(&emb)?;
        self.forward_body(x, &text, &temb, h, w, hooks)
    }

    /// The time embedding `[b, 4·c0]` (before the SiLU the ResNets apply): the sinusoidal
    /// embedding of `t` through `time_embedding`, plus on SDXL `add_embedding` of the pooled
    /// text concatenated with the sinusoidal embeddings of the six time ids.
    pub fn time_embedding(&self, b: usize, t: f64, cond: &UNetCond<'_>) -> Result<Tensor> {
        let device = cond.text.device();
        let c0 = self.cfg.blocks[0].channels;
        let ts = (Tensor::ones(b, DType::F32, device)? * t)?;
        let t_sin = timestep_embedding(&ts, c0, self.cfg.flip_sin_to_cos, self.cfg.freq_shift)?;
        let mut emb = self.time_embedding.forward(&t_sin.to_dtype(self.dtype)?)?;
        if let (Some(add), Some(tt)) = (&self.add_embedding, self.cfg.text_time) {
            let (pooled, ids) = cond.text_time.ok_or_else(|| {
                DiffusionError::BadInput("this UNet (SDXL) needs pooled text embeddings and time ids".into())
            })?;
            let ids = ids.to_dtype(DType::F32)?;
            let (ib, n_ids) = ids.dims2()?;
            let t_emb = timestep_embedding(
                &ids.flatten_all()?,
                tt.time_embed_dim,
                self.cfg.flip_sin_to_cos,
                self.cfg.freq_shift,
            )?
            .reshape((ib, n_ids * tt.time_embed_dim))?
            .to_dtype(self.dtype)?;
            let add_in = Tensor::cat(&[&pooled.to_dtype(self.dtype)?, &t_emb], 1)?;
            if add_in.dim(1)? != tt.input_dim {
                return Err(DiffusionError::BadInput(format!(
                    "SDXL added conditioning has width {}, the UNet expects {}",
                    add_in.dim(1)?,
                    tt.input_dim
                )));
            }
            emb = (emb + add.forward(&add_in)?)?;
        }
        Ok(emb)
    }

    fn forward_body(
        &self,
        x: Tensor,
        text: &Tensor,
        temb: &Tensor,
        h: usize,
        w: usize,
        hooks: &mut dyn DiffHooks,
    ) -> Result<Tensor> {
        let n = self.down.len();
        let up_factor = 1usize << (n - 1);
        let odd = !h.is_multiple_of(up_factor) || !w.is_multiple_of(up_factor);
        let mut x = self.conv_in.forward(&x)?;
        let mut skips = vec![x.clone()];
        for d in &self.down {
            x = d.forward(&x, temb, text, hooks, &mut skips)?;
        }
        x = self.mid.forward(&x, temb, text, hooks)?;
        for (i, u) in self.up.iter().enumerate() {
            let keep = skips.len().saturating_sub(u.n_skips());
            let size = if odd && i + 1 < n {
                match skips.get(keep.wrapping_sub(1)) {
                    Some(s) => {
                        let (_, _, sh, sw) = s.dims4()?;
                        Some((sh, sw))
                    }
                    None => None,
                }
            } else {
                None
            };
            x = u.forward(&x, &mut skips, temb, text, size, hooks)?;
            skips.truncate(keep);
        }
        let x = self.conv_norm_out.forward(&x, hooks, true)?;
        Ok(self.conv_out.forward(&x)?)
    }
}
