//! Fitting transport maps on a Stable Diffusion pipeline (AcT paper §5): source and target
//! prompts go through the text encoder(s) and one denoising step of the UNet as one batch;
//! at every selected hook point, in forward order, each prompt's activation is pooled (token
//! mean for 3-D `[b, tokens, d]`, spatial mean for 4-D `[b, c, h, w]`), the map is fitted on
//! the pooled source and target rows, and then applied at λ = 1 to the source rows before the
//! pass goes on — so every map is estimated causally, on activations already transported by
//! the maps before it, in a single pass. The pass stops after the last selected hook point.
//!
//! Simultaneous estimation instead records every selected hook point's pooled rows on
//! unsteered activations, a chunk of prompts at a time (bounded memory for large prompt
//! sets), and fits all maps at the end.
//!
//! Every prompt starts from the same initial latents (drawn from the seed), so the rows
//! differ only by their prompts.

use candle_core::Tensor;

use crate::diffusion::error::{DiffusionError, Result};
use crate::diffusion::hooks::{ActShape, DiffActivation, DiffHooks, HookSite, HookSiteKind, pool_mean};
use crate::diffusion::pipeline::{ImageRequest, SdPipeline};
use crate::diffusion::scheduler::Scheduler;
use crate::diffusion::unet::UNetCond;
use crate::runtime::HookFlow;
use crate::transport::{
    FitConfig, HookMap, MapsFile, MapsMeta, Samples, Side, TokenScope, TokenWindow, fit_hook,
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
    ("text-encoder-norms", "every layer norm of the text encoder(s)"),
    ("all-norms", "text encoder and UNet norms"),
];

/// Default preset.
pub const DEFAULT_IMAGE_PRESET: &str = "unet-norms";

/// Resolves a selection to hook ids in forward order: a preset name, or a comma-separated
/// list of hook names and `prefix*` patterns.
pub fn select_hooks(sites: &[HookSite], selection: &str) -> Result<Vec<usize>> {
    let is_unet = |s: &HookSite| s.name.starts_with("unet.");
    let pick = |f: &dyn Fn(&HookSite) -> bool| -> Vec<usize> {
        sites
            .iter()
            .enumerate()
            .filter(|(_, s)| f(s))
            .map(|(i, _)| i)
            .collect()
    };
    let ids = match selection.trim() {
        "unet-norms" | "unet" => pick(&|s| is_unet(s)),
        "unet-groupnorms" => pick(&|s| is_unet(s) && s.kind == HookSiteKind::GroupNorm),
        "unet-layernorms" => pick(&|s| is_unet(s) && s.kind == HookSiteKind::LayerNorm),
        "text-encoder-norms" | "text" => pick(&|s| !is_unet(s)),
        "all-norms" | "all" => pick(&|_| true),
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
    /// Which step of that schedule (0 = the first, pure noise).
    pub step: usize,
    /// Causal (one batch, each map fitted after the earlier ones are applied) or
    /// simultaneous (every map on unsteered activations, recorded `chunk` prompts at a time,
    /// so memory stays bounded however many prompts there are).
    pub estimation: Estimation,
    /// Prompts per forward pass in simultaneous estimation.
    pub chunk: usize,
}

impl ImageFitOptions {
    /// Options for `pipe`: the model's default request with `seed`, and `size` (pixels,
    /// square) and `steps` when given; the schedule's first step; causal estimation
    /// (simultaneous chunks of 8 when switched).
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
            estimation: Estimation::Causal,
            chunk: 8,
        }
    }
}

struct FitHooks<'a> {
    sites: &'a [HookSite],
    wanted: Vec<bool>,
    last: usize,
    n_src: usize,
    config: FitConfig,
    maps: Vec<(usize, HookMap)>,
    progress: &'a mut (dyn FnMut(usize, usize) -> bool + Send),
    total: usize,
}

impl DiffHooks for FitHooks<'_> {
    fn wants(&self, id: usize) -> bool {
        self.wanted.get(id).copied().unwrap_or(false)
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
        let d = act.shape.neurons();
        let b = act.shape.batch();
        let pooled = pool_mean(act.data, act.shape);
        let (src, tgt) = pooled.split_at(self.n_src * d);
        let source = Samples::new(src, self.n_src, d, Side::Source).map_err(|e| hook_err(e.to_string()))?;
        let target =
            Samples::new(tgt, b - self.n_src, d, Side::Target).map_err(|e| hook_err(e.to_string()))?;
        let map = fit_hook(name, source, target, &self.config).map_err(|e| hook_err(e.to_string()))?;
        // Causal: later hook points see the source rows already transported.
        let rows = self.n_src * act.shape.row_len();
        let src_rows = &mut act.data[..rows];
        match act.shape {
            ActShape::Spatial([_, c, h, w]) => map.apply_4d(name, src_rows, [self.n_src, c, h, w], 1.0),
            ActShape::Tokens([_, t, d]) => map.apply_3d(
                name,
                src_rows,
                [self.n_src, t, d],
                1.0,
                TokenScope::All,
                TokenWindow::default(),
            ),
        }
        .map_err(|e| hook_err(e.to_string()))?;
        self.maps.push((id, map));
        Ok(if id == self.last {
            HookFlow::Stop
        } else {
            HookFlow::Continue
        })
    }
}

/// Records each wanted hook point's pooled rows (appended in prompt order).
struct RecordHooks {
    wanted: Vec<bool>,
    last: usize,
    rows: Vec<Vec<f32>>,
}

impl DiffHooks for RecordHooks {
    fn wants(&self, id: usize) -> bool {
        self.wanted.get(id).copied().unwrap_or(false)
    }

    fn on_activation(&mut self, id: usize, act: DiffActivation<'_>) -> Result<HookFlow> {
        if let Some(rows) = self.rows.get_mut(id) {
            rows.extend(pool_mean(act.data, act.shape));
        }
        Ok(if id == self.last {
            HookFlow::Stop
        } else {
            HookFlow::Continue
        })
    }
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
    let maps = match opts.estimation {
        Estimation::Causal => {
            let mut hooks = FitHooks {
                sites,
                wanted,
                last,
                n_src: ns,
                config: opts.config,
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
            hooks.maps
        }
        Estimation::Simultaneous => {
            // Record pooled rows chunk by chunk (bounded memory), then fit every hook point
            // on the unsteered activations.
            let mut rec = RecordHooks {
                wanted,
                last,
                rows: vec![Vec::new(); sites.len()],
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
            let mut maps = Vec::with_capacity(total);
            for &id in &ids {
                let name = &sites[id].name;
                let d = sites[id].dim;
                let hook_err = |reason: String| DiffusionError::Hook {
                    hook: name.clone(),
                    reason,
                };
                let rows = &rec.rows[id];
                if rows.len() != n * d {
                    return Err(hook_err(format!(
                        "recorded {} values, expected {}",
                        rows.len(),
                        n * d
                    )));
                }
                let (src, tgt) = rows.split_at(ns * d);
                let source = Samples::new(src, ns, d, Side::Source).map_err(|e| hook_err(e.to_string()))?;
                let target = Samples::new(tgt, nt, d, Side::Target).map_err(|e| hook_err(e.to_string()))?;
                maps.push((
                    id,
                    fit_hook(name, source, target, &opts.config).map_err(|e| hook_err(e.to_string()))?,
                ));
            }
            maps
        }
    };
    let mut meta = MapsMeta::new(
        &pair.name,
        opts.config.method,
        opts.config.support,
        "mean",
        opts.estimation.name(),
        pipe.fingerprint().clone(),
        prompts_info(&format!("{}:source", pair.name), &pair.source),
        prompts_info(&format!("{}:target", pair.name), &pair.target),
    );
    meta.pooling = "spatial-mean/token-mean".into();
    let maps = maps
        .into_iter()
        .map(|(id, m)| (sites[id].name.clone(), m))
        .collect();
    MapsFile::new(meta, maps).map_err(|e| DiffusionError::Backend(e.to_string()))
}
