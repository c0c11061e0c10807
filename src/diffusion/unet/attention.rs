//! The UNet's transformers (diffusers `Transformer2DModel` with `BasicTransformerBlock`s),
//! with hook points at the GroupNorm `norm` (4-D), at each block's LayerNorms
//! `norm1`/`norm2`/`norm3` and at its cross-attention's output `attn2` (3-D `[b, h·w, c]`).
//!
//! ```text
//! x ─ hook(norm) ─ proj_in ─ [b, hw, c] ─ blocks ─ proj_out ─ + x
//! block: x += attn1(hook(norm1(x)));  x += hook(attn2(hook(norm2(x)), text));  x += ff(hook(norm3(x)))
//! ```

use candle_core::{D, DType, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::diffusion::conv::{Conv2d, conv2d};
use rayon::prelude::*;

use crate::diffusion::error::Result;
use crate::diffusion::hooks::{DiffHooks, HookRegistry, HookSiteKind, run_hook};

use super::norm::{HookedGroupNorm, HookedLayerNorm, with_cpu_f32};

/// Most attention scores held at once (64 M f32 = 256 MB).
pub(crate) const SCORE_BUDGET: usize = 64 << 20;

/// `softmax(q·kᵀ)·v` for `q: [r, n, d]`, `k: [r, m, d]`, `v: [r, m, e]` (f32, already
/// scaled) → `[r, n, e]`, holding at most [`SCORE_BUDGET`] scores at once: it slices over
/// the `r` rows (batch × heads), and over queries when one row alone is too big (e.g. the
/// first UNet level at 1024 px, or a VAE's single-head attention).
pub(crate) fn attend(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    attend_within(q, k, v, SCORE_BUDGET)
}

fn attend_within(q: &Tensor, k: &Tensor, v: &Tensor, budget: usize) -> Result<Tensor> {
    let (r, n, _) = q.dims3()?;
    let m = k.dim(1)?;
    let kt = k.t()?;
    let per_row = n.saturating_mul(m).max(1);
    if r.saturating_mul(per_row) <= budget {
        return Ok(candle_nn::ops::softmax_last_dim(&q.matmul(&kt)?)?.matmul(v)?);
    }
    let rows = (budget / per_row).clamp(1, r);
    let queries = (budget / (rows * m).max(1)).clamp(1, n);
    let mut out_rows = Vec::with_capacity(r.div_ceil(rows));
    for r0 in (0..r).step_by(rows) {
        let nr = rows.min(r - r0);
        let (qr, ktr, vr) = (q.narrow(0, r0, nr)?, kt.narrow(0, r0, nr)?, v.narrow(0, r0, nr)?);
        let mut parts = Vec::with_capacity(n.div_ceil(queries));
        for q0 in (0..n).step_by(queries) {
            let nq = queries.min(n - q0);
            let s = qr.narrow(1, q0, nq)?.matmul(&ktr)?;
            parts.push(candle_nn::ops::softmax_last_dim(&s)?.matmul(&vr)?);
        }
        out_rows.push(Tensor::cat(&parts, 1)?);
    }
    Ok(Tensor::cat(&out_rows, 0)?)
}

/// Multi-head attention, self (`context = None`) or cross.
#[derive(Debug)]
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            to_q: candle_nn::linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(context_dim, dim, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(context_dim, dim, vb.pp("to_v"))?,
            to_out: candle_nn::linear(dim, dim, vb.pp("to_out.0"))?,
            heads,
            scale: 1.0 / ((dim / heads) as f64).sqrt(),
        })
    }

    /// `[b, n, d]` → `[b·heads, n, d/heads]`.
    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        Ok(x.reshape((b, n, self.heads, d / self.heads))?
            .transpose(1, 2)?
            .reshape((b * self.heads, n, d / self.heads))?)
    }

    /// `x: [b, n, d]`, `context: [b, m, e]` → `[b, n, d]`. Scores and softmax in f32.
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let ctx = context.unwrap_or(x);
        let dtype = x.dtype();
        let q = self.split(&self.to_q.forward(x)?)?.to_dtype(DType::F32)?;
        let k = self.split(&self.to_k.forward(ctx)?)?.to_dtype(DType::F32)?;
        let v = self.split(&self.to_v.forward(ctx)?)?.to_dtype(DType::F32)?;
        // Scale the smaller of q and k (cross-attention keys have 77 rows).
        let (q, k) = if k.dim(1)? < n {
            (q, (k * self.scale)?)
        } else {
            ((q * self.scale)?, k)
        };
        let o = attend(&q, &k, &v)?;
        let o = o.to_dtype(dtype)?;
        let o = o
            .reshape((b, self.heads, n, d / self.heads))?
            .transpose(1, 2)?
            .reshape((b, n, d))?;
        Ok(self.to_out.forward(&o)?)
    }
}

/// GELU, exact (erf) or the tanh approximation.
fn gelu(x: f32, tanh: bool) -> f32 {
    if tanh {
        let c = (2.0f32 / std::f32::consts::PI).sqrt();
        0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
    } else {
        0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2))
    }
}

/// erf in f32 by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7 in exact arithmetic, within
/// 5e-7 in f32): `1 − t·P(t)·e^{−x²}` with `t = 1 / (1 + p·|x|)`, odd in `x`. One `expf` and
/// a degree-5 polynomial per value; the GEGLU of every transformer block calls it once per
/// inner activation (f64 `erfc` here cost ~5 % of an image on the demo model).
fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly =
        t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * (-z * z).exp()).copysign(x)
}

/// The GEGLU feed-forward: `net.2(a · gelu(g))` with `[a, g] = net.0.proj(x)`.
#[derive(Debug)]
struct FeedForward {
    proj: Linear,
    out: Linear,
    inner: usize,
    tanh: bool,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize, tanh: bool) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: candle_nn::linear(dim, inner * 2, vb.pp("net.0.proj"))?,
            out: candle_nn::linear(inner, dim, vb.pp("net.2"))?,
            inner,
            tanh,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let p = self.proj.forward(x)?;
        let (b, n, _) = p.dims3()?;
        let inner = self.inner;
        let tanh = self.tanh;
        // Fused `a · gelu(g)` over the f32 buffer: one pass, one allocation.
        let fused = with_cpu_f32(&p, |src| {
            let mut out = vec![0.0f32; b * n * inner];
            out.par_chunks_mut(inner)
                .zip(src.par_chunks(2 * inner))
                .for_each(|(o, s)| {
                    let (a, g) = s.split_at(inner);
                    for ((o, &a), &g) in o.iter_mut().zip(a).zip(g) {
                        *o = a * gelu(g, tanh);
                    }
                });
            out
        });
        let h = match fused {
            Some(v) => Tensor::from_vec(v, (b, n, inner), p.device())?,
            None => {
                let parts = p.chunk(2, D::Minus1)?;
                let g = if tanh {
                    parts[1].gelu()?
                } else {
                    parts[1].gelu_erf()?
                };
                (&parts[0] * g)?
            }
        };
        Ok(self.out.forward(&h)?)
    }
}

#[derive(Debug)]
struct TransformerBlock {
    norm1: HookedLayerNorm,
    attn1: Attention,
    norm2: HookedLayerNorm,
    attn2: Attention,
    /// Hook on the cross-attention's output, before it joins the residual stream.
    attn2_hook: usize,
    norm3: HookedLayerNorm,
    ff: FeedForward,
}

impl TransformerBlock {
    fn forward(&self, x: &Tensor, text: &Tensor, hooks: &mut dyn DiffHooks) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x, hooks)?, None)? + x)?;
        let cross = self.attn2.forward(&self.norm2.forward(&x, hooks)?, Some(text))?;
        let x = (run_hook(hooks, self.attn2_hook, cross)? + x)?;
        Ok((self.ff.forward(&self.norm3.forward(&x, hooks)?)? + x)?)
    }
}

#[derive(Debug)]
enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

/// Sizes of a spatial transformer.
#[derive(Debug, Clone, Copy)]
pub struct TransformerSpec {
    /// Channels (= inner width).
    pub channels: usize,
    /// Attention heads.
    pub heads: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Text conditioning width.
    pub context_dim: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// Linear rather than 1×1 conv projections.
    pub linear_projection: bool,
    /// tanh-approximate GELU (see [`super::UNetConfig::geglu_tanh`]).
    pub geglu_tanh: bool,
}

/// diffusers `Transformer2DModel` on `[b, c, h, w]`.
#[derive(Debug)]
pub struct SpatialTransformer {
    norm: HookedGroupNorm,
    proj_in: Proj,
    blocks: Vec<TransformerBlock>,
    proj_out: Proj,
}

impl SpatialTransformer {
    /// Loads the transformer at `vb` (e.g. `down_blocks.1.attentions.0`).
    pub fn new(s: TransformerSpec, vb: VarBuilder, reg: &mut HookRegistry, name: &str) -> Result<Self> {
        let c = s.channels;
        let norm = HookedGroupNorm::new(s.groups, c, 1e-6, vb.pp("norm"), reg, format!("{name}.norm"))?;
        let proj = |vb: VarBuilder| -> Result<Proj> {
            Ok(if s.linear_projection {
                Proj::Linear(candle_nn::linear(c, c, vb)?)
            } else {
                Proj::Conv(conv2d(c, c, 1, Default::default(), vb)?)
            })
        };
        let proj_in = proj(vb.pp("proj_in"))?;
        let mut blocks = Vec::with_capacity(s.depth);
        for i in 0..s.depth {
            let vb = vb.pp(format!("transformer_blocks.{i}"));
            let bn = format!("{name}.transformer_blocks.{i}");
            let norm1 = HookedLayerNorm::new(c, 1e-5, vb.pp("norm1"), reg, format!("{bn}.norm1"))?;
            let attn1 = Attention::new(vb.pp("attn1"), c, c, s.heads)?;
            let norm2 = HookedLayerNorm::new(c, 1e-5, vb.pp("norm2"), reg, format!("{bn}.norm2"))?;
            let attn2 = Attention::new(vb.pp("attn2"), c, s.context_dim, s.heads)?;
            let attn2_hook = reg.add(format!("{bn}.attn2"), c, HookSiteKind::CrossAttention);
            let norm3 = HookedLayerNorm::new(c, 1e-5, vb.pp("norm3"), reg, format!("{bn}.norm3"))?;
            let ff = FeedForward::new(vb.pp("ff"), c, s.geglu_tanh)?;
            blocks.push(TransformerBlock {
                norm1,
                attn1,
                norm2,
                attn2,
                attn2_hook,
                norm3,
                ff,
            });
        }
        let proj_out = proj(vb.pp("proj_out"))?;
        Ok(Self {
            norm,
            proj_in,
            blocks,
            proj_out,
        })
    }

    /// `x: [b, c, h, w]`, `text: [b, 77, context_dim]` → `[b, c, h, w]`.
    pub fn forward(&self, x: &Tensor, text: &Tensor, hooks: &mut dyn DiffHooks) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let y = self.norm.forward(x, hooks, false)?;
        let to_tokens =
            |t: &Tensor| -> candle_core::Result<Tensor> { t.permute((0, 2, 3, 1))?.reshape((b, h * w, c)) };
        let mut y = match &self.proj_in {
            Proj::Conv(p) => to_tokens(&p.forward(&y)?)?,
            Proj::Linear(p) => p.forward(&to_tokens(&y)?)?,
        };
        for blk in &self.blocks {
            y = blk.forward(&y, text, hooks)?;
        }
        let to_planes =
            |t: &Tensor| -> candle_core::Result<Tensor> { t.reshape((b, h, w, c))?.permute((0, 3, 1, 2)) };
        let y = match &self.proj_out {
            Proj::Conv(p) => p.forward(&to_planes(&y)?.contiguous()?)?,
            Proj::Linear(p) => to_planes(&p.forward(&y)?)?,
        };
        Ok((y + x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_reference_values() {
        // Exact GELU: x·Φ(x).
        for (x, want) in [
            (0.0f32, 0.0f32),
            (1.0, 0.841_344_7),
            (-1.0, -0.158_655_3),
            (2.5, 2.484_475_8),
        ] {
            assert!(
                (gelu(x, false) - want).abs() < 1e-6,
                "gelu({x}) = {}",
                gelu(x, false)
            );
        }
        assert!((gelu(1.0, true) - 0.841_192).abs() < 1e-5);
    }

    /// The f32 erf stays within 5e-7 of the f64 reference (itself within 1.2e-7) over [−6, 6]
    /// and is odd.
    #[test]
    fn erf_matches_the_f64_reference() {
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            let want = 1.0 - crate::transport::stats::erfc(f64::from(x));
            let got = erf(x);
            assert!(
                (f64::from(got) - want).abs() < 5e-7,
                "erf({x}) = {got}, want {want}"
            );
            assert_eq!(erf(-x), -got);
        }
    }
}

#[cfg(test)]
mod attend_tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sliced_attention_equals_the_whole() -> Result<()> {
        let dev = Device::Cpu;
        // Deterministic pseudo-random values (candle's CPU randn cannot be seeded).
        let data = |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin() * 1.5).collect() };
        let q = Tensor::from_vec(data(3 * 50 * 8, 0.7), (3, 50, 8), &dev)?;
        let k = Tensor::from_vec(data(3 * 40 * 8, 1.3), (3, 40, 8), &dev)?;
        let v = Tensor::from_vec(data(3 * 40 * 6, 2.1), (3, 40, 6), &dev)?;
        let whole = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?.matmul(&v)?;
        // Budgets that force slicing over rows, and over queries within a row.
        for budget in [2 * 50 * 40, 50 * 40, 333, 40] {
            let sliced = attend_within(&q, &k, &v, budget)?;
            let d = (sliced - &whole)?.abs()?.max_all()?.to_scalar::<f32>()?;
            // Slices change the matmul blocking, hence rounding: equal within f32 noise.
            assert!(d < 1e-5, "budget {budget}: {d}");
        }
        let via = attend(&q, &k, &v)?;
        assert_eq!((via - whole)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }
}
