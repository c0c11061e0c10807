//! Linear layers `y = x·Wᵀ (+ b)` with weights kept in the file's own format.
//!
//! Two paths (see [`MatPath`]):
//! - **quantized**: GGML-quantized weights multiplied against activations quantized to 8 bits
//!   per row, as llama.cpp and candle's `quantized_llama` do — the decode path, token-identical
//!   to candle's quantized model;
//! - **dense**: f32 products ([`super::dense::PackedMatrix`], one fixed summation order on every
//!   machine), for batched work (prefill of many sentences, fitting, perplexity) and f32/f16
//!   weights. Quantized weights are dequantized on the first dense use of a layer and the f32
//!   copy is kept (4 bytes per weight: 0.5 GB for SmolLM2-135M), so later batches pay only
//!   the product.

use std::cell::RefCell;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::dense::PackedMatrix;
use super::error::{Result, RuntimeError};
use super::quant::{ActScratch, QDType, QMatrix};

thread_local! {
    /// Quantized-activation buffers reused across calls on this thread.
    static SCRATCH: RefCell<ActScratch> = RefCell::new(ActScratch::new());
}

/// Our own quantized kernels are used unless `ACT_CANDLE_QMATMUL=1` asks for candle's (for
/// side-by-side measurements; both give bit-identical results).
fn use_own_kernels() -> bool {
    std::env::var_os("ACT_CANDLE_QMATMUL").is_none_or(|v| v != "1")
}

/// Which multiplication to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatPath {
    /// Quantized kernels when the weights are quantized, else dense.
    #[default]
    Quantized,
    /// f32 GEMM (quantized weights dequantized per call).
    Dense,
}

/// Weight storage.
#[derive(Debug)]
enum Weights {
    /// f32 `[out, in]`, packed for [`PackedMatrix::matmul`].
    Dense(PackedMatrix),
    /// GGML-quantized `[out, in]`, with an f32 copy made on first dense use. `own` holds
    /// the raw blocks for our kernels when the format has one (Q4_0, Q4_1, Q8_0, Q5_0, Q5_1); other
    /// formats (k-quants) use candle's quantized matmul.
    Quant {
        q: std::sync::Arc<QTensor>,
        mm: QMatMul,
        own: Option<QMatrix>,
        dense: std::sync::OnceLock<PackedMatrix>,
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

    /// A layer from a GGML tensor (quantized or f32/f16, shape `[out, in]`).
    pub fn from_qtensor(q: QTensor, bias: Option<Vec<f32>>) -> Result<Self> {
        let (out_dim, in_dim) = q.shape().dims2()?;
        check_bias(&bias, out_dim)?;
        if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            // Unquantized: our dense product on both paths (candle's would round differently
            // from machine to machine, see `super::dense`).
            return Self::dense(q.dequantize(&Device::Cpu)?, bias);
        }
        let own_dtype = match q.dtype() {
            GgmlDType::Q4_0 => Some(QDType::Q4_0),
            GgmlDType::Q4_1 => Some(QDType::Q4_1),
            GgmlDType::Q8_0 => Some(QDType::Q8_0),
            GgmlDType::Q5_0 => Some(QDType::Q5_0),
            GgmlDType::Q5_1 => Some(QDType::Q5_1),
            _ => None,
        };
        let own = match own_dtype {
            Some(dt) if use_own_kernels() => Some(
                QMatrix::new(dt, out_dim, in_dim, q.data()?.into_owned())
                    .map_err(|e| RuntimeError::BadInput(e.to_string()))?,
            ),
            _ => None,
        };
        let q = std::sync::Arc::new(q);
        let mm = QMatMul::from_arc(q.clone())?;
        Ok(Self {
            weights: Weights::Quant {
                q,
                mm,
                own,
                dense: std::sync::OnceLock::new(),
            },
            bias,
            out_dim,
            in_dim,
        })
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }
    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.in_dim
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
        if let (Weights::Quant { own: Some(own), .. }, MatPath::Quantized) = (&self.weights, path) {
            // Our kernels read `x` directly: no tensor copy on the per-token path.
            let mut y = vec![0.0f32; n * self.out_dim];
            SCRATCH
                .with_borrow_mut(|s| own.matmul(x, n, &mut y, s))
                .map_err(|e| RuntimeError::BadInput(e.to_string()))?;
            return self.finish(y);
        }
        let w: &PackedMatrix = match (&self.weights, path) {
            (Weights::Dense(w), _) => w,
            (Weights::Quant { mm, .. }, MatPath::Quantized) => {
                let xt = Tensor::from_slice(x, (n, self.in_dim), &Device::Cpu)?;
                return self.finish(mm.forward(&xt)?.flatten_all()?.to_vec1::<f32>()?);
            }
            (Weights::Quant { q, dense, .. }, MatPath::Dense) => match dense.get() {
                Some(w) => w,
                None => {
                    let w = q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                    dense.get_or_init(|| PackedMatrix::pack(&w, self.out_dim, self.in_dim))
                }
            },
        };
        let mut y = vec![0.0f32; n * self.out_dim];
        w.matmul(x, n, &mut y);
        self.finish(y)
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
