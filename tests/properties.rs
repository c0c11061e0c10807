//! Property tests of the transport core.

use std::collections::BTreeMap;
use std::sync::Arc;

use act_studio::transport::{
    DatasetInfo, FitConfig, HookMap, MapsFile, MapsMeta, Method, ModelFingerprint, SampleMatrix, Side,
    SteeringStack, Support, TokenScope, TokenWindow, TransportError, fit_hook,
};
use proptest::prelude::*;

/// Deterministic normal samples (xorshift64* + Box–Muller) so the statistical tests are
/// reproducible.
fn normals(seed: u64, n: usize, mean: f64, std: f64) -> Vec<f32> {
    let mut s = seed.max(1);
    let mut uniform = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (mean + std * z) as f32
        })
        .collect()
}

fn column(values: Vec<f32>) -> SampleMatrix {
    let rows = values.len();
    SampleMatrix {
        data: values,
        rows,
        cols: 1,
    }
}

fn fit(source: &SampleMatrix, target: &SampleMatrix, method: Method, support: Support) -> HookMap {
    fit_hook("p", source.view(), target.view(), &FitConfig { method, support })
        .unwrap_or_else(|e| panic!("{e}"))
}

fn interpolating_methods() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::LinearAct,
        Method::MeanAct,
        Method::Gaussian,
        Method::Aura,
        Method::ItiM,
        Method::Det0 { ap_threshold: 0.6 },
    ])
}

fn sample_matrix(rows: usize, cols: usize) -> impl Strategy<Value = SampleMatrix> {
    prop::collection::vec(-50.0f32..50.0, rows * cols).prop_map(move |data| SampleMatrix { data, rows, cols })
}

fn maps_of(name: &str, hook: &str, map: HookMap) -> Arc<MapsFile> {
    let info = DatasetInfo {
        name: "d".into(),
        sha256: String::new(),
        count: 1,
    };
    let meta = MapsMeta::new(
        name,
        map.method(),
        map.support(),
        "mean",
        "arrays",
        ModelFingerprint::arrays(map.dim()),
        info.clone(),
        info,
    );
    Arc::new(MapsFile::new(meta, vec![(hook.to_string(), map)]).unwrap_or_else(|e| panic!("{e}")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn lambda_zero_is_identity(
        method in interpolating_methods(),
        (s, t) in (2usize..20).prop_flat_map(|n| (sample_matrix(n, 4), sample_matrix(n, 4))),
        x in prop::collection::vec(-80.0f32..80.0, 12),
    ) {
        let map = fit(&s, &t, method, method.default_support());
        let mut y = x.clone();
        map.apply_3d("p", &mut y, [1, 3, 4], 0.0, TokenScope::All, TokenWindow::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&y, &x);
        let mut y4 = x.clone();
        map.apply_4d("p", &mut y4, [1, 4, 1, 3], 0.0).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&y4, &x);
    }

    #[test]
    fn lambda_half_is_the_midpoint(
        method in interpolating_methods(),
        support in prop::sample::select(Support::OFFERED.to_vec()),
        (s, t) in (2usize..20).prop_flat_map(|n| (sample_matrix(n, 4), sample_matrix(n, 4))),
        x in prop::collection::vec(-80.0f32..80.0, 8),
    ) {
        let map = fit(&s, &t, method, support);
        let (mut half, mut full) = (x.clone(), x.clone());
        map.apply_rows(&mut half, 0.5);
        map.apply_rows(&mut full, 1.0);
        for ((h, f), a) in half.iter().zip(&full).zip(&x) {
            let mid = 0.5 * (a + f);
            prop_assert!((h - mid).abs() <= 1e-4 * mid.abs().max(1.0), "{h} vs midpoint {mid}");
        }
    }

    #[test]
    fn linear_act_recovers_an_affine_map(
        src in prop::collection::vec(-10.0f64..10.0, 8..64),
        slope in 0.1f64..5.0,
        shift in -20.0f64..20.0,
    ) {
        let spread = src.iter().copied().fold(f64::NEG_INFINITY, f64::max) - src.iter().copied().fold(f64::INFINITY, f64::min);
        prop_assume!(spread > 1e-2);
        // Shuffle the target relative to the source: the fit sorts both sides.
        let mut tgt: Vec<f32> = src.iter().map(|a| (slope * a + shift) as f32).collect();
        tgt.reverse();
        let source: Vec<f32> = src.iter().map(|&a| a as f32).collect();
        let map = fit(&column(source), &column(tgt), Method::LinearAct, Support::Unbounded);
        prop_assert!((f64::from(map.omega()[0]) - slope).abs() < 1e-3 * slope.max(1.0), "ω {} vs {slope}", map.omega()[0]);
        prop_assert!((f64::from(map.beta()[0]) - shift).abs() < 1e-3 * shift.abs().max(10.0), "β {} vs {shift}", map.beta()[0]);
    }

    #[test]
    fn composition_with_one_lambda_at_zero_equals_the_other_alone(
        (s, t, u) in (2usize..16).prop_flat_map(|n| (sample_matrix(n, 3), sample_matrix(n, 3), sample_matrix(n, 3))),
        lambda in 0.0f32..2.0,
        zero_first in any::<bool>(),
        x in prop::collection::vec(-60.0f32..60.0, 6),
    ) {
        let a = fit(&s, &t, Method::LinearAct, Support::Q0_100);
        let b = fit(&s, &u, Method::Gaussian, Support::Unbounded);
        let mut stack = SteeringStack::default();
        let (la, lb) = if zero_first { (0.0, lambda) } else { (lambda, 0.0) };
        stack.push(maps_of("a", "h", a.clone()), la);
        stack.push(maps_of("b", "h", b.clone()), lb);
        let plan = stack.compile(&["h"], Some(&[3])).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut both = x.clone();
        plan.apply_3d(0, "h", &mut both, [1, 2, 3], TokenWindow::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut alone = x.clone();
        let (m, l) = if zero_first { (&b, lambda) } else { (&a, lambda) };
        m.apply_rows(&mut alone, l);
        prop_assert_eq!(both, alone);
    }
}

#[test]
fn gaussian_recovers_normal_to_normal() {
    let s = column(normals(7, 10_000, 1.0, 1.0));
    let t = column(normals(11, 10_000, 5.0, 0.5));
    let map = fit(&s, &t, Method::Gaussian, Support::Unbounded);
    // N(1,1) → N(5,0.5): T(a) = 0.5·a + 4.5.
    assert!((map.omega()[0] - 0.5).abs() < 0.1, "ω = {}", map.omega()[0]);
    assert!((map.beta()[0] - 4.5).abs() < 0.1, "β = {}", map.beta()[0]);
    // The transported source has the target's mean and spread.
    let mut moved = s.data.clone();
    map.apply_rows(&mut moved, 1.0);
    let n = moved.len() as f64;
    let mean = moved.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let std = (moved.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    assert!(
        (mean - 5.0).abs() < 0.1 && (std - 0.5).abs() < 0.1,
        "moved N({mean}, {std})"
    );
    // Linear-AcT recovers the same map on Gaussian data.
    let lin = fit(&s, &t, Method::LinearAct, Support::Unbounded);
    assert!((lin.omega()[0] - 0.5).abs() < 0.1 && (lin.beta()[0] - 4.5).abs() < 0.1);
    let w1 = &lin.diagnostics()["w1_after"][0];
    assert!(*w1 < 0.1 * lin.diagnostics()["w1_before"][0], "W1 after {w1}");
}

#[test]
fn zero_variance_source_neuron_is_identity() {
    let s = SampleMatrix {
        data: vec![3.0, 1.0, 3.0, 2.0, 3.0, 3.0],
        rows: 3,
        cols: 2,
    };
    let t = SampleMatrix {
        data: vec![0.0, 5.0, 1.0, 6.0, 2.0, 9.0],
        rows: 3,
        cols: 2,
    };
    for method in [Method::LinearAct, Method::Gaussian] {
        let map = fit(&s, &t, method, Support::Unbounded);
        assert_eq!((map.omega()[0], map.beta()[0]), (1.0, 0.0), "{method}");
        assert!(map.omega()[1].is_finite() && map.omega()[1] != 1.0);
    }
}

#[test]
fn non_finite_activations_are_errors_naming_the_neuron() {
    let s = SampleMatrix {
        data: vec![1.0, 2.0, 3.0, f32::NAN],
        rows: 2,
        cols: 2,
    };
    let t = SampleMatrix {
        data: vec![1.0, 2.0, 3.0, 4.0],
        rows: 2,
        cols: 2,
    };
    let e = fit_hook(
        "layers.3.mlp_norm",
        s.view(),
        t.view(),
        &FitConfig::new(Method::LinearAct),
    )
    .map(|_| ())
    .unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::NonFinite {
                neuron: 1,
                row: 1,
                side: Side::Source,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("layers.3.mlp_norm") && msg.contains("neuron 1"),
        "{msg}"
    );
    let t_inf = SampleMatrix {
        data: vec![1.0, f32::INFINITY, 3.0, 4.0],
        rows: 2,
        cols: 2,
    };
    let e = fit_hook("h", t.view(), t_inf.view(), &FitConfig::new(Method::MeanAct))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::NonFinite {
                neuron: 1,
                row: 0,
                side: Side::Target,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn bad_shapes_and_pairs_are_errors() {
    let one = SampleMatrix {
        data: vec![1.0, 2.0],
        rows: 1,
        cols: 2,
    };
    let two = SampleMatrix {
        data: vec![1.0, 2.0, 3.0, 4.0],
        rows: 2,
        cols: 2,
    };
    let three_cols = SampleMatrix {
        data: vec![1.0, 2.0, 3.0],
        rows: 1,
        cols: 3,
    };
    let empty = SampleMatrix {
        data: vec![],
        rows: 0,
        cols: 2,
    };
    let cfg = FitConfig::new(Method::LinearAct);
    assert!(matches!(
        fit_hook("h", one.view(), three_cols.view(), &cfg),
        Err(TransportError::DimMismatch { .. })
    ));
    assert!(matches!(
        fit_hook("h", empty.view(), one.view(), &cfg),
        Err(TransportError::Empty { .. })
    ));
    let act_add = FitConfig::new(Method::ActAdd);
    assert!(matches!(
        fit_hook("h", two.view(), one.view(), &act_add),
        Err(TransportError::ActAddNeedsOnePair { .. })
    ));
    let other = SampleMatrix {
        data: vec![3.0, 4.0],
        rows: 1,
        cols: 2,
    };
    assert!(fit_hook("h", one.view(), other.view(), &act_add).is_ok());
}

#[test]
fn unequal_counts_are_resampled_by_quantiles() {
    // 101 source values 0..100; the target is the affine image of the source resampled to 26
    // points, so pairing after quantile resampling is exact.
    let src: Vec<f32> = (0..=100).map(|v| v as f32).collect();
    let tgt: Vec<f32> = (0..26).map(|i| 2.0 * (i as f32 * 4.0) - 3.0).collect();
    let map = fit(
        &column(src.clone()),
        &column(tgt.clone()),
        Method::LinearAct,
        Support::Unbounded,
    );
    assert!((map.omega()[0] - 2.0).abs() < 1e-5 && (map.beta()[0] + 3.0).abs() < 1e-4);
    // Symmetric: the smaller side on the source.
    let back = fit(&column(tgt), &column(src), Method::LinearAct, Support::Unbounded);
    assert!((back.omega()[0] - 0.5).abs() < 1e-5 && (back.beta()[0] - 1.5).abs() < 1e-4);
}

#[test]
fn act_add_iti_and_det0_follow_their_definitions() {
    let a = SampleMatrix {
        data: vec![1.0, 10.0],
        rows: 1,
        cols: 2,
    };
    let b = SampleMatrix {
        data: vec![4.0, 6.0],
        rows: 1,
        cols: 2,
    };
    let m = fit(&a, &b, Method::ActAdd, Method::ActAdd.default_support());
    assert_eq!(m.beta(), &[3.0, -4.0]);
    let mut x = vec![100.0, -100.0];
    m.apply_rows(&mut x, 2.0);
    assert_eq!(x, vec![106.0, -108.0]);

    // Det0: neuron 0 separates source (high) from target (low) perfectly: AP = 1 → zeroed.
    // Neuron 1 does not (AP = 0.5 on ties) → untouched.
    let s = SampleMatrix {
        data: vec![5.0, 1.0, 6.0, 1.0, 7.0, 1.0],
        rows: 3,
        cols: 2,
    };
    let t = SampleMatrix {
        data: vec![0.0, 1.0, 1.0, 1.0, 2.0, 1.0],
        rows: 3,
        cols: 2,
    };
    let d = fit(&s, &t, Method::Det0 { ap_threshold: 0.9 }, Support::Unbounded);
    assert_eq!(d.diagnostics()["ap"], vec![1.0, 0.5]);
    let mut x = vec![9.0, 9.0];
    d.apply_rows(&mut x, 1.0);
    assert_eq!(x, vec![0.0, 9.0]);
    let mut x = vec![9.0, 9.0];
    d.apply_rows(&mut x, 0.5);
    assert_eq!(x, vec![4.5, 9.0]);

    let i = fit(&s, &t, Method::ItiM, Method::ItiM.default_support());
    assert_eq!(i.omega(), &[1.0, 1.0]);
    assert_eq!(i.beta(), &[-5.0, 0.0]);
}

#[test]
fn token_scopes_steer_only_their_tokens() {
    let map = HookMap::new(
        Method::MeanAct,
        Support::Unbounded,
        vec![1.0],
        vec![1.0],
        vec![f32::NEG_INFINITY],
        vec![f32::INFINITY],
        BTreeMap::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let run = |scope, first_position| {
        let mut x = vec![0.0f32; 8];
        map.apply_3d(
            "h",
            &mut x,
            [2, 4, 1],
            1.0,
            scope,
            TokenWindow {
                first_position,
                prompt_len: 3,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        x
    };
    assert_eq!(run(TokenScope::All, 0), vec![1.0; 8]);
    assert_eq!(
        run(TokenScope::LastToken, 0),
        vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    );
    assert_eq!(
        run(TokenScope::PromptOnly, 0),
        vec![1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    );
    assert_eq!(
        run(TokenScope::GeneratedOnly, 0),
        vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    );
    assert_eq!(run(TokenScope::GeneratedOnly, 10), vec![1.0; 8]);
}
