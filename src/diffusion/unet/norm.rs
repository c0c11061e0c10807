//! Normalisation layers with a hook on their output: GroupNorm (optionally followed by SiLU,
//! as in every ResNet and the output head) and LayerNorm.
//!
//! On CPU in f32 the GroupNorm is one fused kernel: per (batch row, group) statistics in f64,
//! the affine normalisation written straight into a fresh buffer, the hook run on that buffer
//! in place (no extra copy), then SiLU in place. That is both faster than composing tensor
//! ops and what makes hooks at every norm cheap. Other devices and dtypes use candle's ops.

use candle_core::{DType, Device, Module, Storage, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::diffusion::error::Result;
use crate::diffusion::hooks::{ActShape, DiffHooks, HookRegistry, HookSiteKind, call_hook, run_hook};

/// `x / (1 + e^{−x})` in place.
pub(crate) fn silu_in_place(v: &mut [f32]) {
    v.par_chunks_mut(16 * 1024).for_each(|c| {
        for x in c {
            *x /= 1.0 + (-*x).exp();
        }
    });
}

/// A contiguous f32 CPU tensor's values, borrowed without copying, passed to `f`.
pub(crate) fn with_cpu_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if x.dtype() != DType::F32 || !matches!(x.device(), Device::Cpu) {
        return None;
    }
    let (storage, layout) = x.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*storage {
        Storage::Cpu(cpu) => cpu.as_slice::<f32>().ok().map(|s| f(&s[start..end])),
        _ => None,
    }
}

/// GroupNorm over `[b, c, h, w]` with a hook point on its output.
#[derive(Debug)]
pub struct HookedGroupNorm {
    inner: candle_nn::GroupNorm,
    weight: Vec<f32>,
    bias: Vec<f32>,
    groups: usize,
    eps: f64,
    hook: usize,
}

impl HookedGroupNorm {
    /// Loads `weight`/`bias` of `channels` from `vb` and registers hook point `name`.
    pub fn new(
        groups: usize,
        channels: usize,
        eps: f64,
        vb: VarBuilder,
        reg: &mut HookRegistry,
        name: String,
    ) -> Result<Self> {
        let inner = candle_nn::group_norm(groups, channels, eps, vb.clone())?;
        let weight = vb
            .get(channels, "weight")?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let bias = vb.get(channels, "bias")?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let hook = reg.add(name, channels, HookSiteKind::GroupNorm);
        Ok(Self {
            inner,
            weight,
            bias,
            groups,
            eps,
            hook,
        })
    }

    /// The hook id.
    pub fn hook(&self) -> usize {
        self.hook
    }

    /// `silu?(hook(GroupNorm(x)))` for `x: [b, c, h, w]`; output has the same shape and dtype.
    pub fn forward(&self, x: &Tensor, hooks: &mut dyn DiffHooks, silu: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        if let [b, c, h, w] = dims[..]
            && c == self.weight.len()
            && c % self.groups == 0
            && let Some(mut out) = with_cpu_f32(x, |src| self.fused(src, [b, c, h, w]))
        {
            call_hook(hooks, self.hook, &mut out, ActShape::Spatial([b, c, h, w]))?;
            if silu {
                silu_in_place(&mut out);
            }
            return Ok(Tensor::from_vec(out, dims, x.device())?);
        }
        let y = self.inner.forward(x)?;
        let y = run_hook(hooks, self.hook, y)?;
        Ok(if silu { candle_nn::ops::silu(&y)? } else { y })
    }

    fn fused(&self, src: &[f32], [b, c, h, w]: [usize; 4]) -> Vec<f32> {
        let cg = c / self.groups;
        let hw = h * w;
        let n = cg * hw;
        let mut out = vec![0.0f32; b * c * hw];
        if n == 0 {
            return out;
        }
        out.par_chunks_mut(n)
            .zip(src.par_chunks(n))
            .enumerate()
            .for_each(|(k, (o, x))| {
                let g = k % self.groups;
                let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
                let var = x
                    .iter()
                    .map(|&v| {
                        let d = f64::from(v) - mean;
                        d * d
                    })
                    .sum::<f64>()
                    / n as f64;
                let inv = 1.0 / (var + self.eps).sqrt();
                for (j, (oc, xc)) in o.chunks_exact_mut(hw).zip(x.chunks_exact(hw)).enumerate() {
                    let ch = g * cg + j;
                    let scale = (f64::from(self.weight[ch]) * inv) as f32;
                    let shift = (f64::from(self.bias[ch]) - mean * f64::from(self.weight[ch]) * inv) as f32;
                    for (o, &v) in oc.iter_mut().zip(xc) {
                        *o = v * scale + shift;
                    }
                }
            });
        out
    }
}

/// LayerNorm over the last dimension of `[b, tokens, dim]` with a hook point on its output.
#[derive(Debug)]
pub struct HookedLayerNorm {
    inner: candle_nn::LayerNorm,
    hook: usize,
}

impl HookedLayerNorm {
    /// Loads `weight`/`bias` of `dim` from `vb` and registers hook point `name`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder, reg: &mut HookRegistry, name: String) -> Result<Self> {
        let inner = candle_nn::layer_norm(dim, eps, vb)?;
        let hook = reg.add(name, dim, HookSiteKind::LayerNorm);
        Ok(Self { inner, hook })
    }

    /// `hook(LayerNorm(x))` for `x: [b, tokens, dim]`.
    pub fn forward(&self, x: &Tensor, hooks: &mut dyn DiffHooks) -> Result<Tensor> {
        let y = self.inner.forward(x)?;
        run_hook(hooks, self.hook, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::hooks::NoDiffHooks;
    use candle_nn::VarMap;

    #[test]
    fn fused_group_norm_equals_candle() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let mut reg = HookRegistry::default();
        // Creates the variables, then gives them non-trivial values.
        HookedGroupNorm::new(4, 8, 1e-5, vb.pp("gn"), &mut reg, "gn".into())?;
        for (name, var) in vm
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("lock".into()))?
            .iter()
        {
            let offset = if name.ends_with("weight") { 1.0 } else { 0.0 };
            var.set(&(Tensor::randn(0f32, 1.0, var.shape(), &dev)? + offset)?)?;
        }
        let gn = HookedGroupNorm::new(4, 8, 1e-5, vb.pp("gn"), &mut reg, "gn2".into())?;
        let x = ((Tensor::randn(0f32, 1.0, (2, 8, 5, 3), &dev)? * 3.0)? + 1.5)?;
        for silu in [false, true] {
            let fast = gn.forward(&x, &mut NoDiffHooks, silu)?;
            let slow = gn.inner.forward(&x)?;
            let slow = if silu { candle_nn::ops::silu(&slow)? } else { slow };
            let d = (fast - slow)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "max |Δ| = {d}");
        }
        Ok(())
    }
}
