//! Steering during a forward pass: [`Hooks`] that apply a compiled [`SteeringPlan`].

use std::sync::Arc;

use crate::transport::{SteeringPlan, SteeringStack, TransportError};

use super::error::{Result, RuntimeError};
use super::hooks::{Activation, HookFlow, HookKind, HookPoint, Hooks};

/// Compiles `stack` for a model with `n_layers` layers of width `d` (plan index =
/// [`HookPoint::index`]).
pub fn compile_plan(
    stack: &SteeringStack,
    n_layers: usize,
    d: usize,
) -> std::result::Result<SteeringPlan, TransportError> {
    let n = n_layers * HookKind::ALL.len();
    let names: Vec<String> = (0..n).map(|i| HookPoint::from_index(i).name()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let dims = vec![d; n];
    stack.compile(&refs, Some(&dims))
}

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
        Ok(Self {
            plan: compile_plan(stack, n_layers, d)?,
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

/// Steering that differs per batch row: row `b` of every activation is steered by
/// `plans[b]` (`None`: left as it is). This is how one decode step serves several requests,
/// each with its own concept strengths (`act-studio serve`). A row sees exactly what
/// [`SteeringHooks`] with its plan would do to it in a batch of one: each row's real tokens
/// are transported on their own, with their own token window.
#[derive(Default)]
pub struct RowSteering {
    plans: Vec<Option<Arc<SteeringPlan>>>,
}

impl RowSteering {
    /// One plan (or none) per batch row, in batch order.
    pub fn new(plans: Vec<Option<Arc<SteeringPlan>>>) -> Self {
        Self { plans }
    }
}

impl Hooks for RowSteering {
    fn wants(&self, point: HookPoint) -> bool {
        let i = point.index();
        self.plans.iter().flatten().any(|p| p.is_active(i))
    }

    fn on_activation(&mut self, point: HookPoint, act: Activation<'_>) -> Result<HookFlow> {
        let [b, t, d] = act.shape;
        if self.plans.len() != b {
            return Err(RuntimeError::BadInput(format!(
                "{} row plans for a batch of {b}",
                self.plans.len()
            )));
        }
        let i = point.index();
        let rows = act.data.chunks_exact_mut(t * d).zip(act.windows).zip(act.valid);
        for (((row, window), &valid), plan) in rows.zip(&self.plans) {
            let Some(plan) = plan.as_deref().filter(|p| p.is_active(i)) else {
                continue;
            };
            let n = valid.min(t);
            plan.apply_3d(i, "", &mut row[..n * d], [1, n, d], *window)
                .map_err(|source| RuntimeError::Hook {
                    hook: point.name(),
                    source,
                })?;
        }
        Ok(HookFlow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::transport::{HookMap, Method, Support, TokenScope, TokenWindow};

    /// A plan that maps every neuron at `hook` by `ω·a + β` (unbounded support), at λ.
    fn plan(
        hook: usize,
        d: usize,
        omega: f32,
        beta: f32,
        lambda: f32,
        scope: TokenScope,
    ) -> Arc<SteeringPlan> {
        let map = HookMap::new(
            Method::LinearAct,
            Support::Unbounded,
            vec![omega; d],
            vec![beta; d],
            vec![f32::NEG_INFINITY; d],
            vec![f32::INFINITY; d],
            BTreeMap::new(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut per_hook = vec![Vec::new(); hook + 1];
        per_hook[hook] = vec![(Arc::new(map), lambda)];
        Arc::new(SteeringPlan::from_parts(per_hook, scope))
    }

    #[test]
    fn each_row_is_steered_as_it_would_be_alone() {
        let (t, d) = (3, 4);
        let point = HookPoint::from_index(2);
        let plans = vec![
            Some(plan(2, d, 2.0, 1.0, 1.0, TokenScope::All)),
            None,
            Some(plan(2, d, -1.0, 0.5, 0.5, TokenScope::GeneratedOnly)),
        ];
        let valid = [3, 2, 3];
        let windows = [
            TokenWindow {
                first_position: 0,
                prompt_len: 3,
            },
            TokenWindow {
                first_position: 0,
                prompt_len: 2,
            },
            TokenWindow {
                first_position: 1,
                prompt_len: 2,
            },
        ];
        let x: Vec<f32> = (0..3 * t * d).map(|i| i as f32 * 0.25 - 3.0).collect();
        let mut together = x.clone();
        let mut rows = RowSteering::new(plans.clone());
        assert!(rows.wants(point) && !rows.wants(HookPoint::from_index(1)));
        let act = Activation {
            data: &mut together,
            shape: [3, t, d],
            valid: &valid,
            windows: &windows,
        };
        assert_eq!(rows.on_activation(point, act).ok(), Some(HookFlow::Continue));
        for b in 0..3 {
            let mut alone = x[b * t * d..(b + 1) * t * d].to_vec();
            if let Some(p) = &plans[b] {
                let mut one = SteeringHooks::from_plan((**p).clone());
                let act = Activation {
                    data: &mut alone,
                    shape: [1, t, d],
                    valid: &valid[b..b + 1],
                    windows: &windows[b..b + 1],
                };
                assert!(one.on_activation(point, act).is_ok());
            }
            assert_eq!(&together[b * t * d..(b + 1) * t * d], &alone[..], "row {b}");
        }
        // Row 0 changed, row 1 (no plan) did not, row 2 only on its generated tokens.
        assert_ne!(together[..t * d], x[..t * d]);
        assert_eq!(together[t * d..2 * t * d], x[t * d..2 * t * d]);
        assert_eq!(together[2 * t * d..2 * t * d + d], x[2 * t * d..2 * t * d + d]);
        assert_ne!(together[2 * t * d + d..], x[2 * t * d + d..]);
        // A plan list that does not match the batch is an error, not a panic.
        let mut short = RowSteering::new(vec![None]);
        let mut data = x.clone();
        let act = Activation {
            data: &mut data,
            shape: [3, t, d],
            valid: &valid,
            windows: &windows,
        };
        assert!(short.on_activation(point, act).is_err());
    }
}
