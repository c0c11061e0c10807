//! Log-probabilities of a next-token distribution, as the OpenAI API reports them
//! (`logprobs`): of the chosen token, and of the most likely tokens.

use super::ops::exp_weights;

/// The most alternatives [`token_logprobs`] reports per position (the OpenAI API's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// `log_softmax(logits)` at `token`, and the `k` (at most [`MAX_TOP_LOGPROBS`]) most likely
/// tokens with theirs, most likely first (the lower id first on ties).
///
/// `logits`: `[vocab]`, the model's raw next-token scores (steering included, before any
/// temperature, penalty or top-k/top-p cut: the reported numbers describe the model, not the
/// sampler's settings). Non-finite or NaN logits count as probability 0 (log-probability
/// `−∞`). Sums run in f64. `scratch` is reused between calls.
pub fn token_logprobs(
    logits: &[f32],
    token: u32,
    k: usize,
    scratch: &mut Vec<f32>,
) -> (f32, Vec<(u32, f32)>) {
    let max = logits
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return (f32::NEG_INFINITY, Vec::new());
    }
    exp_weights(logits, 1.0, max, scratch);
    let sum: f64 = scratch.iter().map(|&w| f64::from(w)).sum();
    // log Σ exp(l − max) ≥ 0 (the max itself contributes exactly 1).
    let log_z = f64::from(max) + sum.ln();
    let lp = |i: usize| -> f32 {
        match logits.get(i) {
            Some(&v) if v.is_finite() => (f64::from(v) - log_z) as f32,
            _ => f32::NEG_INFINITY,
        }
    };
    let k = k.min(MAX_TOP_LOGPROBS).min(logits.len());
    // The k largest (value, lower id first), kept sorted in a small buffer.
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &v) in logits.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            if top.len() == k && top.last().is_some_and(|&(_, w)| v <= w) {
                continue;
            }
            let at = top.partition_point(|&(_, w)| w >= v);
            top.insert(at, (i as u32, v));
            top.truncate(k);
        }
    }
    let top = top.into_iter().map(|(i, _)| (i, lp(i as usize))).collect();
    (lp(token as usize), top)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(logits: &[f32]) -> Vec<f64> {
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = logits.iter().map(|&v| (v as f64 - m).exp()).sum();
        logits.iter().map(|&v| v as f64 - m - z.ln()).collect()
    }

    #[test]
    fn log_softmax_and_top_tokens_match_a_direct_computation() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.013 - 4.0)
            .collect();
        let want = reference(&logits);
        let mut scratch = Vec::new();
        for (tok, k) in [(0u32, 0usize), (17, 5), (999, 20), (3, 50)] {
            let (lp, top) = token_logprobs(&logits, tok, k, &mut scratch);
            assert!(
                (f64::from(lp) - want[tok as usize]).abs() < 1e-5,
                "{lp} vs {}",
                want[tok as usize]
            );
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
            assert_eq!(top.len(), k.min(MAX_TOP_LOGPROBS));
            for (j, &(id, l)) in top.iter().enumerate() {
                assert_eq!(id as usize, order[j], "rank {j}");
                assert!((f64::from(l) - want[id as usize]).abs() < 1e-5);
            }
        }
        let total: f64 = want.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn ties_take_the_lower_id_and_bad_logits_get_no_mass() {
        let logits = [1.0, 3.0, f32::NAN, 3.0, f32::NEG_INFINITY, 2.0];
        let mut s = Vec::new();
        let (lp, top) = token_logprobs(&logits, 2, 4, &mut s);
        assert_eq!(lp, f32::NEG_INFINITY);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 5, 0]);
        let mass: f32 = top.iter().map(|t| t.1.exp()).sum();
        assert!((mass - 1.0).abs() < 1e-5, "{mass}");
        let (lp, top) = token_logprobs(&[f32::NAN; 3], 0, 2, &mut s);
        assert_eq!((lp, top.len()), (f32::NEG_INFINITY, 0));
    }
}
