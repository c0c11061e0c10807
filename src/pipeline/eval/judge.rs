//! A yes/no judge: asks a loaded instruction model whether a text is about a concept and reads
//! p(yes) = P(yes) / (P(yes) + P(no)) from its next-token distribution, over the single-token
//! spellings `yes`/`Yes`/` yes`/` Yes` (and the same for no). Run unsteered.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::runtime::forward::LogitsMode;
use crate::runtime::linear::MatPath;
use crate::runtime::tokenizer::ChatMessage;
use crate::runtime::{LoadedModel, NoHooks, Result, RuntimeError};

use super::super::collect::PaddedBatch;

/// Texts judged per forward pass.
const JUDGE_BATCH: usize = 8;

/// The single-token ids of a word's spellings.
fn spellings(m: &LoadedModel, word: &str) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    let cap = {
        let mut c = word.chars();
        c.next().map_or(String::new(), |f| {
            f.to_uppercase().collect::<String>() + c.as_str()
        })
    };
    for w in [
        word.to_string(),
        cap.clone(),
        format!(" {word}"),
        format!(" {cap}"),
    ] {
        if let [id] = m.tokenizer.encode_plain(&w)?[..] {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// p(yes) that each text is about `concept`.
pub fn judge_p_yes(
    m: &LoadedModel,
    concept: &str,
    texts: &[String],
    cancel: &AtomicBool,
) -> Result<Vec<f64>> {
    let (yes, no) = (spellings(m, "yes")?, spellings(m, "no")?);
    if yes.is_empty() || no.is_empty() {
        return Err(RuntimeError::BadInput(
            "this tokenizer has no single-token yes/no; the judge needs one".into(),
        ));
    }
    let vocab = m.config().vocab_size;
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(JUDGE_BATCH) {
        if cancel.load(Ordering::Relaxed) {
            return Err(RuntimeError::Cancelled);
        }
        let mut seqs = Vec::with_capacity(chunk.len());
        for t in chunk {
            let q = format!(
                "Is the following text about {concept}? Answer with one word, yes or no.\n\nText: {}",
                t.trim()
            );
            let prompt = m.tokenizer.render_chat(&[ChatMessage::user(&q)], true)?;
            seqs.push(m.tokenizer.encode(&prompt)?);
        }
        let padded = PaddedBatch::from_ids(seqs.iter());
        let batch = padded.batch();
        let mut caches: Vec<_> = seqs.iter().map(|_| m.transient_cache()).collect();
        let logits = m
            .model
            .forward(
                &batch,
                &mut caches,
                &mut NoHooks,
                MatPath::Dense,
                LogitsMode::Last,
            )?
            .logits;
        for row in logits.chunks_exact(vocab) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mass = |ids: &[u32]| {
                ids.iter()
                    .map(|&i| ((row[i as usize] - max) as f64).exp())
                    .sum::<f64>()
            };
            let (y, n) = (mass(&yes), mass(&no));
            out.push(if y + n > 0.0 { y / (y + n) } else { 0.5 });
        }
    }
    Ok(out)
}
