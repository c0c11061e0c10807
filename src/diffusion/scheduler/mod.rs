//! Noise schedulers: Euler (discrete), Euler ancestral, DDIM, PNDM (PLMS) and DPM-Solver++
//! (2M), as in diffusers.
//!
//! A [`Scheduler`] is built once per generation for a number of steps. The sampling loop is
//!
//! ```text
//! x = noise.randn([b, 4, h, w]) · init_noise_sigma()
//! for i in 0..steps:
//!     out = unet(scale_model_input(x, i), timesteps()[i], …)      // ε or v
//!     x = step(out, i, x, &mut noise)      // multistep kinds keep their history
//! ```
//!
//! The training schedule (betas, `ᾱ_t`) comes from a [`SchedulerConfig`] (diffusers'
//! `scheduler/scheduler_config.json`); the sampler is a [`SchedulerKind`], by default the
//! file's class. Schedules are computed in f64 and the step arithmetic in f32, like diffusers.
//!
//! Timestep spacing follows diffusers exactly (numpy's round-half-to-even included):
//! * leading: `(0..n)·(T div n) + steps_offset`, reversed;
//! * trailing: `round(T + i·((T − T/n) − T)) − 1` for `i = 0..n`, numpy's `arange` arithmetic
//!   (1 step → `[T − 1]`);
//! * linspace: `linspace(0, T − 1, n)` reversed; kept fractional for Euler (the UNet takes a
//!   float timestep), rounded for DDIM.
//!
//! Euler σ's are `√((1 − ᾱ)/ᾱ)` linearly interpolated at the (possibly fractional) timesteps,
//! followed by a final 0.
//!
//! PNDM and DPM-Solver++ are multistep methods: [`Scheduler::step`] takes `&mut self` and
//! keeps their earlier model outputs, so a scheduler serves one sampling loop (build a new one,
//! or clone a fresh one, per image). DPM-Solver++ spaces its timesteps over `n + 1` points
//! and drops the last (diffusers' `DPMSolverMultistepScheduler.set_timesteps`); PNDM repeats
//! its second timestep (`steps + 1` evaluations).

mod config;
mod noise;

pub use config::{BetaSchedule, Prediction, SchedulerConfig, SchedulerKind, Spacing};
pub use noise::NoiseSource;

use candle_core::{DType, Tensor};

use super::error::{DiffusionError, Result};

/// A sampler set up for a fixed number of inference steps.
#[derive(Debug, Clone)]
pub struct Scheduler {
    kind: SchedulerKind,
    prediction: Prediction,
    /// The model's timestep input per step.
    timesteps: Vec<f64>,
    /// Euler kinds: σ per step plus a final 0 (`steps + 1` values); DDIM: empty.
    sigmas: Vec<f64>,
    /// DDIM: `(ᾱ_t, ᾱ_prev)` per step; Euler: empty.
    ddim_alphas: Vec<(f64, f64)>,
    init_noise_sigma: f64,
    /// DDIM: clamp range of the predicted `x₀`.
    clip: Option<f64>,
    /// PNDM: `ᾱ_t` (length `T`), the step between timesteps (`T div n`) and `ᾱ` after the end.
    pndm: Option<PndmSchedule>,
    /// Multistep history (PNDM, DPM-Solver++).
    state: MultistepState,
}

/// PNDM's schedule constants.
#[derive(Debug, Clone)]
struct PndmSchedule {
    alphas_cumprod: Vec<f64>,
    ratio: i64,
    final_alpha: f64,
}

/// What the multistep samplers remember between steps.
#[derive(Debug, Clone, Default)]
struct MultistepState {
    /// PNDM: the last (up to 4) ε's; DPM-Solver++: the last (up to 2) predicted `x₀`.
    outputs: Vec<Tensor>,
    /// PNDM: steps taken so far.
    counter: usize,
    /// PNDM: the sample its warm-up step started from.
    cur_sample: Option<Tensor>,
    /// DPM-Solver++: how many lower-order steps were taken (0, 1, then 2 = full order).
    lower_order_nums: usize,
}

/// DPM-Solver++ `(α_t, σ_t, λ_t)` for the Euler-style σ: `α = 1/√(σ² + 1)`, `σ_t = σ·α`,
/// `λ = ln α − ln σ_t` (+∞ at σ = 0).
fn dpm_alpha_sigma_lambda(sigma: f64) -> (f64, f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let sigma_t = sigma * alpha;
    (alpha, sigma_t, alpha.ln() - sigma_t.ln())
}

/// Karras et al. (2022) eq. 5 with ρ = 7 between the schedule's largest and smallest σ, `n`
/// values, descending (diffusers `_convert_to_karras`).
fn karras_sigmas(train_sigmas: &[f64], n: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let (lo, hi) = train_sigmas
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
    let (min_inv, max_inv) = (lo.powf(1.0 / RHO), hi.powf(1.0 / RHO));
    config::linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(RHO))
        .collect()
}

/// The (fractional) training timestep of `sigma`: linear interpolation in log σ between the
/// two neighbouring training σ's (diffusers `_sigma_to_t`; `log_sigmas` ascending).
fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let n = log_sigmas.len();
    if n < 2 {
        return 0.0;
    }
    let ls = sigma.max(1e-10).ln();
    let low = log_sigmas
        .iter()
        .rposition(|&l| ls - l >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let (a, b) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((a - ls) / (a - b)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// DPM-Solver++ timesteps (diffusers): `n + 1` points spread by `spacing`, the last dropped.
fn dpm_timesteps(spacing: Spacing, t: usize, n: usize, offset: usize) -> Vec<f64> {
    match spacing {
        Spacing::Linspace => {
            let mut v: Vec<f64> = config::linspace(0.0, (t - 1) as f64, n + 1)
                .into_iter()
                .map(f64::round_ties_even)
                .collect();
            v.reverse();
            v.pop();
            v
        }
        Spacing::Leading => {
            let ratio = t / (n + 1);
            (1..=n).rev().map(|i| (i * ratio + offset) as f64).collect()
        }
        Spacing::Trailing => spaced_timesteps(Spacing::Trailing, t, n, offset),
    }
}

/// numpy-style linear interpolation of `ys` (at `0, 1, …`) at `x`, clamped at both ends.
fn interp(x: f64, ys: &[f64]) -> f64 {
    let n = ys.len();
    if n == 0 {
        return 0.0;
    }
    if x <= 0.0 {
        return ys[0];
    }
    let last = (n - 1) as f64;
    if x >= last {
        return ys[n - 1];
    }
    let i = x.floor() as usize;
    let f = x - i as f64;
    if f == 0.0 {
        ys[i]
    } else {
        ys[i] + (ys[i + 1] - ys[i]) * f
    }
}

/// The inference timesteps (descending) for `n` steps over `t` training steps.
fn spaced_timesteps(spacing: Spacing, t: usize, n: usize, offset: usize) -> Vec<f64> {
    match spacing {
        Spacing::Leading => {
            let ratio = t / n;
            (0..n).rev().map(|i| (i * ratio + offset) as f64).collect()
        }
        Spacing::Trailing => {
            // numpy's `arange(T, 0, -T/n)` computes `T + i·((T − T/n) − T)`, which rounds
            // differently from `T − i·T/n` at exact .5 ties (e.g. n = 48). Where numpy's
            // length rounds up to n + 1 (a final −1 timestep, as for n = 61), we keep n steps.
            let tf = t as f64;
            let delta = (tf - tf / n as f64) - tf;
            (0..n)
                .map(|i| (tf + i as f64 * delta).round_ties_even() - 1.0)
                .collect()
        }
        Spacing::Linspace => {
            let mut v = config::linspace(0.0, (t - 1) as f64, n);
            v.reverse();
            v
        }
    }
}

impl Scheduler {
    /// Sets up `kind` for `steps` inference steps on the schedule of `cfg`.
    ///
    /// `steps == 0` or `steps > num_train_timesteps` is [`DiffusionError::BadInput`], and so is
    /// an invalid config or DDIM with `thresholding`.
    pub fn new(cfg: &SchedulerConfig, kind: SchedulerKind, steps: usize) -> Result<Self> {
        let t = cfg.num_train_timesteps;
        if steps == 0 || steps > t {
            return Err(DiffusionError::BadInput(format!(
                "the number of steps must lie in 1..={t}, got {steps}"
            )));
        }
        cfg.validate()
            .map_err(|r| DiffusionError::BadInput(format!("scheduler config: {r}")))?;
        let mut alphas_cumprod = cfg.alphas_cumprod();
        let mut timesteps = spaced_timesteps(cfg.spacing, t, steps, cfg.steps_offset);
        let mut sigmas = Vec::new();
        let mut ddim_alphas = Vec::new();
        let mut init_noise_sigma = 1.0;
        let mut clip = None;
        let mut pndm = None;
        match kind {
            SchedulerKind::EulerDiscrete | SchedulerKind::EulerAncestral => {
                if cfg.rescale_betas_zero_snr {
                    // As diffusers: keep the terminal σ finite.
                    if let Some(last) = alphas_cumprod.last_mut() {
                        *last = 2f64.powi(-24);
                    }
                }
                let train_sigmas: Vec<f64> = alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
                sigmas = timesteps.iter().map(|&ts| interp(ts, &train_sigmas)).collect();
                sigmas.push(0.0);
                let max = sigmas.iter().copied().fold(0.0, f64::max);
                init_noise_sigma = match cfg.spacing {
                    Spacing::Leading => (max * max + 1.0).sqrt(),
                    Spacing::Trailing | Spacing::Linspace => max,
                };
            }
            SchedulerKind::Ddim => {
                if cfg.thresholding {
                    return Err(DiffusionError::BadInput(
                        "DDIM with dynamic thresholding is not supported".into(),
                    ));
                }
                for ts in &mut timesteps {
                    *ts = ts.round_ties_even();
                }
                let final_alpha = if cfg.set_alpha_to_one {
                    1.0
                } else {
                    alphas_cumprod[0]
                };
                let ratio = t / steps;
                ddim_alphas = timesteps
                    .iter()
                    .map(|&ts| {
                        // Leading spacing with offset can reach T; use the last one as candle does.
                        let i = (ts as usize).min(t - 1);
                        let prev = i.checked_sub(ratio).map_or(final_alpha, |p| alphas_cumprod[p]);
                        (alphas_cumprod[i], prev)
                    })
                    .collect();
                clip = cfg.clip_sample.then_some(cfg.clip_sample_range);
            }
            SchedulerKind::Pndm => {
                // Ascending integer timesteps, then PLMS's order: the second-to-last repeated.
                let mut base: Vec<f64> = timesteps.iter().rev().map(|x| x.round_ties_even()).collect();
                if base.len() >= 2 {
                    let n = base.len();
                    base.insert(n - 1, base[n - 2]);
                }
                base.reverse();
                timesteps = base;
                // diffusers' PNDMScheduler has no zero-terminal-SNR option (it ignores the key),
                // and ᾱ_T = 0 would divide by zero: use the schedule without the rescale.
                let alphas_cumprod = if cfg.rescale_betas_zero_snr {
                    SchedulerConfig {
                        rescale_betas_zero_snr: false,
                        ..cfg.clone()
                    }
                    .alphas_cumprod()
                } else {
                    alphas_cumprod.clone()
                };
                let final_alpha = if cfg.set_alpha_to_one {
                    1.0
                } else {
                    alphas_cumprod[0]
                };
                pndm = Some(PndmSchedule {
                    alphas_cumprod,
                    ratio: (t / steps) as i64,
                    final_alpha,
                });
            }
            SchedulerKind::DpmSolverMultistep | SchedulerKind::DpmSolverMultistepKarras => {
                if cfg.rescale_betas_zero_snr
                    && let Some(last) = alphas_cumprod.last_mut()
                {
                    *last = 2f64.powi(-24);
                }
                let train_sigmas: Vec<f64> = alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
                if kind == SchedulerKind::DpmSolverMultistepKarras {
                    sigmas = karras_sigmas(&train_sigmas, steps);
                    let log_sigmas: Vec<f64> = train_sigmas.iter().map(|s| s.ln()).collect();
                    timesteps = sigmas
                        .iter()
                        .map(|&s| sigma_to_t(s, &log_sigmas).round_ties_even())
                        .collect();
                } else {
                    timesteps = dpm_timesteps(cfg.spacing, t, steps, cfg.steps_offset);
                    sigmas = timesteps.iter().map(|&ts| interp(ts, &train_sigmas)).collect();
                    // Equal σ's (repeated timesteps, or ones past T − 1 clamped onto it) make
                    // the solver divide by a zero log-SNR step.
                    if sigmas.windows(2).any(|w| w[1] >= w[0]) {
                        return Err(DiffusionError::BadInput(format!(
                            "DPM-Solver++ with {steps} steps repeats σ on this schedule; use fewer steps"
                        )));
                    }
                }
                sigmas.push(0.0);
            }
        }
        Ok(Self {
            kind,
            prediction: cfg.prediction,
            timesteps,
            sigmas,
            ddim_alphas,
            init_noise_sigma,
            clip,
            pndm,
            state: MultistepState::default(),
        })
    }

    /// The sampler.
    pub fn kind(&self) -> SchedulerKind {
        self.kind
    }

    /// What the model is taken to predict.
    pub fn prediction(&self) -> Prediction {
        self.prediction
    }

    /// Number of model evaluations (the steps asked for; one more for PNDM).
    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The model's timestep input per step, in order (descending).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Euler kinds and DPM-Solver++: σ per step followed by a final 0 (`num_steps + 1`
    /// values). DDIM and PNDM: empty.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Standard deviation of the initial latents: they are `randn · init_noise_sigma`.
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn check_step(&self, step: usize) -> Result<()> {
        if step >= self.timesteps.len() {
            return Err(DiffusionError::BadInput(format!(
                "step {step} out of range for a {}-step schedule",
                self.timesteps.len()
            )));
        }
        Ok(())
    }

    /// The UNet input at step `step` for latents `x` (any shape): `x / √(σ² + 1)` for the
    /// Euler kinds, `x` for the others.
    pub fn scale_model_input(&self, x: &Tensor, step: usize) -> Result<Tensor> {
        self.check_step(step)?;
        match self.kind {
            SchedulerKind::Ddim
            | SchedulerKind::Pndm
            | SchedulerKind::DpmSolverMultistep
            | SchedulerKind::DpmSolverMultistepKarras => Ok(x.clone()),
            SchedulerKind::EulerDiscrete | SchedulerKind::EulerAncestral => {
                let s = self.sigmas[step];
                Ok((x / (s * s + 1.0).sqrt())?)
            }
        }
    }

    /// Euler ancestral: `(σ_up, σ_down)` of step `step`; `σ_up = 0` at the last step.
    fn ancestral_sigmas(&self, step: usize) -> (f64, f64) {
        let (from, to) = (self.sigmas[step], self.sigmas[step + 1]);
        let up = if from > 0.0 {
            (to * to * (from * from - to * to) / (from * from))
                .max(0.0)
                .sqrt()
        } else {
            0.0
        };
        let down = (to * to - up * up).max(0.0).sqrt();
        (up, down)
    }

    /// Whether step `step` adds fresh noise (Euler ancestral before its last step).
    pub fn step_needs_noise(&self, step: usize) -> bool {
        self.kind == SchedulerKind::EulerAncestral
            && step < self.timesteps.len()
            && self.ancestral_sigmas(step).0 > 0.0
    }

    /// One denoising step from step index `step`: `model_output` (ε or v, the shape of
    /// `sample`) and the current latents `sample` (`x_t`) → `x_{t−1}`, in `sample`'s dtype.
    /// Euler ancestral draws its fresh noise (f32, `sample`'s shape) from `noise`; the other
    /// kinds leave `noise` untouched.
    pub fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        self.check_step(step)?;
        let fresh = if self.step_needs_noise(step) {
            Some(noise.randn(sample.dims(), sample.device())?)
        } else {
            None
        };
        self.step_with_noise(model_output, step, sample, fresh.as_ref())
    }

    /// [`Self::step`] with the ancestral noise given explicitly (`[…]` like `sample`); it is
    /// required exactly when [`Self::step_needs_noise`] and ignored otherwise.
    pub fn step_with_noise(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.check_step(step)?;
        if model_output.dims() != sample.dims() {
            return Err(DiffusionError::BadInput(format!(
                "scheduler step: model output {:?} and sample {:?} differ in shape",
                model_output.dims(),
                sample.dims()
            )));
        }
        if step == 0 {
            // A new sampling loop: forget a multistep history left by an earlier one.
            self.state = MultistepState::default();
        }
        let out_dtype = sample.dtype();
        let m = model_output.to_dtype(DType::F32)?;
        let x = sample.to_dtype(DType::F32)?;
        let prev = match self.kind {
            SchedulerKind::EulerDiscrete | SchedulerKind::EulerAncestral => {
                let sigma = self.sigmas[step];
                let x0 = self.euler_x0(&m, &x, sigma)?;
                let derivative = ((&x - x0)? / sigma)?;
                if self.kind == SchedulerKind::EulerDiscrete {
                    let dt = self.sigmas[step + 1] - sigma;
                    (&x + (derivative * dt)?)?
                } else {
                    let (up, down) = self.ancestral_sigmas(step);
                    let prev = (&x + (derivative * (down - sigma))?)?;
                    if up > 0.0 {
                        let n = noise.ok_or_else(|| {
                            DiffusionError::BadInput(format!(
                                "Euler ancestral step {step} needs a noise tensor"
                            ))
                        })?;
                        if n.dims() != sample.dims() {
                            return Err(DiffusionError::BadInput(format!(
                                "scheduler step: noise {:?} and sample {:?} differ in shape",
                                n.dims(),
                                sample.dims()
                            )));
                        }
                        (prev + (n.to_dtype(DType::F32)? * up)?)?
                    } else {
                        prev
                    }
                }
            }
            SchedulerKind::Ddim => {
                let (a_t, a_prev) = self.ddim_alphas[step];
                let b_t = 1.0 - a_t;
                let (x0, eps) = match self.prediction {
                    Prediction::Epsilon => {
                        let x0 = ((&x - (&m * b_t.sqrt())?)? * (1.0 / a_t.sqrt()))?;
                        (x0, m.clone())
                    }
                    Prediction::VPrediction => {
                        let x0 = ((&x * a_t.sqrt())? - (&m * b_t.sqrt())?)?;
                        let eps = ((&m * a_t.sqrt())? + (&x * b_t.sqrt())?)?;
                        (x0, eps)
                    }
                };
                let x0 = match self.clip {
                    Some(r) => x0.clamp(-r, r)?,
                    None => x0,
                };
                ((x0 * a_prev.sqrt())? + (eps * (1.0 - a_prev).sqrt())?)?
            }
            SchedulerKind::Pndm => self.pndm_step(&m, step, &x)?,
            SchedulerKind::DpmSolverMultistep | SchedulerKind::DpmSolverMultistepKarras => {
                self.dpm_step(&m, step, &x)?
            }
        };
        Ok(prev.to_dtype(out_dtype)?)
    }

    /// One PLMS step (diffusers `PNDMScheduler.step_plms`): a linear multistep combination of
    /// the last ε's, with a two-evaluation warm-up on the first two calls.
    fn pndm_step(&mut self, m: &Tensor, step: usize, x: &Tensor) -> Result<Tensor> {
        let Some(p) = &self.pndm else {
            return Err(DiffusionError::BadInput("PNDM schedule missing".into()));
        };
        let st = &mut self.state;
        let mut t = self.timesteps[step] as i64;
        let mut prev_t = t - p.ratio;
        if st.counter == 1 {
            prev_t = t;
            t += p.ratio;
        } else {
            if st.outputs.len() > 3 {
                st.outputs.remove(0);
            }
            st.outputs.push(m.clone());
        }
        let e = &st.outputs;
        let n = e.len();
        let (eps, sample) = match (n, st.counter) {
            (1, 0) => {
                st.cur_sample = Some(x.clone());
                (m.clone(), x.clone())
            }
            (1, _) => {
                let start = st.cur_sample.take().unwrap_or_else(|| x.clone());
                (((m + &e[0])? * 0.5)?, start)
            }
            (2, _) => ((((&e[1] * 3.0)? - &e[0])? * 0.5)?, x.clone()),
            (3, _) => (
                ((((&e[2] * 23.0)? - (&e[1] * 16.0)?)? + (&e[0] * 5.0)?)? / 12.0)?,
                x.clone(),
            ),
            _ => (
                ((((((&e[n - 1] * 55.0)? - (&e[n - 2] * 59.0)?)? + (&e[n - 3] * 37.0)?)?
                    - (&e[n - 4] * 9.0)?)?)
                    / 24.0)?,
                x.clone(),
            ),
        };
        st.counter += 1;
        let last = p.alphas_cumprod.len() - 1;
        let a_t = p.alphas_cumprod[(t.max(0) as usize).min(last)];
        let a_prev = if prev_t >= 0 {
            p.alphas_cumprod[(prev_t as usize).min(last)]
        } else {
            p.final_alpha
        };
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let eps = match self.prediction {
            Prediction::Epsilon => eps,
            Prediction::VPrediction => ((eps * a_t.sqrt())? + (&sample * b_t.sqrt())?)?,
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        Ok(((sample * sample_coeff)? - (eps * ((a_prev - a_t) / denom))?)?)
    }

    /// One DPM-Solver++ step (diffusers `DPMSolverMultistepScheduler`, `dpmsolver++`,
    /// order 2, midpoint): first order on the first and the last step, second order between.
    fn dpm_step(&mut self, m: &Tensor, step: usize, x: &Tensor) -> Result<Tensor> {
        let n = self.timesteps.len();
        let (alpha_s0, sigma_s0, lambda_s0) = dpm_alpha_sigma_lambda(self.sigmas[step]);
        // The model output as a prediction of x₀.
        let x0 = match self.prediction {
            Prediction::Epsilon => ((x - (m * sigma_s0)?)? / alpha_s0)?,
            Prediction::VPrediction => ((x * alpha_s0)? - (m * sigma_s0)?)?,
        };
        let st = &mut self.state;
        if st.outputs.len() > 1 {
            st.outputs.remove(0);
        }
        st.outputs.push(x0);
        let lower_order_final = step == n - 1;
        let (alpha_t, sigma_t, lambda_t) = dpm_alpha_sigma_lambda(self.sigmas[step + 1]);
        let h = lambda_t - lambda_s0;
        let phi = alpha_t * ((-h).exp() - 1.0);
        let m0 = &st.outputs[st.outputs.len() - 1];
        let first = ((x * (sigma_t / sigma_s0))? - (m0 * phi)?)?;
        let prev = if st.lower_order_nums < 1 || lower_order_final || st.outputs.len() < 2 {
            first
        } else {
            let m1 = &st.outputs[st.outputs.len() - 2];
            let prev_sigma = self.sigmas[step.saturating_sub(1)];
            let (_, _, lambda_s1) = dpm_alpha_sigma_lambda(prev_sigma);
            let r0 = (lambda_s0 - lambda_s1) / h;
            let d1 = ((m0 - m1)? * (1.0 / r0))?;
            (first - (d1 * (0.5 * phi))?)?
        };
        if st.lower_order_nums < 2 {
            st.lower_order_nums += 1;
        }
        Ok(prev)
    }

    /// The clean latents `x₀` the model predicts at step `step` from its output
    /// `model_output` and the current latents `sample` (f32; same shape), without advancing
    /// the sampler — what a per-step preview shows.
    pub fn predict_x0(&self, model_output: &Tensor, step: usize, sample: &Tensor) -> Result<Tensor> {
        self.check_step(step)?;
        let m = model_output.to_dtype(DType::F32)?;
        let x = sample.to_dtype(DType::F32)?;
        // Variance-preserving latents x = α·x₀ + σ·ε.
        let vp = |alpha: f64, sigma: f64| -> Result<Tensor> {
            Ok(match self.prediction {
                Prediction::Epsilon => ((&x - (&m * sigma)?)? * (1.0 / alpha.max(1e-12)))?,
                Prediction::VPrediction => ((&x * alpha)? - (&m * sigma)?)?,
            })
        };
        let from_cumprod = |a: f64| vp(a.sqrt(), (1.0 - a).max(0.0).sqrt());
        match self.kind {
            SchedulerKind::EulerDiscrete | SchedulerKind::EulerAncestral => {
                self.euler_x0(&m, &x, self.sigmas[step])
            }
            SchedulerKind::Ddim => from_cumprod(self.ddim_alphas[step].0),
            SchedulerKind::Pndm => {
                let a = self
                    .pndm
                    .as_ref()
                    .and_then(|p| {
                        let t = self.timesteps[step].max(0.0) as usize;
                        p.alphas_cumprod.get(t).copied()
                    })
                    .unwrap_or(1.0);
                from_cumprod(a)
            }
            SchedulerKind::DpmSolverMultistep | SchedulerKind::DpmSolverMultistepKarras => {
                let (alpha, sigma, _) = dpm_alpha_sigma_lambda(self.sigmas[step]);
                vp(alpha, sigma)
            }
        }
    }

    /// Euler: the predicted clean latents from the σ-scaled model output.
    fn euler_x0(&self, m: &Tensor, x: &Tensor, sigma: f64) -> Result<Tensor> {
        Ok(match self.prediction {
            Prediction::Epsilon => (x - (m * sigma)?)?,
            Prediction::VPrediction => {
                ((m * (-sigma / (sigma * sigma + 1.0).sqrt()))? + (x / (sigma * sigma + 1.0))?)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use serde_json::json;
    use std::path::Path;

    fn cfg(spacing: Spacing) -> SchedulerConfig {
        SchedulerConfig {
            spacing,
            ..SchedulerConfig::default()
        }
    }

    #[test]
    fn trailing_rounds_half_to_even_like_numpy() {
        // np.arange(1000, 0, -62.5).round() - 1
        let ts = spaced_timesteps(Spacing::Trailing, 1000, 16, 1);
        let want = [
            999., 937., 874., 811., 749., 687., 624., 561., 499., 437., 374., 311., 249., 187., 124., 61.,
        ];
        assert_eq!(ts, want);
        assert_eq!(spaced_timesteps(Spacing::Trailing, 1000, 1, 1), vec![999.0]);
        assert_eq!(
            spaced_timesteps(Spacing::Trailing, 1000, 3, 1),
            vec![999.0, 666.0, 332.0]
        );
    }

    #[test]
    fn leading_and_linspace() {
        assert_eq!(
            spaced_timesteps(Spacing::Leading, 1000, 4, 1),
            vec![751., 501., 251., 1.]
        );
        assert_eq!(
            spaced_timesteps(Spacing::Leading, 1000, 3, 0),
            vec![666., 333., 0.]
        );
        assert_eq!(
            spaced_timesteps(Spacing::Linspace, 1000, 3, 1),
            vec![999., 499.5, 0.]
        );
        // DDIM rounds (half to even).
        let s = Scheduler::new(&cfg(Spacing::Linspace), SchedulerKind::Ddim, 3).unwrap();
        assert_eq!(s.timesteps(), &[999., 500., 0.]);
    }

    #[test]
    fn sd_sigmas_are_the_known_ones() {
        let s = Scheduler::new(&cfg(Spacing::Linspace), SchedulerKind::EulerDiscrete, 2).unwrap();
        // k-diffusion's sigma_max / sigma_min for SD: 14.6146, 0.0292.
        assert!((s.sigmas()[0] - 14.6146).abs() < 1e-3, "{:?}", s.sigmas());
        assert!((s.sigmas()[1] - 0.0292).abs() < 1e-3, "{:?}", s.sigmas());
        assert_eq!(s.sigmas()[2], 0.0);
        assert!((s.init_noise_sigma() - 14.6146).abs() < 1e-3);
        let l = Scheduler::new(&cfg(Spacing::Leading), SchedulerKind::EulerDiscrete, 1000).unwrap();
        // Leading with offset 1 reaches t = 1000: clamped to the last σ; init σ = √(σ²+1).
        assert_eq!(l.timesteps()[0], 1000.0);
        assert!((l.init_noise_sigma() - (14.6146f64.powi(2) + 1.0).sqrt()).abs() < 1e-3);
    }

    #[test]
    fn fractional_timesteps_interpolate_sigmas() {
        let c = cfg(Spacing::Linspace);
        let ac = c.alphas_cumprod();
        let sig = |i: usize| ((1.0 - ac[i]) / ac[i]).sqrt();
        let s = Scheduler::new(&c, SchedulerKind::EulerDiscrete, 3).unwrap();
        assert!((s.sigmas()[1] - 0.5 * (sig(499) + sig(500))).abs() < 1e-12);
    }

    #[test]
    fn beta_schedules() {
        let c = SchedulerConfig::default();
        let b = c.betas();
        assert_eq!(b.len(), 1000);
        assert!((b[0] - 0.00085).abs() < 1e-12 && (b[999] - 0.012).abs() < 1e-12);
        let lin = SchedulerConfig {
            beta_schedule: BetaSchedule::Linear,
            beta_start: 0.0001,
            beta_end: 0.02,
            ..c.clone()
        };
        assert!((lin.betas()[500] - (0.0001 + 0.0199 * 500.0 / 999.0)).abs() < 1e-12);
        let cos = SchedulerConfig {
            beta_schedule: BetaSchedule::SquaredCosCapV2,
            ..c.clone()
        };
        let cb = cos.betas();
        assert!(cb.iter().all(|&b| b > 0.0 && b <= 0.999));
        assert_eq!(cb[999], 0.999);
        assert!(cb[0] < 1e-4);
        let z = SchedulerConfig {
            rescale_betas_zero_snr: true,
            spacing: Spacing::Trailing,
            ..c.clone()
        };
        let za = z.alphas_cumprod();
        assert!(za[999].abs() < 1e-12);
        assert!((za[0] - c.alphas_cumprod()[0]).abs() < 1e-12);
        // Euler keeps the terminal σ finite.
        let s = Scheduler::new(&z, SchedulerKind::EulerDiscrete, 4).unwrap();
        assert!((s.sigmas()[0] - 4096.0).abs() < 1.0, "{:?}", s.sigmas());
    }

    #[test]
    fn config_defaults_follow_the_class() {
        let p = Path::new("scheduler_config.json");
        let pndm = SchedulerConfig::from_json(
            &json!({"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear",
                    "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1,
                    "skip_prk_steps": true, "trained_betas": null}),
            p,
        )
        .unwrap();
        assert_eq!(pndm.class, SchedulerKind::Pndm);
        assert_eq!(pndm.spacing, Spacing::Leading);
        assert!(!pndm.set_alpha_to_one && !pndm.clip_sample);
        let ddim = SchedulerConfig::from_json(&json!({"_class_name": "DDIMScheduler"}), p).unwrap();
        assert_eq!(ddim.class, SchedulerKind::Ddim);
        assert!(ddim.set_alpha_to_one && ddim.clip_sample);
        assert_eq!(ddim.beta_schedule, BetaSchedule::Linear);
        let ea = SchedulerConfig::from_json(
            &json!({"_class_name": "EulerAncestralDiscreteScheduler", "prediction_type": "v_prediction"}),
            p,
        )
        .unwrap();
        assert_eq!(ea.class, SchedulerKind::EulerAncestral);
        assert_eq!(ea.spacing, Spacing::Linspace);
        assert_eq!(ea.prediction, Prediction::VPrediction);
        for bad in [
            json!({"beta_schedule": "sigmoid"}),
            json!({"prediction_type": "sample"}),
            json!({"timestep_spacing": "karras"}),
            json!({"num_train_timesteps": 0}),
            json!({"num_train_timesteps": "1000"}),
            json!({"trained_betas": [0.1, 0.2]}),
            json!({"beta_start": 1.5}),
            json!([1, 2]),
        ] {
            let e = SchedulerConfig::from_json(&bad, p).unwrap_err();
            assert!(matches!(e, DiffusionError::BadConfig { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn kinds_parse() {
        assert_eq!(
            "euler".parse::<SchedulerKind>().unwrap(),
            SchedulerKind::EulerDiscrete
        );
        assert_eq!(
            "Euler-A".parse::<SchedulerKind>().unwrap(),
            SchedulerKind::EulerAncestral
        );
        assert_eq!(
            "euler_ancestral".parse::<SchedulerKind>().unwrap(),
            SchedulerKind::EulerAncestral
        );
        assert_eq!("ddim".parse::<SchedulerKind>().unwrap(), SchedulerKind::Ddim);
        assert_eq!(
            "DDIMScheduler".parse::<SchedulerKind>().unwrap(),
            SchedulerKind::Ddim
        );
        assert_eq!("PLMS".parse::<SchedulerKind>().unwrap(), SchedulerKind::Pndm);
        assert_eq!(
            "dpmpp_2m".parse::<SchedulerKind>().unwrap(),
            SchedulerKind::DpmSolverMultistep
        );
        let e = "lms".parse::<SchedulerKind>().unwrap_err().to_string();
        assert!(e.contains("lms") && e.contains("dpm++2m"), "{e}");
        for k in SchedulerKind::ALL {
            assert_eq!(k.name().parse::<SchedulerKind>().unwrap(), k);
            if k != SchedulerKind::DpmSolverMultistepKarras {
                assert_eq!(SchedulerKind::from_class_name(k.class_name()), k);
            }
        }
        assert_eq!(
            SchedulerKind::from_class_name("LMSDiscreteScheduler"),
            SchedulerKind::EulerDiscrete
        );
    }

    #[test]
    fn bad_steps_and_indices() {
        let c = SchedulerConfig::default();
        for k in SchedulerKind::ALL {
            assert!(matches!(
                Scheduler::new(&c, k, 0),
                Err(DiffusionError::BadInput(_))
            ));
            assert!(matches!(
                Scheduler::new(&c, k, 1001),
                Err(DiffusionError::BadInput(_))
            ));
            // DPM-Solver++ spreads n + 1 points: 1000 leading steps would repeat timesteps.
            let steps = if k == SchedulerKind::DpmSolverMultistep {
                assert!(matches!(
                    Scheduler::new(&c, k, 1000),
                    Err(DiffusionError::BadInput(_))
                ));
                500
            } else {
                1000
            };
            let mut s = Scheduler::new(&c, k, steps).unwrap();
            let evals = if k == SchedulerKind::Pndm {
                steps + 1
            } else {
                steps
            };
            assert_eq!(s.num_steps(), evals);
            let x = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
            let mut n = NoiseSource::new(0);
            assert!(s.scale_model_input(&x, evals).is_err());
            assert!(s.step(&x, evals, &x, &mut n).is_err());
            let y = Tensor::zeros((1, 4, 2, 3), DType::F32, &Device::Cpu).unwrap();
            assert!(s.step(&y, 0, &x, &mut n).is_err());
        }
        let thr = SchedulerConfig {
            thresholding: true,
            ..c
        };
        assert!(Scheduler::new(&thr, SchedulerKind::Ddim, 10).is_err());
        assert!(Scheduler::new(&thr, SchedulerKind::EulerDiscrete, 10).is_ok());
    }

    #[test]
    fn predicted_x0_is_where_the_last_step_lands() {
        // A step to the end of the schedule (σ = 0, or ᾱ = 1) lands on the predicted x₀, so
        // there `predict_x0` must equal `step` for every deterministic kind and prediction.
        let dev = Device::Cpu;
        let x = Tensor::from_vec(vec![0.3f32, -1.2, 2.0, 0.5], (1, 1, 2, 2), &dev).unwrap();
        let m = Tensor::from_vec(vec![-0.4f32, 0.8, 0.1, 1.5], (1, 1, 2, 2), &dev).unwrap();
        for prediction in [Prediction::Epsilon, Prediction::VPrediction] {
            for kind in [
                SchedulerKind::EulerDiscrete,
                SchedulerKind::Ddim,
                SchedulerKind::DpmSolverMultistep,
            ] {
                let c = SchedulerConfig {
                    set_alpha_to_one: true,
                    prediction,
                    ..cfg(Spacing::Leading)
                };
                let mut s = Scheduler::new(&c, kind, 1).unwrap();
                let x0 = s.predict_x0(&m, 0, &x).unwrap();
                let stepped = s.step_with_noise(&m, 0, &x, None).unwrap();
                let d = (x0 - stepped)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(d < 1e-5, "{kind:?} {prediction:?}: |Δ| {d}");
            }
        }
        let s = Scheduler::new(&cfg(Spacing::Leading), SchedulerKind::Ddim, 4).unwrap();
        assert!(s.predict_x0(&m, 4, &x).is_err());
    }

    #[test]
    fn ancestral_step_without_noise_is_an_error() {
        let c = cfg(Spacing::Trailing);
        let mut s = Scheduler::new(&c, SchedulerKind::EulerAncestral, 2).unwrap();
        let x = Tensor::ones((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(s.step_needs_noise(0) && !s.step_needs_noise(1));
        assert!(s.step_with_noise(&x, 0, &x, None).is_err());
        assert!(s.step_with_noise(&x, 1, &x, None).is_ok());
    }

    /// Timesteps and σ's as diffusers 0.31 prints them for the SD schedule (offset 1).
    #[test]
    fn pndm_and_dpm_timesteps_match_diffusers() {
        let c = |spacing| SchedulerConfig {
            spacing,
            ..SchedulerConfig::default()
        };
        let ts = |cfg: &SchedulerConfig, k, n| -> Vec<f64> {
            Scheduler::new(cfg, k, n).unwrap().timesteps().to_vec()
        };
        let pndm = SchedulerKind::Pndm;
        let dpm = SchedulerKind::DpmSolverMultistep;
        assert_eq!(
            ts(&c(Spacing::Leading), pndm, 6),
            [831.0, 665.0, 665.0, 499.0, 333.0, 167.0, 1.0]
        );
        assert_eq!(
            ts(&c(Spacing::Linspace), pndm, 5),
            [999.0, 749.0, 749.0, 500.0, 250.0, 0.0]
        );
        assert_eq!(ts(&c(Spacing::Leading), pndm, 1), [1.0]);
        assert_eq!(
            ts(&c(Spacing::Linspace), dpm, 10),
            [
                999.0, 899.0, 799.0, 699.0, 599.0, 500.0, 400.0, 300.0, 200.0, 100.0
            ]
        );
        assert_eq!(
            ts(&c(Spacing::Leading), dpm, 6),
            [853.0, 711.0, 569.0, 427.0, 285.0, 143.0]
        );
        assert_eq!(ts(&c(Spacing::Trailing), dpm, 4), [999.0, 749.0, 499.0, 249.0]);
        let s = Scheduler::new(&c(Spacing::Leading), dpm, 6).unwrap();
        // diffusers accumulates ᾱ in f32; ours is f64.
        for (got, want) in s.sigmas().iter().zip([6.570652, 3.485456, 2.047313]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        assert_eq!(s.sigmas().len(), 7);
        assert_eq!(s.sigmas()[6], 0.0);
        assert_eq!(s.init_noise_sigma(), 1.0);
    }

    /// Karras σ's and their timesteps as diffusers 0.31 prints them (`use_karras_sigmas`).
    #[test]
    fn dpm_karras_schedule_matches_diffusers() {
        let c = SchedulerConfig::default();
        let s = Scheduler::new(&c, SchedulerKind::DpmSolverMultistepKarras, 6).unwrap();
        assert_eq!(s.timesteps(), [999.0, 837.0, 594.0, 249.0, 30.0, 0.0]);
        let want = [14.61465, 6.08216, 2.23216, 0.69257, 0.16976, 0.02917, 0.0];
        for (got, want) in s.sigmas().iter().zip(want) {
            assert!((got - want).abs() < 2e-5, "{got} vs {want}");
        }
        let s = Scheduler::new(&c, SchedulerKind::DpmSolverMultistepKarras, 25).unwrap();
        assert_eq!(
            s.timesteps(),
            [
                999.0, 970.0, 938.0, 905.0, 868.0, 829.0, 786.0, 739.0, 687.0, 630.0, 568.0, 500.0, 427.0,
                352.0, 278.0, 207.0, 146.0, 96.0, 59.0, 34.0, 18.0, 9.0, 4.0, 1.0, 0.0
            ]
        );
        let p = Path::new("scheduler_config.json");
        let k = SchedulerConfig::from_json(
            &json!({"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": true}),
            p,
        )
        .unwrap();
        assert_eq!(k.class, SchedulerKind::DpmSolverMultistepKarras);
    }

    /// Review findings: numpy's trailing arithmetic, σ-based repeat check, PNDM on a
    /// zero-terminal-SNR schedule, and a scheduler reused for a second loop.
    #[test]
    fn trailing_ties_zero_snr_pndm_and_reuse() {
        let trailing = SchedulerConfig {
            spacing: Spacing::Trailing,
            ..SchedulerConfig::default()
        };
        // diffusers 0.31, Euler and DDIM, 48 trailing steps (numpy's arange rounds 936.5 → 936).
        let want: Vec<f64> = [
            999, 978, 957, 936, 916, 895, 874, 853, 832, 811, 791, 770, 749, 728, 707, 686, 666, 645, 624,
            603, 582, 561, 541, 520, 499, 478, 457, 436, 416, 395, 374, 353, 332, 311, 291, 270, 249, 228,
            207, 186, 166, 145, 124, 103, 82, 61, 41, 20,
        ]
        .iter()
        .map(|&x| f64::from(x))
        .collect();
        for k in [SchedulerKind::EulerDiscrete, SchedulerKind::Ddim] {
            assert_eq!(
                Scheduler::new(&trailing, k, 48).unwrap().timesteps(),
                want.as_slice()
            );
        }
        // Leading spacing with offset 1 at 999 steps puts timestep 1000 onto σ(999) twice.
        let dpm = SchedulerKind::DpmSolverMultistep;
        let e = Scheduler::new(&SchedulerConfig::default(), dpm, 999).unwrap_err();
        assert!(e.to_string().contains("repeats"), "{e}");
        // PNDM ignores zero-SNR rescaling, as diffusers does, instead of dividing by ᾱ = 0.
        let zsnr = SchedulerConfig {
            rescale_betas_zero_snr: true,
            prediction: Prediction::VPrediction,
            ..trailing.clone()
        };
        let x = Tensor::ones((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let mut noise = NoiseSource::new(0);
        for k in SchedulerKind::ALL {
            let mut s = Scheduler::new(&zsnr, k, 4).unwrap();
            // Two loops on one scheduler: the second starts from a clean history.
            let mut last = vec![];
            for _ in 0..2 {
                let mut y = x.clone();
                for i in 0..s.num_steps() {
                    y = s.step(&x, i, &y, &mut noise).unwrap();
                }
                last.push(y.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
            assert!(last[0].iter().all(|v| v.is_finite()), "{k}: {:?}", last[0]);
            if k != SchedulerKind::EulerAncestral {
                assert_eq!(last[0], last[1], "{k}: a second loop must repeat the first");
            }
        }
    }
}
