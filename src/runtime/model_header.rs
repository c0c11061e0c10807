//! A model's header alone: configuration, tokenizer, fingerprint and tensor table of a `.gguf`
//! file or a Hugging Face folder, read without any tensor data (for `inspect`).
//!
//! Tensors are summed up in groups: a group is a tensor name with its layer number removed
//! (`blk.{i}.attn_q.weight` → `attn_q.weight`, `model.layers.{i}.self_attn.q_proj.weight` →
//! `self_attn.q_proj.weight`); tensors outside the layers (`token_embd.weight`,
//! `output_norm.weight`) are groups of their own. Each group counts its tensors per storage
//! type, since k-quant files ("Q4_K_M") mix types within a group.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::TensorInfo;
use safetensors::Dtype;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::transport::ModelFingerprint;

use super::config::ModelConfig;
use super::error::{Result, RuntimeError};
use super::gguf::GgufFile;
use super::hf::HfFolder;
use super::hooks::{HookPoint, hook_points};
use super::linear::own_dtype;
use super::safetensors_shards::{read_header, shard_files};
use super::tokenizer::TextTokenizer;

/// Every GGML type candle reads, in llama.cpp's order.
const GGML_TYPES: [GgmlDType; 15] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q8_1,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::Q8K,
];

/// How a tensor is stored in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// A GGML type of a `.gguf` file.
    Gguf(GgmlDType),
    /// A safetensors dtype.
    Safetensors(Dtype),
}

/// Which code runs the matrix products of a tensor type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Our own quantized kernels (see [`super::linear::own_dtype`]; unless
    /// `ACT_CANDLE_QMATMUL` is set).
    Own,
    /// Unquantized: converted to f32 for our dense path.
    Dense,
    /// A GGML type only candle's generic kernels cover (slower).
    CandleGeneric,
    /// A type the loader refuses (e.g. integer safetensors).
    Unsupported,
}

impl TensorType {
    /// The type's name as llama.cpp prints it (`Q4_K`, `Q6_K`, `Q5_0`, `F32`) or as the
    /// safetensors header writes it (`F32`, `F16`, `BF16`).
    pub fn name(&self) -> String {
        match self {
            TensorType::Gguf(t) => ggml_name(*t).to_string(),
            TensorType::Safetensors(t) => format!("{t:?}"),
        }
    }

    /// Which code runs it.
    pub fn kernels(&self) -> Kernels {
        match self {
            TensorType::Gguf(GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) => Kernels::Dense,
            TensorType::Gguf(t) if own_dtype(*t).is_some() => Kernels::Own,
            TensorType::Gguf(_) => Kernels::CandleGeneric,
            TensorType::Safetensors(Dtype::F32 | Dtype::F16 | Dtype::BF16) => Kernels::Dense,
            TensorType::Safetensors(_) => Kernels::Unsupported,
        }
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// llama.cpp's name of a GGML type (candle's `Debug` writes `Q4K` for `Q4_K`).
pub fn ggml_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// The GGML types our own kernels run, in llama.cpp's order.
pub fn own_kernel_types() -> Vec<GgmlDType> {
    GGML_TYPES
        .into_iter()
        .filter(|&t| own_dtype(t).is_some())
        .collect()
}

/// One tensor of a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Full name.
    pub name: String,
    /// Storage type.
    pub ty: TensorType,
    /// Number of values.
    pub elements: u64,
    /// Bytes in the file.
    pub bytes: u64,
}

/// Tensors sharing a name up to the layer number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorGroup {
    /// The tensor name without layer prefix (see [`group_name`]).
    pub name: String,
    /// Number of tensors.
    pub count: usize,
    /// Values over all its tensors.
    pub elements: u64,
    /// Bytes over all its tensors.
    pub bytes: u64,
    /// Tensors per storage type, in order of first appearance.
    pub types: Vec<(TensorType, usize)>,
}

/// The group of a tensor: its name after the first all-digit segment (the layer number), or
/// the whole name when it has none (`blk.3.attn_q.weight` → `attn_q.weight`,
/// `model.layers.3.mlp.up_proj.weight` → `mlp.up_proj.weight`, `output.weight` → itself).
pub fn group_name(tensor: &str) -> &str {
    let mut start = 0;
    for seg in tensor.split('.') {
        let end = start + seg.len();
        if start > 0
            && !seg.is_empty()
            && seg.bytes().all(|b| b.is_ascii_digit())
            && let Some(rest) = tensor.get(end + 1..)
            && !rest.is_empty()
        {
            return rest;
        }
        start = end + 1;
    }
    tensor
}

/// Sums `entries` up in groups (see [`group_name`]), groups and types in order of first
/// appearance; an error when a sum overflows.
pub fn group_tensors(entries: &[TensorEntry]) -> std::result::Result<Vec<TensorGroup>, String> {
    let mut groups: Vec<TensorGroup> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for e in entries {
        let name = group_name(&e.name);
        let i = *index.entry(name).or_insert_with(|| {
            groups.push(TensorGroup {
                name: name.to_string(),
                count: 0,
                elements: 0,
                bytes: 0,
                types: Vec::new(),
            });
            groups.len() - 1
        });
        let Some(g) = groups.get_mut(i) else {
            return Err(format!("internal: no group {i}"));
        };
        let overflow = || format!("group `{}`: sizes overflow at tensor `{}`", g.name, e.name);
        g.elements = g.elements.checked_add(e.elements).ok_or_else(overflow)?;
        g.bytes = g.bytes.checked_add(e.bytes).ok_or_else(overflow)?;
        g.count += 1;
        match g.types.iter_mut().find(|(t, _)| *t == e.ty) {
            Some((_, n)) => *n += 1,
            None => g.types.push((e.ty, 1)),
        }
    }
    let mut total = 0u64;
    for g in &groups {
        total = total
            .checked_add(g.bytes)
            .ok_or_else(|| "the tensors' total size overflows".to_string())?;
    }
    Ok(groups)
}

/// Values and bytes of a GGML tensor of shape `dims`; an error when the shape is not whole
/// blocks or a size overflows.
pub fn ggml_sizes(t: GgmlDType, dims: &[usize]) -> std::result::Result<(u64, u64), String> {
    let elements = checked_product(dims.iter().map(|&d| d as u64))
        .ok_or_else(|| format!("shape {dims:?} has more than 2^64 values"))?;
    let block = t.block_size() as u64;
    if block == 0 || elements % block != 0 {
        return Err(format!(
            "{elements} values are not whole {} blocks of {block}",
            ggml_name(t)
        ));
    }
    let bytes = (elements / block)
        .checked_mul(t.type_size() as u64)
        .ok_or_else(|| format!("shape {dims:?} needs more than 2^64 bytes"))?;
    Ok((elements, bytes))
}

fn checked_product(dims: impl IntoIterator<Item = u64>) -> Option<u64> {
    dims.into_iter().try_fold(1u64, |acc, d| acc.checked_mul(d))
}

/// The facts of a model readable from its header, without tensor data.
pub struct ModelHeader {
    /// The `.gguf` file or model folder.
    pub path: PathBuf,
    /// Hyper-parameters.
    pub config: ModelConfig,
    /// The tokenizer.
    pub tokenizer: TextTokenizer,
    /// Identity for maps files (the same as the loaded model's).
    pub fingerprint: ModelFingerprint,
    /// Size on disk in bytes: the `.gguf` file, or the sum of a folder's safetensors files.
    pub file_size: u64,
    /// Size the header describes (header plus tensor data); above `file_size` when the
    /// tensor data is cut off.
    pub expected_size: u64,
    /// Tensors by group, in file order of first appearance.
    pub tensor_groups: Vec<TensorGroup>,
}

impl ModelHeader {
    /// Reads the header of a `.gguf` file or a Hugging Face model folder.
    pub fn read(path: &Path) -> Result<Self> {
        if path.is_dir() {
            read_hf(path)
        } else {
            read_gguf(path)
        }
    }

    /// The hook points, as the loaded model has them.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        hook_points(&self.config)
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.tensor_groups.iter().map(|g| g.count).sum()
    }

    /// Bytes of all tensors (checked not to overflow when read).
    pub fn tensor_bytes(&self) -> u64 {
        self.tensor_groups
            .iter()
            .fold(0u64, |acc, g| acc.saturating_add(g.bytes))
    }

    /// Tensors per type over all groups, in order of first appearance.
    pub fn type_counts(&self) -> Vec<(TensorType, usize)> {
        let mut out: Vec<(TensorType, usize)> = Vec::new();
        for &(t, n) in self.tensor_groups.iter().flat_map(|g| &g.types) {
            match out.iter_mut().find(|(u, _)| *u == t) {
                Some((_, m)) => *m += n,
                None => out.push((t, n)),
            }
        }
        out
    }
}

fn bad(path: &Path, reason: String) -> RuntimeError {
    RuntimeError::BadModel {
        path: path.to_path_buf(),
        reason,
    }
}

fn file_len(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| RuntimeError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// A GGUF tensor: its entry and where its data ends (relative to the tensor data).
fn gguf_entry(name: &str, info: &TensorInfo) -> std::result::Result<(TensorEntry, u64), String> {
    let (elements, bytes) =
        ggml_sizes(info.ggml_dtype, info.shape.dims()).map_err(|e| format!("tensor `{name}`: {e}"))?;
    let end = info.offset.checked_add(bytes).ok_or_else(|| {
        format!(
            "tensor `{name}`: offset {} + {bytes} bytes overflows",
            info.offset
        )
    })?;
    let entry = TensorEntry {
        name: name.to_string(),
        ty: TensorType::Gguf(info.ggml_dtype),
        elements,
        bytes,
    };
    Ok((entry, end))
}

fn read_gguf(path: &Path) -> Result<ModelHeader> {
    let mut f = GgufFile::open(path)?;
    let config = f.model_config()?;
    let tokenizer = f.tokenizer()?;
    let fingerprint = f.fingerprint(&config)?;
    let content = f.content();
    let mut infos: Vec<(&String, &TensorInfo)> = content.tensor_infos.iter().collect();
    // File order: tensor data is laid out in table order.
    infos.sort_by(|a, b| a.1.offset.cmp(&b.1.offset).then_with(|| a.0.cmp(b.0)));
    let mut entries = Vec::with_capacity(infos.len());
    let mut data_end = 0u64;
    for (name, info) in infos {
        let (entry, end) = gguf_entry(name, info).map_err(|r| bad(path, r))?;
        data_end = data_end.max(end);
        entries.push(entry);
    }
    let expected_size = content
        .tensor_data_offset
        .checked_add(data_end)
        .ok_or_else(|| bad(path, "tensor data ends beyond 2^64 bytes".into()))?;
    let tensor_groups = group_tensors(&entries).map_err(|r| bad(path, r))?;
    Ok(ModelHeader {
        path: path.to_path_buf(),
        config,
        tokenizer,
        fingerprint,
        file_size: file_len(path)?,
        expected_size,
        tensor_groups,
    })
}

/// A tensor of a safetensors header.
#[derive(Deserialize)]
struct SafetensorsInfo {
    dtype: Dtype,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// The tensors of a safetensors header (8-byte length and JSON), in data order, and the
/// file size the header describes.
fn safetensors_entries(header: &[u8]) -> std::result::Result<(Vec<TensorEntry>, u64), String> {
    let json = header.get(8..).ok_or("header shorter than 8 bytes")?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| format!("header is not a JSON object: {e}"))?;
    let mut tensors = Vec::with_capacity(map.len());
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let info: SafetensorsInfo = serde_json::from_value(v).map_err(|e| format!("tensor `{name}`: {e}"))?;
        tensors.push((name, info));
    }
    tensors.sort_by(|a, b| {
        a.1.data_offsets
            .cmp(&b.1.data_offsets)
            .then_with(|| a.0.cmp(&b.0))
    });
    let mut entries = Vec::with_capacity(tensors.len());
    let mut data_end = 0u64;
    for (name, info) in tensors {
        let (start, end) = info.data_offsets;
        let bytes = end
            .checked_sub(start)
            .ok_or_else(|| format!("tensor `{name}`: data_offsets [{start}, {end}] run backwards"))?;
        let elements = checked_product(info.shape.iter().copied()).ok_or_else(|| {
            format!(
                "tensor `{name}`: shape {:?} has more than 2^64 values",
                info.shape
            )
        })?;
        let bits = elements.checked_mul(info.dtype.bitsize() as u64).ok_or_else(|| {
            format!(
                "tensor `{name}`: shape {:?} needs more than 2^64 bits",
                info.shape
            )
        })?;
        if bits.div_ceil(8) != bytes {
            return Err(format!(
                "tensor `{name}`: {bytes} bytes of data for shape {:?} of {:?}",
                info.shape, info.dtype
            ));
        }
        data_end = data_end.max(end);
        entries.push(TensorEntry {
            name,
            ty: TensorType::Safetensors(info.dtype),
            elements,
            bytes,
        });
    }
    let size = (header.len() as u64)
        .checked_add(data_end)
        .ok_or("tensor data ends beyond 2^64 bytes")?;
    Ok((entries, size))
}

fn read_hf(dir: &Path) -> Result<ModelHeader> {
    let folder = HfFolder::open(dir)?;
    let config = folder.model_config()?;
    let tokenizer = folder.tokenizer()?;
    let mut sha = Sha256::new();
    let mut entries = Vec::new();
    let (mut file_size, mut expected_size) = (0u64, 0u64);
    let overflow = || bad(dir, "the weight files' sizes overflow".into());
    for file in shard_files(dir)? {
        let header = read_header(&file)?;
        sha.update(&header);
        let (mut e, size) = safetensors_entries(&header).map_err(|r| bad(&file, r))?;
        entries.append(&mut e);
        expected_size = expected_size.checked_add(size).ok_or_else(overflow)?;
        file_size = file_size.checked_add(file_len(&file)?).ok_or_else(overflow)?;
    }
    let tensor_groups = group_tensors(&entries).map_err(|r| bad(dir, r))?;
    let fingerprint = ModelFingerprint {
        architecture: config.architecture.clone(),
        hidden_size: config.hidden_size,
        n_layers: config.n_layers,
        weights_header_sha256: crate::transport::maps_file::hex(&sha.finalize()),
    };
    Ok(ModelHeader {
        path: dir.to_path_buf(),
        config,
        tokenizer,
        fingerprint,
        file_size,
        expected_size,
        tensor_groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, ty: TensorType, elements: u64, bytes: u64) -> TensorEntry {
        TensorEntry {
            name: name.to_string(),
            ty,
            elements,
            bytes,
        }
    }

    #[test]
    fn group_names_drop_the_layer_number() {
        for (name, group) in [
            ("blk.0.attn_q.weight", "attn_q.weight"),
            ("blk.29.ffn_down.weight", "ffn_down.weight"),
            ("token_embd.weight", "token_embd.weight"),
            ("output.weight", "output.weight"),
            ("output_norm.weight", "output_norm.weight"),
            (
                "model.layers.0.self_attn.q_proj.weight",
                "self_attn.q_proj.weight",
            ),
            ("model.layers.11.mlp.down_proj.weight", "mlp.down_proj.weight"),
            ("model.embed_tokens.weight", "model.embed_tokens.weight"),
            ("model.norm.weight", "model.norm.weight"),
            ("lm_head.weight", "lm_head.weight"),
            ("h.3.attn.c_attn.bias", "attn.c_attn.bias"),
            ("transformer.h.1.ln_1.weight", "ln_1.weight"),
            ("transformer.wte.weight", "transformer.wte.weight"),
            // Only the first number is the layer; a trailing or leading number is no layer.
            ("blk.2.ffn_gate.3.weight", "ffn_gate.3.weight"),
            ("blk.7", "blk.7"),
            ("blk.7.", "blk.7."),
            ("7.weight", "7.weight"),
            ("blk..x", "blk..x"),
            ("", ""),
            ("bl\u{e9}.1.x", "x"),
        ] {
            assert_eq!(group_name(name), group, "{name}");
        }
    }

    #[test]
    fn groups_count_types_in_order_of_first_appearance() {
        let q4k = TensorType::Gguf(GgmlDType::Q4K);
        let q6k = TensorType::Gguf(GgmlDType::Q6K);
        let f32 = TensorType::Gguf(GgmlDType::F32);
        let mut entries = vec![entry("token_embd.weight", q6k, 1000, 820)];
        for i in 0..4 {
            // Q4_K_M: some layers' ffn_down in Q6_K.
            let down = if i % 2 == 0 { q6k } else { q4k };
            entries.push(entry(&format!("blk.{i}.attn_norm.weight"), f32, 10, 40));
            entries.push(entry(
                &format!("blk.{i}.ffn_down.weight"),
                down,
                256,
                210 - 66 * (i % 2),
            ));
        }
        entries.push(entry("output_norm.weight", f32, 10, 40));
        let groups = group_tensors(&entries).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "token_embd.weight",
                "attn_norm.weight",
                "ffn_down.weight",
                "output_norm.weight"
            ]
        );
        let down = &groups[2];
        assert_eq!(
            (down.count, down.elements, down.bytes),
            (4, 1024, 210 * 2 + 144 * 2)
        );
        assert_eq!(down.types, vec![(q6k, 2), (q4k, 2)]);
        assert_eq!(groups[1].types, vec![(f32, 4)]);
        assert_eq!((groups[1].count, groups[1].bytes), (4, 160));
        let header = ModelHeader {
            path: PathBuf::new(),
            config: ModelConfig {
                architecture: "llama".into(),
                family: super::super::config::Family::Llama,
                hidden_size: 10,
                n_layers: 4,
                n_heads: 1,
                n_kv_heads: 1,
                head_dim: 10,
                intermediate_size: 20,
                vocab_size: 100,
                max_position: 16,
                rope_theta: 1e4,
                rope_interleaved: true,
                norm_eps: 1e-5,
                qkv_bias: false,
                gemma: None,
            },
            tokenizer: tiny_tokenizer(),
            fingerprint: ModelFingerprint::arrays(10),
            file_size: 0,
            expected_size: 0,
            tensor_groups: groups,
        };
        assert_eq!(header.tensor_count(), 10);
        assert_eq!(header.tensor_bytes(), 820 + 160 + 708 + 40);
        assert_eq!(header.type_counts(), vec![(q6k, 3), (f32, 5), (q4k, 2)]);
        assert_eq!(header.hook_points().len(), 4 * 5);
    }

    fn tiny_tokenizer() -> TextTokenizer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let json = dir.path().join("tokenizer.json");
        let tok = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":{"type":"WhitespaceSplit"},"post_processor":null,
            "decoder":null,"model":{"type":"WordLevel","vocab":{"a":0,"b":1},"unk_token":"a"}}"#;
        std::fs::write(&json, tok).unwrap_or_else(|e| panic!("{e}"));
        TextTokenizer::from_files(&json, None).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn type_names_and_kernels() {
        let names: Vec<&str> = GGML_TYPES.iter().map(|&t| ggml_name(t)).collect();
        assert_eq!(
            names.join(" "),
            "F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1 Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K"
        );
        let own: Vec<&str> = own_kernel_types().into_iter().map(ggml_name).collect();
        assert_eq!(own.join(" "), "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K");
        assert_eq!(TensorType::Gguf(GgmlDType::Q4_1).kernels(), Kernels::Own);
        assert_eq!(TensorType::Gguf(GgmlDType::F16).kernels(), Kernels::Dense);
        assert_eq!(TensorType::Gguf(GgmlDType::Q3K).kernels(), Kernels::CandleGeneric);
        assert_eq!(TensorType::Safetensors(Dtype::BF16).kernels(), Kernels::Dense);
        assert_eq!(
            TensorType::Safetensors(Dtype::I64).kernels(),
            Kernels::Unsupported
        );
        assert_eq!(TensorType::Safetensors(Dtype::BF16).to_string(), "BF16");
        assert_eq!(TensorType::Gguf(GgmlDType::Q6K).to_string(), "Q6_K");
    }

    #[test]
    fn sizes_are_checked_not_overflowed() {
        assert_eq!(
            ggml_sizes(GgmlDType::Q4_1, &[576, 64]),
            Ok((36_864, 36_864 / 32 * 20))
        );
        assert_eq!(ggml_sizes(GgmlDType::F32, &[7]), Ok((7, 28)));
        assert!(ggml_sizes(GgmlDType::Q4K, &[100]).is_err(), "not whole blocks");
        // 2^60 F32 values fit (2^62 bytes); 2^63 values do not (2^65 bytes), nor 2^80.
        assert_eq!(
            ggml_sizes(GgmlDType::F32, &[1 << 30, 1 << 30]),
            Ok((1 << 60, 1 << 62))
        );
        assert!(ggml_sizes(GgmlDType::F32, &[1 << 32, 1 << 31]).is_err());
        assert!(ggml_sizes(GgmlDType::F32, &[1 << 40, 1 << 40]).is_err());
        assert!(ggml_sizes(GgmlDType::Q8_0, &[usize::MAX, 2]).is_err());

        // Sums within a group and over groups.
        let f32 = TensorType::Gguf(GgmlDType::F32);
        let big = |name: &str| entry(name, f32, 1 << 62, 1 << 63);
        assert!(group_tensors(&[big("blk.0.x"), big("blk.1.x")]).is_err());
        assert!(group_tensors(&[big("a"), big("b")]).is_err());
        assert!(group_tensors(&[big("a")]).is_ok());
        let many = entry("blk.0.x", f32, u64::MAX, 1);
        assert!(group_tensors(&[many.clone(), entry("blk.1.x", f32, 1, 1)]).is_err());
    }

    fn st_header(json: &str) -> Vec<u8> {
        let mut h = (json.len() as u64).to_le_bytes().to_vec();
        h.extend_from_slice(json.as_bytes());
        h
    }

    #[test]
    fn safetensors_headers_in_data_order_with_checked_sizes() {
        let h = st_header(
            r#"{"__metadata__":{"format":"pt"},
               "b.weight":{"dtype":"F16","shape":[2,3],"data_offsets":[16,28]},
               "a.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
        );
        let (entries, size) = safetensors_entries(&h).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a.weight", "b.weight"]);
        assert_eq!(entries[1].ty, TensorType::Safetensors(Dtype::F16));
        assert_eq!((entries[1].elements, entries[1].bytes), (6, 12));
        assert_eq!(size, h.len() as u64 + 28);

        for bad in [
            // 2^60 × 2^10 values.
            r#"{"x":{"dtype":"F32","shape":[1152921504606846976,1024],"data_offsets":[0,4]}}"#,
            // 2^62 values of 4 bytes: the bit count overflows.
            r#"{"x":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,4]}}"#,
            r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
            r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}}"#,
            r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}}"#,
            r#"{"x":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#,
            r#"{"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
            r#"[1, 2]"#,
            r#"{"x":"#,
        ] {
            assert!(safetensors_entries(&st_header(bad)).is_err(), "{bad}");
        }
        assert!(safetensors_entries(b"1234").is_err());
    }
}
