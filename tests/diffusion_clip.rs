//! The hookable CLIP text encoder and tokenizer of `act_studio::diffusion` against
//! candle-transformers' CLIP and an independent f64 reference, on tiny random encoders written
//! in the diffusers layout.

mod sd_common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use act_studio::diffusion::clip::{ClipActivation, ClipOutput, ClipTextConfig, ClipTextEncoder};
use act_studio::diffusion::clip_tokenizer::ClipTokenizer;
use act_studio::diffusion::{
    ActShape, DiffActivation, DiffHooks, DiffusionError, HookRegistry, HookSiteKind, NoDiffHooks,
};
use act_studio::runtime::HookFlow;
use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::VarBuilder;
use sd_common::compare::max_abs_diff as max_abs;
use sd_common::tiny_clip::{TINY_MAX_LEN, TinyClip, tiny_id, write_tiny_clip};

const PROMPTS: [&str; 3] = [
    "a photo of a cat",
    "A painting of a DOG in the style of van Gogh,   blue and red!",
    "",
];

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    te: PathBuf,
    tok: PathBuf,
    cfg: TinyClip,
}

fn fixture(cfg: TinyClip, seed: u64) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let te = root.join("text_encoder");
    let tok = root.join("tokenizer");
    write_tiny_clip(&te, &tok, &cfg, seed).unwrap();
    Fixture {
        _tmp: tmp,
        root,
        te,
        tok,
        cfg,
    }
}

/// `[PROMPTS.len(), 77]` ids from the fixture's tokenizer.
fn prompt_ids(f: &Fixture) -> Tensor {
    let tok = ClipTokenizer::load(&f.tok).unwrap();
    let rows = tok.encode_batch(&PROMPTS).unwrap();
    let flat: Vec<u32> = rows.concat();
    Tensor::from_vec(flat, (PROMPTS.len(), TINY_MAX_LEN), &Device::Cpu).unwrap()
}

fn load(f: &Fixture, dtype: DType, reg: &mut HookRegistry) -> ClipTextEncoder {
    ClipTextEncoder::load(&f.te, "text_encoder", dtype, &Device::Cpu, reg).unwrap()
}

fn weights_of(f: &Fixture) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(f.te.join("model.safetensors"), &Device::Cpu).unwrap()
}

/// Rewrites the fixture's weights as `tensors` into a copy of the text encoder folder.
fn encoder_copy_with(f: &Fixture, name: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
    let dir = f.root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(f.te.join("config.json"), dir.join("config.json")).unwrap();
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// An independent f64 reference of HF's CLIPTextModel(WithProjection), written from the HF
// definition with plain loops.

fn erf(x: f64) -> f64 {
    let z = x.abs();
    let r = if z < 2.5 {
        let (z2, mut term, mut sum) = (z * z, z, z);
        for n in 1..400 {
            term *= -z2 / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-18 {
                break;
            }
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        // erfc by its continued fraction, evaluated backwards.
        let mut f = z;
        for k in (1..=80).rev() {
            f = z + (k as f64 / 2.0) / f;
        }
        1.0 - (-z * z).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    if x < 0.0 { -r } else { r }
}

fn ref_act(act: &str, x: f64) -> f64 {
    match act {
        "quick_gelu" => x / (1.0 + (-1.702 * x).exp()),
        "gelu" => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        other => panic!("activation {other}"),
    }
}

struct RefModel {
    w: HashMap<String, Vec<f64>>,
    cfg: TinyClip,
}

struct RefOut {
    /// `[t][d]` per row.
    last: Vec<Vec<Vec<f64>>>,
    penultimate: Vec<Vec<Vec<f64>>>,
    pooled: Vec<Vec<f64>>,
}

impl RefModel {
    fn new(f: &Fixture) -> Self {
        let w = weights_of(f)
            .into_iter()
            .map(|(k, t)| {
                let v = t
                    .to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap();
                (k, v)
            })
            .collect();
        Self {
            w,
            cfg: f.cfg.clone(),
        }
    }

    fn get(&self, name: &str) -> &[f64] {
        self.w.get(name).unwrap_or_else(|| panic!("no {name}"))
    }

    /// `y = W x + b`, `W` `[out, in]`.
    fn linear(&self, x: &[f64], name: &str, bias: bool) -> Vec<f64> {
        let w = self.get(&format!("{name}.weight"));
        let n_in = x.len();
        let out = w.len() / n_in;
        let mut y: Vec<f64> = (0..out)
            .map(|o| (0..n_in).map(|i| w[o * n_in + i] * x[i]).sum())
            .collect();
        if bias {
            let b = self.get(&format!("{name}.bias"));
            y.iter_mut().zip(b).for_each(|(y, b)| *y += b);
        }
        y
    }

    fn layer_norm(&self, x: &[f64], name: &str) -> Vec<f64> {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let inv = 1.0 / (var + 1e-5).sqrt();
        let w = self.get(&format!("{name}.weight"));
        let b = self.get(&format!("{name}.bias"));
        x.iter()
            .enumerate()
            .map(|(i, v)| (v - mean) * inv * w[i] + b[i])
            .collect()
    }

    fn forward(&self, ids: &[Vec<u32>]) -> RefOut {
        let c = &self.cfg;
        let (d, heads) = (c.hidden, c.heads);
        let hd = d / heads;
        let tok = self.get("text_model.embeddings.token_embedding.weight");
        let pos = self.get("text_model.embeddings.position_embedding.weight");
        let mut out = RefOut {
            last: vec![],
            penultimate: vec![],
            pooled: vec![],
        };
        for row in ids {
            let t = row.len();
            let mut x: Vec<Vec<f64>> = (0..t)
                .map(|j| {
                    let id = row[j] as usize;
                    (0..d).map(|k| tok[id * d + k] + pos[j * d + k]).collect()
                })
                .collect();
            let mut penult = x.clone();
            for l in 0..c.layers {
                if l + 1 == c.layers {
                    penult = x.clone();
                }
                let p = format!("text_model.encoder.layers.{l}");
                let h: Vec<Vec<f64>> = x
                    .iter()
                    .map(|v| self.layer_norm(v, &format!("{p}.layer_norm1")))
                    .collect();
                let scale = (hd as f64).powf(-0.5);
                let q: Vec<Vec<f64>> = h
                    .iter()
                    .map(|v| {
                        self.linear(v, &format!("{p}.self_attn.q_proj"), true)
                            .into_iter()
                            .map(|e| e * scale)
                            .collect()
                    })
                    .collect();
                let k: Vec<Vec<f64>> = h
                    .iter()
                    .map(|v| self.linear(v, &format!("{p}.self_attn.k_proj"), true))
                    .collect();
                let vv: Vec<Vec<f64>> = h
                    .iter()
                    .map(|v| self.linear(v, &format!("{p}.self_attn.v_proj"), true))
                    .collect();
                let mut attn = vec![vec![0.0; d]; t];
                for hh in 0..heads {
                    let r = hh * hd..(hh + 1) * hd;
                    for i in 0..t {
                        let scores: Vec<f64> = (0..=i)
                            .map(|j| r.clone().map(|e| q[i][e] * k[j][e]).sum::<f64>())
                            .collect();
                        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let ex: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                        let z: f64 = ex.iter().sum();
                        for (j, e) in ex.iter().enumerate() {
                            for ch in r.clone() {
                                attn[i][ch] += e / z * vv[j][ch];
                            }
                        }
                    }
                }
                for i in 0..t {
                    let o = self.linear(&attn[i], &format!("{p}.self_attn.out_proj"), true);
                    x[i].iter_mut().zip(o).for_each(|(x, o)| *x += o);
                    let h2 = self.layer_norm(&x[i], &format!("{p}.layer_norm2"));
                    let m: Vec<f64> = self
                        .linear(&h2, &format!("{p}.mlp.fc1"), true)
                        .into_iter()
                        .map(|v| ref_act(c.act, v))
                        .collect();
                    let m = self.linear(&m, &format!("{p}.mlp.fc2"), true);
                    x[i].iter_mut().zip(m).for_each(|(x, m)| *x += m);
                }
            }
            let last: Vec<Vec<f64>> = x
                .iter()
                .map(|v| self.layer_norm(v, "text_model.final_layer_norm"))
                .collect();
            let max = row.iter().copied().max().unwrap();
            let eos = row.iter().position(|&v| v == max).unwrap();
            let pooled = if c.with_projection {
                self.linear(&last[eos], "text_projection", false)
            } else {
                last[eos].clone()
            };
            out.last.push(last);
            out.penultimate.push(penult);
            out.pooled.push(pooled);
        }
        out
    }
}

fn max_abs_ref3(ours: &Tensor, reference: &[Vec<Vec<f64>>]) -> f64 {
    let ours = ours.to_dtype(DType::F64).unwrap().to_vec3::<f64>().unwrap();
    let mut m = 0.0f64;
    for (a, b) in ours
        .iter()
        .flatten()
        .flatten()
        .zip(reference.iter().flatten().flatten())
    {
        m = m.max((a - b).abs());
    }
    m
}

fn max_abs_ref2(ours: &Tensor, reference: &[Vec<f64>]) -> f64 {
    let ours = ours.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(ours.len(), reference.len());
    let mut m = 0.0f64;
    for (a, b) in ours.iter().zip(reference) {
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(b) {
            m = m.max((a - b).abs());
        }
    }
    m
}

#[test]
fn reference_erf_is_accurate() {
    for (x, want) in [
        (0.5, 0.520_499_877_813_046_5),
        (-1.0, -0.842_700_792_949_714_9),
        (2.0, 0.995_322_265_018_952_7),
        (3.0, 0.999_977_909_503_001_4),
    ] {
        assert!((erf(x) - want).abs() < 1e-14, "erf({x}) = {}", erf(x));
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer on the tiny diffusers folder.

#[test]
fn tokenizer_of_tiny_folder_encodes_words_and_pads() {
    let f = fixture(TinyClip::sd15(), 1);
    let tok = ClipTokenizer::load(&f.tok).unwrap();
    assert_eq!(tok.max_len(), 77);
    let id = |t: &str| tiny_id(t).unwrap();
    let ids = tok.encode("A  photo of a CAT").unwrap();
    let want = [
        id("<|startoftext|>"),
        id("a</w>"),
        id("photo</w>"),
        id("of</w>"),
        id("a</w>"),
        id("cat</w>"),
        id("<|endoftext|>"),
    ];
    assert_eq!(ids[..7], want);
    assert!(ids[7..].iter().all(|&i| i == id("<|endoftext|>")));
    let words = tok
        .tokenize("a painting of a dog in the style of van gogh, blue and red")
        .unwrap();
    let expect: Vec<u32> = [
        "a</w>",
        "painting</w>",
        "of</w>",
        "a</w>",
        "dog</w>",
        "in</w>",
        "the</w>",
        "style</w>",
        "of</w>",
        "van</w>",
        "gogh</w>",
        ",</w>",
        "blue</w>",
        "and</w>",
        "red</w>",
    ]
    .iter()
    .map(|t| id(t))
    .collect();
    assert_eq!(words, expect);

    let f2 = fixture(TinyClip::sdxl_2(), 1);
    let tok2 = ClipTokenizer::load(&f2.tok).unwrap();
    assert_eq!(tok2.pad_id(), id("!"));
    assert_eq!(tok2.eos_id(), id("<|endoftext|>"));
    let ids = tok2.encode("cat").unwrap();
    assert_eq!(
        ids[..3],
        [id("<|startoftext|>"), id("cat</w>"), id("<|endoftext|>")]
    );
    assert!(ids[3..].iter().all(|&i| i == id("!")));
}

// ---------------------------------------------------------------------------------------------
// (a) Numerics against candle-transformers and the f64 reference.

/// candle-transformers' `clip::text_model` config with the fixture's sizes (quick_gelu only:
/// its text encoder has no other activation, and `stable_diffusion::clip::Config` has private
/// fields, so it cannot be built with custom sizes).
fn candle_text_config(cfg: &TinyClip) -> candle_transformers::models::clip::text_model::ClipTextConfig {
    use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
    assert_eq!(cfg.act, "quick_gelu");
    ClipTextConfig {
        vocab_size: cfg.vocab_size(),
        embed_dim: cfg.hidden,
        activation: Activation::QuickGelu,
        intermediate_size: cfg.intermediate,
        max_position_embeddings: TINY_MAX_LEN,
        pad_with: None,
        num_hidden_layers: cfg.layers,
        num_attention_heads: cfg.heads,
        projection_dim: cfg.projection_dim,
    }
}

fn candle_vb(f: &Fixture) -> VarBuilder<'static> {
    unsafe {
        VarBuilder::from_mmaped_safetensors(&[f.te.join("model.safetensors")], DType::F32, &Device::Cpu)
    }
    .unwrap()
}

#[test]
fn last_hidden_state_matches_candle_transformers_clip() {
    use candle_transformers::models::clip::text_model::ClipTextTransformer;
    for (seed, layers) in [(7u64, 2usize), (8, 4)] {
        let cfg = TinyClip {
            layers,
            ..TinyClip::sd15()
        };
        let f = fixture(cfg, seed);
        let ids = prompt_ids(&f);
        let mut reg = HookRegistry::default();
        let ours = load(&f, DType::F32, &mut reg)
            .forward(&ids, &mut NoDiffHooks)
            .unwrap();
        let theirs =
            ClipTextTransformer::new(candle_vb(&f).pp("text_model"), &candle_text_config(&f.cfg)).unwrap();
        let last = theirs.forward_with_mask(&ids, usize::MAX).unwrap();
        let d_last = max_abs(&ours.last_hidden_state, &last);
        // Its Module::forward pools at argmax(ids), like HF.
        let pooled = theirs.forward(&ids).unwrap();
        let d_pooled = max_abs(&ours.pooled, &pooled);
        println!(
            "quick_gelu, {layers} layers: max |Δ| vs candle-transformers: last_hidden_state {d_last:.3e}, pooled {d_pooled:.3e}"
        );
        assert!(d_last < 1e-4, "{d_last}");
        assert!(d_pooled < 1e-4, "{d_pooled}");
    }
}

#[test]
fn outputs_match_independent_f64_reference_quick_gelu_and_gelu() {
    for (cfg, seed) in [(TinyClip::sd15(), 11u64), (TinyClip::sdxl_2(), 12)] {
        let f = fixture(cfg, seed);
        let ids = prompt_ids(&f);
        let mut reg = HookRegistry::default();
        let ours = load(&f, DType::F32, &mut reg)
            .forward(&ids, &mut NoDiffHooks)
            .unwrap();
        let reference = RefModel::new(&f).forward(&ids.to_vec2::<u32>().unwrap());
        let d_last = max_abs_ref3(&ours.last_hidden_state, &reference.last);
        let d_pen = max_abs_ref3(&ours.penultimate, &reference.penultimate);
        let d_pool = max_abs_ref2(&ours.pooled, &reference.pooled);
        println!(
            "{} ({} layers, projection {}): max |Δ| vs f64 reference: last {d_last:.3e}, penultimate {d_pen:.3e}, pooled {d_pool:.3e}",
            f.cfg.act, f.cfg.layers, f.cfg.with_projection
        );
        assert!(d_last < 1e-4 && d_pen < 1e-4 && d_pool < 1e-4);
    }
}

// ---------------------------------------------------------------------------------------------
// (b) The penultimate hidden state.

#[test]
fn penultimate_matches_candle_encoder_hidden_states() {
    use candle_transformers::models::clip::EncoderConfig;
    use candle_transformers::models::clip::text_model::ClipEncoder;
    let f = fixture(
        TinyClip {
            layers: 3,
            ..TinyClip::sd15()
        },
        21,
    );
    let ids = prompt_ids(&f);
    let mut reg = HookRegistry::default();
    let ours = load(&f, DType::F32, &mut reg)
        .forward(&ids, &mut NoDiffHooks)
        .unwrap();

    let vb = candle_vb(&f).pp("text_model");
    let encoder =
        ClipEncoder::new(vb.pp("encoder"), &EncoderConfig::Text(candle_text_config(&f.cfg))).unwrap();
    // HF embeddings: token + position.
    let (b, t) = ids.dims2().unwrap();
    let tok = vb
        .pp("embeddings.token_embedding")
        .get((f.cfg.vocab_size(), f.cfg.hidden), "weight")
        .unwrap();
    let pos = vb
        .pp("embeddings.position_embedding")
        .get((TINY_MAX_LEN, f.cfg.hidden), "weight")
        .unwrap();
    let emb = tok
        .index_select(&ids.flatten_all().unwrap(), 0)
        .unwrap()
        .reshape((b, t, f.cfg.hidden))
        .unwrap()
        .broadcast_add(&pos.narrow(0, 0, t).unwrap())
        .unwrap();
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::MIN } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu)
        .unwrap()
        .broadcast_as((b, 1, t, t))
        .unwrap();
    let hidden = encoder.output_hidden_states(&emb, Some(&mask)).unwrap();
    // hidden[i] is the output of layer i; HF's hidden_states[-2] is the output of layer L-2.
    let want = &hidden[f.cfg.layers - 2];
    let d = max_abs(&ours.penultimate, want);
    println!("penultimate: max |Δ| vs candle-transformers ClipEncoder hidden states {d:.3e}");
    assert!(d < 1e-4, "{d}");

    // Cross-check: a model with the last layer removed has the same penultimate-layer output
    // before its final norm... and our 1-layer encoder's penultimate is the embeddings.
    let mut weights = weights_of(&f);
    weights.retain(|k, _| !k.starts_with(&format!("text_model.encoder.layers.{}.", f.cfg.layers - 1)));
    let dir = encoder_copy_with(&f, "fewer_layers", &weights);
    let mut cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg_json["num_hidden_layers"] = (f.cfg.layers - 1).into();
    std::fs::write(dir.join("config.json"), cfg_json.to_string()).unwrap();
    let mut reg2 = HookRegistry::default();
    let shorter = ClipTextEncoder::load(&dir, "text_encoder", DType::F32, &Device::Cpu, &mut reg2)
        .unwrap()
        .forward(&ids, &mut NoDiffHooks)
        .unwrap();
    assert_eq!(reg2.len(), 2 * (f.cfg.layers - 1) + 1);
    let d_prev = max_abs(&shorter.penultimate, &hidden[f.cfg.layers - 3]);
    assert!(d_prev < 1e-4, "{d_prev}");
}

// ---------------------------------------------------------------------------------------------
// (c) Pooled output with projection.

#[test]
fn pooled_output_is_projected_eos_state() {
    let f = fixture(TinyClip::sdxl_2(), 31);
    let ids = prompt_ids(&f);
    let mut reg = HookRegistry::default();
    let enc = load(&f, DType::F32, &mut reg);
    assert_eq!(enc.config().projection_dim, Some(f.cfg.projection_dim));
    assert_eq!(enc.config().hidden_act, ClipActivation::Gelu);
    let out = enc.forward(&ids, &mut NoDiffHooks).unwrap();
    assert_eq!(out.pooled.dims(), [PROMPTS.len(), f.cfg.projection_dim]);
    assert_eq!(out.last_hidden_state.dims(), [PROMPTS.len(), 77, f.cfg.hidden]);
    let w = weights_of(&f).remove("text_projection.weight").unwrap();
    let eos = tiny_id("<|endoftext|>").unwrap();
    let rows = ids.to_vec2::<u32>().unwrap();
    for (r, row) in rows.iter().enumerate() {
        let p = row.iter().position(|&v| v == eos).unwrap();
        let state = out.last_hidden_state.i((r, p..p + 1)).unwrap();
        let want = state.matmul(&w.t().unwrap()).unwrap().squeeze(0).unwrap();
        let got = out.pooled.i(r).unwrap();
        let d = max_abs(&got, &want);
        assert!(d < 1e-5, "row {r}: {d}");
    }
    // The pad `!` is not the largest id, so the EOS is found also after padding.
    assert_eq!(rows[2][1], eos);
}

// ---------------------------------------------------------------------------------------------
// (d) Hooks.

/// Adds `delta` to every value at one hook; counts the calls.
struct AddAt {
    id: usize,
    delta: f32,
    calls: usize,
}

impl DiffHooks for AddAt {
    fn wants(&self, id: usize) -> bool {
        id == self.id
    }
    fn on_activation(&mut self, _: usize, act: DiffActivation<'_>) -> Result<HookFlow, DiffusionError> {
        self.calls += 1;
        act.data.iter_mut().for_each(|v| *v += self.delta);
        Ok(HookFlow::Continue)
    }
}

/// Records every call.
#[derive(Default)]
struct Recorder {
    calls: Vec<(usize, ActShape)>,
    stop_at: Option<usize>,
}

impl DiffHooks for Recorder {
    fn wants(&self, _: usize) -> bool {
        true
    }
    fn on_activation(&mut self, id: usize, act: DiffActivation<'_>) -> Result<HookFlow, DiffusionError> {
        assert_eq!(act.data.len(), act.shape.batch() * act.shape.row_len());
        self.calls.push((id, act.shape));
        Ok(if self.stop_at == Some(id) {
            HookFlow::Stop
        } else {
            HookFlow::Continue
        })
    }
}

fn forward_with(enc: &ClipTextEncoder, ids: &Tensor, hooks: &mut dyn DiffHooks) -> ClipOutput {
    enc.forward(ids, hooks).unwrap()
}

#[test]
fn registry_lists_layer_norms_in_forward_order() {
    let f = fixture(TinyClip::sd15(), 41);
    let mut reg = HookRegistry::default();
    let enc = load(&f, DType::F32, &mut reg);
    let names: Vec<String> = reg.sites().iter().map(|s| s.name.clone()).collect();
    let mut want = Vec::new();
    for i in 0..f.cfg.layers {
        want.push(format!("text_encoder.layers.{i}.layer_norm1"));
        want.push(format!("text_encoder.layers.{i}.layer_norm2"));
    }
    want.push("text_encoder.final_layer_norm".to_string());
    assert_eq!(names, want);
    assert_eq!(reg.len(), 2 * f.cfg.layers + 1);
    assert!(
        reg.sites()
            .iter()
            .all(|s| s.dim == f.cfg.hidden && s.kind == HookSiteKind::LayerNorm)
    );
    assert_eq!(enc.hook_ids(), (0..reg.len()).collect::<Vec<_>>());

    // SDXL: a second encoder continues the same registry with its own prefix.
    let f2 = fixture(TinyClip::sdxl_2(), 42);
    let enc2 = ClipTextEncoder::load(&f2.te, "text_encoder_2", DType::F32, &Device::Cpu, &mut reg).unwrap();
    assert_eq!(reg.len(), 2 * f.cfg.layers + 1 + 2 * f2.cfg.layers + 1);
    assert_eq!(enc2.hook_ids()[0], 2 * f.cfg.layers + 1);
    assert_eq!(
        reg.find("text_encoder_2.layers.0.layer_norm1"),
        Some(2 * f.cfg.layers + 1)
    );
    assert_eq!(reg.find("text_encoder_2.final_layer_norm"), Some(reg.len() - 1));
    assert_eq!(reg.sites()[reg.len() - 1].dim, f2.cfg.hidden);

    // The hooks are called in that order, with [b, t, d] activations.
    let ids = prompt_ids(&f);
    let mut rec = Recorder::default();
    forward_with(&enc, &ids, &mut rec);
    let ids_called: Vec<usize> = rec.calls.iter().map(|c| c.0).collect();
    assert_eq!(ids_called, enc.hook_ids());
    assert!(
        rec.calls
            .iter()
            .all(|c| c.1 == ActShape::Tokens([PROMPTS.len(), 77, f.cfg.hidden]))
    );
}

#[test]
fn final_norm_hook_shifts_output_by_exactly_one() {
    let f = fixture(TinyClip::sd15(), 43);
    let ids = prompt_ids(&f);
    let mut reg = HookRegistry::default();
    let enc = load(&f, DType::F32, &mut reg);
    let plain = forward_with(&enc, &ids, &mut NoDiffHooks);
    let id = reg.find("text_encoder.final_layer_norm").unwrap();
    let mut hook = AddAt {
        id,
        delta: 1.0,
        calls: 0,
    };
    let hooked = forward_with(&enc, &ids, &mut hook);
    assert_eq!(hook.calls, 1);
    let p = plain
        .last_hidden_state
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let h = hooked
        .last_hidden_state
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(p.iter().zip(&h).all(|(p, h)| *h == *p + 1.0));
    // The penultimate state is upstream and unchanged; the pooled output (no projection) moves.
    assert_eq!(max_abs(&plain.penultimate, &hooked.penultimate), 0.0);
    let dp = (hooked.pooled - plain.pooled)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(dp.iter().all(|v| (v - 1.0).abs() < 1e-6));
}

#[test]
fn early_hook_changes_output() {
    let f = fixture(TinyClip::sd15(), 44);
    let ids = prompt_ids(&f);
    let mut reg = HookRegistry::default();
    let enc = load(&f, DType::F32, &mut reg);
    let plain = forward_with(&enc, &ids, &mut NoDiffHooks);
    let id = reg.find("text_encoder.layers.0.layer_norm1").unwrap();
    let mut hook = AddAt {
        id,
        delta: 0.5,
        calls: 0,
    };
    let hooked = forward_with(&enc, &ids, &mut hook);
    assert_eq!(hook.calls, 1);
    let d_last = max_abs(&plain.last_hidden_state, &hooked.last_hidden_state);
    let d_pen = max_abs(&plain.penultimate, &hooked.penultimate);
    assert!(d_last > 1e-3 && d_pen > 1e-3, "{d_last} {d_pen}");
    // A hook in the last layer leaves the penultimate state alone but changes the output.
    let last_layer = f.cfg.layers - 1;
    let id = reg
        .find(&format!("text_encoder.layers.{last_layer}.layer_norm2"))
        .unwrap();
    let mut hook = AddAt {
        id,
        delta: 0.5,
        calls: 0,
    };
    let hooked = forward_with(&enc, &ids, &mut hook);
    assert_eq!(max_abs(&plain.penultimate, &hooked.penultimate), 0.0);
    assert!(max_abs(&plain.last_hidden_state, &hooked.last_hidden_state) > 1e-3);
}

#[test]
fn stop_from_a_hook_ends_the_forward_pass() {
    let f = fixture(TinyClip::sd15(), 45);
    let ids = prompt_ids(&f);
    let mut reg = HookRegistry::default();
    let enc = load(&f, DType::F32, &mut reg);
    let mut rec = Recorder {
        stop_at: Some(1),
        ..Recorder::default()
    };
    let err = enc.forward(&ids, &mut rec).err().unwrap();
    assert!(matches!(err, DiffusionError::Stopped), "{err}");
    assert_eq!(rec.calls.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// (e) Bad input.

fn load_err(dir: &Path) -> DiffusionError {
    let mut reg = HookRegistry::default();
    let err = ClipTextEncoder::load(dir, "text_encoder", DType::F32, &Device::Cpu, &mut reg)
        .err()
        .expect("loading should fail");
    assert!(reg.is_empty(), "no hook points registered by a failed load");
    err
}

#[test]
fn missing_tensor_is_a_named_error() {
    let f = fixture(TinyClip::sd15(), 51);
    for name in [
        "text_model.encoder.layers.1.mlp.fc2.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.final_layer_norm.bias",
    ] {
        let mut w = weights_of(&f);
        w.remove(name).unwrap();
        let dir = encoder_copy_with(&f, "missing", &w);
        let err = load_err(&dir);
        println!("missing {name}: {err}");
        assert!(matches!(err, DiffusionError::BadWeights { .. }), "{err}");
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn wrongly_shaped_tensor_is_a_named_error() {
    let f = fixture(TinyClip::sdxl_2(), 52);
    let d = f.cfg.hidden;
    for (name, shape) in [
        (
            "text_model.encoder.layers.0.self_attn.q_proj.weight",
            vec![d, d + 1],
        ),
        ("text_model.embeddings.token_embedding.weight", vec![7, d]),
        ("text_projection.weight", vec![f.cfg.projection_dim + 1, d]),
    ] {
        let mut w = weights_of(&f);
        w.insert(
            name.to_string(),
            Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap(),
        );
        let dir = encoder_copy_with(&f, "misshapen", &w);
        let err = load_err(&dir);
        println!("misshapen {name}: {err}");
        assert!(matches!(err, DiffusionError::BadWeights { .. }), "{err}");
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn bad_configs_and_folders_are_errors() {
    let f = fixture(TinyClip::sd15(), 53);
    let dir = encoder_copy_with(&f, "bad_act", &weights_of(&f));
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["hidden_act"] = "relu".into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let err = load_err(&dir);
    assert!(matches!(err, DiffusionError::BadConfig { .. }), "{err}");
    assert!(err.to_string().contains("relu"), "{err}");
    assert!(ClipTextConfig::from_file(&dir.join("config.json")).is_err());

    cfg["hidden_act"] = "quick_gelu".into();
    cfg["num_attention_heads"] = 5.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    assert!(matches!(load_err(&dir), DiffusionError::BadConfig { .. }));

    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    assert!(matches!(load_err(&dir), DiffusionError::BadConfig { .. }));

    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(matches!(load_err(&dir), DiffusionError::MissingComponent { .. }));
    assert!(matches!(
        load_err(&f.root.join("no_such_encoder")),
        DiffusionError::MissingComponent { .. }
    ));

    // Bad ids at forward time are errors, not panics.
    let mut reg = HookRegistry::default();
    let enc = load(&f, DType::F32, &mut reg);
    let too_big = Tensor::new(&[[0u32, f.cfg.vocab_size() as u32]], &Device::Cpu).unwrap();
    assert!(matches!(
        enc.forward(&too_big, &mut NoDiffHooks),
        Err(DiffusionError::BadInput(_))
    ));
    let too_long = Tensor::zeros((1, 78), DType::U32, &Device::Cpu).unwrap();
    assert!(enc.forward(&too_long, &mut NoDiffHooks).is_err());
    let floats = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(enc.forward(&floats, &mut NoDiffHooks).is_err());
    let one_d = Tensor::zeros(4, DType::U32, &Device::Cpu).unwrap();
    assert!(enc.forward(&one_d, &mut NoDiffHooks).is_err());
}

// ---------------------------------------------------------------------------------------------
// (f) f16.

#[test]
fn f16_stays_close_to_f32() {
    for (cfg, seed) in [(TinyClip::sd15(), 61u64), (TinyClip::sdxl_2(), 62)] {
        let f = fixture(cfg, seed);
        let ids = prompt_ids(&f);
        let mut reg = HookRegistry::default();
        let e32 = load(&f, DType::F32, &mut reg);
        let e16 = load(&f, DType::F16, &mut reg);
        let o32 = e32.forward(&ids, &mut NoDiffHooks).unwrap();
        // A hook on the f16 path still sees and returns f16 activations correctly.
        let id = e16.hook_ids()[0];
        let mut noop = AddAt {
            id,
            delta: 0.0,
            calls: 0,
        };
        let o16 = e16.forward(&ids, &mut noop).unwrap();
        assert_eq!(noop.calls, 1);
        assert_eq!(o16.last_hidden_state.dtype(), DType::F16);
        let d_last = max_abs(&o32.last_hidden_state, &o16.last_hidden_state);
        let d_pen = max_abs(&o32.penultimate, &o16.penultimate);
        let d_pool = max_abs(&o32.pooled, &o16.pooled);
        // The penultimate state is the unnormalised residual stream: its error scales with it.
        let pen_scale = max_abs(&o32.penultimate, &o32.penultimate.zeros_like().unwrap());
        println!(
            "{}: f16 vs f32 max |Δ|: last {d_last:.3e}, pooled {d_pool:.3e}, penultimate {d_pen:.3e} (max |value| {pen_scale:.2})",
            f.cfg.act
        );
        assert!(d_last < 1e-2 && d_pool < 1e-2, "{d_last} {d_pool}");
        assert!(d_pen < 1e-2 * pen_scale.max(1.0), "{d_pen}");
    }
}

// ---------------------------------------------------------------------------------------------
// Full-size comparison with candle-transformers' stable_diffusion::clip (SD 1.5 sizes; its
// Config cannot be built with other sizes). Writes ~0.5 GB of random weights: run with
// `cargo test --test diffusion_clip -- --ignored`.

#[test]
#[ignore = "writes and runs a full-size (123M-parameter) random SD 1.5 text encoder"]
fn matches_candle_stable_diffusion_clip_at_sd15_size() {
    use candle_nn::VarMap;
    use candle_transformers::models::stable_diffusion::clip::{ClipTextTransformer, Config};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("text_encoder");
    std::fs::create_dir_all(&dir).unwrap();
    let sd_cfg = Config::v1_5();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    // Building the model initialises every weight it needs in the VarMap.
    ClipTextTransformer::new(vb.clone(), &sd_cfg).unwrap();
    {
        // Perturb the layer norms and biases (initialised to constants) so they matter.
        let data = varmap.data().lock().unwrap();
        for (name, var) in data.iter() {
            if name.contains("layer_norm") || name.ends_with(".bias") {
                let base = if name.ends_with("weight") { 1.0 } else { 0.0 };
                let t = (Tensor::randn(0f32, 0.1, var.shape(), &Device::Cpu).unwrap() + base).unwrap();
                var.set(&t).unwrap();
            }
        }
    }
    varmap.save(dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architectures": ["CLIPTextModel"], "vocab_size": 49408, "hidden_size": 768,
        "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
        "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        "projection_dim": 768,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    let theirs = ClipTextTransformer::new(
        unsafe {
            VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &Device::Cpu)
        }
        .unwrap(),
        &sd_cfg,
    )
    .unwrap();
    let mut reg = HookRegistry::default();
    let ours = ClipTextEncoder::load(&dir, "text_encoder", DType::F32, &Device::Cpu, &mut reg).unwrap();
    assert_eq!(reg.len(), 25);
    let mut ids: Vec<u32> = vec![49406, 320, 1125, 539, 320, 2368, 49407];
    ids.resize(77, 49407);
    let ids = Tensor::from_vec(ids, (1, 77), &Device::Cpu).unwrap();
    let out = ours.forward(&ids, &mut NoDiffHooks).unwrap();
    let last = theirs.forward(&ids).unwrap();
    let (last2, penultimate) = theirs.forward_until_encoder_layer(&ids, usize::MAX, -2).unwrap();
    let d_last = max_abs(&out.last_hidden_state, &last);
    let d_pen = max_abs(&out.penultimate, &penultimate);
    println!(
        "SD 1.5 size: max |Δ| vs candle stable_diffusion::clip: last {d_last:.3e} (scale {:.2}), penultimate {d_pen:.3e}",
        last.abs()
            .unwrap()
            .max_keepdim(D::Minus1)
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    );
    assert_eq!(max_abs(&last, &last2), 0.0);
    assert!(d_last < 1e-4 && d_pen < 1e-4, "{d_last} {d_pen}");
}
