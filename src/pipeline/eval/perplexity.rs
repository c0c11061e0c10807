//! Teacher-forced log-likelihoods of many token sequences in padded batches, and perplexity of
//! held-out texts (the side-effect measure of steering: how much less natural ordinary text
//! becomes under the maps).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::runtime::forward::LogitsMode;
use crate::runtime::generate::log_softmax_at;
use crate::runtime::linear::MatPath;
use crate::runtime::{Hooks, LoadedModel, Result, RuntimeError};

use super::super::collect::PaddedBatch;

/// Rows scored per forward pass: logits are `rows × tokens × vocab` floats (SmolLM2: 25 MB per
/// row of 128 tokens), so batches stay small.
pub const SCORE_BATCH: usize = 4;

/// For each sequence, `log p(ids[t+1] | ids[..=t])` for every `t` (one value fewer than the
/// sequence has tokens), on the dense path. Sequences need two or more tokens. `progress`
/// gets (done, total) after each batch.
pub fn token_logprobs(
    m: &LoadedModel,
    seqs: &[Vec<u32>],
    hooks: &mut dyn Hooks,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<f64>>> {
    let vocab = m.config().vocab_size;
    let limit = m.config().max_position;
    if let Some(s) = seqs.iter().find(|s| s.len() < 2 || s.len() > limit) {
        return Err(RuntimeError::BadInput(format!(
            "a sequence of {} tokens cannot be scored (2..={limit})",
            s.len()
        )));
    }
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(SCORE_BATCH) {
        if cancel.load(Ordering::Relaxed) {
            return Err(RuntimeError::Cancelled);
        }
        let padded = PaddedBatch::from_ids(chunk.iter());
        let (batch, seq) = (padded.batch(), padded.seq);
        let mut caches: Vec<_> = chunk.iter().map(|_| m.transient_cache()).collect();
        let logits = m
            .model
            .forward(&batch, &mut caches, hooks, MatPath::Dense, LogitsMode::All)?
            .logits;
        if logits.len() != chunk.len() * seq * vocab {
            return Err(RuntimeError::BadInput("a hook stopped the forward pass".into()));
        }
        for (b, s) in chunk.iter().enumerate() {
            let lp = (0..s.len() - 1)
                .map(|t| {
                    log_softmax_at(
                        &logits[(b * seq + t) * vocab..(b * seq + t + 1) * vocab],
                        s[t + 1] as usize,
                    )
                })
                .collect();
            out.push(lp);
        }
        progress(out.len(), seqs.len());
    }
    Ok(out)
}

/// Perplexity over several texts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextPerplexity {
    /// exp(mean negative log-likelihood over every predicted token).
    pub perplexity: f64,
    /// Mean negative log-likelihood, nats per token.
    pub nll: f64,
    /// Predicted tokens.
    pub tokens: usize,
    /// Texts scored.
    pub texts: usize,
}

/// Perplexity of `texts`, each cut to its first `max_tokens` tokens (BOS included); texts of
/// fewer than two tokens are skipped.
pub fn texts_perplexity(
    m: &LoadedModel,
    texts: &[String],
    max_tokens: usize,
    hooks: &mut dyn Hooks,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<TextPerplexity> {
    let max_tokens = max_tokens.clamp(2, m.config().max_position);
    let mut seqs = Vec::with_capacity(texts.len());
    for t in texts {
        let ids = m.tokenizer.encode_prefix(t, max_tokens)?;
        if ids.len() >= 2 {
            seqs.push(ids);
        }
    }
    if seqs.is_empty() {
        return Err(RuntimeError::BadInput(
            "no text has two or more tokens to score".into(),
        ));
    }
    let lps = token_logprobs(m, &seqs, hooks, cancel, progress)?;
    let tokens: usize = lps.iter().map(Vec::len).sum();
    let nll = -lps.iter().flatten().sum::<f64>() / tokens.max(1) as f64;
    Ok(TextPerplexity {
        perplexity: nll.exp(),
        nll,
        tokens,
        texts: seqs.len(),
    })
}
