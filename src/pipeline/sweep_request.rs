//! A λ sweep as the user asks for it, the one way every edge does it: `act-studio sweep`
//! and the app's sweep panel (through the worker) build a [`SweepRequest`] (prompts as
//! written, keywords and held-out texts by name) and call [`sweep`]; [`prepare_sweep`] turns
//! it into the [`SweepConfig`] that [`run_sweep`] measures (docs/ARCHITECTURE.md, "Sweeps").

use std::sync::atomic::AtomicBool;

use crate::runtime::LoadedModel;
use crate::runtime::generate::GenerateOptions;
use crate::runtime::tokenizer::ChatMessage;
use crate::transport::SteeringStack;

use super::concepts::{builtin_concept, load_dataset};
use super::dataset::DatasetSpec;
use super::eval::presence::KeywordSet;
use super::sweep::{SweepConfig, SweepError, SweepProgress, SweepRow, run_sweep};

/// The prompt used when a request gives none.
pub const DEFAULT_SWEEP_PROMPT: &str = "Once upon a time";

/// One λ sweep as asked for.
#[derive(Debug, Clone)]
pub struct SweepRequest {
    /// The steering stack (the swept concept must be in it; the others keep their λ).
    pub stack: SteeringStack,
    /// The concept whose λ varies (`None`: the stack's first).
    pub concept: Option<String>,
    /// Strengths to try, in order.
    pub lambdas: Vec<f32>,
    /// Prompts as the user wrote them (none: [`DEFAULT_SWEEP_PROMPT`]).
    pub prompts: Vec<String>,
    /// Wrap each prompt as a user message in the chat template.
    pub chat: bool,
    /// Samples per prompt and λ (sample `i` uses seed + i).
    pub samples: usize,
    /// Generation settings.
    pub generate: GenerateOptions,
    /// Presence keywords: a file (one per line or comma-separated), `builtin:CONCEPT` or
    /// `words:a, b, c`;
    /// `None`: the built-in concept named like the swept one, if any.
    pub keywords: Option<String>,
    /// Held-out texts for perplexity.
    pub heldout: DatasetSpec,
    /// Held-out texts used (the first ones); 0 skips perplexity.
    pub heldout_samples: usize,
    /// Tokens per held-out text.
    pub heldout_tokens: usize,
    /// Also ask the unsteered model whether each sample is about this.
    pub judge: Option<String>,
}

/// Presence keywords from `spec` (a file, `builtin:CONCEPT`, or `words:a, b, c` written
/// inline), or those of the built-in concept named `concept` (none if there is no such
/// concept).
pub fn keywords_for(spec: Option<&str>, concept: &str) -> Result<KeywordSet, SweepError> {
    let input = |e: &dyn std::fmt::Display| SweepError::Input(e.to_string());
    if let Some(list) = spec.map(str::trim).and_then(|s| s.strip_prefix("words:")) {
        let k = KeywordSet::parse_list(list);
        if k.is_empty() {
            return Err(SweepError::Input("`words:` lists no keywords".into()));
        }
        return Ok(k);
    }
    match spec.map(str::trim) {
        Some(s) => match s.strip_prefix("builtin:") {
            Some(name) => Ok(KeywordSet::new(
                &builtin_concept(name).map_err(|e| input(&e))?.keywords,
            )),
            None => {
                let text = crate::transport::regular_file::read_regular_to_string(std::path::Path::new(s))
                    .map_err(|e| SweepError::Input(format!("reading keywords {s}: {e}")))?;
                let k = KeywordSet::parse_list(&text);
                if k.is_empty() {
                    return Err(SweepError::Input(format!("{s}: no keywords")));
                }
                Ok(k)
            }
        },
        None => Ok(builtin_concept(concept)
            .map(|c| KeywordSet::new(&c.keywords))
            .unwrap_or_default()),
    }
}

/// Resolves the request on `m`: the swept concept, its keywords, the held-out texts, and
/// the prompts rendered through the chat template when asked.
pub fn prepare_sweep(m: &LoadedModel, req: &SweepRequest) -> Result<SweepConfig, SweepError> {
    let concept = match &req.concept {
        Some(c) => c.clone(),
        None => req
            .stack
            .concepts
            .first()
            .map(|c| c.name.clone())
            .ok_or_else(|| SweepError::Input("the steering stack is empty: load maps to sweep".into()))?,
    };
    let keywords = keywords_for(req.keywords.as_deref(), &concept)?;
    let heldout = if req.heldout_samples == 0 {
        Vec::new()
    } else {
        let mut d = load_dataset(&req.heldout)
            .map_err(|e| SweepError::Input(format!("reading held-out texts {}: {e}", req.heldout)))?;
        d.samples.truncate(req.heldout_samples);
        d.samples
    };
    let mut prompts = req.prompts.clone();
    if prompts.is_empty() {
        prompts.push(DEFAULT_SWEEP_PROMPT.into());
    }
    if req.chat {
        for p in &mut prompts {
            *p = m.tokenizer.render_chat(&[ChatMessage::user(p)], true)?;
        }
    }
    Ok(SweepConfig {
        lambdas: req.lambdas.clone(),
        concept,
        prompts,
        samples: req.samples,
        generate: req.generate,
        keywords,
        heldout,
        heldout_tokens: req.heldout_tokens,
        judge: req.judge.clone(),
    })
}

/// Prepares and runs the sweep ([`prepare_sweep`], then [`run_sweep`]).
pub fn sweep(
    m: &LoadedModel,
    req: &SweepRequest,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(SweepProgress),
) -> Result<Vec<SweepRow>, SweepError> {
    let cfg = prepare_sweep(m, req)?;
    run_sweep(m, &req.stack, &cfg, cancel, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_come_from_a_file_a_builtin_or_the_concept_name() {
        let k = keywords_for(None, "football").map_err(|e| e.to_string());
        assert!(matches!(&k, Ok(k) if !k.is_empty()), "{:?}", k.err());
        let k = keywords_for(None, "no-such-concept").map_err(|e| e.to_string());
        assert!(matches!(&k, Ok(k) if k.is_empty()));
        assert!(keywords_for(Some("builtin:no-such-concept"), "x").is_err());
        let dir = std::env::temp_dir().join(format!("act-sweep-kw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let f = dir.join("kw.txt");
        std::fs::write(&f, "goal, striker\n").ok();
        let k = keywords_for(f.to_str(), "x").map_err(|e| e.to_string());
        assert!(matches!(&k, Ok(k) if k.matches("a late goal")), "{:?}", k.err());
        std::fs::write(&f, "\n").ok();
        assert!(keywords_for(f.to_str(), "x").is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn keywords_can_be_written_inline() {
        let k = keywords_for(Some("words: Tax, budget "), "football").map_err(|e| e.to_string());
        assert!(
            matches!(&k, Ok(k) if k.matches("the new tax law") && !k.matches("a late goal")),
            "{:?}",
            k.err()
        );
        assert!(keywords_for(Some("words: , "), "x").is_err());
    }
}
