//! Prompt products on quantized weights without an f32 copy of the layer (the
//! [`super::linear::MatPath::Tiled`] path).
//!
//! `y = x̂ · Ŵᵀ` for `x: [n, k]` and a quantized `W: [out, k]`, where
//! - `x̂` is `x` rounded to the 8-bit grid the decode kernels quantize activations to
//!   ([`QMatrix::round_activations`]: Q8_0, Q8_1 or Q8_K, whichever the format pairs with), and
//! - `Ŵ` is `W` dequantized ([`QMatrix::tiled_row`]; for Q4_1 / Q5_1 each row and input carry
//!   one more value per 32-value block, the weight minimum and Q8_1's f16 block sum, so the
//!   minimum term is the kernels' own) a group of [`GROUP`] panels of [`PANEL`] rows at a time into a
//!   per-thread buffer (`GROUP · 16 · k` f32: 144 KiB at `k = 576`), in the dense path's panel
//!   layout, and multiplied there by every input with the dense path's micro-kernel
//!   ([`super::dense`]) while it is in cache.
//!
//! **Why**: the integer kernels spend most of their instructions per 32-value block on scale
//! products and float accumulation, so a 512-token prompt ran at about a fifth of the f32
//! micro-kernel's speed; dequantizing a tile costs `1/n` of its multiply-adds.
//!
//! **Numbers**: every output is one chain of fused multiply-adds over `i = 0 … w−1` in order
//! on `x̂` and `Ŵ` — bit for bit [`super::dense::PackedMatrix::matmul`] of the `Ŵ` rows on
//! `x̂`, whatever the thread count — and the quantized kernels' value up to float rounding:
//! they sum exact integer block dots and then scale, this sums the same products in f32
//! (measured: ≤ 1.8e-6 of `Σ|x̂ᵢ·ŵᵢ|` in every format, `tests` below).
//!
//! Work is split over the pool by groups of weight rows; each thread dequantizes only its
//! own rows, once per call.

use std::cell::RefCell;

use super::dense::{MR, PANEL, kernel};
use super::pool::{DisjointWrites, Pool};
use super::quant::{QDType, QMatrix, QuantError};

/// Fewest inputs for which the tiled product is at least as fast as the quantized kernels in
/// format `dt`: below it, dequantizing the weights is not repaid. Measured with
/// `ACT_BENCH_ONLY=tiled cargo bench --bench runtime` on SmolLM2's MLP shapes (2 threads):
/// speed-ups at 32 / 64 / 128 / 512 inputs of Q4_1 0.79 / 1.15 / 1.45 / 1.84×, Q4_K
/// 0.49 / 0.74 / 0.99 / 1.34×, Q5_K 0.41 / 0.63 / 0.85 / 1.17×.
pub fn min_inputs(dt: QDType) -> usize {
    match dt {
        QDType::Q5_1 => 32,
        QDType::Q4_1 => 48,
        QDType::Q4_0 | QDType::Q5_0 | QDType::Q6K => 64,
        QDType::Q8_0 | QDType::Q4K => 128,
        QDType::Q5K => 256,
    }
}

/// Panels of [`PANEL`] weight rows dequantized together: every block of [`MR`] inputs meets
/// all of them while it is in L1.
const GROUP: usize = 4;

thread_local! {
    /// Per thread: one panel's dequantized rows `[PANEL][w]` and a group of panels `[GROUP][w][PANEL]`
    /// (`w` = [`QMatrix::tiled_width`]),
    /// reused across calls.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `y = x̂ · Ŵᵀ` (see the module doc) for `x: [n, cols]` into `y: [n, rows]`, both row-major,
/// on the threads of `pool`. Allocates `x̂` (`[n, tiled_width]`) per call.
pub fn matmul(pool: &Pool, q: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), QuantError> {
    let (out, k) = (q.rows(), q.cols());
    let len = |what, expected: Option<usize>, got| match expected {
        Some(e) if e == got => Ok(()),
        _ => Err(QuantError::Len {
            what,
            expected: expected.unwrap_or(usize::MAX),
            got,
        }),
    };
    len("tiled product input", n.checked_mul(k), x.len())?;
    len("tiled product output", n.checked_mul(out), y.len())?;
    if n == 0 || out == 0 {
        return Ok(());
    }
    let mut xr = Vec::new();
    q.round_activations(x, &mut xr)?;
    let groups = out.div_ceil(GROUP * PANEL);
    let ys = DisjointWrites::new(y);
    pool.run(groups, &|g| {
        SCRATCH.with_borrow_mut(|(row, panels)| rows_group(q, &xr, n, g, &ys, row, panels));
    });
    Ok(())
}

/// Weight rows `[g · GROUP · PANEL, …)` (up to [`GROUP`] panels) against every input of `x`
/// (`[n, tiled_width]`, already rounded), into their columns of `ys` (`[n, out]`).
fn rows_group(
    q: &QMatrix,
    x: &[f32],
    n: usize,
    g: usize,
    ys: &DisjointWrites<'_, f32>,
    row: &mut Vec<f32>,
    panels: &mut Vec<f32>,
) {
    let (out, k) = (q.rows(), q.tiled_width());
    let r0 = g * GROUP * PANEL;
    let r1 = (r0 + GROUP * PANEL).min(out);
    let count = (r1 - r0).div_ceil(PANEL);
    row.resize(PANEL * k, 0.0);
    panels.resize(GROUP * k * PANEL, 0.0);
    for (p, panel) in panels.chunks_exact_mut(k * PANEL).take(count).enumerate() {
        for (c, dst) in row.chunks_exact_mut(k).enumerate() {
            let r = r0 + p * PANEL + c;
            // Rows past the matrix are zero (their outputs are not written); a row in range
            // cannot fail (`dst` holds `tiled_width` values).
            if r >= r1 || q.tiled_row(r, dst).is_err() {
                dst.fill(0.0);
            }
        }
        to_panel(row, k, panel);
    }
    let mut tile = [[0.0f32; PANEL]; MR];
    for rb in (0..n).step_by(MR) {
        let nr = MR.min(n - rb);
        let xs = &x[rb * k..(rb + nr) * k];
        for (p, panel) in panels.chunks_exact(k * PANEL).take(count).enumerate() {
            kernel(xs, k, nr, k, panel, &mut tile);
            let c0 = r0 + p * PANEL;
            let cols = PANEL.min(out - c0);
            for (i, t) in tile.iter().take(nr).enumerate() {
                // SAFETY: group `g` alone writes columns `r0..r1` (disjoint across groups),
                // each index once.
                unsafe { ys.set_slice((rb + i) * out + c0, &t[..cols]) };
            }
        }
    }
}

/// `rows` (`[16][w]`, row-major) into `panel` (`[w][16]`): the transpose, 8 × 8 values at a
/// time in AVX registers (a value-by-value scatter, one store per 64-byte line, had cost more
/// than dequantizing).
fn to_panel(rows: &[f32], w: usize, panel: &mut [f32]) {
    #[cfg_attr(not(all(target_arch = "x86_64", target_feature = "avx2")), allow(unused_mut))]
    let mut done = 0;
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if rows.len() >= PANEL * w && panel.len() >= PANEL * w {
        done = w / 8 * 8;
        for i in (0..done).step_by(8) {
            for half in 0..2 {
                // SAFETY: rows `8·half … 8·half + 7` hold `w ≥ i + 8` values each, and the
                // panel rows `i … i + 7` hold 16 each (lengths checked above).
                unsafe {
                    avx2::transpose8(
                        rows.as_ptr().add(8 * half * w + i),
                        w,
                        panel.as_mut_ptr().add(i * PANEL + 8 * half),
                    )
                };
            }
        }
    }
    for i in done..w {
        for (c, v) in panel[i * PANEL..(i + 1) * PANEL].iter_mut().enumerate() {
            *v = rows[c * w + i];
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
mod avx2 {
    use std::arch::x86_64::*;

    use super::PANEL;

    /// The 8 × 8 block at `src` (row stride `stride`) transposed into `dst` (row stride
    /// [`PANEL`]).
    ///
    /// # Safety
    /// `src + r·stride + 0..8` must be readable and `dst + r·PANEL + 0..8` writable for r < 8.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose8(src: *const f32, stride: usize, dst: *mut f32) {
        // SAFETY: the caller's contract; unaligned loads and stores.
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(src.add(j * stride)));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (j, v) in out.into_iter().enumerate() {
                _mm256_storeu_ps(dst.add(j * PANEL), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::dense::PackedMatrix;
    use crate::runtime::quant::ActScratch;
    use candle_core::quantized::GgmlDType;

    /// Deterministic values in [-1, 1) with some large ones.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::runtime::test_values::values(n, seed, 17, (6.0, 0.5))
    }

    /// `rows × cols` random weights quantized by candle into `dt`, as our matrix.
    fn matrix(dt: GgmlDType, rows: usize, cols: usize, seed: u64) -> QMatrix {
        crate::runtime::test_values::quantized_matrix(dt, rows, cols, seed)
    }

    const FORMATS: [GgmlDType; 8] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];

    #[test]
    fn equals_the_dense_product_of_the_dequantized_matrix_bit_for_bit() {
        for dt in FORMATS {
            // 83 rows: a partial panel and a partial group; 37 inputs: a partial MR block.
            let (rows, cols, n) = (83, 512, 37);
            let q = matrix(dt, rows, cols, 11);
            let x = values(n * cols, 5);
            let mut xr = Vec::new();
            q.round_activations(&x, &mut xr).unwrap_or_else(|e| panic!("{e}"));
            let w = q.tiled_width();
            let packed = PackedMatrix::pack_rows(rows, w, |r, row| {
                q.tiled_row(r, row).unwrap_or_else(|e| panic!("{e}"));
            });
            let mut want = vec![0.0; n * rows];
            packed.matmul_on(&Pool::new(1), &xr, n, &mut want);
            // The weight operand is the dequantized row (values plus their block's minimum).
            let (deq, mut t) = (q.dequantize(), vec![0.0; w]);
            for (r, d) in deq.chunks_exact(cols).enumerate() {
                q.tiled_row(r, &mut t).unwrap_or_else(|e| panic!("{e}"));
                let (vals, mins) = t.split_at(cols);
                for (i, (&v, &want)) in vals.iter().zip(d).enumerate() {
                    let got = mins.get(i / 32).map_or(v, |m| v + m);
                    assert_eq!(got.to_bits(), want.to_bits(), "{dt:?} row {r} value {i}");
                }
            }
            for threads in [1, 3] {
                let mut got = vec![f32::NAN; n * rows];
                matmul(&Pool::new(threads), &q, &x, n, &mut got).unwrap_or_else(|e| panic!("{e}"));
                assert!(
                    got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{dt:?}, {threads} threads: differs from the dense product"
                );
            }
        }
    }

    #[test]
    fn matches_the_quantized_kernels_up_to_float_rounding() {
        for dt in FORMATS {
            let (rows, cols, n) = (48, 768, 33);
            let q = matrix(dt, rows, cols, 3);
            let x = values(n * cols, 9);
            let mut got = vec![0.0; n * rows];
            matmul(&Pool::new(2), &q, &x, n, &mut got).unwrap_or_else(|e| panic!("{e}"));
            let mut want = vec![0.0; n * rows];
            q.matmul(&x, n, &mut want, &mut ActScratch::new())
                .unwrap_or_else(|e| panic!("{e}"));
            // Scale of a product: Σ|x̂ᵢ·ŵᵢ| of the row; the two orders differ by rounding only.
            let w = q.dequantize();
            let mut xr = Vec::new();
            q.round_activations(&x, &mut xr).unwrap_or_else(|e| panic!("{e}"));
            let width = q.tiled_width();
            let mut worst = 0f64;
            for r in 0..n {
                for j in 0..rows {
                    let scale: f64 = (0..cols)
                        .map(|i| (xr[r * width + i] * w[j * cols + i]).abs() as f64)
                        .sum();
                    let d = (got[r * rows + j] - want[r * rows + j]).abs() as f64;
                    worst = worst.max(d / scale.max(1e-30));
                }
            }
            // Every format agrees to f32 rounding (Q4_1 / Q5_1 included: their minimum meets
            // Q8_1's f16 block sum `s` as in the kernels).
            let limit = 2e-6;
            println!("{dt:?}: worst relative difference {worst:e}");
            assert!(worst <= limit, "{dt:?}: relative difference {worst:e}");
            // And x̂ differs from x by the 8-bit rounding only.
            for (xr, x) in xr.chunks_exact(width).zip(x.chunks_exact(cols)) {
                assert!(xr.iter().zip(x).all(|(a, b)| (a - b).abs() <= 6.0 / 127.0));
            }
        }
    }

    #[test]
    fn panels_are_the_transpose_for_every_width() {
        for w in [1usize, 7, 8, 9, 24, 33, 100] {
            let rows: Vec<f32> = (0..PANEL * w).map(|i| i as f32).collect();
            let mut panel = vec![-1.0f32; PANEL * w];
            to_panel(&rows, w, &mut panel);
            for i in 0..w {
                for c in 0..PANEL {
                    assert_eq!(panel[i * PANEL + c], rows[c * w + i], "w {w}, value {i}, row {c}");
                }
            }
        }
    }

    #[test]
    fn bad_lengths_are_errors_and_empty_shapes_are_fine() {
        let q = matrix(GgmlDType::Q8_0, 16, 64, 1);
        let pool = Pool::new(1);
        assert!(matmul(&pool, &q, &[0.0; 63], 1, &mut [0.0; 16]).is_err());
        assert!(matmul(&pool, &q, &[0.0; 64], 1, &mut [0.0; 15]).is_err());
        assert!(matmul(&pool, &q, &[], 0, &mut []).is_ok());
        let mut xr = Vec::new();
        assert!(q.round_activations(&[0.0; 40], &mut xr).is_err());
    }
}
