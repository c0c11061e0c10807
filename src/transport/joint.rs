//! Joint Gaussian transport: one affine map on the whole activation vector of a hook point.
//!
//! The per-neuron estimators treat every neuron on its own (the AcT paper's "independent
//! marginals", §3.2). Where a concept lives in how neurons move *together* — the colour of an
//! object in a text-to-image UNet is one such — matching each marginal leaves it in place.
//! This estimator fits a Gaussian `N(μ_s, Σ_s)` to the source vectors and `N(μ_t, Σ_t)` to the
//! target vectors (all `d` neurons of the hook point at once) and uses the optimal transport
//! map between them (Knott & Smith, 1984; Dowson & Landau, 1982):
//!
//! ```text
//! T(x) = μ_t + A (x − μ_s),   A = Σ_s^−½ (Σ_s^½ Σ_t Σ_s^½)^½ Σ_s^−½
//! ```
//!
//! `A` is symmetric positive definite and `A Σ_s A = Σ_t`, so the transported source has the
//! target's mean and covariance. It is the same `ω·a + β` form as the other methods with a
//! `d × d` matrix in place of the diagonal ω: stored as `A` and `β = μ_t − A μ_s`, applied at
//! strength λ as `x + λ(A x + β − x)` ([`super::hook_map::HookMap::apply_rows`]). In one
//! dimension it reduces to the Gaussian estimator (`ω = σ_t/σ_s`).
//!
//! A sample covariance of `n` vectors has rank < `n`: with fewer samples than neurons (a few
//! hundred sentences at a 576-wide hook point) the map would squeeze every direction the
//! target sample does not span to nothing and break the model. So each covariance is shrunk
//! towards its diagonal by the Schäfer–Strimmer estimate of the best weight (2005, target
//! "diagonal, unequal variance"): `Σ = (1 − α) S + α diag(S)`, `α = Σ_{i≠j} Var(s_ij) /
//! Σ_{i≠j} s_ij²`. With many samples per neuron (every pixel of a UNet feature map) α is
//! near 0 and the map is the joint one; with few it tends to the per-neuron Gaussian map.
//! Both then get `ε·I` added, `ε` = [`RIDGE`] × their mean variance. All linear algebra is
//! in f64.

use nalgebra::{DMatrix, DVector, SymmetricEigen};

use super::error::TransportError;
use super::samples::Samples;

/// The ridge added to both covariances, relative to their mean variance.
pub const RIDGE: f64 = 1e-3;

/// A fitted joint map `x ↦ A x + β` on `d` neurons.
#[derive(Debug, Clone, PartialEq)]
pub struct JointFit {
    /// `A`, row-major `[d, d]` (symmetric).
    pub matrix: Vec<f32>,
    /// `β = μ_t − A μ_s`, length `d`.
    pub beta: Vec<f32>,
}

/// The mean `[d]` of the rows of `s` and the rows centred, as a column-major `[n, d]` matrix.
fn centred(s: &Samples<'_>) -> (DVector<f64>, DMatrix<f64>) {
    let (n, d) = (s.rows(), s.cols());
    let mut mean = DVector::<f64>::zeros(d);
    for row in s.data().chunks_exact(d.max(1)) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    mean /= n.max(1) as f64;
    let x = DMatrix::<f64>::from_fn(n, d, |r, c| f64::from(s.data()[r * d + c]) - mean[c]);
    (mean, x)
}

/// Mean `[d]` and unbiased covariance `[d, d]` of the rows of `s` (`[n, d]`), in f64.
pub fn mean_and_covariance(s: &Samples<'_>) -> (DVector<f64>, DMatrix<f64>) {
    let (mean, x) = centred(s);
    let cov = x.tr_mul(&x) / (s.rows().max(2) - 1) as f64;
    (mean, cov)
}

/// Mean `[d]`, the covariance shrunk towards its diagonal (module docs) and the weight α.
pub fn mean_and_shrunk_covariance(s: &Samples<'_>) -> (DVector<f64>, DMatrix<f64>, f64) {
    let n = s.rows();
    let (mean, x) = centred(s);
    let mut cov = x.tr_mul(&x);
    if n < 3 {
        // No variance of the covariances to estimate: keep only the variances.
        let diag = DMatrix::from_diagonal(&cov.diagonal());
        return (mean, diag / (n.max(2) - 1) as f64, 1.0);
    }
    let nf = n as f64;
    // Σ_k w_kij² with w_kij = x_ki x_kj, in one product of the squared samples.
    let sq = x.map(|v| v * v);
    let w2 = sq.tr_mul(&sq);
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..cov.nrows() {
        for j in 0..cov.ncols() {
            if i != j {
                let c = cov[(i, j)];
                // Var(s_ij) = n/(n−1)³ Σ_k (w_kij − w̄_ij)², with Σ_k w_kij = c.
                num += nf / (nf - 1.0).powi(3) * (w2[(i, j)] - c * c / nf).max(0.0);
                let s_ij = c / (nf - 1.0);
                den += s_ij * s_ij;
            }
        }
    }
    let alpha = if den > 0.0 {
        (num / den).clamp(0.0, 1.0)
    } else {
        1.0
    };
    cov /= nf - 1.0;
    for i in 0..cov.nrows() {
        for j in 0..cov.ncols() {
            if i != j {
                cov[(i, j)] *= 1.0 - alpha;
            }
        }
    }
    (mean, cov, alpha)
}

/// The eigendecomposition of a symmetric matrix: eigenvalues `[d]`, eigenvectors as columns.
fn eigen(hook: &str, m: DMatrix<f64>) -> Result<SymmetricEigen<f64, nalgebra::Dyn>, TransportError> {
    let d = m.nrows();
    SymmetricEigen::try_new(m, f64::EPSILON, 100 * d.max(10)).ok_or_else(|| {
        TransportError::JointDidNotConverge {
            hook: hook.to_string(),
        }
    })
}

/// `V diag(f(w)) Vᵀ` for an eigendecomposition `(w, V)`, with `w` clamped at 0.
fn apply_fn(eig: &SymmetricEigen<f64, nalgebra::Dyn>, f: impl Fn(f64) -> f64) -> DMatrix<f64> {
    let d = eig.eigenvalues.len();
    let fw = eig.eigenvalues.map(|w| f(w.max(0.0)));
    let v = &eig.eigenvectors;
    let scaled = DMatrix::from_fn(d, d, |r, c| v[(r, c)] * fw[c]);
    scaled * v.transpose()
}

/// `(M + Mᵀ) / 2`: removes the rounding that makes a product of symmetric matrices asymmetric.
fn symmetrise(m: DMatrix<f64>) -> DMatrix<f64> {
    (&m + m.transpose()) * 0.5
}

/// Fits the Gaussian optimal transport map from `source` to `target` (same `d`, at least one
/// row each; the caller checks shapes and finiteness). `O(n d² + d³)`.
pub fn fit_joint(hook: &str, source: &Samples<'_>, target: &Samples<'_>) -> Result<JointFit, TransportError> {
    let d = source.cols();
    if d == 0 {
        return Ok(JointFit {
            matrix: Vec::new(),
            beta: Vec::new(),
        });
    }
    let (mu_s, mut cov_s, _) = mean_and_shrunk_covariance(source);
    let (mu_t, mut cov_t, _) = mean_and_shrunk_covariance(target);
    let mean_var = (cov_s.trace() + cov_t.trace()) / (2 * d.max(1)) as f64;
    let eps = RIDGE * mean_var.max(1e-12);
    for i in 0..d {
        cov_s[(i, i)] += eps;
        cov_t[(i, i)] += eps;
    }
    // Eigenvalues of Σ_s are ≥ ε after the ridge (up to rounding); the floor keeps 1/√w finite.
    let floor = eps * 1e-6;
    let eig_s = eigen(hook, cov_s)?;
    let s_half = apply_fn(&eig_s, f64::sqrt);
    let s_inv_half = apply_fn(&eig_s, |w| 1.0 / w.max(floor).sqrt());
    let middle = symmetrise(&s_half * &cov_t * &s_half);
    let middle_half = apply_fn(&eigen(hook, middle)?, f64::sqrt);
    let a = symmetrise(&s_inv_half * middle_half * &s_inv_half);
    let beta = &mu_t - &a * &mu_s;
    // Row-major (A is symmetric, but keep the layout explicit).
    let matrix = (0..d * d).map(|k| a[(k / d, k % d)] as f32).collect();
    Ok(JointFit {
        matrix,
        beta: beta.iter().map(|&b| b as f32).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Side;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// `n` samples of `mu + L z` with standard normal `z` (Box–Muller), row-major `[n, d]`.
    fn gaussian(n: usize, mu: &[f64], l: &DMatrix<f64>, seed: u64) -> Vec<f32> {
        let d = mu.len();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut normal = || {
            let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let z = DVector::from_fn(d, |_, _| normal());
            let x = l * z;
            out.extend((0..d).map(|i| (mu[i] + x[i]) as f32));
        }
        out
    }

    fn samples(data: &[f32], d: usize) -> Samples<'_> {
        Samples::new(data, data.len() / d, d, Side::Source).unwrap_or_else(|e| panic!("{e}"))
    }

    fn apply(fit: &JointFit, data: &[f32], d: usize) -> Vec<f32> {
        data.chunks_exact(d)
            .flat_map(|x| {
                (0..d).map(move |i| fit.beta[i] + (0..d).map(|j| fit.matrix[i * d + j] * x[j]).sum::<f32>())
            })
            .collect()
    }

    #[test]
    fn the_transported_source_has_the_target_mean_and_covariance() {
        let d = 3;
        // Correlated source, differently correlated and shifted target.
        let ls = DMatrix::from_row_slice(3, 3, &[1.0, 0.0, 0.0, 0.8, 0.6, 0.0, 0.0, 0.5, 0.3]);
        let lt = DMatrix::from_row_slice(3, 3, &[2.0, 0.0, 0.0, -1.0, 0.5, 0.0, 0.3, 0.0, 1.2]);
        let src = gaussian(4000, &[1.0, -2.0, 0.5], &ls, 1);
        let tgt = gaussian(4000, &[4.0, 0.0, -1.0], &lt, 2);
        let fit = fit_joint("h", &samples(&src, d), &samples(&tgt, d)).unwrap_or_else(|e| panic!("{e}"));
        let moved = apply(&fit, &src, d);
        let (m_moved, c_moved) = mean_and_covariance(&samples(&moved, d));
        let (m_tgt, c_tgt) = mean_and_covariance(&samples(&tgt, d));
        assert!((m_moved - m_tgt).amax() < 1e-3, "means differ");
        // Equal up to the shrinkage (α about 1 % at 4000 samples), the ridge (1e-3 of the mean
        // variance) and f32 rounding: measured 1.35 % of the largest entry.
        let scale = c_tgt.amax();
        let gap = (c_moved - &c_tgt).amax();
        assert!(gap < 3e-2 * scale, "covariances differ by {gap} (scale {scale})");
        // A is symmetric positive definite: the map is a gradient of a convex function.
        let a = DMatrix::from_row_slice(
            d,
            d,
            &fit.matrix.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        );
        assert!((&a - a.transpose()).amax() < 1e-5);
        assert!(SymmetricEigen::new(a).eigenvalues.min() > 0.0);
    }

    #[test]
    fn in_one_dimension_it_is_the_gaussian_map() {
        let src: Vec<f32> = [0.0f32, 1.0, 2.0, 3.0, 4.0].to_vec();
        let tgt: Vec<f32> = src.iter().map(|v| 3.0 * v - 1.0).collect();
        let fit = fit_joint("h", &samples(&src, 1), &samples(&tgt, 1)).unwrap_or_else(|e| panic!("{e}"));
        // σ_t/σ_s = 3 up to the ridge; β = μ_t − ω μ_s.
        assert!((fit.matrix[0] - 3.0).abs() < 1e-2, "ω = {}", fit.matrix[0]);
        assert!((fit.beta[0] - (5.0 - fit.matrix[0] * 2.0)).abs() < 1e-4);
    }

    #[test]
    fn equal_distributions_give_nearly_the_identity() {
        let d = 3;
        let ls = DMatrix::from_row_slice(3, 3, &[1.0, 0.0, 0.0, 0.8, 0.6, 0.0, 0.0, 0.5, 0.3]);
        let x = gaussian(500, &[1.0, 2.0, 3.0], &ls, 3);
        let fit = fit_joint("h", &samples(&x, d), &samples(&x, d)).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..d {
            for j in 0..d {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((fit.matrix[i * d + j] - want).abs() < 1e-3, "A[{i},{j}]");
            }
        }
        assert!(fit.beta.iter().all(|b| b.abs() < 1e-3), "{:?}", fit.beta);
        // No neurons: an empty map, not a panic.
        let empty = Samples::new(&[], 4, 0, Side::Source).unwrap_or_else(|e| panic!("{e}"));
        let none = fit_joint("h", &empty, &empty);
        assert!(none.is_ok_and(|f| f.matrix.is_empty()));
    }

    #[test]
    fn fewer_samples_than_neurons_give_a_bounded_map() {
        // 6 samples of 20 neurons per side, from different distributions: both sample
        // covariances are singular. Shrinkage keeps A's eigenvalues near the per-neuron
        // ratios σ_t/σ_s (here 2), not the ridge's √(v/ε) ≈ 30.
        let d = 20;
        let src = gaussian(6, &[0.0; 20], &DMatrix::identity(d, d), 6);
        let tgt = gaussian(6, &[1.0; 20], &(DMatrix::identity(d, d) * 2.0), 7);
        let fit = fit_joint("h", &samples(&src, d), &samples(&tgt, d)).unwrap_or_else(|e| panic!("{e}"));
        assert!(fit.matrix.iter().chain(&fit.beta).all(|v| v.is_finite()));
        let a = DMatrix::from_row_slice(
            d,
            d,
            &fit.matrix.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        );
        let w = SymmetricEigen::new(a).eigenvalues;
        assert!(
            w.min() > 0.0 && w.max() < 8.0,
            "eigenvalues {} … {}",
            w.min(),
            w.max()
        );
    }

    #[test]
    fn the_shrinkage_weight_is_small_with_many_samples_and_large_with_few() {
        let ls = DMatrix::from_row_slice(3, 3, &[1.0, 0.0, 0.0, 0.8, 0.6, 0.0, 0.0, 0.5, 0.3]);
        let many = gaussian(4000, &[0.0; 3], &ls, 4);
        let (_, cov, alpha) = mean_and_shrunk_covariance(&samples(&many, 3));
        assert!(alpha < 0.05, "α = {alpha}");
        // The strong correlation of neurons 0 and 1 survives.
        assert!(cov[(0, 1)] > 0.7, "{cov}");
        // 6 samples of 20 independent neurons: the sample correlations are noise.
        let d = 20;
        let few = gaussian(6, &[0.0; 20], &DMatrix::identity(d, d), 5);
        let (_, cov, alpha) = mean_and_shrunk_covariance(&samples(&few, d));
        assert!(alpha > 0.5, "α = {alpha}");
        let (_, raw) = mean_and_covariance(&samples(&few, d));
        assert_eq!(cov.diagonal(), raw.diagonal());
        assert!((cov[(0, 1)] - (1.0 - alpha) * raw[(0, 1)]).abs() < 1e-12);
    }
}
