//! The server's prompt cache (`pipeline::prompt_cache`) on the demo model: what it gives back
//! for whole and prefix hits, the byte limit, and which prompts it drops first (the least
//! recently used).

mod common;

use act_studio::pipeline::completion::kv_bytes_per_position;
use act_studio::pipeline::prompt_cache::{PromptCache, Reuse};
use act_studio::runtime::LoadedModel;
use act_studio::runtime::generate::prefill;
use act_studio::runtime::hooks::NoHooks;
use act_studio::runtime::kv_cache::KvCache;
use act_studio::runtime::linear::MatPath;

/// `prompt` run through the model: its cache and next-token logits.
fn ran(m: &LoadedModel, prompt: &[u32]) -> (KvCache, Vec<f32>) {
    let mut cache = vec![m.cache_for(prompt.len())];
    let logits =
        prefill(m, prompt, &mut cache, &mut NoHooks, MatPath::Quantized).unwrap_or_else(|e| panic!("{e}"));
    (cache.pop().unwrap_or_else(|| panic!("no cache")), logits)
}

/// What the cache gives for `prompt` (unsteered): `Some(len)` reused, `None` a miss.
fn hit(c: &mut PromptCache, m: &LoadedModel, prompt: &[u32]) -> Option<usize> {
    match c.lookup(m, prompt, &None, prompt.len() + 8) {
        Reuse::Whole { cache, logits } => {
            assert_eq!(cache.len(), prompt.len());
            assert_eq!(logits.len(), m.config().vocab_size);
            Some(prompt.len())
        }
        Reuse::Prefix { cache, len } => {
            assert_eq!(cache.len(), len);
            Some(len)
        }
        Reuse::Miss => None,
    }
}

#[test]
fn the_cache_keeps_prompts_within_its_limit_and_drops_the_least_recently_used_first() {
    let Some(path) = common::demo_model() else { return };
    let m = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let encode = |t: &str| m.tokenizer.encode(t).unwrap_or_else(|e| panic!("{e}"));
    let prompts: Vec<Vec<u32>> = ["The sea is calm", "A red kite flew over", "Bread rises when"]
        .iter()
        .map(|t| encode(t))
        .collect();
    let entry_bytes =
        |p: &[u32]| p.len() as u64 * kv_bytes_per_position(&m) + m.config().vocab_size as u64 * 4;
    // Room for the two largest prompts, not for all three.
    let mut sizes: Vec<u64> = prompts.iter().map(|p| entry_bytes(p)).collect();
    sizes.sort_unstable();
    let limit = sizes[1] + sizes[2];
    let mut c = PromptCache::new(limit);
    let runs: Vec<(KvCache, Vec<f32>)> = prompts.iter().map(|p| ran(&m, p)).collect();

    c.insert(&m, &prompts[0], &None, &runs[0].0, &runs[0].1);
    c.insert(&m, &prompts[1], &None, &runs[1].0, &runs[1].1);
    assert_eq!(c.len(), 2);
    assert_eq!(c.bytes(), entry_bytes(&prompts[0]) + entry_bytes(&prompts[1]));
    // The same prompt again is not kept twice.
    c.insert(&m, &prompts[1], &None, &runs[1].0, &runs[1].1);
    assert_eq!(c.len(), 2);
    // A whole hit gives the prompt's cache and logits; a prompt never seen, nothing.
    assert_eq!(hit(&mut c, &m, &prompts[0]), Some(prompts[0].len()));
    assert_eq!(hit(&mut c, &m, &prompts[2]), None);
    // prompts[0] was used last, so the third prompt drops prompts[1].
    c.insert(&m, &prompts[2], &None, &runs[2].0, &runs[2].1);
    assert!(c.bytes() <= limit, "{} > {limit}", c.bytes());
    assert_eq!(
        hit(&mut c, &m, &prompts[1]),
        None,
        "the least recently used went first"
    );
    assert_eq!(hit(&mut c, &m, &prompts[0]), Some(prompts[0].len()));
    assert_eq!(hit(&mut c, &m, &prompts[2]), Some(prompts[2].len()));
    // The logits given back are the prompt's own.
    if let Reuse::Whole { logits, .. } = c.lookup(&m, &prompts[2], &None, 64) {
        assert_eq!(logits, runs[2].1);
    } else {
        panic!("no whole hit");
    }
    // A prompt larger than the whole limit is not kept, and nothing is dropped for it.
    let mut small = PromptCache::new(entry_bytes(&prompts[0]));
    small.insert(&m, &prompts[0], &None, &runs[0].0, &runs[0].1);
    let long = encode(&"word ".repeat(40));
    let (lc, ll) = ran(&m, &long);
    small.insert(&m, &long, &None, &lc, &ll);
    assert_eq!(small.len(), 1);
    assert_eq!(hit(&mut small, &m, &prompts[0]), Some(prompts[0].len()));
    // A limit of 0 keeps nothing.
    let mut off = PromptCache::new(0);
    off.insert(&m, &prompts[0], &None, &runs[0].0, &runs[0].1);
    assert!(off.is_empty());
}
