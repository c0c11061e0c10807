//! `collect`: pooled activations of a dataset to a safetensors file.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};

use super::common::{check_output, dataset_path, load, progress_bar, read_dataset};
use crate::pipeline::dataset::DatasetSpec;

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

/// `collect --model M --data D --hooks H --out F`.
pub fn collect(a: &CollectArgs) -> Result<()> {
    use crate::pipeline::collect::{CollectOptions, collect as run_collect};
    use crate::pipeline::presets::hook_points_for;
    let mut inputs = vec![a.model.as_path()];
    inputs.extend(dataset_path(&a.data));
    check_output("--out", &a.out, &inputs)?;
    let data = read_dataset(&a.data, None)?;
    let texts = data.samples;
    let m = load(&a.model)?;
    let points = hook_points_for(&a.hooks, m.config()).map_err(anyhow::Error::msg)?;
    let opts = CollectOptions {
        points,
        pooling: a.pooling,
        batch_size: a.batch_size,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let bar = progress_bar(texts.len() as u64, "collecting samples");
    let pooled = run_collect(&m, &texts, &opts, &AtomicBool::new(false), &mut |done, _| {
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let bytes: Vec<(String, Vec<u8>, [usize; 2])> = pooled
        .iter()
        .map(|(p, mat)| {
            (
                p.name(),
                mat.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                [mat.rows, mat.cols],
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, b, shape)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), b)
                .map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let meta = std::collections::HashMap::from([
        ("pooling".to_string(), a.pooling.name().to_string()),
        ("model".to_string(), m.fingerprint.to_string()),
        ("data".to_string(), a.data.to_string()),
        ("samples".to_string(), texts.len().to_string()),
    ]);
    let out = safetensors::serialize(views, Some(meta))?;
    crate::transport::atomic_write(&a.out, &out).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote {} hook points × {} samples ({} pooling) to {} in {:.1} s",
        pooled.len(),
        texts.len(),
        a.pooling.name(),
        a.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
