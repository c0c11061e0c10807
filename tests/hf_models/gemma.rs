//! Gemma 2 and Gemma 3: tiny random-weight Hugging Face folders against candle-transformers'
//! `gemma2` / `gemma3`, the same weights as a GGUF file in llama.cpp's layout through our GGUF
//! path, the sliding window's exact reach, and the post-norm hook points.
//!
//! candle-transformers is a faithful reference here only where it agrees with transformers
//! (src/runtime/gemma.rs lists where it does not): queries are scaled by 1/√head_dim, so the
//! fixtures set `query_pre_attn_scalar` to the head dim; its Gemma 3 prefill mask would let a
//! query see `window + 1` keys (and a prefill at least as long as the window fails in its
//! rotating cache: "slice-set only supports contiguous tensors", candle-transformers 0.11.1),
//! while its decode cache sees `window`, as transformers and llama.cpp do, so the reference is
//! candle fed one token at a time; its Gemma 2 has no sliding window in decode, so the Gemma 2
//! comparison uses a window longer than the sequence, and the window itself is checked
//! structurally (`sliding_layers_see_exactly_their_window`).

use std::path::Path;

use act_studio::pipeline::presets::hook_points_for;
use act_studio::runtime::forward::{Batch, LogitsMode};
use act_studio::runtime::gguf::GgufFile;
use act_studio::runtime::linear::MatPath;
use act_studio::runtime::{Activation, HookFlow, HookKind, HookPoint, Hooks, Network, NoHooks, RuntimeError};
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::fixtures::{self, F32, TinyModel};
use super::{load, max_abs, max_abs_diff, ok};

/// 16 prompt tokens (longer than the window of 5) and 3 decoded ones.
const PROMPT: [u32; 16] = [0, 8, 9, 10, 11, 40, 41, 42, 43, 44, 45, 99, 98, 12, 13, 14];
const DECODE: [u32; 3] = [17, 3, 55];
const WINDOW: usize = 5;

fn all_tokens() -> Vec<u32> {
    PROMPT.iter().chain(&DECODE).copied().collect()
}

/// Logits of one row: every position (`LogitsMode::All`) or the last.
fn run(
    net: &Network,
    tokens: &[u32],
    cache: &mut [act_studio::runtime::kv_cache::KvCache],
    mode: LogitsMode,
    hooks: &mut dyn Hooks,
) -> Vec<f32> {
    let b = Batch {
        tokens,
        batch: 1,
        seq: tokens.len(),
        valid: &[tokens.len()],
        prompt_lens: &[tokens.len()],
    };
    ok(net.forward(&b, cache, hooks, MatPath::Dense, mode)).logits
}

fn new_cache(net: &Network) -> Vec<act_studio::runtime::kv_cache::KvCache> {
    vec![act_studio::runtime::kv_cache::KvCache::new(net.cfg().n_layers)]
}

/// Our logits at every position of [`all_tokens`], three ways: one prefill of everything, the
/// prompt then one token at a time, and one token at a time throughout.
fn ours_three_ways(net: &Network) -> [Vec<Vec<f32>>; 3] {
    let v = net.cfg().vocab_size;
    let all = all_tokens();
    let prefill: Vec<Vec<f32>> = run(net, &all, &mut new_cache(net), LogitsMode::All, &mut NoHooks)
        .chunks(v)
        .map(<[f32]>::to_vec)
        .collect();
    let mut cache = new_cache(net);
    let mut split: Vec<Vec<f32>> = run(net, &PROMPT, &mut cache, LogitsMode::All, &mut NoHooks)
        .chunks(v)
        .map(<[f32]>::to_vec)
        .collect();
    for &t in &DECODE {
        split.push(run(net, &[t], &mut cache, LogitsMode::Last, &mut NoHooks));
    }
    let mut cache = new_cache(net);
    let single = all
        .iter()
        .map(|&t| run(net, &[t], &mut cache, LogitsMode::Last, &mut NoHooks))
        .collect();
    [prefill, split, single]
}

/// candle-transformers fed one token at a time: the logits at every position.
fn candle_one_at_a_time(mut step: impl FnMut(&Tensor, usize) -> Tensor) -> Vec<Vec<f32>> {
    all_tokens()
        .iter()
        .enumerate()
        .map(|(pos, &t)| {
            let x = ok(ok(Tensor::new(&[t], &Device::Cpu)).unsqueeze(0));
            ok(ok(step(&x, pos).flatten_all()).to_vec1::<f32>())
        })
        .collect()
}

fn candle_reference(dir: &Path, files: &[std::path::PathBuf], gemma3: bool) -> Vec<Vec<f32>> {
    let config = ok(std::fs::read_to_string(dir.join("config.json")));
    let vb = VarBuilder::from_tensors(fixtures::load_all(files), DType::F32, &Device::Cpu);
    if gemma3 {
        use candle_transformers::models::gemma3::{Config, Model};
        let cfg: Config = ok(serde_json::from_str(&config));
        let mut m = ok(Model::new(false, &cfg, vb));
        candle_one_at_a_time(|x, pos| ok(m.forward(x, pos)))
    } else {
        use candle_transformers::models::gemma2::{Config, Model};
        let cfg: Config = ok(serde_json::from_str(&config));
        let mut m = ok(Model::new(false, &cfg, vb));
        candle_one_at_a_time(|x, pos| ok(m.forward(x, pos)))
    }
}

/// Max |Δ| over every position and way, asserting equal argmaxes; and the largest |logit|.
fn compare(ours: &[Vec<Vec<f32>>; 3], want: &[Vec<f32>]) -> (f32, f32) {
    let (mut worst, mut scale) = (0.0f32, 0.0f32);
    for way in ours {
        assert_eq!(way.len(), want.len());
        for (g, w) in way.iter().zip(want) {
            worst = worst.max(max_abs_diff(g, w));
            scale = scale.max(max_abs(w));
        }
    }
    (worst, scale)
}

#[test]
fn logits_match_candle_transformers() {
    let cases: [(&str, TinyModel, bool); 4] = [
        // Gemma 3 as released: every 6th layer global (layer 5 of 6).
        ("gemma3 6 layers", fixtures::gemma(true, 6, 6, false, 11), true),
        // Every 3rd layer global (layer 2 of 4), named by `layer_types`.
        ("gemma3 layer_types", fixtures::gemma(true, 4, 3, true, 12), true),
        ("gemma2", fixtures::gemma(false, 4, 2, false, 13), false),
        (
            "gemma2 layer_types",
            fixtures::gemma(false, 3, 2, true, 14),
            false,
        ),
    ];
    for (name, mut model, gemma3) in cases {
        if !gemma3 {
            // candle's Gemma 2 has no window when decoding one token at a time.
            model.config["sliding_window"] = 128.into();
        }
        let tmp = ok(tempfile::tempdir());
        let files = fixtures::write(tmp.path(), &model, F32);
        let m = load(tmp.path());
        assert_eq!(m.config().architecture, model.config["model_type"]);
        assert_eq!(m.hook_points().len(), 7 * m.config().n_layers);
        let want = candle_reference(tmp.path(), &files, gemma3);
        let ours = ours_three_ways(&m.model);
        let (d, scale) = compare(&ours, &want);
        println!("{name}: max |Δ| vs candle-transformers = {d:.2e} (max |logit| {scale:.2})");
        assert!(d <= 1e-4, "{name}: logits differ from candle-transformers by {d}");
    }
}

/// The tensors of a folder fixture under llama.cpp's GGUF names, norms stored as `1 + w` (as
/// `convert_hf_to_gguf.py` does for Gemma 2 and 3), q/k not permuted.
fn write_gguf(path: &Path, model: &TinyModel, gemma3: bool) {
    let c = &model.config;
    let arch = if gemma3 { "gemma3" } else { "gemma2" };
    let u = |k: &str| gguf_file::Value::U32(c[k].as_u64().unwrap_or(0) as u32);
    let mut md: Vec<(String, gguf_file::Value)> = vec![
        (
            "general.architecture".into(),
            gguf_file::Value::String(arch.into()),
        ),
        (format!("{arch}.context_length"), u("max_position_embeddings")),
        (format!("{arch}.embedding_length"), u("hidden_size")),
        (format!("{arch}.block_count"), u("num_hidden_layers")),
        (format!("{arch}.feed_forward_length"), u("intermediate_size")),
        (format!("{arch}.attention.head_count"), u("num_attention_heads")),
        (
            format!("{arch}.attention.head_count_kv"),
            u("num_key_value_heads"),
        ),
        (format!("{arch}.attention.key_length"), u("head_dim")),
        (format!("{arch}.attention.value_length"), u("head_dim")),
        (format!("{arch}.attention.sliding_window"), u("sliding_window")),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            gguf_file::Value::F32(1e-6),
        ),
        (
            format!("{arch}.rope.freq_base"),
            gguf_file::Value::F32(c["rope_theta"].as_f64().unwrap_or(0.0) as f32),
        ),
    ];
    if !gemma3 {
        for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
            md.push((
                format!("{arch}.{k}"),
                gguf_file::Value::F32(c[k].as_f64().unwrap_or(0.0) as f32),
            ));
        }
    }
    let rename = [
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
        ("post_attention_layernorm", "post_attention_norm"),
        ("pre_feedforward_layernorm", "ffn_norm"),
        ("post_feedforward_layernorm", "post_ffw_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in &model.tensors {
        let gguf_name = match name.as_str() {
            "model.embed_tokens.weight" => "token_embd.weight".to_string(),
            "model.norm.weight" => "output_norm.weight".to_string(),
            _ => {
                let rest = name
                    .strip_prefix("model.layers.")
                    .unwrap_or_else(|| panic!("{name}"));
                let (i, module) = rest.split_once('.').unwrap_or_else(|| panic!("{name}"));
                let module = module.strip_suffix(".weight").unwrap_or_else(|| panic!("{name}"));
                let (_, to) = rename
                    .iter()
                    .find(|(from, _)| *from == module)
                    .unwrap_or_else(|| panic!("{name}"));
                format!("blk.{i}.{to}.weight")
            }
        };
        let t = if name.ends_with("norm.weight") {
            ok(t.affine(1.0, 1.0))
        } else {
            t.clone()
        };
        tensors.push((gguf_name, ok(QTensor::quantize(&t, GgmlDType::F32))));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = ok(std::fs::File::create(path));
    let md: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    ok(gguf_file::write(&mut out, &md, &ts));
}

#[test]
fn gguf_with_folded_norms_matches_the_folder() {
    // GGUF Gemma 3 takes llama.cpp's fixed pattern (every 6th layer global) and local RoPE
    // base 10⁴, so the folder fixture uses the same.
    let cases = [
        ("gemma3", fixtures::gemma(true, 6, 6, false, 21), true),
        ("gemma2", fixtures::gemma(false, 4, 2, false, 22), false),
    ];
    for (name, model, gemma3) in cases {
        let tmp = ok(tempfile::tempdir());
        fixtures::write(tmp.path(), &model, F32);
        let folder = load(tmp.path());
        let gguf_path = tmp.path().join("model.gguf");
        write_gguf(&gguf_path, &model, gemma3);
        let net = ok(ok(GgufFile::open(&gguf_path)).load_network());
        let (a, b) = (folder.config(), net.cfg());
        assert_eq!(
            (a.head_dim, a.rope_theta, a.n_kv_heads, &a.gemma),
            (b.head_dim, b.rope_theta, b.n_kv_heads, &b.gemma),
            "{name}"
        );
        let ours = ours_three_ways(&net);
        let want = &ours_three_ways(&folder.model)[0];
        let (d, scale) = compare(&ours, want);
        println!("{name}: GGUF vs folder max |Δ| = {d:.2e} (max |logit| {scale:.2})");
        assert!(d <= 1e-5, "{name}: GGUF logits differ from the folder's by {d}");
    }
}

/// Records (copies of) the activations at the points it wants; optionally adds `shift` at one.
#[derive(Default)]
struct Recorder {
    want: Vec<HookPoint>,
    seen: Vec<(HookPoint, [usize; 3], Vec<f32>)>,
    shift: Option<(HookPoint, f32)>,
}

impl Hooks for Recorder {
    fn wants(&self, p: HookPoint) -> bool {
        self.want.contains(&p) || self.shift.is_some_and(|(s, _)| s == p)
    }
    fn on_activation(&mut self, p: HookPoint, act: Activation<'_>) -> Result<HookFlow, RuntimeError> {
        if let Some((s, by)) = self.shift
            && s == p
        {
            act.data.iter_mut().for_each(|v| *v += by);
        }
        if self.want.contains(&p) {
            self.seen.push((p, act.shape, act.data.to_vec()));
        }
        Ok(HookFlow::Continue)
    }
}

impl Recorder {
    fn get(&self, layer: usize, kind: HookKind) -> &[f32] {
        let p = HookPoint { layer, kind };
        self.seen
            .iter()
            .find(|(q, ..)| *q == p)
            .map(|(.., v)| v.as_slice())
            .unwrap_or_else(|| panic!("{p} not recorded"))
    }
}

/// Changing the first token leaves a sliding layer's attention output at positions ≥ window
/// bit-identical (its keys start at position p − window + 1) and changes it at window − 1; a
/// global layer's changes at every position.
#[test]
fn sliding_layers_see_exactly_their_window() {
    // Gemma 2: layer 0 sliding, 1 global; Gemma 3 every 3rd: layers 0, 1 sliding, 2 global.
    for (model, global) in [
        (fixtures::gemma(false, 2, 2, false, 31), 1),
        (fixtures::gemma(true, 3, 3, false, 32), 2),
    ] {
        let tmp = ok(tempfile::tempdir());
        fixtures::write(tmp.path(), &model, F32);
        let m = load(tmp.path());
        let d = m.config().hidden_size;
        let attn_out = |tokens: &[u32]| {
            let mut rec = Recorder {
                want: [0, global]
                    .map(|layer| HookPoint {
                        layer,
                        kind: HookKind::AttnOut,
                    })
                    .to_vec(),
                ..Recorder::default()
            };
            run(
                &m.model,
                tokens,
                &mut [m.transient_cache()],
                LogitsMode::None,
                &mut rec,
            );
            [
                rec.get(0, HookKind::AttnOut).to_vec(),
                rec.get(global, HookKind::AttnOut).to_vec(),
            ]
        };
        let mut changed = PROMPT;
        changed[0] = 77;
        let (a, b) = (attn_out(&PROMPT), attn_out(&changed));
        let row = |v: &[f32], p: usize| v[p * d..(p + 1) * d].to_vec();
        for p in 0..PROMPT.len() {
            let same_local = row(&a[0], p) == row(&b[0], p);
            assert_eq!(same_local, p >= WINDOW, "sliding layer, position {p}");
            assert!(
                row(&a[1], p) != row(&b[1], p),
                "global layer {global}, position {p}"
            );
        }
    }
}

/// A decode step over several rows (a server's batch: one new token per row, each row's own
/// cache length, both past the window of 5) gives each row the logits of that row decoded
/// alone, bit for bit: the rows' attentions run side by side on the pool, each over its own
/// window of its own cache.
#[test]
fn a_decode_step_over_rows_equals_each_row_alone() {
    let tmp = ok(tempfile::tempdir());
    fixtures::write(tmp.path(), &fixtures::gemma(true, 3, 3, false, 43), F32);
    let m = load(tmp.path());
    let v = m.config().vocab_size;
    let prompts: [&[u32]; 3] = [&PROMPT, &PROMPT[..9], &PROMPT[3..5]];
    let prefill = |p: &[u32]| {
        let mut cache = vec![m.new_cache()];
        run(&m.model, p, &mut cache, LogitsMode::Last, &mut NoHooks);
        cache.remove(0)
    };
    let mut alone: Vec<_> = prompts.iter().map(|p| prefill(p)).collect();
    let mut together: Vec<_> = prompts.iter().map(|p| prefill(p)).collect();
    let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
    for (step, &t) in DECODE.iter().enumerate() {
        let feed = [t, t + 1, t + 2];
        let batch = Batch {
            tokens: &feed,
            batch: 3,
            seq: 1,
            valid: &[1, 1, 1],
            prompt_lens: &lens,
        };
        let got = ok(m.model.forward(
            &batch,
            &mut together,
            &mut NoHooks,
            MatPath::Dense,
            LogitsMode::Last,
        ))
        .logits;
        assert_eq!(got.len(), 3 * v);
        for (r, cache) in alone.iter_mut().enumerate() {
            let want = run(
                &m.model,
                &feed[r..r + 1],
                std::slice::from_mut(cache),
                LogitsMode::Last,
                &mut NoHooks,
            );
            assert_eq!(&got[r * v..(r + 1) * v], &want[..], "row {r}, step {step}");
        }
    }
}

#[test]
fn post_norm_hooks_see_the_residual_updates_and_steer() {
    let tmp = ok(tempfile::tempdir());
    fixtures::write(tmp.path(), &fixtures::gemma(true, 3, 3, false, 41), F32);
    let m = load(tmp.path());
    let cfg = m.config();
    let (n, d) = (cfg.n_layers, cfg.hidden_size);
    let post_ln = ok(hook_points_for("post-ln", cfg));
    assert_eq!(post_ln.len(), 2 * n);
    assert!(
        post_ln
            .iter()
            .all(|p| matches!(p.kind, HookKind::PostAttnNorm | HookKind::PostMlpNorm))
    );

    // Batch of two right-padded rows: shapes [2, 16, d]; each residual stream is the previous
    // one plus the two post-norm outputs.
    let short = &PROMPT[..9];
    let mut tokens = PROMPT.to_vec();
    tokens.extend(short);
    tokens.extend(std::iter::repeat_n(0, PROMPT.len() - short.len()));
    let valid = [PROMPT.len(), short.len()];
    let batch = Batch {
        tokens: &tokens,
        batch: 2,
        seq: PROMPT.len(),
        valid: &valid,
        prompt_lens: &valid,
    };
    let mut rec = Recorder {
        want: m.hook_points(),
        ..Recorder::default()
    };
    let mut caches = vec![m.new_cache(), m.new_cache()];
    let batched = ok(m
        .model
        .forward(&batch, &mut caches, &mut rec, MatPath::Dense, LogitsMode::Last))
    .logits;
    assert_eq!(rec.seen.len(), 7 * n);
    assert!(
        rec.seen
            .iter()
            .all(|(_, shape, _)| *shape == [2, PROMPT.len(), d])
    );
    for l in 1..n {
        let (prev, a, mo, next) = (
            rec.get(l - 1, HookKind::Resid),
            rec.get(l, HookKind::PostAttnNorm),
            rec.get(l, HookKind::PostMlpNorm),
            rec.get(l, HookKind::Resid),
        );
        for i in 0..next.len() {
            assert_eq!((prev[i] + a[i]) + mo[i], next[i], "layer {l}, value {i}");
        }
    }
    // Padding changes nothing: each row equals that sequence alone.
    let v = cfg.vocab_size;
    let alone = |t: &[u32]| run(&m.model, t, &mut [m.new_cache()], LogitsMode::Last, &mut NoHooks);
    assert!(max_abs_diff(&batched[..v], &alone(&PROMPT)) <= 1e-5);
    assert!(max_abs_diff(&batched[v..], &alone(short)) <= 1e-5);

    // A hook that only looks changes nothing; shifting a post-norm output changes the logits.
    let plain = alone(&PROMPT);
    let mut look = Recorder {
        want: post_ln.clone(),
        ..Recorder::default()
    };
    assert_eq!(
        run(
            &m.model,
            &PROMPT,
            &mut [m.new_cache()],
            LogitsMode::Last,
            &mut look
        ),
        plain
    );
    for kind in [HookKind::PostAttnNorm, HookKind::PostMlpNorm] {
        let mut steer = Recorder {
            shift: Some((HookPoint { layer: 1, kind }, 0.5)),
            ..Recorder::default()
        };
        let steered = run(
            &m.model,
            &PROMPT,
            &mut [m.new_cache()],
            LogitsMode::Last,
            &mut steer,
        );
        let moved = max_abs_diff(&steered, &plain);
        assert!(
            moved > 1e-2,
            "{kind:?}: steering moved the logits by only {moved}"
        );
    }
}

#[test]
fn unsupported_gemma_options_are_refused_by_name() {
    let spoil = |f: &dyn Fn(&mut TinyModel)| {
        let mut model = fixtures::gemma(true, 2, 2, false, 51);
        f(&mut model);
        let tmp = ok(tempfile::tempdir());
        fixtures::write(tmp.path(), &model, F32);
        act_studio::runtime::LoadedModel::load(tmp.path())
            .err()
            .unwrap_or_else(|| panic!("spoiled folder loaded"))
            .to_string()
    };
    let e = spoil(&|m| m.config["hidden_activation"] = "gelu".into());
    assert!(e.contains("gelu") && e.contains("gelu_pytorch_tanh"), "{e}");
    let e = spoil(&|m| {
        m.config["rope_scaling"] = serde_json::json!({ "rope_type": "yarn", "factor": 4.0 });
    });
    assert!(e.contains("yarn"), "{e}");
    let e = spoil(&|m| m.config["layer_types"] = serde_json::json!(["sliding_attention"]));
    assert!(e.contains("1 layer attention types for 2 layers"), "{e}");
    let e = spoil(&|m| {
        m.tensors.remove("model.layers.1.self_attn.k_norm.weight");
    });
    assert!(e.contains("model.layers.1.self_attn.k_norm.weight"), "{e}");
}

/// transformers' config defaults apply where a key is absent, not where it is `null`: a Gemma 2
/// folder with `"attn_logit_softcapping": null` has no attention cap (transformers stores
/// `None`), one without the key has 50; a missing `sliding_window` is transformers' 4096; and
/// a layer count no model has is refused before anything is sized by it.
#[test]
fn gemma_config_defaults_follow_transformers() {
    let load = |f: &dyn Fn(&mut TinyModel)| {
        let mut model = fixtures::gemma(false, 2, 2, false, 52);
        f(&mut model);
        let tmp = ok(tempfile::tempdir());
        fixtures::write(tmp.path(), &model, F32);
        act_studio::runtime::LoadedModel::load(tmp.path()).map(|m| m.config().clone())
    };
    let gemma =
        |c: act_studio::runtime::config::ModelConfig| c.gemma.unwrap_or_else(|| panic!("no Gemma config"));
    let g = gemma(ok(load(&|m| {
        m.config["attn_logit_softcapping"] = Value::Null;
        m.config["final_logit_softcapping"] = Value::Null;
    })));
    assert_eq!((g.attn_softcap, g.final_softcap), (None, None));
    let g = gemma(ok(load(&|m| {
        let c = m
            .config
            .as_object_mut()
            .unwrap_or_else(|| panic!("config is not an object"));
        c.remove("attn_logit_softcapping");
        c.remove("final_logit_softcapping");
        c.remove("sliding_window");
    })));
    assert_eq!((g.attn_softcap, g.final_softcap), (Some(50.0), Some(30.0)));
    assert_eq!(g.sliding_window, Some(4096));
    let e = load(&|m| m.config["num_hidden_layers"] = u64::MAX.into())
        .err()
        .unwrap_or_else(|| panic!("a model with 2^64 − 1 layers loaded"))
        .to_string();
    assert!(e.contains("layers"), "{e}");
}
