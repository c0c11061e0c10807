//! Small numeric kernels of the forward pass on row-major f32 buffers.

/// RMSNorm of each row of `x` (`[rows, d]`) into `out`: `x / sqrt(mean(x²) + eps) · w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    let d = w.len();
    out.clear();
    out.reserve(x.len());
    for row in x.chunks_exact(d) {
        // Same operation order as candle's rms_norm kernel, so results are bit-identical.
        let ss: f32 = row.iter().map(|v| v * v).sum();
        let m = (ss / d as f32 + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, g)| v / m * g));
    }
}

/// LayerNorm of each row: `(x − mean) / sqrt(var + eps) · w + b`.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut Vec<f32>) {
    let d = w.len();
    out.clear();
    out.reserve(x.len());
    for row in x.chunks_exact(d) {
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        out.extend(
            row.iter()
                .zip(w)
                .zip(b)
                .map(|((v, g), b)| (v - mean) * inv * g + b),
        );
    }
}

/// Elements below which an elementwise op runs on the caller alone. A decode step over eight
/// rows (8 × 1,536 MLP values on SmolLM2) is above it: alone, its ≈ 30 µs of `expf` let the
/// pool's workers go to sleep between products.
const PAR_MIN_ELEMENTS: usize = 4 * 1024;

/// `run(gate, up)` on equal-length prefixes of the two buffers, split over the model's thread
/// pool into pieces of a multiple of 8 values when the buffers are large (a prompt's MLP
/// activations). `run` is elementwise, so each value does not depend on the split.
fn zip_par(gate: &mut [f32], up: &[f32], run: fn(&mut [f32], &[f32])) {
    let n = gate.len().min(up.len());
    let pool = super::pool::Pool::global();
    if n < PAR_MIN_ELEMENTS || pool.threads() <= 1 {
        run(&mut gate[..n], &up[..n]);
        return;
    }
    let piece = n.div_ceil(pool.threads() * 4).next_multiple_of(8);
    pool.for_each_piece(&mut gate[..n], piece, &|c, part| {
        run(part, &up[c * piece..c * piece + part.len()]);
    });
}

/// SiLU(gate) · up, elementwise, into `gate`, with libm's `expf` (candle's bits, for prompts).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    zip_par(gate, up, |gate, up| {
        for (g, &u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    });
}

/// SiLU(gate) · up as [`silu_mul`], with `exp` as [`exp_poly`], 8 values at a time where AVX2
/// is compiled in (the same bits in every build; within a few f32 ulps of [`silu_mul`]). The
/// decode steps' SwiGLU: with [`exp_shift_in_place`] in the attention, an eight-row SmolLM2
/// step went 9.51 → 8.72 ms (medians of three alternations).
pub fn silu_mul_poly(gate: &mut [f32], up: &[f32]) {
    zip_par(gate, up, silu_mul_poly_run);
}

/// `gate[i] = SiLU(gate[i]) · up[i]` with [`exp_poly`], on the caller (equal lengths).
fn silu_mul_poly_run(gate: &mut [f32], up: &[f32]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    // SAFETY: compiled only when AVX2 and FMA are enabled for the whole build.
    let done = unsafe { simd::silu_mul(gate, up) };
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    let done = 0;
    for (g, &u) in gate.iter_mut().zip(up).skip(done) {
        *g = *g / (1.0 + exp_poly(-*g)) * u;
    }
}

/// GELU, tanh approximation (PyTorch's `gelu(approximate="tanh")`).
fn gelu_tanh_one(u: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/π)
    0.5 * u * (1.0 + (C * (u + 0.044_715 * u * u * u)).tanh())
}

/// GELU (tanh approximation, as GPT-2), in place.
pub fn gelu_tanh(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = gelu_tanh_one(*v));
}

/// GeGLU: GELU_tanh(gate) · up, elementwise, into `gate` (Gemma's MLP), as
/// `u / (1 + exp(−2z))` (the same function as `0.5·u·(1 + tanh z)`), 8 values at a time where
/// AVX2 is compiled in: within a few f32 ulps of [`gelu_tanh_one`], at a fraction of the cost
/// of `tanhf` (which took a tenth of a Gemma prompt).
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    zip_par(gate, up, gelu_mul_run);
}

/// `gate[i] = GELU_tanh(gate[i]) · up[i]` on the caller (equal lengths).
fn gelu_mul_run(gate: &mut [f32], up: &[f32]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    // SAFETY: compiled only when AVX2 and FMA are enabled for the whole build.
    let done = unsafe { simd::gelu_mul(gate, up) };
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    let done = 0;
    for (g, &u) in gate.iter_mut().zip(up).skip(done) {
        *g = gelu_sigmoid_form(*g) * u;
    }
}

/// The scalar twin of the SIMD `exp8`, operation for operation (the same bits): `exp(x)` with
/// `x` clamped to [−87.3, 88.3], `2ⁿ · p(r)`, within 2 ulps of the exact value.
pub(crate) fn exp_poly(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = (-n).mul_add(0.693_359_4, x);
    let r = (-n).mul_add(-2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = p.mul_add(r, c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// GELU_tanh as `u / (1 + exp(−2·√(2/π)·(u + 0.044715·u³)))`: the scalar twin of the SIMD
/// form, for the tail of a slice and builds without AVX2.
fn gelu_sigmoid_form(u: f32) -> f32 {
    const C2: f32 = -2.0 * 0.797_884_6;
    let z = (u + 0.044_715 * u * u * u) * C2;
    u / (1.0 + z.clamp(-87.3, 88.3).exp())
}

/// Softmax weights `out[i] = exp(x[i]·scale − shift)` (replacing `out`), 8 at a time where
/// AVX2 is compiled in (within 2 f32 ulps of `expf`; exactly 1 where `x[i]·scale == shift`).
/// An argument below −87.3 (a masked `−∞` logit) or NaN gives 0, so such a token gets no
/// weight; arguments above 88.3 are clamped there. The sampler's weights of a whole
/// vocabulary (`expf` one token at a time had taken half of its time).
pub fn exp_weights(x: &[f32], scale: f32, shift: f32, out: &mut Vec<f32>) {
    out.clear();
    out.resize(x.len(), 0.0);
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    // SAFETY: compiled only when AVX2 and FMA are enabled for the whole build.
    let done = unsafe { simd::exp_weights(x, scale, shift, out) };
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    let done = 0;
    for (o, &v) in out.iter_mut().zip(x).skip(done) {
        let a = v * scale - shift;
        *o = if a >= -87.3 { a.min(88.3).exp() } else { 0.0 };
    }
}

/// `x[i] = exp(x[i] − shift)` in place, 8 at a time where AVX2 is compiled in; the same bits
/// in every build (the scalar tail is [`exp_poly`], the SIMD lanes' operations one by one).
/// An argument below −87.3 or NaN gives 0; above 88.3 is clamped there. Attention's softmax
/// over a decode step's keys (with [`silu_mul_poly`], an eight-row step 8 % faster).
pub fn exp_shift_in_place(x: &mut [f32], shift: f32) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    // SAFETY: compiled only when AVX2 and FMA are enabled for the whole build.
    let done = unsafe { simd::exp_shift_in_place(x, shift) };
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    let done = 0;
    for v in x.iter_mut().skip(done) {
        let a = *v - shift;
        *v = if a >= -87.3 { exp_poly(a) } else { 0.0 };
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod simd {
    use std::arch::x86_64::*;

    /// `exp(x)` of 8 lanes clamped to [−87.3, 88.3] (no overflow, no denormal results):
    /// `2ⁿ · p(r)` with `n = round(x·log₂e)`, `r = x − n·ln 2` (two-part ln 2) and the Cephes
    /// `expf` polynomial; within 2 ulps of the exact value over that range.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(88.3));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(e))
    }

    /// `exp8(a)` where `a ≥ −87.3`, else 0; the ordered compare is false for NaN, so NaN gives 0
    /// too (masked tokens and scores get no weight).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8_or_zero(a: __m256) -> __m256 {
        _mm256_and_ps(exp8(a), _mm256_cmp_ps::<_CMP_GE_OQ>(a, _mm256_set1_ps(-87.3)))
    }

    /// [`super::exp_weights`] on the first multiple of 8 values of `x` into `out` (at least as
    /// long); returns how many.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_weights(x: &[f32], scale: f32, shift: f32, out: &mut [f32]) -> usize {
        let n = x.len().min(out.len()) / 8 * 8;
        let (sc, sh) = (_mm256_set1_ps(scale), _mm256_set1_ps(shift));
        for (o, v) in out[..n].chunks_exact_mut(8).zip(x.chunks_exact(8)) {
            // SAFETY: both chunks hold 8 f32; unaligned load and store.
            unsafe {
                // Multiply, then subtract (no fused rounding): the scalar tail's arithmetic.
                let a = _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(v.as_ptr()), sc), sh);
                _mm256_storeu_ps(o.as_mut_ptr(), exp8_or_zero(a));
            }
        }
        n
    }

    /// [`super::exp_shift_in_place`] on the first multiple of 8 values; returns how many.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_shift_in_place(x: &mut [f32], shift: f32) -> usize {
        let n = x.len() / 8 * 8;
        let sh = _mm256_set1_ps(shift);
        for v in x[..n].chunks_exact_mut(8) {
            // SAFETY: the chunk holds 8 f32; unaligned load and store.
            unsafe {
                let a = _mm256_sub_ps(_mm256_loadu_ps(v.as_ptr()), sh);
                _mm256_storeu_ps(v.as_mut_ptr(), exp8_or_zero(a));
            }
        }
        n
    }

    /// SiLU(gate)·up on the first multiple of 8 values of `gate`/`up`; returns how many.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn silu_mul(gate: &mut [f32], up: &[f32]) -> usize {
        let n = gate.len().min(up.len()) / 8 * 8;
        let one = _mm256_set1_ps(1.0);
        let neg = _mm256_set1_ps(-0.0);
        for (g, u) in gate[..n].chunks_exact_mut(8).zip(up.chunks_exact(8)) {
            // SAFETY: both chunks hold 8 f32; unaligned loads and store.
            unsafe {
                let x = _mm256_loadu_ps(g.as_ptr());
                let s = _mm256_div_ps(x, _mm256_add_ps(one, exp8(_mm256_xor_ps(x, neg))));
                _mm256_storeu_ps(g.as_mut_ptr(), _mm256_mul_ps(s, _mm256_loadu_ps(u.as_ptr())));
            }
        }
        n
    }

    /// GeGLU on the first multiple of 8 values of `gate`/`up` (equal lengths); returns how many.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn gelu_mul(gate: &mut [f32], up: &[f32]) -> usize {
        let n = gate.len().min(up.len()) / 8 * 8;
        let c2 = _mm256_set1_ps(-2.0 * 0.797_884_6);
        let k = _mm256_set1_ps(0.044_715);
        let one = _mm256_set1_ps(1.0);
        for (g, u) in gate[..n].chunks_exact_mut(8).zip(up.chunks_exact(8)) {
            // SAFETY: both chunks hold 8 f32; unaligned loads and store.
            unsafe {
                let x = _mm256_loadu_ps(g.as_ptr());
                let z = _mm256_mul_ps(_mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(k, x), x), x, x), c2);
                let gelu = _mm256_div_ps(x, _mm256_add_ps(one, exp8(z)));
                _mm256_storeu_ps(g.as_mut_ptr(), _mm256_mul_ps(gelu, _mm256_loadu_ps(u.as_ptr())));
            }
        }
        n
    }
}

/// Soft-capping `c·tanh(x/c)`, in place (Gemma 2's logits).
pub fn soft_cap(x: &mut [f32], cap: f32) {
    x.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
}

/// In-place softmax of a slice.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `a += b` elementwise.
pub fn add_in_place(a: &mut [f32], b: &[f32]) {
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
}

/// Rotary position embedding tables: for each requested position `p` and pair `k`,
/// `cos(p·θ_k)` and `sin(p·θ_k)` with `θ_k = base^(−2k/head_dim)`.
pub struct Rope {
    theta: Vec<f32>,
    interleaved: bool,
}

impl Rope {
    /// Tables for `head_dim` (even) and base `base`; `interleaved` pairs `(2k, 2k+1)` (GGUF
    /// Llama layout) instead of `(k, k + head_dim/2)` (Hugging Face layout).
    pub fn new(head_dim: usize, base: f32, interleaved: bool) -> Self {
        let theta = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / head_dim as f32))
            .collect();
        Self { theta, interleaved }
    }

    /// Linear RoPE scaling: positions divided by `factor` (Hugging Face `rope_type: linear`,
    /// llama.cpp `freq_scale = 1/factor`).
    pub fn linear_scaled(mut self, factor: f32) -> Self {
        self.theta.iter_mut().for_each(|t| *t /= factor);
        self
    }

    /// The rotations of the tokens at `positions` (one per row of a batch), each angle's sine
    /// and cosine computed once: a forward pass builds it once and every layer and head uses
    /// it ([`RopeTable::apply`]), where computing them per head and layer cost a decode step
    /// over eight rows 2 % of its time in `sincosf`. Same values as computing them in place.
    pub fn table(&self, positions: impl IntoIterator<Item = usize>) -> RopeTable {
        let mut sin_cos = Vec::new();
        for pos in positions {
            let p = pos as f32;
            sin_cos.extend(self.theta.iter().map(|&t| (p * t).sin_cos()));
        }
        RopeTable {
            half: self.theta.len(),
            interleaved: self.interleaved,
            sin_cos,
        }
    }
}

/// The `(sin, cos)` of every rotation angle of a batch's tokens (`[rows][head_dim / 2]`), from
/// [`Rope::table`].
pub struct RopeTable {
    half: usize,
    interleaved: bool,
    sin_cos: Vec<(f32, f32)>,
}

impl RopeTable {
    /// Rotates every head of row `row`'s `x` (`[n_heads × head_dim]`); a row past the table, or
    /// a `head_dim` other than the table's, leaves the angles it lacks unrotated.
    pub fn apply(&self, row: usize, x: &mut [f32], head_dim: usize) {
        let half = (head_dim / 2).min(self.half);
        let angles = self
            .sin_cos
            .get(row * self.half..(row + 1) * self.half)
            .unwrap_or(&[]);
        for head in x.chunks_exact_mut(head_dim) {
            for (k, &(sin, cos)) in angles.iter().enumerate().take(half) {
                let (i0, i1) = if self.interleaved {
                    (2 * k, 2 * k + 1)
                } else {
                    (k, k + head_dim / 2)
                };
                let (x0, x1) = (head[i0], head[i1]);
                head[i0] = x0 * cos - x1 * sin;
                head[i1] = x0 * sin + x1 * cos;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax weights (SIMD body, scalar tail) against `exp` in f64: within 2 ulps over the
    /// range, exactly 1 at the shift, 0 for NaN, `−∞` and arguments below −87.3.
    #[test]
    fn exp_weights_match_exp_and_drop_masked_tokens() {
        let xs: Vec<f32> = (0..10_001)
            .map(|i| -60.0 + 80.0 * i as f32 / 10_001.0)
            .chain([f32::NAN, f32::NEG_INFINITY, -1e30, 3.0, 2.5, 1e30])
            .collect();
        let (scale, shift) = (1.25f32, 3.75f32);
        let mut out = vec![7.0; 3];
        for len in [xs.len(), 13, 3] {
            exp_weights(&xs[..len], scale, shift, &mut out);
            assert_eq!(out.len(), len);
            for (&x, &w) in xs[..len].iter().zip(&out) {
                let a = x * scale - shift;
                if a.is_nan() || a < -87.3 {
                    assert_eq!(w, 0.0, "x {x}");
                    continue;
                }
                let want = f64::from(a.min(88.3)).exp();
                let ulp = f64::from(f32::EPSILON) * want;
                assert!((f64::from(w) - want).abs() <= 2.0 * ulp, "x {x}: {w} vs {want}");
            }
        }
        // x · scale == shift exactly (3 · 1.25 = 3.75).
        exp_weights(&[3.0; 9], scale, shift, &mut out);
        assert!(out.iter().all(|&w| w == 1.0));
    }

    /// GeGLU (SIMD body, scalar tail, pool split) against GELU_tanh in f64, over the range
    /// where activations live and at the saturated ends.
    #[test]
    fn gelu_mul_matches_the_tanh_form_in_f64() {
        // 0.5·u·(1 + tanh z) = u·σ(2z); the σ form keeps its precision where tanh z → −1.
        let exact = |u: f64| u / (1.0 + (-2.0 * 0.797_884_560_802_865_4 * (u + 0.044_715 * u * u * u)).exp());
        // 70,003 values: not a multiple of 8, large enough to be split over the pool.
        let xs: Vec<f32> = (0..70_003)
            .map(|i| -14.0 + 28.0 * i as f32 / 70_003.0)
            .chain([0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0, 1e6, -1e6, 1e30])
            .collect();
        let up: Vec<f32> = xs
            .iter()
            .enumerate()
            .map(|(i, _)| 1.0 + (i % 7) as f32 * 0.25)
            .collect();
        let z2 = |u: f32| (2.0 * 0.8 * (f64::from(u) + 0.044_715 * f64::from(u).powi(3))).abs();
        for len in [xs.len(), 13, 5] {
            let mut g = xs[..len].to_vec();
            gelu_mul(&mut g, &up[..len]);
            for ((&x, &u), &got) in xs.iter().zip(&up).zip(&g) {
                let want = exact(f64::from(x)) * f64::from(u);
                let err = (f64::from(got) - want).abs();
                assert!(
                    // exp(−2z) inherits the f32 roundings of z (a few 2⁻²⁴·|2z|); below
                    // 1e-35 (the clamp of exp at 88.3 keeps a tiny quotient) all is zero.
                    err <= (4e-7 + 3.6e-7 * z2(x)) * want.abs() + 1e-35 * (1.0 + f64::from(x).abs()),
                    "gelu({x}) · {u}: got {got}, want {want} (error {err:e})"
                );
            }
        }
        let mut nan = vec![f32::NAN; 9];
        gelu_mul(&mut nan, &[1.0; 9]);
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    /// SwiGLU split over the pool gives each value's scalar formula, bit for bit.
    #[test]
    fn silu_mul_over_the_pool_equals_the_scalar_formula() {
        let xs: Vec<f32> = (0..70_003).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
        let up: Vec<f32> = (0..70_003).map(|i| 0.5 + (i % 5) as f32).collect();
        let mut g = xs.clone();
        silu_mul(&mut g, &up);
        for ((&x, &u), &got) in xs.iter().zip(&up).zip(&g) {
            assert_eq!(
                got.to_bits(),
                (x / (1.0 + (-x).exp()) * u).to_bits(),
                "silu({x}) · {u}"
            );
        }
    }

    /// The polynomial SwiGLU over the pool (SIMD lanes and scalar tails) gives each value's
    /// scalar formula bit for bit, and SiLU within a few f32 ulps of its f64 value.
    #[test]
    fn silu_mul_poly_over_the_pool_equals_its_scalar_formula() {
        let xs: Vec<f32> = (0..70_003).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
        let up: Vec<f32> = (0..70_003).map(|i| 0.5 + (i % 5) as f32).collect();
        let mut g = xs.clone();
        silu_mul_poly(&mut g, &up);
        for ((&x, &u), &got) in xs.iter().zip(&up).zip(&g) {
            assert_eq!(
                got.to_bits(),
                (x / (1.0 + exp_poly(-x)) * u).to_bits(),
                "silu({x}) · {u}"
            );
            let (x64, u64) = (f64::from(x), f64::from(u));
            let want = x64 / (1.0 + (-x64).exp()) * u64;
            let err = (f64::from(got) - want).abs();
            assert!(
                err <= 6e-7 * want.abs() + 1e-37,
                "silu({x}) · {u}: {got} against {want}"
            );
        }
        // A short slice runs on the caller: its SIMD part and its 3-value tail.
        let mut short = xs[..11].to_vec();
        silu_mul_poly(&mut short, &up[..11]);
        assert_eq!(
            short.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            g[..11].iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    /// `exp_poly` is within 2 f32 ulps of `exp` over the clamped range and 0 ↦ 1 exactly;
    /// `exp_shift_in_place` gives its bits in SIMD lanes and tails alike, and 0 below −87.3
    /// and for NaN.
    #[test]
    fn exp_poly_is_close_to_exp_and_the_in_place_shift_gives_its_bits() {
        assert_eq!(exp_poly(0.0), 1.0);
        for i in 0..200_001 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = f64::from(x).exp();
            let got = f64::from(exp_poly(x));
            assert!(
                (got - want).abs() <= 2.0 * f64::from(f32::EPSILON) * want,
                "exp({x}): {got} against {want}"
            );
        }
        let xs: Vec<f32> = (0..1_003)
            .map(|i| (i as f32 * 0.731).sin() * 40.0 - 5.0)
            .collect();
        let shift = 7.25;
        for len in [0, 1, 7, 8, 9, 64, 1_003] {
            let mut got = xs[..len].to_vec();
            exp_shift_in_place(&mut got, shift);
            for (&x, &g) in xs.iter().zip(&got) {
                assert_eq!(g.to_bits(), exp_poly(x - shift).to_bits(), "exp({x} − {shift})");
            }
        }
        let mut odd = vec![
            f32::NAN,
            f32::NEG_INFINITY,
            -88.0,
            3.0,
            f32::INFINITY,
            0.0,
            1.0,
            -1.0,
            f32::NAN,
        ];
        exp_shift_in_place(&mut odd, 0.0);
        assert_eq!(&odd[..3], &[0.0, 0.0, 0.0]);
        assert_eq!(odd[4], exp_poly(88.3));
        assert_eq!(odd[5], 1.0);
        assert_eq!(odd[8], 0.0);
    }

    #[test]
    fn softmax_sums_to_one_and_is_stable() {
        let mut x = vec![1000.0, 1001.0, 999.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0] && x[0] > x[2]);
    }

    /// A table over a batch's positions rotates each row as the angles computed in place do
    /// (`θ_k = base^(−2k/d)`, pairs `(2k, 2k+1)` or `(k, k + d/2)`), bit for bit, in every
    /// head.
    #[test]
    fn a_rope_table_rotates_each_row_at_its_own_position() {
        let (hd, heads) = (8, 3);
        for interleaved in [false, true] {
            let rope = Rope::new(hd, 10000.0, interleaved);
            let positions = [0usize, 5, 17, 4096];
            let table = rope.table(positions);
            for (row, &pos) in positions.iter().enumerate() {
                let x: Vec<f32> = (0..heads * hd).map(|i| (i as f32 * 0.37).sin()).collect();
                let mut got = x.clone();
                table.apply(row, &mut got, hd);
                let mut want = x.clone();
                for head in want.chunks_exact_mut(hd) {
                    for k in 0..hd / 2 {
                        let theta = 1.0 / 10000f32.powf((2 * k) as f32 / hd as f32);
                        let (sin, cos) = (pos as f32 * theta).sin_cos();
                        let (i0, i1) = if interleaved {
                            (2 * k, 2 * k + 1)
                        } else {
                            (k, k + hd / 2)
                        };
                        let (x0, x1) = (head[i0], head[i1]);
                        head[i0] = x0 * cos - x1 * sin;
                        head[i1] = x0 * sin + x1 * cos;
                    }
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "row {row} (position {pos}), interleaved {interleaved}"
                );
            }
            // A row past the table leaves `x` as it is.
            let mut x = vec![1.0f32; hd];
            table.apply(positions.len(), &mut x, hd);
            assert_eq!(x, vec![1.0; hd]);
        }
    }

    #[test]
    fn linear_rope_scaling_divides_positions() {
        let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.3 - 2.0).collect();
        let (mut a, mut b) = (x.clone(), x);
        Rope::new(8, 1e6, false)
            .linear_scaled(8.0)
            .table([24])
            .apply(0, &mut a, 8);
        Rope::new(8, 1e6, false).table([3]).apply(0, &mut b, 8);
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5), "{a:?} {b:?}");
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let r = Rope::new(8, 10000.0, true);
        let mut x: Vec<f32> = (0..16).map(|i| i as f32 * 0.3 - 2.0).collect();
        let orig = x.clone();
        r.table([0]).apply(0, &mut x, 8);
        assert_eq!(x, orig);
        r.table([17]).apply(0, &mut x, 8);
        let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((n(&x) - n(&orig)).abs() < 1e-3);
    }
}
