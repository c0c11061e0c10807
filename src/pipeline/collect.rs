//! Collecting pooled activations of a dataset at chosen hook points (for fitting, plots, and
//! export for outside analysis).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::runtime::forward::{Batch, LogitsMode};
use crate::runtime::{HookPoint, LoadedModel, Result, RuntimeError};
use crate::transport::SampleMatrix;

use super::pooling::{Pooling, PoolingRecorder};

/// What to collect.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// Hook points to record.
    pub points: Vec<HookPoint>,
    /// How tokens are pooled per sample.
    pub pooling: Pooling,
    /// Samples per forward pass.
    pub batch_size: usize,
    /// Longest sample in tokens (longer ones are cut).
    pub max_tokens: usize,
}

impl Default for CollectOptions {
    fn default() -> Self {
        Self {
            points: Vec::new(),
            pooling: Pooling::Mean,
            batch_size: 32,
            max_tokens: 128,
        }
    }
}

/// Runs `texts` through the model in batches and returns, per hook point, the pooled
/// activations `[texts, d]` in dataset order. Batches group texts of similar length (less
/// padding); `progress(done, total)` is called after each batch; `cancel` stops between
/// batches.
pub fn collect(
    m: &LoadedModel,
    texts: &[String],
    opts: &CollectOptions,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<BTreeMap<HookPoint, SampleMatrix>> {
    if texts.is_empty() {
        return Err(RuntimeError::BadInput("the dataset is empty".into()));
    }
    if opts.points.is_empty() {
        return Err(RuntimeError::BadInput("no hook points to collect".into()));
    }
    let have = m.hook_points();
    if let Some(p) = opts.points.iter().find(|p| !have.contains(p)) {
        return Err(RuntimeError::BadInput(format!(
            "this model has no hook point {p}"
        )));
    }
    let d = m.config().hidden_size;
    let lens = texts
        .iter()
        .map(|t| Ok(m.tokenizer.encode_prefix(t, opts.max_tokens.max(1))?.len()))
        .collect::<Result<Vec<usize>>>()?;
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| (lens[i], i));
    let mut recorder = PoolingRecorder::new(&opts.points, opts.pooling);
    let mut done = 0;
    for chunk in order.chunks(opts.batch_size.max(1)) {
        if cancel.load(Ordering::Relaxed) {
            return Err(RuntimeError::Cancelled);
        }
        let padded = PaddedBatch::encode(m, chunk.iter().map(|&i| &texts[i]), opts.max_tokens)?;
        let batch = padded.batch();
        let mut caches: Vec<_> = padded.valid.iter().map(|_| m.transient_cache()).collect();
        m.model.forward(
            &batch,
            &mut caches,
            &mut recorder,
            m.layer_pass_path(),
            LogitsMode::None,
        )?;
        done += chunk.len();
        progress(done, texts.len());
    }
    // Rows were recorded in length order; put them back in dataset order.
    Ok(recorder
        .pooled
        .into_iter()
        .map(|(p, sorted)| {
            let mut data = vec![0.0; sorted.len()];
            for (k, &i) in order.iter().enumerate() {
                data[i * d..(i + 1) * d].copy_from_slice(&sorted[k * d..(k + 1) * d]);
            }
            (
                p,
                SampleMatrix {
                    data,
                    rows: texts.len(),
                    cols: d,
                },
            )
        })
        .collect())
}

/// Texts tokenized (cut to `max_tokens`) and right-padded into one batch.
pub struct PaddedBatch {
    /// `[rows, seq]` token ids; padding ids are 0 and ignored.
    pub tokens: Vec<u32>,
    /// Real tokens per row.
    pub valid: Vec<usize>,
    /// Tokens per row including padding.
    pub seq: usize,
}

impl PaddedBatch {
    /// Tokenizes `texts`; a text with no tokens is an error naming it.
    pub fn encode<'t>(
        m: &LoadedModel,
        texts: impl Iterator<Item = &'t String>,
        max_tokens: usize,
    ) -> Result<Self> {
        let mut ids = Vec::new();
        for t in texts {
            let v = m.tokenizer.encode_prefix(t, max_tokens.max(1))?;
            if v.is_empty() {
                return Err(RuntimeError::BadInput(format!(
                    "the sample {:?} is empty after tokenization",
                    crate::pipeline::dataset::excerpt(t)
                )));
            }
            ids.push(v);
        }
        Ok(Self::from_ids(ids.iter()))
    }

    /// Right-pads token sequences (padding id 0) into one batch.
    pub fn from_ids<'a>(rows: impl Iterator<Item = &'a Vec<u32>> + Clone) -> Self {
        let seq = rows.clone().map(Vec::len).max().unwrap_or(1).max(1);
        let valid: Vec<usize> = rows.clone().map(Vec::len).collect();
        let mut tokens = Vec::with_capacity(valid.len() * seq);
        for v in rows {
            tokens.extend_from_slice(v);
            tokens.resize(tokens.len() + seq - v.len(), 0);
        }
        Self { tokens, valid, seq }
    }

    /// The batch view for a forward pass (every token counts as prompt).
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            tokens: &self.tokens,
            batch: self.valid.len(),
            seq: self.seq,
            valid: &self.valid,
            prompt_lens: &self.valid,
        }
    }
}
