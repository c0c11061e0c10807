//! CLI commands that measure steering (`sweep`, `eval`) and manage concept datasets
//! (`concepts`, `make-concept`), with progress bars on stderr.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli_model::{load, read_dataset};
use crate::pipeline::concepts::{builtin_concept, manifest};
use crate::pipeline::dataset::{DatasetSpec, save_lines};
use crate::pipeline::describe::{DescribeOptions, concept_from_description};
use crate::pipeline::eval::mc::{read_mc, score_mc};
use crate::pipeline::eval::perplexity::texts_perplexity;
use crate::pipeline::eval::presence::KeywordSet;
use crate::pipeline::presets::{parse_lambda, parse_named_lambda};
use crate::pipeline::steering::{SteeringTarget, load_steering_stack};
use crate::pipeline::sweep::{SweepConfig, run_sweep, sweep_csv, sweep_table, write_generations};
use crate::runtime::generate::GenerateOptions;
use crate::runtime::linear::MatPath;
use crate::runtime::sampling::SamplingConfig;
use crate::runtime::steer::SteeringHooks;
use crate::runtime::tokenizer::ChatMessage;
use crate::runtime::{Hooks, LoadedModel, NoHooks};
use crate::transport::{TokenScope, atomic_write};

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:>22} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// Arguments of `sweep`.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// Model file (.gguf) or Hugging Face folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Maps file(s); each is one concept.
    #[arg(long = "maps", required = true)]
    pub maps: Vec<PathBuf>,
    /// The concept whose λ is swept (default: the first maps file's).
    #[arg(long)]
    pub concept: Option<String>,
    /// λ values of the swept concept.
    #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,0.75,1", value_parser = parse_lambda)]
    pub lambdas: Vec<f32>,
    /// Fixed λ of other loaded concepts, NAME=VALUE (default 1).
    #[arg(long = "lambda", value_parser = parse_named_lambda)]
    pub fixed: Vec<(String, f32)>,
    /// Prompt(s) to continue (repeatable; "Once upon a time" when neither this nor
    /// --prompts is given).
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    /// More prompts from a dataset (one sample each), e.g. builtin:toxic-prompts.
    #[arg(long = "prompts")]
    pub prompt_set: Option<DatasetSpec>,
    /// Use at most this many prompts of --prompts (the first ones).
    #[arg(long)]
    pub prompt_limit: Option<usize>,
    /// Wrap each prompt as a user message in the chat template.
    #[arg(long)]
    pub chat: bool,
    /// Samples per prompt and λ (sample i uses seed + i).
    #[arg(long, default_value_t = 32)]
    pub samples: usize,
    /// New tokens per sample.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Seed of the first sample.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sampling temperature (0 = greedy: every sample alike).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Top-k filter (0 = off).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Top-p filter (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Presence keywords: a file (one per line or comma-separated; `word`, `prefix*`,
    /// `a phrase`) or builtin:CONCEPT. Default: the built-in concept of the same name, if any.
    #[arg(long)]
    pub keywords: Option<String>,
    /// Held-out texts for perplexity.
    #[arg(long, default_value = "builtin:wikipedia")]
    pub heldout: DatasetSpec,
    /// Held-out texts used (the first ones); 0 skips perplexity.
    #[arg(long, default_value_t = 20)]
    pub heldout_samples: usize,
    /// Tokens per held-out text.
    #[arg(long, default_value_t = 128)]
    pub heldout_tokens: usize,
    /// Also ask the unsteered model "is this text about JUDGE?" and report mean p(yes).
    #[arg(long)]
    pub judge: Option<String>,
    /// Which tokens are steered: all, last, prompt or generated.
    #[arg(long, default_value = "all")]
    pub scope: TokenScope,
    /// Generate on the f32 path instead of the model's quantization.
    #[arg(long)]
    pub dense: bool,
    /// CSV output (λ, samples, presence and toxicity with 95 % intervals, mean toxicity
    /// score, perplexity, judge, example), written atomically.
    #[arg(long, default_value = "sweep.csv")]
    pub csv: PathBuf,
    /// Also write every sample as JSON lines.
    #[arg(long)]
    pub generations: Option<PathBuf>,
}

/// Keywords from `--keywords`, or the built-in concept named `concept`.
fn keywords_for(spec: Option<&str>, concept: &str) -> Result<KeywordSet> {
    match spec {
        Some(s) => match s.strip_prefix("builtin:") {
            Some(name) => Ok(KeywordSet::new(&builtin_concept(name)?.keywords)),
            None => {
                let text = std::fs::read_to_string(s).with_context(|| format!("reading keywords {s}"))?;
                let k = KeywordSet::parse_list(&text);
                anyhow::ensure!(!k.is_empty(), "{s}: no keywords");
                Ok(k)
            }
        },
        None => Ok(builtin_concept(concept)
            .map(|c| KeywordSet::new(&c.keywords))
            .unwrap_or_default()),
    }
}

/// Renders prompts, through the chat template if asked.
fn render_prompts(m: &LoadedModel, prompts: &[String], chat: bool) -> Result<Vec<String>> {
    prompts
        .iter()
        .map(|p| {
            if chat {
                Ok(m.tokenizer.render_chat(&[ChatMessage::user(p)], true)?)
            } else {
                Ok(p.clone())
            }
        })
        .collect()
}

/// `sweep --model M --maps F [--lambdas …] [--prompt P] [--samples N] …`.
pub fn sweep(a: &SweepArgs) -> Result<()> {
    let m = load(&a.model)?;
    let stack = load_steering_stack(&SteeringTarget::language_model(&m), &a.maps, &a.fixed, a.scope)?
        .ok_or_else(|| anyhow::anyhow!("sweep needs --maps"))?;
    let concept = match &a.concept {
        Some(c) => c.clone(),
        None => stack.concepts[0].name.clone(),
    };
    let keywords = keywords_for(a.keywords.as_deref(), &concept)?;
    if keywords.is_empty() {
        eprintln!("note: no keywords for `{concept}` (give --keywords); presence is not reported");
    }
    let heldout = if a.heldout_samples == 0 {
        Vec::new()
    } else {
        read_dataset(&a.heldout, Some(a.heldout_samples))?.samples
    };
    let mut prompts = a.prompts.clone();
    if let Some(spec) = &a.prompt_set {
        prompts.extend(read_dataset(spec, a.prompt_limit)?.samples);
    }
    if prompts.is_empty() {
        prompts.push("Once upon a time".into());
    }
    let cfg = SweepConfig {
        lambdas: a.lambdas.clone(),
        concept,
        prompts: render_prompts(&m, &prompts, a.chat)?,
        samples: a.samples,
        generate: GenerateOptions {
            max_tokens: a.max_tokens,
            sampling: SamplingConfig {
                temperature: a.temperature,
                top_k: a.top_k,
                top_p: a.top_p,
                repetition_penalty: 1.0,
                seed: a.seed,
            },
            path: if a.dense {
                MatPath::Dense
            } else {
                MatPath::Quantized
            },
        },
        keywords,
        heldout,
        heldout_tokens: a.heldout_tokens,
        judge: a.judge.clone(),
    };
    let bar = progress_bar(0, "sweeping");
    let started = std::time::Instant::now();
    let rows = run_sweep(&m, &stack, &cfg, &AtomicBool::new(false), &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(format!("sweeping λ = {}", p.lambda));
    })?;
    bar.finish_and_clear();
    print!("{}", sweep_table(&rows));
    let csv = sweep_csv(&rows).context("formatting the CSV")?;
    atomic_write(&a.csv, &csv).with_context(|| format!("writing {}", a.csv.display()))?;
    if let Some(p) = &a.generations {
        write_generations(p, &rows)?;
    }
    eprintln!(
        "{} λ × {} samples in {:.1} s; CSV → {}",
        rows.len(),
        cfg.prompts.len() * a.samples,
        started.elapsed().as_secs_f64(),
        a.csv.display()
    );
    Ok(())
}

/// Arguments of `eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Model file (.gguf) or Hugging Face folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Maps file(s) to steer with while scoring.
    #[arg(long = "maps")]
    pub maps: Vec<PathBuf>,
    /// Strength of a concept, NAME=VALUE (default 1).
    #[arg(long = "lambda", value_parser = parse_named_lambda)]
    pub lambdas: Vec<(String, f32)>,
    /// Which tokens are steered: all, last, prompt or generated.
    #[arg(long, default_value = "all")]
    pub scope: TokenScope,
    /// Perplexity of these texts (a dataset spec, e.g. builtin:wikipedia or notes.txt).
    #[arg(long, required_unless_present = "mc")]
    pub perplexity: Option<DatasetSpec>,
    /// Tokens per text for perplexity.
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// Multiple-choice file (.jsonl/.json with question, choices, answer; TruthfulQA
    /// mc1_targets; or MMLU-style .csv).
    #[arg(long)]
    pub mc: Option<PathBuf>,
    /// Use at most this many texts / questions.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// `eval --model M [--maps F --lambda …] --perplexity D | --mc F`.
pub fn eval(a: &EvalArgs) -> Result<()> {
    let m = load(&a.model)?;
    let c = m.config();
    let mut steering =
        match load_steering_stack(&SteeringTarget::language_model(&m), &a.maps, &a.lambdas, a.scope)? {
            Some(stack) => Some(SteeringHooks::new(&stack, c.n_layers, c.hidden_size)?),
            None => None,
        };
    let hooks: &mut dyn Hooks = match steering.as_mut() {
        Some(h) => h,
        None => &mut NoHooks,
    };
    let cancel = AtomicBool::new(false);
    if let Some(spec) = &a.perplexity {
        let texts = read_dataset(spec, a.limit)?.samples;
        let bar = progress_bar(texts.len() as u64, "scoring texts");
        let p = texts_perplexity(&m, &texts, a.tokens, hooks, &cancel, &mut |d, _| {
            bar.set_position(d as u64)
        })?;
        bar.finish_and_clear();
        println!(
            "perplexity: {:.4} ({} texts, {} tokens, {:.4} nats/token)",
            p.perplexity, p.texts, p.tokens, p.nll
        );
    }
    if let Some(path) = &a.mc {
        let mut items = read_mc(path)?;
        if let Some(n) = a.limit {
            items.truncate(n);
        }
        let n_choices: usize = items.iter().map(|i| i.choices.len()).sum();
        let bar = progress_bar(n_choices as u64, "scoring choices");
        let r = score_mc(&m, &items, hooks, &cancel, &mut |d, _| bar.set_position(d as u64))?;
        bar.finish_and_clear();
        println!(
            "multiple choice: accuracy {:.4}, accuracy (per byte) {:.4} on {} questions",
            r.accuracy, r.accuracy_norm, r.questions
        );
    }
    Ok(())
}

/// `concepts`: the built-in concepts and sets.
pub fn concepts() -> Result<()> {
    let m = manifest();
    println!("concepts (fit --concept NAME):");
    for c in &m.concepts {
        println!("  {:<12} {} → {}: {}", c.name, c.source, c.target, c.description);
    }
    println!("\ndatasets (builtin:NAME wherever a dataset is asked for):");
    for s in &m.sets {
        let n = crate::pipeline::concepts::builtin_dataset(&s.name).map_or(0, |d| d.samples.len());
        println!("  {:<20} {:>4} samples  {}", s.name, n, s.description);
        println!("  {:<20}               licence: {}", "", s.licence);
    }
    Ok(())
}

/// Arguments of `make-concept`.
#[derive(Debug, clap::Args)]
pub struct MakeConceptArgs {
    /// Model file (.gguf) or Hugging Face folder (an instruction model).
    #[arg(long)]
    pub model: PathBuf,
    /// What the sentences should be about, e.g. "rainy autumn days".
    #[arg(long)]
    pub description: String,
    /// Distinct sentences wanted.
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    /// Seed of the first draw.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Output text file (one sentence per line), written atomically.
    #[arg(long)]
    pub out: PathBuf,
}

/// `make-concept --model M --description D --out F`.
pub fn make_concept(a: &MakeConceptArgs) -> Result<()> {
    let m = load(&a.model)?;
    let opts = DescribeOptions {
        samples: a.samples,
        seed: a.seed,
        temperature: a.temperature,
        ..Default::default()
    };
    let bar = progress_bar(a.samples as u64, "writing sentences");
    let started = std::time::Instant::now();
    let lines = concept_from_description(&m, &a.description, &opts, &AtomicBool::new(false), &mut |d, _| {
        bar.set_position(d as u64)
    })?;
    bar.finish_and_clear();
    save_lines(&a.out, &lines)?;
    eprintln!(
        "{} distinct sentences about `{}` in {:.1} s → {}{}",
        lines.len(),
        a.description,
        started.elapsed().as_secs_f64(),
        a.out.display(),
        if lines.len() < a.samples {
            " (fewer than asked: the model repeated itself)"
        } else {
            ""
        }
    );
    Ok(())
}
