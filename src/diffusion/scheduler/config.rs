//! Scheduler settings: the sampler kinds we implement and diffusers'
//! `scheduler/scheduler_config.json`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde_json::Value;

use crate::diffusion::error::{DiffusionError, Result};
use crate::diffusion::weights::read_json;

/// The samplers implemented here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// diffusers `EulerDiscreteScheduler` (Karras et al. Algorithm 2 with `s_churn = 0`).
    EulerDiscrete,
    /// diffusers `EulerAncestralDiscreteScheduler` (k-diffusion `sample_euler_ancestral`,
    /// eta 1); the sampler of SD-Turbo / SDXL-Turbo.
    EulerAncestral,
    /// diffusers `DDIMScheduler` with `eta = 0` (deterministic).
    Ddim,
    /// diffusers `PNDMScheduler` with `skip_prk_steps` (PLMS, Liu et al. 2022): the default
    /// sampler of SD 1.x folders. It evaluates the UNet `steps + 1` times (the second
    /// timestep twice, for its warm-up).
    Pndm,
    /// diffusers `DPMSolverMultistepScheduler` with its defaults: DPM-Solver++ (Lu et al.
    /// 2022), second order, midpoint solver, first order on the last step (the popular
    /// "DPM++ 2M").
    DpmSolverMultistep,
    /// [`Self::DpmSolverMultistep`] on Karras et al.'s σ schedule (ρ = 7), diffusers'
    /// `use_karras_sigmas=True` ("DPM++ 2M Karras").
    DpmSolverMultistepKarras,
}

impl SchedulerKind {
    /// All kinds, in menu order.
    pub const ALL: [SchedulerKind; 6] = [
        SchedulerKind::EulerDiscrete,
        SchedulerKind::EulerAncestral,
        SchedulerKind::Ddim,
        SchedulerKind::Pndm,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::DpmSolverMultistepKarras,
    ];

    /// The kind to use for a diffusers scheduler class name (`_class_name`).
    ///
    /// `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler`, `DDIMScheduler`,
    /// `PNDMScheduler` and `DPMSolverMultistepScheduler` map to themselves. Every other class
    /// (`LMSDiscreteScheduler`, `DDPMScheduler`, …) is not implemented and maps to
    /// [`SchedulerKind::EulerDiscrete`], which runs with the same training betas, prediction
    /// type and timestep spacing — a different sampler on the same noise schedule, as
    /// diffusers' `EulerDiscreteScheduler.from_config(pipe.scheduler.config)` does.
    pub fn from_class_name(class: &str) -> Self {
        match class {
            "EulerAncestralDiscreteScheduler" => SchedulerKind::EulerAncestral,
            "DDIMScheduler" => SchedulerKind::Ddim,
            "PNDMScheduler" => SchedulerKind::Pndm,
            "DPMSolverMultistepScheduler" => SchedulerKind::DpmSolverMultistep,
            _ => SchedulerKind::EulerDiscrete,
        }
    }

    /// Whether diffusers implements `class` with a sampler we have (otherwise
    /// [`Self::from_class_name`] falls back to Euler).
    pub fn is_implemented_class(class: &str) -> bool {
        Self::ALL.iter().any(|k| k.class_name() == class)
    }

    /// Short name accepted by [`FromStr`]: `euler`, `euler-a`, `ddim`, `pndm`, `dpm++2m`,
    /// `dpm++2m-karras`.
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::EulerDiscrete => "euler",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Pndm => "pndm",
            SchedulerKind::DpmSolverMultistep => "dpm++2m",
            SchedulerKind::DpmSolverMultistepKarras => "dpm++2m-karras",
        }
    }

    /// The diffusers class name.
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::EulerDiscrete => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::Pndm => "PNDMScheduler",
            SchedulerKind::DpmSolverMultistep | SchedulerKind::DpmSolverMultistepKarras => {
                "DPMSolverMultistepScheduler"
            }
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = DiffusionError;

    /// Parses `euler`, `euler-a` / `euler_a` / `euler-ancestral` / `euler_ancestral`, `ddim`,
    /// `pndm` / `plms`, `dpm++2m` / `dpmpp-2m` / `dpm`, `dpm++2m-karras` / `dpmpp-2m-karras`
    /// (case-insensitive) and the five diffusers class names.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        match t.to_ascii_lowercase().replace('_', "-").as_str() {
            "euler" | "euler-discrete" | "eulerdiscretescheduler" => Ok(SchedulerKind::EulerDiscrete),
            "euler-a" | "euler-ancestral" | "eulera" | "eulerancestraldiscretescheduler" => {
                Ok(SchedulerKind::EulerAncestral)
            }
            "ddim" | "ddimscheduler" => Ok(SchedulerKind::Ddim),
            "pndm" | "plms" | "pndmscheduler" => Ok(SchedulerKind::Pndm),
            "dpm++2m" | "dpmpp-2m" | "dpmpp2m" | "dpm++" | "dpm" | "dpmsolvermultistepscheduler" => {
                Ok(SchedulerKind::DpmSolverMultistep)
            }
            "dpm++2m-karras" | "dpmpp-2m-karras" | "dpmpp2m-karras" | "dpm++-karras" | "dpm-karras" => {
                Ok(SchedulerKind::DpmSolverMultistepKarras)
            }
            _ => Err(DiffusionError::BadInput(format!(
                "unknown scheduler `{t}` (expected one of: euler, euler-a, ddim, pndm, dpm++2m, dpm++2m-karras)"
            ))),
        }
    }
}

/// How the inference timesteps are spread over the training timesteps (Lin et al. 2023,
/// table 2), as diffusers' `timestep_spacing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Spacing {
    /// `(0..n)·(T/n) + steps_offset`, reversed (integer division).
    Leading,
    /// `round(T, T − T/n, …) − 1`: always starts at `T − 1`; the one Turbo models need.
    Trailing,
    /// `linspace(0, T − 1, n)` reversed (fractional timesteps for Euler, rounded for DDIM).
    Linspace,
}

impl FromStr for Spacing {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "leading" => Ok(Spacing::Leading),
            "trailing" => Ok(Spacing::Trailing),
            "linspace" => Ok(Spacing::Linspace),
            other => Err(DiffusionError::BadInput(format!(
                "unknown timestep spacing `{other}` (expected leading, trailing or linspace)"
            ))),
        }
    }
}

/// What the denoising model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prediction {
    /// The added noise ε (SD 1.x, SD 2.x-base, SDXL, Turbo).
    Epsilon,
    /// The velocity `v = √ᾱ·ε − √(1−ᾱ)·x₀` (SD 2.x 768).
    VPrediction,
}

/// How the training betas grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, T)`.
    Linear,
    /// `linspace(√beta_start, √beta_end, T)²` (every Stable Diffusion).
    ScaledLinear,
    /// The cosine schedule of Nichol & Dhariwal (`betas_for_alpha_bar`, max beta 0.999).
    SquaredCosCapV2,
}

/// A diffusers `scheduler_config.json`, reduced to what the implemented samplers use.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// `_class_name` in the file (empty when absent).
    pub class_name: String,
    /// The kind the file asks for (see [`SchedulerKind::from_class_name`]).
    pub class: SchedulerKind,
    /// Training timesteps `T` (1000).
    pub num_train_timesteps: usize,
    /// First training beta.
    pub beta_start: f64,
    /// Last training beta.
    pub beta_end: f64,
    /// Shape of the beta schedule.
    pub beta_schedule: BetaSchedule,
    /// Explicit betas (length `T`), overriding the schedule when present.
    pub trained_betas: Option<Vec<f64>>,
    /// What the model predicts.
    pub prediction: Prediction,
    /// Timestep spacing.
    pub spacing: Spacing,
    /// Added to the leading-spaced timesteps (1 for SD).
    pub steps_offset: usize,
    /// DDIM: `ᾱ` after the last step is 1 (true) or `ᾱ_0` (false, SD).
    pub set_alpha_to_one: bool,
    /// DDIM: clamp the predicted `x₀` to `±clip_sample_range`.
    pub clip_sample: bool,
    /// DDIM: the clamp range.
    pub clip_sample_range: f64,
    /// Rescale the betas to zero terminal SNR (Lin et al. 2023).
    pub rescale_betas_zero_snr: bool,
    /// DDIM dynamic thresholding (not supported; rejected by DDIM).
    pub thresholding: bool,
}

impl Default for SchedulerConfig {
    /// The Stable Diffusion 1.x/2.x schedule (scaled-linear betas 0.00085…0.012, 1000 steps,
    /// ε-prediction, leading spacing, offset 1) with the Euler sampler.
    fn default() -> Self {
        Self {
            class_name: String::new(),
            class: SchedulerKind::EulerDiscrete,
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            prediction: Prediction::Epsilon,
            spacing: Spacing::Leading,
            steps_offset: 1,
            set_alpha_to_one: false,
            clip_sample: false,
            clip_sample_range: 1.0,
            rescale_betas_zero_snr: false,
            thresholding: false,
        }
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> DiffusionError {
    DiffusionError::BadConfig {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn opt_usize(v: &Value, key: &str, path: &Path) -> Result<Option<usize>> {
    get(v, key)
        .map(|x| {
            x.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(path, format!("`{key}` must be a non-negative integer, got {x}")))
        })
        .transpose()
}

fn opt_f64(v: &Value, key: &str, path: &Path) -> Result<Option<f64>> {
    get(v, key)
        .map(|x| {
            x.as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| bad(path, format!("`{key}` must be a number, got {x}")))
        })
        .transpose()
}

fn opt_bool(v: &Value, key: &str, path: &Path) -> Result<Option<bool>> {
    get(v, key)
        .map(|x| {
            x.as_bool()
                .ok_or_else(|| bad(path, format!("`{key}` must be true or false, got {x}")))
        })
        .transpose()
}

fn opt_str<'a>(v: &'a Value, key: &str, path: &Path) -> Result<Option<&'a str>> {
    get(v, key)
        .map(|x| {
            x.as_str()
                .ok_or_else(|| bad(path, format!("`{key}` must be a string, got {x}")))
        })
        .transpose()
}

impl SchedulerConfig {
    /// Reads a diffusers `scheduler/scheduler_config.json`.
    ///
    /// Missing keys take the defaults of the file's own `_class_name` in diffusers (so a
    /// `PNDMScheduler` / `DDIMScheduler` file defaults to leading spacing, the Euler classes to
    /// linspace; `set_alpha_to_one` and `clip_sample` default to true only for DDIM/DDPM).
    /// Unknown keys are ignored, and so are settings none of our samplers implement
    /// (`interpolation_type`, DPM-Solver variants, …; the pipeline warns about them).
    /// `use_karras_sigmas` picks [`SchedulerKind::DpmSolverMultistepKarras`] for a
    /// `DPMSolverMultistepScheduler` file. Malformed or unsupported values are
    /// [`DiffusionError::BadConfig`].
    pub fn from_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        Self::from_json(&v, path)
    }

    /// Parses an already-read config; `path` is only used in error messages.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        if !v.is_object() {
            return Err(bad(path, "expected a JSON object"));
        }
        let class_name = opt_str(v, "_class_name", path)?.unwrap_or("").to_string();
        let mut class = SchedulerKind::from_class_name(&class_name);
        if class == SchedulerKind::DpmSolverMultistep
            && opt_bool(v, "use_karras_sigmas", path)?.unwrap_or(false)
        {
            class = SchedulerKind::DpmSolverMultistepKarras;
        }
        let leading_by_default = matches!(
            class_name.as_str(),
            "DDIMScheduler" | "DDPMScheduler" | "PNDMScheduler" | "LCMScheduler" | "TCDScheduler"
        );
        let ddim_like = matches!(class_name.as_str(), "DDIMScheduler" | "DDPMScheduler");
        let beta_schedule = match opt_str(v, "beta_schedule", path)?.unwrap_or("linear") {
            "linear" => BetaSchedule::Linear,
            "scaled_linear" => BetaSchedule::ScaledLinear,
            "squaredcos_cap_v2" => BetaSchedule::SquaredCosCapV2,
            other => {
                return Err(bad(
                    path,
                    format!(
                        "unsupported beta_schedule `{other}` (supported: linear, scaled_linear, squaredcos_cap_v2)"
                    ),
                ));
            }
        };
        let prediction = match opt_str(v, "prediction_type", path)?.unwrap_or("epsilon") {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::VPrediction,
            other => {
                return Err(bad(
                    path,
                    format!("unsupported prediction_type `{other}` (supported: epsilon, v_prediction)"),
                ));
            }
        };
        let spacing = match opt_str(v, "timestep_spacing", path)? {
            Some(s) => s.parse::<Spacing>().map_err(|e| bad(path, e.to_string()))?,
            None if leading_by_default => Spacing::Leading,
            None => Spacing::Linspace,
        };
        let trained_betas = match get(v, "trained_betas") {
            None => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|x| {
                        x.as_f64()
                            .ok_or_else(|| bad(path, format!("`trained_betas` must hold numbers, got {x}")))
                    })
                    .collect::<Result<Vec<f64>>>()?,
            ),
            Some(x) => {
                return Err(bad(
                    path,
                    format!("`trained_betas` must be a list or null, got {x}"),
                ));
            }
        };
        let d = Self::default();
        let cfg = Self {
            class_name,
            class,
            num_train_timesteps: opt_usize(v, "num_train_timesteps", path)?.unwrap_or(1000),
            beta_start: opt_f64(v, "beta_start", path)?.unwrap_or(0.0001),
            beta_end: opt_f64(v, "beta_end", path)?.unwrap_or(0.02),
            beta_schedule,
            trained_betas,
            prediction,
            spacing,
            steps_offset: opt_usize(v, "steps_offset", path)?.unwrap_or(0),
            set_alpha_to_one: opt_bool(v, "set_alpha_to_one", path)?
                .unwrap_or(class_name_is(v, "DDIMScheduler")),
            clip_sample: opt_bool(v, "clip_sample", path)?.unwrap_or(ddim_like),
            clip_sample_range: opt_f64(v, "clip_sample_range", path)?.unwrap_or(d.clip_sample_range),
            rescale_betas_zero_snr: opt_bool(v, "rescale_betas_zero_snr", path)?.unwrap_or(false),
            thresholding: opt_bool(v, "thresholding", path)?.unwrap_or(false),
        };
        cfg.validate().map_err(|reason| bad(path, reason))?;
        Ok(cfg)
    }

    /// Checks the values are usable; the reason otherwise.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = self.num_train_timesteps;
        if t == 0 || t > 100_000 {
            return Err(format!("num_train_timesteps = {t} is out of range (1..=100000)"));
        }
        if let Some(b) = &self.trained_betas
            && b.len() != t
        {
            return Err(format!(
                "trained_betas has {} values for {t} training timesteps",
                b.len()
            ));
        }
        if self.trained_betas.is_none() && self.beta_schedule != BetaSchedule::SquaredCosCapV2 {
            for (k, b) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
                if !(b.is_finite() && b > 0.0 && b < 1.0) {
                    return Err(format!("{k} = {b} must lie in (0, 1)"));
                }
            }
        }
        if let Some(bad) = self
            .raw_betas()
            .into_iter()
            .find(|b| !(b.is_finite() && *b > 0.0 && *b < 1.0))
        {
            return Err(format!("training beta {bad} is outside (0, 1)"));
        }
        if !(self.clip_sample_range.is_finite() && self.clip_sample_range > 0.0) {
            return Err(format!(
                "clip_sample_range = {} must be positive",
                self.clip_sample_range
            ));
        }
        if self.steps_offset >= t {
            return Err(format!(
                "steps_offset = {} must be below num_train_timesteps = {t}",
                self.steps_offset
            ));
        }
        Ok(())
    }

    /// The training betas, length `T` (after the zero-terminal-SNR rescale if asked).
    pub fn betas(&self) -> Vec<f64> {
        let betas = self.raw_betas();
        if self.rescale_betas_zero_snr {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        }
    }

    /// The betas of the schedule (or `trained_betas`), before any rescale.
    fn raw_betas(&self) -> Vec<f64> {
        let t = self.num_train_timesteps;
        if let Some(b) = &self.trained_betas {
            b.clone()
        } else {
            match self.beta_schedule {
                BetaSchedule::Linear => linspace(self.beta_start, self.beta_end, t),
                BetaSchedule::ScaledLinear => linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), t)
                    .into_iter()
                    .map(|b| b * b)
                    .collect(),
                BetaSchedule::SquaredCosCapV2 => cosine_betas(t, 0.999),
            }
        }
    }

    /// `ᾱ_t = Π_{s≤t} (1 − β_s)`, length `T`.
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        let mut acc = 1.0;
        self.betas()
            .into_iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect()
    }
}

fn class_name_is(v: &Value, class: &str) -> bool {
    v.get("_class_name").and_then(Value::as_str) == Some(class)
}

/// `n` evenly spaced values from `a` to `b` inclusive (numpy's `linspace`: the last value is
/// exactly `b`).
pub(crate) fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![a],
        _ => {
            let step = (b - a) / (n - 1) as f64;
            (0..n)
                .map(|i| if i + 1 == n { b } else { a + step * i as f64 })
                .collect()
        }
    }
}

/// diffusers' `betas_for_alpha_bar` with the cosine `ᾱ(t) = cos²((t + 0.008)/1.008 · π/2)`.
fn cosine_betas(n: usize, max_beta: f64) -> Vec<f64> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta)
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr`: shifts and scales `√ᾱ` so the last one is 0 and the
/// first unchanged, and returns the matching betas (the last is 1).
fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    let mut sqrt_ab: Vec<f64> = betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc.sqrt()
        })
        .collect();
    let (Some(&first), Some(&last)) = (sqrt_ab.first(), sqrt_ab.last()) else {
        return betas.to_vec();
    };
    if first == last {
        return betas.to_vec();
    }
    for s in &mut sqrt_ab {
        *s = (*s - last) * first / (first - last);
    }
    let ab: Vec<f64> = sqrt_ab.iter().map(|s| s * s).collect();
    let mut out = Vec::with_capacity(ab.len());
    out.push(1.0 - ab[0]);
    for w in ab.windows(2) {
        out.push(1.0 - w[1] / w[0]);
    }
    out
}
