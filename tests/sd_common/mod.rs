//! Tiny random-weight Stable Diffusion components written in the real diffusers layout, for
//! the diffusion tests (no real SD weights can be downloaded here).
#![allow(dead_code)]

pub mod compare;
pub mod maps;
pub mod pt_safetensors;
pub mod tiny_clip;
pub mod tiny_sd;
pub mod tiny_unet;
pub mod tiny_vae;

pub use pt_safetensors::save_pt_safetensors;
