//! A loaded model: weights, tokenizer and fingerprint, from a path.

use std::path::{Path, PathBuf};

use crate::transport::ModelFingerprint;

use super::config::ModelConfig;
use super::error::{Result, RuntimeError};
use super::gguf::GgufFile;
use super::hooks::{HookKind, HookPoint};
use super::kv_cache::KvCache;
use super::llama::LlamaModel;
use super::tokenizer::TextTokenizer;

/// A model ready to run.
pub struct LoadedModel {
    /// The network.
    pub model: LlamaModel,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Identity for maps files.
    pub fingerprint: ModelFingerprint,
    /// Where it was loaded from.
    pub source: PathBuf,
}

impl LoadedModel {
    /// Loads a `.gguf` file.
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let reason = if path.join("config.json").is_file() {
                "Hugging Face folders are not supported yet; open a .gguf file"
            } else {
                "this folder has no config.json: open a .gguf file or a Hugging Face model folder"
            };
            return Err(RuntimeError::BadModel {
                path: path.to_path_buf(),
                reason: reason.into(),
            });
        }
        let mut f = GgufFile::open(path)?;
        let model = f.load_llama()?;
        let tokenizer = f.tokenizer()?;
        let fingerprint = f.fingerprint(&model.cfg)?;
        Ok(Self {
            model,
            tokenizer,
            fingerprint,
            source: path.to_path_buf(),
        })
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.model.cfg
    }

    /// The hook points this model has, in forward order.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        let kinds = [
            HookKind::AttnNorm,
            HookKind::AttnOut,
            HookKind::MlpNorm,
            HookKind::MlpOut,
            HookKind::Resid,
        ];
        (0..self.config().n_layers)
            .flat_map(|layer| kinds.iter().map(move |&kind| HookPoint { layer, kind }))
            .collect()
    }

    /// A fresh cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config().n_layers)
    }
}
