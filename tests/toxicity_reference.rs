//! The built-in toxicity classifier against the PyPI package it was ported from: the package's
//! own `predict_prob` and `predict` (alt-profanity-check 1.9.1, scikit-learn 1.9.1) on the
//! texts of tests/fixtures/toxicity/reference.jsonl (written by tools/make_toxicity_fixture.py).
//!
//! The Rust side repeats sklearn's float64 operations in sklearn's order, so the probabilities
//! are the package's bit for bit here (the test prints how many are); they could differ by an
//! ulp or so only through another platform's `exp`. The bound, 1e-12, allows that and still
//! catches any wrong token, count, weight or formula: lowercasing off, the `regex` crate's own
//! `\b\w` class, no l2 norm or a flipped sigmoid sign each moved some probability by > 0.9.

use act_studio::pipeline::eval::toxicity::{ToxicityClassifier, is_toxic, toxicity_probabilities};

const FIXTURE: &str = include_str!("fixtures/toxicity/reference.jsonl");
const BOUND: f64 = 1e-12;

struct Case {
    text: String,
    p: f64,
    label: bool,
}

fn cases() -> Vec<Case> {
    let mut lines = FIXTURE.lines();
    let meta: serde_json::Value = serde_json::from_str(lines.next().expect("meta line")).expect("meta");
    let meta = &meta["meta"];
    assert_eq!(meta["package"], "alt-profanity-check");
    assert_eq!(meta["version"], "1.9.1");
    let cases: Vec<Case> = lines
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("fixture line");
            Case {
                text: v["text"].as_str().expect("text").to_owned(),
                // A string holding Python's repr: str::parse is correctly rounded, so this is
                // the package's float64 exactly (serde_json's default parser can be an ulp off).
                p: v["p"].as_str().expect("p").parse().expect("p"),
                label: match v["label"].as_u64() {
                    Some(0) => false,
                    Some(1) => true,
                    other => panic!("label {other:?}"),
                },
            }
        })
        .collect();
    assert_eq!(meta["texts"].as_u64(), Some(cases.len() as u64));
    assert!(cases.len() >= 300);
    cases
}

#[test]
fn matches_the_package_probabilities_and_labels() {
    let cases = cases();
    let c = ToxicityClassifier::builtin();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let probs = toxicity_probabilities(&texts);
    let mut max_diff = 0.0f64;
    let mut worst = "";
    let mut exact = 0;
    let mut wrong_labels = Vec::new();
    for (case, &p) in cases.iter().zip(&probs) {
        assert!(p.is_finite(), "{:?}: {p}", case.text);
        assert_eq!(p, c.probability(&case.text));
        let d = (p - case.p).abs();
        if d > max_diff || d.is_nan() {
            max_diff = d;
            worst = &case.text;
        }
        exact += usize::from(p == case.p);
        if is_toxic(&case.text) != case.label {
            wrong_labels.push((case.text.as_str(), case.p, p));
        }
    }
    let flagged = cases.iter().filter(|c| c.label).count();
    let close = cases.iter().filter(|c| (c.p - 0.5).abs() < 0.05).count();
    println!(
        "{} texts ({flagged} toxic, {close} within 0.05 of 0.5): max |p_rust - p_python| = {max_diff:e}, \
         {exact} bit-identical",
        cases.len()
    );
    assert!(
        max_diff <= BOUND,
        "max |Δp| {max_diff:e} > {BOUND:e}, for {worst:?}"
    );
    assert!(wrong_labels.is_empty(), "labels differ: {wrong_labels:?}");
}
