//! Causal attention of several new queries at once (a prompt chunk, a row of a fitting batch)
//! over a row's keys and values, on the model's thread pool.
//!
//! Per head, `softmax(scale · Q·Kᵀ + mask) · V` (Vaswani et al. 2017, eq. 1; grouped-query
//! heads as in Ainslie et al. 2023: query head `h` reads kv head `h / (nh / nkv)`), with the
//! causal mask and, for sliding-window layers, the window mask.
//!
//! **Work.** The keys and values of each kv head are packed once per call into the dense
//! micro-kernel's panel layout ([`super::dense`]): keys as `[n/16][hd][16]` (16 keys per
//! panel), values as `[hd/16][n][16]` (16 head dimensions per panel). The pool then takes
//! chunks of (query head, [`ROWS_PER_CHUNK`] query rows). For each group of [`MR`] rows only the
//! key panels some row of the group can see are multiplied, and the weighted sum of values
//! runs only over the keys the group sees: a causal prompt does about half the multiply-adds of
//! the full `t × n` products, and a sliding window bounds them by the window.
//!
//! **Numbers.** Every sum keeps the order of candle's tensor version of the same attention
//! (`[1, heads, t, hd] × [1, heads, hd, n]` through `gemm`, `× scale`, masked fill with −∞,
//! `softmax_last_dim`, `× V`), which the forward passes used before and which
//! candle-transformers' `quantized_llama` uses:
//! - a score is one chain of fused multiply-adds over the head dimensions in order (`gemm`'s
//!   micro-kernel order for a depth ≤ 512, which every head dimension is), then `× scale`; for
//!   at most 256 scores per head (`t × n`), `gemm`'s horizontal kernel order ([`lane_dot`]);
//! - the softmax sum adds the exponentials in candle's AVX2 order (32 lanes over the whole
//!   row, masked keys adding exact zeros, then the remainder) — [`candle_order_sum`];
//! - an output is one chain of fused multiply-adds over the keys in order; the masked keys'
//!   zero weights leave such a chain unchanged, so skipping them changes no bit (with one or
//!   two keys, `gemm`'s unfused `gevv` order).
//!
//! So with up to 512 keys (where `gemm` does not split the depth of `× V`) the results equal
//! candle's bit for bit (`tests`). That matters beyond tidiness: the quantized path rounds the
//! attention output to 8 bits for the next product, where a last-bit difference can flip a
//! rounding and move the logits visibly. Beyond 512 keys `gemm` splits the value sum into
//! blocks sized from the CPU's L1 cache; here it stays one chain, so results do not depend on
//! the machine. Nothing depends on the thread count either: each output is computed by one
//! chunk in a fixed order.

use std::cell::RefCell;

use super::dense::{MR, PANEL, kernel};
use super::forward::AttnOptions;
use super::pool::{DisjointWrites, Pool};

/// Query rows per pool chunk: four micro-kernel row groups.
const ROWS_PER_CHUNK: usize = 4 * MR;
/// Below this many multiply-adds (`heads × t × n × hd`) one thread does everything: handing
/// out a pool job costs a few microseconds.
const PAR_MIN_MACS: usize = 1 << 18;
/// Up to this many scores per head (`t × n`), candle's `gemm` forms them with its horizontal
/// kernel (a dot product vectorised along the head dimension), whose order [`lane_dot`] keeps.
const SMALL_PRODUCT: usize = 16 * 16;

thread_local! {
    /// Per thread: one chunk's query rows `[rows, hd]` and one row group's scores `[MR, n]`.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// On the calling thread: the packed keys and values of every kv head.
    static PACKED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Where a chunk of `t` queries sits among the keys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    /// New queries.
    pub t: usize,
    /// Positions `0 … keys − 1` exist once the chunk is cached.
    pub keys: usize,
    /// The first position given (`kc`, `vc` start there); earlier ones no query sees.
    pub first: usize,
    /// Position of the first query.
    pub start: usize,
}

impl Span {
    /// The keys query `j` sees, as offsets from `first`: `lo ..= hi`. Query `j` sits at
    /// position `start + j` (padding queries past the last key see what the last key sees)
    /// and sees positions `≤` its own and, with a window `w`, `> position − w`.
    fn visible(&self, j: usize, window: Option<usize>) -> (usize, usize) {
        let pos = (self.start + j).min(self.keys.saturating_sub(1));
        let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w.max(1)));
        (lo.max(self.first) - self.first, pos - self.first.min(pos))
    }
}

/// `q` (`[t, nh·hd]`) against the keys and values `kc`, `vc` (`[keys − first, nkv·hd]` each,
/// positions `first …`), as [`Span`] places them. Returns `[t, nh·hd]`; shapes that do not
/// fit give zeros, never a panic.
pub(crate) fn attend_prompt(
    q: &[f32],
    kv: (&[f32], &[f32]),
    span: Span,
    dims: (usize, usize, usize),
    opts: AttnOptions,
) -> Vec<f32> {
    attend_prompt_on(Pool::global(), q, kv, span, dims, opts)
}

/// [`attend_prompt`] on the threads of `pool`; the result does not depend on the pool.
fn attend_prompt_on(
    pool: &Pool,
    q: &[f32],
    (kc, vc): (&[f32], &[f32]),
    span: Span,
    (nh, nkv, hd): (usize, usize, usize),
    opts: AttnOptions,
) -> Vec<f32> {
    let t = span.t;
    let n = span.keys.saturating_sub(span.first);
    let kvw = nkv * hd;
    let mut out = vec![0f32; t * nh * hd];
    if t == 0
        || n == 0
        || kvw == 0
        || nh % nkv != 0
        || q.len() < t * nh * hd
        || kc.len().min(vc.len()) < n * kvw
    {
        return out;
    }
    PACKED.with_borrow_mut(|(kp, vp)| {
        pack_keys(kc, n, nkv, hd, kp);
        pack_values(vc, n, nkv, hd, vp);
        let shape = Shape {
            n,
            nh,
            hd,
            rep: nh / nkv,
        };
        let blocks = t.div_ceil(ROWS_PER_CHUNK);
        let ys = DisjointWrites::new(&mut out);
        // The last row blocks see the most keys: hand them out first.
        let chunk = |i: usize| {
            let (h, b) = (i / blocks, blocks - 1 - i % blocks);
            let rows = b * ROWS_PER_CHUNK..((b + 1) * ROWS_PER_CHUNK).min(t);
            SCRATCH.with_borrow_mut(|(qs, scores)| {
                head_rows(q, (kp, vp), span, shape, opts, (h, rows), &ys, (qs, scores));
            });
        };
        if nh * t * n * hd < PAR_MIN_MACS || pool.threads() <= 1 {
            (0..nh * blocks).for_each(chunk);
        } else {
            pool.run(nh * blocks, &chunk);
        }
    });
    out
}

/// Sizes every chunk shares.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// Keys given.
    n: usize,
    /// Query heads.
    nh: usize,
    /// Head dimension.
    hd: usize,
    /// Query heads per kv head.
    rep: usize,
}

/// Keys of each kv head (`kc`: `[n, nkv·hd]`) into `[nkv][n/16][hd][16]`, zero past the last key.
fn pack_keys(kc: &[f32], n: usize, nkv: usize, hd: usize, out: &mut Vec<f32>) {
    let per_head = n.div_ceil(PANEL) * hd * PANEL;
    out.clear();
    out.resize(nkv * per_head, 0.0);
    for (g, dst) in out.chunks_exact_mut(per_head).enumerate() {
        for p in 0..n {
            let key = &kc[p * nkv * hd + g * hd..][..hd];
            let panel = &mut dst[(p / PANEL) * hd * PANEL..];
            for (i, &v) in key.iter().enumerate() {
                panel[i * PANEL + p % PANEL] = v;
            }
        }
    }
}

/// Values of each kv head (`vc`: `[n, nkv·hd]`) into `[nkv][hd/16][n][16]`, zero past `hd`.
fn pack_values(vc: &[f32], n: usize, nkv: usize, hd: usize, out: &mut Vec<f32>) {
    let panels = hd.div_ceil(PANEL);
    let per_head = panels * n * PANEL;
    out.clear();
    out.resize(nkv * per_head, 0.0);
    for (g, dst) in out.chunks_exact_mut(per_head).enumerate() {
        for p in 0..n {
            let value = &vc[p * nkv * hd + g * hd..][..hd];
            for (d0, part) in value.chunks(PANEL).enumerate() {
                dst[(d0 * n + p) * PANEL..][..part.len()].copy_from_slice(part);
            }
        }
    }
}

/// Query head `h`, query rows `rows`, into `ys` (`[t, nh·hd]`); `qs` and `scores` are scratch.
#[allow(clippy::too_many_arguments)]
fn head_rows(
    q: &[f32],
    (kp, vp): (&[f32], &[f32]),
    span: Span,
    s: Shape,
    opts: AttnOptions,
    (h, rows): (usize, std::ops::Range<usize>),
    ys: &DisjointWrites<'_, f32>,
    (qs, scores): (&mut Vec<f32>, &mut Vec<f32>),
) {
    let (n, hd) = (s.n, s.hd);
    let g = h / s.rep;
    let keys = &kp[g * n.div_ceil(PANEL) * hd * PANEL..][..n.div_ceil(PANEL) * hd * PANEL];
    let values = &vp[g * hd.div_ceil(PANEL) * n * PANEL..][..hd.div_ceil(PANEL) * n * PANEL];
    qs.clear();
    for j in rows.clone() {
        qs.extend_from_slice(&q[j * s.nh * hd + h * hd..][..hd]);
    }
    scores.clear();
    scores.resize(MR * n, 0.0);
    let mut tile = [[0f32; PANEL]; MR];
    for r0 in rows.clone().step_by(MR) {
        let nr = MR.min(rows.end - r0);
        let x = &qs[(r0 - rows.start) * hd..][..nr * hd];
        // Rows' visible ranges only grow with `j`: the group sees `lo ..= hi`.
        let (lo, _) = span.visible(r0, opts.window);
        let (_, hi) = span.visible(r0 + nr - 1, opts.window);
        if span.t * n <= SMALL_PRODUCT {
            for (r, qr) in x.chunks_exact(hd).enumerate() {
                for p in lo..=hi {
                    scores[r * n + p] =
                        lane_dot(qr, |i| keys[(p / PANEL) * hd * PANEL + i * PANEL + p % PANEL]);
                }
            }
        } else {
            for p in lo / PANEL..=hi / PANEL {
                kernel(x, hd, nr, hd, &keys[p * hd * PANEL..][..hd * PANEL], &mut tile);
                for (r, row) in tile.iter().take(nr).enumerate() {
                    let cols = PANEL.min(n - p * PANEL);
                    scores[r * n + p * PANEL..][..cols].copy_from_slice(&row[..cols]);
                }
            }
        }
        for r in 0..nr {
            let seen = span.visible(r0 + r, opts.window);
            let row = &mut scores[r * n..(r + 1) * n];
            softmax(row, seen, opts);
            // Keys the group multiplies but this row does not see weigh exactly zero.
            row[lo..seen.0].fill(0.0);
            row[seen.1 + 1..=hi].fill(0.0);
        }
        if n <= 2 {
            // candle's `gemm` takes a depth of 1 or 2 through `gevv`: `w₀v₀`, or `w₁v₁ + w₀v₀`
            // with the products rounded before the add.
            for r in 0..nr {
                let w = &scores[r * n..(r + 1) * n];
                for d in 0..hd {
                    let v = |p: usize| values[(d / PANEL) * n * PANEL + p * PANEL + d % PANEL];
                    let y = match w {
                        [w0, w1] => w1 * v(1) + w0 * v(0),
                        _ => w[0] * v(0),
                    };
                    // SAFETY: as below.
                    unsafe { ys.set((r0 + r) * s.nh * hd + h * hd + d, y) };
                }
            }
            continue;
        }
        let len = hi + 1 - lo;
        for (d, panel) in values.chunks_exact(n * PANEL).enumerate() {
            kernel(
                &scores[lo..],
                n,
                nr,
                len,
                &panel[lo * PANEL..][..len * PANEL],
                &mut tile,
            );
            let cols = PANEL.min(hd - d * PANEL);
            for (r, row) in tile.iter().take(nr).enumerate() {
                let at = (r0 + r) * s.nh * hd + h * hd + d * PANEL;
                // SAFETY: chunk (h, rows) alone writes head `h`'s columns of its rows, each
                // index once.
                unsafe { ys.set_slice(at, &row[..cols]) };
            }
        }
    }
}

/// `Σ_i a[i]·b(i)` in the order of `gemm`'s horizontal micro-kernel, which candle's `Q·Kᵀ`
/// takes when `t × n ≤ 256`: eight lanes (`i mod 8`), each a chain of fused multiply-adds, then
/// `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`.
fn lane_dot(a: &[f32], b: impl Fn(usize) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    for (i, &x) in a.iter().enumerate() {
        lanes[i % 8] = x.mul_add(b(i), lanes[i % 8]);
    }
    let h: [f32; 4] = std::array::from_fn(|l| lanes[l] + lanes[l + 4]);
    (h[0] + h[2]) + (h[1] + h[3])
}

/// The raw scores `row[lo ..= hi]` (`q·k` chains) into softmax weights, as candle's ops do
/// them: `× scale`, the soft-cap `c·tanh(s/c)`, then `exp(s − max) / Σ exp` with the sum in
/// [`candle_order_sum`]'s order over the whole row (masked keys are exact zeros there).
fn softmax(row: &mut [f32], (lo, hi): (usize, usize), opts: AttnOptions) {
    // candle's `affine(mul, add)` is `v · mul + add` in f32, with the f64 factors rounded.
    let len = row.len();
    let scale = opts.scale as f32;
    let cap = opts.softcap.map(|c| ((1.0 / c) as f32, c as f32));
    let seen = &mut row[lo..=hi];
    for v in seen.iter_mut() {
        let s = *v * scale + 0.0;
        *v = match cap {
            Some((inv, c)) => (s * inv + 0.0).tanh() * c + 0.0,
            None => s,
        };
    }
    let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in seen.iter_mut() {
        *v = (*v - max).exp();
    }
    let sum = candle_order_sum(seen, lo, len);
    for v in row[lo..=hi].iter_mut() {
        *v /= sum;
    }
}

/// The sum of a row of `len` values that are zero except `part` at offsets `lo …`, added in
/// the order of candle's AVX2 `vec_sum`: 32 lanes (offset `i` into lane `i mod 32`) over the
/// first `len − len mod 32` offsets, lanes reduced pairwise (4 vectors of 8 lanes, then the
/// 128-bit halves, then two horizontal adds), then the remaining offsets one by one. Zeros add
/// nothing exactly, so they are skipped.
fn candle_order_sum(part: &[f32], lo: usize, len: usize) -> f32 {
    let np = len & !31;
    let mut lanes = [0f32; 32];
    let mut tail = Vec::new();
    for (i, &v) in (lo..).zip(part) {
        if i < np {
            lanes[i % 32] += v;
        } else {
            tail.push(v);
        }
    }
    let x = |v: usize, l: usize| lanes[v * 8 + l] + lanes[(v + 1) * 8 + l];
    let x0: [f32; 8] = std::array::from_fn(|l| x(0, l) + x(2, l));
    let t0: [f32; 4] = std::array::from_fn(|l| x0[l] + x0[l + 4]);
    let mut sum = (t0[0] + t0[1]) + (t0[2] + t0[3]);
    for v in tail {
        sum += v;
    }
    sum
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::runtime::test_values::values(n, seed, 1, (1.0, 1.0))
    }

    /// The same attention as candle tensor ops (what the forward passes ran before).
    fn candle_attention(
        q: &[f32],
        (kc, vc): (&[f32], &[f32]),
        span: Span,
        (nh, nkv, hd): (usize, usize, usize),
        opts: AttnOptions,
    ) -> Vec<f32> {
        let dev = Device::Cpu;
        let (t, keys, first, start) = (span.t, span.keys, span.first, span.start);
        let n = keys - first;
        let heads = |x: &[f32], len: usize, h: usize| {
            let x =
                Tensor::from_slice(x, (1, len, h, hd), &dev).and_then(|x| x.transpose(1, 2)?.contiguous());
            x.unwrap_or_else(|e| panic!("{e}"))
        };
        let rep = |x: Tensor| {
            let x = Tensor::cat(&vec![&x; nh / nkv], 2)?.reshape((1, nh, n, hd))?;
            Ok::<_, candle_core::Error>(x)
        };
        let run = || -> candle_core::Result<Vec<f32>> {
            let q = heads(q, t, nh);
            let k = rep(heads(kc, n, nkv))?;
            let v = rep(heads(vc, n, nkv))?;
            let att = (q.matmul(&k.t()?)? * opts.scale)?;
            let att = match opts.softcap {
                Some(c) => ((att / c)?.tanh()? * c)?,
                None => att,
            };
            let mask: Vec<u8> = (0..t)
                .flat_map(|j| {
                    let qpos = (start + j).min(keys - 1);
                    (first..keys)
                        .map(move |p| u8::from(p > qpos || opts.window.is_some_and(|w| qpos - p >= w)))
                })
                .collect();
            let mask = Tensor::from_vec(mask, (t, n), &dev)?.broadcast_as(att.shape())?;
            let neg_inf = Tensor::new(f32::NEG_INFINITY, &dev)?.broadcast_as(att.shape())?;
            let att = candle_nn::ops::softmax_last_dim(&mask.where_cond(&neg_inf, &att)?)?;
            let y = att.matmul(&v.contiguous()?)?;
            y.transpose(1, 2)?.reshape((t * nh * hd,))?.to_vec1::<f32>()
        };
        run().unwrap_or_else(|e| panic!("{e}"))
    }

    fn case(
        span: Span,
        (nh, nkv, hd): (usize, usize, usize),
        opts: AttnOptions,
        seed: u64,
    ) -> (Vec<f32>, Vec<f32>) {
        let n = span.keys - span.first;
        let q = values(span.t * nh * hd, seed);
        let k = values(n * nkv * hd, seed + 1);
        let v = values(n * nkv * hd, seed + 2);
        let ours = attend_prompt(&q, (&k, &v), span, (nh, nkv, hd), opts);
        let want = candle_attention(&q, (&k, &v), span, (nh, nkv, hd), opts);
        (ours, want)
    }

    #[test]
    fn equals_candle_tensor_attention_bit_for_bit_up_to_512_keys() {
        // (t, keys, first, start, heads, kv heads, head dim): a whole prompt, a chunk after
        // cached positions, padding queries, odd sizes, ≤ 256 scores per head, ≤ 2 keys.
        let cases = [
            (37, 37, 0, 0, 9, 3, 64),
            (20, 57, 0, 37, 9, 3, 64),
            (12, 12, 0, 0, 4, 4, 32),
            (12, 9, 0, 0, 4, 4, 32),
            (12, 12, 0, 0, 4, 4, 24),
            (12, 9, 0, 0, 4, 4, 24),
            (10, 10, 0, 0, 2, 1, 20),
            (2, 2, 0, 0, 2, 1, 64),
            (3, 5, 0, 2, 2, 1, 64),
            (130, 130, 0, 0, 4, 1, 256),
            (7, 300, 0, 293, 2, 1, 40),
        ];
        let spans = cases.map(|(t, keys, first, start, nh, nkv, hd)| {
            (
                Span {
                    t,
                    keys,
                    first,
                    start,
                },
                (nh, nkv, hd),
                AttnOptions::causal(hd),
            )
        });
        for (i, (span, dims, opts)) in spans.into_iter().enumerate() {
            let (ours, want) = case(span, dims, opts, i as u64 * 10);
            let bad = ours.iter().zip(&want).filter(|(a, b)| a != b).count();
            let worst = ours
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                ours == want,
                "case {i}: {bad} of {} differ, by up to {worst}",
                ours.len()
            );
        }
        // Sliding windows (the first position given is the first any query sees) and
        // soft-capped scores.
        let window = AttnOptions {
            window: Some(16),
            ..AttnOptions::causal(32)
        };
        for (i, start) in [0usize, 5, 40].into_iter().enumerate() {
            let span = Span {
                t: 45,
                keys: start + 45,
                first: (start + 1).saturating_sub(16),
                start,
            };
            let (ours, want) = case(span, (4, 2, 32), window, 100 + i as u64);
            assert!(ours == want, "window case {i} differs");
        }
        let capped = AttnOptions {
            softcap: Some(50.0),
            scale: 0.3,
            window: None,
        };
        let (ours, want) = case(
            Span {
                t: 33,
                keys: 33,
                first: 0,
                start: 0,
            },
            (8, 4, 16),
            capped,
            7,
        );
        assert!(ours == want, "soft-capped case differs");
    }

    #[test]
    fn beyond_512_keys_stays_within_float_rounding_of_candle() {
        let span = Span {
            t: 40,
            keys: 700,
            first: 0,
            start: 660,
        };
        let (ours, want) = case(span, (3, 1, 64), AttnOptions::causal(64), 3);
        let worst = ours
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "differs by {worst}");
    }

    #[test]
    fn the_thread_count_changes_no_bit_and_bad_shapes_give_zeros() {
        // Large enough to run over the pool.
        let span = Span {
            t: 200,
            keys: 200,
            first: 0,
            start: 0,
        };
        let q = values(200 * 4 * 32, 1);
        let k = values(200 * 2 * 32, 2);
        let v = values(200 * 2 * 32, 3);
        let opts = AttnOptions::causal(32);
        let one = attend_prompt_on(&Pool::new(1), &q, (&k, &v), span, (4, 2, 32), opts);
        let three = attend_prompt_on(&Pool::new(3), &q, (&k, &v), span, (4, 2, 32), opts);
        assert!(one == three);
        assert!(one.iter().any(|&v| v != 0.0));
        // Too few keys given, or heads that do not group: zeros of the right length.
        let short = attend_prompt(&q, (&k[..10], &v), span, (4, 2, 32), opts);
        assert_eq!(short.len(), 200 * 4 * 32);
        assert!(short.iter().all(|&v| v == 0.0));
        let odd = attend_prompt(&q, (&k, &v), span, (3, 2, 32), opts);
        assert!(odd.iter().all(|&v| v == 0.0));
    }
}
