//! The server's prompt cache: the KV caches and next-token logits of recent prompts, so that
//! a request repeating a prompt (a regenerated answer, several clients sending one prompt,
//! a sweep over seeds) skips its prefill, and one extending a long prompt (a chat's next
//! turn, resent with the whole conversation) starts after the whole prefill chunks they
//! share (docs/ARCHITECTURE.md, "Serving").
//!
//! **Reuse is exact**: a request gives the same tokens with or without the cache.
//! - A *whole* hit needs the same tokens and the same steering ([`SteeringPlan::same_as`]):
//!   the prefill would have run exactly what filled the entry.
//! - A *prefix* hit takes the first `k ·` [`PREFILL_CHUNK`] positions only, where both
//!   prompts are longer than that: a prompt always runs in the same chunks from position 0
//!   ([`crate::runtime::generate::prefill_chunk`]), so these chunks ran on the same tokens,
//!   with the same kernels (a chunk's row count picks them) and, being before each prompt's
//!   last chunk, the same steering for every token scope (only a prompt's last chunk can
//!   differ, e.g. under `last_token`).
//!
//! Entries are kept most recently used last and dropped from the front beyond the byte limit.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::runtime::LoadedModel;
use crate::runtime::generate::PREFILL_CHUNK;
use crate::runtime::kv_cache::KvCache;
use crate::transport::SteeringPlan;

use super::completion::kv_bytes_per_position;

/// Most prompts kept, whatever their size (each lookup compares against all).
const MAX_ENTRIES: usize = 64;

/// One prompt that has run.
struct Entry {
    tokens: Vec<u32>,
    steering: Option<Arc<SteeringPlan>>,
    /// `[tokens]` positions: exactly the prompt's keys and values.
    cache: KvCache,
    /// `[vocab]` logits after the whole prompt.
    logits: Vec<f32>,
    bytes: u64,
}

/// What the cache holds for a prompt.
pub enum Reuse {
    /// The whole prompt: its cache (with room for the positions asked for) and the logits of
    /// its next token.
    Whole { cache: KvCache, logits: Vec<f32> },
    /// Its first `len` positions (a multiple of [`PREFILL_CHUNK`]); the prefill goes on from
    /// there.
    Prefix { cache: KvCache, len: usize },
    /// Nothing.
    Miss,
}

/// Recent prompts' KV caches and logits, within a byte limit (0: the cache is off).
pub struct PromptCache {
    entries: VecDeque<Entry>,
    bytes: u64,
    limit: u64,
}

fn same_steering(a: &Option<Arc<SteeringPlan>>, b: &Option<Arc<SteeringPlan>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.same_as(b),
        _ => false,
    }
}

/// Positions of a prompt of `a` tokens and one of `b` tokens sharing their first `common`
/// that a prefix hit may reuse: whole chunks, before each prompt's last chunk.
fn reusable(common: usize, a: usize, b: usize) -> usize {
    let bound = common.min(a.saturating_sub(1)).min(b.saturating_sub(1));
    bound / PREFILL_CHUNK * PREFILL_CHUNK
}

impl PromptCache {
    /// An empty cache that holds at most `limit_bytes` (KV caches and logits).
    pub fn new(limit_bytes: u64) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            limit: limit_bytes,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Prompts held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no prompt is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The best reuse for `prompt` under `steering`: a whole hit, else the longest prefix
    /// hit. The cache returned is a copy with room for `positions` positions in all.
    pub fn lookup(
        &mut self,
        m: &LoadedModel,
        prompt: &[u32],
        steering: &Option<Arc<SteeringPlan>>,
        positions: usize,
    ) -> Reuse {
        let mut best: Option<(usize, usize)> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if !same_steering(&e.steering, steering) {
                continue;
            }
            if e.tokens == prompt {
                best = Some((i, prompt.len()));
                break;
            }
            let common = e.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
            let len = reusable(common, e.tokens.len(), prompt.len());
            if len > 0 && best.is_none_or(|(_, l)| len > l) {
                best = Some((i, len));
            }
        }
        let Some((i, len)) = best else {
            return Reuse::Miss;
        };
        // Most recently used last.
        let Some(e) = self.entries.remove(i) else {
            return Reuse::Miss;
        };
        let cache = m.fork_cache_prefix(&e.cache, len, positions);
        let reuse = if len == prompt.len() && e.tokens.len() == len {
            Reuse::Whole {
                cache,
                logits: e.logits.clone(),
            }
        } else {
            Reuse::Prefix { cache, len }
        };
        self.entries.push_back(e);
        reuse
    }

    /// Keeps `prompt`'s `cache` (which must hold exactly the prompt's positions, or more
    /// with the prompt's first) and next-token `logits`, dropping the least recently used
    /// prompts beyond the limit. A prompt already held is only marked as just used; one
    /// larger than the whole limit is not kept.
    pub fn insert(
        &mut self,
        m: &LoadedModel,
        prompt: &[u32],
        steering: &Option<Arc<SteeringPlan>>,
        cache: &KvCache,
        logits: &[f32],
    ) {
        if self.limit == 0 || cache.len() < prompt.len() || prompt.is_empty() {
            return;
        }
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.tokens == prompt && same_steering(&e.steering, steering))
        {
            if let Some(e) = self.entries.remove(i) {
                self.entries.push_back(e);
            }
            return;
        }
        let bytes = (prompt.len() as u64)
            .saturating_mul(kv_bytes_per_position(m))
            .saturating_add(logits.len() as u64 * 4);
        if bytes > self.limit {
            return;
        }
        let kept = m.fork_cache_prefix(cache, prompt.len(), prompt.len());
        self.entries.push_back(Entry {
            tokens: prompt.to_vec(),
            steering: steering.clone(),
            cache: kept,
            logits: logits.to_vec(),
            bytes,
        });
        self.bytes = self.bytes.saturating_add(bytes);
        while self.bytes > self.limit || self.entries.len() > MAX_ENTRIES {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(old.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_hits_take_whole_chunks_before_either_prompts_last_chunk() {
        let c = PREFILL_CHUNK;
        // Shorter than a chunk: nothing but a whole hit.
        assert_eq!(reusable(10, 13, 20), 0);
        // Sharing two whole chunks and more, both longer: two chunks.
        assert_eq!(reusable(2 * c + 7, 3 * c, 2 * c + 100), 2 * c);
        // The cached prompt ends exactly at a chunk's end: its last chunk is not reused
        // (it may have been steered as a last chunk).
        assert_eq!(reusable(c, c, 3 * c), 0);
        assert_eq!(reusable(2 * c, 2 * c, 3 * c), c);
        // Nor the new prompt's last chunk.
        assert_eq!(reusable(2 * c, 3 * c, 2 * c), c);
        // One token short of a chunk in common: nothing.
        assert_eq!(reusable(c - 1, 3 * c, 3 * c), 0);
    }
}
