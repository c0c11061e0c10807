//! Fitting transport maps on a Stable Diffusion pipeline (AcT paper §5), in one of two ways.
//!
//! **Along denoising trajectories** (the default, [`ImageFitOptions::trajectory`]): source and
//! target prompts are denoised together, with the request's schedule and guidance, from the
//! seed's latents. At every step and every selected UNet hook point, in forward order, a map
//! is fitted on the pooled conditional activations of the two sides and applied at λ = 1 to
//! the source rows before the pass goes on. So every map is estimated causally — over layers
//! and over steps — on the activations it will meet when steering, and each step gets its own
//! map (entries `HOOK@tK`, picked by nearest timestep at inference). These maps act on the
//! conditional branch only: guidance then amplifies the steering as it amplifies a prompt,
//! where steering both branches would largely cancel out in `u + g·(c − u)`. On the demo
//! model (models/act-shapes-t2i) this is what makes style concepts appear at λ = 1; maps
//! fitted on the first step alone move the image only at λ ≈ 2 (issue 17's measurements).
//!
//! **On the first denoising step** (the earlier way, as for few-step models): the prompts go
//! through the text encoder(s) and one UNet pass as one batch; at every selected hook point,
//! in forward order, each prompt's activation is pooled (token mean for 3-D
//! `[b, tokens, d]`, spatial mean for 4-D `[b, c, h, w]`), the map is fitted on the pooled
//! source and target rows, and then applied at λ = 1 to the source rows before the pass goes
//! on (causal), the pass stopping after the last selected hook point. Simultaneous
//! estimation instead records every selected hook point's pooled rows on unsteered
//! activations, a chunk of prompts at a time (bounded memory for large prompt sets), and
//! fits all maps at the end. These maps act on every batch row at every step.
//!
//! Every prompt starts from the same initial latents (drawn from the seed), so the rows
//! differ only by their prompts.

use candle_core::Tensor;

use crate::diffusion::error::{DiffusionError, Result};
use crate::diffusion::hooks::{
    ActShape, DiffActivation, DiffHooks, DiffPhase, HookSite, HookSiteKind, RunPosition, SamplePooling,
};
use crate::diffusion::pipeline::{ImageRequest, SdPipeline};
use crate::diffusion::scheduler::Scheduler;
use crate::diffusion::unet::UNetCond;
use crate::runtime::HookFlow;
use crate::transport::{
    FitConfig, HookMap, MapsFile, MapsMeta, POSITIONS_POOLING, Samples, Side, TokenScope, TokenWindow,
    fit_hook, timestep_map_name,
};

use super::fit_model::Estimation;
use super::image_concepts::{PromptPair, prompts_info};

/// Hook point presets for diffusion.
pub const IMAGE_PRESETS: &[(&str, &str)] = &[
    (
        "unet-norms",
        "every UNet GroupNorm and LayerNorm (the paper's choice for SDXL)",
    ),
    (
        "unet-groupnorms",
        "the UNet's GroupNorms only (4-D, spatial-mean rule)",
    ),
    (
        "unet-layernorms",
        "the UNet transformers' LayerNorms only (3-D, per token)",
    ),
    (
        "unet-cross-attention",
        "the UNet transformers' cross-attention outputs (3-D, per token): where the prompt enters the image",
    ),
    ("text-encoder-norms", "every layer norm of the text encoder(s)"),
    ("all-norms", "text encoder and UNet norms"),
];

/// Default preset.
pub const DEFAULT_IMAGE_PRESET: &str = "unet-norms";

/// Resolves a selection to hook ids in forward order: a preset name, or a comma-separated
/// list of hook names and `prefix*` patterns.
pub fn select_hooks(sites: &[HookSite], selection: &str) -> Result<Vec<usize>> {
    let is_unet = |s: &HookSite| s.name.starts_with("unet.");
    let is_norm = |s: &HookSite| s.kind != HookSiteKind::CrossAttention;
    let pick = |f: &dyn Fn(&HookSite) -> bool| -> Vec<usize> {
        sites
            .iter()
            .enumerate()
            .filter(|(_, s)| f(s))
            .map(|(i, _)| i)
            .collect()
    };
    let ids = match selection.trim() {
        "unet-norms" | "unet" => pick(&|s| is_unet(s) && is_norm(s)),
        "unet-groupnorms" => pick(&|s| is_unet(s) && s.kind == HookSiteKind::GroupNorm),
        "unet-layernorms" => pick(&|s| is_unet(s) && s.kind == HookSiteKind::LayerNorm),
        "unet-cross-attention" => pick(&|s| s.kind == HookSiteKind::CrossAttention),
        "text-encoder-norms" | "text" => pick(&|s| !is_unet(s)),
        "all-norms" | "all" => pick(&|s| is_norm(s)),
        list => {
            let mut ids = Vec::new();
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let found: Vec<usize> = match item.strip_suffix('*') {
                    Some(prefix) => pick(&|s| s.name.starts_with(prefix)),
                    None => pick(&|s| s.name == item),
                };
                if found.is_empty() {
                    let presets: Vec<&str> = IMAGE_PRESETS.iter().map(|p| p.0).collect();
                    return Err(DiffusionError::BadInput(format!(
                        "no hook point matches `{item}` (presets: {}; or names such as {}, with `*` for a prefix)",
                        presets.join(", "),
                        sites
                            .iter()
                            .rev()
                            .take(1)
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join("")
                    )));
                }
                ids.extend(found);
            }
            ids.sort_unstable();
            ids.dedup();
            ids
        }
    };
    if ids.is_empty() {
        return Err(DiffusionError::BadInput(format!(
            "`{selection}` selects no hook point"
        )));
    }
    Ok(ids)
}

/// How to fit.
#[derive(Debug, Clone)]
pub struct ImageFitOptions {
    /// Estimator and support.
    pub config: FitConfig,
    /// Hook selection (see [`select_hooks`]).
    pub hooks: String,
    /// Size, seed, scheduler and steps of the denoising step the activations come from.
    pub request: ImageRequest,
    /// Which step of that schedule (0 = the first, pure noise); ignored with `trajectory`.
    pub step: usize,
    /// Fit along whole denoising trajectories, one map per step and hook point (see the
    /// module docs; always causal) instead of on one step.
    pub trajectory: bool,
    /// Causal (one batch, each map fitted after the earlier ones are applied) or
    /// simultaneous (every map on unsteered activations, recorded `chunk` prompts at a time,
    /// so memory stays bounded however many prompts there are).
    pub estimation: Estimation,
    /// Prompts per forward pass in simultaneous estimation.
    pub chunk: usize,
    /// One sample per prompt (the mean, the paper's rule) or per pixel / token.
    pub pooling: SamplePooling,
}

impl ImageFitOptions {
    /// Options for `pipe`: the model's default request with `seed`, and `size` (pixels,
    /// square) and `steps` when given; along trajectories (else the schedule's first step,
    /// causal, or simultaneous in chunks of 8 when switched).
    pub fn new(
        pipe: &SdPipeline,
        config: FitConfig,
        hooks: &str,
        seed: u64,
        size: Option<usize>,
        steps: Option<usize>,
    ) -> Self {
        let mut request = pipe.default_request("");
        request.seed = seed;
        if let Some(s) = size {
            request.width = s;
            request.height = s;
        }
        if let Some(s) = steps {
            request.steps = s;
        }
        Self {
            config,
            hooks: hooks.to_string(),
            request,
            step: 0,
            trajectory: true,
            estimation: Estimation::Causal,
            chunk: 8,
            pooling: SamplePooling::Mean,
        }
    }
}

struct FitHooks<'a> {
    sites: &'a [HookSite],
    wanted: Vec<bool>,
    last: usize,
    n_src: usize,
    config: FitConfig,
    pooling: SamplePooling,
    maps: Vec<(usize, HookMap)>,
    progress: &'a mut (dyn FnMut(usize, usize) -> bool + Send),
    total: usize,
}

impl DiffHooks for FitHooks<'_> {
    fn wants(&self, id: usize) -> bool {
        self.wanted.get(id).copied().unwrap_or(false)
    }

    fn on_activation(&mut self, id: usize, act: DiffActivation<'_>) -> Result<HookFlow> {
        if !(self.progress)(self.maps.len(), self.total) {
            return Err(DiffusionError::Cancelled);
        }
        let name = &self.sites[id].name;
        let map = fit_and_apply(name, act.data, act.shape, self.n_src, self.pooling, &self.config)?;
        self.maps.push((id, map));
        Ok(if id == self.last {
            HookFlow::Stop
        } else {
            HookFlow::Continue
        })
    }
}

/// Fits one hook point's map on `data` (laid out as `shape`: the first `ns` rows are the
/// source prompts, the rest the target ones, pooled as `pooling` says), then transports the
/// source rows at λ = 1, so later hook points see them steered (causal estimation).
fn fit_and_apply(
    name: &str,
    data: &mut [f32],
    shape: ActShape,
    ns: usize,
    pooling: SamplePooling,
    config: &FitConfig,
) -> Result<HookMap> {
    let hook_err = |reason: String| DiffusionError::Hook {
        hook: name.to_string(),
        reason,
    };
    let (d, n) = (shape.neurons(), shape.batch());
    let (rows, per) = pooling.samples(data, shape);
    let (src, tgt) = rows.split_at((ns * per * d).min(rows.len()));
    let source = Samples::new(src, ns * per, d, Side::Source).map_err(|e| hook_err(e.to_string()))?;
    let target = Samples::new(tgt, n.saturating_sub(ns) * per, d, Side::Target)
        .map_err(|e| hook_err(e.to_string()))?;
    let map = fit_hook(name, source, target, config)
        .map_err(|e| hook_err(e.to_string()))?
        .with_per_position(pooling == SamplePooling::Positions);
    let end = (ns * shape.row_len()).min(data.len());
    let src_rows = &mut data[..end];
    match shape.with_batch(ns) {
        ActShape::Spatial(s) => map.apply_4d(name, src_rows, s, 1.0),
        ActShape::Tokens(s) => map.apply_3d(name, src_rows, s, 1.0, TokenScope::All, TokenWindow::default()),
    }
    .map_err(|e| hook_err(e.to_string()))?;
    Ok(map)
}

/// Records each wanted hook point's samples (appended in prompt order; `per[id]` samples per
/// prompt).
struct RecordHooks {
    wanted: Vec<bool>,
    last: usize,
    pooling: SamplePooling,
    rows: Vec<Vec<f32>>,
    per: Vec<usize>,
}

impl DiffHooks for RecordHooks {
    fn wants(&self, id: usize) -> bool {
        self.wanted.get(id).copied().unwrap_or(false)
    }

    fn on_activation(&mut self, id: usize, act: DiffActivation<'_>) -> Result<HookFlow> {
        if let (Some(rows), Some(per)) = (self.rows.get_mut(id), self.per.get_mut(id)) {
            let (samples, n) = self.pooling.samples(act.data, act.shape);
            rows.extend(samples);
            *per = n;
        }
        Ok(if id == self.last {
            HookFlow::Stop
        } else {
            HookFlow::Continue
        })
    }
}

/// Causal fitting along denoising trajectories: the source and target prompts are denoised
/// as one batch (with guidance `[unconditional × n, conditional × n]` rows, source prompts
/// first in each half); at every step and every wanted UNet hook point, in forward order, a
/// map is fitted on the pooled conditional rows of the two sides and applied at λ = 1 to the
/// source's conditional rows, as steering applies such maps at inference
/// ([`crate::diffusion::steer::DiffSteeringHooks`]). The source trajectories thus become the
/// steered ones, and each step's maps are fitted on the activations they will meet.
/// Text-encoder hook points (which do not depend on the step) are fitted once, on the
/// prompts' encoding; the negative prompt's encoding passes unchanged.
struct TrajectoryFitHooks<'a> {
    sites: &'a [HookSite],
    wanted: Vec<bool>,
    unet_first: usize,
    n_src: usize,
    n: usize,
    timesteps: Vec<f64>,
    at: RunPosition,
    config: FitConfig,
    pooling: SamplePooling,
    maps: Vec<(String, HookMap)>,
    progress: &'a mut (dyn FnMut(usize, usize) -> bool + Send),
    total: usize,
}

impl DiffHooks for TrajectoryFitHooks<'_> {
    fn wants(&self, id: usize) -> bool {
        self.wanted.get(id).copied().unwrap_or(false) && !(id < self.unet_first && self.at.negative)
    }

    fn begin(&mut self, phase: DiffPhase) {
        self.at.enter(phase);
    }

    fn on_activation(&mut self, id: usize, act: DiffActivation<'_>) -> Result<HookFlow> {
        let name = &self.sites[id].name;
        let hook_err = |reason: String| DiffusionError::Hook {
            hook: name.clone(),
            reason,
        };
        if !(self.progress)(self.maps.len(), self.total) {
            return Err(DiffusionError::Cancelled);
        }
        let text = id < self.unet_first;
        let (ns, n) = (self.n_src, self.n);
        let cond = if text { 0 } else { self.at.unconditional };
        let len = act.shape.row_len();
        if act.shape.batch() != cond + n {
            return Err(hook_err(format!(
                "a batch of {} rows where {} were expected",
                act.shape.batch(),
                cond + n
            )));
        }
        let rows = &mut act.data[cond * len..];
        let map = fit_and_apply(
            name,
            rows,
            act.shape.with_batch(n),
            ns,
            self.pooling,
            &self.config,
        )?;
        let entry = if text {
            name.clone()
        } else {
            let t = self.timesteps.get(self.at.step).copied().unwrap_or_default();
            timestep_map_name(name, t)
        };
        self.maps.push((entry, map));
        Ok(HookFlow::Continue)
    }
}

/// Fits every hook point of `ids` on recorded pooled rows (`[samples, dim]` per hook id and
/// side).
fn fit_recorded(
    sites: &[HookSite],
    ids: &[usize],
    source: &[Vec<f32>],
    target: &[Vec<f32>],
    config: &FitConfig,
) -> Result<Vec<(usize, HookMap)>> {
    let mut maps = Vec::with_capacity(ids.len());
    for &id in ids {
        let name = &sites[id].name;
        let d = sites[id].dim.max(1);
        let hook_err = |reason: String| DiffusionError::Hook {
            hook: name.clone(),
            reason,
        };
        let (src, tgt) = (&source[id], &target[id]);
        if src.is_empty() || tgt.is_empty() || src.len() % d != 0 || tgt.len() % d != 0 {
            return Err(hook_err(format!(
                "recorded {} source and {} target values for {d} neurons",
                src.len(),
                tgt.len()
            )));
        }
        let source =
            Samples::new(src, src.len() / d, d, Side::Source).map_err(|e| hook_err(e.to_string()))?;
        let target =
            Samples::new(tgt, tgt.len() / d, d, Side::Target).map_err(|e| hook_err(e.to_string()))?;
        maps.push((
            id,
            fit_hook(name, source, target, config).map_err(|e| hook_err(e.to_string()))?,
        ));
    }
    Ok(maps)
}

/// Runs `prompts` through the text encoder(s) and one denoising step of the UNet (from the
/// seed's latents, shared by every prompt) with `hooks`; a hook's early stop ends it.
fn one_pass(
    pipe: &SdPipeline,
    prompts: &[&str],
    opts: &ImageFitOptions,
    hooks: &mut dyn DiffHooks,
) -> Result<()> {
    let stopped = |r: Result<()>| match r {
        Err(DiffusionError::Stopped) => Ok(true),
        Err(e) => Err(e),
        Ok(()) => Ok(false),
    };
    let mut cond = None;
    let done = stopped(pipe.encode_prompts(prompts, hooks).map(|c| cond = Some(c)))?;
    let Some(cond) = cond.filter(|_| !done) else {
        return Ok(());
    };
    let req = &opts.request;
    let sched = Scheduler::new(pipe.scheduler_config(), req.scheduler, req.steps)?;
    let step = opts.step.min(sched.timesteps().len().saturating_sub(1));
    let t = sched.timesteps()[step];
    let (noise, _) = pipe.initial_noise(req)?;
    let b = prompts.len();
    let x = (noise * sched.init_noise_sigma())?;
    let x = sched.scale_model_input(&x, step)?.repeat((b, 1, 1, 1))?;
    let ids_t = cond
        .pooled
        .as_ref()
        .map(|_| {
            let (h, w) = (req.height as f32, req.width as f32);
            let row = [h, w, 0.0, 0.0, h, w];
            Tensor::from_vec(
                (0..b).flat_map(|_| row).collect::<Vec<f32>>(),
                (b, 6),
                pipe.device(),
            )
        })
        .transpose()?;
    let unet_cond = UNetCond {
        text: &cond.text,
        text_time: cond.pooled.as_ref().zip(ids_t.as_ref()),
    };
    stopped(pipe.unet().forward(&x, t, &unet_cond, hooks).map(|_| ()))?;
    Ok(())
}

/// Fits maps for `pair` on `pipe`; `progress(done, total)` counts fitted hook points and
/// returns `false` to cancel.
pub fn fit_image_maps(
    pipe: &SdPipeline,
    pair: &PromptPair,
    opts: &ImageFitOptions,
    progress: &mut (dyn FnMut(usize, usize) -> bool + Send),
) -> Result<MapsFile> {
    let (ns, nt) = (pair.source.len(), pair.target.len());
    if ns < 2 || nt < 2 {
        return Err(DiffusionError::BadInput(format!(
            "concept `{}` needs at least 2 source and 2 target prompts (has {ns} and {nt})",
            pair.name
        )));
    }
    pipe.validate(&opts.request)?;
    let sites = pipe.hook_sites();
    let mut ids = select_hooks(sites, &opts.hooks)?;
    let inert = pipe.inert_hooks();
    ids.retain(|i| !inert.contains(i));
    if ids.is_empty() {
        return Err(DiffusionError::BadInput(format!(
            "`{}` selects only hook points that cannot change this model's images",
            opts.hooks
        )));
    }
    if opts.config.method.is_joint()
        && opts.pooling == SamplePooling::Mean
        && let Some(site) = ids
            .iter()
            .map(|&i| &sites[i])
            .find(|s| s.kind != HookSiteKind::GroupNorm)
    {
        // Token-shaped activations have no spatial-mean rule: a d × d map fitted on
        // per-prompt means would act on every token, the mismatch that breaks text models.
        return Err(DiffusionError::BadInput(format!(
            "joint-gaussian maps fitted on per-prompt means cannot act on the tokens of `{}`: fit them on every position (pooling positions) or on the UNet's GroupNorms (unet-groupnorms)",
            site.name
        )));
    }
    let mut wanted = vec![false; sites.len()];
    ids.iter().for_each(|&i| wanted[i] = true);
    let last = *ids.last().unwrap_or(&0);
    let total = ids.len();
    let prompts: Vec<&str> = pair
        .source
        .iter()
        .chain(&pair.target)
        .map(String::as_str)
        .collect();
    if opts.trajectory && opts.estimation == Estimation::Simultaneous {
        return Err(DiffusionError::BadInput(
            "fitting on denoising trajectories is causal; it cannot be simultaneous".into(),
        ));
    }
    let named = |maps: Vec<(usize, HookMap)>| -> Vec<(String, HookMap)> {
        maps.into_iter()
            .map(|(id, m)| (sites[id].name.clone(), m))
            .collect()
    };
    let maps = match opts.estimation {
        _ if opts.trajectory => {
            let req = ImageRequest {
                prompt: String::new(),
                ..opts.request.clone()
            };
            let timesteps = Scheduler::new(pipe.scheduler_config(), req.scheduler, req.steps)?
                .timesteps()
                .to_vec();
            let unet_first = pipe.unet_first_hook();
            let text_ids = ids.iter().filter(|&&i| i < unet_first).count();
            let total = text_ids + timesteps.len() * (ids.len() - text_ids);
            let mut hooks = TrajectoryFitHooks {
                sites,
                wanted,
                unet_first,
                n_src: ns,
                n: ns + nt,
                timesteps,
                at: RunPosition::default(),
                config: opts.config,
                pooling: opts.pooling,
                maps: Vec::new(),
                progress,
                total,
            };
            pipe.denoise_prompts(&req, &prompts, &mut hooks, &mut |_, _| true, None)?;
            if hooks.maps.len() != total {
                return Err(DiffusionError::Backend(format!(
                    "fitting reached {} of {total} hook points and steps",
                    hooks.maps.len()
                )));
            }
            (hooks.progress)(total, total);
            hooks.maps
        }
        Estimation::Causal => {
            let mut hooks = FitHooks {
                sites,
                wanted,
                last,
                n_src: ns,
                config: opts.config,
                pooling: opts.pooling,
                maps: Vec::new(),
                progress,
                total,
            };
            one_pass(pipe, &prompts, opts, &mut hooks)?;
            if hooks.maps.len() != total {
                return Err(DiffusionError::Backend(format!(
                    "fitting reached {} of {total} hook points",
                    hooks.maps.len()
                )));
            }
            (hooks.progress)(total, total);
            named(hooks.maps)
        }
        Estimation::Simultaneous => {
            // Record pooled rows chunk by chunk (bounded memory), then fit every hook point
            // on the unsteered activations.
            let mut rec = RecordHooks {
                wanted,
                last,
                pooling: opts.pooling,
                rows: vec![Vec::new(); sites.len()],
                per: vec![1; sites.len()],
            };
            let chunk = opts.chunk.max(1);
            let n = prompts.len();
            for (k, part) in prompts.chunks(chunk).enumerate() {
                if !progress(k * chunk, n) {
                    return Err(DiffusionError::Cancelled);
                }
                one_pass(pipe, part, opts, &mut rec)?;
            }
            progress(n, n);
            let split = |rows: &[Vec<f32>]| -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
                rows.iter()
                    .zip(sites)
                    .zip(&rec.per)
                    .map(|((r, s), per)| {
                        let at = (ns * per * s.dim).min(r.len());
                        (r[..at].to_vec(), r[at..].to_vec())
                    })
                    .unzip()
            };
            let (source, target) = split(&rec.rows);
            let maps = fit_recorded(sites, &ids, &source, &target, &opts.config)?;
            let per_position = opts.pooling == SamplePooling::Positions;
            named(
                maps.into_iter()
                    .map(|(id, m)| (id, m.with_per_position(per_position)))
                    .collect(),
            )
        }
    };
    let mut meta = MapsMeta::new(
        &pair.name,
        opts.config.method,
        opts.config.support,
        "mean",
        &if opts.trajectory {
            format!("causal per step of {}-step trajectories", opts.request.steps)
        } else {
            opts.estimation.name().to_string()
        },
        pipe.fingerprint().clone(),
        prompts_info(&format!("{}:source", pair.name), &pair.source),
        prompts_info(&format!("{}:target", pair.name), &pair.target),
    );
    meta.pooling = match opts.pooling {
        SamplePooling::Mean => "spatial-mean/token-mean".into(),
        SamplePooling::Positions => POSITIONS_POOLING.into(),
    };
    MapsFile::new(meta, maps).map_err(|e| DiffusionError::Backend(e.to_string()))
}
