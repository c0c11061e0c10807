//! Pure transport mathematics (no model, no UI): estimating per-neuron affine transport maps
//! from pooled source/target activations, applying them with strength λ, composing several
//! concepts, and the maps file format.
//!
//! Notation follows the AcT paper (Rodriguez et al., ICLR 2025): for a neuron with source
//! sample `a` and target sample `b`, a map `T(a) = ω·a + β` acting on a support `(lo, hi)`;
//! at strength λ an activation becomes `(1 − λ)·a + λ·T(a)` inside the support.

pub mod atomic_file;
pub mod error;
pub mod estimate;
pub mod fingerprint;
pub mod hook_map;
pub mod joint;
pub mod maps_file;
pub mod method;
pub mod regular_file;
pub mod samples;
pub mod scope;
pub mod stack;
pub mod stats;
pub mod support;

pub use atomic_file::{atomic_write, atomic_write_with};
pub use error::{MapsError, Side, TransportError};
pub use estimate::{FitConfig, fit_hook};
pub use fingerprint::ModelFingerprint;
pub use hook_map::HookMap;
pub use maps_file::{DatasetInfo, HookInfo, MAPS_FORMAT_VERSION, MapsFile, MapsMeta, POSITIONS_POOLING};
pub use method::{Application, Method};
pub use samples::{SampleMatrix, Samples};
pub use scope::{TokenScope, TokenWindow};
pub use stack::{
    Concept, LAMBDA_LIMIT, SteeringPlan, SteeringStack, check_lambda, split_timestep, timestep_map_name,
};
pub use support::Support;
