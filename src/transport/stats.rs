//! One-dimensional statistics on a neuron's samples, in f64.
//!
//! All functions take plain slices; "sorted" arguments must be sorted ascending.

/// Sorts `v` ascending (total order; inputs are checked finite before fitting).
pub fn sort(v: &mut [f64]) {
    v.sort_unstable_by(f64::total_cmp);
}

/// Arithmetic mean. Returns 0 for an empty slice.
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Unbiased (n − 1) standard deviation around `m`; 0 for fewer than two values.
pub fn std_unbiased(v: &[f64], m: f64) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let ss: f64 = v.iter().map(|x| (x - m) * (x - m)).sum();
    (ss / (v.len() - 1) as f64).sqrt()
}

/// Quantile `p ∈ [0, 1]` of sorted data with linear interpolation between order statistics
/// (position `p·(n−1)`, NumPy's and PyTorch's default "linear" rule).
pub fn quantile_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = p.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            let frac = pos - lo as f64;
            sorted[lo] + frac * (sorted[hi] - sorted[lo])
        }
    }
}

/// Resamples a sorted sample of size n to `m` values by quantiles: value `i` is the
/// quantile at `i/(m−1)` (linear interpolation), so the result is sorted, keeps the
/// minimum and maximum, and follows the empirical distribution. Used to pair source and
/// target samples of unequal size in Linear-AcT (the larger one is resampled to the
/// smaller size).
pub fn resample_sorted(sorted: &[f64], m: usize, out: &mut Vec<f64>) {
    out.clear();
    if m == 1 {
        out.push(quantile_sorted(sorted, 0.5));
        return;
    }
    out.extend((0..m).map(|i| quantile_sorted(sorted, i as f64 / (m - 1) as f64)));
}

/// Least-squares affine map between two sorted samples of equal length:
/// ω = Σ ãᵢ b̃ᵢ / Σ ãᵢ² on centred values, β = m_b − ω m_a (AcT paper, Eq. 4).
///
/// Returns `None` when the source has (numerically) zero variance: the map is then
/// undefined and callers fall back to the identity.
pub fn sorted_least_squares(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    let ma = mean(a);
    let mb = mean(b);
    let (mut sab, mut saa) = (0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let da = x - ma;
        sab += da * (y - mb);
        saa += da * da;
    }
    let var = saa / a.len().max(1) as f64;
    let scale = ma.abs().max(1.0);
    if var.sqrt() > 1e-7 * scale {
        let omega = sab / saa;
        Some((omega, mb - omega * ma))
    } else {
        None
    }
}

/// Area under the ROC curve of the neuron's value as a score separating `pos` (label 1)
/// from `neg` (label 0): the probability that a random positive exceeds a random negative,
/// ties counting one half (Mann–Whitney U / (n_pos · n_neg)). Both inputs sorted.
pub fn auroc_sorted(pos: &[f64], neg: &[f64]) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return 0.5;
    }
    // For each positive, count negatives strictly below and equal to it (two pointers).
    let (mut below, mut upto) = (0usize, 0usize);
    let mut u = 0.0f64;
    for &p in pos {
        while below < neg.len() && neg[below] < p {
            below += 1;
        }
        if upto < below {
            upto = below;
        }
        while upto < neg.len() && neg[upto] <= p {
            upto += 1;
        }
        u += below as f64 + 0.5 * (upto - below) as f64;
    }
    u / (pos.len() as f64 * neg.len() as f64)
}

/// Average precision of the neuron's value as a detector of `pos` against `neg`
/// (scikit-learn's definition: AP = Σₖ (Rₖ − Rₖ₋₁) Pₖ over distinct thresholds, from the
/// highest score down, so tied scores enter together). Both inputs sorted ascending.
pub fn average_precision_sorted(pos: &[f64], neg: &[f64]) -> f64 {
    if pos.is_empty() {
        return 0.0;
    }
    let total_pos = pos.len() as f64;
    let (mut i, mut j) = (pos.len(), neg.len());
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut ap = 0.0;
    let mut prev_recall = 0.0;
    while i > 0 || j > 0 {
        // The next (highest remaining) threshold.
        let t = match (i > 0, j > 0) {
            (true, true) => pos[i - 1].max(neg[j - 1]),
            (true, false) => pos[i - 1],
            _ => neg[j - 1],
        };
        while i > 0 && pos[i - 1] >= t {
            i -= 1;
            tp += 1;
        }
        while j > 0 && neg[j - 1] >= t {
            j -= 1;
            fp += 1;
        }
        let recall = tp as f64 / total_pos;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    ap
}

/// 1-D Wasserstein-1 distance between two sorted samples of equal length: mean |aᵢ − bᵢ|.
pub fn w1_sorted(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
}

/// The complementary error function, with fractional error below 1.2e-7 everywhere
/// (Chebyshev fit of W. J. Cody's form, as in Press et al., *Numerical Recipes*, §6.2).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_matches_numpy_linear_rule() {
        let s = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(quantile_sorted(&s, 0.0), 1.0);
        assert_eq!(quantile_sorted(&s, 1.0), 8.0);
        // numpy.quantile([1,2,4,8], 0.5) = 3.0, 0.25 -> 1.75
        assert!((quantile_sorted(&s, 0.5) - 3.0).abs() < 1e-12);
        assert!((quantile_sorted(&s, 0.25) - 1.75).abs() < 1e-12);
    }

    #[test]
    fn resample_keeps_extremes_and_order() {
        let s: Vec<f64> = (0..10).map(f64::from).collect();
        let mut out = Vec::new();
        resample_sorted(&s, 4, &mut out);
        assert_eq!(out, vec![0.0, 3.0, 6.0, 9.0]);
    }

    #[test]
    fn auroc_counts_ties_half() {
        assert_eq!(auroc_sorted(&[2.0, 3.0], &[0.0, 1.0]), 1.0);
        assert_eq!(auroc_sorted(&[0.0, 1.0], &[2.0, 3.0]), 0.0);
        assert_eq!(auroc_sorted(&[1.0], &[1.0]), 0.5);
        // pos {1,2}, neg {1,1}: pairs (1,1)=.5,(1,1)=.5,(2,1)=1,(2,1)=1 → 3/4
        assert_eq!(auroc_sorted(&[1.0, 2.0], &[1.0, 1.0]), 0.75);
    }

    #[test]
    fn average_precision_matches_sklearn() {
        // sklearn: average_precision_score([0,0,1,1],[0.1,0.4,0.35,0.8]) = 0.8333…
        let ap = average_precision_sorted(&[0.35, 0.8], &[0.1, 0.4]);
        assert!((ap - 5.0 / 6.0).abs() < 1e-12, "{ap}");
        assert_eq!(average_precision_sorted(&[2.0, 3.0], &[0.0, 1.0]), 1.0);
        // All tied: precision = prevalence.
        assert_eq!(average_precision_sorted(&[1.0], &[1.0, 1.0, 1.0]), 0.25);
    }

    #[test]
    fn least_squares_refuses_constant_source() {
        assert!(sorted_least_squares(&[3.0, 3.0, 3.0], &[1.0, 2.0, 3.0]).is_none());
        let (w, b) = sorted_least_squares(&[1.0, 2.0, 3.0], &[3.0, 5.0, 7.0]).unwrap_or((0.0, 0.0));
        assert!((w - 2.0).abs() < 1e-12 && (b - 1.0).abs() < 1e-12);
    }
}
