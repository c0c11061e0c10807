//! [`super::quant_dot8`]'s eight-input Q4_1 kernel on 512-bit registers, for CPUs with
//! AVX-512 VNNI (detected at run time: the build only assumes AVX2, FMA and F16C).
//!
//! The 256-bit kernel spends eight `vpdpbusd` per block, one per quad (four values) of the
//! block, each on eight lanes (the inputs). Here a register holds sixteen lanes: lane `2j + h`
//! is input `j`'s quad `k + 4h` at step `k` (k = 0..4), so a block takes four `vpdpbusd`.
//! The operands of a step:
//! - the weights come straight from the raw row, with no unpacked copy: the block's raw bytes
//!   `4k..4k+4` broadcast to every lane and masked with one AND, `0x0F` in even lanes (their
//!   low nibbles: values `4k..4k+4`) and `0xF0` in odd lanes (their high nibbles times 16:
//!   values `16+4k..16+4k+4`, the sums shifted back by 4 bits, exactly, before they are
//!   added). An earlier form unpacked each row to a byte per value first, a store and reload
//!   of 32 bytes per block and row;
//! - the inputs ([`interleave8_pairs`], `[groups][nb][4 steps][8 inputs][2][4]`, 256 bytes per
//!   block and group as for the 256-bit kernel): per step and input its quads `k` and `k + 4`.
//!
//! A lane pair's two sums are then added (two blocks at a time, by two lane permutations and
//! one add, giving block `i`'s eight sums in lanes 0..8 and block `i + 1`'s in lanes 8..16),
//! and the f32 tail runs on both blocks at once. The tail's steps per lane are those of
//! [`super::quant`]'s `dot_q4_1` — `sumf += sumi·dx·dy + mx·sy`, block after block, no FMA —
//! with block `i`'s half added to the accumulator before block `i + 1`'s, so every output is
//! **bit-identical** to the one-input kernel's (the integer block sums are exact whatever the
//! order of their additions).
//!
//! The Q8_0 tiles (the tied output matrix of SmolLM2, Q4_0 and Q5_0 rows rewritten as Q8_0)
//! get the same widening: [`avx512::dot2x8_q8_0_512`] is [`super::quant_dot4`]'s two-row ×
//! four-input AVX-VNNI tile with two inputs per register (lanes 0..8 one input's eight lane
//! sums, 8..16 the next one's), so two weight rows meet eight inputs with each weight block
//! loaded once; inputs come paired ([`pair_inputs_q8_0`]) once per pool piece of rows, as the
//! AVX-VNNI tile's starting sums are (a few KiB of work per piece, repeated per piece).

use super::quant::{BlockQ8_0, BlockQ8_1};

/// Per whole group of eight of the `inputs` Q8_0 inputs `y` (`inputs` rows of `nb` blocks,
/// scales `d` as f32, `[inputs][nb]`), in the layout of [`avx512::dot2x8_q8_0_512`], appended
/// to the three buffers: `quants` `[groups][nb][4 pairs][2][32]` (inputs `2p` and `2p + 1` of
/// the group side by side), `offsets` `[groups][nb][4 pairs][2][8]` (lane `l` of an input's
/// half: `−128 · (q[4l] + … + q[4l+3])`, the AVX-VNNI tile's starting sums) and `scales`
/// `[groups][nb][4 pairs][2][8]` (each input's scale eight times). Returns the groups.
pub(super) fn pair_inputs_q8_0(
    y: &[BlockQ8_0],
    d: &[f32],
    inputs: usize,
    quants: &mut Vec<i8>,
    offsets: &mut Vec<i32>,
    scales: &mut Vec<f32>,
) -> usize {
    let Some(nb) = y.len().checked_div(inputs) else {
        return 0;
    };
    if d.len() != y.len() {
        return 0;
    }
    let groups = inputs / 8;
    for g in 0..groups {
        for i in 0..nb {
            for j in g * 8..g * 8 + 8 {
                let (b, dj) = (&y[j * nb + i], d[j * nb + i]);
                quants.extend_from_slice(&b.qs);
                offsets.extend(
                    (0..8).map(|l| -128 * b.qs[4 * l..4 * l + 4].iter().map(|&q| i32::from(q)).sum::<i32>()),
                );
                scales.extend([dj; 8]);
            }
        }
    }
    groups
}

/// The quants of the [`super::quant_dot8::groups`] of eight inputs of `q` (`inputs` rows of
/// `nb` blocks) in the pair layout of [`avx512::dot8_q4_1_512`]: `[groups][nb][4 steps][8
/// inputs][2][4]` — at step `k`, input `j`'s quads `k` and `k + 4` (zeros for the lanes of a
/// partial group past its inputs), appended to `out`.
pub(super) fn interleave8_pairs(q: &[BlockQ8_1], inputs: usize, out: &mut Vec<i8>) {
    let Some(nb) = q.len().checked_div(inputs) else {
        return;
    };
    let groups = super::quant_dot8::groups(inputs);
    out.reserve(groups * nb * 256);
    for g in 0..groups {
        for i in 0..nb {
            for k in 0..4 {
                for j in 0..8 {
                    for quad in [k, k + 4] {
                        match q.get((g * 8 + j) * nb + i).filter(|_| g * 8 + j < inputs) {
                            Some(b) => out.extend_from_slice(&b.qs[quad * 4..quad * 4 + 4]),
                            None => out.extend_from_slice(&[0; 4]),
                        }
                    }
                }
            }
        }
    }
}

/// AVX-512 form (F, DQ, VNNI), compiled wherever the build has AVX2, FMA and F16C and
/// called only after the CPU was checked ([`super::quant::avx512_vnni`]).
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
pub(super) mod avx512 {
    use super::super::quant::avx2::hsum_ps;
    use std::arch::x86_64::*;

    /// Two Q8_0-layout weight rows × eight Q8_0 inputs in the layout of
    /// [`super::pair_inputs_q8_0`] (`quants` `[nb][256]`, `offsets` and `scales` `[nb][64]`):
    /// `out[r][j]` equals `dot_q8_0(rows[r], y[j])` bit for bit. Per block and pair of inputs,
    /// the steps of `dot2x4_q8_0_vnni` on sixteen lanes: the row block's quants offset to
    /// unsigned `x + 128` (in both halves), one `vpdpbusd` with the pair's quants from its
    /// starting sums (`Σ (x + 128)·y − 128·Σ y = Σ x·y`, exact), converted, and
    /// `acc = (dx·dy)·q + acc` with one FMA; each half's final sum is `hsum_ps` of its eight
    /// lanes, the one-input kernel's order. Blocks past the shortest argument are left out.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512dq,avx512vnni")]
    pub(in crate::runtime) fn dot2x8_q8_0_512(
        rows: &[&[u8]; 2],
        quants: &[i8],
        offsets: &[i32],
        scales: &[f32],
    ) -> [[f32; 8]; 2] {
        let nb = (rows[0].len() / 34)
            .min(rows[1].len() / 34)
            .min(quants.len() / 256)
            .min(offsets.len() / 64)
            .min(scales.len() / 64);
        let flip = _mm512_set1_epi8(i8::MIN);
        // acc[pair][r]: row r against inputs 2·pair (lanes 0..8) and 2·pair + 1 (8..16).
        let mut acc = [[_mm512_setzero_ps(); 2]; 4];
        for i in 0..nb {
            // SAFETY: i < nb: both rows' block i (f16 scale, 32 quants) and the inputs' 256
            // quants, 64 starting sums and 64 scales of block i are in bounds; unaligned loads.
            unsafe {
                let block = |r: usize| {
                    let p = rows[r].as_ptr().add(i * 34);
                    let dx = _mm512_cvtph_ps(_mm256_set1_epi16(p.cast::<i16>().read_unaligned()));
                    let x = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(2).cast()));
                    (dx, _mm512_xor_si512(x, flip))
                };
                let (b0, b1) = (block(0), block(1));
                for (pair, acc) in acc.iter_mut().enumerate() {
                    let at = i * 64 + pair * 16;
                    let by = _mm512_loadu_si512(quants.as_ptr().add(i * 256 + pair * 64).cast());
                    let start = _mm512_loadu_si512(offsets.as_ptr().add(at).cast());
                    let dy = _mm512_loadu_ps(scales.as_ptr().add(at));
                    for (acc, (dx, ux)) in acc.iter_mut().zip([b0, b1]) {
                        let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, ux, by));
                        *acc = _mm512_fmadd_ps(_mm512_mul_ps(dx, dy), q, *acc);
                    }
                }
            }
        }
        let mut out = [[0f32; 8]; 2];
        for (pair, acc) in acc.into_iter().enumerate() {
            for (out, v) in out.iter_mut().zip(acc) {
                out[2 * pair] = hsum_ps(_mm512_castps512_ps256(v));
                out[2 * pair + 1] = hsum_ps(_mm512_extractf32x8_ps::<1>(v));
            }
        }
        out
    }

    /// One block's sixteen lane sums, read straight from the row's raw nibbles: lane `2j`
    /// holds input `j`'s products over values `4k..4k+4` of the four steps' quads `k`
    /// (exact), lane `2j + 1` **sixteen times** its products over values `16+4k..16+4k+4`.
    /// At step `k` the block's raw bytes `4k..4k+4` are broadcast to every lane and masked
    /// with `0x0F` in even lanes (the low nibbles: values `4k..`) and `0xF0` in odd lanes (the
    /// high nibbles times 16: values `16+4k..`), so no unpacked copy of the row is needed.
    /// `w` points at the block's 16 nibble bytes, `y` at its 256 pair-layout quants.
    ///
    /// # Safety
    /// `w` must point at 16 readable bytes and `y` at 256; AVX-512 F and VNNI must be there.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512dq,avx512vnni")]
    unsafe fn block_lanes(w: *const u8, y: *const i8, nibbles: __m512i) -> __m512i {
        // SAFETY: step k < 4 reads bytes 4k..4k+4 of `w` and 64k..64k+64 of `y`, inside what
        // the caller promised; unaligned reads.
        let step = |acc: __m512i, k: usize| unsafe {
            let wk = _mm512_and_si512(
                _mm512_set1_epi32(w.add(4 * k).cast::<i32>().read_unaligned()),
                nibbles,
            );
            _mm512_dpbusd_epi32(acc, wk, _mm512_loadu_si512(y.add(64 * k).cast()))
        };
        let zero = _mm512_setzero_si512();
        // Two chains, so each `vpdpbusd` waits on one of its own two steps earlier.
        _mm512_add_epi32(step(step(zero, 0), 2), step(step(zero, 1), 3))
    }

    /// The constants of the Q4_1 kernels: `nibbles` the masks of [`block_lanes`]; `even` and
    /// `odd` the lane permutations that gather the two halves of each lane pair of two blocks'
    /// [`block_lanes`] (block a: indices 0..16, block b: 16..32); `d` and `s` the two blocks'
    /// input scales and sums from their headers (8 `d` then 8 `s` per block).
    struct Lanes {
        nibbles: __m512i,
        even: __m512i,
        odd: __m512i,
        d: __m512i,
        s: __m512i,
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512dq,avx512vnni")]
    fn lanes() -> Lanes {
        Lanes {
            nibbles: _mm512_set1_epi64(0xF0F0_F0F0_0F0F_0F0F_u64 as i64),
            even: _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
            odd: _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31),
            d: _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
            s: _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31),
        }
    }

    /// The terms `sumi·dx·dy + mx·sy` of blocks `i` (lanes 0..8, one per input) and `i + 1`
    /// (lanes 8..16), each lane's steps in the one-input kernel's order.
    ///
    /// # Safety
    /// Blocks `i` and `i + 1` must be in bounds of `row` (20 bytes each), `yq` (256) and `hdr`
    /// (16); AVX-512 F, DQ and VNNI must be there.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512dq,avx512vnni")]
    unsafe fn terms2(row: &[u8], yq: &[i8], hdr: &[f32], i: usize, l: &Lanes) -> __m512 {
        // SAFETY: the caller's promise; loads are unaligned.
        let (sumi, dm, h0, h1) = unsafe {
            let w = row.as_ptr().add(i * 20 + 4);
            let a = block_lanes(w, yq.as_ptr().add(i * 256), l.nibbles);
            let b = block_lanes(w.add(20), yq.as_ptr().add(i * 256 + 256), l.nibbles);
            // The odd lanes hold sixteen times their sums: an exact shift, as every product
            // in them is a multiple of 16.
            let sumi = _mm512_add_epi32(
                _mm512_permutex2var_epi32(a, l.even, b),
                _mm512_srai_epi32::<4>(_mm512_permutex2var_epi32(a, l.odd, b)),
            );
            // The blocks' f16 (d, m) pairs: [d m d m …] of block i in lanes 0..8, of block
            // i + 1 in lanes 8..16, as f32.
            let p = row.as_ptr().add(i * 20);
            let dm_a = _mm_set1_epi32(p.cast::<i32>().read_unaligned());
            let dm_b = _mm_set1_epi32(p.add(20).cast::<i32>().read_unaligned());
            let dm = _mm512_cvtph_ps(_mm256_set_m128i(dm_b, dm_a));
            let h = hdr.as_ptr().add(i * 16);
            (sumi, dm, _mm512_loadu_ps(h), _mm512_loadu_ps(h.add(16)))
        };
        let dy = _mm512_permutex2var_ps(h0, l.d, h1);
        let sy = _mm512_permutex2var_ps(h0, l.s, h1);
        let dx = _mm512_shuffle_ps::<0x00>(dm, dm);
        let mx = _mm512_shuffle_ps::<0x55>(dm, dm);
        let t = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sumi), dx), dy);
        _mm512_add_ps(t, _mm512_mul_ps(mx, sy))
    }

    /// [`terms2`] for block `i` alone (a row's last block when the count is odd).
    ///
    /// # Safety
    /// Block `i` must be in bounds of `row`, `yq` and `hdr`; AVX-512 F, DQ and VNNI must be
    /// there.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512dq,avx512vnni")]
    unsafe fn terms1(row: &[u8], yq: &[i8], hdr: &[f32], i: usize, l: &Lanes) -> __m256 {
        // SAFETY: the caller's promise; loads are unaligned.
        let (sumi, dm, dy, sy) = unsafe {
            let a = block_lanes(row.as_ptr().add(i * 20 + 4), yq.as_ptr().add(i * 256), l.nibbles);
            let sumi = _mm512_add_epi32(
                _mm512_permutex2var_epi32(a, l.even, a),
                _mm512_srai_epi32::<4>(_mm512_permutex2var_epi32(a, l.odd, a)),
            );
            let p = row.as_ptr().add(i * 20);
            let dm = _mm256_cvtph_ps(_mm_set1_epi32(p.cast::<i32>().read_unaligned()));
            let h = hdr.as_ptr().add(i * 16);
            (
                _mm512_castsi512_si256(sumi),
                dm,
                _mm256_loadu_ps(h),
                _mm256_loadu_ps(h.add(8)),
            )
        };
        let dx = _mm256_shuffle_ps::<0x00>(dm, dm);
        let mx = _mm256_shuffle_ps::<0x55>(dm, dm);
        let t = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sumi), dx), dy);
        _mm256_add_ps(t, _mm256_mul_ps(mx, sy))
    }

    /// Blocks every argument holds: `row` 20 bytes each, `yq` 256, `hdr` 16.
    fn blocks(row: &[u8], yq: &[i8], hdr: &[f32]) -> usize {
        (row.len() / 20).min(yq.len() / 256).min(hdr.len() / 16)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn store8(acc: __m256) -> [f32; 8] {
        let mut out = [0f32; 8];
        // SAFETY: `out` holds 8 f32; the store is unaligned.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), acc) };
        out
    }

    /// Q4_1 row · 8 Q8_1 inputs; lane `j` equals `dot_q4_1(row, y_j)` bit for bit. `row` is the
    /// raw row (its `d`, `m` headers and nibbles are read as they are), `yq` the inputs' quants from [`super::interleave8_pairs`] (`[nb][256]`) and `hdr` their
    /// scales from [`super::super::quant_dot8::q8_1_headers8`] (`[nb][16]`). Blocks past the
    /// shortest of these are left out.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512dq,avx512vnni")]
    pub(in crate::runtime) fn dot8_q4_1_512(row: &[u8], yq: &[i8], hdr: &[f32]) -> [f32; 8] {
        let nb = blocks(row, yq, hdr);
        let l = lanes();
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 2 <= nb {
            // SAFETY: i + 1 < nb: both blocks are in bounds of every argument.
            let u = unsafe { terms2(row, yq, hdr, i, &l) };
            // Block i's terms first, then block i + 1's: the one-input kernel's order.
            acc = _mm256_add_ps(acc, _mm512_castps512_ps256(u));
            acc = _mm256_add_ps(acc, _mm512_extractf32x8_ps::<1>(u));
            i += 2;
        }
        if i < nb {
            // SAFETY: i < nb: block i is in bounds of every argument.
            acc = _mm256_add_ps(acc, unsafe { terms1(row, yq, hdr, i, &l) });
        }
        store8(acc)
    }

    /// [`dot8_q4_1_512`] of two rows at once, the same bits: each row's sums are its own chain of additions, block after block, and
    /// two chains side by side keep the adder busy where one waits on its last addition.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512dq,avx512vnni")]
    ///
    /// The pairs come by reference: an array of slices passed by value is copied to the stack
    /// with 8-byte stores and read back with 16-byte loads, which cannot be forwarded from
    /// them (a stall per call that showed as a fifth of the calling loop's time).
    pub(in crate::runtime) fn dot8x2_q4_1_512(rows: &[&[u8]; 2], yq: &[i8], hdr: &[f32]) -> [[f32; 8]; 2] {
        let nb = blocks(rows[0], yq, hdr).min(blocks(rows[1], yq, hdr));
        let l = lanes();
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 2 <= nb {
            // SAFETY: i + 1 < nb: both blocks are in bounds of every argument.
            let u = unsafe { [0, 1].map(|r| terms2(rows[r], yq, hdr, i, &l)) };
            for (a, u) in acc.iter_mut().zip(u) {
                *a = _mm256_add_ps(*a, _mm512_castps512_ps256(u));
            }
            for (a, u) in acc.iter_mut().zip(u) {
                *a = _mm256_add_ps(*a, _mm512_extractf32x8_ps::<1>(u));
            }
            i += 2;
        }
        if i < nb {
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: i < nb: block i is in bounds of every argument.
                *a = _mm256_add_ps(*a, unsafe { terms1(rows[r], yq, hdr, i, &l) });
            }
        }
        acc.map(|a| store8(a))
    }
}
