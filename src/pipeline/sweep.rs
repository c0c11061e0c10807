//! λ sweeps: for each strength of one concept, draw samples from the prompts and measure
//! concept presence (keywords, optionally a yes/no judge), toxicity, and the perplexity of
//! held-out text under the same steering (the side effects).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::runtime::generate::GenerateOptions;
use crate::runtime::generate_many::generate_many;
use crate::runtime::steer::SteeringHooks;
use crate::runtime::{LoadedModel, RuntimeError};
use crate::transport::{SteeringStack, TransportError};

use super::eval::judge::judge_p_yes;
use super::eval::perplexity::texts_perplexity;
use super::eval::presence::KeywordSet;
use super::eval::stats::Proportion;
use super::eval::toxicity::ToxicityClassifier;

/// What to sweep and measure.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Strengths to try, in order.
    pub lambdas: Vec<f32>,
    /// The concept whose λ varies (the others keep theirs).
    pub concept: String,
    /// Prompts (already rendered: chat templates applied by the caller).
    pub prompts: Vec<String>,
    /// Samples per prompt and λ.
    pub samples: usize,
    /// Generation settings (the seed of sample `i` is `seed + i`).
    pub generate: GenerateOptions,
    /// Presence keywords (may be empty: presence is then not reported).
    pub keywords: KeywordSet,
    /// Held-out texts for perplexity (may be empty).
    pub heldout: Vec<String>,
    /// Tokens per held-out text.
    pub heldout_tokens: usize,
    /// If set, also ask the (unsteered) model whether each sample is about this.
    pub judge: Option<String>,
}

/// The measurements at one λ.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRow {
    /// The swept concept's λ.
    pub lambda: f32,
    /// Samples with a concept keyword (`None` without keywords).
    pub presence: Option<Proportion>,
    /// Samples the toxicity classifier flags ([`super::eval::toxicity`]).
    pub toxic: Proportion,
    /// Mean classifier probability of toxicity over the samples.
    pub toxicity_score: f64,
    /// Perplexity of the held-out texts (`None` without them).
    pub perplexity: Option<f64>,
    /// Mean judge p(yes) (`None` without a judge).
    pub judge: Option<f64>,
    /// Every sample, prompt by prompt.
    pub generations: Vec<String>,
}

impl SweepRow {
    /// The first sample, on one line.
    pub fn example(&self) -> String {
        self.generations
            .first()
            .map(|g| g.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }
}

/// Why a sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Input(String),
    #[error("{path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Progress of a sweep: which λ, and work units done of the total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepProgress {
    /// Current λ.
    pub lambda: f32,
    /// Units done (one per sample and one per held-out batch) over the whole sweep.
    pub done: usize,
    /// All units.
    pub total: usize,
}

/// Runs the sweep with `stack`'s concepts (the swept one must be in it).
pub fn run_sweep(
    m: &LoadedModel,
    stack: &SteeringStack,
    cfg: &SweepConfig,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(SweepProgress),
) -> Result<Vec<SweepRow>, SweepError> {
    if cfg.lambdas.is_empty() {
        return Err(SweepError::Input("no λ values to sweep".into()));
    }
    if let Some(l) = cfg.lambdas.iter().find(|l| !l.is_finite()) {
        return Err(SweepError::Input(format!("λ = {l} is not finite")));
    }
    if cfg.prompts.is_empty() || cfg.samples == 0 {
        return Err(SweepError::Input(
            "a sweep needs at least one prompt and one sample".into(),
        ));
    }
    if !stack.concepts.iter().any(|c| c.name == cfg.concept) {
        let known: Vec<&str> = stack.concepts.iter().map(|c| c.name.as_str()).collect();
        return Err(SweepError::Input(format!(
            "no loaded concept is named `{}` (loaded: {})",
            cfg.concept,
            known.join(", ")
        )));
    }
    let c = m.config();
    let per_lambda = cfg.prompts.len() * cfg.samples + cfg.heldout.len();
    let total = per_lambda * cfg.lambdas.len();
    let mut rows = Vec::with_capacity(cfg.lambdas.len());
    for (li, &lambda) in cfg.lambdas.iter().enumerate() {
        let mut stack = stack.clone();
        stack.set_lambda(&cfg.concept, lambda);
        let mut hooks = SteeringHooks::new(&stack, c.n_layers, c.hidden_size)?;
        let base = li * per_lambda;
        let mut done = base;
        let mut generations = Vec::with_capacity(cfg.prompts.len() * cfg.samples);
        for prompt in &cfg.prompts {
            let ids = m.tokenizer.encode(prompt)?;
            let gens = generate_many(
                m,
                &ids,
                cfg.samples,
                &cfg.generate,
                &mut hooks,
                cancel,
                &mut |_| {
                    done += 1;
                    progress(SweepProgress { lambda, done, total });
                },
            )?;
            generations.extend(gens.into_iter().map(|g| g.text));
        }
        let perplexity = if cfg.heldout.is_empty() {
            None
        } else {
            let start = base + cfg.prompts.len() * cfg.samples;
            let p = texts_perplexity(
                m,
                &cfg.heldout,
                cfg.heldout_tokens,
                &mut hooks,
                cancel,
                &mut |d, _| {
                    progress(SweepProgress {
                        lambda,
                        done: start + d,
                        total,
                    })
                },
            )?;
            Some(p.perplexity)
        };
        let judge = match &cfg.judge {
            Some(concept) => {
                let p = judge_p_yes(m, concept, &generations, cancel)?;
                Some(p.iter().sum::<f64>() / p.len().max(1) as f64)
            }
            None => None,
        };
        // [P(non-toxic), P(toxic)] per sample: flagged as the classifier's `predict` does.
        let scores: Vec<[f64; 2]> = generations
            .iter()
            .map(|g| ToxicityClassifier::builtin().class_probabilities(g))
            .collect();
        rows.push(SweepRow {
            lambda,
            presence: (!cfg.keywords.is_empty())
                .then(|| Proportion::count(&generations, |g| cfg.keywords.matches(g))),
            toxic: Proportion::count(&scores, |[clean, toxic]| toxic > clean),
            toxicity_score: scores.iter().map(|s| s[1]).sum::<f64>() / scores.len().max(1) as f64,
            perplexity,
            judge,
            generations,
        });
    }
    Ok(rows)
}

/// The sweep as CSV: `lambda,samples,presence,presence_lo,presence_hi,toxicity,toxicity_lo,
/// toxicity_hi,toxicity_score,perplexity,judge_p_yes,example` — rates with their 95 % Wilson
/// intervals ([`Proportion::wilson95`]); empty cells for measures not taken.
pub fn sweep_csv(rows: &[SweepRow]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_HEADER)?;
    let f = |v: f64| format!("{v:.4}");
    let opt = |v: Option<f64>| v.map_or(String::new(), f);
    for r in rows {
        let (plo, phi) = r.presence.map(|p| p.wilson95()).unzip();
        let (tlo, thi) = r.toxic.wilson95();
        w.write_record([
            format!("{}", r.lambda),
            r.generations.len().to_string(),
            opt(r.presence.map(|p| p.rate())),
            opt(plo),
            opt(phi),
            f(r.toxic.rate()),
            f(tlo),
            f(thi),
            f(r.toxicity_score),
            opt(r.perplexity),
            opt(r.judge),
            r.example(),
        ])?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

/// Every sample of a sweep, one row each: `lambda,sample,text` (the text on one line).
pub fn sweep_samples_csv(rows: &[SweepRow]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["lambda", "sample", "text"])?;
    for r in rows {
        for (i, g) in r.generations.iter().enumerate() {
            let one_line = g.split_whitespace().collect::<Vec<_>>().join(" ");
            w.write_record([r.lambda.to_string(), i.to_string(), one_line])?;
        }
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

/// The columns of [`sweep_csv`].
pub const CSV_HEADER: [&str; 12] = [
    "lambda",
    "samples",
    "presence",
    "presence_lo",
    "presence_hi",
    "toxicity",
    "toxicity_lo",
    "toxicity_hi",
    "toxicity_score",
    "perplexity",
    "judge_p_yes",
    "example",
];

/// Writes every sample as JSON lines `{lambda, sample, text}`, atomically.
pub fn write_generations(path: &Path, rows: &[SweepRow]) -> Result<(), SweepError> {
    let mut out = String::new();
    for r in rows {
        for (i, g) in r.generations.iter().enumerate() {
            let line = serde_json::json!({"lambda": r.lambda, "sample": i, "text": g});
            out.push_str(&line.to_string());
            out.push('\n');
        }
    }
    crate::transport::atomic_file::atomic_write(path, out.as_bytes()).map_err(|source| SweepError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The sweep as an aligned text table for the terminal: rates in percent with their 95 %
/// Wilson intervals.
pub fn sweep_table(rows: &[SweepRow]) -> String {
    let pct = |p: Option<Proportion>| match p {
        Some(p) => {
            let (lo, hi) = p.wilson95();
            format!(
                "{:>5.1}% [{:>4.1}–{:>4.1}]",
                100.0 * p.rate(),
                100.0 * lo,
                100.0 * hi
            )
        }
        None => format!("{:>19}", "—"),
    };
    let num = |v: Option<f64>| v.map_or(format!("{:>6}", "—"), |v| format!("{v:>6.2}"));
    let mut s = format!(
        "{:>6}  {:>7}  {:>19}  {:>19}  {:>10}  {:>6}  example\n",
        "λ", "samples", "presence (95% CI)", "toxicity (95% CI)", "perplexity", "judge"
    );
    for r in rows {
        let mut ex = r.example();
        if ex.chars().count() > 60 {
            ex = ex.chars().take(59).collect::<String>() + "…";
        }
        s.push_str(&format!(
            "{:>6.2}  {:>7}  {}  {}  {:>10}  {}  {ex}\n",
            r.lambda,
            r.generations.len(),
            pct(r.presence),
            pct(Some(r.toxic)),
            num(r.perplexity),
            num(r.judge),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(lambda: f32, presence: Option<Proportion>) -> SweepRow {
        SweepRow {
            lambda,
            presence,
            toxic: Proportion::new(0, 2),
            toxicity_score: 0.125,
            perplexity: Some(12.3456),
            judge: None,
            generations: vec!["a goal,\n\"scored\"".into(), "b".into()],
        }
    }

    #[test]
    fn the_samples_csv_keeps_every_sample_on_one_line() {
        let csv = sweep_samples_csv(&[row(0.0, None), row(1.0, None)]).unwrap_or_default();
        let text = String::from_utf8(csv).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(lines[0], "lambda,sample,text");
        assert_eq!(lines[1], "0,0,\"a goal, \"\"scored\"\"\"");
        assert_eq!(lines[4], "1,1,b");
    }

    #[test]
    fn csv_quotes_examples_and_leaves_missing_cells_empty() {
        let half = Some(Proportion::new(1, 2));
        let csv = String::from_utf8(sweep_csv(&[row(0.0, None), row(1.0, half)]).unwrap()).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER.join(","));
        assert_eq!(
            lines[1],
            "0,2,,,,0.0000,0.0000,0.6576,0.1250,12.3456,,\"a goal, \"\"scored\"\"\""
        );
        assert_eq!(
            lines[2],
            "1,2,0.5000,0.0945,0.9055,0.0000,0.0000,0.6576,0.1250,12.3456,,\"a goal, \"\"scored\"\"\""
        );
        let t = sweep_table(&[row(1.0, half)]);
        assert!(t.contains("50.0% [ 9.5–90.5]") && t.contains("12.35"), "{t}");
    }

    #[test]
    fn generations_file_has_one_json_line_per_sample() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.jsonl");
        write_generations(&p, &[row(0.5, None)]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["lambda"], 0.5);
        assert_eq!(text.lines().count(), 2);
    }
}
