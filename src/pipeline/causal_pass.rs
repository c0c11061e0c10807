//! Causal fitting in one forward pass over the data, without padding waste (docs/ARCHITECTURE.md,
//! "Causal fitting in one pass").
//!
//! The samples are sorted by length and cut into chunks of similar length; each chunk runs its
//! own forward pass on its own thread. At every hook point, in forward order, each chunk
//! pools its rows into a shared `[samples, d]` matrix (rows in dataset order) and arrives at a
//! gate; the last to arrive fits the hook point's map on all samples, and then every chunk
//! applies that map at λ = 1 to its live activations (every row, every token) and continues.
//! So layer k's map is fitted on activations computed with the maps of earlier hook points
//! applied — the paper's causal estimation — at the cost of one forward pass, and each chunk
//! pays only for its own longest sample instead of the dataset's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::runtime::forward::LogitsMode;
use crate::runtime::{Activation, HookFlow, HookPoint, Hooks, LoadedModel, RuntimeError};
use crate::transport::{FitConfig, HookMap, Samples, Side, fit_hook};

use super::collect::PaddedBatch;
use super::fit_error::FitError;
use super::pooling::Pooling;

/// Fitted maps by hook point name, in forward order.
pub type FittedMaps = Vec<(String, HookMap)>;

/// Default padded tokens per chunk (rows × longest row); smaller chunks waste less on padding
/// but run more threads at once.
pub const CHUNK_TOKENS: usize = 4096;

/// A reusable barrier that can be poisoned: when one chunk fails outside a hook, the others
/// stop waiting instead of hanging.
struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
    parties: usize,
}

struct GateState {
    arrived: usize,
    generation: u64,
    poisoned: bool,
}

impl Gate {
    fn new(parties: usize) -> Self {
        Self {
            state: Mutex::new(GateState {
                arrived: 0,
                generation: 0,
                poisoned: false,
            }),
            cv: Condvar::new(),
            parties,
        }
    }

    /// Waits for every party; the last to arrive runs `leader` before releasing the others.
    /// `false` when the gate was poisoned.
    fn arrive(&self, leader: impl FnOnce()) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.poisoned {
            return false;
        }
        s.arrived += 1;
        if s.arrived == self.parties {
            leader();
            s.arrived = 0;
            s.generation += 1;
            self.cv.notify_all();
            return true;
        }
        let generation = s.generation;
        while s.generation == generation && !s.poisoned {
            s = self.cv.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        !s.poisoned
    }

    fn poison(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.poisoned = true;
        self.cv.notify_all();
    }
}

/// Poisons the gate when dropped (a chunk that failed or panicked).
struct PoisonOnDrop<'g>(&'g Gate);

impl Drop for PoisonOnDrop<'_> {
    fn drop(&mut self) {
        self.0.poison();
    }
}

/// Most chunks (threads) one pass runs; larger datasets get larger chunks.
const MAX_CHUNKS: usize = 32;

/// What the chunks share.
struct Shared<'a> {
    gate: Gate,
    /// Pooled activations at the current hook point, `[samples, d]`, dataset order.
    pooled: Mutex<Vec<f32>>,
    /// The map just fitted.
    current: Mutex<Option<Arc<HookMap>>>,
    /// Every fitted map, in hook-point order.
    maps: Mutex<Vec<(String, HookMap)>>,
    /// If kept: the pooled `[samples, d]` activations each map was fitted on.
    kept: Option<Mutex<Vec<Vec<f32>>>>,
    /// Why the pass stopped, if it failed in a fit or was cancelled.
    failure: Mutex<Option<FitError>>,
    points: &'a [HookPoint],
    n_source: usize,
    n_total: usize,
    d: usize,
    pooling: Pooling,
    config: FitConfig,
    cancel: &'a AtomicBool,
    progress: Mutex<&'a mut (dyn FnMut(usize, usize) + Send)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared<'_> {
    /// The leader's work at a hook point: fit on every sample, publish the map.
    fn fit_here(&self, point: HookPoint) {
        if self.cancel.load(Ordering::Relaxed) {
            *lock(&self.failure) = Some(RuntimeError::Cancelled.into());
            return;
        }
        let name = point.name();
        let pooled = lock(&self.pooled);
        let (src, tgt) = pooled.split_at(self.n_source * self.d);
        if let Some(kept) = &self.kept {
            lock(kept).push(pooled.clone());
        }
        let fitted = Samples::new(src, self.n_source, self.d, Side::Source)
            .and_then(|s| {
                Ok((
                    s,
                    Samples::new(tgt, self.n_total - self.n_source, self.d, Side::Target)?,
                ))
            })
            .and_then(|(s, t)| fit_hook(&name, s, t, &self.config));
        match fitted {
            Ok(map) => {
                *lock(&self.current) = Some(Arc::new(map.clone()));
                let mut maps = lock(&self.maps);
                maps.push((name, map));
                let done = maps.len();
                drop(maps);
                (lock(&self.progress))(done, self.points.len());
            }
            Err(e) => *lock(&self.failure) = Some(e.into()),
        }
    }
}

/// The hooks of one chunk.
struct ChunkHooks<'s, 'a> {
    shared: &'s Shared<'a>,
    /// Dataset index of each of the chunk's rows.
    rows: &'s [usize],
    seen: usize,
    one: Vec<f32>,
}

impl Hooks for ChunkHooks<'_, '_> {
    fn wants(&self, point: HookPoint) -> bool {
        self.shared.points.binary_search(&point).is_ok()
    }

    fn on_activation(&mut self, point: HookPoint, act: Activation<'_>) -> crate::runtime::Result<HookFlow> {
        let sh = self.shared;
        let [b, t, d] = act.shape;
        {
            let mut pooled = lock(&sh.pooled);
            for ((row, &valid), &idx) in act.data.chunks_exact(t * d).zip(act.valid).zip(self.rows).take(b) {
                sh.pooling.pool(&row[..valid.min(t) * d], d, &mut self.one);
                pooled[idx * d..(idx + 1) * d].copy_from_slice(&self.one);
            }
        }
        if !sh.gate.arrive(|| sh.fit_here(point)) || lock(&sh.failure).is_some() {
            return Err(RuntimeError::Cancelled);
        }
        let map = lock(&sh.current).clone();
        if let Some(map) = map {
            map.apply_rows(act.data, 1.0);
        }
        self.seen += 1;
        Ok(if self.seen == sh.points.len() {
            HookFlow::Stop
        } else {
            HookFlow::Continue
        })
    }
}

/// Token ids of each text, cut to `max_tokens`; an empty one is an error naming it.
fn encode_all(m: &LoadedModel, texts: &[&String], max_tokens: usize) -> Result<Vec<Vec<u32>>, FitError> {
    texts
        .iter()
        .map(|t| {
            let v = m.tokenizer.encode_prefix(t, max_tokens.max(1))?;
            if v.is_empty() {
                return Err(FitError::Input(format!(
                    "the sample {:?} is empty after tokenization",
                    crate::pipeline::dataset::excerpt(t)
                )));
            }
            Ok(v)
        })
        .collect()
}

/// Dataset indices grouped into chunks of similar length, each within `budget` padded
/// tokens (at least one row each).
fn length_chunks(lens: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| (lens[i], i));
    let mut chunks: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending: the new row is the chunk's longest.
        if !cur.is_empty() && (cur.len() + 1) * lens[i] > budget {
            chunks.push(std::mem::take(&mut cur));
        }
        cur.push(i);
    }
    if !cur.is_empty() {
        chunks.push(cur);
    }
    chunks
}

/// Fits one map per hook point (`points` sorted, deduplicated) causally, in one pass, with
/// chunks of at most `chunk_tokens` padded tokens (see [`CHUNK_TOKENS`]); samples are cut to
/// `max_tokens`.
#[allow(clippy::too_many_arguments)]
pub fn causal_fit(
    m: &LoadedModel,
    source: &[String],
    target: &[String],
    points: &[HookPoint],
    pooling: Pooling,
    config: &FitConfig,
    max_tokens: usize,
    chunk_tokens: usize,
    cancel: &AtomicBool,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<Vec<(String, HookMap)>, FitError> {
    let (maps, _) = causal_fit_keeping(
        m,
        source,
        target,
        points,
        pooling,
        config,
        (max_tokens, chunk_tokens, false),
        cancel,
        progress,
    )?;
    Ok(maps)
}

/// Pooled activations per hook point, `[source + target samples, d]` (source rows first).
pub type Pooled = Vec<Vec<f32>>;

/// [`causal_fit`], also returning (when `sizes.2`) the pooled activations each map was
/// fitted on, in hook-point order. `sizes` = (max tokens, chunk tokens, keep).
#[allow(clippy::too_many_arguments)]
pub fn causal_fit_keeping(
    m: &LoadedModel,
    source: &[String],
    target: &[String],
    points: &[HookPoint],
    pooling: Pooling,
    config: &FitConfig,
    (max_tokens, chunk_tokens, keep): (usize, usize, bool),
    cancel: &AtomicBool,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<(FittedMaps, Option<Pooled>), FitError> {
    let mut points = points.to_vec();
    points.sort();
    points.dedup();
    let points = &points[..];
    if cancel.load(Ordering::Relaxed) {
        return Err(RuntimeError::Cancelled.into());
    }
    let texts: Vec<&String> = source.iter().chain(target).collect();
    let ids = encode_all(m, &texts, max_tokens)?;
    let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
    let mut budget = chunk_tokens.max(1);
    let mut chunks = length_chunks(&lens, budget);
    while chunks.len() > MAX_CHUNKS {
        budget = budget.saturating_mul(chunks.len().div_ceil(MAX_CHUNKS).max(2));
        chunks = length_chunks(&lens, budget);
    }
    let d = m.config().hidden_size;
    let shared = Shared {
        gate: Gate::new(chunks.len()),
        pooled: Mutex::new(vec![0.0; texts.len() * d]),
        current: Mutex::new(None),
        maps: Mutex::new(Vec::with_capacity(points.len())),
        kept: keep.then(|| Mutex::new(Vec::with_capacity(points.len()))),
        failure: Mutex::new(None),
        points,
        n_source: source.len(),
        n_total: texts.len(),
        d,
        pooling,
        config: *config,
        cancel,
        progress: Mutex::new(progress),
    };
    let results: Vec<crate::runtime::Result<()>> = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(chunks.len());
        let mut spawn_error = None;
        for rows in &chunks {
            let (shared, ids) = (&shared, &ids);
            let spawned = std::thread::Builder::new()
                .name("act-fit-chunk".into())
                .spawn_scoped(s, move || {
                    // Poisons the gate if this chunk fails or panics, so no other chunk waits
                    // for it forever.
                    let guard = PoisonOnDrop(&shared.gate);
                    let r = run_chunk(m, shared, rows, ids);
                    if r.is_ok() {
                        std::mem::forget(guard);
                    }
                    r
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    shared.gate.poison();
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        let mut out: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(RuntimeError::BadInput("a fitting thread panicked".into())))
            })
            .collect();
        if let Some(e) = spawn_error {
            out.push(Err(RuntimeError::BadInput(format!(
                "cannot start a fitting thread: {e}"
            ))));
        }
        out
    });
    if let Some(f) = shared
        .failure
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        return Err(f);
    }
    // A chunk's own failure (not a fit or cancel, which set `failure`) is the real cause;
    // the others only saw the poisoned gate.
    if let Some(e) = results
        .into_iter()
        .filter_map(Result::err)
        .find(|e| !matches!(e, RuntimeError::Cancelled))
    {
        return Err(e.into());
    }
    let maps = shared.maps.into_inner().unwrap_or_else(PoisonError::into_inner);
    if maps.len() != points.len() {
        return Err(FitError::Input(
            "the forward pass ended before every hook point".into(),
        ));
    }
    let kept = shared
        .kept
        .map(|k| k.into_inner().unwrap_or_else(PoisonError::into_inner));
    Ok((maps, kept))
}

/// One chunk's forward pass, right-padded to its longest row.
fn run_chunk(
    m: &LoadedModel,
    shared: &Shared<'_>,
    rows: &[usize],
    ids: &[Vec<u32>],
) -> crate::runtime::Result<()> {
    let padded = PaddedBatch::from_ids(rows.iter().map(|&i| &ids[i]));
    let batch = padded.batch();
    let mut hooks = ChunkHooks {
        shared,
        rows,
        seen: 0,
        one: Vec::with_capacity(shared.d),
    };
    let mut caches: Vec<_> = rows.iter().map(|_| m.transient_cache()).collect();
    m.model.forward(
        &batch,
        &mut caches,
        &mut hooks,
        m.layer_pass_path(),
        LogitsMode::None,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_group_similar_lengths_within_the_budget() {
        let lens = [5, 100, 6, 7, 4000, 5000, 8];
        let chunks = length_chunks(&lens, CHUNK_TOKENS);
        let flat: Vec<usize> = chunks.iter().flatten().copied().collect();
        let mut all = flat.clone();
        all.sort_unstable();
        assert_eq!(all, (0..lens.len()).collect::<Vec<_>>(), "every row exactly once");
        for c in &chunks {
            let longest = c.iter().map(|&i| lens[i]).max().unwrap_or(0);
            assert!(c.len() == 1 || c.len() * longest <= CHUNK_TOKENS, "{c:?}");
        }
        assert_eq!(chunks[0], [0, 2, 3, 6, 1], "shortest first, in one chunk");
    }

    #[test]
    fn gate_releases_everyone_and_runs_the_leader_once() {
        let gate = Gate::new(4);
        let runs = Mutex::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..3 {
                        assert!(gate.arrive(|| *lock(&runs) += 1));
                    }
                });
            }
        });
        assert_eq!(*lock(&runs), 3);
    }

    #[test]
    fn a_poisoned_gate_frees_waiters() {
        let gate = Gate::new(3);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| gate.arrive(|| {}));
            std::thread::sleep(std::time::Duration::from_millis(20));
            gate.poison();
            assert!(!waiter.join().unwrap_or(true));
        });
        assert!(!gate.arrive(|| {}));
    }
}
