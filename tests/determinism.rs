//! Reproducibility on the demo model: the same seed gives the same maps and the same tokens
//! whatever the thread count, and a row decoded in a batch equals the same seed drawn alone;
//! the app's two columns, streamed together, equal each column generated alone.
//!
//! Why it matters: a toxicity test once passed in CI and failed on another 2-core machine with
//! the same commit, because the dense path's matrix products (candle's `gemm`) summed in blocks
//! sized from the CPU's L1 cache, so fitted maps — and the tokens sampled with them — changed
//! from machine to machine. The dense products now have one summation order
//! (`runtime::dense`, checked bit for bit against a scalar oracle in its unit tests); these
//! tests pin the rest: thread splits (the whole CLI run with `RAYON_NUM_THREADS` and `ACT_THREADS` 1, 2 and 3) and
//! batching (per-row RNG streams, row-independent kernels).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sha2::{Digest, Sha256};

use act_studio::pipeline::dataset::DatasetSpec;
use act_studio::pipeline::fit_concept::{FitRequest, fit_concept};
use act_studio::pipeline::fit_model::Estimation;
use act_studio::pipeline::generate_text::{Column, TextEvent, TextRequest, generate_text};
use act_studio::pipeline::pooling::Pooling;
use act_studio::runtime::LoadedModel;
use act_studio::runtime::NoHooks;
use act_studio::runtime::generate::{GenerateOptions, generate};
use act_studio::runtime::generate_many::generate_many;
use act_studio::runtime::linear::MatPath;
use act_studio::runtime::sampling::SamplingConfig;
use act_studio::runtime::steer::SteeringHooks;
use act_studio::transport::maps_file::hex;
use act_studio::transport::{MapsFile, Method, SteeringStack};

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the CLI with `RAYON_NUM_THREADS=threads` and `ACT_THREADS=threads` (our pool); panics with its stderr on failure.
fn cli_with_threads(threads: usize, args: &[&str]) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_act-studio"))
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("ACT_THREADS", threads.to_string())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run act-studio: {e}"));
    assert!(
        o.status.success(),
        "act-studio {args:?} with {threads} threads failed: {}",
        common::text(&o.stderr)
    );
}

/// Every hook's ω, β, lo, hi as raw bits, in hook order.
fn map_bits(path: &Path) -> Vec<(String, Vec<u32>)> {
    let f = ok(MapsFile::load(path));
    f.hooks()
        .map(|(name, h)| {
            let bits = [h.omega(), h.beta(), h.lo(), h.hi()]
                .concat()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            (name.to_string(), bits)
        })
        .collect()
}

#[test]
fn fit_and_sweep_give_identical_bits_with_one_two_and_three_threads() {
    let Some(model) = common::demo_model() else { return };
    let model = model.to_string_lossy().into_owned();
    let dir = ok(tempfile::tempdir());
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let mut maps = Vec::new();
    let mut gens = Vec::new();
    for threads in [1, 2, 3] {
        let (m, g) = (
            p(&format!("maps{threads}.safetensors")),
            p(&format!("g{threads}.jsonl")),
        );
        cli_with_threads(
            threads,
            &[
                "fit",
                "--model",
                &model,
                "--concept",
                "football",
                "--limit",
                "24",
                "--out",
                &m,
            ],
        );
        cli_with_threads(
            threads,
            &[
                "sweep",
                "--model",
                &model,
                "--maps",
                &m,
                "--lambdas",
                "0,0.5,1",
                "--prompts",
                "builtin:toxic-prompts",
                "--prompt-limit",
                "2",
                "--samples",
                "3",
                "--max-tokens",
                "16",
                "--heldout-samples",
                "0",
                "--csv",
                &p(&format!("s{threads}.csv")),
                "--generations",
                &g,
            ],
        );
        maps.push(map_bits(Path::new(&m)));
        gens.push(ok(std::fs::read_to_string(&g)));
    }
    assert!(!maps[0].is_empty());
    assert_eq!(gens[0].lines().count(), 3 * 2 * 3, "{}", gens[0]);
    for t in 1..3 {
        for ((name, a), (_, b)) in maps[0].iter().zip(&maps[t]) {
            assert!(a == b, "{name}: maps fitted with 1 and {} threads differ", t + 1);
        }
        assert_eq!(
            gens[0],
            gens[t],
            "samples drawn with 1 and {} threads differ",
            t + 1
        );
    }
    // Across machines and build profiles: the digests recorded when this test was written (AMD
    // EPYC, 32 KiB L1d, debug and release builds alike). A change of numerics on purpose (a new
    // kernel, another summation order) changes them: check the new values are the same in debug
    // and release, then record them. Any other difference means results depend on the machine.
    let mut h = Sha256::new();
    for (name, bits) in &maps[0] {
        h.update(name.as_bytes());
        bits.iter().for_each(|b| h.update(b.to_le_bytes()));
    }
    let maps_digest = hex(&h.finalize());
    let gens_digest = hex(&Sha256::digest(gens[0].as_bytes()));
    println!("maps digest {maps_digest}\nsamples digest {gens_digest}");
    assert_eq!(
        maps_digest, MAPS_DIGEST,
        "the fitted maps differ from the recorded ones"
    );
    assert_eq!(
        gens_digest, SAMPLES_DIGEST,
        "the samples differ from the recorded ones"
    );
}

/// SHA-256 of the football maps' ω, β, lo, hi bits (hook name, then values) of the test above.
const MAPS_DIGEST: &str = "a19d287e6edc0518b26c47d8d12167ad6e0d2bfeb7df0f5c7b2aa5aef2af6085";
/// SHA-256 of the samples file of the test above.
const SAMPLES_DIGEST: &str = "9b218218fe4b8ed8d7cda8c3563a034bae159f0144f1c6a283f3d166a519b09d";

#[test]
fn a_batched_row_equals_its_seed_drawn_alone_under_steering() {
    let Some(path) = common::demo_model() else { return };
    let m = ok(LoadedModel::load(&path));
    let no = AtomicBool::new(false);
    let req = FitRequest {
        name: "football".into(),
        source: DatasetSpec::Builtin("neutral".into()),
        target: DatasetSpec::Builtin("football".into()),
        limit: Some(16),
        method: Method::LinearAct,
        preset: "post-ln".into(),
        pooling: Pooling::Mean,
        support: None,
        estimation: Estimation::Causal,
        keep_samples: false,
    };
    let fitted = ok(fit_concept(&m, &req, &no, &mut |_| {}));
    let mut stack = SteeringStack::default();
    stack.push(Arc::new(fitted.maps), 0.7);
    let c = m.config();
    let opts = GenerateOptions {
        max_tokens: 20,
        sampling: SamplingConfig {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.95,
            repetition_penalty: 1.1,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 11,
        },
        path: MatPath::Quantized,
    };
    let prompt = ok(m.tokenizer.encode("The neighbours were shouting again and I"));
    let mut hooks = ok(SteeringHooks::new(&stack, c.n_layers, c.hidden_size));
    let rows = ok(generate_many(&m, &prompt, 4, &opts, &mut hooks, &no, &mut |_| {}));
    for (i, row) in rows.iter().enumerate() {
        let alone_opts = GenerateOptions {
            sampling: SamplingConfig {
                seed: opts.sampling.seed + i as u64,
                ..opts.sampling
            },
            ..opts
        };
        let mut hooks = ok(SteeringHooks::new(&stack, c.n_layers, c.hidden_size));
        let alone = ok(generate(&m, &prompt, &alone_opts, &mut hooks, &no, &mut |_| true));
        assert_eq!(
            row.tokens,
            alone.tokens,
            "row {i} of the batch differs from seed {} alone",
            11 + i
        );
    }
    let distinct: std::collections::HashSet<_> = rows.iter().map(|r| r.tokens.clone()).collect();
    assert!(
        distinct.len() > 1,
        "every row drew the same tokens: seeds are not per row"
    );

    // The two columns streamed together (a token of each in turn) are each what they are
    // generated alone with the same seed.
    let req = TextRequest {
        prompt: String::new(),
        chat: false,
        system: String::new(),
        options: opts,
        stack: stack.clone(),
        unsteered: true,
    };
    let mut texts = [String::new(), String::new()];
    let mut order = Vec::new();
    let both = ok(generate_text(&m, &req, &prompt, &no, &mut |e| {
        if let TextEvent::Piece(col, piece) = e {
            texts[(col == Column::Steered) as usize].push_str(piece);
            order.push(col);
        }
    }));
    let unsteered = ok(generate(&m, &prompt, &opts, &mut NoHooks, &no, &mut |_| true));
    let mut hooks = ok(SteeringHooks::new(&stack, c.n_layers, c.hidden_size));
    let steered = ok(generate(&m, &prompt, &opts, &mut hooks, &no, &mut |_| true));
    assert_eq!(
        texts[0], unsteered.text,
        "the unsteered column differs from it alone"
    );
    assert_eq!(texts[1], steered.text, "the steered column differs from it alone");
    assert_eq!(both.tokens, steered.tokens);
    assert_ne!(unsteered.text, steered.text, "λ = 0.7 changes the text");
    // They interleave: the steered column starts before the unsteered one ends.
    let first_steered = order.iter().position(|c| *c == Column::Steered);
    let last_unsteered = order.iter().rposition(|c| *c == Column::Unsteered);
    assert!(
        matches!((first_steered, last_unsteered), (Some(f), Some(l)) if f < l),
        "the columns did not stream together: {order:?}"
    );
}
