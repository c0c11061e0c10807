//! Helpers several commands share: loading a model, reading a dataset, progress bars on
//! stderr, the default concept name of an output file, and writing to stdout.

use std::path::{Path, PathBuf};

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

/// Stdout was closed by its reader (`act-studio inspect … | head`): the command stops writing
/// and ends successfully, as Unix tools do.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

/// Writes to stdout and flushes: a closed pipe becomes [`StdoutClosed`], any other failure
/// (a full disk behind a redirect) an error with context, never a panic as `println!` gives.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// [`StdoutClosed`] for a broken pipe, else the error with context.
pub(crate) fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

/// Checks an output path before any work starts: it must not be (after resolving links, or as
/// a hard link) any of the command's `inputs` — writing it would replace what the command
/// reads — and its folder must exist and accept a new file, so a long fit or sweep is not
/// lost at the end for want of a writable folder.
pub(super) fn check_output(flag: &str, out: &Path, inputs: &[&Path]) -> Result<()> {
    for input in inputs {
        if same_file(out, input) {
            anyhow::bail!(
                "{flag} {} is the input {}: writing it would replace it; choose another path",
                out.display(),
                input.display()
            );
        }
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "{flag} {}: the folder {} does not exist",
            out.display(),
            dir.display()
        );
    }
    if out.is_dir() {
        anyhow::bail!("{flag} {} is a folder, not a file", out.display());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let probe = dir.join(format!(".act-studio-probe-{}-{nanos}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .with_context(|| {
            format!(
                "{flag} {}: cannot write to the folder {}",
                out.display(),
                dir.display()
            )
        })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The file `p` names, links resolved; for a path that does not exist yet, its folder
/// resolved and its name joined.
fn resolved(p: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(p).ok().or_else(|| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some(std::fs::canonicalize(dir).ok()?.join(p.file_name()?))
    })
}

/// Whether `a` and `b` are the same file: the same resolved path or, on Unix, the same
/// device and inode (hard links).
fn same_file(a: &Path, b: &Path) -> bool {
    if let (Some(x), Some(y)) = (resolved(a), resolved(b))
        && x == y
    {
        return true;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    false
}

/// The file behind a dataset spec, if it is a file (not a built-in set).
pub(super) fn dataset_path(spec: &crate::pipeline::dataset::DatasetSpec) -> Option<&Path> {
    match spec {
        crate::pipeline::dataset::DatasetSpec::File { path, .. } => Some(path),
        crate::pipeline::dataset::DatasetSpec::Builtin(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_that_are_inputs_or_unwritable_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("model.gguf");
        std::fs::write(&input, b"x").unwrap();
        let out = dir.path().join("maps.safetensors");
        assert!(check_output("--out", &out, &[&input]).is_ok());
        assert!(check_output("--out", &input, &[&input]).is_err());
        // The same file by another spelling, a symlink and a hard link.
        let spelled = dir.path().join(".").join("model.gguf");
        assert!(check_output("--out", &spelled, &[&input]).is_err());
        #[cfg(unix)]
        {
            let link = dir.path().join("link.gguf");
            std::os::unix::fs::symlink(&input, &link).unwrap();
            assert!(check_output("--out", &link, &[&input]).is_err());
            let hard = dir.path().join("hard.gguf");
            std::fs::hard_link(&input, &hard).unwrap();
            assert!(check_output("--out", &hard, &[&input]).is_err());
        }
        assert!(check_output("--out", &dir.path().join("no/such/dir/x"), &[]).is_err());
        assert!(check_output("--out", dir.path(), &[]).is_err());
        // No probe file is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".act-studio-probe"))
            .collect();
        assert!(left.is_empty());
    }
}
