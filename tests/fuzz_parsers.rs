//! A bounded mutation fuzzer over everything AcT Studio reads from a user: GGUF models, Hugging
//! Face folders (`config.json`), maps files, datasets (txt, csv, jsonl, json) and chat
//! templates. Each target starts from real, valid seed inputs, applies a few random mutations
//! (bit flips, interesting integers and floats written over the bytes, insertions, deletions,
//! truncations, numbers in text replaced by extremes) and runs the parser, and whatever it
//! accepts one step further (a forward pass, a render). Errors are fine; a panic fails the
//! test and saves the input under `target/fuzz-crashes/`. Every input in
//! `tests/fixtures/fuzz-regressions/<target>/` runs first, on every `cargo test`.
//!
//! `ACT_FUZZ_CASES` (default 1,000) sets the cases per target; `ACT_FUZZ_SEED` the seed
//! (default 1). A long run: `ACT_FUZZ_CASES=20000 cargo test --release --test fuzz_parsers`.

#[allow(dead_code)]
#[path = "hf_models/fixtures.rs"]
mod fixtures;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use act_studio::pipeline::dataset::parse_dataset;
use act_studio::runtime::forward::{Batch, LogitsMode};
use act_studio::runtime::linear::MatPath;
use act_studio::runtime::model_header::ModelHeader;
use act_studio::runtime::tokenizer::{ChatMessage, render_template};
use act_studio::runtime::{LoadedModel, NoHooks};
use act_studio::transport::{DatasetInfo, HookMap, MapsFile, MapsMeta, Method, ModelFingerprint, Support};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};

/// xorshift64*: small, fast and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING_U64: [u64; 10] = [
    0,
    1,
    2,
    255,
    65_535,
    1 << 31,
    u32::MAX as u64,
    1 << 40,
    1 << 62,
    u64::MAX,
];
const INTERESTING_TEXT: [&str; 12] = [
    "0",
    "-1",
    "1e308",
    "-1e308",
    "NaN",
    "inf",
    "4294967296",
    "18446744073709551615",
    "99999999999999999999999",
    "0.0000001",
    "\"",
    "{",
];

/// One to four random mutations of `data`; three in four fall in its first `hot` bytes (a
/// file's header, where lengths and counts live) when given.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, text: bool, hot: Option<usize>) {
    for _ in 0..1 + rng.below(4) {
        let len = match hot {
            Some(h) if rng.below(4) != 0 => h.min(data.len()),
            _ => data.len(),
        };
        match rng.below(if text { 8 } else { 7 }) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = [0u8, 0xFF, 0x7F, 0x80, b'"', b'{', b'\n'][rng.below(7)];
            }
            2 if len >= 8 => {
                let i = rng.below(len - 7);
                let v = INTERESTING_U64[rng.below(INTERESTING_U64.len())];
                let bytes = v.to_le_bytes();
                let w = if rng.below(2) == 0 { 4 } else { 8 };
                data[i..i + w].copy_from_slice(&bytes[..w]);
            }
            3 if len >= 4 => {
                let i = rng.below(len - 3);
                let f = [f32::NAN, f32::INFINITY, -1.0, 0.0, 1e38][rng.below(5)];
                data[i..i + 4].copy_from_slice(&f.to_le_bytes());
            }
            4 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(i..i, ins);
            }
            5 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below(64.min(len - i));
                data.drain(i..i + n);
            }
            6 if len > 0 => data.truncate(rng.below(len)),
            7 => {
                // Replace a run of digits with an extreme number or a stray quote or brace.
                let starts: Vec<usize> = (0..len)
                    .filter(|&i| data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_digit()))
                    .collect();
                if let Some(&s) = starts.get(rng.below(starts.len())) {
                    let e = (s..len).find(|&i| !data[i].is_ascii_digit()).unwrap_or(len);
                    let v = INTERESTING_TEXT[rng.below(INTERESTING_TEXT.len())];
                    data.splice(s..e, v.bytes());
                }
            }
            _ => {}
        }
    }
}

fn cases() -> usize {
    std::env::var("ACT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

fn seed() -> u64 {
    std::env::var("ACT_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Runs `target` on the regression inputs, then on `cases()` mutations of the seeds; returns
/// how many inputs ran and how many the parser accepted.
fn fuzz(
    name: &str,
    seeds: &[Vec<u8>],
    text: bool,
    hot: Option<usize>,
    mut target: impl FnMut(&[u8]) -> bool,
) -> (usize, usize) {
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz-regressions")
        .join(name);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&regressions)
        .map(|d| {
            d.flatten()
                .filter_map(|e| Some((e.path().display().to_string(), std::fs::read(e.path()).ok()?)))
                .collect()
        })
        .unwrap_or_default();
    inputs.sort();
    let mut rng = Rng(seed().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ name.len() as u64);
    let (mut ran, mut accepted) = (0, 0);
    let total = inputs.len() + cases();
    for i in 0..total {
        let (label, data) = if i < inputs.len() {
            inputs[i].clone()
        } else {
            let mut d = seeds[rng.below(seeds.len())].clone();
            mutate(&mut rng, &mut d, text, hot);
            (format!("case {i}"), d)
        };
        match catch_unwind(AssertUnwindSafe(|| target(&data))) {
            Ok(ok) => {
                ran += 1;
                accepted += usize::from(ok);
            }
            Err(_) => {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target/fuzz-crashes")
                    .join(name);
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("seed{}-{i}.bin", seed()));
                let _ = std::fs::write(&file, &data);
                panic!("{name}: {label} panicked; input saved to {}", file.display());
            }
        }
    }
    println!(
        "{name}: {ran} inputs ({} regression cases), {accepted} accepted",
        inputs.len()
    );
    (ran, accepted)
}

// ---------------------------------------------------------------- GGUF

/// A tiny Llama GGUF: 2 layers, width 32, 2 heads (1 kv head), MLP 64, byte-level BPE over
/// the 256 byte characters plus `<s>`, `</s>`, a few merges and a chat template; weights F32
/// and Q8_0.
fn tiny_gguf() -> Vec<u8> {
    let (d, ffn, layers, kv) = (32usize, 64usize, 2usize, 16usize);
    let mut tokens: Vec<String> = vec!["<s>".into(), "</s>".into()];
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    alphabet.sort();
    tokens.extend(alphabet.iter().map(char::to_string));
    let merges = ["h e", "l l", "he ll", "Ġ t"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let vocab = tokens.len();
    let s = |v: &str| Value::String(v.to_string());
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", s("llama")),
        ("general.alignment", Value::U32(32)),
        ("llama.block_count", Value::U32(layers as u32)),
        ("llama.context_length", Value::U32(64)),
        ("llama.embedding_length", Value::U32(d as u32)),
        ("llama.feed_forward_length", Value::U32(ffn as u32)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", Value::U32(vocab as u32)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("gpt2")),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.merges",
            Value::Array(merges.iter().map(|m| s(m)).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(
                (0..vocab)
                    .map(|i| Value::I32(if i < 2 { 3 } else { 1 }))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
        ("tokenizer.chat_template", s(SMOL_TEMPLATE)),
    ];
    let mut k = 0u32;
    let mut t = |rows: usize, cols: usize, dtype: GgmlDType| {
        k += 1;
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ k) % 1000) as f32 / 5000.0 - 0.1)
            .collect();
        let x = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        QTensor::quantize(&x, dtype).unwrap_or_else(|e| panic!("{e}"))
    };
    let ones = |n: usize| {
        let x = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        QTensor::quantize(&x, GgmlDType::F32).unwrap_or_else(|e| panic!("{e}"))
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), t(vocab, d, GgmlDType::F32)),
        ("output_norm.weight".into(), ones(d)),
    ];
    for l in 0..layers {
        let n = |x: &str| format!("blk.{l}.{x}.weight");
        tensors.push((n("attn_norm"), ones(d)));
        tensors.push((n("ffn_norm"), ones(d)));
        tensors.push((n("attn_q"), t(d, d, GgmlDType::Q8_0)));
        tensors.push((n("attn_k"), t(kv, d, GgmlDType::Q8_0)));
        tensors.push((n("attn_v"), t(kv, d, GgmlDType::Q8_0)));
        tensors.push((n("attn_output"), t(d, d, GgmlDType::Q8_0)));
        tensors.push((n("ffn_gate"), t(ffn, d, GgmlDType::Q8_0)));
        tensors.push((n("ffn_up"), t(ffn, d, GgmlDType::Q8_0)));
        tensors.push((n("ffn_down"), t(d, ffn, GgmlDType::F32)));
    }
    let mdr: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let tr: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &mdr, &tr).unwrap_or_else(|e| panic!("{e}"));
    out.into_inner()
}

const SMOL_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";

/// Loads a model file and, when it loads, encodes a prompt, renders its chat template and runs
/// a two-token forward pass; also reads it as `inspect` does.
fn run_model(path: &Path) -> bool {
    let _ = ModelHeader::read(path);
    let Ok(m) = LoadedModel::load(path) else {
        return false;
    };
    if let Ok(ids) = m.tokenizer.encode("hello the cat") {
        let ids: Vec<u32> = ids.into_iter().take(2).collect();
        if !ids.is_empty() {
            let mut cache = vec![m.new_cache()];
            let batch = Batch {
                tokens: &ids,
                batch: 1,
                seq: ids.len(),
                valid: &[ids.len()],
                prompt_lens: &[ids.len()],
            };
            let _ = m.model.forward(
                &batch,
                &mut cache,
                &mut NoHooks,
                MatPath::Quantized,
                LogitsMode::Last,
            );
        }
    }
    let _ = m.tokenizer.render_chat(&[ChatMessage::user("hi")], true);
    true
}

#[test]
fn gguf_files() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("m.gguf");
    let seed = tiny_gguf();
    std::fs::write(&path, &seed).unwrap_or_else(|e| panic!("{e}"));
    assert!(run_model(&path), "the seed does not load");
    let header = gguf_file::Content::read(&mut std::io::Cursor::new(&seed))
        .map(|c| c.tensor_data_offset as usize)
        .unwrap_or_else(|e| panic!("{e}"));
    let (ran, accepted) = fuzz("gguf", &[seed], false, Some(header), |data| {
        std::fs::write(&path, data).is_ok() && run_model(&path)
    });
    assert!(
        ran > 0 && accepted > 0,
        "no mutated file loaded: the mutations are too coarse"
    );
}

// ---------------------------------------------------------------- Hugging Face config.json

#[test]
fn hugging_face_config_json() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = fixtures::llama_like(false, 3);
    fixtures::write(dir.path(), &model, fixtures::F32);
    let config = dir.path().join("config.json");
    let seed = std::fs::read(&config).unwrap_or_else(|e| panic!("{e}"));
    assert!(run_model(dir.path()), "the seed does not load");
    let (_, accepted) = fuzz("config", &[seed], true, None, |data| {
        std::fs::write(&config, data).is_ok() && run_model(dir.path())
    });
    assert!(accepted > 0);
}

// ---------------------------------------------------------------- maps files

fn maps_seed(dir: &Path) -> Vec<u8> {
    let info = DatasetInfo {
        name: "x".into(),
        sha256: String::new(),
        count: 3,
    };
    let meta = MapsMeta::new(
        "c",
        Method::LinearAct,
        Support::Q0_100,
        "mean",
        "causal",
        ModelFingerprint::arrays(4),
        info.clone(),
        info,
    );
    let hooks = (0..2)
        .map(|i| {
            let m = HookMap::new(
                Method::LinearAct,
                Support::Q0_100,
                vec![1.5; 4],
                vec![0.25 * i as f32; 4],
                vec![-1.0; 4],
                vec![1.0; 4],
                Default::default(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            (format!("layers.{i}.mlp_norm"), m)
        })
        .collect();
    let p: PathBuf = dir.join("seed.safetensors");
    MapsFile::new(meta, hooks)
        .and_then(|m| m.save(&p))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn maps_files() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let seed = maps_seed(dir.path());
    let path = dir.path().join("m.safetensors");
    let header = seed.get(..8).map_or(0, |b| {
        u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize + 8
    });
    let (_, accepted) = fuzz("maps", &[seed], false, Some(header), |data| {
        if std::fs::write(&path, data).is_err() {
            return false;
        }
        match MapsFile::load(&path) {
            Ok(m) => {
                let mut x = vec![0.5f32; 8];
                for (_, h) in m.hooks() {
                    h.apply_rows(&mut x, 1.0);
                }
                true
            }
            Err(_) => false,
        }
    });
    assert!(accepted > 0);
}

// ---------------------------------------------------------------- datasets

#[test]
fn datasets() {
    let seeds: [(&str, &str, Option<&str>); 4] = [
        (
            "txt",
            "a sentence about football\nanother one\n\n  third  \n",
            None,
        ),
        (
            "csv",
            "id,text,label\n1,\"quoted, with comma\",1\n2,plain,0\n3,\"multi\nline\",1\n",
            None,
        ),
        (
            "jsonl",
            "{\"text\": \"one\", \"label\": 1}\n{\"text\": \"two\", \"label\": 0}\n",
            None,
        ),
        (
            "json",
            "{\"giraffe\": [\"A tall giraffe.\", \"Giraffes eat 12 leaves.\"], \"none\": [\"A car.\"]}",
            Some("none"),
        ),
    ];
    for (ext, text, field) in seeds {
        let filters: Vec<(String, String)> = Vec::new();
        let name = format!("dataset-{ext}");
        fuzz(&name, &[text.as_bytes().to_vec()], true, None, |data| {
            let text = String::from_utf8_lossy(data);
            parse_dataset(&text, ext, field, &filters, "x", "x").is_ok()
        });
    }
}

// ---------------------------------------------------------------- chat templates

#[test]
fn chat_templates() {
    let seeds = [
        SMOL_TEMPLATE.as_bytes().to_vec(),
        GEMMA_TEMPLATE.as_bytes().to_vec(),
    ];
    let msg = |role: &str, content: &str| ChatMessage {
        role: role.into(),
        content: content.into(),
    };
    let messages = [
        msg("system", "be brief"),
        msg("user", "hi"),
        msg("assistant", "hello"),
        msg("user", "football?"),
    ];
    let (_, accepted) = fuzz("template", &seeds, true, None, |data| {
        let t = String::from_utf8_lossy(data);
        render_template(&t, &messages, true, "<bos>", "<eos>").is_ok()
    });
    assert!(accepted > 0);
}
