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

/// Elements below which an elementwise op runs on the caller alone.
const PAR_MIN_ELEMENTS: usize = 32 * 1024;

/// `gate[i] = f(gate[i], up[i])` for every `i`, split over the model's thread pool when the
/// buffers are large (a prompt's MLP activations): each element's value does not depend on
/// the split.
fn zip_map_par(gate: &mut [f32], up: &[f32], f: fn(f32, f32) -> f32) {
    let n = gate.len().min(up.len());
    let pool = super::pool::Pool::global();
    if n < PAR_MIN_ELEMENTS || pool.threads() <= 1 {
        gate.iter_mut().zip(up).for_each(|(g, &u)| *g = f(*g, u));
        return;
    }
    let piece = n.div_ceil(pool.threads() * 4);
    pool.for_each_piece(&mut gate[..n], piece, &|c, part| {
        let up = &up[c * piece..];
        part.iter_mut().zip(up).for_each(|(g, &u)| *g = f(*g, u));
    });
}

/// SiLU(gate) · up, elementwise, into `gate`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    zip_map_par(gate, up, |g, u| g / (1.0 + (-g).exp()) * u);
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

/// GeGLU: GELU_tanh(gate) · up, elementwise, into `gate` (Gemma's MLP).
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    zip_map_par(gate, up, |g, u| gelu_tanh_one(g) * u);
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

    /// Rotates every head of one token's `x` (`[n_heads × head_dim]`) at position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize, head_dim: usize) {
        let half = head_dim / 2;
        let p = pos as f32;
        for head in x.chunks_exact_mut(head_dim) {
            for (k, &t) in self.theta.iter().enumerate().take(half) {
                let (sin, cos) = (p * t).sin_cos();
                let (i0, i1) = if self.interleaved {
                    (2 * k, 2 * k + 1)
                } else {
                    (k, k + half)
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

    #[test]
    fn softmax_sums_to_one_and_is_stable() {
        let mut x = vec![1000.0, 1001.0, 999.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0] && x[0] > x[2]);
    }

    #[test]
    fn linear_rope_scaling_divides_positions() {
        let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.3 - 2.0).collect();
        let (mut a, mut b) = (x.clone(), x);
        Rope::new(8, 1e6, false).linear_scaled(8.0).apply(&mut a, 24, 8);
        Rope::new(8, 1e6, false).apply(&mut b, 3, 8);
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5), "{a:?} {b:?}");
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let r = Rope::new(8, 10000.0, true);
        let mut x: Vec<f32> = (0..16).map(|i| i as f32 * 0.3 - 2.0).collect();
        let orig = x.clone();
        r.apply(&mut x, 0, 8);
        assert_eq!(x, orig);
        r.apply(&mut x, 17, 8);
        let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((n(&x) - n(&orig)).abs() < 1e-3);
    }
}
