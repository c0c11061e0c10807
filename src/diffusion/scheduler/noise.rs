//! Seeded Gaussian noise for the initial latents and the ancestral sampler.
//!
//! candle's `Tensor::randn` on the CPU cannot be seeded, so we draw the values ourselves:
//! xoshiro256** (seeded through SplitMix64) and the Box–Muller transform, both spelled out
//! here so a seed gives the same image on every platform and every version of `rand`.

use candle_core::{Device, Tensor};

use crate::diffusion::error::{DiffusionError, Result};

/// A reproducible stream of standard normal values.
///
/// The same seed always gives the same sequence; a clone continues the same sequence
/// independently (useful to replay the noise a step will draw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoiseSource {
    s: [u64; 4],
    /// The second value of the last Box–Muller pair, not yet handed out (as f64 bits).
    spare: Option<u64>,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl NoiseSource {
    /// A source seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        let mut st = seed;
        let s = [
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
        ];
        Self { s, spare: None }
    }

    /// xoshiro256**.
    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// The next standard normal value.
    pub fn next_normal(&mut self) -> f64 {
        if let Some(bits) = self.spare.take() {
            return f64::from_bits(bits);
        }
        // u1 in (0, 1] so the log is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some((r * s).to_bits());
        r * c
    }

    /// Fills `out` with standard normal values.
    pub fn fill(&mut self, out: &mut [f32]) {
        for v in out {
            *v = self.next_normal() as f32;
        }
    }

    /// An f32 tensor of `shape` with standard normal entries, on `device` (drawn on the CPU in
    /// row-major order, then copied).
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
