//! Architecture hyper-parameters of a decoder-only transformer.

/// Which family a model belongs to (decides the block structure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama, SmolLM2, Mistral, Qwen2 (RMSNorm, SwiGLU, RoPE, GQA).
    Llama,
    /// GPT-2 (LayerNorm, GELU MLP, learned positions).
    Gpt2,
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
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(format!(
                "{} heads are not a multiple of {} kv heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.family == Family::Llama && self.head_dim % 2 != 0 {
            return Err(format!("head dim {} is odd (RoPE needs pairs)", self.head_dim));
        }
        Ok(())
    }
}
