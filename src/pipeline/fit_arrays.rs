//! Fitting maps from user-supplied pooled activations (no model): the maps file holds one hook
//! point named [`ARRAYS_HOOK`] and the fingerprint [`ModelFingerprint::arrays`].

use std::path::Path;

use crate::transport::{
    DatasetInfo, FitConfig, MapsError, MapsFile, MapsMeta, ModelFingerprint, TransportError, fit_hook,
};

use super::arrays::{ArrayError, LoadedArray, load_array};

/// The hook point name used for maps fitted on raw arrays.
pub const ARRAYS_HOOK: &str = "arrays";

/// Why fitting arrays failed.
#[derive(Debug, thiserror::Error)]
pub enum FitArraysError {
    #[error(transparent)]
    Array(#[from] ArrayError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// Fits `config` on two loaded arrays and returns the maps, named `concept`.
pub fn fit_loaded(
    source: &LoadedArray,
    target: &LoadedArray,
    source_name: &str,
    target_name: &str,
    config: &FitConfig,
    concept: &str,
) -> Result<MapsFile, FitArraysError> {
    let s = source.matrix.view();
    let t = target.matrix.view();
    let map = fit_hook(ARRAYS_HOOK, s, t, config)?;
    let meta = MapsMeta::new(
        concept,
        config.method,
        config.support,
        "provided",
        "arrays",
        ModelFingerprint::arrays(s.cols()),
        DatasetInfo {
            name: source_name.to_string(),
            sha256: source.sha256.clone(),
            count: s.rows(),
        },
        DatasetInfo {
            name: target_name.to_string(),
            sha256: target.sha256.clone(),
            count: t.rows(),
        },
    );
    Ok(MapsFile::new(meta, vec![(ARRAYS_HOOK.to_string(), map)])?)
}

/// Loads two array files, fits, and returns the maps (not yet saved).
pub fn fit_array_files(
    source: &Path,
    target: &Path,
    config: &FitConfig,
    concept: &str,
) -> Result<MapsFile, FitArraysError> {
    let s = load_array(source)?;
    let t = load_array(target)?;
    let name = |p: &Path| {
        p.file_name()
            .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
    };
    fit_loaded(&s, &t, &name(source), &name(target), config, concept)
}
