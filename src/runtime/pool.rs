//! One pool of worker threads for the model's matrix products ([`Pool::global`]).
//!
//! A job is `chunks` independent pieces of work `f(i)`, `i < chunks` (e.g. blocks of weight
//! rows of one matrix × vector product). The calling thread takes part: it publishes the job,
//! the workers and the caller claim chunks from one atomic counter until none are left, and the
//! caller returns once every chunk is done. No allocation per job, no locks on the hot path.
//!
//! - **Waiting workers spin briefly, then park.** A decode step issues a product every few
//!   tens of microseconds; a worker that spins [`SPIN`] for the next one starts at once, and one
//!   that finds nothing parks on a condition variable, so an idle model costs no CPU.
//! - **Under a competing load it degrades to one thread.** If a worker is descheduled while it
//!   holds a chunk, the caller waits for it (a scheduler time slice, milliseconds, against a
//!   0.1 ms product). When a job's stragglers cost the caller more than its own share of the
//!   work, the pool runs the next jobs on the caller alone, for a period that doubles with each
//!   such job (up to [`MAX_BACKOFF`] jobs), and tries the workers again after it.
//! - **One job at a time.** A job started while another runs (another thread, or a nested
//!   call from inside `f`) runs on its caller alone, so callers never wait for each other.
//!
//! `ACT_THREADS` sets the number of threads (caller included; default: the available cores).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks (and how long the caller spins on stragglers
/// beyond its own share before it yields). Measured on SmolLM2 decode, alternating runs: 20 µs
/// against 200 µs gave 1.22× (paired median of 4) with another process busy on one core, and
/// the same speed idle (1.04×): under load a spinning worker takes the time slices the caller
/// needs.
const SPIN: Duration = Duration::from_micros(20);
/// Longest period (in jobs) the pool runs on the caller alone after slow stragglers.
const MAX_BACKOFF: u32 = 4096;

/// A published job: lives on the caller's stack until every worker has left it.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    chunks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Set when a chunk panicked (the panic is re-raised on the caller).
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Claims and runs chunks until none are left. A panicking chunk still counts as done, so
    /// the caller never waits for it forever.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.chunks {
                return;
            }
            let f = std::panic::AssertUnwindSafe(|| (self.f)(i));
            if std::panic::catch_unwind(f).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// State shared by the caller side and the workers.
struct Shared {
    /// The current job (type-erased `*const Job`), null between jobs.
    job: AtomicPtr<()>,
    /// Bumped when a job is published, to wake workers.
    generation: AtomicU64,
    /// Workers currently looking at `job`.
    active: AtomicUsize,
    /// Workers parked on `wake`.
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

/// A pool of `threads() - 1` workers plus the calling thread.
pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    /// Held by the one running job.
    busy: Mutex<()>,
    /// Jobs left to run on the caller alone, and the current back-off period.
    solo_left: AtomicUsize,
    backoff: AtomicUsize,
}

thread_local! {
    /// Set on pool workers, so that a nested job runs inline.
    static IN_WORKER: Cell<bool> = const { Cell::new(false) };
}

impl Pool {
    /// A pool with `threads` threads in all (the caller and `threads − 1` workers); 0 or 1
    /// means the caller alone. Workers the OS refuses are simply not started.
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            generation: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let mut workers = 0;
        for i in 1..threads.max(1) {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("act-pool-{i}"))
                .spawn(move || worker(&s));
            if spawned.is_ok() {
                workers += 1;
            }
        }
        Self {
            shared,
            workers,
            busy: Mutex::new(()),
            solo_left: AtomicUsize::new(0),
            backoff: AtomicUsize::new(16),
        }
    }

    /// The process-wide pool: `ACT_THREADS` threads, else the available cores.
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let threads = std::env::var("ACT_THREADS")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            Pool::new(threads.min(256))
        })
    }

    /// Threads that work on a job (caller included).
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f(0) … f(chunks − 1)`, each exactly once, on the caller and the workers; returns
    /// when all have returned. A chunk that panics still counts as done, and the panic is
    /// raised again on the caller once every chunk has run.
    pub fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        let solo = || (0..chunks).for_each(f);
        if chunks <= 1 || self.workers == 0 || IN_WORKER.get() {
            return solo();
        }
        if self
            .solo_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return solo();
        }
        let Ok(_busy) = self.busy.try_lock() else {
            return solo();
        };
        let job = Job {
            f,
            chunks,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        };
        let s = &*self.shared;
        s.job
            .store((&job as *const Job).cast_mut().cast(), Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock();
            s.wake.notify_all();
        }
        let t0 = Instant::now();
        job.work();
        let own = t0.elapsed();
        while job.done.load(Ordering::Acquire) < chunks {
            std::hint::spin_loop();
            if t0.elapsed() > own + SPIN {
                std::thread::yield_now();
            }
        }
        let waited = t0.elapsed() - own;
        // No worker may touch `job` once this returns: unpublish it, then wait for workers
        // that loaded the pointer to leave (they find no chunk left and go).
        s.job.store(std::ptr::null_mut(), Ordering::SeqCst);
        while s.active.load(Ordering::SeqCst) > 0 {
            std::hint::spin_loop();
        }
        if waited > own.max(Duration::from_micros(50)) {
            let period = self.backoff.load(Ordering::Relaxed);
            self.solo_left.store(period, Ordering::Relaxed);
            self.backoff
                .store((period * 2).min(MAX_BACKOFF as usize), Ordering::Relaxed);
        } else {
            self.backoff.store(16, Ordering::Relaxed);
        }
        if job.panicked.load(Ordering::Relaxed) {
            panic!("a chunk of a pool job panicked");
        }
    }

    /// Splits `out` into pieces of `piece` values (the last may be shorter) and runs
    /// `f(index, piece)` for each, as one job of [`Self::run`].
    pub fn for_each_piece<T: Send>(&self, out: &mut [T], piece: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
        let piece = piece.max(1);
        let len = out.len();
        let base = SendPtr(out.as_mut_ptr());
        self.run(len.div_ceil(piece), &|i| {
            let start = i * piece;
            let end = (start + piece).min(len);
            // SAFETY: pieces `[i·piece, min((i+1)·piece, len))` are disjoint for distinct `i`,
            // each `i` runs exactly once, and `out` stays borrowed until `run` returns.
            let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
            f(i, part);
        });
    }
}

/// A raw pointer that may cross threads (for disjoint pieces of one slice of `T: Send`).
struct SendPtr<T>(*mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: used only by `for_each_piece`, whose pieces never overlap; `T: Send` lets each piece
// be written from another thread.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// A slice that the chunks of one pool job write at disjoint indices (each index by at most
/// one chunk), e.g. the `[n, rows]` output of a product split by weight rows, where one chunk's
/// outputs are strided rather than one contiguous piece.
pub struct DisjointWrites<'a, T> {
    ptr: SendPtr<T>,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

impl<'a, T: Send + Copy> DisjointWrites<'a, T> {
    /// Borrows `out` for the writes.
    pub fn new(out: &'a mut [T]) -> Self {
        Self {
            ptr: SendPtr(out.as_mut_ptr()),
            len: out.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// Writes `v` at `i`; an index out of range is ignored (callers compute in-range indices).
    ///
    /// # Safety
    /// No other thread may write or read index `i` while the slice is borrowed here.
    #[inline(always)]
    pub unsafe fn set(&self, i: usize, v: T) {
        if i < self.len {
            // SAFETY: in bounds; exclusive access to index `i` is the caller's contract.
            unsafe { self.ptr.get().add(i).write(v) }
        }
    }
}

impl<T: Send + Copy> DisjointWrites<'_, T> {
    /// Writes `vals` at `at …`; a range past the end is ignored (callers compute in-range
    /// indices). One copy, where [`Self::set`] per value compiled to masked stores.
    ///
    /// # Safety
    /// No other thread may write or read indices `at … at + vals.len()` while the slice is
    /// borrowed here.
    #[inline(always)]
    pub unsafe fn set_slice(&self, at: usize, vals: &[T]) {
        if at.checked_add(vals.len()).is_some_and(|end| end <= self.len) {
            // SAFETY: in bounds; exclusive access to the range is the caller's contract, and
            // `vals` (borrowed elsewhere) cannot overlap indices only this writer may touch.
            unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), self.ptr.get().add(at), vals.len()) }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        let _g = self.shared.lock.lock();
        self.shared.wake.notify_all();
    }
}

/// A worker: waits for a new generation (spinning, then parked), runs chunks of the job.
fn worker(s: &Shared) {
    IN_WORKER.set(true);
    // From generation 0, so a job published before this thread started is not missed.
    let mut seen = 0;
    loop {
        let t0 = Instant::now();
        while s.generation.load(Ordering::SeqCst) == seen && t0.elapsed() < SPIN {
            std::hint::spin_loop();
        }
        if s.generation.load(Ordering::SeqCst) == seen {
            let mut g = match s.lock.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            s.sleeping.fetch_add(1, Ordering::SeqCst);
            while s.generation.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::SeqCst) {
                g = match s.wake.wait(g) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
            }
            s.sleeping.fetch_sub(1, Ordering::SeqCst);
        }
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        seen = s.generation.load(Ordering::SeqCst);
        s.active.fetch_add(1, Ordering::SeqCst);
        let p = s.job.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: the caller keeps the job alive until `active` is 0 after unpublishing
            // it; this worker counted itself in `active` before loading the pointer.
            let job = unsafe { &*(p as *const Job) };
            job.work();
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once_with_any_thread_count() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads);
            assert_eq!(pool.threads(), threads);
            for chunks in [0, 1, 2, 7, 64, 1000] {
                let hits: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
                for _ in 0..50 {
                    pool.run(chunks, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 50),
                    "{threads} {chunks}"
                );
            }
        }
    }

    #[test]
    fn workers_take_part_and_nested_or_concurrent_jobs_run_inline() {
        let pool = Pool::new(2);
        // The caller's first chunk waits (up to 10 s) until the worker has run a chunk.
        let on_worker = AtomicUsize::new(0);
        pool.run(2, &|_| {
            if IN_WORKER.get() {
                on_worker.fetch_add(1, Ordering::Relaxed);
            } else {
                let t0 = Instant::now();
                while on_worker.load(Ordering::Relaxed) == 0 && t0.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        assert_eq!(on_worker.load(Ordering::Relaxed), 1);
        // A job started from inside a job runs on its own thread, completely.
        let inner = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(3, &|_| {
                inner.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(inner.load(Ordering::Relaxed), 12);
        // Jobs from several threads at once all complete.
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    for _ in 0..100 {
                        pool.run(16, &|_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 100 * 16);
    }

    #[test]
    fn pieces_are_disjoint_and_cover_the_slice() {
        let pool = Pool::new(2);
        for (len, piece) in [(0, 4), (1, 4), (10, 3), (1000, 64), (7, 100)] {
            let mut out = vec![0f32; len];
            pool.for_each_piece(&mut out, piece, &|i, part| {
                for (j, v) in part.iter_mut().enumerate() {
                    *v += (i * piece + j) as f32;
                }
            });
            assert!(
                out.iter().enumerate().all(|(j, &v)| v == j as f32),
                "{len} {piece}"
            );
        }
    }

    #[test]
    fn a_panicking_chunk_is_reported_on_the_caller() {
        let pool = Pool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(32, &|i| assert!(i != 17, "chunk 17"));
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        pool.run(32, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 32);
    }

    #[test]
    fn idle_workers_park_and_wake() {
        let pool = Pool::new(3);
        pool.run(8, &|_| {});
        // After the spin period both workers are parked ...
        let t0 = Instant::now();
        while pool.shared.sleeping.load(Ordering::SeqCst) < 2 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(pool.shared.sleeping.load(Ordering::SeqCst), 2);
        // ... and a new job wakes them.
        let n = AtomicUsize::new(0);
        pool.run(100, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 100);
    }
}
