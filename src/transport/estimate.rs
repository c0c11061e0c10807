//! Estimators: from pooled source and target samples `[n, d]` to a [`HookMap`].
//!
//! Every neuron is fitted independently (the paper's "independent marginals" assumption), in
//! f64, and stored in f32. Neurons are spread over the rayon pool. The joint Gaussian method
//! fits all neurons together ([`super::joint`]) and keeps the per-neuron statistics as
//! diagnostics.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::error::{Side, TransportError};
use super::hook_map::{HookMap, apply_joint, diag, transport_one};
use super::method::Method;
use super::samples::Samples;
use super::stats;
use super::support::Support;

/// What to fit: the estimator and the support its map acts on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitConfig {
    /// The transport estimator.
    pub method: Method,
    /// The support; [`Method::default_support`] unless the user chose another.
    pub support: Support,
}

impl FitConfig {
    /// `method` with its default support.
    pub fn new(method: Method) -> Self {
        Self {
            method,
            support: method.default_support(),
        }
    }
}

/// One neuron's fit.
#[derive(Debug, Clone, Copy, Default)]
struct NeuronFit {
    omega: f32,
    beta: f32,
    lo: f32,
    hi: f32,
    src_mean: f32,
    src_std: f32,
    tgt_mean: f32,
    tgt_std: f32,
    w1_before: f32,
    w1_after: f32,
    score: f32,
}

/// Scratch buffers reused across the neurons one rayon task fits.
#[derive(Default)]
struct Scratch {
    col: Vec<f32>,
    a: Vec<f64>,
    b: Vec<f64>,
    ra: Vec<f64>,
    rb: Vec<f64>,
    moved: Vec<f64>,
}

/// Fits a map for one hook point from `source` and `target` samples (rows = samples,
/// columns = neurons, same number of columns).
///
/// Sample counts may differ: where an estimator pairs order statistics (Linear-AcT, the W1
/// diagnostics) the larger sorted sample is resampled to the smaller size by quantiles with
/// linear interpolation ([`stats::resample_sorted`]); mean/std/AUROC/AP use all samples.
///
/// Errors: empty sides, differing neuron counts, any NaN/±inf (naming hook, side, neuron and
/// row), and ActAdd without exactly one pair.
pub fn fit_hook(
    hook: &str,
    source: Samples<'_>,
    target: Samples<'_>,
    config: &FitConfig,
) -> Result<HookMap, TransportError> {
    for (side, s) in [(Side::Source, &source), (Side::Target, &target)] {
        if s.rows() == 0 {
            return Err(TransportError::Empty {
                side,
                hook: hook.to_string(),
            });
        }
        if let Some((row, neuron, value)) = s.first_non_finite() {
            return Err(TransportError::NonFinite {
                hook: hook.to_string(),
                side,
                neuron,
                row,
                value,
            });
        }
    }
    if source.cols() != target.cols() {
        return Err(TransportError::DimMismatch {
            hook: hook.to_string(),
            source_dim: source.cols(),
            target_dim: target.cols(),
        });
    }
    if config.method.is_joint() && config.support != Support::Unbounded {
        return Err(TransportError::JointNeedsUnbounded(config.support.to_string()));
    }
    if config.method == Method::ActAdd && (source.rows() != 1 || target.rows() != 1) {
        return Err(TransportError::ActAddNeedsOnePair {
            source_rows: source.rows(),
            target_rows: target.rows(),
        });
    }

    let mut fits: Vec<NeuronFit> = (0..source.cols())
        .into_par_iter()
        .with_min_len(16)
        .map_init(Scratch::default, |s, j| {
            fit_neuron(j, &source, &target, config, s)
        })
        .collect();

    let joint = if config.method.is_joint() {
        let fit = super::joint::fit_joint(hook, &source, &target)?;
        let w1_after = joint_w1_after(&fit, &source, &target)?;
        fits.iter_mut().zip(w1_after).for_each(|(f, w)| f.w1_after = w);
        Some(fit)
    } else {
        None
    };
    let pick = |f: fn(&NeuronFit) -> f32| fits.iter().map(f).collect::<Vec<f32>>();
    let mut diagnostics = BTreeMap::new();
    diagnostics.insert(diag::SRC_MEAN.to_string(), pick(|f| f.src_mean));
    diagnostics.insert(diag::SRC_STD.to_string(), pick(|f| f.src_std));
    diagnostics.insert(diag::TGT_MEAN.to_string(), pick(|f| f.tgt_mean));
    diagnostics.insert(diag::TGT_STD.to_string(), pick(|f| f.tgt_std));
    diagnostics.insert(diag::W1_BEFORE.to_string(), pick(|f| f.w1_before));
    diagnostics.insert(diag::W1_AFTER.to_string(), pick(|f| f.w1_after));
    match config.method {
        Method::Aura => {
            diagnostics.insert(diag::AUROC.to_string(), pick(|f| f.score));
        }
        Method::Det0 { .. } => {
            diagnostics.insert(diag::AP.to_string(), pick(|f| f.score));
        }
        _ => {}
    }
    let dim_error = |_| TransportError::DimMismatch {
        hook: hook.to_string(),
        source_dim: source.cols(),
        target_dim: target.cols(),
    };
    if let Some(fit) = joint {
        return HookMap::joint(config.method, fit.matrix, fit.beta, diagnostics).map_err(dim_error);
    }
    HookMap::new(
        config.method,
        config.support,
        pick(|f| f.omega),
        pick(|f| f.beta),
        pick(|f| f.lo),
        pick(|f| f.hi),
        diagnostics,
    )
    .map_err(dim_error)
}

/// Per-neuron W1 between the source moved by a joint map (λ = 1) and the target.
fn joint_w1_after(
    fit: &super::joint::JointFit,
    source: &Samples<'_>,
    target: &Samples<'_>,
) -> Result<Vec<f32>, TransportError> {
    let d = source.cols();
    let mut moved = source.data().to_vec();
    let mut y = vec![0.0f32; d];
    for row in moved.chunks_exact_mut(d.max(1)) {
        apply_joint(row, &fit.matrix, &fit.beta, 1.0, &mut y);
    }
    let moved = Samples::new(&moved, source.rows(), d, Side::Source)?;
    Ok((0..d)
        .into_par_iter()
        .with_min_len(16)
        .map_init(Scratch::default, |s, j| {
            sorted_column(&moved, j, &mut s.col, &mut s.a);
            sorted_column(target, j, &mut s.col, &mut s.b);
            let (pa, pb) = paired(&s.a, &s.b, &mut s.ra, &mut s.rb);
            stats::w1_sorted(pa, pb) as f32
        })
        .collect())
}

/// Loads column `j` of `m`, sorted, as f64 into `out`.
fn sorted_column(m: &Samples<'_>, j: usize, col: &mut Vec<f32>, out: &mut Vec<f64>) {
    m.column_into(j, col);
    col.sort_unstable_by(f32::total_cmp);
    out.clear();
    out.extend(col.iter().map(|&v| f64::from(v)));
}

/// Pairs two sorted samples at equal length (resampling the larger by quantiles) and returns
/// the paired slices.
fn paired<'s>(
    a: &'s [f64],
    b: &'s [f64],
    ra: &'s mut Vec<f64>,
    rb: &'s mut Vec<f64>,
) -> (&'s [f64], &'s [f64]) {
    use std::cmp::Ordering;
    match a.len().cmp(&b.len()) {
        Ordering::Equal => (a, b),
        Ordering::Greater => {
            stats::resample_sorted(a, b.len(), ra);
            (ra.as_slice(), b)
        }
        Ordering::Less => {
            stats::resample_sorted(b, a.len(), rb);
            (a, rb.as_slice())
        }
    }
}

fn fit_neuron(
    j: usize,
    source: &Samples<'_>,
    target: &Samples<'_>,
    config: &FitConfig,
    s: &mut Scratch,
) -> NeuronFit {
    sorted_column(source, j, &mut s.col, &mut s.a);
    sorted_column(target, j, &mut s.col, &mut s.b);
    let (a, b) = (&s.a, &s.b);
    let (ma, mb) = (stats::mean(a), stats::mean(b));
    let (sa, sb) = (stats::std_unbiased(a, ma), stats::std_unbiased(b, mb));
    let (lo, hi) = config.support.bounds(a);

    let mut score = 0.0f64;
    let (omega, beta) = match config.method {
        Method::LinearAct => {
            let (pa, pb) = paired(a, b, &mut s.ra, &mut s.rb);
            stats::sorted_least_squares(pa, pb).unwrap_or((1.0, 0.0))
        }
        Method::MeanAct | Method::ItiM => (1.0, mb - ma),
        // Fitted jointly in `fit_hook`; the per-neuron fit only records the statistics.
        Method::JointGaussian => (1.0, 0.0),
        Method::Gaussian => {
            // The reference leaves neurons with a (near-)constant side untouched.
            if sa > 1e-4 && sb > 1e-4 {
                let w = sb / sa;
                (w, mb - w * ma)
            } else {
                (1.0, 0.0)
            }
        }
        Method::Aura => {
            score = stats::auroc_sorted(a, b);
            let alpha = if score > 0.5 {
                1.0 - 2.0 * (score - 0.5)
            } else {
                1.0
            };
            (alpha, 0.0)
        }
        Method::ActAdd => (1.0, b[0] - a[0]),
        Method::Det0 { ap_threshold } => {
            score = stats::average_precision_sorted(a, b);
            if score > f64::from(ap_threshold) {
                (0.0, 0.0)
            } else {
                (1.0, 0.0)
            }
        }
    };
    let (omega, beta) = (omega as f32, beta as f32);

    // W1 before and after transport at λ = 1, on equal-size order statistics.
    s.moved.clear();
    s.moved.extend(
        a.iter()
            .map(|&v| f64::from(transport_one(v as f32, omega, beta, lo, hi, 1.0))),
    );
    stats::sort(&mut s.moved);
    let (w1_before, w1_after) = {
        let (pa, pb) = paired(a, b, &mut s.ra, &mut s.rb);
        let before = stats::w1_sorted(pa, pb);
        let (pm, pb2) = paired(&s.moved, b, &mut s.ra, &mut s.rb);
        (before, stats::w1_sorted(pm, pb2))
    };

    NeuronFit {
        omega,
        beta,
        lo,
        hi,
        src_mean: ma as f32,
        src_std: sa as f32,
        tgt_mean: mb as f32,
        tgt_std: sb as f32,
        w1_before: w1_before as f32,
        w1_after: w1_after as f32,
        score: score as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Side;

    #[test]
    fn a_joint_fit_refuses_a_support_and_carries_the_correlation() {
        // Two uncorrelated source neurons; the target is the source rotated by 45°, so its
        // neurons are correlated (0.72): no per-neuron map can
        // create that correlation, the joint one must.
        let src: Vec<f32> = (0..400)
            .flat_map(|i| {
                // A full 20 × 20 grid: exactly uncorrelated, variances 8.3 and 1.3.
                let (u, v) = ((i % 20) as f32 - 9.5, (i / 20) as f32 * 0.2 - 1.9);
                [u * 0.5, v]
            })
            .collect();
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let tgt: Vec<f32> = src
            .chunks(2)
            .flat_map(|r| [h * (r[0] - r[1]), h * (r[0] + r[1])])
            .collect();
        let s = Samples::new(&src, 400, 2, Side::Source).unwrap_or_else(|e| panic!("{e}"));
        let t = Samples::new(&tgt, 400, 2, Side::Target).unwrap_or_else(|e| panic!("{e}"));
        let cfg = FitConfig::new(Method::JointGaussian);
        assert_eq!(cfg.support, Support::Unbounded);
        let bad = FitConfig {
            support: Support::Q0_100,
            ..cfg
        };
        assert!(matches!(
            fit_hook("h", s, t, &bad),
            Err(TransportError::JointNeedsUnbounded(_))
        ));
        let m = fit_hook("h", s, t, &cfg).unwrap_or_else(|e| panic!("{e}"));
        let mut moved = src.clone();
        m.apply_rows(&mut moved, 1.0);
        let corr = |x: &[f32]| {
            let n = (x.len() / 2) as f64;
            let (ma, mb) = x.chunks(2).fold((0.0, 0.0), |(a, b), r| {
                (a + f64::from(r[0]) / n, b + f64::from(r[1]) / n)
            });
            let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
            for r in x.chunks(2) {
                let (a, b) = (f64::from(r[0]) - ma, f64::from(r[1]) - mb);
                sab += a * b;
                saa += a * a;
                sbb += b * b;
            }
            sab / (saa * sbb).sqrt()
        };
        let (c_src, c_tgt, c_moved) = (corr(&src), corr(&tgt), corr(&moved));
        assert!(c_src.abs() < 0.1 && c_tgt.abs() > 0.5, "{c_src} {c_tgt}");
        assert!(
            (c_moved - c_tgt).abs() < 0.05,
            "moved correlation {c_moved}, target {c_tgt}"
        );
        let d = m.diagnostics();
        for (j, (before, after)) in d[diag::W1_BEFORE].iter().zip(&d[diag::W1_AFTER]).enumerate() {
            assert!(*after < 0.5 * before, "neuron {j}: W1 {before} → {after}");
        }
    }
}
