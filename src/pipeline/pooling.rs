//! Pooling token activations into one vector per sample, and a hook that records pooled
//! activations at chosen hook points during a forward pass.

use std::collections::BTreeMap;

use crate::runtime::{Activation, HookFlow, HookPoint, Hooks};

/// How a sample's token activations become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// Mean over the real tokens (BOS included when the tokenizer adds one, padding
    /// excluded), as the reference does.
    #[default]
    Mean,
    /// Elementwise maximum over the real tokens (AurA's choice).
    Max,
    /// The last real token.
    Last,
}

impl Pooling {
    /// The name used on the command line and in maps files.
    pub fn name(&self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Max => "max",
            Pooling::Last => "last",
        }
    }

    /// Pools `tokens` (`[n, d]`, row-major, the real tokens of one sample) into `out` (`[d]`).
    pub fn pool(&self, tokens: &[f32], d: usize, out: &mut Vec<f32>) {
        out.clear();
        let n = tokens.len() / d.max(1);
        match self {
            Pooling::Mean => {
                let mut acc = vec![0.0f64; d];
                for row in tokens.chunks_exact(d) {
                    acc.iter_mut().zip(row).for_each(|(a, &v)| *a += f64::from(v));
                }
                out.extend(acc.iter().map(|a| (a / n.max(1) as f64) as f32));
            }
            Pooling::Max => {
                out.resize(d, f32::NEG_INFINITY);
                for row in tokens.chunks_exact(d) {
                    out.iter_mut().zip(row).for_each(|(m, &v)| *m = m.max(v));
                }
            }
            Pooling::Last => out.extend_from_slice(tokens.get((n.max(1) - 1) * d..n * d).unwrap_or(&[])),
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mean" => Ok(Pooling::Mean),
            "max" => Ok(Pooling::Max),
            "last" => Ok(Pooling::Last),
            other => Err(format!("unknown pooling `{other}`: use mean, max or last")),
        }
    }
}

/// Records pooled activations (`[samples, d]` per hook point, rows in batch order, appended
/// batch after batch) at a set of hook points, and stops the forward pass after the last one.
pub struct PoolingRecorder {
    points: Vec<HookPoint>,
    pooling: Pooling,
    /// Pooled rows per hook point, row-major `[samples, d]`.
    pub pooled: BTreeMap<HookPoint, Vec<f32>>,
    scratch: Vec<f32>,
}

impl PoolingRecorder {
    /// Records at `points` with `pooling`.
    pub fn new(points: &[HookPoint], pooling: Pooling) -> Self {
        let mut points = points.to_vec();
        points.sort();
        points.dedup();
        Self {
            pooled: points.iter().map(|p| (*p, Vec::new())).collect(),
            points,
            pooling,
            scratch: Vec::new(),
        }
    }
}

impl Hooks for PoolingRecorder {
    fn wants(&self, point: HookPoint) -> bool {
        self.points.binary_search(&point).is_ok()
    }

    fn on_activation(&mut self, point: HookPoint, act: Activation<'_>) -> crate::runtime::Result<HookFlow> {
        let [b, t, d] = act.shape;
        let Some(out) = self.pooled.get_mut(&point) else {
            return Ok(HookFlow::Continue);
        };
        for (row, &valid) in act.data.chunks_exact(t * d).zip(act.valid).take(b) {
            self.pooling.pool(&row[..valid.min(t) * d], d, &mut self.scratch);
            out.extend_from_slice(&self.scratch);
        }
        // Nothing after the last recorded point is needed.
        Ok(if self.points.last() == Some(&point) {
            HookFlow::Stop
        } else {
            HookFlow::Continue
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_mean_max_last_over_real_tokens() {
        let tokens = [1.0, 10.0, 3.0, -2.0, 5.0, 4.0];
        let mut out = Vec::new();
        Pooling::Mean.pool(&tokens, 2, &mut out);
        assert_eq!(out, vec![3.0, 4.0]);
        Pooling::Max.pool(&tokens, 2, &mut out);
        assert_eq!(out, vec![5.0, 10.0]);
        Pooling::Last.pool(&tokens, 2, &mut out);
        assert_eq!(out, vec![5.0, 4.0]);
        assert_eq!("MAX".parse::<Pooling>(), Ok(Pooling::Max));
        assert!("median".parse::<Pooling>().is_err());
    }
}
