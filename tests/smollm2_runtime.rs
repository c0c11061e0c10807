//! Runtime behaviour on the demo model: tokenizer, chat template, padding, bad input.

mod common;

use std::io::Write;

use act_studio::runtime::forward::{Batch, LogitsMode};
use act_studio::runtime::linear::MatPath;
use act_studio::runtime::tokenizer::ChatMessage;
use act_studio::runtime::{Activation, HookFlow, HookKind, HookPoint, Hooks, LoadedModel, RuntimeError};

fn model() -> Option<LoadedModel> {
    let p = common::demo_model()?;
    Some(LoadedModel::load(&p).unwrap_or_else(|e| panic!("{e}")))
}

#[test]
fn tokenizer_special_tokens_round_trip_and_chat_template() {
    let Some(m) = model() else { return };
    let t = &m.tokenizer;
    assert_eq!(t.encode("<|im_start|>").unwrap_or_default(), vec![1]);
    assert_eq!(t.encode("<|im_end|>").unwrap_or_default(), vec![2]);
    let ids = t.encode("<|im_start|>user\nhi<|im_end|>").unwrap_or_default();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    for text in [
        "Hello, world!",
        "  leading and   inner   spaces\tand tabs\nnewlines\n\n",
        "digits 1234567890 and 3.14159",
        "unicode: café, naïve, 日本語, emoji 🦒, Ελληνικά",
        "",
    ] {
        let ids = t.encode(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            t.decode(&ids, false).unwrap_or_default(),
            text,
            "round trip of {text:?}"
        );
    }
    // SmolLM2's pre-tokenizer splits digits one by one.
    let digits = t.encode("2024").unwrap_or_default();
    assert_eq!(digits.len(), 4, "{digits:?}");
    let chat = t
        .render_chat(&[ChatMessage::user("Write one sentence about the ocean.")], true)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        chat,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWrite one sentence about the ocean.<|im_end|>\n<|im_start|>assistant\n"
    );
    let with_system = t
        .render_chat(
            &[
                ChatMessage {
                    role: "system".into(),
                    content: "Be brief.".into(),
                },
                ChatMessage::user("Hi"),
            ],
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        with_system,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

/// Records one hook point's activation.
struct Grab(HookPoint, Vec<f32>, [usize; 3]);

impl Hooks for Grab {
    fn wants(&self, p: HookPoint) -> bool {
        p == self.0
    }
    fn on_activation(&mut self, _: HookPoint, a: Activation<'_>) -> act_studio::runtime::Result<HookFlow> {
        self.1 = a.data.to_vec();
        self.2 = a.shape;
        Ok(HookFlow::Stop)
    }
}

#[test]
fn padding_does_not_change_activations() {
    let Some(m) = model() else { return };
    let d = m.config().hidden_size;
    let short = m.tokenizer.encode("The ocean is deep.").unwrap_or_default();
    let long = m
        .tokenizer
        .encode("Football fans filled the stadium on a cold Saturday night.")
        .unwrap_or_default();
    assert!(long.len() > short.len());
    for point in [
        HookPoint {
            layer: 0,
            kind: HookKind::AttnNorm,
        },
        HookPoint {
            layer: 7,
            kind: HookKind::MlpNorm,
        },
        HookPoint {
            layer: 29,
            kind: HookKind::Resid,
        },
    ] {
        for path in [MatPath::Dense, MatPath::Quantized] {
            let mut alone = Grab(point, Vec::new(), [0; 3]);
            let b = Batch {
                tokens: &short,
                batch: 1,
                seq: short.len(),
                valid: &[short.len()],
                prompt_lens: &[short.len()],
            };
            let out = m
                .model
                .forward(&b, &mut [m.new_cache()], &mut alone, path, LogitsMode::None);
            assert!(out.is_ok_and(|o| o.stopped));
            // The short sentence right-padded after the long one.
            let seq = long.len();
            let mut tokens = long.clone();
            tokens.extend(short.iter().copied());
            tokens.resize(2 * seq, 0);
            let mut batched = Grab(point, Vec::new(), [0; 3]);
            let b = Batch {
                tokens: &tokens,
                batch: 2,
                seq,
                valid: &[seq, short.len()],
                prompt_lens: &[seq, seq],
            };
            let mut caches = [m.new_cache(), m.new_cache()];
            m.model
                .forward(&b, &mut caches, &mut batched, path, LogitsMode::None)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(batched.2, [2, seq, d]);
            let padded_row = &batched.1[seq * d..(seq + short.len()) * d];
            let diff = alone
                .1
                .iter()
                .zip(padded_row)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            println!("{point} {path:?}: max |Δ| alone vs padded batch = {diff:e}");
            assert!(diff <= 1e-4, "{point}: padding changed activations by {diff}");
        }
    }
}

#[test]
fn bad_model_files_give_clear_errors() {
    let Some(path) = common::demo_model() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // A truncated GGUF: header intact, tensor data cut.
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap_or_else(|e| panic!("{e}"));
    let e = LoadedModel::load(&cut).map(|_| ()).unwrap_err();
    assert!(
        matches!(e, RuntimeError::BadModel { .. } | RuntimeError::BadGguf { .. }),
        "{e:?}"
    );
    // Header cut mid-way.
    std::fs::write(&cut, &bytes[..1000]).unwrap_or_else(|e| panic!("{e}"));
    let e = LoadedModel::load(&cut).map(|_| ()).unwrap_err();
    assert!(matches!(e, RuntimeError::BadGguf { .. }), "{e:?}");
    // Not a GGUF at all.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a model").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        LoadedModel::load(&junk),
        Err(RuntimeError::BadGguf { .. })
    ));
    // An unsupported architecture: same file, architecture renamed.
    let other = dir.path().join("other-arch.gguf");
    {
        use candle_core::quantized::gguf_file;
        let mut f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let content = gguf_file::Content::read(&mut f).unwrap_or_else(|e| panic!("{e}"));
        let arch = gguf_file::Value::String("mamba".into());
        let md: Vec<(&str, &gguf_file::Value)> = content
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), if k == "general.architecture" { &arch } else { v }))
            .collect();
        let norm = content
            .tensor(&mut f, "output_norm.weight", &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = std::fs::File::create(&other).unwrap_or_else(|e| panic!("{e}"));
        gguf_file::write(&mut out, &md, &[("output_norm.weight", &norm)]).unwrap_or_else(|e| panic!("{e}"));
        out.flush().unwrap_or_else(|e| panic!("{e}"));
    }
    let e = LoadedModel::load(&other).map(|_| ()).unwrap_err();
    assert!(
        matches!(e, RuntimeError::UnsupportedArch { ref arch, .. } if arch == "mamba"),
        "{e:?}"
    );
    assert!(e.to_string().contains("mamba") && e.to_string().contains("llama"));
    // A folder without config.json.
    let e = LoadedModel::load(dir.path()).map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
    // A missing file.
    assert!(matches!(
        LoadedModel::load(&dir.path().join("nope.gguf")),
        Err(RuntimeError::Io { .. })
    ));
}

#[test]
fn bad_batches_are_errors() {
    let Some(m) = model() else { return };
    let mut hooks = act_studio::runtime::NoHooks;
    let run = |tokens: &[u32], valid: &[usize], hooks: &mut act_studio::runtime::NoHooks| {
        let b = Batch {
            tokens,
            batch: 1,
            seq: tokens.len(),
            valid,
            prompt_lens: &[1],
        };
        m.model
            .forward(
                &b,
                &mut [m.new_cache()],
                hooks,
                MatPath::Quantized,
                LogitsMode::Last,
            )
            .map(|_| ())
    };
    assert!(matches!(
        run(&[999_999], &[1], &mut hooks),
        Err(RuntimeError::BadInput(_))
    ));
    assert!(matches!(
        run(&[1, 2], &[3], &mut hooks),
        Err(RuntimeError::BadInput(_))
    ));
    assert!(matches!(
        run(&[], &[0], &mut hooks),
        Err(RuntimeError::BadInput(_))
    ));
}

#[test]
fn perplexity_ranks_real_text_below_scrambled_text_and_cancel_stops() {
    use act_studio::runtime::generate::{GenerateOptions, generate, perplexity};
    use std::sync::atomic::AtomicBool;
    let Some(m) = model() else { return };
    let text = "The ocean covers about seventy percent of the surface of the Earth. It is divided into \
                several large basins, and its water is salty because rivers carry dissolved minerals \
                from the land into the sea.";
    let ids = m.tokenizer.encode(text).unwrap_or_default();
    let no = AtomicBool::new(false);
    let real =
        perplexity(&m, &ids, 512, &mut act_studio::runtime::NoHooks, &no).unwrap_or_else(|e| panic!("{e}"));
    let mut scrambled = ids.clone();
    scrambled.reverse();
    let bad = perplexity(&m, &scrambled, 512, &mut act_studio::runtime::NoHooks, &no)
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "perplexity: real {:.2}, reversed {:.2} ({} tokens)",
        real.perplexity, bad.perplexity, real.tokens
    );
    assert_eq!(real.tokens, ids.len() - 1);
    assert!(
        real.perplexity > 1.0 && real.perplexity < 40.0,
        "{}",
        real.perplexity
    );
    assert!(bad.perplexity > 5.0 * real.perplexity);
    // Windows: scoring in windows of 8 tokens cannot beat the full context.
    let windowed =
        perplexity(&m, &ids, 8, &mut act_studio::runtime::NoHooks, &no).unwrap_or_else(|e| panic!("{e}"));
    assert!(windowed.perplexity > real.perplexity);
    assert!(matches!(
        perplexity(&m, &ids[..1], 512, &mut act_studio::runtime::NoHooks, &no),
        Err(RuntimeError::BadInput(_))
    ));

    let cancel = AtomicBool::new(true);
    let r = generate(
        &m,
        &ids,
        &GenerateOptions::default(),
        &mut act_studio::runtime::NoHooks,
        &cancel,
        &mut |_| true,
    );
    assert!(matches!(r, Err(RuntimeError::Cancelled)));
    // Same seed, same sample; the callback can stop generation.
    let opts = GenerateOptions {
        max_tokens: 12,
        ..Default::default()
    };
    let run = || {
        generate(
            &m,
            &ids,
            &opts,
            &mut act_studio::runtime::NoHooks,
            &no,
            &mut |_| true,
        )
        .map(|g| g.tokens)
        .unwrap_or_default()
    };
    assert_eq!(run(), run());
    let mut n = 0;
    let g = generate(
        &m,
        &ids,
        &opts,
        &mut act_studio::runtime::NoHooks,
        &no,
        &mut |_| {
            n += 1;
            n < 3
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.tokens.len(), 3);
}

#[test]
fn streamed_pieces_add_up_to_the_decoded_text() {
    use act_studio::runtime::generate::{GenerateOptions, generate};
    use act_studio::runtime::sampling::SamplingConfig;
    use std::sync::atomic::AtomicBool;
    let Some(m) = model() else { return };
    for (prompt, temperature) in [
        ("Écris une phrase en français sur la mer 🌊:", 0.9),
        ("Once upon a time", 0.0),
    ] {
        let ids = m.tokenizer.encode(prompt).unwrap_or_default();
        let opts = GenerateOptions {
            max_tokens: 60,
            sampling: SamplingConfig {
                temperature,
                seed: 3,
                ..SamplingConfig::default()
            },
            ..Default::default()
        };
        let mut streamed = String::new();
        let g = generate(
            &m,
            &ids,
            &opts,
            &mut act_studio::runtime::NoHooks,
            &AtomicBool::new(false),
            &mut |p| {
                streamed.push_str(p);
                true
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let whole = m.tokenizer.decode(&g.tokens, true).unwrap_or_default();
        assert_eq!(streamed, whole, "{prompt}");
        assert_eq!(g.text, whole);
        assert!(!whole.is_empty());
    }
}

/// A prompt longer than one prefill chunk runs in chunks through the KV cache: on the dense
/// path (no 8-bit activation rounding to amplify last bits) its last logits equal one pass
/// over the whole prompt within float noise.
#[test]
fn a_long_prompt_prefills_in_chunks_like_one_pass() {
    use act_studio::runtime::generate::{PREFILL_CHUNK, prefill};
    let Some(m) = model() else { return };
    let text = "The lighthouse keeper climbed the stairs each evening to light the lamp. ".repeat(80);
    let ids = m.tokenizer.encode(&text).unwrap_or_else(|e| panic!("{e}"));
    assert!(ids.len() > 2 * PREFILL_CHUNK, "{} tokens", ids.len());
    let batch = Batch {
        tokens: &ids,
        batch: 1,
        seq: ids.len(),
        valid: &[ids.len()],
        prompt_lens: &[ids.len()],
    };
    let mut cache = vec![m.new_cache()];
    let whole = m
        .model
        .forward(
            &batch,
            &mut cache,
            &mut act_studio::runtime::NoHooks,
            MatPath::Dense,
            LogitsMode::Last,
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .logits;
    let mut cache = vec![m.new_cache()];
    let chunked = prefill(
        &m,
        &ids,
        &mut cache,
        &mut act_studio::runtime::NoHooks,
        MatPath::Dense,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cache[0].len(), ids.len());
    let d = whole
        .iter()
        .zip(&chunked)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("{} tokens: chunked vs whole max |Δ| {d:.2e}", ids.len());
    assert_eq!(whole.len(), chunked.len());
    assert!(d <= 1e-3, "chunked prefill differs by {d}");
}

/// A long prompt prefills through the tiled product (`MatPath::for_prompt`), which
/// computes the quantized kernels' products up to float rounding. Downstream 8-bit activation
/// rounding turns last-bit differences into occasional one-step flips, so the logits differ on
/// the scale the decode-step oracle allows (`smollm2_oracle`: ≤ 1.5; measured here 0.41 at 96
/// tokens on logits of magnitude ≈ 20), and the greedy token (a wide margin here) is the same.
/// Where the CPU holds Q4_1 matrices in sixteen-row groups (AVX-512 VNNI), whose kernels outrun
/// the tiled product, the prompt stays on the decode kernels instead: the same bits.
#[test]
fn generation_prefills_long_prompts_with_the_tiled_product() {
    use act_studio::runtime::generate::prefill;
    let Some(m) = model() else { return };
    let text = "The lighthouse keeper climbed the stairs each evening to light the lamp, and the ships";
    let ids = m
        .tokenizer
        .encode(&text.repeat(6))
        .unwrap_or_else(|e| panic!("{e}"));
    // Every matrix of the demo model is Q4_1 (the head is tied to the Q8_0 embedding and
    // sees the last token only).
    let min = act_studio::runtime::tiled::min_inputs(act_studio::runtime::quant::QDType::Q4_1);
    assert!(ids.len() >= min, "{} tokens", ids.len());
    let pass = |path| {
        let batch = Batch {
            tokens: &ids,
            batch: 1,
            seq: ids.len(),
            valid: &[ids.len()],
            prompt_lens: &[ids.len()],
        };
        m.model
            .forward(
                &batch,
                &mut [m.new_cache()],
                &mut act_studio::runtime::NoHooks,
                path,
                LogitsMode::Last,
            )
            .unwrap_or_else(|e| panic!("{e}"))
            .logits
    };
    let (tiled, quantized) = (pass(MatPath::Tiled), pass(MatPath::Quantized));
    let generated = prefill(
        &m,
        &ids,
        &mut [m.new_cache()],
        &mut act_studio::runtime::NoHooks,
        MatPath::Quantized,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(generated, tiled, "generation's prefill is not the tiled pass");
    if act_studio::runtime::quant::sixteen_row_groups(act_studio::runtime::quant::QDType::Q4_1) {
        println!("Q4_1 in sixteen-row groups here: the prompt pass runs on the decode kernels");
        assert!(
            tiled
                .iter()
                .zip(&quantized)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "the prompt pass left the decode kernels"
        );
        return;
    }
    assert_ne!(tiled, quantized, "the tiled pass is the quantized one");
    let d = tiled
        .iter()
        .zip(&quantized)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b]));
    println!("{} tokens: tiled vs quantized max |Δ| {d:.3e}", ids.len());
    assert_eq!(argmax(&tiled), argmax(&quantized));
    assert!(
        d <= 1.5,
        "tiled prefill differs from the quantized kernels by {d}"
    );
}

/// `encode_prefix` gives the first ids of the whole text's encoding, and reads only the start
/// of a huge text (a 50 MB dataset line).
#[test]
fn encode_prefix_equals_a_cut_full_encoding_and_skips_the_rest() {
    let Some(m) = model() else { return };
    let t = &m.tokenizer;
    for text in [
        "Football is a family of team sports.",
        "naïve café — 日本語のテキスト, emojis 🎉🎉 and   runs   of   spaces\n\n\ttabs",
        &"word ".repeat(500),
    ] {
        let full = t.encode(text).unwrap_or_else(|e| panic!("{e}"));
        for n in [1, 7, 64, 10_000] {
            let got = t.encode_prefix(text, n).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got[..], full[..full.len().min(n)], "{text:?}, {n} tokens");
        }
    }
    let huge = "All work and no play makes Jack a dull boy. ".repeat(1_200_000);
    let started = std::time::Instant::now();
    let got = t.encode_prefix(&huge, 64).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.len(), 64);
    let s = started.elapsed().as_secs_f64();
    println!("{} MB text: 64 tokens in {s:.3} s", huge.len() / 1_000_000);
}
