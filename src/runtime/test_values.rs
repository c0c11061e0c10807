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
