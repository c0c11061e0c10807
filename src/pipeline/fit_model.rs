//! Fitting transport maps on a model from source and target texts: causal estimation in one
//! forward pass over the data (docs/ARCHITECTURE.md, "Causal fitting in one pass"), or the
//! simultaneous mode.
//!
//! Causal: the maps of layer k are fitted on activations computed with the maps of earlier
//! hook points already applied (λ = 1), in one pass over the data ([`super::causal_pass`]).
//! Simultaneous: every map is fitted on the unsteered activations of one pass.

use std::sync::atomic::AtomicBool;

use crate::runtime::{HookPoint, LoadedModel};
use crate::transport::{FitConfig, HookMap, SampleMatrix, fit_hook};

use super::causal_pass::FittedMaps;
use super::collect::{CollectOptions, collect};
use super::fit_error::FitError;
use super::pooling::Pooling;

/// How maps of different hook points depend on each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Estimation {
    /// Each map is fitted with the earlier maps applied (the paper's choice).
    #[default]
    Causal,
    /// Every map is fitted on unsteered activations.
    Simultaneous,
}

impl Estimation {
    /// The name stored in maps files.
    pub fn name(&self) -> &'static str {
        match self {
            Estimation::Causal => "causal",
            Estimation::Simultaneous => "simultaneous",
        }
    }
}

/// Fits one map per hook point. With [`Estimation::Causal`] every sample's activations at the
/// current layer are held at once (memory grows with the dataset: about
/// samples × tokens × (d + intermediate size) floats).
#[allow(clippy::too_many_arguments)]
pub fn fit_on_model(
    m: &LoadedModel,
    source: &[String],
    target: &[String],
    points: &[HookPoint],
    pooling: Pooling,
    config: &FitConfig,
    estimation: Estimation,
    cancel: &AtomicBool,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<Vec<(String, HookMap)>, FitError> {
    let (maps, _) = fit_impl(
        m, source, target, points, pooling, config, estimation, false, cancel, progress,
    )?;
    Ok(maps)
}

/// The activations one map was fitted on: source and target samples, pooled, `[n, d]` each.
#[derive(Debug, Clone)]
pub struct FitSamples {
    /// Hook point name.
    pub hook: String,
    /// Source samples.
    pub source: SampleMatrix,
    /// Target samples.
    pub target: SampleMatrix,
}

/// Why a language model refuses joint maps. Measured on SmolLM2-135M (`fit --concept football
/// --method joint-gaussian`, all-ln or post-ln): at λ = 0.5 the text is already gibberish, where
/// the per-neuron Gaussian map with the same unbounded support keeps it fluent.
pub const JOINT_ON_TEXT: &str = concat!(
    "joint-gaussian maps are for image models: a language model's maps are fitted on sentence ",
    "means but act on every token, and a d × d map fitted on means (its eigenvalues reach 6 on ",
    "SmolLM2) scrambles token activations: the text turns to gibberish at λ = 0.5. Use gaussian ",
    "or linear-act here"
);

#[allow(clippy::too_many_arguments)]
pub(super) fn fit_impl(
    m: &LoadedModel,
    source: &[String],
    target: &[String],
    points: &[HookPoint],
    pooling: Pooling,
    config: &FitConfig,
    estimation: Estimation,
    keep: bool,
    cancel: &AtomicBool,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<(FittedMaps, Vec<FitSamples>), FitError> {
    if config.method.is_joint() {
        return Err(FitError::Input(JOINT_ON_TEXT.into()));
    }
    for (side, data) in [("source", source), ("target", target)] {
        if data.len() < 2 && config.method != crate::transport::Method::ActAdd {
            return Err(FitError::Input(format!(
                "the {side} dataset has {} sample(s); fitting needs at least 2",
                data.len()
            )));
        }
    }
    let mut points = points.to_vec();
    points.sort();
    points.dedup();
    if points.is_empty() {
        return Err(FitError::Input("no hook points to fit".into()));
    }
    let have = m.hook_points();
    if let Some(p) = points.iter().find(|p| !have.contains(p)) {
        return Err(FitError::Input(format!("this model has no hook point {p}")));
    }
    match estimation {
        Estimation::Simultaneous => {
            let opts = CollectOptions {
                points: points.clone(),
                pooling,
                ..Default::default()
            };
            // Progress counts hook points: none is done until both sets are collected.
            progress(0, points.len());
            let src = collect(m, source, &opts, cancel, &mut |_, _| {})?;
            let tgt = collect(m, target, &opts, cancel, &mut |_, _| {})?;
            let mut out = Vec::with_capacity(points.len());
            let mut kept = Vec::new();
            for (k, p) in points.iter().enumerate() {
                progress(k + 1, points.len());
                let (Some(s), Some(t)) = (src.get(p), tgt.get(p)) else {
                    return Err(FitError::Input(format!("no activations recorded at {p}")));
                };
                out.push((p.name(), fit_hook(&p.name(), s.view(), t.view(), config)?));
                if keep {
                    kept.push(FitSamples {
                        hook: p.name(),
                        source: s.clone(),
                        target: t.clone(),
                    });
                }
            }
            Ok((out, kept))
        }
        Estimation::Causal => {
            let (maps, pooled) = super::causal_pass::causal_fit_keeping(
                m,
                source,
                target,
                &points,
                pooling,
                config,
                (128, super::causal_pass::CHUNK_TOKENS, keep),
                cancel,
                progress,
            )?;
            let d = m.config().hidden_size;
            let n_src = source.len();
            let kept = pooled
                .unwrap_or_default()
                .into_iter()
                .zip(&maps)
                .map(|(data, (hook, _))| {
                    let (s, t) = data.split_at(n_src * d);
                    FitSamples {
                        hook: hook.clone(),
                        source: SampleMatrix {
                            data: s.to_vec(),
                            rows: n_src,
                            cols: d,
                        },
                        target: SampleMatrix {
                            data: t.to_vec(),
                            rows: target.len(),
                            cols: d,
                        },
                    }
                })
                .collect();
            Ok((maps, kept))
        }
    }
}
