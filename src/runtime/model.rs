//! A loaded model: network, tokenizer and fingerprint, from a GGUF file or a Hugging Face
//! model folder (the loading itself is in [`super::load_model`]).

use std::path::PathBuf;

use crate::transport::ModelFingerprint;

use super::config::ModelConfig;
use super::error::Result;
use super::forward::{Batch, ForwardOutput, LogitsMode};
use super::gemma::GemmaModel;
use super::gpt2::Gpt2Model;
use super::hooks::{HookPoint, Hooks, hook_points};
use super::kv_cache::KvCache;
use super::linear::MatPath;
use super::llama::LlamaModel;
use super::tokenizer::TextTokenizer;

/// A network of any supported architecture.
#[derive(Debug)]
pub enum Network {
    /// Llama family (Llama, SmolLM2, Mistral, Qwen2).
    Llama(LlamaModel),
    /// GPT-2.
    Gpt2(Gpt2Model),
    /// Gemma 2 and Gemma 3.
    Gemma(GemmaModel),
}

impl Network {
    /// Hyper-parameters.
    pub fn cfg(&self) -> &ModelConfig {
        match self {
            Network::Llama(m) => &m.cfg,
            Network::Gpt2(m) => &m.cfg,
            Network::Gemma(m) => &m.cfg,
        }
    }

    /// Runs the network on a batch (see [`LlamaModel::forward`]: caches grow by the real
    /// tokens, hooks see `[batch, seq, d]` activations, logits as `mode` asks).
    pub fn forward(
        &self,
        batch: &Batch<'_>,
        caches: &mut [KvCache],
        hooks: &mut dyn Hooks,
        path: MatPath,
        mode: LogitsMode,
    ) -> Result<ForwardOutput> {
        match self {
            Network::Llama(m) => m.forward(batch, caches, hooks, path, mode),
            Network::Gpt2(m) => m.forward(batch, caches, hooks, path, mode),
            Network::Gemma(m) => m.forward(batch, caches, hooks, path, mode),
        }
    }
}

/// A model ready to run.
pub struct LoadedModel {
    /// The network.
    pub model: Network,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Identity for maps files.
    pub fingerprint: ModelFingerprint,
    /// Where it was loaded from.
    pub source: PathBuf,
}

impl LoadedModel {
    /// Hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        self.model.cfg()
    }

    /// The hook points this model has, in forward order (see [`hook_points`]).
    pub fn hook_points(&self) -> Vec<HookPoint> {
        hook_points(self.config())
    }

    /// A fresh cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config().n_layers)
    }

    /// A cache for a one-shot pass that is never continued (see [`KvCache::transient`]).
    pub fn transient_cache(&self) -> KvCache {
        KvCache::transient(self.config().n_layers)
    }
}
