//! Q4_1 weights in groups of sixteen rows, rearranged once at load so that one 512-bit
//! register holds the same four values of sixteen rows, and the products of such a group with
//! one to eight Q8_1 inputs, for CPUs with AVX-512 VNNI (detected at run time, as
//! [`super::quant::avx512_vnni`]).
//!
//! Why: the kernels of [`super::quant_dot8_512`] put the *inputs* in the lanes, so every
//! `vpdpbusd` needs its weight quad broadcast and masked first (two extra operations per 64
//! multiply-adds), each block's sums are gathered across lanes by permutations, and the f32
//! tail runs per row. Here the *rows* are in the lanes: a step's 64 bytes of weights are
//! loaded once, split into two registers of nibbles (quads `k` and `k + 4` of sixteen rows) and
//! meet every input's quad by a broadcast folded into `vpdpbusd`; the f32 tail runs on sixteen
//! rows at once and the sixteen outputs of an input are one store.
//!
//! **Same bits** as [`super::quant`]'s one-input `dot_q4_1`: per lane (a row) and input the
//! block's integer sum is exact whatever the order of its additions, and the float steps are
//! `sumf += sumi·dx·dy + mx·sy`, block after block, no FMA, as there. A batch of one row and a
//! batch of eight give every row the same logits, which the server's batching promises.
//!
//! The layout of a group of sixteen rows `[nb][320]`: per block, the sixteen rows' f16 scales
//! `d` (32 bytes), their f16 minimums `m` (32 bytes), then four steps of 64 bytes: at step `k`
//! row `r`'s raw bytes `4k..4k+4` (low nibbles: values `4k..4k+4`; high nibbles: values
//! `16+4k..16+4k+4`). The bytes are those of the GGUF rows, reordered: the same size. A
//! [`super::quant::QMatrix`] that uses this layout holds its whole groups only so (no second
//! copy); what reads GGUF rows (dequantizing, the tiled prompt product, the scalar
//! reference) gets them rebuilt by [`gguf_row`].
//!
//! Measured on the demo model (2-core Xeon with AVX-512 VNNI, `ACT_BENCH_ONLY=steps cargo
//! bench --bench runtime`, same session): a one-row decode step 4.5 → 3.0 ms, an eight-row
//! step 14.7 → 11.1 ms.

use super::quant::BlockQ8_1;

/// Weight rows per group.
pub(super) const ROWS: usize = 16;
/// Bytes of one block of a group: 16 scales, 16 minimums (f16), 4 steps × 16 rows × 4 bytes.
pub(super) const BLOCK_BYTES: usize = 64 + 4 * 64;
/// Bytes of a Q4_1 block in a GGUF row.
const Q4_1_BYTES: usize = 20;

/// The whole groups of sixteen of `rows` raw Q4_1 rows of `nb` blocks each (`bytes`,
/// `rows · nb · 20` long), rearranged as the module describes: `[rows / 16][nb][320]`. Rows
/// past the last whole group are left out (their products take the other kernels). Empty
/// if `bytes` is shorter than `rows` rows.
pub(super) fn interleave16_q4_1(bytes: &[u8], rows: usize, nb: usize) -> Vec<u8> {
    let row_bytes = nb * Q4_1_BYTES;
    let groups = rows / ROWS;
    if row_bytes == 0 || bytes.len() < groups * ROWS * row_bytes {
        return Vec::new();
    }
    let mut out = vec![0u8; groups * nb * BLOCK_BYTES];
    for (g, dst_group) in out.chunks_exact_mut(nb * BLOCK_BYTES).enumerate() {
        let src_rows = &bytes[g * ROWS * row_bytes..(g + 1) * ROWS * row_bytes];
        for (b, dst) in dst_group.chunks_exact_mut(BLOCK_BYTES).enumerate() {
            for (r, row) in src_rows.chunks_exact(row_bytes).enumerate() {
                let src = &row[b * Q4_1_BYTES..(b + 1) * Q4_1_BYTES];
                dst[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
                dst[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&src[2..4]);
                for k in 0..4 {
                    let at = 64 + 64 * k + 4 * r;
                    dst[at..at + 4].copy_from_slice(&src[4 + 4 * k..8 + 4 * k]);
                }
            }
        }
    }
    out
}

/// Row `r` of a group `group` (`[nb][320]`, [`interleave16_q4_1`]) in its GGUF layout
/// (`nb` blocks of 20 bytes), written to `out` (`nb · 20` bytes; fewer blocks where either is
/// shorter): the inverse of the interleaving, for the paths that read GGUF rows.
pub(super) fn gguf_row(group: &[u8], r: usize, out: &mut [u8]) {
    let r = r % ROWS;
    for (src, dst) in group
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(Q4_1_BYTES))
    {
        dst[0..2].copy_from_slice(&src[2 * r..2 * r + 2]);
        dst[2..4].copy_from_slice(&src[32 + 2 * r..32 + 2 * r + 2]);
        for k in 0..4 {
            let at = 64 + 64 * k + 4 * r;
            dst[4 + 4 * k..8 + 4 * k].copy_from_slice(&src[at..at + 4]);
        }
    }
}

/// The f32 scale and sum of every Q8_1 block of `q`, `[blocks][2]` (`d`, `s`), appended to
/// `out`: what [`avx512::dot16_q4_1`] broadcasts per input and block.
pub(super) fn q8_1_scales(q: &[BlockQ8_1], out: &mut Vec<f32>) {
    out.reserve(2 * q.len());
    for b in q {
        out.push(b.d.to_f32());
        out.push(b.s.to_f32());
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
pub(super) mod avx512 {
    use super::{BLOCK_BYTES, BlockQ8_1};
    use std::arch::x86_64::*;

    /// Blocks ahead of the current one whose bytes the kernel prefetches (about 2 KiB).
    const PREFETCH_BLOCKS: usize = 6;

    /// Group `w` (`[nb][320]`, [`super::interleave16_q4_1`]) against `N` (1 to 8) Q8_1 inputs
    /// `ys[j]` (`nb` blocks each) with their scales `ds[j]` (`[nb][2]`, [`super::q8_1_scales`]):
    /// `out[j][r]` is row `r`'s dot with input `j`, bit-identical to `dot_q4_1` on the row's
    /// GGUF bytes. Blocks past the shortest argument are left out.
    ///
    /// The integer sums of an input run in one chain of eight `vpdpbusd` per block, or in two
    /// chains (low and high nibbles) when there are at most four inputs, so that the adder's
    /// latency is hidden by other inputs' chains either way.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni")]
    pub(in crate::runtime) fn dot16_q4_1<const N: usize>(
        w: &[u8],
        ys: &[&[BlockQ8_1]; N],
        ds: &[&[f32]; N],
    ) -> [[f32; 16]; N] {
        let mut nb = w.len() / BLOCK_BYTES;
        for j in 0..N {
            nb = nb.min(ys[j].len()).min(ds[j].len() / 2);
        }
        let low = _mm512_set1_epi8(0x0F);
        let mut f = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            // SAFETY: b < nb: the block's 320 weight bytes, block b of every input and its
            // two scales are in bounds; loads are unaligned.
            unsafe {
                let blk = w.as_ptr().add(b * BLOCK_BYTES);
                // A decode step streams every weight once from memory: ask for the bytes
                // PREFETCH_BLOCKS blocks ahead (past the group's end, the next group's; a
                // prefetch never faults).
                let ahead = blk.wrapping_add(PREFETCH_BLOCKS * BLOCK_BYTES);
                for line in 0..BLOCK_BYTES / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line).cast());
                }
                let dx = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
                let mx = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32).cast()));
                let mut a = [_mm512_setzero_si512(); N];
                let mut a2 = [_mm512_setzero_si512(); N];
                for k in 0..4 {
                    let raw = _mm512_loadu_si512(blk.add(64 + 64 * k).cast());
                    let lo = _mm512_and_si512(raw, low);
                    // A 32-bit shift moves each byte's high nibble down; the bits that enter
                    // from the next byte are masked off.
                    let hi = _mm512_and_si512(_mm512_srli_epi32::<4>(raw), low);
                    for j in 0..N {
                        let q = ys[j].as_ptr().add(b);
                        let q = std::ptr::addr_of!((*q).qs).cast::<u8>();
                        let ylo = _mm512_set1_epi32(q.add(4 * k).cast::<i32>().read_unaligned());
                        let yhi = _mm512_set1_epi32(q.add(16 + 4 * k).cast::<i32>().read_unaligned());
                        if N <= 4 {
                            a[j] = _mm512_dpbusd_epi32(a[j], lo, ylo);
                            a2[j] = _mm512_dpbusd_epi32(a2[j], hi, yhi);
                        } else {
                            a[j] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(a[j], lo, ylo), hi, yhi);
                        }
                    }
                }
                for j in 0..N {
                    let sumi = if N <= 4 {
                        _mm512_add_epi32(a[j], a2[j])
                    } else {
                        a[j]
                    };
                    let s = ds[j].as_ptr().add(2 * b);
                    let (dy, sy) = (_mm512_set1_ps(s.read()), _mm512_set1_ps(s.add(1).read()));
                    let t = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sumi), dx), dy);
                    f[j] = _mm512_add_ps(f[j], _mm512_add_ps(t, _mm512_mul_ps(mx, sy)));
                }
            }
        }
        let mut out = [[0f32; 16]; N];
        for (o, v) in out.iter_mut().zip(f) {
            // SAFETY: `o` holds 16 f32; the store is unaligned.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaving_moves_every_byte_once_and_leaves_partial_groups_out() {
        let nb = 3;
        let rows = 35; // two whole groups and three rows left over
        let bytes: Vec<u8> = (0..rows * nb * 20).map(|i| (i * 7 % 251) as u8).collect();
        let x = interleave16_q4_1(&bytes, rows, nb);
        assert_eq!(x.len(), 2 * nb * BLOCK_BYTES);
        let at = |g: usize, b: usize| &x[(g * nb + b) * BLOCK_BYTES..(g * nb + b + 1) * BLOCK_BYTES];
        for r in 0..32 {
            let (g, rr) = (r / 16, r % 16);
            for b in 0..nb {
                let src = &bytes[r * nb * 20 + b * 20..r * nb * 20 + b * 20 + 20];
                let blk = at(g, b);
                assert_eq!(&blk[2 * rr..2 * rr + 2], &src[0..2]);
                assert_eq!(&blk[32 + 2 * rr..34 + 2 * rr], &src[2..4]);
                for k in 0..4 {
                    let p = 64 + 64 * k + 4 * rr;
                    assert_eq!(
                        &blk[p..p + 4],
                        &src[4 + 4 * k..8 + 4 * k],
                        "row {r} block {b} step {k}"
                    );
                }
            }
        }
        assert!(interleave16_q4_1(&bytes[..100], rows, nb).is_empty());
        // And back: every whole-group row comes out as it went in.
        let mut row = vec![0u8; nb * 20];
        for r in 0..32 {
            let g = r / 16;
            gguf_row(&x[g * nb * BLOCK_BYTES..(g + 1) * nb * BLOCK_BYTES], r, &mut row);
            assert_eq!(&row[..], &bytes[r * nb * 20..(r + 1) * nb * 20], "row {r}");
        }
    }
}
