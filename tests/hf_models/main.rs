//! Hugging Face model folders (tiny random-weight Llama, Qwen2, GPT-2, Gemma 2 and Gemma 3
//! written in the real layout): our loader and forward pass against candle-transformers'
//! `llama`, `qwen2`, `gemma2`, `gemma3` and a candle-ops GPT-2 reference on the same files
//! (Gemma also as GGUF: `gemma.rs`); F16/BF16 and sharded weights; errors; padding;
//! the local hub cache. Nothing is downloaded.

mod fitting;
mod fixtures;
mod gemma;
mod gpt2_reference;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use act_studio::runtime::forward::{Batch, LogitsMode};
use act_studio::runtime::generate::{GenerateOptions, generate};
use act_studio::runtime::linear::MatPath;
use act_studio::runtime::sampling::{SamplingConfig, argmax};
use act_studio::runtime::{
    Activation, HookFlow, HookKind, HookPoint, Hooks, LoadedModel, NoHooks, RuntimeError, discover_hf_cache,
};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fixtures::{F32, Layout, TinyModel};

/// Token sequences the oracles run (prefill), each followed by [`DECODE`] one at a time.
const SEQS: [&[u32]; 3] = [
    &[0, 2, 3, 4, 5, 2, 6],
    &[7],
    &[0, 8, 9, 10, 11, 40, 41, 42, 43, 44, 45, 99, 98, 12, 13, 14],
];
const DECODE: [u32; 3] = [17, 3, 55];

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn load(dir: &Path) -> LoadedModel {
    ok(LoadedModel::load(dir))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Our last-token logits after prefill, then after each decode token (cache carried).
fn ours_steps(m: &LoadedModel, prompt: &[u32], decode: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = vec![m.new_cache()];
    let mut out = Vec::new();
    let mut chunk = prompt.to_vec();
    for next in decode.iter().map(Some).chain([None]) {
        let b = Batch {
            tokens: &chunk,
            batch: 1,
            seq: chunk.len(),
            valid: &[chunk.len()],
            prompt_lens: &[chunk.len()],
        };
        out.push(
            ok(m.model
                .forward(&b, &mut cache, &mut NoHooks, MatPath::Dense, LogitsMode::Last))
            .logits,
        );
        match next {
            Some(&t) => chunk = vec![t],
            None => break,
        }
    }
    out
}

/// The same steps on a candle-transformers model (`step(ids, position)` → last logits).
fn candle_steps(
    prompt: &[u32],
    decode: &[u32],
    mut step: impl FnMut(&Tensor, usize) -> Tensor,
) -> Vec<Vec<f32>> {
    let input = |ids: &[u32]| ok(ok(Tensor::new(ids, &Device::Cpu)).unsqueeze(0));
    let flat = |t: Tensor| ok(ok(t.flatten_all()).to_vec1::<f32>());
    let mut out = vec![flat(step(&input(prompt), 0))];
    for (i, &t) in decode.iter().enumerate() {
        out.push(flat(step(&input(&[t]), prompt.len() + i)));
    }
    out
}

fn candle_llama(dir: &Path, files: &[std::path::PathBuf]) -> Vec<Vec<Vec<f32>>> {
    use candle_transformers::models::llama::{Cache, Llama, LlamaConfig};
    let cfg: LlamaConfig = ok(serde_json::from_str(&ok(std::fs::read_to_string(
        dir.join("config.json"),
    ))));
    let cfg = cfg.into_config(false);
    let vb = VarBuilder::from_tensors(fixtures::load_all(files), DType::F32, &Device::Cpu);
    let model = ok(Llama::load(vb, &cfg));
    SEQS.iter()
        .map(|s| {
            let mut cache = ok(Cache::new(true, DType::F32, &cfg, &Device::Cpu));
            candle_steps(s, &DECODE, |x, pos| ok(model.forward(x, pos, &mut cache)))
        })
        .collect()
}

fn candle_qwen2(dir: &Path, files: &[std::path::PathBuf]) -> Vec<Vec<Vec<f32>>> {
    use candle_transformers::models::qwen2::{Config, ModelForCausalLM};
    let cfg: Config = ok(serde_json::from_str(&ok(std::fs::read_to_string(
        dir.join("config.json"),
    ))));
    let vb = VarBuilder::from_tensors(fixtures::load_all(files), DType::F32, &Device::Cpu);
    let mut model = ok(ModelForCausalLM::new(&cfg, vb));
    SEQS.iter()
        .map(|s| {
            model.clear_kv_cache();
            candle_steps(s, &DECODE, |x, pos| ok(model.forward(x, pos)))
        })
        .collect()
}

/// GPT-2 reference: the whole sequence recomputed at every step.
fn reference_gpt2(files: &[std::path::PathBuf]) -> Vec<Vec<Vec<f32>>> {
    let w = fixtures::load_all(files);
    SEQS.iter()
        .map(|s| {
            let full: Vec<u32> = s.iter().chain(&DECODE).copied().collect();
            let run = gpt2_reference::run(&w, &full, 2, 4, 1e-5);
            (0..=DECODE.len())
                .map(|i| run.logits[s.len() - 1 + i].clone())
                .collect()
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Arch {
    Llama,
    Qwen2,
    Gpt2,
}

fn tiny(arch: Arch) -> TinyModel {
    match arch {
        Arch::Llama => fixtures::llama_like(false, 1),
        Arch::Qwen2 => fixtures::llama_like(true, 2),
        Arch::Gpt2 => fixtures::gpt2(3, false),
    }
}

fn reference(arch: Arch, dir: &Path, files: &[std::path::PathBuf]) -> Vec<Vec<Vec<f32>>> {
    match arch {
        Arch::Llama => candle_llama(dir, files),
        Arch::Qwen2 => candle_qwen2(dir, files),
        Arch::Gpt2 => reference_gpt2(files),
    }
}

/// Max |Δ| of our logits against the reference over every sequence and decode step, and the
/// largest |logit| seen.
fn compare(m: &LoadedModel, want: &[Vec<Vec<f32>>]) -> (f32, f32) {
    let (mut worst, mut scale) = (0.0f32, 0.0f32);
    for (s, want) in SEQS.iter().zip(want) {
        let got = ours_steps(m, s, &DECODE);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            worst = worst.max(max_abs_diff(g, w));
            scale = scale.max(max_abs(w));
            assert_eq!(argmax(g), argmax(w));
        }
    }
    (worst, scale)
}

#[test]
fn logits_match_references_in_f32() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Gpt2] {
        let tmp = ok(tempfile::tempdir());
        let files = fixtures::write(tmp.path(), &tiny(arch), F32);
        let m = load(tmp.path());
        assert_eq!(m.config().architecture, format!("{arch:?}").to_lowercase());
        let (d, scale) = compare(&m, &reference(arch, tmp.path(), &files));
        println!("{arch:?} F32: max |Δ| = {d:.2e} (max |logit| {scale:.2})");
        assert!(d <= 1e-4, "{arch:?}: logits differ from the reference by {d}");
    }
}

#[test]
fn f16_and_bf16_weights_load_and_match() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Gpt2] {
        let model = tiny(arch);
        let tmp = ok(tempfile::tempdir());
        fixtures::write(&tmp.path().join("f32"), &model, F32);
        let f32_logits: Vec<Vec<Vec<f32>>> = SEQS
            .iter()
            .map(|s| ours_steps(&load(&tmp.path().join("f32")), s, &DECODE))
            .collect();
        for (dtype, tol) in [(DType::F16, 2e-2), (DType::BF16, 1.5e-1)] {
            let dir = tmp.path().join(format!("{dtype:?}"));
            let files = fixtures::write(&dir, &model, Layout { dtype, ..F32 });
            let m = load(&dir);
            // Same file through the reference (weights converted to f32 the same way).
            let (d_ref, _) = compare(&m, &reference(arch, &dir, &files));
            // Against the f32 original: the rounding of the weights.
            let (d_f32, scale) = compare(&m, &f32_logits);
            println!(
                "{arch:?} {dtype:?}: vs reference on the same file max |Δ| = {d_ref:.2e}; vs F32 weights max |Δ| = {d_f32:.2e} (max |logit| {scale:.2})"
            );
            assert!(
                d_ref <= 1e-4,
                "{arch:?} {dtype:?}: differs from the reference by {d_ref}"
            );
            assert!(
                d_f32 <= tol,
                "{arch:?} {dtype:?}: differs from F32 weights by {d_f32}"
            );
        }
    }
}

#[test]
fn sharded_weights_load_with_or_without_index() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Gpt2] {
        let model = tiny(arch);
        let tmp = ok(tempfile::tempdir());
        fixtures::write(&tmp.path().join("one"), &model, F32);
        let one = load(&tmp.path().join("one"));
        let want: Vec<Vec<Vec<f32>>> = SEQS.iter().map(|s| ours_steps(&one, s, &DECODE)).collect();
        for (shards, index) in [(3, true), (2, false)] {
            let dir = tmp.path().join(format!("{shards}-{index}"));
            let files = fixtures::write(&dir, &model, Layout { shards, index, ..F32 });
            assert_eq!(files.len(), shards);
            let m = load(&dir);
            let got: Vec<Vec<Vec<f32>>> = SEQS.iter().map(|s| ours_steps(&m, s, &DECODE)).collect();
            assert_eq!(
                got, want,
                "{arch:?}: {shards} shards (index {index}) change the logits"
            );
            assert_eq!(m.fingerprint.weights_header_sha256, headers_sha256(&files));
            assert_ne!(
                m.fingerprint.weights_header_sha256,
                one.fingerprint.weights_header_sha256
            );
        }
    }
}

/// SHA-256 over each file's 8-byte header length and JSON header, files in name order.
fn headers_sha256(files: &[std::path::PathBuf]) -> String {
    use sha2::{Digest, Sha256};
    let mut files = files.to_vec();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let bytes = ok(std::fs::read(f));
        let n = u64::from_le_bytes(ok(bytes[..8].try_into())) as usize;
        h.update(&bytes[..8 + n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn fingerprint_tokenizer_and_prefixed_gpt2() {
    let tmp = ok(tempfile::tempdir());
    let files = fixtures::write(&tmp.path().join("llama"), &tiny(Arch::Llama), F32);
    let m = load(&tmp.path().join("llama"));
    assert_eq!(m.fingerprint.architecture, "llama");
    assert_eq!((m.fingerprint.hidden_size, m.fingerprint.n_layers), (64, 2));
    assert_eq!(m.fingerprint.weights_header_sha256, headers_sha256(&files));
    assert_eq!(
        load(&tmp.path().join("llama")).fingerprint,
        m.fingerprint,
        "fingerprint is not stable"
    );
    let c = m.config();
    assert_eq!(
        (
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.intermediate_size,
            c.vocab_size
        ),
        (4, 2, 16, 128, 100)
    );
    assert!(!c.rope_interleaved);
    assert_eq!(ok(m.tokenizer.encode("the cat sat")), vec![0, 2, 3, 4]);
    assert_eq!((m.tokenizer.bos(), m.tokenizer.eos()), (Some(0), &[1][..]));

    // GPT-2 without tokenizer_config.json: EOS from config.json; `transformer.` names accepted.
    fixtures::write(&tmp.path().join("gpt2"), &fixtures::gpt2(3, false), F32);
    fixtures::write(&tmp.path().join("gpt2-prefixed"), &fixtures::gpt2(3, true), F32);
    let plain = load(&tmp.path().join("gpt2"));
    let prefixed = load(&tmp.path().join("gpt2-prefixed"));
    assert_eq!(plain.tokenizer.eos(), &[1]);
    assert_eq!(ok(plain.tokenizer.encode("the dog")), vec![2, 8]);
    assert_eq!(plain.hook_points().len(), 10);
    for s in SEQS {
        assert_eq!(ours_steps(&plain, s, &DECODE), ours_steps(&prefixed, s, &DECODE));
    }
}

/// Records activations at some hook points.
struct Record {
    points: Vec<HookPoint>,
    seen: Vec<(HookPoint, Vec<f32>)>,
}

impl Hooks for Record {
    fn wants(&self, p: HookPoint) -> bool {
        self.points.is_empty() || self.points.contains(&p)
    }
    fn on_activation(&mut self, p: HookPoint, act: Activation<'_>) -> act_studio::runtime::Result<HookFlow> {
        self.seen.push((p, act.data.to_vec()));
        Ok(HookFlow::Continue)
    }
}

#[test]
fn gpt2_hook_points_match_the_reference() {
    let tmp = ok(tempfile::tempdir());
    let files = fixtures::write(tmp.path(), &tiny(Arch::Gpt2), F32);
    let m = load(tmp.path());
    let ids = SEQS[2];
    let want = gpt2_reference::run(&fixtures::load_all(&files), ids, 2, 4, 1e-5);
    let mut rec = Record {
        points: Vec::new(),
        seen: Vec::new(),
    };
    let b = Batch {
        tokens: ids,
        batch: 1,
        seq: ids.len(),
        valid: &[ids.len()],
        prompt_lens: &[ids.len()],
    };
    ok(m.model.forward(
        &b,
        &mut [m.new_cache()],
        &mut rec,
        MatPath::Dense,
        LogitsMode::None,
    ));
    assert_eq!(rec.seen.len(), m.hook_points().len());
    let kinds = [
        HookKind::AttnNorm,
        HookKind::AttnOut,
        HookKind::MlpNorm,
        HookKind::MlpOut,
        HookKind::Resid,
    ];
    let mut worst = 0.0f32;
    for (p, got) in &rec.seen {
        let k = kinds
            .iter()
            .position(|k| *k == p.kind)
            .unwrap_or_else(|| panic!("unexpected {p}"));
        let d = max_abs_diff(got, &want.layers[p.layer][k]);
        assert!(d <= 1e-4, "{p}: differs from the reference by {d}");
        worst = worst.max(d);
    }
    println!("GPT-2 hook points vs reference: max |Δ| = {worst:.2e}");
}

#[test]
fn gpt2_padding_changes_nothing() {
    let tmp = ok(tempfile::tempdir());
    fixtures::write(tmp.path(), &tiny(Arch::Gpt2), F32);
    let m = load(tmp.path());
    let rows: [&[u32]; 3] = [SEQS[0], SEQS[1], SEQS[2]];
    let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let points = vec![
        HookPoint {
            layer: 0,
            kind: HookKind::AttnOut,
        },
        HookPoint {
            layer: 1,
            kind: HookKind::Resid,
        },
    ];
    let d = m.config().hidden_size;
    let mut tokens = Vec::new();
    for r in rows {
        tokens.extend_from_slice(r);
        tokens.extend(std::iter::repeat_n(0u32, seq - r.len()));
    }
    let valid: Vec<usize> = rows.iter().map(|r| r.len()).collect();
    let b = Batch {
        tokens: &tokens,
        batch: rows.len(),
        seq,
        valid: &valid,
        prompt_lens: &valid,
    };
    let mut caches: Vec<_> = rows.iter().map(|_| m.new_cache()).collect();
    let mut batched = Record {
        points: points.clone(),
        seen: Vec::new(),
    };
    let logits = ok(m
        .model
        .forward(&b, &mut caches, &mut batched, MatPath::Dense, LogitsMode::Last))
    .logits;
    let vocab = m.config().vocab_size;
    let mut worst = 0.0f32;
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(caches[i].len(), r.len(), "cache keeps only real tokens");
        let mut alone = Record {
            points: points.clone(),
            seen: Vec::new(),
        };
        let ab = Batch {
            tokens: r,
            batch: 1,
            seq: r.len(),
            valid: &[r.len()],
            prompt_lens: &[r.len()],
        };
        let mut cache = vec![m.new_cache()];
        let want = ok(m
            .model
            .forward(&ab, &mut cache, &mut alone, MatPath::Dense, LogitsMode::Last))
        .logits;
        worst = worst.max(max_abs_diff(&logits[i * vocab..(i + 1) * vocab], &want));
        for ((p, a), (_, bt)) in alone.seen.iter().zip(&batched.seen) {
            let got = &bt[i * seq * d..(i * seq + r.len()) * d];
            let delta = max_abs_diff(got, a);
            assert!(
                delta <= 1e-4,
                "{p} row {i}: padding changes activations by {delta}"
            );
            worst = worst.max(delta);
        }
        // Decoding on after the padded batch matches decoding on after the sentence alone.
        let next = [DECODE[0]];
        let step = Batch {
            tokens: &next,
            batch: 1,
            seq: 1,
            valid: &[1],
            prompt_lens: &[1],
        };
        let after_batch = ok(m.model.forward(
            &step,
            &mut caches[i..=i],
            &mut NoHooks,
            MatPath::Dense,
            LogitsMode::Last,
        ));
        let after_alone =
            ok(m.model
                .forward(&step, &mut cache, &mut NoHooks, MatPath::Dense, LogitsMode::Last));
        worst = worst.max(max_abs_diff(&after_batch.logits, &after_alone.logits));
    }
    println!("GPT-2 padding: max |Δ| = {worst:.2e}");
    assert!(worst <= 1e-4, "padding changes results by {worst}");
}

#[test]
fn gpt2_generation_matches_greedy_reference_and_respects_positions() {
    let tmp = ok(tempfile::tempdir());
    let files = fixtures::write(tmp.path(), &tiny(Arch::Gpt2), F32);
    let m = load(tmp.path());
    let w = fixtures::load_all(&files);
    let mut want = SEQS[0].to_vec();
    for _ in 0..6 {
        let run = gpt2_reference::run(&w, &want, 2, 4, 1e-5);
        let last = run.logits.last().unwrap_or_else(|| panic!("no logits"));
        want.push(argmax(last));
    }
    let opts = GenerateOptions {
        max_tokens: 6,
        sampling: SamplingConfig::greedy(),
        path: MatPath::Dense,
    };
    let got = ok(generate(
        &m,
        SEQS[0],
        &opts,
        &mut NoHooks,
        &AtomicBool::new(false),
        &mut |_| true,
    ));
    let n = got.tokens.len();
    assert_eq!(
        got.tokens,
        want[SEQS[0].len()..SEQS[0].len() + n],
        "greedy tokens differ"
    );
    // 64 learned positions: a 65-token input is refused, not a panic.
    let long = vec![2u32; 65];
    let b = Batch {
        tokens: &long,
        batch: 1,
        seq: 65,
        valid: &[65],
        prompt_lens: &[65],
    };
    let e = m.model.forward(
        &b,
        &mut [m.new_cache()],
        &mut NoHooks,
        MatPath::Dense,
        LogitsMode::Last,
    );
    assert!(matches!(e, Err(RuntimeError::BadInput(_))), "{:?}", e.map(|_| ()));
}

/// Writes a fixture, lets `spoil` change it, and returns the load error.
fn load_error(model: TinyModel, spoil: impl FnOnce(&Path, &mut TinyModel)) -> RuntimeError {
    let tmp = ok(tempfile::tempdir());
    let mut model = model;
    spoil(tmp.path(), &mut model);
    fixtures::write(tmp.path(), &model, F32);
    match LoadedModel::load(tmp.path()) {
        Ok(_) => panic!("a spoiled model loaded"),
        Err(e) => {
            println!("error: {e}");
            e
        }
    }
}

#[test]
fn bad_folders_give_clear_errors() {
    // No config.json.
    let tmp = ok(tempfile::tempdir());
    let e = LoadedModel::load(tmp.path())
        .err()
        .unwrap_or_else(|| panic!("empty folder loaded"));
    assert!(e.to_string().contains("config.json"), "{e}");

    // A missing tensor, named.
    let e = load_error(tiny(Arch::Llama), |_, m| {
        m.tensors.remove("model.layers.1.mlp.up_proj.weight");
    });
    assert!(
        matches!(&e, RuntimeError::MissingTensor { name, .. } if name == "model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
    let e = load_error(tiny(Arch::Qwen2), |_, m| {
        m.tensors.remove("model.layers.0.self_attn.k_proj.bias");
    });
    assert!(
        e.to_string().contains("model.layers.0.self_attn.k_proj.bias"),
        "{e}"
    );
    let e = load_error(tiny(Arch::Gpt2), |_, m| {
        m.tensors.remove("h.1.ln_2.bias");
    });
    assert!(
        matches!(&e, RuntimeError::MissingTensor { name, .. } if name == "h.1.ln_2.bias"),
        "{e}"
    );

    // A wrong shape (GPT-2 Conv1D stored as [out, in] instead of [in, out]).
    let e = load_error(tiny(Arch::Gpt2), |_, m| {
        let t = ok(m.tensors["h.0.attn.c_attn.weight"]
            .t()
            .and_then(|t| t.contiguous()));
        m.tensors.insert("h.0.attn.c_attn.weight".into(), t);
    });
    assert!(
        matches!(&e, RuntimeError::TensorShape { expected, found, .. } if expected == &[64, 192] && found == &[192, 64]),
        "{e}"
    );
    let e = load_error(tiny(Arch::Llama), |_, m| {
        let t = ok(Tensor::zeros((64, 32), DType::F32, &Device::Cpu));
        m.tensors
            .insert("model.layers.0.self_attn.k_proj.weight".into(), t);
    });
    assert!(
        e.to_string().contains("model.layers.0.self_attn.k_proj.weight"),
        "{e}"
    );

    // An unsupported model_type names the supported ones.
    let e = load_error(tiny(Arch::Llama), |_, m| m.config["model_type"] = "bert".into());
    assert!(matches!(e, RuntimeError::UnsupportedArch { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("bert") && text.contains("llama, mistral, qwen2, gpt2"),
        "{text}"
    );

    // An unsupported dtype.
    let e = load_error(tiny(Arch::Llama), |_, m| {
        let t = ok(Tensor::zeros(64, DType::I64, &Device::Cpu));
        m.tensors.insert("model.norm.weight".into(), t);
    });
    assert!(
        e.to_string().contains("I64") && e.to_string().contains("F32, F16, BF16"),
        "{e}"
    );

    // A missing config key, and an unsupported option.
    let e = load_error(tiny(Arch::Llama), |_, m| {
        m.config.as_object_mut().map(|c| c.remove("hidden_size"));
    });
    assert!(
        matches!(&e, RuntimeError::MissingMetadata { key, .. } if key == "hidden_size"),
        "{e}"
    );
    let e = load_error(tiny(Arch::Gpt2), |_, m| {
        m.config["activation_function"] = "relu".into()
    });
    assert!(e.to_string().contains("relu"), "{e}");
    let e = load_error(tiny(Arch::Llama), |_, m| {
        m.config["rope_scaling"] = serde_json::json!({ "rope_type": "llama3", "factor": 8.0 });
    });
    assert!(e.to_string().contains("llama3"), "{e}");
    let e = load_error(tiny(Arch::Llama), |_, m| {
        m.config["num_key_value_heads"] = 3.into()
    });
    assert!(matches!(e, RuntimeError::BadModel { .. }), "{e}");
}

#[test]
fn missing_or_broken_files_give_clear_errors() {
    let fresh = |arch| {
        let tmp = ok(tempfile::tempdir());
        fixtures::write(tmp.path(), &tiny(arch), F32);
        tmp
    };
    let err = |p: &Path| {
        let e = LoadedModel::load(p)
            .err()
            .unwrap_or_else(|| panic!("broken folder loaded"))
            .to_string();
        println!("error: {e}");
        e
    };

    let t = fresh(Arch::Llama);
    ok(std::fs::remove_file(t.path().join("model.safetensors")));
    let e = err(t.path());
    assert!(e.contains("model.safetensors"), "{e}");

    let t = fresh(Arch::Llama);
    ok(std::fs::write(
        t.path().join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage",
    ));
    let e = err(t.path());
    assert!(e.contains("truncated"), "{e}");

    let t = fresh(Arch::Llama);
    let bytes = ok(std::fs::read(t.path().join("model.safetensors")));
    ok(std::fs::write(
        t.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    ));
    let e = err(t.path());
    assert!(e.contains("safetensors"), "{e}");

    let t = fresh(Arch::Gpt2);
    ok(std::fs::remove_file(t.path().join("tokenizer.json")));
    let e = err(t.path());
    assert!(e.contains("tokenizer.json"), "{e}");

    let t = fresh(Arch::Gpt2);
    ok(std::fs::write(t.path().join("config.json"), "{ not json"));
    let e = err(t.path());
    assert!(e.contains("config.json") && e.contains("JSON"), "{e}");

    // An index naming a shard that is not there.
    let tmp = ok(tempfile::tempdir());
    let files = fixtures::write(
        tmp.path(),
        &tiny(Arch::Qwen2),
        Layout {
            shards: 2,
            index: true,
            ..F32
        },
    );
    ok(std::fs::remove_file(&files[1]));
    let e = err(tmp.path());
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn hub_cache_discovery_finds_snapshots() {
    let tmp = ok(tempfile::tempdir());
    let root = tmp.path();
    let old = root.join("models--org--tiny-gpt2/snapshots/aaa111");
    let new = root.join("models--org--tiny-gpt2/snapshots/bbb222");
    fixtures::write(&old, &tiny(Arch::Gpt2), F32);
    fixtures::write(&new, &tiny(Arch::Gpt2), F32);
    let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    ok(ok(std::fs::File::open(&old)).set_modified(t0));
    ok(ok(std::fs::File::open(&new)).set_modified(t0 + std::time::Duration::from_secs(60)));
    fixtures::write(
        &root.join("models--solo/snapshots/ccc333"),
        &tiny(Arch::Llama),
        F32,
    );
    // Not models: no config.json, a dataset, a stray file.
    ok(std::fs::create_dir_all(
        root.join("models--org--empty/snapshots/ddd444"),
    ));
    ok(std::fs::create_dir_all(
        root.join("datasets--org--data/snapshots/eee555"),
    ));
    ok(std::fs::write(root.join("version.txt"), "1"));

    let found = discover_hf_cache(Some(root));
    let summary: Vec<(&str, &str)> = found
        .iter()
        .map(|c| (c.name.as_str(), c.revision.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("org/tiny-gpt2", "bbb222"),
            ("org/tiny-gpt2", "aaa111"),
            ("solo", "ccc333")
        ]
    );
    assert_eq!(found[0].path, new);
    assert_eq!(load(&found[0].path).config().architecture, "gpt2");
    assert!(discover_hf_cache(Some(&root.join("absent"))).is_empty());
}

#[test]
fn cli_inspects_and_generates_from_a_folder() {
    let tmp = ok(tempfile::tempdir());
    fixtures::write(tmp.path(), &tiny(Arch::Gpt2), F32);
    let run = |args: &[&str]| {
        let out = ok(std::process::Command::new(env!("CARGO_BIN_EXE_act-studio"))
            .args(args)
            .output());
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let model = tmp.path().to_string_lossy().to_string();
    let info = run(&["inspect", "--model", &model]);
    println!("{info}");
    assert!(
        info.contains("gpt2") && info.contains("learned") && info.contains("layers.1.resid"),
        "{info}"
    );
    let text = run(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "the cat sat",
        "--max-tokens",
        "5",
    ]);
    assert!(!text.trim().is_empty(), "no text generated");
}

#[test]
fn inspect_lists_folder_tensor_groups_from_the_headers() {
    use act_studio::runtime::model_header::{ModelHeader, TensorType};
    let tmp = ok(tempfile::tempdir());
    let run = |dir: &Path| {
        let out = ok(std::process::Command::new(env!("CARGO_BIN_EXE_act-studio"))
            .args(["inspect", "--model", &dir.to_string_lossy()])
            .output());
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{err}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let row = |out: &str, name: &str| -> String {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no group `{name}` in\n{out}"))
            .to_string()
    };

    // Llama in F16, two shards with an index.
    let llama = tmp.path().join("llama");
    let layout = Layout {
        dtype: DType::F16,
        shards: 2,
        index: true,
    };
    let files = fixtures::write(&llama, &tiny(Arch::Llama), layout);
    let info = run(&llama);
    println!("{info}");
    let weights: u64 = files.iter().map(|f| ok(std::fs::metadata(f)).len()).sum();
    assert!(info.contains(&format!("({weights} bytes)\n")), "{info}");
    assert!(info.contains("tensors:        20 in 11 groups"), "{info}");
    for (group, count, types) in [
        ("model.embed_tokens.weight", "1", "F16 ×1"),
        ("input_layernorm.weight", "2", "F16 ×2"),
        ("self_attn.q_proj.weight", "2", "F16 ×2"),
        ("mlp.down_proj.weight", "2", "F16 ×2"),
        ("model.norm.weight", "1", "F16 ×1"),
    ] {
        let r = row(&info, group);
        assert_eq!(r.split_whitespace().nth(1), Some(count), "{r}");
        assert!(r.contains(types), "`{types}` not in `{r}`");
    }
    assert!(
        !info.contains("model.layers.") && !info.contains("note:"),
        "{info}"
    );
    let header = ok(ModelHeader::read(&llama));
    let loaded = load(&llama);
    assert_eq!(header.fingerprint, loaded.fingerprint);
    assert_eq!(&header.config, loaded.config());
    assert_eq!(header.hook_points(), loaded.hook_points());
    assert_eq!((header.file_size, header.expected_size), (weights, weights));
    // F16: two bytes a value.
    let elements: u64 = header.tensor_groups.iter().map(|g| g.elements).sum();
    assert_eq!(header.tensor_bytes(), 2 * elements);
    assert_eq!(
        header.type_counts(),
        vec![(TensorType::Safetensors(safetensors::Dtype::F16), 20)]
    );

    // GPT-2 in F32, one file: `h.{i}.` is the layer prefix.
    let gpt2 = tmp.path().join("gpt2");
    fixtures::write(&gpt2, &tiny(Arch::Gpt2), F32);
    let info = run(&gpt2);
    for (group, types) in [
        ("wte.weight", "F32 ×1"),
        ("attn.c_attn.weight", "F32 ×2"),
        ("mlp.c_proj.bias", "F32 ×2"),
        ("ln_f.bias", "F32 ×1"),
    ] {
        let r = row(&info, group);
        assert!(r.contains(types), "`{types}` not in `{r}`");
    }
    assert_eq!(ok(ModelHeader::read(&gpt2)).fingerprint, load(&gpt2).fingerprint);
}

/// The output head run apart — `LogitsMode::LastHidden`, then `Network::head` — as a decode
/// step split per thread runs it over all its parts' rows at once, gives `LogitsMode::Last`'s
/// logits bit for bit, for every architecture (Gemma 2 with its final soft cap), on a
/// right-padded batch; each row's hidden state is the one it gets run alone.
#[test]
fn the_output_head_run_apart_gives_the_last_tokens_logits() {
    let models = [
        tiny(Arch::Llama),
        tiny(Arch::Qwen2),
        tiny(Arch::Gpt2),
        fixtures::gemma(false, 2, 2, false, 5),
    ];
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for model in models {
        let tmp = ok(tempfile::tempdir());
        fixtures::write(tmp.path(), &model, F32);
        let m = load(tmp.path());
        let arch = m.config().architecture.clone();
        let (d, vocab) = (m.config().hidden_size, m.config().vocab_size);
        let tokens = [0u32, 2, 3, 4, 5, 7, 8, 9, 0, 0];
        let b = Batch {
            tokens: &tokens,
            batch: 2,
            seq: 5,
            valid: &[5, 3],
            prompt_lens: &[5, 3],
        };
        let run = |b: &Batch<'_>, mode| {
            let mut caches: Vec<_> = (0..b.batch).map(|_| m.new_cache()).collect();
            ok(m.model
                .forward(b, &mut caches, &mut NoHooks, MatPath::Dense, mode))
        };
        let last = run(&b, LogitsMode::Last);
        let apart = run(&b, LogitsMode::LastHidden);
        assert_eq!(last.logits.len(), 2 * vocab, "{arch}");
        assert!(last.hidden.is_empty() && apart.logits.is_empty(), "{arch}");
        assert_eq!(apart.hidden.len(), 2 * d, "{arch}");
        let head = ok(m.model.head(&apart.hidden, 2, MatPath::Dense));
        assert_eq!(bits(&head), bits(&last.logits), "{arch}");
        let alone = Batch {
            tokens: &tokens[5..8],
            batch: 1,
            seq: 3,
            valid: &[3],
            prompt_lens: &[3],
        };
        let alone = run(&alone, LogitsMode::LastHidden);
        assert_eq!(bits(&alone.hidden), bits(&apart.hidden[d..]), "{arch}");
        assert_ne!(bits(&apart.hidden[..d]), bits(&apart.hidden[d..]), "{arch}");
    }
}
