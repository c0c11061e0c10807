//! Loading Llama-family models from GGUF files, weights kept in their own quantization.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{Content, Value};
use sha2::{Digest, Sha256};

use crate::transport::ModelFingerprint;
use crate::transport::maps_file::hex;

use super::config::{Family, ModelConfig};
use super::embedding::Embedding;
use super::error::{Result, RuntimeError};
use super::linear::{Linear, own_matrix};
use super::llama::{LlamaLayer, LlamaModel};
use super::tokenizer::TextTokenizer;

/// GGUF architectures this loader runs (all with the Llama block structure).
pub const GGUF_ARCHITECTURES: &str = "llama, mistral, qwen2";

/// A GGUF file opened for reading tensors.
pub struct GgufFile {
    path: std::path::PathBuf,
    reader: BufReader<File>,
    content: Content,
}

impl GgufFile {
    /// Opens and parses the header (metadata and tensor table).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| RuntimeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| RuntimeError::BadGguf {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
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
            .map_err(|e| self.bad(format!("metadata `{key}`: {e}")))
    }

    fn md_f32(&self, key: &str) -> Result<f32> {
        let v = self.md(key)?;
        v.to_f32()
            .or_else(|_| v.to_f64().map(|x| x as f32))
            .map_err(|e| self.bad(format!("metadata `{key}`: {e}")))
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
            .map_err(|e| self.bad(e.to_string()))
    }

    /// Reads a tensor, checking its shape (`[rows, cols]` in row-major order).
    pub fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<QTensor> {
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
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
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
            return Err(RuntimeError::UnsupportedArch {
                path: self.path.clone(),
                arch,
                supported: GGUF_ARCHITECTURES,
            });
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
            architecture: arch,
        };
        cfg.validate().map_err(|r| self.bad(r))?;
        Ok(cfg)
    }

    /// Loads the whole Llama-family model.
    pub fn load_llama(&mut self) -> Result<LlamaModel> {
        let cfg = self.llama_config()?;
        let (d, hd, ffn) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let (q_dim, kv_dim) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);
        let embed_q = self.tensor("token_embd.weight", &[cfg.vocab_size, d])?;
        // Quantized rows stay quantized (and are shared with a tied output projection).
        let shared = own_matrix(&embed_q)?.map(Arc::new);
        let embed = match &shared {
            Some(q) => Embedding::Quant(q.clone()),
            None => Embedding::Dense {
                table: embed_q
                    .dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
                d,
            },
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let mut lin = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
                let w = self.tensor(&p(&format!("{name}.weight")), &[out, inp])?;
                let b = if bias {
                    Some(self.vector(&p(&format!("{name}.bias")), out)?)
                } else {
                    None
                };
                Linear::from_qtensor(w, b)
            };
            let layer = LlamaLayer {
                wq: lin("attn_q", q_dim, d, cfg.qkv_bias)?,
                wk: lin("attn_k", kv_dim, d, cfg.qkv_bias)?,
                wv: lin("attn_v", kv_dim, d, cfg.qkv_bias)?,
                wo: lin("attn_output", d, q_dim, false)?,
                w_gate: lin("ffn_gate", ffn, d, false)?,
                w_up: lin("ffn_up", ffn, d, false)?,
                w_down: lin("ffn_down", d, ffn, false)?,
                attn_norm: self.vector(&p("attn_norm.weight"), d)?,
                mlp_norm: self.vector(&p("ffn_norm.weight"), d)?,
            };
            layers.push(layer);
        }
        let final_norm = self.vector("output_norm.weight", d)?;
        let lm_head = if self.has("output.weight") {
            Linear::from_qtensor(self.tensor("output.weight", &[cfg.vocab_size, d])?, None)?
        } else {
            match shared {
                Some(q) => Linear::from_qmatrix(q, None)?,
                None => Linear::from_qtensor(embed_q, None)?,
            }
        };
        Ok(LlamaModel {
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
