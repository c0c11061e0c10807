//! A loaded model: network, tokenizer and fingerprint, from a GGUF file or a Hugging Face
//! model folder (the loading itself is in [`super::load_model`]).

use std::path::PathBuf;

use crate::transport::ModelFingerprint;

use super::config::ModelConfig;
use super::error::Result;
use super::forward::{Batch, ForwardOutput, LogitsMode};
use super::gemma::GemmaModel;
use super::gpt2::Gpt2Model;
use super::hooks::{HookPoint, Hooks, hook_points};
use super::kv_cache::KvCache;
use super::linear::{MatPath, dense_cache_budget};
use super::llama::LlamaModel;
use super::tokenizer::TextTokenizer;

/// A network of any supported architecture.
#[derive(Debug)]
pub enum Network {
    /// Llama family (Llama, SmolLM2, Mistral, Qwen2).
    Llama(LlamaModel),
    /// GPT-2.
    Gpt2(Gpt2Model),
    /// Gemma 2 and Gemma 3.
    Gemma(GemmaModel),
}

impl Network {
    /// Hyper-parameters.
    pub fn cfg(&self) -> &ModelConfig {
        match self {
            Network::Llama(m) => &m.cfg,
            Network::Gpt2(m) => &m.cfg,
            Network::Gemma(m) => &m.cfg,
        }
    }

    /// The longest prompt whose pass runs every layer's matrices on the kernels decoding uses
    /// ([`super::linear::Linear::same_kernels_below`]): such prompts give the same numbers
    /// per row whether they run alone on the prompt path or several together as one batch on
    /// [`MatPath::Quantized`] (the continuous-batching engine's grouped prompts). The output
    /// head is left out: with [`LogitsMode::Last`] it sees one input per row, not the prompt.
    pub fn same_kernels_prompt_max(&self) -> usize {
        use super::block_weights::{AttnWeights, MlpWeights};
        use super::linear::Linear;
        let gated = |a: &'_ AttnWeights, m: &'_ MlpWeights| -> usize {
            a.linears()
                .into_iter()
                .chain(m.linears())
                .map(Linear::same_kernels_below)
                .min()
                .unwrap_or(0)
        };
        let per_layer: Vec<usize> = match self {
            Network::Llama(m) => m.layers.iter().map(|l| gated(&l.attn, &l.mlp)).collect(),
            Network::Gemma(m) => m.layers.iter().map(|l| gated(&l.attn, &l.mlp)).collect(),
            Network::Gpt2(m) => m
                .layers
                .iter()
                .flat_map(|l| [&l.c_attn, &l.attn_proj, &l.c_fc, &l.mlp_proj])
                .map(Linear::same_kernels_below)
                .collect(),
        };
        per_layer.into_iter().min().unwrap_or(0)
    }

    /// Whether every matrix of every layer, and the output head, runs on the sixteen-row
    /// kernels ([`super::linear::Linear::on_sixteen_row_kernels`]).
    pub fn layers_on_sixteen_row_kernels(&self) -> bool {
        use super::block_weights::{AttnWeights, MlpWeights};
        use super::linear::Linear;
        let gated = |a: &'_ AttnWeights, m: &'_ MlpWeights| {
            a.linears()
                .into_iter()
                .chain(m.linears())
                .all(Linear::on_sixteen_row_kernels)
        };
        match self {
            Network::Llama(m) => {
                m.lm_head.on_sixteen_row_kernels() && m.layers.iter().all(|l| gated(&l.attn, &l.mlp))
            }
            Network::Gemma(m) => {
                m.lm_head.on_sixteen_row_kernels() && m.layers.iter().all(|l| gated(&l.attn, &l.mlp))
            }
            Network::Gpt2(m) => {
                m.lm_head.on_sixteen_row_kernels()
                    && m.layers
                        .iter()
                        .flat_map(|l| [&l.c_attn, &l.attn_proj, &l.c_fc, &l.mlp_proj])
                        .all(Linear::on_sixteen_row_kernels)
            }
        }
    }

    /// The output head on final-normed hidden states `h` (`[rows, d]`, what
    /// [`LogitsMode::LastHidden`] gives): logits `[rows, vocab]`, as [`LogitsMode::Last`] gives
    /// them for the same rows.
    pub fn head(&self, h: &[f32], rows: usize, path: MatPath) -> Result<Vec<f32>> {
        match self {
            Network::Llama(m) => m.head(h, rows, path),
            Network::Gpt2(m) => m.head(h, rows, path),
            Network::Gemma(m) => m.head(h, rows, path),
        }
    }

    /// Runs the network on a batch (see [`LlamaModel::forward`]: caches grow by the real
    /// tokens, hooks see `[batch, seq, d]` activations, logits as `mode` asks).
    pub fn forward(
        &self,
        batch: &Batch<'_>,
        caches: &mut [KvCache],
        hooks: &mut dyn Hooks,
        path: MatPath,
        mode: LogitsMode,
    ) -> Result<ForwardOutput> {
        match self {
            Network::Llama(m) => m.forward(batch, caches, hooks, path, mode),
            Network::Gpt2(m) => m.forward(batch, caches, hooks, path, mode),
            Network::Gemma(m) => m.forward(batch, caches, hooks, path, mode),
        }
    }
}

/// A model ready to run.
pub struct LoadedModel {
    /// The network.
    pub model: Network,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Identity for maps files.
    pub fingerprint: ModelFingerprint,
    /// Where it was loaded from.
    pub source: PathBuf,
}

impl LoadedModel {
    /// Hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        self.model.cfg()
    }

    /// The hook points this model has, in forward order (see [`hook_points`]).
    pub fn hook_points(&self) -> Vec<HookPoint> {
        hook_points(self.config())
    }

    /// A fresh cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config().n_layers)
    }

    /// A fresh cache for one sequence with room for `positions` positions (the prompt and
    /// the tokens to generate; capped by the context and [`KvCache::reserve`]'s limit).
    pub fn cache_for(&self, positions: usize) -> KvCache {
        let c = self.config();
        let mut cache = self.new_cache();
        cache.reserve(positions.min(c.max_position), c.n_kv_heads * c.head_dim);
        cache
    }

    /// A copy of `cache` with room for `positions` positions in all (a plain clone holds only
    /// what is cached, and would grow by doubling from there).
    pub fn fork_cache(&self, cache: &KvCache, positions: usize) -> KvCache {
        let c = self.config();
        cache.fork(positions.min(c.max_position), c.n_kv_heads * c.head_dim)
    }

    /// A copy of the first `len` positions of `cache` with room for `positions` positions in
    /// all ([`KvCache::fork_prefix`]).
    pub fn fork_cache_prefix(&self, cache: &KvCache, len: usize, positions: usize) -> KvCache {
        let c = self.config();
        cache.fork_prefix(len, positions.min(c.max_position), c.n_kv_heads * c.head_dim)
    }

    /// A cache for a one-shot pass that is never continued (see [`KvCache::transient`]).
    pub fn transient_cache(&self) -> KvCache {
        KvCache::transient(self.config().n_layers)
    }

    /// The matrix path for batched passes that need no logits (fitting, activation
    /// collection); see [`path_for_layer_passes`].
    pub fn layer_pass_path(&self) -> MatPath {
        path_for_layer_passes(self.config(), dense_cache_budget())
    }
}

/// Bytes of f32 copies of every decoder layer's projections (`[out, in]` each: q, k, v, o,
/// gate, up, down; GPT-2's four matrices are counted as if they were those seven, an
/// overestimate), saturating.
pub fn layers_f32_bytes(c: &ModelConfig) -> usize {
    let d = c.hidden_size;
    let q = c.n_heads.saturating_mul(c.head_dim);
    let kv = c.n_kv_heads.saturating_mul(c.head_dim);
    let attn = d.saturating_mul(q.saturating_mul(2).saturating_add(kv.saturating_mul(2)));
    let mlp = d.saturating_mul(c.intermediate_size).saturating_mul(3);
    attn.saturating_add(mlp)
        .saturating_mul(c.n_layers)
        .saturating_mul(4)
}

/// The matrix path for batched passes without logits on a model with config `c`, given the
/// dense cache budget (bytes): the dense f32 path when the f32 copies of all layers fit in the
/// budget (they are made once and kept, and the fixed-order dense product is the fastest), else
/// the quantized kernels. Past the budget the dense path would rebuild the copies for every
/// chunk of sentences, on one thread, and keep a budget's worth besides: on a 1.4B Q4_K_M file
/// fitting 128 + 128 sentences took 286 s at one core and 2.9× the file in memory.
pub fn path_for_layer_passes(c: &ModelConfig, budget: usize) -> MatPath {
    if layers_f32_bytes(c) <= budget {
        MatPath::Dense
    } else {
        MatPath::Quantized
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::config::Family;

    fn config(d: usize, layers: usize, heads: usize, kv: usize, ffn: usize) -> ModelConfig {
        ModelConfig {
            architecture: "llama".into(),
            family: Family::Llama,
            hidden_size: d,
            n_layers: layers,
            n_heads: heads,
            n_kv_heads: kv,
            head_dim: d / heads,
            intermediate_size: ffn,
            vocab_size: 49152,
            max_position: 8192,
            rope_theta: 1e4,
            rope_interleaved: true,
            norm_eps: 1e-5,
            qkv_bias: false,
            gemma: None,
        }
    }

    #[test]
    fn small_models_fit_densely_and_large_ones_stay_quantized() {
        let gib = 1 << 30;
        // SmolLM2-135M: 30 × (2·576² + 2·576·192 + 3·576·1536) weights = 424 MB as f32.
        let smol = config(576, 30, 9, 3, 1536);
        assert_eq!(
            layers_f32_bytes(&smol),
            30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536) * 4
        );
        assert_eq!(path_for_layer_passes(&smol, gib), MatPath::Dense);
        // Qwen2.5-1.5B shapes: 1.31 G weights, 5.2 GB (4.9 GiB) as f32.
        let big = config(1536, 28, 12, 2, 8960);
        assert_eq!(
            layers_f32_bytes(&big),
            28 * (1536 * (2 * 1536 + 2 * 256) + 3 * 1536 * 8960) * 4
        );
        assert!(layers_f32_bytes(&big) > 4 * gib);
        assert_eq!(path_for_layer_passes(&big, gib), MatPath::Quantized);
        // The budget decides: the same small model under a 100 MiB budget.
        assert_eq!(path_for_layer_passes(&smol, 100 << 20), MatPath::Quantized);
        // Sizes that overflow saturate instead of wrapping to a small number.
        let absurd = config(1 << 40, 1 << 20, 1, 1, 1 << 40);
        assert_eq!(path_for_layer_passes(&absurd, gib), MatPath::Quantized);
    }
}
