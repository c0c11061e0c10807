//! The CLIP tokenizer of a diffusers `tokenizer/` (or `tokenizer_2/`) folder.
//!
//! When the folder has a `tokenizer.json` it is loaded as is; otherwise the equivalent of
//! HF's `CLIPTokenizerFast` is built from `vocab.json` + `merges.txt`: NFC, runs of whitespace
//! collapsed to one space, lowercase; split on CLIP's regex (the matches are the pieces, the
//! whitespace between them is dropped), byte-level mapping without prefix space; BPE with the
//! `</w>` end-of-word suffix and `<|endoftext|>` as unknown token.
//!
//! `tokenizer_config.json` / `special_tokens_map.json` give `model_max_length` (77) and the pad
//! token: SD 1.5 pads with `<|endoftext|>`, SD 2.1 and SDXL's `tokenizer_2` with `!`. Special
//! tokens found in a prompt are matched before the BPE, as transformers' `CLIPTokenizer` does
//! (so a `!` typed into an SD 2.x prompt is the pad token, as in diffusers).

use std::path::Path;

use serde_json::Value;
use tokenizers::decoders::bpe::BPEDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::{Replace, ReplacePattern};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::normalizers::utils::{Lowercase, Sequence as NormSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::error::{DiffusionError, Result};
use super::weights::read_json;

/// CLIP's pre-tokenization regex (the pieces that are kept; whitespace between them is dropped).
pub const CLIP_SPLIT_REGEX: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Default context length of CLIP text encoders.
pub const DEFAULT_MAX_LEN: usize = 77;

const BOS_TEXT: &str = "<|startoftext|>";
const EOS_TEXT: &str = "<|endoftext|>";

fn tok_err(e: impl std::fmt::Display) -> DiffusionError {
    DiffusionError::Tokenizer(e.to_string())
}

/// A CLIP tokenizer producing fixed-length id rows `[max_len]`.
pub struct ClipTokenizer {
    inner: Tokenizer,
    max_len: usize,
    bos: u32,
    eos: u32,
    pad: u32,
}

/// The text of a special token entry: a string or an object with `content`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Reads a JSON file when it exists (`Null` when it does not).
fn optional_json(path: &Path) -> Result<Value> {
    if path.is_file() {
        read_json(path)
    } else {
        Ok(Value::Null)
    }
}

/// Builds HF's `CLIPTokenizerFast` pipeline from `vocab.json` and `merges.txt`.
fn build_from_vocab(vocab_path: &Path, merges_path: &Path, unk: &str) -> Result<Tokenizer> {
    let vocab_json = read_json(vocab_path)?;
    let Value::Object(map) = vocab_json else {
        return Err(tok_err(format!(
            "{}: expected a JSON object of token → id",
            vocab_path.display()
        )));
    };
    let mut vocab = Vocab::default();
    for (token, id) in map {
        let id = id.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| {
            tok_err(format!(
                "{}: token `{token}` has id {id}, not a u32",
                vocab_path.display()
            ))
        })?;
        vocab.insert(token, id);
    }
    let merges_text =
        crate::transport::regular_file::read_regular_to_string(merges_path).map_err(|source| {
            DiffusionError::Io {
                path: merges_path.to_path_buf(),
                source,
            }
        })?;
    let mut merges = Vec::new();
    for (n, line) in merges_text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                merges.push((a.to_string(), b.to_string()))
            }
            _ => {
                return Err(tok_err(format!(
                    "{}: line {}: expected two tokens separated by one space, got `{line}`",
                    merges_path.display(),
                    n + 1
                )));
            }
        }
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk.to_string())
        .end_of_word_suffix("</w>".to_string())
        .continuing_subword_prefix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| tok_err(format!("{}: {e}", vocab_path.display())))?;
    let mut tok = Tokenizer::new(bpe);
    let normalizer = NormSequence::new(vec![
        NFC.into(),
        Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
            .map_err(tok_err)?
            .into(),
        Lowercase.into(),
    ]);
    tok.with_normalizer(Some(normalizer)).map_err(tok_err)?;
    // As HF's converted CLIP tokenizer: the regex matches are the pieces (invert), and the
    // rest (whitespace) is removed.
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT_REGEX.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(tok_err)?;
    tok.with_pre_tokenizer(Some(PreSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])));
    tok.with_decoder(Some(BPEDecoder::new("</w>".into())));
    Ok(tok)
}

impl ClipTokenizer {
    /// Loads the tokenizer of folder `dir` (`tokenizer.json`, or `vocab.json` + `merges.txt`,
    /// plus the optional `tokenizer_config.json` / `special_tokens_map.json`).
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(DiffusionError::MissingComponent {
                folder: dir.parent().unwrap_or(dir).to_path_buf(),
                what: format!("the tokenizer folder {}", dir.display()),
            });
        }
        let config = optional_json(&dir.join("tokenizer_config.json"))?;
        let special_map = optional_json(&dir.join("special_tokens_map.json"))?;
        // special_tokens_map.json wins over tokenizer_config.json, as in transformers for
        // folders without `added_tokens_decoder` (every SD repository): SD 2.x ships pad
        // `<|endoftext|>` in the config but `!` in the map, and diffusers pads with `!`.
        let special = |key: &str| -> Option<String> {
            special_map
                .get(key)
                .and_then(token_text)
                .or_else(|| config.get(key).and_then(token_text))
        };
        let bos_text = special("bos_token").unwrap_or_else(|| BOS_TEXT.into());
        let eos_text = special("eos_token").unwrap_or_else(|| EOS_TEXT.into());
        let unk_text = special("unk_token").unwrap_or_else(|| EOS_TEXT.into());
        let pad_text = special("pad_token").unwrap_or_else(|| eos_text.clone());
        let max_len = config
            .get("model_max_length")
            .and_then(Value::as_u64)
            .filter(|&n| (2..=1_000_000).contains(&n))
            .map_or(DEFAULT_MAX_LEN, |n| n as usize);

        let json_path = dir.join("tokenizer.json");
        let mut inner = if json_path.is_file() {
            Tokenizer::from_file(&json_path).map_err(|e| tok_err(format!("{}: {e}", json_path.display())))?
        } else {
            let vocab = dir.join("vocab.json");
            let merges = dir.join("merges.txt");
            for f in [&vocab, &merges] {
                if !f.is_file() {
                    return Err(DiffusionError::MissingComponent {
                        folder: dir.to_path_buf(),
                        what: format!(
                            "{} (a CLIP tokenizer needs tokenizer.json, or vocab.json and merges.txt)",
                            f.file_name().and_then(|n| n.to_str()).unwrap_or("?")
                        ),
                    });
                }
            }
            build_from_vocab(&vocab, &merges, &unk_text)?
        };
        // We add BOS/EOS, truncate and pad ourselves.
        inner.with_truncation(None).map_err(tok_err)?.with_padding(None);
        // As transformers' CLIPTokenizer, the special tokens are matched in the text first: a
        // pad token `!` (SD 2.x, SDXL's tokenizer_2) typed in a prompt becomes the pad id `!`,
        // not the end-of-word `!</w>` of the BPE.
        let mut specials: Vec<AddedToken> = Vec::new();
        for t in [&bos_text, &eos_text, &pad_text] {
            if inner.token_to_id(t).is_some() && !specials.iter().any(|s| &s.content == t) {
                specials.push(AddedToken::from(t.clone(), true));
            }
        }
        inner.add_special_tokens(specials).map_err(tok_err)?;
        let id = |what: &str, text: &str| {
            inner.token_to_id(text).ok_or_else(|| {
                tok_err(format!(
                    "{}: the {what} token `{text}` is not in the vocabulary",
                    dir.display()
                ))
            })
        };
        let bos = id("BOS", &bos_text)?;
        let eos = id("EOS", &eos_text)?;
        let pad = id("pad", &pad_text)?;
        Ok(Self {
            inner,
            max_len,
            bos,
            eos,
            pad,
        })
    }

    /// Context length of the text encoder (`model_max_length`, 77 for every SD tokenizer).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// End-of-text id (the pooled output is read at its first position).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Start-of-text id.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// Padding id (`<|endoftext|>` for SD 1.5, `!` for SD 2.1 / SDXL `tokenizer_2`).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The ids of `text` without BOS/EOS, truncation or padding.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids back to text (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    /// BOS + tokens + EOS, the tokens truncated so that EOS stays last within `max_len`, then
    /// padded with the pad id: a row of exactly `max_len` ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let tokens = self.tokenize(text)?;
        let keep = tokens.len().min(self.max_len.saturating_sub(2));
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        ids.extend_from_slice(&tokens[..keep]);
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        Ok(ids)
    }

    /// [`Self::encode`] for every text: `[texts.len()][max_len]`.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        texts.iter().map(|t| self.encode(t)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-2's byte → unicode table (as HF's `bytes_to_unicode`).
    fn byte_chars() -> Vec<char> {
        let mut bs: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
            .chain(0xA1..=0xAC)
            .chain(0xAE..=0xFF)
            .collect();
        let mut cs = bs.clone();
        let mut n = 0;
        for b in 0..256u32 {
            if !bs.contains(&b) {
                bs.push(b);
                cs.push(256 + n);
                n += 1;
            }
        }
        let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
        pairs.sort();
        pairs
            .into_iter()
            .map(|(_, c)| char::from_u32(c).unwrap())
            .collect()
    }

    /// A tiny CLIP vocab: bytes, bytes + `</w>`, merges building "a</w>", "photo</w>",
    /// "of</w>", "cat</w>", then the two special tokens.
    fn write_vocab(dir: &Path, pad: &str, max_len: Option<usize>) -> Vec<String> {
        let mut vocab: Vec<String> = Vec::new();
        for c in byte_chars() {
            vocab.push(c.to_string());
        }
        for c in byte_chars() {
            vocab.push(format!("{c}</w>"));
        }
        let merges = [
            ("p", "h"),
            ("o", "t"),
            ("ot", "o</w>"),
            ("ph", "oto</w>"),
            ("o", "f</w>"),
            ("c", "a"),
            ("ca", "t</w>"),
        ];
        for (a, b) in merges {
            vocab.push(format!("{a}{b}"));
        }
        vocab.push(BOS_TEXT.into());
        vocab.push(EOS_TEXT.into());
        let map: serde_json::Map<String, Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), Value::from(i as u64)))
            .collect();
        std::fs::write(dir.join("vocab.json"), Value::Object(map).to_string()).unwrap();
        let mut m = String::from("#version: 0.2\n");
        for (a, b) in merges {
            m.push_str(&format!("{a} {b}\n"));
        }
        std::fs::write(dir.join("merges.txt"), m).unwrap();
        let mut cfg = serde_json::json!({
            "bos_token": {"content": BOS_TEXT, "lstrip": false},
            "eos_token": EOS_TEXT,
            "unk_token": EOS_TEXT,
            "pad_token": pad,
        });
        if let Some(n) = max_len {
            cfg["model_max_length"] = n.into();
        }
        std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
        vocab
    }

    fn id_of(vocab: &[String], t: &str) -> u32 {
        vocab.iter().position(|v| v == t).unwrap() as u32
    }

    #[test]
    fn tokenizes_known_words_with_bos_eos_and_padding() {
        let dir = tempfile::tempdir().unwrap();
        let vocab = write_vocab(dir.path(), EOS_TEXT, None);
        let tok = ClipTokenizer::load(dir.path()).unwrap();
        assert_eq!(tok.max_len(), 77);
        let bos = id_of(&vocab, BOS_TEXT);
        let eos = id_of(&vocab, EOS_TEXT);
        assert_eq!(tok.eos_id(), eos);
        assert_eq!(tok.pad_id(), eos);
        let ids = tok.encode("a photo of a cat").unwrap();
        assert_eq!(ids.len(), 77);
        let expect = [
            bos,
            id_of(&vocab, "a</w>"),
            id_of(&vocab, "photo</w>"),
            id_of(&vocab, "of</w>"),
            id_of(&vocab, "a</w>"),
            id_of(&vocab, "cat</w>"),
            eos,
        ];
        assert_eq!(&ids[..7], &expect);
        assert!(ids[7..].iter().all(|&i| i == eos));
        // Unmerged words fall back to characters; punctuation is its own piece.
        let ids = tok.tokenize("dog!").unwrap();
        let expect: Vec<u32> = ["d", "o", "g</w>", "!</w>"]
            .iter()
            .map(|t| id_of(&vocab, t))
            .collect();
        assert_eq!(ids, expect);
        assert_eq!(tok.decode(&tok.encode("a photo").unwrap()).unwrap(), "a photo");
    }

    #[test]
    fn normalises_case_and_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        write_vocab(dir.path(), EOS_TEXT, None);
        let tok = ClipTokenizer::load(dir.path()).unwrap();
        assert_eq!(
            tok.encode("  A   PHOTO\tof\n a Cat ").unwrap(),
            tok.encode("a photo of a cat").unwrap()
        );
    }

    #[test]
    fn truncation_keeps_eos_and_pad_token_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let vocab = write_vocab(dir.path(), "!", Some(8));
        let tok = ClipTokenizer::load(dir.path()).unwrap();
        assert_eq!(tok.max_len(), 8);
        assert_eq!(tok.pad_id(), id_of(&vocab, "!"));
        let ids = tok.encode("cat cat cat cat cat cat cat cat cat").unwrap();
        let cat = id_of(&vocab, "cat</w>");
        assert_eq!(ids.len(), 8);
        assert_eq!(ids[0], tok.bos_id());
        assert!(ids[1..7].iter().all(|&i| i == cat));
        assert_eq!(ids[7], tok.eos_id());
        let short = tok.encode("cat").unwrap();
        assert_eq!(short[..3], [tok.bos_id(), cat, tok.eos_id()]);
        assert!(short[3..].iter().all(|&i| i == tok.pad_id()));
        let batch = tok.encode_batch(&["cat", "a photo"]).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0], short);
    }

    #[test]
    fn special_tokens_map_wins_over_the_config_like_transformers() {
        // SD 2.x: the config says `<|endoftext|>`, the map says `!`; diffusers pads with `!`.
        let dir = tempfile::tempdir().unwrap();
        let vocab = write_vocab(dir.path(), EOS_TEXT, None);
        std::fs::write(
            dir.path().join("special_tokens_map.json"),
            r#"{"pad_token": "!"}"#,
        )
        .unwrap();
        let tok = ClipTokenizer::load(dir.path()).unwrap();
        assert_eq!(tok.pad_id(), id_of(&vocab, "!"));
        assert_eq!(tok.eos_id(), id_of(&vocab, EOS_TEXT));
    }

    #[test]
    fn tokenizer_json_round_trip_matches() {
        let dir = tempfile::tempdir().unwrap();
        write_vocab(dir.path(), EOS_TEXT, None);
        let tok = ClipTokenizer::load(dir.path()).unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        tok.inner.save(dir2.path().join("tokenizer.json"), false).unwrap();
        std::fs::copy(
            dir.path().join("tokenizer_config.json"),
            dir2.path().join("tokenizer_config.json"),
        )
        .unwrap();
        let tok2 = ClipTokenizer::load(dir2.path()).unwrap();
        for text in ["a photo of a cat", "Dog, STYLE!  of 1984"] {
            assert_eq!(tok.encode(text).unwrap(), tok2.encode(text).unwrap());
        }
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = ClipTokenizer::load(&dir.path().join("nope")).err().unwrap();
        assert!(matches!(err, DiffusionError::MissingComponent { .. }), "{err}");
        let err = ClipTokenizer::load(dir.path()).err().unwrap();
        assert!(err.to_string().contains("vocab.json"), "{err}");
        write_vocab(dir.path(), EOS_TEXT, None);
        std::fs::remove_file(dir.path().join("merges.txt")).unwrap();
        let err = ClipTokenizer::load(dir.path()).err().unwrap();
        assert!(err.to_string().contains("merges.txt"), "{err}");
        // A pad token missing from the vocabulary.
        write_vocab(dir.path(), "<pad>", None);
        let err = ClipTokenizer::load(dir.path()).err().unwrap();
        assert!(err.to_string().contains("<pad>"), "{err}");
        // A malformed merges file.
        write_vocab(dir.path(), EOS_TEXT, None);
        std::fs::write(dir.path().join("merges.txt"), "a b c\n").unwrap();
        let err = ClipTokenizer::load(dir.path()).err().unwrap();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
