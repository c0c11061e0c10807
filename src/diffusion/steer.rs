//! Steering a diffusion pipeline: [`DiffHooks`] that apply a compiled [`SteeringPlan`] at
//! text-encoder and UNet hook points, optionally only within a window of denoising steps.
//!
//! 4-D activations (UNet GroupNorms) follow docs/ARCHITECTURE.md, "Transport on 3-D and 4-D
//! activations": Linear-AcT transports each
//! channel's spatial mean and adds the shift to every pixel; 3-D activations (LayerNorms)
//! are transported token by token.

use crate::runtime::HookFlow;
use crate::transport::{SteeringPlan, SteeringStack, TokenWindow, TransportError};

use super::error::{DiffusionError, Result};
use super::hooks::{ActShape, DiffActivation, DiffHooks, HookSite};

/// Denoising steps `[start, end)` during which UNet maps act; text-encoder maps act on the
/// prompt encoding, which every step reuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepWindow {
    /// First steered step (0-based).
    pub start: usize,
    /// One past the last steered step.
    pub end: usize,
}

impl StepWindow {
    /// Every step.
    pub const ALL: StepWindow = StepWindow {
        start: 0,
        end: usize::MAX,
    };

    /// Whether step `i` is steered.
    pub fn contains(&self, i: usize) -> bool {
        i >= self.start && i < self.end
    }
}

/// Applies a steering plan (plan index = hook id of the pipeline's registry).
pub struct DiffSteeringHooks {
    plan: SteeringPlan,
    names: Vec<String>,
    unet_first: usize,
    window: StepWindow,
    step: usize,
}

impl DiffSteeringHooks {
    /// Compiles `stack` for the pipeline's hook points `sites`; `unet_first` is the id of
    /// the first UNet hook (text-encoder hooks come before it). Maps whose width differs
    /// from the hook point's are refused.
    pub fn new(
        stack: &SteeringStack,
        sites: &[HookSite],
        unet_first: usize,
        window: StepWindow,
    ) -> Result<Self> {
        let names: Vec<String> = sites.iter().map(|s| s.name.clone()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let dims: Vec<usize> = sites.iter().map(|s| s.dim).collect();
        let plan = stack
            .compile(&refs, Some(&dims))
            .map_err(|e| DiffusionError::Hook {
                hook: "steering".into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            plan,
            names,
            unet_first,
            window,
            step: 0,
        })
    }

    /// Sets the denoising step about to run.
    pub fn set_step(&mut self, step: usize) {
        self.step = step;
    }

    /// Whether anything is steered at all.
    pub fn is_empty(&self) -> bool {
        self.plan.is_empty()
    }
}

fn hook_err(name: &str, e: TransportError) -> DiffusionError {
    DiffusionError::Hook {
        hook: name.to_string(),
        reason: e.to_string(),
    }
}

impl DiffHooks for DiffSteeringHooks {
    fn wants(&self, id: usize) -> bool {
        (id < self.unet_first || self.window.contains(self.step)) && self.plan.is_active(id)
    }

    fn on_activation(&mut self, id: usize, act: DiffActivation<'_>) -> Result<HookFlow> {
        let name = self.names.get(id).map_or("?", String::as_str);
        match act.shape {
            ActShape::Spatial(shape) => self
                .plan
                .apply_4d(id, name, act.data, shape)
                .map_err(|e| hook_err(name, e))?,
            ActShape::Tokens(shape) => self
                .plan
                .apply_3d(id, name, act.data, shape, TokenWindow::default())
                .map_err(|e| hook_err(name, e))?,
        }
        Ok(HookFlow::Continue)
    }
}

/// Runs `first`, then `second`, at every hook either wants (e.g. steering, then recording).
pub struct Chain<'a>(pub &'a mut dyn DiffHooks, pub &'a mut dyn DiffHooks);

impl DiffHooks for Chain<'_> {
    fn wants(&self, id: usize) -> bool {
        self.0.wants(id) || self.1.wants(id)
    }
    fn on_activation(&mut self, id: usize, act: DiffActivation<'_>) -> Result<HookFlow> {
        let shape = act.shape;
        let data = act.data;
        let mut flow = HookFlow::Continue;
        if self.0.wants(id) {
            flow = self.0.on_activation(
                id,
                DiffActivation {
                    data: &mut *data,
                    shape,
                },
            )?;
        }
        if flow == HookFlow::Continue && self.1.wants(id) {
            flow = self.1.on_activation(id, DiffActivation { data, shape })?;
        }
        Ok(flow)
    }
}
