//! Data, fitting, generation and evaluation on top of the runtime and the transport core.

pub mod arrays;
pub mod fit_arrays;
