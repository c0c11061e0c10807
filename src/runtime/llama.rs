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

use candle_core::{Device, Tensor};

use crate::transport::TokenWindow;

use super::config::ModelConfig;
use super::error::{Result, RuntimeError};
use super::hooks::{Activation, HookFlow, HookKind, HookPoint, Hooks};
use super::kv_cache::KvCache;
use super::linear::{Linear, MatPath};
use super::ops::{Rope, add_in_place, rms_norm, silu_mul};

/// One decoder layer's weights.
#[derive(Debug)]
pub struct LlamaLayer {
    /// Pre-attention RMSNorm gain `[d]`.
    pub attn_norm: Vec<f32>,
    /// Query projection `[n_heads·hd, d]`.
    pub wq: Linear,
    /// Key projection `[n_kv·hd, d]`.
    pub wk: Linear,
    /// Value projection `[n_kv·hd, d]`.
    pub wv: Linear,
    /// Output projection `[d, n_heads·hd]`.
    pub wo: Linear,
    /// Pre-MLP RMSNorm gain `[d]`.
    pub mlp_norm: Vec<f32>,
    /// Gate projection `[ffn, d]`.
    pub w_gate: Linear,
    /// Up projection `[ffn, d]`.
    pub w_up: Linear,
    /// Down projection `[d, ffn]`.
    pub w_down: Linear,
}

/// A Llama-family model.
#[derive(Debug)]
pub struct LlamaModel {
    /// Hyper-parameters.
    pub cfg: ModelConfig,
    /// Token embedding `[vocab, d]`, f32.
    pub embed: Vec<f32>,
    /// Decoder layers.
    pub layers: Vec<LlamaLayer>,
    /// Final RMSNorm gain `[d]`.
    pub final_norm: Vec<f32>,
    /// Output projection `[vocab, d]` (tied to the embedding when the file has none).
    pub lm_head: Linear,
}

/// Which logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// None (e.g. fitting, which stops at a hook point).
    None,
    /// The last real token of each batch row: `[batch, vocab]`.
    Last,
    /// Every token: `[batch, tokens, vocab]` (padding rows included, to be ignored).
    All,
}

/// A batch of token sequences, right-padded to `seq` tokens.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// Token ids, `[batch, seq]` row-major (padding ids are ignored).
    pub tokens: &'a [u32],
    /// Rows.
    pub batch: usize,
    /// Tokens per row (including padding).
    pub seq: usize,
    /// Real tokens per row (`≤ seq`, ≥ 1).
    pub valid: &'a [usize],
    /// Prompt length per row (for token scopes); use `seq` values when all tokens are prompt.
    pub prompt_lens: &'a [usize],
}

/// The result of a forward pass.
#[derive(Debug, Clone, Default)]
pub struct ForwardOutput {
    /// Logits as requested by [`LogitsMode`].
    pub logits: Vec<f32>,
    /// True if a hook stopped the pass early.
    pub stopped: bool,
}

/// Calls the hooks at `point` if they want it; returns true when they ask to stop.
#[allow(clippy::too_many_arguments)]
fn run_hook(
    hooks: &mut dyn Hooks,
    layer: usize,
    kind: HookKind,
    data: &mut [f32],
    batch: &Batch<'_>,
    d: usize,
    windows: &[TokenWindow],
) -> Result<bool> {
    let point = HookPoint { layer, kind };
    if !hooks.wants(point) {
        return Ok(false);
    }
    let act = Activation {
        data,
        shape: [batch.batch, batch.seq, d],
        valid: batch.valid,
        windows,
    };
    Ok(hooks.on_activation(point, act)? == HookFlow::Stop)
}

impl LlamaModel {
    /// Checks a batch against the model and the caches.
    fn check(&self, b: &Batch<'_>, caches: &[KvCache]) -> Result<()> {
        let bad = |m: String| Err(RuntimeError::BadInput(m));
        if b.batch == 0 || b.seq == 0 {
            return bad("empty batch".into());
        }
        if b.tokens.len() != b.batch * b.seq || b.valid.len() != b.batch || b.prompt_lens.len() != b.batch {
            return bad(format!(
                "batch of {} × {} has inconsistent buffers",
                b.batch, b.seq
            ));
        }
        if caches.len() != b.batch {
            return bad(format!("{} caches for a batch of {}", caches.len(), b.batch));
        }
        if let Some(v) = b.valid.iter().find(|&&v| v == 0 || v > b.seq) {
            return bad(format!("a row has {v} real tokens (must be 1..={})", b.seq));
        }
        if let Some(t) = b.tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return bad(format!(
                "token id {t} is outside the vocabulary ({})",
                self.cfg.vocab_size
            ));
        }
        if caches.iter().any(|c| c.n_layers() != self.layers.len()) {
            return bad("cache was made for another model".into());
        }
        Ok(())
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
        let windows: Vec<TokenWindow> = starts
            .iter()
            .zip(batch.prompt_lens)
            .map(|(&s, &p)| TokenWindow {
                first_position: s,
                prompt_len: p,
            })
            .collect();
        let rope = Rope::new(hd, cfg.rope_theta, cfg.rope_interleaved);

        let mut x = Vec::with_capacity(n * d);
        for &t in batch.tokens {
            let t = t as usize;
            x.extend_from_slice(&self.embed[t * d..(t + 1) * d]);
        }
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
            let mut q = layer.wq.forward(&h, n, path)?;
            let mut k = layer.wk.forward(&h, n, path)?;
            let v = layer.wv.forward(&h, n, path)?;
            for (r, (qr, kr)) in q
                .chunks_exact_mut(nh * hd)
                .zip(k.chunks_exact_mut(nkv * hd))
                .enumerate()
            {
                let pos = starts[r / batch.seq] + r % batch.seq;
                rope.apply(qr, pos, hd);
                rope.apply(kr, pos, hd);
            }
            let attn = self.attention(l, &q, &k, &v, batch, caches, &starts)?;
            let mut a = layer.wo.forward(&attn, n, path)?;
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
            let mut g = layer.w_gate.forward(&h, n, path)?;
            let u = layer.w_up.forward(&h, n, path)?;
            silu_mul(&mut g, &u);
            let mut m = layer.w_down.forward(&g, n, path)?;
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

        let rows: Vec<usize> = match mode {
            LogitsMode::None => return Ok(out),
            LogitsMode::Last => (0..batch.batch)
                .map(|b| b * batch.seq + batch.valid[b] - 1)
                .collect(),
            LogitsMode::All => (0..n).collect(),
        };
        let mut sel = Vec::with_capacity(rows.len() * d);
        for r in &rows {
            sel.extend_from_slice(&x[r * d..(r + 1) * d]);
        }
        rms_norm(&sel, &self.final_norm, cfg.norm_eps, &mut h);
        out.logits = self.lm_head.forward(&h, rows.len(), path)?;
        Ok(out)
    }

    /// Causal attention with GQA over each row's cache plus the new tokens; appends the new
    /// keys/values (real tokens only) to the caches. Returns `[n, n_heads·hd]`.
    ///
    /// The products run as candle tensor ops in the same shapes and order as candle's
    /// `quantized_llama` (`[1, heads, t, hd] × [1, heads, hd, T]`, masked fill, softmax,
    /// `× V`), so results are bit-identical to it: with 8-bit activation quantization
    /// downstream, even a last-bit difference in an attention sum can flip a rounding and
    /// change the logits visibly.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        batch: &Batch<'_>,
        caches: &mut [KvCache],
        starts: &[usize],
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let (hd, nh, nkv) = (cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
        let kvw = nkv * hd;
        let t = batch.seq;
        let mut out = Vec::with_capacity(batch.batch * t * nh * hd);
        for (b, cache) in caches.iter_mut().enumerate() {
            let valid = batch.valid[b];
            let (kc, vc) = cache
                .layer_mut(layer)
                .ok_or_else(|| RuntimeError::BadInput("cache has too few layers".into()))?;
            kc.truncate(starts[b] * kvw);
            vc.truncate(starts[b] * kvw);
            kc.extend_from_slice(&k[b * t * kvw..(b * t + valid) * kvw]);
            vc.extend_from_slice(&v[b * t * kvw..(b * t + valid) * kvw]);
            let keys = starts[b] + valid;
            let q_rows = &q[b * t * nh * hd..(b + 1) * t * nh * hd];
            let y = attend(q_rows, kc, vc, t, keys, starts[b], nh, nkv, hd)?;
            out.extend_from_slice(&y);
        }
        Ok(out)
    }
}

/// `[t, nh·hd]` queries against `keys` cached positions (`[keys, nkv·hd]` keys and values);
/// query `j` sits at position `start + j` and sees positions `≤ start + j`.
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    t: usize,
    keys: usize,
    start: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> Result<Vec<f32>> {
    let dev = Device::Cpu;
    let q = Tensor::from_slice(q, (1, t, nh, hd), &dev)?
        .transpose(1, 2)?
        .contiguous()?;
    let k = Tensor::from_slice(kc, (1, keys, nkv, hd), &dev)?
        .transpose(1, 2)?
        .contiguous()?;
    let v = Tensor::from_slice(vc, (1, keys, nkv, hd), &dev)?
        .transpose(1, 2)?
        .contiguous()?;
    let k = repeat_kv(k, nh / nkv)?;
    let v = repeat_kv(v, nh / nkv)?;
    let att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
    let att = if t > 1 {
        // 1 where the key lies after the query (or beyond the real keys).
        let mask: Vec<u8> = (0..t)
            .flat_map(|j| (0..keys).map(move |p| u8::from(p > start + j)))
            .collect();
        let mask = Tensor::from_vec(mask, (t, keys), &dev)?.broadcast_as(att.shape())?;
        let neg_inf = Tensor::new(f32::NEG_INFINITY, &dev)?.broadcast_as(att.shape())?;
        mask.where_cond(&neg_inf, &att)?
    } else {
        att
    };
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    let y = att.matmul(&v.contiguous()?)?;
    Ok(y.transpose(1, 2)?.reshape((t * nh * hd,))?.to_vec1::<f32>()?)
}

/// Repeats each of the `[1, nkv, T, hd]` key/value heads `n_rep` times along the head axis
/// (head `h` uses kv head `h / n_rep`).
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, nkv, t, hd) = x.dims4()?;
    Ok(Tensor::cat(&vec![&x; n_rep], 2)?.reshape((b, nkv * n_rep, t, hd))?)
}
