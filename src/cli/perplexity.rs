//! `perplexity`: teacher-forced perplexity of a text file.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};

use super::common::load;
use crate::runtime::NoHooks;
use crate::runtime::generate::perplexity as run_perplexity;

/// Arguments of `perplexity`.
#[derive(Debug, clap::Args)]
pub struct PerplexityArgs {
    /// Model file (.gguf).
    #[arg(long)]
    pub model: PathBuf,
    /// UTF-8 text file.
    #[arg(long)]
    pub file: PathBuf,
    /// Tokens per scoring window.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
}

/// `perplexity --model M --file F`.
pub fn perplexity(a: &PerplexityArgs) -> Result<()> {
    let m = load(&a.model)?;
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let ids = m.tokenizer.encode(&text)?;
    let p = run_perplexity(&m, &ids, a.window, &mut NoHooks, &AtomicBool::new(false))?;
    outln!(
        "perplexity: {:.4} ({} tokens, {:.4} nats/token)",
        p.perplexity,
        p.tokens,
        p.nll
    );
    Ok(())
}
