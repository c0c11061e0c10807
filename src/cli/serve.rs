//! `serve`: the OpenAI-compatible server ([`crate::serve`]) on a model and its concepts.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::common::load;
use crate::pipeline::completion::ConceptSet;
use crate::serve::{DEFAULT_MAX_BODY_BYTES, ServeOptions, start};

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Model file (.gguf) or Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Maps file(s) whose concepts requests may steer with (repeatable), by the file's
    /// concept name: `"steering": {"NAME": λ}` in a request body.
    #[arg(long = "maps")]
    pub maps: Vec<PathBuf>,
    /// Address to listen on (the default lets only this machine connect).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 = any free port; the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every request (also read from
    /// ACT_SERVE_API_KEY).
    #[arg(long, env = "ACT_SERVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Most samples decoded together (more wait for a free row).
    #[arg(long, default_value_t = crate::pipeline::batch_engine::DEFAULT_MAX_ROWS)]
    pub max_batch: usize,
    /// Most MiB of KV cache the running samples may grow to together (each counts its prompt
    /// and max_tokens; later requests wait, and one that alone needs more is refused).
    /// Default: half of this machine's memory.
    #[arg(long)]
    pub max_kv_mb: Option<u64>,
    /// Another name the model answers to in a request's `model` (repeatable; listed by
    /// /v1/models after the model's own id, its file or folder name).
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// Accept any `model` name (for clients that send a fixed one) instead of answering 404
    /// `model_not_found` to names that are neither the id nor an alias.
    #[arg(long)]
    pub any_model: bool,
    /// MiB of recent prompts' KV caches kept for reuse: a prompt sent again (same steering)
    /// skips its prefill, and a long one extending an earlier prompt (a chat's next turn)
    /// starts after the 512-token chunks they share; answers count them in
    /// `usage.prompt_tokens_details.cached_tokens`. 0 turns it off.
    #[arg(long, default_value_t = crate::pipeline::batch_engine::DEFAULT_PROMPT_CACHE_BYTES >> 20)]
    pub prompt_cache_mb: u64,
}

/// `serve --model M [--maps F …]`: runs until Ctrl-C.
pub fn serve(a: &ServeArgs) -> Result<()> {
    anyhow::ensure!(a.max_batch >= 1, "--max-batch must be at least 1");
    let m = load(&a.model)?;
    let concepts = ConceptSet::load(&m, &a.maps).context("loading the maps to serve")?;
    let names: Vec<String> = concepts
        .concepts()
        .iter()
        .map(|c| c.meta().concept.clone())
        .collect();
    let opts = ServeOptions {
        host: a.host.clone(),
        port: a.port,
        api_key: a.api_key.clone(),
        max_body_bytes: a.max_body_bytes,
        max_rows: a.max_batch,
        max_kv_bytes: match a.max_kv_mb {
            Some(0) => anyhow::bail!("--max-kv-mb must be at least 1"),
            Some(mb) => mb.saturating_mul(1 << 20),
            None => crate::serve::default_max_kv_bytes(),
        },
        aliases: a.aliases.clone(),
        any_model: a.any_model,
        prompt_cache_bytes: a.prompt_cache_mb.saturating_mul(1 << 20),
    };
    let server = start(Arc::new(m), concepts, &opts, true)?;
    let mut model_names = vec![format!("`{}`", crate::serve::model_id_of_path(&a.model))];
    model_names.extend(a.aliases.iter().map(|n| format!("`{}`", n.trim())));
    eprintln!(
        "serving {} at http://{}/v1 (concepts: {}); Ctrl-C stops",
        if a.any_model {
            format!("{} (any model name accepted)", model_names.join(" / "))
        } else {
            model_names.join(" / ")
        },
        server.addr(),
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    );
    server.wait();
    Ok(())
}
