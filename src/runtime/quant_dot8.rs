//! The eight-input Q4_1 kernel of the batched quantized product ([`super::quant::QMatrix::matmul`]
//! with ≥ 8 inputs): a server's decode step over eight or more rows, prompts below the tiles.
//!
//! [`super::quant_dot4`]'s four-input kernel spends most of its instructions on shuffles: each
//! input's 32 products of a block end up in 8 lanes that `hadd`s must gather into one sum.
//! Here the lanes are the inputs. The eight inputs' quants are interleaved once per product,
//! four values of each input side by side (`[nb][8 quads][8 inputs][4]`,
//! [`interleave8`]), and each weight row is unpacked once to one byte per value
//! ([`avx2::unpack_q4_1`]). Then per block and quad: one broadcast load of the quad's four
//! weights, one `maddubs` against the eight inputs' quads, one 16-bit add; after the eight
//! quads one `madd` gives the eight inputs' exact block sums in eight lanes, with no horizontal
//! reduction at all, and the f32 tail runs eight lanes wide on scales converted once per
//! product ([`q8_1_headers8`]).
//!
//! No 16-bit sum can overflow: a `maddubs` lane is two products of a nibble (0..=15) and a
//! quant (−128..=127), |·| ≤ 3840, and eight quads add to |·| ≤ 30 720 < 2¹⁵.
//!
//! Every output lane is **bit-identical** to [`super::quant`]'s one-input `dot_q4_1` (candle's
//! order): the integer block sum is exact whatever the order of its additions, and each lane's
//! float steps are `sumf += sumi·dx·dy + mx·sy`, block after block, without FMA.

/// Fewest inputs of a last, partial group that still take the eight-input kernel (its lanes
/// past the inputs hold zeros and are not read): five inputs through it cost what eight do,
/// less than a four-input group and one to three inputs one at a time.
pub(super) const PARTIAL_GROUP_MIN: usize = 5;

/// Groups of eight lanes for `inputs` inputs: the whole groups, and a last partial one of at
/// least [`PARTIAL_GROUP_MIN`] inputs.
pub(super) const fn groups(inputs: usize) -> usize {
    inputs / 8 + (inputs % 8 >= PARTIAL_GROUP_MIN) as usize
}

/// The quants of the [`groups`] of eight inputs of `q` (`inputs` rows of `nb` blocks),
/// interleaved for [`avx2::dot8_q4_1`]: `[groups][nb][8 quads][8 inputs][4]` (256 bytes per
/// block and group; zeros for the lanes of a partial group past its inputs), appended to
/// `out`.
pub(super) fn interleave8(q: &[super::quant::BlockQ8_1], inputs: usize, out: &mut Vec<i8>) {
    let Some(nb) = q.len().checked_div(inputs) else {
        return;
    };
    out.reserve(groups(inputs) * nb * 256);
    for g in 0..groups(inputs) {
        for i in 0..nb {
            for quad in 0..8 {
                for j in 0..8 {
                    match q.get((g * 8 + j) * nb + i).filter(|_| g * 8 + j < inputs) {
                        Some(b) => out.extend_from_slice(&b.qs[quad * 4..quad * 4 + 4]),
                        None => out.extend_from_slice(&[0; 4]),
                    }
                }
            }
        }
    }
}

/// Per block, the eight inputs' Q8_1 scales `d` then their sums `s`, as f32 (exact
/// conversions of the f16 headers): `[groups][nb][16]` for the [`groups`] of eight inputs of
/// `q` (`inputs` rows of `nb` blocks each; zeros past the inputs), appended to `out`.
pub(super) fn q8_1_headers8(q: &[super::quant::BlockQ8_1], inputs: usize, out: &mut Vec<f32>) {
    let Some(nb) = q.len().checked_div(inputs) else {
        return;
    };
    for g in 0..groups(inputs) {
        for i in 0..nb {
            let block = |j: usize| q.get((g * 8 + j) * nb + i).filter(|_| g * 8 + j < inputs);
            out.extend((0..8).map(|j| block(j).map_or(0.0, |b| b.d.to_f32())));
            out.extend((0..8).map(|j| block(j).map_or(0.0, |b| b.s.to_f32())));
        }
    }
}

/// AVX2 + FMA + F16C form; without those features the batched product takes the four-input
/// and one-input paths.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
pub(super) mod avx2 {
    use super::super::quant::avx2::nibbles;
    use std::arch::x86_64::*;

    /// Row `row`'s nibbles as one byte per value, in value order (`[nb][32]`, 0..=15), into
    /// `out` (`row.len() / 20 · 32` bytes; blocks past the shorter of the two are left out).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn unpack_q4_1(row: &[u8], out: &mut [u8]) {
        let nb = (row.len() / 20).min(out.len() / 32);
        for i in 0..nb {
            // SAFETY: block i's 16 nibble bytes sit at 20·i + 4 < row.len(); `out` holds
            // 32·nb bytes. Unaligned load and store.
            unsafe {
                let v = nibbles(row.as_ptr().add(i * 20 + 4));
                _mm256_storeu_si256(out.as_mut_ptr().add(i * 32).cast(), v);
            }
        }
    }

    /// The body of [`dot8_q4_1`] and [`dot8_q4_1_vnni`], which differ only in how one
    /// block's eight quads become the eight inputs' exact integer sums (`$sum`, given the
    /// block's unpacked weights `w` and interleaved quants `y`).
    macro_rules! dot8_q4_1_body {
        ($row:ident, $wq:ident, $yq:ident, $hdr:ident, |$w:ident, $y:ident| $sum:expr) => {{
            let nb = ($row.len() / 20)
                .min($wq.len() / 32)
                .min($yq.len() / 256)
                .min($hdr.len() / 16);
            let mut acc = _mm256_setzero_ps();
            for i in 0..nb {
                // SAFETY: i < nb: block i's 20 raw bytes, 32 unpacked values, 256 interleaved
                // quants and 16 scales are in bounds. Loads are unaligned.
                let (sumi, dm, dy, sy) = unsafe {
                    let $w = $wq.as_ptr().add(i * 32);
                    let $y = $yq.as_ptr().add(i * 256);
                    let sumi = $sum;
                    // The block's f16 (d, m) pair in every 32-bit lane: [d m d m …] as f32.
                    let p = $row.as_ptr().add(i * 20);
                    let dm = _mm256_cvtph_ps(_mm_set1_epi32(p.cast::<i32>().read_unaligned()));
                    let h = $hdr.as_ptr().add(i * 16);
                    (sumi, dm, _mm256_loadu_ps(h), _mm256_loadu_ps(h.add(8)))
                };
                let dx = _mm256_shuffle_ps::<0x00>(dm, dm);
                let mx = _mm256_shuffle_ps::<0x55>(dm, dm);
                let t = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sumi), dx), dy);
                acc = _mm256_add_ps(acc, _mm256_add_ps(t, _mm256_mul_ps(mx, sy)));
            }
            let mut out = [0f32; 8];
            // SAFETY: `out` holds 8 f32; the store is unaligned.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), acc) };
            out
        }};
    }

    /// Quad `k` (values 4k..4k+4) of a block's unpacked weights `w`, in every 32-bit lane.
    ///
    /// # Safety
    /// `w` must point at 32 readable bytes.
    #[inline(always)]
    unsafe fn weight_quad(w: *const u8, k: usize) -> __m256i {
        // SAFETY: k < 8, inside the block's 32 bytes (the caller's promise); unaligned read.
        // The module is compiled only with AVX2 enabled.
        unsafe { _mm256_set1_epi32(w.add(4 * k).cast::<i32>().read_unaligned()) }
    }

    /// Q4_1 row · 8 Q8_1 inputs; lane `j` equals `dot_q4_1(row, y_j)` bit for bit. `row` is the
    /// raw row (its `d`, `m` headers are read), `wq` its values from [`unpack_q4_1`], `yq` the
    /// inputs' quants from [`super::interleave8`] (`[nb][256]`) and `hdr` their scales from
    /// [`super::q8_1_headers8`] (`[nb][16]`). Blocks past the shortest of these are left out.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn dot8_q4_1(row: &[u8], wq: &[u8], yq: &[i8], hdr: &[f32]) -> [f32; 8] {
        let ones = _mm256_set1_epi16(1);
        dot8_q4_1_body!(row, wq, yq, hdr, |w, y| {
            let quad = |k: usize| {
                // Nibbles are unsigned (0..=15): maddubs applies directly, no saturation.
                _mm256_maddubs_epi16(weight_quad(w, k), _mm256_loadu_si256(y.add(32 * k).cast()))
            };
            let s = _mm256_add_epi16(
                _mm256_add_epi16(
                    _mm256_add_epi16(quad(0), quad(1)),
                    _mm256_add_epi16(quad(2), quad(3)),
                ),
                _mm256_add_epi16(
                    _mm256_add_epi16(quad(4), quad(5)),
                    _mm256_add_epi16(quad(6), quad(7)),
                ),
            );
            _mm256_madd_epi16(s, ones)
        })
    }

    /// [`dot8_q4_1`] on CPUs with AVX-VNNI: each quad's four products per input go straight
    /// into 32-bit lanes (`vpdpbusd`), one instruction where [`dot8_q4_1`] needs a `maddubs`,
    /// a 16-bit add and, per block, a `madd`. The integer block sums are exact either way, so
    /// the outputs are the same bits.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub(in crate::runtime) fn dot8_q4_1_vnni(row: &[u8], wq: &[u8], yq: &[i8], hdr: &[f32]) -> [f32; 8] {
        dot8_q4_1_body!(row, wq, yq, hdr, |w, y| {
            let quad = |acc: __m256i, k: usize| {
                _mm256_dpbusd_avx_epi32(acc, weight_quad(w, k), _mm256_loadu_si256(y.add(32 * k).cast()))
            };
            let zero = _mm256_setzero_si256();
            // Two chains, so each `vpdpbusd` waits on one of its own four quads earlier.
            let even = quad(quad(quad(quad(zero, 0), 2), 4), 6);
            let odd = quad(quad(quad(quad(zero, 1), 3), 5), 7);
            _mm256_add_epi32(even, odd)
        })
    }
}
