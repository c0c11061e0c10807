//! The command-line interface: clap subcommands over the same pipeline functions the app uses.
//!
//! This module parses and dispatches; each command lives in its own file with its arguments,
//! the helpers several commands share in `common.rs` and `image_args.rs`. The `app` command
//! (and no command) opens the desktop app, which `main.rs` does: the CLI does not know the app.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// `println!` that returns from the enclosing function (`?`) when stdout fails: a closed pipe
/// ends the command normally ([`common::StdoutClosed`]), other failures are errors.
macro_rules! outln {
    () => {
        crate::cli::common::write_out(format_args!("\n"))?
    };
    ($($arg:tt)*) => {
        crate::cli::common::write_out(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// `print!` with [`outln!`]'s error handling.
macro_rules! out {
    ($($arg:tt)*) => {
        crate::cli::common::write_out(format_args!($($arg)*))?
    };
}

mod common;

pub mod collect;
pub mod concepts;
pub mod eval;
pub mod fit;
pub mod fit_arrays;
pub mod fit_image;
pub mod generate;
pub mod image_args;
pub mod imagine;
pub mod inspect;
pub mod maps_info;
pub mod models;
pub mod perplexity;
pub mod quantize;
pub mod serve;
pub mod strip;
pub mod sweep;

use collect::CollectArgs;
use concepts::MakeConceptArgs;
use eval::EvalArgs;
use fit::FitArgs;
use fit_arrays::FitArraysArgs;
use fit_image::FitImageArgs;
use generate::GenerateArgs;
use imagine::ImagineArgs;
use inspect::InspectArgs;
use maps_info::MapsInfoArgs;
use models::ModelsArgs;
use perplexity::PerplexityArgs;
use quantize::QuantizeArgs;
use serve::ServeArgs;
use strip::StripArgs;
use sweep::SweepArgs;

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
    /// Rewrite a GGUF model into one of llama.cpp's quantization types (q4_k_m, q8_0, …),
    /// choosing each tensor's type as llama.cpp does.
    Quantize(QuantizeArgs),
    /// List the models found in models/ and in the local Hugging Face cache.
    Models(ModelsArgs),
    /// Fit transport maps on a model from source and target datasets (or a built-in concept)
    /// and write a maps file. Defaults, chosen by measurement (README): Linear-AcT, causal
    /// estimation, the `default` preset (all-ln on Llama-family models, post-ln on Gemma),
    /// mean pooling, support q0-100.
    Fit(FitArgs),
    /// Measure steering over a range of λ: concept presence, toxicity, held-out perplexity
    /// and an example per λ, as a table (stdout) and CSV.
    Sweep(SweepArgs),
    /// Perplexity of held-out texts and/or multiple-choice accuracy, optionally steered.
    Eval(EvalArgs),
    /// List the built-in concepts and datasets.
    Concepts,
    /// Make a concept dataset from a description: sample sentences from the model, dedupe,
    /// save them (one per line) for editing and fitting.
    MakeConcept(MakeConceptArgs),
    /// Fit transport maps on a Stable Diffusion folder from source and target prompts or a
    /// built-in image concept (style:NAME, negate:NAME, remove:trees; `--list`).
    FitImage(FitImageArgs),
    /// Generate an image, optionally steered (`--maps`, `--lambda`), to a PNG carrying its
    /// settings in tEXt chunks.
    Imagine(ImagineArgs),
    /// A λ strip (1 × N) or a λ × seed grid of images from the same initial latents.
    Strip(StripArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (chat and text completions,
    /// streaming or not), with per-request concept strengths (`"steering": {"NAME": λ}`) and
    /// continuous batching of concurrent requests.
    Serve(ServeArgs),
    /// Open the desktop app (also what `act-studio` with no arguments does).
    App(AppArgs),
    /// Export pooled activations of a dataset (one 2-D tensor per hook point, rows in
    /// dataset order) to a safetensors file, for outside analysis.
    Collect(CollectArgs),
}

// The CLI only parses these: `main.rs` turns them into the app's options.
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

/// The exit code of a finished command; errors go to stderr with their context chain.
pub fn exit_code(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<common::StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::pipeline::error_text::describe(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Runs one parsed command-line command. `app` is not one: the binary opens the app itself
/// (the CLI does not depend on it), so `Command::App` is an error here.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::FitArrays(a) => fit_arrays::fit_arrays(&a),
        Command::MapsInfo(a) => maps_info::maps_info(&a),
        Command::Inspect(a) => inspect::inspect(&a),
        Command::Generate(a) => generate::generate(&a),
        Command::Perplexity(a) => perplexity::perplexity(&a),
        Command::Quantize(a) => quantize::quantize(&a),
        Command::Models(a) => models::models(&a),
        Command::Collect(a) => collect::collect(&a),
        Command::Fit(a) => fit::fit(&a),
        Command::Sweep(a) => sweep::sweep(&a),
        Command::Eval(a) => eval::eval(&a),
        Command::FitImage(a) => fit_image::fit_image(&a),
        Command::Imagine(a) => imagine::imagine(&a),
        Command::Strip(a) => strip::strip_cmd(&a),
        Command::Serve(a) => serve::serve(&a),
        Command::Concepts => concepts::concepts(),
        Command::MakeConcept(a) => concepts::make_concept(&a),
        Command::App(_) => anyhow::bail!("`app` opens the desktop app, which the act-studio binary does"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
