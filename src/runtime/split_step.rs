//! A decode step over many rows run as independent sub-batches, one per pool thread.
//!
//! A step over `rows` rows normally runs as one batch: every matrix product is split by weight
//! rows over the model's thread pool ([`super::pool`]), so the threads meet at a barrier after
//! every product (five or six per layer), and what runs between the products (norms, the
//! activations' quantization, rotary embeddings, hooks) runs on one thread while the others
//! wait. With few cores and several rows per core, the step can instead be dealt out: each
//! thread runs the whole forward pass on its own consecutive rows, with its own caches and
//! hooks, and its products run on that thread alone (a pool job started inside a pool job runs
//! on its caller). Each thread then streams every weight once per step instead of its share,
//! which pays where the kernels overlap that stream with their products: the sixteen-row
//! kernels of [`super::quant_x16`] prefetch the weights far ahead.
//!
//! The output head is the exception: the parts stop at the final norm
//! ([`LogitsMode::LastHidden`]) and the head then runs once over every row on the whole pool
//! ([`Network::head`]), so the largest matrix (SmolLM2's tied embedding, 30 MB in Q8_0, a third
//! of the weights) is streamed once per step, not once per part. Measured on the demo model,
//! eight-row steps, five alternations: a median 8.69 ms against 9.46 ms with the head in
//! every part.
//!
//! Rows are independent on the quantized path (each row's numbers are the same whatever rows
//! run beside it; the batch engine's tests hold it), so the split changes no result, only the
//! time.
//!
//! Measured on the demo model (2-core Xeon, `ACT_BENCH_ONLY=steps cargo bench --bench
//! runtime`, split against one batch, two alternations): four rows 4.89 / 5.15 against
//! 5.94 / 5.63 ms a step, eight rows 8.75 / 8.69 against 10.34 / 9.99 ms, sixteen rows 16.0 /
//! 16.4 against 21.0 / 19.4 ms. On Gemma 3 270M Q4_K_M, whose k-quant kernels do not prefetch
//! that far, eight rows took 35.0 / 35.1 against 32.3 / 32.9 ms: such models keep one batch.

use std::ops::Range;
use std::sync::Mutex;
use std::time::Instant;

use super::error::{Result, RuntimeError};
use super::forward::{Batch, ForwardOutput, LogitsMode};
use super::hooks::Hooks;
use super::kv_cache::KvCache;
use super::linear::MatPath;
use super::model::Network;
use super::pool::Pool;

/// Pools of more threads than this keep one batch per step: each part streams every weight,
/// so the memory traffic of a step grows with the parts, and only two cores were measured.
const SPLIT_MAX_THREADS: usize = 4;
/// Rows each thread gets at least before a step is split: with fewer, streaming every weight
/// per thread costs about what the barriers save (two rows on two threads: 3.91 / 3.95
/// against 4.54 / 3.99 ms).
const MIN_ROWS_PER_PART: usize = 2;

/// When steps run as one batch instead of split: for a period after split steps met
/// stragglers (see [`parts`]).
#[derive(Debug)]
struct Fallback {
    /// Steps left to run as one batch.
    left: usize,
    /// The next such period, in steps: doubled by each period up to [`BACKOFF_MAX`], back to
    /// [`BACKOFF_MIN`] after a split step without a straggler.
    period: usize,
    /// Whether the last split step met a straggler.
    last_straggled: bool,
}

impl Fallback {
    const fn new() -> Self {
        Fallback {
            left: 0,
            period: BACKOFF_MIN,
            last_straggled: false,
        }
    }

    /// Whether the next step runs as one batch (counting it off the period).
    fn one_batch(&mut self) -> bool {
        let yes = self.left > 0;
        self.left = self.left.saturating_sub(1);
        yes
    }

    /// Records a split step. A straggler only starts a period when the split step before met
    /// one too: a pool worker parked through an idle spell (between a server's requests)
    /// takes milliseconds to wake, so the first split step after it starts one part late once
    /// (3.3–4.0 ms late on this 2-core VM, where a period of 16 one-batch steps then cost a
    /// quarter of a 64-token burst), while another process on a core delays every step.
    fn record(&mut self, straggled: bool) {
        if !straggled {
            self.last_straggled = false;
            self.period = BACKOFF_MIN;
            return;
        }
        if std::mem::replace(&mut self.last_straggled, true) {
            self.left = self.period;
            self.period = (self.period * 2).min(BACKOFF_MAX);
        }
    }
}

/// The process's [`Fallback`] state (one model pool per process).
static FALLBACK: Mutex<Fallback> = Mutex::new(Fallback::new());
const BACKOFF_MIN: usize = 16;
const BACKOFF_MAX: usize = 1024;

/// [`FALLBACK`], whatever a panicking holder left.
fn fallback() -> std::sync::MutexGuard<'static, Fallback> {
    FALLBACK.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a step is split: `ACT_SPLIT_STEP=0` never, `1` whenever there are rows for every
/// thread (any kernels, any pool size, for comparisons), unset as [`parts`] decides. Read
/// once per process, as `ACT_THREADS` is.
fn forced() -> Option<bool> {
    static FORCED: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| match std::env::var("ACT_SPLIT_STEP").ok()?.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    })
}

/// How many sub-batches a decode step over `rows` rows of `net` runs as on a pool of
/// `threads` threads: `threads` when the layers run on the sixteen-row kernels
/// ([`Network::layers_on_sixteen_row_kernels`]), the pool has 2 to [`SPLIT_MAX_THREADS`]
/// threads and every thread gets [`MIN_ROWS_PER_PART`] rows; else 1 (one batch on the whole
/// pool).
pub fn parts_for(net: &Network, rows: usize, threads: usize) -> usize {
    let split = match forced() {
        Some(f) => f && rows >= threads,
        None => {
            (2..=SPLIT_MAX_THREADS).contains(&threads)
                && rows >= MIN_ROWS_PER_PART * threads
                && net.layers_on_sixteen_row_kernels()
        }
    };
    if split && threads >= 2 { threads } else { 1 }
}

/// [`parts_for`] on the model's pool ([`Pool::global`]), or 1 for a while after two split
/// steps in a row met a straggler ([`Fallback`]): a part has no one to take over its rows,
/// so when another process holds a core, the step waits for the thread it took from us (one
/// batch on the pool hands the remaining products to whichever thread is free, and the pool
/// itself falls back to one thread). Measured with a busy loop on one of the two cores, eight-row steps: before this
/// fallback 16.9 / 18.5 ms split against 15.4 / 15.9 ms as one batch; with it 15.9 / 16.6 /
/// 15.3 against 17.1 / 17.6 / 17.1 ms (`ACT_SPLIT_STEP=0`), runs alternated.
pub fn parts(net: &Network, rows: usize) -> usize {
    if forced().is_none() && fallback().one_batch() {
        return 1;
    }
    parts_for(net, rows, Pool::global().threads())
}

/// `rows` rows dealt into `parts` runs of consecutive rows whose sizes differ by at most one
/// (the larger first), at most `rows` runs, none empty (but for the one run `0..0` of no
/// rows); one run `0..rows` when `parts` is 0 or 1.
pub fn part_ranges(rows: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, rows.max(1));
    let (each, extra) = (rows / parts, rows % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = each + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// What one part works on and gives back, with when it started and ended.
struct Part<'c, H> {
    caches: &'c mut [KvCache],
    hooks: &'c mut H,
    out: Option<Result<ForwardOutput>>,
    span: Option<(Instant, Instant, usize)>,
}

/// Whether the parts' `(start, end, rows)` show a straggler: a part that started later than a
/// quarter of the shortest part's time after the first (it waited for a thread: another
/// process held it, or it ran after another part on the same thread), or one whose time per
/// row was over 1.5 times another's (parts of a row more or less take about as much longer;
/// one descheduled midway, or holding rows of much longer contexts, does not).
fn straggled(spans: &[(Instant, Instant, usize)]) -> bool {
    let first_start = spans.iter().map(|s| s.0).min();
    let last_start = spans.iter().map(|s| s.0).max();
    let shortest = spans.iter().map(|s| s.1.duration_since(s.0)).min();
    let per_row: Vec<f64> = spans
        .iter()
        .map(|s| s.1.duration_since(s.0).as_secs_f64() / s.2.max(1) as f64)
        .collect();
    let (lo, hi) = per_row
        .iter()
        .fold((f64::INFINITY, 0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
    match (first_start, last_start, shortest) {
        (Some(a), Some(b), Some(d)) => b.duration_since(a) > d / 4 || hi > 1.5 * lo,
        _ => false,
    }
}

/// Runs `net` on `batch` as one sub-batch per range of `ranges` (consecutive rows, in order,
/// covering the batch: [`part_ranges`]), side by side on the pool, part `i` with `hooks[i]`
/// (which sees only its rows, numbered from 0) and its rows' `caches`. The logits are the
/// parts' in row order, as one [`Network::forward`] over the whole batch gives them (the same
/// numbers wherever rows are independent: the quantized path); when a hook stopped any part,
/// `stopped` is set and there are none, as a stopped pass has none. One range runs as a plain
/// forward pass on the caller. Ranges that do not cover the batch, or buffers that do not
/// match it, are an error (nothing runs).
#[allow(clippy::too_many_arguments)]
pub fn forward_parts<H: Hooks>(
    net: &Network,
    batch: &Batch<'_>,
    caches: &mut [KvCache],
    ranges: &[Range<usize>],
    hooks: &mut [H],
    path: MatPath,
    mode: LogitsMode,
) -> Result<ForwardOutput> {
    let consistent = batch.seq.checked_mul(batch.batch) == Some(batch.tokens.len())
        && batch.valid.len() == batch.batch
        && batch.prompt_lens.len() == batch.batch;
    let covers = consistent
        && ranges.first().is_some_and(|r| r.start == 0)
        && ranges.last().is_some_and(|r| r.end == batch.batch)
        && ranges.windows(2).all(|w| w[0].end == w[1].start)
        && ranges.iter().all(|r| r.start < r.end);
    if !covers || hooks.len() != ranges.len() || caches.len() != batch.batch {
        return Err(RuntimeError::BadInput(format!(
            "{} parts with {} hook sets do not cover a batch of {} rows with {} caches (or its buffers do not match it)",
            ranges.len(),
            hooks.len(),
            batch.batch,
            caches.len()
        )));
    }
    if let ([_], [h]) = (ranges, &mut *hooks) {
        return net.forward(batch, caches, h, path, mode);
    }
    let mut parts: Vec<Mutex<Part<'_, H>>> = Vec::with_capacity(ranges.len());
    let mut rest = caches;
    for (r, h) in ranges.iter().zip(hooks.iter_mut()) {
        let (mine, tail) = rest.split_at_mut(r.len());
        rest = tail;
        parts.push(Mutex::new(Part {
            caches: mine,
            hooks: h,
            out: None,
            span: None,
        }));
    }
    let seq = batch.seq;
    // The parts stop before the output head, which then runs once over every row on the
    // whole pool: the largest matrix is streamed once per step instead of once per part.
    let part_mode = match mode {
        LogitsMode::Last => LogitsMode::LastHidden,
        other => other,
    };
    Pool::global().run(parts.len(), &|i| {
        let (Some(part), Some(r)) = (parts.get(i), ranges.get(i)) else {
            return;
        };
        let mut part = part.lock().unwrap_or_else(|p| p.into_inner());
        let sub = Batch {
            tokens: &batch.tokens[r.start * seq..r.end * seq],
            batch: r.len(),
            seq,
            valid: &batch.valid[r.clone()],
            prompt_lens: &batch.prompt_lens[r.clone()],
        };
        let Part {
            caches,
            hooks,
            out,
            span,
        } = &mut *part;
        let start = Instant::now();
        *out = Some(net.forward(&sub, caches, *hooks, path, part_mode));
        *span = Some((start, Instant::now(), r.len()));
    });
    let parts: Vec<Part<'_, H>> = parts
        .into_iter()
        .map(|p| p.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect();
    let spans: Vec<(Instant, Instant, usize)> = parts.iter().filter_map(|p| p.span).collect();
    fallback().record(straggled(&spans));
    // As one forward pass: a hook that stops it leaves no logits.
    let mut all = ForwardOutput::default();
    for part in parts {
        let out = part
            .out
            .unwrap_or_else(|| Err(RuntimeError::BadInput("a part of the step did not run".into())))?;
        all.logits.extend_from_slice(&out.logits);
        all.hidden.extend_from_slice(&out.hidden);
        all.stopped |= out.stopped;
    }
    if all.stopped {
        all.logits.clear();
        all.hidden.clear();
    } else if part_mode != mode {
        all.logits = net.head(&all.hidden, batch.batch, path)?;
        all.hidden.clear();
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_ending_late_is_a_straggler() {
        use std::time::Duration;
        let t = Instant::now();
        let ms = |x: u64| t + Duration::from_millis(x);
        // Two parts of 4 rows, 8 ms, starting 1 ms apart: none; starting 3 ms apart: one.
        assert!(!straggled(&[(ms(0), ms(8), 4), (ms(1), ms(9), 4)]));
        assert!(straggled(&[(ms(0), ms(8), 4), (ms(3), ms(11), 4)]));
        // One after the other on the same thread.
        assert!(straggled(&[(ms(0), ms(8), 4), (ms(8), ms(16), 4)]));
        // 3 rows in 7 ms beside 2 rows in 5 ms: none; a part held up midway: one.
        assert!(!straggled(&[(ms(0), ms(7), 3), (ms(0), ms(5), 2)]));
        assert!(straggled(&[(ms(0), ms(7), 4), (ms(0), ms(12), 4)]));
        assert!(!straggled(&[]));
        assert!(!straggled(&[(ms(0), ms(8), 4)]));
    }

    #[test]
    fn one_straggler_is_forgiven_and_two_in_a_row_start_a_doubling_period() {
        let mut f = Fallback::new();
        let ones = |f: &mut Fallback| (0..2000).take_while(|_| f.one_batch()).count();
        // A lone late step (a worker waking from its park) changes nothing.
        f.record(true);
        f.record(false);
        f.record(true);
        assert_eq!(ones(&mut f), 0);
        // Two in a row: 16 steps of one batch, then split again.
        f.record(true);
        assert_eq!(ones(&mut f), BACKOFF_MIN);
        assert!(!f.one_batch());
        // Still straggling after the period: at once a period twice as long, and so on up to
        // the cap.
        f.record(true);
        assert_eq!(ones(&mut f), 2 * BACKOFF_MIN);
        for _ in 0..10 {
            f.record(true);
            ones(&mut f);
        }
        f.record(true);
        assert_eq!(ones(&mut f), BACKOFF_MAX);
        // A clean split step resets both the memory and the period.
        f.record(false);
        f.record(true);
        assert_eq!(ones(&mut f), 0);
        f.record(true);
        assert_eq!(ones(&mut f), BACKOFF_MIN);
    }

    #[test]
    fn ranges_cover_the_rows_in_order_with_sizes_within_one() {
        assert_eq!(part_ranges(8, 2), vec![0..4, 4..8]);
        assert_eq!(part_ranges(7, 2), vec![0..4, 4..7]);
        assert_eq!(part_ranges(5, 3), vec![0..2, 2..4, 4..5]);
        assert_eq!(part_ranges(2, 4), vec![0..1, 1..2]);
        assert_eq!(part_ranges(3, 0), vec![0..3]);
        for rows in 1..40 {
            for parts in 1..9 {
                let r = part_ranges(rows, parts);
                assert_eq!(r.len(), parts.min(rows));
                assert_eq!(r[0].start, 0);
                assert_eq!(r[r.len() - 1].end, rows);
                assert!(r.windows(2).all(|w| w[0].end == w[1].start));
                let lens: Vec<usize> = r.iter().map(|x| x.len()).collect();
                let (lo, hi) = (lens.iter().min(), lens.iter().max());
                assert!(
                    hi.zip(lo).is_some_and(|(h, l)| h - l <= 1 && *l >= 1),
                    "{rows} {parts}"
                );
            }
        }
    }
}
