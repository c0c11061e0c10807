//! Runtime benchmarks on the demo model (run with `cargo bench --bench runtime`), ours and
//! candle-transformers' `quantized_llama` side by side in one run, medians of repeated runs:
//!
//! - decode tokens/s (≈30-token prompt, 128 new tokens, greedy), idle and with another
//!   process keeping one core busy; ours with steering at 30 layers × 2 hook points;
//! - prefill tokens/s for a batch of 32 sentences of ≈30 tokens;
//! - the dense path's matrix products (SmolLM2's MLP shapes, 512 token rows): our fixed-order
//!   kernel (`runtime::dense`) against candle's `gemm`-backed matmul;
//! - peak RSS of each engine (each measured in a child process of its own);
//! - quantized matrix × vector for the formats of k-quant files (Q4_K, Q5_K, Q6_K and the
//!   Q5_0 / Q5_1 row-length fallback): our kernels against candle's `QMatMul` on Qwen2.5-0.5B's
//!   MLP shapes (`ACT_BENCH_ONLY=quant` runs only this part, without the demo model; `q5` and
//!   `kq` only those formats);
//! - the batched quantized product of a prompt (`QMatrix::matmul`, 64 inputs, every format):
//!   four-input kernels against the one-input kernels, same bits (`ACT_BENCH_ONLY=batched`);
//! - the tiled prompt product (`runtime::tiled`, f32 on weights dequantized a tile at a time)
//!   against the quantized kernels for 8 … 512 inputs, every format (`ACT_BENCH_ONLY=tiled`):
//!   where `tiled::min_inputs` comes from;
//! - the products of a batched decode step (1 … 16 inputs: a server's rows) against one
//!   matrix × vector per input (`ACT_BENCH_ONLY=fewrows`);
//! - whole batched decode steps of the demo model (1 … 16 rows, a server's batch after a
//!   ≈30-token prompt): ms per step and tokens/s, against one row (`ACT_BENCH_ONLY=steps`;
//!   `ACT_BENCH_STEER=1` steers every row at 30 layers × 2 hook points, `ACT_BENCH_ROWS=N`
//!   times only one row and N rows; each step is split per thread as the server splits it,
//!   `runtime::split_step`, where `ACT_SPLIT_STEP=0` keeps one batch and `1` always splits);
//! - the sampler on SmolLM2's 49,152-token vocabulary against a full sort of every token
//!   (`ACT_BENCH_ONLY=sampler`).
//!
//! `ACT_BENCH_REPS` sets the repetitions (default 3).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use act_studio::runtime::dense::PackedMatrix;
use act_studio::runtime::forward::{Batch, LogitsMode};
use act_studio::runtime::generate::decode_pool;
use act_studio::runtime::linear::MatPath;
use act_studio::runtime::sampling::argmax;
use act_studio::runtime::split_step;
use act_studio::runtime::steer::SteeringHooks;
use act_studio::runtime::{HookKind, HookPoint, Hooks, LoadedModel, NoHooks};
use act_studio::transport::{HookMap, Method, SteeringPlan, Support, TokenScope};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

const PROMPT: &str = "Once upon a time, in a small village by the sea, there lived an old fisherman who told the children stories every evening about";
const NEW_TOKENS: usize = 128;

fn model_path() -> std::path::PathBuf {
    std::env::var_os("ACT_DEMO_MODEL")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
}

fn candle_model() -> ModelWeights {
    let p = model_path();
    let mut f = std::fs::File::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let c = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap_or_else(|e| panic!("{e}"));
    ModelWeights::from_gguf(c, &mut f, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Decode speed of ours: (prefill s, decode tok/s).
fn ours_decode(m: &LoadedModel, ids: &[u32], hooks: &mut dyn Hooks) -> f64 {
    let mut cache = vec![m.new_cache()];
    let n = ids.len();
    let b = Batch {
        tokens: ids,
        batch: 1,
        seq: n,
        valid: &[n],
        prompt_lens: &[n],
    };
    let mut logits = m
        .model
        .forward(&b, &mut cache, hooks, MatPath::Quantized, LogitsMode::Last)
        .map(|o| o.logits)
        .unwrap_or_default();
    let t = Instant::now();
    for _ in 0..NEW_TOKENS - 1 {
        let tok = [argmax(&logits)];
        let b = Batch {
            tokens: &tok,
            batch: 1,
            seq: 1,
            valid: &[1],
            prompt_lens: &[n],
        };
        // Decode steps run on the runtime's one-thread decode pool, as `generate` does.
        logits = decode_pool()
            .install(|| {
                m.model
                    .forward(&b, &mut cache, &mut *hooks, MatPath::Quantized, LogitsMode::Last)
            })
            .map(|o| o.logits)
            .unwrap_or_default();
    }
    (NEW_TOKENS - 1) as f64 / t.elapsed().as_secs_f64()
}

fn candle_forward(c: &mut ModelWeights, ids: &[u32], pos: usize) -> Vec<f32> {
    Tensor::new(ids, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .and_then(|x| c.forward(&x, pos))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn candle_decode(c: &mut ModelWeights, ids: &[u32]) -> f64 {
    c.clear_kv_cache();
    let mut logits = candle_forward(c, ids, 0);
    let t = Instant::now();
    for i in 0..NEW_TOKENS - 1 {
        logits = candle_forward(c, &[argmax(&logits)], ids.len() + i);
    }
    (NEW_TOKENS - 1) as f64 / t.elapsed().as_secs_f64()
}

fn sentences(m: &LoadedModel) -> Vec<Vec<u32>> {
    let subjects = [
        "The old lighthouse keeper",
        "A young football player",
        "My grandmother",
        "The orchestra conductor",
        "A curious giraffe",
        "The night-shift nurse",
        "Our new neighbour",
        "The spacecraft engineer",
    ];
    let verbs = [
        "watched the storm roll in over the harbour",
        "practised every morning before school started",
        "baked bread for the whole street on Sundays",
        "raised the baton while the audience held its breath",
    ];
    (0..32)
        .map(|i| {
            let s = format!(
                "{} {} and then wrote a short note about it in a notebook number {}.",
                subjects[i % 8],
                verbs[i % 4],
                i
            );
            m.tokenizer.encode(&s).unwrap_or_default()
        })
        .collect()
}

/// Batched dense prefill of the sentences (right-padded), tokens/s.
fn ours_prefill(m: &LoadedModel, sents: &[Vec<u32>]) -> f64 {
    let seq = sents.iter().map(Vec::len).max().unwrap_or(1);
    let mut tokens = Vec::with_capacity(sents.len() * seq);
    for s in sents {
        tokens.extend_from_slice(s);
        tokens.extend(std::iter::repeat_n(0, seq - s.len()));
    }
    let valid: Vec<usize> = sents.iter().map(Vec::len).collect();
    let total: usize = valid.iter().sum();
    let mut caches: Vec<_> = sents.iter().map(|_| m.new_cache()).collect();
    let b = Batch {
        tokens: &tokens,
        batch: sents.len(),
        seq,
        valid: &valid,
        prompt_lens: &valid,
    };
    let t = Instant::now();
    let _ = m
        .model
        .forward(&b, &mut caches, &mut NoHooks, MatPath::Dense, LogitsMode::Last);
    total as f64 / t.elapsed().as_secs_f64()
}

fn candle_prefill(c: &mut ModelWeights, sents: &[Vec<u32>]) -> f64 {
    let total: usize = sents.iter().map(Vec::len).sum();
    let t = Instant::now();
    for s in sents {
        c.clear_kv_cache();
        let _ = candle_forward(c, s, 0);
    }
    total as f64 / t.elapsed().as_secs_f64()
}

/// Steering at every layer's attn_out and mlp_norm with dense, non-trivial maps.
fn steering(m: &LoadedModel) -> SteeringHooks {
    SteeringHooks::from_plan(steering_plan(m))
}

/// The plan of [`steering`]: its maps shared (`Arc`), so a clone per decode step costs no
/// map data (as the server's requests share their concepts' maps).
fn steering_plan(m: &LoadedModel) -> SteeringPlan {
    let d = m.config().hidden_size;
    let n = m.config().n_layers * HookKind::ALL.len();
    let mut per_hook = vec![Vec::new(); n];
    for layer in 0..m.config().n_layers {
        for kind in [HookKind::AttnOut, HookKind::MlpNorm] {
            let omega = (0..d).map(|j| 0.9 + (j % 7) as f32 * 0.03).collect();
            let beta = (0..d).map(|j| ((j % 5) as f32 - 2.0) * 0.01).collect();
            let map = HookMap::new(
                Method::LinearAct,
                Support::Q0_100,
                omega,
                beta,
                vec![-50.0; d],
                vec![50.0; d],
                BTreeMap::new(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            per_hook[HookPoint { layer, kind }.index()].push((Arc::new(map), 0.5));
        }
    }
    SteeringPlan::from_parts(per_hook, TokenScope::All)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Child mode: one engine alone, decode + prefill, then print its peak RSS.
fn child(engine: &str) {
    let m = LoadedModel::load(&model_path()).unwrap_or_else(|e| panic!("{e}"));
    let ids = m.tokenizer.encode(PROMPT).unwrap_or_default();
    let sents = sentences(&m);
    if engine == "ours" {
        ours_decode(&m, &ids, &mut NoHooks);
        ours_prefill(&m, &sents);
        drop(m);
    } else {
        drop(m);
        let mut c = candle_model();
        candle_decode(&mut c, &ids);
        candle_prefill(&mut c, &sents);
    }
    println!("{:.0}", peak_rss_mib());
}

fn main() {
    // As in the app's `main`: spare candle a /proc/cpuinfo read per tensor operation.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: first statement of `main`, before any other thread exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    if let Ok(engine) = std::env::var("ACT_BENCH_ENGINE") {
        child(&engine);
        return;
    }
    match std::env::var("ACT_BENCH_ONLY").as_deref() {
        Ok("q5") => return quant_products(&Q5_FORMATS),
        Ok("kq") => return quant_products(&K_FORMATS),
        Ok("batched") => return batched_products(reps_from_env().max(5)),
        Ok("tiled") => return tiled_products(reps_from_env().max(5)),
        Ok("fewrows") => return few_inputs(reps_from_env().max(5)),
        Ok("sampler") => return sampler_speed(reps_from_env().max(5)),
        Ok("steps") => return decode_steps(reps_from_env().max(3)),
        Ok("quant") => {
            quant_products(&K_FORMATS);
            return quant_products(&Q5_FORMATS);
        }
        _ => {}
    }
    if !model_path().is_file() {
        eprintln!(
            "SKIP: demo model not found at {} (run models/fetch-demo-model.sh)",
            model_path().display()
        );
        return;
    }
    let reps = reps_from_env();
    let m = LoadedModel::load(&model_path()).unwrap_or_else(|e| panic!("{e}"));
    let mut c = candle_model();
    let ids = m.tokenizer.encode(PROMPT).unwrap_or_default();
    let sents = sentences(&m);
    let mut steer = steering(&m);
    println!(
        "threads: {} (rayon), prompt {} tokens, {NEW_TOKENS} new tokens, {reps} reps (medians)",
        rayon::current_num_threads(),
        ids.len()
    );

    for (label, load) in [("idle", false), ("one core busy", true)] {
        let mut busy = load
            .then(|| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .ok()
            })
            .flatten();
        let (mut o, mut s, mut k) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            o.push(ours_decode(&m, &ids, &mut NoHooks));
            s.push(ours_decode(&m, &ids, &mut steer));
            k.push(candle_decode(&mut c, &ids));
        }
        if let Some(b) = busy.as_mut() {
            let _ = b.kill();
            let _ = b.wait();
        }
        let (o, s, k) = (median(o), median(s), median(k));
        println!(
            "decode ({label}): ours {o:.1} tok/s, ours steered (30 layers × 2 hooks) {s:.1} tok/s (overhead {:.1} %), quantized_llama {k:.1} tok/s, ratio ours/candle {:.2}×",
            (o / s - 1.0) * 100.0,
            o / k
        );
    }
    let (mut o, mut k) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        o.push(ours_prefill(&m, &sents));
        k.push(candle_prefill(&mut c, &sents));
    }
    let total: usize = sents.iter().map(Vec::len).sum();
    let (o, k) = (median(o), median(k));
    println!(
        "prefill (32 sentences, {total} tokens): ours batched dense {o:.1} tok/s, quantized_llama {k:.1} tok/s, ratio {:.1}×",
        o / k
    );
    dense_products(reps.max(5));
    quant_products(&K_FORMATS);
    quant_products(&Q5_FORMATS);
    batched_products(reps.max(5));
    drop((m, c));
    let exe = std::env::current_exe().unwrap_or_default();
    for engine in ["ours", "candle"] {
        let out = Command::new(&exe).env("ACT_BENCH_ENGINE", engine).output();
        let rss = out
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        println!("peak RSS ({engine}, decode + prefill): {rss} MiB");
    }
}

/// `len` values in [−0.5, 0.5) from a multiplicative hash of their index and `seed`: matrices
/// and inputs for the product benchmarks, the same in every run.
fn fill(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32
                - 0.5
        })
        .collect()
}

/// `ACT_BENCH_REPS`, default 3.
fn reps_from_env() -> usize {
    std::env::var("ACT_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// The batched quantized product of a 64-token prompt in every format, on SmolLM2's MLP shapes
/// (`[1536, 576]`; k-quants `[1536, 768]`, whose rows must hold whole 256-value blocks): the
/// four-input kernels (`QMatrix::matmul`) against every input through the one-input kernels
/// (`QMatrix::matmul_one_by_one`), paired medians of `reps` × 10 calls, on the pool as in a
/// prefill; the outputs must be equal bit for bit.
fn batched_products(reps: usize) {
    use act_studio::runtime::quant::{ActScratch, QMatrix};
    use candle_core::quantized::QTensor;
    let n = 64;
    let formats = [
        (GgmlDType::Q4_0, QDType::Q4_0),
        (GgmlDType::Q4_1, QDType::Q4_1),
        (GgmlDType::Q8_0, QDType::Q8_0),
    ]
    .into_iter()
    .chain(Q5_FORMATS)
    .chain(K_FORMATS);
    for (gdt, dt) in formats {
        let (rows, cols) = if dt.block_size() == 256 {
            (1536, 768)
        } else {
            (1536, 576)
        };
        let run = || -> Result<String, String> {
            let t = Tensor::from_vec(fill(rows * cols, 1), (rows, cols), &Device::Cpu)
                .map_err(|e| e.to_string())?;
            let q = QTensor::quantize(&t, gdt).map_err(|e| e.to_string())?;
            let m = QMatrix::new(dt, rows, cols, q.data().map_err(|e| e.to_string())?.into_owned())
                .map_err(|e| e.to_string())?;
            let xs = fill(n * cols, 7);
            let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            let (mut grouped, mut single, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            let mut scratch = ActScratch::new();
            for _ in 0..reps * 10 {
                let t = Instant::now();
                m.matmul(&xs, n, &mut a, &mut scratch)
                    .map_err(|e| e.to_string())?;
                let g = t.elapsed().as_secs_f64();
                let t = Instant::now();
                m.matmul_one_by_one(&xs, n, &mut b, &mut scratch)
                    .map_err(|e| e.to_string())?;
                let s = t.elapsed().as_secs_f64();
                grouped.push(g);
                single.push(s);
                ratios.push(s / g);
            }
            let same = a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits());
            let macs = (n * rows * cols) as f64;
            let (g, s) = (median(grouped), median(single));
            Ok(format!(
                "{dt:?} matmul [{n}, {cols}] × [{rows}, {cols}]ᵀ: four-input {:.2} ms ({:.1} GMAC/s), one-input {:.2} ms ({:.1} GMAC/s), paired median speed-up {:.2}×, bit-identical: {same}",
                g * 1e3,
                macs / g / 1e9,
                s * 1e3,
                macs / s / 1e9,
                median(ratios)
            ))
        };
        match run() {
            Ok(line) => println!("{line}"),
            Err(e) => println!("{dt:?} batched: {e}"),
        }
    }
}

/// The tiled prompt product (`runtime::tiled::matmul`; for k-quants also the integer tiles,
/// `runtime::kquant_tiled::matmul`, and also at n = 512 on a 1.35 B model's MLP shapes) against the quantized kernels
/// (`QMatrix::matmul`, four inputs at a time) for 8 … 512 inputs, on SmolLM2's MLP up shape
/// (`[1536, 576]`; k-quants `[1536, 768]`), paired medians of `reps` alternating calls on the
/// pool as in a prefill.
fn tiled_products(reps: usize) {
    use act_studio::runtime::pool::Pool;
    use act_studio::runtime::quant::{ActScratch, QMatrix};
    use act_studio::runtime::{kquant_tiled, tiled};
    use candle_core::quantized::QTensor;
    let formats = [
        (GgmlDType::Q4_0, QDType::Q4_0),
        (GgmlDType::Q4_1, QDType::Q4_1),
        (GgmlDType::Q8_0, QDType::Q8_0),
    ]
    .into_iter()
    .chain(Q5_FORMATS)
    .chain(K_FORMATS);
    // k-quants also on a 1.35 B model's MLP shapes (up `[5632, 2048]`, down `[2048, 5632]`).
    let big = K_FORMATS
        .into_iter()
        .flat_map(|f| [(f, 5632, 2048), (f, 2048, 5632)]);
    let shapes = formats
        .map(|(g, d)| {
            let (rows, cols) = if d.block_size() == 256 {
                (1536, 768)
            } else {
                (1536, 576)
            };
            ((g, d), rows, cols)
        })
        .chain(big);
    for ((gdt, dt), rows, cols) in shapes {
        let sizes: &[usize] = if rows * cols > 1536 * 768 {
            &[512]
        } else {
            &[8, 16, 32, 64, 128, 512]
        };
        let run = || -> Result<String, String> {
            let t = Tensor::from_vec(fill(rows * cols, 1), (rows, cols), &Device::Cpu)
                .map_err(|e| e.to_string())?;
            let q = QTensor::quantize(&t, gdt).map_err(|e| e.to_string())?;
            let m = QMatrix::new(dt, rows, cols, q.data().map_err(|e| e.to_string())?.into_owned())
                .map_err(|e| e.to_string())?;
            let mut line = format!("{dt:?} [n, {cols}] × [{rows}, {cols}]ᵀ, tiled vs quantized (speed-up):");
            for &n in sizes {
                let xs = fill(n * cols, 7);
                let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
                let mut scratch = ActScratch::new();
                let mut ratios = Vec::new();
                let mut tiled_s = Vec::new();
                for _ in 0..reps * 4 {
                    let t = Instant::now();
                    tiled::matmul(Pool::global(), &m, &xs, n, &mut a).map_err(|e| e.to_string())?;
                    let ti = t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    m.matmul(&xs, n, &mut b, &mut scratch)
                        .map_err(|e| e.to_string())?;
                    ratios.push(t.elapsed().as_secs_f64() / ti);
                    tiled_s.push(ti);
                }
                let gmacs = (n * rows * cols) as f64 / median(tiled_s) / 1e9;
                line += &format!(" n={n} {:.2}× ({gmacs:.1} GMAC/s", median(ratios));
                if kquant_tiled::supports(dt) {
                    // The integer tiles against the f32 tiles and the quantized kernels, the
                    // three in turn.
                    let (mut vs_f32, mut vs_quant, mut int_s) = (Vec::new(), Vec::new(), Vec::new());
                    for _ in 0..reps * 4 {
                        let t = Instant::now();
                        kquant_tiled::matmul(Pool::global(), &m, &xs, n, &mut b)
                            .map_err(|e| e.to_string())?;
                        let ti = t.elapsed().as_secs_f64();
                        let t = Instant::now();
                        tiled::matmul(Pool::global(), &m, &xs, n, &mut a).map_err(|e| e.to_string())?;
                        vs_f32.push(t.elapsed().as_secs_f64() / ti);
                        let t = Instant::now();
                        m.matmul(&xs, n, &mut a, &mut scratch)
                            .map_err(|e| e.to_string())?;
                        vs_quant.push(t.elapsed().as_secs_f64() / ti);
                        int_s.push(ti);
                    }
                    let gmacs = (n * rows * cols) as f64 / median(int_s) / 1e9;
                    line += &format!(
                        "; integer tiles {:.2}× the f32 tiles, {:.2}× the quantized kernels, {gmacs:.1} GMAC/s",
                        median(vs_f32),
                        median(vs_quant)
                    );
                }
                line += ");";
            }
            Ok(line)
        };
        match run() {
            Ok(line) => println!("{line}"),
            Err(e) => println!("{dt:?} tiled: {e}"),
        }
    }
}

/// Our fixed-order dense product (weights packed once, as the dense path keeps them) against
/// candle's matmul on the MLP shapes of SmolLM2
/// (`[512, 576] × [1536, 576]ᵀ` and `[512, 1536] × [576, 1536]ᵀ`), paired medians.
fn dense_products(reps: usize) {
    let fill = |n: usize, seed: u32| -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32
                    - 0.5
            })
            .collect()
    };
    for (n, out, k) in [(512usize, 1536usize, 576usize), (512, 576, 1536)] {
        let x = fill(n * k, 1);
        let w = fill(out * k, 2);
        let xt = Tensor::from_slice(&x, (n, k), &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let wt = Tensor::from_slice(&w, (out, k), &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let mut y = vec![0.0f32; n * out];
        let packed = PackedMatrix::pack(&w, out, k);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let t = Instant::now();
            packed.matmul(&x, n, &mut y);
            ours.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let r = wt
                .t()
                .and_then(|wt| xt.matmul(&wt))
                .and_then(|r| r.flatten_all()?.to_vec1::<f32>());
            theirs.push(t.elapsed().as_secs_f64());
            std::hint::black_box(r.ok());
        }
        let ratios: Vec<f64> = theirs.iter().zip(&ours).map(|(c, o)| c / o).collect();
        let (o, c) = (median(ours), median(theirs));
        let gflops = 2.0 * (n * out * k) as f64 / 1e9;
        println!(
            "dense product {n}×{k} · ({out}×{k})ᵀ: ours (fixed order) {:.2} ms ({:.1} GFLOP/s), candle gemm {:.2} ms ({:.1} GFLOP/s), paired median speed ratio ours/candle {:.2}×",
            o * 1e3,
            gflops / o,
            c * 1e3,
            gflops / c,
            median(ratios)
        );
    }
}

use act_studio::runtime::quant::QDType;
use candle_core::quantized::GgmlDType;

/// The row-length fallback formats of k-quant files.
const Q5_FORMATS: [(GgmlDType, QDType); 2] =
    [(GgmlDType::Q5_0, QDType::Q5_0), (GgmlDType::Q5_1, QDType::Q5_1)];
/// The k-quants.
const K_FORMATS: [(GgmlDType, QDType); 3] = [
    (GgmlDType::Q4K, QDType::Q4K),
    (GgmlDType::Q5K, QDType::Q5K),
    (GgmlDType::Q6K, QDType::Q6K),
];

/// Quantized matrix × vector, ours (`QMatrix::matvec`) against candle's `QMatMul` on
/// Qwen2.5-0.5B's MLP shapes (`[4864, 896]` and `[896, 4864]`; `[4864, 1024]` and
/// `[1024, 4864]` for the k-quants, whose rows must hold whole 256-value blocks), both with
/// the thread setup of a decode step; paired medians of 101 calls each, and the results
/// compared (largest difference relative to the largest output).
fn quant_products(formats: &[(GgmlDType, QDType)]) {
    use act_studio::runtime::quant::{ActScratch, QMatrix};
    use candle_core::Module;
    use candle_core::quantized::{QMatMul, QTensor};
    let mut scratch = ActScratch::new();
    for &(gdt, dt) in formats {
        let k = dt.block_size() == 256;
        let shapes = if k {
            [(4864usize, 1024usize), (1024, 4864)]
        } else {
            [(4864, 896), (896, 4864)]
        };
        for (rows, cols) in shapes {
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
                .collect();
            let x: Vec<f32> = (0..cols)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let mut run = || -> candle_core::Result<()> {
                let q = QTensor::quantize(&Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu)?, gdt)?;
                let m = QMatrix::new(dt, rows, cols, q.data()?.into_owned())
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                let mm = QMatMul::from_qtensor(q)?;
                let xt = Tensor::from_vec(x.clone(), (1, cols), &Device::Cpu)?;
                let mut y = vec![0f32; rows];
                let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
                let (mut same, mut diff, mut top) = (true, 0f32, 0f32);
                for _ in 0..101 {
                    let t = Instant::now();
                    m.matvec(&x, &mut y, &mut scratch)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                    let a = t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    let r = mm.forward(&xt)?.flatten_all()?.to_vec1::<f32>()?;
                    let b = t.elapsed().as_secs_f64();
                    same &= r.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits());
                    for (p, q) in r.iter().zip(&y) {
                        diff = diff.max((p - q).abs());
                        top = top.max(p.abs());
                    }
                    ours.push(a);
                    theirs.push(b);
                    ratios.push(b / a);
                }
                let gb = m.bytes().len() as f64 / 1e9;
                let (o, c) = (median(ours), median(theirs));
                println!(
                    "{dt:?} matvec [{rows}, {cols}]: ours {:.3} ms ({:.1} GB/s), candle QMatMul {:.3} ms ({:.1} GB/s), paired median speed ratio ours/candle {:.2}×, bit-identical: {same}, largest difference {:.1e} of the largest output",
                    o * 1e3,
                    gb / o,
                    c * 1e3,
                    gb / c,
                    median(ratios),
                    diff / top.max(f32::MIN_POSITIVE)
                );
                Ok(())
            };
            if let Err(e) = run() {
                println!("{dt:?} [{rows}, {cols}]: {e}");
            }
        }
    }
}

/// The products of a decode step over `n` rows (a server's batch): `QMatrix::matmul` of `n`
/// inputs against `n` calls of `matvec`, on SmolLM2's MLP shape (Q4_1), an output-head slice
/// (Q8_0) and a k-quant MLP shape; medians of `reps` × 20 alternating calls on the pool.
fn few_inputs(reps: usize) {
    use act_studio::runtime::quant::{ActScratch, QMatrix};
    use candle_core::quantized::QTensor;
    for (gdt, dt, rows, cols) in [
        (GgmlDType::Q4_1, QDType::Q4_1, 1536usize, 576usize),
        (GgmlDType::Q8_0, QDType::Q8_0, 8192, 576),
        (GgmlDType::Q4K, QDType::Q4K, 1536, 768),
    ] {
        let t = Tensor::from_vec(fill(rows * cols, 1), (rows, cols), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"));
        let q = QTensor::quantize(&t, gdt).unwrap_or_else(|e| panic!("{e}"));
        let m = QMatrix::new(
            dt,
            rows,
            cols,
            q.data().unwrap_or_else(|e| panic!("{e}")).into_owned(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for n in [1usize, 2, 4, 8, 16] {
            let xs = fill(n * cols, 7);
            let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            let mut scratch = ActScratch::new();
            let (mut g, mut s) = (Vec::new(), Vec::new());
            for _ in 0..reps * 20 {
                let t = Instant::now();
                m.matmul(&xs, n, &mut a, &mut scratch)
                    .unwrap_or_else(|e| panic!("{e}"));
                g.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                for i in 0..n {
                    m.matvec(
                        &xs[i * cols..(i + 1) * cols],
                        &mut b[i * rows..(i + 1) * rows],
                        &mut scratch,
                    )
                    .unwrap_or_else(|e| panic!("{e}"));
                }
                s.push(t.elapsed().as_secs_f64());
            }
            let macs = (n * rows * cols) as f64;
            let (g, s) = (median(g), median(s));
            println!(
                "{dt:?} n={n}: matmul {:.1} GMAC/s, matvecs {:.1} GMAC/s",
                macs / g / 1e9,
                macs / s / 1e9
            );
        }
    }
}

/// The hooks of one part of a benchmarked decode step: none, or the `steering` plan.
enum BenchHooks {
    Plain(NoHooks),
    Steer(SteeringHooks),
}

impl Hooks for BenchHooks {
    fn wants(&self, point: HookPoint) -> bool {
        match self {
            BenchHooks::Plain(h) => h.wants(point),
            BenchHooks::Steer(h) => h.wants(point),
        }
    }

    fn on_activation(
        &mut self,
        point: HookPoint,
        act: act_studio::runtime::Activation<'_>,
    ) -> act_studio::runtime::Result<act_studio::runtime::HookFlow> {
        match self {
            BenchHooks::Plain(h) => h.on_activation(point, act),
            BenchHooks::Steer(h) => h.on_activation(point, act),
        }
    }
}

/// Whole decode steps over `rows` rows of the demo model, as the server's batch engine runs
/// them (one forward pass per step over every row, on the decode pool), after a ≈30-token
/// prompt: the median ms per step of 32 steps and the tokens/s it gives, against one row.
fn decode_steps(reps: usize) {
    if !model_path().is_file() {
        eprintln!("SKIP: demo model not found at {}", model_path().display());
        return;
    }
    let m = LoadedModel::load(&model_path()).unwrap_or_else(|e| panic!("{e}"));
    let ids = m.tokenizer.encode(PROMPT).unwrap_or_default();
    let n = ids.len();
    let mut cache = vec![m.new_cache()];
    let b = Batch {
        tokens: &ids,
        batch: 1,
        seq: n,
        valid: &[n],
        prompt_lens: &[n],
    };
    let first = m
        .model
        .forward(&b, &mut cache, &mut NoHooks, MatPath::Quantized, LogitsMode::Last)
        .unwrap_or_else(|e| panic!("{e}"))
        .logits;
    let steps = 32;
    let mut single = 0.0;
    // `ACT_BENCH_STEER=1`: every row steered at 30 layers × 2 hook points (as `steering`).
    let steer = std::env::var_os("ACT_BENCH_STEER").is_some();
    // Built once: building its 60 maps before every step (as this bench once did) evicted the
    // caches the timed step then missed, and counted that as the cost of steering.
    let plan = steering_plan(&m);
    let only: Option<usize> = std::env::var("ACT_BENCH_ROWS").ok().and_then(|v| v.parse().ok());
    for rows in [1usize, 2, 4, 6, 8, 16] {
        if only.is_some_and(|o| o != rows && rows != 1) {
            continue;
        }
        let mut times = Vec::new();
        for _ in 0..reps {
            let mut caches: Vec<_> = (0..rows).map(|_| m.fork_cache(&cache[0], n + steps)).collect();
            let mut feed = vec![argmax(&first); rows];
            let (ones, lens) = (vec![1usize; rows], vec![n; rows]);
            for _ in 0..steps {
                let b = Batch {
                    tokens: &feed,
                    batch: rows,
                    seq: 1,
                    valid: &ones,
                    prompt_lens: &lens,
                };
                // As the batch engine runs a step: split per thread where `split_step` says
                // (`ACT_SPLIT_STEP=0` never, `1` always), each part with its own hooks.
                let ranges = split_step::part_ranges(rows, split_step::parts(&m.model, rows));
                let mut hooks: Vec<BenchHooks> = ranges
                    .iter()
                    .map(|_| match steer {
                        true => BenchHooks::Steer(SteeringHooks::from_plan(plan.clone())),
                        false => BenchHooks::Plain(NoHooks),
                    })
                    .collect();
                let t = Instant::now();
                let out = decode_pool()
                    .install(|| {
                        split_step::forward_parts(
                            &m.model,
                            &b,
                            &mut caches,
                            &ranges,
                            &mut hooks,
                            MatPath::Quantized,
                            LogitsMode::Last,
                        )
                    })
                    .unwrap_or_else(|e| panic!("{e}"));
                times.push(t.elapsed().as_secs_f64());
                let vocab = out.logits.len() / rows;
                feed = out.logits.chunks_exact(vocab).map(argmax).collect();
            }
        }
        let ms = median(times) * 1e3;
        let tps = rows as f64 / ms * 1e3;
        if rows == 1 {
            single = tps;
        }
        println!(
            "decode step, {rows} rows: {ms:.2} ms, {tps:.1} tok/s ({:.2}× one row)",
            tps / single
        );
    }
}

/// The sampler (`runtime::sampling::Sampler`) on a 49,152-token vocabulary (SmolLM2's) at
/// temperature 0.8, against the previous method as a baseline (rank every token by a full
/// sort of packed keys, softmax in rank order, walk): median µs per sampled token.
fn sampler_speed(reps: usize) {
    use act_studio::runtime::sampling::{Sampler, SamplingConfig};
    let n = 49_152;
    // Logit-like values: a few high ones over a wide, roughly normal body.
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32) / (1u64 << 24) as f32
    };
    let logits: Vec<f32> = (0..n)
        .map(|i| {
            let z: f32 = (0..4).map(|_| next()).sum::<f32>() - 2.0;
            z * 3.0 + if i % 5000 == 7 { 12.0 } else { 0.0 }
        })
        .collect();
    let baseline = |logits: &[f32], inv_t: f32, u: f32| -> u32 {
        let mut keys: Vec<u64> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let b = (l * inv_t).to_bits();
                let o = if b & 0x8000_0000 != 0 { !b } else { b | 0x8000_0000 };
                (u64::from(!o) << 32) | i as u64
            })
            .collect();
        keys.sort_unstable();
        let mut probs: Vec<(u32, f32)> = keys
            .iter()
            .map(|&k| {
                (
                    (k & 0xFFFF_FFFF) as u32,
                    logits[(k & 0xFFFF_FFFF) as usize] * inv_t,
                )
            })
            .collect();
        let max = probs[0].1;
        let mut sum = 0.0f32;
        for p in &mut probs {
            p.1 = (p.1 - max).exp();
            sum += p.1;
        }
        let mut u = u * sum;
        for &(t, p) in &probs {
            if u < p {
                return t;
            }
            u -= p;
        }
        0
    };
    for (label, top_k, top_p) in [
        ("top_p 1, top_k 0", 0, 1.0f32),
        ("top_p 0.9", 0, 0.9),
        ("top_k 50", 50, 1.0),
    ] {
        let mut s = Sampler::new(SamplingConfig {
            temperature: 0.8,
            top_k,
            top_p,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 1,
        });
        let (mut new, mut old) = (Vec::new(), Vec::new());
        let mut sink = 0u64;
        for r in 0..reps * 40 {
            let mut l = logits.clone();
            let t = Instant::now();
            sink += u64::from(s.sample(&mut l, &[]));
            new.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            sink += u64::from(baseline(&logits, 1.25, (r % 97) as f32 / 97.0));
            old.push(t.elapsed().as_secs_f64());
        }
        let (a, b) = (median(new), median(old));
        println!(
            "sampler ({label}, 49,152 tokens): {:.0} µs per token; full-sort baseline {:.0} µs ({:.1}×) [{sink}]",
            a * 1e6,
            b * 1e6,
            b / a
        );
    }
}
