//! `fit-arrays`: fit transport maps from pooled activations given as arrays.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::common::{check_output, stem};
use crate::pipeline::fit_arrays::fit_array_files;
use crate::transport::{FitConfig, Method, Support};

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
    /// Estimator: linear-act, mean-act, gaussian, joint-gaussian, aura, iti-m, act-add, det0 (or det0:THRESHOLD
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

/// `fit-arrays --source S --target T --out F`.
pub fn fit_arrays(a: &FitArraysArgs) -> Result<()> {
    check_output("--out", &a.out, &[&a.source, &a.target])?;
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
