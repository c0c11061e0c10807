//! AcT Studio: interactive concept steering of language and diffusion models with
//! Activation Transport (Rodriguez et al., "Controlling Language and Diffusion Models by
//! Transporting Activations", ICLR 2025).
//!
//! Layers point one way: [`transport`] (pure math and the maps file) ← runtime (hookable
//! forward passes) ← [`pipeline`] (data, fitting, generation, evaluation) ← app and [`cli`].

pub mod app;
pub mod cli;
pub mod diffusion;
pub mod pipeline;
pub mod runtime;
pub mod serve;
pub mod transport;
pub mod worker;
