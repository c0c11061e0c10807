//! Our runtime against llama.cpp on the real Gemma 3 270M file (base model, Q4_K_M;
//! `models/fetch-demo-model.sh gemma3-270m`), recorded once with llama-cpp-python
//! (`tools/record-llamacpp-gemma.py`, fixture `tests/fixtures/gemma3_270m_reference.json`):
//!
//! - tokenization of five prompts (BOS, chat markers, code, digits, emoji) equals llama.cpp's;
//! - greedy continuation (32 tokens, quantized path, as `act-studio generate` runs it) equals
//!   llama.cpp's token for token — except that a divergence is tolerated at a step where
//!   llama.cpp's own top two logits are within [`TIE`] (a near-tie that rounding may flip),
//!   and along llama.cpp's continuation (teacher-forced) its token must be our top token or at
//!   most [`MARGIN`] below it at every step;
//! - perplexity of four 256-token Wikipedia windows (the fixture's ids, so both sides score the
//!   same tokens), on the dense path and on the quantized path, within [`PPL_TOL`] of
//!   llama.cpp's, per window and overall.
//!
//! Measured (this fixture): see the constants' comments.

mod common;

use std::sync::atomic::AtomicBool;

use act_studio::pipeline::eval::perplexity::token_logprobs;
use act_studio::runtime::forward::{Batch, LogitsMode};
use act_studio::runtime::generate::log_softmax_at;
use act_studio::runtime::linear::MatPath;
use act_studio::runtime::{LoadedModel, NoHooks};
use sha2::{Digest, Sha256};

/// llama.cpp's top-two gap under which a divergence of greedy text is a near-tie. Measured: 4 of
/// the 5 continuations equal llama.cpp's for all 32 tokens; "Once upon a time" leaves it at step
/// 4 (" man" vs our " little"), where llama.cpp's own top two are 0.047 apart.
const TIE: f64 = 0.1;
/// Largest gap (logits) allowed between our top logit and llama.cpp's greedy token along its
/// continuation (quantized path). Measured: 0 at 159 of 160 steps, 0.178 at the near-tie above.
const MARGIN: f32 = 0.35;
/// Allowed |ours / llama.cpp − 1| of perplexity. Per window, llama.cpp's figure is either of its
/// two KV-cache types (default f16, or f32 as ours), because on 255 predicted tokens they
/// differ by up to 0.95 % between themselves. Measured: overall 0.23 % (dense) and 0.44 %
/// (quantized) from llama.cpp's default; per window at most 0.39 % (dense) and 0.48 %
/// (quantized) from the nearer of its two figures (1.14 % from the default alone, quantized
/// path, passage 0).
const PPL_TOL: f64 = 0.01;

#[derive(serde::Deserialize)]
struct Record {
    prompt: String,
    tokens: Vec<u32>,
    greedy: Vec<u32>,
    margin: Vec<f64>,
}

#[derive(serde::Deserialize)]
struct Window {
    passage: usize,
    ids: Vec<u32>,
    nll: f64,
    nll_f32_kv: f64,
}

#[derive(serde::Deserialize)]
struct Fixture {
    model: String,
    model_sha256: String,
    new_tokens: usize,
    stop_tokens: Vec<u32>,
    records: Vec<Record>,
    windows: Vec<Window>,
}

/// Teacher-forced logits of every position of `seq` (one forward pass, `path`).
fn all_logits(m: &LoadedModel, seq: &[u32], path: MatPath) -> Vec<f32> {
    let n = seq.len();
    let batch = Batch {
        tokens: seq,
        batch: 1,
        seq: n,
        valid: &[n],
        prompt_lens: &[n],
    };
    let mut cache = vec![m.new_cache()];
    m.model
        .forward(&batch, &mut cache, &mut NoHooks, path, LogitsMode::All)
        .unwrap_or_else(|e| panic!("{e}"))
        .logits
}

fn load() -> Option<(LoadedModel, Fixture)> {
    let path = common::gemma_model()?;
    let fx: Fixture = serde_json::from_str(include_str!("fixtures/gemma3_270m_reference.json"))
        .unwrap_or_else(|e| panic!("fixture: {e}"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        sha,
        fx.model_sha256,
        "{} is not the file the fixture was recorded on ({})",
        path.display(),
        fx.model
    );
    let m = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    Some((m, fx))
}

#[test]
fn gemma_tokens_and_greedy_text_equal_llama_cpps() {
    let Some((m, fx)) = load() else { return };
    let vocab = m.config().vocab_size;
    let (mut worst, mut agree, mut total, mut equal) = (0f32, 0usize, 0usize, 0usize);
    for r in &fx.records {
        let ids = m.tokenizer.encode(&r.prompt).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids, r.tokens, "tokenization of {:?}", r.prompt);
        let got = common::greedy(&m, &ids, fx.new_tokens);
        // `generate` drops the stop token; llama.cpp's record ends with it.
        let want: Vec<u32> = r
            .greedy
            .iter()
            .copied()
            .filter(|t| !fx.stop_tokens.contains(t))
            .collect();
        let same = got.tokens.iter().zip(&want).take_while(|(a, b)| a == b).count();
        println!(
            "{:?} → {:?} (first {same} of {} tokens as llama.cpp)",
            r.prompt,
            got.text,
            want.len()
        );
        if got.tokens == want {
            equal += 1;
        } else {
            // Past llama.cpp's record (ours ran longer) there is no near-tie to excuse it.
            let gap = r.margin.get(same).copied().unwrap_or(f64::INFINITY);
            println!("  (leaves llama.cpp's at step {same}, where its top two are {gap:.3} apart)");
            assert!(
                gap < TIE,
                "{:?}: greedy text leaves llama.cpp's at step {same} (ours {:?}, llama.cpp {:?}), \
                 where llama.cpp's top two are {gap:.3} apart (not a near-tie, limit {TIE})",
                r.prompt,
                got.tokens.get(same),
                want.get(same)
            );
        }
        // Teacher-forced along llama.cpp's continuation.
        let seq: Vec<u32> = ids.iter().chain(&r.greedy).copied().collect();
        // On the quantized path and on the tiled prompt product (`generate` prefills a
        // prompt of ≥ 32 tokens with it).
        for path in [MatPath::Quantized, MatPath::Tiled] {
            let logits = all_logits(&m, &seq[..seq.len() - 1], path);
            for (k, &t) in r.greedy.iter().enumerate() {
                let row = &logits[(ids.len() - 1 + k) * vocab..][..vocab];
                let top = row.iter().copied().fold(f32::MIN, f32::max);
                let margin = top - row[t as usize];
                worst = worst.max(margin);
                agree += usize::from(margin == 0.0);
                total += 1;
                assert!(
                    margin <= MARGIN,
                    "{:?}, {path:?}, step {k}: llama.cpp's token {t} is {margin} below our top logit \
                 (llama.cpp's own top-two gap {:.3})",
                    r.prompt,
                    r.margin[k]
                );
            }
        }
    }
    println!(
        "greedy text equal for {equal} of {} prompts; llama.cpp's token is our top token at \
         {agree} of {total} teacher-forced steps, largest gap {worst:.3} (limit {MARGIN})",
        fx.records.len()
    );
}

#[test]
fn gemma_perplexity_within_one_percent_of_llama_cpps() {
    let Some((m, fx)) = load() else { return };
    let seqs: Vec<Vec<u32>> = fx.windows.iter().map(|w| w.ids.clone()).collect();
    let dense = token_logprobs(&m, &seqs, &mut NoHooks, &AtomicBool::new(false), &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{e}"));
    let vocab = m.config().vocab_size;
    let on_path = |path| -> Vec<Vec<f64>> {
        seqs.iter()
            .map(|s| {
                let logits = all_logits(&m, &s[..s.len() - 1], path);
                (0..s.len() - 1)
                    .map(|t| log_softmax_at(&logits[t * vocab..(t + 1) * vocab], s[t + 1] as usize))
                    .collect()
            })
            .collect()
    };
    let (quantized, tiled) = (on_path(MatPath::Quantized), on_path(MatPath::Tiled));
    let theirs_total: f64 = fx
        .windows
        .iter()
        .map(|w| w.nll * (w.ids.len() - 1) as f64)
        .sum::<f64>();
    let n_total: usize = fx.windows.iter().map(|w| w.ids.len() - 1).sum();
    let theirs_ppl = (theirs_total / n_total as f64).exp();
    let mut failures = Vec::new();
    for (name, lps) in [("dense", &dense), ("quantized", &quantized), ("tiled", &tiled)] {
        let mut sum = 0f64;
        for (w, lp) in fx.windows.iter().zip(lps.iter()) {
            assert_eq!(lp.len(), w.ids.len() - 1);
            sum -= lp.iter().sum::<f64>();
            let nll = -lp.iter().sum::<f64>() / lp.len() as f64;
            let (ours, theirs) = (nll.exp(), w.nll.exp());
            let theirs_f32 = w.nll_f32_kv.exp();
            let line = format!(
                "{name}: passage {}: perplexity ours {ours:.4}, llama.cpp {theirs:.4} (ratio \
                 {:.5}), llama.cpp with an f32 KV cache {theirs_f32:.4} (ratio {:.5})",
                w.passage,
                ours / theirs,
                ours / theirs_f32
            );
            println!("{line}");
            let off = (ours / theirs - 1.0).abs().min((ours / theirs_f32 - 1.0).abs());
            if off >= PPL_TOL {
                failures.push(line);
            }
        }
        let ours = (sum / n_total as f64).exp();
        let line = format!(
            "{name}: overall perplexity ours {ours:.4}, llama.cpp {theirs_ppl:.4}, ratio {:.5}",
            ours / theirs_ppl
        );
        println!("{line}");
        if (ours / theirs_ppl - 1.0).abs() >= PPL_TOL {
            failures.push(line);
        }
    }
    assert!(
        failures.is_empty(),
        "perplexity off llama.cpp's by {PPL_TOL} or more:\n{}",
        failures.join("\n")
    );
}
