//! The command line end to end: `fit-arrays`, `maps-info`, and bad input.

mod common;

use std::path::Path;

use common::{run_cli as act, text};

fn write_csv(path: &Path, rows: usize, cols: usize, offset: f32) {
    let mut s = String::new();
    for r in 0..rows {
        let row: Vec<String> = (0..cols)
            .map(|c| format!("{}", offset + ((r * 7 + c * 3) % 11) as f32 * 0.5 + c as f32))
            .collect();
        s.push_str(&row.join(","));
        s.push('\n');
    }
    std::fs::write(path, s).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn help_lists_the_subcommands() {
    let out = act(&["--help"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(s.contains("fit-arrays") && s.contains("maps-info"), "{s}");
}

#[test]
fn fit_arrays_then_maps_info_from_csv_and_safetensors() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (s, t) = (dir.path().join("neutral.csv"), dir.path().join("football.csv"));
    write_csv(&s, 20, 5, 0.0);
    write_csv(&t, 15, 5, 3.0);
    let out_path = dir.path().join("football.safetensors");
    let out = act(&[
        "fit-arrays",
        "--source",
        s.to_str().unwrap_or_default(),
        "--target",
        t.to_str().unwrap_or_default(),
        "--out",
        out_path.to_str().unwrap_or_default(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info = act(&["maps-info", out_path.to_str().unwrap_or_default()]);
    assert!(info.status.success(), "{}", text(&info.stderr));
    let s_info = text(&info.stdout);
    for needle in [
        "concept:      football",
        "Linear-AcT",
        "q0-100",
        "arrays (hidden 5, 0 layers",
        "neutral.csv (20 samples",
        "football.csv (15 samples",
        "arrays.omega",
        "[5]",
        "arrays.w1_after",
    ] {
        assert!(s_info.contains(needle), "missing `{needle}` in\n{s_info}");
    }

    // The same target exported as a 2-D F64 safetensors tensor, AurA, named explicitly.
    let st = dir.path().join("t.safetensors");
    let m = act_studio::pipeline::arrays::load_array(&t).unwrap_or_else(|e| panic!("{e}"));
    let bytes: Vec<u8> = m
        .matrix
        .data
        .iter()
        .flat_map(|&v| f64::from(v).to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F64,
        vec![m.matrix.rows, m.matrix.cols],
        &bytes,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        &st,
        safetensors::serialize([("acts", view)], None).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out2 = dir.path().join("x.safetensors");
    let out = act(&[
        "fit-arrays",
        "--source",
        s.to_str().unwrap_or_default(),
        "--target",
        st.to_str().unwrap_or_default(),
        "--method",
        "aura",
        "--name",
        "sport",
        "--out",
        out2.to_str().unwrap_or_default(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json = act(&["maps-info", "--json", out2.to_str().unwrap_or_default()]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["concept"], "sport");
    assert_eq!(v["method"]["name"], "aura");
    assert_eq!(v["support"]["kind"], "unbounded");
}

#[test]
fn bad_input_gives_clear_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let good = dir.path().join("good.csv");
    write_csv(&good, 4, 3, 0.0);
    let nan = dir.path().join("nan.csv");
    std::fs::write(&nan, "1,2,3\n4,nan,6\n").unwrap_or_else(|e| panic!("{e}"));
    let ragged = dir.path().join("ragged.csv");
    std::fs::write(&ragged, "1,2,3\n4,5\n").unwrap_or_else(|e| panic!("{e}"));
    let narrow = dir.path().join("narrow.csv");
    write_csv(&narrow, 4, 2, 0.0);
    let out = dir.path().join("o.safetensors");
    let o = out.to_str().unwrap_or_default();
    let g = good.to_str().unwrap_or_default();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--source", "/nonexistent.csv", "--target", g],
            "/nonexistent.csv",
        ),
        (
            vec!["--source", g, "--target", nan.to_str().unwrap_or_default()],
            "neuron 1",
        ),
        (
            vec!["--source", g, "--target", ragged.to_str().unwrap_or_default()],
            "line 2 has 2 columns",
        ),
        (
            vec!["--source", g, "--target", narrow.to_str().unwrap_or_default()],
            "3 neurons but target has 2",
        ),
        (
            vec!["--source", g, "--target", g, "--method", "magic"],
            "unknown method",
        ),
        (
            vec!["--source", g, "--target", g, "--support", "q9-1"],
            "invalid support",
        ),
        (
            vec!["--source", g, "--target", g, "--method", "act-add"],
            "one prompt pair",
        ),
    ];
    for (args, needle) in cases {
        let mut full = vec!["fit-arrays"];
        full.extend(args);
        full.extend(["--out", o]);
        let r = act(&full);
        let err = text(&r.stderr);
        assert!(!r.status.success(), "{full:?} succeeded");
        assert!(err.contains(needle), "{full:?}: expected `{needle}` in\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!out.exists(), "a failed fit must not leave an output file");
    let r = act(&["maps-info", good.to_str().unwrap_or_default()]);
    assert!(!r.status.success() && !text(&r.stderr).contains("panicked"));
}

#[test]
fn models_lists_local_files_and_the_hf_cache() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let local = dir.path().join("models");
    std::fs::create_dir_all(local.join("tiny-hf")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(local.join("tiny-hf/config.json"), "{}").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(local.join("demo.gguf"), b"GGUF").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(local.join("notes.txt"), b"x").unwrap_or_else(|e| panic!("{e}"));
    let cache = dir.path().join("hub");
    let snap = cache.join("models--someorg--tiny-llama/snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(snap.join("config.json"), "{}").unwrap_or_else(|e| panic!("{e}"));
    let out = act(&[
        "models",
        "--dir",
        local.to_str().unwrap_or_default(),
        "--hf-cache",
        cache.to_str().unwrap_or_default(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("demo.gguf") && s.contains("tiny-hf"), "{s}");
    assert!(!s.contains("notes.txt"), "{s}");
    assert!(s.contains("someorg/tiny-llama @ 0123abcd"), "{s}");
}

/// The `tensors:` table row of group `name` in `inspect` output.
fn table_row<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no tensor group `{name}` in\n{out}"))
}

#[test]
fn inspect_reads_only_the_header_and_lists_tensor_types() {
    use act_studio::runtime::LoadedModel;
    use act_studio::runtime::gguf::GgufFile;
    use act_studio::runtime::model_header::ModelHeader;

    let Some(model) = common::demo_model() else {
        return;
    };
    let m = model.to_str().unwrap_or_default();
    let out = act(&["inspect", "--model", m]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let full = text(&out.stdout);
    println!("{full}");
    let size = std::fs::metadata(&model)
        .map(|md| md.len())
        .unwrap_or_else(|e| panic!("{e}"));
    for needle in [
        "architecture:   llama",
        "layers:         30",
        "hidden size:    576",
        "heads:          9 (kv 3, head dim 64)",
        "rope:           θ = 100000, interleaved pairs",
        "fingerprint:    llama (hidden 576, 30 layers, weights ",
        "chat template:  yes",
        "hook points:    150 (5 per layer)",
        "  … layers.29.resid",
        &format!("file size:      98.4 MB ({size} bytes)\n"),
        "tensors:        272 in 11 groups, 96.6 MB",
    ] {
        assert!(full.contains(needle), "missing `{needle}` in\n{full}");
    }
    // SmolLM2-135M-Instruct Q4_1: a Q8_0 embedding (tied output), Q4_1 matrices, F32 norms.
    for (group, count, types) in [
        ("token_embd.weight", "1", "Q8_0 ×1"),
        ("attn_norm.weight", "30", "F32 ×30"),
        ("attn_q.weight", "30", "Q4_1 ×30"),
        ("attn_k.weight", "30", "Q4_1 ×30"),
        ("attn_v.weight", "30", "Q4_1 ×30"),
        ("attn_output.weight", "30", "Q4_1 ×30"),
        ("ffn_norm.weight", "30", "F32 ×30"),
        ("ffn_gate.weight", "30", "Q4_1 ×30"),
        ("ffn_up.weight", "30", "Q4_1 ×30"),
        ("ffn_down.weight", "30", "Q4_1 ×30"),
        ("output_norm.weight", "1", "F32 ×1"),
    ] {
        let row = table_row(&full, group);
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells.get(1), Some(&count), "{row}");
        assert!(row.contains(&format!("  {types}  ")), "`{types}` not in `{row}`");
        assert!(row.ends_with(" MB"), "{row}");
    }
    assert!(
        !full.contains("blk."),
        "layer numbers must be grouped away:\n{full}"
    );
    assert!(!full.contains("note:"), "all types are ours or dense:\n{full}");

    // The header gives what the loaded model gives.
    let header = ModelHeader::read(&model).unwrap_or_else(|e| panic!("{e}"));
    let loaded = LoadedModel::load(&model).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(header.fingerprint, loaded.fingerprint);
    assert_eq!(&header.config, loaded.config());
    assert_eq!(header.hook_points(), loaded.hook_points());
    assert_eq!(header.file_size, size);
    assert_eq!(header.expected_size, size);

    // A copy cut right after the header: same facts and table, no tensor data needed.
    let offset = GgufFile::open(&model)
        .unwrap_or_else(|e| panic!("{e}"))
        .content()
        .tensor_data_offset;
    let bytes = std::fs::read(&model).unwrap_or_else(|e| panic!("{e}"));
    let cut = usize::try_from(offset).unwrap_or_else(|e| panic!("{e}"));
    assert!(cut > 0 && cut < bytes.len() / 10, "header of {cut} bytes");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let truncated = dir.path().join("header-only.gguf");
    std::fs::write(&truncated, &bytes[..cut]).unwrap_or_else(|e| panic!("{e}"));
    let t = truncated.to_str().unwrap_or_default();
    let out = act(&["inspect", "--model", t]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let short = text(&out.stdout);
    let file_line = short
        .lines()
        .find(|l| l.starts_with("file size:"))
        .unwrap_or_default();
    assert!(
        file_line.contains(&format!("({cut} bytes)")) && file_line.contains("tensor data is missing"),
        "{file_line}"
    );
    let facts = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with("model:") && !l.starts_with("file size:"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(facts(&short), facts(&full), "truncated:\n{short}");
    assert_eq!(
        ModelHeader::read(&truncated)
            .unwrap_or_else(|e| panic!("{e}"))
            .fingerprint,
        loaded.fingerprint
    );

    // Loading it for real fails cleanly.
    let out = act(&["generate", "--model", t, "--prompt", "hello", "--max-tokens", "2"]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "generate succeeded on a header-only file");
    assert!(
        err.contains("token_embd.weight") && err.contains("header-only.gguf"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
