//! Pooled activation collection on the demo model, library and CLI.

mod common;

use std::sync::atomic::AtomicBool;

use act_studio::pipeline::collect::{CollectOptions, collect};
use act_studio::pipeline::pooling::Pooling;
use act_studio::pipeline::presets::hook_points;
use act_studio::runtime::{Activation, HookFlow, HookKind, HookPoint, Hooks, LoadedModel};

/// Records one hook point's full activation of a single sentence.
struct Grab(HookPoint, Vec<f32>);

impl Hooks for Grab {
    fn wants(&self, p: HookPoint) -> bool {
        p == self.0
    }
    fn on_activation(&mut self, _: HookPoint, a: Activation<'_>) -> act_studio::runtime::Result<HookFlow> {
        self.1 = a.data.to_vec();
        Ok(HookFlow::Stop)
    }
}

#[test]
fn pooled_rows_equal_the_pooled_activation_of_each_sentence_alone() {
    let Some(path) = common::demo_model() else { return };
    let m = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let d = m.config().hidden_size;
    let texts: Vec<String> = [
        "The striker scored in the last minute.",
        "Rain again.",
        "My grandmother bakes bread every Sunday morning for the whole street.",
        "Whales sing.",
        "A quiet library in the afternoon.",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let points = vec![
        HookPoint {
            layer: 2,
            kind: HookKind::MlpNorm,
        },
        HookPoint {
            layer: 5,
            kind: HookKind::Resid,
        },
    ];
    for pooling in [Pooling::Mean, Pooling::Max, Pooling::Last] {
        let opts = CollectOptions {
            points: points.clone(),
            pooling,
            batch_size: 2,
            max_tokens: 128,
        };
        let mut calls = 0;
        let got = collect(&m, &texts, &opts, &AtomicBool::new(false), &mut |_, _| calls += 1)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(calls, 3);
        for p in &points {
            let mat = &got[p];
            assert_eq!((mat.rows, mat.cols), (texts.len(), d));
            for (i, t) in texts.iter().enumerate() {
                let mut grab = Grab(*p, Vec::new());
                common::forward_alone(&m, t, &mut grab);
                let mut want = Vec::new();
                pooling.pool(&grab.1, d, &mut want);
                let row = &mat.data[i * d..(i + 1) * d];
                let diff = row
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(diff <= 1e-4, "{p} {pooling:?} sample {i}: max |Δ| {diff}");
            }
        }
    }
    assert!(
        collect(
            &m,
            &[],
            &CollectOptions {
                points,
                ..Default::default()
            },
            &AtomicBool::new(false),
            &mut |_, _| {}
        )
        .is_err()
    );
}

#[test]
fn presets_and_names_resolve_to_hook_points() {
    assert_eq!(hook_points("post-ln", 30).map(|v| v.len()), Ok(30));
    assert_eq!(hook_points("all-ln", 30).map(|v| v.len()), Ok(60));
    let named = hook_points("layers.3.mlp_norm, layers.4.attn_out", 30).unwrap_or_default();
    assert_eq!(named.len(), 2);
    assert!(hook_points("layers.30.mlp_norm", 30).is_err());
    assert!(hook_points("everything", 30).is_err());
    assert_eq!(hook_points("all-ln:0-1", 30).map(|v| v.len()), Ok(4));
    assert_eq!(
        hook_points("post-ln:29", 30).map(|v| v.iter().map(|p| p.name()).collect::<Vec<_>>()),
        Ok(vec!["layers.29.mlp_norm".to_string()])
    );
    for bad in ["post-ln:5-2", "post-ln:0-30", "post-ln:x", "nothing:1-2"] {
        assert!(hook_points(bad, 30).is_err(), "{bad}");
    }
}

#[test]
fn collect_cli_writes_one_tensor_per_hook_point() {
    let Some(path) = common::demo_model() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("ocean.txt");
    std::fs::write(
        &data,
        "The tide came in.\n\nWaves broke on the rocks.\nA gull cried over the harbour.\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("acts.safetensors");
    let run = |data: &std::path::Path, hooks: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_act-studio"))
            .args(["collect", "--model", path.to_str().unwrap_or_default(), "--data"])
            .arg(data)
            .args(["--hooks", hooks, "--out"])
            .arg(&out)
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let r = run(&data, "layers.0.mlp_norm,layers.29.resid");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let bytes = std::fs::read(&out).unwrap_or_else(|e| panic!("{e}"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let mut names = st.names();
    names.sort();
    assert_eq!(names, vec!["layers.0.mlp_norm", "layers.29.resid"]);
    for n in names {
        assert_eq!(
            st.tensor(n).map(|t| t.shape().to_vec()).unwrap_or_default(),
            vec![3, 576]
        );
    }
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n \n").unwrap_or_else(|e| panic!("{e}"));
    let r = run(&empty, "post-ln");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("no samples") && !err.contains("panicked"),
        "{err}"
    );
    let r = run(&data, "layers.99.mlp_norm");
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("not a hook point"));
}
