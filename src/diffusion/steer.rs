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
use super::hooks::{ActShape, DiffActivation, DiffHooks, DiffPhase, HookSite, RunPosition};

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

/// Applies a steering stack at a pipeline's hook points (plan index = hook id).
///
/// Concepts fitted on one denoising step act as one plan on every batch row (both guidance
/// branches and the negative prompt's encoding), as diffusers forward hooks would. Concepts
/// fitted per timestep along denoising trajectories (maps `HOOK@tK`, see
/// `pipeline::diffusion_fit`) act, at each step, with their maps of the nearest fitted
/// timestep and only on the conditional rows and the prompts' encoding — the rows they were
/// fitted on — so that guidance amplifies the steering as it amplifies the prompt instead of
/// cancelling it. Within a hook point, the first kind acts before the second.
pub struct DiffSteeringHooks {
    every_row: SteeringPlan,
    per_step: Vec<SteeringPlan>,
    names: Vec<String>,
    unet_first: usize,
    window: StepWindow,
    at: RunPosition,
}

impl DiffSteeringHooks {
    /// Compiles `stack` for the pipeline's hook points `sites`; `unet_first` is the id of
    /// the first UNet hook (text-encoder hooks come before it); `timesteps` are the model's
    /// timestep inputs of the run's steps (they pick per-timestep maps). Maps whose width
    /// differs from the hook point's are refused.
    pub fn new(
        stack: &SteeringStack,
        sites: &[HookSite],
        unet_first: usize,
        window: StepWindow,
        timesteps: &[f64],
    ) -> Result<Self> {
        let names: Vec<String> = sites.iter().map(|s| s.name.clone()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let dims: Vec<usize> = sites.iter().map(|s| s.dim).collect();
        let err = |e: TransportError| DiffusionError::Hook {
            hook: "steering".into(),
            reason: e.to_string(),
        };
        let (plain, timed) = stack.split_timestep_concepts();
        let every_row = plain.compile(&refs, Some(&dims)).map_err(err)?;
        let per_step = if timed.has_timestep_maps() {
            if timesteps.is_empty() {
                return Err(DiffusionError::BadInput(
                    "maps fitted per denoising timestep need the run's timesteps".into(),
                ));
            }
            timesteps
                .iter()
                .map(|&t| timed.compile_at_timestep(&refs, Some(&dims), t))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(err)?
        } else {
            Vec::new()
        };
        Ok(Self {
            every_row,
            per_step,
            names,
            unet_first,
            window,
            at: RunPosition::default(),
        })
    }

    /// Whether anything is steered at all.
    pub fn is_empty(&self) -> bool {
        self.every_row.is_empty() && self.per_step.iter().all(SteeringPlan::is_empty)
    }

    /// The per-timestep plan of the current step, unless the negative prompt is being
    /// encoded (text-encoder hooks run before step 0 and see its plan; their maps are the
    /// same in every step's).
    fn step_plan(&self) -> Option<&SteeringPlan> {
        if self.at.negative {
            return None;
        }
        let last = self.per_step.len().checked_sub(1)?;
        self.per_step.get(self.at.step.min(last))
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
        (id < self.unet_first || self.window.contains(self.at.step))
            && (self.every_row.is_active(id) || self.step_plan().is_some_and(|p| p.is_active(id)))
    }

    fn on_activation(&mut self, id: usize, act: DiffActivation<'_>) -> Result<HookFlow> {
        let name = self.names.get(id).map_or("?", String::as_str);
        apply_plan(&self.every_row, id, name, act.data, act.shape)?;
        if let Some(plan) = self.step_plan().filter(|p| p.is_active(id)) {
            // The conditional rows (UNet), or the prompts' encoding (text encoder).
            let skip = if id < self.unet_first {
                0
            } else {
                self.at.unconditional
            };
            let len = act.shape.row_len();
            let shape = act.shape.with_batch(act.shape.batch().saturating_sub(skip));
            if let Some(data) = act.data.get_mut(skip * len..) {
                apply_plan(plan, id, name, data, shape)?;
            }
        }
        Ok(HookFlow::Continue)
    }

    fn begin(&mut self, phase: DiffPhase) {
        self.at.enter(phase);
    }
}

/// Applies `plan`'s maps at hook `id` to `data` laid out as `shape`.
fn apply_plan(plan: &SteeringPlan, id: usize, name: &str, data: &mut [f32], shape: ActShape) -> Result<()> {
    match shape {
        ActShape::Spatial(shape) => plan.apply_4d(id, name, data, shape),
        ActShape::Tokens(shape) => plan.apply_3d(id, name, data, shape, TokenWindow::default()),
    }
    .map_err(|e| hook_err(name, e))
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
    fn begin(&mut self, phase: DiffPhase) {
        self.0.begin(phase);
        self.1.begin(phase);
    }
}
