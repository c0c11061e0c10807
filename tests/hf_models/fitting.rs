//! Fitting on tiny random models: bad activations and bad inputs give clear errors; maps made
//! for one model are refused by another.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use act_studio::pipeline::fit_model::{Estimation, fit_on_model};
use act_studio::pipeline::pooling::Pooling;
use act_studio::pipeline::presets::hook_points;
use act_studio::transport::{FitConfig, Method};
use candle_core::{Device, Tensor};

use super::fixtures::{self, F32};
use super::{load, ok};

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const SOURCE: [&str; 4] = [
    "the cat sat on the mat",
    "a dog ran home",
    "the mat",
    "a cat ran fast",
];
const TARGET: [&str; 4] = ["w20 w21 w22", "w23 w24 the", "w25 w26 w27 w28", "w29 w30"];

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_act-studio"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run act-studio: {e}"))
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn nan_activations_are_an_error_naming_the_hook_point() {
    let tmp = ok(tempfile::tempdir());
    let mut model = fixtures::llama_like(false, 11);
    // One NaN weight in layer 1's attention norm: every later activation is NaN.
    let name = "model.layers.1.input_layernorm.weight";
    let mut w: Vec<f32> = ok(model.tensors[name].to_vec1::<f32>());
    w[5] = f32::NAN;
    model
        .tensors
        .insert(name.into(), ok(Tensor::from_vec(w, 64, &Device::Cpu)));
    fixtures::write(tmp.path(), &model, F32);
    let m = load(tmp.path());
    let points = ok(hook_points("post-ln", 2));
    for estimation in [Estimation::Causal, Estimation::Simultaneous] {
        let e = fit_on_model(
            &m,
            &lines(&SOURCE),
            &lines(&TARGET),
            &points,
            Pooling::Mean,
            &FitConfig::new(Method::LinearAct),
            estimation,
            &AtomicBool::new(false),
            &mut |_, _| {},
        )
        .err()
        .unwrap_or_else(|| panic!("{estimation:?}: NaN activations were accepted"))
        .to_string();
        assert!(
            e.contains("layers.1.mlp_norm") && e.contains("NaN"),
            "{estimation:?}: {e}"
        );
    }
}

fn write_lines(dir: &Path, name: &str, v: &[&str]) -> String {
    let p = dir.join(name);
    ok(std::fs::write(&p, v.join("\n")));
    p.display().to_string()
}

#[test]
fn bad_datasets_and_foreign_maps_are_refused_with_clear_errors() {
    let tmp = ok(tempfile::tempdir());
    let dir = tmp.path();
    fixtures::write(&dir.join("llama"), &fixtures::llama_like(false, 3), F32);
    fixtures::write(&dir.join("qwen2"), &fixtures::llama_like(true, 3), F32);
    let llama = dir.join("llama").display().to_string();
    let qwen2 = dir.join("qwen2").display().to_string();
    let src = write_lines(dir, "src.txt", &SOURCE);
    let tgt = write_lines(dir, "tgt.txt", &TARGET);
    let maps = dir.join("maps.safetensors").display().to_string();

    let empty = write_lines(dir, "empty.txt", &["", "  "]);
    let o = cli(&[
        "fit", "--model", &llama, "--source", &empty, "--target", &tgt, "--out", &maps,
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("empty.txt: no samples"), "{}", stderr(&o));

    let one = write_lines(dir, "one.txt", &["the cat"]);
    let o = cli(&[
        "fit", "--model", &llama, "--source", &src, "--target", &one, "--out", &maps,
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("target dataset has 1 sample(s)"),
        "{}",
        stderr(&o)
    );
    assert!(!Path::new(&maps).exists(), "no maps file after a failed fit");

    let o = cli(&[
        "fit", "--model", &llama, "--source", &src, "--target", &tgt, "--out", &maps,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cli(&[
        "generate",
        "--model",
        &qwen2,
        "--prompt",
        "the cat",
        "--max-tokens",
        "2",
        "--maps",
        &maps,
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("llama") && e.contains("qwen2"),
        "must name both models: {e}"
    );
    let o = cli(&[
        "generate",
        "--model",
        &llama,
        "--prompt",
        "the cat",
        "--max-tokens",
        "2",
        "--maps",
        &maps,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}
