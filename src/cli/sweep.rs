//! `sweep`: measure steering over a range of λ, as a table (stdout) and CSV, with a progress
//! bar on stderr.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};

use super::common::{check_output, dataset_path, load, progress_bar, read_dataset};
use crate::pipeline::dataset::DatasetSpec;
use crate::pipeline::presets::{parse_lambda, parse_named_lambda};
use crate::pipeline::steering::{SteeringTarget, load_steering_stack};
use crate::pipeline::sweep::{run_sweep, sweep_csv, sweep_table, write_generations};
use crate::pipeline::sweep_request::{SweepRequest, prepare_sweep};
use crate::runtime::generate::GenerateOptions;
use crate::runtime::linear::MatPath;
use crate::runtime::sampling::SamplingConfig;
use crate::transport::{TokenScope, atomic_write};

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
    #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,0.75,1", allow_hyphen_values = true, value_parser = parse_lambda)]
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
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = crate::pipeline::presets::parse_temperature)]
    pub temperature: f32,
    /// Top-k filter (0 = off).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Top-p filter (1 = off).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true, value_parser = crate::pipeline::presets::parse_top_p)]
    pub top_p: f32,
    /// Presence keywords: a file (one per line or comma-separated; `word`, `prefix*`,
    /// `a phrase`), builtin:CONCEPT, or words:a,b,c inline. Default: the built-in concept of
    /// the same name, if any.
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

/// `sweep --model M --maps F [--lambdas …] [--prompt P] [--samples N] …`.
pub fn sweep(a: &SweepArgs) -> Result<()> {
    let mut inputs: Vec<&Path> = vec![a.model.as_path()];
    inputs.extend(a.maps.iter().map(PathBuf::as_path));
    inputs.extend(a.prompt_set.iter().chain([&a.heldout]).filter_map(dataset_path));
    check_output("--csv", &a.csv, &inputs)?;
    if let Some(g) = &a.generations {
        inputs.push(&a.csv);
        check_output("--generations", g, &inputs)?;
    }
    let m = load(&a.model)?;
    let stack = load_steering_stack(&SteeringTarget::language_model(&m), &a.maps, &a.fixed, a.scope)?
        .ok_or_else(|| anyhow::anyhow!("sweep needs --maps"))?;
    let mut prompts = a.prompts.clone();
    if let Some(spec) = &a.prompt_set {
        prompts.extend(read_dataset(spec, a.prompt_limit)?.samples);
    }
    let req = SweepRequest {
        stack,
        concept: a.concept.clone(),
        lambdas: a.lambdas.clone(),
        prompts,
        chat: a.chat,
        samples: a.samples,
        generate: GenerateOptions {
            max_tokens: a.max_tokens,
            sampling: SamplingConfig {
                temperature: a.temperature,
                top_k: a.top_k,
                top_p: a.top_p,
                repetition_penalty: 1.0,
                frequency_penalty: 0.0,
                presence_penalty: 0.0,
                seed: a.seed,
            },
            path: if a.dense {
                MatPath::Dense
            } else {
                MatPath::Quantized
            },
        },
        keywords: a.keywords.clone(),
        heldout: a.heldout.clone(),
        heldout_samples: a.heldout_samples,
        heldout_tokens: a.heldout_tokens,
        judge: a.judge.clone(),
    };
    let cfg = prepare_sweep(&m, &req)?;
    if cfg.keywords.is_empty() {
        eprintln!(
            "note: no keywords for `{}` (give --keywords); presence is not reported",
            cfg.concept
        );
    }
    let bar = progress_bar(0, "sweeping");
    let started = std::time::Instant::now();
    let rows = run_sweep(&m, &req.stack, &cfg, &AtomicBool::new(false), &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(format!("sweeping λ = {}", p.lambda));
    })?;
    bar.finish_and_clear();
    // Files first: a closed or full stdout must not lose a finished sweep.
    let csv = sweep_csv(&rows).context("formatting the CSV")?;
    atomic_write(&a.csv, &csv).with_context(|| format!("writing {}", a.csv.display()))?;
    if let Some(p) = &a.generations {
        write_generations(p, &rows)?;
    }
    out!("{}", sweep_table(&rows));
    eprintln!(
        "{} λ × {} samples in {:.1} s; CSV → {}",
        rows.len(),
        cfg.prompts.len() * a.samples,
        started.elapsed().as_secs_f64(),
        a.csv.display()
    );
    Ok(())
}
