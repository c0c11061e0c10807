//! Continuous batching: one model thread decodes every running request together, each row
//! with its own cache, sampler and steering, and requests join and leave the batch between
//! decode steps (the engine behind `act-studio serve`; docs/ARCHITECTURE.md, "Serving").
//!
//! Each step the engine
//! 0. takes what the [`PromptCache`] holds for a waiting job's prompt: a prompt that ran
//!    before (same tokens, same steering) skips its prefill and joins at once; a long one
//!    sharing whole chunks with an earlier prompt starts after them;
//! 1. runs up to [`PREFILL_CHUNK`] prompt tokens of waiting jobs in arrival order while the
//!    batch has room: a job's prompt runs alone (batch 1, steered by its own plan) in the
//!    chunks of [`crate::runtime::generate::prefill`], so a long prompt holds the running rows
//!    back by one chunk per step, not by its whole length; short prompts that wait together
//!    run as one padded batch instead ([`prefill_together`]); when a prompt is done, its `n`
//!    samples join as rows with copies of its cache;
//! 2. samples one token per row from the row's logits, streams its text through the row's
//!    stop-sequence matcher, and retires rows that end (end-of-sequence, a stop sequence,
//!    `max_tokens`, or a listener that has gone);
//! 3. runs one forward pass over every remaining row (`[rows, 1]` tokens), with
//!    [`RowSteering`] giving each row its request's plan; on few cores with several rows
//!    per core, as one sub-batch per thread ([`split_step`]), the same numbers either way.
//!
//! **Exactness**: a row's numbers never depend on the rows beside it. The prompt runs alone,
//! or beside others with the numbers of running alone;
//! on the quantized path the matrix kernels treat every input row on its own (the four-input
//! kernels are bit-identical to the one-input ones), attention and norms are per row, and
//! each row's steering sees only its own tokens. So a request gives the same tokens whether it
//! runs alone or beside seven others (tested below and in `tests/serve_openai.rs`).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::runtime::forward::{Batch, LogitsMode};
use crate::runtime::generate::{PREFILL_CHUNK, decode_pool, prefill_chunk, prefill_chunk_logits};
use crate::runtime::kv_cache::KvCache;
use crate::runtime::linear::MatPath;
use crate::runtime::logprobs::token_logprobs;
use crate::runtime::pool::Pool;
use crate::runtime::sampling::{Sampler, SamplingConfig};
use crate::runtime::split_step;
use crate::runtime::steer::RowSteering;
use crate::runtime::tokenizer::StreamDecoder;
use crate::runtime::{LoadedModel, RuntimeError};
use crate::transport::SteeringPlan;

use super::completion::{
    CompletionError, CompletionEvent, CompletionJob, CompletionSink, FinishReason, StopText, TokenLogprob,
    TokenText, check_job, check_kv_limit, row_kv_bytes,
};
use super::prompt_cache::{PromptCache, Reuse};

/// Most rows decoded together by default: beyond it jobs wait for rows to finish.
pub const DEFAULT_MAX_ROWS: usize = 32;
/// Most jobs waiting for a row: beyond it [`BatchEngine::submit`] refuses new ones.
pub const MAX_QUEUED: usize = 256;
/// Bytes of KV caches and logits the [`PromptCache`] keeps by default: 256 MiB, e.g. about
/// 5,600 positions of SmolLM2-135M (46 KiB each).
pub const DEFAULT_PROMPT_CACHE_BYTES: u64 = 256 << 20;

/// A job's listener, shared by its samples.
struct JobState {
    sink: Box<dyn CompletionSink>,
    /// The listener has gone (or the job failed): its rows are dropped.
    dropped: bool,
}

impl JobState {
    fn send(&mut self, event: CompletionEvent) {
        if !self.dropped && !self.sink.send(event) {
            self.dropped = true;
        }
    }
}

/// One sample being decoded.
struct Row {
    job: Rc<RefCell<JobState>>,
    index: usize,
    cache: KvCache,
    sampler: Sampler,
    history: Vec<u32>,
    prompt_len: usize,
    generated: usize,
    max_tokens: usize,
    stream: StreamDecoder,
    stop: StopText,
    steering: Option<Arc<SteeringPlan>>,
    /// `[vocab]` logits of the next position.
    logits: Vec<f32>,
    /// The token picked this step, still to run through the model.
    fed: u32,
    /// The KV cache this row can grow to ([`row_kv_bytes`]).
    kv_bytes: u64,
    /// Report log-probabilities with `k` alternatives (`CompletionJob::logprobs`).
    logprobs: Option<usize>,
    /// Log-probabilities of tokens whose text has not been sent yet.
    pending_logprobs: Vec<TokenLogprob>,
    /// The logits before sampling (which may change them) and the softmax weights, only when
    /// log-probabilities are asked for.
    raw_logits: Vec<f32>,
    scratch: Vec<f32>,
}

/// The model thread and its queue. Dropping the engine lets running jobs finish; new jobs
/// are refused once it is dropped.
pub struct BatchEngine {
    tx: Option<Sender<CompletionJob>>,
    thread: Option<JoinHandle<()>>,
    running: Arc<AtomicUsize>,
    /// Rows dropped because their client went away, since the start.
    abandoned: Arc<AtomicUsize>,
    /// Jobs submitted and not yet admitted.
    queued: Arc<AtomicUsize>,
    /// What the prompt cache holds and has given.
    prompt_cache: Arc<PromptCacheCounts>,
    /// Most bytes of KV cache the running rows may grow to together.
    max_kv_bytes: u64,
    /// The served model, which jobs are checked against as they are submitted.
    model: Arc<LoadedModel>,
}

/// The prompt cache's state as the model thread last left it.
#[derive(Debug, Default)]
pub struct PromptCacheCounts {
    /// Prompts held.
    pub prompts: AtomicUsize,
    /// Bytes held (KV caches and logits).
    pub bytes: AtomicU64,
    /// Prompt tokens taken from the cache instead of run, since the start.
    pub reused_tokens: AtomicU64,
}

/// Why a job was not queued (it comes back with the refusal).
pub enum SubmitError {
    /// The job cannot run on this model ([`check_job`]) or could never fit the KV cache limit
    /// ([`check_kv_limit`]).
    Refused(CompletionError, Box<CompletionJob>),
    /// [`MAX_QUEUED`] jobs are already waiting.
    Busy(Box<CompletionJob>),
    /// The model thread has stopped.
    Stopped(Box<CompletionJob>),
}

impl BatchEngine {
    /// Starts the model thread for `m`, decoding at most `max_rows` rows at once whose KV
    /// caches can grow to at most `max_kv_bytes` together ([`row_kv_bytes`] each: a job
    /// waits until the running rows leave it room; one that could never fit is refused),
    /// with a [`PromptCache`] of at most `prompt_cache_bytes` (0: none).
    pub fn start(
        m: Arc<LoadedModel>,
        max_rows: usize,
        max_kv_bytes: u64,
        prompt_cache_bytes: u64,
    ) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let running = Arc::new(AtomicUsize::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let abandoned = Arc::new(AtomicUsize::new(0));
        let prompt_cache = Arc::new(PromptCacheCounts::default());
        let counts = (
            running.clone(),
            queued.clone(),
            abandoned.clone(),
            prompt_cache.clone(),
        );
        let limits = Limits {
            rows: max_rows.max(1),
            kv_bytes: max_kv_bytes,
            prompt_cache_bytes,
        };
        let model = m.clone();
        let thread = std::thread::Builder::new()
            .name("act-serve-engine".into())
            .spawn(move || run(&m, &rx, limits, (&counts.0, &counts.1, &counts.2), &counts.3))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            running,
            abandoned,
            queued,
            prompt_cache,
            max_kv_bytes,
            model,
        })
    }

    /// The KV cache limit the engine admits jobs under, in bytes.
    pub fn max_kv_bytes(&self) -> u64 {
        self.max_kv_bytes
    }

    /// Jobs waiting for a row.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Rows (samples) being decoded now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Rows (samples) dropped since the start because their client went away.
    pub fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// What the prompt cache holds and has given.
    pub fn prompt_cache(&self) -> &PromptCacheCounts {
        &self.prompt_cache
    }

    /// Checks `job` ([`check_job`], [`check_kv_limit`]: the one place jobs are checked) and
    /// queues it; refused when the check fails, when [`MAX_QUEUED`] jobs wait already, or when
    /// the model thread has stopped.
    pub fn submit(&self, job: CompletionJob) -> Result<(), SubmitError> {
        if let Err(e) =
            check_job(&self.model, &job).and_then(|()| check_kv_limit(&self.model, &job, self.max_kv_bytes))
        {
            return Err(SubmitError::Refused(e, Box::new(job)));
        }
        let Some(tx) = &self.tx else {
            return Err(SubmitError::Stopped(Box::new(job)));
        };
        if self.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(SubmitError::Busy(Box::new(job)));
        }
        tx.send(job).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            SubmitError::Stopped(Box::new(e.into_inner()))
        })
    }
}

impl Drop for BatchEngine {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Most bytes of logits an echoed prompt's chunk holds at once (its positions × vocabulary
/// × 4): 64 MiB, e.g. 341 positions of SmolLM2's 49,152 tokens, 64 of Gemma 3's 262,144.
const ECHO_LOGITS_BYTES: usize = 64 << 20;

/// A job whose prompt is running through the model, [`PREFILL_CHUNK`] tokens per engine step.
struct Prefilling {
    job: CompletionJob,
    /// With `echo` and `logprobs`: the prompt tokens' log-probabilities so far.
    echo_logprobs: Vec<TokenLogprob>,
    scratch: Vec<f32>,
    /// The prompt's one-row cache so far.
    cache: Vec<KvCache>,
    hooks: RowSteering,
    /// Prompt tokens already in `cache`.
    done: usize,
    /// Of those, the ones the prompt cache gave.
    cached: usize,
    /// The next-token logits, when the prompt cache held the whole prompt.
    ready: Option<Vec<f32>>,
}

/// What one chunk of a prompt led to.
enum PrefillStep {
    /// More chunks to run.
    More,
    /// The prompt is done: the last token's logits (`[vocab]`).
    Done(Vec<f32>),
    /// The job failed (it was told) or nobody listens any more.
    Gone,
}

/// What the running rows may take together, and the prompt cache.
#[derive(Debug, Clone, Copy)]
struct Limits {
    rows: usize,
    kv_bytes: u64,
    prompt_cache_bytes: u64,
}

/// The model thread: admit, prefill a chunk, sample, step, until the queue closes and no row
/// is left.
fn run(
    m: &LoadedModel,
    rx: &Receiver<CompletionJob>,
    limits: Limits,
    (running, queued, abandoned): (&AtomicUsize, &AtomicUsize, &AtomicUsize),
    cache_counts: &PromptCacheCounts,
) {
    let mut rows: Vec<Row> = Vec::new();
    let mut waiting: Option<CompletionJob> = None;
    // Prompts this short may run together ([`prefill_together`]).
    let short_max = m.model.same_kernels_prompt_max();
    let mut prefilling: Option<Prefilling> = None;
    let mut prompts = PromptCache::new(limits.prompt_cache_bytes);
    loop {
        running.store(rows.len(), Ordering::Relaxed);
        // Block only when there is nothing to do.
        if rows.is_empty() && prefilling.is_none() && waiting.is_none() {
            match rx.recv() {
                Ok(job) => waiting = Some(job),
                Err(_) => return,
            }
        }
        // 1. Prompts: up to PREFILL_CHUNK tokens per step, one job at a time in arrival
        //    order, so a long prompt delays the running rows by one chunk per step rather
        //    than by its whole length.
        let mut budget = PREFILL_CHUNK;
        while budget > 0 {
            if prefilling.is_none() {
                let sizes = (budget, short_max);
                let admitted = admit(m, rx, &mut waiting, &rows, limits, sizes, &mut prompts);
                queued.fetch_sub(admitted.len(), Ordering::Relaxed);
                let reused: usize = admitted.iter().map(|p| p.cached).sum();
                cache_counts
                    .reused_tokens
                    .fetch_add(reused as u64, Ordering::Relaxed);
                // Prompts the cache held whole join at once.
                let (ready, mut group): (Vec<Prefilling>, Vec<Prefilling>) =
                    admitted.into_iter().partition(|p| p.ready.is_some());
                let any_ready = !ready.is_empty();
                for mut p in ready {
                    if let Some(logits) = p.ready.take() {
                        rows.extend(rows_of(m, p, logits));
                    }
                }
                if group.len() > 1 {
                    // Short prompts that arrived together: one pass for all.
                    budget = budget.saturating_sub(padded_tokens(&group).max(1));
                    for (p, logits) in prefill_together(m, group, abandoned) {
                        remember(m, &mut prompts, &p, &logits);
                        rows.extend(rows_of(m, p, logits));
                    }
                    continue;
                }
                prefilling = group.pop();
                if prefilling.is_none() {
                    if any_ready {
                        continue;
                    }
                    break;
                }
            }
            let Some(p) = prefilling.as_mut() else {
                continue;
            };
            let before = p.done;
            let step = prefill_step(m, p);
            // Even a failed chunk used the step's time; count at least one token.
            budget = budget.saturating_sub((p.done - before).max(1));
            match step {
                PrefillStep::More => {}
                PrefillStep::Done(logits) => {
                    if let Some(p) = prefilling.take() {
                        remember(m, &mut prompts, &p, &logits);
                        rows.extend(rows_of(m, p, logits));
                    }
                }
                PrefillStep::Gone => {
                    if let Some(p) = prefilling.take()
                        && p.job.sink.is_closed()
                    {
                        abandoned.fetch_add(p.job.n, Ordering::Relaxed);
                    }
                }
            }
        }
        cache_counts.prompts.store(prompts.len(), Ordering::Relaxed);
        cache_counts.bytes.store(prompts.bytes(), Ordering::Relaxed);
        // 2. Sample one token per row (the rows' samplers side by side on the pool); retire
        //    rows that end.
        let eos = m.tokenizer.eos();
        let picks = sample_rows(&mut rows);
        let mut picked = picks.into_iter();
        rows.retain_mut(|row| {
            picked
                .next()
                .is_some_and(|tok| sample_step(m, row, tok, eos, abandoned))
        });
        if rows.is_empty() {
            continue;
        }
        // 3. One forward pass over every remaining row.
        if let Err(e) = forward_step(m, &mut rows) {
            let message = format!("the model failed: {e}");
            for row in &rows {
                row.job
                    .borrow_mut()
                    .send(CompletionEvent::Failed(message.clone()));
            }
            rows.clear();
        }
    }
}

/// Takes the next waiting jobs that the running `rows` leave room for (every job when none
/// run, so a lone large job still runs) and sets up their prompts: one job, or several whose
/// prompts are at most `short` tokens and, padded to the longest, fit `budget` tokens in all,
/// to run together ([`prefill_together`]). A job with a longer prompt, one that echoes its
/// prompt's log-probabilities, or one whose prompt starts from the prompt cache's whole
/// chunks, runs alone, chunk by chunk; one whose whole prompt the cache holds joins without
/// taking any of the budget (its `ready` logits are set).
#[allow(clippy::too_many_arguments)]
fn admit(
    m: &LoadedModel,
    rx: &Receiver<CompletionJob>,
    waiting: &mut Option<CompletionJob>,
    rows: &[Row],
    limits: Limits,
    (budget, short): (usize, usize),
    prompts: &mut PromptCache,
) -> Vec<Prefilling> {
    let mut group: Vec<Prefilling> = Vec::new();
    let (mut n_rows, mut kv_in_use) = (rows.len(), rows.iter().map(|r| r.kv_bytes).sum::<u64>());
    loop {
        let job = match waiting.take() {
            Some(j) => j,
            None => match rx.try_recv() {
                Ok(j) => j,
                Err(_) => break,
            },
        };
        let kv_need = row_kv_bytes(m, &job).saturating_mul(job.n as u64);
        let fits = n_rows + job.n <= limits.rows && kv_in_use.saturating_add(kv_need) <= limits.kv_bytes;
        if !fits && (n_rows > 0 || !group.is_empty()) {
            *waiting = Some(job);
            break;
        }
        let p = start_prefill(m, job, prompts);
        if p.ready.is_some() {
            // The cache held the whole prompt: no prefill to fit in the budget.
            n_rows += p.job.n;
            kv_in_use = kv_in_use.saturating_add(kv_need);
            group.push(p);
            continue;
        }
        let alone = p.job.prompt.len() > short || (p.job.echo && p.job.logprobs.is_some()) || p.done > 0;
        let running: Vec<&Prefilling> = group.iter().filter(|g| g.ready.is_none()).collect();
        let longest = running
            .iter()
            .map(|g| g.job.prompt.len())
            .fold(p.job.prompt.len(), usize::max);
        let joins = running.is_empty() || (!alone && longest * (running.len() + 1) <= budget);
        if !joins {
            // Back to waiting; what the cache gave is looked up again when it is admitted.
            *waiting = Some(p.job);
            break;
        }
        n_rows += p.job.n;
        kv_in_use = kv_in_use.saturating_add(kv_need);
        group.push(p);
        if alone {
            break;
        }
    }
    group
}

/// Tokens a [`prefill_together`] pass of `group` runs: each prompt padded to the longest.
fn padded_tokens(group: &[Prefilling]) -> usize {
    let longest = group.iter().map(|p| p.job.prompt.len()).max().unwrap_or(0);
    longest * group.len()
}

/// Runs the whole prompts of several jobs as one batch (right-padded to the longest; each
/// row with its own cache and steering plan) and returns each job still listened to with its
/// last token's logits (jobs nobody listens to any more count as `abandoned`). The rows' numbers are those of each prompt run alone: the prompts are
/// short enough that alone they run on the decoding kernels too
/// ([`crate::runtime::model::Network::same_kernels_prompt_max`]), which treat every input row
/// on its own; padding is neither stored nor attended to; attention and steering are per row.
fn prefill_together(
    m: &LoadedModel,
    group: Vec<Prefilling>,
    abandoned: &AtomicUsize,
) -> Vec<(Prefilling, Vec<f32>)> {
    let (gone, mut group): (Vec<Prefilling>, Vec<Prefilling>) =
        group.into_iter().partition(|p| p.job.sink.is_closed());
    abandoned.fetch_add(gone.iter().map(|p| p.job.n).sum(), Ordering::Relaxed);
    if group.is_empty() {
        return Vec::new();
    }
    let vocab = m.config().vocab_size;
    let seq = group.iter().map(|p| p.job.prompt.len()).max().unwrap_or(1).max(1);
    let mut tokens = Vec::with_capacity(seq * group.len());
    for p in &group {
        tokens.extend_from_slice(&p.job.prompt);
        tokens.resize(tokens.len() + seq - p.job.prompt.len(), 0);
    }
    let lens: Vec<usize> = group.iter().map(|p| p.job.prompt.len()).collect();
    let mut caches: Vec<KvCache> = group
        .iter_mut()
        .map(|p| p.cache.pop().unwrap_or_default())
        .collect();
    let mut hooks = RowSteering::new(group.iter().map(|p| p.job.steering.clone()).collect());
    let batch = Batch {
        tokens: &tokens,
        batch: group.len(),
        seq,
        valid: &lens,
        prompt_lens: &lens,
    };
    let out = m.model.forward(
        &batch,
        &mut caches,
        &mut hooks,
        MatPath::Quantized,
        LogitsMode::Last,
    );
    for (p, cache) in group.iter_mut().zip(caches) {
        p.cache.push(cache);
        p.done = p.job.prompt.len();
    }
    let failed = match out {
        Ok(out) if out.logits.len() == vocab * group.len() => {
            let logits: Vec<Vec<f32>> = out.logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect();
            return group.into_iter().zip(logits).collect();
        }
        Ok(_) => "the model returned no logits".to_string(),
        Err(e) => format!("the prompt failed: {e}"),
    };
    for p in &mut group {
        p.job.sink.send(CompletionEvent::Failed(failed.clone()));
    }
    Vec::new()
}

/// Keeps a prompt that has run in the prompt cache (not one that echoed its
/// log-probabilities: it ran in other chunks).
fn remember(m: &LoadedModel, prompts: &mut PromptCache, p: &Prefilling, logits: &[f32]) {
    if !(p.job.echo && p.job.logprobs.is_some())
        && let Some(cache) = p.cache.first()
    {
        prompts.insert(m, &p.job.prompt, &p.job.steering, cache, logits);
    }
}

/// Sets up the prompt's run of a job ([`BatchEngine::submit`] checked it), from what the
/// prompt cache holds for it.
fn start_prefill(m: &LoadedModel, job: CompletionJob, prompts: &mut PromptCache) -> Prefilling {
    // The first prompt token has no context: its log-probability is unknown.
    let echo_logprobs = match (job.echo, job.logprobs, job.prompt.first()) {
        (true, Some(_), Some(&first)) => vec![TokenLogprob {
            token: TokenText::of(m, first),
            logprob: f32::NAN,
            top: Vec::new(),
        }],
        _ => Vec::new(),
    };
    let positions = job.prompt.len().saturating_add(job.max_tokens);
    let reuse = if job.echo && job.logprobs.is_some() {
        // Every prompt position's logits are needed.
        Reuse::Miss
    } else {
        prompts.lookup(m, &job.prompt, &job.steering, positions)
    };
    let (cache, done, ready) = match reuse {
        Reuse::Whole { cache, logits } => (cache, job.prompt.len(), Some(logits)),
        Reuse::Prefix { cache, len } => (cache, len, None),
        Reuse::Miss => (m.cache_for(positions), 0, None),
    };
    Prefilling {
        echo_logprobs,
        scratch: Vec::new(),
        hooks: RowSteering::new(vec![job.steering.clone()]),
        cache: vec![cache],
        done,
        cached: done,
        ready,
        job,
    }
}

/// Runs the next chunk of `p`'s prompt (alone: batch 1, steered by its own plan).
fn prefill_step(m: &LoadedModel, p: &mut Prefilling) -> PrefillStep {
    if p.job.sink.is_closed() {
        return PrefillStep::Gone;
    }
    if p.job.echo
        && let Some(k) = p.job.logprobs
    {
        return echo_prefill_step(m, p, k);
    }
    let ran = prefill_chunk(
        m,
        &p.job.prompt,
        &mut p.done,
        &mut p.cache,
        &mut p.hooks,
        MatPath::Quantized,
    );
    let failed = match ran {
        Ok(None) => return PrefillStep::More,
        Ok(Some(l)) if l.len() == m.config().vocab_size => return PrefillStep::Done(l),
        Ok(Some(_)) => "the model returned no logits".to_string(),
        Err(e) => format!("the prompt failed: {e}"),
    };
    p.job.sink.send(CompletionEvent::Failed(failed));
    PrefillStep::Gone
}

/// [`prefill_step`] of a job that echoes its prompt with log-probabilities: a chunk of at
/// most [`ECHO_LOGITS_BYTES`] of logits with every position's, each but the last scoring the
/// next prompt token (with the `k` most likely alternatives); the last position's are the
/// next-token logits.
fn echo_prefill_step(m: &LoadedModel, p: &mut Prefilling, k: usize) -> PrefillStep {
    let vocab = m.config().vocab_size;
    let chunk = (ECHO_LOGITS_BYTES / vocab.max(1) / 4).clamp(1, PREFILL_CHUNK);
    let start = p.done;
    let ran = prefill_chunk_logits(
        m,
        &p.job.prompt,
        &mut p.done,
        &mut p.cache,
        &mut p.hooks,
        MatPath::Quantized,
        chunk,
    );
    let failed = match ran {
        Ok(logits) if vocab > 0 && logits.len() == (p.done - start) * vocab => {
            for (j, row) in logits.chunks_exact(vocab).enumerate() {
                let Some(&next) = p.job.prompt.get(start + j + 1) else {
                    return PrefillStep::Done(row.to_vec());
                };
                let (logprob, top) = token_logprobs(row, next, k, &mut p.scratch);
                p.echo_logprobs.push(TokenLogprob {
                    token: TokenText::of(m, next),
                    logprob,
                    top: top.into_iter().map(|(id, l)| (TokenText::of(m, id), l)).collect(),
                });
            }
            return PrefillStep::More;
        }
        Ok(_) => "the model returned no logits".to_string(),
        Err(e) => format!("the prompt failed: {e}"),
    };
    p.job.sink.send(CompletionEvent::Failed(failed));
    PrefillStep::Gone
}

/// The `n` rows of a job whose prompt has run, each with a copy of its cache and the
/// next-token `logits`. An echoing job first gets its prompt back in each sample; one with
/// `max_tokens` 0 ends there, with no rows.
fn rows_of(m: &LoadedModel, p: Prefilling, logits: Vec<f32>) -> Vec<Row> {
    let Prefilling {
        job,
        mut cache,
        echo_logprobs,
        cached,
        ..
    } = p;
    let kv_bytes = row_kv_bytes(m, &job);
    let CompletionJob {
        prompt,
        n,
        max_tokens,
        sampling,
        logit_bias,
        stop,
        steering,
        logprobs,
        echo,
        sink,
    } = job;
    let cache = cache.pop().unwrap_or_else(|| m.new_cache());
    let state = Rc::new(RefCell::new(JobState { sink, dropped: false }));
    state.borrow_mut().send(CompletionEvent::PromptDone { cached });
    if echo {
        let text = m.tokenizer.decode(&prompt, true).unwrap_or_default();
        let mut s = state.borrow_mut();
        for index in 0..n {
            s.send(CompletionEvent::Text {
                index,
                text: text.clone(),
                logprobs: echo_logprobs.clone(),
            });
            if max_tokens == 0 {
                s.send(CompletionEvent::Finished {
                    index,
                    reason: FinishReason::Length,
                    tokens: 0,
                });
            }
        }
        if max_tokens == 0 || s.dropped {
            return Vec::new();
        }
    }
    (0..n)
        .map(|index| Row {
            job: state.clone(),
            index,
            cache: m.fork_cache(&cache, prompt.len().saturating_add(max_tokens)),
            sampler: Sampler::new(SamplingConfig {
                seed: sampling.seed.wrapping_add(index as u64),
                ..sampling
            })
            .with_logit_bias(logit_bias.clone()),
            history: prompt.clone(),
            prompt_len: prompt.len(),
            generated: 0,
            max_tokens,
            stream: StreamDecoder::new(),
            stop: StopText::new(stop.clone()),
            steering: steering.clone(),
            logits: logits.clone(),
            fed: 0,
            kv_bytes,
            logprobs,
            pending_logprobs: Vec::new(),
            raw_logits: Vec::new(),
            scratch: Vec::new(),
        })
        .collect()
}

/// Samples row's next token and reports its text; false when the row is done (counted in
/// `abandoned` when its client has gone).
/// Each row's next token from its logits by its own sampler, the rows side by side on the
/// model's thread pool (a sampler's draw over a 49 k vocabulary takes 0.07–0.13 ms; eight rows
/// one after another had left the pool idle for 1.7 ms a step, when a draw took ~0.2 ms). Rows asking for log-probabilities
/// keep their logits from before sampling (which may change them). A row's token depends only
/// on its own sampler, so it is the same whatever runs beside it.
fn sample_rows(rows: &mut [Row]) -> Vec<u32> {
    for row in rows.iter_mut().filter(|r| r.logprobs.is_some()) {
        row.raw_logits.clone_from(&row.logits);
    }
    let mut work: Vec<(&mut Sampler, &mut [f32], &[u32], u32)> = rows
        .iter_mut()
        .map(|r| (&mut r.sampler, r.logits.as_mut_slice(), r.history.as_slice(), 0))
        .collect();
    Pool::global().for_each_piece(&mut work, 1, &|_, part| {
        for (sampler, logits, history, tok) in part.iter_mut() {
            *tok = sampler.sample(logits, history);
        }
    });
    work.into_iter().map(|w| w.3).collect()
}

/// Takes row `row`'s sampled token `tok`: sends its text, or ends the row (end of sequence, a
/// stop string, `max_tokens`, a gone listener); `false` when the row ends.
fn sample_step(m: &LoadedModel, row: &mut Row, tok: u32, eos: &[u32], abandoned: &AtomicUsize) -> bool {
    {
        let mut job = row.job.borrow_mut();
        if job.dropped || job.sink.is_closed() {
            if job.sink.is_closed() {
                abandoned.fetch_add(1, Ordering::Relaxed);
            }
            job.dropped = true;
            return false;
        }
    }
    if eos.contains(&tok) {
        finish(row, FinishReason::Stop);
        return false;
    }
    row.history.push(tok);
    row.generated += 1;
    if let Some(k) = row.logprobs {
        // The model's own distribution: before the sampler's temperature, penalty and cuts.
        let (logprob, top) = token_logprobs(&row.raw_logits, tok, k, &mut row.scratch);
        row.pending_logprobs.push(TokenLogprob {
            token: TokenText::of(m, tok),
            logprob,
            top: top.into_iter().map(|(id, l)| (TokenText::of(m, id), l)).collect(),
        });
    }
    let piece = match row.stream.push(&m.tokenizer, tok) {
        Ok(p) => p,
        Err(e) => {
            row.job
                .borrow_mut()
                .send(CompletionEvent::Failed(format!("decoding a token failed: {e}")));
            row.job.borrow_mut().dropped = true;
            return false;
        }
    };
    let (shown, hit) = row.stop.push(&piece);
    if !shown.is_empty() {
        row.job.borrow_mut().send(CompletionEvent::Text {
            index: row.index,
            text: shown,
            logprobs: std::mem::take(&mut row.pending_logprobs),
        });
    }
    if hit {
        finish(row, FinishReason::Stop);
        return false;
    }
    if row.generated >= row.max_tokens {
        finish(row, FinishReason::Length);
        return false;
    }
    row.fed = tok;
    true
}

/// Reports the end of a row: its held-back text, then why it ended.
fn finish(row: &mut Row, reason: FinishReason) {
    // Text held back as a possible stop sequence that never completed.
    let rest = row.stop.flush();
    let mut job = row.job.borrow_mut();
    if !rest.is_empty() || !row.pending_logprobs.is_empty() {
        job.send(CompletionEvent::Text {
            index: row.index,
            text: rest,
            logprobs: std::mem::take(&mut row.pending_logprobs),
        });
    }
    job.send(CompletionEvent::Finished {
        index: row.index,
        reason,
        tokens: row.generated,
    });
}

/// One decode step over every row: feeds each row's last token, stores its next logits.
fn forward_step(m: &LoadedModel, rows: &mut [Row]) -> Result<(), RuntimeError> {
    let vocab = m.config().vocab_size;
    let feed: Vec<u32> = rows.iter().map(|r| r.fed).collect();
    let ones = vec![1usize; rows.len()];
    let prompt_lens: Vec<usize> = rows.iter().map(|r| r.prompt_len).collect();
    let mut caches: Vec<KvCache> = rows.iter_mut().map(|r| std::mem::take(&mut r.cache)).collect();
    // Few cores and several rows each: one sub-batch per thread ([`split_step`]); each part
    // steers its own rows.
    let ranges = split_step::part_ranges(rows.len(), split_step::parts(&m.model, rows.len()));
    let mut hooks: Vec<RowSteering> = ranges
        .iter()
        .map(|r| RowSteering::new(rows[r.clone()].iter().map(|r| r.steering.clone()).collect()))
        .collect();
    let batch = Batch {
        tokens: &feed,
        batch: rows.len(),
        seq: 1,
        valid: &ones,
        prompt_lens: &prompt_lens,
    };
    let out = decode_pool().install(|| {
        split_step::forward_parts(
            &m.model,
            &batch,
            &mut caches,
            &ranges,
            &mut hooks,
            MatPath::Quantized,
            LogitsMode::Last,
        )
    });
    for (row, cache) in rows.iter_mut().zip(caches) {
        row.cache = cache;
    }
    let out = out?;
    if out.logits.len() != vocab * rows.len() {
        return Err(RuntimeError::BadInput(
            "a hook stopped the forward pass during generation".into(),
        ));
    }
    for (row, logits) in rows.iter_mut().zip(out.logits.chunks_exact(vocab)) {
        row.logits.clear();
        row.logits.extend_from_slice(logits);
    }
    Ok(())
}
