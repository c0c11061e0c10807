//! Opening a model file or folder: a `.gguf` file through [`super::gguf`], a Hugging Face
//! folder through [`super::hf`]; both give a [`LoadedModel`].

use std::path::Path;

use super::error::Result;
use super::gguf::GgufFile;
use super::hf::HfFolder;
use super::model::LoadedModel;

impl LoadedModel {
    /// Loads a `.gguf` file, or a Hugging Face model folder (`config.json`, safetensors
    /// weights, `tokenizer.json`).
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return HfFolder::open(path)?.load();
        }
        let mut f = GgufFile::open(path)?;
        // The tokenizer first: the header's vocabulary arrays (Gemma's 262k tokens: ~80 MB as
        // parsed values) are then dropped before the weights arrive.
        let tokenizer = f.tokenizer()?;
        f.forget_tokenizer_metadata();
        let model = f.load_network()?;
        let fingerprint = f.fingerprint(model.cfg())?;
        Ok(Self {
            model,
            tokenizer,
            fingerprint,
            source: path.to_path_buf(),
        })
    }
}
