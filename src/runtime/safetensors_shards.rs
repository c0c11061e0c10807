//! The weights of a Hugging Face model folder: one `model.safetensors` or several shards
//! `model-0000i-of-0000n.safetensors`, read into memory and served as f32 tensors by name with
//! their shapes checked.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::safetensors::BufferedSafetensors;
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::Dtype;
use sha2::{Digest, Sha256};

use crate::transport::maps_file::hex;

use super::error::{Result, RuntimeError};

/// Weight dtypes the loader converts to f32.
pub const SUPPORTED_DTYPES: &str = "F32, F16, BF16";

/// All shards of a model folder.
pub struct SafetensorsShards {
    dir: PathBuf,
    shards: Vec<(PathBuf, BufferedSafetensors)>,
    /// Tensor name → index into `shards`.
    index: HashMap<String, usize>,
    header_sha256: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, reason: String) -> RuntimeError {
    RuntimeError::BadModel {
        path: path.to_path_buf(),
        reason,
    }
}

/// Whether `name` looks like `model-00001-of-00003.safetensors`.
fn is_shard_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("model-")
        .and_then(|r| r.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let Some((i, n)) = rest.split_once("-of-") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(i) && digits(n)
}

/// The weight files of a folder, sorted by name: the files `model.safetensors.index.json`
/// names when it exists, else `model.safetensors`, else every `model-*-of-*.safetensors`.
pub fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = crate::transport::regular_file::read_regular_to_string(&index).map_err(io_err(&index))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(&index, format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad(&index, "no `weight_map` object".into()))?;
        let mut files = BTreeSet::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .filter(|f| !f.contains(['/', '\\']) && *f != ".." && !f.is_empty())
                .ok_or_else(|| bad(&index, format!("tensor `{tensor}` maps to an invalid file name")))?;
            files.insert(file.to_string());
        }
        let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(bad(
                &index,
                format!("names {}, which does not exist", missing.display()),
            ));
        }
        if files.is_empty() {
            return Err(bad(&index, "`weight_map` is empty".into()));
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(is_shard_name))
        .map(|e| e.path())
        .collect();
    files.sort();
    if files.is_empty() {
        let hint = if dir.join("pytorch_model.bin").is_file() || dir.join("model.pt").is_file() {
            " (PyTorch pickles are not supported: convert the weights to safetensors)"
        } else {
            ""
        };
        return Err(bad(
            dir,
            format!("no model.safetensors or model-*-of-*.safetensors weight files{hint}"),
        ));
    }
    Ok(files)
}

/// The safetensors header of a file image: the 8-byte little-endian length and the JSON
/// header it announces.
fn header_bytes<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a [u8]> {
    let len: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad(path, "truncated safetensors file (no header length)".into()))?;
    let n = u64::from_le_bytes(len);
    usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .and_then(|end| bytes.get(..end))
        .ok_or_else(|| bad(path, format!("truncated safetensors file (header of {n} bytes)")))
}

/// Longest JSON header accepted when reading a header alone (the safetensors format's limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// The header of a safetensors file — the 8-byte little-endian length and the JSON it
/// announces — read without the tensor data: the bytes [`SafetensorsShards::header_sha256`]
/// hashes for this file.
pub fn read_header(path: &Path) -> Result<Vec<u8>> {
    crate::transport::regular_file::check_regular(path).map_err(io_err(path))?;
    let mut f = File::open(path).map_err(io_err(path))?;
    let truncated = |what: String| {
        move |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => bad(path, format!("truncated safetensors file ({what})")),
            _ => RuntimeError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        }
    };
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(truncated("no header length".into()))?;
    let n = u64::from_le_bytes(len);
    let body = usize::try_from(n)
        .ok()
        .filter(|_| n <= MAX_HEADER_LEN)
        .ok_or_else(|| {
            bad(
                path,
                format!("safetensors header of {n} bytes (at most {MAX_HEADER_LEN} accepted)"),
            )
        })?;
    let mut out = vec![0u8; 8 + body];
    out[..8].copy_from_slice(&len);
    f.read_exact(&mut out[8..])
        .map_err(truncated(format!("header of {n} bytes")))?;
    Ok(out)
}

impl SafetensorsShards {
    /// Reads every weight file of `dir` (see [`shard_files`]).
    pub fn open(dir: &Path) -> Result<Self> {
        let files = shard_files(dir)?;
        let mut h = Sha256::new();
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let bytes = crate::transport::regular_file::read_regular(&path).map_err(io_err(&path))?;
            h.update(header_bytes(&bytes, &path)?);
            let st = BufferedSafetensors::new(bytes)
                .map_err(|e| bad(&path, format!("not a valid safetensors file: {e}")))?;
            for (name, _) in st.tensors() {
                if let Some(j) = index.insert(name.clone(), i) {
                    let other = shards
                        .get(j)
                        .map(|(p, _): &(PathBuf, _)| p.display().to_string())
                        .unwrap_or_default();
                    return Err(bad(&path, format!("tensor `{name}` is also in {other}")));
                }
            }
            shards.push((path, st));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            index,
            header_sha256: hex(&h.finalize()),
        })
    }

    /// SHA-256 over the headers (8-byte length and JSON) of the shards in name order.
    pub fn header_sha256(&self) -> &str {
        &self.header_sha256
    }

    /// The weight files.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|(p, _)| p.as_path())
    }

    /// Whether a tensor exists.
    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The dtype a tensor is stored in (`None` when absent).
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        let &i = self.index.get(name)?;
        self.shards[i].1.get(name).ok().map(|v| v.dtype())
    }

    /// A tensor as f32, checking its shape and dtype.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let &i = self.index.get(name).ok_or_else(|| RuntimeError::MissingTensor {
            path: self.dir.clone(),
            name: name.to_string(),
        })?;
        let (path, st) = &self.shards[i];
        let view = st
            .get(name)
            .map_err(|e| bad(path, format!("tensor `{name}`: {e}")))?;
        if view.shape() != shape {
            return Err(RuntimeError::TensorShape {
                path: path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(bad(
                path,
                format!(
                    "tensor `{name}` has dtype {:?}; supported: {SUPPORTED_DTYPES}",
                    view.dtype()
                ),
            ));
        }
        let t = st
            .load(name, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| bad(path, format!("tensor `{name}`: {e}")))?;
        Ok(t)
    }

    /// A 1-D tensor of `len` values as a vector.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(self.tensor(name, &[len])?.to_vec1::<f32>()?)
    }
}
