//! Loading one component's weights (`unet/`, `vae/`, `text_encoder/`, …) of a diffusers
//! folder into a candle `VarBuilder`, with a fingerprint of the safetensors headers.
//!
//! diffusers names the files `diffusion_pytorch_model[.fp16].safetensors` (UNet, VAE) or
//! `model[.fp16].safetensors` (text encoders), optionally sharded as
//! `…-00001-of-00002.safetensors` with an `.index.json`. The full-precision variant is
//! preferred when both exist; other variants (`non_ema`, …) are ignored.

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

/// Shard files listed in a safetensors index (`weight_map` values), in order of first use.
fn index_shards(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let v = read_json(index)?;
    let map = v
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| DiffusionError::BadConfig {
            path: index.to_path_buf(),
            reason: "no `weight_map` object".into(),
        })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for f in map.values().filter_map(serde_json::Value::as_str) {
        let p = dir.join(f);
        if !files.contains(&p) {
            if !p.is_file() {
                return Err(DiffusionError::MissingComponent {
                    folder: dir.to_path_buf(),
                    what: format!("the shard {f} listed in {}", index.display()),
                });
            }
            files.push(p);
        }
    }
    Ok(files)
}

/// The safetensors files of component folder `dir`, resolved as diffusers does:
/// `{diffusion_pytorch_model,model}.safetensors`, else the shards of its `.index.json`, else
/// the `.fp16` variants (single file or `.index.fp16.json` shards). Other variants in the
/// folder (`non_ema`, `ema`, `bf16`, …) are ignored; a folder with none of these names but
/// exactly one `.safetensors` file uses that file.
pub fn component_files(dir: &Path) -> Result<Vec<PathBuf>> {
    const BASES: [&str; 2] = ["diffusion_pytorch_model", "model"];
    for variant in ["", ".fp16"] {
        for base in BASES {
            let single = dir.join(format!("{base}{variant}.safetensors"));
            if single.is_file() {
                return Ok(vec![single]);
            }
            let index = dir.join(format!("{base}.safetensors.index{variant}.json"));
            if index.is_file() {
                return index_shards(dir, &index);
            }
        }
    }
    let all: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    match all.len() {
        1 => Ok(all),
        0 => Err(DiffusionError::MissingComponent {
            folder: dir.to_path_buf(),
            what: "a .safetensors weights file (diffusion_pytorch_model.safetensors or model.safetensors)"
                .into(),
        }),
        _ => Err(DiffusionError::BadWeights {
            component: dir.display().to_string(),
            reason: format!(
                "{} .safetensors files but none named diffusion_pytorch_model[.fp16].safetensors or \
                 model[.fp16].safetensors (or their .index.json); keep one",
                all.len()
            ),
        }),
    }
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
    let text = crate::transport::regular_file::read_regular_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| DiffusionError::BadConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), b"x").unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn resolves_weight_files_like_diffusers() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = d.path();
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter()
                .filter_map(|f| f.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect()
        };
        touch(p, "diffusion_pytorch_model.non_ema.safetensors");
        touch(p, "diffusion_pytorch_model.fp16.safetensors");
        assert_eq!(
            names(component_files(p).unwrap_or_default()),
            ["diffusion_pytorch_model.fp16.safetensors"]
        );
        touch(p, "diffusion_pytorch_model.safetensors");
        assert_eq!(
            names(component_files(p).unwrap_or_default()),
            ["diffusion_pytorch_model.safetensors"]
        );

        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = d.path();
        for n in [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ] {
            touch(p, n);
        }
        touch(p, "model.fp16-00001-of-00001.safetensors");
        std::fs::write(
            p.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            names(component_files(p).unwrap_or_default()),
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        std::fs::write(
            p.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "gone.safetensors"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(component_files(p).is_err());

        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        touch(d.path(), "a.safetensors");
        assert_eq!(component_files(d.path()).map(|v| v.len()).unwrap_or(0), 1);
        touch(d.path(), "b.safetensors");
        assert!(component_files(d.path()).is_err());
        let empty = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(component_files(empty.path()).is_err());
    }
}
