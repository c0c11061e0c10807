//! Our byte-level BPE (`src/runtime/bpe_tokenizer.rs`) against the Hugging Face `tokenizers`
//! pipeline built from the same GGUF metadata the way the project built it before (a `BPE`
//! model, `Digits(individual)` + `ByteLevel` pre-tokenizers for `smollm`, a `ByteLevel`
//! decoder, the special tokens as added tokens), on the demo model's vocabulary: ids of
//! awkward strings, of every line of the built-in concept datasets and of 3,000 random
//! strings, and the text of encoded and of random id sequences, must be equal. Only the
//! tokenizer is built; the weights are not read.

mod common;

use act_studio::runtime::tokenizer::TextTokenizer;
use candle_core::quantized::gguf_file::{Content, Value};
use rand::{Rng, SeedableRng};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

fn strings(c: &Content, key: &str) -> Vec<String> {
    let v = c.metadata.get(key).unwrap_or_else(|| panic!("no {key}"));
    let arr = v.to_vec().unwrap_or_else(|e| panic!("{key}: {e}"));
    arr.iter()
        .map(|x| x.to_string().cloned().unwrap_or_else(|e| panic!("{key}: {e}")))
        .collect()
}

/// The `tokenizers` pipeline for a GGUF `gpt2` vocabulary (the construction our tokenizer
/// replaced).
fn reference(c: &Content) -> Tokenizer {
    let tokens = strings(c, "tokenizer.ggml.tokens");
    let merges: Vec<(String, String)> = strings(c, "tokenizer.ggml.merges")
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap_or_else(|| panic!("merge {m}"));
            (a.to_string(), b.to_string())
        })
        .collect();
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut t = Tokenizer::new(bpe);
    let pre = c
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tok: PreTokenizerWrapper = if pre == "smollm" {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    };
    t.with_pre_tokenizer(Some(pre_tok));
    t.with_decoder(Some(ByteLevelDecoder::default()));
    let types = c
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .cloned()
        .unwrap_or_default();
    let specials: Vec<AddedToken> = types
        .iter()
        .enumerate()
        .filter(|(_, ty)| matches!(ty, Value::I32(2..=5) | Value::U32(2..=5)))
        .map(|(i, _)| AddedToken::from(tokens[i].clone(), true))
        .collect();
    assert!(!specials.is_empty(), "the demo vocabulary has special tokens");
    t.add_special_tokens(specials).unwrap_or_else(|e| panic!("{e}"));
    t
}

fn awkward() -> Vec<String> {
    [
        "",
        " ",
        "  ",
        "\n",
        "\n\n\n",
        " \n \n",
        "a  b   c    d",
        "tab\tand\t\ttabs \t x",
        "trailing spaces   ",
        "   leading spaces",
        "Hello, world! It's 2026; we'll see what they've done & what I'd say.",
        "DON'T SHOUT 'quoted' ''",
        "1234567890 3.14159 -42 1e10 0x1F ½ ² ٣ 四",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|><|im_end|><|endoftext|>",
        "almost <|im_start but not quite |im_end|>",
        "emoji 🙂👍🏽 and zwj 👩‍👩‍👧 and flags 🇫🇷",
        "日本語のテキストと中文文本",
        "हिन्दी में लिखा गया पाठ (combining marks)",
        "Ελληνικά, русский, עברית, العربية",
        "café naïve façade — “smart quotes” … ‘single’",
        "mixed\u{00a0}nbsp\u{2003}em space\u{200b}zero width",
        "ctrl \u{0001}\u{0007}\u{007f} chars",
        "x\r\ny\rz",
        "snake_case CamelCase kebab-case dot.case @mention #tag $var %mod",
        "   \n\t  x",
        "a'b'c's're've'm'll'd",
        "'s 's 'S",
        "ﬁ ligature, Ⅻ roman, ① circled",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn dataset_lines() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/concepts");
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    entries.sort();
    for p in entries {
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        out.extend(text.lines().map(str::to_string));
    }
    out
}

/// Random strings over pieces that stress the pre-tokenizer: letters of several scripts,
/// digits, spaces and other whitespace, apostrophes, symbols, special-token texts.
fn random_strings(n: usize) -> Vec<String> {
    let pieces = [
        "a",
        "Z",
        "é",
        "ß",
        "ж",
        "中",
        "ا",
        "ि",
        "्",
        "1",
        "9",
        "٣",
        "½",
        " ",
        " ",
        " ",
        "  ",
        "\n",
        "\t",
        "\r",
        "\u{a0}",
        "\u{2003}",
        "'",
        "'s",
        "'ll",
        "'D",
        "!",
        "?",
        ".",
        ",",
        "-",
        "_",
        "🙂",
        "👍🏽",
        "\u{200d}",
        "<|im_start|>",
        "<|im_end|>",
        "<|",
        "|>",
        "<",
        "the",
        " the",
        "ing",
        "Hello",
        "\u{0}",
        "\u{7f}",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x05ee_db9e);
    (0..n)
        .map(|_| {
            let len = rng.random_range(0..24);
            (0..len)
                .map(|_| pieces[rng.random_range(0..pieces.len())])
                .collect()
        })
        .collect()
}

#[test]
fn bpe_equals_the_tokenizers_pipeline_on_the_demo_vocabulary() {
    let Some(path) = common::demo_model() else { return };
    let mut f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let c = Content::read(&mut f).unwrap_or_else(|e| panic!("{e}"));
    let ours = TextTokenizer::from_gguf(&c).unwrap_or_else(|e| panic!("{e}"));
    let theirs = reference(&c);
    assert_eq!(ours.vocab_size(), theirs.get_vocab_size(true));

    let mut texts = awkward();
    texts.extend(dataset_lines());
    texts.extend(random_strings(3000));
    assert!(texts.len() > 3500, "{} texts", texts.len());
    let mut failures = Vec::new();
    for t in &texts {
        let a = ours.encode_plain(t).unwrap_or_else(|e| panic!("{e}"));
        let b = theirs
            .encode(t.as_str(), false)
            .unwrap_or_else(|e| panic!("{e}"))
            .get_ids()
            .to_vec();
        if a != b {
            failures.push(format!("encode {t:?}: ours {a:?}, tokenizers {b:?}"));
            continue;
        }
        for skip in [false, true] {
            let da = ours.decode(&a, skip).unwrap_or_else(|e| panic!("{e}"));
            let db = theirs.decode(&b, skip).unwrap_or_else(|e| panic!("{e}"));
            if da != db {
                failures.push(format!(
                    "decode {t:?} skip={skip}: ours {da:?}, tokenizers {db:?}"
                ));
            }
        }
        if !t.contains("<|") && ours.decode(&a, false).ok().as_deref() != Some(t.as_str()) {
            failures.push(format!("round trip {t:?}"));
        }
    }
    // Random id sequences: split UTF-8 sequences, special tokens, every part of the vocabulary.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let vocab = ours.vocab_size() as u32;
    for _ in 0..2000 {
        let ids: Vec<u32> = (0..rng.random_range(1..12))
            .map(|_| rng.random_range(0..vocab))
            .collect();
        for skip in [false, true] {
            let da = ours.decode(&ids, skip).unwrap_or_else(|e| panic!("{e}"));
            let db = theirs.decode(&ids, skip).unwrap_or_else(|e| panic!("{e}"));
            if da != db {
                failures.push(format!(
                    "decode {ids:?} skip={skip}: ours {da:?}, tokenizers {db:?}"
                ));
            }
        }
    }
    // Speed, printed for information (the machine is shared: no assertion): all texts, ours
    // and theirs alternating, medians of 5.
    let mut times = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        let n: usize = texts
            .iter()
            .map(|t| ours.encode_plain(t).map_or(0, |v| v.len()))
            .sum();
        times.0.push(t0.elapsed().as_secs_f64());
        let t1 = std::time::Instant::now();
        let m: usize = texts
            .iter()
            .map(|t| theirs.encode(t.as_str(), false).map_or(0, |e| e.len()))
            .sum();
        times.1.push(t1.elapsed().as_secs_f64());
        assert_eq!(n, m);
    }
    for v in [&mut times.0, &mut times.1] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "encode {} texts: ours {:.2} ms, tokenizers {:.2} ms (medians of 5)",
        texts.len(),
        times.0[2] * 1e3,
        times.1[2] * 1e3
    );
    for id in [0u32, 1, 2, vocab - 1] {
        assert_eq!(ours.token_str(id), theirs.id_to_token(id), "token {id}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        texts.len(),
        failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}
