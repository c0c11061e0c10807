//! Next-token selection: greedy, temperature, top-k, top-p, the repetition penalty and
//! OpenAI's frequency and presence penalties, seeded.

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
    /// Subtracted from a token's logit once per time this sampler has already picked it
    /// (OpenAI's `frequency_penalty`, −2 … 2; 0 = off).
    pub frequency_penalty: f32,
    /// Subtracted from the logit of every token this sampler has already picked (OpenAI's
    /// `presence_penalty`, −2 … 2; 0 = off).
    pub presence_penalty: f32,
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
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
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

/// The range of the frequency and presence penalties (0 = off), as OpenAI's API.
pub const OPENAI_PENALTY_RANGE: std::ops::RangeInclusive<f32> = -2.0..=2.0;

/// `v` if it lies in [`OPENAI_PENALTY_RANGE`]; `name` says which penalty in the message.
pub fn check_openai_penalty(name: &str, v: f32) -> Result<f32, String> {
    if OPENAI_PENALTY_RANGE.contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{name} {v:?} is outside {} … {} (0 = off)",
            OPENAI_PENALTY_RANGE.start(),
            OPENAI_PENALTY_RANGE.end()
        ))
    }
}

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
        check_openai_penalty("frequency penalty", self.frequency_penalty)?;
        check_openai_penalty("presence penalty", self.presence_penalty)?;
        Ok(())
    }

    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 0,
        }
    }
}

/// A seeded sampler.
pub struct Sampler {
    cfg: SamplingConfig,
    rng: StdRng,
    probs: Vec<(u32, f32)>,
    /// The softmax weights of `probs`, in their order.
    weights: Vec<f32>,
    keys: Vec<u64>,
    /// [`block_sums`] of `weights`, for the draw.
    blocks: Vec<f64>,
    /// How often each token has been picked, while a frequency or presence penalty is set.
    picked: std::collections::HashMap<u32, u32>,
    /// Added to these tokens' logits before anything else ([`Self::with_logit_bias`]).
    bias: std::sync::Arc<[(u32, f32)]>,
}

impl Sampler {
    /// A sampler with its RNG seeded from `cfg.seed`.
    pub fn new(cfg: SamplingConfig) -> Self {
        Self {
            cfg,
            rng: StdRng::seed_from_u64(cfg.seed),
            probs: Vec::new(),
            weights: Vec::new(),
            keys: Vec::new(),
            blocks: Vec::new(),
            picked: std::collections::HashMap::new(),
            bias: std::sync::Arc::from([]),
        }
    }

    /// This sampler, adding `bias` to the listed tokens' logits before every pick (OpenAI's
    /// `logit_bias`: −100 bans a token in effect, 100 all but forces it). Tokens past the
    /// vocabulary are left out.
    pub fn with_logit_bias(mut self, bias: std::sync::Arc<[(u32, f32)]>) -> Self {
        self.bias = bias;
        self
    }

    /// Picks the next token as [`Self::pick`] does, after adding the logit bias and lowering
    /// the logits of the tokens
    /// this sampler picked before by the frequency and presence penalties (OpenAI's rule:
    /// `l − count·frequency − presence` for a token picked `count > 0` times); `history` are
    /// the tokens seen so far (prompt and generated), for the repetition penalty.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        for &(t, b) in self.bias.iter() {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        let (freq, pres) = (self.cfg.frequency_penalty, self.cfg.presence_penalty);
        let counting = freq != 0.0 || pres != 0.0;
        if counting {
            for (&t, &count) in &self.picked {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= count as f32 * freq + pres;
                }
            }
        }
        let t = self.pick(logits, history);
        if counting {
            *self.picked.entry(t).or_insert(0) += 1;
        }
        t
    }

    /// Picks the next token from `logits` (modified in place by the repetition penalty);
    /// `history` are the tokens seen so far (prompt and generated).
    ///
    /// The candidates are the `top_k` highest logits (all when 0), then the smallest set of
    /// the most likely ones whose softmax mass reaches `top_p` (ties in vocabulary order);
    /// one is drawn in proportion to its softmax weight (weights summed in f64). Only what
    /// needs an order is ranked: without top-k or top-p no token is sorted, and the top-p set
    /// is found in a ranked prefix of 64 tokens, growing eightfold while it falls short
    /// (sorting all 49k tokens of SmolLM2 per sampled token had been a tenth of a busy
    /// server's time).
    fn pick(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
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
        let n = logits.len();
        let top_k = self.cfg.top_k;
        let ranked_k = top_k > 0 && top_k < n;
        // Candidates: the `top_k` best, ranked, as (token, scaled logit) in `probs`; or every
        // token in vocabulary order, `probs` left empty (sampling needs no order; only the
        // top-p cut does).
        self.probs.clear();
        let max = if ranked_k {
            ranked(logits, inv_t, top_k, &mut self.keys, &mut self.probs);
            max_scaled(self.probs.iter().map(|c| c.1))
        } else {
            // Scaling by 1/T > 0 keeps the order, so the largest scaled logit is the scaled
            // largest logit, bit for bit.
            max_not_nan(logits).map(|m| m * inv_t)
        };
        let Some(max) = max else {
            return argmax(logits);
        };
        if !ranked_k && !max.is_finite() {
            // An infinite logit: the generic weights below handle it.
            self.probs
                .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l * inv_t)));
        }
        // Every candidate's softmax weight, once (f32 `exp`, summed in f64); a whole
        // vocabulary in SIMD.
        if self.probs.is_empty() {
            super::ops::exp_weights(logits, inv_t, max, &mut self.weights);
        } else {
            self.weights.clear();
            self.weights
                .extend(self.probs.iter().map(|&(_, s)| weight(s, max)));
        }
        let sum = block_sums(&self.weights, &mut self.blocks);
        if !(sum > 0.0 && sum.is_finite()) {
            return argmax(logits);
        }
        let top_p = f64::from(self.cfg.top_p);
        // The weights' total: `sum` itself unless the top-p cut below shortens the list
        // (the same additions in the same order; a second pass over 49 k weights is a chain
        // of dependent f64 additions).
        let mut total = sum;
        if top_p < 1.0 {
            if !ranked_k {
                // The top-p set lies in a ranked prefix; rank more only while it falls short.
                let mut k = TOP_P_FIRST_RANKED.min(n);
                loop {
                    ranked(logits, inv_t, k, &mut self.keys, &mut self.probs);
                    self.weights.clear();
                    self.weights
                        .extend(self.probs.iter().map(|&(_, s)| weight(s, max)));
                    let ranked_mass = block_sums(&self.weights, &mut self.blocks);
                    if k >= n || ranked_mass / sum >= top_p {
                        break;
                    }
                    k = k.saturating_mul(8).min(n);
                }
            }
            let mut cum = 0.0f64;
            let mut keep = self.probs.len();
            for (i, &w) in self.weights.iter().enumerate() {
                cum += f64::from(w) / sum;
                if cum >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.probs.truncate(keep.max(1));
            self.weights.truncate(keep.max(1));
            total = block_sums(&self.weights, &mut self.blocks);
        }
        if !(total > 0.0 && total.is_finite()) {
            return argmax(logits);
        }
        let u = f64::from(self.rng.random::<f32>()) * total;
        let token = |i: usize| {
            if self.probs.is_empty() {
                i as u32
            } else {
                self.probs.get(i).map_or(0, |c| c.0)
            }
        };
        match draw(&self.weights, &self.blocks, u) {
            Some(i) => token(i),
            None => argmax(logits),
        }
    }
}

/// Weights summed per block by [`block_sums`]: the draw walks the blocks' sums, then one
/// block's weights (a walk over all 49 k weights of a vocabulary, one dependent f64 subtraction
/// after another, had been half of a draw).
const DRAW_BLOCK: usize = 64;

/// The sum of `w` in f64, and each [`DRAW_BLOCK`] of it into `blocks`: a block's weights in 8
/// independent lanes (offset `i` into lane `i mod 8`), the lanes added in order, the blocks'
/// sums added in order. A fixed order, whoever runs it.
fn block_sums(w: &[f32], blocks: &mut Vec<f64>) -> f64 {
    blocks.clear();
    blocks.extend(w.chunks(DRAW_BLOCK).map(|b| {
        let mut lanes = [0f64; 8];
        for part in b.chunks(8) {
            for (l, &v) in lanes.iter_mut().zip(part) {
                *l += f64::from(v);
            }
        }
        lanes.iter().sum::<f64>()
    }));
    blocks.iter().sum()
}

/// The index drawn by `u ∈ [0, Σw)`: the first weight `w_i > 0` with `u` below it after
/// subtracting the weights before it, found block by block with `blocks` ([`block_sums`] of
/// `w`); the last positive weight when rounding leaves `u` past them all; `None` when no
/// weight is positive.
fn draw(w: &[f32], blocks: &[f64], mut u: f64) -> Option<usize> {
    // The last positive weight passed: walked one by one, or in the last skipped block of
    // positive sum.
    let (mut last, mut skipped) = (None, None);
    for (j, (b, &sum)) in w.chunks(DRAW_BLOCK).zip(blocks).enumerate() {
        if u >= sum && j + 1 < blocks.len() {
            u -= sum;
            if sum > 0.0 {
                skipped = Some(j);
            }
            continue;
        }
        // `u` falls in this block (or rounding carries it past the block's weights, on to the
        // next block).
        for (i, &v) in b.iter().enumerate() {
            if v > 0.0 {
                let v = f64::from(v);
                if u < v {
                    return Some(j * DRAW_BLOCK + i);
                }
                u -= v;
                last = Some(j * DRAW_BLOCK + i);
            }
        }
    }
    let in_skipped = skipped.and_then(|j| {
        let b = w.chunks(DRAW_BLOCK).nth(j)?;
        Some(j * DRAW_BLOCK + b.iter().rposition(|&v| v > 0.0)?)
    });
    last.max(in_skipped)
}

/// Tokens ranked first when top-p needs a ranking and top-k gives none; the ranking grows
/// eightfold while the ranked tokens hold less than `top_p` of the probability.
const TOP_P_FIRST_RANKED: usize = 64;

/// The softmax weight `exp(s − max)` of a scaled logit (1 at the maximum, so an infinite
/// maximum still has weight; NaN has none).
#[inline]
fn weight(s: f32, max: f32) -> f32 {
    if s == max {
        1.0
    } else {
        let w = (s - max).exp();
        if w.is_nan() { 0.0 } else { w }
    }
}

/// The largest value that is not NaN (`-∞` when all are `-∞`); `None` without one.
fn max_scaled(values: impl Iterator<Item = f32>) -> Option<f32> {
    values.filter(|s| !s.is_nan()).reduce(f32::max)
}

/// [`max_scaled`] of a slice, the same value, in eight independent lanes the compiler turns
/// into SIMD (the one-lane loop, one dependent `max` per token, had been three quarters of a
/// 49 k-token draw). NaN compares false and is skipped; a maximum of `-∞` (or none) takes the
/// one-lane loop, which tells the two apart.
fn max_not_nan(values: &[f32]) -> Option<f32> {
    const LANES: usize = 8;
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(chunks.remainder()) {
        m = if v > m { v } else { m };
    }
    if m == f32::NEG_INFINITY {
        return max_scaled(values.iter().copied());
    }
    Some(m)
}

/// `(token, logit · inv_t)` of the `top_k` highest logits (all when 0) into `out`, highest
/// first, ties in vocabulary order: exactly a stable descending sort of every scaled logit
/// (total order) cut to `top_k`. Each value is packed with its token into one `u64` key whose
/// ascending order is that order, so an unstable sort (or, with `top_k`, a selection and a
/// sort of `top_k` keys) gives the same list several times faster than sorting pairs.
fn ranked(logits: &[f32], inv_t: f32, top_k: usize, keys: &mut Vec<u64>, out: &mut Vec<(u32, f32)>) {
    let key = |i: usize, l: f32| (u64::from(!total_order_bits(l * inv_t)) << 32) | i as u64;
    // The floor's block maxima borrow `keys` (no allocation per draw); the keys follow.
    let floor = top_k_floor(logits, inv_t, top_k, keys);
    keys.clear();
    match floor {
        // Only the values at or above a floor that the `top_k` best all reach get keys.
        Some(floor) => keys.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(_, &l)| total_order_bits(l * inv_t) >= floor)
                .map(|(i, &l)| key(i, l)),
        ),
        None => keys.extend(logits.iter().enumerate().map(|(i, &l)| key(i, l))),
    }
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

/// `v`'s bits mapped so that unsigned order is f32's total order (`f32::total_cmp`).
#[inline]
fn total_order_bits(v: f32) -> u32 {
    let b = v.to_bits();
    // Negative: all bits flipped; positive: the sign bit set.
    b ^ ((((b as i32) >> 31) as u32) | 0x8000_0000)
}

/// Values per block of [`top_k_floor`].
const FLOOR_BLOCK: usize = 64;

/// A floor (in [`total_order_bits`]) that the `top_k` highest scaled logits all reach, when
/// it pays: the `top_k`-th highest of the blocks' maxima. `top_k` blocks hold a value at or
/// above it, so at least `top_k` values do, and the `top_k` best are among them. Keys for the
/// few values above the floor replace keys for the whole vocabulary (and the selection among
/// them), with the same ranking as a result. `None` when `top_k` is 0 or exceeds the blocks.
/// `maxima` is scratch space for the blocks' maxima (its contents are replaced).
fn top_k_floor(logits: &[f32], inv_t: f32, top_k: usize, maxima: &mut Vec<u64>) -> Option<u32> {
    let blocks = logits.len() / FLOOR_BLOCK;
    if top_k == 0 || top_k > blocks || blocks < 8 {
        return None;
    }
    maxima.clear();
    maxima.extend(
        logits
            .chunks(FLOOR_BLOCK)
            .map(|c| u64::from(c.iter().map(|&l| total_order_bits(l * inv_t)).fold(0, u32::max))),
    );
    let (_, &mut floor, _) = maxima.select_nth_unstable_by(top_k - 1, |a, b| b.cmp(a));
    // A maximum of u32 values: it fits.
    u32::try_from(floor).ok()
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
    /// The block-wise draw picks what one walk over every weight picks, where the sums are
    /// exact (weights in 1/1024ths): never a zero weight, the last positive one for `u` past
    /// the total, `None` without a positive weight.
    #[test]
    fn the_block_wise_draw_is_the_one_by_one_walk() {
        fn walk(w: &[f32], mut u: f64) -> Option<usize> {
            let mut last = None;
            for (i, &v) in w.iter().enumerate() {
                if v > 0.0 {
                    if u < f64::from(v) {
                        return Some(i);
                    }
                    u -= f64::from(v);
                    last = Some(i);
                }
            }
            last
        }
        for (n, zeros) in [
            (1usize, 0usize),
            (63, 3),
            (64, 5),
            (65, 7),
            (1_000, 2),
            (4_100, 64),
        ] {
            // Every `zeros`-th weight 0, and the tail's last 70 weights 0 for long lists.
            let w: Vec<f32> = (0..n)
                .map(|i| {
                    let zero = (zeros > 0 && i % zeros.max(1) == 0 && n > 1) || (n > 200 && i >= n - 70);
                    if zero {
                        0.0
                    } else {
                        ((i * 37 % 11) + 1) as f32 / 1024.0
                    }
                })
                .collect();
            let mut blocks = Vec::new();
            let total = block_sums(&w, &mut blocks);
            let exact: f64 = w.iter().map(|&v| f64::from(v)).sum();
            assert_eq!(total, exact);
            assert_eq!(blocks.len(), n.div_ceil(DRAW_BLOCK));
            for k in 0..=2_000 {
                let u = total * k as f64 / 2_000.0 * 1.01;
                let got = draw(&w, &blocks, u);
                assert_eq!(got, walk(&w, u), "n {n}, u {u}");
                if let Some(i) = got {
                    assert!(w[i] > 0.0);
                }
            }
        }
        let none = [0f32; 130];
        let mut blocks = Vec::new();
        assert_eq!(block_sums(&none, &mut blocks), 0.0);
        assert_eq!(draw(&none, &blocks, 0.0), None);
    }

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

    /// The top-p set by brute force: a stable descending sort of every candidate, cut where
    /// the cumulative softmax mass first reaches `top_p` (within top_k when set).
    fn top_p_set(logits: &[f32], cfg: &SamplingConfig) -> Vec<u32> {
        let inv_t = 1.0 / cfg.temperature;
        let mut all: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l * inv_t))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        if cfg.top_k > 0 {
            all.truncate(cfg.top_k);
        }
        let max = all[0].1;
        let w: Vec<f64> = all.iter().map(|c| f64::from((c.1 - max).exp())).collect();
        let sum: f64 = w.iter().sum();
        let mut cum = 0.0;
        let mut out = Vec::new();
        for (c, w) in all.iter().zip(&w) {
            out.push(c.0);
            cum += w / sum;
            if cum >= f64::from(cfg.top_p) {
                break;
            }
        }
        out
    }

    #[test]
    fn sampled_tokens_lie_in_the_top_p_set_and_cover_it() {
        let mut rng = StdRng::seed_from_u64(11);
        for case in 0..16 {
            // Large vocabularies make the lazy ranking grow past its first 64 and 512 tokens.
            let n = [50, 700, 5000, 40_000][case % 4];
            let spread = [0.5f32, 4.0, 12.0][case % 3];
            let logits: Vec<f32> = (0..n).map(|_| (rng.random::<f32>() - 0.5) * spread).collect();
            let cfg = SamplingConfig {
                temperature: [0.7, 1.0, 1.6][case % 3],
                top_k: [0, 0, 40, 0][case % 4],
                top_p: [0.5, 0.9, 0.97, 0.999][(case / 3) % 4],
                repetition_penalty: 1.0,
                frequency_penalty: 0.0,
                presence_penalty: 0.0,
                seed: case as u64,
            };
            let want = top_p_set(&logits, &cfg);
            let allowed: std::collections::HashSet<u32> = want.iter().copied().collect();
            let mut s = Sampler::new(cfg);
            let mut seen = std::collections::HashSet::new();
            let draws = if want.len() <= 20 { 2000 } else { 150 };
            for _ in 0..draws {
                let t = s.sample(&mut logits.clone(), &[]);
                assert!(
                    allowed.contains(&t),
                    "case {case}: token {t} outside the top-p set of {}",
                    want.len()
                );
                seen.insert(t);
            }
            if want.len() <= 20 {
                assert_eq!(
                    seen.len(),
                    want.len(),
                    "case {case}: some kept tokens never drawn"
                );
            }
        }
    }

    #[test]
    fn frequencies_follow_the_softmax_without_a_cut() {
        let logits = [0.0f32, 1.0, 2.0, -1.0, 0.5];
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 5,
        };
        let w: Vec<f64> = logits.iter().map(|&l| f64::from(l).exp()).collect();
        let sum: f64 = w.iter().sum();
        let mut s = Sampler::new(cfg);
        let draws = 50_000;
        let mut counts = [0usize; 5];
        for _ in 0..draws {
            counts[s.sample(&mut logits.clone(), &[]) as usize] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            let p = w[i] / sum;
            let got = *c as f64 / draws as f64;
            // Five standard deviations of a binomial proportion.
            let tol = 5.0 * (p * (1.0 - p) / draws as f64).sqrt();
            assert!((got - p).abs() < tol, "token {i}: {got} vs {p}");
        }
    }

    #[test]
    fn total_order_bits_follow_total_cmp() {
        let v = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            2.0,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        for a in v {
            for b in v {
                assert_eq!(
                    total_order_bits(a).cmp(&total_order_bits(b)),
                    a.total_cmp(&b),
                    "{a} {b}"
                );
            }
        }
    }

    #[test]
    fn ranking_with_a_floor_equals_ranking_everything() {
        for (len, top_k, case) in [
            (49_152, 64, 0),
            (49_152, 50, 1),
            (4096, 40, 2),
            (1000, 3, 3),
            (49_152, 768, 4),
            (49_152, 1, 5),
        ] {
            // Within ±4, one in 5000 or so up to ±13 (a few clear winners).
            let logits: Vec<f32> = crate::runtime::test_values::values(len, 99 + case, 5000, (13.0, 4.0))
                .into_iter()
                .enumerate()
                .map(|(i, x)| {
                    match (case, i % 97) {
                        // Many ties, infinities and NaNs.
                        (3, _) => (x * 2.0).round(),
                        (4, 0) => f32::NAN,
                        (5, 1) => f32::INFINITY,
                        (5, 2) => -f32::NAN,
                        _ => x,
                    }
                })
                .collect();
            let (mut keys, mut out) = (Vec::new(), Vec::new());
            ranked(&logits, 1.25, top_k, &mut keys, &mut out);
            // Everything ranked by a stable sort of (value descending in total order).
            let mut all: Vec<(u32, f32)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l * 1.25))
                .collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1));
            all.truncate(top_k);
            let bits = |v: &[(u32, f32)]| v.iter().map(|&(i, s)| (i, s.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&all), "case {case}");
        }
    }

    #[test]
    fn the_lane_maximum_equals_the_one_lane_maximum() {
        for len in [0usize, 1, 7, 8, 9, 63, 64, 65, 1000] {
            for case in 0..6 {
                let v: Vec<f32> = crate::runtime::test_values::values(len, 7 + len as u64, 1, (10.0, 10.0))
                    .into_iter()
                    .enumerate()
                    .map(|(i, x)| match (case, i % 5) {
                        (1, 0) => f32::NAN,
                        (2, _) => f32::NEG_INFINITY,
                        (3, _) => f32::NAN,
                        (4, 1) => f32::INFINITY,
                        (5, _) if i % 2 == 0 => f32::NAN,
                        (5, _) => f32::NEG_INFINITY,
                        _ => x,
                    })
                    .collect();
                let want = max_scaled(v.iter().copied());
                let got = max_not_nan(&v);
                assert_eq!(
                    got.map(f32::to_bits),
                    want.map(f32::to_bits),
                    "len {len}, case {case}"
                );
            }
        }
    }

    #[test]
    fn non_finite_logits_are_handled() {
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 1,
        };
        let mut s = Sampler::new(cfg);
        for _ in 0..200 {
            assert_eq!(s.sample(&mut [f32::NAN, 1.0, f32::NAN], &[]), 1);
            assert_eq!(s.sample(&mut [0.0, f32::INFINITY, 3.0], &[]), 1);
            let t = s.sample(&mut [f32::NEG_INFINITY; 4], &[]);
            assert!(t < 4);
            assert_eq!(
                s.sample(&mut [f32::NEG_INFINITY, -1e30, f32::NEG_INFINITY], &[]),
                1
            );
        }
        let mut all_nan = Sampler::new(SamplingConfig { top_p: 1.0, ..cfg });
        assert!(all_nan.sample(&mut [f32::NAN; 3], &[]) < 3);
    }

    #[test]
    fn greedy_takes_argmax_and_penalty_applies() {
        let mut s = Sampler::new(SamplingConfig::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], &[]), 1);
        let mut pen = Sampler::new(SamplingConfig {
            repetition_penalty: 2.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
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
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
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

    /// OpenAI's penalties lower a picked token's logit by `count · frequency + presence`:
    /// greedy over logits where token 0 leads by 1.0 picks it once, then (presence 1.5) the
    /// runner-up, then token 0 again (the presence penalty counts once: both now lowered by
    /// 1.5); with a frequency penalty of 0.4 it picks token 0 three times (leads of 1.0, 0.6,
    /// 0.2) before the runner-up; penalties of 0 change nothing; out-of-range penalties fail
    /// the check.
    #[test]
    fn frequency_and_presence_penalties_follow_openais_rule() {
        let run = |frequency_penalty: f32, presence_penalty: f32| {
            let mut s = Sampler::new(SamplingConfig {
                frequency_penalty,
                presence_penalty,
                ..SamplingConfig::greedy()
            });
            (0..4)
                .map(|_| s.sample(&mut [3.0, 2.0, -1.0], &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(0.0, 0.0), vec![0, 0, 0, 0]);
        assert_eq!(run(0.0, 1.5), vec![0, 1, 0, 0]);
        assert_eq!(run(0.4, 0.0), vec![0, 0, 0, 1]);
        for bad in [2.5, -2.1, f32::NAN] {
            let c = SamplingConfig {
                frequency_penalty: bad,
                ..SamplingConfig::greedy()
            };
            assert!(c.check().is_err(), "{bad}");
            let c = SamplingConfig {
                presence_penalty: bad,
                ..SamplingConfig::greedy()
            };
            assert!(c.check().is_err(), "{bad}");
        }
    }

    /// A logit bias is added before every pick: +5 on token 2 makes greedy pick it, −5 on
    /// token 0 bans the leader, ids past the vocabulary change nothing; sampling at a
    /// temperature never draws a token biased by −100.
    #[test]
    fn a_logit_bias_shifts_the_listed_tokens_before_each_pick() {
        let greedy = |bias: &[(u32, f32)]| {
            let mut s = Sampler::new(SamplingConfig::greedy()).with_logit_bias(bias.into());
            s.sample(&mut [3.0, 2.0, -1.0], &[])
        };
        assert_eq!(greedy(&[]), 0);
        assert_eq!(greedy(&[(2, 5.0)]), 2);
        assert_eq!(greedy(&[(0, -5.0)]), 1);
        assert_eq!(greedy(&[(7, 100.0), (u32::MAX, 100.0)]), 0);
        let mut s = Sampler::new(SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 9,
            ..SamplingConfig::greedy()
        })
        .with_logit_bias([(0, -100.0)].as_slice().into());
        assert!((0..200).all(|_| s.sample(&mut [3.0, 2.0, 2.5], &[]) != 0));
    }
}
