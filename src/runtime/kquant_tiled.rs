//! Prompt products on k-quant weights (Q4_K, Q5_K, Q6_K) with 8-bit integer dot products: the
//! [`super::linear::MatPath::Tiled`] path for these formats, in place of [`super::tiled`]'s f32
//! product on dequantized tiles.
//!
//! `y = x̂ · Ŵᵀ` for `x: [n, k]` and a k-quant `W: [out, k]` (`k` a multiple of 256), where
//! `x̂` is `x` quantized to Q8_K exactly as the decode kernels quantize it
//! ([`super::kquant::quantize_q8_k`]). Per super-block `b` of 256 values each product is the
//! decode kernels' sum
//!
//! `d_b·dy_b · Σ_j Σ_{i ∈ chunk j} s_{j,i}·q_i·x_i  −  Σ_g m_{b,g} · (dy_b · bsum_{b,g})`
//!
//! with `q` the unsigned quants (Q4_K 0‥15, Q5_K 0‥31, Q6_K 0‥63), `s` the integer scale of
//! value `i`'s sub-block, `x` the Q8_K quants and `bsum_g` their sum over 16-value group `g`;
//! `m_g` is the float offset of group `g`: `dmin·min` of its sub-block (Q4_K / Q5_K) or
//! `32·d·scale` (Q6_K, whose quants are stored +32).
//!
//! **How** (llama.cpp's integer `vec_dot` arithmetic, register-tiled as its repacked GEMMs are):
//! a pool task decodes [`ROWS`] weight rows once into a per-thread buffer — quants as bytes,
//! scales widened to the 16 `i16` lanes that `maddubs` produces per 32 values, `d` and the
//! 16 offsets per super-block — and multiplies each row by [`NC`] inputs at a time (their
//! quants interleaved by [`PackedInputs`], [`SEGMENT`] super-blocks per pass so they stay in
//! L1; passes are summed in order): per 32
//! values and input one `vpmaddubsw` (u8 × i8 → pairs of i16), one `vpmaddwd` by the scales
//! (→ i32) and one add; per super-block and input one conversion and three fused
//! multiply-adds. Six inputs keep twelve accumulators, the weights and scales in 15 of AVX2's
//! 16 registers. Nothing is expanded to f32 and the decoded rows are 2.3 bytes per weight.
//!
//! **Why**: the f32 tiles run at the FMA units' limit (16 multiply-adds per cycle and core),
//! and a 1.35 B Q4_K_M prompt ran at 0.88× llama.cpp's integer products on the Intel test
//! machine. `vpmaddubsw` does 32 multiply-adds per instruction; with the scale step and the
//! ports it shares, the kernel measured 1.1–1.25× the f32 tiles on that model's MLP shapes
//! (`ACT_BENCH_ONLY=tiled cargo bench --bench runtime`).
//!
//! **Numbers**: the integer sums are exact (bounds: `|q·x|` pairs ≤ 2·63·128 < 2¹⁵; per lane
//! and super-block ≤ 8·2·16128·128 < 2³¹); floats are summed in 8 lanes per output and then
//! across lanes, so outputs equal the decode kernels' up to float rounding (tests below) and
//! do not depend on the thread count or on how inputs are grouped.
//! Without AVX2 the same sums run in scalar code ([`row_dots_scalar`]).

use std::cell::RefCell;

use super::kquant::{self, BlockQ8K, QK_K};
use super::pool::{DisjointWrites, Pool};
use super::quant::{QDType, QMatrix, QuantError};

/// Inputs per kernel call (see the module doc: 15 of 16 AVX2 registers).
pub const NC: usize = 6;
/// Weight rows decoded per pool task: 16 rows of `k = 5632` are 210 KB, in L2 while every
/// group of [`NC`] inputs (in L1) meets them.
const ROWS: usize = 16;
/// 32-value chunks per super-block.
const CHUNKS: usize = QK_K / 32;
/// 16-value groups per super-block (one offset each).
const GROUPS: usize = QK_K / 16;

/// Whether `dt` has this product (the formats paired with Q8_K activations).
pub fn supports(dt: QDType) -> bool {
    matches!(dt, QDType::Q4K | QDType::Q5K | QDType::Q6K)
}

/// Fewest inputs for which this product is at least as fast as the quantized kernels in
/// format `dt` (decoding a row is repaid by the inputs that meet it). Measured with
/// `ACT_BENCH_ONLY=tiled cargo bench --bench runtime` on `[1536, 768]` weights, 2 threads
/// (Intel Xeon, 2026-12-05): speed against the quantized kernels at 16 / 32 / 64 / 128 / 512
/// inputs Q4_K 0.98 / 0.95 / 0.98 / 1.11 / 1.23×, Q5_K 0.44 / 0.66 / 0.78 / 0.85 / 1.08×
/// (its fifth bits make rows slower to decode), Q6_K 1.15 / 1.13 / 1.25 / 1.31 / 1.41×.
pub fn min_inputs(dt: QDType) -> usize {
    match dt {
        QDType::Q6K => 16,
        QDType::Q4K => 128,
        _ => 256,
    }
}

/// Weight rows decoded for the kernel (`nb` = super-blocks per row). Row `r` of the buffer:
/// - `q[r·k ..]`: the unsigned quants in value order (`[nb][256]`);
/// - `s[r·nb·128 ..]`: per super-block and 32-value chunk, the scale of each `i16` lane of
///   `maddubs`' output (lane `i` covers values `2i, 2i + 1`) (`[nb][8][16]`);
/// - `d[r·nb ..]`: the super-block scale `d` (`[nb]`);
/// - `m[r·nb·16 ..]`: the offset `m_g` of each 16-value group (`[nb][16]`).
#[derive(Debug, Default)]
pub struct DecodedRows {
    k: usize,
    q: Vec<u8>,
    s: Vec<i16>,
    d: Vec<f32>,
    m: Vec<f32>,
}

/// One decoded row (slices of [`DecodedRows`]).
#[derive(Clone, Copy)]
pub struct RowRef<'a> {
    q: &'a [u8],
    s: &'a [i16],
    d: &'a [f32],
    m: &'a [f32],
}

impl DecodedRows {
    /// Decodes rows `r0..r1` of `w` (a k-quant matrix) into the buffer, resized as needed.
    pub fn decode(&mut self, w: &QMatrix, r0: usize, r1: usize) {
        let k = w.cols();
        let nb = k / QK_K;
        let rows = r1.saturating_sub(r0);
        self.k = k;
        self.q.resize(rows * k, 0);
        self.s.resize(rows * nb * CHUNKS * 16, 0);
        self.d.resize(rows * nb, 0.0);
        self.m.resize(rows * nb * GROUPS, 0.0);
        let bb = w.dtype().block_bytes();
        let Some(row_bytes) = w.dtype().row_bytes(k) else {
            return;
        };
        // k-quants: the matrix's own bytes, borrowed (no rebuilding).
        let bytes = w.bytes();
        for i in 0..rows {
            let start = (r0 + i) * row_bytes;
            let Some(src) = bytes.get(start..start + row_bytes) else {
                continue;
            };
            for (b, blk) in src.chunks_exact(bb).enumerate() {
                let at = i * nb + b;
                let q = &mut self.q[at * QK_K..(at + 1) * QK_K];
                let s = &mut self.s[at * CHUNKS * 16..(at + 1) * CHUNKS * 16];
                let m = &mut self.m[at * GROUPS..(at + 1) * GROUPS];
                self.d[at] = match w.dtype() {
                    QDType::Q4K => decode_q45_k(blk, false, q, s, m),
                    QDType::Q5K => decode_q45_k(blk, true, q, s, m),
                    QDType::Q6K => decode_q6_k(blk, q, s, m),
                    _ => 0.0,
                };
            }
        }
    }

    /// Row `i` of the buffer (empty slices past its end).
    pub fn row(&self, i: usize) -> RowRef<'_> {
        let nb = self.k / QK_K;
        let cut = |len: usize| i * len..(i + 1) * len;
        RowRef {
            q: self.q.get(cut(self.k)).unwrap_or(&[]),
            s: self.s.get(cut(nb * CHUNKS * 16)).unwrap_or(&[]),
            d: self.d.get(cut(nb)).unwrap_or(&[]),
            m: self.m.get(cut(nb * GROUPS)).unwrap_or(&[]),
        }
    }
}

impl<'a> RowRef<'a> {
    /// Super-blocks `b0..b1` of the row (empty slices if out of range).
    fn blocks(self, b0: usize, b1: usize) -> RowRef<'a> {
        let cut = |len: usize| b0 * len..b1 * len;
        RowRef {
            q: self.q.get(cut(QK_K)).unwrap_or(&[]),
            s: self.s.get(cut(CHUNKS * 16)).unwrap_or(&[]),
            d: self.d.get(cut(1)).unwrap_or(&[]),
            m: self.m.get(cut(GROUPS)).unwrap_or(&[]),
        }
    }
}

/// One Q4_K (`b: [144]`) or Q5_K (`b: [176]`) super-block: quants into `q` (`[256]`), lane
/// scales into `s` (`[8][16]`), offsets `dmin·min` into `m` (`[16]`); returns `d`.
fn decode_q45_k(b: &[u8], five_bits: bool, q: &mut [u8], s: &mut [i16], m: &mut [f32]) -> f32 {
    let (d, dmin) = (kquant::f16_at(b, 0), kquant::f16_at(b, 2));
    let (sc, mins) = kquant::scales_mins(&b[4..16]);
    let (qh, qs) = if five_bits {
        (&b[16..48], &b[48..176])
    } else {
        (&b[..0], &b[16..144])
    };
    for c in 0..4 {
        let (lo, hi) = q[64 * c..64 * c + 64].split_at_mut(32);
        let src = &qs[32 * c..32 * c + 32];
        for ((lo, hi), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(src) {
            *lo = v & 0x0F;
            *hi = v >> 4;
        }
        if five_bits {
            for (l, &h) in qh.iter().enumerate() {
                q[64 * c + l] |= ((h >> (2 * c)) & 1) << 4;
                q[64 * c + 32 + l] |= ((h >> (2 * c + 1)) & 1) << 4;
            }
        }
    }
    for (j, lanes) in s.chunks_exact_mut(16).enumerate() {
        lanes.fill(sc[j] as i16);
    }
    for (g, m) in m.iter_mut().enumerate() {
        *m = dmin * mins[g / 2] as f32;
    }
    d
}

/// One Q6_K super-block (`b: [210]`): quants (0‥63) into `q`, lane scales (two 16-value
/// groups per chunk) into `s`, offsets `32·d·scale` into `m`; returns `d`.
fn decode_q6_k(b: &[u8], q: &mut [u8], s: &mut [i16], m: &mut [f32]) -> f32 {
    let (ql, qh, sc, d) = (&b[..128], &b[128..192], &b[192..208], kquant::f16_at(b, 208));
    for n in 0..2 {
        for k in 0..4 {
            let lo = &ql[64 * n + 32 * (k & 1)..64 * n + 32 * (k & 1) + 32];
            let hi = &qh[32 * n..32 * n + 32];
            let out = &mut q[128 * n + 32 * k..128 * n + 32 * k + 32];
            for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                let l = if k < 2 { l & 0x0F } else { l >> 4 };
                *o = l | (((h >> (2 * k)) & 3) << 4);
            }
        }
    }
    for (j, lanes) in s.chunks_exact_mut(16).enumerate() {
        let (a, b) = lanes.split_at_mut(8);
        a.fill(sc[2 * j] as i8 as i16);
        b.fill(sc[2 * j + 1] as i8 as i16);
    }
    for (m, &v) in m.iter_mut().zip(sc) {
        *m = 32.0 * d * v as i8 as f32;
    }
    d
}

thread_local! {
    /// Per thread: the decoded rows of its current task and their partial sums
    /// (`[n][rows]`), reused across calls.
    static SCRATCH: RefCell<(DecodedRows, Vec<f32>)> = RefCell::new((DecodedRows::default(), Vec::new()));
}

/// Activations quantized to Q8_K and regrouped for the kernel: inputs in groups of [`NC`]
/// (the last group holds the rest). Group `g` of `c` inputs starting at input `c0` holds
/// - `q[c0·k ..]`: `[nb][8][c][32]` quants — chunk `j` of super-block `b` of its `c` inputs
///   side by side, so the kernel reads them at fixed offsets from one pointer;
/// - `m[c0·nb·17 ..]`: `[nb][c][17]` floats — the block scale `dy`, then `dy · bsum` of each
///   16-value group.
#[derive(Debug, Default)]
pub struct PackedInputs {
    n: usize,
    nb: usize,
    q: Vec<i8>,
    m: Vec<f32>,
}

/// Floats per input and super-block in [`PackedInputs::m`].
const META: usize = 1 + GROUPS;

/// One group of a [`PackedInputs`] restricted to super-blocks `b0..b1`.
#[derive(Clone, Copy)]
pub struct GroupRef<'a> {
    c: usize,
    q: &'a [i8],
    m: &'a [f32],
}

impl PackedInputs {
    /// Quantizes `x` (`[n, k]`, `k` a multiple of 256) and regroups it, on the pool for long
    /// prompts (the values do not depend on the split).
    pub fn new(pool: &Pool, x: &[f32], k: usize) -> Self {
        let nb = k / QK_K;
        let n = x.len().checked_div(k).unwrap_or(0);
        let mut blocks = vec![BlockQ8K::default(); n * nb];
        if nb > 0 {
            let rows = n.div_ceil(pool.threads() * 4).max(1);
            pool.for_each_piece(&mut blocks, rows * nb, &|c, part| {
                for (o, xs) in part.iter_mut().zip(x[c * rows * k..].chunks_exact(QK_K)) {
                    *o = kquant::q8_k_block(xs);
                }
            });
        }
        let mut q = vec![0i8; n * k];
        let mut m = vec![0f32; n * nb * META];
        for c0 in (0..n).step_by(NC) {
            let c = NC.min(n - c0);
            let gq = &mut q[c0 * k..(c0 + c) * k];
            let gm = &mut m[c0 * nb * META..(c0 + c) * nb * META];
            for (i, x) in blocks[c0 * nb..(c0 + c) * nb].chunks_exact(nb).enumerate() {
                for (b, blk) in x.iter().enumerate() {
                    for (j, chunk) in blk.qs.chunks_exact(32).enumerate() {
                        let at = ((b * CHUNKS + j) * c + i) * 32;
                        gq[at..at + 32].copy_from_slice(chunk);
                    }
                    let at = (b * c + i) * META;
                    gm[at] = blk.d;
                    for (o, &s) in gm[at + 1..at + META].iter_mut().zip(&blk.bsums) {
                        *o = blk.d * s as f32;
                    }
                }
            }
        }
        Self { n, nb, q, m }
    }

    /// The group starting at input `c0` (a multiple of [`NC`]), super-blocks `b0..b1`.
    pub fn group(&self, c0: usize, b0: usize, b1: usize) -> GroupRef<'_> {
        let c = NC.min(self.n.saturating_sub(c0));
        let (q0, m0) = (c0 * self.nb * QK_K, c0 * self.nb * META);
        GroupRef {
            c,
            q: self.q.get(q0 + b0 * QK_K * c..q0 + b1 * QK_K * c).unwrap_or(&[]),
            m: self.m.get(m0 + b0 * META * c..m0 + b1 * META * c).unwrap_or(&[]),
        }
    }
}

/// Super-blocks per pass over a row: each group's quants for one pass (6 inputs × 2,048
/// values = 12 KB) stay in L1 while the task's rows meet them; longer rows (an MLP's down
/// projection, `k = 5632`) are summed over passes.
const SEGMENT: usize = 8;

/// `y = x̂ · Ŵᵀ` (module doc) for `x: [n, cols]` into `y: [n, rows]`, both row-major, on the
/// threads of `pool`. Errors for formats other than Q4_K / Q5_K / Q6_K and wrong lengths.
pub fn matmul(pool: &Pool, w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), QuantError> {
    let (out, k) = (w.rows(), w.cols());
    if !supports(w.dtype()) {
        return Err(QuantError::Format {
            what: "integer k-quant prompt product",
            dtype: w.dtype(),
        });
    }
    let check = |what, expected: Option<usize>, got| match expected {
        Some(e) if e == got => Ok(()),
        _ => Err(QuantError::Len {
            what,
            expected: expected.unwrap_or(usize::MAX),
            got,
        }),
    };
    check("k-quant prompt product input", n.checked_mul(k), x.len())?;
    check("k-quant prompt product output", n.checked_mul(out), y.len())?;
    if n == 0 || out == 0 {
        return Ok(());
    }
    let xs = PackedInputs::new(pool, x, k);
    let nb = k / QK_K;
    let ys = DisjointWrites::new(y);
    pool.run(out.div_ceil(ROWS), &|t| {
        SCRATCH.with_borrow_mut(|(rows, acc)| {
            let (r0, r1) = (t * ROWS, (t * ROWS + ROWS).min(out));
            rows.decode(w, r0, r1);
            // `acc`: `[n][r1 − r0]`, so each input's outputs leave as one contiguous run.
            let nr = r1 - r0;
            acc.clear();
            acc.resize(n * nr, 0.0);
            for b0 in (0..nb).step_by(SEGMENT) {
                let b1 = (b0 + SEGMENT).min(nb);
                for c0 in (0..n).step_by(NC) {
                    let g = xs.group(c0, b0, b1);
                    for r in 0..nr {
                        let dots = row_dots(rows.row(r).blocks(b0, b1), g);
                        for (i, d) in dots.into_iter().enumerate().take(g.c) {
                            acc[(c0 + i) * nr + r] += d;
                        }
                    }
                }
            }
            for (i, sums) in acc.chunks_exact(nr).enumerate() {
                // SAFETY: task `t` alone writes columns `r0..r1` (disjoint across tasks),
                // each (input, row) once.
                unsafe { ys.set_slice(i * out + r0, sums) };
            }
        });
    });
    Ok(())
}

/// The products of one decoded row segment with one input group over the same super-blocks;
/// entries past the group's inputs (and all, if the lengths disagree) are 0.
pub fn row_dots(w: RowRef<'_>, g: GroupRef<'_>) -> [f32; NC] {
    let nb = w.d.len();
    let fits = nb > 0
        && (1..=NC).contains(&g.c)
        && g.q.len() == g.c * nb * QK_K
        && g.m.len() == g.c * nb * META
        && w.q.len() == nb * QK_K
        && w.s.len() == nb * CHUNKS * 16
        && w.m.len() == nb * GROUPS;
    if !fits {
        return [0.0; NC];
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        let mut out = [0.0; NC];
        // SAFETY: lengths checked above; AVX2 and FMA are enabled at compile time.
        unsafe {
            match g.c {
                1 => out[..1].copy_from_slice(&avx2::dots::<1>(w, g, nb)),
                2 => out[..2].copy_from_slice(&avx2::dots::<2>(w, g, nb)),
                3 => out[..3].copy_from_slice(&avx2::dots::<3>(w, g, nb)),
                4 => out[..4].copy_from_slice(&avx2::dots::<4>(w, g, nb)),
                5 => out[..5].copy_from_slice(&avx2::dots::<5>(w, g, nb)),
                _ => out = avx2::dots::<6>(w, g, nb),
            }
        }
        out
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    row_dots_scalar(w, g)
}

/// [`row_dots`] in scalar code: the same integer sums; floats accumulated per super-block in
/// one chain (so equal to the SIMD form up to float rounding).
pub fn row_dots_scalar(w: RowRef<'_>, g: GroupRef<'_>) -> [f32; NC] {
    let mut out = [0.0f32; NC];
    let nb = w.d.len();
    let c = g.c.min(NC);
    if nb == 0 || g.q.len() < c * nb * QK_K || g.m.len() < c * nb * META {
        return out;
    }
    if w.q.len() < nb * QK_K || w.s.len() < nb * CHUNKS * 16 || w.m.len() < nb * GROUPS {
        return out;
    }
    for (i, o) in out.iter_mut().enumerate().take(c) {
        let mut acc = 0f32;
        for b in 0..nb {
            let s = &w.s[b * CHUNKS * 16..(b + 1) * CHUNKS * 16];
            let mut sumi = 0i32;
            for j in 0..CHUNKS {
                let xq = &g.q[((b * CHUNKS + j) * c + i) * 32..][..32];
                let wq = &w.q[b * QK_K + 32 * j..][..32];
                for l in 0..32 {
                    sumi += s[16 * j + l / 2] as i32 * wq[l] as i32 * xq[l] as i32;
                }
            }
            let meta = &g.m[(b * c + i) * META..][..META];
            let offs: f32 = w.m[b * GROUPS..(b + 1) * GROUPS]
                .iter()
                .zip(&meta[1..])
                .map(|(m, b)| m * b)
                .sum();
            acc += sumi as f32 * (w.d[b] * meta[0]) - offs;
        }
        *o = acc;
    }
    out
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{CHUNKS, GROUPS, GroupRef, META, QK_K, RowRef};

    /// Products of one decoded row segment of `nb` super-blocks with a group of `C` inputs.
    ///
    /// # Safety
    /// `w`'s slices hold `nb` super-blocks (`q: [nb·256]`, `s: [nb·128]`, `d: [nb]`,
    /// `m: [nb·16]`) and `g` holds `C` inputs over them (`q: [nb·256·C]`, `m: [nb·C·17]`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots<const C: usize>(w: RowRef<'_>, g: GroupRef<'_>, nb: usize) -> [f32; C] {
        // SAFETY: every pointer below stays inside the slices of the caller's contract;
        // loads are unaligned.
        unsafe {
            let mut accf = [_mm256_setzero_ps(); C];
            for b in 0..nb {
                let mut acci = [_mm256_setzero_si256(); C];
                let wq = w.q.as_ptr().add(b * QK_K);
                let ws = w.s.as_ptr().add(b * CHUNKS * 16);
                let xb = g.q.as_ptr().add(b * QK_K * C);
                // An opaque trip count keeps this a loop: fully unrolled, LLVM turned it inside
                // out (all eight chunks' weights and scales first, then input by input) and
                // spilled half its registers, at half the speed.
                for j in 0..std::hint::black_box(CHUNKS) {
                    let wv = _mm256_loadu_si256(wq.add(32 * j).cast());
                    let sv = _mm256_loadu_si256(ws.add(16 * j).cast());
                    let xj = xb.add(32 * C * j);
                    for (c, acc) in acci.iter_mut().enumerate() {
                        let xv = _mm256_loadu_si256(xj.add(32 * c).cast());
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), sv);
                        *acc = _mm256_add_epi32(*acc, p);
                    }
                }
                let wm = w.m.as_ptr().add(b * GROUPS);
                let (m0, m1) = (_mm256_loadu_ps(wm), _mm256_loadu_ps(wm.add(8)));
                let d = *w.d.get_unchecked(b);
                let xm = g.m.as_ptr().add(b * C * META);
                for (c, (acc, sumi)) in accf.iter_mut().zip(acci).enumerate() {
                    let meta = xm.add(c * META);
                    let dd = _mm256_set1_ps(d * *meta);
                    let mut a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), dd, *acc);
                    a = _mm256_fnmadd_ps(m0, _mm256_loadu_ps(meta.add(1)), a);
                    *acc = _mm256_fnmadd_ps(m1, _mm256_loadu_ps(meta.add(9)), a);
                }
            }
            accf.map(|v| hsum(v))
        }
    }

    /// Sum of the 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::kquant::{
        quantize_q8_k, vec_dot_q4_k_q8_k_scalar, vec_dot_q5_k_q8_k_scalar, vec_dot_q6_k_q8_k_scalar,
    };
    use crate::runtime::quant::ActScratch;
    use candle_core::quantized::GgmlDType;

    /// Sizes of one decoded row of `k` values, for the docs' "2.3 bytes per weight".
    fn decoded_bytes_per_weight(k: usize) -> f64 {
        let nb = k / QK_K;
        (k + nb * CHUNKS * 16 * 2 + nb * 4 + nb * GROUPS * 4) as f64 / k as f64
    }

    /// The f16 bits of `v`, for building test blocks.
    fn f16_bits(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_le_bytes()
    }

    /// Deterministic values in [-1, 1) with some large ones.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::runtime::test_values::values(n, seed, 17, (6.0, 0.5))
    }

    /// `rows × cols` random weights quantized by candle into `dt`, as our matrix.
    fn matrix(dt: GgmlDType, rows: usize, cols: usize, seed: u64) -> QMatrix {
        crate::runtime::test_values::quantized_matrix(dt, rows, cols, seed)
    }

    const FORMATS: [GgmlDType; 3] = [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K];

    /// The scalar reference dot of row `r` with input `x` (`[k]`).
    fn reference(q: &QMatrix, r: usize, x: &[f32]) -> f32 {
        let mut y = Vec::new();
        quantize_q8_k(x, &mut y).unwrap_or_else(|e| panic!("{e}"));
        let rb = q
            .dtype()
            .row_bytes(q.cols())
            .unwrap_or_else(|| panic!("row bytes"));
        let row = &q.bytes()[r * rb..(r + 1) * rb];
        match q.dtype() {
            QDType::Q4K => vec_dot_q4_k_q8_k_scalar(row, &y),
            QDType::Q5K => vec_dot_q5_k_q8_k_scalar(row, &y),
            _ => vec_dot_q6_k_q8_k_scalar(row, &y),
        }
    }

    /// Worst `|got − want| / Σ|x̂ᵢ·ŵᵢ|` over all outputs.
    fn worst_relative(q: &QMatrix, x: &[f32], n: usize, got: &[f32]) -> f64 {
        let (rows, cols) = (q.rows(), q.cols());
        let w = q.dequantize();
        let mut worst = 0f64;
        for i in 0..n {
            let xi = &x[i * cols..(i + 1) * cols];
            let mut y = Vec::new();
            quantize_q8_k(xi, &mut y).unwrap_or_else(|e| panic!("{e}"));
            for r in 0..rows {
                let scale: f64 = (0..cols)
                    .map(|j| (y[j / QK_K].qs[j % QK_K] as f32 * y[j / QK_K].d * w[r * cols + j]).abs() as f64)
                    .sum();
                let d = (got[i * rows + r] - reference(q, r, xi)).abs() as f64;
                worst = worst.max(d / scale.max(1e-30));
            }
        }
        worst
    }

    #[test]
    fn decoding_gives_back_the_dequantized_values() {
        for dt in FORMATS {
            let q = matrix(dt, 3, 512, 4);
            let mut rows = DecodedRows::default();
            rows.decode(&q, 0, 3);
            let deq = q.dequantize();
            for r in 0..3 {
                let w = rows.row(r);
                for i in 0..512 {
                    let (b, v) = (i / QK_K, i % QK_K);
                    let s = w.s[b * 128 + (v / 32) * 16 + (v % 32) / 2] as f32;
                    let got = w.d[b] * s * w.q[i] as f32 - w.m[b * GROUPS + v / 16];
                    let want = deq[r * 512 + i];
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{dt:?} row {r} value {i}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn matches_the_quantized_kernels_up_to_float_rounding() {
        for dt in FORMATS {
            // 37 rows: two full tasks and a partial one; 13 inputs: two groups of six and one;
            // 10 super-blocks: two passes of SEGMENT.
            let (rows, cols, n) = (37, 2560, 13);
            let q = matrix(dt, rows, cols, 3);
            let x = values(n * cols, 9);
            let mut got = vec![f32::NAN; n * rows];
            matmul(&Pool::new(2), &q, &x, n, &mut got).unwrap_or_else(|e| panic!("{e}"));
            let worst = worst_relative(&q, &x, n, &got);
            println!("{dt:?}: worst relative difference {worst:e}");
            assert!(worst <= 2e-6, "{dt:?}: relative difference {worst:e}");
            // And the batched decode kernels agree the same way.
            let mut want = vec![0.0; n * rows];
            q.matmul(&x, n, &mut want, &mut ActScratch::new())
                .unwrap_or_else(|e| panic!("{e}"));
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{dt:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn the_scalar_form_equals_the_simd_form_up_to_rounding() {
        for dt in FORMATS {
            let cols = 1024;
            let q = matrix(dt, 2, cols, 8);
            for n in [NC, 4] {
                let x = values(n * cols, 2);
                let xs = PackedInputs::new(&Pool::new(1), &x, cols);
                let mut rows = DecodedRows::default();
                rows.decode(&q, 0, 2);
                for r in 0..2 {
                    let a = row_dots(rows.row(r), xs.group(0, 0, 4));
                    let b = row_dots_scalar(rows.row(r), xs.group(0, 0, 4));
                    for (i, (a, b)) in a.iter().zip(&b).enumerate().take(n) {
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "{dt:?} row {r} input {i}: {a} vs {b}"
                        );
                        let want = reference(&q, r, &x[i * cols..(i + 1) * cols]);
                        assert!(
                            (b - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{dt:?} scalar: {b} vs {want}"
                        );
                    }
                    assert!(a[n..].iter().chain(&b[n..]).all(|&v| v == 0.0));
                }
            }
        }
    }

    #[test]
    fn extreme_blocks_stay_exact() {
        // Largest quants and scales against ±127/−128 inputs: the integer sums' bounds.
        for dt in FORMATS {
            let own = crate::runtime::linear::own_dtype(dt).unwrap_or_else(|| panic!("{dt:?}"));
            let mut block = match own {
                QDType::Q4K => vec![0xFFu8; 144],
                QDType::Q5K => vec![0xFFu8; 176],
                _ => vec![0xFFu8; 210],
            };
            // Finite scales: d = 1, dmin = 0.5 (Q4_K / Q5_K); Q6_K scales −1 (0xFF) and d = 1.
            if own == QDType::Q6K {
                block[208..210].copy_from_slice(&f16_bits(1.0));
            } else {
                block[0..2].copy_from_slice(&f16_bits(1.0));
                block[2..4].copy_from_slice(&f16_bits(0.5));
            }
            let q = QMatrix::new(own, 1, 256, block).unwrap_or_else(|e| panic!("{e}"));
            for sign in [1.0f32, -1.0] {
                // One value at −1 makes the Q8_K scale put the rest at ±127 / −128.
                let mut x = vec![sign; 256];
                x[5] = -sign * 1.0;
                let mut got = [0f32];
                matmul(&Pool::new(1), &q, &x, 1, &mut got).unwrap_or_else(|e| panic!("{e}"));
                let want = reference(&q, 0, &x);
                assert!(
                    (got[0] - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{dt:?} {sign}: {} vs {want}",
                    got[0]
                );
                assert!(got[0].is_finite());
            }
        }
    }

    #[test]
    fn thread_count_and_input_grouping_do_not_change_a_bit() {
        let q = matrix(GgmlDType::Q4K, 50, 512, 6);
        let n = 17;
        let x = values(n * 512, 1);
        let mut one = vec![0.0; n * 50];
        matmul(&Pool::new(1), &q, &x, n, &mut one).unwrap_or_else(|e| panic!("{e}"));
        let mut three = vec![0.0; n * 50];
        matmul(&Pool::new(3), &q, &x, n, &mut three).unwrap_or_else(|e| panic!("{e}"));
        assert!(one.iter().zip(&three).all(|(a, b)| a.to_bits() == b.to_bits()));
        // Input 7 alone equals input 7 of the batch (computed there in a group of six).
        let mut single = vec![0.0; 50];
        matmul(&Pool::new(1), &q, &x[7 * 512..8 * 512], 1, &mut single).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            single
                .iter()
                .zip(&one[7 * 50..8 * 50])
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }

    #[test]
    fn bad_shapes_and_formats_are_errors() {
        let q = matrix(GgmlDType::Q4K, 16, 256, 1);
        let pool = Pool::new(1);
        assert!(matmul(&pool, &q, &[0.0; 255], 1, &mut [0.0; 16]).is_err());
        assert!(matmul(&pool, &q, &[0.0; 256], 1, &mut [0.0; 15]).is_err());
        assert!(matmul(&pool, &q, &[], 0, &mut []).is_ok());
        let q8 = matrix(GgmlDType::Q8_0, 16, 256, 1);
        assert!(matmul(&pool, &q8, &[0.0; 256], 1, &mut [0.0; 16]).is_err());
        assert!(decoded_bytes_per_weight(5632) < 2.4);
    }
}
