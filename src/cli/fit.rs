//! `fit`: fit a concept's transport maps on a model and write a maps file.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};

use super::common::{check_output, dataset_path, load, progress_bar, stem};
use crate::pipeline::dataset::DatasetSpec;
use crate::pipeline::presets::DEFAULT_PRESET;
use crate::transport::{Method, Support};

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
    /// Estimator: linear-act, mean-act, gaussian, aura, iti-m, det0 (joint-gaussian is for
    /// image models: `fit-image`).
    #[arg(long, default_value = "linear-act")]
    pub method: Method,
    /// Hook points: default (the measured choice for the model: all-ln on Llama-family
    /// models, post-ln on Gemma), all-ln (every norm), attention (gentle), post-ln (the
    /// paper's), mlp, residual, or comma-separated names; a layer range may follow a preset:
    /// all-ln:0-14.
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

/// `fit --model M (--concept C | --source S --target T) --out F`.
pub fn fit(a: &FitArgs) -> Result<()> {
    use crate::pipeline::fit_concept::{FitRequest, fit_concept};
    use crate::pipeline::fit_model::Estimation;
    let mut inputs = vec![a.model.as_path()];
    inputs.extend(a.source.iter().chain(&a.target).filter_map(dataset_path));
    check_output("--out", &a.out, &inputs)?;
    let builtin = match &a.concept {
        Some(name) => Some(crate::pipeline::concepts::builtin_concept(name)?),
        None => None,
    };
    let pick =
        |given: &Option<DatasetSpec>, from_concept: Option<&String>, side: &str| -> Result<DatasetSpec> {
            match (given, from_concept) {
                (Some(s), _) => Ok(s.clone()),
                (None, Some(name)) => Ok(DatasetSpec::Builtin(name.clone())),
                (None, None) => anyhow::bail!("--{side} or --concept is needed"),
            }
        };
    let req = FitRequest {
        name: a.name.clone().unwrap_or_else(|| stem(&a.out)),
        source: pick(&a.source, builtin.map(|c| &c.source), "source")?,
        target: pick(&a.target, builtin.map(|c| &c.target), "target")?,
        limit: a.limit,
        method: a.method,
        preset: a.preset.clone(),
        pooling: a.pooling,
        support: a.support,
        estimation: if a.simultaneous {
            Estimation::Simultaneous
        } else {
            Estimation::Causal
        },
        keep_samples: false,
    };
    let m = load(&a.model)?;
    let started = std::time::Instant::now();
    let bar = progress_bar(0, "fitting hook points");
    let fitted = fit_concept(&m, &req, &AtomicBool::new(false), &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
    })?;
    bar.finish_and_clear();
    fitted
        .maps
        .save(&a.out)
        .with_context(|| format!("saving maps to {}", a.out.display()))?;
    let meta = fitted.maps.meta();
    eprintln!(
        "fitted {} ({}, {} support, {} pooling) at {} hook points on {} + {} samples in {:.1} s → {} (concept `{}`)",
        meta.method.label(),
        meta.estimation,
        meta.support,
        meta.pooling,
        fitted.hook_points,
        fitted.counts.0,
        fitted.counts.1,
        started.elapsed().as_secs_f64(),
        a.out.display(),
        req.name
    );
    Ok(())
}
