//! A tiny random-weight CLIP text encoder (`text_encoder/`) and its tokenizer (`tokenizer/`)
//! in the real diffusers layout, plus a small seeded RNG for reproducible random tensors.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{Device, Tensor};

/// A small deterministic RNG (SplitMix64) with Box-Muller normals, for reproducible weights.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
    spare: Option<f64>,
}

impl SeededRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed ^ 0x5DEE_CE66_D1CE_4E5B,
            spare: None,
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `(0, 1]`.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// A standard normal sample (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * th.sin());
        r * th.cos()
    }

    /// `n` values `mean + std · N(0, 1)` as f32.
    pub fn normal_vec(&mut self, n: usize, mean: f64, std: f64) -> Vec<f32> {
        (0..n).map(|_| (mean + std * self.normal()) as f32).collect()
    }

    /// A CPU f32 tensor of `shape` filled with `mean + std · N(0, 1)`.
    pub fn tensor(&mut self, shape: &[usize], mean: f64, std: f64) -> anyhow::Result<Tensor> {
        let n = shape.iter().product();
        Ok(Tensor::from_vec(
            self.normal_vec(n, mean, std),
            shape,
            &Device::Cpu,
        )?)
    }
}

/// Sizes of a tiny CLIP text encoder.
#[derive(Debug, Clone)]
pub struct TinyClip {
    /// Width of the residual stream.
    pub hidden: usize,
    /// Number of transformer layers.
    pub layers: usize,
    /// Number of attention heads.
    pub heads: usize,
    /// Width of the MLP.
    pub intermediate: usize,
    /// `"quick_gelu"` or `"gelu"`.
    pub act: &'static str,
    /// Whether `text_projection.weight` is written (`CLIPTextModelWithProjection`).
    pub with_projection: bool,
    /// `projection_dim` of the config (and width of the projection when written).
    pub projection_dim: usize,
    /// The tokenizer's pad token (`<|endoftext|>` or `!`).
    pub pad_token: &'static str,
}

impl TinyClip {
    /// Like SD 1.5's `text_encoder`: quick_gelu, no projection, padded with `<|endoftext|>`.
    pub fn sd15() -> Self {
        Self {
            hidden: 32,
            layers: 2,
            heads: 4,
            intermediate: 64,
            act: "quick_gelu",
            with_projection: false,
            projection_dim: 32,
            pad_token: "<|endoftext|>",
        }
    }

    /// Like SDXL's `text_encoder_2`: gelu, with a projection (narrower than the hidden
    /// size, so shapes are checked), padded with `!`.
    pub fn sdxl_2() -> Self {
        Self {
            hidden: 48,
            layers: 3,
            heads: 4,
            intermediate: 96,
            act: "gelu",
            with_projection: true,
            projection_dim: 40,
            pad_token: "!",
        }
    }

    /// Number of token ids (the length of [`tiny_vocab`]).
    pub fn vocab_size(&self) -> usize {
        tiny_vocab().len()
    }
}

/// Context length of the tiny encoder and tokenizer.
pub const TINY_MAX_LEN: usize = 77;

/// GPT-2's byte → unicode table (HF's `bytes_to_unicode`), indexed by byte.
pub fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
    pairs.sort_unstable();
    pairs.into_iter().filter_map(|(_, c)| char::from_u32(c)).collect()
}

/// The merges of the tiny vocab, in rank order.
pub fn tiny_merges() -> Vec<(String, String)> {
    [
        ("t", "h"),
        ("i", "n"),
        ("e", "r"),
        ("a", "n"),
        ("r", "e"),
        ("o", "n</w>"),
        ("a", "t</w>"),
        ("a", "n</w>"),
        ("i", "n</w>"),
        ("e", "n"),
        ("th", "e</w>"),
        ("an", "d</w>"),
        ("in", "g</w>"),
        ("e", "r</w>"),
        ("p", "h"),
        ("o", "t"),
        ("ot", "o</w>"),
        ("ph", "oto</w>"),
        ("o", "f</w>"),
        ("c", "at</w>"),
        ("d", "o"),
        ("do", "g</w>"),
        ("s", "t"),
        ("y", "l"),
        ("yl", "e</w>"),
        ("st", "yle</w>"),
        ("p", "a"),
        ("pa", "in"),
        ("pain", "t"),
        ("paint", "ing</w>"),
        ("re", "d</w>"),
        ("v", "an</w>"),
        ("g", "o"),
        ("go", "g"),
        ("gog", "h</w>"),
        ("b", "l"),
        ("bl", "u"),
        ("blu", "e</w>"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

/// The tiny vocab in id order: the 256 byte characters, their `</w>` variants, the merge
/// results, then `<|startoftext|>` and `<|endoftext|>` (the largest id, as in CLIP).
pub fn tiny_vocab() -> Vec<String> {
    let mut v: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
    v.extend(byte_chars().iter().map(|c| format!("{c}</w>")));
    for (a, b) in tiny_merges() {
        let m = format!("{a}{b}");
        if !v.contains(&m) {
            v.push(m);
        }
    }
    v.push("<|startoftext|>".into());
    v.push("<|endoftext|>".into());
    v
}

/// The id of `token` in [`tiny_vocab`].
pub fn tiny_id(token: &str) -> Option<u32> {
    tiny_vocab().iter().position(|t| t == token).map(|i| i as u32)
}

/// The HF `config.json` of a tiny text encoder.
pub fn tiny_clip_config(cfg: &TinyClip) -> serde_json::Value {
    let arch = if cfg.with_projection {
        "CLIPTextModelWithProjection"
    } else {
        "CLIPTextModel"
    };
    serde_json::json!({
        "_name_or_path": "tiny-random-clip",
        "architectures": [arch],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": cfg.act,
        "hidden_size": cfg.hidden,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": TINY_MAX_LEN,
        "model_type": "clip_text_model",
        "num_attention_heads": cfg.heads,
        "num_hidden_layers": cfg.layers,
        "pad_token_id": 1,
        "projection_dim": cfg.projection_dim,
        "torch_dtype": "float32",
        "transformers_version": "4.44.0",
        "vocab_size": tiny_vocab().len(),
    })
}

/// Random weights of a tiny text encoder with HF's tensor names: linear weights `N(0, 0.2²)`,
/// biases `N(0, 0.05²)`, embeddings `N(0, 0.5²)`, layer-norm weights `N(1, 0.1²)`.
pub fn tiny_clip_tensors(cfg: &TinyClip, seed: u64) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut rng = SeededRng::new(seed);
    let mut ts = HashMap::new();
    let (d, m, v) = (cfg.hidden, cfg.intermediate, tiny_vocab().len());
    let tm = "text_model";
    ts.insert(
        format!("{tm}.embeddings.token_embedding.weight"),
        rng.tensor(&[v, d], 0.0, 0.5)?,
    );
    ts.insert(
        format!("{tm}.embeddings.position_embedding.weight"),
        rng.tensor(&[TINY_MAX_LEN, d], 0.0, 0.5)?,
    );
    for i in 0..cfg.layers {
        let p = format!("{tm}.encoder.layers.{i}");
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            ts.insert(
                format!("{p}.self_attn.{n}.weight"),
                rng.tensor(&[d, d], 0.0, 0.2)?,
            );
            ts.insert(format!("{p}.self_attn.{n}.bias"), rng.tensor(&[d], 0.0, 0.05)?);
        }
        for n in ["layer_norm1", "layer_norm2"] {
            ts.insert(format!("{p}.{n}.weight"), rng.tensor(&[d], 1.0, 0.1)?);
            ts.insert(format!("{p}.{n}.bias"), rng.tensor(&[d], 0.0, 0.05)?);
        }
        ts.insert(format!("{p}.mlp.fc1.weight"), rng.tensor(&[m, d], 0.0, 0.2)?);
        ts.insert(format!("{p}.mlp.fc1.bias"), rng.tensor(&[m], 0.0, 0.05)?);
        ts.insert(format!("{p}.mlp.fc2.weight"), rng.tensor(&[d, m], 0.0, 0.2)?);
        ts.insert(format!("{p}.mlp.fc2.bias"), rng.tensor(&[d], 0.0, 0.05)?);
    }
    ts.insert(
        format!("{tm}.final_layer_norm.weight"),
        rng.tensor(&[d], 1.0, 0.1)?,
    );
    ts.insert(
        format!("{tm}.final_layer_norm.bias"),
        rng.tensor(&[d], 0.0, 0.05)?,
    );
    if cfg.with_projection {
        ts.insert(
            "text_projection.weight".into(),
            rng.tensor(&[cfg.projection_dim, d], 0.0, 0.2)?,
        );
    }
    Ok(ts)
}

/// Writes a tiny random CLIP text encoder into `dir` (`config.json`, `model.safetensors`)
/// and its tokenizer into `tok_dir` (`vocab.json`, `merges.txt`, `tokenizer_config.json`,
/// `special_tokens_map.json`). The folders are created when missing.
pub fn write_tiny_clip(dir: &Path, tok_dir: &Path, cfg: &TinyClip, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&tiny_clip_config(cfg))?,
    )?;
    let tensors = tiny_clip_tensors(cfg, seed)?;
    super::save_pt_safetensors(&tensors, &dir.join("model.safetensors"))?;
    write_tiny_tokenizer(tok_dir, cfg.pad_token)
}

/// Writes the tiny CLIP tokenizer (slow-tokenizer files, as in SD 1.5's `tokenizer/`).
pub fn write_tiny_tokenizer(tok_dir: &Path, pad_token: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(tok_dir).with_context(|| tok_dir.display().to_string())?;
    let vocab: serde_json::Map<String, serde_json::Value> = tiny_vocab()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, serde_json::Value::from(i as u64)))
        .collect();
    std::fs::write(
        tok_dir.join("vocab.json"),
        serde_json::Value::Object(vocab).to_string(),
    )?;
    let mut merges = String::from("#version: 0.2\n");
    for (a, b) in tiny_merges() {
        merges.push_str(&format!("{a} {b}\n"));
    }
    std::fs::write(tok_dir.join("merges.txt"), merges)?;
    let added = |content: &str| {
        serde_json::json!({
            "__type": "AddedToken", "content": content, "lstrip": false,
            "normalized": true, "rstrip": false, "single_word": false
        })
    };
    let config = serde_json::json!({
        "add_prefix_space": false,
        "bos_token": added("<|startoftext|>"),
        "clean_up_tokenization_spaces": true,
        "do_lower_case": true,
        "eos_token": added("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": TINY_MAX_LEN,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added("<|endoftext|>"),
    });
    std::fs::write(
        tok_dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let special = serde_json::json!({
        "bos_token": {"content": "<|startoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
        "eos_token": {"content": "<|endoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
        "pad_token": pad_token,
        "unk_token": {"content": "<|endoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
    });
    std::fs::write(
        tok_dir.join("special_tokens_map.json"),
        serde_json::to_string_pretty(&special)?,
    )?;
    Ok(())
}
