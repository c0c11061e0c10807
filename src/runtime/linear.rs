//! Linear layers `y = x·Wᵀ (+ b)` with weights kept in the file's own format.
//!
//! Two paths (see [`MatPath`]):
//! - **quantized**: GGML-quantized weights multiplied against activations quantized to 8 bits
//!   per row, as llama.cpp and candle's `quantized_llama` do — the decode path;
//! - **dense**: f32 products ([`super::dense::PackedMatrix`], one fixed summation order on every
//!   machine), for batched work (prefill of many sentences, fitting, perplexity) and f32/f16
//!   weights. Quantized weights are dequantized on the first dense use of a layer; the f32
//!   copy (4 bytes per weight) is kept while all kept copies stay within the dense-cache budget
//!   ([`dense_cache_budget`], 1 GiB unless `ACT_DENSE_CACHE_MB` says otherwise: all of
//!   SmolLM2-135M's 0.5 GB), and beyond it built for the call and dropped, so a model
//!   larger than the budget needs the file plus one layer's f32 copy, not 4 bytes per weight.
//!
//! Quantized weights are held once: in our own [`QMatrix`] for the formats our kernels cover
//! (Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K), else (Q2_K, Q3_K, …) in candle's
//! `QTensor` with its `QMatMul`, which [`Linear::uses_candle_kernels`] reports.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::dense::PackedMatrix;
use super::error::{Result, RuntimeError};
use super::pool::Pool;
use super::quant::{ActScratch, QDType, QMatrix};

thread_local! {
    /// Quantized-activation buffers reused across calls on this thread.
    static SCRATCH: RefCell<ActScratch> = RefCell::new(ActScratch::new());
}

/// Our own quantized kernels are used unless `ACT_CANDLE_QMATMUL=1` asks for candle's (for
/// side-by-side measurements).
pub(super) fn use_own_kernels() -> bool {
    std::env::var_os("ACT_CANDLE_QMATMUL").is_none_or(|v| v != "1")
}

/// Bytes of f32 copies of quantized layers that may be kept for the dense path, process-wide:
/// `ACT_DENSE_CACHE_MB` (MiB), else 1 GiB.
pub fn dense_cache_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::env::var("ACT_DENSE_CACHE_MB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map_or(1 << 30, |mb| mb.saturating_mul(1 << 20))
    })
}

/// Bytes held by all [`DenseCache`]s now.
static DENSE_CACHED: AtomicUsize = AtomicUsize::new(0);

/// The f32 copy of one quantized layer for the dense path, kept only within the budget.
#[derive(Debug, Default)]
struct DenseCache {
    packed: OnceLock<PackedMatrix>,
}

impl DenseCache {
    /// Runs `f` on the packed f32 weights: the kept copy, or a new one (`make`) that is kept
    /// if the budget allows and otherwise dropped after the call.
    fn with<R>(
        &self,
        make: impl FnOnce() -> Result<PackedMatrix>,
        f: impl FnOnce(&PackedMatrix) -> R,
    ) -> Result<R> {
        self.with_budget(dense_cache_budget(), make, f)
    }

    /// [`Self::with`] under an explicit process-wide `budget` (bytes).
    fn with_budget<R>(
        &self,
        budget: usize,
        make: impl FnOnce() -> Result<PackedMatrix>,
        f: impl FnOnce(&PackedMatrix) -> R,
    ) -> Result<R> {
        if let Some(w) = self.packed.get() {
            return Ok(f(w));
        }
        let w = make()?;
        let bytes = w.bytes();
        let reserved = DENSE_CACHED
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&t| t <= budget)
            })
            .is_ok();
        if !reserved {
            return Ok(f(&w));
        }
        match self.packed.set(w) {
            Ok(()) => {}
            // Another thread kept its copy first: give the reservation back.
            Err(_) => {
                DENSE_CACHED.fetch_sub(bytes, Ordering::AcqRel);
            }
        }
        match self.packed.get() {
            Some(w) => Ok(f(w)),
            None => Err(RuntimeError::BadInput("dense weight cache lost its copy".into())),
        }
    }
}

impl Drop for DenseCache {
    fn drop(&mut self) {
        if let Some(w) = self.packed.get() {
            DENSE_CACHED.fetch_sub(w.bytes(), Ordering::AcqRel);
        }
    }
}

/// Which multiplication to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatPath {
    /// Quantized kernels when the weights are quantized, else dense.
    #[default]
    Quantized,
    /// f32 GEMM (quantized weights dequantized per call).
    Dense,
    /// Prompts: the quantized path's numbers (activations rounded to its 8-bit grid) up to
    /// float rounding, computed as an f32 GEMM on weights dequantized a tile at a time
    /// ([`super::tiled`]) — dense speed, no f32 copy kept; k-quants as integer products on
    /// rows decoded a tile at a time ([`super::kquant_tiled`]). Fewer inputs than the format's
    /// `min_inputs`, and formats only candle covers, take the quantized path; f32/f16
    /// weights the dense one.
    Tiled,
}

impl MatPath {
    /// The path for a prompt's batched pass when generation decodes on `self`:
    /// [`MatPath::Tiled`] for [`MatPath::Quantized`], else `self`.
    /// `ACT_TILED=0` keeps prompts on the quantized kernels (for side-by-side measurements).
    pub fn for_prompt(self) -> MatPath {
        static OFF: OnceLock<bool> = OnceLock::new();
        let off = *OFF.get_or_init(|| std::env::var_os("ACT_TILED").is_some_and(|v| v == "0"));
        match self {
            MatPath::Quantized if !off => MatPath::Tiled,
            other => other,
        }
    }
}

/// Whether k-quant prompts take the integer tiles ([`super::kquant_tiled`]);
/// `ACT_INT8_TILES=0` keeps them on the f32 tiles ([`super::tiled`]) for side-by-side
/// measurements.
fn int8_tiles() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("ACT_INT8_TILES").is_none_or(|v| v != "0"))
}

/// Fewest inputs for which a [`MatPath::Tiled`] product of format `dt` leaves the quantized
/// kernels for the tiles it would take.
fn prompt_min_inputs(dt: QDType) -> usize {
    if super::kquant_tiled::supports(dt) && int8_tiles() {
        super::kquant_tiled::min_inputs(dt)
    } else {
        super::tiled::min_inputs(dt)
    }
}

/// Weight storage.
#[derive(Debug)]
enum Weights {
    /// f32 `[out, in]`, packed for [`PackedMatrix::matmul`].
    Dense(PackedMatrix),
    /// GGML-quantized `[out, in]` for our kernels (shared with a tied embedding).
    Own { q: Arc<QMatrix>, dense: DenseCache },
    /// GGML-quantized `[out, in]` in a format only candle's kernels cover.
    Candle {
        q: Arc<QTensor>,
        mm: QMatMul,
        dense: DenseCache,
    },
}

/// An error unless `bias` is absent or has one value per output.
fn check_bias(bias: &Option<Vec<f32>>, out_dim: usize) -> Result<()> {
    match bias {
        Some(b) if b.len() != out_dim => Err(RuntimeError::BadInput(format!(
            "bias of {} values for {out_dim} outputs",
            b.len()
        ))),
        _ => Ok(()),
    }
}

/// Our format for a GGML type, if our kernels cover it.
pub fn own_dtype(dtype: GgmlDType) -> Option<QDType> {
    match dtype {
        GgmlDType::Q4_0 => Some(QDType::Q4_0),
        GgmlDType::Q4_1 => Some(QDType::Q4_1),
        GgmlDType::Q8_0 => Some(QDType::Q8_0),
        GgmlDType::Q5_0 => Some(QDType::Q5_0),
        GgmlDType::Q5_1 => Some(QDType::Q5_1),
        GgmlDType::Q4K => Some(QDType::Q4K),
        GgmlDType::Q5K => Some(QDType::Q5K),
        GgmlDType::Q6K => Some(QDType::Q6K),
        _ => None,
    }
}

/// `q` as our [`QMatrix`] when our kernels cover its format (and `ACT_CANDLE_QMATMUL` is
/// not set); `None` otherwise.
pub fn own_matrix(q: &QTensor) -> Result<Option<QMatrix>> {
    let (rows, cols) = q.shape().dims2()?;
    match own_dtype(q.dtype()) {
        Some(dt) if use_own_kernels() => Ok(Some(
            QMatrix::new(dt, rows, cols, q.data()?.into_owned())
                .map_err(|e| RuntimeError::BadInput(e.to_string()))?,
        )),
        _ => Ok(None),
    }
}

/// A linear layer with `out × in` weights and an optional bias.
#[derive(Debug)]
pub struct Linear {
    weights: Weights,
    bias: Option<Vec<f32>>,
    out_dim: usize,
    in_dim: usize,
}

impl Linear {
    /// A dense layer from f32 weights `[out, in]`.
    pub fn dense(w: Tensor, bias: Option<Vec<f32>>) -> Result<Self> {
        let (out_dim, in_dim) = w.dims2()?;
        check_bias(&bias, out_dim)?;
        let w = w
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        let w = PackedMatrix::pack(&w, out_dim, in_dim);
        Ok(Self {
            weights: Weights::Dense(w),
            bias,
            out_dim,
            in_dim,
        })
    }

    /// A layer over our quantized matrix `[out, in]` (e.g. shared with a tied embedding).
    pub fn from_qmatrix(q: Arc<QMatrix>, bias: Option<Vec<f32>>) -> Result<Self> {
        let (out_dim, in_dim) = (q.rows(), q.cols());
        check_bias(&bias, out_dim)?;
        Ok(Self {
            weights: Weights::Own {
                q,
                dense: DenseCache::default(),
            },
            bias,
            out_dim,
            in_dim,
        })
    }

    /// A layer from a GGML tensor (quantized or f32/f16, shape `[out, in]`).
    pub fn from_qtensor(q: QTensor, bias: Option<Vec<f32>>) -> Result<Self> {
        let (out_dim, in_dim) = q.shape().dims2()?;
        check_bias(&bias, out_dim)?;
        if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            // Unquantized: our dense product on both paths (candle's would round differently
            // from machine to machine, see `super::dense`).
            return Self::dense(q.dequantize(&Device::Cpu)?, bias);
        }
        if let Some(own) = own_matrix(&q)? {
            return Self::from_qmatrix(Arc::new(own), bias);
        }
        let q = Arc::new(q);
        let mm = QMatMul::from_arc(q.clone())?;
        Ok(Self {
            weights: Weights::Candle {
                q,
                mm,
                dense: DenseCache::default(),
            },
            bias,
            out_dim,
            in_dim,
        })
    }

    /// Whether the quantized path of this layer runs candle's kernels (a format ours do not
    /// cover).
    pub fn uses_candle_kernels(&self) -> bool {
        matches!(self.weights, Weights::Candle { .. })
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }
    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Whether this layer's products run on the sixteen-row kernels of
    /// [`super::quant_x16`] (Q4_1 and Q8_0 weights on a CPU with AVX-512 VNNI,
    /// [`super::quant::sixteen_row_groups`]), whose weight stream is prefetched far enough
    /// ahead to overlap a thread's products ([`super::split_step`] relies on it).
    pub fn on_sixteen_row_kernels(&self) -> bool {
        matches!(&self.weights, Weights::Own { q, .. } if super::quant::sixteen_row_groups(q.dtype()))
    }

    /// The most inputs for which a prompt's pass ([`MatPath::Tiled`]) runs this matrix on the
    /// same kernels as decoding ([`MatPath::Quantized`]), so each input's outputs are the
    /// same on either path, bit for bit: one less than the format's tile threshold for our
    /// quantized formats, 0 for dense and candle-only weights (not claimed).
    pub fn same_kernels_below(&self) -> usize {
        match &self.weights {
            Weights::Own { q, .. } => prompt_min_inputs(q.dtype()).saturating_sub(1),
            Weights::Dense(_) | Weights::Candle { .. } => 0,
        }
    }

    /// The matrix, when a product of `n` inputs on `path` runs on our quantized kernels
    /// ([`QMatrix::matmul`]): [`MatPath::Quantized`], or [`MatPath::Tiled`] below
    /// [`super::tiled::min_inputs`] of the format, or at any count where the matrix's
    /// sixteen-row kernels outrun the tiled product ([`QMatrix::prompts_on_kernels`]).
    fn on_kernels(&self, n: usize, path: MatPath) -> Option<&QMatrix> {
        match (&self.weights, path) {
            (Weights::Own { q, .. }, MatPath::Quantized) => Some(q),
            (Weights::Own { q, .. }, MatPath::Tiled)
                if n < prompt_min_inputs(q.dtype()) || q.prompts_on_kernels() =>
            {
                Some(q)
            }
            _ => None,
        }
    }

    /// `x: [n, in]` (row-major) → `[n, out]`.
    pub fn forward(&self, x: &[f32], n: usize, path: MatPath) -> Result<Vec<f32>> {
        if x.len() != n * self.in_dim {
            return Err(RuntimeError::BadInput(format!(
                "linear layer expects {n} × {} inputs, got {}",
                self.in_dim,
                x.len()
            )));
        }
        let mut y = vec![0.0f32; n * self.out_dim];
        if let Some(q) = self.on_kernels(n, path) {
            // Our kernels read `x` directly: no tensor copy on the per-token path.
            SCRATCH
                .with_borrow_mut(|s| q.matmul(x, n, &mut y, s))
                .map_err(|e| RuntimeError::BadInput(e.to_string()))?;
            return self.finish(y);
        }
        match (&self.weights, path) {
            (Weights::Dense(w), _) => w.matmul(x, n, &mut y),
            (Weights::Own { q, .. }, MatPath::Quantized | MatPath::Tiled) => {
                // `on_kernels` declined: a prompt long enough for the tiled product (integer
                // tiles for k-quants, f32 tiles for the rest).
                let tiled = if super::kquant_tiled::supports(q.dtype()) && int8_tiles() {
                    super::kquant_tiled::matmul
                } else {
                    super::tiled::matmul
                };
                tiled(Pool::global(), q, x, n, &mut y).map_err(|e| RuntimeError::BadInput(e.to_string()))?;
            }
            (Weights::Candle { mm, .. }, MatPath::Quantized | MatPath::Tiled) => {
                let xt = Tensor::from_slice(x, (n, self.in_dim), &Device::Cpu)?;
                y = mm.forward(&xt)?.flatten_all()?.to_vec1::<f32>()?;
            }
            (Weights::Own { q, dense }, MatPath::Dense) => {
                let make = || {
                    Ok(PackedMatrix::pack_rows(self.out_dim, self.in_dim, |r, row| {
                        // Cannot fail: r < rows and the row has `cols` values.
                        let _ = q.dequantize_row(r, row);
                    }))
                };
                dense.with(make, |w| w.matmul(x, n, &mut y))?;
            }
            (Weights::Candle { q, dense, .. }, MatPath::Dense) => {
                let make = || {
                    let w = q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                    Ok(PackedMatrix::pack(&w, self.out_dim, self.in_dim))
                };
                dense.with(make, |w| w.matmul(x, n, &mut y))?;
            }
        }
        self.finish(y)
    }

    /// `[layer.forward(x, n, path) for each layer]` for layers that read the same input (a
    /// block's query, key and value projections; its gate and up projections), bit for bit.
    /// Where all of them run on our quantized kernels, the input is quantized once and one
    /// pool job covers the rows of all ([`QMatrix::matmul_group`]): a decode step's threads
    /// meet once per group rather than once per matrix.
    pub fn forward_group<const N: usize>(
        layers: [&Linear; N],
        x: &[f32],
        n: usize,
        path: MatPath,
    ) -> Result<[Vec<f32>; N]> {
        let mats = layers.map(|l| l.on_kernels(n, path));
        let grouped = mats
            .iter()
            .all(|m| m.is_some())
            .then(|| mats.map(|m| m.unwrap_or_else(|| unreachable!("checked above"))))
            .filter(|_| N >= 2 && layers.iter().all(|l| x.len() == n * l.in_dim));
        let Some(qs) = grouped else {
            let mut out: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
            for (o, l) in out.iter_mut().zip(layers) {
                *o = l.forward(x, n, path)?;
            }
            return Ok(out);
        };
        let mut ys: [Vec<f32>; N] = std::array::from_fn(|j| vec![0.0f32; n * layers[j].out_dim]);
        {
            let outs: [&mut [f32]; N] = ys.each_mut().map(Vec::as_mut_slice);
            SCRATCH
                .with_borrow_mut(|s| QMatrix::matmul_group(qs, x, n, outs, s))
                .map_err(|e| RuntimeError::BadInput(e.to_string()))?;
        }
        let mut out: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
        for ((o, y), l) in out.iter_mut().zip(ys).zip(layers) {
            *o = l.finish(y)?;
        }
        Ok(out)
    }

    /// Adds the bias to every row of `y` (`[n, out]`).
    fn finish(&self, mut y: Vec<f32>) -> Result<Vec<f32>> {
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(self.out_dim) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64 × 32 Q8_0 layer with quants `(r + j) mod 7 − 3` and d = 0.25.
    fn layer() -> Linear {
        let mut bytes = Vec::new();
        for r in 0..64i32 {
            bytes.extend(half::f16::from_f32(0.25).to_le_bytes());
            bytes.extend((0..32).map(|j| ((r + j) % 7 - 3) as i8 as u8));
        }
        let q = QMatrix::new(QDType::Q8_0, 64, 32, bytes).unwrap();
        Linear::from_qmatrix(Arc::new(q), Some(vec![1.0; 64])).unwrap()
    }

    #[test]
    fn dense_copy_is_kept_only_within_the_budget() {
        let l = layer();
        let Weights::Own { q, dense } = &l.weights else {
            panic!("Q8_0 uses our kernels")
        };
        let make = || {
            Ok(PackedMatrix::pack_rows(64, 32, |r, row| {
                q.dequantize_row(r, row).unwrap();
            }))
        };
        let x: Vec<f32> = (0..2 * 32).map(|i| (i % 5) as f32 - 2.0).collect();
        let mut y0 = vec![0f32; 128];
        // Budget 0: computed, not kept.
        dense.with_budget(0, make, |w| w.matmul(&x, 2, &mut y0)).unwrap();
        assert!(dense.packed.get().is_none());
        // A budget that fits: kept, same result, and later calls do not rebuild it.
        let mut y1 = vec![0f32; 128];
        dense
            .with_budget(usize::MAX, make, |w| w.matmul(&x, 2, &mut y1))
            .unwrap();
        assert!(dense.packed.get().is_some());
        assert_eq!(y0, y1);
        let never = || -> Result<PackedMatrix> { Err(RuntimeError::BadInput("rebuilt".into())) };
        assert!(dense.with_budget(0, never, |_| ()).is_ok());
        // The dense path equals the f32 product of the dequantized weights (plus the bias).
        let y = l.forward(&x, 2, MatPath::Dense).unwrap();
        let w = q.dequantize();
        for (r, yr) in y.chunks_exact(64).enumerate() {
            for (j, v) in yr.iter().enumerate() {
                let want: f32 = (0..32).map(|i| x[r * 32 + i] * w[j * 32 + i]).sum::<f32>() + 1.0;
                assert!((v - want).abs() < 1e-5, "{v} {want}");
            }
        }
        assert!(!l.uses_candle_kernels());
    }
}
