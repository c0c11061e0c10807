//! Data, fitting, generation and evaluation on top of the runtime and the transport core.

pub mod arrays;
pub mod collect;
pub mod fit_arrays;
pub mod fit_model;
pub mod pooling;
