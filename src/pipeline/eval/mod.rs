//! Evaluating steering: concept presence in generations (keywords, or a yes/no judge prompt),
//! toxicity of generations, perplexity of held-out text, and multiple-choice accuracy.

pub mod judge;
pub mod mc;
pub mod perplexity;
pub mod presence;
pub mod toxicity;
