//! Text-to-image diffusion (Stable Diffusion 1.5 / 2.1 / Turbo, SDXL-Turbo) with hook points
//! for Activation Transport (AcT paper §5; docs/ARCHITECTURE.md, "Diffusion").
//!
//! Our own forward passes of the CLIP text encoders, the UNet and the VAE decoder, loaded
//! from a local diffusers-layout folder, with hooks at every normalisation layer; the
//! schedulers; and the sampling loop with classifier-free guidance.

pub mod clip;
pub mod clip_tokenizer;
pub mod conv;
pub mod error;
pub mod hooks;
pub mod image_io;
pub mod pipeline;
pub mod scheduler;
pub mod steer;
pub mod unet;
pub mod vae;
pub mod weights;

pub use error::{DiffusionError, Result};
pub use hooks::{
    ActShape, DiffActivation, DiffHooks, DiffPhase, HookRegistry, HookSite, HookSiteKind, NoDiffHooks,
};
