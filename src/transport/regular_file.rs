//! Reading the files users name, refusing anything that is not a regular file: opening a
//! named pipe blocks until a writer appears (the app would hang), and a device or a folder is
//! never what was meant.

use std::path::Path;

/// An error unless `path` is a regular file (links followed).
pub fn check_regular(path: &Path) -> std::io::Result<()> {
    let m = std::fs::metadata(path)?;
    if m.is_file() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            if m.is_dir() {
                "a folder, not a file"
            } else {
                "not a regular file (a pipe, socket or device)"
            },
        ))
    }
}

/// `std::fs::read` of a regular file.
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    check_regular(path)?;
    std::fs::read(path)
}

/// `std::fs::read_to_string` of a regular file.
pub fn read_regular_to_string(path: &Path) -> std::io::Result<String> {
    check_regular(path)?;
    std::fs::read_to_string(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        std::fs::write(&f, "x").unwrap();
        assert_eq!(read_regular_to_string(&f).unwrap(), "x");
        assert!(read_regular(dir.path()).is_err());
        #[cfg(unix)]
        {
            let fifo = dir.path().join("p");
            if std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .is_ok_and(|s| s.success())
            {
                let e = read_regular(&fifo).unwrap_err();
                assert!(e.to_string().contains("not a regular file"), "{e}");
            }
        }
    }
}
