//! One completion request as the batch engine ([`super::batch_engine`]) runs it — the request
//! type behind `act-studio serve` — and the pieces every edge needs to build one: the loaded
//! concepts a request may steer with ([`ConceptSet`]), the request checks, and the stop-string
//! matcher that holds back text which might still become a stop sequence.

use std::path::PathBuf;
use std::sync::Arc;

use crate::runtime::LoadedModel;
pub use crate::runtime::logprobs::MAX_TOP_LOGPROBS;
#[cfg(doc)]
use crate::runtime::logprobs::token_logprobs;
use crate::runtime::sampling::SamplingConfig;
use crate::runtime::steer::compile_plan;
use crate::transport::{MapsFile, SteeringPlan, SteeringStack, TokenScope, TransportError, check_lambda};

use super::steering::{SteeringError, SteeringTarget, load_maps_for};

/// Most samples one request may ask for (`n`).
pub const MAX_SAMPLES: usize = 16;
/// Most stop sequences one request may give (the OpenAI API's limit).
pub const MAX_STOPS: usize = 4;

/// One completion: a tokenized prompt continued `n` times, each sample a row of the engine's
/// running batch.
pub struct CompletionJob {
    /// Prompt token ids (chat template already applied), ≥ 1.
    pub prompt: Vec<u32>,
    /// Samples; sample `i` draws with seed `sampling.seed + i`.
    pub n: usize,
    /// Most new tokens per sample.
    pub max_tokens: usize,
    /// Token selection (temperature 0 = greedy).
    pub sampling: SamplingConfig,
    /// Added to these tokens' logits before each pick (OpenAI's `logit_bias`; empty: none).
    pub logit_bias: Arc<[(u32, f32)]>,
    /// Texts that end a sample where they first appear (not included in its text).
    pub stop: Vec<String>,
    /// Per-request steering ([`ConceptSet::plan`]); `None` runs the plain model.
    pub steering: Option<Arc<SteeringPlan>>,
    /// Report each generated token's log-probability and those of the `k` most likely tokens
    /// at its position (`Some(k)`, k ≤ [`MAX_TOP_LOGPROBS`]); `None`: none.
    pub logprobs: Option<usize>,
    /// Each sample's text starts with the prompt's (the completions API's `echo`): a first
    /// `Text` event per sample carries the prompt's text and, with `logprobs`, every prompt
    /// token's log-probability under the (steered) model given the tokens before it (the
    /// first token's is unknown: NaN, no alternatives). With `echo`, `max_tokens` may be 0:
    /// the prompt is scored and nothing is generated.
    pub echo: bool,
    /// Where the results go, as they come.
    pub sink: Box<dyn CompletionSink>,
}

/// Why a sample ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model's end-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    /// The OpenAI API's name: `stop` or `length`.
    pub fn name(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One token as an answer shows it: its id, its text (invalid UTF-8 of a token that holds part
/// of a character replaced by U+FFFD) and its exact bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenText {
    pub id: u32,
    pub text: String,
    pub bytes: Vec<u8>,
}

impl TokenText {
    /// Token `id` of `m`'s vocabulary.
    pub fn of(m: &LoadedModel, id: u32) -> Self {
        let bytes = m.tokenizer.token_bytes(id);
        Self {
            id,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
        }
    }
}

/// A generated token's log-probability under the model ([`token_logprobs`]), with the most
/// likely tokens at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: TokenText,
    pub logprob: f32,
    /// Most likely first.
    pub top: Vec<(TokenText, f32)>,
}

/// What the engine reports about a job, in order per sample.
#[derive(Debug, Clone, PartialEq)]
pub enum CompletionEvent {
    /// The prompt has run; its first `cached` tokens came from the prompt cache
    /// ([`super::prompt_cache`]). Sent once, before anything else.
    PromptDone { cached: usize },
    /// New text of sample `index`, and the log-probabilities of the tokens generated since the
    /// last `Text` (when the job asked for them). The text is empty only when a token's text
    /// is held back or cut by a stop sequence while its log-probability is reported.
    Text {
        index: usize,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// Sample `index` ended after `tokens` generated tokens.
    Finished {
        index: usize,
        reason: FinishReason,
        tokens: usize,
    },
    /// The job failed as a whole (e.g. the model returned no logits); no more events follow.
    Failed(String),
}

/// Receives a job's events on the engine's thread.
pub trait CompletionSink: Send {
    /// Delivers one event; `false` means nobody listens any more, and the job is dropped.
    fn send(&mut self, event: CompletionEvent) -> bool;
    /// Whether the listener has gone (checked before every decode step).
    fn is_closed(&self) -> bool {
        false
    }
}

/// Bytes of KV cache one position of one row takes: keys and values of every layer, f32.
pub fn kv_bytes_per_position(m: &LoadedModel) -> u64 {
    let c = m.config();
    (c.n_layers as u64)
        .saturating_mul(2)
        .saturating_mul((c.n_kv_heads * c.head_dim) as u64)
        .saturating_mul(4)
}

/// The KV cache one row of `job` can grow to: its prompt and `max_tokens` (within the context).
pub fn row_kv_bytes(m: &LoadedModel, job: &CompletionJob) -> u64 {
    let positions = job
        .prompt
        .len()
        .saturating_add(job.max_tokens)
        .min(m.config().max_position);
    (positions as u64).saturating_mul(kv_bytes_per_position(m))
}

/// Refuses a job whose rows together could need more than `limit` bytes of KV cache.
pub fn check_kv_limit(m: &LoadedModel, job: &CompletionJob, limit: u64) -> Result<(), CompletionError> {
    let need = row_kv_bytes(m, job).saturating_mul(job.n as u64);
    if need > limit {
        let mib = |b: u64| b.div_ceil(1 << 20);
        return Err(CompletionError::KvLimit {
            need_mib: mib(need),
            limit_mib: limit >> 20,
        });
    }
    Ok(())
}

/// Why a request cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CompletionError {
    #[error("no loaded concept is named `{name}` (loaded: {loaded})")]
    UnknownConcept { name: String, loaded: String },
    #[error("steering `{name}`: {reason}")]
    BadLambda { name: String, reason: String },
    #[error(
        "this model's maximum context length is {limit} tokens; the prompt has {prompt} and \
         max_tokens asks for {max_tokens} more"
    )]
    ContextLength {
        prompt: usize,
        max_tokens: usize,
        limit: usize,
    },
    #[error(
        "this request may need {need_mib} MiB of KV cache (n × (prompt + max_tokens) positions); \
         the server's limit is {limit_mib} MiB: ask for fewer tokens or samples"
    )]
    KvLimit { need_mib: u64, limit_mib: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Steering(#[from] TransportError),
}

/// Checks a job against model `m`: prompt, sample count, token budget within the context,
/// sampling ranges and stop sequences.
pub fn check_job(m: &LoadedModel, job: &CompletionJob) -> Result<(), CompletionError> {
    let bad = |s: String| Err(CompletionError::Invalid(s));
    if job.prompt.is_empty() {
        return bad("the prompt is empty".into());
    }
    if !(1..=MAX_SAMPLES).contains(&job.n) {
        return bad(format!("n = {} is outside 1 … {MAX_SAMPLES}", job.n));
    }
    if job.max_tokens == 0 && !job.echo {
        return bad("max_tokens must be at least 1 (0 only with echo)".into());
    }
    let limit = m.config().max_position;
    if job.prompt.len().saturating_add(job.max_tokens) > limit {
        return Err(CompletionError::ContextLength {
            prompt: job.prompt.len(),
            max_tokens: job.max_tokens,
            limit,
        });
    }
    job.sampling.check().map_err(CompletionError::Invalid)?;
    if job.stop.len() > MAX_STOPS {
        return bad(format!(
            "{} stop sequences given (at most {MAX_STOPS})",
            job.stop.len()
        ));
    }
    if job.stop.iter().any(String::is_empty) {
        return bad("a stop sequence is empty".into());
    }
    if job.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
        return bad(format!(
            "top logprobs are limited to {MAX_TOP_LOGPROBS} per token"
        ));
    }
    Ok(())
}

/// The concepts requests may steer with: maps files checked against the served model, in the
/// order given (a request's concepts apply in this order, whatever order it names them in).
#[derive(Clone)]
pub struct ConceptSet {
    concepts: Vec<Arc<MapsFile>>,
    n_layers: usize,
    width: usize,
}

impl ConceptSet {
    /// Loads `paths` for `m` (each checked as `generate --maps` checks it); two files with
    /// one concept name are refused.
    pub fn load(m: &LoadedModel, paths: &[PathBuf]) -> Result<Self, SteeringError> {
        let target = SteeringTarget::language_model(m);
        let mut concepts: Vec<Arc<MapsFile>> = Vec::with_capacity(paths.len());
        for path in paths {
            let maps = load_maps_for(path, &target)?;
            if concepts.iter().any(|c| c.meta().concept == maps.meta().concept) {
                return Err(SteeringError::DuplicateConcept(maps.meta().concept.clone()));
            }
            concepts.push(Arc::new(maps));
        }
        Ok(Self::from_checked(m, concepts))
    }

    /// Concepts already checked against `m` (e.g. the app's steering stack).
    pub fn from_checked(m: &LoadedModel, concepts: Vec<Arc<MapsFile>>) -> Self {
        let c = m.config();
        Self {
            concepts,
            n_layers: c.n_layers,
            width: c.hidden_size,
        }
    }

    /// The loaded concepts' maps, in order.
    pub fn concepts(&self) -> &[Arc<MapsFile>] {
        &self.concepts
    }

    /// The compiled steering for `strengths` (concept name, λ) over `scope`: `None` when no
    /// concept is named or every λ is 0, so the request runs the plain model. Unknown names
    /// and λ outside ±[`crate::transport::LAMBDA_LIMIT`] (or not finite) are refused.
    pub fn plan(
        &self,
        strengths: &[(String, f32)],
        scope: TokenScope,
    ) -> Result<Option<Arc<SteeringPlan>>, CompletionError> {
        let mut stack = SteeringStack {
            scope,
            ..Default::default()
        };
        for (name, lambda) in strengths {
            check_lambda(*lambda).map_err(|reason| CompletionError::BadLambda {
                name: name.clone(),
                reason,
            })?;
            if !self.concepts.iter().any(|c| &c.meta().concept == name) {
                let loaded: Vec<&str> = self.concepts.iter().map(|c| c.meta().concept.as_str()).collect();
                return Err(CompletionError::UnknownConcept {
                    name: name.clone(),
                    loaded: if loaded.is_empty() {
                        "none".into()
                    } else {
                        loaded.join(", ")
                    },
                });
            }
        }
        for maps in &self.concepts {
            if let Some((_, lambda)) = strengths.iter().find(|(n, _)| *n == maps.meta().concept) {
                stack.push(maps.clone(), *lambda);
            }
        }
        let plan = compile_plan(&stack, self.n_layers, self.width)?;
        Ok((!plan.is_empty()).then(|| Arc::new(plan)))
    }
}

/// Stop sequences over a growing text: [`StopText::push`] returns what may be shown now,
/// holding back any tail that could still turn into a stop sequence.
#[derive(Debug, Clone, Default)]
pub struct StopText {
    stops: Vec<String>,
    text: String,
    shown: usize,
}

impl StopText {
    /// A matcher for `stops` (empty: every piece is shown at once).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            text: String::new(),
            shown: 0,
        }
    }

    /// Adds `piece`; returns the text that can be shown now and whether a stop sequence was
    /// reached (then the text ends before it, and nothing more may be pushed).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        let fresh = &self.text[self.shown..];
        // A stop sequence can only start in text not yet shown: shown text never holds one's
        // beginning.
        let hit = self.stops.iter().filter_map(|s| fresh.find(s.as_str())).min();
        if let Some(at) = hit {
            let out = fresh[..at].to_string();
            self.text.truncate(self.shown + at);
            self.shown = self.text.len();
            return (out, true);
        }
        let hold = self
            .stops
            .iter()
            .map(|s| longest_prefix_suffix(fresh, s))
            .max()
            .unwrap_or(0);
        let end = self.text.len() - hold;
        let out = self.text[self.shown..end].to_string();
        self.shown = end;
        (out, false)
    }

    /// The text held back so far (at the end of a sample: it is not a stop sequence).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.shown..].to_string();
        self.shown = self.text.len();
        out
    }
}

/// Length in bytes of the longest proper prefix of `stop` that `text` ends with.
fn longest_prefix_suffix(text: &str, stop: &str) -> usize {
    stop.char_indices()
        .map(|(i, _)| i)
        .skip(1)
        .filter(|&k| text.ends_with(&stop[..k]))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (shown, hit) = m.push(p);
            out.push_str(&shown);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_sequences_cut_the_text_and_hold_back_partial_matches() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["\n\n"], &["one", "\n", "\n", "two"]), ("one".into(), true));
        assert_eq!(run(&["END"], &["xEN", "Dy"]), ("x".into(), true));
        // A partial match that does not complete is shown in the end.
        assert_eq!(run(&["END"], &["xEN", "y"]), ("xENy".into(), false));
        assert_eq!(run(&["END"], &["xEN"]), ("xEN".into(), false));
        // The earliest of several stops wins; multi-byte text is cut on character bounds.
        assert_eq!(run(&["é!", "b"], &["aé", "!b"]), ("a".into(), true));
        assert_eq!(run(&["éé"], &["aé", "x"]), ("aéx".into(), false));
    }

    #[test]
    fn held_text_is_shown_as_soon_as_it_cannot_stop() {
        let mut m = StopText::new(vec!["abc".into()]);
        assert_eq!(m.push("xa"), ("x".into(), false));
        assert_eq!(m.push("b"), (String::new(), false));
        assert_eq!(m.push("d"), ("abd".into(), false));
        assert_eq!(m.flush(), "");
    }
}
