//! `inspect`: a model's architecture, sizes, tokenizer facts and hook points.

use std::path::PathBuf;

use anyhow::Result;

use super::common::load;
use crate::runtime::config::Family;

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Model file (.gguf).
    #[arg(long)]
    pub model: PathBuf,
}

/// `inspect --model M`.
pub fn inspect(a: &InspectArgs) -> Result<()> {
    let m = load(&a.model)?;
    let c = m.config();
    println!("model:          {}", a.model.display());
    println!("architecture:   {}", c.architecture);
    println!("layers:         {}", c.n_layers);
    println!("hidden size:    {}", c.hidden_size);
    println!(
        "heads:          {} (kv {}, head dim {})",
        c.n_heads, c.n_kv_heads, c.head_dim
    );
    println!("mlp size:       {}", c.intermediate_size);
    println!("vocabulary:     {}", c.vocab_size);
    println!("context:        {}", c.max_position);
    match c.family {
        Family::Llama => {
            let pairs = if c.rope_interleaved {
                "interleaved pairs"
            } else {
                "half split"
            };
            println!("rope:           θ = {}, {pairs}", c.rope_theta);
        }
        Family::Gpt2 => println!("positions:      learned"),
    }
    println!("norm eps:       {}", c.norm_eps);
    println!("fingerprint:    {}", m.fingerprint);
    let t = &m.tokenizer;
    let name = |id: Option<u32>| {
        id.and_then(|i| t.token_str(i).map(|s| format!("{s} ({i})")))
            .unwrap_or_else(|| "none".into())
    };
    println!(
        "tokenizer:      {} tokens, BOS {} (added: {}), EOS {}",
        t.vocab_size(),
        name(t.bos()),
        t.adds_bos(),
        name(t.eos().first().copied())
    );
    println!(
        "chat template:  {}",
        if t.chat_template().is_some() { "yes" } else { "no" }
    );
    let points = m.hook_points();
    println!(
        "hook points:    {} ({} per layer)",
        points.len(),
        points.len() / c.n_layers.max(1)
    );
    for p in points.iter().take(5) {
        println!("  {p}");
    }
    if points.len() > 5 {
        println!("  … {}", points.last().map(|p| p.to_string()).unwrap_or_default());
    }
    Ok(())
}
