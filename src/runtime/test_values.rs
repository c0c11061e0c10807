//! Deterministic pseudo-random values for the runtime's unit tests.

/// `n` values from a xorshift generator seeded by `seed`: uniform in `[-small, small)`, except
/// draws whose state is a multiple of `every`, which are scaled by `big` instead (to mix
/// magnitudes: exponents, outliers).
pub(crate) fn values(n: usize, seed: u64, every: u64, (big, small): (f32, f32)) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            (u * 2.0 - 1.0)
                * if s.is_multiple_of(every.max(1)) {
                    big
                } else {
                    small
                }
        })
        .collect()
}

/// `rows × cols` of [`values`] (seed `seed`, one in 17 scaled by 6, the rest within ±0.5)
/// quantized by candle into `dt`, as our matrix: the weights of the tiled products' tests.
pub(crate) fn quantized_matrix(
    dt: candle_core::quantized::GgmlDType,
    rows: usize,
    cols: usize,
    seed: u64,
) -> super::quant::QMatrix {
    use candle_core::{Device, Tensor, quantized::QTensor};
    let w = Tensor::from_vec(
        values(rows * cols, seed, 17, (6.0, 0.5)),
        (rows, cols),
        &Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let q = QTensor::quantize(&w, dt).unwrap_or_else(|e| panic!("{e}"));
    let own = super::linear::own_dtype(dt).unwrap_or_else(|| panic!("{dt:?}"));
    let bytes = q.data().unwrap_or_else(|e| panic!("{e}")).into_owned();
    super::quant::QMatrix::new(own, rows, cols, bytes).unwrap_or_else(|e| panic!("{e}"))
}
