//! Model fingerprints: which model a maps file was fitted on.

use serde::{Deserialize, Serialize};

/// Identifies a model closely enough to refuse maps fitted on another one: its architecture,
/// sizes, and a SHA-256 of the weights file header (tensor names, shapes, dtypes and, for
/// GGUF, the metadata), computed by the runtime when it loads the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFingerprint {
    /// Architecture name, e.g. `llama`, `qwen2`, `gpt2`; `arrays` for user-supplied arrays.
    pub architecture: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of decoder layers (0 for arrays).
    pub n_layers: usize,
    /// Hex SHA-256 of the weights file header (empty for arrays).
    pub weights_header_sha256: String,
}

impl ModelFingerprint {
    /// The fingerprint of maps fitted on raw arrays of `dim` columns (no model).
    pub fn arrays(dim: usize) -> Self {
        Self {
            architecture: "arrays".to_string(),
            hidden_size: dim,
            n_layers: 0,
            weights_header_sha256: String::new(),
        }
    }

    /// Whether this is a diffusion pipeline's fingerprint (architecture `sd1`, `sd2` or `sdxl`,
    /// as the diffusion loader names its families), i.e. maps for image mode.
    pub fn is_diffusion(&self) -> bool {
        matches!(self.architecture.as_str(), "sd1" | "sd2" | "sdxl")
    }
}

impl std::fmt::Display for ModelFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hash: String = self.weights_header_sha256.chars().take(12).collect();
        write!(
            f,
            "{} (hidden {}, {} layers, weights {})",
            self.architecture,
            self.hidden_size,
            self.n_layers,
            if hash.is_empty() { "n/a" } else { &hash }
        )
    }
}
