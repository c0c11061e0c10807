//! Errors as the user reads them, for every edge (the CLI's stderr, the app's status line).

use std::error::Error;

/// The whole cause chain on one line, each cause once: our error types print their source in
/// their own message (`path: No such file or directory`), so a cause whose text is already
/// there is not repeated.
pub fn describe(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = crate::runtime::RuntimeError::Io {
            path: "/x.gguf".into(),
            source: io,
        };
        let e = anyhow::Error::new(e).context("loading model /x.gguf");
        assert_eq!(
            super::describe(e.as_ref()),
            "loading model /x.gguf: /x.gguf: No such file or directory"
        );
    }
}
