//! Fitting on the demo model: one-pass causal estimation equals the naive definition.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use act_studio::pipeline::fit_model::{Estimation, fit_on_model};
use act_studio::pipeline::pooling::{Pooling, PoolingRecorder};
use act_studio::runtime::steer::SteeringHooks;
use act_studio::runtime::{Activation, HookFlow, HookKind, HookPoint, Hooks, LoadedModel};
use act_studio::transport::{FitConfig, HookMap, Method, SteeringPlan, TokenScope, fit_hook};

fn texts(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Steers with earlier maps, and records pooled activations at the point being fitted.
struct SteerAndRecord {
    steer: SteeringHooks,
    rec: PoolingRecorder,
}

impl Hooks for SteerAndRecord {
    fn wants(&self, p: HookPoint) -> bool {
        self.steer.wants(p) || self.rec.wants(p)
    }
    fn on_activation(&mut self, p: HookPoint, act: Activation<'_>) -> act_studio::runtime::Result<HookFlow> {
        if self.rec.wants(p) {
            let Activation {
                data,
                shape,
                valid,
                windows,
            } = act;
            self.rec.on_activation(
                p,
                Activation {
                    data,
                    shape,
                    valid,
                    windows,
                },
            )?;
            return Ok(HookFlow::Stop);
        }
        self.steer.on_activation(p, act)
    }
}

/// Pooled activations of `data` at `point`, with `earlier` maps applied at λ = 1.
fn pooled_with(
    m: &LoadedModel,
    data: &[String],
    point: HookPoint,
    earlier: &[(HookPoint, Arc<HookMap>)],
) -> Vec<f32> {
    let n = m.config().n_layers * HookKind::ALL.len();
    let mut per_hook = vec![Vec::new(); n];
    for (p, map) in earlier {
        per_hook[p.index()].push((Arc::clone(map), 1.0));
    }
    let mut hooks = SteerAndRecord {
        steer: SteeringHooks::from_plan(SteeringPlan::from_parts(per_hook, TokenScope::All)),
        rec: PoolingRecorder::new(&[point], Pooling::Mean),
    };
    for t in data {
        common::forward_alone(m, t, &mut hooks);
    }
    hooks.rec.pooled.remove(&point).unwrap_or_default()
}

#[test]
fn causal_one_pass_equals_naive_causal_fitting() {
    let Some(path) = common::demo_model() else { return };
    let m = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let d = m.config().hidden_size;
    let source = texts(&[
        "I walked to the shop to buy some milk.",
        "The meeting was moved to Thursday afternoon.",
        "She painted the kitchen a pale shade of green.",
        "The train was ten minutes late this morning.",
        "We planted tomatoes along the garden fence.",
        "He forgot his umbrella at the office again.",
    ]);
    let target = texts(&[
        "The striker curled the ball into the top corner.",
        "Fans sang for ninety minutes in the freezing rain.",
        "The goalkeeper saved a penalty in extra time.",
        "Our team won the league on the final matchday.",
        "The referee showed a red card after the tackle.",
        "The coach changed the formation at half time.",
    ]);
    let points = vec![
        HookPoint {
            layer: 1,
            kind: HookKind::MlpNorm,
        },
        HookPoint {
            layer: 2,
            kind: HookKind::AttnOut,
        },
        HookPoint {
            layer: 2,
            kind: HookKind::MlpNorm,
        },
        HookPoint {
            layer: 4,
            kind: HookKind::MlpNorm,
        },
    ];
    let config = FitConfig::new(Method::LinearAct);
    let no = AtomicBool::new(false);
    let one_pass = fit_on_model(
        &m,
        &source,
        &target,
        &points,
        Pooling::Mean,
        &config,
        Estimation::Causal,
        &no,
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(one_pass.len(), points.len());
    // The same pass cut into several chunks (threads meeting at every hook point).
    let chunked = act_studio::pipeline::causal_pass::causal_fit(
        &m,
        &source,
        &target,
        &points,
        Pooling::Mean,
        &config,
        128,
        40,
        &no,
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // The definition: re-run the data once per hook point with the earlier maps applied.
    let mut earlier: Vec<(HookPoint, Arc<HookMap>)> = Vec::new();
    let mut worst = 0.0f32;
    for (k, p) in points.iter().enumerate() {
        let s = pooled_with(&m, &source, *p, &earlier);
        let t = pooled_with(&m, &target, *p, &earlier);
        let sm =
            act_studio::transport::Samples::new(&s, source.len(), d, act_studio::transport::Side::Source)
                .unwrap_or_else(|e| panic!("{e}"));
        let tm =
            act_studio::transport::Samples::new(&t, target.len(), d, act_studio::transport::Side::Target)
                .unwrap_or_else(|e| panic!("{e}"));
        let naive = fit_hook(&p.name(), sm, tm, &config).unwrap_or_else(|e| panic!("{e}"));
        let (name, fast) = &one_pass[k];
        assert_eq!(name, &p.name());
        let many = &chunked[k].1;
        for (a, b) in [
            (many.omega(), naive.omega()),
            (many.beta(), naive.beta()),
            (many.lo(), naive.lo()),
            (many.hi(), naive.hi()),
        ]
        .into_iter()
        .chain([
            (fast.omega(), naive.omega()),
            (fast.beta(), naive.beta()),
            (fast.lo(), naive.lo()),
            (fast.hi(), naive.hi()),
        ]) {
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
                .fold(0.0f32, f32::max);
            worst = worst.max(diff);
        }
        earlier.push((*p, Arc::new(naive)));
    }
    println!("causal one-pass vs naive: max relative |Δ| over ω, β, lo, hi = {worst:e}");
    assert!(
        worst <= 1e-4,
        "one-pass causal maps differ from the naive definition by {worst}"
    );

    // Causal and simultaneous agree at the first hook point and differ after it.
    let simultaneous = fit_on_model(
        &m,
        &source,
        &target,
        &points,
        Pooling::Mean,
        &config,
        Estimation::Simultaneous,
        &no,
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let gap = |k: usize| {
        one_pass[k]
            .1
            .beta()
            .iter()
            .zip(simultaneous[k].1.beta())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(gap(0) <= 1e-4, "first hook: {}", gap(0));
    assert!(gap(3) > 1e-3, "later hooks must see the earlier maps: {}", gap(3));
}

#[test]
fn bad_datasets_are_errors() {
    let Some(path) = common::demo_model() else { return };
    let m = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let points = vec![HookPoint {
        layer: 0,
        kind: HookKind::MlpNorm,
    }];
    let cfg = FitConfig::new(Method::LinearAct);
    let no = AtomicBool::new(false);
    let one = texts(&["Only one line."]);
    let two = texts(&["First line.", "Second line."]);
    for est in [Estimation::Causal, Estimation::Simultaneous] {
        let e = fit_on_model(
            &m,
            &one,
            &two,
            &points,
            Pooling::Mean,
            &cfg,
            est,
            &no,
            &mut |_, _| {},
        );
        assert!(e.is_err_and(|e| e.to_string().contains("at least 2")));
        let e = fit_on_model(
            &m,
            &two,
            &[],
            &points,
            Pooling::Mean,
            &cfg,
            est,
            &no,
            &mut |_, _| {},
        );
        assert!(e.is_err());
        let e = fit_on_model(&m, &two, &two, &[], Pooling::Mean, &cfg, est, &no, &mut |_, _| {});
        assert!(e.is_err());
    }
}

#[test]
fn fit_cli_writes_maps_that_steer() {
    let Some(path) = common::demo_model() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let neutral = dir.path().join("neutral.txt");
    let football = dir.path().join("football.txt");
    std::fs::write(
        &neutral,
        "I walked to the shop to buy some milk.\nThe meeting was moved to Thursday afternoon.\n\
         She painted the kitchen a pale shade of green.\nThe train was ten minutes late this morning.\n\
         We planted tomatoes along the garden fence.\nHe forgot his umbrella at the office again.\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        &football,
        "The striker curled the ball into the top corner.\nFans sang for ninety minutes in the rain.\n\
         The goalkeeper saved a penalty in extra time.\nOur team won the league on the final matchday.\n\
         The referee showed a red card after the tackle.\nThe coach changed the formation at half time.\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let maps = dir.path().join("football.safetensors");
    let act = common::run_cli;
    let (m, n, f, o) = (
        path.to_str().unwrap_or_default(),
        neutral.to_str().unwrap_or_default(),
        football.to_str().unwrap_or_default(),
        maps.to_str().unwrap_or_default(),
    );
    let r = act(&["fit", "--model", m, "--source", n, "--target", f, "--out", o]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let info = act(&["maps-info", "--json", o]);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["concept"], "football");
    assert_eq!(v["estimation"], "causal");
    // The default preset, all-ln: both norms of all 30 layers, in forward order.
    assert_eq!(v["hook_points"].as_array().map(Vec::len), Some(60));
    assert_eq!(v["hook_points"][0]["name"], "layers.0.attn_norm");
    assert_eq!(v["hook_points"][1]["name"], "layers.0.mlp_norm");
    assert_eq!(v["source"]["count"], 6);
    let continuation = |lambda: &str| {
        let r = act(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "Once upon a time",
            "--temperature",
            "0",
            "--max-tokens",
            "16",
            "--maps",
            o,
            "--lambda",
            &format!("football={lambda}"),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        r.stdout
    };
    assert_ne!(
        continuation("0"),
        continuation("1"),
        "fitted maps at λ = 1 must change the greedy continuation"
    );
    let r = act(&[
        "fit",
        "--model",
        m,
        "--source",
        n,
        "--target",
        dir.path().join("missing.txt").to_str().unwrap_or_default(),
        "--out",
        o,
    ]);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("missing.txt"));
}
