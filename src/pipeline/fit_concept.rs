//! Fitting a text concept, the one way every edge does it: `act-studio fit`, the app's Fit
//! panel (through the worker) and scripts build a [`FitRequest`] and call [`fit_concept`].
//!
//! The request names datasets and a hook preset as the user wrote them; [`fit_concept`] reads
//! the datasets (cut to `limit`), resolves the preset on the loaded model, fits causally or
//! simultaneously ([`super::fit_model`]) and returns a ready [`MapsFile`] whose metadata records
//! the method, support, pooling, estimation, model fingerprint and both datasets (origin,
//! SHA-256 of the samples used, count).

use std::sync::atomic::AtomicBool;

use crate::runtime::LoadedModel;
use crate::transport::{DatasetInfo, FitConfig, MapsFile, MapsMeta, Method, Support};

use super::concepts::load_dataset;
use super::dataset::{Dataset, DatasetSpec};
use super::fit_error::FitError;
use super::fit_model::{Estimation, FitSamples, fit_impl};
use super::pooling::Pooling;
use super::presets::hook_points_for;

/// One text-concept fit: what to fit on, where, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct FitRequest {
    /// Concept name (the `--lambda NAME=` of its maps).
    pub name: String,
    /// Samples moved away from.
    pub source: DatasetSpec,
    /// Samples moved to.
    pub target: DatasetSpec,
    /// Use at most this many samples of each (the first ones).
    pub limit: Option<usize>,
    /// Estimator.
    pub method: Method,
    /// Hook preset (optionally with a layer range) or comma-separated hook point names
    /// ([`super::presets::hook_points_for`]).
    pub preset: String,
    /// Pooling over each sample's tokens.
    pub pooling: Pooling,
    /// Transport support (`None`: the method's default).
    pub support: Option<Support>,
    /// Causal (the paper's) or simultaneous.
    pub estimation: Estimation,
    /// Also return the pooled activations each map was fitted on (for plots).
    pub keep_samples: bool,
}

/// Progress of a fit: hook points done of all, and the layer of the last one done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FitProgress {
    /// Hook points fitted.
    pub done: usize,
    /// All hook points.
    pub total: usize,
    /// Layer of the last hook point fitted (0 before the first).
    pub layer: usize,
    /// Layers of the model.
    pub n_layers: usize,
}

/// A fitted concept.
#[derive(Debug)]
pub struct FittedConcept {
    /// The maps, with their metadata, ready to save or steer with.
    pub maps: MapsFile,
    /// Pooled activations per hook point (empty unless [`FitRequest::keep_samples`]).
    pub samples: Vec<FitSamples>,
    /// Hook points fitted.
    pub hook_points: usize,
    /// Source and target samples used.
    pub counts: (usize, usize),
}

/// Reads the datasets, fits the maps on `m` and wraps them in a [`MapsFile`].
pub fn fit_concept(
    m: &LoadedModel,
    req: &FitRequest,
    cancel: &AtomicBool,
    progress: &mut (dyn FnMut(FitProgress) + Send),
) -> Result<FittedConcept, FitError> {
    let read = |spec: &DatasetSpec| -> Result<Dataset, FitError> {
        let mut d = load_dataset(spec).map_err(|e| FitError::Input(e.to_string()))?;
        if let Some(n) = req.limit {
            d.samples.truncate(n);
        }
        Ok(d)
    };
    let (source, target) = (read(&req.source)?, read(&req.target)?);
    let n_layers = m.config().n_layers;
    let points = hook_points_for(&req.preset, m.config()).map_err(FitError::Input)?;
    let config = FitConfig {
        method: req.method,
        support: req.support.unwrap_or_else(|| req.method.default_support()),
    };
    let (maps, samples) = fit_impl(
        m,
        &source.samples,
        &target.samples,
        &points,
        req.pooling,
        &config,
        req.estimation,
        req.keep_samples,
        cancel,
        &mut |done, total| {
            let layer = points.get(done.saturating_sub(1)).map_or(0, |p| p.layer);
            progress(FitProgress {
                done,
                total,
                layer,
                n_layers,
            });
        },
    )?;
    let info = |d: &Dataset| DatasetInfo {
        name: d.origin.clone(),
        sha256: d.sha256(),
        count: d.samples.len(),
    };
    let meta = MapsMeta::new(
        &req.name,
        config.method,
        config.support,
        req.pooling.name(),
        req.estimation.name(),
        m.fingerprint.clone(),
        info(&source),
        info(&target),
    );
    let maps = MapsFile::new(meta, maps)?;
    Ok(FittedConcept {
        maps,
        samples,
        hook_points: points.len(),
        counts: (source.samples.len(), target.samples.len()),
    })
}
