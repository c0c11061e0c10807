//! `eval`: perplexity of held-out texts and/or multiple-choice accuracy, optionally steered.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Result;

use super::common::{load, progress_bar, read_dataset};
use crate::pipeline::dataset::DatasetSpec;
use crate::pipeline::eval::mc::{read_mc, score_mc};
use crate::pipeline::eval::perplexity::texts_perplexity;
use crate::pipeline::presets::parse_named_lambda;
use crate::pipeline::steering::{SteeringTarget, load_steering_stack};
use crate::runtime::steer::SteeringHooks;
use crate::runtime::{Hooks, NoHooks};
use crate::transport::TokenScope;

/// Arguments of `eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Model file (.gguf) or Hugging Face folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Maps file(s) to steer with while scoring.
    #[arg(long = "maps")]
    pub maps: Vec<PathBuf>,
    /// Strength of a concept, NAME=VALUE (default 1).
    #[arg(long = "lambda", value_parser = parse_named_lambda)]
    pub lambdas: Vec<(String, f32)>,
    /// Which tokens are steered: all, last, prompt or generated.
    #[arg(long, default_value = "all")]
    pub scope: TokenScope,
    /// Perplexity of these texts (a dataset spec, e.g. builtin:wikipedia or notes.txt).
    #[arg(long, required_unless_present = "mc")]
    pub perplexity: Option<DatasetSpec>,
    /// Tokens per text for perplexity.
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// Multiple-choice file (.jsonl/.json with question, choices, answer; TruthfulQA
    /// mc1_targets; or MMLU-style .csv).
    #[arg(long)]
    pub mc: Option<PathBuf>,
    /// Use at most this many texts / questions.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// `eval --model M [--maps F --lambda …] --perplexity D | --mc F`.
pub fn eval(a: &EvalArgs) -> Result<()> {
    let m = load(&a.model)?;
    let c = m.config();
    let mut steering =
        match load_steering_stack(&SteeringTarget::language_model(&m), &a.maps, &a.lambdas, a.scope)? {
            Some(stack) => Some(SteeringHooks::new(&stack, c.n_layers, c.hidden_size)?),
            None => None,
        };
    let hooks: &mut dyn Hooks = match steering.as_mut() {
        Some(h) => h,
        None => &mut NoHooks,
    };
    let cancel = AtomicBool::new(false);
    if let Some(spec) = &a.perplexity {
        let texts = read_dataset(spec, a.limit)?.samples;
        let bar = progress_bar(texts.len() as u64, "scoring texts");
        let p = texts_perplexity(&m, &texts, a.tokens, hooks, &cancel, &mut |d, _| {
            bar.set_position(d as u64)
        })?;
        bar.finish_and_clear();
        outln!(
            "perplexity: {:.4} ({} texts, {} tokens, {:.4} nats/token)",
            p.perplexity,
            p.texts,
            p.tokens,
            p.nll
        );
    }
    if let Some(path) = &a.mc {
        let mut items = read_mc(path)?;
        if let Some(n) = a.limit {
            items.truncate(n);
        }
        let n_choices: usize = items.iter().map(|i| i.choices.len()).sum();
        let bar = progress_bar(n_choices as u64, "scoring choices");
        let r = score_mc(&m, &items, hooks, &cancel, &mut |d, _| bar.set_position(d as u64))?;
        bar.finish_and_clear();
        outln!(
            "multiple choice: accuracy {:.4}, accuracy (per byte) {:.4} on {} questions",
            r.accuracy,
            r.accuracy_norm,
            r.questions
        );
    }
    Ok(())
}
