//! Errors of the diffusion runtime (loading a diffusers folder, forward passes, sampling).

use std::path::PathBuf;

/// Errors raised while loading or running a Stable Diffusion pipeline.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The folder lacks a component the pipeline needs.
    #[error(
        "{folder}: missing {what} (a diffusers folder has model_index.json, text_encoder/, unet/, vae/, tokenizer/ and scheduler/)"
    )]
    MissingComponent { folder: PathBuf, what: String },
    /// A config file is malformed or describes something unsupported.
    #[error("{path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    /// Weights are missing or have the wrong shape.
    #[error("{component} weights: {reason}")]
    BadWeights { component: String, reason: String },
    /// The tokenizer could not be built or failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A user-supplied setting is out of range (size, steps, guidance…).
    #[error("{0}")]
    BadInput(String),
    /// A hook failed (wrong map width, non-finite activations…).
    #[error("hook `{hook}`: {reason}")]
    Hook { hook: String, reason: String },
    /// A hook asked the forward pass to stop early (used by fitting; not a failure).
    #[error("forward pass stopped by a hook")]
    Stopped,
    /// The user cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Error from the tensor backend.
    #[error("tensor backend: {0}")]
    Backend(String),
}

impl From<candle_core::Error> for DiffusionError {
    fn from(e: candle_core::Error) -> Self {
        DiffusionError::Backend(crate::runtime::error::backend_message(&e))
    }
}

/// Result alias for the diffusion runtime.
pub type Result<T> = std::result::Result<T, DiffusionError>;
