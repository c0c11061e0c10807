//! The Llama-family decoder (SmolLM2, Llama 2/3, Mistral, Qwen2) with hook points.
//!
//! Per layer `i` (pre-norm residual block):
//! ```text
//! h = RMSNorm(x)                        → layers.i.attn_norm
//! a = Wo · Attn(RoPE(Wq h), RoPE(Wk h), Wv h)   → layers.i.attn_out
//! x = x + a
//! g = RMSNorm(x)                        → layers.i.mlp_norm   (HF: post_attention_layernorm)
//! m = W_down (SiLU(W_gate g) ⊙ W_up g)  → layers.i.mlp_out
//! x = x + m                             → layers.i.resid
//! ```
//! Activations are row-major `[batch × tokens, d]` buffers; a batch is right-padded and
//! padding keys are masked out of attention, so padding never changes real tokens' results.

use super::block_weights::{AttnWeights, MlpWeights};
use super::config::ModelConfig;
use super::embedding::Embedding;
use super::error::Result;
use super::forward::{
    Batch, ForwardOutput, LogitsMode, cached_attention, check_batch, logit_rows, run_hook, token_positions,
    token_windows,
};
use super::hooks::{HookKind, Hooks};
use super::kv_cache::KvCache;
use super::linear::{Linear, MatPath};
use super::ops::{Rope, add_in_place, rms_norm, silu_mul, silu_mul_poly};

/// One decoder layer's weights.
#[derive(Debug)]
pub struct LlamaLayer {
    /// Pre-attention RMSNorm gain `[d]`.
    pub attn_norm: Vec<f32>,
    /// Attention projections.
    pub attn: AttnWeights,
    /// Pre-MLP RMSNorm gain `[d]`.
    pub mlp_norm: Vec<f32>,
    /// Gated MLP projections.
    pub mlp: MlpWeights,
}

/// A Llama-family model.
#[derive(Debug)]
pub struct LlamaModel {
    /// Hyper-parameters.
    pub cfg: ModelConfig,
    /// Token embedding `[vocab, d]`.
    pub embed: Embedding,
    /// Decoder layers.
    pub layers: Vec<LlamaLayer>,
    /// Final RMSNorm gain `[d]`.
    pub final_norm: Vec<f32>,
    /// Output projection `[vocab, d]` (tied to the embedding when the file has none).
    pub lm_head: Linear,
}

impl LlamaModel {
    /// Checks a batch against the model and the caches.
    fn check(&self, b: &Batch<'_>, caches: &[KvCache]) -> Result<()> {
        check_batch(b, caches, self.cfg.vocab_size, self.layers.len())
    }

    /// Runs the model on a batch, appending real tokens to each row's cache, calling hooks at
    /// their hook points, and returning logits as `mode` asks.
    pub fn forward(
        &self,
        batch: &Batch<'_>,
        caches: &mut [KvCache],
        hooks: &mut dyn Hooks,
        path: MatPath,
        mode: LogitsMode,
    ) -> Result<ForwardOutput> {
        self.check(batch, caches)?;
        let cfg = &self.cfg;
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.n_heads, cfg.n_kv_heads);
        let n = batch.batch * batch.seq;
        let starts: Vec<usize> = caches.iter().map(KvCache::len).collect();
        let windows = token_windows(&starts, batch.prompt_lens);
        let rope = Rope::new(hd, cfg.rope_theta, cfg.rope_interleaved).table(token_positions(&starts, batch));

        let mut x = Vec::with_capacity(n * d);
        self.embed.lookup(batch.tokens, &mut x)?;
        let mut h = Vec::new();
        let stopped = |out: &mut ForwardOutput| {
            out.stopped = true;
        };
        let mut out = ForwardOutput::default();

        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, cfg.norm_eps, &mut h);
            if run_hook(hooks, l, HookKind::AttnNorm, &mut h, batch, d, &windows)? {
                stopped(&mut out);
                return Ok(out);
            }
            let a = &layer.attn;
            let [mut q, mut k, v] = Linear::forward_group([&a.wq, &a.wk, &a.wv], &h, n, path)?;
            for (r, (qr, kr)) in q
                .chunks_exact_mut(nh * hd)
                .zip(k.chunks_exact_mut(nkv * hd))
                .enumerate()
            {
                rope.apply(r, qr, hd);
                rope.apply(r, kr, hd);
            }
            let attn = cached_attention(l, &q, &k, &v, batch, caches, &starts, (nh, nkv, hd))?;
            let mut a = layer.attn.wo.forward(&attn, n, path)?;
            if run_hook(hooks, l, HookKind::AttnOut, &mut a, batch, d, &windows)? {
                stopped(&mut out);
                return Ok(out);
            }
            add_in_place(&mut x, &a);
            rms_norm(&x, &layer.mlp_norm, cfg.norm_eps, &mut h);
            if run_hook(hooks, l, HookKind::MlpNorm, &mut h, batch, d, &windows)? {
                stopped(&mut out);
                return Ok(out);
            }
            let [mut g, u] = Linear::forward_group([&layer.mlp.w_gate, &layer.mlp.w_up], &h, n, path)?;
            // A decode step (one new token per row) takes the SIMD polynomial `exp`; prompts keep
            // libm's `expf`, so their logits stay candle's `quantized_llama`'s bit for bit.
            if batch.seq == 1 {
                silu_mul_poly(&mut g, &u);
            } else {
                silu_mul(&mut g, &u);
            }
            let mut m = layer.mlp.w_down.forward(&g, n, path)?;
            if run_hook(hooks, l, HookKind::MlpOut, &mut m, batch, d, &windows)? {
                stopped(&mut out);
                return Ok(out);
            }
            add_in_place(&mut x, &m);
            if run_hook(hooks, l, HookKind::Resid, &mut x, batch, d, &windows)? {
                stopped(&mut out);
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

    /// The output head on final-normed hidden states `h` (`[rows, d]`): logits `[rows, vocab]`.
    pub fn head(&self, h: &[f32], rows: usize, path: MatPath) -> Result<Vec<f32>> {
        self.lm_head.forward(h, rows, path)
    }
}
