//! How a job ends when it does not succeed: cancelled by the user, or failed with a message
//! the user reads (the whole cause chain on one line). Cancellation is recognised from the
//! typed errors of the layers below (`RuntimeError::Cancelled`, `DiffusionError::Cancelled`,
//! and the fit and sweep errors wrapping them), never from the wording of a message.

use std::error::Error;
use std::fmt;

use crate::diffusion::error::DiffusionError;
use crate::pipeline::fit_error::FitError;
use crate::pipeline::generate_text::TextError;
use crate::pipeline::sweep::SweepError;
use crate::runtime::RuntimeError;

/// Why a job did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// The user stopped it.
    Cancelled,
    /// It failed; the message says what and why.
    Failed(String),
}

impl JobError {
    /// A failure with this message.
    pub fn failed(msg: impl Into<String>) -> Self {
        JobError::Failed(msg.into())
    }

    /// The same error with `what` in front of a failure's message (cancellation unchanged).
    pub fn context(self, what: impl fmt::Display) -> Self {
        match self {
            JobError::Failed(m) => JobError::Failed(format!("{what}: {m}")),
            c => c,
        }
    }

    /// Whether the user stopped the job.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, JobError::Cancelled)
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Cancelled => f.write_str("cancelled"),
            JobError::Failed(m) => f.write_str(m),
        }
    }
}

/// Whether `e` itself is one of the "the user cancelled" variants.
fn is_cancel(e: &(dyn Error + 'static)) -> bool {
    matches!(e.downcast_ref::<RuntimeError>(), Some(RuntimeError::Cancelled))
        || matches!(
            e.downcast_ref::<DiffusionError>(),
            Some(DiffusionError::Cancelled)
        )
        || matches!(
            e.downcast_ref::<FitError>(),
            Some(FitError::Runtime(RuntimeError::Cancelled))
        )
        || matches!(
            e.downcast_ref::<TextError>(),
            Some(TextError::Runtime(RuntimeError::Cancelled))
        )
        || matches!(
            e.downcast_ref::<SweepError>(),
            Some(SweepError::Runtime(RuntimeError::Cancelled))
        )
}

/// Errors as the user reads them: the whole cause chain on one line, each cause once.
pub fn describe(e: &dyn Error) -> String {
    crate::pipeline::error_text::describe(e)
}

// `JobError` is not an `Error` itself, so every error type of the layers below converts.
impl<E: Error + 'static> From<E> for JobError {
    fn from(e: E) -> Self {
        let mut cur: Option<&(dyn Error + 'static)> = Some(&e);
        while let Some(c) = cur {
            if is_cancel(c) {
                return JobError::Cancelled;
            }
            cur = c.source();
        }
        JobError::Failed(describe(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellation_is_typed_at_every_layer_and_failures_keep_their_causes() {
        assert_eq!(JobError::from(RuntimeError::Cancelled), JobError::Cancelled);
        assert_eq!(JobError::from(DiffusionError::Cancelled), JobError::Cancelled);
        assert_eq!(
            JobError::from(FitError::Runtime(RuntimeError::Cancelled)),
            JobError::Cancelled
        );
        assert_eq!(
            JobError::from(TextError::Runtime(RuntimeError::Cancelled)),
            JobError::Cancelled
        );
        assert_eq!(
            JobError::from(SweepError::Runtime(RuntimeError::Cancelled)),
            JobError::Cancelled
        );
        // A message that merely mentions the word is a failure, not a cancellation.
        let e = JobError::from(FitError::Input("dataset `cancelled.txt` is empty".into()));
        assert_eq!(e, JobError::failed("dataset `cancelled.txt` is empty"));
        assert!(!e.is_cancelled());
        let io = DiffusionError::Io {
            path: "/x/unet.safetensors".into(),
            source: std::io::Error::other("disk on fire"),
        };
        let e = JobError::from(io).context("loading");
        assert!(
            matches!(&e, JobError::Failed(m) if m.starts_with("loading: ") && m.contains("disk on fire")),
            "{e}"
        );
        assert_eq!(JobError::Cancelled.context("loading"), JobError::Cancelled);
        assert_eq!(JobError::Cancelled.to_string(), "cancelled");
    }
}
