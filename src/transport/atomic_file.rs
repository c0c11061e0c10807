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
///
/// A symbolic link at `path` is written through (its target gets the new content; the link
/// stays), an existing file keeps its permissions, and temporary files that an earlier save
/// of the same file left behind when it was killed are removed first.
pub fn atomic_write_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let resolved;
    let path = if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        resolved = link_target(path)?;
        resolved.as_path()
    } else {
        path
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"))?;
    remove_stale_temps(&dir, name);
    let mut tmp = TempFile {
        path: dir.join(temp_name(name, std::process::id())),
        renamed: false,
    };
    let mut w = BufWriter::new(File::create(&tmp.path)?);
    write(&mut w)?;
    let f = w.into_inner().map_err(std::io::IntoInnerError::into_error)?;
    if let Ok(old) = std::fs::metadata(path) {
        f.set_permissions(old.permissions())?;
    }
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp.path, path)?;
    tmp.renamed = true;
    // The rename itself is durable once the folder is synced (best effort: not every
    // platform can open a folder).
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The file a symbolic link finally points to (through chains of links), which may not exist
/// yet: a dangling link gets its target created.
fn link_target(path: &Path) -> std::io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        if !std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Ok(p);
        }
        let t = std::fs::read_link(&p)?;
        p = match p.parent() {
            Some(dir) if t.is_relative() => dir.join(t),
            _ => t,
        };
    }
    Err(std::io::Error::other(format!(
        "{}: too many levels of symbolic links",
        path.display()
    )))
}

/// `.{name}.{pid}.tmp`: the temporary file of a save of `name` by process `pid`.
fn temp_name(name: &std::ffi::OsStr, pid: u32) -> std::ffi::OsString {
    let mut t = std::ffi::OsString::from(".");
    t.push(name);
    t.push(format!(".{pid}.tmp"));
    t
}

/// Removes the temporary files of earlier saves of `name` in `dir` whose process is gone (on
/// Linux, no `/proc/PID`; elsewhere, older than an hour): a save killed between writing and
/// renaming leaves one behind. Best effort: nothing here can fail a save.
fn remove_stale_temps(dir: &Path, name: &std::ffi::OsStr) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    for e in entries.flatten() {
        let file = e.file_name();
        let file = file.to_string_lossy();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let gone = if cfg!(target_os = "linux") {
            !Path::new("/proc").join(pid.to_string()).exists()
        } else {
            e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600)
        };
        if gone {
            let _ = std::fs::remove_file(e.path());
        }
    }
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

    #[cfg(unix)]
    #[test]
    fn links_are_written_through_modes_kept_and_stale_temps_removed() -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let target = dir.path().join("real.safetensors");
        atomic_write(&target, b"old")?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640))?;
        let link = dir.path().join("link.safetensors");
        std::os::unix::fs::symlink("real.safetensors", &link)?;
        atomic_write(&link, b"new")?;
        assert!(
            std::fs::symlink_metadata(&link)?.file_type().is_symlink(),
            "the link was replaced"
        );
        assert_eq!(std::fs::read(&target)?, b"new");
        assert_eq!(std::fs::metadata(&target)?.permissions().mode() & 0o777, 0o640);
        // A killed save's temp file (a pid that cannot be running) goes at the next save; one
        // of another file stays.
        let stale = dir
            .path()
            .join(temp_name("real.safetensors".as_ref(), u32::MAX - 1));
        let other = dir.path().join(temp_name("other.bin".as_ref(), u32::MAX - 1));
        std::fs::write(&stale, b"x")?;
        std::fs::write(&other, b"x")?;
        atomic_write(&target, b"again")?;
        assert!(!stale.exists(), "stale temp file kept");
        assert!(other.exists(), "another file's temp removed");
        Ok(())
    }

    #[test]
    fn missing_folder_is_an_error_not_a_panic() {
        let r = atomic_write(Path::new("/nonexistent-folder-act/x.bin"), b"x");
        assert!(r.is_err());
    }
}
