//! `ResnetBlock2D` with hook points at `norm1` and `norm2` (diffusers `resnet.py`):
//!
//! ```text
//! h = conv1(silu(hook(norm1(x)))) + time_emb_proj(silu(temb))[:, :, None, None]
//! h = conv2(silu(hook(norm2(h))))
//! out = (shortcut(x) + h) / output_scale_factor
//! ```

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};

use crate::diffusion::conv::{Conv2d, conv2d};

use crate::diffusion::error::Result;
use crate::diffusion::hooks::{DiffHooks, HookRegistry};

use super::norm::HookedGroupNorm;

/// A residual block on `[b, c, h, w]`.
#[derive(Debug)]
pub struct ResnetBlock {
    norm1: HookedGroupNorm,
    conv1: Conv2d,
    norm2: HookedGroupNorm,
    conv2: Conv2d,
    time_emb_proj: Linear,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

/// Sizes of a ResNet block.
#[derive(Debug, Clone, Copy)]
pub struct ResnetSpec {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Time embedding width.
    pub temb: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// Norm epsilon.
    pub eps: f64,
    /// Divides the output.
    pub output_scale_factor: f64,
}

pub(crate) fn conv3(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    conv2d(cin, cout, 3, cfg, vb)
}

impl ResnetBlock {
    /// Loads the block at `vb` (e.g. `down_blocks.0.resnets.1`), registering `{name}.norm1/2`.
    pub fn new(s: ResnetSpec, vb: VarBuilder, reg: &mut HookRegistry, name: &str) -> Result<Self> {
        let norm1 = HookedGroupNorm::new(
            s.groups,
            s.in_channels,
            s.eps,
            vb.pp("norm1"),
            reg,
            format!("{name}.norm1"),
        )?;
        let conv1 = conv3(s.in_channels, s.out_channels, vb.pp("conv1"))?;
        let time_emb_proj = candle_nn::linear(s.temb, s.out_channels, vb.pp("time_emb_proj"))?;
        let norm2 = HookedGroupNorm::new(
            s.groups,
            s.out_channels,
            s.eps,
            vb.pp("norm2"),
            reg,
            format!("{name}.norm2"),
        )?;
        let conv2 = conv3(s.out_channels, s.out_channels, vb.pp("conv2"))?;
        let conv_shortcut = if s.in_channels != s.out_channels {
            Some(conv2d(
                s.in_channels,
                s.out_channels,
                1,
                Conv2dConfig::default(),
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1,
            conv1,
            norm2,
            conv2,
            time_emb_proj,
            conv_shortcut,
            output_scale_factor: s.output_scale_factor,
        })
    }

    /// `x: [b, c_in, h, w]`, `temb_silu: [b, temb]` (already through SiLU) → `[b, c_out, h, w]`.
    pub fn forward(&self, x: &Tensor, temb_silu: &Tensor, hooks: &mut dyn DiffHooks) -> Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let h = self.conv1.forward(&self.norm1.forward(x, hooks, true)?)?;
        let t = self
            .time_emb_proj
            .forward(temb_silu)?
            .unsqueeze(2)?
            .unsqueeze(3)?;
        let h = h.broadcast_add(&t)?;
        let h = self.conv2.forward(&self.norm2.forward(&h, hooks, true)?)?;
        let out = (shortcut + h)?;
        Ok(if self.output_scale_factor == 1.0 {
            out
        } else {
            (out / self.output_scale_factor)?
        })
    }
}
