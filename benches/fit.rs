//! Fitting benchmark on the demo model (`cargo bench --bench fit`): Linear-AcT at every
//! layer's post-ln hook point (30) on 256 source + 256 target sentences, side by side in one
//! run, medians of repeated runs:
//!
//! - one plain forward pass over the same 512 sentences (no hooks, the same length-sorted
//!   chunks the causal pass uses, one after another);
//! - causal estimation in one pass (chunks on threads meeting at every hook point);
//! - simultaneous estimation (one unsteered collection pass, then fit);
//! - the causal pass as one padded batch (no length sorting), for what chunking buys;
//! - peak RSS of causal and simultaneous fitting, each in a child process of its own.
//!
//! `ACT_BENCH_REPS` sets the repetitions (default 3).

use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use act_studio::pipeline::causal_pass::{CHUNK_TOKENS, causal_fit};
use act_studio::pipeline::collect::PaddedBatch;
use act_studio::pipeline::concepts::builtin_dataset;
use act_studio::pipeline::fit_model::{Estimation, fit_on_model};
use act_studio::pipeline::pooling::Pooling;
use act_studio::pipeline::presets::hook_points;
use act_studio::runtime::forward::LogitsMode;
use act_studio::runtime::linear::MatPath;
use act_studio::runtime::{LoadedModel, NoHooks};
use act_studio::transport::{FitConfig, Method};

fn model_path() -> std::path::PathBuf {
    std::env::var_os("ACT_DEMO_MODEL")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// 256 neutral sentences and 256 topic sentences (football, then cooking).
fn data() -> (Vec<String>, Vec<String>) {
    let mut source = ok(builtin_dataset("neutral")).samples;
    source.truncate(256);
    let mut target = ok(builtin_dataset("football")).samples;
    target.extend(ok(builtin_dataset("cooking")).samples);
    target.truncate(256);
    (source, target)
}

/// One plain forward pass over `texts` in length-sorted chunks of ≤ CHUNK_TOKENS padded tokens.
fn plain_forward(m: &LoadedModel, texts: &[String]) -> usize {
    let mut ids: Vec<Vec<u32>> = texts.iter().map(|t| ok(m.tokenizer.encode(t))).collect();
    ids.sort_by_key(Vec::len);
    let mut tokens_run = 0;
    let mut start = 0;
    while start < ids.len() {
        let mut end = start + 1;
        while end < ids.len() && (end + 1 - start) * ids[end].len() <= CHUNK_TOKENS {
            end += 1;
        }
        let rows = &ids[start..end];
        let padded = PaddedBatch::from_ids(rows.iter());
        let b = padded.batch();
        let mut caches: Vec<_> = rows.iter().map(|_| m.transient_cache()).collect();
        ok(m.model
            .forward(&b, &mut caches, &mut NoHooks, MatPath::Dense, LogitsMode::None));
        tokens_run += padded.valid.iter().sum::<usize>();
        start = end;
    }
    tokens_run
}

fn peak_rss_mib(args: &[&str]) -> Option<f64> {
    let exe = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/act-studio");
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(&exe)
        .args(args)
        .output()
        .ok()?;
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.contains("Maximum resident set size"))?;
    line.rsplit(':')
        .next()?
        .trim()
        .parse::<f64>()
        .ok()
        .map(|kb| kb / 1024.0)
}

fn main() {
    let path = model_path();
    if !path.exists() {
        eprintln!("skipped: {} missing (models/fetch-demo-model.sh)", path.display());
        return;
    }
    let reps: usize = std::env::var("ACT_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let m = ok(LoadedModel::load(&path));
    let (source, target) = data();
    let all: Vec<String> = source.iter().chain(&target).cloned().collect();
    let points = ok(hook_points("post-ln", m.config().n_layers));
    let config = FitConfig::new(Method::LinearAct);
    let no = AtomicBool::new(false);
    // Warm-up: dequantized weights for the dense path are made on first use.
    let tokens = plain_forward(&m, &all);
    let (mut plain, mut causal, mut simultaneous, mut one_batch) = (vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        let t = Instant::now();
        plain_forward(&m, &all);
        plain.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        ok(fit_on_model(
            &m,
            &source,
            &target,
            &points,
            Pooling::Mean,
            &config,
            Estimation::Causal,
            &no,
            &mut |_, _| {},
        ));
        causal.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        ok(fit_on_model(
            &m,
            &source,
            &target,
            &points,
            Pooling::Mean,
            &config,
            Estimation::Simultaneous,
            &no,
            &mut |_, _| {},
        ));
        simultaneous.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        ok(causal_fit(
            &m,
            &source,
            &target,
            &points,
            Pooling::Mean,
            &config,
            128,
            usize::MAX,
            &no,
            &mut |_, _| {},
        ));
        one_batch.push(t.elapsed().as_secs_f64());
    }
    let (p, c, s, o) = (
        median(plain),
        median(causal),
        median(simultaneous),
        median(one_batch),
    );
    println!(
        "fit: 256 + 256 sentences ({tokens} tokens), 30 post-ln hook points, Linear-AcT, {reps} reps, medians"
    );
    println!(
        "  plain forward pass       {p:>7.2} s  ({:.0} tok/s)",
        tokens as f64 / p
    );
    println!("  causal, one pass         {c:>7.2} s  = {:.2}× plain", c / p);
    println!(
        "  simultaneous             {s:>7.2} s  = {:.2}× plain; causal = {:.2}× simultaneous",
        s / p,
        c / s
    );
    println!(
        "  causal, one padded batch {o:>7.2} s  = {:.2}× chunked causal",
        o / c
    );
    let model = path.display().to_string();
    let tmp = std::env::temp_dir().join("act-bench-fit.safetensors");
    let out = tmp.display().to_string();
    let base = [
        "fit",
        "--model",
        &model,
        "--source",
        "builtin:neutral",
        "--target",
        "builtin:football",
        "--limit",
        "256",
        "--preset",
        "post-ln",
        "--out",
        &out,
    ];
    for (name, extra) in [("causal", None), ("simultaneous", Some("--simultaneous"))] {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra);
        match peak_rss_mib(&args) {
            Some(mib) => println!("  peak RSS, {name:<13} {mib:>7.0} MiB (fit CLI, 256 + 172 sentences)"),
            None => println!("  peak RSS, {name}: not measured (needs /usr/bin/time and a release build)"),
        }
    }
    let _ = std::fs::remove_file(tmp);
}
