//! Evaluating steering: concept presence in generations (keywords, or a yes/no judge prompt),
//! toxicity of generations, perplexity of held-out text, multiple-choice accuracy, and the
//! interval statistics the sweeps report.

pub mod image_stats;
pub mod judge;
pub mod mc;
pub mod perplexity;
pub mod presence;
pub mod stats;
pub mod toxicity;
