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
use super::eval::toxicity::toxicity_rate;

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
    /// Fraction of samples with a concept keyword (`None` without keywords).
    pub presence: Option<f64>,
    /// Fraction of toxic samples.
    pub toxicity: f64,
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
        rows.push(SweepRow {
            lambda,
            presence: (!cfg.keywords.is_empty()).then(|| cfg.keywords.rate(&generations)),
            toxicity: toxicity_rate(&generations),
            perplexity,
            judge,
            generations,
        });
    }
    Ok(rows)
}

/// The sweep as CSV: `lambda,presence,toxicity,perplexity,judge_p_yes,example` (empty cells
/// for measures not taken).
pub fn sweep_csv(rows: &[SweepRow]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "lambda",
        "presence",
        "toxicity",
        "perplexity",
        "judge_p_yes",
        "example",
    ])?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
    for r in rows {
        w.write_record([
            format!("{}", r.lambda),
            opt(r.presence),
            format!("{:.4}", r.toxicity),
            opt(r.perplexity),
            opt(r.judge),
            r.example(),
        ])?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

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

/// The sweep as an aligned text table for the terminal.
pub fn sweep_table(rows: &[SweepRow]) -> String {
    let opt = |v: Option<f64>, pct: bool| match v {
        Some(v) if pct => format!("{:>5.1}%", v * 100.0),
        Some(v) => format!("{v:>6.2}"),
        None => format!("{:>6}", "—"),
    };
    let mut s = format!(
        "{:>6}  {:>8}  {:>8}  {:>10}  {:>6}  example\n",
        "λ", "presence", "toxicity", "perplexity", "judge"
    );
    for r in rows {
        let mut ex = r.example();
        if ex.chars().count() > 70 {
            ex = ex.chars().take(69).collect::<String>() + "…";
        }
        s.push_str(&format!(
            "{:>6.2}  {:>8}  {:>8}  {:>10}  {:>6}  {ex}\n",
            r.lambda,
            opt(r.presence, true),
            opt(Some(r.toxicity), true),
            opt(r.perplexity, false),
            opt(r.judge, false),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(lambda: f32, presence: Option<f64>) -> SweepRow {
        SweepRow {
            lambda,
            presence,
            toxicity: 0.0,
            perplexity: Some(12.3456),
            judge: None,
            generations: vec!["a goal,\n\"scored\"".into(), "b".into()],
        }
    }

    #[test]
    fn csv_quotes_examples_and_leaves_missing_cells_empty() {
        let csv = String::from_utf8(sweep_csv(&[row(0.0, None), row(1.0, Some(0.5))]).unwrap()).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "lambda,presence,toxicity,perplexity,judge_p_yes,example"
        );
        assert_eq!(lines[1], "0,,0.0000,12.3456,,\"a goal, \"\"scored\"\"\"");
        assert_eq!(lines[2], "1,0.5000,0.0000,12.3456,,\"a goal, \"\"scored\"\"\"");
        let t = sweep_table(&[row(1.0, Some(0.5))]);
        assert!(t.contains("50.0%") && t.contains("12.35"), "{t}");
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
