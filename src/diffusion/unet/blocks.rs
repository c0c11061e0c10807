//! Down, mid and up blocks of the UNet (diffusers `unet_2d_blocks.py`): ResNets, optional
//! cross-attention transformers, and the strided-conv downsampler / nearest-neighbour
//! upsampler.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::diffusion::conv::{Conv2d, conv2d};

use crate::diffusion::error::Result;
use crate::diffusion::hooks::{DiffHooks, HookRegistry};

use super::attention::{SpatialTransformer, TransformerSpec};
use super::config::UNetConfig;
use super::resnet::{ResnetBlock, ResnetSpec, conv3};

/// `CrossAttnDownBlock2D` or `DownBlock2D`.
#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    downsampler: Option<(Conv2d, usize)>,
}

/// `CrossAttnUpBlock2D` or `UpBlock2D`.
#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    upsampler: Option<Conv2d>,
}

/// `UNetMidBlock2DCrossAttn`: resnet, (transformer, resnet).
#[derive(Debug)]
pub struct MidBlock {
    resnet0: ResnetBlock,
    attention: SpatialTransformer,
    resnet1: ResnetBlock,
}

fn tspec(cfg: &UNetConfig, channels: usize, block: usize) -> TransformerSpec {
    let b = &cfg.blocks[block];
    TransformerSpec {
        channels,
        heads: b.heads,
        depth: b.transformer_layers,
        context_dim: cfg.cross_attention_dim,
        groups: cfg.norm_num_groups,
        linear_projection: cfg.use_linear_projection,
        geglu_tanh: cfg.geglu_tanh,
    }
}

fn rspec(cfg: &UNetConfig, cin: usize, cout: usize) -> ResnetSpec {
    ResnetSpec {
        in_channels: cin,
        out_channels: cout,
        temb: cfg.time_embed_dim(),
        groups: cfg.norm_num_groups,
        eps: cfg.norm_eps,
        output_scale_factor: 1.0,
    }
}

impl DownBlock {
    /// Down block `i` at `vb` = `down_blocks.{i}`.
    pub fn new(cfg: &UNetConfig, i: usize, vb: VarBuilder, reg: &mut HookRegistry) -> Result<Self> {
        let out = cfg.blocks[i].channels;
        let cin = if i == 0 { out } else { cfg.blocks[i - 1].channels };
        let name = format!("unet.down_blocks.{i}");
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..cfg.layers_per_block {
            let c = if j == 0 { cin } else { out };
            resnets.push(ResnetBlock::new(
                rspec(cfg, c, out),
                vb.pp(format!("resnets.{j}")),
                reg,
                &format!("{name}.resnets.{j}"),
            )?);
            if cfg.blocks[i].cross_attn {
                attentions.push(SpatialTransformer::new(
                    tspec(cfg, out, i),
                    vb.pp(format!("attentions.{j}")),
                    reg,
                    &format!("{name}.attentions.{j}"),
                )?);
            }
        }
        let downsampler = if i + 1 < cfg.blocks.len() {
            let cc = Conv2dConfig {
                stride: 2,
                padding: cfg.downsample_padding,
                ..Default::default()
            };
            Some((
                conv2d(out, out, 3, cc, vb.pp("downsamplers.0.conv"))?,
                cfg.downsample_padding,
            ))
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Returns the block output and the skip states it adds.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        text: &Tensor,
        hooks: &mut dyn DiffHooks,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for (j, r) in self.resnets.iter().enumerate() {
            x = r.forward(&x, temb, hooks)?;
            if let Some(a) = self.attentions.get(j) {
                x = a.forward(&x, text, hooks)?;
            }
            skips.push(x.clone());
        }
        if let Some((conv, padding)) = &self.downsampler {
            x = if *padding == 0 {
                conv.forward(&x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?)?
            } else {
                conv.forward(&x)?
            };
            skips.push(x.clone());
        }
        Ok(x)
    }
}

impl MidBlock {
    /// The mid block at `vb` = `mid_block`.
    pub fn new(cfg: &UNetConfig, vb: VarBuilder, reg: &mut HookRegistry) -> Result<Self> {
        let last = cfg.blocks.len() - 1;
        let c = cfg.blocks[last].channels;
        let mut rs = rspec(cfg, c, c);
        rs.output_scale_factor = cfg.mid_block_scale_factor;
        Ok(Self {
            resnet0: ResnetBlock::new(rs, vb.pp("resnets.0"), reg, "unet.mid_block.resnets.0")?,
            attention: SpatialTransformer::new(
                tspec(cfg, c, last),
                vb.pp("attentions.0"),
                reg,
                "unet.mid_block.attentions.0",
            )?,
            resnet1: ResnetBlock::new(rs, vb.pp("resnets.1"), reg, "unet.mid_block.resnets.1")?,
        })
    }

    /// `[b, c, h, w]` → same shape.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        text: &Tensor,
        hooks: &mut dyn DiffHooks,
    ) -> Result<Tensor> {
        let x = self.resnet0.forward(x, temb, hooks)?;
        let x = self.attention.forward(&x, text, hooks)?;
        self.resnet1.forward(&x, temb, hooks)
    }
}

impl UpBlock {
    /// Up block `i` at `vb` = `up_blocks.{i}` (mirrors down block `n − 1 − i`).
    pub fn new(cfg: &UNetConfig, i: usize, vb: VarBuilder, reg: &mut HookRegistry) -> Result<Self> {
        let n = cfg.blocks.len();
        let mirror = n - 1 - i;
        let out = cfg.blocks[mirror].channels;
        let prev = if i == 0 {
            cfg.blocks[n - 1].channels
        } else {
            cfg.blocks[n - i].channels
        };
        let skip_in = cfg.blocks[mirror.saturating_sub(1)].channels;
        let name = format!("unet.up_blocks.{i}");
        let layers = cfg.layers_per_block + 1;
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..layers {
            let skip = if j == layers - 1 { skip_in } else { out };
            let rin = if j == 0 { prev } else { out };
            resnets.push(ResnetBlock::new(
                rspec(cfg, rin + skip, out),
                vb.pp(format!("resnets.{j}")),
                reg,
                &format!("{name}.resnets.{j}"),
            )?);
            if cfg.blocks[mirror].cross_attn {
                attentions.push(SpatialTransformer::new(
                    tspec(cfg, out, mirror),
                    vb.pp(format!("attentions.{j}")),
                    reg,
                    &format!("{name}.attentions.{j}"),
                )?);
            }
        }
        let upsampler = if i + 1 < n {
            Some(conv3(out, out, vb.pp("upsamplers.0.conv"))?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// Number of skip states the block consumes.
    pub fn n_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` are consumed from the end; `size` forces the upsampled size (odd inputs).
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb: &Tensor,
        text: &Tensor,
        size: Option<(usize, usize)>,
        hooks: &mut dyn DiffHooks,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for (j, r) in self.resnets.iter().enumerate() {
            let skip = skips.pop().ok_or_else(|| {
                crate::diffusion::DiffusionError::Backend("UNet skip states exhausted".into())
            })?;
            x = Tensor::cat(&[&x, &skip], 1)?;
            x = r.forward(&x, temb, hooks)?;
            if let Some(a) = self.attentions.get(j) {
                x = a.forward(&x, text, hooks)?;
            }
        }
        if let Some(conv) = &self.upsampler {
            let (_, _, h, w) = x.dims4()?;
            x = match size {
                Some((th, tw)) if (th, tw) != (2 * h, 2 * w) => {
                    conv.forward(&x.upsample_nearest2d(th, tw)?)?
                }
                _ => conv.forward_upsampled(&x)?,
            };
        }
        Ok(x)
    }
}
