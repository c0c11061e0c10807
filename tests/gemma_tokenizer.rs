//! Our SentencePiece tokenizer against llama.cpp on the real Gemma 3 270M file
//! (`models/fetch-demo-model.sh gemma3-270m`): for a set of awkward strings, the ids of
//! `tokenize(text, add_bos = true, special = true|false)` and the text of `llama_detokenize`,
//! recorded once with llama-cpp-python (`tools/record-llamacpp-tokens.py`, fixture
//! `tests/fixtures/gemma3_270m_tokens.json`), must be ours exactly. Only the tokenizer is
//! built (from the GGUF metadata); the model's weights are not read.

mod common;

use std::path::PathBuf;

use act_studio::runtime::spm_tokenizer::SpmTokenizer;
use act_studio::runtime::tokenizer::{ChatMessage, StreamDecoder, TextTokenizer};
use candle_core::quantized::gguf_file::Content;

#[derive(serde::Deserialize)]
struct Record {
    text: String,
    ids_special: Vec<u32>,
    ids_plain: Vec<u32>,
    text_unparsed: String,
    text_removed: String,
}

#[derive(serde::Deserialize)]
struct Fixture {
    model: String,
    strings: Vec<Record>,
}

fn content(path: &std::path::Path) -> Content {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Content::read(&mut f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture() -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma3_270m_tokens.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn tokenization_equals_llama_cpp() {
    let Some(path) = common::gemma_model() else { return };
    let fx = fixture();
    assert_eq!(
        path.file_name().and_then(|n| n.to_str()),
        Some(fx.model.as_str()),
        "fixture recorded on another file"
    );
    let c = content(&path);
    let tok = TextTokenizer::from_gguf(&c).unwrap_or_else(|e| panic!("{e}"));
    let spm = SpmTokenizer::from_gguf_metadata(&c.metadata).unwrap_or_else(|e| panic!("{e}"));
    let mut failures = Vec::new();
    for r in &fx.strings {
        let special = tok.encode(&r.text).unwrap_or_else(|e| panic!("{e}"));
        if special != r.ids_special {
            failures.push(format!(
                "{:?} special=true: ours {special:?}, llama.cpp {:?}",
                r.text, r.ids_special
            ));
        }
        let plain = spm.encode(&r.text, true, false).unwrap_or_else(|e| panic!("{e}"));
        if plain != r.ids_plain {
            failures.push(format!(
                "{:?} special=false: ours {plain:?}, llama.cpp {:?}",
                r.text, r.ids_plain
            ));
        }
        let unparsed = tok
            .decode(&r.ids_special, false)
            .unwrap_or_else(|e| panic!("{e}"));
        if unparsed != r.text_unparsed {
            failures.push(format!(
                "{:?} decoded with special tokens: ours {unparsed:?}, llama.cpp {:?}",
                r.text, r.text_unparsed
            ));
        }
        let removed = tok.decode(&r.ids_special, true).unwrap_or_else(|e| panic!("{e}"));
        if removed != r.text_removed {
            failures.push(format!(
                "{:?} decoded without special tokens: ours {removed:?}, llama.cpp {:?}",
                r.text, r.text_removed
            ));
        }
    }
    println!(
        "{} strings, {} mismatches (4 checks each)",
        fx.strings.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "mismatches with llama.cpp:\n{}",
        failures.join("\n")
    );
    assert!(fx.strings.len() >= 25);
}

#[test]
fn gemma_special_tokens_chat_template_and_streaming() {
    let Some(path) = common::gemma_model() else { return };
    let c = content(&path);
    let tok = TextTokenizer::from_gguf(&c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tok.vocab_size(), 262_144);
    assert_eq!(tok.bos(), Some(2));
    assert!(tok.adds_bos());
    assert_eq!(tok.token_str(2).as_deref(), Some("<bos>"));
    assert_eq!(tok.token_str(105).as_deref(), Some("<start_of_turn>"));
    // Generation stops on <eos> and on <end_of_turn>.
    assert_eq!(tok.eos().first(), Some(&1));
    assert!(tok.eos().contains(&106), "{:?}", tok.eos());

    // The chat template renders Gemma's turns; the template's own <bos> is dropped because
    // encoding adds it, so the ids start with exactly one BOS.
    let text = tok
        .render_chat(&[ChatMessage::user("Write one sentence about football.")], true)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        text,
        "<start_of_turn>user\nWrite one sentence about football.<end_of_turn>\n<start_of_turn>model\n"
    );
    let msg = |role: &str, content: &str| ChatMessage {
        role: role.into(),
        content: content.into(),
    };
    let convo = [
        msg("system", "Be brief."),
        msg("user", " Hi "),
        msg("assistant", "Hello."),
        msg("user", "Bye"),
    ];
    assert_eq!(
        tok.render_chat(&convo, false).unwrap_or_else(|e| panic!("{e}")),
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n"
    );
    let ids = tok.encode(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&ids[..3], &[2, 105, 2364]);
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 1);
    assert_eq!(&ids[ids.len() - 3..], &[105, 4368, 107]);

    // Streaming decode of a text with multi-byte characters split over byte tokens equals the
    // whole decode.
    let text = "Café 日本語 🎉 𓀀 done.\n  Indented line";
    let ids = tok.encode(text).unwrap_or_else(|e| panic!("{e}"));
    let mut dec = StreamDecoder::new();
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&dec.push(&tok, id).unwrap_or_else(|e| panic!("{e}")));
    }
    assert_eq!(streamed, text);
    assert_eq!(tok.decode(&ids, true).unwrap_or_else(|e| panic!("{e}")), text);
}
