//! Quantizing a GGUF model into one of llama.cpp's usual types (`q4_k_m`, `q8_0`, …), the one
//! way every edge does it: `act-studio quantize` builds a [`QuantizeRequest`] and calls
//! [`quantize_model`] (docs/ARCHITECTURE.md, "Layers").
//!
//! **Tensors.** Which type each tensor gets is llama.cpp's rule (`runtime::quant_mix`,
//! after `llama_tensor_get_type`). A tensor the rule quantizes is dequantized
//! (`QTensor::dequantize`) and quantized again (`QTensor::quantize`), unless it already has its
//! target type: then its bytes are copied, as llama.cpp does. Tensors the rule leaves alone
//! (1-D norms and biases) are copied byte for byte, in their own type (F32 in llama.cpp's
//! files). Tensors keep the input file's order.
//!
//! **Metadata.** Every key/value is copied in the input's order with its GGUF type, except:
//! `general.file_type` (u32) becomes llama.cpp's `LLAMA_FTYPE` number of the type and
//! `general.quantization_version` (u32) becomes 2 (both added at the end when absent, as
//! llama.cpp sets them); `general.alignment`, when present, becomes 32 (u32), the alignment
//! candle's writer uses; the `split.*` keys are dropped (llama.cpp drops them too: the output
//! is one file) and so are `quantize.imatrix.*` (no importance matrix was used for this
//! quantization, whatever the input's said; llama.cpp would keep stale ones).
//!
//! **File.** candle's `gguf_file::write`: GGUF version 2 (llama.cpp reads 2 and 3), tensor
//! data 32-byte aligned, each tensor's offset the padded end of the previous one (what
//! llama.cpp's reader checks). It takes every tensor at once, so the whole output is held in
//! memory until written (plus one dequantized f32 tensor per worker thread). The file goes to
//! a temporary file in the output's folder, renamed into place once complete: an error or a
//! cancel leaves no partial output. Known limit of that writer: an empty array is written with
//! element type u32, whatever its type was.
//!
//! Requantizing an already quantized model adds its rounding to the input's (llama.cpp asks
//! for `--allow-requantize` before doing it); an F16/BF16/F32 input gives the best file. The
//! bytes need not match `llama-quantize`'s: candle's encoders are ports of ggml's reference
//! ones, not of its optimized search.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Device;
use candle_core::quantized::gguf_file::{self, Content, TensorInfo, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use rayon::prelude::*;

use crate::runtime::quant_mix::{
    MixError, MixModel, MixTensor, QuantType, ggml_type_name, layer_of, plan_mix,
};
use crate::transport::atomic_write_with;

/// llama.cpp's `GGML_QNT_VERSION`, stored as `general.quantization_version`.
pub const GGML_QNT_VERSION: u32 = 2;

/// The tensor-data alignment of candle's GGUF writer.
const WRITER_ALIGNMENT: u32 = 32;

/// One quantization as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizeRequest {
    /// The input GGUF file.
    pub model: PathBuf,
    /// The output GGUF file (must not be the input; its folder must exist).
    pub out: PathBuf,
    /// The target type.
    pub mix: QuantType,
}

/// Progress: tensors converted so far, in no particular order (they convert in parallel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizeProgress {
    /// Tensors done.
    pub done: usize,
    /// All tensors.
    pub total: usize,
    /// The tensor just done.
    pub tensor: String,
}

/// What happened to one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorChange {
    /// GGUF name.
    pub name: String,
    /// Shape, candle's order (the last entry is the row length).
    pub shape: Vec<usize>,
    /// Type in the input.
    pub from: GgmlDType,
    /// Type in the output.
    pub to: GgmlDType,
    /// Dequantized and quantized again (false: bytes copied).
    pub requantized: bool,
    /// Bytes of its data in the output.
    pub bytes: u64,
}

/// What a quantization did.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    /// The file written.
    pub out: PathBuf,
    /// The target type.
    pub mix: QuantType,
    /// Every tensor, in file order.
    pub tensors: Vec<TensorChange>,
    /// Size of the input file.
    pub input_bytes: u64,
    /// Size of the output file.
    pub output_bytes: u64,
    /// Wall-clock seconds, reading to renaming.
    pub seconds: f64,
}

impl QuantizeReport {
    /// Tensors per output type, by ggml's type name (`q4_K`, `q8_0`, `f32`).
    pub fn type_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for t in &self.tensors {
            *counts.entry(ggml_type_name(t.to)).or_insert(0) += 1;
        }
        counts
    }

    /// Bits per weight of the tensor data (llama.cpp's "BPW").
    pub fn bits_per_weight(&self) -> f64 {
        let values: u64 = self
            .tensors
            .iter()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum();
        let bytes: u64 = self.tensors.iter().map(|t| t.bytes).sum();
        bytes as f64 * 8.0 / values.max(1) as f64
    }
}

/// Why a quantization failed. None leaves an output file behind.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: not a valid GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("the output {out} is the input model itself: write the new file elsewhere")]
    SameFile { out: PathBuf },
    #[error(transparent)]
    Mix(#[from] MixError),
    #[error("tensor `{name}`: {reason}")]
    Tensor { name: String, reason: String },
    #[error("writing {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
    #[error("cancelled")]
    Cancelled,
}

/// Quantizes `req.model` into `req.out` as `req.mix` (module docs: what is kept, what
/// changes). `progress` is called after each tensor (from worker threads, one at a time);
/// `cancel` stops between tensors with [`QuantizeError::Cancelled`]. Nothing is written unless
/// every tensor converted.
pub fn quantize_model(
    req: &QuantizeRequest,
    progress: &mut (dyn FnMut(QuantizeProgress) + Send),
    cancel: &AtomicBool,
) -> Result<QuantizeReport, QuantizeError> {
    let start = Instant::now();
    check_paths(req)?;
    let path = &req.model;
    let io = |error| QuantizeError::Io {
        path: path.clone(),
        error,
    };
    let bad = |reason: String| QuantizeError::BadGguf {
        path: path.clone(),
        reason,
    };
    let file = File::open(path).map_err(io)?;
    let input_bytes = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| bad(e.to_string()))?;
    let key_order =
        metadata_key_order(&mut reader).map_err(|e| bad(format!("reading the metadata keys: {e}")))?;
    drop(reader);
    if let Some(n) = content.metadata.get("split.count").and_then(as_u64)
        && n > 1
    {
        return Err(QuantizeError::Unsupported {
            path: path.clone(),
            reason: format!(
                "one part of a model split in {n} files; merge them first (llama-gguf-split --merge)"
            ),
        });
    }

    // File order (candle's reader keeps the tensors in a hash map).
    let mut tensors: Vec<(&str, &TensorInfo)> = content
        .tensor_infos
        .iter()
        .map(|(n, i)| (n.as_str(), i))
        .collect();
    tensors.sort_by_key(|&(name, info)| (info.offset, name));
    let views: Vec<MixTensor> = tensors
        .iter()
        .map(|&(name, info)| MixTensor {
            name,
            dims: info.shape.dims(),
        })
        .collect();
    let plan = plan_mix(req.mix, &mix_model(&content.metadata, &tensors), &views)?;

    let total = tensors.len();
    let progress = Mutex::new((0usize, progress));
    let converted = tensors
        .par_iter()
        .zip(plan.par_iter())
        .map(|(&(name, info), &target)| {
            if cancel.load(Ordering::Relaxed) {
                return Err(QuantizeError::Cancelled);
            }
            let out = convert(path, content.tensor_data_offset, name, info, target)?;
            let mut p = progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            p.0 += 1;
            let done = p.0;
            (p.1)(QuantizeProgress {
                done,
                total,
                tensor: name.to_string(),
            });
            Ok(out)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if cancel.load(Ordering::Relaxed) {
        return Err(QuantizeError::Cancelled);
    }

    let metadata = output_metadata(&content.metadata, &key_order, req.mix);
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let written: Vec<(&str, &QTensor)> = tensors
        .iter()
        .zip(&converted)
        .map(|(&(name, _), (q, _))| (name, q))
        .collect();
    let write_err = |error| QuantizeError::Write {
        path: req.out.clone(),
        error,
    };
    atomic_write_with(&req.out, |w| {
        gguf_file::write(w, &metadata, &written).map_err(|e| std::io::Error::other(e.to_string()))
    })
    .map_err(write_err)?;
    let output_bytes = std::fs::metadata(&req.out).map_err(write_err)?.len();

    let tensors = tensors
        .iter()
        .zip(&converted)
        .map(|(&(name, info), (q, requantized))| TensorChange {
            name: name.to_string(),
            shape: info.shape.dims().to_vec(),
            from: info.ggml_dtype,
            to: q.dtype(),
            requantized: *requantized,
            bytes: q.storage_size_in_bytes() as u64,
        })
        .collect();
    Ok(QuantizeReport {
        out: req.out.clone(),
        mix: req.mix,
        tensors,
        input_bytes,
        output_bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Refuses an output that is the input (same canonical path, or on Unix the same file through
/// a hard link), a folder, or a path whose folder does not exist, before any work.
fn check_paths(req: &QuantizeRequest) -> Result<(), QuantizeError> {
    let model = req.model.canonicalize().map_err(|error| QuantizeError::Io {
        path: req.model.clone(),
        error,
    })?;
    let write_err = |error| QuantizeError::Write {
        path: req.out.clone(),
        error,
    };
    let invalid = |what: &str| write_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, what));
    let name = req.out.file_name().ok_or_else(|| invalid("not a file name"))?;
    let dir = match req.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // The output may not exist yet: compare through its folder.
    let out = dir.canonicalize().map_err(write_err)?.join(name);
    let out = out.canonicalize().unwrap_or(out);
    if out == model || same_file(&req.model, &req.out) {
        return Err(QuantizeError::SameFile { out: req.out.clone() });
    }
    if out.is_dir() {
        return Err(invalid("is a folder"));
    }
    Ok(())
}

/// Whether two existing paths are the same file (device and inode).
#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &Path, _: &Path) -> bool {
    false
}

/// Reads one tensor and converts it to `target` (`None`, or its own type: copied as it is).
/// Returns the tensor and whether it was requantized.
fn convert(
    path: &Path,
    data_offset: u64,
    name: &str,
    info: &TensorInfo,
    target: Option<GgmlDType>,
) -> Result<(QTensor, bool), QuantizeError> {
    let fail = |e: candle_core::Error| QuantizeError::Tensor {
        name: name.to_string(),
        reason: e.to_string(),
    };
    let mut file = File::open(path).map_err(|error| QuantizeError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let q = info.read(&mut file, data_offset, &Device::Cpu).map_err(fail)?;
    match target {
        Some(t) if t != q.dtype() => {
            let values = q.dequantize(&Device::Cpu).map_err(fail)?;
            Ok((QTensor::quantize(&values, t).map_err(fail)?, true))
        }
        _ => Ok((q, false)),
    }
}

/// The facts llama.cpp's rule reads from the model (`runtime::quant_mix::MixModel`).
fn mix_model(md: &HashMap<String, Value>, tensors: &[(&str, &TensorInfo)]) -> MixModel {
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let num = |key: &str| md.get(&format!("{arch}.{key}")).and_then(as_u64);
    let n_layer = num("block_count").map_or_else(
        || {
            tensors
                .iter()
                .filter_map(|&(name, _)| layer_of(name))
                .max()
                .map_or(0, |l| l + 1)
        },
        |n| n as usize,
    );
    let n_head = num("attention.head_count");
    let n_head_kv = num("attention.head_count_kv").or(n_head);
    let is_70b = n_layer == 80
        && match arch.as_str() {
            "llama" | "mistral" => n_head.is_some() && n_head != n_head_kv,
            "qwen2" => true,
            _ => false,
        };
    MixModel {
        n_layer,
        n_expert: num("expert_count").map_or(0, |n| n as usize),
        is_70b,
        arch,
    }
}

/// A non-negative integer value of any GGUF integer type.
fn as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

/// The output's metadata, in the input's key order (module docs: what changes).
fn output_metadata(md: &HashMap<String, Value>, order: &[String], mix: QuantType) -> Vec<(String, Value)> {
    let mut seen = HashSet::new();
    let mut keys: Vec<&String> = order
        .iter()
        .filter(|k| md.contains_key(*k) && seen.insert(k.as_str()))
        .collect();
    // Keys the scan did not see (none in a well-formed file), in a stable order.
    let mut rest: Vec<&String> = md.keys().filter(|k| !seen.contains(k.as_str())).collect();
    rest.sort();
    keys.extend(rest);
    let mut out: Vec<(String, Value)> = keys
        .into_iter()
        .filter(|k| !k.starts_with("split.") && !k.starts_with("quantize.imatrix."))
        .filter_map(|k| md.get(k).map(|v| (k.clone(), v.clone())))
        .collect();
    let mut set = |key: &str, value: Value| match out.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => out.push((key.to_string(), value)),
    };
    if md.contains_key("general.alignment") {
        set("general.alignment", Value::U32(WRITER_ALIGNMENT));
    }
    set("general.quantization_version", Value::U32(GGML_QNT_VERSION));
    set("general.file_type", Value::U32(mix.llama_ftype()));
    out
}

/// The metadata keys of a GGUF header in file order (candle's reader keeps them in a hash
/// map). Keys are decoded as candle decodes them (trailing NULs dropped, lossy UTF-8), so
/// they match its map's.
fn metadata_key_order(r: &mut BufReader<File>) -> std::io::Result<Vec<String>> {
    r.seek(SeekFrom::Start(0))?;
    let _magic = read_u32(r)?;
    let wide = read_u32(r)? >= 2; // GGUF v1 has 32-bit lengths and counts
    let _tensor_count = read_len(r, wide)?;
    let kv_count = read_len(r, wide)?;
    let mut keys = Vec::new();
    for _ in 0..kv_count {
        let n = read_len(r, wide)?;
        let mut key = vec![0u8; usize::try_from(n).map_err(std::io::Error::other)?];
        r.read_exact(&mut key)?;
        while key.last() == Some(&0) {
            key.pop();
        }
        keys.push(String::from_utf8_lossy(&key).into_owned());
        let value_type = read_u32(r)?;
        skip_value(r, value_type, wide, 0)?;
    }
    Ok(keys)
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_len(r: &mut impl Read, wide: bool) -> std::io::Result<u64> {
    if wide {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    } else {
        read_u32(r).map(u64::from)
    }
}

/// Skips one metadata value of GGUF type `value_type`.
fn skip_value(r: &mut BufReader<File>, value_type: u32, wide: bool, depth: usize) -> std::io::Result<()> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let skip = |r: &mut BufReader<File>, n: u64| -> std::io::Result<()> {
        let n = i64::try_from(n).map_err(|_| bad(format!("a value of {n} bytes")))?;
        r.seek_relative(n)
    };
    match value_type {
        // u8, i8, bool; u16, i16; u32, i32, f32; u64, i64, f64
        0 | 1 | 7 => skip(r, 1),
        2 | 3 => skip(r, 2),
        4..=6 => skip(r, 4),
        10..=12 => skip(r, 8),
        8 => {
            let n = read_len(r, wide)?;
            skip(r, n)
        }
        9 => {
            if depth > 64 {
                return Err(bad("arrays nested too deep".into()));
            }
            let elem = read_u32(r)?;
            let n = read_len(r, wide)?;
            let size = match elem {
                0 | 1 | 7 => Some(1),
                2 | 3 => Some(2),
                4..=6 => Some(4),
                10..=12 => Some(8),
                _ => None,
            };
            match size {
                Some(s) => skip(
                    r,
                    n.checked_mul(s).ok_or_else(|| bad(format!("an array of {n}")))?,
                ),
                None => (0..n).try_for_each(|_| skip_value(r, elem, wide, depth + 1)),
            }
        }
        t => Err(bad(format!("unknown value type {t}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small GGUF (v2, candle's writer) with metadata in a chosen order.
    fn write_gguf(path: &Path, md: &[(&str, Value)], tensors: &[(&str, QTensor)]) {
        let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
        let mut f = std::io::BufWriter::new(File::create(path).unwrap_or_else(|e| panic!("{e}")));
        gguf_file::write(&mut f, &md, &ts).unwrap_or_else(|e| panic!("{e}"));
    }

    fn tensor(rows: usize, cols: usize, dtype: GgmlDType) -> QTensor {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        let t = candle_core::Tensor::from_vec(values, (rows, cols), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"));
        QTensor::quantize(&t, dtype).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn key_order_metadata_edits_and_copied_tensors() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let input = dir.path().join("in.gguf");
        let md = vec![
            ("general.architecture", Value::String("llama".into())),
            ("zeta.first_in_file", Value::I32(-3)),
            ("general.alignment", Value::U32(32)),
            ("general.file_type", Value::U32(1)),
            ("llama.block_count", Value::U32(1)),
            (
                "tokenizer.ggml.tokens",
                Value::Array(vec![Value::String("a".into()); 3]),
            ),
            ("nested", Value::Array(vec![Value::Array(vec![Value::U8(1)])])),
            ("split.count", Value::U16(1)),
            ("quantize.imatrix.file", Value::String("old.dat".into())),
            ("alpha.last_in_file", Value::F64(0.5)),
        ];
        write_gguf(
            &input,
            &md,
            &[
                ("blk.0.ffn_down.weight", tensor(4, 256, GgmlDType::F32)),
                ("blk.0.attn_norm.weight", tensor(1, 32, GgmlDType::F32)),
                ("blk.0.ffn_up.weight", tensor(4, 64, GgmlDType::Q4_0)),
            ],
        );
        let mut r = BufReader::new(File::open(&input).unwrap_or_else(|e| panic!("{e}")));
        let order = metadata_key_order(&mut r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(order, md.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>());

        let out = dir.path().join("out.gguf");
        let req = QuantizeRequest {
            model: input.clone(),
            out: out.clone(),
            mix: QuantType::Q4_0,
        };
        let report =
            quantize_model(&req, &mut |_| {}, &AtomicBool::new(false)).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = report.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "blk.0.ffn_down.weight",
                "blk.0.attn_norm.weight",
                "blk.0.ffn_up.weight"
            ]
        );
        let to: Vec<GgmlDType> = report.tensors.iter().map(|t| t.to).collect();
        assert_eq!(to, [GgmlDType::Q4_0, GgmlDType::F32, GgmlDType::Q4_0]);
        let requantized: Vec<bool> = report.tensors.iter().map(|t| t.requantized).collect();
        assert_eq!(requantized, [true, false, false]);

        let mut r = BufReader::new(File::open(&out).unwrap_or_else(|e| panic!("{e}")));
        let order = metadata_key_order(&mut r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            order,
            [
                "general.architecture",
                "zeta.first_in_file",
                "general.alignment",
                "general.file_type",
                "llama.block_count",
                "tokenizer.ggml.tokens",
                "nested",
                "alpha.last_in_file",
                "general.quantization_version",
            ]
        );
        r.seek(SeekFrom::Start(0)).unwrap_or_else(|e| panic!("{e}"));
        let c = Content::read(&mut r).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(c.metadata["general.file_type"], Value::U32(2)));
        assert!(matches!(
            c.metadata["general.quantization_version"],
            Value::U32(2)
        ));
        assert!(matches!(c.metadata["zeta.first_in_file"], Value::I32(-3)));
        assert!(matches!(c.metadata["alpha.last_in_file"], Value::F64(x) if x == 0.5));
        // The copied tensors are byte for byte the input's.
        let mut inr = File::open(&input).unwrap_or_else(|e| panic!("{e}"));
        let ic = Content::read(&mut inr).unwrap_or_else(|e| panic!("{e}"));
        for name in ["blk.0.attn_norm.weight", "blk.0.ffn_up.weight"] {
            let a = ic
                .tensor(&mut inr, name, &Device::Cpu)
                .unwrap_or_else(|e| panic!("{e}"));
            let b = c
                .tensor(&mut r, name, &Device::Cpu)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(a.data().ok(), b.data().ok(), "{name}");
        }
    }

    #[test]
    fn refuses_the_input_as_output_and_missing_folders() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let input = dir.path().join("m.gguf");
        write_gguf(&input, &[], &[("a.weight", tensor(1, 32, GgmlDType::F32))]);
        let req = |out: PathBuf| QuantizeRequest {
            model: input.clone(),
            out,
            mix: QuantType::Q8_0,
        };
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap_or_else(|e| panic!("{e}"));
        for out in [input.clone(), sub.join("../m.gguf")] {
            assert!(matches!(
                check_paths(&req(out)),
                Err(QuantizeError::SameFile { .. })
            ));
        }
        #[cfg(unix)]
        {
            let link = dir.path().join("hard.gguf");
            std::fs::hard_link(&input, &link).unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(
                check_paths(&req(link)),
                Err(QuantizeError::SameFile { .. })
            ));
        }
        assert!(matches!(
            check_paths(&req(dir.path().join("nope/x.gguf"))),
            Err(QuantizeError::Write { .. })
        ));
        assert!(matches!(check_paths(&req(sub)), Err(QuantizeError::Write { .. })));
        assert!(check_paths(&req(dir.path().join("new.gguf"))).is_ok());
    }
}
