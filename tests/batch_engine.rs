//! The serving engine (`pipeline::batch_engine`) on the demo model: a long prompt runs in
//! chunks between the decode steps of the rows already running, and its text is that of the
//! same prompt decoded alone.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use act_studio::pipeline::batch_engine::{BatchEngine, SubmitError};
use act_studio::pipeline::completion::{CompletionEvent, CompletionJob, CompletionSink, ConceptSet};
use act_studio::runtime::LoadedModel;
use act_studio::runtime::generate::PREFILL_CHUNK;
use act_studio::runtime::sampling::SamplingConfig;
use act_studio::transport::{SteeringPlan, TokenScope};

/// Every job's events in the order the engine sent them, with the job's label.
type Log = Arc<Mutex<Vec<(&'static str, CompletionEvent)>>>;

struct LogSink(&'static str, Log);

impl CompletionSink for LogSink {
    fn send(&mut self, event: CompletionEvent) -> bool {
        if let Ok(mut log) = self.1.lock() {
            log.push((self.0, event));
        }
        true
    }
}

fn events(log: &Log) -> Vec<(&'static str, CompletionEvent)> {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}

/// Waits (≤ 5 min) until `done` holds for the log.
fn wait_for(log: &Log, what: &str, done: impl Fn(&[(&'static str, CompletionEvent)]) -> bool) {
    let t = Instant::now();
    while !done(&events(log)) {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn text_of(events: &[(&'static str, CompletionEvent)], label: &str) -> String {
    events
        .iter()
        .filter(|(l, _)| *l == label)
        .filter_map(|(_, e)| match e {
            CompletionEvent::Text { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// A greedy, unsteered job of `n` samples whose events go to `log` under `label`.
fn greedy_job(
    prompt: Vec<u32>,
    n: usize,
    max_tokens: usize,
    label: &'static str,
    log: &Log,
) -> CompletionJob {
    CompletionJob {
        prompt,
        n,
        max_tokens,
        sampling: SamplingConfig::greedy(),
        logit_bias: Arc::from([]),
        stop: Vec::new(),
        steering: None,
        logprobs: None,
        echo: false,
        sink: Box::new(LogSink(label, log.clone())),
    }
}

#[test]
fn a_long_prompt_runs_between_the_decode_steps_of_running_rows() {
    let Some(path) = common::demo_model() else { return };
    let m = Arc::new(LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}")));
    let engine = BatchEngine::start(m.clone(), 8, u64::MAX, 0).unwrap_or_else(|e| panic!("{e}"));
    let log: Log = Arc::default();
    let job = |prompt: Vec<u32>, max_tokens: usize, label: &'static str| {
        greedy_job(prompt, 1, max_tokens, label, &log)
    };
    let encode = |t: &str| m.tokenizer.encode(t).unwrap_or_else(|e| panic!("{e}"));
    let short = encode("Once upon a time, in a small village by the sea, there lived");
    let para = "The history of the lighthouse begins with fires lit on hilltops to guide sailors \
                home, and over the centuries these beacons grew into towers of stone with lamps, \
                lenses and keepers who tended them through every storm. ";
    let long = encode(&para.repeat(26));
    let chunks = long.len().div_ceil(PREFILL_CHUNK);
    assert!(chunks >= 3, "the long prompt has {} tokens", long.len());

    if engine.submit(job(short, 60, "short")).is_err() {
        panic!("the engine refused the short job");
    }
    wait_for(&log, "the short job's first text", |e| {
        e.iter()
            .any(|(l, ev)| *l == "short" && matches!(ev, CompletionEvent::Text { .. }))
    });
    let mark = events(&log).len();
    if engine.submit(job(long.clone(), 6, "long")).is_err() {
        panic!("the engine refused the long job");
    }
    wait_for(&log, "the long job's end", |e| {
        e.iter()
            .any(|(l, ev)| *l == "long" && matches!(ev, CompletionEvent::Finished { .. }))
    });
    let after = events(&log).split_off(mark);
    // Each engine step runs one chunk of the long prompt and then decodes the short row: the
    // short row goes on while the long prompt runs, instead of waiting for all of it.
    let short_steps = after
        .iter()
        .take_while(|(l, _)| *l != "long")
        .filter(|(l, e)| *l == "short" && matches!(e, CompletionEvent::Text { .. }))
        .count();
    assert!(
        !after
            .iter()
            .take_while(|(l, _)| *l != "long")
            .any(|(l, e)| *l == "short" && matches!(e, CompletionEvent::Finished { .. })),
        "the short job ended before the long prompt was done; give it more tokens"
    );
    assert!(
        short_steps >= chunks - 1,
        "the short row made {short_steps} steps while the {chunks} chunks of the long prompt ran"
    );
    // Chunks between other rows' steps give the numbers of one prefill: the same greedy text
    // as the prompt decoded alone.
    assert_eq!(text_of(&after, "long"), common::greedy(&m, &long, 6).text);
}

#[test]
fn jobs_wait_for_kv_cache_room_and_one_that_cannot_fit_is_refused() {
    use act_studio::pipeline::completion::row_kv_bytes;
    let Some(path) = common::demo_model() else { return };
    let m = Arc::new(LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}")));
    let log: Log = Arc::default();
    let job = |prompt: Vec<u32>, n: usize, max_tokens: usize, label: &'static str| {
        greedy_job(prompt, n, max_tokens, label, &log)
    };
    let prompt = m
        .tokenizer
        .encode("The lighthouse keeper climbed the stairs and")
        .unwrap_or_else(|e| panic!("{e}"));
    // Room for the first job's two rows and not one more row of the same size.
    let one_row = row_kv_bytes(&m, &job(prompt.clone(), 1, 24, "probe"));
    let engine =
        BatchEngine::start(m.clone(), 8, 2 * one_row + one_row / 2, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(engine.max_kv_bytes(), 2 * one_row + one_row / 2);
    for j in [
        job(prompt.clone(), 2, 24, "first"),
        job(prompt.clone(), 1, 24, "second"),
    ] {
        if engine.submit(j).is_err() {
            panic!("the engine refused a job at submission");
        }
    }
    // A job that could never fit is refused at submission, with the reason, and comes back;
    // so is one the model cannot run (an empty prompt). Neither reaches the model thread.
    match engine.submit(job(prompt.clone(), 3, 24, "too big")) {
        Err(SubmitError::Refused(e, back)) => {
            assert!(e.to_string().contains("KV cache"), "{e}");
            assert_eq!(back.n, 3);
        }
        _ => panic!("a job needing more KV cache than the limit was queued"),
    }
    match engine.submit(job(Vec::new(), 1, 4, "empty")) {
        Err(SubmitError::Refused(e, _)) => assert!(e.to_string().contains("empty"), "{e}"),
        _ => panic!("a job with an empty prompt was queued"),
    }
    wait_for(&log, "every job's end", |e| {
        let finished = |label: &str| {
            e.iter()
                .filter(|(l, ev)| *l == label && matches!(ev, CompletionEvent::Finished { .. }))
                .count()
        };
        finished("first") == 2 && finished("second") == 1
    });
    let all = events(&log);
    let first_end = all
        .iter()
        .rposition(|(l, e)| *l == "first" && matches!(e, CompletionEvent::Finished { .. }));
    let second_start = all
        .iter()
        .position(|(l, e)| *l == "second" && matches!(e, CompletionEvent::Text { .. }));
    assert!(
        matches!((first_end, second_start), (Some(a), Some(b)) if b > a),
        "the second job ran beside the first although the KV limit leaves room for two rows"
    );
    // The refused jobs sent nothing, and the others are unaffected.
    assert!(all.iter().all(|(l, _)| *l != "too big" && *l != "empty"));
    assert_eq!(text_of(&all, "second"), common::greedy(&m, &prompt, 24).text);
}

/// Short prompts that wait together run as one right-padded batch on the decoding kernels
/// (`batch_engine::prefill_together`). Each row's numbers are those of its prompt run alone on
/// the prompt path, bit for bit, including rows whose padded queries × keys count crosses the
/// attention's score-order switch at 256 (13 and 15 tokens padded to 23); and jobs submitted
/// together while the engine is busy give the texts of each decoded alone.
#[test]
fn short_prompts_waiting_together_run_as_one_batch_with_the_numbers_of_each_alone() {
    use act_studio::runtime::forward::{Batch, LogitsMode};
    use act_studio::runtime::generate::prefill_chunk;
    use act_studio::runtime::linear::MatPath;
    use act_studio::runtime::steer::RowSteering;

    let Some(path) = common::demo_model() else { return };
    let m = Arc::new(LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}")));
    let prompts: Vec<Vec<u32>> = (0..8u32)
        .map(|i| (0..9 + 2 * i).map(|t| 100 + 7 * t + i).collect())
        .collect();
    let seq = prompts.iter().map(Vec::len).max().unwrap_or(0);
    assert!(
        m.model.same_kernels_prompt_max() >= seq,
        "prompts of {seq} tokens must stay on the decoding kernels (limit {})",
        m.model.same_kernels_prompt_max()
    );
    let vocab = m.config().vocab_size;
    let alone: Vec<Vec<f32>> = prompts
        .iter()
        .map(|p| {
            let (mut cache, mut done) = (vec![m.cache_for(64)], 0);
            let mut hooks = RowSteering::new(vec![None]);
            prefill_chunk(&m, p, &mut done, &mut cache, &mut hooks, MatPath::Quantized)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("no logits"))
        })
        .collect();
    let mut tokens = Vec::new();
    for p in &prompts {
        tokens.extend_from_slice(p);
        tokens.resize(tokens.len() + seq - p.len(), 0);
    }
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let mut caches: Vec<_> = prompts.iter().map(|_| m.cache_for(64)).collect();
    let batch = Batch {
        tokens: &tokens,
        batch: prompts.len(),
        seq,
        valid: &lens,
        prompt_lens: &lens,
    };
    let mut hooks = RowSteering::new(vec![None; prompts.len()]);
    let out = m
        .model
        .forward(
            &batch,
            &mut caches,
            &mut hooks,
            MatPath::Quantized,
            LogitsMode::Last,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.logits.len(), vocab * prompts.len());
    for (i, (together, alone)) in out.logits.chunks_exact(vocab).zip(&alone).enumerate() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(together) == bits(alone),
            "prompt {i} ({} tokens) in the padded batch",
            lens[i]
        );
    }
    // Padding is never stored: each cache holds its prompt only.
    assert!(caches.iter().zip(&lens).all(|(c, &n)| c.len() == n));

    // Through the engine: a running job keeps it busy while six short jobs arrive.
    let engine = BatchEngine::start(m.clone(), 8, u64::MAX, 0).unwrap_or_else(|e| panic!("{e}"));
    let log: Log = Arc::default();
    let labels = ["a", "b", "c", "d", "e", "f"];
    if engine
        .submit(greedy_job(prompts[7].clone(), 1, 24, "busy", &log))
        .is_err()
    {
        panic!("the engine refused a job");
    }
    for (label, p) in labels.iter().zip(&prompts) {
        if engine.submit(greedy_job(p.clone(), 1, 12, label, &log)).is_err() {
            panic!("the engine refused a job");
        }
    }
    wait_for(&log, "every job's end", |e| {
        e.iter()
            .filter(|(_, ev)| matches!(ev, CompletionEvent::Finished { .. }))
            .count()
            == labels.len() + 1
    });
    let all = events(&log);
    for (label, p) in labels.iter().zip(&prompts) {
        assert_eq!(
            text_of(&all, label),
            common::greedy(&m, p, 12).text,
            "job {label}"
        );
    }
    assert_eq!(text_of(&all, "busy"), common::greedy(&m, &prompts[7], 24).text);
}

/// The prompt tokens the prompt cache gave job `label` (its `PromptDone` event).
fn cached_of(events: &[(&'static str, CompletionEvent)], label: &str) -> Option<usize> {
    events.iter().find_map(|(l, e)| match e {
        CompletionEvent::PromptDone { cached } if *l == label => Some(*cached),
        _ => None,
    })
}

/// A job's label, prompt and steering.
type Steered<'a> = (&'static str, &'a Vec<u32>, &'a Option<Arc<SteeringPlan>>);

/// The bits of job `label`'s reported log-probabilities: each token's, then its alternatives'.
fn logprob_bits(events: &[(&'static str, CompletionEvent)], label: &str) -> Vec<u32> {
    events
        .iter()
        .filter(|(l, _)| *l == label)
        .flat_map(|(_, e)| match e {
            CompletionEvent::Text { logprobs, .. } => logprobs
                .iter()
                .flat_map(|t| std::iter::once(t.logprob).chain(t.top.iter().map(|a| a.1)))
                .map(f32::to_bits)
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// Runs `job` on `engine` and waits for its end; its events land in `log` under `label`.
fn run_one(engine: &BatchEngine, job: CompletionJob, label: &'static str, log: &Log) {
    if engine.submit(job).is_err() {
        panic!("the engine refused job {label}");
    }
    wait_for(log, label, |e| {
        e.iter()
            .any(|(l, ev)| *l == label && matches!(ev, CompletionEvent::Finished { .. }))
    });
}

#[test]
fn the_prompt_cache_skips_a_repeated_prompt_and_whole_shared_chunks_with_the_same_tokens() {
    let Some(path) = common::demo_model() else { return };
    let m = Arc::new(LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}")));
    let encode = |t: &str| m.tokenizer.encode(t).unwrap_or_else(|e| panic!("{e}"));
    let short = encode("Once upon a time, in a small village by the sea, there lived");
    let para = "The lighthouse keeper wrote down the weather every morning, and the fishermen \
                read his notes before they left the harbour. ";
    let mut long = encode(&para.repeat(30));
    assert!(long.len() > PREFILL_CHUNK + 60, "{} tokens", long.len());
    long.truncate(PREFILL_CHUNK + 60);
    let mut extended = long.clone();
    extended.extend(encode(" One stormy night, the keeper saw a light on the water."));
    // A long prompt that shares less than a chunk with the others.
    let mut other = long.clone();
    other[PREFILL_CHUNK - 5] = short[0];

    let cached = BatchEngine::start(m.clone(), 8, u64::MAX, 256 << 20).unwrap_or_else(|e| panic!("{e}"));
    let plain = BatchEngine::start(m.clone(), 8, u64::MAX, 0).unwrap_or_else(|e| panic!("{e}"));
    let (log, reference): (Log, Log) = (Arc::default(), Arc::default());
    let sampled = |prompt: Vec<u32>, label: &'static str, log: &Log| {
        let mut job = greedy_job(prompt, 2, 10, label, log);
        job.sampling = SamplingConfig {
            temperature: 0.8,
            seed: 7,
            ..SamplingConfig::greedy()
        };
        job
    };
    // Steering by a fitted concept: on every token, and on the last token of each chunk
    // only (a prompt's last chunk is steered differently from the others).
    let fitted = act_studio::pipeline::fit_concept::fit_concept(
        &m,
        &common::builtin_fit("football", Some(16)),
        &std::sync::atomic::AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let concepts = ConceptSet::from_checked(&m, vec![Arc::new(fitted.maps)]);
    let plan = |scope| {
        concepts
            .plan(&[("football".to_string(), 1.0)], scope)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let (all, last) = (plan(TokenScope::All), plan(TokenScope::LastToken));
    assert!(all.is_some() && last.is_some());
    let jobs: [Steered; 11] = [
        ("short1", &short, &None),
        ("short2", &short, &None),
        ("long", &long, &None),
        ("extended", &extended, &None),
        ("other", &other, &None),
        ("short_all1", &short, &all),
        ("short_all2", &short, &all),
        ("long_all", &long, &all),
        ("extended_all", &extended, &all),
        ("long_last", &long, &last),
        ("extended_last", &extended, &last),
    ];
    for (label, prompt, steering) in jobs {
        // Greedy, with the log-probabilities of each token and two alternatives: their bits
        // show any difference in the numbers, not only in the picks.
        let job = |log: &Log| {
            let mut job = greedy_job(prompt.clone(), 1, 10, label, log);
            job.steering = steering.clone();
            job.logprobs = Some(2);
            job
        };
        run_one(&cached, job(&log), label, &log);
        run_one(&plain, job(&reference), label, &reference);
    }
    run_one(
        &cached,
        sampled(short.clone(), "sampled1", &log),
        "sampled1",
        &log,
    );
    run_one(
        &cached,
        sampled(short.clone(), "sampled2", &log),
        "sampled2",
        &log,
    );
    run_one(
        &plain,
        sampled(short.clone(), "sampled1", &reference),
        "sampled1",
        &reference,
    );

    let (got, want) = (events(&log), events(&reference));
    // What the cache gave: nothing the first time, the whole prompt the second; the first
    // chunk of a long prompt extended; nothing of a long prompt that differs inside it.
    assert_eq!(cached_of(&got, "short1"), Some(0));
    assert_eq!(cached_of(&got, "short2"), Some(short.len()));
    assert_eq!(cached_of(&got, "long"), Some(0));
    assert_eq!(cached_of(&got, "extended"), Some(PREFILL_CHUNK));
    assert_eq!(cached_of(&got, "other"), Some(0));
    // Steered: a hit needs the same plan; the last-token scope reuses whole chunks too.
    assert_eq!(cached_of(&got, "short_all1"), Some(0), "steered unlike short1");
    assert_eq!(cached_of(&got, "short_all2"), Some(short.len()));
    assert_eq!(cached_of(&got, "long_all"), Some(0));
    assert_eq!(cached_of(&got, "extended_all"), Some(PREFILL_CHUNK));
    assert_eq!(cached_of(&got, "long_last"), Some(0));
    assert_eq!(cached_of(&got, "extended_last"), Some(PREFILL_CHUNK));
    assert_eq!(cached_of(&got, "sampled1"), Some(short.len()));
    assert_eq!(
        cached_of(&want, "short2"),
        Some(0),
        "the cache is off in the reference engine"
    );
    // The same tokens as without the cache, greedy and sampled (both samples).
    for (label, ..) in jobs {
        assert_eq!(text_of(&got, label), text_of(&want, label), "job {label}");
        let bits = logprob_bits(&got, label);
        assert_eq!(
            bits.len(),
            10 * 3,
            "job {label}: 10 tokens, each with 2 alternatives"
        );
        assert_eq!(bits, logprob_bits(&want, label), "job {label}");
    }
    assert_ne!(
        logprob_bits(&got, "extended_all"),
        logprob_bits(&got, "extended"),
        "steering changes the numbers"
    );
    assert_eq!(text_of(&got, "short2"), common::greedy(&m, &short, 10).text);
    let per_sample = |events: &[(&'static str, CompletionEvent)], label: &str| -> Vec<String> {
        (0..2)
            .map(|i| {
                events
                    .iter()
                    .filter_map(|(l, e)| match e {
                        CompletionEvent::Text { index, text, .. } if *l == label && *index == i => {
                            Some(text.as_str())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .collect()
    };
    let sampled_ref = per_sample(&want, "sampled1");
    assert_ne!(sampled_ref[0], sampled_ref[1], "two samples with their own seeds");
    assert_eq!(per_sample(&got, "sampled1"), sampled_ref);
    assert_eq!(per_sample(&got, "sampled2"), sampled_ref);
}
