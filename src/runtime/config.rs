//! Architecture hyper-parameters of a decoder-only transformer.

/// Most layers a model file may declare: far more than any published model (the largest have
/// about 130), so a larger count is a broken header, refused before anything is sized by it.
pub const MAX_LAYERS: usize = 4096;

/// Which family a model belongs to (decides the block structure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama, SmolLM2, Mistral, Qwen2 (RMSNorm, SwiGLU, RoPE, GQA).
    Llama,
    /// GPT-2 (LayerNorm, GELU MLP, learned positions).
    Gpt2,
    /// Gemma 2 and Gemma 3 (RMSNorm before and after attention and the MLP, GeGLU, scaled
    /// embedding, sliding-window layers; the details are in [`GemmaConfig`]).
    Gemma,
}

/// What a Gemma model adds to the shared hyper-parameters (src/runtime/gemma.rs).
#[derive(Debug, Clone, PartialEq)]
pub struct GemmaConfig {
    /// The embedding is multiplied by √d, rounded as the reference rounds it (to the stored
    /// embedding's dtype for Hugging Face weights; f32 in llama.cpp).
    pub embed_scale: f32,
    /// Attention scores are `q·k / √query_pre_attn_scalar`.
    pub query_pre_attn_scalar: f32,
    /// `c·tanh(s/c)` on the scaled attention scores (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// `c·tanh(l/c)` on the logits (Gemma 2).
    pub final_softcap: Option<f32>,
    /// Keys a sliding-window layer's query sees (itself included).
    pub sliding_window: Option<usize>,
    /// Per layer: sliding-window (local) attention, else global.
    pub sliding: Vec<bool>,
    /// RoPE base of the sliding-window layers (global layers use `ModelConfig::rope_theta`).
    pub local_rope_theta: f32,
    /// Linear RoPE scaling factor of the global layers (positions divided by it; 1 = none).
    pub global_rope_scale: f32,
    /// RMSNorm of each query and key head before RoPE (Gemma 3).
    pub qk_norm: bool,
}

/// The hyper-parameters the forward pass needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Architecture name as the file states it (`llama`, `qwen2`, `mistral`, `gpt2`).
    pub architecture: String,
    /// Block structure.
    pub family: Family,
    /// Residual width d.
    pub hidden_size: usize,
    /// Decoder layers.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (GQA: divides `n_heads`).
    pub n_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub max_position: usize,
    /// RoPE base frequency θ.
    pub rope_theta: f32,
    /// RoPE pairs `(2i, 2i+1)` (GGUF Llama layout) instead of `(i, i + d/2)` (HF layout).
    pub rope_interleaved: bool,
    /// Norm epsilon.
    pub norm_eps: f32,
    /// q/k/v projections carry biases (Qwen2).
    pub qkv_bias: bool,
    /// Gemma's own hyper-parameters (`Some` exactly for [`Family::Gemma`]).
    pub gemma: Option<GemmaConfig>,
}

impl ModelConfig {
    /// Checks internal consistency.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("hidden size", self.hidden_size),
            ("layers", self.n_layers),
            ("heads", self.n_heads),
            ("kv heads", self.n_kv_heads),
            ("head dim", self.head_dim),
            ("intermediate size", self.intermediate_size),
            ("vocabulary", self.vocab_size),
        ];
        if let Some((what, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{what} is zero"));
        }
        // Projection widths and per-layer hook tables are sized from these: no product may
        // overflow, and a layer count beyond any real model is a broken header.
        if self.n_heads.checked_mul(self.head_dim).is_none()
            || self
                .hidden_size
                .checked_mul(self.intermediate_size.max(self.vocab_size))
                .is_none()
        {
            return Err("the model's sizes overflow".into());
        }
        if self.n_layers > MAX_LAYERS {
            return Err(format!("{} layers (at most {MAX_LAYERS})", self.n_layers));
        }
        if self.max_position == 0 {
            return Err("the context length is zero".into());
        }
        // Scalars every token goes through: a NaN or zero here loads fine and then produces
        // garbage (RoPE angles of NaN or θ^0), so they are refused with the file. GPT-2 has
        // learned positions and no RoPE base.
        let rope = matches!(self.family, Family::Llama | Family::Gemma);
        if rope && !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!(
                "RoPE base θ = {} is not a positive number",
                self.rope_theta
            ));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return Err(format!("norm epsilon {} is not a number ≥ 0", self.norm_eps));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!(
                "{} heads are not a multiple of {} kv heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if matches!(self.family, Family::Llama | Family::Gemma) && !self.head_dim.is_multiple_of(2) {
            return Err(format!("head dim {} is odd (RoPE needs pairs)", self.head_dim));
        }
        match (&self.gemma, self.family) {
            (Some(g), Family::Gemma) => {
                if g.sliding.len() != self.n_layers {
                    return Err(format!(
                        "{} layer attention types for {} layers",
                        g.sliding.len(),
                        self.n_layers
                    ));
                }
                if g.sliding_window == Some(0) {
                    return Err("sliding window is zero".into());
                }
                let positive = [
                    ("local RoPE base θ", g.local_rope_theta),
                    ("query_pre_attn_scalar", g.query_pre_attn_scalar),
                    ("rope scaling factor", g.global_rope_scale),
                    ("attention soft-cap", g.attn_softcap.unwrap_or(1.0)),
                    ("final logit soft-cap", g.final_softcap.unwrap_or(1.0)),
                ];
                if let Some((what, v)) = positive.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
                    return Err(format!("{what} {v} is not a positive number"));
                }
                Ok(())
            }
            (None, Family::Gemma) => Err("a Gemma model needs its Gemma hyper-parameters".into()),
            (Some(_), _) => Err("Gemma hyper-parameters on a model that is not Gemma".into()),
            (None, _) => Ok(()),
        }
    }
}
