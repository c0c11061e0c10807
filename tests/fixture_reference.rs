//! Oracle tests against the reference implementation (apple/ml-act) on the fixture in
//! `tests/fixtures/act/act_reference_fixture.json`: every method, support and λ, 3-D and 4-D,
//! within 1e-5.

mod common;

use act_studio::transport::{
    FitConfig, HookMap, Method, SampleMatrix, Side, Support, TokenScope, TokenWindow, fit_hook,
};
use serde_json::Value;

const TOL: f32 = 1e-5;

struct Fixture {
    json: Value,
    source: SampleMatrix,
    target: SampleMatrix,
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap_or(f64::NAN) as f32],
        Value::Bool(b) => vec![f32::from(u8::from(*b))],
        other => panic!("unexpected JSON value {other}"),
    }
}

fn shape(v: &Value) -> Vec<usize> {
    let mut out = Vec::new();
    let mut cur = v;
    while let Value::Array(items) = cur {
        out.push(items.len());
        match items.first() {
            Some(first) => cur = first,
            None => break,
        }
    }
    out
}

fn matrix(v: &Value, side: Side) -> SampleMatrix {
    let rows: Vec<Vec<f32>> = v
        .as_array()
        .unwrap_or_else(|| panic!("matrix expected"))
        .iter()
        .map(floats)
        .collect();
    SampleMatrix::from_rows(&rows, side).unwrap_or_else(|e| panic!("{e}"))
}

/// The fixture, from `tests/fixtures/act/` (provenance in its README).
fn load() -> Fixture {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/act/act_reference_fixture.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let source = matrix(&json["source"], Side::Source);
    let target = matrix(&json["target"], Side::Target);
    assert_eq!((source.rows, source.cols), (16, 6));
    Fixture { json, source, target }
}

fn fit(f: &Fixture, method: Method, support: Support) -> HookMap {
    fit_hook(
        "fixture",
        f.source.view(),
        f.target.view(),
        &FitConfig { method, support },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn support_of(key: &str) -> Support {
    match key {
        "q_0_100" => Support::Q0_100,
        // The reference's "q_all" uses ±1e6 bounds: unbounded for these data.
        "q_all" => Support::Unbounded,
        "q_5_95" => Support::Quantile { lo: 5.0, hi: 95.0 },
        other => panic!("unknown support {other}"),
    }
}

/// Checks every `outputs.<λ>.{3d,4d}` (and the last-token variant) of one fitted map.
fn check_outputs(f: &Fixture, map: &HookMap, outputs: &Value, label: &str) {
    let x3 = &f.json["x_test_3d"];
    let x4 = &f.json["x_test_4d"];
    let s3: [usize; 3] = shape(x3).try_into().unwrap_or_else(|_| panic!("3-D"));
    let s4: [usize; 4] = shape(x4).try_into().unwrap_or_else(|_| panic!("4-D"));
    let obj = outputs.as_object().unwrap_or_else(|| panic!("{label}: outputs"));
    let mut checked = 0;
    for (key, out) in obj {
        if key.ends_with("_last_token_only_3d") {
            let lambda: f32 = key
                .trim_end_matches("_last_token_only_3d")
                .parse()
                .unwrap_or(f32::NAN);
            let mut x = floats(x3);
            map.apply_3d(
                "fixture",
                &mut x,
                s3,
                lambda,
                TokenScope::LastToken,
                TokenWindow::default(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            common::assert_close(&x, &floats(out), TOL, &format!("{label} {key}"));
            checked += 1;
            continue;
        }
        let lambda: f32 = key.parse().unwrap_or_else(|_| panic!("λ key {key}"));
        let mut x = floats(x3);
        map.apply_3d(
            "fixture",
            &mut x,
            s3,
            lambda,
            TokenScope::All,
            TokenWindow::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        common::assert_close(&x, &floats(&out["3d"]), TOL, &format!("{label} λ={key} 3d"));
        let mut x = floats(x4);
        map.apply_4d("fixture", &mut x, s4, lambda)
            .unwrap_or_else(|e| panic!("{e}"));
        common::assert_close(&x, &floats(&out["4d"]), TOL, &format!("{label} λ={key} 4d"));
        checked += 2;
    }
    assert!(checked >= 8, "{label}: only {checked} outputs checked");
}

#[test]
fn linear_act_parameters_match_reference() {
    let f = load();
    let lin = &f.json["linear_ot"];
    let map = fit(&f, Method::LinearAct, Support::Q0_100);
    common::assert_close(map.omega(), &floats(&lin["omega_f32"]), TOL, "omega");
    common::assert_close(map.beta(), &floats(&lin["beta_f32"]), TOL, "beta");
    // Our f64 fit has no noise: it must match the closed form far tighter than the f32 fixture.
    common::assert_close(
        map.omega(),
        &floats(&lin["omega_closed_form_f64_no_noise"]),
        1e-6,
        "omega closed form",
    );
    common::assert_close(
        map.beta(),
        &floats(&lin["beta_closed_form_f64_no_noise"]),
        1e-6,
        "beta closed form",
    );
}

#[test]
fn all_nine_quantile_supports_match_reference() {
    let f = load();
    let q = f.json["linear_ot"]["quantiles_src_dict"]
        .as_object()
        .unwrap_or_else(|| panic!("quantiles"));
    assert_eq!(q.len(), 9);
    for (key, pair) in q {
        let support: Support = key.parse().unwrap_or_else(|e| panic!("{key}: {e}"));
        assert!(Support::OFFERED.contains(&support), "{key} not offered");
        let map = fit(&f, Method::LinearAct, support);
        let pair = pair.as_array().unwrap_or_else(|| panic!("pair"));
        common::assert_close(map.lo(), &floats(&pair[0]), TOL, &format!("{key} lo"));
        common::assert_close(map.hi(), &floats(&pair[1]), TOL, &format!("{key} hi"));
    }
}

#[test]
fn linear_act_outputs_match_reference_for_every_support_and_lambda() {
    let f = load();
    for key in ["q_0_100", "q_all", "q_5_95"] {
        let map = fit(&f, Method::LinearAct, support_of(key));
        check_outputs(
            &f,
            &map,
            &f.json["linear_ot"][key]["outputs"],
            &format!("linear {key}"),
        );
    }
}

#[test]
fn mean_and_gaussian_outputs_match_reference() {
    let f = load();
    for (name, method) in [("mean_ot", Method::MeanAct), ("gaussian_ot", Method::Gaussian)] {
        let block = &f.json[name];
        for key in ["q_all", "q_0_100"] {
            let map = fit(&f, method, support_of(key));
            let d = map.diagnostics();
            common::assert_close(&d["src_mean"], &floats(&block["mu1_src"]), TOL, "mu src");
            common::assert_close(&d["tgt_mean"], &floats(&block["mu2_tgt"]), TOL, "mu tgt");
            common::assert_close(&d["src_std"], &floats(&block["std1_src"]), TOL, "std src");
            common::assert_close(&d["tgt_std"], &floats(&block["std2_tgt"]), TOL, "std tgt");
            check_outputs(&f, &map, &block[key]["outputs"], &format!("{name} {key}"));
        }
    }
}

#[test]
fn aura_matches_reference() {
    let f = load();
    let block = &f.json["aura"];
    let map = fit(&f, Method::Aura, Method::Aura.default_support());
    common::assert_close(
        &map.diagnostics()["auroc"],
        &floats(&block["auroc"]),
        TOL,
        "auroc",
    );
    common::assert_close(map.omega(), &floats(&block["alpha"]), TOL, "alpha");
    assert!(map.beta().iter().all(|&b| b == 0.0));
    check_outputs(&f, &map, &block["outputs"], "aura");
}

#[test]
fn source_extremes_untouched_under_q0_100_and_moved_when_unbounded() {
    let f = load();
    let strict = fit(&f, Method::LinearAct, Support::Q0_100);
    let open = fit(&f, Method::LinearAct, Support::Unbounded);
    for j in 0..6 {
        for &a in &[strict.lo()[j], strict.hi()[j]] {
            assert_eq!(
                strict.transport_scalar(j, a, 1.0),
                a,
                "neuron {j}: bound {a} moved under Q_o"
            );
            let expected = strict.omega()[j] * a + strict.beta()[j];
            assert!((open.transport_scalar(j, a, 1.0) - expected).abs() <= 1e-5 * expected.abs().max(1.0));
        }
    }
}
