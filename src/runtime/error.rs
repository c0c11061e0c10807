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
        RuntimeError::Backend(backend_message(&e))
    }
}

/// A candle error's message without the stack trace candle appends to it when
/// `RUST_BACKTRACE` is set: a broken file is an ordinary user error, not a crash report.
pub(crate) fn backend_message(e: &candle_core::Error) -> String {
    let text = e.to_string();
    let mut kept = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        let frame = t
            .split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if frame && line.starts_with(' ') || t == "stack backtrace:" {
            break;
        }
        kept.push(line);
    }
    kept.join("\n").trim_end().to_string()
}

/// Result alias for the runtime.
pub type Result<T> = std::result::Result<T, RuntimeError>;

#[cfg(test)]
mod tests {
    #[test]
    fn candle_backtraces_are_cut_from_messages() {
        let inner = candle_core::Error::Msg("tensor needs 8 bytes".into());
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(e.to_string().lines().count() > 1);
        assert_eq!(super::backend_message(&e), "tensor needs 8 bytes");
    }
}
