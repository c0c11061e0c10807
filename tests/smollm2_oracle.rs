//! Numerical oracle on the real demo model: our forward pass against candle-transformers'
//! `quantized_llama` on the same GGUF file.

mod common;

use act_studio::runtime::forward::{Batch, LogitsMode};
use act_studio::runtime::linear::MatPath;
use act_studio::runtime::sampling::argmax;
use act_studio::runtime::{Activation, HookFlow, HookPoint, Hooks, LoadedModel, NoHooks};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

const PROMPTS: [&str; 3] = [
    "Once upon a time",
    "The capital of France is Paris, and the capital of Germany is",
    "<|im_start|>user\nWrite one sentence about football.<|im_end|>\n<|im_start|>assistant\n",
];

fn candle_model(path: &std::path::Path) -> ModelWeights {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{e}"));
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap_or_else(|e| panic!("{e}"));
    ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

fn candle_logits(m: &mut ModelWeights, ids: &[u32], pos: usize) -> Vec<f32> {
    let x = Tensor::new(ids, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .unwrap_or_else(|e| panic!("{e}"));
    m.forward(&x, pos)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn ours(m: &LoadedModel, ids: &[u32], path: MatPath, hooks: &mut dyn Hooks) -> Vec<f32> {
    let mut cache = vec![m.new_cache()];
    let batch = Batch {
        tokens: ids,
        batch: 1,
        seq: ids.len(),
        valid: &[ids.len()],
        prompt_lens: &[ids.len()],
    };
    m.model
        .forward(&batch, &mut cache, hooks, path, LogitsMode::Last)
        .unwrap_or_else(|e| panic!("{e}"))
        .logits
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn top5(x: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].total_cmp(&x[a]));
    idx.truncate(5);
    idx
}

#[test]
fn logits_match_candle_quantized_llama() {
    let Some(path) = common::demo_model() else { return };
    let m = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut reference = candle_model(&path);
    for prompt in PROMPTS {
        let ids = m.tokenizer.encode(prompt).unwrap_or_else(|e| panic!("{e}"));
        reference.clear_kv_cache();
        let want = candle_logits(&mut reference, &ids, 0);
        let q = ours(&m, &ids, MatPath::Quantized, &mut NoHooks);
        let dq = max_abs_diff(&q, &want);
        let d = ours(&m, &ids, MatPath::Dense, &mut NoHooks);
        let dd = max_abs_diff(&d, &want);
        println!(
            "{prompt:?}: {} tokens, quantized path max |Δ| = {dq:.2e}, dense path vs quantized reference max |Δ| = {dd:.2e}",
            ids.len()
        );
        assert!(dq <= 1e-3, "quantized path differs from quantized_llama by {dq}");
        assert_eq!(top5(&q), top5(&want));
        // The dense path skips the 8-bit quantization of activations, so against the
        // quantized reference it differs by that quantization noise (measured ≈ 0.6–1.2 on
        // logits of magnitude ≈ 20; near-tied ranks 4–5 may swap). Its exact oracle is the
        // test below on dequantized weights.
        assert!(dd <= 2.0, "dense path differs from quantized_llama by {dd}");
        assert_eq!(top5(&d)[..3], top5(&want)[..3], "dense path top-3 differs");
    }
}

/// The demo model with every tensor dequantized to f32, written to `dir` as an F32 GGUF, so
/// quantized_llama gives the dense path an exact oracle.
fn dequantized_copy(path: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{e}"));
    let content = gguf_file::Content::read(&mut f).unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(String, QTensor)> = names
        .iter()
        .map(|n| {
            let q = content
                .tensor(&mut f, n, &Device::Cpu)
                .unwrap_or_else(|e| panic!("{e}"));
            let w = q.dequantize(&Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
            (
                n.to_string(),
                QTensor::quantize(&w, GgmlDType::F32).unwrap_or_else(|e| panic!("{e}")),
            )
        })
        .collect();
    let f32_path = dir.join("smollm2-f32.gguf");
    let mut out = std::fs::File::create(&f32_path).unwrap_or_else(|e| panic!("{e}"));
    let md: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &md, &ts).unwrap_or_else(|e| panic!("{e}"));
    f32_path
}

/// quantized_llama run on the same weights dequantized to f32 (written to a temporary F32
/// GGUF), so the dense path has an exact oracle too.
#[test]
fn dense_path_matches_quantized_llama_on_dequantized_weights() {
    let Some(path) = common::demo_model() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f32_path = dequantized_copy(&path, dir.path());
    let m = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut reference = candle_model(&f32_path);
    for prompt in PROMPTS {
        let ids = m.tokenizer.encode(prompt).unwrap_or_else(|e| panic!("{e}"));
        reference.clear_kv_cache();
        let want = candle_logits(&mut reference, &ids, 0);
        let d = ours(&m, &ids, MatPath::Dense, &mut NoHooks);
        let dd = max_abs_diff(&d, &want);
        println!("{prompt:?}: dense path vs quantized_llama on f32 weights max |Δ| = {dd:.2e}");
        assert!(dd <= 1e-4, "dense path differs by {dd}");
        assert_eq!(top5(&d), top5(&want));
    }
}

/// Feeds `steps` of the reference's greedy tokens, one at a time through our KV cache (prompt
/// first), and returns, per step, our logits' max |Δ| from the reference's and whether both
/// pick the same greedy token, with the reference's gap between its two best logits.
fn teacher_forced_steps(
    m: &LoadedModel,
    reference: &mut ModelWeights,
    path: MatPath,
    ids: &[u32],
    steps: usize,
) -> Vec<(f32, bool, f32)> {
    let forward = |tokens: &[u32], cache: &mut Vec<_>| {
        let batch = Batch {
            tokens,
            batch: 1,
            seq: tokens.len(),
            valid: &[tokens.len()],
            prompt_lens: &[ids.len()],
        };
        m.model
            .forward(&batch, cache, &mut NoHooks, path, LogitsMode::Last)
            .unwrap_or_else(|e| panic!("{e}"))
            .logits
    };
    let mut cache = vec![m.new_cache()];
    let mut want = candle_logits(reference, ids, 0);
    let mut got = forward(ids, &mut cache);
    let mut out = Vec::new();
    for pos in ids.len()..ids.len() + steps {
        let mut sorted = want.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        out.push((
            max_abs_diff(&got, &want),
            argmax(&got) == argmax(&want),
            sorted[0] - sorted[1],
        ));
        let t = argmax(&want);
        want = candle_logits(reference, &[t], pos);
        got = forward(&[t], &mut cache);
    }
    out
}

/// Decode steps attend over the cache with their own loop (`runtime::attend_one`), in another
/// summation order than candle's tensor ops. On f32 weights, with no activation quantization
/// to amplify last-bit differences, every step must match quantized_llama as the prompt does.
#[test]
fn dense_decode_steps_match_quantized_llama_on_dequantized_weights() {
    let Some(path) = common::demo_model() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f32_path = dequantized_copy(&path, dir.path());
    let m = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut reference = candle_model(&f32_path);
    let ids = m.tokenizer.encode(PROMPTS[0]).unwrap_or_else(|e| panic!("{e}"));
    let steps = teacher_forced_steps(&m, &mut reference, MatPath::Dense, &ids, 40);
    let worst = steps.iter().map(|s| s.0).fold(0.0, f32::max);
    println!("40 dense decode steps: max |Δ| {worst:.2e}");
    assert!(
        worst <= 1e-3,
        "dense decode differs from quantized_llama by {worst}"
    );
    assert!(
        steps.iter().all(|s| s.1 || s.2 <= 2.0 * s.0),
        "a greedy token differs without a near tie"
    );
}

/// On the quantized path, 8-bit activation quantization turns the decode attention's last-bit
/// differences into occasional one-step roundings, which the cache carries into later steps:
/// logits stay within the scale of the dense path's own distance from the quantized reference
/// (≈ 0.6–1.2, a rounding everywhere; measured here up to 0.95 over 48 steps), and the greedy
/// token is the reference's at every step that is not a near tie.
#[test]
fn quantized_decode_steps_match_quantized_llama() {
    let Some(path) = common::demo_model() else { return };
    let m = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut reference = candle_model(&path);
    let ids = m.tokenizer.encode(PROMPTS[0]).unwrap_or_else(|e| panic!("{e}"));
    let steps = teacher_forced_steps(&m, &mut reference, MatPath::Quantized, &ids, 48);
    let worst = steps.iter().map(|s| s.0).fold(0.0, f32::max);
    let same = steps.iter().filter(|s| s.1).count();
    println!("48 quantized decode steps: max |Δ| {worst:.2e}, same greedy token at {same}");
    for (i, (d, same, gap)) in steps.iter().enumerate() {
        println!("step {i}: max |Δ| {d:.3}, same token {same}, reference top-2 gap {gap:.3}");
        assert!(*d <= 1.5, "step {i}: logits differ by {d}");
        assert!(
            *same || *gap <= 2.0 * d,
            "step {i}: greedy token differs without a near tie"
        );
    }
    assert!(same >= 44, "greedy tokens differ at {} of 48 steps", 48 - same);
}

/// Records every hook point and rewrites each activation with itself through the transport
/// kernel at λ = 1 with identity maps.
struct RecordAll {
    seen: Vec<(HookPoint, Vec<f32>)>,
    identity: act_studio::transport::HookMap,
}

impl Hooks for RecordAll {
    fn wants(&self, _: HookPoint) -> bool {
        true
    }
    fn on_activation(&mut self, p: HookPoint, act: Activation<'_>) -> act_studio::runtime::Result<HookFlow> {
        self.seen.push((p, act.data.to_vec()));
        self.identity.apply_rows(act.data, 1.0);
        Ok(HookFlow::Continue)
    }
}

#[test]
fn recording_and_identity_hooks_change_nothing() {
    let Some(path) = common::demo_model() else { return };
    let m = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let ids = m.tokenizer.encode(PROMPTS[1]).unwrap_or_else(|e| panic!("{e}"));
    let plain = ours(&m, &ids, MatPath::Quantized, &mut NoHooks);
    let d = m.config().hidden_size;
    let mut rec = RecordAll {
        seen: Vec::new(),
        identity: act_studio::transport::HookMap::identity(act_studio::transport::Method::LinearAct, d),
    };
    let hooked = ours(&m, &ids, MatPath::Quantized, &mut rec);
    assert_eq!(plain, hooked, "hooks changed the logits");
    assert_eq!(rec.seen.len(), m.hook_points().len());
    assert!(rec.seen.iter().all(|(_, v)| v.len() == ids.len() * d));
}
