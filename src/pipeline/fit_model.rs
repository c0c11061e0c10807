//! Fitting transport maps on a model from source and target texts: causal estimation in one
//! forward pass over the data (DESIGN.md §4), or the simultaneous mode.
//!
//! Causal: the maps of layer k are fitted on activations computed with the maps of earlier
//! hook points already applied (λ = 1). Instead of re-running the data once per hook point,
//! all samples go through the model together; at each hook point, in forward order, the
//! activations are pooled, the map is fitted, applied at λ = 1 to the live activations (every
//! sample, every token), and the forward pass continues. One pass over the data in all.
//! Simultaneous: every map is fitted on the unsteered activations of one pass.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::runtime::linear::MatPath;
use crate::runtime::llama::LogitsMode;
use crate::runtime::{Activation, HookFlow, HookPoint, Hooks, LoadedModel, RuntimeError};
use crate::transport::{FitConfig, HookMap, Samples, Side, fit_hook};

use super::collect::{CollectOptions, PaddedBatch, collect};
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

/// Why fitting failed.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error("{0}")]
    Input(String),
}

/// Fits one map per hook point. With [`Estimation::Causal`] all `source.len() + target.len()`
/// samples run as one batch (memory grows with the dataset; see the module docs).
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
    match estimation {
        Estimation::Simultaneous => {
            let opts = CollectOptions {
                points: points.clone(),
                pooling,
                ..Default::default()
            };
            let src = collect(m, source, &opts, cancel, progress)?;
            let tgt = collect(m, target, &opts, cancel, progress)?;
            let mut out = Vec::with_capacity(points.len());
            for p in &points {
                let (Some(s), Some(t)) = (src.get(p), tgt.get(p)) else {
                    return Err(FitError::Input(format!("no activations recorded at {p}")));
                };
                out.push((p.name(), fit_hook(&p.name(), s.view(), t.view(), config)?));
            }
            Ok(out)
        }
        Estimation::Causal => {
            if cancel.load(Ordering::Relaxed) {
                return Err(RuntimeError::Cancelled.into());
            }
            let padded = PaddedBatch::encode(m, source.iter().chain(target), 128)?;
            let batch = padded.batch();
            let mut hooks = CausalFit {
                points: points.clone(),
                n_source: source.len(),
                pooling,
                config: *config,
                maps: Vec::new(),
                pooled: Vec::new(),
                cancel,
                progress,
            };
            let mut caches: Vec<_> = padded.valid.iter().map(|_| m.new_cache()).collect();
            m.model
                .forward(&batch, &mut caches, &mut hooks, MatPath::Dense, LogitsMode::None)?;
            if hooks.maps.len() != points.len() {
                return Err(FitError::Input(
                    "the forward pass ended before every hook point".into(),
                ));
            }
            Ok(hooks.maps)
        }
    }
}

/// The hooks of one-pass causal fitting.
struct CausalFit<'a> {
    points: Vec<HookPoint>,
    n_source: usize,
    pooling: Pooling,
    config: FitConfig,
    maps: Vec<(String, HookMap)>,
    pooled: Vec<f32>,
    cancel: &'a AtomicBool,
    progress: &'a mut (dyn FnMut(usize, usize) + Send),
}

impl Hooks for CausalFit<'_> {
    fn wants(&self, point: HookPoint) -> bool {
        self.points.binary_search(&point).is_ok()
    }

    fn on_activation(&mut self, point: HookPoint, act: Activation<'_>) -> crate::runtime::Result<HookFlow> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(RuntimeError::Cancelled);
        }
        let [b, t, d] = act.shape;
        self.pooled.clear();
        let mut one = Vec::with_capacity(d);
        for (row, &valid) in act.data.chunks_exact(t * d).zip(act.valid).take(b) {
            self.pooling.pool(&row[..valid.min(t) * d], d, &mut one);
            self.pooled.extend_from_slice(&one);
        }
        let name = point.name();
        let (src, tgt) = self.pooled.split_at(self.n_source * d);
        let hook_err = |source| RuntimeError::Hook {
            hook: name.clone(),
            source,
        };
        let s = Samples::new(src, self.n_source, d, Side::Source).map_err(hook_err)?;
        let tg = Samples::new(tgt, b - self.n_source, d, Side::Target).map_err(hook_err)?;
        let map = fit_hook(&name, s, tg, &self.config).map_err(hook_err)?;
        // Later hook points see this map applied at full strength, on every sample and token.
        map.apply_rows(act.data, 1.0);
        self.maps.push((name, map));
        (self.progress)(self.maps.len(), self.points.len());
        Ok(if self.maps.len() == self.points.len() {
            HookFlow::Stop
        } else {
            HookFlow::Continue
        })
    }
}
