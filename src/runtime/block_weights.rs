//! The projection matrices every decoder block of the Llama and Gemma families holds: the
//! attention's q, k, v and output projections and the gated MLP's gate, up and down
//! projections. The blocks differ in their norms and activations (`llama.rs`, `gemma.rs`), not
//! in these; the loaders (`gguf.rs`, `hf.rs`) build them from each format's tensor names.

use super::config::ModelConfig;
use super::error::Result;
use super::linear::Linear;

/// Attention projections of one layer (`hd` = head dim, `d` = hidden size).
#[derive(Debug)]
pub struct AttnWeights {
    /// Query projection `[n_heads·hd, d]`.
    pub wq: Linear,
    /// Key projection `[n_kv·hd, d]`.
    pub wk: Linear,
    /// Value projection `[n_kv·hd, d]`.
    pub wv: Linear,
    /// Output projection `[d, n_heads·hd]`.
    pub wo: Linear,
}

impl AttnWeights {
    /// The four projections.
    pub fn linears(&self) -> [&Linear; 4] {
        [&self.wq, &self.wk, &self.wv, &self.wo]
    }

    /// Loads the tensors named `names` (q, k, v, output) with `linear(name, rows, cols, bias)`;
    /// `qkv_bias` gives q, k and v a bias (Qwen2), never the output projection.
    pub fn load(
        cfg: &ModelConfig,
        names: [String; 4],
        qkv_bias: bool,
        mut linear: impl FnMut(&str, usize, usize, bool) -> Result<Linear>,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let (q_dim, kv_dim) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
        let [q, k, v, o] = names;
        Ok(Self {
            wq: linear(&q, q_dim, d, qkv_bias)?,
            wk: linear(&k, kv_dim, d, qkv_bias)?,
            wv: linear(&v, kv_dim, d, qkv_bias)?,
            wo: linear(&o, d, q_dim, false)?,
        })
    }
}

/// Gated MLP projections of one layer (`ffn` = intermediate size).
#[derive(Debug)]
pub struct MlpWeights {
    /// Gate projection `[ffn, d]`.
    pub w_gate: Linear,
    /// Up projection `[ffn, d]`.
    pub w_up: Linear,
    /// Down projection `[d, ffn]`.
    pub w_down: Linear,
}

impl MlpWeights {
    /// The three projections.
    pub fn linears(&self) -> [&Linear; 3] {
        [&self.w_gate, &self.w_up, &self.w_down]
    }

    /// Loads the tensors named `names` (gate, up, down) with `linear(name, rows, cols, bias)`.
    pub fn load(
        cfg: &ModelConfig,
        names: [String; 3],
        mut linear: impl FnMut(&str, usize, usize, bool) -> Result<Linear>,
    ) -> Result<Self> {
        let (d, ffn) = (cfg.hidden_size, cfg.intermediate_size);
        let [gate, up, down] = names;
        Ok(Self {
            w_gate: linear(&gate, ffn, d, false)?,
            w_up: linear(&up, ffn, d, false)?,
            w_down: linear(&down, d, ffn, false)?,
        })
    }
}
