//! The command-line interface: clap subcommands over the same pipeline functions the app uses.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::pipeline::dataset::DatasetSpec;
use crate::pipeline::fit_arrays::fit_array_files;
use crate::pipeline::presets::{DEFAULT_PRESET, parse_named_lambda};
use crate::transport::{FitConfig, MapsFile, Method, Support};

/// AcT Studio: concept steering of language and diffusion models with Activation Transport.
#[derive(Debug, Parser)]
#[command(name = "act-studio", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fit transport maps from your own pooled activations (CSV or safetensors, rows = samples,
    /// columns = neurons) and write a maps file with one hook point named `arrays`.
    FitArrays(FitArraysArgs),
    /// Print a maps file's metadata and per-tensor shapes and summary statistics.
    MapsInfo(MapsInfoArgs),
    /// Describe a model: architecture, sizes, hook points, tokenizer facts.
    Inspect(InspectArgs),
    /// Generate text (stdout carries only the generated text).
    Generate(GenerateArgs),
    /// Teacher-forced perplexity of a text file.
    Perplexity(PerplexityArgs),
    /// List the models found in models/ and in the local Hugging Face cache.
    Models(ModelsArgs),
    /// Fit transport maps on a model from source and target datasets (or a built-in concept)
    /// and write a maps file. Defaults, chosen by measurement on SmolLM2 (README): Linear-AcT,
    /// causal estimation, the all-ln preset (both norms of every layer), mean pooling,
    /// support q0-100.
    Fit(FitArgs),
    /// Measure steering over a range of λ: concept presence, toxicity, held-out perplexity
    /// and an example per λ, as a table (stdout) and CSV.
    Sweep(crate::cli_steer::SweepArgs),
    /// Perplexity of held-out texts and/or multiple-choice accuracy, optionally steered.
    Eval(crate::cli_steer::EvalArgs),
    /// List the built-in concepts and datasets.
    Concepts,
    /// Make a concept dataset from a description: sample sentences from the model, dedupe,
    /// save them (one per line) for editing and fitting.
    MakeConcept(crate::cli_steer::MakeConceptArgs),
    /// Fit transport maps on a Stable Diffusion folder from source and target prompts or a
    /// built-in image concept (style:NAME, negate:NAME, remove:trees; `--list`).
    FitImage(crate::cli_image::FitImageArgs),
    /// Generate an image, optionally steered (`--maps`, `--lambda`), to a PNG carrying its
    /// settings in tEXt chunks.
    Imagine(crate::cli_image::ImagineArgs),
    /// A λ strip (1 × N) or a λ × seed grid of images from the same initial latents.
    Strip(crate::cli_image::StripArgs),
    /// Open the desktop app (also what `act-studio` with no arguments does).
    App(AppArgs),
    /// Export pooled activations of a dataset (one 2-D tensor per hook point, rows in
    /// dataset order) to a safetensors file, for outside analysis.
    Collect(CollectArgs),
}

/// Arguments of `fit`.
#[derive(Debug, clap::Args)]
pub struct FitArgs {
    /// Model file (.gguf) or Hugging Face folder.
    #[arg(long)]
    pub model: PathBuf,
    /// A built-in concept (its source and target sets; see `act-studio concepts`).
    #[arg(long, required_unless_present_all = ["source", "target"])]
    pub concept: Option<String>,
    /// Source texts (moved away from): FILE[#FIELD][,NAME=VALUE…] (.txt one per line, .jsonl,
    /// .csv, .json subsets) or builtin:NAME. Overrides the concept's.
    #[arg(long)]
    pub source: Option<DatasetSpec>,
    /// Target texts (moved to), same forms as --source. Overrides the concept's.
    #[arg(long)]
    pub target: Option<DatasetSpec>,
    /// Use at most this many samples of each set (the first ones).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Estimator: linear-act, mean-act, gaussian, aura, iti-m, det0.
    #[arg(long, default_value = "linear-act")]
    pub method: Method,
    /// Hook points: all-ln (default: strongest fluent steering on SmolLM2), attention
    /// (gentle), post-ln (the paper's), mlp, residual, or comma-separated names; a layer
    /// range may follow a preset: all-ln:0-14.
    #[arg(long, default_value = DEFAULT_PRESET)]
    pub preset: String,
    /// Pooling over each sample's tokens: mean, max or last.
    #[arg(long, default_value = "mean")]
    pub pooling: crate::pipeline::pooling::Pooling,
    /// Transport support (default: the method's; q0-100 for linear-act).
    #[arg(long)]
    pub support: Option<Support>,
    /// Fit every map on unsteered activations instead of causally.
    #[arg(long, conflicts_with = "causal")]
    pub simultaneous: bool,
    /// Causal estimation (the default).
    #[arg(long)]
    pub causal: bool,
    /// Concept name (default: the output file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Output maps file (.safetensors), written atomically.
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `app`.
#[derive(Debug, clap::Args)]
pub struct AppArgs {
    /// Model to load at start (default: the demo model, if present).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A Stable Diffusion folder (diffusers layout) to load at start, for image mode.
    #[arg(long)]
    pub image_model: Option<PathBuf>,
    /// Start from default settings instead of the saved ones.
    #[arg(long)]
    pub fresh: bool,
    /// Demo: fit the default concept on 48 + 48 samples, generate, save a screenshot of the
    /// window to this PNG, and close.
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
}

/// Arguments of `collect`.
#[derive(Debug, clap::Args)]
pub struct CollectArgs {
    /// Model file (.gguf) or Hugging Face folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset: FILE[#FIELD][,NAME=VALUE…] (.txt one per line, .jsonl, .csv, .json subsets)
    /// or builtin:NAME.
    #[arg(long)]
    pub data: DatasetSpec,
    /// Hook points: a preset (post-ln, attention, mlp, all-ln, residual) or comma-separated
    /// names such as layers.3.mlp_norm,layers.4.mlp_norm.
    #[arg(long, default_value = "post-ln")]
    pub hooks: String,
    /// Pooling over each sample's tokens: mean, max or last.
    #[arg(long, default_value = "mean")]
    pub pooling: crate::pipeline::pooling::Pooling,
    /// Samples per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Output safetensors file (written atomically).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `models`.
#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    /// Folder to scan besides the Hugging Face cache.
    #[arg(long, default_value = "models")]
    pub dir: PathBuf,
    /// Hugging Face hub cache folder (default: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub).
    #[arg(long)]
    pub hf_cache: Option<PathBuf>,
}

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Model file (.gguf).
    #[arg(long)]
    pub model: PathBuf,
}

/// Arguments of `generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Model file (.gguf).
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Most new tokens.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Top-k filter (0 = off).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Top-p (nucleus) filter (1 = off).
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// RNG seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Run matrix products in f32 (weights dequantized) instead of the model's quantization.
    #[arg(long)]
    pub dense: bool,
    /// Print prefill and decode speed to stderr.
    #[arg(long)]
    pub stats: bool,
    /// Maps file(s) to steer with (repeatable); each is one concept, named by the file's
    /// concept name (by default its stem at fit time).
    #[arg(long = "maps")]
    pub maps: Vec<PathBuf>,
    /// Strength of a concept, NAME=VALUE (repeatable; default 1 for every loaded concept;
    /// 0 = off, 1 = full transport, > 1 extrapolates).
    #[arg(long = "lambda", value_parser = parse_named_lambda)]
    pub lambdas: Vec<(String, f32)>,
    /// Which tokens are steered: all, last, prompt or generated.
    #[arg(long, default_value = "all")]
    pub scope: crate::transport::TokenScope,
}

/// Arguments of `perplexity`.
#[derive(Debug, clap::Args)]
pub struct PerplexityArgs {
    /// Model file (.gguf).
    #[arg(long)]
    pub model: PathBuf,
    /// UTF-8 text file.
    #[arg(long)]
    pub file: PathBuf,
    /// Tokens per scoring window.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
}

/// Arguments of `fit-arrays`.
#[derive(Debug, clap::Args)]
pub struct FitArraysArgs {
    /// Source samples (the distribution to move away from): .csv (no header) or .safetensors
    /// with one 2-D F32/F64 tensor.
    #[arg(long)]
    pub source: PathBuf,
    /// Target samples (the distribution to move to), same format and number of columns.
    #[arg(long)]
    pub target: PathBuf,
    /// Estimator: linear-act, mean-act, gaussian, aura, iti-m, act-add, det0 (or det0:THRESHOLD
    /// for an Average-Precision threshold other than 0.75).
    #[arg(long, default_value = "linear-act")]
    pub method: Method,
    /// Transport support: q0-100 (strict source min < a < max), q0.5-99.5, q1-99, q2-98,
    /// q5-95, q10-90, q20-80, q30-70, q40-60, or unbounded. Default: q0-100 for
    /// linear-act/mean-act/gaussian, unbounded for the others.
    #[arg(long)]
    pub support: Option<Support>,
    /// Concept name stored in the file (default: the output file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Output maps file (.safetensors); written atomically.
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `maps-info`.
#[derive(Debug, clap::Args)]
pub struct MapsInfoArgs {
    /// The maps file.
    pub file: PathBuf,
    /// Print the metadata as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Runs the CLI; errors go to stderr with their context chain.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::FitArrays(a)) => fit_arrays(&a),
        Some(Command::MapsInfo(a)) => maps_info(&a),
        Some(Command::Inspect(a)) => crate::cli_model::inspect(&a),
        Some(Command::Generate(a)) => crate::cli_model::generate(&a),
        Some(Command::Perplexity(a)) => crate::cli_model::perplexity(&a),
        Some(Command::Models(a)) => crate::cli_model::models(&a),
        Some(Command::Collect(a)) => crate::cli_model::collect(&a),
        Some(Command::Fit(a)) => crate::cli_model::fit(&a),
        Some(Command::Sweep(a)) => crate::cli_steer::sweep(&a),
        Some(Command::Eval(a)) => crate::cli_steer::eval(&a),
        Some(Command::FitImage(a)) => crate::cli_image::fit_image(&a),
        Some(Command::Imagine(a)) => crate::cli_image::imagine(&a),
        Some(Command::Strip(a)) => crate::cli_image::strip_cmd(&a),
        Some(Command::Concepts) => crate::cli_steer::concepts(),
        Some(Command::MakeConcept(a)) => crate::cli_steer::make_concept(&a),
        Some(Command::App(a)) => crate::app::run(crate::app::AppOptions {
            model: a.model,
            image_model: a.image_model,
            no_autoload: false,
            fresh: a.fresh || a.screenshot.is_some(),
            screenshot: a.screenshot,
        }),
        None => crate::app::run(crate::app::AppOptions::default()),
    }
}

pub(crate) fn stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "concept".to_string(), |s| s.to_string_lossy().into_owned())
}

fn fit_arrays(a: &FitArraysArgs) -> Result<()> {
    let config = FitConfig {
        method: a.method,
        support: a.support.unwrap_or_else(|| a.method.default_support()),
    };
    let concept = a.name.clone().unwrap_or_else(|| stem(&a.out));
    let started = std::time::Instant::now();
    let maps = fit_array_files(&a.source, &a.target, &config, &concept)
        .with_context(|| format!("fitting {} maps", config.method.label()))?;
    maps.save(&a.out)
        .with_context(|| format!("saving maps to {}", a.out.display()))?;
    let m = maps.meta();
    eprintln!(
        "fitted {} ({} support) on {} source × {} target samples, {} neurons in {:.1} ms → {} (concept `{}`)",
        m.method.label(),
        m.support,
        m.source.count,
        m.target.count,
        m.hook_points.first().map_or(0, |h| h.dim),
        started.elapsed().as_secs_f64() * 1e3,
        a.out.display(),
        m.concept
    );
    Ok(())
}

/// min, mean, max of finite values, and how many are ±inf.
fn summary(v: &[f32]) -> (f32, f64, f32, usize) {
    let finite: Vec<f32> = v.iter().copied().filter(|x| x.is_finite()).collect();
    let min = finite.iter().copied().fold(f32::INFINITY, f32::min);
    let max = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mean = finite.iter().map(|&x| f64::from(x)).sum::<f64>() / finite.len().max(1) as f64;
    (min, mean, max, v.len() - finite.len())
}

fn maps_info(a: &MapsInfoArgs) -> Result<()> {
    let maps = MapsFile::load(&a.file).with_context(|| format!("reading maps file {}", a.file.display()))?;
    let m = maps.meta();
    if a.json {
        println!("{}", serde_json::to_string_pretty(m)?);
        return Ok(());
    }
    println!("file:         {}", a.file.display());
    println!("concept:      {}", m.concept);
    println!("method:       {} ({})", m.method.label(), m.method.name());
    if let Method::Det0 { ap_threshold } = m.method {
        println!("AP threshold: {ap_threshold}");
    }
    println!("support:      {}", m.support);
    println!("pooling:      {}", m.pooling);
    println!("estimation:   {}", m.estimation);
    println!("model:        {}", m.fingerprint);
    println!(
        "source:       {} ({} samples, sha256 {})",
        m.source.name,
        m.source.count,
        short(&m.source.sha256)
    );
    println!(
        "target:       {} ({} samples, sha256 {})",
        m.target.name,
        m.target.count,
        short(&m.target.sha256)
    );
    println!(
        "created:      {} s since epoch, by act-studio {}",
        m.created_unix_s, m.app_version
    );
    println!(
        "format:       version {}, data sha256 {}",
        m.format_version,
        short(&m.data_sha256)
    );
    println!("hook points:  {}", m.hook_points.len());
    println!();
    println!(
        "{:<40} {:>7} {:>12} {:>12} {:>12} {:>6}",
        "tensor", "shape", "min", "mean", "max", "±inf"
    );
    for (name, map) in maps.hooks() {
        let mut rows: Vec<(&str, &[f32])> = vec![
            ("omega", map.omega()),
            ("beta", map.beta()),
            ("lo", map.lo()),
            ("hi", map.hi()),
        ];
        rows.extend(map.diagnostics().iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        for (suffix, v) in rows {
            let (min, mean, max, inf) = summary(v);
            println!(
                "{:<40} {:>7} {:>12.5} {:>12.5} {:>12.5} {:>6}",
                format!("{name}.{suffix}"),
                format!("[{}]", v.len()),
                min,
                mean,
                max,
                inf
            );
        }
    }
    Ok(())
}

fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}
