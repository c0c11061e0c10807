//! Hookable forward passes on real models: loading (GGUF), tokenizer and chat template, KV
//! cache, hook points, sampling and generation.

pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hooks;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod model;
pub mod ops;
pub mod quant;
pub mod sampling;
pub mod steer;
pub mod tokenizer;

pub use error::{Result, RuntimeError};
pub use hooks::{Activation, HookFlow, HookKind, HookPoint, Hooks, NoHooks};
pub use model::LoadedModel;
