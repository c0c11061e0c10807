//! Fitting transport maps on a Stable Diffusion pipeline (AcT paper §5): source and target
//! prompts go through the text encoder(s) and one denoising step of the UNet as one batch;
//! at every selected hook point, in forward order, each prompt's activation is pooled (token
//! mean for 3-D `[b, tokens, d]`, spatial mean for 4-D `[b, c, h, w]`), the map is fitted on
//! the pooled source and target rows, and then applied at λ = 1 to the source rows before the
//! pass goes on — so every map is estimated causally, on activations already transported by
//! the maps before it, in a single pass. The pass stops after the last selected hook point.
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
    let prompts: Vec<&str> = pair
        .source
        .iter()
        .chain(&pair.target)
        .map(String::as_str)
        .collect();
    let stopped = |r: Result<()>| match r {
        Err(DiffusionError::Stopped) => Ok(true),
        Err(e) => Err(e),
        Ok(()) => Ok(false),
    };
    let mut cond = None;
    let done = stopped(pipe.encode_prompts(&prompts, &mut hooks).map(|c| cond = Some(c)))?;
    if !done && let Some(cond) = cond {
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
        stopped(pipe.unet().forward(&x, t, &unet_cond, &mut hooks).map(|_| ()))?;
    }
    if hooks.maps.len() != total {
        return Err(DiffusionError::Backend(format!(
            "fitting reached {} of {total} hook points",
            hooks.maps.len()
        )));
    }
    (hooks.progress)(total, total);
    let mut meta = MapsMeta::new(
        &pair.name,
        opts.config.method,
        opts.config.support,
        "mean",
        "causal",
        pipe.fingerprint().clone(),
        prompts_info(&format!("{}:source", pair.name), &pair.source),
        prompts_info(&format!("{}:target", pair.name), &pair.target),
    );
    meta.pooling = "spatial-mean/token-mean".into();
    let maps = hooks
        .maps
        .into_iter()
        .map(|(id, m)| (sites[id].name.clone(), m))
        .collect();
    MapsFile::new(meta, maps).map_err(|e| DiffusionError::Backend(e.to_string()))
}
