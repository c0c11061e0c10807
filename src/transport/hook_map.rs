//! A fitted map at one hook point and its application — the per-token hot path.
//!
//! For neuron `j` with parameters `ω_j, β_j` and support `(lo_j, hi_j)`, strength λ maps an
//! activation `a` to
//!
//! ```text
//! T_λ(a) = (1 − λ)·a + λ·(ω_j·a + β_j) = a + λ·((ω_j − 1)·a + β_j)   if lo_j < a < hi_j
//!        = a                                                          otherwise
//! ```
//!
//! (AcT paper, Eq. 2 with the interpolation of §3.3). Additive methods (ITI-M, ActAdd) store
//! ω = 1, so the same kernel yields `a + λβ`. λ = 1 is full transport, λ > 1 extrapolates.
//!
//! A joint map ([`super::joint`]) holds a `d × d` matrix `A` instead of the diagonal ω and
//! moves a whole activation vector: `x ↦ x + λ(A x + β − x)`, with no support.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::TransportError;
use super::method::Method;
use super::scope::{TokenScope, TokenWindow};
use super::support::Support;

/// The fitted parameters of one concept at one hook point: one affine map per neuron, or one
/// joint affine map on the whole vector ([`HookMap::joint`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HookMap {
    method: Method,
    support: Support,
    /// Per-neuron slope; for a joint map the diagonal of [`HookMap::matrix`] (a summary for
    /// plots, not what is applied).
    omega: Vec<f32>,
    beta: Vec<f32>,
    lo: Vec<f32>,
    hi: Vec<f32>,
    diagnostics: BTreeMap<String, Vec<f32>>,
    /// Fitted on every position (pixel or token) as a sample rather than on per-sample means,
    /// so 4-D activations are mapped pixel by pixel ([`HookMap::apply_4d`]).
    per_position: bool,
    /// A joint map's `A`, row-major `[dim, dim]`; `None` for per-neuron maps.
    matrix: Option<Arc<[f32]>>,
}

/// Per-neuron diagnostics every estimator records (tensor names in the maps file).
pub mod diag {
    /// Source sample mean.
    pub const SRC_MEAN: &str = "src_mean";
    /// Source sample standard deviation (unbiased).
    pub const SRC_STD: &str = "src_std";
    /// Target sample mean.
    pub const TGT_MEAN: &str = "tgt_mean";
    /// Target sample standard deviation (unbiased).
    pub const TGT_STD: &str = "tgt_std";
    /// 1-D Wasserstein-1 distance source → target before transport.
    pub const W1_BEFORE: &str = "w1_before";
    /// 1-D Wasserstein-1 distance between the transported source (λ = 1) and the target.
    pub const W1_AFTER: &str = "w1_after";
    /// AurA: AUROC of the neuron as a source detector.
    pub const AUROC: &str = "auroc";
    /// Det0: average precision of the neuron as a source detector.
    pub const AP: &str = "ap";
}

impl HookMap {
    /// Builds a map from per-neuron parameters. All vectors must have the same length, and
    /// every diagnostic vector too; a joint method is refused (it needs [`HookMap::joint`]).
    pub fn new(
        method: Method,
        support: Support,
        omega: Vec<f32>,
        beta: Vec<f32>,
        lo: Vec<f32>,
        hi: Vec<f32>,
        diagnostics: BTreeMap<String, Vec<f32>>,
    ) -> Result<Self, String> {
        if method.is_joint() {
            return Err(format!(
                "method {} needs its matrix: HookMap::joint",
                method.name()
            ));
        }
        Self::per_neuron(method, support, omega, beta, lo, hi, diagnostics)
    }

    /// [`HookMap::new`] without the method check ([`HookMap::joint`] builds on it).
    fn per_neuron(
        method: Method,
        support: Support,
        omega: Vec<f32>,
        beta: Vec<f32>,
        lo: Vec<f32>,
        hi: Vec<f32>,
        diagnostics: BTreeMap<String, Vec<f32>>,
    ) -> Result<Self, String> {
        let d = omega.len();
        if beta.len() != d || lo.len() != d || hi.len() != d {
            return Err(format!(
                "parameter lengths differ: omega {d}, beta {}, lo {}, hi {}",
                beta.len(),
                lo.len(),
                hi.len()
            ));
        }
        if let Some((k, v)) = diagnostics.iter().find(|(_, v)| v.len() != d) {
            return Err(format!("diagnostic `{k}` has {} values, expected {d}", v.len()));
        }
        Ok(Self {
            method,
            support,
            omega,
            beta,
            lo,
            hi,
            diagnostics,
            per_position: false,
            matrix: None,
        })
    }

    /// A joint map `x ↦ A x + β` ([`super::joint`]): `matrix` is `A`, row-major `[d, d]`, and
    /// `beta` has length `d`. Its support is unbounded and its ω the diagonal of `A`.
    pub fn joint(
        method: Method,
        matrix: Vec<f32>,
        beta: Vec<f32>,
        diagnostics: BTreeMap<String, Vec<f32>>,
    ) -> Result<Self, String> {
        let d = beta.len();
        if matrix.len() != d * d {
            return Err(format!(
                "a joint map of {d} neurons needs {} matrix values, got {}",
                d * d,
                matrix.len()
            ));
        }
        if !method.is_joint() {
            return Err(format!("method {} has no joint map", method.name()));
        }
        let omega = (0..d).map(|i| matrix[i * d + i]).collect();
        let mut map = Self::per_neuron(
            method,
            Support::Unbounded,
            omega,
            beta,
            vec![f32::NEG_INFINITY; d],
            vec![f32::INFINITY; d],
            diagnostics,
        )?;
        map.matrix = Some(matrix.into());
        Ok(map)
    }

    /// The same map, marked as fitted on positions (`true`: every pixel or token was a
    /// sample, [`crate::transport::maps_file::POSITIONS_POOLING`]) or on per-sample means.
    pub fn with_per_position(mut self, per_position: bool) -> Self {
        self.per_position = per_position;
        self
    }

    /// Whether the map was fitted on positions (see [`HookMap::with_per_position`]).
    pub fn per_position(&self) -> bool {
        self.per_position
    }

    /// The identity map on `d` neurons (ω = 1, β = 0).
    pub fn identity(method: Method, d: usize) -> Self {
        Self {
            method,
            support: Support::Unbounded,
            omega: vec![1.0; d],
            beta: vec![0.0; d],
            lo: vec![f32::NEG_INFINITY; d],
            hi: vec![f32::INFINITY; d],
            diagnostics: BTreeMap::new(),
            per_position: false,
            matrix: None,
        }
    }

    /// Number of neurons.
    pub fn dim(&self) -> usize {
        self.omega.len()
    }
    /// The estimator that produced the map.
    pub fn method(&self) -> Method {
        self.method
    }
    /// The support the bounds were computed for.
    pub fn support(&self) -> Support {
        self.support
    }
    /// Per-neuron slope ω, length `dim`.
    pub fn omega(&self) -> &[f32] {
        &self.omega
    }
    /// Per-neuron shift β, length `dim`.
    pub fn beta(&self) -> &[f32] {
        &self.beta
    }
    /// Per-neuron lower support bound (exclusive), length `dim`.
    pub fn lo(&self) -> &[f32] {
        &self.lo
    }
    /// Per-neuron upper support bound (exclusive), length `dim`.
    pub fn hi(&self) -> &[f32] {
        &self.hi
    }
    /// Named per-neuron diagnostics (see [`diag`]).
    pub fn diagnostics(&self) -> &BTreeMap<String, Vec<f32>> {
        &self.diagnostics
    }
    /// A joint map's matrix `A`, row-major `[dim, dim]`; `None` for per-neuron maps.
    pub fn matrix(&self) -> Option<&[f32]> {
        self.matrix.as_deref()
    }

    /// Transports one neuron's scalar value at strength λ with its per-neuron map (reference
    /// implementation of the kernel; the slice functions below are the fast paths). For a
    /// joint map this is its diagonal alone; [`HookMap::transport_neuron`] is exact.
    #[inline]
    pub fn transport_scalar(&self, j: usize, a: f32, lambda: f32) -> f32 {
        transport_one(a, self.omega[j], self.beta[j], self.lo[j], self.hi[j], lambda)
    }

    /// Neuron `j` of the activation vector `row` (length `dim`) after full transport (λ = 1):
    /// `T(row[j])` for a per-neuron map, `(A row + β)[j]` for a joint one. NaN when `j` or the
    /// row's length does not fit the map.
    pub fn transport_neuron(&self, j: usize, row: &[f32]) -> f32 {
        if row.len() != self.dim() || j >= self.dim() {
            return f32::NAN;
        }
        match &self.matrix {
            Some(a) => {
                let d = self.dim();
                self.beta[j] + dot(&a[j * d..(j + 1) * d], row)
            }
            None => transport_one(row[j], self.omega[j], self.beta[j], self.lo[j], self.hi[j], 1.0),
        }
    }

    /// Applies the map in place to `rows` consecutive activation vectors: `x` is row-major
    /// `[rows, dim]`. This is the per-token hot path: one fused pass, no allocation.
    pub fn apply_rows(&self, x: &mut [f32], lambda: f32) {
        let d = self.dim();
        if d == 0 || lambda == 0.0 {
            return;
        }
        if let Some(a) = &self.matrix {
            let mut y = vec![0.0f32; d];
            for row in x.chunks_exact_mut(d) {
                apply_joint(row, a, &self.beta, lambda, &mut y);
            }
            return;
        }
        for row in x.chunks_exact_mut(d) {
            apply_row(row, &self.omega, &self.beta, &self.lo, &self.hi, lambda);
        }
    }

    /// Applies the map to a 3-D activation `[batch, tokens, dim]` (row-major), steering only
    /// the tokens `scope` selects in the chunk described by `window`.
    pub fn apply_3d(
        &self,
        hook: &str,
        x: &mut [f32],
        shape: [usize; 3],
        lambda: f32,
        scope: TokenScope,
        window: TokenWindow,
    ) -> Result<(), TransportError> {
        let [b, t, d] = shape;
        self.check_shape(hook, x.len(), &shape, d, b * t * d, lambda)?;
        if lambda == 0.0 {
            return Ok(());
        }
        let range = scope.token_range(t, window);
        if range.is_empty() {
            return Ok(());
        }
        for seq in x.chunks_exact_mut(t * d) {
            self.apply_rows(&mut seq[range.start * d..range.end * d], lambda);
        }
        Ok(())
    }

    /// Applies the map to a 4-D activation `[batch, channels, h, w]` (row-major) where
    /// channels are the neurons. With `m` the mean of a channel over `h × w`, the support is
    /// tested on `m` (as the reference does): a channel is steered only if `lo < m < hi`.
    /// Linear-AcT then uses the spatial-mean rule — every pixel gets the shift `T_λ(m) − m`,
    /// so per-pixel deviations from the mean are preserved — while the other methods map each
    /// pixel `x ↦ (1 − λ)x + λ(ωx + β)`.
    ///
    /// A map fitted on positions ([`HookMap::per_position`]) saw single pixels, not channel
    /// means, so it acts as on tokens: each pixel is mapped on its own and the support is
    /// tested on that pixel's value.
    pub fn apply_4d(
        &self,
        hook: &str,
        x: &mut [f32],
        shape: [usize; 4],
        lambda: f32,
    ) -> Result<(), TransportError> {
        let [b, c, h, w] = shape;
        self.check_shape(hook, x.len(), &shape, c, b * c * h * w, lambda)?;
        let hw = h * w;
        if lambda == 0.0 || hw == 0 {
            return Ok(());
        }
        if let Some(a) = &self.matrix {
            self.apply_4d_joint(a, x, c, hw, lambda);
            return Ok(());
        }
        if self.per_position {
            for (k, plane) in x.chunks_exact_mut(hw).enumerate() {
                let j = k % c;
                let (om, be, lo, hi) = (self.omega[j], self.beta[j], self.lo[j], self.hi[j]);
                plane
                    .iter_mut()
                    .for_each(|v| *v = transport_one(*v, om, be, lo, hi, lambda));
            }
            return Ok(());
        }
        let unbounded = matches!(self.support, Support::Unbounded);
        for (k, plane) in x.chunks_exact_mut(hw).enumerate() {
            let j = k % c;
            let (om, be, lo, hi) = (self.omega[j], self.beta[j], self.lo[j], self.hi[j]);
            let needs_mean = self.method.spatial_mean_rule() || !unbounded;
            let m = if needs_mean {
                (plane.iter().map(|&v| f64::from(v)).sum::<f64>() / hw as f64) as f32
            } else {
                0.0
            };
            let inside = (m > lo) & (m < hi);
            if !unbounded && !inside {
                continue;
            }
            if self.method.spatial_mean_rule() {
                let shift = transport_one(m, om, be, f32::NEG_INFINITY, f32::INFINITY, lambda) - m;
                plane.iter_mut().for_each(|v| *v += shift);
            } else {
                let (lo, hi) = (f32::NEG_INFINITY, f32::INFINITY);
                plane
                    .iter_mut()
                    .for_each(|v| *v = transport_one(*v, om, be, lo, hi, lambda));
            }
        }
        Ok(())
    }

    /// [`HookMap::apply_4d`] of a joint map on `[batch, c, hw]` data: each pixel's channel
    /// vector is moved when fitted on positions, else the channel means are, and each plane
    /// gets its mean's shift.
    fn apply_4d_joint(&self, a: &[f32], x: &mut [f32], c: usize, hw: usize, lambda: f32) {
        if c == 0 {
            return;
        }
        let (mut v, mut y, mut means) = (vec![0.0f32; c], vec![0.0f32; c], vec![0.0f32; c]);
        for item in x.chunks_exact_mut(c * hw) {
            if self.per_position {
                for p in 0..hw {
                    v.iter_mut().enumerate().for_each(|(j, q)| *q = item[j * hw + p]);
                    apply_joint(&mut v, a, &self.beta, lambda, &mut y);
                    v.iter().enumerate().for_each(|(j, &q)| item[j * hw + p] = q);
                }
            } else {
                for (m, plane) in v.iter_mut().zip(item.chunks_exact(hw)) {
                    *m = (plane.iter().map(|&q| f64::from(q)).sum::<f64>() / hw as f64) as f32;
                }
                means.copy_from_slice(&v);
                apply_joint(&mut v, a, &self.beta, lambda, &mut y);
                for ((plane, m), moved) in item.chunks_exact_mut(hw).zip(&means).zip(&v) {
                    let shift = moved - m;
                    plane.iter_mut().for_each(|q| *q += shift);
                }
            }
        }
    }

    fn check_shape(
        &self,
        hook: &str,
        len: usize,
        shape: &[usize],
        dim: usize,
        expected: usize,
        lambda: f32,
    ) -> Result<(), TransportError> {
        if !lambda.is_finite() {
            return Err(TransportError::BadLambda(lambda));
        }
        if dim != self.dim() || len != expected {
            return Err(TransportError::ActivationShape {
                hook: hook.to_string(),
                shape: shape.to_vec(),
                len,
                dim: self.dim(),
            });
        }
        Ok(())
    }
}

/// `T_λ(a)` for one value: see the module docs.
#[inline(always)]
pub(crate) fn transport_one(a: f32, omega: f32, beta: f32, lo: f32, hi: f32, lambda: f32) -> f32 {
    let moved = a + lambda * ((omega - 1.0) * a + beta);
    // Non-short-circuit `&` keeps the loop branch-free so it vectorises.
    if (a > lo) & (a < hi) { moved } else { a }
}

/// `Σ a_k b_k` with eight independent accumulators, so the loop vectorises.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One vector through a joint map: `x ← x + λ(A x + β − x)`; `y` is scratch of length `d`.
#[inline]
pub(crate) fn apply_joint(x: &mut [f32], a: &[f32], beta: &[f32], lambda: f32, y: &mut [f32]) {
    let d = x.len();
    for (i, yi) in y.iter_mut().enumerate() {
        *yi = beta[i] + dot(&a[i * d..(i + 1) * d], x);
    }
    for (xi, yi) in x.iter_mut().zip(y.iter()) {
        *xi += lambda * (yi - *xi);
    }
}

/// One fused, branch-free pass over a token's activation vector (auto-vectorised).
#[inline]
fn apply_row(x: &mut [f32], omega: &[f32], beta: &[f32], lo: &[f32], hi: &[f32], lambda: f32) {
    let n = x.len().min(omega.len());
    let (x, omega, beta, lo, hi) = (&mut x[..n], &omega[..n], &beta[..n], &lo[..n], &hi[..n]);
    for j in 0..n {
        x[j] = transport_one(x[j], omega[j], beta[j], lo[j], hi[j], lambda);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> HookMap {
        HookMap::new(
            Method::LinearAct,
            Support::Q0_100,
            vec![2.0, 0.5],
            vec![1.0, -1.0],
            vec![0.0, -10.0],
            vec![10.0, 10.0],
            BTreeMap::new(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn strict_support_bounds_are_not_transported() {
        let m = map();
        let mut x = [0.0, 10.0, 5.0, 2.0];
        m.apply_rows(&mut x, 1.0);
        // neuron 0: 0.0 is the lower bound → untouched; 5.0 → 2·5+1 = 11
        // neuron 1: 10.0 is the upper bound → untouched; 2.0 → 0.5·2−1 = 0
        assert_eq!(x, [0.0, 10.0, 11.0, 0.0]);
    }

    #[test]
    fn lambda_interpolates_and_extrapolates() {
        let m = map();
        for (lambda, want) in [(0.0, 5.0), (0.5, 8.0), (1.0, 11.0), (2.0, 17.0)] {
            let mut x = [5.0, 0.0];
            m.apply_rows(&mut x, lambda);
            assert_eq!(x[0], want, "λ = {lambda}");
        }
    }

    #[test]
    fn shape_errors_do_not_panic() {
        let m = map();
        let mut x = vec![0.0; 6];
        let w = TokenWindow::default();
        assert!(
            m.apply_3d("h", &mut x, [1, 2, 3], 1.0, TokenScope::All, w)
                .is_err()
        );
        assert!(
            m.apply_3d("h", &mut x, [1, 2, 2], 1.0, TokenScope::All, w)
                .is_err()
        );
        assert!(m.apply_4d("h", &mut x, [1, 3, 1, 2], 1.0).is_err());
        assert!(
            m.apply_3d("h", &mut x, [1, 3, 2], f32::NAN, TokenScope::All, w)
                .is_err()
        );
        assert!(
            HookMap::new(
                Method::MeanAct,
                Support::Unbounded,
                vec![1.0],
                vec![],
                vec![],
                vec![],
                BTreeMap::new()
            )
            .is_err()
        );
    }

    #[test]
    fn spatial_mean_rule_preserves_deviations() {
        let m = map();
        // one batch, 2 channels, 1×2 pixels; channel 0 mean 5 → T(5)=11, shift 6.
        let mut x = vec![4.0, 6.0, 1.0, 3.0];
        m.apply_4d("h", &mut x, [1, 2, 1, 2], 1.0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&x[..2], &[10.0, 12.0]);
        // channel 1 mean 2 → T(2) = 0, shift −2.
        assert_eq!(&x[2..], &[-1.0, 1.0]);
    }

    #[test]
    fn a_map_fitted_on_positions_maps_each_pixel_and_tests_its_support() {
        let m = map().with_per_position(true);
        assert!(m.per_position() && !map().per_position());
        // channel 0 (ω 2, β 1, support (0, 10)): 4 → 9, 6 → 13, 11 stays (outside);
        // channel 1 (ω ½, β −1, support (−10, 10)): 1 → −½, 3 → ½.
        let mut x = vec![4.0, 6.0, 11.0, 1.0, 3.0, -12.0];
        m.apply_4d("h", &mut x, [1, 2, 1, 3], 1.0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(x, [9.0, 13.0, 11.0, -0.5, 0.5, -12.0]);
        // Half way: a + ½((ω − 1)a + β).
        let mut x = vec![4.0, 6.0, 11.0, 1.0, 3.0, -12.0];
        m.apply_4d("h", &mut x, [1, 2, 1, 3], 0.5)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(x, [6.5, 9.5, 11.0, 0.25, 1.75, -12.0]);
    }

    /// A joint map on 2 neurons: A = [[2, 1], [1, 3]], β = (1, −1).
    fn joint() -> HookMap {
        HookMap::joint(
            Method::JointGaussian,
            vec![2.0, 1.0, 1.0, 3.0],
            vec![1.0, -1.0],
            BTreeMap::new(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_joint_map_moves_the_whole_vector_and_interpolates_with_lambda() {
        let m = joint();
        assert_eq!(m.omega(), [2.0, 3.0]);
        assert!(m.lo()[0] == f32::NEG_INFINITY && m.hi()[1] == f32::INFINITY);
        // x = (1, 2): A x + β = (2 + 2 + 1, 1 + 6 − 1) = (5, 6).
        for (lambda, want) in [
            (0.0, [1.0, 2.0]),
            (1.0, [5.0, 6.0]),
            (0.5, [3.0, 4.0]),
            (2.0, [9.0, 10.0]),
        ] {
            let mut x = [1.0, 2.0, 1.0, 2.0];
            m.apply_rows(&mut x, lambda);
            assert_eq!(x, [want[0], want[1], want[0], want[1]], "λ = {lambda}");
        }
        assert_eq!(m.transport_neuron(1, &[1.0, 2.0]), 6.0);
        // A vector longer than 8 goes through the vectorised dot product and its tail.
        let d = 11;
        let a: Vec<f32> = (0..d * d).map(|k| ((k * 7) % 5) as f32 - 2.0).collect();
        let big = HookMap::joint(Method::JointGaussian, a.clone(), vec![0.5; d], BTreeMap::new())
            .unwrap_or_else(|e| panic!("{e}"));
        let x: Vec<f32> = (0..d).map(|i| i as f32 * 0.25 - 1.0).collect();
        let mut y = x.clone();
        big.apply_rows(&mut y, 1.0);
        for i in 0..d {
            let want: f32 = 0.5 + (0..d).map(|j| a[i * d + j] * x[j]).sum::<f32>();
            assert!((y[i] - want).abs() < 1e-5, "neuron {i}: {} vs {want}", y[i]);
        }
        assert!(HookMap::joint(Method::JointGaussian, vec![1.0; 3], vec![0.0; 2], BTreeMap::new()).is_err());
        assert!(HookMap::joint(Method::Gaussian, vec![1.0; 4], vec![0.0; 2], BTreeMap::new()).is_err());
    }

    #[test]
    fn a_joint_map_on_4d_handles_batches_fractions_and_an_asymmetric_matrix() {
        // A = [[1, 2], [0, 1]] (asymmetric: a transposed product would differ), β = 0.
        let m = HookMap::joint(
            Method::JointGaussian,
            vec![1.0, 2.0, 0.0, 1.0],
            vec![0.0, 0.0],
            BTreeMap::new(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .with_per_position(true);
        // Two items, 2 channels, 1 pixel each: (1, 1) → (3, 1), (0, 2) → (4, 2); at λ = ½
        // halfway: (2, 1) and (2, 2).
        let mut x = vec![1.0, 1.0, 0.0, 2.0];
        m.apply_4d("h", &mut x, [2, 2, 1, 1], 0.5)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(x, [2.0, 1.0, 2.0, 2.0]);
        assert!(
            HookMap::new(
                Method::JointGaussian,
                Support::Unbounded,
                vec![1.0],
                vec![0.0],
                vec![0.0],
                vec![1.0],
                BTreeMap::new()
            )
            .is_err()
        );
        assert!(m.transport_neuron(0, &[1.0]).is_nan() && m.transport_neuron(2, &[1.0, 1.0]).is_nan());
    }

    #[test]
    fn a_joint_map_on_4d_moves_channel_means_or_each_pixel() {
        let m = joint();
        // One item, 2 channels, 1×2 pixels. Channel means (5, 2) → A m + β = (13, 10):
        // shifts (8, 8) added to every pixel, deviations kept.
        let mut x = vec![4.0, 6.0, 1.0, 3.0];
        m.apply_4d("h", &mut x, [1, 2, 1, 2], 1.0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(x, [12.0, 14.0, 9.0, 11.0]);
        // Fitted on positions: pixel (4, 1) → (10, 6), pixel (6, 3) → (16, 14).
        let p = joint().with_per_position(true);
        let mut x = vec![4.0, 6.0, 1.0, 3.0];
        p.apply_4d("h", &mut x, [1, 2, 1, 2], 1.0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(x, [10.0, 16.0, 6.0, 14.0]);
        let mut x = vec![4.0, 6.0, 1.0, 3.0];
        p.apply_4d("h", &mut x, [1, 2, 1, 2], 0.0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(x, [4.0, 6.0, 1.0, 3.0]);
    }
}
