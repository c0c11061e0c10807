//! The Gemma 2 / Gemma 3 decoder with hook points.
//!
//! Per layer `i` (RMSNorm before *and after* attention and the MLP):
//! ```text
//! h = RMSNorm(x)                                  → layers.i.attn_norm      (HF: input_layernorm)
//! q, k = RMSNorm_head(Wq h), RMSNorm_head(Wk h)   (Gemma 3 only: q_norm, k_norm)
//! a = Wo · Attn(RoPE(q), RoPE(k), Wv h)           → layers.i.attn_out
//! a = RMSNorm(a)                                  → layers.i.post_attn_norm (HF: post_attention_layernorm)
//! x = x + a
//! g = RMSNorm(x)                                  → layers.i.mlp_norm       (HF: pre_feedforward_layernorm)
//! m = W_down (GELU_tanh(W_gate g) ⊙ W_up g)       → layers.i.mlp_out
//! m = RMSNorm(m)                                  → layers.i.post_mlp_norm  (HF: post_feedforward_layernorm)
//! x = x + m                                       → layers.i.resid
//! ```
//! with the embedding scaled by √d, the final RMSNorm, the (tied) output projection and, on
//! Gemma 2, `c·tanh(·/c)` soft-capping of attention scores and logits.
//!
//! Every norm gain is held as the factor it multiplies by: Hugging Face stores `w` and the
//! models compute `x̂ · (1 + w)` (transformers' `Gemma3RMSNorm`, candle's `RmsNorm`), so the
//! folder loader adds 1; llama.cpp's converter already stored `1 + w` in the GGUF file
//! (`convert_hf_to_gguf.py`: `data_torch + 1` for every `norm.weight` of Gemma 2, `norm_shift`
//! = 1.0 for Gemma 3), so the GGUF loader takes the values as they are.
//!
//! Verified against transformers' `modeling_gemma2.py` / `modeling_gemma3.py`, llama.cpp's
//! `gemma2-iswa.cpp` / `gemma3.cpp` and candle-transformers' `gemma2.rs` / `gemma3.rs`. Where
//! candle differs from transformers we follow transformers (and llama.cpp, which agrees):
//! - **Query scaling**: candle scales scores by 1/√head_dim; transformers by
//!   `query_pre_attn_scalar^-½` (llama.cpp: 1/√(d/heads) on the 27B models, else 1/√head_dim).
//!   They differ on Gemma 2 27B (144 vs 128) and Gemma 3 27B (168 vs 128), where the models
//!   were trained with `query_pre_attn_scalar`.
//! - **Sliding window**: candle's prefill mask lets a query see `window + 1` keys
//!   (`j + window < i` masked; and a prefill at least as long as the window fails in its
//!   rotating cache), its decode cache `window` keys; transformers
//!   (`kv_idx > q_idx - sliding_window`) and llama.cpp (masked when `p_q − p_k >= n_swa`) see
//!   `window`, itself and the `window − 1` before it, as we do.
//! - **Gemma 2**: candle applies its window to every layer in prefill and to none in decode;
//!   transformers and llama.cpp alternate, layer 0 sliding, as we do.
//! - candle's `quantized_gemma3.rs` (GGUF) is no reference at all: its MLP uses SiLU where
//!   Gemma (transformers `gelu_pytorch_tanh`, llama.cpp `LLM_FFN_GELU`) uses GELU, and it
//!   ignores the linear RoPE scaling llama.cpp applies to the global layers.

use super::block_weights::{AttnWeights, MlpWeights};
use super::config::{GemmaConfig, ModelConfig};
use super::embedding::Embedding;
use super::error::{Result, RuntimeError};
use super::forward::{
    AttnOptions, Batch, ForwardOutput, LogitsMode, cached_attention_with, check_batch, logit_rows, run_hook,
    token_positions, token_windows,
};
use super::hooks::{HookKind, Hooks};
use super::kv_cache::KvCache;
use super::linear::{Linear, MatPath};
use super::ops::{Rope, add_in_place, gelu_mul, rms_norm, soft_cap};

/// One decoder layer's weights (norm gains as multipliers, `1 + w` of the HF weights).
#[derive(Debug)]
pub struct GemmaLayer {
    /// Pre-attention RMSNorm gain `[d]`.
    pub attn_norm: Vec<f32>,
    /// Attention projections.
    pub attn: AttnWeights,
    /// Per-head query and key RMSNorm gains `[hd]` (Gemma 3).
    pub qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// Post-attention RMSNorm gain `[d]`.
    pub post_attn_norm: Vec<f32>,
    /// Pre-MLP RMSNorm gain `[d]`.
    pub mlp_norm: Vec<f32>,
    /// Gated MLP projections.
    pub mlp: MlpWeights,
    /// Post-MLP RMSNorm gain `[d]`.
    pub post_mlp_norm: Vec<f32>,
}

/// A Gemma 2 or Gemma 3 model.
#[derive(Debug)]
pub struct GemmaModel {
    /// Hyper-parameters (`cfg.gemma` is `Some`).
    pub cfg: ModelConfig,
    /// Token embedding `[vocab, d]` (unscaled, as stored).
    pub embed: Embedding,
    /// Decoder layers.
    pub layers: Vec<GemmaLayer>,
    /// Final RMSNorm gain `[d]`.
    pub final_norm: Vec<f32>,
    /// Output projection `[vocab, d]` (the embedding unless the file has its own).
    pub lm_head: Linear,
}

impl GemmaModel {
    /// The Gemma hyper-parameters.
    fn gemma(&self) -> Result<&GemmaConfig> {
        self.cfg
            .gemma
            .as_ref()
            .ok_or_else(|| RuntimeError::BadInput("Gemma model without Gemma hyper-parameters".into()))
    }

    /// Runs the model on a batch, appending real tokens to each row's cache, calling hooks at
    /// their hook points, and returning logits as `mode` asks (see
    /// [`super::llama::LlamaModel::forward`]).
    pub fn forward(
        &self,
        batch: &Batch<'_>,
        caches: &mut [KvCache],
        hooks: &mut dyn Hooks,
        path: MatPath,
        mode: LogitsMode,
    ) -> Result<ForwardOutput> {
        check_batch(batch, caches, self.cfg.vocab_size, self.layers.len())?;
        let cfg = &self.cfg;
        let g = self.gemma()?;
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.n_heads, cfg.n_kv_heads);
        let n = batch.batch * batch.seq;
        let starts: Vec<usize> = caches.iter().map(KvCache::len).collect();
        let windows = token_windows(&starts, batch.prompt_lens);
        let global_rope = Rope::new(hd, cfg.rope_theta, cfg.rope_interleaved)
            .linear_scaled(g.global_rope_scale)
            .table(token_positions(&starts, batch));
        let local_rope =
            Rope::new(hd, g.local_rope_theta, cfg.rope_interleaved).table(token_positions(&starts, batch));
        let attn_opts = |sliding: bool| AttnOptions {
            scale: 1.0 / f64::from(g.query_pre_attn_scalar).sqrt(),
            softcap: g.attn_softcap.map(f64::from),
            window: if sliding { g.sliding_window } else { None },
        };

        let mut x = Vec::with_capacity(n * d);
        self.embed.lookup(batch.tokens, &mut x)?;
        x.iter_mut().for_each(|v| *v *= g.embed_scale);
        let mut h = Vec::new();
        let mut out = ForwardOutput::default();
        let hook = |hooks: &mut dyn Hooks, l, kind, data: &mut [f32], out: &mut ForwardOutput| {
            let stop = run_hook(hooks, l, kind, data, batch, d, &windows)?;
            out.stopped = stop;
            Ok::<bool, RuntimeError>(stop)
        };

        for (l, layer) in self.layers.iter().enumerate() {
            let sliding = g.sliding.get(l).copied().unwrap_or(false);
            rms_norm(&x, &layer.attn_norm, cfg.norm_eps, &mut h);
            if hook(hooks, l, HookKind::AttnNorm, &mut h, &mut out)? {
                return Ok(out);
            }
            let a = &layer.attn;
            let [mut q, mut k, v] = Linear::forward_group([&a.wq, &a.wk, &a.wv], &h, n, path)?;
            if let Some((q_norm, k_norm)) = &layer.qk_norm {
                // Gains of length hd: every head of every row is normalised on its own.
                rms_norm(&q, q_norm, cfg.norm_eps, &mut h);
                std::mem::swap(&mut q, &mut h);
                rms_norm(&k, k_norm, cfg.norm_eps, &mut h);
                std::mem::swap(&mut k, &mut h);
            }
            let rope = if sliding { &local_rope } else { &global_rope };
            for (r, (qr, kr)) in q
                .chunks_exact_mut(nh * hd)
                .zip(k.chunks_exact_mut(nkv * hd))
                .enumerate()
            {
                rope.apply(r, qr, hd);
                rope.apply(r, kr, hd);
            }
            let attn = cached_attention_with(
                l,
                (&q, &k, &v),
                batch,
                caches,
                &starts,
                (nh, nkv, hd),
                attn_opts(sliding),
            )?;
            let mut a = layer.attn.wo.forward(&attn, n, path)?;
            if hook(hooks, l, HookKind::AttnOut, &mut a, &mut out)? {
                return Ok(out);
            }
            rms_norm(&a, &layer.post_attn_norm, cfg.norm_eps, &mut h);
            if hook(hooks, l, HookKind::PostAttnNorm, &mut h, &mut out)? {
                return Ok(out);
            }
            add_in_place(&mut x, &h);
            rms_norm(&x, &layer.mlp_norm, cfg.norm_eps, &mut h);
            if hook(hooks, l, HookKind::MlpNorm, &mut h, &mut out)? {
                return Ok(out);
            }
            let [mut gate, up] = Linear::forward_group([&layer.mlp.w_gate, &layer.mlp.w_up], &h, n, path)?;
            gelu_mul(&mut gate, &up);
            let mut m = layer.mlp.w_down.forward(&gate, n, path)?;
            if hook(hooks, l, HookKind::MlpOut, &mut m, &mut out)? {
                return Ok(out);
            }
            rms_norm(&m, &layer.post_mlp_norm, cfg.norm_eps, &mut h);
            if hook(hooks, l, HookKind::PostMlpNorm, &mut h, &mut out)? {
                return Ok(out);
            }
            add_in_place(&mut x, &h);
            if hook(hooks, l, HookKind::Resid, &mut x, &mut out)? {
                return Ok(out);
            }
        }
        for (c, (&s, &v)) in caches.iter_mut().zip(starts.iter().zip(batch.valid)) {
            c.set_len(s + v);
        }

        let Some((sel, rows)) = logit_rows(&x, d, batch, mode) else {
            return Ok(out);
        };
        rms_norm(&sel, &self.final_norm, cfg.norm_eps, &mut h);
        if mode == LogitsMode::LastHidden {
            out.hidden = h;
            return Ok(out);
        }
        out.logits = self.head(&h, rows, path)?;
        Ok(out)
    }

    /// The output head on final-normed hidden states `h` (`[rows, d]`): logits `[rows, vocab]`,
    /// soft-capped where the model says so.
    pub fn head(&self, h: &[f32], rows: usize, path: MatPath) -> Result<Vec<f32>> {
        let mut logits = self.lm_head.forward(h, rows, path)?;
        if let Some(c) = self.gemma()?.final_softcap {
            soft_cap(&mut logits, c);
        }
        Ok(logits)
    }
}

/// Which layers of an `n_layers` Gemma model use sliding-window attention when the file names
/// no per-layer types: the last of every `pattern` layers is global (transformers:
/// `bool((i + 1) % pattern)`; llama.cpp `set_swa_pattern(pattern)`: `il % pattern < pattern − 1`).
/// Gemma 2 alternates (`pattern` 2: layer 0 sliding), Gemma 3 has five local layers per global
/// one (6). A pattern of 1 (or 0) means no sliding layers.
pub fn sliding_pattern(n_layers: usize, pattern: usize) -> Vec<bool> {
    (0..n_layers)
        .map(|i| pattern > 1 && !(i + 1).is_multiple_of(pattern))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_patterns_follow_transformers_and_llama_cpp() {
        assert_eq!(sliding_pattern(4, 2), [true, false, true, false]);
        let g3 = sliding_pattern(18, 6);
        let global: Vec<usize> = (0..18).filter(|&i| !g3[i]).collect();
        assert_eq!(global, [5, 11, 17]);
        // llama.cpp's rule gives the same layers.
        assert!((0..18).all(|il| g3[il] == (il % 6 < 5)));
        assert_eq!(sliding_pattern(3, 1), [false; 3]);
    }
}
