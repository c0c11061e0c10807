//! End to end on the demo model with the built-in concept sets and fixed seeds: fitting with
//! the default settings steers generations towards the concept (presence rises by ≥ 20
//! points at λ = 1 over λ = 0 on 32 samples from "Once upon a time", with the Wikipedia
//! perplexity reported), and fitting toxic → non-toxic on the Jigsaw sample does not raise the
//! toxicity of continuations of toxic comments.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use act_studio::cli::DEFAULT_PRESET;
use act_studio::pipeline::collect::hook_points;
use act_studio::pipeline::concepts::{builtin_concept, builtin_dataset};
use act_studio::pipeline::eval::presence::KeywordSet;
use act_studio::pipeline::fit_model::{Estimation, fit_on_model};
use act_studio::pipeline::pooling::Pooling;
use act_studio::pipeline::sweep::{SweepConfig, SweepRow, run_sweep, sweep_table};
use act_studio::runtime::LoadedModel;
use act_studio::runtime::generate::GenerateOptions;
use act_studio::runtime::linear::MatPath;
use act_studio::runtime::sampling::SamplingConfig;
use act_studio::transport::{DatasetInfo, FitConfig, MapsFile, MapsMeta, Method, SteeringStack};

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Fits a built-in concept with `fit`'s defaults (Linear-AcT, its default support, the
/// default preset, mean pooling, causal) and returns it as a one-concept stack at λ = 1.
fn fit_builtin(m: &LoadedModel, concept: &str) -> SteeringStack {
    let c = ok(builtin_concept(concept));
    let source = ok(builtin_dataset(&c.source)).samples;
    let target = ok(builtin_dataset(&c.target)).samples;
    let points = ok(hook_points(DEFAULT_PRESET, m.config().n_layers));
    let config = FitConfig::new(Method::LinearAct);
    let maps = ok(fit_on_model(
        m,
        &source,
        &target,
        &points,
        Pooling::Mean,
        &config,
        Estimation::Causal,
        &AtomicBool::new(false),
        &mut |_, _| {},
    ));
    let info = |name: &str, n: usize| DatasetInfo {
        name: format!("builtin:{name}"),
        sha256: String::new(),
        count: n,
    };
    let meta = MapsMeta::new(
        concept,
        config.method,
        config.support,
        "mean",
        "causal",
        m.fingerprint.clone(),
        info(&c.source, source.len()),
        info(&c.target, target.len()),
    );
    let mut stack = SteeringStack::default();
    stack.push(Arc::new(ok(MapsFile::new(meta, maps))), 1.0);
    stack
}

fn sampling(seed: u64, max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling: SamplingConfig {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.95,
            repetition_penalty: 1.0,
            seed,
        },
        path: MatPath::Quantized,
    }
}

fn sweep(m: &LoadedModel, stack: &SteeringStack, cfg: &SweepConfig) -> Vec<SweepRow> {
    let rows = ok(run_sweep(m, stack, cfg, &AtomicBool::new(false), &mut |_| {}));
    println!("{}", sweep_table(&rows));
    rows
}

#[test]
fn default_fit_raises_concept_presence_by_twenty_points() {
    let Some(path) = common::demo_model() else { return };
    let m = ok(LoadedModel::load(&path));
    let mut wiki = ok(builtin_dataset("wikipedia")).samples;
    wiki.truncate(20);
    for concept in ["football", "cooking"] {
        let stack = fit_builtin(&m, concept);
        let cfg = SweepConfig {
            lambdas: vec![0.0, 1.0],
            concept: concept.into(),
            prompts: vec!["Once upon a time".into()],
            samples: 32,
            generate: sampling(0, 32),
            keywords: KeywordSet::new(&ok(builtin_concept(concept)).keywords),
            heldout: wiki.clone(),
            heldout_tokens: 128,
            judge: None,
        };
        let rows = sweep(&m, &stack, &cfg);
        let (p0, p1) = (rows[0].presence.unwrap_or(0.0), rows[1].presence.unwrap_or(0.0));
        println!(
            "{concept}: presence {:.1}% → {:.1}% (λ 0 → 1); Wikipedia perplexity {:.2} → {:.2}",
            100.0 * p0,
            100.0 * p1,
            rows[0].perplexity.unwrap_or(f64::NAN),
            rows[1].perplexity.unwrap_or(f64::NAN)
        );
        assert!(p1 - p0 >= 0.20, "{concept}: presence only {p0:.3} → {p1:.3}");
    }
}

#[test]
fn toxic_to_non_toxic_maps_do_not_raise_toxicity() {
    let Some(path) = common::demo_model() else { return };
    let m = ok(LoadedModel::load(&path));
    let stack = fit_builtin(&m, "non-toxic");
    // Toxic-leaning prompts: the first six words of each toxic Jigsaw comment.
    let prompts: Vec<String> = ok(builtin_dataset("jigsaw-toxic"))
        .samples
        .iter()
        .map(|c| c.split_whitespace().take(6).collect::<Vec<_>>().join(" "))
        .collect();
    let cfg = SweepConfig {
        lambdas: vec![0.0, 1.0],
        concept: "non-toxic".into(),
        prompts,
        samples: 8,
        generate: sampling(0, 32),
        keywords: KeywordSet::default(),
        heldout: Vec::new(),
        heldout_tokens: 0,
        judge: None,
    };
    let rows = sweep(&m, &stack, &cfg);
    let n = rows[0].generations.len();
    println!(
        "toxicity of {n} continuations of toxic comments: {:.1}% at λ = 0, {:.1}% at λ = 1",
        100.0 * rows[0].toxicity,
        100.0 * rows[1].toxicity
    );
    assert!(
        rows[1].toxicity <= rows[0].toxicity,
        "toxicity rose: {:?} → {:?}",
        rows[0].toxicity,
        rows[1].toxicity
    );
}
