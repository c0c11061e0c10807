//! Safetensors files as PyTorch writes them (with the `format: pt` metadata).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

/// Saves `tensors` as safetensors with the `{"format": "pt"}` metadata that files written by
/// PyTorch carry (transformers refuses files without it).
pub fn save_pt_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> anyhow::Result<()> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors.iter(), Some(meta), path)?;
    Ok(())
}
