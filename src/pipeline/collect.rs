//! Collecting pooled activations of a dataset at chosen hook points (for fitting, plots, and
//! export for outside analysis).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::runtime::linear::MatPath;
use crate::runtime::llama::{Batch, LogitsMode};
use crate::runtime::{HookKind, HookPoint, LoadedModel, Result, RuntimeError};
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

/// Hook points of a preset over `n_layers` layers (the paper's names): `post-ln` (on Llama:
/// every `mlp_norm`), `attention` (`attn_out`), `mlp` (`mlp_out`), `all-ln` (`attn_norm` and
/// `mlp_norm`), `residual` (`resid`); or a comma-separated list of hook point names.
pub fn hook_points(spec: &str, n_layers: usize) -> std::result::Result<Vec<HookPoint>, String> {
    let kinds: &[HookKind] = match spec.trim().to_ascii_lowercase().as_str() {
        "post-ln" | "postln" | "mlp-norm" => &[HookKind::MlpNorm],
        "attention" | "attn" => &[HookKind::AttnOut],
        "mlp" => &[HookKind::MlpOut],
        "all-ln" | "allln" => &[HookKind::AttnNorm, HookKind::MlpNorm],
        "residual" | "resid" => &[HookKind::Resid],
        _ => {
            return spec
                .split(',')
                .map(|s| {
                    HookPoint::parse(s.trim())
                        .filter(|p| p.layer < n_layers)
                        .ok_or_else(|| format!("`{}` is not a hook point of this model (layers.0..{}.KIND, or a preset: post-ln, attention, mlp, all-ln, residual)", s.trim(), n_layers.saturating_sub(1)))
                })
                .collect();
        }
    };
    Ok((0..n_layers)
        .flat_map(|layer| kinds.iter().map(move |&kind| HookPoint { layer, kind }))
        .collect())
}

/// Runs `texts` through the model in batches and returns, per hook point, the pooled
/// activations `[texts, d]` in dataset order. `progress(done, total)` is called after each
/// batch; `cancel` stops between batches.
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
    let d = m.config().hidden_size;
    let mut recorder = PoolingRecorder::new(&opts.points, opts.pooling);
    for (k, chunk) in texts.chunks(opts.batch_size.max(1)).enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(RuntimeError::Cancelled);
        }
        let padded = PaddedBatch::encode(m, chunk.iter(), opts.max_tokens)?;
        let batch = padded.batch();
        let mut caches: Vec<_> = padded.valid.iter().map(|_| m.new_cache()).collect();
        m.model.forward(
            &batch,
            &mut caches,
            &mut recorder,
            MatPath::Dense,
            LogitsMode::None,
        )?;
        progress(((k + 1) * opts.batch_size.max(1)).min(texts.len()), texts.len());
    }
    Ok(recorder
        .pooled
        .into_iter()
        .map(|(p, data)| {
            let rows = data.len() / d.max(1);
            (p, SampleMatrix { data, rows, cols: d })
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
            let mut v = m.tokenizer.encode(t)?;
            v.truncate(max_tokens.max(1));
            if v.is_empty() {
                return Err(RuntimeError::BadInput(format!(
                    "the sample {t:?} is empty after tokenization"
                )));
            }
            ids.push(v);
        }
        let seq = ids.iter().map(Vec::len).max().unwrap_or(1);
        let valid: Vec<usize> = ids.iter().map(Vec::len).collect();
        let mut tokens = Vec::with_capacity(ids.len() * seq);
        for v in &ids {
            tokens.extend_from_slice(v);
            tokens.resize(tokens.len() + seq - v.len(), 0);
        }
        Ok(Self { tokens, valid, seq })
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

/// Reads a text dataset: one sample per non-empty line (UTF-8). Empty files are errors.
pub fn read_lines(path: &std::path::Path) -> std::result::Result<Vec<String>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{}: not valid UTF-8 text", path.display()))?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        return Err(format!("{}: no samples (one per line expected)", path.display()));
    }
    Ok(lines)
}
