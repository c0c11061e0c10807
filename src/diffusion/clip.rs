//! Our own hookable CLIP text encoder: HF `CLIPTextModel` / `CLIPTextModelWithProjection` as
//! stored in a diffusers `text_encoder/` (SD 1.5, SD 2.1, SDXL) or `text_encoder_2/` (SDXL).
//!
//! The numerics follow candle-transformers' `stable_diffusion::clip::ClipTextTransformer`
//! (itself a port of HF's `modeling_clip.py`): pre-norm transformer layers with causal
//! self-attention, computed in the loaded dtype (f32 or f16) with the attention scores and the
//! softmax in f32.
//!
//! Hook points (all `[batch, tokens, hidden]` LayerNorm outputs), in forward order:
//! `{prefix}.layers.{i}.layer_norm1`, `{prefix}.layers.{i}.layer_norm2` for every layer `i`,
//! then `{prefix}.final_layer_norm`.

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde_json::Value;

use super::error::{DiffusionError, Result};
use super::hooks::{DiffHooks, HookRegistry, HookSiteKind, run_hook};
use super::weights::{load_component, read_json, weights_error};

/// The MLP activation of a CLIP text encoder (`hidden_act` of its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x · sigmoid(1.702 x)` (`quick_gelu`: OpenAI CLIP ViT-L/14, used by SD 1.5 and SDXL's
    /// first encoder).
    QuickGelu,
    /// The exact, erf-based GELU (HF `gelu`: OpenCLIP ViT-H / bigG, used by SD 2.1 and SDXL's
    /// second encoder).
    Gelu,
}

impl ClipActivation {
    /// Parses HF's `hidden_act` name.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            _ => None,
        }
    }

    /// Applies the activation elementwise (any shape, any float dtype).
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702f64)?)?,
            Self::Gelu => xs.gelu_erf(),
        }
    }
}

/// The configuration of a CLIP text encoder (HF `CLIPTextConfig`, the `config.json` of a
/// diffusers `text_encoder/` folder).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    /// Number of token ids (49408 for every SD encoder).
    pub vocab_size: usize,
    /// Width `d` of the residual stream (768, 1024 or 1280).
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads (`hidden_size` must be a multiple).
    pub num_attention_heads: usize,
    /// Context length (77).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: ClipActivation,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f64,
    /// Width of the pooled output's projection. After [`ClipTextEncoder::load`], `Some` only
    /// when the weights have `text_projection.weight` (`CLIPTextModelWithProjection`).
    pub projection_dim: Option<usize>,
}

impl ClipTextConfig {
    /// Reads HF's `config.json` of a text encoder (a `CLIPTextConfig`, or a full `CLIPConfig`
    /// whose `text_config` is used). An unknown `hidden_act` or inconsistent sizes are
    /// [`DiffusionError::BadConfig`].
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = read_json(path)?;
        Self::from_json(&json, path)
    }

    /// Parses the JSON of a config file; `path` only names it in errors.
    pub fn from_json(json: &Value, path: &Path) -> Result<Self> {
        let bad = |reason: String| DiffusionError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let cfg = match json.get("text_config") {
            Some(tc) if json.get("hidden_size").is_none() && tc.is_object() => tc,
            _ => json,
        };
        if !cfg.is_object() {
            return Err(bad("expected a JSON object".into()));
        }
        let size = |key: &str| -> Result<usize> {
            let v = cfg.get(key).ok_or_else(|| bad(format!("missing `{key}`")))?;
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| bad(format!("`{key}` = {v} is not a positive integer")))
        };
        let vocab_size = size("vocab_size")?;
        let hidden_size = size("hidden_size")?;
        let intermediate_size = size("intermediate_size")?;
        let num_hidden_layers = size("num_hidden_layers")?;
        let num_attention_heads = size("num_attention_heads")?;
        let max_position_embeddings = size("max_position_embeddings")?;
        let act_name = match cfg.get("hidden_act") {
            None => "quick_gelu",
            Some(v) => v
                .as_str()
                .ok_or_else(|| bad(format!("`hidden_act` = {v} is not a string")))?,
        };
        let hidden_act = ClipActivation::from_hf(act_name).ok_or_else(|| {
            bad(format!(
                "unsupported hidden_act `{act_name}` (quick_gelu and gelu are)"
            ))
        })?;
        let layer_norm_eps = match cfg.get("layer_norm_eps") {
            None => 1e-5,
            Some(v) => v
                .as_f64()
                .filter(|e| e.is_finite() && *e > 0.0)
                .ok_or_else(|| bad(format!("`layer_norm_eps` = {v} is not a positive number")))?,
        };
        let projection_dim = match cfg.get("projection_dim") {
            None | Some(Value::Null) => None,
            Some(_) => Some(size("projection_dim")?),
        };
        if !hidden_size.is_multiple_of(num_attention_heads) {
            return Err(bad(format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
            )));
        }
        Ok(Self {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            max_position_embeddings,
            hidden_act,
            layer_norm_eps,
            projection_dim,
        })
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// The outputs of a forward pass of the text encoder.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// `[b, t, d]`: the output of `final_layer_norm` (after its hook).
    pub last_hidden_state: Tensor,
    /// `[b, t, d]`: the input of the last encoder layer, without final norm (HF's
    /// `hidden_states[-2]`, what SD 2.x "clip skip" and SDXL condition on).
    pub penultimate: Tensor,
    /// `[b, p]` or `[b, d]`: `last_hidden_state` at each row's EOS position (the first position
    /// of the row's largest id, as HF's `argmax(input_ids)`), times `text_projection` (`p`
    /// wide) when the encoder has one.
    pub pooled: Tensor,
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn new(vb: VarBuilder, c: &ClipTextConfig) -> candle_core::Result<Self> {
        let d = c.hidden_size;
        let head_dim = c.head_dim();
        Ok(Self {
            q_proj: candle_nn::linear(d, d, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(d, d, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(d, d, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(d, d, vb.pp("out_proj"))?,
            heads: c.num_attention_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `[b, t, d]` → `[b·heads, t, head_dim]` in f32.
    fn split_heads(&self, xs: &Tensor, b: usize, t: usize) -> candle_core::Result<Tensor> {
        xs.reshape((b, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * self.heads, t, self.head_dim))?
            .to_dtype(DType::F32)
    }

    /// `xs`: `[b, t, d]`; `mask`: `[t, t]` f32 (0 or `f32::MIN`). Returns `[b, t, d]`.
    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let in_dtype = xs.dtype();
        let (b, t, d) = xs.dims3()?;
        let q = self.split_heads(&(self.q_proj.forward(xs)? * self.scale)?, b, t)?;
        let k = self.split_heads(&self.k_proj.forward(xs)?, b, t)?;
        let v = self.split_heads(&self.v_proj.forward(xs)?, b, t)?;
        let scores = q
            .matmul(&k.transpose(1, 2)?)?
            .reshape((b, self.heads, t, t))?
            .broadcast_add(mask)?
            .reshape((b * self.heads, t, t))?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let out = probs
            .matmul(&v)?
            .to_dtype(in_dtype)?
            .reshape((b, self.heads, t, self.head_dim))?
            .transpose(1, 2)?
            .reshape((b, t, d))?;
        self.out_proj.forward(&out)
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: ClipActivation,
    hook_ln1: usize,
    hook_ln2: usize,
}

/// A hookable CLIP text encoder loaded from a diffusers component folder.
pub struct ClipTextEncoder {
    config: ClipTextConfig,
    token_embedding: Embedding,
    /// `[max_position_embeddings, d]`.
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    hook_final: usize,
    text_projection: Option<Linear>,
    header_sha256: String,
    device: Device,
}

fn layer_norm(d: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
    candle_nn::layer_norm(d, eps, vb)
}

impl ClipTextEncoder {
    /// Loads the encoder of component folder `dir` (e.g. `…/text_encoder`: `config.json` and
    /// `model[.fp16].safetensors`) in `dtype` (f32 or f16) on `device`, and registers its hook
    /// points, named with `prefix` (`text_encoder` or `text_encoder_2`), into `reg`.
    ///
    /// A missing or wrongly shaped tensor is a [`DiffusionError::BadWeights`] naming it.
    pub fn load(
        dir: &Path,
        prefix: &str,
        dtype: DType,
        device: &Device,
        reg: &mut HookRegistry,
    ) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(DiffusionError::BadInput(format!(
                "text encoder dtype {dtype:?} (f32, f16 or bf16 expected)"
            )));
        }
        if !dir.is_dir() {
            return Err(DiffusionError::MissingComponent {
                folder: dir.parent().unwrap_or(dir).to_path_buf(),
                what: format!("the folder {}", dir.display()),
            });
        }
        let config_path: PathBuf = dir.join("config.json");
        if !config_path.is_file() {
            return Err(DiffusionError::MissingComponent {
                folder: dir.to_path_buf(),
                what: "config.json of the text encoder".into(),
            });
        }
        let mut config = ClipTextConfig::from_file(&config_path)?;
        let weights = load_component(dir, dtype, device)?;
        let werr = || weights_error(prefix);
        let c = &config;
        let d = c.hidden_size;
        let vb = weights.vb.clone();
        // transformers ≥ 5 saves a CLIPTextModel without the `text_model.` prefix.
        let tm = if vb.contains_tensor("text_model.embeddings.token_embedding.weight")
            || !vb.contains_tensor("embeddings.token_embedding.weight")
        {
            vb.pp("text_model")
        } else {
            vb.clone()
        };
        let emb = tm.pp("embeddings");
        let token_embedding =
            candle_nn::embedding(c.vocab_size, d, emb.pp("token_embedding")).map_err(werr())?;
        let position_embedding = emb
            .pp("position_embedding")
            .get((c.max_position_embeddings, d), "weight")
            .map_err(werr())?;
        let lvb = tm.pp("encoder").pp("layers");
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = lvb.pp(i);
            let layer = (|| -> candle_core::Result<EncoderLayer> {
                Ok(EncoderLayer {
                    layer_norm1: layer_norm(d, c.layer_norm_eps, l.pp("layer_norm1"))?,
                    self_attn: Attention::new(l.pp("self_attn"), c)?,
                    layer_norm2: layer_norm(d, c.layer_norm_eps, l.pp("layer_norm2"))?,
                    fc1: candle_nn::linear(d, c.intermediate_size, l.pp("mlp").pp("fc1"))?,
                    fc2: candle_nn::linear(c.intermediate_size, d, l.pp("mlp").pp("fc2"))?,
                    act: c.hidden_act,
                    hook_ln1: 0,
                    hook_ln2: 0,
                })
            })()
            .map_err(werr())?;
            layers.push(layer);
        }
        let final_layer_norm = layer_norm(d, c.layer_norm_eps, tm.pp("final_layer_norm")).map_err(werr())?;
        let text_projection = if vb.contains_tensor("text_projection.weight") {
            let proj = match c.projection_dim {
                Some(p) => p,
                None => {
                    let w = vb.get_unchecked("text_projection.weight").map_err(werr())?;
                    w.dims2().map_err(werr())?.0
                }
            };
            let lin = candle_nn::linear_no_bias(d, proj, vb.pp("text_projection")).map_err(werr())?;
            config.projection_dim = Some(proj);
            Some(lin)
        } else {
            config.projection_dim = None;
            None
        };
        // Hook points are registered only once every weight loaded, in forward order.
        for (i, layer) in layers.iter_mut().enumerate() {
            layer.hook_ln1 = reg.add(
                format!("{prefix}.layers.{i}.layer_norm1"),
                d,
                HookSiteKind::LayerNorm,
            );
            layer.hook_ln2 = reg.add(
                format!("{prefix}.layers.{i}.layer_norm2"),
                d,
                HookSiteKind::LayerNorm,
            );
        }
        let hook_final = reg.add(format!("{prefix}.final_layer_norm"), d, HookSiteKind::LayerNorm);
        Ok(Self {
            config,
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            hook_final,
            text_projection,
            header_sha256: weights.header_sha256,
            device: device.clone(),
        })
    }

    /// The configuration (with `projection_dim` set only when the projection exists).
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Hex SHA-256 over the safetensors headers of the weights.
    pub fn header_sha256(&self) -> &str {
        &self.header_sha256
    }

    /// The registry ids of this encoder's hook points in forward order: `layer_norm1` and
    /// `layer_norm2` of every layer, then `final_layer_norm`.
    pub fn hook_ids(&self) -> Vec<usize> {
        let mut ids: Vec<usize> = self
            .layers
            .iter()
            .flat_map(|l| [l.hook_ln1, l.hook_ln2])
            .collect();
        ids.push(self.hook_final);
        ids
    }

    /// The causal mask `[t, t]` in f32: 0 on and below the diagonal, `f32::MIN` above.
    fn causal_mask(&self, t: usize) -> candle_core::Result<Tensor> {
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::MIN } else { 0.0 }))
            .collect();
        Tensor::from_vec(mask, (t, t), &self.device)
    }

    /// Runs the encoder on `ids` (`[b, t]`, an integer dtype, `t ≤ max_position_embeddings`)
    /// with causal self-attention, calling `hooks` at every layer norm output
    /// (`[b, t, d]`).
    pub fn forward(&self, ids: &Tensor, hooks: &mut dyn DiffHooks) -> Result<ClipOutput> {
        let c = &self.config;
        if !ids.dtype().is_int() {
            return Err(DiffusionError::BadInput(format!(
                "token ids must be integers, got {:?}",
                ids.dtype()
            )));
        }
        let ids = ids.to_dtype(DType::U32)?.to_device(&self.device)?;
        let (b, t) = ids.dims2().map_err(|_| {
            DiffusionError::BadInput(format!(
                "token ids of shape {:?} (expected [batch, tokens])",
                ids.dims()
            ))
        })?;
        if b == 0 || t == 0 || t > c.max_position_embeddings {
            return Err(DiffusionError::BadInput(format!(
                "token ids of shape [{b}, {t}] (need batch ≥ 1 and 1 ≤ tokens ≤ {})",
                c.max_position_embeddings
            )));
        }
        let rows = ids.to_vec2::<u32>()?;
        // Pooling position: the first occurrence of each row's largest id (HF's argmax).
        let mut eos_pos = Vec::with_capacity(b);
        for row in &rows {
            let mut best = 0usize;
            for (j, &v) in row.iter().enumerate() {
                if v as usize >= c.vocab_size {
                    return Err(DiffusionError::BadInput(format!(
                        "token id {v} is outside the vocabulary of {} ids",
                        c.vocab_size
                    )));
                }
                if v > row[best] {
                    best = j;
                }
            }
            eos_pos.push(best);
        }

        let pos = self.position_embedding.narrow(0, 0, t)?;
        let mut xs = self.token_embedding.forward(&ids)?.broadcast_add(&pos)?;
        let mask = self.causal_mask(t)?;
        let n = self.layers.len();
        let mut penultimate = xs.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if i + 1 == n {
                penultimate = xs.clone();
            }
            let residual = &xs;
            let h = layer.layer_norm1.forward(residual)?;
            let h = run_hook(hooks, layer.hook_ln1, h)?;
            let h = layer.self_attn.forward(&h, &mask)?;
            let x1 = (h + residual)?;
            let h = layer.layer_norm2.forward(&x1)?;
            let h = run_hook(hooks, layer.hook_ln2, h)?;
            let h = layer.fc2.forward(&layer.act.forward(&layer.fc1.forward(&h)?)?)?;
            xs = (h + x1)?;
        }
        let last = self.final_layer_norm.forward(&xs)?;
        let last = run_hook(hooks, self.hook_final, last)?;
        let picked = eos_pos
            .iter()
            .enumerate()
            .map(|(r, &p)| last.i((r, p..p + 1)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = Tensor::cat(&picked, 0)?;
        let pooled = match &self.text_projection {
            Some(p) => p.forward(&pooled)?,
            None => pooled,
        };
        Ok(ClipOutput {
            last_hidden_state: last,
            penultimate,
            pooled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::NoDiffHooks;

    fn write_config(dir: &Path, act: &str) {
        let cfg = serde_json::json!({
            "architectures": ["CLIPTextModel"],
            "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2,
            "max_position_embeddings": 6, "hidden_act": act,
            "layer_norm_eps": 1e-5, "projection_dim": 4,
        });
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    }

    /// A 2-layer, 8-wide encoder of random weights, `text_projection` optional.
    fn write_weights(dir: &Path, with_projection: bool) {
        let dev = Device::Cpu;
        let mut ts: Vec<(String, Tensor)> = Vec::new();
        let mut seed = 0u32;
        let mut rnd = |shape: &[usize], scale: f64, offset: f64| {
            seed += 1;
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| {
                    let x = ((i as f32 + 1.0) * 12.9898 + seed as f32 * 78.233).sin() * 43758.547;
                    ((x - x.floor()) as f64 * 2.0 - 1.0) as f32
                })
                .collect();
            ((Tensor::from_vec(v, shape, &dev).unwrap() * scale).unwrap() + offset).unwrap()
        };
        let tm = "text_model";
        ts.push((
            format!("{tm}.embeddings.token_embedding.weight"),
            rnd(&[16, 8], 0.5, 0.0),
        ));
        ts.push((
            format!("{tm}.embeddings.position_embedding.weight"),
            rnd(&[6, 8], 0.5, 0.0),
        ));
        for i in 0..2 {
            let p = format!("{tm}.encoder.layers.{i}");
            for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                ts.push((format!("{p}.self_attn.{n}.weight"), rnd(&[8, 8], 0.3, 0.0)));
                ts.push((format!("{p}.self_attn.{n}.bias"), rnd(&[8], 0.1, 0.0)));
            }
            for n in ["layer_norm1", "layer_norm2"] {
                ts.push((format!("{p}.{n}.weight"), rnd(&[8], 0.1, 1.0)));
                ts.push((format!("{p}.{n}.bias"), rnd(&[8], 0.1, 0.0)));
            }
            ts.push((format!("{p}.mlp.fc1.weight"), rnd(&[16, 8], 0.3, 0.0)));
            ts.push((format!("{p}.mlp.fc1.bias"), rnd(&[16], 0.1, 0.0)));
            ts.push((format!("{p}.mlp.fc2.weight"), rnd(&[8, 16], 0.3, 0.0)));
            ts.push((format!("{p}.mlp.fc2.bias"), rnd(&[8], 0.1, 0.0)));
        }
        ts.push((format!("{tm}.final_layer_norm.weight"), rnd(&[8], 0.1, 1.0)));
        ts.push((format!("{tm}.final_layer_norm.bias"), rnd(&[8], 0.1, 0.0)));
        if with_projection {
            ts.push(("text_projection.weight".into(), rnd(&[4, 8], 0.3, 0.0)));
        }
        let map: std::collections::HashMap<String, Tensor> = ts.into_iter().collect();
        candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
    }

    #[test]
    fn config_parses_and_rejects_unknown_activation() {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), "gelu");
        let c = ClipTextConfig::from_file(&dir.path().join("config.json")).unwrap();
        assert_eq!(c.hidden_act, ClipActivation::Gelu);
        assert_eq!((c.hidden_size, c.head_dim(), c.projection_dim), (8, 4, Some(4)));
        write_config(dir.path(), "swish");
        let err = ClipTextConfig::from_file(&dir.path().join("config.json")).unwrap_err();
        assert!(matches!(err, DiffusionError::BadConfig { .. }));
        assert!(err.to_string().contains("swish"), "{err}");
    }

    #[test]
    fn forward_shapes_hooks_and_pooling() {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), "quick_gelu");
        write_weights(dir.path(), true);
        let mut reg = HookRegistry::default();
        let enc =
            ClipTextEncoder::load(dir.path(), "text_encoder", DType::F32, &Device::Cpu, &mut reg).unwrap();
        let names: Vec<&str> = reg.sites().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "text_encoder.layers.0.layer_norm1",
                "text_encoder.layers.0.layer_norm2",
                "text_encoder.layers.1.layer_norm1",
                "text_encoder.layers.1.layer_norm2",
                "text_encoder.final_layer_norm",
            ]
        );
        assert_eq!(enc.hook_ids(), vec![0, 1, 2, 3, 4]);
        assert_eq!(enc.config().projection_dim, Some(4));
        assert_eq!(enc.header_sha256().len(), 64);
        let ids = Tensor::new(&[[14u32, 3, 5, 15, 15, 15], [14, 15, 0, 0, 0, 0]], &Device::Cpu).unwrap();
        let out = enc.forward(&ids, &mut NoDiffHooks).unwrap();
        assert_eq!(out.last_hidden_state.dims(), [2, 6, 8]);
        assert_eq!(out.penultimate.dims(), [2, 6, 8]);
        assert_eq!(out.pooled.dims(), [2, 4]);
        // Causality: row 0's first tokens do not see what follows.
        let ids2 = Tensor::new(&[[14u32, 3, 5, 1, 2, 7]], &Device::Cpu).unwrap();
        let out2 = enc.forward(&ids2, &mut NoDiffHooks).unwrap();
        let a = out.last_hidden_state.i((0, 0..3)).unwrap();
        let b = out2.last_hidden_state.i((0, 0..3)).unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{diff}");
        // Shorter sequences work too.
        let short = Tensor::new(&[[14u32, 3, 15]], &Device::Cpu).unwrap();
        assert_eq!(
            enc.forward(&short, &mut NoDiffHooks)
                .unwrap()
                .last_hidden_state
                .dims(),
            [1, 3, 8]
        );
        // Bad ids are errors, not panics.
        let bad = Tensor::new(&[[14u32, 99]], &Device::Cpu).unwrap();
        assert!(enc.forward(&bad, &mut NoDiffHooks).is_err());
        let long = Tensor::zeros((1, 7), DType::U32, &Device::Cpu).unwrap();
        assert!(enc.forward(&long, &mut NoDiffHooks).is_err());
    }

    /// transformers ≥ 5 writes the text model's tensors without `text_model.`: same encoder.
    #[test]
    fn loads_weights_saved_without_the_text_model_prefix() {
        let run = |strip: bool| {
            let dir = tempfile::tempdir().unwrap();
            write_config(dir.path(), "quick_gelu");
            write_weights(dir.path(), true);
            if strip {
                let path = dir.path().join("model.safetensors");
                let ts = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
                let renamed: std::collections::HashMap<String, Tensor> = ts
                    .into_iter()
                    .map(|(k, v)| (k.strip_prefix("text_model.").unwrap_or(&k).to_string(), v))
                    .collect();
                assert!(renamed.contains_key("embeddings.token_embedding.weight"));
                candle_core::safetensors::save(&renamed, &path).unwrap();
            }
            let mut reg = HookRegistry::default();
            let enc = ClipTextEncoder::load(dir.path(), "text_encoder", DType::F32, &Device::Cpu, &mut reg)
                .unwrap();
            let ids = Tensor::new(&[[14u32, 3, 5, 15, 15, 15]], &Device::Cpu).unwrap();
            let out = enc.forward(&ids, &mut NoDiffHooks).unwrap();
            let v: Vec<f32> = out.last_hidden_state.flatten_all().unwrap().to_vec1().unwrap();
            (v, out.pooled.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        };
        assert_eq!(run(false), run(true));
    }

    #[test]
    fn without_projection_pooled_is_hidden_wide() {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), "gelu");
        write_weights(dir.path(), false);
        let mut reg = HookRegistry::default();
        let enc =
            ClipTextEncoder::load(dir.path(), "text_encoder_2", DType::F32, &Device::Cpu, &mut reg).unwrap();
        assert_eq!(enc.config().projection_dim, None);
        assert_eq!(reg.find("text_encoder_2.final_layer_norm"), Some(4));
        let ids = Tensor::new(&[[14u32, 3, 15, 0]], &Device::Cpu).unwrap();
        let out = enc.forward(&ids, &mut NoDiffHooks).unwrap();
        assert_eq!(out.pooled.dims(), [1, 8]);
        let want = out.last_hidden_state.i((0, 2..3)).unwrap();
        let diff = (out.pooled - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn missing_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        write_weights(dir.path(), false);
        let mut reg = HookRegistry::default();
        let err = ClipTextEncoder::load(dir.path(), "text_encoder", DType::F32, &Device::Cpu, &mut reg)
            .err()
            .unwrap();
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}
