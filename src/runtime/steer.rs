//! Steering during a forward pass: [`Hooks`] that apply a compiled [`SteeringPlan`].

use crate::transport::{SteeringPlan, SteeringStack, TransportError};

use super::error::{Result, RuntimeError};
use super::hooks::{Activation, HookFlow, HookKind, HookPoint, Hooks};

/// Applies a steering plan at its hook points (plan index = [`HookPoint::index`]).
pub struct SteeringHooks {
    plan: SteeringPlan,
}

impl SteeringHooks {
    /// Compiles `stack` for a model with `n_layers` layers of width `d`.
    pub fn new(
        stack: &SteeringStack,
        n_layers: usize,
        d: usize,
    ) -> std::result::Result<Self, TransportError> {
        let n = n_layers * HookKind::ALL.len();
        let names: Vec<String> = (0..n).map(|i| HookPoint::from_index(i).name()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let dims = vec![d; n];
        Ok(Self {
            plan: stack.compile(&refs, Some(&dims))?,
        })
    }

    /// Wraps an already compiled plan.
    pub fn from_plan(plan: SteeringPlan) -> Self {
        Self { plan }
    }

    /// Whether anything is steered.
    pub fn is_empty(&self) -> bool {
        self.plan.is_empty()
    }
}

impl Hooks for SteeringHooks {
    fn wants(&self, point: HookPoint) -> bool {
        self.plan.is_active(point.index())
    }

    fn on_activation(&mut self, point: HookPoint, act: Activation<'_>) -> Result<HookFlow> {
        let [b, t, d] = act.shape;
        // Only a row's real tokens are steered: padding is never touched, so "last token"
        // means the row's last real token however the batch is padded.
        let rows = act.data.chunks_exact_mut(t * d).zip(act.windows).zip(act.valid);
        for ((row, window), &valid) in rows.take(b) {
            let n = valid.min(t);
            self.plan
                .apply_3d(point.index(), "", &mut row[..n * d], [1, n, d], *window)
                .map_err(|source| RuntimeError::Hook {
                    hook: point.name(),
                    source,
                })?;
        }
        Ok(HookFlow::Continue)
    }
}
