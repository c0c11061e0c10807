//! GGML "k-quant" weights (Q4_K, Q5_K, Q6_K: the bulk of a "Q4_K_M" / "Q5_K_M" file) against
//! activations quantized to Q8_K, and their dequantization.
//!
//! A k-quant super-block holds [`QK_K`] = 256 values with one f16 scale `d` (and `dmin`) and
//! small per-sub-block integer scales (layouts: ggml's `block_q4_K`, `block_q5_K`,
//! `block_q6_K`, and candle-core's `BlockQ4K` … `BlockQ6K`, which are the same bytes):
//! - **Q4_K** (144 bytes): `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`. Eight
//!   sub-blocks of 32 with 6-bit scale `sc` and 6-bit min `m` packed in `scales`;
//!   value = `d·sc · q − dmin·m`, `q` a nibble (low nibbles of 32 bytes, then their high ones).
//! - **Q5_K** (176 bytes): `d, dmin, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`; as Q4_K
//!   with a fifth bit from `qh` (bit `2c` of `qh[l]` for the low nibbles of chunk `c`, bit
//!   `2c + 1` for the high ones).
//! - **Q6_K** (210 bytes): `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`; sixteen
//!   sub-blocks of 16 with signed 8-bit scales; value = `d·sc · (q − 32)`, `q` 6 bits.
//!
//! Activations are quantized to **Q8_K** ([`BlockQ8K`]: f32 scale, 256 × i8, and the sums of
//! each 16 quants, which absorb the mins and the −32 offset), bit-identical to candle's
//! `BlockQ8K::from_float`.
//!
//! Numerics: each super-block's dot is an exact `i32` (sub-block products scaled by their
//! integer scales; the min / offset terms from the Q8_K block sums), then combined in f32 as
//! `sumf += (dy·d)·sumi − (dy·dmin)·summ`, block after block. The AVX2 kernels compute the
//! same integers with SIMD and keep that scalar float order, so they equal the scalar
//! references ([`vec_dot_q4_k_q8_k_scalar`] …) bit for bit. candle's (and llama.cpp's) AVX
//! kernels convert partial integer sums to float per lane instead, so ours and theirs agree
//! to rounding (≈ 1e-6 relative), not bit for bit.

use half::f16;

use super::quant::QuantError;

/// Values per k-quant super-block.
pub const QK_K: usize = 256;

/// Q8_K activation block (activation side of every k-quant): value `j` = `qs[j] · d`;
/// `bsums[g]` = Σ of `qs[16g..16g + 16]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

impl Default for BlockQ8K {
    /// The block of 256 zeros.
    fn default() -> Self {
        Self {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }
    }
}

/// Bytes of one Q4_K super-block.
pub const Q4_K_BYTES: usize = 144;
/// Bytes of one Q5_K super-block.
pub const Q5_K_BYTES: usize = 176;
/// Bytes of one Q6_K super-block.
pub const Q6_K_BYTES: usize = 210;

/// f16 at `b[i..i + 2]` (little-endian) as f32.
#[inline(always)]
pub(super) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Quantizes `x` (`[k]`, `k` a multiple of 256) into `out` (`[k / 256]` blocks, cleared
/// first): `d = max / −127` where `max` is the value of largest magnitude, quants rounded
/// half away from zero. Bit-identical to candle's `BlockQ8K::from_float`.
pub fn quantize_q8_k(x: &[f32], out: &mut Vec<BlockQ8K>) -> Result<(), QuantError> {
    if !x.len().is_multiple_of(QK_K) {
        return Err(QuantError::Len {
            what: "q8_k input (multiple of 256)",
            expected: x.len() / QK_K * QK_K,
            got: x.len(),
        });
    }
    out.clear();
    out.extend(x.chunks_exact(QK_K).map(q8_k_block));
    Ok(())
}

/// One Q8_K block of 256 values (see [`quantize_q8_k`]); with AVX2 in SIMD
/// ([`q8_k_block_avx2`]), bit-identical to the scalar form ([`q8_k_block_scalar`]).
pub(super) fn q8_k_block(xs: &[f32]) -> BlockQ8K {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if xs.len() == QK_K {
        // SAFETY: AVX2 is enabled at compile time; `xs` holds 256 values.
        return unsafe { q8_k_block_avx2(xs) };
    }
    q8_k_block_scalar(xs)
}

/// [`q8_k_block`] with AVX2: the largest magnitude by vector maxima (NaNs skipped, as the
/// scalar comparison skips them), the first value of that magnitude by a scan, and rounding
/// half away from zero as `trunc(v) ± 1` where `|v − trunc(v)| ≥ 0.5` (exact: both are
/// representable). A NaN quant becomes 0, as `NaN as i8` does.
///
/// # Safety
/// AVX2 must be available and `xs` must hold 256 values.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[target_feature(enable = "avx2")]
unsafe fn q8_k_block_avx2(xs: &[f32]) -> BlockQ8K {
    use super::quant::quantize_avx2::{abs_max, pack_i8, round_to_i8};
    use std::arch::x86_64::*;
    // SAFETY: every load reads `xs[8i..8i + 8]` for i < 32 and every store writes
    // `b.qs[32i..32i + 32]` for i < 8 (the caller's contract: 256 values).
    unsafe {
        let p = xs.as_ptr();
        let amax = abs_max(p, QK_K / 8);
        let mut b = BlockQ8K::default();
        if amax == 0.0 {
            return b;
        }
        let max = xs.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
        let iscale = -127f32 / max;
        let q = |i: usize| {
            round_to_i8(_mm256_mul_ps(
                _mm256_set1_ps(iscale),
                _mm256_loadu_ps(p.add(8 * i)),
            ))
        };
        for g in 0..QK_K / 32 {
            let v = pack_i8(q(4 * g), q(4 * g + 1), q(4 * g + 2), q(4 * g + 3));
            _mm256_storeu_si256(b.qs.as_mut_ptr().add(32 * g).cast(), v);
        }
        for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
        b
    }
}

/// [`q8_k_block`] in scalar code.
pub(super) fn q8_k_block_scalar(xs: &[f32]) -> BlockQ8K {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in xs {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let mut b = BlockQ8K::default();
    if amax != 0.0 {
        let iscale = -127f32 / max;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
        }
        for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
    }
    b
}

/// The eight 6-bit sub-block scales and mins of a Q4_K / Q5_K super-block from its 12 packed
/// bytes (ggml's `get_scale_min_k4`): sub-blocks 0..4 keep 6 bits in bytes 0..8, sub-blocks
/// 4..8 take 4 bits from bytes 8..12 and their top 2 bits from the spare bits of bytes 0..8.
#[inline(always)]
pub(super) fn scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, m)
}

/// Dequantizes one Q4_K (`five_bits == false`, `b: [144]`) or Q5_K (`b: [176]`) super-block
/// into `out` (`[256]`), with candle's / ggml's float operations (`d·sc` then `·q − dmin·m`).
fn dequantize_q45_k(b: &[u8], five_bits: bool, out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, m) = scales_mins(&b[4..16]);
    let (qh, qs) = if five_bits {
        (&b[16..48], &b[48..176])
    } else {
        (&b[..0], &b[16..144])
    };
    for c in 0..4 {
        let (d1, m1) = (d * sc[2 * c] as f32, dmin * m[2 * c] as f32);
        let (d2, m2) = (d * sc[2 * c + 1] as f32, dmin * m[2 * c + 1] as f32);
        let (lo, hi) = out[64 * c..64 * c + 64].split_at_mut(32);
        let q = &qs[32 * c..32 * c + 32];
        if five_bits {
            for (l, ((lo, hi), &q)) in lo.iter_mut().zip(hi.iter_mut()).zip(q).enumerate() {
                let h = qh[l];
                let (h1, h2) = (((h >> (2 * c)) & 1) << 4, ((h >> (2 * c + 1)) & 1) << 4);
                *lo = d1 * ((q & 0x0F) + h1) as f32 - m1;
                *hi = d2 * ((q >> 4) + h2) as f32 - m2;
            }
        } else {
            // Without fifth bits the loop vectorises (the same operations per value).
            for ((lo, hi), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
                *lo = d1 * (q & 0x0F) as f32 - m1;
                *hi = d2 * (q >> 4) as f32 - m2;
            }
        }
    }
}

/// The unsigned 6-bit quant (0..=63) of value `128n + 32k + l` of a Q6_K block (half `n` < 2,
/// run `k` < 4, lane `l` < 32): the low (k < 2) or high nibble of `ql[64n + 32(k mod 2) + l]`,
/// with bits `2k..2k + 2` of `qh[32n + l]` above it.
#[inline(always)]
fn q6_quant(ql: &[u8], qh: &[u8], n: usize, k: usize, l: usize) -> i32 {
    let lo = ql[64 * n + 32 * (k & 1) + l];
    let lo = if k < 2 { lo & 0x0F } else { lo >> 4 };
    (lo | (((qh[32 * n + l] >> (2 * k)) & 3) << 4)) as i32
}

/// Dequantizes one Q6_K super-block (`b: [210]`) into `out` (`[256]`), with candle's float
/// operations (`d · sc · (q − 32)`, left to right).
fn dequantize_q6_k(b: &[u8], out: &mut [f32]) {
    let (ql, qh, sc, d) = (&b[..128], &b[128..192], &b[192..208], f16_at(b, 208));
    for n in 0..2 {
        for k in 0..4 {
            for l in 0..32 {
                let s = sc[8 * n + 2 * k + l / 16] as i8;
                out[128 * n + 32 * k + l] = d * s as f32 * (q6_quant(ql, qh, n, k, l) - 32) as f32;
            }
        }
    }
}

/// Dequantizes super-blocks of format `bytes_per_block` (144: Q4_K, 176: Q5_K, 210: Q6_K) from
/// `row` into `out` (`[blocks · 256]`). Extra bytes or values are ignored.
pub fn dequantize_k(bytes_per_block: usize, row: &[u8], out: &mut [f32]) {
    for (b, o) in row.chunks_exact(bytes_per_block).zip(out.chunks_exact_mut(QK_K)) {
        match bytes_per_block {
            Q4_K_BYTES => dequantize_q45_k(b, false, o),
            Q5_K_BYTES => dequantize_q45_k(b, true, o),
            Q6_K_BYTES => dequantize_q6_k(b, o),
            _ => o.fill(0.0),
        }
    }
}

/// Σ over sub-blocks of `m[j] · (bsums[2j] + bsums[2j + 1])`: the min term of a Q4_K / Q5_K block.
#[inline(always)]
fn min_sum(m: &[u8; 8], y: &BlockQ8K) -> i32 {
    (0..8)
        .map(|j| m[j] as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32))
        .sum()
}

/// Σ over the 16 groups of `sc[g] · bsums[g]`: the −32 offset term of a Q6_K block (÷ 32).
#[inline(always)]
fn q6_offset_sum(sc: &[u8], y: &BlockQ8K) -> i32 {
    sc.iter()
        .zip(&y.bsums)
        .map(|(&s, &b)| s as i8 as i32 * b as i32)
        .sum()
}

/// Scalar integer part of a Q4_K / Q5_K block dot: Σ_j sc[j] · Σ_l q·y over sub-block `j`.
fn q45_k_sumi_scalar(b: &[u8], five_bits: bool, sc: &[u8; 8], y: &BlockQ8K) -> i32 {
    let (qh, qs) = if five_bits {
        (&b[16..48], &b[48..176])
    } else {
        (&b[..0], &b[16..144])
    };
    let mut sumi = 0i32;
    for c in 0..4 {
        let (mut s1, mut s2) = (0i32, 0i32);
        for l in 0..32 {
            let q = qs[32 * c + l];
            let (h1, h2) = match qh.get(l) {
                Some(&h) => (((h >> (2 * c)) & 1) << 4, ((h >> (2 * c + 1)) & 1) << 4),
                None => (0, 0),
            };
            s1 += ((q & 0x0F) + h1) as i32 * y.qs[64 * c + l] as i32;
            s2 += ((q >> 4) + h2) as i32 * y.qs[64 * c + 32 + l] as i32;
        }
        sumi += sc[2 * c] as i32 * s1 + sc[2 * c + 1] as i32 * s2;
    }
    sumi
}

/// Scalar integer part of a Q6_K block dot before the offset: Σ_g sc[g] · Σ q·y (q unsigned).
fn q6_k_sumi_scalar(b: &[u8], y: &BlockQ8K) -> i32 {
    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
    let mut sumi = 0i32;
    for n in 0..2 {
        for k in 0..4 {
            for half in 0..2 {
                let g = 8 * n + 2 * k + half;
                let s: i32 = (16 * half..16 * half + 16)
                    .map(|l| q6_quant(ql, qh, n, k, l) * y.qs[128 * n + 32 * k + l] as i32)
                    .sum();
                sumi += sc[g] as i8 as i32 * s;
            }
        }
    }
    sumi
}

/// Scalar reference Q4_K·Q8_K dot of one weight row (`[nb · 144]` bytes) with `y` (`[nb]`).
pub fn vec_dot_q4_k_q8_k_scalar(row: &[u8], y: &[BlockQ8K]) -> f32 {
    dot_q45_k(row, y, false, q45_k_sumi_scalar)
}

/// Scalar reference Q5_K·Q8_K dot of one weight row (`[nb · 176]` bytes) with `y` (`[nb]`).
pub fn vec_dot_q5_k_q8_k_scalar(row: &[u8], y: &[BlockQ8K]) -> f32 {
    dot_q45_k(row, y, true, q45_k_sumi_scalar)
}

/// Scalar reference Q6_K·Q8_K dot of one weight row (`[nb · 210]` bytes) with `y` (`[nb]`).
pub fn vec_dot_q6_k_q8_k_scalar(row: &[u8], y: &[BlockQ8K]) -> f32 {
    dot_q6_k(row, y, q6_k_sumi_scalar)
}

/// The float part shared by every Q4_K / Q5_K kernel: `sumi` gives a block's exact scaled
/// integer sum, the mins come from the Q8_K block sums.
#[inline(always)]
fn dot_q45_k(
    row: &[u8],
    y: &[BlockQ8K],
    five_bits: bool,
    sumi: impl Fn(&[u8], bool, &[u8; 8], &BlockQ8K) -> i32,
) -> f32 {
    let bb = if five_bits { Q5_K_BYTES } else { Q4_K_BYTES };
    let mut sumf = 0f32;
    for (b, yb) in row.chunks_exact(bb).zip(y) {
        let (sc, m) = scales_mins(&b[4..16]);
        let (d, dmin) = (yb.d * f16_at(b, 0), yb.d * f16_at(b, 2));
        sumf += d * sumi(b, five_bits, &sc, yb) as f32 - dmin * min_sum(&m, yb) as f32;
    }
    sumf
}

/// The float part shared by the Q6_K kernels: `sumi` before the −32 offset.
#[inline(always)]
fn dot_q6_k(row: &[u8], y: &[BlockQ8K], sumi: impl Fn(&[u8], &BlockQ8K) -> i32) -> f32 {
    let mut sumf = 0f32;
    for (b, yb) in row.chunks_exact(Q6_K_BYTES).zip(y) {
        let s = sumi(b, yb) - 32 * q6_offset_sum(&b[192..208], yb);
        sumf += yb.d * f16_at(b, 208) * s as f32;
    }
    sumf
}

/// AVX2 k-quant dots in the lane layout of llama.cpp's and candle's AVX2 kernels: each
/// sub-block's integer products, scaled by its integer scale, accumulate exactly in 8 `i32`
/// lanes; once per super-block the lanes are converted to f32 and fused-multiply-added with
/// `dy·d` into an 8-lane f32 accumulator; the min terms go through a 4-lane (Q4_K) or scalar
/// (Q5_K) accumulator; one horizontal sum at the end. Because the lanes hold exact integers,
/// the results equal candle's `avx::vec_dot_q{4,5,6}k_q8k` bit for bit (where candle uses
/// those kernels); they differ from the scalar references ([`super::vec_dot_q4_k_q8_k_scalar`]
/// …, exact per super-block) by float rounding only.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
pub(super) mod avx2 {
    use super::{BlockQ8K, Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES};
    use crate::runtime::quant::avx2::{f16x2_at, hsum_ps};
    use std::arch::x86_64::*;

    /// The 6-bit scales (i16 lanes 0..8) and mins (lanes 8..16) of a Q4_K / Q5_K super-block
    /// from its 12 packed bytes at `p` (see [`super::scales_mins`]), with 32-bit masks.
    ///
    /// # Safety
    /// `p` must point to 12 readable bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) unsafe fn scales_and_mins(p: *const u8) -> __m256i {
        const LOW6: u32 = 0x3f3f_3f3f;
        const LOW4: u32 = 0x0f0f_0f0f;
        const TOP2: u32 = 0x0303_0303;
        // SAFETY: the caller guarantees 12 readable bytes; unaligned reads.
        let (a0, a1, a2) = unsafe {
            let q = p.cast::<u32>();
            (
                q.read_unaligned(),
                q.add(1).read_unaligned(),
                q.add(2).read_unaligned(),
            )
        };
        let sc_lo = a0 & LOW6;
        let m_lo = a1 & LOW6;
        let sc_hi = (a2 & LOW4) | (((a0 >> 6) & TOP2) << 4);
        let m_hi = ((a2 >> 4) & LOW4) | (((a1 >> 6) & TOP2) << 4);
        _mm256_cvtepu8_epi16(_mm_set_epi32(
            m_hi as i32,
            m_lo as i32,
            sc_hi as i32,
            sc_lo as i32,
        ))
    }

    /// The i16 lane `j` (< 8) of each 128-bit half of `v`, broadcast over that half.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn broadcast_i16(v: __m256i, j: i32) -> __m256i {
        _mm256_shuffle_epi8(v, _mm256_set1_epi16((((2 * j + 1) << 8) | (2 * j)) as i16))
    }

    /// Σ of mins × pairwise Q8_K block sums, as 4 `i32` lanes (`m[2i]·(b[4i]+b[4i+1]) +
    /// m[2i+1]·(b[4i+2]+b[4i+3])`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn min_products(scales_mins: __m256i, y: &BlockQ8K) -> __m128i {
        // SAFETY: `bsums` is 16 i16 = 32 bytes; unaligned load.
        let sums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
        let pairs = _mm_hadd_epi16(_mm256_castsi256_si128(sums), _mm256_extracti128_si256::<1>(sums));
        _mm_madd_epi16(_mm256_extracti128_si256::<1>(scales_mins), pairs)
    }

    /// The quants of chunk `c` (< 4) of a Q4_K / Q5_K super-block: the 32 values of sub-block
    /// `2c` (low nibbles of bytes `32c..32c + 32` of `qs`) and of `2c + 1` (their high nibbles),
    /// with the fifth bits `2c` and `2c + 1` of `hbits` (the 32 `qh` bytes, Q5_K) on top.
    ///
    /// # Safety
    /// `qs` must point to 128 readable bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) unsafe fn q45_chunk(
        qs: *const u8,
        hbits: Option<__m256i>,
        c: usize,
    ) -> (__m256i, __m256i) {
        let m4 = _mm256_set1_epi8(0x0F);
        let one = _mm256_set1_epi8(1);
        // SAFETY: the caller guarantees 128 readable bytes; c < 4; unaligned load.
        let bits = unsafe { _mm256_loadu_si256(qs.add(32 * c).cast()) };
        let mut lo = _mm256_and_si256(bits, m4);
        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
        if let Some(h) = hbits {
            let h1 = _mm256_srl_epi16(h, _mm_cvtsi32_si128(2 * c as i32));
            let h2 = _mm256_srl_epi16(h, _mm_cvtsi32_si128(2 * c as i32 + 1));
            lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(_mm256_and_si256(h1, one)));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(_mm256_and_si256(h2, one)));
        }
        (lo, hi)
    }

    /// The 6-bit quants (0..=63) of half `n` (< 2) of a Q6_K super-block at `p`: four runs of
    /// 32 (values `128n + 32k ..`, k = 0..4), from `ql` (bytes `64n..64n + 64`) and `qh`
    /// (bytes `128 + 32n ..`).
    ///
    /// # Safety
    /// `p` must point to a whole 210-byte block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) unsafe fn q6_quants(p: *const u8, n: usize) -> [__m256i; 4] {
        let m4 = _mm256_set1_epi8(0x0F);
        let m2 = _mm256_set1_epi8(3);
        // SAFETY: the caller guarantees the block; n < 2; unaligned loads.
        let (a, bq, h) = unsafe {
            (
                _mm256_loadu_si256(p.add(64 * n).cast()),
                _mm256_loadu_si256(p.add(64 * n + 32).cast()),
                _mm256_loadu_si256(p.add(128 + 32 * n).cast()),
            )
        };
        let high = |bits: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(bits, m2));
        [
            _mm256_or_si256(_mm256_and_si256(a, m4), high(h)),
            _mm256_or_si256(_mm256_and_si256(bq, m4), high(_mm256_srli_epi16::<2>(h))),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(a), m4),
                high(_mm256_srli_epi16::<4>(h)),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(bq), m4),
                high(_mm256_srli_epi16::<6>(h)),
            ),
        ]
    }

    /// Integer lanes of a Q4_K / Q5_K super-block: Σ_c sc · maddubs(q, y) for the 8
    /// sub-blocks. `qs` points to the 128 nibble bytes, `qh` to the 32 high-bit bytes (Q5_K).
    ///
    /// # Safety
    /// `qs` must point to 128 readable bytes and `qh`, when given, to 32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q45_lanes(qs: *const u8, qh: Option<*const u8>, scales: __m256i, y: &BlockQ8K) -> __m256i {
        // Both 128-bit halves hold the 8 scales.
        let scales = _mm256_permute2x128_si256::<0x00>(scales, scales);
        // SAFETY: the caller guarantees the reads; 256 bytes of y.qs.
        unsafe {
            let hbits = qh.map(|h| _mm256_loadu_si256(h.cast()));
            let mut sumi = _mm256_setzero_si256();
            for c in 0..4 {
                let (lo, hi) = q45_chunk(qs, hbits, c);
                let y0 = _mm256_loadu_si256(y.qs.as_ptr().add(64 * c).cast());
                let y1 = _mm256_loadu_si256(y.qs.as_ptr().add(64 * c + 32).cast());
                let p0 = _mm256_madd_epi16(broadcast_i16(scales, 2 * c as i32), _mm256_maddubs_epi16(lo, y0));
                let p1 = _mm256_madd_epi16(
                    broadcast_i16(scales, 2 * c as i32 + 1),
                    _mm256_maddubs_epi16(hi, y1),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
            }
            sumi
        }
    }

    /// Q4_K·Q8_K of one weight row (`[nb · 144]` bytes) with `y` (`[nb]`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn dot_q4_k(row: &[u8], y: &[BlockQ8K]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm_setzero_ps();
        for (b, yb) in row.chunks_exact(Q4_K_BYTES).zip(y) {
            // SAFETY: `b` is one whole 144-byte block: d, dmin at 0, scales at 4, qs at 16.
            let ((dx, dmin), sm, sumi) = unsafe {
                let p = b.as_ptr();
                let sm = scales_and_mins(p.add(4));
                (f16x2_at(p), sm, q45_lanes(p.add(16), None, sm, yb))
            };
            let prod = min_products(sm, yb);
            acc_m = _mm_fmadd_ps(_mm_set1_ps(-yb.d * dmin), _mm_cvtepi32_ps(prod), acc_m);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(yb.d * dx), _mm256_cvtepi32_ps(sumi), acc);
        }
        let m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
        let m = _mm_add_ss(m, _mm_movehdup_ps(m));
        hsum_ps(acc) + _mm_cvtss_f32(m)
    }

    /// Q5_K·Q8_K of one weight row (`[nb · 176]` bytes) with `y` (`[nb]`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn dot_q5_k(row: &[u8], y: &[BlockQ8K]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        for (b, yb) in row.chunks_exact(Q5_K_BYTES).zip(y) {
            // SAFETY: `b` is one whole 176-byte block: d, dmin, scales at 4, qh at 16, qs at 48.
            let ((dx, dmin), sm, sumi) = unsafe {
                let p = b.as_ptr();
                let sm = scales_and_mins(p.add(4));
                (f16x2_at(p), sm, q45_lanes(p.add(48), Some(p.add(16)), sm, yb))
            };
            let prod = min_products(sm, yb);
            let two = _mm_add_epi32(prod, _mm_unpackhi_epi64(prod, prod));
            let one = _mm_add_epi32(two, _mm_shuffle_epi32::<0b01>(two));
            summs += -yb.d * dmin * _mm_cvtsi128_si32(one) as f32;
            acc = _mm256_fmadd_ps(_mm256_set1_ps(yb.d * dx), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_ps(acc) + summs
    }

    /// Q6_K·Q8_K of one weight row (`[nb · 210]` bytes) with `y` (`[nb]`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::runtime) fn dot_q6_k(row: &[u8], y: &[BlockQ8K]) -> f32 {
        let off = _mm256_set1_epi8(32);
        let mut acc = _mm256_setzero_ps();
        for (b, yb) in row.chunks_exact(Q6_K_BYTES).zip(y) {
            let d = yb.d * half::f16::from_bits(u16::from_le_bytes([b[208], b[209]])).to_f32();
            // SAFETY: `b` is one whole 210-byte block: ql at 0, qh at 128, scales at 192.
            let sumi = unsafe {
                let p = b.as_ptr();
                let mut sumi = _mm256_setzero_si256();
                for n in 0..2 {
                    for (k, q) in q6_quants(p, n).into_iter().enumerate() {
                        let yv = _mm256_loadu_si256(yb.qs.as_ptr().add(128 * n + 32 * k).cast());
                        // (q − 32)·y per byte pair, exact in i16 (|·| ≤ 32 · 128 · 2).
                        let p16 =
                            _mm256_sub_epi16(_mm256_maddubs_epi16(q, yv), _mm256_maddubs_epi16(off, yv));
                        // Scale of group g for bytes 0..16 of the run, of g + 1 for 16..32.
                        let g = 192 + 8 * n + 2 * k;
                        let pair = _mm256_set_m128i(
                            _mm_set1_epi16(b[g + 1] as i8 as i16),
                            _mm_set1_epi16(b[g] as i8 as i16),
                        );
                        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pair, p16));
                    }
                }
                sumi
            };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_ps(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::quant::{ActScratch, QDType, QMatrix};
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    /// xorshift64* in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.next() * scale).collect()
        }
    }

    fn to_vec(t: Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    const FORMATS: [(GgmlDType, QDType); 3] = [
        (GgmlDType::Q4K, QDType::Q4K),
        (GgmlDType::Q5K, QDType::Q5K),
        (GgmlDType::Q6K, QDType::Q6K),
    ];

    /// Weights with the awkward blocks: all zero, constant, one large value among small ones,
    /// all negative, and tiny values.
    fn weights(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
        let mut w = rng.vec(rows * cols, 0.6);
        let blocks = w.len() / QK_K;
        let mut block = |i: usize, f: &dyn Fn(usize, f32) -> f32| {
            if i < blocks {
                for (j, v) in w[i * QK_K..(i + 1) * QK_K].iter_mut().enumerate() {
                    *v = f(j, *v);
                }
            }
        };
        block(0, &|_, _| 0.0);
        block(1, &|_, _| 0.25);
        block(2, &|j, v| if j == 77 { 40.0 } else { v * 0.01 });
        block(3, &|_, v| -v.abs() - 0.1);
        block(4, &|_, v| v * 1e-6);
        w
    }

    #[test]
    fn q8_k_simd_equals_the_scalar_form_bit_for_bit() {
        let mut rng = Rng(0x51AD_0008);
        let mut blocks: Vec<Vec<f32>> = (0..200).map(|i| rng.vec(QK_K, 0.01 + i as f32)).collect();
        // Exact halves after scaling (max 127 → iscale −1), ties of magnitude with both signs,
        // a NaN, infinities' neighbours, denormals and all-equal blocks.
        blocks.push(
            (0..QK_K)
                .map(|i| if i == 3 { 127.0 } else { (i as f32 - 128.0) / 2.0 })
                .collect(),
        );
        blocks.push((0..QK_K).map(|i| if i % 2 == 0 { -5.0 } else { 5.0 }).collect());
        blocks.push(
            (0..QK_K)
                .map(|i| if i == 9 { f32::NAN } else { i as f32 * 0.1 - 3.0 })
                .collect(),
        );
        blocks.push(
            (0..QK_K)
                .map(|i| if i == 0 { f32::MAX } else { -f32::MAX / i as f32 })
                .collect(),
        );
        blocks.push((0..QK_K).map(|i| i as f32 * 1e-41).collect());
        blocks.push(vec![-0.75; QK_K]);
        blocks.push(vec![0.0; QK_K]);
        for (i, x) in blocks.iter().enumerate() {
            let (a, b) = (q8_k_block(x), q8_k_block_scalar(x));
            assert_eq!(a.d.to_bits(), b.d.to_bits(), "block {i}: d");
            assert_eq!(a.qs, b.qs, "block {i}: quants");
            assert_eq!(a.bsums, b.bsums, "block {i}: sums");
        }
    }

    #[test]
    fn q8_k_equals_candles_quantizer() {
        let mut rng = Rng(0x0008_000B);
        let mut x = rng.vec(4 * QK_K, 3.0);
        x[..QK_K].fill(0.0);
        x[QK_K + 5] = -9.0; // The signed extreme maps to +127 (d < 0).
        x[2 * QK_K..3 * QK_K].iter_mut().for_each(|v| *v = v.abs());
        let t = Tensor::from_vec(x.clone(), (1, x.len()), &Device::Cpu).unwrap();
        let theirs = QTensor::quantize(&t, GgmlDType::Q8K).unwrap();
        let bytes = theirs.data().unwrap();
        let mut ours = Vec::new();
        quantize_q8_k(&x, &mut ours).unwrap();
        assert_eq!(bytes.len(), ours.len() * 292);
        for (b, o) in bytes.chunks_exact(292).zip(&ours) {
            assert_eq!(
                f32::from_le_bytes(b[..4].try_into().unwrap()).to_bits(),
                o.d.to_bits()
            );
            assert!(b[4..260].iter().zip(&o.qs).all(|(&a, &q)| a as i8 == q));
            let sums: Vec<i16> = b[260..]
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            assert_eq!(sums, o.bsums);
        }
        assert_eq!((ours[0].d, ours[1].qs[5]), (0.0, -127));
        assert!(quantize_q8_k(&[0.0; 255], &mut ours).is_err());
    }

    /// Blocks written by candle's own quantizer: our dequantization and our SIMD dots equal
    /// candle's bit for bit; our scalar references agree to rounding, and all agree with the
    /// f32 product of the dequantized weights to Q8_K noise. Odd row
    /// counts, one and several blocks per row, and a matrix above the parallel threshold.
    #[test]
    fn k_quants_against_candle_and_the_reference_dequantization() {
        let mut rng = Rng(0x6B71_0A17);
        let mut scratch = ActScratch::new();
        for (gdt, dt) in FORMATS {
            for (rows, cols) in [(1, 256), (7, 512), (67, 1536), (1203, 2304)] {
                let w = weights(&mut rng, rows, cols);
                let t = Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu).unwrap();
                let q = QTensor::quantize(&t, gdt).unwrap();
                let m = QMatrix::new(dt, rows, cols, q.data().unwrap().into_owned()).unwrap();
                let theirs = to_vec(q.dequantize(&Device::Cpu).unwrap());
                let ours = m.dequantize();
                let same = ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{dt:?} {rows}x{cols} dequantization");
                // The quantizer is sane: within 1/4 of each block's range of the input. Block 1
                // is skipped: candle's Q4_K/Q5_K quantizer (ggml's old `make_qkx1_quants`) gives
                // a constant block scale 0 and min 0.
                let blocks = w.chunks(QK_K).zip(ours.chunks(QK_K)).enumerate();
                for (i, (wb, ob)) in blocks.filter(|(i, _)| *i != 1) {
                    let range = wb.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let err = wb.iter().zip(ob).fold(0f32, |e, (a, b)| e.max((a - b).abs()));
                    assert!(
                        err <= range / 4.0 + 1e-6,
                        "{dt:?} block {i}: error {err}, range {range}"
                    );
                }
                let x = rng.vec(cols, 2.0);
                let xt = Tensor::from_vec(x.clone(), (1, cols), &Device::Cpu).unwrap();
                let want = to_vec(QMatMul::from_qtensor(q).unwrap().forward(&xt).unwrap());
                let (mut y, mut ys) = (vec![0f32; rows], vec![0f32; rows]);
                m.matvec(&x, &mut y, &mut scratch).unwrap();
                m.matvec_scalar(&x, &mut ys, &mut scratch).unwrap();
                for r in 0..rows {
                    let wr = &ours[r * cols..(r + 1) * cols];
                    let exact: f64 = wr.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let mag: f32 = wr.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
                    // SIMD (float per lane) and scalar (exact per super-block) differ by rounding.
                    assert!(
                        (y[r] - ys[r]).abs() <= 1e-5 * mag + 1e-30,
                        "{dt:?} {rows}x{cols} r{r}: SIMD {} scalar {}",
                        y[r],
                        ys[r]
                    );
                    // candle's AVX2 kernels have our lane layout, so the bits agree. (On
                    // AVX-512-VNNI CPUs candle repacks Q4_K matrices whose row count is a
                    // multiple of 16 and then differs by rounding; these row counts are not.)
                    // Builds without AVX2 run both sides' scalar forms, equal to rounding.
                    if cfg!(all(target_arch = "x86_64", target_feature = "avx2")) {
                        assert_eq!(
                            y[r].to_bits(),
                            want[r].to_bits(),
                            "{dt:?} {rows}x{cols} r{r}: ours {} candle {}",
                            y[r],
                            want[r]
                        );
                    } else {
                        assert!(
                            (y[r] - want[r]).abs() <= 1e-5 * mag + 1e-30,
                            "{dt:?} {rows}x{cols} r{r}: ours {} candle {}",
                            y[r],
                            want[r]
                        );
                    }
                    // Q8_K steps are ≤ 1/254 of each block's largest activation.
                    assert!(
                        (y[r] as f64 - exact).abs() <= 0.01 * mag as f64 + 1e-30,
                        "{dt:?} {rows}x{cols} r{r}: ours {} f32 {exact}",
                        y[r]
                    );
                }
                // matmul of 3 inputs equals 3 matvecs bit for bit.
                let xs = rng.vec(3 * cols, 1.0);
                let mut ys3 = vec![0f32; 3 * rows];
                m.matmul(&xs, 3, &mut ys3, &mut scratch).unwrap();
                for i in 0..3 {
                    m.matvec(&xs[i * cols..(i + 1) * cols], &mut y, &mut scratch)
                        .unwrap();
                    assert_eq!(&ys3[i * rows..(i + 1) * rows], &y[..], "{dt:?} input {i}");
                }
            }
        }
    }

    #[test]
    fn k_quant_shapes_are_checked() {
        assert_eq!(QDType::Q4K.row_bytes(512), Some(288));
        assert_eq!(QDType::Q6K.row_bytes(96), None);
        assert!(QMatrix::new(QDType::Q5K, 1, 96, vec![0; 66]).is_err());
        assert!(QMatrix::new(QDType::Q5K, 2, 256, vec![0; 351]).is_err());
        let m = QMatrix::new(QDType::Q6K, 2, 256, vec![0; 420]).unwrap();
        let mut s = ActScratch::new();
        let mut y = [1f32; 2];
        m.matvec(&[1.0; 256], &mut y, &mut s).unwrap();
        assert_eq!(y, [0.0; 2]);
        assert!(m.matvec(&[1.0; 255], &mut y, &mut s).is_err());
        let mut out = [0f32; 256];
        dequantize_k(7, &[0; 7], &mut out);
        assert_eq!(out, [0.0; 256]);
    }
}
