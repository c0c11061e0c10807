//! Shared helpers for integration tests.
#![allow(dead_code)]

pub mod app;

use std::path::PathBuf;

/// |a − e| ≤ tol · max(1, |e|) for every element; panics naming the first offender.
pub fn assert_close(actual: &[f32], expected: &[f32], tol: f32, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let ok = (a - e).abs() <= tol * e.abs().max(1.0) || (a.is_infinite() && a == e);
        assert!(ok, "{what}[{i}]: got {a}, expected {e} (tol {tol})");
    }
}

/// The demo model (SmolLM2-135M-Instruct Q4_1; `ACT_DEMO_MODEL` overrides the path), or `None`
/// (after printing why) when it is absent outside CI. In CI a missing model fails the test: CI
/// fetches it first.
pub fn demo_model() -> Option<PathBuf> {
    model_file(
        "ACT_DEMO_MODEL",
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "models/fetch-demo-model.sh",
    )
}

/// The second real test model, Gemma 3 270M Q4_K_M (`ACT_GEMMA_MODEL` overrides the path), or
/// `None` (after printing why) when it is absent outside CI; in CI a missing file fails.
pub fn gemma_model() -> Option<PathBuf> {
    model_file(
        "ACT_GEMMA_MODEL",
        "models/gemma-3-270m-q4_k_m.gguf",
        "models/fetch-demo-model.sh gemma3-270m",
    )
}

fn model_file(env: &str, default: &str, fetch: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(default));
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "model {} is missing in CI ({fetch} should have fetched it)",
        p.display()
    );
    eprintln!("SKIP: model {} not found (run {fetch})", p.display());
    None
}

/// Greedy continuation of `ids` (at most `max_tokens` new tokens, quantized path, no hooks),
/// as `act-studio generate --temperature 0` runs it.
pub fn greedy(
    m: &act_studio::runtime::LoadedModel,
    ids: &[u32],
    max_tokens: usize,
) -> act_studio::runtime::generate::Generation {
    use act_studio::runtime::generate::{GenerateOptions, generate};
    let opts = GenerateOptions {
        max_tokens,
        sampling: act_studio::runtime::sampling::SamplingConfig::greedy(),
        path: act_studio::runtime::linear::MatPath::Quantized,
    };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    generate(
        m,
        ids,
        &opts,
        &mut act_studio::runtime::NoHooks,
        &cancel,
        &mut |_| true,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the `act-studio` binary with `args`.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_act-studio"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run act-studio: {e}"))
}

/// Process output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs one text alone through the model (dense path, no logits) with `hooks`.
pub fn forward_alone(
    m: &act_studio::runtime::LoadedModel,
    text: &str,
    hooks: &mut dyn act_studio::runtime::Hooks,
) {
    use act_studio::runtime::forward::{Batch, LogitsMode};
    use act_studio::runtime::linear::MatPath;
    let ids = m.tokenizer.encode(text).unwrap_or_else(|e| panic!("{e}"));
    let b = Batch {
        tokens: &ids,
        batch: 1,
        seq: ids.len(),
        valid: &[ids.len()],
        prompt_lens: &[ids.len()],
    };
    m.model
        .forward(&b, &mut [m.new_cache()], hooks, MatPath::Dense, LogitsMode::None)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A whole HTTP/1.1 exchange with `addr` (`HOST:PORT`) over a fresh connection: (status,
/// body).
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    exchange(addr, method, path, body, "")
}

/// [`http`] with `Authorization: Bearer KEY`.
pub fn http_with_key(addr: &str, method: &str, path: &str, body: &str, key: &str) -> (u16, String) {
    exchange(
        addr,
        method,
        path,
        body,
        &format!("Authorization: Bearer {key}\r\n"),
    )
}

fn exchange(addr: &str, method: &str, path: &str, body: &str, extra_headers: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         {extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap_or_else(|e| panic!("{e}"));
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The body of `GET {base}{path}` (`base` = `http://HOST:PORT/v1`); panics unless the status
/// is 200.
pub fn http_get(base: &str, path: &str) -> String {
    let rest = base.trim_start_matches("http://");
    let (addr, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let (status, body) = http(addr, "GET", &format!("/{prefix}{path}"), "");
    assert_eq!(status, 200, "GET {base}{path}: {body}");
    body
}

/// A fit of built-in concept `concept` with `fit`'s defaults (Linear-AcT, its default support,
/// the default preset, mean pooling, causal), on the first `limit` samples of each side.
pub fn builtin_fit(concept: &str, limit: Option<usize>) -> act_studio::pipeline::fit_concept::FitRequest {
    use act_studio::pipeline::dataset::DatasetSpec;
    let c = act_studio::pipeline::concepts::builtin_concept(concept).unwrap_or_else(|e| panic!("{e}"));
    act_studio::pipeline::fit_concept::FitRequest {
        name: concept.into(),
        source: DatasetSpec::Builtin(c.source.clone()),
        target: DatasetSpec::Builtin(c.target.clone()),
        limit,
        method: act_studio::transport::Method::LinearAct,
        preset: act_studio::pipeline::presets::DEFAULT_PRESET.into(),
        pooling: act_studio::pipeline::pooling::Pooling::Mean,
        support: None,
        estimation: act_studio::pipeline::fit_model::Estimation::Causal,
        keep_samples: false,
    }
}
