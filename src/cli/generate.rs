//! `generate`: text generation, optionally steered; stdout carries only the generated text.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Result;

use super::common::{load, stdout_error};
use crate::pipeline::generate_text::{TextEvent, TextRequest, generate_text, prompt_ids};
use crate::pipeline::presets::parse_named_lambda;
use crate::pipeline::steering::{SteeringTarget, load_steering_stack};
use crate::runtime::generate::GenerateOptions;
use crate::runtime::linear::MatPath;
use crate::runtime::sampling::SamplingConfig;

/// Arguments of `generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Model file (.gguf).
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// A system message before the prompt (with --chat).
    #[arg(long, default_value = "", requires = "chat")]
    pub system: String,
    /// Most new tokens.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.7, allow_negative_numbers = true, value_parser = crate::pipeline::presets::parse_temperature)]
    pub temperature: f32,
    /// Top-k filter (0 = off).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Top-p (nucleus) filter (1 = off).
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true, value_parser = crate::pipeline::presets::parse_top_p)]
    pub top_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = crate::pipeline::presets::parse_repetition_penalty)]
    pub repetition_penalty: f32,
    /// Lower a token's logit by this much per time it was generated before (−2 … 2, 0 = off;
    /// OpenAI's frequency penalty).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = crate::pipeline::presets::parse_frequency_penalty)]
    pub frequency_penalty: f32,
    /// Lower the logit of every token generated before by this much (−2 … 2, 0 = off;
    /// OpenAI's presence penalty).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = crate::pipeline::presets::parse_presence_penalty)]
    pub presence_penalty: f32,
    /// RNG seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Run matrix products in f32 (weights dequantized) instead of the model's quantization.
    #[arg(long)]
    pub dense: bool,
    /// Print prefill and decode speed to stderr.
    #[arg(long)]
    pub stats: bool,
    /// Maps file(s) to steer with (repeatable); each is one concept, named by the file's
    /// concept name (by default its stem at fit time).
    #[arg(long = "maps")]
    pub maps: Vec<PathBuf>,
    /// Strength of a concept, NAME=VALUE (repeatable; default 1 for every loaded concept;
    /// 0 = off, 1 = full transport, > 1 extrapolates).
    #[arg(long = "lambda", value_parser = parse_named_lambda)]
    pub lambdas: Vec<(String, f32)>,
    /// Which tokens are steered: all, last, prompt or generated.
    #[arg(long, default_value = "all")]
    pub scope: crate::transport::TokenScope,
}

/// `generate --model M --prompt P …`.
pub fn generate(a: &GenerateArgs) -> Result<()> {
    let m = load(&a.model)?;
    let target = SteeringTarget::language_model(&m);
    let req = TextRequest {
        prompt: a.prompt.clone(),
        chat: a.chat,
        system: a.system.clone(),
        options: GenerateOptions {
            max_tokens: a.max_tokens,
            sampling: SamplingConfig {
                temperature: a.temperature,
                top_k: a.top_k,
                top_p: a.top_p,
                repetition_penalty: a.repetition_penalty,
                frequency_penalty: a.frequency_penalty,
                presence_penalty: a.presence_penalty,
                seed: a.seed,
            },
            path: if a.dense {
                MatPath::Dense
            } else {
                MatPath::Quantized
            },
        },
        stack: load_steering_stack(&target, &a.maps, &a.lambdas, a.scope)?.unwrap_or_default(),
        unsteered: false,
    };
    let ids = prompt_ids(&m, &req.prompt, req.chat, &req.system)?;
    let mut stdout = std::io::stdout().lock();
    // A failed write (the reader went away) stops generating; it is reported after.
    let cancel = AtomicBool::new(false);
    let mut failed = None;
    let g = generate_text(&m, &req, &ids, &cancel, &mut |e| {
        if let TextEvent::Piece(_, piece) = e
            && failed.is_none()
            && let Err(e) = stdout.write_all(piece.as_bytes()).and_then(|()| stdout.flush())
        {
            failed = Some(e);
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    if let Some(e) = failed {
        return Err(stdout_error(e));
    }
    let g = g?;
    writeln!(stdout)
        .and_then(|()| stdout.flush())
        .map_err(stdout_error)?;
    if a.stats {
        let s = g.stats;
        eprintln!(
            "prefill: {} tokens, {:.1} tok/s",
            s.prompt_tokens,
            s.prompt_tokens as f64 / s.prefill_s.max(1e-9)
        );
        eprintln!(
            "decode: {} tokens, {:.1} tok/s",
            s.decode_tokens,
            s.decode_tokens as f64 / s.decode_s.max(1e-9)
        );
    }
    Ok(())
}
