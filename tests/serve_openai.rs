//! `act-studio serve` on the demo model, driven by a client nobody here wrote: the official
//! `openai` Python package (`.ci/run` installs it into `target/py-openai`; `ACT_PY_OPENAI`
//! points elsewhere). The script (`tests/serve/openai_client.py`) checks chat and text
//! completions, streaming and not, steering (λ = 0 equals unsteered, λ = 1 changes the text),
//! stop sequences, `n`, log-probabilities, `echo` (a prompt scored with `max_tokens` 0, as
//! lm-evaluation-harness asks, and echoed before a completion), 8 concurrent requests against
//! the same requests one at a time, every bad request's status and message, and that a client
//! going away stops its decoding. Here the unsteered greedy texts, the served log-probabilities
//! and the echoed prompt's are also compared with the library's own decoding.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;

use act_studio::pipeline::fit_concept::fit_concept;
use act_studio::runtime::LoadedModel;

/// The directory holding the `openai` package, or `None` (after printing why) outside CI.
fn openai_package() -> Option<PathBuf> {
    let dir = std::env::var_os("ACT_PY_OPENAI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-openai"));
    let ok = Command::new("python3")
        .args(["-c", "import openai"])
        .env("PYTHONPATH", &dir)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the openai package is missing in CI (.ci/run installs it into {})",
        dir.display()
    );
    eprintln!(
        "SKIP: the openai Python package is not importable from {} (python3 -m pip install --target {} openai)",
        dir.display(),
        dir.display()
    );
    None
}

/// Fits built-in `concept` on 24 + 24 samples (`fit`'s defaults) and saves it under `dir`.
fn fit_to(m: &LoadedModel, concept: &str, dir: &Path) -> PathBuf {
    let req = common::builtin_fit(concept, Some(24));
    let fitted = fit_concept(m, &req, &AtomicBool::new(false), &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join(format!("{concept}.safetensors"));
    fitted.maps.save(&path).unwrap_or_else(|e| panic!("{e}"));
    path
}

/// `log p(tokens[i] | prompt, tokens[..i])` from the quantized path's logits, the prompt in
/// one pass and each token after it alone (log-softmax in f64, written out here).
fn teacher_forced_logprobs(m: &LoadedModel, prompt: &[u32], tokens: &[u32]) -> Vec<f64> {
    use act_studio::runtime::forward::{Batch, LogitsMode};
    use act_studio::runtime::hooks::NoHooks;
    use act_studio::runtime::linear::MatPath;
    let log_softmax_at = |logits: &[f32], t: u32| {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
        logits[t as usize] as f64 - max - z.ln()
    };
    let mut cache = vec![m.new_cache()];
    let mut logits =
        act_studio::runtime::generate::prefill(m, prompt, &mut cache, &mut NoHooks, MatPath::Quantized)
            .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    for &t in tokens {
        out.push(log_softmax_at(&logits, t));
        let b = Batch {
            tokens: &[t],
            batch: 1,
            seq: 1,
            valid: &[1],
            prompt_lens: &[prompt.len()],
        };
        logits = m
            .model
            .forward(&b, &mut cache, &mut NoHooks, MatPath::Quantized, LogitsMode::Last)
            .unwrap_or_else(|e| panic!("{e}"))
            .logits;
    }
    out
}

/// `log p(prompt[i] | prompt[..i])` for i ≥ 1 from one forward pass over the whole prompt with
/// every position's logits, on the quantized prompt path (log-softmax in f64, written out here).
fn prompt_logprobs(m: &LoadedModel, prompt: &[u32]) -> Vec<f64> {
    use act_studio::runtime::forward::{Batch, LogitsMode};
    use act_studio::runtime::hooks::NoHooks;
    use act_studio::runtime::linear::MatPath;
    let b = Batch {
        tokens: prompt,
        batch: 1,
        seq: prompt.len(),
        valid: &[prompt.len()],
        prompt_lens: &[prompt.len()],
    };
    let mut cache = vec![m.new_cache()];
    let logits = m
        .model
        .forward(
            &b,
            &mut cache,
            &mut NoHooks,
            MatPath::Quantized.for_prompt(),
            LogitsMode::All,
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .logits;
    let vocab = m.config().vocab_size;
    logits
        .chunks_exact(vocab)
        .zip(&prompt[1..])
        .map(|(l, &t)| {
            let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = l.iter().map(|&x| (x as f64 - max).exp()).sum();
            l[t as usize] as f64 - max - z.ln()
        })
        .collect()
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_openai_client_gets_steered_completions() {
    let Some(model) = common::demo_model() else {
        return;
    };
    let Some(py) = openai_package() else {
        return;
    };
    let m = LoadedModel::load(&model).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let football = fit_to(&m, "football", dir.path());
    let other = fit_to(&m, "sentiment", dir.path());
    let key = "test-key-123";
    let mut child = Command::new(env!("CARGO_BIN_EXE_act-studio"))
        .args(["serve", "--model"])
        .arg(&model)
        .arg("--maps")
        .arg(&football)
        .arg("--maps")
        .arg(&other)
        .args(["--port", "0", "--max-body-bytes", "65536", "--api-key", key])
        .args(["--alias", "act-demo"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting the server: {e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let server = Server(child);
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the server exited before listening"))
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("server: {line}");
        if let Some(rest) = line.split(" at http://").nth(1) {
            let url = rest.split_whitespace().next().unwrap_or_default();
            break url.trim_end_matches("/v1").to_string();
        }
    };
    // Keep draining the server's stderr so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(|l| eprintln!("server: {}", l.unwrap_or_default())));
    let out = dir.path().join("results.json");
    let status = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/openai_client.py"))
        .arg(format!("http://{addr}/v1"))
        .args([key, "football", "sentiment"])
        .arg(&out)
        .env("PYTHONPATH", &py)
        .status()
        .unwrap_or_else(|e| panic!("running python3: {e}"));
    assert!(status.success(), "the openai client checks failed (see above)");
    drop(server);

    // The server's unsteered greedy texts are the library's own.
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    let prompt = "My favourite thing to do on a Saturday is";
    let ids = m.tokenizer.encode(prompt).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(results["completion_prompt_tokens"], ids.len());
    let g = common::greedy(&m, &ids, 24);
    assert_eq!(results["completion_plain"], g.text.as_str());
    // The served log-probabilities are log-softmax of the library's own logits for the same
    // tokens, fed one at a time on the quantized path as the server decodes them.
    let served: Vec<f64> = results["completion_logprobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no completion_logprobs"))
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect();
    assert_eq!(served.len(), g.tokens.len());
    let own = teacher_forced_logprobs(&m, &ids, &g.tokens);
    let worst = served
        .iter()
        .zip(&own)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("served vs library log-probabilities: largest difference {worst:.2e}");
    for (i, (a, b)) in served.iter().zip(&own).enumerate() {
        assert!((a - b).abs() < 1e-3, "token {i}: served {a}, library {b}");
    }
    // The echoed prompt's log-probabilities: each prompt token given the ones before it, as
    // log-softmax of the logits of one forward pass over the whole prompt on the prompt path
    // (as the server runs it), and close to feeding the prompt one token at a time (which
    // differs by the activations' 8-bit rounding, a few hundredths at most here).
    let echoed: Vec<f64> = results["echo_logprobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no echo_logprobs"))
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect();
    assert_eq!(echoed.len(), ids.len() - 1);
    let all = prompt_logprobs(&m, &ids);
    let one_by_one = teacher_forced_logprobs(&m, &ids[..1], &ids[1..]);
    for (i, ((a, b), c)) in echoed.iter().zip(&all).zip(&one_by_one).enumerate() {
        assert!(
            (a - b).abs() < 1e-4,
            "prompt token {}: served {a}, library {b}",
            i + 1
        );
        assert!(
            (a - c).abs() < 0.1,
            "prompt token {}: served {a}, one at a time {c}",
            i + 1
        );
    }
    let chat = act_studio::pipeline::generate_text::prompt_ids(&m, "Tell me about your weekend.", true, "")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(results["chat_plain"], common::greedy(&m, &chat, 24).text.as_str());
}
