//! `act-studio generate` on the demo model: plain, greedy stats line, and steering with maps
//! files (λ = 0 is exactly unsteered; maps of another model are refused).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use act_studio::runtime::LoadedModel;
use act_studio::transport::{DatasetInfo, HookMap, MapsFile, MapsMeta, Method, ModelFingerprint, Support};

use common::{run_cli as act, text};

/// A maps file that shifts every layer's mlp_norm strongly (a crude "concept").
fn write_maps(path: &Path, fingerprint: ModelFingerprint, d: usize, layers: usize) {
    let info = DatasetInfo {
        name: "synthetic".into(),
        sha256: String::new(),
        count: 0,
    };
    let meta = MapsMeta::new(
        "shift",
        Method::MeanAct,
        Support::Unbounded,
        "mean",
        "arrays",
        fingerprint,
        info.clone(),
        info,
    );
    let hooks = (0..layers)
        .map(|l| {
            let beta = (0..d).map(|j| if j % 3 == 0 { 0.8 } else { -0.4 }).collect();
            let m = HookMap::new(
                Method::MeanAct,
                Support::Unbounded,
                vec![1.0; d],
                beta,
                vec![f32::NEG_INFINITY; d],
                vec![f32::INFINITY; d],
                BTreeMap::new(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            (format!("layers.{l}.mlp_norm"), m)
        })
        .collect();
    MapsFile::new(meta, hooks)
        .and_then(|m| m.save(path))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn generate_with_and_without_steering() {
    let Some(model) = common::demo_model() else { return };
    let mp = model.to_str().unwrap_or_default();
    let m = LoadedModel::load(&model).unwrap_or_else(|e| panic!("{e}"));
    let (d, layers) = (m.config().hidden_size, m.config().n_layers);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let maps = dir.path().join("shift.safetensors");
    write_maps(&maps, m.fingerprint.clone(), d, layers);
    let mapsp = maps.to_str().unwrap_or_default();
    let base = [
        "generate",
        "--model",
        mp,
        "--prompt",
        "Once upon a time",
        "--temperature",
        "0",
        "--max-tokens",
        "24",
    ];

    let plain = act(&[&base[..], &["--stats"]].concat());
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let err = text(&plain.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("prefill: ") && l.ends_with(" tok/s")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("decode: ") && l.ends_with(" tok/s")),
        "{err}"
    );
    assert!(
        !text(&plain.stdout).contains("Once upon a time"),
        "stdout must carry only generated text"
    );

    let zero = act(&[&base[..], &["--maps", mapsp, "--lambda", "shift=0"]].concat());
    assert!(zero.status.success(), "{}", text(&zero.stderr));
    assert_eq!(
        zero.stdout, plain.stdout,
        "λ = 0 must give exactly the unsteered output"
    );

    // Penalties of 0 change nothing; a frequency penalty changes a greedy text.
    let no_penalty = act(&[
        &base[..],
        &["--frequency-penalty", "0", "--presence-penalty", "0"],
    ]
    .concat());
    assert_eq!(no_penalty.stdout, plain.stdout, "{}", text(&no_penalty.stderr));
    let penalized = act(&[&base[..], &["--frequency-penalty", "2"]].concat());
    assert!(penalized.status.success(), "{}", text(&penalized.stderr));
    assert_ne!(
        penalized.stdout, plain.stdout,
        "a frequency penalty of 2 must change the text"
    );

    let full = act(&[&base[..], &["--maps", mapsp, "--lambda", "shift=1"]].concat());
    assert!(full.status.success(), "{}", text(&full.stderr));
    assert_ne!(full.stdout, plain.stdout, "λ = 1 must change the output");

    let unknown = act(&[&base[..], &["--maps", mapsp, "--lambda", "football=1"]].concat());
    assert!(
        !unknown.status.success() && text(&unknown.stderr).contains("loaded: shift"),
        "{}",
        text(&unknown.stderr)
    );

    // Maps of another model are refused, naming both fingerprints.
    let other = dir.path().join("other.safetensors");
    let fp = ModelFingerprint {
        architecture: "llama".into(),
        hidden_size: d,
        n_layers: layers,
        weights_header_sha256: "00".repeat(32),
    };
    write_maps(&other, fp, d, layers);
    let r = act(&[&base[..], &["--maps", other.to_str().unwrap_or_default()]].concat());
    let err = text(&r.stderr);
    assert!(
        !r.status.success() && err.contains("another model") && err.contains("000000000000"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}
