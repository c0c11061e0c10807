//! Pieces shared by the decoder forward passes ([`super::llama`], [`super::gpt2`],
//! [`super::gemma`]): the batch
//! and output types, batch checks, hook calls and causal attention over a row's key/value cache.

use crate::transport::TokenWindow;

use super::error::{Result, RuntimeError};
use super::hooks::{Activation, HookFlow, HookKind, HookPoint, Hooks};
use super::kv_cache::KvCache;

/// Which logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// None (e.g. fitting, which stops at a hook point).
    None,
    /// The last real token of each batch row: `[batch, vocab]`.
    Last,
    /// Every token: `[batch, tokens, vocab]` (padding rows included, to be ignored).
    All,
    /// No logits: the last real token of each batch row after the final norm, `[batch, d]`,
    /// in [`ForwardOutput::hidden`], for a caller that runs the output head itself
    /// ([`super::model::Network::head`]) over the rows of several passes at once.
    LastHidden,
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
    /// The final-normed hidden states [`LogitsMode::LastHidden`] asks for, `[batch, d]`.
    pub hidden: Vec<f32>,
    /// True if a hook stopped the pass early.
    pub stopped: bool,
}

/// Checks a batch against a model of `vocab` tokens and `n_layers` layers, and its caches.
pub(crate) fn check_batch(b: &Batch<'_>, caches: &[KvCache], vocab: usize, n_layers: usize) -> Result<()> {
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
    if let Some(t) = b.tokens.iter().find(|&&t| t as usize >= vocab) {
        return bad(format!("token id {t} is outside the vocabulary ({vocab})"));
    }
    if caches.iter().any(|c| c.n_layers() != n_layers) {
        return bad("cache was made for another model".into());
    }
    Ok(())
}

/// The position of every token of the batch (`[batch·seq]`, row-major): row `b`'s tokens sit
/// at its cache length `starts[b]` and on.
pub(crate) fn token_positions<'a>(
    starts: &'a [usize],
    batch: &Batch<'_>,
) -> impl Iterator<Item = usize> + 'a {
    let seq = batch.seq.max(1);
    (0..batch.batch * batch.seq).map(move |r| starts.get(r / seq).copied().unwrap_or(0) + r % seq)
}

/// Per batch row: the position of the chunk's first token (the cache length) and the prompt
/// length.
pub(crate) fn token_windows(starts: &[usize], prompt_lens: &[usize]) -> Vec<TokenWindow> {
    starts
        .iter()
        .zip(prompt_lens)
        .map(|(&s, &p)| TokenWindow {
            first_position: s,
            prompt_len: p,
        })
        .collect()
}

/// Calls the hooks at `point` if they want it; returns true when they ask to stop.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_hook(
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

/// How a layer forms its attention scores beyond the causal mask.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AttnOptions {
    /// Multiplier of `q·k` (1/√head_dim for Llama and GPT-2; Gemma: 1/√query_pre_attn_scalar).
    pub scale: f64,
    /// `c·tanh(s/c)` on the scaled scores (Gemma 2), before the mask.
    pub softcap: Option<f64>,
    /// Sliding window: a query at position `p` sees keys at positions `> p − window` (itself
    /// and the `window − 1` before it), as transformers' `sliding_window_overlay`
    /// (`kv_idx > q_idx - sliding_window`) and llama.cpp's `is_masked_swa` (masked when
    /// `p_q − p_k >= n_swa`).
    pub window: Option<usize>,
}

impl AttnOptions {
    /// Plain causal attention scaled by 1/√head_dim.
    pub fn causal(head_dim: usize) -> Self {
        Self {
            scale: 1.0 / (head_dim as f64).sqrt(),
            softcap: None,
            window: None,
        }
    }
}

/// Causal attention of a batch over each row's cache plus the new tokens, for layer `layer`:
/// `q` is `[batch·seq, nh·hd]`, `k` and `v` are `[batch·seq, nkv·hd]`. Appends the new keys and
/// values (real tokens only) to the caches, after rewinding each to `starts[b]`. Returns
/// `[batch·seq, nh·hd]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cached_attention(
    layer: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    batch: &Batch<'_>,
    caches: &mut [KvCache],
    starts: &[usize],
    (nh, nkv, hd): (usize, usize, usize),
) -> Result<Vec<f32>> {
    cached_attention_with(
        layer,
        (q, k, v),
        batch,
        caches,
        starts,
        (nh, nkv, hd),
        AttnOptions::causal(hd),
    )
}

/// [`cached_attention`] with the score options of `opts`.
pub(crate) fn cached_attention_with(
    layer: usize,
    (q, k, v): (&[f32], &[f32], &[f32]),
    batch: &Batch<'_>,
    caches: &mut [KvCache],
    starts: &[usize],
    (nh, nkv, hd): (usize, usize, usize),
    opts: AttnOptions,
) -> Result<Vec<f32>> {
    let kvw = nkv * hd;
    let t = batch.seq;
    if t == 1 && batch.batch > 1 {
        return decode_rows_attention(layer, (q, k, v), batch, caches, starts, (nh, nkv, hd), opts);
    }
    let mut out = Vec::with_capacity(batch.batch * t * nh * hd);
    for (b, cache) in caches.iter_mut().enumerate() {
        let valid = batch.valid[b];
        let rows = b * t * kvw..(b * t + valid) * kvw;
        let (kc, vc) = store_kv(cache, layer, starts[b] * kvw, (&k[rows.clone()], &v[rows]))?;
        let keys = starts[b] + valid;
        // The first key any query of the chunk sees: keys before it are left out entirely.
        let first = opts.window.map_or(0, |w| (starts[b] + 1).saturating_sub(w));
        // Only the row's real queries attend, so its numbers do not depend on the padding
        // (the score order follows the queries × keys count, `attend_prompt`); padding rows
        // get zeros.
        let q_rows = &q[b * t * nh * hd..(b * t + valid) * nh * hd];
        let y = attend(
            q_rows,
            (&kc[first * kvw..], &vc[first * kvw..]),
            (valid, keys, first, starts[b]),
            (nh, nkv, hd),
            opts,
        );
        out.extend_from_slice(&y);
        out.resize((b + 1) * t * nh * hd, 0.0);
        cache.release_layer(layer);
    }
    Ok(out)
}

/// Keeps the first `keep` values of layer `layer`'s cached keys and values (a chunk run again
/// overwrites what it wrote before) and appends `k`, `v`; returns the layer's keys and values.
fn store_kv<'c>(
    cache: &'c mut KvCache,
    layer: usize,
    keep: usize,
    (k, v): (&[f32], &[f32]),
) -> Result<(&'c [f32], &'c [f32])> {
    let (kc, vc) = cache
        .layer_mut(layer)
        .ok_or_else(|| RuntimeError::BadInput("cache has too few layers".into()))?;
    kc.truncate(keep);
    vc.truncate(keep);
    kc.extend_from_slice(k);
    vc.extend_from_slice(v);
    Ok((kc.as_slice(), vc.as_slice()))
}

/// [`cached_attention_with`] for a decode step over several rows (one new token each): every
/// row's key and value are appended to its cache, then the rows' attentions run side by side
/// on the pool, one row per piece, each on one thread
/// ([`super::attend_one`] run inside a pool piece stays on its thread). A server's batch thus
/// spreads its attention over the cores, where one row's few heads over a short context stay
/// below the pool's threshold. Each row's numbers are those of the one-row path, bit for bit.
fn decode_rows_attention(
    layer: usize,
    (q, k, v): (&[f32], &[f32], &[f32]),
    batch: &Batch<'_>,
    caches: &mut [KvCache],
    starts: &[usize],
    (nh, nkv, hd): (usize, usize, usize),
    opts: AttnOptions,
) -> Result<Vec<f32>> {
    let kvw = nkv * hd;
    for (b, cache) in caches.iter_mut().enumerate().take(batch.batch) {
        let rows = b * kvw..(b + batch.valid[b].min(1)) * kvw;
        store_kv(cache, layer, starts[b] * kvw, (&k[rows.clone()], &v[rows]))?;
    }
    // With a window, the first key the new token sees (keys before it are left out).
    let rows: Vec<(&[f32], &[f32])> = caches
        .iter()
        .zip(starts)
        .take(batch.batch)
        .map(|(c, &start)| {
            let first = opts.window.map_or(0, |w| (start + 1).saturating_sub(w)) * kvw;
            let (kc, vc) = c.layer(layer).unwrap_or((&[], &[]));
            (kc.get(first..).unwrap_or(&[]), vc.get(first..).unwrap_or(&[]))
        })
        .collect();
    let width = nh * hd;
    let mut out = vec![0f32; batch.batch * width];
    super::pool::Pool::global().for_each_piece(&mut out, width, &|b, y| {
        if let (Some(&(kc, vc)), Some(qb)) = (rows.get(b), q.get(b * width..(b + 1) * width)) {
            y.copy_from_slice(&super::attend_one::attend_one(qb, (kc, vc), (nh, nkv, hd), opts));
        }
    });
    drop(rows);
    for cache in caches.iter_mut() {
        cache.release_layer(layer);
    }
    Ok(out)
}

/// `[t, nh·hd]` queries against the cached keys and values from position `first` to
/// `keys − 1` (`[keys − first, nkv·hd]` each); query `j` sits at position `start + j` and sees
/// positions `≤ start + j` (and, with a window, `> start + j − window`). Padding queries
/// (`start + j ≥ keys`) see what the last real token sees.
///
/// One query goes to [`super::attend_one`], several to [`super::attend_prompt`] (bit for bit
/// candle's tensor attention up to 512 keys, on the model's thread pool).
fn attend(
    q: &[f32],
    (kc, vc): (&[f32], &[f32]),
    (t, keys, first, start): (usize, usize, usize, usize),
    (nh, nkv, hd): (usize, usize, usize),
    opts: AttnOptions,
) -> Vec<f32> {
    // A single query (decode) sees every key from `first` on: no mask needed.
    if t == 1 {
        return super::attend_one::attend_one(q, (kc, vc), (nh, nkv, hd), opts);
    }
    let span = super::attend_prompt::Span {
        t,
        keys,
        first,
        start,
    };
    super::attend_prompt::attend_prompt(q, (kc, vc), span, (nh, nkv, hd), opts)
}

/// The rows of `x` (`[batch·seq, d]`) whose logits `mode` asks for, gathered into
/// `[rows, d]`, with the row count; `None` for [`LogitsMode::None`].
pub(crate) fn logit_rows(
    x: &[f32],
    d: usize,
    batch: &Batch<'_>,
    mode: LogitsMode,
) -> Option<(Vec<f32>, usize)> {
    let rows: Vec<usize> = match mode {
        LogitsMode::None => return None,
        LogitsMode::Last | LogitsMode::LastHidden => (0..batch.batch)
            .map(|b| b * batch.seq + batch.valid[b] - 1)
            .collect(),
        LogitsMode::All => (0..batch.batch * batch.seq).collect(),
    };
    let mut sel = Vec::with_capacity(rows.len() * d);
    for r in &rows {
        sel.extend_from_slice(&x[r * d..(r + 1) * d]);
    }
    Some((sel, rows.len()))
}
