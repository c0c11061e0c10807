//! Helpers several commands share: loading a model, reading a dataset, progress bars on
//! stderr, and the default concept name of an output file.

use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::pipeline::concepts::load_dataset;
use crate::pipeline::dataset::{Dataset, DatasetSpec};
use crate::runtime::LoadedModel;

pub(super) fn load(path: &Path) -> Result<LoadedModel> {
    LoadedModel::load(path).with_context(|| format!("loading model {}", path.display()))
}

/// Reads a dataset spec with context; `limit` keeps the first samples.
pub(super) fn read_dataset(spec: &DatasetSpec, limit: Option<usize>) -> Result<Dataset> {
    let mut d = load_dataset(spec).with_context(|| format!("reading dataset {spec}"))?;
    if let Some(n) = limit {
        d.samples.truncate(n);
    }
    Ok(d)
}

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub(super) fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:>22} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

pub(super) fn stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "concept".to_string(), |s| s.to_string_lossy().into_owned())
}
