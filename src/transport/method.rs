//! The transport methods: every row of Table 1 of the AcT paper (Rodriguez et al., ICLR 2025)
//! that is not a search procedure, plus a joint Gaussian map. The paper's methods are
//! per-neuron affine maps `T(a) = ω·a + β` applied on a support; they differ in how ω and β
//! are estimated and in how λ enters. [`Method::JointGaussian`] has the same form with a
//! `d × d` matrix in place of the diagonal ω ([`super::joint`]).

use serde::{Deserialize, Serialize};

use super::error::TransportError;
use super::support::Support;

/// Default Average-Precision threshold above which Det0 treats a unit as a concept expert.
pub const DEFAULT_DET0_AP_THRESHOLD: f32 = 0.75;

/// A transport estimator.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Method {
    /// Linear-AcT: least-squares affine map between the sorted source and target samples
    /// (the 1-D optimal transport map restricted to affine maps). ω = Σãb̃/Σã², β = m_b − ω m_a.
    LinearAct,
    /// Mean-AcT: ω = 1, β = m_b − m_a, applied as an AcT interpolation on the support.
    MeanAct,
    /// Gaussian OT: ω = σ_b/σ_a, β = m_b − ω m_a (unbiased standard deviations; identity
    /// where either σ ≤ 1e-4, as the reference does).
    Gaussian,
    /// Joint Gaussian OT: the optimal transport map between Gaussians fitted to all neurons
    /// of a hook point together, `x ↦ A x + β` with a symmetric `d × d` matrix `A`
    /// ([`super::joint`]). Unbounded support only; on 4-D activations it moves the channel
    /// means (the spatial-mean rule), or each pixel's channel vector when fitted on positions.
    JointGaussian,
    /// AurA (Suau et al., 2024): ω = 1 − Gini = 1 − 2(AUROC − ½) where the neuron's AUROC as a
    /// source detector exceeds ½, else 1; β = 0. Meant for max-pooled activations.
    Aura,
    /// ITI-M / CAA: mean difference ω = 1, β = m_b − m_a, added as a + λβ everywhere.
    ItiM,
    /// ActAdd (Turner et al., 2023): β = b − a from ONE prompt pair, added as a + λβ.
    ActAdd,
    /// Det0 (Suau et al., 2022): units whose Average Precision as source detectors exceeds
    /// `ap_threshold` are set to zero (ω = 0, β = 0); other units are left alone.
    Det0 {
        /// AP above which a unit counts as an expert.
        ap_threshold: f32,
    },
}

/// How λ enters the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Application {
    /// AcT interpolation: a ↦ (1 − λ)·a + λ·(ω·a + β).
    Interpolate,
    /// Additive steering: a ↦ a + λ·β (ω is 1, so this equals the interpolation above).
    Additive,
}

impl Method {
    /// Every method, in a stable order (for menus and tests).
    pub const ALL: [Method; 8] = [
        Method::LinearAct,
        Method::MeanAct,
        Method::Gaussian,
        Method::JointGaussian,
        Method::Aura,
        Method::ItiM,
        Method::ActAdd,
        Method::Det0 {
            ap_threshold: DEFAULT_DET0_AP_THRESHOLD,
        },
    ];

    /// The command-line / file name of the method.
    pub fn name(&self) -> &'static str {
        match self {
            Method::LinearAct => "linear-act",
            Method::MeanAct => "mean-act",
            Method::Gaussian => "gaussian",
            Method::JointGaussian => "joint-gaussian",
            Method::Aura => "aura",
            Method::ItiM => "iti-m",
            Method::ActAdd => "act-add",
            Method::Det0 { .. } => "det0",
        }
    }

    /// A human label as in the paper.
    pub fn label(&self) -> &'static str {
        match self {
            Method::LinearAct => "Linear-AcT",
            Method::MeanAct => "Mean-AcT",
            Method::Gaussian => "Gaussian OT",
            Method::JointGaussian => "Joint Gaussian OT",
            Method::Aura => "AurA",
            Method::ItiM => "ITI-M / CAA",
            Method::ActAdd => "ActAdd",
            Method::Det0 { .. } => "Det0",
        }
    }

    /// How λ enters.
    pub fn application(&self) -> Application {
        match self {
            Method::ItiM | Method::ActAdd => Application::Additive,
            _ => Application::Interpolate,
        }
    }

    /// The support a method uses unless the user picks another: the transport support Q_o
    /// (strict source min < a < max) for the distribution-matching maps, everywhere for the
    /// additive, multiplicative and zeroing ones.
    pub fn default_support(&self) -> Support {
        match self {
            Method::LinearAct | Method::MeanAct | Method::Gaussian => Support::Q0_100,
            _ => Support::Unbounded,
        }
    }

    /// Whether 4-D (UNet) activations are steered through their per-channel spatial mean
    /// (Linear-AcT, joint Gaussian) rather than pixel by pixel (every other method).
    pub fn spatial_mean_rule(&self) -> bool {
        matches!(self, Method::LinearAct | Method::JointGaussian)
    }

    /// Whether the map couples neurons (a `d × d` matrix, [`super::joint`]) rather than
    /// acting on each neuron alone.
    pub fn is_joint(&self) -> bool {
        matches!(self, Method::JointGaussian)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl std::str::FromStr for Method {
    type Err = TransportError;

    /// Parses `linear-act`, `mean-act`, `gaussian`, `joint-gaussian` (alias `joint`), `aura`, `iti-m` (alias `caa`), `act-add`,
    /// `det0` (default AP threshold) or `det0:0.8`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Ok(match lower.as_str() {
            "linear-act" | "linear" | "linear-ot" => Method::LinearAct,
            "mean-act" | "mean" | "mean-ot" => Method::MeanAct,
            "gaussian" | "gaussian-ot" => Method::Gaussian,
            "joint-gaussian" | "joint" | "joint-ot" => Method::JointGaussian,
            "aura" => Method::Aura,
            "iti-m" | "iti" | "caa" => Method::ItiM,
            "act-add" | "actadd" => Method::ActAdd,
            "det0" => Method::Det0 {
                ap_threshold: DEFAULT_DET0_AP_THRESHOLD,
            },
            other => {
                let t = other
                    .strip_prefix("det0:")
                    .ok_or_else(|| TransportError::BadMethod(s.to_string()))?;
                let t = t
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|t| (0.0..=1.0).contains(t))
                    .ok_or_else(|| TransportError::BadDet0Threshold(s.to_string()))?;
                Method::Det0 { ap_threshold: t }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_and_aliases_work() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().ok(), Some(m));
        }
        assert_eq!("joint".parse::<Method>().ok(), Some(Method::JointGaussian));
        assert!(Method::JointGaussian.is_joint() && !Method::Gaussian.is_joint());
        assert!(Method::JointGaussian.spatial_mean_rule());
        assert_eq!(Method::JointGaussian.default_support(), Support::Unbounded);
        let e = "telepathy".parse::<Method>().map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("joint-gaussian"), "{e}");
    }
}
