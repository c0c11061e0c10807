//! Errors of the runtime (model loading, tokenisation, forward passes, generation).

use std::path::PathBuf;

/// Errors raised by the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    #[error("{path}: unsupported architecture `{arch}` (supported: {supported})")]
    UnsupportedArch {
        path: PathBuf,
        arch: String,
        supported: &'static str,
    },
    #[error("{path}: missing metadata `{key}`")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: {reason}")]
    BadModel { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("input: {0}")]
    BadInput(String),
    #[error("hook `{hook}`: {source}")]
    Hook {
        hook: String,
        source: crate::transport::TransportError,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("tensor backend: {0}")]
    Backend(String),
}

impl From<candle_core::Error> for RuntimeError {
    fn from(e: candle_core::Error) -> Self {
        RuntimeError::Backend(e.to_string())
    }
}

/// Result alias for the runtime.
pub type Result<T> = std::result::Result<T, RuntimeError>;
