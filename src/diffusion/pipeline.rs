//! A Stable Diffusion pipeline loaded from a local diffusers folder: prompt encoding, the
//! denoising loop with classifier-free guidance, and VAE decoding, with hooks for steering
//! and fitting.
//!
//! ```text
//! prompt ─ tokenizer(s) ─ text encoder(s) ─ text [b, 77, ctx] (+ SDXL pooled [b, 1280])
//! seed ─ NoiseSource ─ latents [1, 4, H/f, W/f] · σ_init
//! for each step: UNet([uncond; cond] latents, t, text) → ε_u + g·(ε_c − ε_u) → scheduler.step
//! VAE decode(latents / scaling) → image [1, 3, H, W]
//! ```
//!
//! Every image draws its initial latents (and an ancestral sampler's per-step noise) from
//! its own seed only, so images generated at different λ differ only by the steering.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::transport::{ModelFingerprint, SteeringStack};

use super::clip::ClipTextEncoder;
use super::clip_tokenizer::ClipTokenizer;
use super::error::{DiffusionError, Result};
use super::hooks::{DiffHooks, DiffPhase, HookRegistry, HookSite, NoDiffHooks};
use super::image_io::{ImageMeta, tensor_to_images};
use super::scheduler::{NoiseSource, Scheduler, SchedulerConfig, SchedulerKind};
use super::steer::{DiffSteeringHooks, StepWindow};
use super::unet::{UNet, UNetCond};
use super::vae::VaeDecoder;
use super::weights::read_json;

/// Largest image area accepted (1536 × 1024): beyond it the VAE's single-head attention and
/// the activations alone need many GB.
pub const MAX_PIXELS: usize = 1536 * 1024;

/// Which Stable Diffusion generation a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x: CLIP ViT-L text encoder, last hidden state.
    Sd1,
    /// SD 2.x and SD-Turbo: OpenCLIP ViT-H text encoder, last hidden state.
    Sd2,
    /// SDXL and SDXL-Turbo: two text encoders (penultimate states concatenated) and pooled
    /// text + size conditioning.
    Sdxl,
}

impl Family {
    /// Short name used in fingerprints (`sd1`, `sd2`, `sdxl`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "sd1",
            Family::Sd2 => "sd2",
            Family::Sdxl => "sdxl",
        }
    }
}

/// Where and in what precision to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Weights and activations dtype (f32 or f16).
    pub dtype: DType,
    /// The device.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// One image to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRequest {
    /// The prompt.
    pub prompt: String,
    /// What to steer away from with guidance (empty: unconditional).
    pub negative_prompt: String,
    /// Seed of the initial latents and of ancestral noise.
    pub seed: u64,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale; ≤ 1 disables guidance (Turbo models use 0).
    pub guidance: f32,
    /// Image width in pixels (a multiple of 8).
    pub width: usize,
    /// Image height in pixels (a multiple of 8).
    pub height: usize,
    /// The sampler.
    pub scheduler: SchedulerKind,
}

/// Text conditioning of a batch of prompts.
#[derive(Debug, Clone)]
pub struct TextCond {
    /// `[b, 77, cross_attention_dim]`.
    pub text: Tensor,
    /// SDXL: pooled embedding `[b, 1280]`.
    pub pooled: Option<Tensor>,
}

/// A loaded pipeline.
pub struct SdPipeline {
    folder: PathBuf,
    family: Family,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextEncoder,
    second: Option<(ClipTokenizer, ClipTextEncoder)>,
    unet: UNet,
    vae: VaeDecoder,
    scheduler: SchedulerConfig,
    registry: HookRegistry,
    unet_first_hook: usize,
    zeros_for_empty_negative: bool,
    warnings: Vec<String>,
    dtype: DType,
    device: Device,
    fingerprint: ModelFingerprint,
    defaults: FolderDefaults,
}

/// Sampling settings a folder recommends for itself in `model_index.json`, under the key
/// `_act_studio_defaults` (`{"steps": 20, "guidance": 4.0}`; diffusers ignores keys that
/// start with `_`). The demo model uses it: it is trained for fewer steps and weaker guidance
/// than SD.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FolderDefaults {
    /// Denoising steps.
    pub steps: Option<usize>,
    /// Guidance scale.
    pub guidance: Option<f32>,
}

impl FolderDefaults {
    /// Reads the key from `model_index.json`'s JSON; values that are not positive numbers
    /// (steps 1…1000, guidance 0…30) are ignored with a warning.
    fn from_index(index: &Value, warnings: &mut Vec<String>) -> Self {
        let Some(d) = index.get("_act_studio_defaults") else {
            return Self::default();
        };
        let steps = d
            .get("steps")
            .map(|v| v.as_u64().filter(|s| (1..=1000).contains(s)));
        let guidance = d
            .get("guidance")
            .map(|v| v.as_f64().filter(|g| (0.0..=30.0).contains(g)));
        for (key, bad) in [
            ("steps", matches!(steps, Some(None))),
            ("guidance", matches!(guidance, Some(None))),
        ] {
            if bad {
                warnings.push(format!(
                    "model_index.json: `_act_studio_defaults.{key}` is out of range or not a number; ignored"
                ));
            }
        }
        Self {
            steps: steps.flatten().map(|s| s as usize),
            guidance: guidance.flatten().map(|g| g as f32),
        }
    }
}

/// Scheduler options diffusers honours that our samplers do not implement.
fn ignored_scheduler_keys(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let set = |k: &str| v.get(k).is_some_and(|x| !x.is_null() && x != &Value::Bool(false));
    let class = v.get("_class_name").and_then(Value::as_str).unwrap_or("");
    // DPM-Solver++ implements Karras σ (as its own sampler kind).
    if class != "DPMSolverMultistepScheduler" && set("use_karras_sigmas") {
        out.push("scheduler_config.json sets `use_karras_sigmas`, which is implemented only for DPM-Solver++: sampling uses the plain σ schedule".into());
    }
    for k in [
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "sigma_min",
        "sigma_max",
    ] {
        if set(k) {
            out.push(format!("scheduler_config.json sets `{k}`, which is not implemented: sampling uses the plain σ schedule"));
        }
    }
    for (k, ok) in [
        ("timestep_type", "discrete"),
        ("interpolation_type", "linear"),
        ("final_sigmas_type", "zero"),
    ] {
        if let Some(x) = v.get(k).and_then(Value::as_str)
            && x != ok
        {
            out.push(format!(
                "scheduler_config.json sets `{k}: {x}`, which is not implemented (using `{ok}`)"
            ));
        }
    }
    if !class.is_empty() && !SchedulerKind::is_implemented_class(class) {
        out.push(format!(
            "the folder's sampler {class} is not implemented: using Euler on the same schedule"
        ));
    }
    if class == "PNDMScheduler" && v.get("skip_prk_steps") != Some(&Value::Bool(true)) {
        out.push("PNDMScheduler without `skip_prk_steps` is not implemented: running PLMS without the Runge-Kutta warm-up".into());
    }
    if class == "DPMSolverMultistepScheduler" {
        for (k, ok) in [
            ("algorithm_type", Value::from("dpmsolver++")),
            ("solver_order", Value::from(2)),
            ("solver_type", Value::from("midpoint")),
            ("lower_order_final", Value::from(true)),
            ("euler_at_final", Value::from(false)),
            ("use_lu_lambdas", Value::from(false)),
            ("thresholding", Value::from(false)),
        ] {
            if let Some(x) = v.get(k).filter(|x| !x.is_null() && **x != ok) {
                out.push(format!(
                    "scheduler_config.json sets `{k}: {x}`, which is not implemented (using {ok})"
                ));
            }
        }
    }
    out
}

fn require(folder: &Path, rel: &str) -> Result<PathBuf> {
    let p = folder.join(rel);
    if p.exists() {
        Ok(p)
    } else {
        Err(DiffusionError::MissingComponent {
            folder: folder.to_path_buf(),
            what: rel.to_string(),
        })
    }
}

impl SdPipeline {
    /// Loads a diffusers folder: `model_index.json`, `tokenizer/`, `text_encoder/`, `unet/`,
    /// `vae/`, `scheduler/`, and for SDXL also `tokenizer_2/` and `text_encoder_2/`.
    pub fn load(folder: &Path, opts: &LoadOptions) -> Result<Self> {
        if !folder.is_dir() {
            return Err(DiffusionError::MissingComponent {
                folder: folder.to_path_buf(),
                what: "the folder itself".into(),
            });
        }
        let index = read_json(&require(folder, "model_index.json")?)?;
        for c in ["tokenizer", "text_encoder", "unet", "vae", "scheduler"] {
            require(folder, c)?;
        }
        let class = index.get("_class_name").and_then(Value::as_str).unwrap_or("");
        let xl = class.contains("XL") || folder.join("text_encoder_2").is_dir();
        let mut registry = HookRegistry::default();
        let (dtype, device) = (opts.dtype, &opts.device);
        let tokenizer = ClipTokenizer::load(&require(folder, "tokenizer")?)?;
        let text_encoder = ClipTextEncoder::load(
            &require(folder, "text_encoder")?,
            "text_encoder",
            dtype,
            device,
            &mut registry,
        )?;
        let second = if xl {
            let t = ClipTokenizer::load(&require(folder, "tokenizer_2")?)?;
            let e = ClipTextEncoder::load(
                &require(folder, "text_encoder_2")?,
                "text_encoder_2",
                dtype,
                device,
                &mut registry,
            )?;
            Some((t, e))
        } else {
            None
        };
        let unet_first_hook = registry.len();
        let unet = UNet::load(&require(folder, "unet")?, dtype, device, &mut registry)?;
        // The SD VAEs overflow in f16 (`force_upcast` in their configs): decode in f32 then.
        let vae_dir = require(folder, "vae")?;
        let vae_cfg = super::vae::VaeConfig::from_file(&require(folder, "vae/config.json")?)?;
        let vae_dtype = if vae_cfg.force_upcast { DType::F32 } else { dtype };
        let vae = VaeDecoder::load(&vae_dir, vae_dtype, device)?;
        let sched_path = require(folder, "scheduler/scheduler_config.json")?;
        let scheduler = SchedulerConfig::from_file(&sched_path)?;
        let warnings = ignored_scheduler_keys(&read_json(&sched_path)?);
        let family = if xl {
            Family::Sdxl
        } else if text_encoder.config().hidden_size >= 1024 {
            Family::Sd2
        } else {
            Family::Sd1
        };
        // The UNet's text width must be what the encoders produce.
        let width = match &second {
            Some((_, e2)) => text_encoder.config().hidden_size + e2.config().hidden_size,
            None => text_encoder.config().hidden_size,
        };
        let ctx = unet.config().cross_attention_dim;
        if width != ctx {
            return Err(DiffusionError::BadWeights {
                component: "unet".into(),
                reason: format!(
                    "cross_attention_dim is {ctx} but the text encoder(s) produce {width}-wide embeddings"
                ),
            });
        }
        if let (Some(tt), Some((_, e2))) = (unet.config().text_time, &second) {
            let pooled = e2.config().projection_dim.unwrap_or(e2.config().hidden_size);
            if pooled + 6 * tt.time_embed_dim != tt.input_dim {
                return Err(DiffusionError::BadWeights {
                    component: "unet".into(),
                    reason: format!(
                        "add_embedding takes {} inputs but pooled text ({pooled}) + 6 × {} time ids make {}",
                        tt.input_dim,
                        tt.time_embed_dim,
                        pooled + 6 * tt.time_embed_dim
                    ),
                });
            }
        }
        if xl != unet.config().text_time.is_some() {
            return Err(DiffusionError::BadWeights {
                component: "unet".into(),
                reason: if xl {
                    "an SDXL folder needs a UNet with addition_embed_type \"text_time\"".into()
                } else {
                    "this UNet needs SDXL conditioning but the folder has no text_encoder_2".into()
                },
            });
        }
        // Inpainting (9 input channels) and upscaler UNets are other pipelines.
        let (uc, lc) = (unet.config(), vae.config().latent_channels);
        if uc.in_channels != lc || uc.out_channels != lc {
            return Err(DiffusionError::BadWeights {
                component: "unet".into(),
                reason: format!(
                    "the UNet takes {} and predicts {} channels but the VAE's latents have {lc}; \
                     inpainting and upscaling UNets are not text-to-image models",
                    uc.in_channels, uc.out_channels
                ),
            });
        }
        let mut h = Sha256::new();
        h.update(text_encoder.header_sha256());
        if let Some((_, e2)) = &second {
            h.update(e2.header_sha256());
        }
        h.update(unet.header_sha256());
        let fingerprint = ModelFingerprint {
            architecture: family.name().to_string(),
            hidden_size: ctx,
            // The norm hook points, as before the cross-attention outputs became hook points
            // too, so that maps fitted then still match the model.
            n_layers: registry
                .sites()
                .iter()
                .filter(|s| s.kind != super::hooks::HookSiteKind::CrossAttention)
                .count(),
            weights_header_sha256: crate::transport::maps_file::hex(&h.finalize()),
        };
        let mut warnings = warnings;
        let defaults = FolderDefaults::from_index(&index, &mut warnings);
        let zeros_for_empty_negative = index
            .get("force_zeros_for_empty_prompt")
            .and_then(Value::as_bool)
            .unwrap_or(xl);
        Ok(Self {
            folder: folder.to_path_buf(),
            family,
            tokenizer,
            text_encoder,
            second,
            unet,
            vae,
            scheduler,
            registry,
            unet_first_hook,
            zeros_for_empty_negative,
            warnings,
            dtype,
            device: device.clone(),
            fingerprint,
            defaults,
        })
    }

    /// The folder it was loaded from.
    pub fn folder(&self) -> &Path {
        &self.folder
    }
    /// SD 1, SD 2 or SDXL.
    pub fn family(&self) -> Family {
        self.family
    }
    /// All hook points, text encoders first, then the UNet (index = hook id).
    pub fn hook_sites(&self) -> &[HookSite] {
        self.registry.sites()
    }
    /// Hook points that cannot change the image: on SDXL the first text encoder's last layer
    /// and final norm (SDXL conditions on its penultimate state and pools from the second
    /// encoder). Fitting leaves them out.
    pub fn inert_hooks(&self) -> Vec<usize> {
        if self.family != Family::Sdxl {
            return Vec::new();
        }
        let last = self.text_encoder.config().num_hidden_layers.saturating_sub(1);
        let dead = [
            format!("text_encoder.layers.{last}.layer_norm1"),
            format!("text_encoder.layers.{last}.layer_norm2"),
            "text_encoder.final_layer_norm".to_string(),
        ];
        dead.iter().filter_map(|n| self.registry.find(n)).collect()
    }

    /// Things in the folder this pipeline does not honour (shown to the user at load).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Id of the first UNet hook point.
    pub fn unet_first_hook(&self) -> usize {
        self.unet_first_hook
    }
    /// What maps fitted on this pipeline are tied to.
    pub fn fingerprint(&self) -> &ModelFingerprint {
        &self.fingerprint
    }
    /// The UNet.
    pub fn unet(&self) -> &UNet {
        &self.unet
    }
    /// The scheduler config of the folder.
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
    }
    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A short display name (the folder's name).
    pub fn name(&self) -> String {
        // A Hugging Face cache snapshot (`models--org--name/snapshots/<hash>`) is named by
        // its repository, not by the hash.
        let repo = self.folder.components().rev().find_map(|c| {
            let s = c.as_os_str().to_string_lossy();
            s.strip_prefix("models--")
                .map(|r| r.rsplit("--").next().unwrap_or(r).to_string())
        });
        repo.unwrap_or_else(|| {
            self.folder.file_name().map_or_else(
                || self.folder.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
    }

    /// Pixels per latent cell (8 for every released SD VAE; `2^(levels − 1)`).
    pub fn latent_factor(&self) -> usize {
        self.vae.config().upscale().max(1)
    }

    /// Whether this looks like a few-step distilled model (SD-Turbo, SDXL-Turbo, Lightning).
    /// Judged by the whole path (cache folders end in a hash).
    pub fn is_few_step(&self) -> bool {
        let n = self.folder.to_string_lossy().to_lowercase();
        n.contains("turbo") || n.contains("lightning")
    }

    /// Sensible settings for this model: Turbo-style models 1 step without guidance at 512 px;
    /// others 25 steps, guidance 7.5, native size; both with the folder's sampler. A folder's
    /// own [`FolderDefaults`] win.
    pub fn default_request(&self, prompt: &str) -> ImageRequest {
        let px = self.unet.config().sample_size * self.latent_factor();
        let few = self.is_few_step();
        ImageRequest {
            prompt: prompt.to_string(),
            negative_prompt: String::new(),
            seed: 0,
            steps: self.defaults.steps.unwrap_or(if few { 1 } else { 25 }),
            guidance: self.defaults.guidance.unwrap_or(if few { 0.0 } else { 7.5 }),
            width: if few { 64 * self.latent_factor() } else { px },
            height: if few { 64 * self.latent_factor() } else { px },
            scheduler: self.scheduler.class,
        }
    }

    /// Encodes `prompts` (text-encoder hooks run here).
    pub fn encode_prompts(&self, prompts: &[&str], hooks: &mut dyn DiffHooks) -> Result<TextCond> {
        let ids = |tok: &ClipTokenizer| -> Result<Tensor> {
            let rows = tok.encode_batch(prompts)?;
            let len = rows.first().map_or(0, Vec::len);
            let flat: Vec<u32> = rows.into_iter().flatten().collect();
            Ok(Tensor::from_vec(flat, (prompts.len(), len), &self.device)?)
        };
        let out1 = self.text_encoder.forward(&ids(&self.tokenizer)?, hooks)?;
        match &self.second {
            None => Ok(TextCond {
                text: out1.last_hidden_state,
                pooled: None,
            }),
            Some((tok2, enc2)) => {
                let out2 = enc2.forward(&ids(tok2)?, hooks)?;
                let text = Tensor::cat(
                    &[
                        &out1.penultimate,
                        &out2.penultimate.to_dtype(out1.penultimate.dtype())?,
                    ],
                    2,
                )?;
                Ok(TextCond {
                    text,
                    pooled: Some(out2.pooled),
                })
            }
        }
    }

    /// Checks a request's sizes and steps.
    pub fn validate(&self, req: &ImageRequest) -> Result<()> {
        let f = self.latent_factor();
        if req.width == 0 || req.height == 0 || !req.width.is_multiple_of(f) || !req.height.is_multiple_of(f)
        {
            return Err(DiffusionError::BadInput(format!(
                "image size {}×{} must be positive multiples of {f}",
                req.width, req.height
            )));
        }
        if req.width > 2048 || req.height > 2048 || req.width * req.height > MAX_PIXELS {
            return Err(DiffusionError::BadInput(format!(
                "image size {}×{} is above the limit (each side ≤ 2048, at most {:.1} megapixels)",
                req.width,
                req.height,
                MAX_PIXELS as f64 / 1e6
            )));
        }
        if req.steps == 0 || req.steps > 1000 {
            return Err(DiffusionError::BadInput(format!(
                "steps must be 1–1000 (got {})",
                req.steps
            )));
        }
        if !req.guidance.is_finite() || req.guidance < 0.0 || req.guidance > 50.0 {
            return Err(DiffusionError::BadInput(format!(
                "guidance must be 0–50 (got {})",
                req.guidance
            )));
        }
        Ok(())
    }

    /// The UNet conditioning tensors of `prompts` (b rows) at `req`'s size and negative
    /// prompt: text `[b, 77, ctx]`, or `[2b, 77, ctx]` with guidance (b unconditional rows
    /// first), SDXL pooled and time ids. `text_hooks` see the prompts' encoding (then the
    /// negative prompt's, once, with guidance).
    fn conditioning(
        &self,
        req: &ImageRequest,
        prompts: &[&str],
        guided: bool,
        text_hooks: &mut dyn DiffHooks,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let b = prompts.len();
        text_hooks.begin(DiffPhase::Prompts);
        let cond = self.encode_prompts(prompts, text_hooks)?;
        let (text, pooled) = if guided {
            let unc = if self.zeros_for_empty_negative && req.negative_prompt.trim().is_empty() {
                TextCond {
                    text: cond.text.zeros_like()?,
                    pooled: cond.pooled.as_ref().map(Tensor::zeros_like).transpose()?,
                }
            } else {
                text_hooks.begin(DiffPhase::NegativePrompt);
                let one = self.encode_prompts(&[req.negative_prompt.as_str()], text_hooks)?;
                let rep = |t: Tensor| -> Result<Tensor> {
                    Ok(if b == 1 {
                        t
                    } else {
                        let mut dims = vec![1; t.rank()];
                        dims[0] = b;
                        t.repeat(dims)?
                    })
                };
                TextCond {
                    text: rep(one.text)?,
                    pooled: one.pooled.map(rep).transpose()?,
                }
            };
            let text = Tensor::cat(&[&unc.text, &cond.text], 0)?;
            let pooled = match (unc.pooled, cond.pooled) {
                (Some(u), Some(c)) => Some(Tensor::cat(&[&u, &c], 0)?),
                _ => None,
            };
            (text, pooled)
        } else {
            (cond.text, cond.pooled)
        };
        let rows = text.dim(0)?;
        let text_time = match pooled {
            Some(p) => {
                let (h, w) = (req.height as f32, req.width as f32);
                let row = [h, w, 0.0, 0.0, h, w];
                let ids: Vec<f32> = (0..rows).flat_map(|_| row).collect();
                Some((p, Tensor::from_vec(ids, (rows, 6), &self.device)?))
            }
            None => None,
        };
        Ok((text, text_time))
    }

    /// The seed's initial latents `[1, 4, H/8, W/8]` (before scaling by σ_init) and the noise
    /// source positioned after them, for an ancestral sampler.
    pub fn initial_noise(&self, req: &ImageRequest) -> Result<(Tensor, NoiseSource)> {
        let mut noise = NoiseSource::new(req.seed);
        let c = self.unet.config().in_channels;
        let f = self.latent_factor();
        let x = noise.randn(&[1, c, req.height / f, req.width / f], &self.device)?;
        Ok((x, noise))
    }

    /// Runs the denoising loop and returns the final latents `[1, 4, H/8, W/8]` (f32).
    /// `progress(step, total)` is called before each step; returning `false` cancels.
    pub fn denoise(
        &self,
        req: &ImageRequest,
        steer: Option<&mut DiffSteeringHooks>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Tensor> {
        let mut none = NoDiffHooks;
        let hooks: &mut dyn DiffHooks = match steer {
            Some(s) => s,
            None => &mut none,
        };
        self.denoise_prompts(req, &[req.prompt.as_str()], hooks, progress, None)
    }

    /// [`Self::denoise`] for a batch of `prompts` (in place of `req.prompt`), all from the
    /// seed's initial latents: final latents `[b, 4, H/8, W/8]` (f32). `hooks` see the text
    /// encoding and every UNet pass, whose batch is `[b unconditional, b conditional]` rows
    /// with guidance and `b` rows without; [`DiffHooks::begin`] is told each part of the run
    /// (prompts, negative prompt, each step). A hook's early stop ends the loop with [`DiffusionError::Stopped`]. `preview`,
    /// when given, receives after each step its index and the clean latents the model
    /// predicts there (`[b, 4, H/8, W/8]`, f32; see [`Scheduler::predict_x0`]).
    pub fn denoise_prompts(
        &self,
        req: &ImageRequest,
        prompts: &[&str],
        hooks: &mut dyn DiffHooks,
        progress: &mut dyn FnMut(usize, usize) -> bool,
        mut preview: Option<StepPreview<'_>>,
    ) -> Result<Tensor> {
        self.validate(req)?;
        let b = prompts.len();
        if b == 0 {
            return Err(DiffusionError::BadInput("no prompt to denoise".into()));
        }
        let guided = req.guidance > 1.0;
        let (text, text_time) = self.conditioning(req, prompts, guided, hooks)?;
        let mut sched = Scheduler::new(&self.scheduler, req.scheduler, req.steps)?;
        let (x0, mut noise) = self.initial_noise(req)?;
        let x0 = if b == 1 { x0 } else { x0.repeat((b, 1, 1, 1))? };
        let mut x = (x0 * sched.init_noise_sigma())?;
        let total = sched.timesteps().len();
        let cond = UNetCond {
            text: &text,
            text_time: text_time.as_ref().map(|(p, i)| (p, i)),
        };
        for (i, &t) in sched.timesteps().to_vec().iter().enumerate() {
            if !progress(i, total) {
                return Err(DiffusionError::Cancelled);
            }
            let xin = sched.scale_model_input(&x, i)?;
            let xin = if guided {
                Tensor::cat(&[&xin, &xin], 0)?
            } else {
                xin
            };
            hooks.begin(DiffPhase::Step {
                step: i,
                unconditional: if guided { b } else { 0 },
            });
            let out = self.unet.forward(&xin, t, &cond, hooks)?.to_dtype(DType::F32)?;
            let eps = if guided {
                let u = out.narrow(0, 0, b)?;
                let c = out.narrow(0, b, b)?;
                (&u + ((c - &u)? * f64::from(req.guidance))?)?
            } else {
                out
            };
            if let Some(show) = preview.as_deref_mut() {
                show(i, &sched.predict_x0(&eps, i, &x)?)?;
            }
            x = sched.step(&eps, i, &x, &mut noise)?;
        }
        progress(total, total);
        Ok(x)
    }

    /// Decodes latents `[b, 4, h, w]` to images `[b, 3, 8h, 8w]` in about [-1, 1] (f32).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(self
            .vae
            .decode_latents(&latents.to_dtype(self.vae.dtype())?)?
            .to_dtype(DType::F32)?)
    }

    /// The settings of an image made with `req`, `stack` and `window`, as stored in its PNG.
    pub fn image_meta(
        &self,
        req: &ImageRequest,
        stack: &SteeringStack,
        window: Option<StepWindow>,
    ) -> ImageMeta {
        let each = |f: &dyn Fn(&crate::transport::Concept) -> (String, String)| -> Vec<(String, String)> {
            stack.concepts.iter().map(f).collect()
        };
        ImageMeta {
            prompt: req.prompt.clone(),
            negative_prompt: req.negative_prompt.clone(),
            seed: req.seed,
            steps: req.steps,
            guidance: req.guidance,
            width: req.width,
            height: req.height,
            scheduler: req.scheduler.name().to_string(),
            lambdas: stack
                .concepts
                .iter()
                .map(|c| (c.name.clone(), if c.enabled { c.lambda } else { 0.0 }))
                .collect(),
            maps_sha256: each(&|c| (c.name.clone(), c.maps.meta().data_sha256.clone())),
            model: self.name(),
            model_fingerprint: self.fingerprint.weights_header_sha256.clone(),
            steer_window: window
                .filter(|w| *w != StepWindow::ALL)
                .map(|w| (w.start, w.end.min(req.steps))),
            app_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Compiles steering hooks for `stack` acting within `window` on the steps of `req`'s
    /// schedule (which pick maps fitted per timestep).
    pub fn steering(
        &self,
        stack: &SteeringStack,
        window: StepWindow,
        req: &ImageRequest,
    ) -> Result<DiffSteeringHooks> {
        let timesteps = if stack.has_timestep_maps() {
            Scheduler::new(&self.scheduler, req.scheduler, req.steps)?
                .timesteps()
                .to_vec()
        } else {
            Vec::new()
        };
        DiffSteeringHooks::new(stack, self.hook_sites(), self.unet_first_hook, window, &timesteps)
    }

    /// Generates one image `[1, 3, H, W]`, steered by `stack` within `window` (an empty
    /// stack or all λ = 0 gives exactly the unsteered image).
    pub fn generate(
        &self,
        req: &ImageRequest,
        stack: &SteeringStack,
        window: StepWindow,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Tensor> {
        self.generate_previewed(req, stack, window, progress, None)
    }

    /// [`Self::generate`], handing `preview` each step's predicted clean latents (see
    /// [`Self::denoise_prompts`]; [`Self::preview_image`] turns them into a picture).
    pub fn generate_previewed(
        &self,
        req: &ImageRequest,
        stack: &SteeringStack,
        window: StepWindow,
        progress: &mut dyn FnMut(usize, usize) -> bool,
        preview: Option<StepPreview<'_>>,
    ) -> Result<Tensor> {
        let mut hooks = self.steering(stack, window, req)?;
        let mut none = NoDiffHooks;
        let h: &mut dyn DiffHooks = if hooks.is_empty() { &mut none } else { &mut hooks };
        let latents = self.denoise_prompts(req, &[req.prompt.as_str()], h, progress, preview)?;
        self.decode(&latents)
    }

    /// A quick picture of latents `[b, 4, h, w]` (e.g. a step's predicted clean latents) for
    /// a preview: the VAE's own decoding where it is cheap (latents of at most 32 × 32), else
    /// the well-known linear latent → RGB approximation of the SD 1.x/2.x or SDXL latent
    /// space (no extra weights), at latent resolution. The first batch row only.
    pub fn preview_image(&self, latents: &Tensor) -> Result<RgbImage> {
        let (_, c, h, w) = latents.dims4()?;
        let first = latents.narrow(0, 0, 1)?.to_dtype(DType::F32)?;
        if h * w <= 32 * 32 || c != 4 {
            let img = self.decode(&first)?;
            return tensor_to_images(&img)?
                .into_iter()
                .next()
                .ok_or_else(|| DiffusionError::Backend("the VAE returned no image".into()));
        }
        let (factors, bias) = match self.family {
            Family::Sdxl => (&LATENT_RGB_SDXL, LATENT_RGB_SDXL_BIAS),
            _ => (&LATENT_RGB_SD1, [0.0; 3]),
        };
        let v = first.flatten_all()?.to_vec1::<f32>()?;
        let plane = h * w;
        let mut px = Vec::with_capacity(plane * 3);
        for i in 0..plane {
            for (ch, b) in bias.iter().enumerate() {
                let lin: f32 = (0..4).map(|k| v[k * plane + i] * factors[k][ch]).sum::<f32>() + b;
                px.push((((lin + 1.0) * 0.5).clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
        RgbImage::from_raw(w as u32, h as u32, px)
            .ok_or_else(|| DiffusionError::Backend("preview size mismatch".into()))
    }
}

/// Called after each denoising step with its index and the predicted clean latents.
pub type StepPreview<'a> = &'a mut dyn FnMut(usize, &Tensor) -> Result<()>;

/// Latent channel → RGB weights of SD 1.x/2.x latents (the community's linear preview
/// approximation), applied to model-space latents; the result is about [-1, 1].
const LATENT_RGB_SD1: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// The same for SDXL latents, with its bias.
const LATENT_RGB_SDXL: [[f32; 3]; 4] = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
];
const LATENT_RGB_SDXL_BIAS: [f32; 3] = [0.1084, -0.0175, -0.0011];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_defaults_read_the_index_and_ignore_bad_values() {
        let read = |text: &str| {
            let mut warnings = Vec::new();
            let v: Value = serde_json::from_str(text).unwrap();
            (FolderDefaults::from_index(&v, &mut warnings), warnings.len())
        };
        assert_eq!(read("{}"), (FolderDefaults::default(), 0));
        let good = FolderDefaults {
            steps: Some(20),
            guidance: Some(4.0),
        };
        assert_eq!(
            read(r#"{"_act_studio_defaults": {"steps": 20, "guidance": 4.0}}"#),
            (good, 0)
        );
        let (d, warned) = read(r#"{"_act_studio_defaults": {"steps": 0, "guidance": "x"}}"#);
        assert_eq!((d, warned), (FolderDefaults::default(), 2));
        let (d, warned) = read(r#"{"_act_studio_defaults": {"steps": 5000, "guidance": 31}}"#);
        assert_eq!((d, warned), (FolderDefaults::default(), 2));
    }
}
