//! Hook points: named places in the forward pass where activations can be recorded (for
//! fitting) or transformed (for steering).
//!
//! Names are architecture-independent, one set per decoder layer `i` (docs/ARCHITECTURE.md,
//! "Hook points"):
//! `layers.{i}.attn_norm`, `.attn_out`, `.post_attn_norm` (Gemma only), `.mlp_norm`,
//! `.mlp_out`, `.post_mlp_norm` (Gemma only), `.resid`. On the Llama family, `mlp_norm` is the
//! output of the module Hugging Face calls `post_attention_layernorm` — the norm *before* the
//! MLP.

use crate::transport::TokenWindow;

use super::config::{Family, ModelConfig};
use super::error::Result;

/// The kind of a hook point within a decoder layer, in forward order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookKind {
    /// Output of the pre-attention norm.
    AttnNorm,
    /// Output of the attention output projection.
    AttnOut,
    /// Output of a true post-attention norm (Gemma 2 and 3), before the residual add.
    PostAttnNorm,
    /// Output of the pre-MLP norm.
    MlpNorm,
    /// Output of the MLP down projection.
    MlpOut,
    /// Output of a true post-MLP norm (Gemma 2 and 3), before the residual add.
    PostMlpNorm,
    /// The residual stream after the block.
    Resid,
}

impl HookKind {
    /// All kinds in forward order.
    pub const ALL: [HookKind; 7] = [
        HookKind::AttnNorm,
        HookKind::AttnOut,
        HookKind::PostAttnNorm,
        HookKind::MlpNorm,
        HookKind::MlpOut,
        HookKind::PostMlpNorm,
        HookKind::Resid,
    ];

    /// The name suffix.
    pub fn suffix(&self) -> &'static str {
        match self {
            HookKind::AttnNorm => "attn_norm",
            HookKind::AttnOut => "attn_out",
            HookKind::PostAttnNorm => "post_attn_norm",
            HookKind::MlpNorm => "mlp_norm",
            HookKind::MlpOut => "mlp_out",
            HookKind::PostMlpNorm => "post_mlp_norm",
            HookKind::Resid => "resid",
        }
    }

    fn from_suffix(s: &str) -> Option<Self> {
        HookKind::ALL.into_iter().find(|k| k.suffix() == s)
    }
}

/// A hook point: a layer and a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookPoint {
    /// Decoder layer index.
    pub layer: usize,
    /// Place within the layer.
    pub kind: HookKind,
}

impl HookPoint {
    /// A dense index: `layer × 7 + kind`, for per-hook tables.
    pub fn index(&self) -> usize {
        self.layer * HookKind::ALL.len() + self.kind as usize
    }

    /// The inverse of [`HookPoint::index`].
    pub fn from_index(i: usize) -> Self {
        let n = HookKind::ALL.len();
        HookPoint {
            layer: i / n,
            kind: HookKind::ALL[i % n],
        }
    }

    /// `layers.{i}.{kind}`.
    pub fn name(&self) -> String {
        format!("layers.{}.{}", self.layer, self.kind.suffix())
    }

    /// Parses `layers.{i}.{kind}`.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("layers.")?;
        let (layer, kind) = rest.split_once('.')?;
        Some(HookPoint {
            layer: layer.parse().ok()?,
            kind: HookKind::from_suffix(kind)?,
        })
    }
}

impl std::fmt::Display for HookPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "layers.{}.{}", self.layer, self.kind.suffix())
    }
}

/// The hook points a model with this configuration has, in forward order (the same list for a
/// loaded model and for its header alone): five per layer, seven on Gemma, whose post-norms
/// (`post_attn_norm`, `post_mlp_norm`) exist nowhere else.
pub fn hook_points(cfg: &ModelConfig) -> Vec<HookPoint> {
    let kinds: &[HookKind] = match cfg.family {
        Family::Gemma => &HookKind::ALL,
        Family::Llama | Family::Gpt2 => &[
            HookKind::AttnNorm,
            HookKind::AttnOut,
            HookKind::MlpNorm,
            HookKind::MlpOut,
            HookKind::Resid,
        ],
    };
    (0..cfg.n_layers)
        .flat_map(|layer| kinds.iter().map(move |&kind| HookPoint { layer, kind }))
        .collect()
}

/// What the forward pass should do after a hook returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookFlow {
    /// Go on.
    Continue,
    /// Stop the forward pass here (e.g. fitting needs nothing beyond this point).
    Stop,
}

/// An activation at a hook point: `[batch, tokens, dim]` row-major, mutable so hooks can
/// transform it in place.
pub struct Activation<'a> {
    /// The values, length `batch × tokens × dim`.
    pub data: &'a mut [f32],
    /// `[batch, tokens, dim]`.
    pub shape: [usize; 3],
    /// Real (non-padding) tokens per batch row; tokens at index ≥ `valid[b]` are padding.
    pub valid: &'a [usize],
    /// Per batch row: position of the chunk's first token and the prompt length.
    pub windows: &'a [TokenWindow],
}

/// Receives activations during a forward pass.
pub trait Hooks: Send {
    /// Whether this object wants to see `point` (points it does not want cost nothing).
    fn wants(&self, point: HookPoint) -> bool;
    /// Called at `point` with the live activation; may record and/or modify it.
    fn on_activation(&mut self, point: HookPoint, act: Activation<'_>) -> Result<HookFlow>;
}

/// No hooks: the plain forward pass.
pub struct NoHooks;

impl Hooks for NoHooks {
    fn wants(&self, _: HookPoint) -> bool {
        false
    }
    fn on_activation(&mut self, _: HookPoint, _: Activation<'_>) -> Result<HookFlow> {
        Ok(HookFlow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for i in 0..40 {
            let p = HookPoint::from_index(i);
            assert_eq!(p.index(), i);
            assert_eq!(HookPoint::parse(&p.name()), Some(p));
        }
        assert_eq!(
            HookPoint::parse("layers.3.mlp_norm").map(|p| p.kind),
            Some(HookKind::MlpNorm)
        );
        assert!(HookPoint::parse("layers.x.mlp_norm").is_none());
        assert!(HookPoint::parse("layers.1.nothing").is_none());
    }
}
