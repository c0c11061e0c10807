//! Text generation with streaming and cancellation, and teacher-forced perplexity.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::error::{Result, RuntimeError};
use super::forward::{Batch, LogitsMode};
use super::hooks::Hooks;
use super::kv_cache::KvCache;
use super::linear::MatPath;
use super::model::LoadedModel;
use super::sampling::{Sampler, SamplingConfig};
use super::tokenizer::StreamDecoder;

/// Generation settings.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    /// Most new tokens.
    pub max_tokens: usize,
    /// Token selection.
    pub sampling: SamplingConfig,
    /// Matrix path for prefill and decode ([`MatPath::Quantized`] keeps the model's own
    /// quantization: token-identical to candle's quantized model).
    pub path: MatPath,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            sampling: SamplingConfig::default(),
            path: MatPath::Quantized,
        }
    }
}

/// Timing of one generation.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenerationStats {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Seconds spent on the prompt.
    pub prefill_s: f64,
    /// Tokens generated after the first (each needing one decode step).
    pub decode_tokens: usize,
    /// Seconds spent on decode steps.
    pub decode_s: f64,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-sequence token.
    Eos,
    /// `max_tokens` reached.
    MaxTokens,
    /// The callback asked to stop.
    Callback,
}

/// What a generation produced.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New token ids (EOS excluded).
    pub tokens: Vec<u32>,
    /// Their text.
    pub text: String,
    /// Why it stopped.
    pub stop: StopReason,
    /// Timing.
    pub stats: GenerationStats,
}

/// Prompt tokens per forward pass of a prefill: a longer prompt runs in chunks through the KV
/// cache, so attention holds `heads × chunk × context` scores instead of `heads × prompt²`
/// (a 7,000-token prompt at once needed gigabytes).
pub const PREFILL_CHUNK: usize = 512;

/// Runs `prompt` through the model into the one-row `cache` (empty on entry), in chunks of
/// [`PREFILL_CHUNK`] tokens, and returns the last token's logits (`[vocab]`). Prompts up to
/// one chunk run exactly as one forward pass. On the quantized path the prompt takes
/// [`MatPath::for_prompt`] (the tiled product: the same numbers up to float rounding, several
/// times faster for long prompts).
pub fn prefill(
    m: &LoadedModel,
    prompt: &[u32],
    cache: &mut [KvCache],
    hooks: &mut dyn Hooks,
    path: MatPath,
) -> Result<Vec<f32>> {
    let mut done = 0;
    loop {
        if let Some(logits) = prefill_chunk(m, prompt, &mut done, cache, hooks, path)? {
            return Ok(logits);
        }
    }
}

/// One chunk of [`prefill`]: runs prompt tokens `done..done + PREFILL_CHUNK` (fewer at the
/// end) into `cache`, which holds the first `done`, and advances `done`. Returns the last
/// token's logits after the last chunk, `None` before. A server interleaves these chunks with
/// the decode steps of other requests, with the numbers of one [`prefill`] call.
pub fn prefill_chunk(
    m: &LoadedModel,
    prompt: &[u32],
    done: &mut usize,
    cache: &mut [KvCache],
    hooks: &mut dyn Hooks,
    path: MatPath,
) -> Result<Option<Vec<f32>>> {
    let last = done.saturating_add(PREFILL_CHUNK) >= prompt.len();
    let mode = if last { LogitsMode::Last } else { LogitsMode::None };
    let logits = run_chunk(m, prompt, done, PREFILL_CHUNK, cache, hooks, path, mode)?;
    Ok(last.then_some(logits))
}

/// Runs prompt tokens `done..done + chunk` (fewer at the end; `chunk` ≥ 1) as one row on the
/// prompt path into `cache`, which holds the first `done`, advances `done`, and returns the
/// logits `mode` asks for.
#[allow(clippy::too_many_arguments)]
fn run_chunk(
    m: &LoadedModel,
    prompt: &[u32],
    done: &mut usize,
    chunk: usize,
    cache: &mut [KvCache],
    hooks: &mut dyn Hooks,
    path: MatPath,
    mode: LogitsMode,
) -> Result<Vec<f32>> {
    let end = done.saturating_add(chunk.max(1)).min(prompt.len());
    let part = prompt.get(*done..end).unwrap_or(&[]);
    let batch = Batch {
        tokens: part,
        batch: 1,
        seq: part.len(),
        valid: &[part.len()],
        prompt_lens: &[prompt.len()],
    };
    let out = m.model.forward(&batch, cache, hooks, path.for_prompt(), mode)?;
    *done = end;
    Ok(out.logits)
}

/// [`prefill_chunk`] with every position's logits: runs prompt tokens `done..done + chunk`
/// (fewer at the end; `chunk` ≥ 1) into `cache` and advances `done`. Returns `[len, vocab]`
/// logits, row `j` predicting the token after position `done + j`: a prompt's own
/// log-probabilities (a server's `echo`), a chunk at a time so a long prompt never holds
/// `[prompt, vocab]` logits at once. The last row equals [`prefill_chunk`]'s logits up to
/// float rounding (the logits product runs over several rows).
pub fn prefill_chunk_logits(
    m: &LoadedModel,
    prompt: &[u32],
    done: &mut usize,
    cache: &mut [KvCache],
    hooks: &mut dyn Hooks,
    path: MatPath,
    chunk: usize,
) -> Result<Vec<f32>> {
    run_chunk(m, prompt, done, chunk, cache, hooks, path, LogitsMode::All)
}

/// Refuses what no generation can run: an empty prompt, bad sampling settings, or a prompt
/// and token budget beyond the model's context.
pub fn check_request(m: &LoadedModel, prompt: &[u32], opts: &GenerateOptions) -> Result<()> {
    if prompt.is_empty() {
        return Err(RuntimeError::BadInput("the prompt is empty".into()));
    }
    opts.sampling.check().map_err(RuntimeError::BadInput)?;
    let limit = m.config().max_position;
    if prompt.len().saturating_add(opts.max_tokens) > limit {
        return Err(RuntimeError::BadInput(format!(
            "prompt ({} tokens) + max tokens ({}) exceed the context length {limit}",
            prompt.len(),
            opts.max_tokens
        )));
    }
    Ok(())
}

/// Generates a continuation of `prompt` (token ids), calling `on_text` with each new piece
/// of text (return `false` to stop). Hooks see every forward pass (prompt and each new token).
/// `cancel` set from another thread ends it with [`RuntimeError::Cancelled`].
pub fn generate(
    m: &LoadedModel,
    prompt: &[u32],
    opts: &GenerateOptions,
    hooks: &mut dyn Hooks,
    cancel: &AtomicBool,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation> {
    let mut g = Generator::start(m, prompt, opts, hooks)?;
    while let Some(piece) = g.next(hooks, cancel)? {
        if !on_text(&piece) {
            g.stop_here();
            break;
        }
    }
    Ok(g.finish())
}

/// One generation advanced a token at a time, so that several can run side by side (the
/// app's unsteered and steered columns stream together, each with its own cache, sampler and
/// hooks): [`Generator::start`] checks the request and runs the prompt, each
/// [`Generator::next`] picks one token (and runs the previous one through the model first).
/// Driving it to the end gives exactly what [`generate`] gives: `generate` is this loop.
pub struct Generator<'m> {
    m: &'m LoadedModel,
    opts: GenerateOptions,
    /// One layer cache per decoder layer, one row.
    cache: Vec<KvCache>,
    sampler: Sampler,
    /// Prompt and generated ids (for the repetition penalty).
    history: Vec<u32>,
    stream: StreamDecoder,
    tokens: Vec<u32>,
    text: String,
    stats: GenerationStats,
    /// `[vocab]` logits of the next position, once `pending` has run.
    logits: Vec<f32>,
    /// The last picked token, still to be run through the model.
    pending: Option<u32>,
    stop: Option<StopReason>,
}

impl<'m> Generator<'m> {
    /// Checks the request (prompt not empty, sampling settings, context length) and runs the
    /// prompt through the model with `hooks` (the same hooks must be passed to every `next`).
    pub fn start(
        m: &'m LoadedModel,
        prompt: &[u32],
        opts: &GenerateOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<Self> {
        check_request(m, prompt, opts)?;
        let mut cache = vec![m.cache_for(prompt.len().saturating_add(opts.max_tokens))];
        let t0 = Instant::now();
        let logits = prefill(m, prompt, &mut cache, hooks, opts.path)?;
        let stats = GenerationStats {
            prompt_tokens: prompt.len(),
            prefill_s: t0.elapsed().as_secs_f64(),
            ..Default::default()
        };
        Ok(Self {
            m,
            opts: *opts,
            cache,
            sampler: Sampler::new(opts.sampling),
            history: prompt.to_vec(),
            stream: StreamDecoder::new(),
            tokens: Vec::new(),
            text: String::new(),
            stats,
            logits,
            pending: None,
            stop: (opts.max_tokens == 0).then_some(StopReason::MaxTokens),
        })
    }

    /// The next piece of text (one token's worth, possibly empty inside a multi-byte
    /// character), or `None` once the generation has ended (EOS or `max_tokens`).
    /// `cancel` set from another thread ends it with [`RuntimeError::Cancelled`].
    pub fn next(&mut self, hooks: &mut dyn Hooks, cancel: &AtomicBool) -> Result<Option<String>> {
        if self.stop.is_some() {
            return Ok(None);
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(RuntimeError::Cancelled);
        }
        let t = Instant::now();
        if let Some(tok) = self.pending.take() {
            let prompt_len = self.stats.prompt_tokens;
            let ids = [tok];
            let batch = Batch {
                tokens: &ids,
                batch: 1,
                seq: 1,
                valid: &[1],
                prompt_lens: &[prompt_len],
            };
            let (m, cache, path) = (self.m, &mut self.cache, self.opts.path);
            self.logits = decode_pool()
                .install(|| {
                    m.model
                        .forward(&batch, cache, &mut *hooks, path, LogitsMode::Last)
                })?
                .logits;
            self.stats.decode_tokens += 1;
            if cancel.load(Ordering::Relaxed) {
                return Err(RuntimeError::Cancelled);
            }
        }
        if self.logits.len() != self.m.config().vocab_size {
            return Err(RuntimeError::BadInput(
                "a hook stopped the forward pass during generation".into(),
            ));
        }
        let next = self.sampler.sample(&mut self.logits, &self.history);
        if self.m.tokenizer.eos().contains(&next) {
            self.stop = Some(StopReason::Eos);
            self.stats.decode_s += t.elapsed().as_secs_f64();
            return Ok(None);
        }
        self.history.push(next);
        self.tokens.push(next);
        let piece = self.stream.push(&self.m.tokenizer, next)?;
        self.text.push_str(&piece);
        if self.tokens.len() >= self.opts.max_tokens {
            self.stop = Some(StopReason::MaxTokens);
        } else {
            self.pending = Some(next);
        }
        self.stats.decode_s += t.elapsed().as_secs_f64();
        Ok(Some(piece))
    }

    /// Ends the generation where it is (the caller wants no more text).
    pub fn stop_here(&mut self) {
        self.stop = Some(StopReason::Callback);
        self.pending = None;
    }

    /// Whether the generation has ended.
    pub fn finished(&self) -> bool {
        self.stop.is_some()
    }

    /// The generated text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What was generated, why it stopped and how long it took.
    pub fn finish(self) -> Generation {
        Generation {
            tokens: self.tokens,
            text: self.text,
            stop: self.stop.unwrap_or(StopReason::MaxTokens),
            stats: self.stats,
        }
    }
}

/// The pool decode steps run on: one thread. A decode step is dozens of small operations
/// (≈ 1 MB of weights each); handing them to a second thread costs more in wake-ups than it
/// gains (measured on this 2-core machine: 81 → 95 tok/s on SmolLM2 when every step stays on
/// one thread), and a single thread keeps its speed when another process loads the machine.
pub fn decode_pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "act-decode".into())
            .build();
        // Building a pool only fails when the OS refuses a thread; then use a default pool.
        one.or_else(|_| rayon::ThreadPoolBuilder::new().build())
            .unwrap_or_else(|e| panic!("the OS refused every worker thread: {e}"))
    })
}

/// Perplexity of a text under teacher forcing.
#[derive(Debug, Clone, Copy)]
pub struct Perplexity {
    /// exp(mean negative log-likelihood).
    pub perplexity: f64,
    /// Mean negative log-likelihood (nats per token).
    pub nll: f64,
    /// Predicted tokens.
    pub tokens: usize,
}

/// Teacher-forced perplexity of `ids`, in windows of at most `window` tokens (each window
/// scored from its own start), on the dense (f32) path.
pub fn perplexity(
    m: &LoadedModel,
    ids: &[u32],
    window: usize,
    hooks: &mut dyn Hooks,
    cancel: &AtomicBool,
) -> Result<Perplexity> {
    if ids.len() < 2 {
        return Err(RuntimeError::BadInput(
            "perplexity needs at least two tokens".into(),
        ));
    }
    let limit = m.config().max_position;
    if !(2..=limit).contains(&window) {
        return Err(RuntimeError::BadInput(format!(
            "a perplexity window of {window} tokens is outside 2 … {limit} (the context length)"
        )));
    }
    let vocab = m.config().vocab_size;
    let (mut nll, mut count) = (0.0f64, 0usize);
    for chunk in ids.chunks(window) {
        if chunk.len() < 2 {
            continue;
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(RuntimeError::Cancelled);
        }
        let mut cache = vec![m.transient_cache()];
        let batch = Batch {
            tokens: chunk,
            batch: 1,
            seq: chunk.len(),
            valid: &[chunk.len()],
            prompt_lens: &[chunk.len()],
        };
        let out = m
            .model
            .forward(&batch, &mut cache, hooks, MatPath::Dense, LogitsMode::All)?;
        for (t, row) in out.logits.chunks_exact(vocab).take(chunk.len() - 1).enumerate() {
            nll -= log_softmax_at(row, chunk[t + 1] as usize);
            count += 1;
        }
    }
    let mean = nll / count.max(1) as f64;
    Ok(Perplexity {
        perplexity: mean.exp(),
        nll: mean,
        tokens: count,
    })
}

/// `log softmax(row)[i]`, in f64.
pub fn log_softmax_at(row: &[f32], i: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    row.get(i).map_or(f64::NEG_INFINITY, |&v| v as f64 - lse)
}
