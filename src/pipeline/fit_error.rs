//! Why fitting a text concept failed (used by [`super::fit_model`], [`super::causal_pass`]
//! and [`super::fit_concept`]).

use crate::runtime::RuntimeError;

/// Why fitting failed.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error(transparent)]
    Maps(#[from] crate::transport::MapsError),
    #[error("{0}")]
    Input(String),
}
