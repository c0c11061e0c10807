//! Next-token selection: greedy, temperature, top-k, top-p and repetition penalty, seeded.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature; `≤ 0` means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (1 = off).
    pub top_p: f32,
    /// Divide positive / multiply negative logits of already-seen tokens (1 = off), as in
    /// Keskar et al. (2019) and Hugging Face.
    pub repetition_penalty: f32,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_k: 50,
            top_p: 0.9,
            repetition_penalty: 1.0,
            seed: 42,
        }
    }
}

/// The smallest temperature above 0 that sampling accepts: below it `1/T` scales logits past
/// anything f32 keeps apart (1e-45 makes every logit infinite). 0 means greedy.
pub const MIN_TEMPERATURE: f32 = 1e-3;
/// The largest temperature sampling accepts (at 1000 every token is about equally likely).
pub const MAX_TEMPERATURE: f32 = 1e3;
/// The range of the repetition penalty (1 = off).
pub const REPETITION_PENALTY_RANGE: std::ops::RangeInclusive<f32> = 0.01..=100.0;

/// `t` if it is 0 (greedy) or in [`MIN_TEMPERATURE`, `MAX_TEMPERATURE`].
pub fn check_temperature(t: f32) -> Result<f32, String> {
    if t == 0.0 || (MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&t) {
        Ok(t)
    } else {
        Err(format!(
            "temperature {t:?} is outside {MIN_TEMPERATURE} … {MAX_TEMPERATURE} (0 = greedy)"
        ))
    }
}

/// `p` if it is a probability above 0 (1 = off).
pub fn check_top_p(p: f32) -> Result<f32, String> {
    if p > 0.0 && p <= 1.0 {
        Ok(p)
    } else {
        Err(format!("top-p {p:?} is outside (0, 1] (1 = off)"))
    }
}

/// `r` if it lies in [`REPETITION_PENALTY_RANGE`].
pub fn check_repetition_penalty(r: f32) -> Result<f32, String> {
    if REPETITION_PENALTY_RANGE.contains(&r) {
        Ok(r)
    } else {
        Err(format!(
            "repetition penalty {r:?} is outside {} … {} (1 = off)",
            REPETITION_PENALTY_RANGE.start(),
            REPETITION_PENALTY_RANGE.end()
        ))
    }
}

impl SamplingConfig {
    /// Checks every field against its range (NaN never passes).
    pub fn check(&self) -> Result<(), String> {
        check_temperature(self.temperature)?;
        check_top_p(self.top_p)?;
        check_repetition_penalty(self.repetition_penalty)?;
        Ok(())
    }

    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// A seeded sampler.
pub struct Sampler {
    cfg: SamplingConfig,
    rng: StdRng,
    probs: Vec<(u32, f32)>,
    keys: Vec<u64>,
}

impl Sampler {
    /// A sampler with its RNG seeded from `cfg.seed`.
    pub fn new(cfg: SamplingConfig) -> Self {
        Self {
            cfg,
            rng: StdRng::seed_from_u64(cfg.seed),
            probs: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// Picks the next token from `logits` (modified in place by the penalty); `history` are
    /// the tokens seen so far (prompt and generated).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let pen = self.cfg.repetition_penalty;
        if pen != 1.0 && pen > 0.0 {
            let mut seen = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / pen } else { *l * pen };
                }
            }
        }
        if self.cfg.temperature <= 0.0 || !self.cfg.temperature.is_finite() {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.cfg.temperature;
        ranked(logits, inv_t, self.cfg.top_k, &mut self.keys, &mut self.probs);
        let max = self.probs.first().map_or(0.0, |p| p.1);
        let mut sum = 0.0f32;
        for p in &mut self.probs {
            p.1 = (p.1 - max).exp();
            sum += p.1;
        }
        let mut cum = 0.0;
        let n = self.probs.len();
        let mut keep = n;
        for (i, p) in self.probs.iter_mut().enumerate() {
            p.1 /= sum;
            cum += p.1;
            if cum >= self.cfg.top_p && keep == n {
                keep = i + 1;
            }
        }
        self.probs.truncate(keep.max(1));
        let total: f32 = self.probs.iter().map(|p| p.1).sum();
        let mut u = self.rng.random::<f32>() * total;
        for &(t, p) in &self.probs {
            if u < p {
                return t;
            }
            u -= p;
        }
        self.probs.last().map_or(0, |p| p.0)
    }
}

/// `(token, logit · inv_t)` of the `top_k` highest logits (all when 0) into `out`, highest
/// first, ties in vocabulary order: exactly a stable descending sort of every scaled logit
/// (total order) cut to `top_k`. Each value is packed with its token into one `u64` key whose
/// ascending order is that order, so an unstable sort (or, with `top_k`, a selection and a
/// sort of `top_k` keys) gives the same list several times faster than sorting pairs.
fn ranked(logits: &[f32], inv_t: f32, top_k: usize, keys: &mut Vec<u64>, out: &mut Vec<(u32, f32)>) {
    keys.clear();
    keys.extend(logits.iter().enumerate().map(|(i, &l)| {
        let b = (l * inv_t).to_bits();
        // Ascending in f32's total order, then flipped: ascending keys = descending values.
        let ordered = if b & 0x8000_0000 != 0 { !b } else { b | 0x8000_0000 };
        (u64::from(!ordered) << 32) | i as u64
    }));
    if top_k > 0 && top_k < keys.len() {
        keys.select_nth_unstable(top_k - 1);
        keys.truncate(top_k);
    }
    keys.sort_unstable();
    out.clear();
    out.extend(keys.iter().map(|&k| {
        let i = (k & 0xFFFF_FFFF) as usize;
        (i as u32, logits[i] * inv_t)
    }));
}

/// Index of the largest value (the first one on ties).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_settings_outside_their_ranges_are_refused() {
        assert!(SamplingConfig::default().check().is_ok());
        assert!(SamplingConfig::greedy().check().is_ok());
        let with = |f: fn(&mut SamplingConfig)| {
            let mut c = SamplingConfig::default();
            f(&mut c);
            c.check()
        };
        for bad in [
            with(|c| c.temperature = 1e-45),
            with(|c| c.temperature = -1.0),
            with(|c| c.temperature = f32::NAN),
            with(|c| c.temperature = f32::INFINITY),
            with(|c| c.top_p = f32::NAN),
            with(|c| c.top_p = 0.0),
            with(|c| c.top_p = 1.5),
            with(|c| c.repetition_penalty = 0.0),
            with(|c| c.repetition_penalty = f32::NAN),
        ] {
            assert!(bad.is_err());
        }
        assert!(with(|c| c.temperature = MIN_TEMPERATURE).is_ok());
        assert!(with(|c| c.top_p = 1.0).is_ok());
    }

    #[test]
    fn ranking_equals_a_stable_sort_of_the_scaled_logits() {
        let mut rng = StdRng::seed_from_u64(3);
        let (mut keys, mut got) = (Vec::new(), Vec::new());
        for case in 0..200 {
            let n = 1 + case * 37 % 3000;
            // Few distinct values (many ties), signed zeros, infinities and wide ranges.
            let logits: Vec<f32> = (0..n)
                .map(|i| match (case + i) % 11 {
                    0 => -0.0,
                    1 => 0.0,
                    2 if case % 5 == 0 => f32::NEG_INFINITY,
                    3 if case % 7 == 0 => f32::INFINITY,
                    4..=6 => ((rng.random::<f32>() * 6.0) as i32) as f32,
                    _ => (rng.random::<f32>() - 0.5) * 40.0,
                })
                .collect();
            let inv_t = [1.0, 1.25, 0.5, 3.0][case % 4];
            for top_k in [0, 1, 2, 50, n - 1, n, n + 3] {
                let mut want: Vec<(u32, f32)> = logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| (i as u32, l * inv_t))
                    .collect();
                want.sort_by(|a, b| b.1.total_cmp(&a.1));
                if top_k > 0 {
                    want.truncate(top_k);
                }
                ranked(&logits, inv_t, top_k, &mut keys, &mut got);
                let bits = |v: &[(u32, f32)]| v.iter().map(|&(t, p)| (t, p.to_bits())).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "case {case}, n {n}, top_k {top_k}");
            }
        }
    }

    #[test]
    fn greedy_takes_argmax_and_penalty_applies() {
        let mut s = Sampler::new(SamplingConfig::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], &[]), 1);
        let mut pen = Sampler::new(SamplingConfig {
            repetition_penalty: 2.0,
            ..SamplingConfig::greedy()
        });
        assert_eq!(pen.sample(&mut [0.1, 3.0, 2.0], &[1]), 2);
    }

    #[test]
    fn same_seed_same_choices_and_top_k_one_is_greedy() {
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 7,
        };
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = || {
            let mut s = Sampler::new(cfg);
            (0..20)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        let mut k1 = Sampler::new(SamplingConfig { top_k: 1, ..cfg });
        assert_eq!(k1.sample(&mut logits.clone(), &[]), argmax(&logits));
    }
}
