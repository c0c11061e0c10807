//! Atomic file writes: nothing the user made is ever left half-written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: the data go to a temporary file in the same folder,
/// which is flushed to disk and then renamed over `path`. A crash or a full disk leaves
/// either the old file or the new one, never a torn one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    atomic_write_with(path, |w| w.write_all(bytes))
}

/// [`atomic_write`] for content too large to hold twice: `write` writes it to the (buffered)
/// temporary file, which is then flushed to disk and renamed over `path`. An error from
/// `write` (or a panic in it) removes the temporary file and leaves `path` untouched.
pub fn atomic_write_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let mut tmp = TempFile {
        path: dir.join(tmp_name),
        renamed: false,
    };
    let mut w = BufWriter::new(File::create(&tmp.path)?);
    write(&mut w)?;
    let f = w.into_inner().map_err(std::io::IntoInnerError::into_error)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp.path, path)?;
    tmp.renamed = true;
    Ok(())
}

/// A temporary file, removed when dropped (best effort) unless it was renamed into place:
/// whatever ends the writing early (an error, a panic) leaves nothing behind.
struct TempFile {
    path: PathBuf,
    renamed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_file() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("maps.safetensors");
        atomic_write(&p, b"one")?;
        atomic_write(&p, b"two")?;
        assert_eq!(std::fs::read(&p)?, b"two");
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn a_failed_write_leaves_neither_temp_file_nor_target() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("big.gguf");
        let r = atomic_write_with(&p, |w| {
            w.write_all(&[7u8; 100_000])?;
            Err(std::io::Error::other("disk on fire"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
        // An existing file stays as it was.
        atomic_write(&p, b"old")?;
        assert!(atomic_write_with(&p, |_| Err(std::io::Error::other("no"))).is_err());
        assert_eq!(std::fs::read(&p)?, b"old");
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn missing_folder_is_an_error_not_a_panic() {
        let r = atomic_write(Path::new("/nonexistent-folder-act/x.bin"), b"x");
        assert!(r.is_err());
    }
}
