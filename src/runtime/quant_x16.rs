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
//! reference) gets them rebuilt by [`Layout::gguf_row`].
//!
//! Measured on the demo model (2-core Xeon with AVX-512 VNNI, `ACT_BENCH_ONLY=steps cargo
//! bench --bench runtime`, same session): a one-row decode step 4.5 → 3.0 ms, an eight-row
//! step 14.7 → 11.1 ms.

use super::quant::{BlockQ8_0, BlockQ8_1};

/// Weight rows per group.
pub(super) const ROWS: usize = 16;

/// How one format's GGUF blocks are laid out in a sixteen-row group: a GGUF block is
/// `fields` f16 values (`d`, and `m` for Q4_1) then `quads` 4-byte words of quants; a group's
/// block is each field of the sixteen rows (32 bytes per field), then per word `k` the
/// sixteen rows' word `k` (64 bytes), each quant byte XORed with `flip`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Layout {
    fields: usize,
    quads: usize,
    flip: u8,
}

/// Q4_1: `d`, `m`, then 16 bytes of nibbles (4 words; word `k` holds values `4k..4k+4` in its
/// low nibbles and `16+4k..16+4k+4` in its high ones). 320 bytes per group block.
pub(super) const Q4_1: Layout = Layout {
    fields: 2,
    quads: 4,
    flip: 0,
};

/// Q8_0: `d`, then 32 signed quants (8 words), stored as unsigned `q + 128` (XOR 0x80) for
/// `vpdpbusd`'s unsigned operand. 544 bytes per group block.
pub(super) const Q8_0: Layout = Layout {
    fields: 1,
    quads: 8,
    flip: 0x80,
};

impl Layout {
    /// Bytes of one block of a GGUF row.
    pub(super) const fn gguf_block(self) -> usize {
        2 * self.fields + 4 * self.quads
    }

    /// Bytes of one block of a sixteen-row group.
    pub(super) const fn group_block(self) -> usize {
        32 * self.fields + 64 * self.quads
    }

    /// [`Self::interleave_into`] into a new `Vec`.
    #[cfg(test)]
    pub(super) fn interleave(self, bytes: &[u8], rows: usize, nb: usize) -> Vec<u8> {
        let mut out = vec![0u8; self.interleaved_len(bytes.len(), rows, nb)];
        self.interleave_into(bytes, rows, nb, &mut out);
        out
    }

    /// Bytes of [`Self::interleave_into`]'s output for `len` GGUF bytes of `rows` rows of `nb`
    /// blocks (0 where `len` is too short for the groups' rows).
    pub(super) fn interleaved_len(self, len: usize, rows: usize, nb: usize) -> usize {
        let (groups, row_bytes) = (rows / ROWS, nb * self.gguf_block());
        if row_bytes == 0 || len < groups * ROWS * row_bytes {
            return 0;
        }
        groups * nb * self.group_block()
    }

    /// The whole groups of sixteen of `rows` raw GGUF rows of `nb` blocks each (`bytes`),
    /// rearranged into `out` ([`Self::interleaved_len`] bytes): `[rows / 16][nb][group_block]`.
    /// Rows past the last whole group are left out; nothing is written if `bytes` is shorter
    /// than the groups' rows (and only the groups that fit where `out` is short).
    pub(super) fn interleave_into(self, bytes: &[u8], rows: usize, nb: usize, out: &mut [u8]) {
        let (gb, row_bytes) = (self.gguf_block(), nb * self.gguf_block());
        if self.interleaved_len(bytes.len(), rows, nb) == 0 {
            return;
        }
        let groups = rows / ROWS;
        for (g, dst_group) in out
            .chunks_exact_mut(nb * self.group_block())
            .take(groups)
            .enumerate()
        {
            let src_rows = &bytes[g * ROWS * row_bytes..(g + 1) * ROWS * row_bytes];
            for (b, dst) in dst_group.chunks_exact_mut(self.group_block()).enumerate() {
                for (r, row) in src_rows.chunks_exact(row_bytes).enumerate() {
                    let src = &row[b * gb..(b + 1) * gb];
                    for f in 0..self.fields {
                        dst[32 * f + 2 * r..32 * f + 2 * r + 2].copy_from_slice(&src[2 * f..2 * f + 2]);
                    }
                    let (head, q) = (32 * self.fields, 2 * self.fields);
                    for k in 0..self.quads {
                        let at = head + 64 * k + 4 * r;
                        for (d, s) in dst[at..at + 4].iter_mut().zip(&src[q + 4 * k..q + 4 * k + 4]) {
                            *d = s ^ self.flip;
                        }
                    }
                }
            }
        }
    }

    /// Row `r` of a group `group` (`[nb][group_block]`, [`Self::interleave_into`]) in its GGUF
    /// layout, written to `out` (`nb` GGUF blocks; fewer where either is shorter): the inverse
    /// of the interleaving, for the paths that read GGUF rows.
    pub(super) fn gguf_row(self, group: &[u8], r: usize, out: &mut [u8]) {
        let r = r % ROWS;
        let (head, q) = (32 * self.fields, 2 * self.fields);
        for (src, dst) in group
            .chunks_exact(self.group_block())
            .zip(out.chunks_exact_mut(self.gguf_block()))
        {
            for f in 0..self.fields {
                dst[2 * f..2 * f + 2].copy_from_slice(&src[32 * f + 2 * r..32 * f + 2 * r + 2]);
            }
            for k in 0..self.quads {
                let at = head + 64 * k + 4 * r;
                for (d, s) in dst[q + 4 * k..q + 4 * k + 4].iter_mut().zip(&src[at..at + 4]) {
                    *d = s ^ self.flip;
                }
            }
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

/// The offsets of a Q8_0 block for `vpdpbusd` on unsigned `x + 128`: lane `l` holds
/// `−128 · (q[4l] + … + q[4l+3])`, which `Σ (x + 128)·y` starts from to give `Σ x·y`.
pub(super) fn q8_0_offsets(b: &BlockQ8_0) -> [i32; 8] {
    std::array::from_fn(|l| -128 * b.qs[4 * l..4 * l + 4].iter().map(|&q| i32::from(q)).sum::<i32>())
}

/// The starting lane sums of [`avx512::dot16_q8_0`] for a Q8_0 block: [`q8_0_offsets`] plus
/// [`MAGIC_BITS`], so that each lane's sum ends as the f32 bits of `MAGIC + Σ x·y`.
pub(super) fn q8_0_starts(b: &BlockQ8_0) -> [i32; 8] {
    q8_0_offsets(b).map(|o| o + MAGIC_BITS)
}

/// 1.5 · 2²³: the f32 whose bits, plus any integer `x` with `|x| < 2²²`, are the bits of
/// `MAGIC + x` exactly (the exponent stays that of 2²³, the units are the mantissa's last
/// bit). The kernels start their integer sums from [`MAGIC_BITS`] and subtract `MAGIC` in
/// f32, which gives `x` as `f32` exactly, the bits `vcvtdq2ps` gives: one operation that
/// runs on either of the two 512-bit ports, where the conversion takes port 0 from
/// `vpdpbusd`. Every sum here is far inside: a Q4_1 block's at most 32 · 15 · 128, a Q8_0
/// quad's 4 · 128².
pub(super) const MAGIC: f32 = 12_582_912.0;
/// The bits of [`MAGIC`].
pub(super) const MAGIC_BITS: i32 = 0x4B40_0000;

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
pub(super) mod avx512 {
    use super::{BlockQ8_0, BlockQ8_1};
    use std::arch::x86_64::*;

    /// Bytes of a Q4_1 group block.
    const BLOCK_BYTES: usize = super::Q4_1.group_block();
    /// Bytes of a Q8_0 group block.
    const Q8_0_BLOCK: usize = super::Q8_0.group_block();

    /// Bytes ahead of the current block that the kernels prefetch into L1: six Q4_1 group
    /// blocks (about 2 KiB; the Q8_0 kernel uses the same distance).
    const PREFETCH_BYTES: usize = 6 * BLOCK_BYTES;
    /// Bytes ahead of the current block that the kernels also prefetch into L2 (`T1`), so
    /// that the weight stream runs that far ahead of the products: the L1 distance alone
    /// leaves the memory latency exposed, and the time of a step with several inputs was
    /// close to the memory time plus the product time rather than the larger of the two.
    /// Measured on the demo model, one thread (`ACT_THREADS=1`, `ACT_BENCH_ONLY=steps`
    /// `ACT_BENCH_ROWS=4`, two alternations): a one-row step 5.21 / 5.16 → 4.11 / 4.46 ms, a
    /// four-row step 9.60 / 9.61 → 7.33 / 8.84 ms (16 KiB gave 7.72 / 8.40, 64 KiB 7.24 /
    /// 9.23); two threads, one row 3.73–4.29 → 3.19–3.45 ms (three alternations).
    const FAR_PREFETCH_BYTES: usize = 32 * 1024;

    /// Group `w` (`[nb][320]`, [`super::Layout::interleave_into`] of [`super::Q4_1`]) against `N` (1 to 8) Q8_1 inputs
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
        let (magic, magic_f) = (_mm512_set1_epi32(super::MAGIC_BITS), _mm512_set1_ps(super::MAGIC));
        let mut f = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            // SAFETY: b < nb: the block's 320 weight bytes, block b of every input and its
            // two scales are in bounds; loads are unaligned.
            unsafe {
                let blk = w.as_ptr().add(b * BLOCK_BYTES);
                // A decode step streams every weight once from memory: ask for the bytes
                // PREFETCH_BYTES ahead (past the group's end, the next group's; a
                // prefetch never faults).
                let ahead = blk.wrapping_add(PREFETCH_BYTES);
                for line in 0..BLOCK_BYTES / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line).cast());
                }
                let far = blk.wrapping_add(FAR_PREFETCH_BYTES);
                for line in 0..BLOCK_BYTES / 64 {
                    _mm_prefetch::<_MM_HINT_T1>(far.wrapping_add(64 * line).cast());
                }
                let dx = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
                let mx = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32).cast()));
                // The sums start from MAGIC's bits, so that each ends as the f32 bits of
                // MAGIC + sumi ([`super::MAGIC`]).
                let mut a = [magic; N];
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
                    let sumi = _mm512_sub_ps(_mm512_castsi512_ps(sumi), magic_f);
                    let t = _mm512_mul_ps(_mm512_mul_ps(sumi, dx), dy);
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

    /// Group `w` (`[nb][544]`, [`super::Layout::interleave_into`] of [`super::Q8_0`]) against `N`
    /// (1 or 2) Q8_0 inputs `ys[j]` (`nb` blocks each), with their scales `ds[j]` (`[nb]`, f32)
    /// and starting lane sums `offs[j]` (`[nb]`, [`super::q8_0_starts`]: lane `l` holds
    /// [`super::MAGIC_BITS`] `− 128 · Σ` of quad `l`): `out[j][r]` is row `r`'s dot with input
    /// `j`, bit-identical to `dot_q8_0` on the row's GGUF bytes.
    /// That kernel keeps eight lane sums per output (lane `l`: quad `l` of every block,
    /// `acc_l = (dx·dy)·sum + acc_l` with one FMA) and adds them at the end as `hsum_ps` does;
    /// here each lane sum is a register of sixteen rows, and the final additions are the same
    /// tree, `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`. Eight registers per input
    /// hold at most two inputs per call. Blocks past the shortest argument are left out.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni")]
    pub(in crate::runtime) fn dot16_q8_0<const N: usize>(
        w: &[u8],
        ys: &[&[BlockQ8_0]; N],
        ds: &[&[f32]; N],
        offs: &[&[[i32; 8]]; N],
    ) -> [[f32; 16]; N] {
        let mut nb = w.len() / Q8_0_BLOCK;
        for j in 0..N {
            nb = nb.min(ys[j].len()).min(ds[j].len()).min(offs[j].len());
        }
        let magic_f = _mm512_set1_ps(super::MAGIC);
        let mut acc = [[_mm512_setzero_ps(); 8]; N];
        for b in 0..nb {
            // SAFETY: b < nb: the block's 544 weight bytes and block b of every input, its
            // scale and its starting sums are in bounds; loads are unaligned.
            unsafe {
                let blk = w.as_ptr().add(b * Q8_0_BLOCK);
                let ahead = blk.wrapping_add(PREFETCH_BYTES);
                for line in 0..Q8_0_BLOCK.div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line).cast());
                }
                let far = blk.wrapping_add(FAR_PREFETCH_BYTES);
                for line in 0..Q8_0_BLOCK.div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T1>(far.wrapping_add(64 * line).cast());
                }
                let dx = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
                let dxdy: [__m512; N] = std::array::from_fn(|j| _mm512_mul_ps(dx, _mm512_set1_ps(ds[j][b])));
                for l in 0..8 {
                    let wl = _mm512_loadu_si512(blk.add(32 + 64 * l).cast());
                    for j in 0..N {
                        let q = std::ptr::addr_of!((*ys[j].as_ptr().add(b)).qs).cast::<u8>();
                        let y = _mm512_set1_epi32(q.add(4 * l).cast::<i32>().read_unaligned());
                        let start = _mm512_set1_epi32(offs[j][b][l]);
                        let sum = _mm512_castsi512_ps(_mm512_dpbusd_epi32(start, wl, y));
                        let sum = _mm512_sub_ps(sum, magic_f);
                        acc[j][l] = _mm512_fmadd_ps(dxdy[j], sum, acc[j][l]);
                    }
                }
            }
        }
        let mut out = [[0f32; 16]; N];
        for (o, a) in out.iter_mut().zip(acc) {
            let lo = _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6]));
            let hi = _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7]));
            // SAFETY: `o` holds 16 f32; the store is unaligned.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), _mm512_add_ps(lo, hi)) };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_subtraction_gives_the_conversions_bits_over_every_sum_the_kernels_make() {
        let edges = [
            0i32,
            1,
            -1,
            61_440,
            -61_440,
            65_536,
            -65_536,
            130_560,
            (1 << 22) - 1,
            -(1 << 22),
        ];
        let steps = (-70_000..=70_000).step_by(7);
        for x in edges.into_iter().chain(steps) {
            let got = f32::from_bits((MAGIC_BITS + x) as u32) - MAGIC;
            assert_eq!(got.to_bits(), (x as f32).to_bits(), "{x}");
        }
    }

    #[test]
    fn q8_0_groups_hold_unsigned_quants_and_give_back_the_gguf_rows() {
        let (nb, rows) = (2, 19);
        let bytes: Vec<u8> = (0..rows * nb * 34).map(|i| (i * 13 % 256) as u8).collect();
        let x = Q8_0.interleave(&bytes, rows, nb);
        assert_eq!(x.len(), nb * 544);
        // Row 3, block 1: scale at 2·3, quant word 5 at 32 + 64·5 + 4·3, each byte + 128.
        let src = &bytes[3 * nb * 34 + 34..3 * nb * 34 + 68];
        let blk = &x[544..1088];
        assert_eq!(&blk[6..8], &src[0..2]);
        let at = 32 + 64 * 5 + 12;
        let want: Vec<u8> = src[2 + 20..2 + 24].iter().map(|b| b ^ 0x80).collect();
        assert_eq!(&blk[at..at + 4], &want[..]);
        let mut row = vec![0u8; nb * 34];
        for r in 0..16 {
            Q8_0.gguf_row(&x, r, &mut row);
            assert_eq!(&row[..], &bytes[r * nb * 34..(r + 1) * nb * 34], "row {r}");
        }
    }

    #[test]
    fn interleaving_moves_every_byte_once_and_leaves_partial_groups_out() {
        let nb = 3;
        let rows = 35; // two whole groups and three rows left over
        let bytes: Vec<u8> = (0..rows * nb * 20).map(|i| (i * 7 % 251) as u8).collect();
        const BLOCK_BYTES: usize = Q4_1.group_block();
        let x = Q4_1.interleave(&bytes, rows, nb);
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
        assert!(Q4_1.interleave(&bytes[..100], rows, nb).is_empty());
        // And back: every whole-group row comes out as it went in.
        let mut row = vec![0u8; nb * 20];
        for r in 0..32 {
            let g = r / 16;
            Q4_1.gguf_row(&x[g * nb * BLOCK_BYTES..(g + 1) * nb * BLOCK_BYTES], r, &mut row);
            assert_eq!(&row[..], &bytes[r * nb * 20..(r + 1) * nb * 20], "row {r}");
        }
    }
}
