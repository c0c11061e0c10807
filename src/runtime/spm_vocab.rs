//! What a SentencePiece tokenizer is built from: the `tokenizer.ggml.*` metadata of a GGUF file
//! (token texts, scores, types, special ids and flags), llama.cpp's token types and attributes,
//! and the errors of reading them. The tokenizer itself is `spm_tokenizer.rs`.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

/// Token attribute bits (llama.cpp's `llama_token_attr`).
pub mod attr {
    /// Unknown token (`<unk>`).
    pub const UNKNOWN: u32 = 1 << 0;
    /// Unused token.
    pub const UNUSED: u32 = 1 << 1;
    /// Ordinary text token.
    pub const NORMAL: u32 = 1 << 2;
    /// Control token (`<bos>`, `<start_of_turn>`, …).
    pub const CONTROL: u32 = 1 << 3;
    /// User-defined token, always matched as a whole in the text.
    pub const USER_DEFINED: u32 = 1 << 4;
    /// Byte-fallback token `<0xXX>`.
    pub const BYTE: u32 = 1 << 5;
    /// Whitespace before the token is dropped when it is split out of the text.
    pub const LSTRIP: u32 = 1 << 7;
    /// Whitespace after the token is dropped when it is split out of the text.
    pub const RSTRIP: u32 = 1 << 8;
}

/// Token types as stored in `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
pub mod token_type {
    /// Undefined.
    pub const UNDEFINED: i32 = 0;
    /// Normal.
    pub const NORMAL: i32 = 1;
    /// Unknown.
    pub const UNKNOWN: i32 = 2;
    /// Control.
    pub const CONTROL: i32 = 3;
    /// User-defined.
    pub const USER_DEFINED: i32 = 4;
    /// Unused.
    pub const UNUSED: i32 = 5;
    /// Byte.
    pub const BYTE: i32 = 6;
}

/// Why a SentencePiece tokenizer could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum SpmError {
    /// A required metadata key is absent.
    #[error("GGUF metadata has no `{0}`")]
    MissingKey(&'static str),
    /// A metadata value has the wrong type.
    #[error("GGUF metadata `{key}` is not {expected}")]
    WrongType {
        /// The key.
        key: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// A per-token array is shorter than the token list.
    #[error("`{key}` has {got} entries but the vocabulary has {tokens} tokens")]
    TooShort {
        /// The key.
        key: &'static str,
        /// Its length.
        got: usize,
        /// The number of tokens.
        tokens: usize,
    },
    /// No tokens at all, or more than fit a `u32` id.
    #[error("the vocabulary has {0} tokens (it needs 1 to 2^32 - 1)")]
    VocabSize(usize),
    /// Byte fallback needs a token for this byte and the vocabulary has none.
    #[error("the vocabulary has no byte token <0x{0:02X}> for byte fallback")]
    NoByteToken(u8),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary ({n} tokens)")]
    BadId {
        /// The id.
        id: u32,
        /// The vocabulary size.
        n: usize,
    },
}

/// What a SentencePiece tokenizer is built from (the `tokenizer.ggml.*` metadata).
#[derive(Debug, Clone)]
pub struct SpmVocab {
    /// Token texts, with `▁` for spaces; the index is the id.
    pub tokens: Vec<String>,
    /// Merge scores per token (higher merges first); empty means all 0.
    pub scores: Vec<f32>,
    /// Token types per token ([`token_type`]); empty means all normal.
    pub token_types: Vec<i32>,
    /// BOS id.
    pub bos: Option<u32>,
    /// EOS id.
    pub eos: Option<u32>,
    /// End-of-turn id, when the metadata names one.
    pub eot: Option<u32>,
    /// End-of-message id, when the metadata names one.
    pub eom: Option<u32>,
    /// Prepend BOS when encoding with special tokens.
    pub add_bos: bool,
    /// Append EOS when encoding with special tokens.
    pub add_eos: bool,
    /// Prefix the text (and every piece after a special token) with a space.
    pub add_space_prefix: bool,
    /// `general.name` (llama.cpp strips whitespace after special tokens for Phi-3 models).
    pub model_name: String,
}

impl SpmVocab {
    /// A vocabulary with llama.cpp's defaults for SPM models: BOS 1, EOS 2, BOS added, EOS not,
    /// space prefix on, all scores 0, all tokens normal.
    pub fn with_defaults(tokens: Vec<String>) -> Self {
        Self {
            tokens,
            scores: Vec::new(),
            token_types: Vec::new(),
            bos: Some(1),
            eos: Some(2),
            eot: None,
            eom: None,
            add_bos: true,
            add_eos: false,
            add_space_prefix: true,
            model_name: String::new(),
        }
    }

    /// Reads the vocabulary from GGUF metadata (`tokenizer.ggml.tokens`, `.scores`,
    /// `.token_type`, `.bos_token_id`, `.eos_token_id`, `.eot_token_id`, `.eom_token_id`,
    /// `.add_bos_token`, `.add_eos_token`, `.add_space_prefix`, and `general.name`); absent
    /// keys take llama.cpp's SPM defaults.
    pub fn from_gguf_metadata(md: &HashMap<String, Value>) -> Result<Self, SpmError> {
        const TOKENS: &str = "tokenizer.ggml.tokens";
        const SCORES: &str = "tokenizer.ggml.scores";
        const TYPES: &str = "tokenizer.ggml.token_type";
        let tokens = md
            .get(TOKENS)
            .ok_or(SpmError::MissingKey(TOKENS))?
            .to_vec()
            .map_err(|_| SpmError::WrongType {
                key: TOKENS,
                expected: "an array of strings",
            })?
            .iter()
            .map(|v| {
                v.to_string().cloned().map_err(|_| SpmError::WrongType {
                    key: TOKENS,
                    expected: "an array of strings",
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let scores = match md.get(SCORES) {
            None => Vec::new(),
            Some(v) => v
                .to_vec()
                .map_err(|_| SpmError::WrongType {
                    key: SCORES,
                    expected: "an array of numbers",
                })?
                .iter()
                .map(|s| {
                    s.to_f32()
                        .ok()
                        .or_else(|| s.to_i32().ok().map(|i| i as f32))
                        .ok_or(SpmError::WrongType {
                            key: SCORES,
                            expected: "an array of f32 or i32",
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let token_types = match md.get(TYPES) {
            None => Vec::new(),
            Some(v) => v
                .to_vec()
                .map_err(|_| SpmError::WrongType {
                    key: TYPES,
                    expected: "an array of integers",
                })?
                .iter()
                .map(|t| {
                    t.to_i32()
                        .ok()
                        .or_else(|| t.to_u32().ok().and_then(|u| i32::try_from(u).ok()))
                        .ok_or(SpmError::WrongType {
                            key: TYPES,
                            expected: "an array of i32",
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let flag = |key: &str, default: bool| md.get(key).and_then(|v| v.to_bool().ok()).unwrap_or(default);
        let mut v = Self::with_defaults(tokens);
        v.scores = scores;
        v.token_types = token_types;
        // A stated id outside the vocabulary keeps the default (as llama.cpp does).
        let n = v.tokens.len();
        let id = |key: &str, default: Option<u32>| match md_u32(md, key) {
            Some(id) if (id as usize) < n => Some(id),
            _ => default,
        };
        v.bos = id("tokenizer.ggml.bos_token_id", v.bos);
        v.eos = id("tokenizer.ggml.eos_token_id", v.eos);
        v.eot = id("tokenizer.ggml.eot_token_id", None);
        v.eom = id("tokenizer.ggml.eom_token_id", None);
        v.add_bos = flag("tokenizer.ggml.add_bos_token", true);
        v.add_eos = flag("tokenizer.ggml.add_eos_token", false);
        v.add_space_prefix = flag("tokenizer.ggml.add_space_prefix", true);
        v.model_name = md
            .get("general.name")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        Ok(v)
    }
}

fn md_u32(md: &HashMap<String, Value>, key: &str) -> Option<u32> {
    let v = md.get(key)?;
    v.to_u32()
        .ok()
        .or_else(|| v.to_u64().ok().and_then(|x| u32::try_from(x).ok()))
        .or_else(|| v.to_i32().ok().and_then(|x| u32::try_from(x).ok()))
        .or_else(|| v.to_i64().ok().and_then(|x| u32::try_from(x).ok()))
}
