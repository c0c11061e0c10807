//! Hookable forward passes on real models: loading (GGUF files, Hugging Face safetensors
//! folders, the local hub cache), tokenizer and chat template, KV cache, hook points, sampling
//! and generation.

mod attend_one;
mod attend_prompt;
pub mod block_weights;
pub mod bpe_tokenizer;
pub mod config;
pub mod dense;
pub mod embedding;
pub mod error;
pub mod forward;
pub mod gemma;
pub mod generate;
pub mod generate_many;
pub mod gguf;
mod gguf_precheck;
pub mod gpt2;
pub mod hf;
pub mod hf_cache;
pub mod hooks;
pub mod kquant;
pub mod kquant_tiled;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod load_model;
pub mod logprobs;
pub mod model;
pub mod model_header;
pub mod ops;
pub mod pool;
pub mod quant;
pub mod quant_dot4;
mod quant_dot8;
mod quant_dot8_512;
pub mod quant_mix;
mod quant_x16;
pub mod safetensors_shards;
pub mod sampling;
pub mod split_step;
pub mod spm_tokenizer;
pub mod spm_vocab;
pub mod steer;
#[cfg(test)]
mod test_values;
pub mod tiled;
pub mod token_table;
pub mod tokenizer;
pub mod weight_bytes;

pub use error::{Result, RuntimeError};
pub use hf_cache::{CachedModel, discover_hf_cache};
pub use hooks::{Activation, HookFlow, HookKind, HookPoint, Hooks, NoHooks};
pub use model::{LoadedModel, Network};
