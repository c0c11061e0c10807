//! Transport supports: the interval of activation values a map acts on.
//!
//! Under a quantile support, an activation `a` of neuron `j` is transported only when
//! `lo_j < a < hi_j` strictly, where `lo_j`, `hi_j` are quantiles of the source sample
//! (linear interpolation). `Q0_100` is the paper's Q_o: the source minimum and maximum
//! themselves are *not* transported. `Unbounded` (Q_∞) transports everything, which the paper
//! uses for concept induction.

use serde::{Deserialize, Serialize};

use super::error::TransportError;
use super::stats::quantile_sorted;

/// A transport support.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Support {
    /// Every finite value is transported (Q_∞).
    Unbounded,
    /// Values strictly between the `lo`-th and `hi`-th percentile of the source sample.
    Quantile {
        /// Lower percentile in [0, 100).
        lo: f32,
        /// Upper percentile in (lo, 100].
        hi: f32,
    },
}

impl Support {
    /// The paper's Q_o: strictly between the source minimum and maximum.
    pub const Q0_100: Support = Support::Quantile { lo: 0.0, hi: 100.0 };

    /// The nine quantile pairs offered in menus (as in the reference implementation),
    /// followed by `Unbounded`.
    pub const OFFERED: [Support; 10] = [
        Support::Quantile { lo: 0.0, hi: 100.0 },
        Support::Quantile { lo: 0.5, hi: 99.5 },
        Support::Quantile { lo: 1.0, hi: 99.0 },
        Support::Quantile { lo: 2.0, hi: 98.0 },
        Support::Quantile { lo: 5.0, hi: 95.0 },
        Support::Quantile { lo: 10.0, hi: 90.0 },
        Support::Quantile { lo: 20.0, hi: 80.0 },
        Support::Quantile { lo: 30.0, hi: 70.0 },
        Support::Quantile { lo: 40.0, hi: 60.0 },
        Support::Unbounded,
    ];

    /// A quantile support, checked: `0 ≤ lo < hi ≤ 100`.
    pub fn quantile(lo: f32, hi: f32) -> Result<Self, TransportError> {
        if lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo < hi && hi <= 100.0 {
            Ok(Support::Quantile { lo, hi })
        } else {
            Err(TransportError::BadSupport(format!("q{lo}-{hi}")))
        }
    }

    /// The support bounds `(lo, hi)` for one neuron from its sorted source sample.
    pub fn bounds(&self, sorted_source: &[f64]) -> (f32, f32) {
        match *self {
            Support::Unbounded => (f32::NEG_INFINITY, f32::INFINITY),
            Support::Quantile { lo, hi } => (
                quantile_sorted(sorted_source, f64::from(lo) / 100.0) as f32,
                quantile_sorted(sorted_source, f64::from(hi) / 100.0) as f32,
            ),
        }
    }
}

impl std::fmt::Display for Support {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Support::Unbounded => f.write_str("unbounded"),
            Support::Quantile { lo, hi } => write!(f, "q{lo}-{hi}"),
        }
    }
}

impl std::str::FromStr for Support {
    type Err = TransportError;

    /// Parses `unbounded` (also `q-all`, `inf`) or `qLO-HI` such as `q0-100`, `q0.5-99.5`,
    /// `q5-95` (also written `q_5_95`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        if matches!(
            t.as_str(),
            "unbounded" | "q-all" | "q_all" | "qall" | "inf" | "q-inf"
        ) {
            return Ok(Support::Unbounded);
        }
        let bad = || TransportError::BadSupport(s.to_string());
        let body = t.strip_prefix('q').ok_or_else(bad)?;
        let body = body.strip_prefix('_').unwrap_or(body);
        let (lo, hi) = body.split_once(['-', '_', '/']).ok_or_else(bad)?;
        let lo: f32 = lo.parse().map_err(|_| bad())?;
        let hi: f32 = hi.parse().map_err(|_| bad())?;
        Support::quantile(lo, hi).map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_offered_support() {
        for s in Support::OFFERED {
            let text = s.to_string();
            assert_eq!(text.parse::<Support>().ok(), Some(s), "{text}");
        }
        assert_eq!(
            "q_5_95".parse::<Support>().ok(),
            Some(Support::Quantile { lo: 5.0, hi: 95.0 })
        );
        assert!("q95-5".parse::<Support>().is_err());
        assert!("q0-101".parse::<Support>().is_err());
        assert!("everything".parse::<Support>().is_err());
    }
}
