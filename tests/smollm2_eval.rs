//! Evaluation machinery on the demo model: batched sampling equals one-by-one sampling,
//! one-shot caches change nothing, multiple-choice scoring, the yes/no judge, perplexity of
//! texts, making a concept from a description, and the `sweep`/`eval`/`make-concept` CLI.

mod common;

use std::sync::atomic::AtomicBool;

use act_studio::pipeline::describe::{DescribeOptions, concept_from_description};
use act_studio::pipeline::eval::judge::judge_p_yes;
use act_studio::pipeline::eval::mc::{parse_mc, score_mc};
use act_studio::pipeline::eval::perplexity::{texts_perplexity, token_logprobs};
use act_studio::pipeline::eval::presence::KeywordSet;
use act_studio::pipeline::eval::stats::{Proportion, p_greater};
use act_studio::runtime::forward::{Batch, LogitsMode};
use act_studio::runtime::generate::{GenerateOptions, generate, perplexity};
use act_studio::runtime::generate_many::generate_many;
use act_studio::runtime::linear::MatPath;
use act_studio::runtime::sampling::SamplingConfig;
use act_studio::runtime::{LoadedModel, NoHooks};

fn model() -> Option<LoadedModel> {
    let p = common::demo_model()?;
    Some(LoadedModel::load(&p).unwrap_or_else(|e| panic!("{e}")))
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn batched_samples_equal_samples_drawn_one_by_one() {
    let Some(m) = model() else { return };
    let prompt = ok(m.tokenizer.encode("Once upon a time"));
    let opts = GenerateOptions {
        max_tokens: 12,
        sampling: SamplingConfig {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.95,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 5,
        },
        path: MatPath::Quantized,
    };
    let no = AtomicBool::new(false);
    let mut done = Vec::new();
    let many = ok(generate_many(
        &m,
        &prompt,
        4,
        &opts,
        &mut NoHooks,
        &no,
        &mut |r| done.push(r),
    ));
    done.sort_unstable();
    assert_eq!(done, [0, 1, 2, 3], "every row reports once");
    for (i, g) in many.iter().enumerate() {
        let one_opts = GenerateOptions {
            sampling: SamplingConfig {
                seed: 5 + i as u64,
                ..opts.sampling
            },
            ..opts
        };
        let one = ok(generate(&m, &prompt, &one_opts, &mut NoHooks, &no, &mut |_| true));
        assert_eq!(g.tokens, one.tokens, "row {i}");
        assert_eq!(g.text, one.text, "row {i}");
    }
    assert!(many.iter().any(|g| g.text != many[0].text), "rows must differ");
}

#[test]
fn one_shot_caches_and_batched_scoring_change_nothing() {
    let Some(m) = model() else { return };
    let ids = ok(m.tokenizer.encode("The quick brown fox jumps over the lazy dog."));
    let b = Batch {
        tokens: &ids,
        batch: 1,
        seq: ids.len(),
        valid: &[ids.len()],
        prompt_lens: &[ids.len()],
    };
    let run = |cache| {
        let mut caches = [cache];
        let out = ok(m
            .model
            .forward(&b, &mut caches, &mut NoHooks, MatPath::Dense, LogitsMode::All));
        (out.logits, caches[0].len())
    };
    let (kept, kept_len) = run(m.new_cache());
    let (transient, transient_len) = run(m.transient_cache());
    assert_eq!(kept, transient, "logits differ with a one-shot cache");
    assert_eq!((kept_len, transient_len), (ids.len(), 0));

    // Perplexity of one text: windowed runtime path = batched scoring path.
    let no = AtomicBool::new(false);
    let p = ok(perplexity(&m, &ids, 512, &mut NoHooks, &no));
    let t = ok(texts_perplexity(
        &m,
        &["The quick brown fox jumps over the lazy dog.".to_string()],
        512,
        &mut NoHooks,
        &no,
        &mut |_, _| {},
    ));
    assert_eq!(t.tokens, p.tokens);
    assert!(
        (t.perplexity - p.perplexity).abs() < 1e-6 * p.perplexity,
        "{t:?} vs {p:?}"
    );
    // A row scored beside a longer one (padding) equals the row scored alone.
    let short = ids[..5].to_vec();
    let alone = ok(token_logprobs(
        &m,
        std::slice::from_ref(&short),
        &mut NoHooks,
        &no,
        &mut |_, _| {},
    ));
    let beside = ok(token_logprobs(
        &m,
        &[short, ids.clone()],
        &mut NoHooks,
        &no,
        &mut |_, _| {},
    ));
    let gap = alone[0]
        .iter()
        .zip(&beside[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(gap < 1e-4, "padding changed log-probabilities by {gap}");
}

#[test]
fn steering_ignores_padding_so_batched_scores_equal_scores_alone() {
    use act_studio::runtime::steer::SteeringHooks;
    use act_studio::transport::{HookMap, Method, SteeringPlan, Support, TokenScope};
    let Some(m) = model() else { return };
    let d = m.config().hidden_size;
    let shift = |l: usize| {
        let beta = (0..d)
            .map(|j| if (j + l).is_multiple_of(2) { 0.6 } else { -0.3 })
            .collect();
        let map = HookMap::new(
            Method::MeanAct,
            Support::Unbounded,
            vec![1.0; d],
            beta,
            vec![f32::NEG_INFINITY; d],
            vec![f32::INFINITY; d],
            Default::default(),
        );
        std::sync::Arc::new(ok(map))
    };
    let n_hooks = m.config().n_layers * act_studio::runtime::HookKind::ALL.len();
    let no = AtomicBool::new(false);
    let short = ok(m.tokenizer.encode("A short one."));
    let long = ok(m
        .tokenizer
        .encode("A much longer sentence that forces padding on the short one."));
    // The short row's next-token logits, alone and padded beside a longer row.
    let last_logits = |rows: &[&Vec<u32>], hooks: &mut dyn act_studio::runtime::Hooks| {
        let padded = act_studio::pipeline::collect::PaddedBatch::from_ids(rows.iter().copied());
        let mut caches: Vec<_> = rows.iter().map(|_| m.transient_cache()).collect();
        let out = ok(m.model.forward(
            &padded.batch(),
            &mut caches,
            hooks,
            MatPath::Dense,
            LogitsMode::Last,
        ));
        out.logits[..m.config().vocab_size].to_vec()
    };
    for scope in [TokenScope::All, TokenScope::LastToken] {
        let hooks = || {
            let mut per_hook = vec![Vec::new(); n_hooks];
            for l in 0..4 {
                let p = act_studio::runtime::HookPoint {
                    layer: l,
                    kind: act_studio::runtime::HookKind::MlpNorm,
                };
                per_hook[p.index()] = vec![(shift(l), 1.0f32)];
            }
            SteeringHooks::from_plan(SteeringPlan::from_parts(per_hook, scope))
        };
        let alone = last_logits(&[&short], &mut hooks());
        let beside = last_logits(&[&short, &long], &mut hooks());
        let plain = last_logits(&[&short], &mut NoHooks);
        let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(
            diff(&alone, &beside) < 1e-3,
            "{scope:?}: padding changed the steered logits by {}",
            diff(&alone, &beside)
        );
        assert!(
            diff(&alone, &plain) > 1e-2,
            "{scope:?}: the maps must change the logits"
        );
        // Scored log-probabilities agree too.
        let lp_alone = ok(token_logprobs(
            &m,
            std::slice::from_ref(&short),
            &mut hooks(),
            &no,
            &mut |_, _| {},
        ));
        let lp_beside = ok(token_logprobs(
            &m,
            &[short.clone(), long.clone()],
            &mut hooks(),
            &no,
            &mut |_, _| {},
        ));
        let gap = lp_alone[0]
            .iter()
            .zip(&lp_beside[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            gap < 1e-4,
            "{scope:?}: padding changed steered log-probabilities by {gap}"
        );
    }
}

#[test]
fn multiple_choice_and_judge_tell_easy_cases_apart() {
    let Some(m) = model() else { return };
    let mc = r#"{"question": "What is the capital of France?", "choices": ["Paris", "Tokyo", "Cairo", "Lima"], "answer": 0}
{"question": "How many legs does a spider have?", "choices": ["Three", "Eight", "Eleven", "Forty"], "answer": 1}
{"question": "Which animal barks?", "choices": ["A fish", "A snail", "A dog", "A cloud"], "answer": 2}
{"question": "What colour is the sky on a clear day?", "choices": ["Blue", "Black", "Brown", "Purple"], "answer": 0}
{"question": "What do bees make?", "choices": ["Steel", "Plastic", "Concrete", "Honey"], "answer": 3}
{"question": "Which is the largest planet in the solar system?", "choices": ["Jupiter", "a pebble", "a spoon", "a shoe"], "answer": 0}
{"question": "What is frozen water called?", "choices": ["Sand", "Ice", "Smoke", "Paper"], "answer": 1}
{"question": "What do you use to write on paper?", "choices": ["A pen", "A hammer", "A pillow", "A river"], "answer": 0}"#;
    let items = ok(parse_mc(mc, "jsonl", "easy.jsonl"));
    let no = AtomicBool::new(false);
    let r = ok(score_mc(&m, &items, &mut NoHooks, &no, &mut |_, _| {}));
    println!(
        "easy MC: accuracy {:.3}, per byte {:.3}, picks {:?}",
        r.accuracy, r.accuracy_norm, r.picks
    );
    assert!(r.accuracy >= 0.75, "{r:?}");

    let about = ["The striker scored a late goal and the stadium erupted.".to_string()];
    let other = ["I need to renew my library card before Friday.".to_string()];
    let yes = ok(judge_p_yes(&m, "football", &about, &no))[0];
    let no_ = ok(judge_p_yes(&m, "football", &other, &no))[0];
    println!("judge p(yes): football text {yes:.3}, errand text {no_:.3}");
    assert!(yes > no_, "judge: {yes} vs {no_}");
}

#[test]
fn a_concept_made_from_a_description_is_distinct_and_on_topic() {
    let Some(m) = model() else { return };
    let opts = DescribeOptions {
        samples: 12,
        ..Default::default()
    };
    let lines = ok(concept_from_description(
        &m,
        "football",
        &opts,
        &AtomicBool::new(false),
        &mut |_, _| {},
    ));
    println!("{lines:#?}");
    assert!(lines.len() >= 8, "only {} sentences", lines.len());
    let mut keys: Vec<String> = lines.iter().map(|l| l.to_lowercase()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), lines.len(), "duplicates");
    let k = KeywordSet::new(&[
        "football*",
        "soccer",
        "goal*",
        "team*",
        "player*",
        "match*",
        "game*",
        "ball",
        "sport*",
    ]);
    // On topic = far more football words than the built-in neutral sentences have: a one-sided
    // two-proportion test against that baseline (measured: 12 of 12 generated vs 4 of 694
    // neutral sentences, p ≈ 1e-40; p < 1e-4 allows a few off-topic sentences, not a concept
    // about something else).
    let neutral = ok(act_studio::pipeline::concepts::builtin_dataset("neutral")).samples;
    let on_topic = Proportion::count(&lines, |l| k.matches(l));
    let baseline = Proportion::count(&neutral, |l| k.matches(l));
    let p_value = p_greater(on_topic, baseline);
    println!("on topic: {on_topic:?} vs neutral {baseline:?}, one-sided p = {p_value:.1e}");
    assert!(
        p_value < 1e-4,
        "off topic ({on_topic:?} vs {baseline:?}): {lines:?}"
    );
    assert!(concept_from_description(&m, "  ", &opts, &AtomicBool::new(false), &mut |_, _| {}).is_err());
}

#[test]
fn sweep_eval_and_make_concept_cli() {
    let Some(model) = common::demo_model() else { return };
    let model = model.display().to_string();
    let tmp = ok(tempfile::tempdir());
    let p = |n: &str| tmp.path().join(n).display().to_string();
    let o = common::run_cli(&[
        "fit",
        "--model",
        &model,
        "--source",
        "builtin:neutral",
        "--target",
        "builtin:football",
        "--limit",
        "24",
        "--preset",
        "post-ln:0-9",
        "--out",
        &p("football.safetensors"),
    ]);
    assert!(o.status.success(), "{}", common::text(&o.stderr));
    let o = common::run_cli(&[
        "sweep",
        "--model",
        &model,
        "--maps",
        &p("football.safetensors"),
        "--lambdas",
        "0,1",
        "--samples",
        "3",
        "--max-tokens",
        "6",
        "--heldout-samples",
        "2",
        "--csv",
        &p("sweep.csv"),
        "--generations",
        &p("g.jsonl"),
    ]);
    assert!(o.status.success(), "{}", common::text(&o.stderr));
    let table = common::text(&o.stdout);
    assert!(
        table.contains("presence") && table.lines().count() == 3,
        "{table}"
    );
    let csv = ok(std::fs::read_to_string(p("sweep.csv")));
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "lambda,samples,presence,presence_lo,presence_hi,toxicity,toxicity_lo,toxicity_hi,\
         toxicity_score,perplexity,judge_p_yes,example"
    );
    assert!(rows[1].starts_with("0,") && rows[2].starts_with("1,"), "{csv}");
    assert_eq!(ok(std::fs::read_to_string(p("g.jsonl"))).lines().count(), 6);

    let o = common::run_cli(&[
        "eval",
        "--model",
        &model,
        "--maps",
        &p("football.safetensors"),
        "--lambda",
        "football=0",
        "--perplexity",
        "builtin:wikipedia",
        "--limit",
        "2",
        "--tokens",
        "32",
    ]);
    assert!(o.status.success(), "{}", common::text(&o.stderr));
    let steered0 = common::text(&o.stdout);
    let o = common::run_cli(&[
        "eval",
        "--model",
        &model,
        "--perplexity",
        "builtin:wikipedia",
        "--limit",
        "2",
        "--tokens",
        "32",
    ]);
    assert!(o.status.success(), "{}", common::text(&o.stderr));
    assert_eq!(steered0, common::text(&o.stdout), "λ = 0 must equal no steering");
    assert!(steered0.starts_with("perplexity: "), "{steered0}");

    let o = common::run_cli(&[
        "eval",
        "--model",
        &model,
        "--maps",
        &p("football.safetensors"),
        "--lambda",
        "soccer=1",
        "--perplexity",
        "builtin:wikipedia",
    ]);
    assert!(!o.status.success());
    assert!(common::text(&o.stderr).contains("no loaded concept is named `soccer` (loaded: football)"));

    let o = common::run_cli(&[
        "make-concept",
        "--model",
        &model,
        "--description",
        "cats",
        "--samples",
        "4",
        "--out",
        &p("cats.txt"),
    ]);
    assert!(o.status.success(), "{}", common::text(&o.stderr));
    let made = ok(std::fs::read_to_string(p("cats.txt")));
    assert!(made.lines().count() >= 2, "{made}");

    let o = common::run_cli(&["concepts"]);
    let listing = common::text(&o.stdout);
    for name in [
        "football",
        "cooking",
        "ocean",
        "space",
        "music",
        "weddings",
        "sentiment",
        "non-toxic",
        "wikipedia",
    ] {
        assert!(listing.contains(name), "{name} missing from\n{listing}");
    }
}
