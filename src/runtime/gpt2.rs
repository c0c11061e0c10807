//! GPT-2 with hook points.
//!
//! Per layer `i` (pre-norm residual block, learned absolute positions added to the embedding):
//! ```text
//! h = LayerNorm₁(x)                     → layers.i.attn_norm
//! a = c_proj · Attn(c_attn h)           → layers.i.attn_out    (c_attn: fused q, k, v)
//! x = x + a
//! g = LayerNorm₂(x)                     → layers.i.mlp_norm
//! m = c_proj′ · GELU_tanh(c_fc g)       → layers.i.mlp_out
//! x = x + m                             → layers.i.resid
//! ```
//! logits = LayerNorm_f(x) · wteᵀ. Batches are right-padded and padding keys are masked out of
//! attention exactly as in [`super::llama`], so padding never changes real tokens' results and
//! caches keep only real tokens.

use super::config::ModelConfig;
use super::error::{Result, RuntimeError};
use super::forward::{Batch, ForwardOutput, LogitsMode};
use super::forward::{cached_attention, check_batch, logit_rows, run_hook, token_windows};
use super::hooks::{HookKind, Hooks};
use super::kv_cache::KvCache;
use super::linear::{Linear, MatPath};
use super::ops::{add_in_place, gelu_tanh, layer_norm};

/// A LayerNorm's gain and bias, each `[d]`.
#[derive(Debug)]
pub struct LayerNormWeights {
    /// Gain `[d]`.
    pub weight: Vec<f32>,
    /// Bias `[d]`.
    pub bias: Vec<f32>,
}

/// One GPT-2 block's weights (linear layers as `[out, in]`, i.e. Hugging Face's `Conv1D`
/// weights transposed).
#[derive(Debug)]
pub struct Gpt2Layer {
    /// Pre-attention LayerNorm (`ln_1`).
    pub ln_1: LayerNormWeights,
    /// Fused query/key/value projection `[3d, d]` with bias `[3d]` (rows: q, then k, then v).
    pub c_attn: Linear,
    /// Attention output projection `[d, d]` with bias.
    pub attn_proj: Linear,
    /// Pre-MLP LayerNorm (`ln_2`).
    pub ln_2: LayerNormWeights,
    /// MLP up projection `[ffn, d]` with bias.
    pub c_fc: Linear,
    /// MLP down projection `[d, ffn]` with bias.
    pub mlp_proj: Linear,
}

/// A GPT-2 model.
#[derive(Debug)]
pub struct Gpt2Model {
    /// Hyper-parameters (`n_kv_heads == n_heads`, `max_position` = rows of `wpe`).
    pub cfg: ModelConfig,
    /// Token embedding `[vocab, d]`.
    pub wte: Vec<f32>,
    /// Position embedding `[max_position, d]`.
    pub wpe: Vec<f32>,
    /// Blocks.
    pub layers: Vec<Gpt2Layer>,
    /// Final LayerNorm (`ln_f`).
    pub ln_f: LayerNormWeights,
    /// Output projection `[vocab, d]` (tied to `wte` in GPT-2 checkpoints).
    pub lm_head: Linear,
}

impl Gpt2Model {
    /// Runs the model on a batch, appending real tokens to each row's cache, calling hooks at
    /// their hook points, and returning logits as `mode` asks. Same contract as
    /// [`super::llama::LlamaModel::forward`].
    pub fn forward(
        &self,
        batch: &Batch<'_>,
        caches: &mut [KvCache],
        hooks: &mut dyn Hooks,
        path: MatPath,
        mode: LogitsMode,
    ) -> Result<ForwardOutput> {
        let cfg = &self.cfg;
        check_batch(batch, caches, cfg.vocab_size, self.layers.len())?;
        let (d, hd, nh) = (cfg.hidden_size, cfg.head_dim, cfg.n_heads);
        let n = batch.batch * batch.seq;
        let starts: Vec<usize> = caches.iter().map(KvCache::len).collect();
        if let Some((s, v)) = starts
            .iter()
            .zip(batch.valid)
            .find(|(s, v)| *s + *v > cfg.max_position)
        {
            return Err(RuntimeError::BadInput(format!(
                "{} tokens exceed the model's {} positions",
                s + v,
                cfg.max_position
            )));
        }
        let windows = token_windows(&starts, batch.prompt_lens);

        let mut x = Vec::with_capacity(n * d);
        for (r, &t) in batch.tokens.iter().enumerate() {
            let (b, j) = (r / batch.seq, r % batch.seq);
            // Padding tokens may sit past the last position; they are ignored, so clamp them.
            let pos = (starts[b] + j).min(cfg.max_position - 1);
            let (t, p) = (t as usize * d, pos * d);
            x.extend(
                self.wte[t..t + d]
                    .iter()
                    .zip(&self.wpe[p..p + d])
                    .map(|(a, b)| a + b),
            );
        }
        let mut h = Vec::new();
        let mut out = ForwardOutput::default();
        let stop = |mut out: ForwardOutput| {
            out.stopped = true;
            Ok(out)
        };

        for (l, layer) in self.layers.iter().enumerate() {
            layer_norm(&x, &layer.ln_1.weight, &layer.ln_1.bias, cfg.norm_eps, &mut h);
            if run_hook(hooks, l, HookKind::AttnNorm, &mut h, batch, d, &windows)? {
                return stop(out);
            }
            let qkv = layer.c_attn.forward(&h, n, path)?;
            let (mut q, mut k, mut v) = (
                Vec::with_capacity(n * d),
                Vec::with_capacity(n * d),
                Vec::with_capacity(n * d),
            );
            for row in qkv.chunks_exact(3 * d) {
                q.extend_from_slice(&row[..d]);
                k.extend_from_slice(&row[d..2 * d]);
                v.extend_from_slice(&row[2 * d..]);
            }
            let attn = cached_attention(l, &q, &k, &v, batch, caches, &starts, (nh, nh, hd))?;
            let mut a = layer.attn_proj.forward(&attn, n, path)?;
            if run_hook(hooks, l, HookKind::AttnOut, &mut a, batch, d, &windows)? {
                return stop(out);
            }
            add_in_place(&mut x, &a);
            layer_norm(&x, &layer.ln_2.weight, &layer.ln_2.bias, cfg.norm_eps, &mut h);
            if run_hook(hooks, l, HookKind::MlpNorm, &mut h, batch, d, &windows)? {
                return stop(out);
            }
            let mut f = layer.c_fc.forward(&h, n, path)?;
            gelu_tanh(&mut f);
            let mut m = layer.mlp_proj.forward(&f, n, path)?;
            if run_hook(hooks, l, HookKind::MlpOut, &mut m, batch, d, &windows)? {
                return stop(out);
            }
            add_in_place(&mut x, &m);
            if run_hook(hooks, l, HookKind::Resid, &mut x, batch, d, &windows)? {
                return stop(out);
            }
        }
        for (c, (&s, &v)) in caches.iter_mut().zip(starts.iter().zip(batch.valid)) {
            c.set_len(s + v);
        }

        let Some((sel, rows)) = logit_rows(&x, d, batch, mode) else {
            return Ok(out);
        };
        layer_norm(&sel, &self.ln_f.weight, &self.ln_f.bias, cfg.norm_eps, &mut h);
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
