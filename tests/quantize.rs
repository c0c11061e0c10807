//! `act-studio quantize`: the demo model to Q4_K_M with llama.cpp's per-tensor types, a file
//! that loads and still talks like the original, the same bytes every time, and refusals and
//! errors that leave no output behind.

mod common;

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use act_studio::pipeline::quantize_model::{QuantizeError, QuantizeRequest, quantize_model};
use act_studio::runtime::LoadedModel;
use act_studio::runtime::generate::{GenerateOptions, generate};
use act_studio::runtime::quant_mix::{
    MixModel, MixTensor, QuantType, ggml_type_name, plan_mix, use_more_bits,
};
use act_studio::runtime::sampling::SamplingConfig;
use candle_core::Device;
use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use common::{run_cli, text};

fn read_content(path: &Path) -> Content {
    let mut r = BufReader::new(File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    Content::read(&mut r).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Tensor names in file (data) order.
fn names_in_file_order(c: &Content) -> Vec<String> {
    let mut v: Vec<(u64, &String)> = c.tensor_infos.iter().map(|(n, i)| (i.offset, n)).collect();
    v.sort();
    v.into_iter().map(|(_, n)| n.clone()).collect()
}

/// Greedy continuation of `prompt`: token ids and text.
fn greedy(m: &LoadedModel, prompt: &str, n: usize) -> (Vec<u32>, String) {
    let ids = m.tokenizer.encode(prompt).unwrap_or_else(|e| panic!("{e}"));
    let opts = GenerateOptions {
        max_tokens: n,
        sampling: SamplingConfig::greedy(),
        ..Default::default()
    };
    let g = generate(
        m,
        &ids,
        &opts,
        &mut act_studio::runtime::NoHooks,
        &AtomicBool::new(false),
        &mut |_| true,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (g.tokens, g.text)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn q4_k_m_of_the_demo_model_follows_llama_cpps_mix_loads_and_still_talks() {
    let Some(model) = common::demo_model() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let a = dir.path().join("a.q4_k_m.gguf");
    let b = dir.path().join("b.q4_k_m.gguf");
    let s = |p: &Path| p.to_str().unwrap_or_default().to_string();

    // Through the CLI, then through the library: the same bytes (deterministic, one code path).
    let o = run_cli(&[
        "quantize",
        "--model",
        &s(&model),
        "--out",
        &s(&a),
        "--type",
        "q4_k_m",
    ]);
    let stdout = text(&o.stdout);
    println!("{stdout}");
    assert!(o.status.success(), "{}", text(&o.stderr));
    // SmolLM2-135M: 30 layers, 576 wide (not a multiple of 256), ffn 1536, tied embeddings.
    assert!(
        stdout.contains(
            "tensors: 272 (210 requantized, 62 copied): f32 61, q4_K 16, q5_0 166, q6_K 14, q8_0 15"
        ),
        "{stdout}"
    );
    let req = QuantizeRequest {
        model: model.clone(),
        out: b.clone(),
        mix: QuantType::Q4KM,
    };
    let mut calls = 0;
    let report =
        quantize_model(&req, &mut |_| calls += 1, &AtomicBool::new(false)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(calls, 272);
    let (bytes_a, bytes_b) = (std::fs::read(&a), std::fs::read(&b));
    assert!(bytes_a.is_ok() && bytes_a.ok() == bytes_b.ok(), "two runs differ");
    assert_eq!(
        files_in(dir.path()),
        ["a.q4_k_m.gguf", "b.q4_k_m.gguf"],
        "temp files left"
    );
    assert_eq!(
        report.output_bytes,
        std::fs::metadata(&a).map(|m| m.len()).unwrap_or(0)
    );

    // Types: llama.cpp's rule, checked on the file as written.
    let (input, output) = (read_content(&model), read_content(&a));
    assert_eq!(
        names_in_file_order(&input),
        names_in_file_order(&output),
        "tensor order"
    );
    let names = names_in_file_order(&input);
    let views: Vec<MixTensor> = names
        .iter()
        .map(|n| MixTensor {
            name: n,
            dims: input.tensor_infos[n].shape.dims(),
        })
        .collect();
    let mix_model = MixModel {
        arch: "llama".into(),
        n_layer: 30,
        n_expert: 0,
        is_70b: false,
    };
    let plan = plan_mix(QuantType::Q4KM, &mix_model, &views).unwrap_or_else(|e| panic!("{e}"));
    for (name, planned) in names.iter().zip(plan) {
        let (i, o) = (&input.tensor_infos[name], &output.tensor_infos[name]);
        assert_eq!(i.shape, o.shape, "{name}");
        assert_eq!(o.ggml_dtype, planned.unwrap_or(i.ggml_dtype), "{name}");
        assert_eq!(o.offset % 32, 0, "{name} misaligned");
    }
    assert_eq!(output.tensor_data_offset % 32, 0);
    let ty = |n: &str| ggml_type_name(output.tensor_infos[n].ggml_dtype);
    assert_eq!(ty("token_embd.weight"), "q8_0"); // tied: the output's rule, 576 % 256 ≠ 0
    assert_eq!(ty("output_norm.weight"), "f32");
    for l in 0..30 {
        let more = use_more_bits(l, 30);
        assert_eq!(
            ty(&format!("blk.{l}.ffn_down.weight")),
            if more { "q6_K" } else { "q4_K" }
        );
        assert_eq!(
            ty(&format!("blk.{l}.attn_v.weight")),
            if more { "q8_0" } else { "q5_0" }
        );
        for t in ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"] {
            assert_eq!(ty(&format!("blk.{l}.{t}.weight")), "q5_0");
        }
        assert_eq!(ty(&format!("blk.{l}.attn_norm.weight")), "f32");
    }

    // Metadata: every key kept with its type and value, but the file type (now u32 15).
    for (k, v) in &input.metadata {
        let w = output.metadata.get(k).unwrap_or_else(|| panic!("{k} lost"));
        assert_eq!(v.value_type(), w.value_type(), "{k}");
        if k != "general.file_type" && k != "general.quantization_version" {
            assert_eq!(format!("{v:?}"), format!("{w:?}"), "{k}");
        }
    }
    assert!(matches!(output.metadata["general.file_type"], Value::U32(15)));
    assert!(matches!(
        output.metadata["general.quantization_version"],
        Value::U32(2)
    ));

    // It loads in the runtime and talks like the original. Measured (greedy, 24 tokens): the
    // first 5 tokens agree on these three prompts; "Once upon a time" parts after 2 (", the"
    // then another story), so it is not asserted.
    let original = LoadedModel::load(&model).unwrap_or_else(|e| panic!("{e}"));
    let requantized = LoadedModel::load(&a).unwrap_or_else(|e| panic!("{e}"));
    let ocean = original
        .tokenizer
        .render_chat(
            &[act_studio::runtime::tokenizer::ChatMessage::user(
                "Write one sentence about the ocean.",
            )],
            true,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    for (prompt, expected) in [
        ("The capital of France is", "Paris"),
        ("The three primary colors are", "red"),
        (ocean.as_str(), "ocean"),
    ] {
        let (t0, s0) = greedy(&original, prompt, 24);
        let (t1, s1) = greedy(&requantized, prompt, 24);
        let same = t0.iter().zip(&t1).take_while(|(x, y)| x == y).count();
        println!("{prompt:?}\n  q4_1:   {s0:?}\n  q4_k_m: {s1:?}\n  first {same} tokens agree");
        assert!(same >= 3, "{prompt:?}: q4_1 {s0:?} vs q4_k_m {s1:?}");
        assert!(s1.contains(expected), "{prompt:?}: {s1:?}");
    }
}

#[test]
fn the_model_itself_is_refused_as_output_and_left_intact() {
    let Some(demo) = common::demo_model() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // A copy: were the refusal broken, the demo model would not be the one overwritten.
    let model = dir.path().join("m.gguf");
    std::fs::copy(&demo, &model).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(dir.path().join("sub")).unwrap_or_else(|e| panic!("{e}"));
    let before = std::fs::read(&model).unwrap_or_else(|e| panic!("{e}"));
    let m = model.to_str().unwrap_or_default();
    let via_sub = dir.path().join("sub/../m.gguf");
    for out in [m, via_sub.to_str().unwrap_or_default()] {
        let o = run_cli(&["quantize", "--model", m, "--out", out, "--type", "q8_0"]);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "--out {out} accepted");
        assert!(err.contains("is the input model itself"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(
        std::fs::read(&model).is_ok_and(|after| after == before),
        "the model changed"
    );
    assert_eq!(files_in(dir.path()), ["m.gguf", "sub"]);
}

#[test]
fn errors_leave_no_output_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = |n: &str| dir.path().join(n);
    let s = |n: &str| p(n).to_str().unwrap_or_default().to_string();
    // A tiny valid GGUF for the cancel and bad-type cases.
    let values: Vec<f32> = (0..4 * 256).map(|i| (i % 17) as f32 / 8.0 - 1.0).collect();
    let w = candle_core::Tensor::from_vec(values, (4, 256), &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    let w = QTensor::quantize(&w, GgmlDType::F32).unwrap_or_else(|e| panic!("{e}"));
    let arch = Value::String("llama".into());
    let mut f = File::create(p("tiny.gguf")).unwrap_or_else(|e| panic!("{e}"));
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("blk.0.ffn_up.weight", &w)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    drop(f);
    std::fs::write(p("notes.txt"), "not a model at all").unwrap_or_else(|e| panic!("{e}"));
    // An existing output stays as it was when a run fails.
    std::fs::write(p("kept.gguf"), "old").unwrap_or_else(|e| panic!("{e}"));

    let fails = |args: &[&str], needle: &str| {
        let o = run_cli(args);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    };
    let q = |model: &str, out: &str, ty: &str| {
        [
            "quantize".to_string(),
            "--model".into(),
            model.into(),
            "--out".into(),
            out.into(),
            "--type".into(),
            ty.into(),
        ]
    };
    let run = |model: &str, out: &str, ty: &str, needle: &str| {
        let args = q(model, out, ty);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args, needle);
    };
    run(&s("notes.txt"), &s("out.gguf"), "q4_k_m", "not a valid GGUF file");
    run(
        &s("notes.txt"),
        &s("kept.gguf"),
        "q4_k_m",
        "not a valid GGUF file",
    );
    run(&s("missing.gguf"), &s("out.gguf"), "q4_k_m", "missing.gguf");
    run(
        &s("tiny.gguf"),
        &s("out.gguf"),
        "q3_k_xl",
        "unknown quantization type `q3_k_xl`",
    );
    run(&s("tiny.gguf"), &s("no/such/folder/out.gguf"), "q8_0", "out.gguf");
    // Cancelled: nothing written either.
    let req = QuantizeRequest {
        model: p("tiny.gguf"),
        out: p("out.gguf"),
        mix: QuantType::Q4KM,
    };
    let r = quantize_model(&req, &mut |_| {}, &AtomicBool::new(true));
    assert!(matches!(r, Err(QuantizeError::Cancelled)), "{r:?}");
    assert_eq!(files_in(dir.path()), ["kept.gguf", "notes.txt", "tiny.gguf"]);
    assert_eq!(std::fs::read(p("kept.gguf")).ok(), Some(b"old".to_vec()));
    // And the tiny file does quantize (so the failures above were the inputs' fault).
    let r = quantize_model(&req, &mut |_| {}, &AtomicBool::new(false)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.tensors[0].to, GgmlDType::Q4K);
}
