//! Decode steps dealt out per thread (`runtime::split_step`) on the demo model: the same
//! logits, bit for bit, as the whole batch in one forward pass, each part steering its own
//! rows; and the rule that decides when the server splits.

mod common;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use act_studio::runtime::forward::{Batch, LogitsMode};
use act_studio::runtime::linear::MatPath;
use act_studio::runtime::sampling::argmax;
use act_studio::runtime::split_step::{forward_parts, part_ranges, parts_for};
use act_studio::runtime::steer::RowSteering;
use act_studio::runtime::{HookKind, HookPoint, LoadedModel};
use act_studio::transport::{HookMap, Method, SteeringPlan, Support, TokenScope};

const PROMPTS: [&str; 7] = [
    "The weather today is",
    "Once upon a time, in a small village by the sea, there lived",
    "My favourite sport is",
    "A short recipe:",
    "In the year 2050, cities will",
    "Dear diary,",
    "The train left the station and",
];

/// A plan steering every layer's MLP input by a made-up affine map at strength `lambda`.
fn plan(m: &LoadedModel, lambda: f32) -> Arc<SteeringPlan> {
    let cfg = m.config();
    let d = cfg.hidden_size;
    let mut per_hook = vec![Vec::new(); cfg.n_layers * HookKind::ALL.len()];
    for layer in 0..cfg.n_layers {
        let omega = (0..d).map(|j| 0.8 + (j % 5) as f32 * 0.05).collect();
        let beta = (0..d).map(|j| ((j % 3) as f32 - 1.0) * 0.05).collect();
        let map = HookMap::new(
            Method::LinearAct,
            Support::Q0_100,
            omega,
            beta,
            vec![-50.0; d],
            vec![50.0; d],
            BTreeMap::new(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let at = HookPoint {
            layer,
            kind: HookKind::MlpNorm,
        };
        per_hook[at.index()].push((Arc::new(map), lambda));
    }
    Arc::new(SteeringPlan::from_parts(per_hook, TokenScope::All))
}

#[test]
fn split_steps_give_the_whole_batchs_logits_bit_for_bit() {
    let Some(path) = common::demo_model() else { return };
    let m = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let vocab = m.config().vocab_size;
    // Rows of different context lengths, some steered (each its own strength), some not.
    let plans: Vec<Option<Arc<SteeringPlan>>> = (0..PROMPTS.len())
        .map(|i| (i % 3 != 1).then(|| plan(&m, 0.3 * i as f32 - 0.6)))
        .collect();
    let mut caches = Vec::new();
    let mut feed = Vec::new();
    let mut lens = Vec::new();
    for p in PROMPTS {
        let ids = m.tokenizer.encode(p).unwrap_or_else(|e| panic!("{e}"));
        let mut cache = vec![m.new_cache()];
        let b = Batch {
            tokens: &ids,
            batch: 1,
            seq: ids.len(),
            valid: &[ids.len()],
            prompt_lens: &[ids.len()],
        };
        let out = m
            .model
            .forward(
                &b,
                &mut cache,
                &mut act_studio::runtime::NoHooks,
                MatPath::Quantized,
                LogitsMode::Last,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        feed.push(argmax(&out.logits));
        lens.push(ids.len());
        caches.extend(cache);
    }
    let rows = PROMPTS.len();
    let ones = vec![1usize; rows];
    // The same steps three ways: one batch, two parts (4 + 3 rows), three parts (3 + 2 + 2).
    let ways: Vec<Vec<Range<usize>>> = vec![part_ranges(rows, 1), part_ranges(rows, 2), part_ranges(rows, 3)];
    // The plans take effect row by row: against an unsteered step, exactly the rows with a
    // plan of λ ≠ 0 change.
    let b = Batch {
        tokens: &feed,
        batch: rows,
        seq: 1,
        valid: &ones,
        prompt_lens: &lens,
    };
    let step = |hooks: &mut dyn act_studio::runtime::Hooks| {
        let mut c = caches.clone();
        m.model
            .forward(&b, &mut c, hooks, MatPath::Quantized, LogitsMode::Last)
            .unwrap_or_else(|e| panic!("{e}"))
            .logits
    };
    let plain = step(&mut act_studio::runtime::NoHooks);
    let steered = step(&mut RowSteering::new(plans.clone()));
    for (i, (a, b)) in plain
        .chunks_exact(vocab)
        .zip(steered.chunks_exact(vocab))
        .enumerate()
    {
        let moves = plans[i].is_some() && i != 2; // row 2's λ is 0
        assert_eq!(a != b, moves, "row {i}");
    }
    let mut state: Vec<(Vec<_>, Vec<u32>)> = ways.iter().map(|_| (caches.clone(), feed.clone())).collect();
    for step in 0..6 {
        let mut logits = Vec::new();
        for (ranges, (caches, feed)) in ways.iter().zip(state.iter_mut()) {
            let b = Batch {
                tokens: feed,
                batch: rows,
                seq: 1,
                valid: &ones,
                prompt_lens: &lens,
            };
            let mut hooks: Vec<RowSteering> = ranges
                .iter()
                .map(|r| RowSteering::new(plans[r.clone()].to_vec()))
                .collect();
            let out = forward_parts(
                &m.model,
                &b,
                caches,
                ranges,
                &mut hooks,
                MatPath::Quantized,
                LogitsMode::Last,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(out.logits.len(), rows * vocab);
            assert!(!out.stopped);
            *feed = out.logits.chunks_exact(vocab).map(argmax).collect();
            logits.push(out.logits);
        }
        for (w, l) in logits.iter().enumerate().skip(1) {
            let same = l.iter().zip(&logits[0]).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "step {step}: {} parts differ from one batch", ways[w].len());
        }
    }
    for (caches, _) in &state {
        for (c, len) in caches.iter().zip(&lens) {
            assert_eq!(c.len(), len + 6);
        }
    }
}

#[test]
fn parts_must_cover_the_batch_in_order() {
    let Some(path) = common::demo_model() else { return };
    let m = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let feed = [1u32, 2, 3, 4];
    let (ones, lens) = ([1usize; 4], [1usize; 4]);
    let b = Batch {
        tokens: &feed,
        batch: 4,
        seq: 1,
        valid: &ones,
        prompt_lens: &lens,
    };
    // Runs `batch` as `ranges` with `hooks` NoHooks on fresh caches: whether it was refused
    // with nothing run.
    let refused = |batch: &Batch<'_>, ranges: &[Range<usize>], hooks: usize| {
        let mut caches: Vec<_> = (0..4).map(|_| m.new_cache()).collect();
        let mut hooks: Vec<_> = (0..hooks).map(|_| act_studio::runtime::NoHooks).collect();
        let got = forward_parts(
            &m.model,
            batch,
            &mut caches,
            ranges,
            &mut hooks,
            MatPath::Quantized,
            LogitsMode::Last,
        );
        got.is_err() && caches.iter().all(|c| c.is_empty())
    };
    // Short of the end, a gap, an empty part, none at all.
    let short: Vec<Range<usize>> = part_ranges(2, 1);
    let bad: [&[Range<usize>]; 4] = [&short, &[0..2, 3..4], &[0..2, 2..2, 2..4], &[]];
    for ranges in bad {
        assert!(refused(&b, ranges, ranges.len()), "{ranges:?} accepted or ran");
    }
    // Hooks that do not match the parts.
    let two = part_ranges(4, 2);
    assert!(refused(&b, &two, 1));
    // A batch whose buffers do not match its shape: an error, not a panic in a part.
    let short = Batch {
        tokens: &feed[..3],
        ..b
    };
    assert!(refused(&short, &two, 2));
    // And the same batch, well formed, runs.
    assert!(!refused(&b, &two, 2));
}

#[test]
fn the_server_splits_only_small_pools_with_rows_for_every_thread() {
    let Some(path) = common::demo_model() else { return };
    let m = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    if std::env::var_os("ACT_SPLIT_STEP").is_some() {
        eprintln!("SKIP: ACT_SPLIT_STEP is set, which overrides the rule");
        return;
    }
    let x16 = m.model.layers_on_sixteen_row_kernels();
    // Two threads: from two rows each.
    assert_eq!(parts_for(&m.model, 8, 2), if x16 { 2 } else { 1 });
    assert_eq!(parts_for(&m.model, 4, 2), if x16 { 2 } else { 1 });
    assert_eq!(parts_for(&m.model, 3, 2), 1);
    assert_eq!(parts_for(&m.model, 12, 4), if x16 { 4 } else { 1 });
    // One thread, or a pool too large to multiply its weight stream by.
    assert_eq!(parts_for(&m.model, 8, 1), 1);
    assert_eq!(parts_for(&m.model, 64, 16), 1);
    assert_eq!(parts_for(&m.model, 0, 2), 1);
}
