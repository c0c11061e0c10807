//! Whole tiny Stable Diffusion folders in the diffusers layout: SD 1.5 and SD 2.x structures
//! (one text encoder) and SDXL-Turbo structure (two text encoders, `text_time` conditioning).

use std::path::Path;

use serde_json::json;

use super::tiny_clip::{TinyClip, write_tiny_clip};
use super::tiny_unet::{TinyUnet, write_tiny_unet};
use super::tiny_vae::{TinyVae, write_scheduler_config, write_tiny_vae};

/// The sampler settings of a tiny folder's `scheduler/`.
struct Sampler {
    class: &'static str,
    spacing: &'static str,
    prediction: &'static str,
}

/// Writes a one-text-encoder folder (`StableDiffusionPipeline`) at `root`.
fn write_single_encoder(
    root: &Path,
    clip: &TinyClip,
    unet: &TinyUnet,
    sampler: &Sampler,
    seed: u64,
) -> anyhow::Result<()> {
    write_tiny_clip(&root.join("text_encoder"), &root.join("tokenizer"), clip, seed)?;
    write_tiny_unet(&root.join("unet"), unet, seed + 1)?;
    write_tiny_vae(&root.join("vae"), &TinyVae::small(), seed + 2)?;
    write_scheduler_config(
        &root.join("scheduler"),
        sampler.class,
        sampler.spacing,
        sampler.prediction,
    )?;
    std::fs::write(
        root.join("model_index.json"),
        serde_json::to_string_pretty(&json!({
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.27.0",
            "scheduler": ["diffusers", sampler.class],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }))?,
    )?;
    Ok(())
}

/// Writes an SD 1.5-structured folder at `root` (Euler discrete, leading spacing).
pub fn write_tiny_sd15(root: &Path, seed: u64) -> anyhow::Result<()> {
    let clip = TinyClip::sd15();
    let unet = TinyUnet::sd15(clip.hidden);
    let sampler = Sampler {
        class: "EulerDiscreteScheduler",
        spacing: "leading",
        prediction: "epsilon",
    };
    write_single_encoder(root, &clip, &unet, &sampler, seed)
}

/// Writes an SDXL-Turbo-structured folder at `root` (Euler ancestral, trailing spacing).
pub fn write_tiny_sdxl(root: &Path, seed: u64) -> anyhow::Result<()> {
    let c1 = TinyClip::sd15();
    let c2 = TinyClip::sdxl_2();
    write_tiny_clip(&root.join("text_encoder"), &root.join("tokenizer"), &c1, seed)?;
    write_tiny_clip(
        &root.join("text_encoder_2"),
        &root.join("tokenizer_2"),
        &c2,
        seed + 10,
    )?;
    write_tiny_unet(
        &root.join("unet"),
        &TinyUnet::sdxl(c1.hidden + c2.hidden, c2.projection_dim),
        seed + 1,
    )?;
    let mut vae = TinyVae::small();
    vae.scaling_factor = 0.13025;
    write_tiny_vae(&root.join("vae"), &vae, seed + 2)?;
    write_scheduler_config(
        &root.join("scheduler"),
        "EulerAncestralDiscreteScheduler",
        "trailing",
        "epsilon",
    )?;
    std::fs::write(
        root.join("model_index.json"),
        serde_json::to_string_pretty(&json!({
            "_class_name": "StableDiffusionXLPipeline",
            "_diffusers_version": "0.27.0",
            "force_zeros_for_empty_prompt": true,
            "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }))?,
    )?;
    Ok(())
}

/// Writes an SD 2.x-structured folder at `root`: a GELU text encoder padded with `!`, linear
/// projections in the UNet, v-prediction, DDIM with linspace spacing.
pub fn write_tiny_sd2(root: &Path, seed: u64) -> anyhow::Result<()> {
    let clip = TinyClip {
        act: "gelu",
        pad_token: "!",
        ..TinyClip::sd15()
    };
    let unet = TinyUnet {
        linear_projection: true,
        ..TinyUnet::sd15(clip.hidden)
    };
    let sampler = Sampler {
        class: "DDIMScheduler",
        spacing: "linspace",
        prediction: "v_prediction",
    };
    write_single_encoder(root, &clip, &unet, &sampler, seed)
}
