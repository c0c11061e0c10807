//! Attention of a single new token (a decode step) read straight from a row's key/value cache.
//!
//! The general path ([`super::forward`]'s `attend`) builds candle tensors, which copies every
//! cached key and value (and repeats them per query head) at every step: O(context) copies per
//! token and layer, ~6 % of a SmolLM2 decode at 200 tokens of context and growing with it. A
//! single query needs no mask and no copies: per head, `softmax(scale · q·kᵀ) · V` over the
//! cached rows in place (Vaswani et al. 2017, eq. 1; grouped-query heads as in Ainslie et al.
//! 2023, query head `h` reading kv head `h / (nh / nkv)`).
//!
//! During a decode step the weight stream (tens to hundreds of MB per token) pushes the cache
//! out of L2/L3, so the cached keys and values come from memory: every head is served in one
//! pass over the positions ([`heads`]), each key row read once for all of them, in memory
//! order (SmolLM2: 9 heads on 3 kv heads, Gemma 3 270M: 4 on 1), with the rows a few
//! positions ahead prefetched; the values are weighed a block of positions at a time, the
//! next block prefetched, so the passes over a block read from cache. The scores of eight
//! positions are computed at once per head ([`dots8`]: eight chains of additions side by side
//! instead of one waiting on the adder; a SmolLM2 call over 46 keys, hot in cache, 6.0–6.5 →
//! 5.1–5.3 µs). Every sum keeps the order of the one-head loop (`tests`, bit for bit).

use super::forward::AttnOptions;
use super::pool::Pool;

/// Below this many multiply-adds (`heads × keys × head_dim`) one thread does all heads: a pool
/// job costs a few microseconds to hand out.
const PAR_MIN_MACS: usize = 1 << 15;
/// Query heads accumulated together over one pass of the values (4 × 16 f32 accumulators:
/// eight AVX registers).
const HEADS_PER_PASS: usize = 4;
/// Head-dimension values accumulated per pass of the values.
const DIMS_PER_PASS: usize = 16;
/// Positions whose values are weighed together: every pass over a block reads its rows from
/// cache (16 SmolLM2 rows of keys and values: 12 KiB each).
const BLOCK: usize = 16;
/// How many positions ahead the key and value rows are prefetched.
const PREFETCH_AHEAD: usize = 8;

/// One query `q` (`[nh·hd]`) against the `n` cached positions in `kc` and `vc` (`[n, nkv·hd]`
/// each, every one visible to the query). Returns `[nh·hd]`: for each head,
/// `Σ_p softmax_p(s) · v_p` with `s_p = scale · q·k_p`, soft-capped as `c·tanh(s/c)` when
/// `opts.softcap` is set. Empty or mismatched shapes give zeros, never a panic.
///
/// Each head's sums run in a fixed order whatever thread computes it and whichever heads it
/// is grouped with, so results do not depend on the thread count.
pub(crate) fn attend_one(
    q: &[f32],
    (kc, vc): (&[f32], &[f32]),
    (nh, nkv, hd): (usize, usize, usize),
    opts: AttnOptions,
) -> Vec<f32> {
    let mut out = vec![0f32; nh * hd];
    let kvw = nkv * hd;
    if kvw == 0 || nh % nkv != 0 || q.len() < nh * hd {
        return out;
    }
    let n = kc.len().min(vc.len()) / kvw;
    if n == 0 {
        return out;
    }
    let cache = Cache {
        kc: &kc[..n * kvw],
        vc: &vc[..n * kvw],
        n,
        kvw,
        hd,
    };
    let rep = nh / nkv;
    let pool = Pool::global();
    if nh * n * hd < PAR_MIN_MACS || pool.threads() <= 1 {
        heads(&cache, q, (0, rep), opts, &mut out, &mut Vec::new());
    } else {
        let per = nh.div_ceil(pool.threads());
        pool.for_each_piece(&mut out, per * hd, &|c, part| {
            heads(&cache, q, (c * per, rep), opts, part, &mut Vec::new())
        });
    }
    out
}

/// One row's cached keys and values: `kc`, `vc` are `[n, kvw]`, heads of `hd` values.
struct Cache<'a> {
    kc: &'a [f32],
    vc: &'a [f32],
    n: usize,
    kvw: usize,
    hd: usize,
}

/// Hints the processor to fetch the `len` values of `rows` from `i` on (every cache line
/// they touch; nothing past the end of `rows`).
#[inline]
fn prefetch(rows: &[f32], i: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(row) = rows.get(i..) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let at = row.as_ptr().cast::<i8>();
        let bytes = len.min(row.len()) * 4;
        // SAFETY: SSE is part of x86-64; a prefetch is only a hint, it reads nothing
        // architecturally and cannot fault, whatever the address.
        unsafe {
            for b in (0..bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(b));
            }
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(bytes.saturating_sub(1)));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (rows, i, len);
}

/// Query heads `h0 ..` (as many as `y` holds, `[heads, hd]`; head `h` reads kv head
/// `h / rep`) of the query `q` (`[nh·hd]`), into `y`; `scores` is scratch. Each head's numbers
/// are those of the one-head loop: scores by [`dot`] in position order, softmax, then
/// `y = Σ_p w_p·v_p` in position order.
///
/// The loops run over positions outermost, every head inside, so the cached keys and values
/// are read row after row in memory order, a stream the processor's prefetchers follow (a
/// loop per kv head had read each row in `nkv` separate strided passes, and the scores loop
/// stalled on its prefetches); the values are weighed a block of [`BLOCK`] positions at a
/// time, the heads' partial sums kept in `y` between blocks.
fn heads(
    c: &Cache<'_>,
    q: &[f32],
    (h0, rep): (usize, usize),
    opts: AttnOptions,
    y: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let (n, hd, kvw) = (c.n, c.hd, c.kvw);
    let m = y.len() / hd;
    if m == 0 || rep == 0 {
        return;
    }
    let h1 = h0 + m;
    // The columns this run of heads reads in every cached row.
    let (col0, col1) = ((h0 / rep) * hd, ((h1 - 1) / rep + 1) * hd);
    scores.clear();
    scores.resize(m * n, 0.0);
    // The first block of values, to be there once the scores are done.
    for p in 0..BLOCK.min(n) {
        prefetch(c.vc, p * kvw + col0, col1 - col0);
    }
    let scale = opts.scale as f32;
    let finish = |s: f32| match opts.softcap {
        Some(cap) => (cap as f32) * (s / cap as f32).tanh(),
        None => s,
    };
    // Eight positions at a time ([`dots8`], or [`dot`] eight times where the head dim does
    // not allow it), the rest one by one.
    let whole = n / DOTS_AT_ONCE * DOTS_AT_ONCE;
    for p in (0..whole).step_by(DOTS_AT_ONCE) {
        let rows = &c.kc[p * kvw..(p + DOTS_AT_ONCE) * kvw];
        for ahead in p..p + DOTS_AT_ONCE {
            prefetch(c.kc, (ahead + PREFETCH_AHEAD) * kvw + col0, col1 - col0);
        }
        for h in h0..h1 {
            let (off, qh) = ((h / rep) * hd, &q[h * hd..(h + 1) * hd]);
            let s = dots8(qh, &rows[off..], kvw).unwrap_or_else(|| {
                std::array::from_fn(|i| dot(qh, &rows[i * kvw + off..i * kvw + off + hd]))
            });
            for (i, s) in s.into_iter().enumerate() {
                scores[(h - h0) * n + p + i] = finish(s * scale);
            }
        }
    }
    for p in whole..n {
        prefetch(c.kc, (p + PREFETCH_AHEAD) * kvw + col0, col1 - col0);
        let row = &c.kc[p * kvw..(p + 1) * kvw];
        for h in h0..h1 {
            let off = (h / rep) * hd;
            scores[(h - h0) * n + p] = finish(dot(&q[h * hd..(h + 1) * hd], &row[off..off + hd]) * scale);
        }
    }
    for s in scores.chunks_exact_mut(n) {
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        super::ops::exp_shift_in_place(s, max);
        let sum = s.iter().fold(0f32, |a, &w| a + w);
        for s in s.iter_mut() {
            *s /= sum;
        }
    }
    y.fill(0.0);
    for p0 in (0..n).step_by(BLOCK) {
        let ps = p0..(p0 + BLOCK).min(n);
        // The next block's rows, read by the passes below from cache.
        for p in ps.clone() {
            prefetch(c.vc, (p + BLOCK) * kvw + col0, col1 - col0);
        }
        // Per kv head, its heads in passes of up to HEADS_PER_PASS, 16 values at a time.
        let mut h = h0;
        while h < h1 {
            let end = ((h / rep + 1) * rep).min(h1);
            let off = (h / rep) * hd;
            for r0 in (h - h0..end - h0).step_by(HEADS_PER_PASS) {
                let r1 = (r0 + HEADS_PER_PASS).min(end - h0);
                for d0 in (0..hd).step_by(DIMS_PER_PASS) {
                    let d1 = (d0 + DIMS_PER_PASS).min(hd);
                    let w = (&scores[r0 * n..r1 * n], n);
                    let at = (r0, d0);
                    match (r1 - r0, d1 - d0) {
                        (4, DIMS_PER_PASS) => weigh_values::<4>(c, w, off + d0, y, at, ps.clone()),
                        (3, DIMS_PER_PASS) => weigh_values::<3>(c, w, off + d0, y, at, ps.clone()),
                        (2, DIMS_PER_PASS) => weigh_values::<2>(c, w, off + d0, y, at, ps.clone()),
                        (1, DIMS_PER_PASS) => weigh_values::<1>(c, w, off + d0, y, at, ps.clone()),
                        _ => weigh_values_any(c, w, (off + d0, d1 - d0), y, at, ps.clone()),
                    }
                }
            }
            h = end;
        }
    }
}

/// `y[r0 + r][d0 .. d0 + 16] += Σ_p w[r][p] · v_p[col ..]` over the positions `ps`, in
/// order, for `M` heads, `w` holding their `[M, n]` weights; the sums in registers, taken
/// from `y` and put back (the order of one running sum over every position).
#[inline]
fn weigh_values<const M: usize>(
    c: &Cache<'_>,
    (w, n): (&[f32], usize),
    col: usize,
    y: &mut [f32],
    (r0, d0): (usize, usize),
    ps: std::ops::Range<usize>,
) {
    let hd = c.hd;
    let mut acc = [[0f32; DIMS_PER_PASS]; M];
    for (r, a) in acc.iter_mut().enumerate() {
        let at = (r0 + r) * hd + d0;
        a.copy_from_slice(&y[at..at + DIMS_PER_PASS]);
    }
    for p in ps {
        let Some(v) = c.vc[p * c.kvw + col..].first_chunk::<DIMS_PER_PASS>() else {
            return;
        };
        for (r, a) in acc.iter_mut().enumerate() {
            let wp = w[r * n + p];
            for (a, &v) in a.iter_mut().zip(v) {
                *a += wp * v;
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let at = (r0 + r) * hd + d0;
        y[at..at + DIMS_PER_PASS].copy_from_slice(a);
    }
}

/// [`weigh_values`] for any number of heads and values (the last, narrower passes).
fn weigh_values_any(
    c: &Cache<'_>,
    (w, n): (&[f32], usize),
    (col, width): (usize, usize),
    y: &mut [f32],
    (r0, d0): (usize, usize),
    ps: std::ops::Range<usize>,
) {
    let hd = c.hd;
    let m = w.len() / n;
    for r in 0..m {
        let at = (r0 + r) * hd + d0;
        let out = &mut y[at..at + width];
        for p in ps.clone() {
            let wp = w[r * n + p];
            let v = &c.vc[p * c.kvw + col..p * c.kvw + col + width];
            for (o, &v) in out.iter_mut().zip(v) {
                *o += wp * v;
            }
        }
    }
}

/// `a · b` over the shorter length, in 8 interleaved partial sums added pairwise at the end:
/// `((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7)) + tail`, each `s_l` summing the
/// products of lane `l` (values `l`, `l + 8`, …) in order, multiply and add rounded apart.
/// With AVX2 the partial sums are one register (the same roundings, so the same bits).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        use std::arch::x86_64::*;
        let n = a.len().min(b.len());
        let (ac, ar) = a[..n].as_chunks::<8>();
        let (bc, br) = b[..n].as_chunks::<8>();
        let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
        // SAFETY: AVX2 (with AVX) is enabled for the whole build; every load reads one whole
        // 8-value chunk of `ac` or `bc`, unaligned.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for (x, y) in ac.iter().zip(bc) {
                let p = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr()), _mm256_loadu_ps(y.as_ptr()));
                acc = _mm256_add_ps(acc, p);
            }
            // (s0+s4, s1+s5, s2+s6, s3+s7), then ((s0+s4)+(s1+s5), (s2+s6)+(s3+s7)), then
            // their sum: the scalar path's additions, in its order.
            let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
            let pairs = _mm_hadd_ps(half, half);
            let all = _mm_hadd_ps(pairs, pairs);
            return _mm_cvtss_f32(all) + tail;
        }
    }
    #[allow(unreachable_code)]
    dot_portable(a, b)
}

/// Positions whose scores [`dots8`] computes together.
const DOTS_AT_ONCE: usize = 8;

/// [`dot`] of `q` (`[hd]`, `hd` a multiple of 8) with the `hd` values at `k[i·stride ..]` for
/// each of eight key rows `i`, bit for bit: per dot the same products and additions in the same
/// order (eight lane sums over the 8-value chunks, then `dot`'s tree, then its empty tail), but
/// the eight chains of additions run side by side (one dot's chain waits on its adder's
/// latency; eight keep the adders busy) and the trees are reduced four dots at a time. `None`
/// where the shapes do not allow it (the caller then takes [`dot`] one by one).
#[inline]
fn dots8(q: &[f32], k: &[f32], stride: usize) -> Option<[f32; DOTS_AT_ONCE]> {
    let hd = q.len();
    if hd == 0 || !hd.is_multiple_of(8) || k.len() < (DOTS_AT_ONCE - 1) * stride + hd {
        return None;
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        use std::arch::x86_64::*;
        // `dot`'s tail over no values: the same neutral element of the same sum.
        let tail: f32 = std::iter::empty::<f32>().sum();
        // SAFETY: AVX2 (with AVX) is enabled for the whole build; every load reads 8 values at
        // `q[c..]` with `c + 8 ≤ hd`, or at `k[i·stride + c..]` with `i ≤ 7`, inside `k` by the
        // check above; unaligned loads.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); DOTS_AT_ONCE];
            for c in (0..hd).step_by(8) {
                let qc = _mm256_loadu_ps(q.as_ptr().add(c));
                for (i, a) in acc.iter_mut().enumerate() {
                    let kc = _mm256_loadu_ps(k.as_ptr().add(i * stride + c));
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(qc, kc));
                }
            }
            let mut out = [0f32; DOTS_AT_ONCE];
            for (four, o) in acc.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
                // Per dot: the low and high halves added (`dot`'s `half`), two dots per
                // register; then the pairwise sums, then their sum (`dot`'s two `hadd`s).
                let half = |a: __m256, b: __m256| {
                    _mm256_add_ps(
                        _mm256_permute2f128_ps::<0x20>(a, b),
                        _mm256_permute2f128_ps::<0x31>(a, b),
                    )
                };
                let (h01, h23) = (half(four[0], four[1]), half(four[2], four[3]));
                let pairs = _mm256_hadd_ps(h01, h23);
                let all = _mm256_hadd_ps(pairs, pairs);
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), all);
                // Lanes 0, 4, 1, 5 hold dots 0, 1, 2, 3.
                for (o, l) in o.iter_mut().zip([0, 4, 1, 5]) {
                    *o = lanes[l] + tail;
                }
            }
            Some(out)
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    {
        Some(std::array::from_fn(|i| dot(q, &k[i * stride..i * stride + hd])))
    }
}

/// [`dot`] without SIMD intrinsics (CPUs without AVX2, and the check of the AVX2 path).
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ac, ar) = a[..n].as_chunks::<8>();
    let (bc, br) = b[..n].as_chunks::<8>();
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    let mut acc = [0f32; 8];
    for (x, y) in ac.iter().zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let [a0, a1, a2, a3, a4, a5, a6, a7] = acc;
    ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook formula in f64, one head at a time.
    fn reference(
        q: &[f32],
        kc: &[f32],
        vc: &[f32],
        (nh, nkv, hd): (usize, usize, usize),
        opts: AttnOptions,
    ) -> Vec<f64> {
        let kvw = nkv * hd;
        let n = kc.len() / kvw;
        let mut out = vec![0f64; nh * hd];
        for h in 0..nh {
            let off = (h / (nh / nkv)) * hd;
            let s: Vec<f64> = (0..n)
                .map(|p| {
                    let d: f64 = (0..hd)
                        .map(|i| q[h * hd + i] as f64 * kc[p * kvw + off + i] as f64)
                        .sum();
                    let s = d * opts.scale;
                    opts.softcap.map_or(s, |c| c * (s / c).tanh())
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|s| (s - m).exp()).sum();
            for (p, s) in s.iter().enumerate() {
                let w = (s - m).exp() / z;
                for i in 0..hd {
                    out[h * hd + i] += w * vc[p * kvw + off + i] as f64;
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed.wrapping_mul(40_503));
                (x >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn matches_the_formula_for_grouped_heads_softcap_and_long_contexts() {
        // (heads, kv heads, head dim, keys): GQA 3:1 with an odd head dim, MHA, one key, and a
        // context long enough to go over the pool.
        for (nh, nkv, hd, n) in [(9, 3, 13, 7), (4, 4, 64, 1), (8, 2, 64, 600)] {
            for softcap in [None, Some(5.0)] {
                let opts = AttnOptions {
                    scale: 1.0 / (hd as f64).sqrt(),
                    softcap,
                    window: None,
                };
                let q = values(nh * hd, 1);
                let (kc, vc) = (values(n * nkv * hd, 2), values(n * nkv * hd, 3));
                let got = attend_one(&q, (&kc, &vc), (nh, nkv, hd), opts);
                let want = reference(&q, &kc, &vc, (nh, nkv, hd), opts);
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (*g as f64 - w).abs())
                    .fold(0.0, f64::max);
                assert!(
                    err < 1e-5,
                    "({nh},{nkv},{hd},{n}) softcap {softcap:?}: max |Δ| {err}"
                );
            }
        }
    }

    /// The plain loop, one head after another (this module's first version): the order of
    /// every sum that [`attend_one`] must keep.
    fn one_head_at_a_time(
        q: &[f32],
        (kc, vc): (&[f32], &[f32]),
        (nh, nkv, hd): (usize, usize, usize),
        opts: AttnOptions,
    ) -> Vec<f32> {
        let kvw = nkv * hd;
        let n = kc.len() / kvw;
        let rep = nh / nkv;
        let mut out = vec![0f32; nh * hd];
        for (h, y) in out.chunks_mut(hd).enumerate() {
            let off = (h / rep) * hd;
            let qh = &q[h * hd..(h + 1) * hd];
            let mut scores: Vec<f32> = (0..n)
                .map(|p| {
                    let s = dot(qh, &kc[p * kvw + off..p * kvw + off + hd]) * opts.scale as f32;
                    opts.softcap.map_or(s, |c| (c as f32) * (s / c as f32).tanh())
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                let a = *s - max;
                *s = if a >= -87.3 {
                    crate::runtime::ops::exp_poly(a)
                } else {
                    0.0
                };
                sum += *s;
            }
            for s in scores.iter_mut() {
                *s /= sum;
            }
            for (p, &w) in scores.iter().enumerate() {
                let v = &vc[p * kvw + off..p * kvw + off + hd];
                for (y, &v) in y.iter_mut().zip(v) {
                    *y += w * v;
                }
            }
        }
        out
    }

    #[test]
    fn grouped_heads_give_the_one_head_loop_bit_for_bit() {
        // (heads, kv heads, head dim, keys): SmolLM2's 9:3 and Gemma 3 270M's 4:1 at 64 (full
        // 16-value passes), 6 heads per kv head (a pass of 4, then 2), head dims with a
        // narrower last pass (40, 13; 13 also over blocks of eight keys, by `dot`), one key,
        // and contexts long enough for the pool's split, which then cuts groups of heads
        // sharing a kv head.
        let shapes = [
            (9, 3, 64, 300),
            (9, 3, 64, 5),
            (4, 1, 64, 700),
            (12, 2, 64, 200),
            (6, 2, 40, 33),
            (9, 3, 13, 7),
            (9, 3, 13, 20),
            (2, 2, 16, 1),
            (9, 3, 64, 2 * BLOCK),
        ];
        for (nh, nkv, hd, n) in shapes {
            for softcap in [None, Some(30.0)] {
                let opts = AttnOptions {
                    scale: 1.0 / (hd as f64).sqrt(),
                    softcap,
                    window: None,
                };
                let q = values(nh * hd, 7);
                let (kc, vc) = (values(n * nkv * hd, 8), values(n * nkv * hd, 9));
                let got = attend_one(&q, (&kc, &vc), (nh, nkv, hd), opts);
                let want = one_head_at_a_time(&q, (&kc, &vc), (nh, nkv, hd), opts);
                let same = got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same, "({nh},{nkv},{hd},{n}) softcap {softcap:?}");
            }
        }
    }

    /// Every run of heads a pool piece can get (groups cut anywhere), whatever the pool's
    /// size on the machine running the tests.
    #[test]
    fn any_run_of_heads_gives_the_one_head_loop_bit_for_bit() {
        for (nh, nkv, hd, n) in [(9, 3, 64, 37), (4, 1, 64, 2 * BLOCK), (6, 2, 40, 5)] {
            let opts = AttnOptions::causal(hd);
            let q = values(nh * hd, 17);
            let (kc, vc) = (values(n * nkv * hd, 18), values(n * nkv * hd, 19));
            let want = one_head_at_a_time(&q, (&kc, &vc), (nh, nkv, hd), opts);
            let cache = Cache {
                kc: &kc,
                vc: &vc,
                n,
                kvw: nkv * hd,
                hd,
            };
            for h0 in 0..nh {
                for m in 1..=nh - h0 {
                    let mut y = vec![f32::NAN; m * hd];
                    heads(&cache, &q, (h0, nh / nkv), opts, &mut y, &mut Vec::new());
                    let same = y
                        .iter()
                        .zip(&want[h0 * hd..(h0 + m) * hd])
                        .all(|(g, w)| g.to_bits() == w.to_bits());
                    assert!(same, "({nh},{nkv},{hd},{n}) heads {h0}..{}", h0 + m);
                }
            }
        }
    }

    #[test]
    fn the_simd_dot_is_the_portable_one_bit_for_bit() {
        for n in [0, 1, 7, 8, 13, 64, 67, 256] {
            let (a, b) = (values(n, 11), values(n + 3, 12));
            assert_eq!(
                dot(&a, &b).to_bits(),
                dot_portable(&a, &b).to_bits(),
                "length {n}"
            );
        }
    }

    #[test]
    fn eight_dots_at_once_are_eight_dots_bit_for_bit() {
        for (hd, stride) in [(8, 8), (16, 40), (64, 192), (64, 64), (40, 120)] {
            for seed in 0..4 {
                let q = values(hd, 21 + seed);
                let k = values(7 * stride + hd, 31 + seed);
                let got = dots8(&q, &k, stride);
                let want: [f32; 8] = std::array::from_fn(|i| dot(&q, &k[i * stride..i * stride + hd]));
                assert_eq!(
                    got.map(|g| g.map(f32::to_bits)),
                    Some(want.map(f32::to_bits)),
                    "{hd} {stride}"
                );
            }
        }
        // Shapes it leaves to `dot`: a head dim not a multiple of 8, keys too short.
        assert!(dots8(&values(13, 1), &values(200, 2), 13).is_none());
        assert!(dots8(&values(64, 1), &values(7 * 64 + 63, 2), 64).is_none());
        assert!(dots8(&[], &values(64, 2), 8).is_none());
    }

    #[test]
    fn bad_shapes_give_zeros() {
        let opts = AttnOptions::causal(4);
        assert_eq!(attend_one(&[1.0; 8], (&[], &[]), (2, 1, 4), opts), vec![0.0; 8]);
        assert_eq!(
            attend_one(&[1.0; 8], (&[1.0; 8], &[1.0; 8]), (2, 0, 4), opts),
            vec![0.0; 8]
        );
        assert_eq!(
            attend_one(&[1.0; 12], (&[1.0; 8], &[1.0; 8]), (3, 2, 4), opts),
            vec![0.0; 12]
        );
    }
}
