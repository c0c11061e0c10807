//! `maps-info`: a maps file's metadata and per-tensor summary statistics.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::transport::{MapsFile, Method};

/// Arguments of `maps-info`.
#[derive(Debug, clap::Args)]
pub struct MapsInfoArgs {
    /// The maps file.
    pub file: PathBuf,
    /// Print the metadata as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// min, mean, max of finite values, and how many are ±inf.
fn summary(v: &[f32]) -> (f32, f64, f32, usize) {
    let finite: Vec<f32> = v.iter().copied().filter(|x| x.is_finite()).collect();
    let min = finite.iter().copied().fold(f32::INFINITY, f32::min);
    let max = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mean = finite.iter().map(|&x| f64::from(x)).sum::<f64>() / finite.len().max(1) as f64;
    (min, mean, max, v.len() - finite.len())
}

/// `maps-info FILE [--json]`.
pub fn maps_info(a: &MapsInfoArgs) -> Result<()> {
    let maps = MapsFile::load(&a.file).with_context(|| format!("reading maps file {}", a.file.display()))?;
    let m = maps.meta();
    if a.json {
        outln!("{}", serde_json::to_string_pretty(m)?);
        return Ok(());
    }
    outln!("file:         {}", a.file.display());
    outln!("concept:      {}", m.concept);
    outln!("method:       {} ({})", m.method.label(), m.method.name());
    if let Method::Det0 { ap_threshold } = m.method {
        outln!("AP threshold: {ap_threshold}");
    }
    outln!("support:      {}", m.support);
    outln!("pooling:      {}", m.pooling);
    outln!("estimation:   {}", m.estimation);
    outln!("model:        {}", m.fingerprint);
    outln!(
        "source:       {} ({} samples, sha256 {})",
        m.source.name,
        m.source.count,
        short(&m.source.sha256)
    );
    outln!(
        "target:       {} ({} samples, sha256 {})",
        m.target.name,
        m.target.count,
        short(&m.target.sha256)
    );
    outln!(
        "created:      {} s since epoch, by act-studio {}",
        m.created_unix_s,
        m.app_version
    );
    outln!(
        "format:       version {}, data sha256 {}",
        m.format_version,
        short(&m.data_sha256)
    );
    outln!("hook points:  {}", m.hook_points.len());
    outln!();
    outln!(
        "{:<40} {:>7} {:>12} {:>12} {:>12} {:>6}",
        "tensor",
        "shape",
        "min",
        "mean",
        "max",
        "±inf"
    );
    for (name, map) in maps.hooks() {
        let mut rows: Vec<(&str, &[f32])> = vec![
            ("omega", map.omega()),
            ("beta", map.beta()),
            ("lo", map.lo()),
            ("hi", map.hi()),
        ];
        if let Some(a) = map.matrix() {
            rows.push(("matrix", a));
        }
        rows.extend(map.diagnostics().iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        for (suffix, v) in rows {
            let (min, mean, max, inf) = summary(v);
            let shape = if suffix == "matrix" {
                format!("[{d}×{d}]", d = map.dim())
            } else {
                format!("[{}]", v.len())
            };
            outln!(
                "{:<40} {:>7} {:>12.5} {:>12.5} {:>12.5} {:>6}",
                format!("{name}.{suffix}"),
                shape,
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
