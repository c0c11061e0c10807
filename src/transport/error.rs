//! Errors of the pure transport layer (fitting, application, maps files).

use std::path::PathBuf;

/// Which side of a source → target pair a sample matrix belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The distribution moved away from (e.g. neutral text).
    Source,
    /// The distribution moved to (e.g. text about football).
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// Errors raised while fitting or applying transport maps.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A sample matrix whose buffer does not hold `rows × cols` values.
    #[error("{side} samples: buffer holds {len} values, expected {rows} × {cols}")]
    BadShape {
        side: Side,
        len: usize,
        rows: usize,
        cols: usize,
    },
    /// No samples at all on one side.
    #[error("{side} samples are empty at hook point `{hook}`: need at least one row")]
    Empty { side: Side, hook: String },
    /// Source and target disagree on the number of neurons.
    #[error("hook point `{hook}`: source has {source_dim} neurons but target has {target_dim}")]
    DimMismatch {
        hook: String,
        source_dim: usize,
        target_dim: usize,
    },
    /// A NaN or infinite activation.
    #[error("hook point `{hook}`, neuron {neuron}: {side} sample {row} is {value} (not finite)")]
    NonFinite {
        hook: String,
        side: Side,
        neuron: usize,
        row: usize,
        value: f32,
    },
    /// ActAdd is defined on exactly one prompt pair.
    #[error(
        "ActAdd takes exactly one source and one target sample (one prompt pair), got {source_rows} and {target_rows}"
    )]
    ActAddNeedsOnePair { source_rows: usize, target_rows: usize },
    /// A support string or percentile pair that makes no sense.
    #[error(
        "invalid support `{0}`: use q0-100, q0.5-99.5, q1-99, q2-98, q5-95, q10-90, q20-80, q30-70, q40-60 or unbounded"
    )]
    BadSupport(String),
    /// An unknown method name.
    #[error(
        "unknown method `{0}`: use linear-act, mean-act, gaussian, joint-gaussian, aura, iti-m, act-add or det0"
    )]
    BadMethod(String),
    /// An activation tensor whose length does not match its shape, or whose last (3-D) or
    /// channel (4-D) dimension does not match the map.
    #[error(
        "hook point `{hook}`: activation of shape {shape:?} ({len} values) does not fit a map of {dim} neurons"
    )]
    ActivationShape {
        hook: String,
        shape: Vec<usize>,
        len: usize,
        dim: usize,
    },
    /// A strength that is NaN, infinite or beyond ±[`super::stack::LAMBDA_LIMIT`].
    #[error("λ = {0:?} is not a number within ±{limit} (1 = full transport, beyond 1 extrapolates)", limit = super::stack::LAMBDA_LIMIT)]
    BadLambda(f32),
    /// An enabled concept none of whose maps names a hook point of the model: it would steer
    /// nothing.
    #[error(
        "concept `{concept}` steers nothing here: none of its {maps} hook point(s) (e.g. `{example}`) is one of this model's; were its maps fitted on another model?"
    )]
    NothingMatched {
        concept: String,
        maps: usize,
        example: String,
    },
    /// An enabled concept whose maps were fitted per denoising timestep, used where no
    /// timestep is known (a language model, or a caller that does not step).
    #[error(
        "concept `{concept}` holds maps fitted per denoising timestep (e.g. `{example}`); they steer only a diffusion model's denoising steps"
    )]
    TimestepMaps { concept: String, example: String },
    /// An enabled concept some of whose maps name no hook point of the model.
    #[error(
        "concept `{concept}`: {missing} of its {maps} hook point(s) are not in this model (e.g. `{example}`); its maps file does not fit this model"
    )]
    PartlyMatched {
        concept: String,
        missing: usize,
        maps: usize,
        example: String,
    },
    /// `det0:T` with a threshold outside [0, 1].
    #[error("method `{0}`: det0's AP threshold must lie in [0, 1], e.g. det0:0.8")]
    BadDet0Threshold(String),
    /// The joint Gaussian map acts on whole activation vectors, so it has no per-neuron
    /// support: any support but `unbounded` is refused.
    #[error(
        "method joint-gaussian maps whole activation vectors and has no per-neuron support: use support `unbounded`, not `{0}`"
    )]
    JointNeedsUnbounded(String),
    /// The symmetric eigendecomposition of the joint estimator did not converge.
    #[error(
        "hook point `{hook}`: the joint Gaussian fit did not converge (eigendecomposition of the covariance)"
    )]
    JointDidNotConverge { hook: String },
}

/// Errors raised while reading or writing a maps file.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: file is truncated ({found} bytes, the header announces {expected})")]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: not an AcT Studio maps file (no `act_studio` metadata)")]
    NotAMapsFile { path: PathBuf },
    #[error("{path}: maps metadata is invalid: {reason}")]
    BadMetadata { path: PathBuf, reason: String },
    #[error(
        "{path}: maps file format version {found} is not supported (this build reads versions 1 to {supported})"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: tensor `{tensor}` is missing")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor `{tensor}` has dtype {found}, expected F32")]
    WrongDtype {
        path: PathBuf,
        tensor: String,
        found: String,
    },
    #[error(
        "{path}: tensor data checksum mismatch (stored {stored}, computed {computed}): the file was altered or damaged"
    )]
    ChecksumMismatch {
        path: PathBuf,
        stored: String,
        computed: String,
    },
    #[error("{path}: tensor `{tensor}` holds a non-finite value at index {index}")]
    NonFiniteValue {
        path: PathBuf,
        tensor: String,
        index: usize,
    },
    #[error(
        "maps were fitted on another model: the maps file is for {found}, the loaded model is {expected}"
    )]
    FingerprintMismatch {
        expected: Box<super::ModelFingerprint>,
        found: Box<super::ModelFingerprint>,
    },
    /// Maps that break a rule of the format (a bad or repeated hook point name), found when
    /// assembling them to save or when loading a file.
    #[error("invalid maps: {0}")]
    Invalid(String),
}
