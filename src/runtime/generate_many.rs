//! Many samples from one prompt, decoded together: the prompt runs once, its cache is copied
//! to every row, and each decode step is one forward pass over all unfinished rows (matrix
//! products over `rows × d` instead of `1 × d`). Used by sweeps and evaluations, which draw
//! dozens of samples per λ.
//!
//! Row `i` samples with seed `opts.sampling.seed + i`, so a row's text does not depend on how
//! many rows run beside it only when decoding is exact per row; on the quantized path the
//! matrix kernels treat rows independently, so it does not depend on it at all (tested).

use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{Result, RuntimeError};
use super::forward::{Batch, LogitsMode};
use super::generate::{GenerateOptions, Generation, GenerationStats, StopReason};
use super::hooks::Hooks;
use super::kv_cache::KvCache;
use super::model::LoadedModel;
use super::sampling::{Sampler, SamplingConfig};
use super::tokenizer::StreamDecoder;

/// One row being decoded.
struct Row {
    cache: KvCache,
    sampler: Sampler,
    history: Vec<u32>,
    tokens: Vec<u32>,
    stream: StreamDecoder,
    text: String,
    stop: Option<StopReason>,
}

/// Generates `n` continuations of `prompt`; row `i` samples with seed `seed + i`. Hooks see the
/// prompt once (batch 1) and then every decode step (batch = unfinished rows). `on_row_done`
/// is called with each row's index as it finishes. The returned generations are in row order;
/// their stats carry the shared prefill time and the total decode time.
pub fn generate_many(
    m: &LoadedModel,
    prompt: &[u32],
    n: usize,
    opts: &GenerateOptions,
    hooks: &mut dyn Hooks,
    cancel: &AtomicBool,
    on_row_done: &mut dyn FnMut(usize),
) -> Result<Vec<Generation>> {
    super::generate::check_request(m, prompt, opts)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let vocab = m.config().vocab_size;
    let prompt_len = prompt.len();
    let t0 = std::time::Instant::now();
    let mut cache = vec![m.new_cache()];
    let first = super::generate::prefill(m, prompt, &mut cache, hooks, opts.path)?;
    if first.len() != vocab {
        return Err(RuntimeError::BadInput(
            "a hook stopped the forward pass during generation".into(),
        ));
    }
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let mut rows: Vec<Row> = (0..n)
        .map(|i| Row {
            cache: m.fork_cache(&cache[0], prompt_len.saturating_add(opts.max_tokens)),
            sampler: Sampler::new(SamplingConfig {
                seed: opts.sampling.seed.wrapping_add(i as u64),
                ..opts.sampling
            }),
            history: prompt.to_vec(),
            tokens: Vec::new(),
            stream: StreamDecoder::new(),
            text: String::new(),
            stop: None,
        })
        .collect();
    let mut logits: Vec<Vec<f32>> = vec![first; n];
    let mut active: Vec<usize> = (0..n).collect();
    let mut decode_steps = 0usize;
    for step in 0..opts.max_tokens {
        if cancel.load(Ordering::Relaxed) {
            return Err(RuntimeError::Cancelled);
        }
        // Sample one token per active row; retire rows that end.
        let mut next_active = Vec::with_capacity(active.len());
        let mut feed = Vec::with_capacity(active.len());
        for (k, &r) in active.iter().enumerate() {
            let row = &mut rows[r];
            let tok = row.sampler.sample(&mut logits[k], &row.history);
            if m.tokenizer.eos().contains(&tok) {
                row.stop = Some(StopReason::Eos);
                on_row_done(r);
                continue;
            }
            row.history.push(tok);
            row.tokens.push(tok);
            let piece = row.stream.push(&m.tokenizer, tok)?;
            row.text.push_str(&piece);
            if step + 1 == opts.max_tokens {
                row.stop = Some(StopReason::MaxTokens);
                on_row_done(r);
                continue;
            }
            next_active.push(r);
            feed.push(tok);
        }
        active = next_active;
        if active.is_empty() {
            break;
        }
        let mut caches: Vec<KvCache> = active
            .iter()
            .map(|&r| std::mem::take(&mut rows[r].cache))
            .collect();
        let ones = vec![1usize; active.len()];
        let prompt_lens = vec![prompt_len; active.len()];
        let batch = Batch {
            tokens: &feed,
            batch: active.len(),
            seq: 1,
            valid: &ones,
            prompt_lens: &prompt_lens,
        };
        let out = super::generate::decode_pool().install(|| {
            m.model
                .forward(&batch, &mut caches, &mut *hooks, opts.path, LogitsMode::Last)
        });
        for (&r, c) in active.iter().zip(caches) {
            rows[r].cache = c;
        }
        let out = out?;
        if out.logits.len() != vocab * active.len() {
            return Err(RuntimeError::BadInput(
                "a hook stopped the forward pass during generation".into(),
            ));
        }
        logits = out.logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect();
        decode_steps += 1;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    Ok(rows
        .into_iter()
        .map(|row| Generation {
            stats: GenerationStats {
                prompt_tokens: prompt_len,
                prefill_s,
                decode_tokens: decode_steps,
                decode_s,
            },
            tokens: row.tokens,
            text: row.text,
            stop: row.stop.unwrap_or(StopReason::MaxTokens),
        })
        .collect())
}
