//! Transport benchmarks (run with `cargo bench --bench transport`): medians over repeated
//! runs, measured side by side in one process, on SmolLM2-135M's shape (576 neurons, 30
//! layers).
//!
//! - fit: Linear-AcT on 512 source + 512 target samples × 576 neurons × 30 hook points,
//!   parallel (rayon pool) and on one thread;
//! - apply: one token through 60 hook points of 576 neurons (the per-token steering cost) and
//!   a 64-token prompt, fused kernel vs an unfused chain of whole-array passes (what a
//!   tensor-op implementation does: mask, affine, interpolate, select, each allocating).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use act_studio::transport::{
    FitConfig, HookMap, Method, SampleMatrix, SteeringPlan, Support, TokenScope, TokenWindow, fit_hook,
};

const D: usize = 576;
const N: usize = 512;
const HOOKS_FIT: usize = 30;
const HOOKS_APPLY: usize = 60;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// Roughly normal (sum of uniforms).
    fn normalish(&mut self) -> f32 {
        (0..4).map(|_| self.next()).sum::<f32>() * 0.87
    }
}

fn samples(rng: &mut Rng, shift: f32, scale: f32) -> SampleMatrix {
    let data = (0..N * D)
        .map(|i| shift + (i % 7) as f32 * 0.1 + scale * rng.normalish())
        .collect();
    SampleMatrix {
        data,
        rows: N,
        cols: D,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `f` over `reps` runs (after one warm-up).
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// The unfused baseline: separate passes with temporaries, as a chain of tensor ops would do.
fn apply_unfused(x: &mut [f32], m: &HookMap, lambda: f32) {
    let d = m.dim();
    for row in x.chunks_exact_mut(d) {
        let mask: Vec<bool> = row
            .iter()
            .zip(m.lo())
            .zip(m.hi())
            .map(|((a, l), h)| a > l && a < h)
            .collect();
        let mapped: Vec<f32> = row
            .iter()
            .zip(m.omega())
            .zip(m.beta())
            .map(|((a, w), b)| w * a + b)
            .collect();
        let mixed: Vec<f32> = row
            .iter()
            .zip(&mapped)
            .map(|(a, t)| (1.0 - lambda) * a + lambda * t)
            .collect();
        for ((a, t), keep) in row.iter_mut().zip(mixed).zip(mask) {
            if keep {
                *a = t;
            }
        }
    }
}

fn main() {
    let reps: usize = std::env::var("ACT_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let src: Vec<SampleMatrix> = (0..HOOKS_FIT).map(|_| samples(&mut rng, 0.0, 1.0)).collect();
    let tgt: Vec<SampleMatrix> = (0..HOOKS_FIT).map(|_| samples(&mut rng, 0.5, 0.7)).collect();
    let cfg = FitConfig::new(Method::LinearAct);
    let fit_all = || {
        for (s, t) in src.iter().zip(&tgt) {
            black_box(fit_hook("h", s.view(), t.view(), &cfg).ok());
        }
    };
    let threads = rayon::current_num_threads();
    let par = time(reps, fit_all);
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map(|pool| pool.install(|| time(reps, fit_all)))
        .unwrap_or(f64::NAN);
    println!("fit  Linear-AcT {N}+{N} samples × {D} neurons × {HOOKS_FIT} hooks:");
    println!(
        "     median {:.1} ms ({threads} threads), {:.1} ms (1 thread), {:.2} ms per hook point",
        par * 1e3,
        single * 1e3,
        par * 1e3 / HOOKS_FIT as f64
    );

    // Maps for the apply benchmark: 60 hook points fitted from the first 30 sample pairs.
    let maps: Vec<Arc<HookMap>> = (0..HOOKS_APPLY)
        .map(|i| {
            let k = i % HOOKS_FIT;
            let support = if i % 2 == 0 {
                Support::Q0_100
            } else {
                Support::Unbounded
            };
            let c = FitConfig {
                method: Method::LinearAct,
                support,
            };
            Arc::new(fit_hook("h", src[k].view(), tgt[k].view(), &c).unwrap_or_else(|e| panic!("{e}")))
        })
        .collect();
    let plan = SteeringPlan::from_parts(
        maps.iter().map(|m| vec![(Arc::clone(m), 0.8)]).collect(),
        TokenScope::All,
    );
    for tokens in [1usize, 64] {
        let base: Vec<f32> = (0..tokens * D).map(|_| rng.normalish()).collect();
        let mut x = base.clone();
        let inner = 200 / tokens.max(1) + 1;
        let fused = time(reps * 20, || {
            for _ in 0..inner {
                x.copy_from_slice(&base);
                for h in 0..HOOKS_APPLY {
                    let _ = plan.apply_3d(h, "h", &mut x, [1, tokens, D], TokenWindow::default());
                }
                black_box(&x);
            }
        }) / inner as f64;
        let copy_only = time(reps * 20, || {
            for _ in 0..inner {
                x.copy_from_slice(&base);
                black_box(&x);
            }
        }) / inner as f64;
        let unfused = time(reps * 20, || {
            for _ in 0..inner {
                x.copy_from_slice(&base);
                for m in &maps {
                    apply_unfused(&mut x, m, 0.8);
                }
                black_box(&x);
            }
        }) / inner as f64;
        let per_token = (fused - copy_only).max(0.0) / tokens as f64;
        println!("apply {tokens:>2} token(s) × {HOOKS_APPLY} hooks × {D} neurons:");
        println!(
            "     fused median {:.1} µs per call ({:.0} ns per token, {:.3} % of a 10 ms forward), unfused {:.1} µs, ratio unfused/fused {:.1}×",
            fused * 1e6,
            per_token * 1e9,
            per_token / 10e-3 * 100.0,
            unfused * 1e6,
            unfused / fused
        );
    }
}
