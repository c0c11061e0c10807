//! A corpus of broken model files made from the demo model's header, one byte patch each:
//! every one loads to a clear error naming the problem, never a panic, an abort, a hang or a
//! model that runs with garbage (issue 15's "sizes from the file trusted before checking").
//!
//! Only the header and the tensor table are written (the first 2 MB): each check fires before
//! tensor data is read, and the assertion names the expected reason, so an error about the
//! missing data would fail the case.

mod common;

use std::path::Path;

use act_studio::runtime::LoadedModel;

/// Where the bytes right after the length-prefixed string `name` start (the header writes
/// metadata keys and tensor names as a u64 length, then the bytes).
fn after_name(bytes: &[u8], name: &str) -> usize {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend(name.as_bytes());
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat)
        .unwrap_or_else(|| panic!("no {name} in the header"));
    at + pat.len()
}

/// Where the value of metadata `key` starts (after its name and its u32 type).
fn value_at(bytes: &[u8], key: &str) -> usize {
    after_name(bytes, key) + 4
}

/// Where tensor `name`'s entry continues after its name: dims count, dims, type, offset.
fn tensor_at(bytes: &[u8], name: &str) -> usize {
    after_name(bytes, name)
}

fn put(bytes: &mut [u8], at: usize, v: &[u8]) {
    bytes[at..at + v.len()].copy_from_slice(v);
}

/// The load error of `bytes` written to `dir/name.gguf`.
fn load_error(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(format!("{name}.gguf"));
    std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{e}"));
    match LoadedModel::load(&p) {
        Ok(_) => panic!("{name}: loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_headers_give_clear_errors() {
    let Some(path) = common::demo_model() else { return };
    let full = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let head = &full[..full.len().min(2 << 20)];
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    type Patch = Box<dyn Fn(&mut Vec<u8>)>;
    let u32_at = |key: &'static str, v: u32| -> Patch {
        Box::new(move |b| {
            let at = value_at(b, key);
            put(b, at, &v.to_le_bytes())
        })
    };
    let f32_at = |key: &'static str, v: f32| -> Patch {
        Box::new(move |b| {
            let at = value_at(b, key);
            put(b, at, &v.to_le_bytes())
        })
    };
    let cases: Vec<(&str, Patch, &str)> = vec![
        (
            "layers-u32-max",
            u32_at("llama.block_count", u32::MAX),
            "layers (at most 4096)",
        ),
        (
            "heads-zero",
            u32_at("llama.attention.head_count", 0),
            "heads is zero",
        ),
        (
            "context-zero",
            u32_at("llama.context_length", 0),
            "context length is zero",
        ),
        (
            "rope-zero",
            f32_at("llama.rope.freq_base", 0.0),
            "RoPE base θ = 0",
        ),
        (
            "rope-nan",
            f32_at("llama.rope.freq_base", f32::NAN),
            "RoPE base θ = NaN",
        ),
        (
            "rope-inf",
            f32_at("llama.rope.freq_base", f32::INFINITY),
            "RoPE base θ = inf",
        ),
        (
            "eps-nan",
            f32_at("llama.attention.layer_norm_rms_epsilon", f32::NAN),
            "norm epsilon NaN",
        ),
        (
            "eps-negative",
            f32_at("llama.attention.layer_norm_rms_epsilon", -1.0),
            "norm epsilon -1",
        ),
        (
            // general.file_type renamed to general.alignment (same length), value 0: candle's
            // reader divides by it.
            "alignment-zero",
            Box::new(|b| {
                let v = value_at(b, "general.file_type");
                put(b, v - 4 - 17, b"general.alignment");
                put(b, v, &0u32.to_le_bytes());
            }),
            "general.alignment = 0",
        ),
        (
            "string-length-2^60",
            Box::new(|b| {
                let v = value_at(b, "general.name");
                put(b, v, &(1u64 << 60).to_le_bytes());
            }),
            "metadata `general.name`",
        ),
        (
            "array-count-2^60",
            Box::new(|b| {
                let v = value_at(b, "tokenizer.ggml.tokens");
                put(b, v + 4, &(1u64 << 60).to_le_bytes());
            }),
            "metadata `tokenizer.ggml.tokens`",
        ),
        (
            "kv-count-2^60",
            Box::new(|b| put(b, 16, &(1u64 << 60).to_le_bytes())),
            "key/value pairs",
        ),
        (
            // A Q4_1 tensor retyped as F32 would read 6× its bytes, its neighbours' data.
            "dtype-changed-to-f32",
            Box::new(|b| {
                let t = tensor_at(b, "blk.0.ffn_up.weight");
                put(b, t + 4 + 16, &0u32.to_le_bytes());
            }),
            "overlap",
        ),
        (
            "dims-wrap-around",
            Box::new(|b| {
                let t = tensor_at(b, "blk.0.ffn_up.weight");
                put(b, t + 4 + 8, &(1u64 << 62).to_le_bytes());
            }),
            "more than 2^64",
        ),
    ];
    for (name, patch, want) in cases {
        let mut b = head.to_vec();
        patch(&mut b);
        let e = load_error(dir.path(), name, &b);
        println!("{name}: {e}");
        assert!(e.contains(want), "{name}: expected {want:?} in: {e}");
    }
}

/// Special-token ids beyond the vocabulary (checked when the tokenizer is built, after the
/// weights: these files are whole).
#[test]
fn special_tokens_beyond_the_vocabulary_are_refused() {
    let Some(path) = common::demo_model() else { return };
    let full = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", 1_000_000_000u32),
        ("tokenizer.ggml.eos_token_id", 49_152),
    ] {
        let mut b = full.clone();
        let at = value_at(&b, key);
        put(&mut b, at, &id.to_le_bytes());
        let e = load_error(dir.path(), "special", &b);
        println!("{key}: {e}");
        assert!(
            e.contains(key) && e.contains("not a token of the vocabulary"),
            "{e}"
        );
    }
}

/// A named pipe given as the model is refused at once instead of blocking in `open`.
#[cfg(unix)]
#[test]
fn a_named_pipe_is_not_opened() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fifo = dir.path().join("model.gguf");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        println!("skipped: mkfifo is not available");
        return;
    }
    let e = LoadedModel::load(&fifo).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
}
