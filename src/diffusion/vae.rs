//! The VAE decoder of Stable Diffusion (the decoder half of diffusers' `AutoencoderKL`):
//! latents `[b, latent_channels, h, w]` → images `[b, out_channels, f·h, f·w]` roughly in
//! `[-1, 1]`, where `f = 2^(len(block_out_channels) − 1)` (8 for every SD VAE).
//!
//! Layout of the decoder (diffusers `Decoder`, weight names as in `vae/diffusion_pytorch_model.safetensors`):
//!
//! ```text
//! post_quant_conv (1×1)                      [b, 4, h, w]
//! decoder.conv_in (3×3)                      → [b, C_last, h, w]
//! decoder.mid_block.resnets.0
//! decoder.mid_block.attentions.0             (single-head self-attention over h·w pixels)
//! decoder.mid_block.resnets.1
//! decoder.up_blocks.{i}.resnets.{j}          i = 0.. over reversed block_out_channels,
//! decoder.up_blocks.{i}.upsamplers.0.conv    j < layers_per_block + 1; nearest ×2 then 3×3
//! decoder.conv_norm_out, SiLU, decoder.conv_out → [b, out_channels, H, W]
//! ```
//!
//! The numerics follow candle-transformers' `AutoEncoderKL::decode` (itself a port of
//! diffusers): GroupNorm eps 1e-6 everywhere, attention scores computed in f32 with the
//! `C^-1/4` scale applied to both queries and keys. Everything else runs in the dtype the
//! weights were loaded in. Only the decoder tensors are read; the encoder tensors in the file
//! are ignored.

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, GroupNorm, Linear, VarBuilder};

use super::conv::{Conv2d, conv2d};
use serde_json::Value;

use super::error::{DiffusionError, Result};
use super::weights::{load_component, read_json, weights_error};

/// Component name used in error messages.
const COMPONENT: &str = "vae";
/// GroupNorm epsilon of every normalisation layer of the SD VAE decoder.
const NORM_EPS: f64 = 1e-6;

/// Architecture of a diffusers `AutoencoderKL` (as read from `vae/config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// Image channels the encoder takes (3).
    pub in_channels: usize,
    /// Image channels the decoder produces (3).
    pub out_channels: usize,
    /// Latent channels (4 for SD 1.x/2.x/XL).
    pub latent_channels: usize,
    /// Channels of each resolution level, encoder order (e.g. `[128, 256, 512, 512]`).
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks per encoder level; the decoder has one more per level.
    pub layers_per_block: usize,
    /// Groups of every GroupNorm.
    pub norm_num_groups: usize,
    /// Latents in UNet space are `scaling_factor · (z − shift_factor)`; 0.18215 for SD 1.x/2.x,
    /// 0.13025 for SDXL.
    pub scaling_factor: f64,
    /// Optional latent shift (SD3-style VAEs); `None` for SD 1.x/2.x/XL.
    pub shift_factor: Option<f64>,
    /// Training image size, informative only.
    pub sample_size: Option<usize>,
    /// Whether a 1×1 `post_quant_conv` precedes the decoder (true for SD).
    pub use_post_quant_conv: bool,
    /// Whether the mid block has its self-attention layer (true for SD).
    pub mid_block_add_attention: bool,
    /// diffusers' hint that the VAE overflows in f16 (true for the SD 1.x/2.x/XL VAEs).
    pub force_upcast: bool,
}

impl Default for VaeConfig {
    /// The diffusers `AutoencoderKL` defaults (a one-level toy VAE, not SD's).
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![64],
            layers_per_block: 1,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            sample_size: Some(32),
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            force_upcast: true,
        }
    }
}

fn bad_config(path: &Path, reason: impl Into<String>) -> DiffusionError {
    DiffusionError::BadConfig {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads an optional non-negative integer `key`; `Ok(None)` when missing or null.
fn opt_usize(v: &Value, key: &str, path: &Path) -> Result<Option<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| bad_config(path, format!("`{key}` must be a non-negative integer, got {x}"))),
    }
}

fn opt_f64(v: &Value, key: &str, path: &Path) -> Result<Option<f64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad_config(path, format!("`{key}` must be a number, got {x}"))),
    }
}

fn opt_bool(v: &Value, key: &str, path: &Path) -> Result<Option<bool>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_bool()
            .map(Some)
            .ok_or_else(|| bad_config(path, format!("`{key}` must be true or false, got {x}"))),
    }
}

fn opt_str_list(v: &Value, key: &str, path: &Path) -> Result<Option<Vec<String>>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad_config(path, format!("`{key}` must hold strings, got {x}")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(x) => Err(bad_config(path, format!("`{key}` must be a list, got {x}"))),
    }
}

impl VaeConfig {
    /// Reads a diffusers `vae/config.json`. Missing keys take diffusers' `AutoencoderKL`
    /// defaults; malformed or unsupported values are [`DiffusionError::BadConfig`].
    pub fn from_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        Self::from_json(&v, path)
    }

    /// Parses an already-read config; `path` is only used in error messages.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        if !v.is_object() {
            return Err(bad_config(path, "expected a JSON object"));
        }
        if let Some(class) = v.get("_class_name").and_then(Value::as_str)
            && class != "AutoencoderKL"
        {
            return Err(bad_config(
                path,
                format!("unsupported VAE class `{class}` (only AutoencoderKL is supported)"),
            ));
        }
        let d = Self::default();
        let block_out_channels = match v.get("block_out_channels") {
            None | Some(Value::Null) => d.block_out_channels.clone(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
                        bad_config(path, format!("`block_out_channels` must hold integers, got {x}"))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            Some(x) => {
                return Err(bad_config(
                    path,
                    format!("`block_out_channels` must be a list, got {x}"),
                ));
            }
        };
        let cfg = Self {
            in_channels: opt_usize(v, "in_channels", path)?.unwrap_or(d.in_channels),
            out_channels: opt_usize(v, "out_channels", path)?.unwrap_or(d.out_channels),
            latent_channels: opt_usize(v, "latent_channels", path)?.unwrap_or(d.latent_channels),
            block_out_channels,
            layers_per_block: opt_usize(v, "layers_per_block", path)?.unwrap_or(d.layers_per_block),
            norm_num_groups: opt_usize(v, "norm_num_groups", path)?.unwrap_or(d.norm_num_groups),
            scaling_factor: opt_f64(v, "scaling_factor", path)?.unwrap_or(d.scaling_factor),
            shift_factor: opt_f64(v, "shift_factor", path)?,
            sample_size: match v.get("sample_size") {
                // Some configs give [h, w]; informative only.
                Some(Value::Array(a)) => a.first().and_then(Value::as_u64).map(|n| n as usize),
                _ => opt_usize(v, "sample_size", path)?.or(d.sample_size),
            },
            use_post_quant_conv: opt_bool(v, "use_post_quant_conv", path)?.unwrap_or(d.use_post_quant_conv),
            mid_block_add_attention: opt_bool(v, "mid_block_add_attention", path)?
                .unwrap_or(d.mid_block_add_attention),
            force_upcast: opt_bool(v, "force_upcast", path)?.unwrap_or(d.force_upcast),
        };
        if let Some(act) = v.get("act_fn")
            && act.as_str() != Some("silu")
        {
            return Err(bad_config(
                path,
                format!("unsupported `act_fn` {act} (only \"silu\")"),
            ));
        }
        if let Some(norm) = v.get("norm_type")
            && norm.as_str() != Some("group")
        {
            return Err(bad_config(
                path,
                format!("unsupported `norm_type` {norm} (only \"group\")"),
            ));
        }
        if let Some(types) = opt_str_list(v, "up_block_types", path)? {
            if let Some(t) = types.iter().find(|t| t.as_str() != "UpDecoderBlock2D") {
                return Err(bad_config(
                    path,
                    format!("unsupported up block type `{t}` (only UpDecoderBlock2D)"),
                ));
            }
            if types.len() != cfg.block_out_channels.len() {
                return Err(bad_config(
                    path,
                    format!(
                        "{} up_block_types for {} block_out_channels",
                        types.len(),
                        cfg.block_out_channels.len()
                    ),
                ));
            }
        }
        cfg.validate().map_err(|reason| bad_config(path, reason))?;
        Ok(cfg)
    }

    /// Checks the values are usable; the reason otherwise.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.block_out_channels.is_empty() {
            return Err("`block_out_channels` is empty".into());
        }
        if self.norm_num_groups == 0 {
            return Err("`norm_num_groups` must be positive".into());
        }
        if let Some(&c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c == 0 || c % self.norm_num_groups != 0)
        {
            return Err(format!(
                "block_out_channels entry {c} is not a positive multiple of norm_num_groups {}",
                self.norm_num_groups
            ));
        }
        if self.latent_channels == 0 || self.out_channels == 0 || self.in_channels == 0 {
            return Err("channel counts must be positive".into());
        }
        if self.block_out_channels.len() > 8 {
            return Err(format!(
                "{} resolution levels is implausible",
                self.block_out_channels.len()
            ));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(format!(
                "`scaling_factor` must be positive, got {}",
                self.scaling_factor
            ));
        }
        if self.shift_factor.is_some_and(|s| !s.is_finite()) {
            return Err("`shift_factor` must be finite".into());
        }
        Ok(())
    }

    /// Spatial upscaling of the decoder: `2^(levels − 1)` (8 for SD).
    pub fn upscale(&self) -> usize {
        1usize << self.block_out_channels.len().saturating_sub(1)
    }
}

/// A ResNet block without time embedding: `x·W_s + conv2(silu(norm2(conv1(silu(norm1(x))))))`.
#[derive(Debug)]
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    /// 1×1 projection of the shortcut when the channel count changes.
    conv_shortcut: Option<Conv2d>,
}

fn conv(in_c: usize, out_c: usize, k: usize, padding: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        ..Default::default()
    };
    conv2d(in_c, out_c, k, cfg, vb).map_err(weights_error(COMPONENT))
}

fn norm(groups: usize, channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    candle_nn::group_norm(groups, channels, NORM_EPS, vb).map_err(weights_error(COMPONENT))
}

impl ResnetBlock {
    fn load(vb: VarBuilder, in_c: usize, out_c: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            norm1: norm(groups, in_c, vb.pp("norm1"))?,
            conv1: conv(in_c, out_c, 3, 1, vb.pp("conv1"))?,
            norm2: norm(groups, out_c, vb.pp("norm2"))?,
            conv2: conv(out_c, out_c, 3, 1, vb.pp("conv2"))?,
            conv_shortcut: if in_c != out_c {
                Some(conv(in_c, out_c, 1, 0, vb.pp("conv_shortcut"))?)
            } else {
                None
            },
        })
    }

    /// `[b, in_c, h, w]` → `[b, out_c, h, w]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let h = self.norm1.forward(x)?;
        let h = self.conv1.forward(&candle_nn::ops::silu(&h)?)?;
        let h = self.norm2.forward(&h)?;
        let h = self.conv2.forward(&candle_nn::ops::silu(&h)?)?;
        Ok((shortcut + h)?)
    }
}

/// Loads a `channels → channels` projection stored either as a linear weight `[c, c]` or, in
/// some legacy checkpoints, as a 1×1 convolution `[c, c, 1, 1]`.
fn attn_linear(channels: usize, vb: VarBuilder) -> Result<Linear> {
    match vb.get((channels, channels), "weight") {
        Ok(w) => {
            let b = vb.get(channels, "bias").map_err(weights_error(COMPONENT))?;
            Ok(Linear::new(w, Some(b)))
        }
        Err(first) => {
            let Ok(w4) = vb.get((channels, channels, 1, 1), "weight") else {
                return Err(weights_error(COMPONENT)(first));
            };
            let w = w4.reshape((channels, channels))?;
            let b = vb.get(channels, "bias").map_err(weights_error(COMPONENT))?;
            Ok(Linear::new(w, Some(b)))
        }
    }
}

/// The single-head spatial self-attention of the mid block, with a residual connection.
#[derive(Debug)]
struct AttentionBlock {
    group_norm: GroupNorm,
    query: Linear,
    key: Linear,
    value: Linear,
    proj: Linear,
    channels: usize,
}

impl AttentionBlock {
    /// Accepts the current diffusers names (`to_q`, `to_k`, `to_v`, `to_out.0`) and the legacy
    /// ones (`query`, `key`, `value`, `proj_attn`).
    fn load(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        let names = if vb.contains_tensor("to_q.weight") {
            ["to_q", "to_k", "to_v", "to_out.0"]
        } else if vb.contains_tensor("query.weight") {
            ["query", "key", "value", "proj_attn"]
        } else {
            return Err(DiffusionError::BadWeights {
                component: COMPONENT.into(),
                reason: format!(
                    "cannot find the mid-block attention: neither {p}.to_q.weight nor {p}.query.weight",
                    p = vb.prefix()
                ),
            });
        };
        Ok(Self {
            group_norm: norm(groups, channels, vb.pp("group_norm"))?,
            query: attn_linear(channels, vb.pp(names[0]))?,
            key: attn_linear(channels, vb.pp(names[1]))?,
            value: attn_linear(channels, vb.pp(names[2]))?,
            proj: attn_linear(channels, vb.pp(names[3]))?,
            channels,
        })
    }

    /// `[b, c, h, w]` → `[b, c, h, w]`; scores and softmax in f32.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let (b, c, h, w) = x.dims4()?;
        // [b, h·w, c]
        let t = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?;
        // Single head: [b, 1, h·w, c] in f32.
        let heads = |l: &Linear| -> Result<Tensor> { Ok(l.forward(&t)?.unsqueeze(1)?.to_dtype(DType::F32)?) };
        let q = heads(&self.query)?;
        let k = heads(&self.key)?;
        let v = heads(&self.value)?;
        // The scale is applied to both operands, hence the power −1/4.
        let scale = (self.channels as f64).powf(-0.25);
        // Sliced over queries when the h·w × h·w scores would be too big (large images).
        let o = super::unet::attention::attend(
            &(q * scale)?.squeeze(1)?,
            &(k * scale)?.squeeze(1)?,
            &v.squeeze(1)?,
        )?
        .unsqueeze(1)?
        .to_dtype(dtype)?; // [b, 1, h·w, c]
        let o = o.transpose(1, 2)?.contiguous()?.flatten_from(D::Minus2)?; // [b, h·w, c]
        let o = self.proj.forward(&o)?.t()?.reshape((b, c, h, w))?;
        Ok((o + x)?)
    }
}

/// One decoder level: `layers_per_block + 1` ResNets, then (except the last level) a
/// nearest-neighbour ×2 upsampling followed by a 3×3 convolution.
#[derive(Debug)]
struct UpBlock {
    resnets: Vec<ResnetBlock>,
    upsampler: Option<Conv2d>,
}

impl UpBlock {
    /// `[b, in_c, h, w]` → `[b, out_c, 2h, 2w]` (or `[b, out_c, h, w]` for the last level).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for r in &self.resnets {
            x = r.forward(&x)?;
        }
        match &self.upsampler {
            Some(conv) => Ok(conv.forward_upsampled(&x)?),
            None => Ok(x),
        }
    }
}

/// The VAE decoder of a diffusers `AutoencoderKL`, in the dtype its weights were loaded in.
#[derive(Debug)]
pub struct VaeDecoder {
    config: VaeConfig,
    header_sha256: String,
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_resnet_0: ResnetBlock,
    mid_attention: Option<AttentionBlock>,
    mid_resnet_1: ResnetBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    dtype: DType,
}

impl VaeDecoder {
    /// Loads `dir` (a diffusers `vae/` folder: `config.json` and
    /// `diffusion_pytorch_model[.fp16].safetensors`) in `dtype` on `device`.
    ///
    /// A missing or wrongly shaped tensor is a [`DiffusionError::BadWeights`] naming it.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg_path: PathBuf = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(DiffusionError::MissingComponent {
                folder: dir.to_path_buf(),
                what: "config.json".into(),
            });
        }
        let config = VaeConfig::from_file(&cfg_path)?;
        let weights = load_component(dir, dtype, device)?;
        Self::from_var_builder(config, weights.vb, weights.header_sha256)
    }

    /// Builds the decoder from `vb` rooted at the VAE (names `post_quant_conv.*`,
    /// `decoder.*`); `header_sha256` is only recorded.
    pub fn from_var_builder(config: VaeConfig, vb: VarBuilder, header_sha256: String) -> Result<Self> {
        config
            .validate()
            .map_err(|reason| DiffusionError::BadInput(format!("VAE config: {reason}")))?;
        let dtype = vb.dtype();
        let groups = config.norm_num_groups;
        let lat = config.latent_channels;
        let rev: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let last = rev[0];
        let post_quant_conv = if config.use_post_quant_conv {
            Some(conv(lat, lat, 1, 0, vb.pp("post_quant_conv"))?)
        } else {
            None
        };
        let vd = vb.pp("decoder");
        let conv_in = conv(lat, last, 3, 1, vd.pp("conv_in"))?;
        let vm = vd.pp("mid_block");
        let mid_resnet_0 = ResnetBlock::load(vm.pp("resnets").pp("0"), last, last, groups)?;
        let mid_attention = if config.mid_block_add_attention {
            Some(AttentionBlock::load(vm.pp("attentions").pp("0"), last, groups)?)
        } else {
            None
        };
        let mid_resnet_1 = ResnetBlock::load(vm.pp("resnets").pp("1"), last, last, groups)?;
        let mut up_blocks = Vec::with_capacity(rev.len());
        for (i, &out_c) in rev.iter().enumerate() {
            let in_c = if i == 0 { rev[0] } else { rev[i - 1] };
            let vu = vd.pp("up_blocks").pp(i.to_string());
            let resnets = (0..config.layers_per_block + 1)
                .map(|j| {
                    let c = if j == 0 { in_c } else { out_c };
                    ResnetBlock::load(vu.pp("resnets").pp(j.to_string()), c, out_c, groups)
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = if i + 1 < rev.len() {
                Some(conv(out_c, out_c, 3, 1, vu.pp("upsamplers").pp("0").pp("conv"))?)
            } else {
                None
            };
            up_blocks.push(UpBlock { resnets, upsampler });
        }
        let first = config.block_out_channels[0];
        let conv_norm_out = norm(groups, first, vd.pp("conv_norm_out"))?;
        let conv_out = conv(first, config.out_channels, 3, 1, vd.pp("conv_out"))?;
        Ok(Self {
            config,
            header_sha256,
            post_quant_conv,
            conv_in,
            mid_resnet_0,
            mid_attention,
            mid_resnet_1,
            up_blocks,
            conv_norm_out,
            conv_out,
            dtype,
        })
    }

    /// The architecture.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Hex SHA-256 over the safetensors headers of the weights files.
    pub fn header_sha256(&self) -> &str {
        &self.header_sha256
    }

    /// The dtype the weights were loaded in (and the decoder computes in).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Decodes raw latents `z: [b, latent_channels, h, w]` (already divided by the scaling
    /// factor) to images `[b, out_channels, f·h, f·w]` roughly in `[-1, 1]`, `f` =
    /// [`VaeConfig::upscale`]. `z` is cast to the weights' dtype; the result is in that dtype.
    /// Same numerics as candle-transformers' `AutoEncoderKL::decode`.
    pub fn decode_raw(&self, z: &Tensor) -> Result<Tensor> {
        let dims = z.dims();
        if dims.len() != 4 || dims[1] != self.config.latent_channels || dims[2] == 0 || dims[3] == 0 {
            return Err(DiffusionError::BadInput(format!(
                "VAE decoder expects latents [batch, {}, h, w], got {:?}",
                self.config.latent_channels, dims
            )));
        }
        let z = z.to_dtype(self.dtype)?;
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(&z)?,
            None => z,
        };
        let x = self.conv_in.forward(&z)?;
        let mut x = self.mid_resnet_0.forward(&x)?;
        if let Some(a) = &self.mid_attention {
            x = a.forward(&x)?;
        }
        let mut x = self.mid_resnet_1.forward(&x)?;
        for b in &self.up_blocks {
            x = b.forward(&x)?;
        }
        let x = self.conv_norm_out.forward(&x)?;
        let x = candle_nn::ops::silu(&x)?;
        Ok(self.conv_out.forward(&x)?)
    }

    /// Decodes latents in UNet space `[b, latent_channels, h, w]`: divides by
    /// `scaling_factor` (and adds `shift_factor` if any) and calls [`Self::decode_raw`].
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let z = (latents / self.config.scaling_factor)?;
        let z = match self.config.shift_factor {
            Some(s) => (z + s)?,
            None => z,
        };
        self.decode_raw(&z)
    }
}
