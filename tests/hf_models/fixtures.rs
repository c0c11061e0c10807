//! Tiny random-weight models written in the real Hugging Face folder layout: `config.json`,
//! safetensors weights (one file or shards, any float dtype) and a word-level `tokenizer.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokenizers::Tokenizer;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;

/// Vocabulary size of every fixture.
pub const VOCAB: usize = 100;

/// The words of the fixture tokenizer: `<s>`, `</s>`, then a few words, then `w{i}`.
pub fn words() -> Vec<String> {
    let named = [
        "<s>", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "home", "fast",
    ];
    let mut w: Vec<String> = named.iter().map(|s| s.to_string()).collect();
    w.extend((named.len()..VOCAB).map(|i| format!("w{i}")));
    w
}

/// A tiny model: its `config.json` and f32 weights by Hugging Face tensor name.
pub struct TinyModel {
    pub config: Value,
    pub tensors: HashMap<String, Tensor>,
}

struct Gen(StdRng);

impl Gen {
    /// Uniform in `[centre − half, centre + half]`.
    fn tensor(&mut self, shape: &[usize], centre: f32, half: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| centre + self.0.random_range(-half..=half))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Llama (`qwen2 == false`: tied embeddings, no biases) or Qwen2 (q/k/v biases, separate
/// `lm_head`): hidden 64, 2 layers, 4 heads, 2 kv heads, MLP 128, vocabulary 100.
pub fn llama_like(qwen2: bool, seed: u64) -> TinyModel {
    let (d, layers, heads, kv, ffn) = (64, 2, 4, 2, 128);
    let hd = d / heads;
    let mut g = Gen(StdRng::seed_from_u64(seed));
    let mut t = HashMap::new();
    let w = 1.0 / (d as f32).sqrt();
    t.insert(
        "model.embed_tokens.weight".to_string(),
        g.tensor(&[VOCAB, d], 0.0, 1.0),
    );
    for i in 0..layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        t.insert(p("input_layernorm.weight"), g.tensor(&[d], 1.0, 0.2));
        t.insert(
            p("self_attn.q_proj.weight"),
            g.tensor(&[heads * hd, d], 0.0, 2.0 * w),
        );
        t.insert(
            p("self_attn.k_proj.weight"),
            g.tensor(&[kv * hd, d], 0.0, 2.0 * w),
        );
        t.insert(p("self_attn.v_proj.weight"), g.tensor(&[kv * hd, d], 0.0, w));
        t.insert(p("self_attn.o_proj.weight"), g.tensor(&[d, heads * hd], 0.0, w));
        if qwen2 {
            t.insert(p("self_attn.q_proj.bias"), g.tensor(&[heads * hd], 0.0, 0.5));
            t.insert(p("self_attn.k_proj.bias"), g.tensor(&[kv * hd], 0.0, 0.5));
            t.insert(p("self_attn.v_proj.bias"), g.tensor(&[kv * hd], 0.0, 0.5));
        }
        t.insert(p("post_attention_layernorm.weight"), g.tensor(&[d], 1.0, 0.2));
        t.insert(p("mlp.gate_proj.weight"), g.tensor(&[ffn, d], 0.0, w));
        t.insert(p("mlp.up_proj.weight"), g.tensor(&[ffn, d], 0.0, w));
        t.insert(
            p("mlp.down_proj.weight"),
            g.tensor(&[d, ffn], 0.0, 1.0 / (ffn as f32).sqrt()),
        );
    }
    t.insert("model.norm.weight".to_string(), g.tensor(&[d], 1.0, 0.2));
    if qwen2 {
        t.insert("lm_head.weight".to_string(), g.tensor(&[VOCAB, d], 0.0, w));
    }
    let mut config = json!({
        "architectures": [if qwen2 { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": if qwen2 { "qwen2" } else { "llama" },
        "hidden_size": d,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": ffn,
        "vocab_size": VOCAB,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": if qwen2 { 1_000_000.0 } else { 10_000.0 },
        "hidden_act": "silu",
        "tie_word_embeddings": !qwen2,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "float32",
    });
    if qwen2 {
        let extra = json!({
            "sliding_window": 128,
            "max_window_layers": layers,
            "use_sliding_window": false,
            "rope_scaling": null,
        });
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
    }
    TinyModel { config, tensors: t }
}

/// GPT-2: n_embd 64, 2 layers, 4 heads, 64 positions, vocabulary 100; names without the
/// `transformer.` prefix, as in `openai-community/gpt2` (`prefixed` adds it).
pub fn gpt2(seed: u64, prefixed: bool) -> TinyModel {
    let (d, layers, heads, npos) = (64, 2, 4, 64);
    let ffn = 4 * d;
    let mut g = Gen(StdRng::seed_from_u64(seed));
    let mut t = HashMap::new();
    let pre = if prefixed { "transformer." } else { "" };
    let w = 1.0 / (d as f32).sqrt();
    t.insert(format!("{pre}wte.weight"), g.tensor(&[VOCAB, d], 0.0, 0.5));
    t.insert(format!("{pre}wpe.weight"), g.tensor(&[npos, d], 0.0, 0.5));
    for i in 0..layers {
        let p = |s: &str| format!("{pre}h.{i}.{s}");
        t.insert(p("ln_1.weight"), g.tensor(&[d], 1.0, 0.2));
        t.insert(p("ln_1.bias"), g.tensor(&[d], 0.0, 0.2));
        // Conv1D weights are stored [in, out].
        t.insert(p("attn.c_attn.weight"), g.tensor(&[d, 3 * d], 0.0, 2.0 * w));
        t.insert(p("attn.c_attn.bias"), g.tensor(&[3 * d], 0.0, 0.2));
        t.insert(p("attn.c_proj.weight"), g.tensor(&[d, d], 0.0, w));
        t.insert(p("attn.c_proj.bias"), g.tensor(&[d], 0.0, 0.2));
        t.insert(p("ln_2.weight"), g.tensor(&[d], 1.0, 0.2));
        t.insert(p("ln_2.bias"), g.tensor(&[d], 0.0, 0.2));
        t.insert(p("mlp.c_fc.weight"), g.tensor(&[d, ffn], 0.0, 2.0 * w));
        t.insert(p("mlp.c_fc.bias"), g.tensor(&[ffn], 0.0, 0.2));
        t.insert(
            p("mlp.c_proj.weight"),
            g.tensor(&[ffn, d], 0.0, 1.0 / (ffn as f32).sqrt()),
        );
        t.insert(p("mlp.c_proj.bias"), g.tensor(&[d], 0.0, 0.2));
        // Old checkpoints also carry the causal-mask buffer, which loaders ignore.
        t.insert(
            p("attn.bias"),
            Tensor::ones((1, 1, npos, npos), DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}")),
        );
    }
    t.insert(format!("{pre}ln_f.weight"), g.tensor(&[d], 1.0, 0.2));
    t.insert(format!("{pre}ln_f.bias"), g.tensor(&[d], 0.0, 0.2));
    let config = json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_embd": d,
        "n_layer": layers,
        "n_head": heads,
        "n_positions": npos,
        "n_ctx": npos,
        "vocab_size": VOCAB,
        "layer_norm_epsilon": 1e-5,
        "activation_function": "gelu_new",
        "bos_token_id": 0,
        "eos_token_id": 1,
    });
    TinyModel { config, tensors: t }
}

/// Gemma 2 (`gemma3 == false`) or Gemma 3 (`gemma3_text`, with q/k norms): hidden 64,
/// `layers` layers, 4 heads of 24 (head dim ≠ d/heads), 2 kv heads, MLP 96, vocabulary 100,
/// tied embeddings, a sliding window of 5 tokens. Gemma 3: every `pattern`-th layer global
/// (`layer_types` written too when asked), RoPE bases 10⁶ (global) and 10⁴ (local), no
/// soft-caps; Gemma 2: alternating layers, one RoPE base, soft-caps small enough to bend
/// (attention 2, logits 3). The norm weights are HF's `w` of `x̂ · (1 + w)`, around 0.
/// `query_pre_attn_scalar` equals the head dim, as candle-transformers assumes.
pub fn gemma(gemma3: bool, layers: usize, pattern: usize, layer_types: bool, seed: u64) -> TinyModel {
    let (d, heads, kv, hd, ffn) = (64, 4, 2, 24, 96);
    let mut g = Gen(StdRng::seed_from_u64(seed));
    let mut t = HashMap::new();
    let w = 1.0 / (d as f32).sqrt();
    t.insert(
        "model.embed_tokens.weight".to_string(),
        g.tensor(&[VOCAB, d], 0.0, 0.3),
    );
    for i in 0..layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        for norm in [
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ] {
            t.insert(p(&format!("{norm}.weight")), g.tensor(&[d], 0.0, 0.3));
        }
        t.insert(
            p("self_attn.q_proj.weight"),
            g.tensor(&[heads * hd, d], 0.0, 2.0 * w),
        );
        t.insert(
            p("self_attn.k_proj.weight"),
            g.tensor(&[kv * hd, d], 0.0, 2.0 * w),
        );
        t.insert(p("self_attn.v_proj.weight"), g.tensor(&[kv * hd, d], 0.0, w));
        t.insert(
            p("self_attn.o_proj.weight"),
            g.tensor(&[d, heads * hd], 0.0, 1.0 / ((heads * hd) as f32).sqrt()),
        );
        if gemma3 {
            t.insert(p("self_attn.q_norm.weight"), g.tensor(&[hd], 0.0, 0.3));
            t.insert(p("self_attn.k_norm.weight"), g.tensor(&[hd], 0.0, 0.3));
        }
        t.insert(p("mlp.gate_proj.weight"), g.tensor(&[ffn, d], 0.0, 2.0 * w));
        t.insert(p("mlp.up_proj.weight"), g.tensor(&[ffn, d], 0.0, 2.0 * w));
        t.insert(
            p("mlp.down_proj.weight"),
            g.tensor(&[d, ffn], 0.0, 1.0 / (ffn as f32).sqrt()),
        );
    }
    t.insert("model.norm.weight".to_string(), g.tensor(&[d], 0.0, 0.3));
    let mut config = json!({
        "architectures": [if gemma3 { "Gemma3ForCausalLM" } else { "Gemma2ForCausalLM" }],
        "model_type": if gemma3 { "gemma3_text" } else { "gemma2" },
        "hidden_size": d,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": hd,
        "intermediate_size": ffn,
        "vocab_size": VOCAB,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_act": "gelu_pytorch_tanh",
        "attention_bias": false,
        "query_pre_attn_scalar": hd,
        "sliding_window": 5,
        "tie_word_embeddings": true,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "float32",
    });
    let extra = if gemma3 {
        json!({
            "rope_theta": 1_000_000.0,
            "rope_local_base_freq": 10_000.0,
            "rope_scaling": null,
            "sliding_window_pattern": pattern,
            "attn_logit_softcapping": null,
            "final_logit_softcapping": null,
        })
    } else {
        json!({
            "rope_theta": 10_000.0,
            "attn_logit_softcapping": 2.0,
            "final_logit_softcapping": 3.0,
        })
    };
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    if layer_types {
        let p = if gemma3 { pattern } else { 2 };
        let types: Vec<&str> = (0..layers)
            .map(|i| {
                if (i + 1) % p == 0 {
                    "full_attention"
                } else {
                    "sliding_attention"
                }
            })
            .collect();
        config["layer_types"] = json!(types);
    }
    TinyModel { config, tensors: t }
}

/// How to write the weights.
#[derive(Clone, Copy)]
pub struct Layout {
    pub dtype: DType,
    /// Number of `model-0000i-of-0000n.safetensors` shards (1: `model.safetensors`).
    pub shards: usize,
    /// Write `model.safetensors.index.json` (shards only).
    pub index: bool,
}

pub const F32: Layout = Layout {
    dtype: DType::F32,
    shards: 1,
    index: false,
};

/// Writes the folder `dir` (created) and returns the weight files written.
pub fn write(dir: &Path, m: &TinyModel, layout: Layout) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&m.config).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    write_tokenizer(dir, m.config["model_type"] != "gpt2");
    let mut names: Vec<&String> = m.tensors.keys().collect();
    names.sort();
    let n = layout.shards.max(1);
    let mut files = Vec::new();
    let mut weight_map = serde_json::Map::new();
    for s in 0..n {
        let file = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", s + 1)
        };
        let part: HashMap<String, Tensor> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % n == s)
            .map(|(_, k)| {
                let t = &m.tensors[*k];
                // Float weights take the layout's dtype; others (spoiled fixtures) stay as they are.
                let t = if t.dtype().is_float() {
                    t.to_dtype(layout.dtype).unwrap_or_else(|e| panic!("{e}"))
                } else {
                    t.clone()
                };
                weight_map.insert(k.to_string(), Value::String(file.clone()));
                (k.to_string(), t)
            })
            .collect();
        let path = dir.join(&file);
        candle_core::safetensors::save(&part, &path).unwrap_or_else(|e| panic!("{e}"));
        files.push(path);
    }
    if n > 1 && layout.index {
        let index = json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    files
}

/// A word-level `tokenizer.json` over [`words`] (whitespace split), and for Llama-like models a
/// `tokenizer_config.json` naming BOS/EOS and asking for BOS. GPT-2 gets no tokenizer config, as
/// `openai-community/gpt2`: its EOS comes from `config.json`.
fn write_tokenizer(dir: &Path, with_config: bool) {
    let vocab = words()
        .into_iter()
        .enumerate()
        .map(|(i, w)| (w, i as u32))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("w99".into())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(WhitespaceSplit));
    tok.save(dir.join("tokenizer.json"), false)
        .unwrap_or_else(|e| panic!("{e}"));
    if with_config {
        let cfg = json!({ "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true });
        std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// All tensors of the weight files, converted to f32 (for the reference implementations).
pub fn load_all(files: &[PathBuf]) -> HashMap<String, Tensor> {
    let mut all = HashMap::new();
    for f in files {
        let part = candle_core::safetensors::load(f, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        for (k, v) in part {
            all.insert(k, v.to_dtype(DType::F32).unwrap_or_else(|e| panic!("{e}")));
        }
    }
    all
}
