//! Loading Hugging Face model folders: `config.json`, safetensors weights (one file or shards,
//! F32/F16/BF16, converted to f32) and `tokenizer.json` (+ `tokenizer_config.json`).
//!
//! Llama-family folders (`llama`, `mistral`, `qwen2`) become a [`LlamaModel`] with the
//! Hugging Face half-split RoPE layout; `gpt2` folders become a [`Gpt2Model`]; `gemma2` and
//! `gemma3_text` (`Gemma2ForCausalLM`, `Gemma3ForCausalLM`) a [`GemmaModel`]. Sliding-window
//! attention is applied on Gemma (where it alternates with global layers) but not on Mistral
//! and Qwen2: their results match the full-attention models up to the window length (4096
//! tokens and more).

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde_json::Value;

use crate::transport::ModelFingerprint;

use super::block_weights::{AttnWeights, MlpWeights};
use super::config::{Family, GemmaConfig, MAX_LAYERS, ModelConfig};
use super::embedding::Embedding;
use super::error::{Result, RuntimeError};
use super::gemma::{GemmaLayer, GemmaModel, sliding_pattern};
use super::gpt2::{Gpt2Layer, Gpt2Model, LayerNormWeights};
use super::linear::Linear;
use super::llama::{LlamaLayer, LlamaModel};
use super::model::{LoadedModel, Network};
use super::safetensors_shards::SafetensorsShards;
use super::tokenizer::TextTokenizer;

/// `model_type` values this loader runs.
pub const HF_MODEL_TYPES: &str = "llama, mistral, qwen2, gpt2, gemma2, gemma3_text";

/// A model folder with its parsed `config.json`.
pub struct HfFolder {
    dir: PathBuf,
    config_path: PathBuf,
    config: serde_json::Map<String, Value>,
    model_type: String,
}

impl HfFolder {
    /// Reads `dir/config.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(RuntimeError::BadModel {
                path: dir.to_path_buf(),
                reason: "this folder has no config.json: open a .gguf file or a Hugging Face model folder"
                    .into(),
            });
        }
        let text =
            crate::transport::regular_file::read_regular_to_string(&config_path).map_err(|source| {
                RuntimeError::Io {
                    path: config_path.clone(),
                    source,
                }
            })?;
        let bad = |reason: String| RuntimeError::BadModel {
            path: config_path.clone(),
            reason,
        };
        let config = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(bad("not a JSON object".into())),
            Err(e) => return Err(bad(format!("not valid JSON: {e}"))),
        };
        let model_type = match config.get("model_type") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(bad("`model_type` is not a string".into())),
            None => {
                return Err(RuntimeError::MissingMetadata {
                    path: config_path,
                    key: "model_type".into(),
                });
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            config_path,
            config,
            model_type,
        })
    }

    /// The `model_type` of `config.json`.
    pub fn model_type(&self) -> &str {
        &self.model_type
    }

    fn bad(&self, reason: String) -> RuntimeError {
        RuntimeError::BadModel {
            path: self.config_path.clone(),
            reason,
        }
    }

    /// A key's value, treating `null` as absent.
    fn get(&self, key: &str) -> Option<&Value> {
        self.config.get(key).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| self.bad(format!("`{key}` is not a non-negative integer: {v}")))
            })
            .transpose()
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| RuntimeError::MissingMetadata {
            path: self.config_path.clone(),
            key: key.into(),
        })
    }

    /// A soft-cap: `default` when `key` is absent, none when it is `null`, else its value.
    fn softcap(&self, key: &str, default: Option<f32>) -> Result<Option<f32>> {
        if self.config.get(key).is_none() {
            return Ok(default);
        }
        self.opt_f32(key)
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| self.bad(format!("`{key}` is not a number: {v}")))
            })
            .transpose()
    }

    fn f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?.ok_or_else(|| RuntimeError::MissingMetadata {
            path: self.config_path.clone(),
            key: key.into(),
        })
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.bad(format!("`{key}` is not a boolean: {v}")))
            })
            .transpose()
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.bad(format!("`{key}` is not a string: {v}")))
            })
            .transpose()
    }

    /// Token ids under `key`: a number or a list of numbers (absent → none).
    fn ids(&self, key: &str) -> Vec<u32> {
        let one = |v: &Value| v.as_u64().and_then(|x| u32::try_from(x).ok());
        match self.get(key) {
            Some(Value::Array(a)) => a.iter().filter_map(one).collect(),
            Some(v) => one(v).into_iter().collect(),
            None => Vec::new(),
        }
    }

    fn unsupported(&self) -> RuntimeError {
        RuntimeError::UnsupportedArch {
            path: self.config_path.clone(),
            arch: self.model_type.clone(),
            supported: HF_MODEL_TYPES,
        }
    }

    /// The hyper-parameters, for any supported `model_type`.
    pub fn model_config(&self) -> Result<ModelConfig> {
        match self.model_type.as_str() {
            "llama" | "mistral" | "qwen2" => self.llama_config(),
            "gpt2" => self.gpt2_config(),
            "gemma2" | "gemma3_text" => self.gemma_config(),
            _ => Err(self.unsupported()),
        }
    }

    /// Hyper-parameters of a Llama-family model.
    pub fn llama_config(&self) -> Result<ModelConfig> {
        let arch = self.model_type.clone();
        if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(self.unsupported());
        }
        if let Some(act) = self.opt_str("hidden_act")?
            && act != "silu"
        {
            return Err(self.bad(format!("hidden_act `{act}` is not supported (silu is)")));
        }
        if let Some(scaling) = self.get("rope_scaling") {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            if kind != "default" {
                return Err(self.bad(format!("rope_scaling `{kind}` is not supported")));
            }
        }
        for key in ["attention_bias", "mlp_bias"] {
            if arch != "qwen2" && self.opt_bool(key)? == Some(true) {
                return Err(self.bad(format!("`{key}: true` is not supported")));
            }
        }
        let hidden = self.usize("hidden_size")?;
        let n_heads = self.usize("num_attention_heads")?;
        if n_heads == 0 {
            return Err(self.bad("num_attention_heads is zero".into()));
        }
        let cfg = ModelConfig {
            family: Family::Llama,
            hidden_size: hidden,
            n_layers: self.usize("num_hidden_layers")?,
            n_heads,
            n_kv_heads: self.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
            head_dim: self.opt_usize("head_dim")?.unwrap_or(hidden / n_heads),
            intermediate_size: self.usize("intermediate_size")?,
            vocab_size: self.usize("vocab_size")?,
            max_position: self.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            rope_theta: self.opt_f32("rope_theta")?.unwrap_or(10_000.0),
            rope_interleaved: false,
            norm_eps: self.f32("rms_norm_eps")?,
            qkv_bias: arch == "qwen2",
            gemma: None,
            architecture: arch,
        };
        cfg.validate().map_err(|r| self.bad(r))?;
        Ok(cfg)
    }

    /// Hyper-parameters of a GPT-2 model.
    pub fn gpt2_config(&self) -> Result<ModelConfig> {
        if self.model_type != "gpt2" {
            return Err(self.unsupported());
        }
        let act = self.opt_str("activation_function")?.unwrap_or("gelu_new");
        if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
            return Err(self.bad(format!(
                "activation_function `{act}` is not supported (gelu_new, gelu_pytorch_tanh are)"
            )));
        }
        if self.opt_bool("scale_attn_weights")? == Some(false)
            || self.opt_bool("scale_attn_by_inverse_layer_idx")? == Some(true)
        {
            return Err(self.bad("only attention scaled by 1/√head_dim is supported".into()));
        }
        let hidden = self.usize("n_embd")?;
        let n_heads = self.usize("n_head")?;
        if n_heads == 0 || hidden % n_heads != 0 {
            return Err(self.bad(format!("n_embd {hidden} is not a multiple of n_head {n_heads}")));
        }
        let max_position = self.usize("n_positions")?;
        if max_position == 0 {
            return Err(self.bad("n_positions is zero".into()));
        }
        let cfg = ModelConfig {
            architecture: self.model_type.clone(),
            family: Family::Gpt2,
            hidden_size: hidden,
            n_layers: self.usize("n_layer")?,
            n_heads,
            n_kv_heads: n_heads,
            head_dim: hidden / n_heads,
            intermediate_size: self.opt_usize("n_inner")?.unwrap_or(4 * hidden),
            vocab_size: self.usize("vocab_size")?,
            max_position,
            rope_theta: 0.0,
            rope_interleaved: false,
            norm_eps: self.opt_f32("layer_norm_epsilon")?.unwrap_or(1e-5),
            qkv_bias: true,
            gemma: None,
        };
        cfg.validate().map_err(|r| self.bad(r))?;
        Ok(cfg)
    }

    /// A RoPE scaling entry (`rope_scaling`, or one of `rope_parameters`): the linear factor
    /// (1 for none or `default`); other kinds are refused.
    fn rope_linear_factor(&self, scaling: Option<&Value>) -> Result<f32> {
        let Some(scaling) = scaling.filter(|v| !v.is_null()) else {
            return Ok(1.0);
        };
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        match kind {
            "default" => Ok(1.0),
            "linear" => scaling
                .get("factor")
                .and_then(Value::as_f64)
                .map(|f| f as f32)
                .ok_or_else(|| self.bad("linear rope scaling without a numeric `factor`".into())),
            _ => Err(self.bad(format!("rope_scaling `{kind}` is not supported"))),
        }
    }

    /// Hyper-parameters of a Gemma 2 (`gemma2`) or Gemma 3 (`gemma3_text`) model, with the
    /// defaults of transformers' `Gemma2Config` / `Gemma3TextConfig` for absent keys.
    pub fn gemma_config(&self) -> Result<ModelConfig> {
        let arch = self.model_type.clone();
        let gemma3 = match arch.as_str() {
            "gemma2" => false,
            "gemma3_text" => true,
            _ => return Err(self.unsupported()),
        };
        for key in ["hidden_activation", "hidden_act"] {
            if let Some(act) = self.opt_str(key)?
                && act != "gelu_pytorch_tanh"
            {
                return Err(self.bad(format!("{key} `{act}` is not supported (gelu_pytorch_tanh is)")));
            }
        }
        if self.opt_bool("attention_bias")? == Some(true) {
            return Err(self.bad("`attention_bias: true` is not supported".into()));
        }
        if self.opt_bool("use_bidirectional_attention")? == Some(true) {
            return Err(self.bad("bidirectional attention is not supported".into()));
        }
        let hidden = self.usize("hidden_size")?;
        let n_heads = self.usize("num_attention_heads")?;
        if n_heads == 0 {
            return Err(self.bad("num_attention_heads is zero".into()));
        }
        let n_layers = self.usize("num_hidden_layers")?;
        let head_dim = self.opt_usize("head_dim")?.unwrap_or(256);
        // Per-layer attention types: `layer_types` (transformers ≥ 4.53), else the pattern.
        let sliding = match self.get("layer_types") {
            Some(Value::Array(types)) => types
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => Err(self.bad(format!("layer type {t} is not supported"))),
                })
                .collect::<Result<Vec<bool>>>()?,
            Some(v) => return Err(self.bad(format!("`layer_types` is not a list: {v}"))),
            None if n_layers > MAX_LAYERS => {
                return Err(self.bad(format!("{n_layers} layers (at most {MAX_LAYERS})")));
            }
            None => {
                let pattern = if gemma3 {
                    self.opt_usize("sliding_window_pattern")?
                        .or(self.opt_usize("_sliding_window_pattern")?)
                        .unwrap_or(6)
                } else {
                    2
                };
                sliding_pattern(n_layers, pattern)
            }
        };
        // RoPE: global layers at `rope_theta` (with linear scaling), local ones at
        // `rope_local_base_freq` unscaled (Gemma 3); Gemma 2 uses one base for all.
        let (theta, scale, local_theta) = match self.get("rope_parameters") {
            Some(p) if p.get("full_attention").is_some() => {
                let theta = |k: &str, default: f64| {
                    p.get(k)
                        .and_then(|e| e.get("rope_theta"))
                        .and_then(Value::as_f64)
                        .unwrap_or(default) as f32
                };
                (
                    theta("full_attention", 1_000_000.0),
                    self.rope_linear_factor(p.get("full_attention"))?,
                    theta("sliding_attention", 10_000.0),
                )
            }
            _ => {
                let theta =
                    self.opt_f32("rope_theta")?
                        .unwrap_or(if gemma3 { 1_000_000.0 } else { 10_000.0 });
                let local = if gemma3 {
                    self.opt_f32("rope_local_base_freq")?.unwrap_or(10_000.0)
                } else {
                    theta
                };
                (theta, self.rope_linear_factor(self.get("rope_scaling"))?, local)
            }
        };
        let gemma = GemmaConfig {
            // Rounded to the stored embedding's dtype when the weights are read.
            embed_scale: (hidden as f64).sqrt() as f32,
            query_pre_attn_scalar: self.opt_f32("query_pre_attn_scalar")?.unwrap_or(256.0),
            // transformers' defaults apply only where the key is absent: an explicit `null`
            // means no cap.
            attn_softcap: self.softcap("attn_logit_softcapping", (!gemma3).then_some(50.0))?,
            final_softcap: self.softcap("final_logit_softcapping", (!gemma3).then_some(30.0))?,
            // Gemma2Config and Gemma3TextConfig default to a 4096-token window.
            sliding_window: Some(self.opt_usize("sliding_window")?.unwrap_or(4096)),
            sliding,
            local_rope_theta: local_theta,
            global_rope_scale: scale,
            qk_norm: gemma3,
        };
        let cfg = ModelConfig {
            family: Family::Gemma,
            hidden_size: hidden,
            n_layers,
            n_heads,
            n_kv_heads: self.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
            head_dim,
            intermediate_size: self.usize("intermediate_size")?,
            vocab_size: self.usize("vocab_size")?,
            max_position: self.opt_usize("max_position_embeddings")?.unwrap_or(if gemma3 {
                131_072
            } else {
                8192
            }),
            rope_theta: theta,
            rope_interleaved: false,
            norm_eps: self.opt_f32("rms_norm_eps")?.unwrap_or(1e-6),
            qkv_bias: false,
            gemma: Some(gemma),
            architecture: arch,
        };
        cfg.validate().map_err(|r| self.bad(r))?;
        Ok(cfg)
    }

    /// `tokenizer.json` (+ `tokenizer_config.json`), with BOS/EOS from `config.json` when the
    /// tokenizer files name none.
    pub fn tokenizer(&self) -> Result<TextTokenizer> {
        let json = self.dir.join("tokenizer.json");
        if !json.is_file() {
            return Err(RuntimeError::BadModel {
                path: self.dir.clone(),
                reason: "no tokenizer.json (the fast-tokenizer file is required)".into(),
            });
        }
        let tok = TextTokenizer::from_files(&json, Some(&self.dir.join("tokenizer_config.json")))?;
        let bos = self.ids("bos_token_id").first().copied();
        Ok(tok.with_default_special_ids(bos, &self.ids("eos_token_id")))
    }

    /// Loads the network, tokenizer and fingerprint.
    pub fn load(&self) -> Result<LoadedModel> {
        let cfg = self.model_config()?;
        let tokenizer = self.tokenizer()?;
        let weights = SafetensorsShards::open(&self.dir)?;
        let fingerprint = ModelFingerprint {
            architecture: cfg.architecture.clone(),
            hidden_size: cfg.hidden_size,
            n_layers: cfg.n_layers,
            weights_header_sha256: weights.header_sha256().to_string(),
        };
        let model = match cfg.family {
            Family::Llama => {
                let tied = self.opt_bool("tie_word_embeddings")?.unwrap_or(false);
                Network::Llama(load_llama(cfg, &weights, tied)?)
            }
            Family::Gpt2 => {
                let tied = self.opt_bool("tie_word_embeddings")?.unwrap_or(true);
                Network::Gpt2(load_gpt2(cfg, &weights, tied)?)
            }
            Family::Gemma => {
                let tied = self.opt_bool("tie_word_embeddings")?.unwrap_or(true);
                Network::Gemma(load_gemma(cfg, &weights, tied)?)
            }
        };
        Ok(LoadedModel {
            model,
            tokenizer,
            fingerprint,
            source: self.dir.clone(),
        })
    }
}

/// A `Linear` from `{name}.weight` `[out, in]` and, if asked, `{name}.bias` `[out]`.
/// Layer `i`'s attention projections (`model.layers.{i}.self_attn.q_proj|k_proj|v_proj|o_proj`).
fn attn_weights(w: &SafetensorsShards, cfg: &ModelConfig, i: usize, qkv_bias: bool) -> Result<AttnWeights> {
    let names = ["q_proj", "k_proj", "v_proj", "o_proj"].map(|s| format!("model.layers.{i}.self_attn.{s}"));
    AttnWeights::load(cfg, names, qkv_bias, |n, r, c, b| linear(w, n, r, c, b))
}

/// Layer `i`'s MLP projections (`model.layers.{i}.mlp.gate_proj|up_proj|down_proj`).
fn mlp_weights(w: &SafetensorsShards, cfg: &ModelConfig, i: usize) -> Result<MlpWeights> {
    let names = ["gate_proj", "up_proj", "down_proj"].map(|s| format!("model.layers.{i}.mlp.{s}"));
    MlpWeights::load(cfg, names, |n, r, c, b| linear(w, n, r, c, b))
}

fn linear(w: &SafetensorsShards, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
    let weight = w.tensor(&format!("{name}.weight"), &[out, inp])?;
    let b = if bias {
        Some(w.vector(&format!("{name}.bias"), out)?)
    } else {
        None
    };
    Linear::dense(weight, b)
}

/// A `Linear` from a GPT-2 `Conv1D`: `{name}.weight` stored `[in, out]` (transposed here) and
/// `{name}.bias` `[out]`.
fn conv1d(w: &SafetensorsShards, name: &str, inp: usize, out: usize) -> Result<Linear> {
    let weight = w
        .tensor(&format!("{name}.weight"), &[inp, out])?
        .t()?
        .contiguous()?;
    Linear::dense(weight, Some(w.vector(&format!("{name}.bias"), out)?))
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Builds a Llama-family model from `model.*` tensors (`lm_head.weight` unless `tied`).
fn load_llama(cfg: ModelConfig, w: &SafetensorsShards, tied: bool) -> Result<LlamaModel> {
    let d = cfg.hidden_size;
    let embed_t = w.tensor("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
    let embed = Embedding::Dense {
        table: flat(&embed_t)?,
        d,
    };
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        layers.push(LlamaLayer {
            attn_norm: w.vector(&p("input_layernorm.weight"), d)?,
            attn: attn_weights(w, &cfg, i, cfg.qkv_bias)?,
            mlp_norm: w.vector(&p("post_attention_layernorm.weight"), d)?,
            mlp: mlp_weights(w, &cfg, i)?,
        });
    }
    let final_norm = w.vector("model.norm.weight", d)?;
    let lm_head = if tied {
        Linear::dense(embed_t, None)?
    } else {
        linear(w, "lm_head", cfg.vocab_size, d, false)?
    };
    Ok(LlamaModel {
        cfg,
        embed,
        layers,
        final_norm,
        lm_head,
    })
}

/// Builds a Gemma model from `model.*` tensors (`lm_head.weight` unless `tied`). Hugging Face
/// stores each RMSNorm weight `w` of a norm computing `x̂ · (1 + w)`: the gains kept are `1 + w`
/// (in f32, as transformers' `1.0 + self.weight.float()`), and √d is rounded to the stored
/// embedding's dtype, as transformers' `embed_scale.to(self.weight.dtype)`.
fn load_gemma(mut cfg: ModelConfig, w: &SafetensorsShards, tied: bool) -> Result<GemmaModel> {
    let (d, hd) = (cfg.hidden_size, cfg.head_dim);
    let qk_norm = cfg.gemma.as_ref().is_some_and(|g| g.qk_norm);
    let gain = |name: &str, len: usize| -> Result<Vec<f32>> {
        let mut v = w.vector(name, len)?;
        v.iter_mut().for_each(|x| *x += 1.0);
        Ok(v)
    };
    let embed_t = w.tensor("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
    if let Some(g) = cfg.gemma.as_mut() {
        g.embed_scale = match w.dtype("model.embed_tokens.weight") {
            Some(safetensors::tensor::Dtype::BF16) => half::bf16::from_f32(g.embed_scale).to_f32(),
            Some(safetensors::tensor::Dtype::F16) => half::f16::from_f32(g.embed_scale).to_f32(),
            _ => g.embed_scale,
        };
    }
    let embed = Embedding::Dense {
        table: flat(&embed_t)?,
        d,
    };
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let qk = if qk_norm {
            Some((
                gain(&p("self_attn.q_norm.weight"), hd)?,
                gain(&p("self_attn.k_norm.weight"), hd)?,
            ))
        } else {
            None
        };
        layers.push(GemmaLayer {
            attn_norm: gain(&p("input_layernorm.weight"), d)?,
            attn: attn_weights(w, &cfg, i, false)?,
            qk_norm: qk,
            post_attn_norm: gain(&p("post_attention_layernorm.weight"), d)?,
            mlp_norm: gain(&p("pre_feedforward_layernorm.weight"), d)?,
            mlp: mlp_weights(w, &cfg, i)?,
            post_mlp_norm: gain(&p("post_feedforward_layernorm.weight"), d)?,
        });
    }
    let final_norm = gain("model.norm.weight", d)?;
    let lm_head = if tied {
        Linear::dense(embed_t, None)?
    } else {
        linear(w, "lm_head", cfg.vocab_size, d, false)?
    };
    Ok(GemmaModel {
        cfg,
        embed,
        layers,
        final_norm,
        lm_head,
    })
}

/// Builds a GPT-2 model from `wte`, `wpe`, `h.{i}.*`, `ln_f` tensors, with or without the
/// `transformer.` prefix (`lm_head.weight` unless `tied`).
fn load_gpt2(cfg: ModelConfig, w: &SafetensorsShards, tied: bool) -> Result<Gpt2Model> {
    let (d, ffn) = (cfg.hidden_size, cfg.intermediate_size);
    let prefix = if w.has("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let name = |s: &str| format!("{prefix}{s}");
    let ln = |s: &str| -> Result<LayerNormWeights> {
        Ok(LayerNormWeights {
            weight: w.vector(&name(&format!("{s}.weight")), d)?,
            bias: w.vector(&name(&format!("{s}.bias")), d)?,
        })
    };
    let wte_t = w.tensor(&name("wte.weight"), &[cfg.vocab_size, d])?;
    let wte = flat(&wte_t)?;
    let wpe = flat(&w.tensor(&name("wpe.weight"), &[cfg.max_position, d])?)?;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = |s: &str| name(&format!("h.{i}.{s}"));
        layers.push(Gpt2Layer {
            ln_1: ln(&format!("h.{i}.ln_1"))?,
            c_attn: conv1d(w, &p("attn.c_attn"), d, 3 * d)?,
            attn_proj: conv1d(w, &p("attn.c_proj"), d, d)?,
            ln_2: ln(&format!("h.{i}.ln_2"))?,
            c_fc: conv1d(w, &p("mlp.c_fc"), d, ffn)?,
            mlp_proj: conv1d(w, &p("mlp.c_proj"), ffn, d)?,
        });
    }
    let ln_f = ln("ln_f")?;
    let lm_head = if tied {
        Linear::dense(wte_t, None)?
    } else {
        linear(w, "lm_head", cfg.vocab_size, d, false)?
    };
    Ok(Gpt2Model {
        cfg,
        wte,
        wpe,
        layers,
        ln_f,
        lm_head,
    })
}
