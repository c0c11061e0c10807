//! Loading Llama-family and Gemma models from GGUF files, weights kept in their own
//! quantization.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use sha2::{Digest, Sha256};

use crate::transport::ModelFingerprint;
use crate::transport::maps_file::hex;

use super::block_weights::{AttnWeights, MlpWeights};
use super::config::{Family, GemmaConfig, MAX_LAYERS, ModelConfig};
use super::embedding::Embedding;
use super::error::backend_message;
use super::error::{Result, RuntimeError};
use super::gemma::{GemmaLayer, GemmaModel, sliding_pattern};
use super::gguf_precheck::check_gguf_header;
use super::linear::{Linear, own_dtype, use_own_kernels};
use super::llama::{LlamaLayer, LlamaModel};
use super::model::Network;
use super::quant::QMatrix;
use super::tokenizer::TextTokenizer;

/// GGUF architectures this loader runs.
pub const GGUF_ARCHITECTURES: &str = "llama, mistral, qwen2, gemma2, gemma3";

/// Tensors' data ranges (offset, byte size from type and shape) must not overlap: a tensor whose
/// type or shape was changed would otherwise read its neighbours' bytes as its own.
fn check_tensor_ranges(content: &Content) -> std::result::Result<(), String> {
    let mut ranges = Vec::with_capacity(content.tensor_infos.len());
    for (name, info) in &content.tensor_infos {
        let (_, bytes) = super::model_header::ggml_sizes(info.ggml_dtype, info.shape.dims())
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        let end = info.offset.checked_add(bytes).ok_or_else(|| {
            format!(
                "tensor `{name}`: offset {} + {bytes} bytes overflows",
                info.offset
            )
        })?;
        ranges.push((info.offset, end, name));
    }
    ranges.sort();
    for w in ranges.windows(2) {
        let ((_, end, a), (start, _, b)) = (&w[0], &w[1]);
        if end > start {
            return Err(format!(
                "the data of tensors `{a}` and `{b}` overlap: one's type or shape does not match its bytes"
            ));
        }
    }
    Ok(())
}

/// The embedding's weights, for a tied output projection.
enum Tied {
    Own(Arc<QMatrix>),
    Candle(QTensor),
}

/// A GGUF file opened for reading tensors.
pub struct GgufFile {
    path: std::path::PathBuf,
    reader: BufReader<File>,
    content: Content,
}

impl GgufFile {
    /// Opens and parses the header (metadata and tensor table).
    ///
    /// Only regular files are opened (a named pipe would block the open), and the header is
    /// walked by [`check_gguf_header`] before candle's reader sizes anything by it; tensors
    /// whose data would overlap (a type or shape changed) are refused.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| RuntimeError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |reason: String| RuntimeError::BadGguf {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        let file = File::open(path).map_err(io)?;
        let mut reader = BufReader::new(file);
        check_gguf_header(&mut reader, meta.len()).map_err(bad)?;
        reader.seek(SeekFrom::Start(0)).map_err(io)?;
        let content = Content::read(&mut reader).map_err(|e| bad(backend_message(&e)))?;
        check_tensor_ranges(&content).map_err(bad)?;
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            content,
        })
    }

    /// The parsed header.
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// SHA-256 of the header bytes (everything before the tensor data): metadata, tokenizer
    /// and tensor table. Identifies the model without hashing the whole file.
    pub fn header_sha256(&mut self) -> Result<String> {
        let io = |source| RuntimeError::Io {
            path: self.path.clone(),
            source,
        };
        let n = self.content.tensor_data_offset;
        self.reader.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut left = n;
        while left > 0 {
            let take = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            self.reader
                .read_exact(&mut buf[..take])
                .map_err(|source| RuntimeError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            h.update(&buf[..take]);
            left -= take as u64;
        }
        Ok(hex(&h.finalize()))
    }

    fn md(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| RuntimeError::MissingMetadata {
                path: self.path.clone(),
                key: key.to_string(),
            })
    }

    fn md_usize(&self, key: &str) -> Result<usize> {
        let v = self.md(key)?;
        v.to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .or_else(|_| v.to_i32().map(|x| x.max(0) as usize))
            .map_err(|e| self.bad(format!("metadata `{key}`: {}", backend_message(&e))))
    }

    fn md_f32(&self, key: &str) -> Result<f32> {
        let v = self.md(key)?;
        v.to_f32()
            .or_else(|_| v.to_f64().map(|x| x as f32))
            .map_err(|e| self.bad(format!("metadata `{key}`: {}", backend_message(&e))))
    }

    fn bad(&self, reason: String) -> RuntimeError {
        RuntimeError::BadModel {
            path: self.path.clone(),
            reason,
        }
    }

    /// The architecture name.
    pub fn architecture(&self) -> Result<String> {
        self.md("general.architecture")?
            .to_string()
            .cloned()
            .map_err(|e| self.bad(backend_message(&e)))
    }

    /// Reads a tensor, checking its shape (`[rows, cols]` in row-major order).
    pub fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<QTensor> {
        self.info(name, shape)?;
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| self.bad(format!("tensor `{name}`: {}", backend_message(&e))))
    }

    /// The table entry of tensor `name`, whose shape must be `shape`.
    fn info(&self, name: &str, shape: &[usize]) -> Result<&TensorInfo> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| RuntimeError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        if info.shape.dims() != shape {
            return Err(RuntimeError::TensorShape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape.dims().to_vec(),
            });
        }
        Ok(info)
    }

    /// Reads a quantized tensor (`[rows, cols]`, checked) straight into our [`QMatrix`] when
    /// our kernels cover its format; `None` otherwise (read it with [`Self::tensor`]). One
    /// copy of the bytes exists at any time: going through candle's `QTensor` held the raw
    /// bytes, candle's blocks and our copy at once (Gemma 3 270M's 178 MB embedding: the
    /// file's peak memory).
    fn own_tensor(&mut self, name: &str, shape: &[usize]) -> Result<Option<QMatrix>> {
        let (dtype, offset) = {
            let info = self.info(name, shape)?;
            (info.ggml_dtype, info.offset)
        };
        let Some(dt) = own_dtype(dtype).filter(|_| use_own_kernels()) else {
            return Ok(None);
        };
        let &[rows, cols] = shape else {
            return Err(self.bad(format!("tensor `{name}` is not a matrix")));
        };
        let bytes = dt
            .row_bytes(cols)
            .and_then(|r| r.checked_mul(rows))
            .ok_or_else(|| self.bad(format!("tensor `{name}` is too large")))?;
        let start = self
            .content
            .tensor_data_offset
            .checked_add(offset)
            .ok_or_else(|| self.bad(format!("tensor `{name}`: offset overflows")))?;
        let io = |source| RuntimeError::Io {
            path: self.path.clone(),
            source,
        };
        let file_len = self.reader.get_ref().metadata().map_err(io)?.len();
        if start.saturating_add(bytes as u64) > file_len {
            return Err(self.bad(format!(
                "tensor `{name}` ends past the end of the file (truncated download?)"
            )));
        }
        let mut data = vec![0u8; bytes];
        self.reader.seek(SeekFrom::Start(start)).map_err(io)?;
        self.reader.read_exact(&mut data).map_err(io)?;
        QMatrix::new(dt, rows, cols, data)
            .map(Some)
            .map_err(|e| self.bad(format!("tensor `{name}`: {e}")))
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.tensor(name, &[len])?;
        Ok(t.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads the hyper-parameters of a Llama-family model.
    pub fn llama_config(&self) -> Result<ModelConfig> {
        let arch = self.architecture()?;
        if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(self.unsupported(arch));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = self.md_usize(&k("embedding_length"))?;
        let n_heads = self.md_usize(&k("attention.head_count"))?;
        let n_kv = self.md_usize(&k("attention.head_count_kv")).unwrap_or(n_heads);
        let head_dim = self
            .md_usize(&k("rope.dimension_count"))
            .unwrap_or(hidden / n_heads.max(1));
        let vocab = match self.md_usize(&k("vocab_size")) {
            Ok(v) => v,
            Err(_) => self
                .content
                .tensor_infos
                .get("token_embd.weight")
                .and_then(|i| i.shape.dims().first().copied())
                .ok_or_else(|| self.bad("no vocabulary size".into()))?,
        };
        let cfg = ModelConfig {
            family: Family::Llama,
            hidden_size: hidden,
            n_layers: self.md_usize(&k("block_count"))?,
            n_heads,
            n_kv_heads: n_kv,
            head_dim,
            intermediate_size: self.md_usize(&k("feed_forward_length"))?,
            vocab_size: vocab,
            max_position: self.md_usize(&k("context_length")).unwrap_or(4096),
            rope_theta: self.md_f32(&k("rope.freq_base")).unwrap_or(10_000.0),
            // GGUF stores Llama q/k permuted for interleaved RoPE; Qwen2 keeps the HF layout.
            rope_interleaved: arch != "qwen2",
            norm_eps: self.md_f32(&k("attention.layer_norm_rms_epsilon"))?,
            qkv_bias: arch == "qwen2",
            gemma: None,
            architecture: arch,
        };
        cfg.validate().map_err(|r| self.bad(r))?;
        Ok(cfg)
    }

    fn unsupported(&self, arch: String) -> RuntimeError {
        RuntimeError::UnsupportedArch {
            path: self.path.clone(),
            arch,
            supported: GGUF_ARCHITECTURES,
        }
    }

    /// The hyper-parameters, for any supported architecture.
    pub fn model_config(&self) -> Result<ModelConfig> {
        match self.architecture()?.as_str() {
            "gemma2" | "gemma3" => self.gemma_config(),
            _ => self.llama_config(),
        }
    }

    /// Reads the hyper-parameters of a Gemma 2 or Gemma 3 model, as llama.cpp's
    /// `llama-model.cpp` does: the sliding window from `attention.sliding_window` (Gemma 2:
    /// default 4096; Gemma 3: none without it), layer patterns 2 and 6 (`set_swa_pattern`),
    /// local RoPE base 10 000 on Gemma 3 (`rope_freq_base_train_swa`), queries scaled by
    /// 1/√(d/heads) on the 27B models (46 and 62 layers) and 1/√head_dim otherwise, and on
    /// Gemma 2 the soft-caps (defaults 50 and 30). RoPE is NEOX-style (pairs `(i, i + hd/2)`):
    /// llama.cpp's converter does not permute Gemma's q/k.
    pub fn gemma_config(&self) -> Result<ModelConfig> {
        let arch = self.architecture()?;
        let gemma3 = match arch.as_str() {
            "gemma2" => false,
            "gemma3" => true,
            _ => return Err(self.unsupported(arch)),
        };
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = self.md_usize(&k("embedding_length"))?;
        let n_heads = self.md_usize(&k("attention.head_count"))?;
        if n_heads == 0 {
            return Err(self.bad("attention.head_count is zero".into()));
        }
        let n_layers = self.md_usize(&k("block_count"))?;
        if n_layers > MAX_LAYERS {
            return Err(self.bad(format!("{n_layers} layers (at most {MAX_LAYERS})")));
        }
        let head_dim = self
            .md_usize(&k("attention.key_length"))
            .or_else(|_| self.md_usize(&k("rope.dimension_count")))
            .unwrap_or(hidden / n_heads);
        let vocab = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .and_then(|i| i.shape.dims().first().copied())
            .ok_or_else(|| self.bad("no token_embd.weight".into()))?;
        let window = self.md_usize(&k("attention.sliding_window")).ok();
        let (window, pattern) = match (gemma3, window) {
            (false, w) => (Some(w.unwrap_or(4096)), 2),
            (true, Some(w)) if w > 0 => (Some(w), 6),
            (true, _) => (None, 1),
        };
        let big = n_layers == if gemma3 { 62 } else { 46 };
        let scale = match self.md(&k("rope.scaling.type")) {
            Ok(t) => match t.to_string().map(String::as_str) {
                Ok("linear") => self.md_f32(&k("rope.scaling.factor")).unwrap_or(1.0),
                Ok("none") => 1.0,
                other => {
                    return Err(self.bad(format!("rope scaling {other:?} is not supported")));
                }
            },
            Err(_) => self.md_f32(&k("rope.scaling.factor")).unwrap_or(1.0),
        };
        let theta = self.md_f32(&k("rope.freq_base")).unwrap_or(10_000.0);
        let gemma = GemmaConfig {
            embed_scale: (hidden as f64).sqrt() as f32,
            query_pre_attn_scalar: if big {
                (hidden / n_heads) as f32
            } else {
                head_dim as f32
            },
            attn_softcap: if gemma3 {
                None
            } else {
                Some(self.md_f32(&k("attn_logit_softcapping")).unwrap_or(50.0))
            },
            final_softcap: if gemma3 {
                self.md_f32(&k("final_logit_softcapping"))
                    .ok()
                    .filter(|&c| c > 0.0)
            } else {
                Some(self.md_f32(&k("final_logit_softcapping")).unwrap_or(30.0))
            },
            sliding_window: window,
            sliding: sliding_pattern(n_layers, pattern),
            local_rope_theta: if gemma3 { 10_000.0 } else { theta },
            global_rope_scale: if scale > 0.0 { scale } else { 1.0 },
            qk_norm: gemma3,
        };
        let cfg = ModelConfig {
            family: Family::Gemma,
            hidden_size: hidden,
            n_layers,
            n_heads,
            n_kv_heads: self.md_usize(&k("attention.head_count_kv")).unwrap_or(n_heads),
            head_dim,
            intermediate_size: self.md_usize(&k("feed_forward_length"))?,
            vocab_size: vocab,
            max_position: self.md_usize(&k("context_length")).unwrap_or(8192),
            rope_theta: theta,
            rope_interleaved: false,
            norm_eps: self.md_f32(&k("attention.layer_norm_rms_epsilon"))?,
            qkv_bias: false,
            gemma: Some(gemma),
            architecture: arch,
        };
        cfg.validate().map_err(|r| self.bad(r))?;
        Ok(cfg)
    }

    /// A `Linear` from `{name}.weight` `[out, in]` and, if asked, `{name}.bias` `[out]`.
    fn linear(&mut self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let b = if bias {
            Some(self.vector(&format!("{name}.bias"), out)?)
        } else {
            None
        };
        let weight = format!("{name}.weight");
        match self.own_tensor(&weight, &[out, inp])? {
            Some(q) => Linear::from_qmatrix(Arc::new(q), b),
            None => Linear::from_qtensor(self.tensor(&weight, &[out, inp])?, b),
        }
    }

    /// The token embedding and the output projection (`output.weight`, else the embedding,
    /// whose quantized rows are then shared).
    fn embedding_and_head(&mut self, vocab: usize, d: usize) -> Result<(Embedding, Linear)> {
        // Quantized rows stay quantized (and are shared with a tied output projection).
        let (embed, tied) = match self.own_tensor("token_embd.weight", &[vocab, d])? {
            Some(q) => {
                let q = Arc::new(q);
                (Embedding::Quant(q.clone()), Tied::Own(q))
            }
            None => {
                let t = self.tensor("token_embd.weight", &[vocab, d])?;
                let table = t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                (Embedding::Dense { table, d }, Tied::Candle(t))
            }
        };
        let lm_head = if self.has("output.weight") {
            self.linear("output", vocab, d, false)?
        } else {
            match tied {
                Tied::Own(q) => Linear::from_qmatrix(q, None)?,
                Tied::Candle(t) => Linear::from_qtensor(t, None)?,
            }
        };
        Ok((embed, lm_head))
    }

    /// Loads the network the file holds (Llama family or Gemma).
    pub fn load_network(&mut self) -> Result<Network> {
        match self.model_config()?.family {
            Family::Gemma => Ok(Network::Gemma(self.load_gemma()?)),
            _ => Ok(Network::Llama(self.load_llama()?)),
        }
    }

    /// Layer `i`'s attention projections (`blk.{i}.attn_q|attn_k|attn_v|attn_output`).
    fn attn_weights(&mut self, cfg: &ModelConfig, i: usize, qkv_bias: bool) -> Result<AttnWeights> {
        let names = ["attn_q", "attn_k", "attn_v", "attn_output"].map(|s| format!("blk.{i}.{s}"));
        AttnWeights::load(cfg, names, qkv_bias, |n, r, c, b| self.linear(n, r, c, b))
    }

    /// Layer `i`'s MLP projections (`blk.{i}.ffn_gate|ffn_up|ffn_down`).
    fn mlp_weights(&mut self, cfg: &ModelConfig, i: usize) -> Result<MlpWeights> {
        let names = ["ffn_gate", "ffn_up", "ffn_down"].map(|s| format!("blk.{i}.{s}"));
        MlpWeights::load(cfg, names, |n, r, c, b| self.linear(n, r, c, b))
    }

    /// Loads the whole Llama-family model.
    pub fn load_llama(&mut self) -> Result<LlamaModel> {
        let cfg = self.llama_config()?;
        let d = cfg.hidden_size;
        let (embed, lm_head) = self.embedding_and_head(cfg.vocab_size, d)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let layer = LlamaLayer {
                attn: self.attn_weights(&cfg, i, cfg.qkv_bias)?,
                mlp: self.mlp_weights(&cfg, i)?,
                attn_norm: self.vector(&p("attn_norm.weight"), d)?,
                mlp_norm: self.vector(&p("ffn_norm.weight"), d)?,
            };
            layers.push(layer);
        }
        let final_norm = self.vector("output_norm.weight", d)?;
        Ok(LlamaModel {
            cfg,
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }

    /// Loads a Gemma 2 / Gemma 3 model (llama.cpp's tensor names; the norm gains are stored
    /// with Gemma's `+1` already folded in by the converter, so they are used as they are).
    pub fn load_gemma(&mut self) -> Result<GemmaModel> {
        let cfg = self.gemma_config()?;
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let qk_norm = cfg.gemma.as_ref().is_some_and(|g| g.qk_norm);
        let (embed, lm_head) = self.embedding_and_head(cfg.vocab_size, d)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let qk = if qk_norm {
                Some((
                    self.vector(&p("attn_q_norm.weight"), hd)?,
                    self.vector(&p("attn_k_norm.weight"), hd)?,
                ))
            } else {
                None
            };
            layers.push(GemmaLayer {
                attn_norm: self.vector(&p("attn_norm.weight"), d)?,
                attn: self.attn_weights(&cfg, i, false)?,
                qk_norm: qk,
                post_attn_norm: self.vector(&p("post_attention_norm.weight"), d)?,
                mlp_norm: self.vector(&p("ffn_norm.weight"), d)?,
                mlp: self.mlp_weights(&cfg, i)?,
                post_mlp_norm: self.vector(&p("post_ffw_norm.weight"), d)?,
            });
        }
        let final_norm = self.vector("output_norm.weight", d)?;
        Ok(GemmaModel {
            cfg,
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }

    /// The tokenizer stored in the file.
    pub fn tokenizer(&self) -> Result<TextTokenizer> {
        TextTokenizer::from_gguf(&self.content)
    }

    /// Drops the header's `tokenizer.*` values (once [`Self::tokenizer`] has been built) and
    /// hands the freed memory back to the OS, so the weights loaded next do not sit on top
    /// of it: the parsed vocabulary of a large-vocabulary model is many small allocations that
    /// the allocator would otherwise keep.
    pub fn forget_tokenizer_metadata(&mut self) {
        self.content.metadata.retain(|k, _| !k.starts_with("tokenizer."));
        self.content.metadata.shrink_to_fit();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: `malloc_trim` only returns free heap pages to the OS; no pointer is touched.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// The model fingerprint for maps files.
    pub fn fingerprint(&mut self, cfg: &ModelConfig) -> Result<ModelFingerprint> {
        Ok(ModelFingerprint {
            architecture: cfg.architecture.clone(),
            hidden_size: cfg.hidden_size,
            n_layers: cfg.n_layers,
            weights_header_sha256: self.header_sha256()?,
        })
    }
}
