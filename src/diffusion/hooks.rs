//! Hook points of a diffusion pipeline: every normalisation layer of the UNet (GroupNorm and
//! LayerNorm outputs) and the text encoders' layer norms (AcT paper §5; docs/ARCHITECTURE.md,
//! "Diffusion"), plus each UNet transformer block's cross-attention output (`…attn2`).
//!
//! Each component registers its hook points in forward order into one [`HookRegistry`] when it
//! is built, and keeps the returned ids. Names follow the diffusers module paths with the
//! component as prefix, e.g. `unet.down_blocks.1.resnets.0.norm1`,
//! `unet.mid_block.attentions.0.transformer_blocks.0.norm2`,
//! `text_encoder.layers.3.layer_norm1`, `text_encoder_2.final_layer_norm`.
//!
//! Activations reach hooks as f32, either spatial `[batch, channels, h, w]` (GroupNorm
//! outputs) or token-major `[batch, tokens, dim]` (LayerNorm and cross-attention outputs of
//! UNet transformer blocks, text encoders' layer norms).

use candle_core::{DType, Tensor};

use crate::runtime::HookFlow;

use super::error::{DiffusionError, Result};

/// Layout of an activation handed to a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActShape {
    /// `[batch, tokens, dim]`: one vector per token; the neurons are `dim`.
    Tokens([usize; 3]),
    /// `[batch, channels, h, w]`: one plane per channel; the neurons are the channels.
    Spatial([usize; 4]),
}

impl ActShape {
    /// Batch size.
    pub fn batch(&self) -> usize {
        match self {
            ActShape::Tokens(s) => s[0],
            ActShape::Spatial(s) => s[0],
        }
    }
    /// Number of neurons (`dim` or `channels`).
    pub fn neurons(&self) -> usize {
        match self {
            ActShape::Tokens(s) => s[2],
            ActShape::Spatial(s) => s[1],
        }
    }
    /// The same layout with `rows` batch rows.
    pub fn with_batch(&self, rows: usize) -> ActShape {
        match *self {
            ActShape::Tokens([_, t, d]) => ActShape::Tokens([rows, t, d]),
            ActShape::Spatial([_, c, h, w]) => ActShape::Spatial([rows, c, h, w]),
        }
    }
    /// Values per batch row.
    pub fn row_len(&self) -> usize {
        match self {
            ActShape::Tokens([_, t, d]) => t * d,
            ActShape::Spatial([_, c, h, w]) => c * h * w,
        }
    }
}

/// A live activation at a hook point, mutable so hooks can transform it in place.
pub struct DiffActivation<'a> {
    /// Row-major values, length `batch × row_len`.
    pub data: &'a mut [f32],
    /// The layout.
    pub shape: ActShape,
}

/// Mean over tokens (3-D) or pixels (4-D) for every batch row: `[batch, neurons]`.
pub fn pool_mean(data: &[f32], shape: ActShape) -> Vec<f32> {
    match shape {
        ActShape::Tokens([b, t, d]) => {
            let mut out = vec![0.0f32; b * d];
            for (row, o) in data.chunks_exact(t * d).zip(out.chunks_exact_mut(d)) {
                let mut acc = vec![0.0f64; d];
                for tok in row.chunks_exact(d) {
                    acc.iter_mut().zip(tok).for_each(|(a, &v)| *a += f64::from(v));
                }
                let n = t.max(1) as f64;
                o.iter_mut().zip(&acc).for_each(|(o, a)| *o = (a / n) as f32);
            }
            out
        }
        ActShape::Spatial([_, _, h, w]) => {
            let hw = (h * w).max(1);
            data.chunks_exact(hw)
                .map(|p| (p.iter().map(|&v| f64::from(v)).sum::<f64>() / hw as f64) as f32)
                .collect()
        }
    }
}

/// How a prompt's activation at a hook point becomes samples for fitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SamplePooling {
    /// One sample per prompt: the mean over tokens or pixels ([`pool_mean`]; the AcT paper's
    /// rule, and with it the spatial-mean rule when steering 4-D activations).
    #[default]
    Mean,
    /// One sample per position: every token or pixel ([`position_rows`]), for local features
    /// (textures, the colour of an object) that per-prompt means dilute.
    Positions,
}

impl SamplePooling {
    /// The name on the command line and in concept files.
    pub fn name(&self) -> &'static str {
        match self {
            SamplePooling::Mean => "mean",
            SamplePooling::Positions => "positions",
        }
    }

    /// Parses [`SamplePooling::name`].
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "mean" => Some(SamplePooling::Mean),
            "positions" => Some(SamplePooling::Positions),
            _ => None,
        }
    }

    /// The samples of `data` (laid out as `shape`), `[batch × per_row, neurons]` row-major,
    /// and how many samples each batch row gave (`per_row`).
    pub fn samples(&self, data: &[f32], shape: ActShape) -> (Vec<f32>, usize) {
        match self {
            SamplePooling::Mean => (pool_mean(data, shape), 1),
            SamplePooling::Positions => position_rows(data, shape),
        }
    }
}

/// Most positions [`position_rows`] takes from one batch row: an even spread of the tokens or
/// pixels when there are more (SD 1.5's 64 × 64 latents give 4096), which bounds the memory
/// and the sorting of a fit while keeping the distribution's shape.
pub const MAX_POSITIONS_PER_ROW: usize = 256;

/// Every position of every batch row as a sample (at most [`MAX_POSITIONS_PER_ROW`] per row,
/// evenly spread, the same positions in every row): `[batch × per_row, neurons]` row-major,
/// and `per_row`. Pixels of `[b, c, h, w]` are gathered across the channel planes.
pub fn position_rows(data: &[f32], shape: ActShape) -> (Vec<f32>, usize) {
    let (b, positions, d) = match shape {
        ActShape::Tokens([b, t, d]) => (b, t, d),
        ActShape::Spatial([b, c, h, w]) => (b, h * w, c),
    };
    let take = positions.min(MAX_POSITIONS_PER_ROW);
    let picked: Vec<usize> = (0..take).map(|i| i * positions / take.max(1)).collect();
    let mut out = Vec::with_capacity(b * take * d);
    for row in data.chunks_exact((positions * d).max(1)).take(b) {
        for &p in &picked {
            match shape {
                ActShape::Tokens(_) => out.extend_from_slice(&row[p * d..(p + 1) * d]),
                ActShape::Spatial(_) => out.extend((0..d).map(|j| row[j * positions + p])),
            }
        }
    }
    (out, take)
}

/// Receives activations during a diffusion forward pass.
pub trait DiffHooks: Send {
    /// Whether this object wants hook `id` (ids from [`HookRegistry`]); others cost nothing.
    fn wants(&self, id: usize) -> bool;
    /// Called at hook `id` with the live activation; may record and/or modify it.
    fn on_activation(&mut self, id: usize, act: DiffActivation<'_>) -> Result<HookFlow>;
    /// Called when a new part of a run starts (the prompts' encoding, the negative prompt's,
    /// each denoising step's UNet pass), for hooks that act on parts differently.
    fn begin(&mut self, _phase: DiffPhase) {}
}

/// Where a run stands, kept up to date from [`DiffHooks::begin`] by hooks that act on its
/// parts differently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunPosition {
    /// The denoising step (0 before the first).
    pub step: usize,
    /// Leading unconditional rows of the current UNet pass.
    pub unconditional: usize,
    /// The negative prompt is being encoded.
    pub negative: bool,
}

impl RunPosition {
    /// Moves to `phase`.
    pub fn enter(&mut self, phase: DiffPhase) {
        match phase {
            DiffPhase::Prompts => self.negative = false,
            DiffPhase::NegativePrompt => self.negative = true,
            DiffPhase::Step { step, unconditional } => {
                *self = RunPosition {
                    step,
                    unconditional,
                    negative: false,
                }
            }
        }
    }
}

/// The part of a diffusion run about to reach the hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffPhase {
    /// The text encoding of the prompts (one batch row each).
    Prompts,
    /// The text encoding of the negative prompt (with guidance only).
    NegativePrompt,
    /// The UNet pass of denoising step `step` (0-based), whose first `unconditional` batch
    /// rows are guidance's unconditional branch and the rest the prompts' (conditional).
    Step {
        /// Step index.
        step: usize,
        /// Leading unconditional rows (0 without guidance).
        unconditional: usize,
    },
}

/// No hooks: the plain forward pass.
pub struct NoDiffHooks;

impl DiffHooks for NoDiffHooks {
    fn wants(&self, _: usize) -> bool {
        false
    }
    fn on_activation(&mut self, _: usize, _: DiffActivation<'_>) -> Result<HookFlow> {
        Ok(HookFlow::Continue)
    }
}

/// Where a hook point sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookSiteKind {
    /// A GroupNorm output `[b, c, h, w]`.
    GroupNorm,
    /// A LayerNorm output `[b, tokens, dim]`.
    LayerNorm,
    /// A UNet transformer block's cross-attention output `[b, h·w, dim]`, before it is added
    /// to the residual stream: where the text conditioning (an object's colour, say) enters
    /// the image.
    CrossAttention,
}

/// One registered hook point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSite {
    /// Full name, e.g. `unet.up_blocks.1.attentions.2.norm`.
    pub name: String,
    /// Neurons (channels or features).
    pub dim: usize,
    /// GroupNorm, LayerNorm or cross-attention output.
    pub kind: HookSiteKind,
}

/// All hook points of a pipeline, in forward order (text encoders first, then the UNet).
#[derive(Debug, Clone, Default)]
pub struct HookRegistry {
    sites: Vec<HookSite>,
}

impl HookRegistry {
    /// Registers a hook point and returns its id.
    pub fn add(&mut self, name: String, dim: usize, kind: HookSiteKind) -> usize {
        self.sites.push(HookSite { name, dim, kind });
        self.sites.len() - 1
    }
    /// The hook points, index = id.
    pub fn sites(&self) -> &[HookSite] {
        &self.sites
    }
    /// Number of hook points.
    pub fn len(&self) -> usize {
        self.sites.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }
    /// The id of the hook point called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.sites.iter().position(|s| s.name == name)
    }
}

/// Runs hook `id` on an activation already held as an f32 buffer (the fused kernels produce
/// one), in place. [`HookFlow::Stop`] becomes [`DiffusionError::Stopped`].
pub fn call_hook(hooks: &mut dyn DiffHooks, id: usize, data: &mut [f32], shape: ActShape) -> Result<()> {
    if !hooks.wants(id) {
        return Ok(());
    }
    match hooks.on_activation(id, DiffActivation { data, shape })? {
        HookFlow::Stop => Err(DiffusionError::Stopped),
        HookFlow::Continue => Ok(()),
    }
}

/// Runs hook `id` on `xs` (3-D or 4-D, any float dtype) if `hooks` wants it, returning the
/// possibly modified tensor in the original dtype. A hook returning [`HookFlow::Stop`] turns
/// into [`DiffusionError::Stopped`], which the caller of the forward pass treats as an early
/// exit.
pub fn run_hook(hooks: &mut dyn DiffHooks, id: usize, xs: Tensor) -> Result<Tensor> {
    if !hooks.wants(id) {
        return Ok(xs);
    }
    let dtype = xs.dtype();
    let dims = xs.dims().to_vec();
    let shape = match dims.as_slice() {
        [b, t, d] => ActShape::Tokens([*b, *t, *d]),
        [b, c, h, w] => ActShape::Spatial([*b, *c, *h, *w]),
        _ => {
            return Err(DiffusionError::Hook {
                hook: format!("#{id}"),
                reason: format!("activation of rank {} (expected 3 or 4)", dims.len()),
            });
        }
    };
    let device = xs.device().clone();
    let mut data = xs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let flow = hooks.on_activation(
        id,
        DiffActivation {
            data: &mut data,
            shape,
        },
    )?;
    if flow == HookFlow::Stop {
        return Err(DiffusionError::Stopped);
    }
    Ok(Tensor::from_vec(data, dims, &device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_means_tokens_and_pixels() {
        let data: Vec<f32> = (0..12).map(|v| v as f32).collect();
        // [1, 3, 4]: mean over 3 tokens of 4 features.
        assert_eq!(
            pool_mean(&data, ActShape::Tokens([1, 3, 4])),
            vec![4.0, 5.0, 6.0, 7.0]
        );
        // [1, 3, 2, 2]: mean of each 2×2 plane.
        assert_eq!(
            pool_mean(&data, ActShape::Spatial([1, 3, 2, 2])),
            vec![1.5, 5.5, 9.5]
        );
    }

    #[test]
    fn positions_are_samples_of_their_own() {
        let data: Vec<f32> = (0..12).map(|v| v as f32).collect();
        // Tokens: each token's vector as it is.
        assert_eq!(
            position_rows(&data, ActShape::Tokens([1, 3, 4])),
            (data.clone(), 3)
        );
        // [2, 3, 1, 2]: two rows of 3 channels × 2 pixels; a pixel's sample gathers its
        // value in every channel.
        assert_eq!(
            SamplePooling::Positions.samples(&data, ActShape::Spatial([2, 3, 1, 2])),
            (
                vec![0.0, 2.0, 4.0, 1.0, 3.0, 5.0, 6.0, 8.0, 10.0, 7.0, 9.0, 11.0],
                2
            )
        );
        assert_eq!(
            SamplePooling::Mean.samples(&data, ActShape::Spatial([1, 3, 2, 2])),
            (vec![1.5, 5.5, 9.5], 1)
        );
        // Large planes: an even spread of MAX_POSITIONS_PER_ROW pixels, the same in each row.
        let (h, w) = (32, 32);
        let big: Vec<f32> = (0..2 * h * w).map(|v| v as f32).collect();
        let (rows, per) = position_rows(&big, ActShape::Spatial([2, 1, h, w]));
        assert_eq!(per, MAX_POSITIONS_PER_ROW);
        assert_eq!(rows.len(), 2 * per);
        assert_eq!((rows[0], rows[1], rows[per]), (0.0, 4.0, (h * w) as f32));
        for name in ["mean", "positions"] {
            assert_eq!(SamplePooling::parse(name).map(|p| p.name()), Some(name));
        }
        assert_eq!(SamplePooling::parse("max"), None);
    }
}
