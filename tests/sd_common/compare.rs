//! Comparing tensors in the diffusion tests.

use candle_core::{DType, Tensor};

/// max |a − b| over all elements, compared in f32. Panics when the shapes differ or when
/// either side holds a NaN or an infinity (which a plain max would silently skip).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let values = |t: &Tensor| -> Vec<f32> {
        t.to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let (a, b) = (values(a), values(b));
    assert!(
        a.iter().chain(&b).all(|x| x.is_finite()),
        "non-finite values in a comparison"
    );
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
