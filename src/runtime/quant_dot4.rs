//! Four-input dot kernels for the batched quantized product ([`super::quant::QMatrix::matmul`]:
//! prefill, activation collection for fitting, perplexity): one weight row against four
//! activation rows at once.
//!
//! The one-input kernels ([`super::quant`]'s and [`super::kquant`]'s `avx2` modules) spend
//! most of their instructions unpacking the weight block (nibbles, fifth bits, 6-bit scales)
//! and converting f16 scales. Here each weight block is unpacked once and meets four inputs,
//! the register blocking of llama.cpp's `mul_mat` tiles, so a prompt costs about half the
//! instructions per multiply-add.
//!
//! Every output lane is **bit-identical** to the one-input kernel of its format: the integer
//! block sums are exact whatever the order of their additions, and the float operations of
//! each lane are the one-input kernel's, in its order. So a product's result never depends on
//! how its inputs were grouped, and prompt and decode agree with each other and with candle
//! exactly as before (`quant::tests::matmul_equals_matvecs` checks every format).

/// AVX2 + FMA + F16C forms; the build enables these features for the whole crate
/// (`.cargo/config.toml`), otherwise the one-input scalar references are used.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
pub(super) mod avx2 {
    use super::super::kquant::avx2::{broadcast_i16, min_products, q6_quants, q45_chunk, scales_and_mins};
    use super::super::kquant::{BlockQ8K, Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES};
    use super::super::quant::avx2::{f16_splat, f16x2_at, hsum_ps, nibbles, q5_bytes};
    use super::super::quant::{BlockQ8_0, BlockQ8_1};
    use std::arch::x86_64::*;

    /// Blocks every input holds and the row holds (`row.len() / block_bytes`).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn blocks<T>(row: &[u8], block_bytes: usize, y: &[&[T]; 4]) -> usize {
        y.iter().fold(row.len() / block_bytes, |nb, y| nb.min(y.len()))
    }

    /// Weight rows with a Q8_0 activation side (Q4_0, Q5_0, Q8_0): per block 8 f32 lanes of
    /// pair sums, `acc = fma(dx·dy, lanes, acc)`, one horizontal sum at the end: the float
    /// steps of `quant::avx2::dot_q4_0` and its siblings. `unpack(p)` gives the block's 32
    /// signed weight quants from the block's start `p`.
    ///
    /// `yd[j]` holds the scales of `y[j]`'s blocks as f32 (exact conversions of their f16
    /// `d`, made once per product): converting them again for every weight row cost more than
    /// the integer work.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_0_family(
        row: &[u8],
        block_bytes: usize,
        y: [&[BlockQ8_0]; 4],
        yd: [&[f32]; 4],
        unpack: impl Fn(*const u8) -> __m256i,
    ) -> [f32; 4] {
        let nb = yd
            .iter()
            .fold(blocks(row, block_bytes, &y), |nb, d| nb.min(d.len()));
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in 0..nb {
            // SAFETY: i < nb <= row.len() / block_bytes, so the block is in bounds.
            let p = unsafe { row.as_ptr().add(i * block_bytes) };
            // SAFETY: a block starts with its f16 scale.
            let dx = unsafe { f16_splat(p) };
            let bx = unpack(p);
            // |x| once for all inputs (llama.cpp's `mul_sum_i8_pairs_float` sign trick).
            let ax = _mm256_sign_epi8(bx, bx);
            for ((acc, y), yd) in acc.iter_mut().zip(&y).zip(&yd) {
                let dy = _mm256_set1_ps(yd[i]);
                // SAFETY: 32 quant bytes; unaligned load.
                let by = unsafe { _mm256_loadu_si256(y[i].qs.as_ptr().cast()) };
                let dot = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(by, bx));
                let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, dot));
                *acc = _mm256_fmadd_ps(_mm256_mul_ps(dx, dy), q, *acc);
            }
        }
        acc.map(|a| hsum_ps(a))
    }

    /// Q4_0 row · 4 Q8_0 inputs; lane `j` equals `dot_q4_0(row, y[j])` bit for bit.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn dot4_q4_0(row: &[u8], y: [&[BlockQ8_0]; 4], yd: [&[f32]; 4]) -> [f32; 4] {
        let eight = _mm256_set1_epi8(8);
        // SAFETY (closure): the block is 18 bytes, its nibbles at 2..18.
        q8_0_family(row, 18, y, yd, |p| {
            _mm256_sub_epi8(unsafe { nibbles(p.add(2)) }, eight)
        })
    }

    /// Q8_0 row · 4 Q8_0 inputs; lane `j` equals `dot_q8_0(row, y[j])` bit for bit.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn dot4_q8_0(row: &[u8], y: [&[BlockQ8_0]; 4], yd: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY (closure): the block is 34 bytes, its quants at 2..34; unaligned load.
        q8_0_family(row, 34, y, yd, |p| unsafe { _mm256_loadu_si256(p.add(2).cast()) })
    }

    /// Q5_0 row · 4 Q8_0 inputs; lane `j` equals `dot_q5_0(row, y[j])` bit for bit.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn dot4_q5_0(row: &[u8], y: [&[BlockQ8_0]; 4], yd: [&[f32]; 4]) -> [f32; 4] {
        let sixteen = _mm256_set1_epi8(16);
        // SAFETY (closure): the block is 22 bytes, qh at 2..6 and qs at 6..22.
        q8_0_family(row, 22, y, yd, |p| {
            _mm256_sub_epi8(unsafe { q5_bytes(p.add(2)) }, sixteen)
        })
    }

    /// `[d0 d1 d2 d3 | s0 s1 s2 s3]` as f32: the two f16 header values of block `i` of each
    /// Q8_1 input (exact conversions).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_1_headers(y: &[&[BlockQ8_1]; 4], i: usize) -> (__m128, __m128) {
        let word = |j: usize| {
            let b: &BlockQ8_1 = &y[j][i];
            // SAFETY: a Q8_1 block starts with two f16 values; unaligned read.
            unsafe { (b as *const BlockQ8_1).cast::<i32>().read_unaligned() }
        };
        let split = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
        let ds = _mm256_cvtph_ps(_mm_shuffle_epi8(
            _mm_setr_epi32(word(0), word(1), word(2), word(3)),
            split,
        ));
        (_mm256_castps256_ps128(ds), _mm256_extractf128_ps::<1>(ds))
    }

    /// Q4_1 row · 4 Q8_1 inputs; lane `j` equals `dot_q4_1(row, y[j])` bit for bit: the four
    /// block integer sums reduced together with `hadd`, then per lane
    /// `sumf += sumi·dx·dy + mx·sy` in that order.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn dot4_q4_1(row: &[u8], y: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        let nb = blocks(row, 20, &y);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm_setzero_ps();
        for i in 0..nb {
            // SAFETY: i < nb <= row.len() / 20: the 20 bytes of block i are in bounds (d, m,
            // then 16 bytes of nibbles).
            let ((dx, mx), bx) = unsafe {
                let p = row.as_ptr().add(i * 20);
                (f16x2_at(p), nibbles(p.add(4)))
            };
            let pair = |j: usize| {
                // SAFETY: 32 quant bytes; unaligned load.
                let by = unsafe { _mm256_loadu_si256(y[j][i].qs.as_ptr().cast()) };
                // Nibbles are unsigned (0..=15): maddubs applies directly, no saturation.
                _mm256_madd_epi16(_mm256_maddubs_epi16(bx, by), ones)
            };
            let h = _mm256_hadd_epi32(
                _mm256_hadd_epi32(pair(0), pair(1)),
                _mm256_hadd_epi32(pair(2), pair(3)),
            );
            let sumi = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
            let (dy, sy) = q8_1_headers(&y, i);
            let t = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(sumi), _mm_set1_ps(dx)), dy);
            acc = _mm_add_ps(acc, _mm_add_ps(t, _mm_mul_ps(_mm_set1_ps(mx), sy)));
        }
        let mut out = [0f32; 4];
        // SAFETY: `out` holds 4 f32; unaligned store.
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), acc) };
        out
    }

    /// Q5_1 row · 4 Q8_1 inputs; lane `j` equals `dot_q5_1(row, y[j])` bit for bit.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn dot4_q5_1(row: &[u8], y: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        let nb = blocks(row, 24, &y);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut summs = [0f32; 4];
        for i in 0..nb {
            // SAFETY: i < nb <= row.len() / 24: block i (d, m, qh, qs) is in bounds.
            let ((dx, mx), bx) = unsafe {
                let p = row.as_ptr().add(i * 24);
                (f16x2_at(p), q5_bytes(p.add(4)))
            };
            for ((acc, summs), y) in acc.iter_mut().zip(&mut summs).zip(&y) {
                let yb = &y[i];
                // SAFETY: a Q8_1 block starts with `d`, `s`, then 32 quants; unaligned reads.
                let ((dy, sy), by) = unsafe {
                    (
                        f16x2_at((yb as *const BlockQ8_1).cast()),
                        _mm256_loadu_si256(yb.qs.as_ptr().cast()),
                    )
                };
                let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(bx, by), ones));
                *acc = _mm256_fmadd_ps(_mm256_set1_ps(dx * dy), q, *acc);
                *summs += mx * sy;
            }
        }
        let mut out = [0f32; 4];
        for (o, (acc, summs)) in out.iter_mut().zip(acc.into_iter().zip(summs)) {
            *o = hsum_ps(acc) + summs;
        }
        out
    }

    /// Integer lanes of one Q4_K / Q5_K super-block for 4 inputs (as `kquant::avx2::q45_lanes`
    /// for each): the nibbles, fifth bits and scale broadcasts are built once.
    ///
    /// # Safety
    /// `qs` must point to 128 readable bytes and `qh`, when given, to 32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q45_lanes4(
        qs: *const u8,
        qh: Option<*const u8>,
        scales: __m256i,
        y: [&BlockQ8K; 4],
    ) -> [__m256i; 4] {
        let scales = _mm256_permute2x128_si256::<0x00>(scales, scales);
        let mut sumi = [_mm256_setzero_si256(); 4];
        // SAFETY: the caller guarantees the weight reads; each y.qs holds 256 bytes.
        unsafe {
            let hbits = qh.map(|h| _mm256_loadu_si256(h.cast()));
            for c in 0..4 {
                let (lo, hi) = q45_chunk(qs, hbits, c);
                let (s0, s1) = (
                    broadcast_i16(scales, 2 * c as i32),
                    broadcast_i16(scales, 2 * c as i32 + 1),
                );
                for (sumi, yb) in sumi.iter_mut().zip(y) {
                    let y0 = _mm256_loadu_si256(yb.qs.as_ptr().add(64 * c).cast());
                    let y1 = _mm256_loadu_si256(yb.qs.as_ptr().add(64 * c + 32).cast());
                    let p0 = _mm256_madd_epi16(s0, _mm256_maddubs_epi16(lo, y0));
                    let p1 = _mm256_madd_epi16(s1, _mm256_maddubs_epi16(hi, y1));
                    *sumi = _mm256_add_epi32(*sumi, _mm256_add_epi32(p0, p1));
                }
            }
        }
        sumi
    }

    /// Q4_K row · 4 Q8_K inputs; lane `j` equals `kquant::avx2::dot_q4_k(row, y[j])` bit for bit.
    // Block i of the row and of the four inputs move together: an index reads plainest.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn dot4_q4_k(row: &[u8], y: [&[BlockQ8K]; 4]) -> [f32; 4] {
        let nb = blocks(row, Q4_K_BYTES, &y);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut acc_m = [_mm_setzero_ps(); 4];
        for i in 0..nb {
            let yb = [&y[0][i], &y[1][i], &y[2][i], &y[3][i]];
            // SAFETY: i < nb: block i (d, dmin at 0, scales at 4, qs at 16..144) is in bounds.
            let ((dx, dmin), sm, sumi) = unsafe {
                let p = row.as_ptr().add(i * Q4_K_BYTES);
                let sm = scales_and_mins(p.add(4));
                (f16x2_at(p), sm, q45_lanes4(p.add(16), None, sm, yb))
            };
            for j in 0..4 {
                let prod = min_products(sm, yb[j]);
                acc_m[j] = _mm_fmadd_ps(_mm_set1_ps(-yb[j].d * dmin), _mm_cvtepi32_ps(prod), acc_m[j]);
                acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(yb[j].d * dx), _mm256_cvtepi32_ps(sumi[j]), acc[j]);
            }
        }
        let mut out = [0f32; 4];
        for (o, (acc, m)) in out.iter_mut().zip(acc.into_iter().zip(acc_m)) {
            let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_add_ss(m, _mm_movehdup_ps(m));
            *o = hsum_ps(acc) + _mm_cvtss_f32(m);
        }
        out
    }

    /// Q5_K row · 4 Q8_K inputs; lane `j` equals `kquant::avx2::dot_q5_k(row, y[j])` bit for bit.
    // Block i of the row and of the four inputs move together: an index reads plainest.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn dot4_q5_k(row: &[u8], y: [&[BlockQ8K]; 4]) -> [f32; 4] {
        let nb = blocks(row, Q5_K_BYTES, &y);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut summs = [0f32; 4];
        for i in 0..nb {
            let yb = [&y[0][i], &y[1][i], &y[2][i], &y[3][i]];
            // SAFETY: i < nb: block i (d, dmin, scales at 4, qh at 16, qs at 48..176) is in bounds.
            let ((dx, dmin), sm, sumi) = unsafe {
                let p = row.as_ptr().add(i * Q5_K_BYTES);
                let sm = scales_and_mins(p.add(4));
                (f16x2_at(p), sm, q45_lanes4(p.add(48), Some(p.add(16)), sm, yb))
            };
            for j in 0..4 {
                let prod = min_products(sm, yb[j]);
                let two = _mm_add_epi32(prod, _mm_unpackhi_epi64(prod, prod));
                let one = _mm_add_epi32(two, _mm_shuffle_epi32::<0b01>(two));
                summs[j] += -yb[j].d * dmin * _mm_cvtsi128_si32(one) as f32;
                acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(yb[j].d * dx), _mm256_cvtepi32_ps(sumi[j]), acc[j]);
            }
        }
        let mut out = [0f32; 4];
        for (o, (acc, summs)) in out.iter_mut().zip(acc.into_iter().zip(summs)) {
            *o = hsum_ps(acc) + summs;
        }
        out
    }

    /// Q6_K row · 4 Q8_K inputs; lane `j` equals `kquant::avx2::dot_q6_k(row, y[j])` bit for bit.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn dot4_q6_k(row: &[u8], y: [&[BlockQ8K]; 4]) -> [f32; 4] {
        let nb = blocks(row, Q6_K_BYTES, &y);
        let off = _mm256_set1_epi8(32);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (i, b) in row.chunks_exact(Q6_K_BYTES).take(nb).enumerate() {
            let yb = [&y[0][i], &y[1][i], &y[2][i], &y[3][i]];
            let scale = half::f16::from_bits(u16::from_le_bytes([b[208], b[209]])).to_f32();
            let mut sumi = [_mm256_setzero_si256(); 4];
            // SAFETY: `b` is one whole 210-byte block: ql at 0, qh at 128, scales at 192; each
            // y.qs holds 256 bytes; unaligned loads.
            unsafe {
                let p = b.as_ptr();
                for n in 0..2 {
                    for (k, q) in q6_quants(p, n).into_iter().enumerate() {
                        let g = 192 + 8 * n + 2 * k;
                        let pair = _mm256_set_m128i(
                            _mm_set1_epi16(b[g + 1] as i8 as i16),
                            _mm_set1_epi16(b[g] as i8 as i16),
                        );
                        for (sumi, yb) in sumi.iter_mut().zip(yb) {
                            let yv = _mm256_loadu_si256(yb.qs.as_ptr().add(128 * n + 32 * k).cast());
                            // (q − 32)·y per byte pair, exact in i16 (|·| ≤ 32 · 128 · 2).
                            let p16 =
                                _mm256_sub_epi16(_mm256_maddubs_epi16(q, yv), _mm256_maddubs_epi16(off, yv));
                            *sumi = _mm256_add_epi32(*sumi, _mm256_madd_epi16(pair, p16));
                        }
                    }
                }
            }
            for j in 0..4 {
                acc[j] = _mm256_fmadd_ps(
                    _mm256_set1_ps(yb[j].d * scale),
                    _mm256_cvtepi32_ps(sumi[j]),
                    acc[j],
                );
            }
        }
        acc.map(|a| hsum_ps(a))
    }

    /// Four weight rows with a Q8_0 activation side (Q4_0, Q5_0, Q8_0) against **one** input
    /// (decode): lane `r` equals the one-input kernel of `rows[r]` bit for bit (same per-block
    /// float steps, same order). The input block and its scale are loaded once for four rows,
    /// and the four accumulators are four independent dependency chains, where the one-row
    /// loop waits on its single `fma` chain every block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn rows4_q8_0_family(
        rows: [&[u8]; 4],
        block_bytes: usize,
        y: &[BlockQ8_0],
        unpack: impl Fn(*const u8) -> __m256i,
    ) -> [f32; 4] {
        let nb = rows.iter().fold(y.len(), |nb, r| nb.min(r.len() / block_bytes));
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (i, yb) in y.iter().take(nb).enumerate() {
            // SAFETY: a Q8_0 block is 34 bytes starting with its f16 scale; unaligned load.
            let (dy, by) = unsafe {
                (
                    f16_splat((yb as *const BlockQ8_0).cast()),
                    _mm256_loadu_si256(yb.qs.as_ptr().cast()),
                )
            };
            for (acc, row) in acc.iter_mut().zip(&rows) {
                // SAFETY: i < nb <= row.len() / block_bytes, so the block is in bounds; it
                // starts with its f16 scale.
                let (dx, bx) = unsafe {
                    let p = row.as_ptr().add(i * block_bytes);
                    // The same block four rows on (the next call's rows): a hint, never read.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(4 * row.len()).cast());
                    (f16_splat(p), unpack(p))
                };
                let dot = _mm256_maddubs_epi16(_mm256_sign_epi8(bx, bx), _mm256_sign_epi8(by, bx));
                let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, dot));
                *acc = _mm256_fmadd_ps(_mm256_mul_ps(dx, dy), q, *acc);
            }
        }
        acc.map(|a| hsum_ps(a))
    }

    /// Four Q4_0 rows · one Q8_0 input; lane `r` equals `dot_q4_0(rows[r], y)` bit for bit.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn rows4_q4_0(rows: [&[u8]; 4], y: &[BlockQ8_0]) -> [f32; 4] {
        let eight = _mm256_set1_epi8(8);
        // SAFETY (closure): the block is 18 bytes, its nibbles at 2..18.
        rows4_q8_0_family(rows, 18, y, |p| {
            _mm256_sub_epi8(unsafe { nibbles(p.add(2)) }, eight)
        })
    }

    /// Four Q8_0 rows · one Q8_0 input; lane `r` equals `dot_q8_0(rows[r], y)` bit for bit.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn rows4_q8_0(rows: [&[u8]; 4], y: &[BlockQ8_0]) -> [f32; 4] {
        // SAFETY (closure): the block is 34 bytes, its quants at 2..34; unaligned load.
        rows4_q8_0_family(rows, 34, y, |p| unsafe { _mm256_loadu_si256(p.add(2).cast()) })
    }

    /// Four Q5_0 rows · one Q8_0 input; lane `r` equals `dot_q5_0(rows[r], y)` bit for bit.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn rows4_q5_0(rows: [&[u8]; 4], y: &[BlockQ8_0]) -> [f32; 4] {
        let sixteen = _mm256_set1_epi8(16);
        // SAFETY (closure): the block is 22 bytes, qh at 2..6 and qs at 6..22.
        rows4_q8_0_family(rows, 22, y, |p| {
            _mm256_sub_epi8(unsafe { q5_bytes(p.add(2)) }, sixteen)
        })
    }

    /// The body of [`dot2x4_q8_0`] and [`dot2x4_q8_0_vnni`], which differ only in what a
    /// row block's quants `bx` become once for the four inputs (`$prep`, giving `a`) and how a
    /// pair then gets its eight lane sums of four products (`$lanes`, from `a`, the input's
    /// quants `by`, `bx`, the input `j` and the block `i`).
    macro_rules! dot2x4_q8_0_body {
        (
            $rows:ident, $y:ident, $yd:ident,
            |$bx:ident| $prep:expr,
            |$a:ident, $by:ident, $bxr:ident, $j:ident, $i:ident| $lanes:expr
        ) => {{
            let nb = $yd.iter().fold(
                $rows
                    .iter()
                    .fold(blocks($rows[0], 34, &$y), |nb, r| nb.min(r.len() / 34)),
                |nb, d| nb.min(d.len()),
            );
            let mut acc = [[_mm256_setzero_ps(); 4]; 2];
            for $i in 0..nb {
                // SAFETY: i < nb <= r.len() / 34 for both rows: block i (f16 scale, 32 quants)
                // is in bounds; unaligned loads.
                let (dx, bx) = unsafe {
                    let p = [$rows[0].as_ptr().add($i * 34), $rows[1].as_ptr().add($i * 34)];
                    (
                        [f16_splat(p[0]), f16_splat(p[1])],
                        [
                            _mm256_loadu_si256(p[0].add(2).cast()),
                            _mm256_loadu_si256(p[1].add(2).cast()),
                        ],
                    )
                };
                let a = bx.map(|$bx| $prep);
                for $j in 0..4 {
                    let dy = _mm256_set1_ps($yd[$j][$i]);
                    // SAFETY: 32 quant bytes; unaligned load.
                    let $by = unsafe { _mm256_loadu_si256($y[$j][$i].qs.as_ptr().cast()) };
                    for r in 0..2 {
                        let ($a, $bxr) = (a[r], bx[r]);
                        let q = _mm256_cvtepi32_ps($lanes);
                        acc[r][$j] = _mm256_fmadd_ps(_mm256_mul_ps(dx[r], dy), q, acc[r][$j]);
                    }
                }
            }
            acc.map(|a| a.map(|a| hsum_ps(a)))
        }};
    }

    /// Two Q8_0-layout weight rows × four Q8_0 inputs (a 2×4 register tile of prompt-sized
    /// products): `out[r][j]` equals `dot_q8_0(rows[r], y[j])` bit for bit, the per-block
    /// float steps of every pair in the one-input kernel's order. Each weight block and each
    /// input block is loaded once for the tile, so a pair costs the six integer and float steps
    /// of its own and little else. Q4_0 and Q5_0 rows meet it after [`unpack_as_q8_0`], whose
    /// blocks hold the same values and scales (and the same sign-trick lanes).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn dot2x4_q8_0(
        rows: [&[u8]; 2],
        y: [&[BlockQ8_0]; 4],
        yd: [&[f32]; 4],
    ) -> [[f32; 4]; 2] {
        let ones = _mm256_set1_epi16(1);
        // |x| against y with x's signs: `maddubs` multiplies unsigned by signed bytes.
        dot2x4_q8_0_body!(
            rows,
            y,
            yd,
            |bx| _mm256_sign_epi8(bx, bx),
            |ax, by, bx, _j, _i| {
                _mm256_madd_epi16(ones, _mm256_maddubs_epi16(ax, _mm256_sign_epi8(by, bx)))
            }
        )
    }

    /// [`dot2x4_q8_0`] on CPUs with AVX-VNNI: each row block's quants are offset once to
    /// unsigned bytes `x + 128`, and each pair's eight lane sums come from one `vpdpbusd` of
    /// them with the input's quants, started from `offsets[j][i]`, the lane sums of
    /// `−128 · y` ([`q8_0_offsets`]): `Σ (x + 128)·y − 128·Σ y = Σ x·y`, the same integers as
    /// the `maddubs` + `madd` of [`dot2x4_q8_0`] (whose pairs cannot saturate: |x| ≤ 128 and
    /// the inputs' quants lie in −127..=127, so a pair is at most 32,512), hence the same bits,
    /// with one instruction per pair where that takes a sign, a `maddubs` and a `madd`.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub(in crate::runtime) fn dot2x4_q8_0_vnni(
        rows: [&[u8]; 2],
        y: [&[BlockQ8_0]; 4],
        yd: [&[f32]; 4],
        offsets: [&[[i32; 8]]; 4],
    ) -> [[f32; 4]; 2] {
        let nb = offsets.iter().fold(usize::MAX, |nb, o| nb.min(o.len()));
        let yd = yd.map(|d| &d[..d.len().min(nb)]);
        let flip = _mm256_set1_epi8(i8::MIN);
        dot2x4_q8_0_body!(
            rows,
            y,
            yd,
            |bx| _mm256_xor_si256(bx, flip),
            |ux, by, _bx, j, i| {
                // SAFETY: i < nb <= offsets[j].len(): 8 i32, unaligned load.
                let start = unsafe { _mm256_loadu_si256(offsets[j][i].as_ptr().cast()) };
                _mm256_dpbusd_avx_epi32(start, ux, by)
            }
        )
    }

    /// The starting lane sums of [`dot2x4_q8_0_vnni`] for the blocks of `y`: per block, lane
    /// `l` holds `−128 · (y[4l] + … + y[4l+3])`; appended to `out`.
    pub(in crate::runtime) fn q8_0_offsets(y: &[BlockQ8_0], out: &mut Vec<[i32; 8]>) {
        out.extend(y.iter().map(super::super::quant_x16::q8_0_offsets));
    }

    /// Rewrites a Q4_0 (`block_bytes` 18) or Q5_0 (22) row as Q8_0 blocks (34 bytes each:
    /// the same f16 scale, then the 32 signed quants `q − 8` / `q − 16`) into `out`, which
    /// must hold `row.len() / block_bytes * 34` bytes; other sizes leave `out` untouched.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn unpack_as_q8_0(row: &[u8], block_bytes: usize, out: &mut [u8]) {
        let nb = row.len() / block_bytes;
        if out.len() < nb * 34 || !matches!(block_bytes, 18 | 22) {
            return;
        }
        for i in 0..nb {
            // SAFETY: block i of `row` (block_bytes bytes) and of `out` (34 bytes) are in
            // bounds (checked above); unaligned load and store.
            unsafe {
                let p = row.as_ptr().add(i * block_bytes);
                let q = if block_bytes == 18 {
                    _mm256_sub_epi8(nibbles(p.add(2)), _mm256_set1_epi8(8))
                } else {
                    _mm256_sub_epi8(q5_bytes(p.add(2)), _mm256_set1_epi8(16))
                };
                let o = out.as_mut_ptr().add(i * 34);
                o.copy_from_nonoverlapping(p, 2);
                _mm256_storeu_si256(o.add(2).cast(), q);
            }
        }
    }
}
