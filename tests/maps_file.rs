//! The maps file: bit-exact round trips and a distinct typed error for each kind of damage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use act_studio::transport::{
    DatasetInfo, FitConfig, MapsError, MapsFile, MapsMeta, Method, ModelFingerprint, POSITIONS_POOLING,
    SampleMatrix, Support, fit_hook,
};
use safetensors::tensor::{SafeTensors, TensorView};

fn fingerprint() -> ModelFingerprint {
    ModelFingerprint {
        architecture: "llama".into(),
        hidden_size: 4,
        n_layers: 2,
        weights_header_sha256: "ab".repeat(32),
    }
}

fn sample(seed: u32, rows: usize, cols: usize) -> SampleMatrix {
    let data = (0..rows * cols)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 97.0 - 5.0)
        .collect();
    SampleMatrix { data, rows, cols }
}

fn maps(method: Method, support: Support) -> MapsFile {
    let (s, t) = (sample(1, 12, 4), sample(2, 12, 4));
    let hooks = ["layers.0.mlp_norm", "layers.1.mlp_norm"]
        .iter()
        .map(|h| {
            let m = fit_hook(h, s.view(), t.view(), &FitConfig { method, support })
                .unwrap_or_else(|e| panic!("{e}"));
            (h.to_string(), m)
        })
        .collect();
    let info = |name: &str| DatasetInfo {
        name: name.into(),
        sha256: "00".repeat(32),
        count: 12,
    };
    let meta = MapsMeta::new(
        "football",
        method,
        support,
        "mean",
        "causal",
        fingerprint(),
        info("neutral.txt"),
        info("football.txt"),
    );
    MapsFile::new(meta, hooks).unwrap_or_else(|e| panic!("{e}"))
}

fn saved(dir: &Path, m: &MapsFile) -> PathBuf {
    let p = dir.join("football.safetensors");
    m.save(&p).unwrap_or_else(|e| panic!("{e}"));
    p
}

/// Rewrites the file with `edit` applied to its metadata JSON and its tensors; with
/// `restamp`, the data checksum is recomputed (the format's documented rule: name, NUL,
/// length, data; names sorted), so only the edit is wrong.
fn rewrite(
    path: &Path,
    restamp: bool,
    edit: impl FnOnce(&mut serde_json::Value, &mut Vec<(String, TensorView<'_>)>),
) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{e}"));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("act_studio"))
        .cloned()
        .unwrap_or_default();
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
    let mut tensors: Vec<(String, TensorView<'_>)> = st.tensors();
    edit(&mut v, &mut tensors);
    if restamp {
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for (n, t) in &tensors {
            h.update(n.as_bytes());
            h.update([0u8]);
            h.update((t.data().len() as u64).to_le_bytes());
            h.update(t.data());
        }
        v["data_sha256"] = h
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into();
    }
    let out = safetensors::serialize(
        tensors,
        Some(HashMap::from([("act_studio".to_string(), v.to_string())])),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(path, out).unwrap_or_else(|e| panic!("{e}"));
}

/// Rewrites the file's metadata JSON with `edit`, keeping the tensors.
fn rewrite_meta(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    rewrite(path, false, |v, _| edit(v));
}

/// Removes tensor `name` from the file (or, with `reshape`, stores its data as one flat
/// vector), keeping the checksum right.
fn edit_tensor(path: &Path, name: &str, reshape: bool) {
    rewrite(path, true, |_, tensors| {
        if reshape {
            for (n, t) in tensors.iter_mut() {
                if n == name {
                    *t = TensorView::new(t.dtype(), vec![t.data().len() / 4], t.data())
                        .unwrap_or_else(|e| panic!("{e}"));
                }
            }
        } else {
            tensors.retain(|(n, _)| n != name);
        }
    });
}

#[test]
fn round_trip_is_bit_exact_for_every_method() -> Result<(), MapsError> {
    let dir = tempfile::tempdir().map_err(|e| MapsError::Invalid(e.to_string()))?;
    for method in Method::ALL {
        if method == Method::ActAdd {
            continue; // needs one pair; covered below
        }
        for support in [
            Support::Q0_100,
            Support::Unbounded,
            Support::Quantile { lo: 5.0, hi: 95.0 },
        ] {
            if method.is_joint() && support != Support::Unbounded {
                // A joint map has no per-neuron support.
                let (s, t) = (sample(1, 12, 4), sample(2, 12, 4));
                let e = fit_hook("h", s.view(), t.view(), &FitConfig { method, support });
                assert!(e.is_err_and(|e| e.to_string().contains("unbounded")));
                continue;
            }
            let m = maps(method, support);
            // Version 2 only where a joint matrix needs it, so older builds read the rest.
            assert_eq!(m.meta().format_version, if method.is_joint() { 2 } else { 1 });
            let p = saved(dir.path(), &m);
            let back = MapsFile::load(&p)?;
            assert_eq!(back.meta().method, method);
            for ((n1, a), (n2, b)) in m.hooks().zip(back.hooks()) {
                assert_eq!(n1, n2);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(a.omega()), bits(b.omega()));
                assert_eq!(bits(a.beta()), bits(b.beta()));
                assert_eq!(bits(a.lo()), bits(b.lo()));
                assert_eq!(bits(a.hi()), bits(b.hi()));
                assert_eq!(a.diagnostics(), b.diagnostics());
                assert_eq!(a.matrix().map(bits), b.matrix().map(bits));
                assert_eq!(a.matrix().is_some(), method.is_joint());
                assert_eq!(a, b);
            }
            // Saving what was loaded reproduces the file byte for byte.
            assert_eq!(
                back.to_bytes()?,
                std::fs::read(&p).map_err(|e| MapsError::Invalid(e.to_string()))?
            );
        }
    }
    Ok(())
}

/// Maps fitted on every position (pixel or token) load as such, so 4-D activations are
/// mapped pixel by pixel again; maps fitted on means keep the spatial-mean rule.
#[test]
fn maps_fitted_on_positions_load_as_such() -> Result<(), MapsError> {
    let dir = tempfile::tempdir().map_err(|e| MapsError::Invalid(e.to_string()))?;
    let mean = maps(Method::LinearAct, Support::Unbounded);
    let mut meta = mean.meta().clone();
    meta.pooling = POSITIONS_POOLING.into();
    let hooks = mean
        .hooks()
        .map(|(n, m)| (n.to_string(), (**m).clone().with_per_position(true)))
        .collect();
    let positions = MapsFile::new(meta, hooks)?;
    for (m, per_position) in [(&mean, false), (&positions, true)] {
        let back = MapsFile::load(&saved(dir.path(), m))?;
        assert!(back.hooks().all(|(_, h)| h.per_position() == per_position));
        // The same parameters, steering differently: pixel by pixel, or by channel means.
        let h = back.hook("layers.0.mlp_norm").map(|h| (**h).clone());
        let h = h.ok_or_else(|| MapsError::Invalid("hook missing".into()))?;
        let mut x = vec![-3.0, 4.0, 1.0, 0.5, 2.0, -1.0, 0.0, 3.0];
        let (a, b) = (x[0], x[1]);
        h.apply_4d("layers.0.mlp_norm", &mut x, [1, 4, 1, 2], 1.0)
            .map_err(|e| MapsError::Invalid(e.to_string()))?;
        let deviation_kept = ((x[1] - x[0]) - (b - a)).abs() < 1e-5;
        assert_eq!(deviation_kept, !per_position || h.omega()[0] == 1.0);
    }
    Ok(())
}

#[test]
fn truncated_file_is_reported_as_truncated() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = saved(dir.path(), &maps(Method::LinearAct, Support::Q0_100));
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{e}"));
    for keep in [0, 5, 20, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&p, &bytes[..keep]).unwrap_or_else(|e| panic!("{e}"));
        let e = MapsFile::load(&p).map(|_| ()).unwrap_err();
        assert!(matches!(e, MapsError::Truncated { .. }), "keep {keep}: {e:?}");
    }
}

#[test]
fn flipped_data_bytes_fail_the_checksum() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = saved(dir.path(), &maps(Method::LinearAct, Support::Q0_100));
    let mut bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{e}"));
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&p, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let e = MapsFile::load(&p).map(|_| ()).unwrap_err();
    assert!(matches!(e, MapsError::ChecksumMismatch { .. }), "{e:?}");
}

#[test]
fn flipped_header_bytes_are_corrupt() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = saved(dir.path(), &maps(Method::LinearAct, Support::Q0_100));
    let mut bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{e}"));
    bytes[8] = b'!'; // the opening brace of the JSON header
    std::fs::write(&p, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let e = MapsFile::load(&p).map(|_| ()).unwrap_err();
    assert!(matches!(e, MapsError::Corrupt { .. }), "{e:?}");
}

#[test]
fn wrong_metadata_gives_its_own_errors() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let m = maps(Method::LinearAct, Support::Q0_100);

    let p = saved(dir.path(), &m);
    rewrite_meta(&p, |v| v["format_version"] = 99.into());
    let e = MapsFile::load(&p).map(|_| ()).unwrap_err();
    assert!(
        matches!(
            e,
            MapsError::UnsupportedVersion {
                found: 99,
                supported: 2,
                ..
            }
        ),
        "{e:?}"
    );

    let p = saved(dir.path(), &m);
    rewrite_meta(&p, |v| v["method"] = serde_json::json!({"name": "telepathy"}));
    let e = MapsFile::load(&p).map(|_| ()).unwrap_err();
    assert!(matches!(e, MapsError::BadMetadata { .. }), "{e:?}");

    let p = saved(dir.path(), &m);
    rewrite_meta(&p, |v| v["hook_points"][0]["dim"] = 7.into());
    let e = MapsFile::load(&p).map(|_| ()).unwrap_err();
    assert!(
        matches!(e, MapsError::ShapeMismatch { ref tensor, .. } if tensor == "layers.0.mlp_norm.omega"),
        "{e:?}"
    );

    let p = saved(dir.path(), &m);
    rewrite_meta(&p, |v| {
        if let Some(list) = v["hook_points"].as_array_mut() {
            list.push(serde_json::json!({"name": "layers.9.resid", "dim": 4}));
        }
    });
    let e = MapsFile::load(&p).map(|_| ()).unwrap_err();
    assert!(
        matches!(e, MapsError::MissingTensor { ref tensor, .. } if tensor == "layers.9.resid.omega"),
        "{e:?}"
    );

    // A joint map whose matrix is gone, and a per-neuron map that claims one.
    let joint = maps(Method::JointGaussian, Support::Unbounded);
    let p = saved(dir.path(), &joint);
    edit_tensor(&p, "layers.1.mlp_norm.matrix", false);
    let e = MapsFile::load(&p).map(|_| ()).unwrap_err();
    assert!(
        matches!(e, MapsError::MissingTensor { ref tensor, .. } if tensor == "layers.1.mlp_norm.matrix"),
        "{e:?}"
    );
    let p = saved(dir.path(), &joint);
    rewrite_meta(&p, |v| v["method"] = serde_json::json!({"name": "gaussian"}));
    let e = MapsFile::load(&p).map(|_| ()).unwrap_err();
    assert!(
        matches!(e, MapsError::BadMetadata { ref reason, .. } if reason.contains("joint matrix")),
        "{e:?}"
    );
    let p = saved(dir.path(), &joint);
    edit_tensor(&p, "layers.0.mlp_norm.matrix", true);
    let e = MapsFile::load(&p).map(|_| ()).unwrap_err();
    assert!(
        matches!(e, MapsError::ShapeMismatch { ref tensor, ref found, .. } if tensor == "layers.0.mlp_norm.matrix" && found == &[16]),
        "{e:?}"
    );
    let p = saved(dir.path(), &joint);
    rewrite_meta(&p, |v| {
        v["support"] = serde_json::to_value(Support::Q0_100).unwrap_or_default()
    });
    let e = MapsFile::load(&p).map(|_| ()).unwrap_err();
    assert!(
        matches!(e, MapsError::BadMetadata { ref reason, .. } if reason.contains("no per-neuron support")),
        "{e:?}"
    );

    // A plain safetensors file without our metadata.
    let p = dir.path().join("plain.safetensors");
    let data = [0u8; 8];
    let view = TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        &p,
        safetensors::serialize([("w", view)], None).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = MapsFile::load(&p).map(|_| ()).unwrap_err();
    assert!(matches!(e, MapsError::NotAMapsFile { .. }), "{e:?}");
}

#[test]
fn maps_for_another_model_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = saved(dir.path(), &maps(Method::LinearAct, Support::Q0_100));
    assert!(MapsFile::load_for(&p, &fingerprint()).is_ok());
    let other = ModelFingerprint {
        hidden_size: 576,
        n_layers: 30,
        ..fingerprint()
    };
    let e = MapsFile::load_for(&p, &other).map(|_| ()).unwrap_err();
    assert!(matches!(e, MapsError::FingerprintMismatch { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("hidden 576, 30 layers") && msg.contains("hidden 4, 2 layers"),
        "{msg}"
    );
}

#[test]
fn missing_file_is_an_io_error() {
    let e = MapsFile::load(Path::new("/nonexistent/maps.safetensors"))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, MapsError::Io { .. }), "{e:?}");
}
