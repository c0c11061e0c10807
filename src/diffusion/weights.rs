//! Loading one component's weights (`unet/`, `vae/`, `text_encoder/`, …) of a diffusers
//! folder into a candle `VarBuilder`, with a fingerprint of the safetensors headers.
//!
//! diffusers names the files `diffusion_pytorch_model[.fp16].safetensors` (UNet, VAE) or
//! `model[.fp16].safetensors` (text encoders), optionally sharded as
//! `…-00001-of-00002.safetensors`. The full-precision variant is preferred when both exist.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use sha2::{Digest, Sha256};

use super::error::{DiffusionError, Result};

/// A component's weights, ready for building modules.
pub struct ComponentWeights {
    /// Builder rooted at the component (tensor names as in the file).
    pub vb: VarBuilder<'static>,
    /// Hex SHA-256 over the safetensors headers (names, shapes, dtypes) and the first
    /// 64 KiB of tensor data of all files (so fine-tunes of one architecture differ).
    pub header_sha256: String,
    /// The files read.
    pub files: Vec<PathBuf>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiffusionError + '_ {
    move |source| DiffusionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The safetensors files of component folder `dir`, full precision preferred over `.fp16`.
pub fn component_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    all.sort();
    let is_fp16 = |p: &PathBuf| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains(".fp16."))
    };
    let full: Vec<PathBuf> = all.iter().filter(|p| !is_fp16(p)).cloned().collect();
    let chosen = if full.is_empty() { all } else { full };
    if chosen.is_empty() {
        return Err(DiffusionError::MissingComponent {
            folder: dir.to_path_buf(),
            what: "a .safetensors weights file".into(),
        });
    }
    Ok(chosen)
}

/// Tensor bytes at the start of each file's data that the fingerprint covers.
const DATA_SAMPLE: usize = 64 * 1024;

/// Hex SHA-256 over the headers (the JSON after the 8-byte length) of `files` and the first
/// [`DATA_SAMPLE`] bytes of tensor data after each header.
pub fn headers_sha256(files: &[PathBuf]) -> Result<String> {
    use std::io::Read;
    let mut h = Sha256::new();
    for f in files {
        let mut file = std::fs::File::open(f).map_err(io(f))?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(io(f))?;
        let n = u64::from_le_bytes(len);
        if n > 100_000_000 {
            return Err(DiffusionError::BadWeights {
                component: f.display().to_string(),
                reason: format!("safetensors header of {n} bytes"),
            });
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(io(f))?;
        h.update(&header);
        let mut sample = Vec::with_capacity(DATA_SAMPLE);
        file.take(DATA_SAMPLE as u64)
            .read_to_end(&mut sample)
            .map_err(io(f))?;
        h.update(&sample);
    }
    Ok(crate::transport::maps_file::hex(&h.finalize()))
}

/// Loads the weights of component folder `dir` in `dtype` on `device`.
pub fn load_component(dir: &Path, dtype: DType, device: &Device) -> Result<ComponentWeights> {
    if !dir.is_dir() {
        return Err(DiffusionError::MissingComponent {
            folder: dir.parent().unwrap_or(dir).to_path_buf(),
            what: format!("the folder {}", dir.display()),
        });
    }
    let files = component_files(dir)?;
    let header_sha256 = headers_sha256(&files)?;
    // SAFETY: the files are memory-mapped read-only; like every model loader that maps
    // weights, we assume they are not modified while the pipeline is loaded. safetensors
    // validates header offsets against the file length before any tensor is read.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }.map_err(|e| {
        DiffusionError::BadWeights {
            component: dir.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    Ok(ComponentWeights {
        vb,
        header_sha256,
        files,
    })
}

/// Maps a candle error raised while building `component`'s modules (a missing tensor, a
/// shape mismatch) to a clear [`DiffusionError::BadWeights`].
pub fn weights_error(component: &str) -> impl FnOnce(candle_core::Error) -> DiffusionError + '_ {
    move |e| DiffusionError::BadWeights {
        component: component.to_string(),
        reason: e.to_string(),
    }
}

/// Reads and parses a JSON config file.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| DiffusionError::BadConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
