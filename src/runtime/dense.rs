//! Deterministic f32 matrix products `y = x · Wᵀ` for the dense path (fitting, perplexity,
//! f32/f16 weights).
//!
//! `x` is `[n, k]` row-major and `W` is `[out, k]`, kept packed ([`PackedMatrix`]) in panels of
//! 16 output columns, `[panel][k][16]`, so the micro-kernel reads 16 weights of one input
//! position with two vector loads and broadcasts one input of each of 6 rows against them.
//!
//! **Every output is one chain of fused multiply-adds over `i = 0, 1, …, k−1` in order**,
//! `y ← fma(x[i], w[i], y)` from `y = 0`: blocking, the thread count, the batch size and the
//! CPU's cache sizes never change it, so the same inputs give the same bits on any x86-64
//! machine with AVX2 + FMA and in any build profile; the scalar fallback (no AVX2/FMA at
//! compile time) does the same operations with `f32::mul_add` and gives the same bits too.
//!
//! Why not candle's matmul: its `gemm` backend splits `k` into blocks whose size it derives
//! from the L1 cache geometry it reads from `cpuid` (e.g. 288 + 288 for `k = 576` with a 32 KiB
//! 8-way L1, one block of 576 with a 48 KiB 12-way one), so the rounding — and through fitted
//! maps, the sampled tokens — differed between machines.

use super::pool::Pool;

/// Output columns per packed panel (two AVX2 registers of f32).
pub const PANEL: usize = 16;
/// Rows of `x` per micro-kernel call.
pub(super) const MR: usize = 6;
/// Rows of `x` kept hot (in L2) while a task walks every panel.
const X_BLOCK: usize = 96;
/// Below this many multiply-adds a product runs on the calling thread only.
const PAR_MIN_FLOPS: usize = 1 << 21;

/// A weight matrix `[out, k]` packed in panels of [`PANEL`] output columns: panel `p` holds
/// `w[16p + c][i]` at `[p][i][c]`, zero past the last row of `W`.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    out: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedMatrix {
    /// Packs row-major `w` (`[out, k]`; `w.len()` must be `out·k`, checked by the caller).
    pub fn pack(w: &[f32], out: usize, k: usize) -> Self {
        debug_assert_eq!(w.len(), out * k);
        Self::pack_rows(out, k, |j, row| {
            if let Some(src) = w.get(j * k..(j + 1) * k) {
                row.copy_from_slice(src);
            }
        })
    }

    /// Packs an `[out, k]` matrix whose rows `fill(j, row)` writes into a `[k]` buffer (e.g.
    /// dequantized one at a time), without a row-major copy of the whole matrix.
    pub fn pack_rows(out: usize, k: usize, mut fill: impl FnMut(usize, &mut [f32])) -> Self {
        let panels = out.div_ceil(PANEL);
        let mut data = vec![0.0f32; panels * k * PANEL];
        let mut row = vec![0.0f32; k];
        for j in 0..out {
            fill(j, &mut row);
            let (p, c) = (j / PANEL, j % PANEL);
            let panel = &mut data[p * k * PANEL..(p + 1) * k * PANEL];
            for (i, &v) in row.iter().enumerate() {
                panel[i * PANEL + c] = v;
            }
        }
        Self { out, k, data }
    }

    /// Bytes held by the packed weights.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }

    /// The row-major `[out, k]` matrix back.
    pub fn unpack(&self) -> Vec<f32> {
        let mut w = vec![0.0f32; self.out * self.k];
        for (j, row) in w.chunks_exact_mut(self.k.max(1)).enumerate() {
            let (p, c) = (j / PANEL, j % PANEL);
            for (i, v) in row.iter_mut().enumerate() {
                *v = self.data[(p * self.k + i) * PANEL + c];
            }
        }
        w
    }

    /// Output width.
    pub fn out(&self) -> usize {
        self.out
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }

    /// `y[r, j] = Σ_i x[r, i] · w[j, i]` for `x: [n, k]` into `y: [n, out]` (lengths checked by
    /// the caller, [`super::linear::Linear::forward`]).
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        self.matmul_on(Pool::global(), x, n, y);
    }

    /// [`Self::matmul`] on the threads of `pool`; the result does not depend on the pool.
    pub fn matmul_on(&self, pool: &Pool, x: &[f32], n: usize, y: &mut [f32]) {
        debug_assert_eq!(x.len(), n * self.k);
        debug_assert_eq!(y.len(), n * self.out);
        if n == 0 || self.out == 0 {
            return;
        }
        if self.k == 0 {
            y.fill(0.0);
            return;
        }
        let threads = pool.threads();
        let flops = n.saturating_mul(self.out).saturating_mul(self.k);
        if threads <= 1 || flops < PAR_MIN_FLOPS || n < 2 * MR {
            self.rows(x, y);
        } else {
            // Pieces of whole micro-kernel row groups, ≥ 2 per thread for balance.
            let rows = n.div_ceil(2 * threads).next_multiple_of(MR);
            let (k, out) = (self.k, self.out);
            pool.for_each_piece(y, rows * out, &|i, y| {
                let r0 = i * rows;
                let r1 = r0 + y.len() / out;
                self.rows(&x[r0 * k..r1 * k], y);
            });
        }
    }

    /// Every row of `x` (`[rows, k]`) against every panel, into `y` (`[rows, out]`).
    fn rows(&self, x: &[f32], y: &mut [f32]) {
        let k = self.k;
        let rows = y.len() / self.out;
        let mut tile = [[0.0f32; PANEL]; MR];
        for r0 in (0..rows).step_by(X_BLOCK) {
            let r1 = (r0 + X_BLOCK).min(rows);
            for (p, panel) in self.data.chunks_exact(k * PANEL).enumerate() {
                let c0 = p * PANEL;
                let cols = PANEL.min(self.out - c0);
                for rb in (r0..r1).step_by(MR) {
                    let nr = MR.min(r1 - rb);
                    kernel(&x[rb * k..(rb + nr) * k], k, nr, k, panel, &mut tile);
                    for (i, t) in tile.iter().take(nr).enumerate() {
                        let at = (rb + i) * self.out + c0;
                        y[at..at + cols].copy_from_slice(&t[..cols]);
                    }
                }
            }
        }
    }
}

/// `nr ≤ MR` rows of `x` (row `r` is `x[r·stride .. r·stride + k]`, `stride ≥ k`) against one
/// packed panel (`[k][16]`), into `tile[row][column]`.
#[inline]
pub(super) fn kernel(
    x: &[f32],
    stride: usize,
    nr: usize,
    k: usize,
    panel: &[f32],
    tile: &mut [[f32; PANEL]; MR],
) {
    macro_rules! go {
        ($r:literal) => {{
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            // SAFETY: compiled only when AVX2 and FMA are enabled for the build; the slices'
            // lengths (`$r·k` and `16·k`) are asserted inside.
            unsafe {
                avx2::kernel::<$r>(x, stride, k, panel, tile)
            }
            #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
            scalar_kernel::<$r>(x, stride, k, panel, tile)
        }};
    }
    match nr {
        6 => go!(6),
        5 => go!(5),
        4 => go!(4),
        3 => go!(3),
        2 => go!(2),
        _ => go!(1),
    }
}

/// The reference: the same multiply-adds in the same order as the AVX2 kernel, one value at a
/// time. Used where AVX2/FMA are not compiled in, and by the tests as the oracle.
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"),
    allow(dead_code)
)]
fn scalar_kernel<const R: usize>(
    x: &[f32],
    stride: usize,
    k: usize,
    panel: &[f32],
    tile: &mut [[f32; PANEL]; MR],
) {
    for (r, t) in tile.iter_mut().take(R).enumerate() {
        *t = [0.0; PANEL];
        for i in 0..k {
            let a = x[r * stride + i];
            for (c, v) in t.iter_mut().enumerate() {
                *v = a.mul_add(panel[i * PANEL + c], *v);
            }
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{MR, PANEL};

    /// See [`super::scalar_kernel`]: 2·R accumulators, one broadcast per row and input.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel<const R: usize>(
        x: &[f32],
        stride: usize,
        k: usize,
        panel: &[f32],
        tile: &mut [[f32; PANEL]; MR],
    ) {
        assert!(R <= MR && stride >= k && panel.len() >= k * PANEL);
        assert!(R == 0 || x.len() >= (R - 1) * stride + k);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let (xp, wp) = (x.as_ptr(), panel.as_ptr());
        for i in 0..k {
            // SAFETY: `i < k`, so `16i + 16 ≤ panel.len()` and `r·stride + i < x.len()`
            // (asserted).
            unsafe {
                let w0 = _mm256_loadu_ps(wp.add(i * PANEL));
                let w1 = _mm256_loadu_ps(wp.add(i * PANEL + 8));
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_broadcast_ss(&*xp.add(r * stride + i));
                    a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                    a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
                }
            }
        }
        for (t, a) in tile.iter_mut().zip(&acc) {
            // SAFETY: each row of `tile` holds 16 f32.
            unsafe {
                _mm256_storeu_ps(t.as_mut_ptr(), a[0]);
                _mm256_storeu_ps(t.as_mut_ptr().add(8), a[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) with varied exponents.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::runtime::test_values::values(n, seed, 4, (100.0, 0.37))
    }

    /// The oracle: each output as one sequential `mul_add` chain, straight from row-major `W`.
    fn reference(x: &[f32], n: usize, w: &[f32], out: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0.0; n * out];
        for r in 0..n {
            for j in 0..out {
                y[r * out + j] = (0..k).fold(0.0f32, |acc, i| x[r * k + i].mul_add(w[j * k + i], acc));
            }
        }
        y
    }

    fn product(x: &[f32], n: usize, w: &[f32], out: usize, k: usize) -> Vec<f32> {
        let mut y = vec![f32::NAN; n * out];
        PackedMatrix::pack(w, out, k).matmul(x, n, &mut y);
        y
    }

    #[test]
    fn every_shape_equals_the_sequential_fma_order_bit_for_bit() {
        for &(n, out, k) in &[
            (1, 1, 1),
            (1, 7, 9),
            (5, 4, 8),
            (7, 17, 17),
            (13, 33, 64),
            (6, 16, 576),
            (200, 5, 31),
        ] {
            let x = values(n * k, 1 + n as u64);
            let w = values(out * k, 7 + k as u64);
            let y = product(&x, n, &w, out, k);
            let r = reference(&x, n, &w, out, k);
            assert!(
                y.iter().zip(&r).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{n}×{out}×{k} differs from the sequential order"
            );
            for (j, v) in y.iter().enumerate() {
                let (r, c) = (j / out, j % out);
                let e: f64 = (0..k).map(|i| x[r * k + i] as f64 * w[c * k + i] as f64).sum();
                assert!((*v as f64 - e).abs() <= 1e-3 * (1.0 + e.abs()), "{v} vs {e}");
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_batch_or_the_thread_count() {
        let (n, out, k) = (70, 600, 576); // above PAR_MIN_FLOPS: the parallel split runs
        let x = values(n * k, 3);
        let w = PackedMatrix::pack(&values(out * k, 4), out, k);
        let run = |threads: usize, rows: usize| {
            let pool = Pool::new(threads);
            let mut y = vec![0.0; rows * out];
            w.matmul_on(&pool, &x[..rows * k], rows, &mut y);
            y
        };
        let all1 = run(1, n);
        assert_eq!(all1, run(3, n), "thread count changed the product");
        assert_eq!(
            &all1[..out],
            &run(2, 1)[..],
            "row 0 alone differs from row 0 in a batch"
        );
        assert_eq!(&all1[..5 * out], &run(2, 5)[..]);
    }

    #[test]
    fn packing_round_trips_and_empty_shapes_work() {
        let w = values(37 * 5, 9);
        assert_eq!(PackedMatrix::pack(&w, 37, 5).unpack(), w);
        let empty = PackedMatrix::pack(&[], 3, 0);
        let mut y = vec![1.0; 6];
        empty.matmul(&[], 2, &mut y);
        assert_eq!(y, vec![0.0; 6]);
        PackedMatrix::pack(&[1.0], 1, 1).matmul(&[], 0, &mut []);
    }
}
