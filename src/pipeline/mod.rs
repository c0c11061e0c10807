//! Data, fitting, generation and evaluation on top of the runtime and the transport core.

pub mod arrays;
pub mod batch_engine;
pub mod causal_pass;
pub mod collect;
pub mod completion;
pub mod concepts;
pub mod dataset;
pub mod describe;
pub mod diffusion_fit;
pub mod error_text;
pub mod eval;
pub mod fit_arrays;
pub mod fit_concept;
pub mod fit_error;
pub mod fit_image_concept;
pub mod fit_model;
pub mod generate_text;
pub mod image_concepts;
pub mod image_sheet;
pub mod pooling;
pub mod presets;
pub mod prompt_cache;
pub mod quantize_model;
pub mod steering;
pub mod sweep;
pub mod sweep_request;
