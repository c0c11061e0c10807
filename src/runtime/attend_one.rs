//! Attention of a single new token (a decode step) read straight from a row's key/value cache.
//!
//! The general path ([`super::forward`]'s `attend`) builds candle tensors, which copies every
//! cached key and value (and repeats them per query head) at every step: O(context) copies per
//! token and layer, ~6 % of a SmolLM2 decode at 200 tokens of context and growing with it. A
//! single query needs no mask and no copies: per head, `softmax(scale · q·kᵀ) · V` over the
//! cached rows in place (Vaswani et al. 2017, eq. 1; grouped-query heads as in Ainslie et al.
//! 2023, query head `h` reading kv head `h / (nh / nkv)`).

use super::forward::AttnOptions;
use super::pool::Pool;

/// Below this many multiply-adds (`heads × keys × head_dim`) one thread does all heads: a pool
/// job costs a few microseconds to hand out.
const PAR_MIN_MACS: usize = 1 << 17;

/// One query `q` (`[nh·hd]`) against the `n` cached positions in `kc` and `vc` (`[n, nkv·hd]`
/// each, every one visible to the query). Returns `[nh·hd]`: for each head,
/// `Σ_p softmax_p(s) · v_p` with `s_p = scale · q·k_p`, soft-capped as `c·tanh(s/c)` when
/// `opts.softcap` is set. Empty or mismatched shapes give zeros, never a panic.
///
/// Each head's sums run in a fixed order whatever thread computes it, so results do not
/// depend on the thread count.
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
    let rep = nh / nkv;
    let head = |h: usize, y: &mut [f32], scores: &mut Vec<f32>| {
        let off = (h / rep) * hd;
        let qh = &q[h * hd..(h + 1) * hd];
        scores.clear();
        scores.extend((0..n).map(|p| {
            let s = dot(qh, &kc[p * kvw + off..p * kvw + off + hd]) * opts.scale as f32;
            match opts.softcap {
                Some(c) => (c as f32) * (s / c as f32).tanh(),
                None => s,
            }
        }));
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for s in scores.iter_mut() {
            *s /= sum;
        }
        y.fill(0.0);
        for (p, &w) in scores.iter().enumerate() {
            let v = &vc[p * kvw + off..p * kvw + off + hd];
            for (y, &v) in y.iter_mut().zip(v) {
                *y += w * v;
            }
        }
    };
    let pool = Pool::global();
    if nh * n * hd < PAR_MIN_MACS || pool.threads() <= 1 {
        let mut scores = Vec::with_capacity(n);
        for (h, y) in out.chunks_mut(hd).enumerate() {
            head(h, y, &mut scores);
        }
    } else {
        let per = nh.div_ceil(pool.threads() * 2);
        pool.for_each_piece(&mut out, per * hd, &|c, part| {
            let mut scores = Vec::with_capacity(n);
            for (i, y) in part.chunks_mut(hd).enumerate() {
                head(c * per + i, y, &mut scores);
            }
        });
    }
    out
}

/// `a · b` over the shorter length, in 8 interleaved partial sums (which the compiler keeps in
/// one vector register) added pairwise at the end.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (ac, ar) = a.as_chunks::<8>();
    let (bc, br) = b.as_chunks::<8>();
    let mut acc = [0f32; 8];
    for (x, y) in ac.iter().zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
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
