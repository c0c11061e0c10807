//! Seeded Gaussian noise for the initial latents and the ancestral sampler, drawn the way
//! PyTorch's CPU generator draws it, so a seed gives the same starting latents (and the same
//! ancestral noise) as `torch.randn(shape, generator=torch.Generator().manual_seed(seed))` in
//! diffusers' pipelines.
//!
//! candle's `Tensor::randn` on the CPU cannot be seeded, so we draw the values ourselves. The
//! algorithm follows PyTorch's CPU `normal_` kernel (ATen `DistributionTemplates.h`):
//!
//! - the engine is the 32-bit Mersenne Twister (MT19937), seeded with the low 32 bits of the
//!   seed (`torch.manual_seed` does the same);
//! - a tensor of **n ≥ 16** values is drawn in one go: n uniforms `u = (r & 0xFFFFFF)·2⁻²⁴`
//!   from n engine outputs, then Box–Muller on blocks of 16 (values `j` and `j + 8` of a block
//!   form a pair: `r = √(−2 ln(1 − u_j))`, `θ = 2π·u_{j+8}`, giving `r cos θ` and `r sin θ`);
//!   when 16 does not divide n, 16 fresh uniforms overwrite the last 16 values and that block
//!   is transformed again;
//! - a tensor of **n < 16** values is drawn one value at a time in f64 from two 53-bit
//!   uniforms per pair (`r = √(−2 log1p(−u₂))`, `θ = 2π·u₁`); the pair's second value is kept
//!   by the generator for the next such draw, across calls.
//!
//! PyTorch computes the n ≥ 16 path with SLEEF's vector `log`/`sin`/`cos` (1 ulp); we use the
//! platform's f32 functions, so values can differ from PyTorch's by an ulp or two (measured
//! max |Δ| 2.4e-7, see `tests/diffusers_reference.rs`), never in the stream position.

use candle_core::{Device, Tensor};

use crate::diffusion::error::{DiffusionError, Result};

const MT_N: usize = 624;
const MT_M: usize = 397;

/// A reproducible source of standard normal tensors, compatible with PyTorch's CPU generator.
///
/// The same seed always gives the same sequence of tensors; a clone continues the same
/// sequence independently (useful to replay the noise a step will draw). As in PyTorch, what a
/// call returns depends on the number of values asked for, not only on the stream position:
/// one call for 32 values is not two calls for 16.
#[derive(Clone, PartialEq, Eq)]
pub struct NoiseSource {
    mt: Box<[u32; MT_N]>,
    index: usize,
    /// The second value of the last f64 Box–Muller pair of the n < 16 path (as f64 bits).
    spare: Option<u64>,
}

impl std::fmt::Debug for NoiseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseSource")
            .field("index", &self.index)
            .field("spare", &self.spare.map(f64::from_bits))
            .finish_non_exhaustive()
    }
}

impl NoiseSource {
    /// A source seeded with `seed` (as `torch.Generator().manual_seed(seed)`: its low 32 bits).
    pub fn new(seed: u64) -> Self {
        let mut mt = Box::new([0u32; MT_N]);
        mt[0] = seed as u32;
        for i in 1..MT_N {
            let prev = mt[i - 1];
            mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self {
            mt,
            index: MT_N,
            spare: None,
        }
    }

    /// Refills the state with the next 624 words (the MT19937 twist).
    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        let mt = &mut self.mt;
        for i in 0..MT_N {
            let y = (mt[i] & UPPER) | (mt[(i + 1) % MT_N] & LOWER);
            let mut v = mt[(i + MT_M) % MT_N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= MATRIX_A;
            }
            mt[i] = v;
        }
        self.index = 0;
    }

    /// The next 32-bit engine output (MT19937 with tempering).
    fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Two engine outputs as one 64-bit value, the first in the high half (PyTorch's
    /// `random64`).
    fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (hi << 32) | lo
    }

    /// Uniform in `[0, 1)` with 24 random bits (PyTorch's float uniform).
    fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & 0x00ff_ffff) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in `[0, 1)` with 53 random bits (PyTorch's double uniform).
    fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// One standard normal value of the n < 16 path (f64 Box–Muller with a kept spare).
    fn next_normal_f64(&mut self) -> f64 {
        if let Some(bits) = self.spare.take() {
            return f64::from_bits(bits);
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = std::f64::consts::TAU * u1;
        self.spare = Some((r * theta.sin()).to_bits());
        r * theta.cos()
    }

    /// Box–Muller on one block of 16 uniforms, in place (PyTorch's `normal_fill_16`).
    fn box_muller_16(block: &mut [f32]) {
        let two_pi = std::f32::consts::TAU;
        for j in 0..8 {
            let u1 = 1.0 - block[j];
            let u2 = block[j + 8];
            let radius = (-2.0 * u1.ln()).sqrt();
            let (s, c) = (two_pi * u2).sin_cos();
            block[j] = radius * c;
            block[j + 8] = radius * s;
        }
    }

    /// Fills `out` with standard normal values, as one `torch.randn(out.len())` call.
    pub fn fill(&mut self, out: &mut [f32]) {
        let n = out.len();
        if n < 16 {
            for v in out {
                *v = self.next_normal_f64() as f32;
            }
            return;
        }
        for v in out.iter_mut() {
            *v = self.uniform_f32();
        }
        for block in out.chunks_exact_mut(16) {
            Self::box_muller_16(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut out[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            Self::box_muller_16(tail);
        }
    }

    /// An f32 tensor of `shape` with standard normal entries, on `device` (drawn on the CPU in
    /// row-major order as one `torch.randn(shape)` call, then copied).
    pub fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= (1usize << 34))
            .ok_or_else(|| DiffusionError::BadInput(format!("noise shape {shape:?} is too large")))?;
        let mut v = vec![0f32; n];
        self.fill(&mut v);
        Ok(Tensor::from_vec(v, shape, device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference MT19937 (init_genrand(5489)) gives 3499211612 first and 4123659995 as
    /// its 10000th output (C++ `std::mt19937`'s required check value).
    #[test]
    fn engine_is_mt19937() {
        let mut g = NoiseSource::new(5489);
        assert_eq!(g.next_u32(), 3_499_211_612);
        for _ in 1..9_999 {
            g.next_u32();
        }
        assert_eq!(g.next_u32(), 4_123_659_995);
    }

    #[test]
    fn seeded_and_independent_clones() {
        let mut a = NoiseSource::new(7);
        let mut b = a.clone();
        let mut c = NoiseSource::new(8);
        let shape = [1, 4, 3, 5];
        let ta = a.randn(&shape, &Device::Cpu).unwrap();
        let tb = b.randn(&shape, &Device::Cpu).unwrap();
        let tc = c.randn(&shape, &Device::Cpu).unwrap();
        let diff = |x: &Tensor, y: &Tensor| {
            (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(diff(&ta, &tb), 0.0);
        assert!(diff(&ta, &tc) > 0.1);
        // The stream moves on: a second draw differs from the first.
        assert!(diff(&a.randn(&shape, &Device::Cpu).unwrap(), &ta) > 0.1);
        assert!(NoiseSource::new(1).randn(&[usize::MAX, 2], &Device::Cpu).is_err());
    }

    /// The values look standard normal, on both paths.
    #[test]
    fn moments_are_standard_normal() {
        let mut g = NoiseSource::new(3);
        let mut v = vec![0f32; 100_003];
        g.fill(&mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.02, "{mean} {var}");
        assert!(v.iter().all(|x| x.is_finite()));
        let small: Vec<f32> = (0..5000)
            .flat_map(|_| {
                let mut s = [0f32; 3];
                g.fill(&mut s);
                s
            })
            .collect();
        let m = small.iter().map(|&x| x as f64).sum::<f64>() / small.len() as f64;
        assert!(m.abs() < 0.05, "{m}");
    }
}
