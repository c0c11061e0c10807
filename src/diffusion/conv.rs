//! 2-D convolution for the UNet and the VAE, with a CPU path that is one matrix product per
//! call.
//!
//! candle's CPU `conv2d` (0.11) splits the output into tiles of 512 pixels, gathers each
//! tile's patches element by element into a buffer strided by the tile width, and runs one
//! small `gemm` per tile inside a nested `rayon` loop. On the small feature maps of a latent
//! UNet (16×16 to 64×64 pixels, batch 2 with guidance) that gather and the nested
//! scheduling cost as much as the arithmetic: a profile of `act-studio imagine` on
//! `models/act-shapes-t2i` spent ~27 % of its samples in the gather and ~30 % in `gemm`.
//!
//! Here, for f32 tensors on the CPU with `groups = 1`:
//!
//! 1. **im2col** in the weight's own order: `col[(ci·kh + y)·kw + x, b·P + p]` is the input
//!    pixel that output pixel `p` of image `b` sees through kernel tap `(y, x)` of channel
//!    `ci` (zero in the padding), `P = out_h·out_w`. With stride 1 each output row is one
//!    `copy_from_slice` of an input row; PyTorch's weight `[c_out, c_in, kh, kw]` is then
//!    already the `[c_out, c_in·kh·kw]` matrix, no reordering.
//! 2. one product `W · col`: `[c_out, K] · [K, B·P] → [c_out, B·P]` (candle's `matmul`);
//! 3. `[c_out, B, P] → [B, c_out, out_h, out_w]` and the bias.
//!
//! Anything else (f16/bf16, CUDA/Metal, grouped convolutions) goes to candle's `conv2d`.

use std::sync::OnceLock;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use rayon::prelude::*;

use super::unet::norm::with_cpu_f32;

/// A convolution layer: weight `[c_out, c_in, k, k]`, optional bias `[c_out]`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    /// The bias in f32 for the CPU path (added while reordering the product).
    bias: Option<Vec<f32>>,
    /// For a 3×3 convolution after a 2× nearest upsampling: the four 2×2 kernels, one per
    /// output parity, `[c_out, c_in·4]` each (see [`Conv2d::forward_upsampled`]); built on
    /// first use.
    sub_pixel: OnceLock<Option<[Tensor; 4]>>,
}

/// Loads `weight` and `bias` under `vb` (diffusers' `Conv2d` names).
pub fn conv2d(in_c: usize, out_c: usize, k: usize, cfg: Conv2dConfig, vb: VarBuilder) -> Result<Conv2d> {
    Conv2d::new(candle_nn::conv2d(in_c, out_c, k, cfg, vb)?)
}

impl Conv2d {
    fn new(inner: candle_nn::Conv2d) -> Result<Self> {
        let bias = match inner.bias() {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        Ok(Self {
            inner,
            bias,
            sub_pixel: OnceLock::new(),
        })
    }

    /// The layer's configuration (padding, stride, …).
    pub fn config(&self) -> &Conv2dConfig {
        self.inner.config()
    }

    /// Whether `x` can take the CPU path (module docs).
    fn fast(&self, x: &Tensor) -> bool {
        let cfg = self.inner.config();
        matches!(x.device(), Device::Cpu)
            && x.dtype() == DType::F32
            && self.inner.weight().dtype() == DType::F32
            && cfg.groups == 1
            && cfg.dilation == 1
            && cfg.stride >= 1
    }

    /// `conv(upsample_nearest(x, 2h, 2w))` for `x: [B, c_in, h, w]` → `[B, c_out, 2h, 2w]`, the
    /// upsampler of every UNet and VAE up block.
    ///
    /// A 3×3, padding-1 convolution of a 2× nearest-upsampled map sees, at output pixel
    /// `(2a + py, 2b + px)`, only input rows `a − 1 + py, a + py` and columns `b − 1 + px,
    /// b + px` of `x`: for even rows, tap row 0 alone reads row `a − 1` and tap rows 1 and 2
    /// both read row `a`; for odd rows, tap rows 0 and 1 read `a` and tap row 2 reads `a + 1`
    /// (the same along columns, and out-of-range rows are the zero padding in both views).
    /// So each of the four output parities is a 2×2 convolution of `x` with summed taps:
    /// 16 multiply-adds per output pixel and input channel instead of 36, the same result up
    /// to rounding. Other convolutions, devices and dtypes upsample first.
    pub fn forward_upsampled(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let cfg = self.inner.config();
        let kernels = if self.fast(x) && cfg.padding == 1 && cfg.stride == 1 {
            self.sub_pixel
                .get_or_init(|| sub_pixel_kernels(self.inner.weight()).ok())
                .as_ref()
        } else {
            None
        };
        let Some(kernels) = kernels else {
            return self.forward(&x.upsample_nearest2d(2 * h, 2 * w)?);
        };
        let (batch, c_in, _, _) = x.dims4()?;
        let c_out = self.inner.weight().dim(0)?;
        let x = x.contiguous()?;
        let pixels = h * w;
        let mut out = vec![0.0f32; batch * c_out * 4 * pixels];
        for (parity, kernel) in kernels.iter().enumerate() {
            let (py, px) = (parity / 2, parity % 2);
            let g = Geometry {
                batch,
                c_in,
                in_h: h,
                in_w: w,
                k_h: 2,
                k_w: 2,
                pad_y: 1 - py,
                pad_x: 1 - px,
                stride: 1,
                out_h: h,
                out_w: w,
            };
            let y = product(&x, kernel, &g)?; // [c_out, B·P]
            let bias = self.bias.as_deref();
            let at = Parity {
                py,
                px,
                batch,
                c_out,
                h,
                w,
            };
            if with_cpu_f32(&y, |y| scatter_parity(&mut out, y, bias, at)).is_none() {
                scatter_parity(&mut out, &y.flatten_all()?.to_vec1::<f32>()?, bias, at);
            }
        }
        Tensor::from_vec(out, (batch, c_out, 2 * h, 2 * w), x.device())
    }
}

/// Where one parity's product lands in the upsampled output.
#[derive(Debug, Clone, Copy)]
struct Parity {
    py: usize,
    px: usize,
    batch: usize,
    c_out: usize,
    h: usize,
    w: usize,
}

/// Writes `y` (`[c_out, B, h·w]`, plus the bias) to the pixels `(2a + py, 2b + px)` of `out`
/// (`[B, c_out, 2h, 2w]`).
fn scatter_parity(out: &mut [f32], y: &[f32], bias: Option<&[f32]>, at: Parity) {
    let Parity {
        py,
        px,
        batch,
        c_out,
        h,
        w,
    } = at;
    let pixels = h * w;
    out.par_chunks_exact_mut(c_out * 4 * pixels)
        .enumerate()
        .for_each(|(b, image)| {
            for (c, plane) in image.chunks_exact_mut(4 * pixels).enumerate() {
                let shift = bias.and_then(|v| v.get(c)).copied().unwrap_or(0.0);
                let src = &y[(c * batch + b) * pixels..][..pixels];
                for (a, row) in src.chunks_exact(w).enumerate() {
                    let dst = &mut plane[(2 * a + py) * 2 * w..][..2 * w];
                    for (j, &v) in row.iter().enumerate() {
                        dst[2 * j + px] = v + shift;
                    }
                }
            }
        });
}

/// The four 2×2 kernels of [`Conv2d::forward_upsampled`] from a `[c_out, c_in, 3, 3]` weight,
/// each `[c_out, c_in·4]` in im2col order (`(ci·2 + y)·2 + x`), parity `py·2 + px`.
fn sub_pixel_kernels(w: &Tensor) -> Result<[Tensor; 4]> {
    let (c_out, c_in, k_h, k_w) = w.dims4()?;
    if (k_h, k_w) != (3, 3) {
        candle_core::bail!("sub-pixel upsampling needs a 3×3 kernel, not {k_h}×{k_w}");
    }
    let w = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    // Which 3×3 taps fold into 2×2 tap `t` along one axis, for parity `p`.
    let taps = |p: usize, t: usize| -> &'static [usize] {
        match (p, t) {
            (0, 0) => &[0],
            (0, _) => &[1, 2],
            (_, 0) => &[0, 1],
            _ => &[2],
        }
    };
    let make = |parity: usize| -> Result<Tensor> {
        let (py, px) = (parity / 2, parity % 2);
        let mut k = vec![0.0f32; c_out * c_in * 4];
        for (o, dst) in k.chunks_exact_mut(c_in * 4).enumerate() {
            for ci in 0..c_in {
                let src = &w[(o * c_in + ci) * 9..][..9];
                for ty in 0..2 {
                    for tx in 0..2 {
                        let mut sum = 0.0f32;
                        for &ky in taps(py, ty) {
                            for &kx in taps(px, tx) {
                                sum += src[ky * 3 + kx];
                            }
                        }
                        dst[(ci * 2 + ty) * 2 + tx] = sum;
                    }
                }
            }
        }
        Tensor::from_vec(k, (c_out, c_in * 4), &Device::Cpu)
    };
    Ok([make(0)?, make(1)?, make(2)?, make(3)?])
}

impl Module for Conv2d {
    /// `x`: `[B, c_in, H, W]` → `[B, c_out, out_h, out_w]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.fast(x) {
            return self.inner.forward(x);
        }
        let cfg = self.inner.config();
        conv2d_im2col(
            x,
            self.inner.weight(),
            self.bias.as_deref(),
            cfg.padding,
            cfg.stride,
        )
    }
}

/// Geometry of one convolution call.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    c_in: usize,
    in_h: usize,
    in_w: usize,
    k_h: usize,
    k_w: usize,
    /// Zero rows above (and, through `out_h`, below) the input.
    pad_y: usize,
    /// Zero columns left of (and, through `out_w`, right of) the input.
    pad_x: usize,
    stride: usize,
    out_h: usize,
    out_w: usize,
}

impl Geometry {
    fn pixels(&self) -> usize {
        self.out_h * self.out_w
    }
}

/// The convolution as one matrix product (module docs). `x`: `[B, c_in, H, W]` f32 on the
/// CPU, `w`: `[c_out, c_in, kh, kw]` f32, `bias`: `[c_out]`.
fn conv2d_im2col(x: &Tensor, w: &Tensor, bias: Option<&[f32]>, pad: usize, stride: usize) -> Result<Tensor> {
    let (batch, c_in, in_h, in_w) = x.dims4()?;
    let (c_out, w_c_in, k_h, k_w) = w.dims4()?;
    if w_c_in != c_in {
        candle_core::bail!("conv2d: input has {c_in} channels, the weight expects {w_c_in}");
    }
    let (span_h, span_w) = (in_h + 2 * pad, in_w + 2 * pad);
    if span_h < k_h || span_w < k_w {
        candle_core::bail!("conv2d: a {in_h}×{in_w} input is smaller than the {k_h}×{k_w} kernel");
    }
    if bias.is_some_and(|b| b.len() != c_out) {
        candle_core::bail!("conv2d: the bias does not have {c_out} values");
    }
    let g = Geometry {
        batch,
        c_in,
        in_h,
        in_w,
        k_h,
        k_w,
        pad_y: pad,
        pad_x: pad,
        stride,
        out_h: (span_h - k_h) / stride + 1,
        out_w: (span_w - k_w) / stride + 1,
    };
    let y = product(x, &w.reshape((c_out, c_in * k_h * k_w))?, &g)?; // [c_out, B·P]
    let out = with_cpu_f32(&y, |y| reorder(y, bias, c_out, batch, g.pixels()));
    let out = match out {
        Some(out) => out,
        None => reorder(
            &y.flatten_all()?.to_vec1::<f32>()?,
            bias,
            c_out,
            batch,
            g.pixels(),
        ),
    };
    Tensor::from_vec(out, (batch, c_out, g.out_h, g.out_w), x.device())
}

/// `w · im2col(x)`: `[c_out, K] · [K, B·P] → [c_out, B·P]` (`K = c_in·kh·kw`).
fn product(x: &Tensor, w: &Tensor, g: &Geometry) -> Result<Tensor> {
    let x = x.contiguous()?;
    let cols = match with_cpu_f32(&x, |input| im2col(input, g)) {
        Some(cols) => cols,
        None => im2col(&x.flatten_all()?.to_vec1::<f32>()?, g),
    };
    let col = Tensor::from_vec(cols, (g.c_in * g.k_h * g.k_w, g.batch * g.pixels()), x.device())?;
    w.matmul(&col)
}

/// `[c_out, B, P]` → `[B, c_out, P]`, adding `bias[c]` to channel `c`.
fn reorder(y: &[f32], bias: Option<&[f32]>, c_out: usize, batch: usize, pixels: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; y.len()];
    out.par_chunks_exact_mut(c_out * pixels)
        .enumerate()
        .for_each(|(b, image)| {
            for (c, dst) in image.chunks_exact_mut(pixels).enumerate() {
                let shift = bias.and_then(|b| b.get(c)).copied().unwrap_or(0.0);
                let src = &y[(c * batch + b) * pixels..][..pixels];
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = v + shift;
                }
            }
        });
    out
}

/// `col[(ci·kh + y)·kw + x, b·P + p]` (module docs), `[c_in·kh·kw, B·P]` row-major.
fn im2col(input: &[f32], g: &Geometry) -> Vec<f32> {
    let n = g.batch * g.pixels();
    let mut col = vec![0.0f32; g.c_in * g.k_h * g.k_w * n];
    let plane = g.in_h * g.in_w;
    col.par_chunks_exact_mut(n).enumerate().for_each(|(r, row)| {
        let (ci, tap) = (r / (g.k_h * g.k_w), r % (g.k_h * g.k_w));
        let (ky, kx) = (tap / g.k_w, tap % g.k_w);
        for (b, dst) in row.chunks_exact_mut(g.pixels()).enumerate() {
            let src = &input[(b * g.c_in + ci) * plane..][..plane];
            fill_tap(src, dst, g, ky, kx);
        }
    });
    col
}

/// Writes, for every output pixel, the input pixel seen through tap `(ky, kx)` of one input
/// plane `src` (`[H, W]`) into `dst` (`[out_h, out_w]`, zero-initialised).
fn fill_tap(src: &[f32], dst: &mut [f32], g: &Geometry, ky: usize, kx: usize) {
    // Output columns whose input column `ox·s + kx − pad_x` lies inside `[0, W)`.
    let first_x = g.pad_x.saturating_sub(kx).div_ceil(g.stride);
    let last_x = (g.in_w + g.pad_x)
        .saturating_sub(kx)
        .div_ceil(g.stride)
        .min(g.out_w);
    if first_x >= last_x {
        return;
    }
    for (oy, dst_row) in dst.chunks_exact_mut(g.out_w).enumerate() {
        let iy = oy * g.stride + ky;
        if iy < g.pad_y || iy - g.pad_y >= g.in_h {
            continue;
        }
        let src_row = &src[(iy - g.pad_y) * g.in_w..][..g.in_w];
        let ix0 = first_x * g.stride + kx - g.pad_x;
        if g.stride == 1 {
            let len = last_x - first_x;
            dst_row[first_x..last_x].copy_from_slice(&src_row[ix0..ix0 + len]);
        } else {
            for (d, s) in dst_row[first_x..last_x]
                .iter_mut()
                .zip(src_row[ix0..].iter().step_by(g.stride))
            {
                *d = *s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Our path against candle's own `conv2d` on random data, for the geometries the UNet
    /// and VAE use (3×3 pad 1 stride 1, 3×3 pad 1 stride 2, 3×3 pad 0 stride 2, 1×1) and odd
    /// sizes.
    #[test]
    fn matches_candle_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        let cases = [
            // (batch, c_in, c_out, h, w, k, pad, stride)
            (2, 5, 7, 9, 11, 3, 1, 1),
            (1, 4, 3, 8, 8, 3, 1, 2),
            (2, 3, 6, 9, 7, 3, 0, 2),
            (3, 6, 2, 5, 4, 1, 0, 1),
            (1, 2, 3, 4, 6, 3, 2, 1),
            (2, 4, 4, 7, 5, 3, 1, 3),
            (1, 1, 1, 3, 3, 3, 0, 1),
        ];
        for (i, &(b, ci, co, h, w, k, pad, stride)) in cases.iter().enumerate() {
            let x = Tensor::randn(0f32, 1.0, (b, ci, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 1.0, (co, ci, k, k), &dev)?;
            let bias = Tensor::randn(0f32, 1.0, co, &dev)?;
            let cfg = Conv2dConfig {
                padding: pad,
                stride,
                ..Default::default()
            };
            let ours =
                Conv2d::new(candle_nn::Conv2d::new(wt.clone(), Some(bias.clone()), cfg))?.forward(&x)?;
            let theirs = candle_nn::Conv2d::new(wt, Some(bias), cfg).forward(&x)?;
            assert_eq!(ours.dims(), theirs.dims(), "case {i}");
            let diff = max_abs_diff(&ours, &theirs)?;
            assert!(diff < 1e-4, "case {i}: max |Δ| = {diff}");
        }
        Ok(())
    }

    /// The sub-pixel path equals upsampling then convolving, with and without bias, on odd
    /// sizes and batches.
    #[test]
    fn upsampled_matches_upsample_then_conv() -> Result<()> {
        let dev = Device::Cpu;
        for (i, &(b, ci, co, h, w, with_bias)) in [
            (2, 3, 5, 4, 6, true),
            (1, 6, 2, 5, 3, false),
            (3, 1, 1, 1, 1, true),
            (1, 4, 4, 2, 7, true),
        ]
        .iter()
        .enumerate()
        {
            let x = Tensor::randn(0f32, 1.0, (b, ci, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 1.0, (co, ci, 3, 3), &dev)?;
            let bias = with_bias
                .then(|| Tensor::randn(0f32, 1.0, co, &dev))
                .transpose()?;
            let cfg = Conv2dConfig {
                padding: 1,
                ..Default::default()
            };
            let conv = Conv2d::new(candle_nn::Conv2d::new(wt.clone(), bias.clone(), cfg))?;
            let ours = conv.forward_upsampled(&x)?;
            let theirs =
                candle_nn::Conv2d::new(wt, bias, cfg).forward(&x.upsample_nearest2d(2 * h, 2 * w)?)?;
            assert_eq!(ours.dims(), theirs.dims(), "case {i}");
            let diff = max_abs_diff(&ours, &theirs)?;
            assert!(diff < 1e-4, "case {i}: max |Δ| = {diff}");
        }
        Ok(())
    }

    /// A strided (non-contiguous) input gives the same result as its contiguous copy.
    #[test]
    fn takes_non_contiguous_input() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 6, 5, 3), &dev)?.transpose(2, 3)?;
        let wt = Tensor::randn(0f32, 1.0, (4, 6, 3, 3), &dev)?;
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = Conv2d::new(candle_nn::Conv2d::new(wt, None, cfg))?;
        let a = conv.forward(&x)?;
        let b = conv.forward(&x.contiguous()?)?;
        assert_eq!(max_abs_diff(&a, &b)?, 0.0);
        Ok(())
    }

    /// A kernel larger than the padded input is an error, not a panic.
    #[test]
    fn rejects_too_small_input() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 1, 1, 1), DType::F32, &dev)?;
        let wt = Tensor::zeros((1, 1, 3, 3), DType::F32, &dev)?;
        let conv = Conv2d::new(candle_nn::Conv2d::new(wt, None, Conv2dConfig::default()))?;
        assert!(conv.forward(&x).is_err());
        Ok(())
    }
}
