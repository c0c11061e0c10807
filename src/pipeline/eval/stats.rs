//! Small-sample statistics for rates measured on generations: Wilson score intervals and the
//! one-sided two-proportion z-test, so sweeps report intervals and tests assert only what the
//! counts support (never a bare "≤" between two counts of a few events).

/// `k` successes out of `n` trials (e.g. toxic continuations out of all continuations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proportion {
    /// Successes.
    pub k: usize,
    /// Trials.
    pub n: usize,
}

impl Proportion {
    /// `k` of `n`.
    pub fn new(k: usize, n: usize) -> Self {
        Self { k: k.min(n), n }
    }

    /// Counts the items of `xs` for which `f` holds.
    pub fn count<T>(xs: &[T], f: impl Fn(&T) -> bool) -> Self {
        Self::new(xs.iter().filter(|x| f(x)).count(), xs.len())
    }

    /// `k / n` (0 for no trials).
    pub fn rate(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.k as f64 / self.n as f64
        }
    }

    /// The Wilson score interval at normal quantile `z` (1.96 for 95 %): `(0, 1)` for no
    /// trials. Unlike the normal (Wald) interval it stays inside [0, 1] and keeps its coverage
    /// for rates near 0 or 1 and for small `n` (Wilson 1927; Brown, Cai & DasGupta 2001).
    pub fn wilson(&self, z: f64) -> (f64, f64) {
        if self.n == 0 {
            return (0.0, 1.0);
        }
        let n = self.n as f64;
        let p = self.rate();
        let z2 = z * z;
        let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
        let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
        ((centre - half).max(0.0), (centre + half).min(1.0))
    }

    /// The 95 % Wilson interval.
    pub fn wilson95(&self) -> (f64, f64) {
        self.wilson(1.959_963_984_540_054)
    }
}

/// One-sided p-value of the pooled two-proportion z-test for "`a`'s rate is greater than
/// `b`'s": `P(Z ≥ z)` with `z = (p_a − p_b) / sqrt(p(1−p)(1/n_a + 1/n_b))`, `p` the pooled rate.
/// 1 when either side has no trials; 0.5 when both rates are 0 or both 1 (no evidence either way).
pub fn p_greater(a: Proportion, b: Proportion) -> f64 {
    if a.n == 0 || b.n == 0 {
        return 1.0;
    }
    let (na, nb) = (a.n as f64, b.n as f64);
    let pooled = (a.k + b.k) as f64 / (na + nb);
    let se = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    if se == 0.0 {
        return 0.5;
    }
    let z = (a.rate() - b.rate()) / se;
    normal_upper_tail(z)
}

/// `P(Z ≥ z)` for a standard normal `Z`.
pub fn normal_upper_tail(z: f64) -> f64 {
    0.5 * crate::transport::stats::erfc(z / std::f64::consts::SQRT_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_tail_matches_known_quantiles() {
        // Φ̄(0) = 0.5, Φ̄(1.959964) = 0.025, Φ̄(2.3263) = 0.01, Φ̄(−1) = 0.8413447.
        for (z, want) in [
            (0.0, 0.5),
            (1.959_964, 0.025),
            (2.326_348, 0.01),
            (-1.0, 0.841_344_7),
            (4.0, 3.167_12e-5),
        ] {
            let got = normal_upper_tail(z);
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1e-3),
                "Φ̄({z}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn wilson_interval_matches_a_worked_example_and_stays_in_range() {
        // 10 of 100 at 95 %: (0.0552, 0.1744) (Newcombe 1998, Table I method 3 style check).
        let (lo, hi) = Proportion::new(10, 100).wilson95();
        assert!(
            (lo - 0.055_2).abs() < 5e-4 && (hi - 0.174_4).abs() < 5e-4,
            "{lo} {hi}"
        );
        let (lo, hi) = Proportion::new(0, 20).wilson95();
        assert_eq!(lo, 0.0);
        assert!(hi > 0.1 && hi < 0.2, "{hi}");
        assert_eq!(Proportion::new(0, 0).wilson95(), (0.0, 1.0));
        let (lo, hi) = Proportion::new(30, 30).wilson95();
        assert!(lo > 0.85 && hi > 0.999_999 && hi <= 1.0, "{lo} {hi}");
    }

    #[test]
    fn two_proportion_test_separates_real_gaps_from_noise() {
        // 3 vs 6 of 88 (the counts of an old flaky test): nowhere near significant.
        let p = p_greater(Proportion::new(6, 88), Proportion::new(3, 88));
        assert!(p > 0.1, "{p}");
        // 30 % vs 10 % of 200 each: z ≈ 5.0.
        let p = p_greater(Proportion::new(60, 200), Proportion::new(20, 200));
        assert!(p < 1e-5, "{p}");
        // The direction matters.
        assert!(p_greater(Proportion::new(20, 200), Proportion::new(60, 200)) > 0.999);
        assert_eq!(p_greater(Proportion::new(0, 10), Proportion::new(0, 10)), 0.5);
        assert_eq!(p_greater(Proportion::new(1, 0), Proportion::new(0, 10)), 1.0);
    }
}
