//! Generating text, steered and unsteered, the one way every edge does it: `act-studio
//! generate` and the app's output columns (through the worker) build a [`TextRequest`] and
//! call [`generate_text`]; the app's plots get the prompt's own activations from
//! [`prompt_activations`] (docs/ARCHITECTURE.md, "Generating text").
//!
//! Both columns start from the same seed, so with every λ at 0 the steered column is the
//! unsteered one token for token. When both are asked for they stream together, a token of
//! each in turn, each with its own cache, sampler and hooks, so either column is exactly what
//! it would be generated alone (tested).

use std::sync::atomic::AtomicBool;

use crate::runtime::forward::{Batch, LogitsMode};
use crate::runtime::generate::{GenerateOptions, Generation, Generator};
use crate::runtime::linear::MatPath;
use crate::runtime::steer::SteeringHooks;
use crate::runtime::tokenizer::ChatMessage;
use crate::runtime::{Hooks, LoadedModel, NoHooks, RuntimeError};
use crate::transport::{SteeringStack, TransportError};

use super::pooling::{Pooling, PoolingRecorder};

/// Which output column a piece of text belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    /// No steering.
    Unsteered,
    /// The stack applied.
    Steered,
}

/// One generation request: the prompt, the settings and the steering.
#[derive(Debug, Clone)]
pub struct TextRequest {
    /// The user's prompt.
    pub prompt: String,
    /// Wrap it as a user message in the model's chat template.
    pub chat: bool,
    /// A system message before the user's (chat only; empty: none).
    pub system: String,
    /// Sampling settings, token budget and matrix path (the same seed for both columns).
    pub options: GenerateOptions,
    /// The steering stack (empty: the steered column is unsteered).
    pub stack: SteeringStack,
    /// Generate the unsteered column beside the steered one; else only the steered one.
    pub unsteered: bool,
}

/// What [`generate_text`] reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TextEvent<'a> {
    /// New text in a column.
    Piece(Column, &'a str),
    /// A column ended; `complete` when it was not stopped and did not fail.
    ColumnDone(Column, bool),
}

/// Why text could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The model failed, the prompt is unusable, or the user cancelled.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The steering stack does not fit the model.
    #[error(transparent)]
    Steering(#[from] TransportError),
}

/// The token ids of `prompt`, rendered through the chat template when `chat` (after the
/// `system` message, when it is not blank).
pub fn prompt_ids(m: &LoadedModel, prompt: &str, chat: bool, system: &str) -> Result<Vec<u32>, RuntimeError> {
    let ids = if chat {
        let mut messages = Vec::with_capacity(2);
        if !system.trim().is_empty() {
            messages.push(ChatMessage::system(system));
        }
        messages.push(ChatMessage::user(prompt));
        let text = m.tokenizer.render_chat(&messages, true)?;
        m.tokenizer.encode(&text)?
    } else {
        m.tokenizer.encode(prompt)?
    };
    if ids.is_empty() {
        return Err(RuntimeError::BadInput("the prompt is empty".into()));
    }
    Ok(ids)
}

/// Generates the requested columns from the prompt `ids`, streaming each piece of text to
/// `on_event`: both columns advance a token each in turn (after both prompts ran), so they
/// fill together. Returns the steered column's generation (text and timing). `cancel` set
/// from another thread ends it with [`RuntimeError::Cancelled`], every unfinished column
/// reported as incomplete.
pub fn generate_text(
    m: &LoadedModel,
    req: &TextRequest,
    ids: &[u32],
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(TextEvent),
) -> Result<Generation, TextError> {
    let c = m.config();
    // No concept: the plain forward pass (no hook calls at all).
    let mut steering = match req.stack.concepts.is_empty() {
        true => None,
        false => Some(SteeringHooks::new(&req.stack, c.n_layers, c.hidden_size)?),
    };
    let (mut plain, mut plain_steered) = (NoHooks, NoHooks);
    let mut columns: Vec<(Column, &mut dyn Hooks)> = Vec::with_capacity(2);
    if req.unsteered {
        columns.push((Column::Unsteered, &mut plain));
    }
    let steered_hooks: &mut dyn Hooks = match steering.as_mut() {
        Some(h) => h,
        None => &mut plain_steered,
    };
    columns.push((Column::Steered, steered_hooks));
    let names: Vec<Column> = columns.iter().map(|(c, _)| *c).collect();
    let mut running = Vec::with_capacity(columns.len());
    for (_, hooks) in columns.iter_mut() {
        match Generator::start(m, ids, &req.options, &mut **hooks) {
            Ok(g) => running.push(g),
            Err(e) => {
                for col in &names {
                    on_event(TextEvent::ColumnDone(*col, false));
                }
                return Err(e.into());
            }
        }
    }
    let mut open = vec![true; running.len()];
    while open.iter().any(|&o| o) {
        for (i, g) in running.iter_mut().enumerate() {
            if !open[i] {
                continue;
            }
            let (col, hooks) = &mut columns[i];
            match g.next(&mut **hooks, cancel) {
                Ok(Some(piece)) => on_event(TextEvent::Piece(*col, &piece)),
                Ok(None) => {
                    open[i] = false;
                    on_event(TextEvent::ColumnDone(*col, true));
                }
                Err(e) => {
                    for (col, _) in names.iter().zip(&open).filter(|(_, o)| **o) {
                        on_event(TextEvent::ColumnDone(*col, false));
                    }
                    return Err(e.into());
                }
            }
        }
    }
    running
        .pop()
        .map(Generator::finish)
        .ok_or_else(|| RuntimeError::BadInput("no column to generate".into()).into())
}

/// The prompt's own activations at every hook point, mean-pooled over its tokens and
/// unsteered: `[hook points][hidden size]`, named as the hook points are.
pub fn prompt_activations(m: &LoadedModel, ids: &[u32]) -> Result<Vec<(String, Vec<f32>)>, RuntimeError> {
    let mut rec = PoolingRecorder::new(&m.hook_points(), Pooling::Mean);
    let n = ids.len();
    let batch = Batch {
        tokens: ids,
        batch: 1,
        seq: n,
        valid: &[n],
        prompt_lens: &[n],
    };
    m.model.forward(
        &batch,
        &mut [m.transient_cache()],
        &mut rec,
        MatPath::Dense,
        LogitsMode::None,
    )?;
    Ok(rec.pooled.into_iter().map(|(p, v)| (p.name(), v)).collect())
}
