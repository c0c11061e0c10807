//! SentencePiece tokenizer from GGUF metadata (`tokenizer.ggml.model` = `llama`), equal to
//! llama.cpp's `LLAMA_VOCAB_TYPE_SPM` tokenizer (`src/llama-vocab.cpp`).
//!
//! Encoding, as llama.cpp does it:
//! 1. Special tokens are split out of the text first, longest text first: control and unknown
//!    tokens only when special tokens are parsed, user-defined tokens always (Gemma's runs of
//!    spaces, tabs and newlines are user-defined tokens).
//! 2. Each remaining piece of text gets a leading space when `add_space_prefix` is set and it
//!    is the first piece or follows a special token; spaces become `▁` (U+2581).
//! 3. The piece is split into UTF-8 characters, and adjacent symbols are merged greedily: a
//!    priority queue of adjacent pairs whose concatenation is in the vocabulary, highest score
//!    of the merged token first, ties to the leftmost pair.
//! 4. Every final symbol is its vocabulary token, or else one byte token `<0xXX>` per byte
//!    (byte fallback).
//!
//! BOS is prepended (and EOS appended) when the model asks for it (`add_bos_token`,
//! `add_eos_token`, llama.cpp's defaults for SPM being BOS yes, EOS no). Decoding writes normal
//! tokens with `▁` turned back into spaces, byte tokens as their byte, user-defined tokens as
//! their text, and control/unknown tokens as their text or nothing.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use candle_core::quantized::gguf_file::Value;

use super::token_table::TokenTable;

pub use super::spm_vocab::{SpmError, SpmVocab, attr, token_type};

/// Token texts that llama.cpp treats as end of generation (and as control tokens) whatever
/// their stored type.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// llama.cpp's SentencePiece (SPM) tokenizer.
#[derive(Debug, Clone)]
pub struct SpmTokenizer {
    /// Token texts by id and ids by text.
    table: TokenTable,
    scores: Vec<f32>,
    attrs: Vec<u32>,
    /// Control, user-defined and unknown tokens, longest text first.
    specials: Vec<u32>,
    /// The token for each byte in byte fallback.
    byte_tokens: [Option<u32>; 256],
    bos: Option<u32>,
    eos: Option<u32>,
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

/// One piece of the text after special tokens are split out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fragment {
    /// A byte range of the text.
    Text(usize, usize),
    /// A special token.
    Token(u32),
}

/// C's `isspace` in the "C" locale.
fn c_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The byte of a byte token `<0xXX>`: the hex digits at bytes 3..5, read like `strtol`.
fn byte_value(text: &str) -> u8 {
    let digits = text.as_bytes().get(3..).unwrap_or_default();
    let mut v: u32 = 0;
    for &b in digits.iter().take(2) {
        match (b as char).to_digit(16) {
            Some(d) => v = v * 16 + d,
            None => break,
        }
    }
    v as u8
}

impl SpmTokenizer {
    /// Builds the tokenizer, applying llama.cpp's load-time rules: empty token texts become
    /// `[EMPTY_i]`, a repeated text maps to its last id, the end-of-generation texts llama.cpp
    /// knows (`<end_of_turn>`, `<|im_end|>`, `</s>`, …) are control tokens and stop generation
    /// together with EOS and any stated EOT/EOM id, and Phi-3 models strip whitespace after
    /// special tokens.
    pub fn new(vocab: SpmVocab) -> Result<Self, SpmError> {
        let n = vocab.tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(SpmError::VocabSize(n));
        }
        if !vocab.scores.is_empty() && vocab.scores.len() < n {
            return Err(SpmError::TooShort {
                key: "tokenizer.ggml.scores",
                got: vocab.scores.len(),
                tokens: n,
            });
        }
        if !vocab.token_types.is_empty() && vocab.token_types.len() < n {
            return Err(SpmError::TooShort {
                key: "tokenizer.ggml.token_type",
                got: vocab.token_types.len(),
                tokens: n,
            });
        }
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let tokens: Vec<String> = vocab
            .tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| if t.is_empty() { format!("[EMPTY_{i}]") } else { t })
            .collect();
        // -0.0 and 0.0 compare equal in llama.cpp's queue; NaN (never seen) ranks last.
        let scores: Vec<f32> = (0..n)
            .map(|i| {
                let s = vocab.scores.get(i).copied().unwrap_or(0.0);
                if s.is_nan() { f32::NEG_INFINITY } else { s + 0.0 }
            })
            .collect();
        let mut attrs: Vec<u32> = (0..n)
            .map(
                |i| match vocab.token_types.get(i).copied().unwrap_or(token_type::NORMAL) {
                    token_type::UNKNOWN => attr::UNKNOWN,
                    token_type::UNUSED => attr::UNUSED,
                    token_type::NORMAL => attr::NORMAL,
                    token_type::CONTROL => attr::CONTROL,
                    token_type::USER_DEFINED => attr::USER_DEFINED,
                    token_type::BYTE => attr::BYTE,
                    _ => 0,
                },
            )
            .collect();
        let table = TokenTable::new(tokens);
        // End of generation: known texts (forced to control), EOS, EOT, EOM.
        let mut eog: Vec<u32> = Vec::new();
        for text in EOG_TEXTS {
            if let Some(id) = table.id(text) {
                attrs[id as usize] |= attr::CONTROL;
                eog.push(id);
            }
        }
        let bos = in_range(vocab.bos);
        let eos = in_range(vocab.eos);
        for id in [eos, in_range(vocab.eot), in_range(vocab.eom)]
            .into_iter()
            .flatten()
        {
            eog.push(id);
        }
        eog.sort_unstable();
        eog.dedup();
        if let Some(e) = eos
            && let Some(pos) = eog.iter().position(|&x| x == e)
        {
            eog.remove(pos);
            eog.insert(0, e);
        }
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
            .collect();
        let len = |id: u32| table.get(id).map_or(0, str::len);
        specials.sort_by_key(|&id| std::cmp::Reverse(len(id)));
        let name = vocab.model_name.to_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for &id in &specials {
                attrs[id as usize] |= attr::RSTRIP;
            }
            if let Some(id) = table.id("</s>") {
                attrs[id as usize] |= attr::RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(id) = table.id(t) {
                    attrs[id as usize] &= !attr::RSTRIP;
                }
            }
        }
        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = table.id(&format!("<0x{b:02X}>")).or_else(|| {
                // Fallback: the byte itself as a one-character token (ASCII only here).
                u8::try_from(b)
                    .ok()
                    .filter(u8::is_ascii)
                    .and_then(|c| table.id(&char::from(c).to_string()))
            });
        }
        Ok(Self {
            table,
            scores,
            attrs,
            specials,
            byte_tokens,
            bos,
            eos,
            eog,
            add_bos: vocab.add_bos,
            add_eos: vocab.add_eos,
            add_space_prefix: vocab.add_space_prefix,
        })
    }

    /// Builds the tokenizer from GGUF metadata (see [`SpmVocab::from_gguf_metadata`]).
    pub fn from_gguf_metadata(md: &HashMap<String, Value>) -> Result<Self, SpmError> {
        Self::new(SpmVocab::from_gguf_metadata(md)?)
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.table.len()
    }

    /// The stored text of a token (with `▁` for spaces).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.table.get(id)
    }

    /// The id of a token text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.table.id(text)
    }

    /// A token's attribute bits ([`attr`]).
    pub fn attr(&self, id: u32) -> Option<u32> {
        self.attrs.get(id as usize).copied()
    }

    /// BOS id.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// EOS id.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Ids that end generation, EOS first.
    pub fn eog(&self) -> &[u32] {
        &self.eog
    }

    /// Whether encoding with special tokens prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether encoding with special tokens appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether text pieces get a leading space.
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// Encodes text like llama.cpp's `llama_tokenize(text, add_special, parse_special)`:
    /// `add_special` adds BOS/EOS as the model asks; `parse_special` turns the text of control
    /// tokens (`<start_of_turn>`, `<bos>`) into their ids (user-defined tokens always are).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, SpmError> {
        let mut out = Vec::new();
        let fragments = if text.is_empty() {
            Vec::new()
        } else {
            self.partition(text, parse_special)
        };
        let mut prev_special = true;
        if add_special
            && self.add_bos
            && let Some(b) = self.bos
        {
            out.push(b);
        }
        for f in fragments {
            match f {
                Fragment::Text(start, end) => {
                    let mut piece = String::with_capacity(end - start + 1);
                    if self.add_space_prefix && prev_special {
                        piece.push(' ');
                    }
                    piece.push_str(&text[start..end]);
                    let piece = piece.replace(' ', "\u{2581}");
                    self.encode_piece(&piece, &mut out)?;
                    prev_special = false;
                }
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
            }
        }
        if add_special
            && self.add_eos
            && let Some(e) = self.eos
        {
            out.push(e);
        }
        Ok(out)
    }

    /// Splits special tokens out of the text, longest token text first, each left to right.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = vec![Fragment::Text(0, text.len())];
        let bytes = text.as_bytes();
        for &id in &self.specials {
            let a = self.attrs[id as usize];
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let tok = self.table.get(id).unwrap_or_default();
            if !frags
                .iter()
                .any(|f| matches!(*f, Fragment::Text(s, e) if text[s..e].contains(tok)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(mut start, end) = f else {
                    next.push(f);
                    continue;
                };
                loop {
                    let Some(rel) = text[start..end].find(tok) else {
                        next.push(Fragment::Text(start, end));
                        break;
                    };
                    let m = start + rel;
                    let mut left_end = m;
                    if a & attr::LSTRIP != 0 {
                        while left_end > start && c_isspace(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > start {
                        next.push(Fragment::Text(start, left_end));
                    }
                    next.push(Fragment::Token(id));
                    let mut right = m + tok.len();
                    if right >= end {
                        break;
                    }
                    if a & attr::RSTRIP != 0 {
                        while right < end && c_isspace(bytes[right]) {
                            right += 1;
                        }
                    }
                    if right >= end {
                        break;
                    }
                    start = right;
                }
            }
            frags = next;
        }
        frags
    }

    /// llama.cpp's SPM merge of one escaped piece of text.
    fn encode_piece(&self, text: &str, out: &mut Vec<u32>) -> Result<(), SpmError> {
        let mut syms: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            let n = c.len_utf8();
            syms.push(Symbol {
                start,
                n,
                prev: i.checked_sub(1),
                next: (start + n < text.len()).then_some(i + 1),
            });
        }
        if syms.is_empty() {
            return Ok(());
        }
        let mut queue = BinaryHeap::new();
        for i in 1..syms.len() {
            self.try_add_bigram(text, &syms, Some(i - 1), Some(i), &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (syms[b.left].n, syms[b.right].n);
            if l == 0 || r == 0 || l + r != b.size {
                continue;
            }
            syms[b.left].n += r;
            syms[b.right].n = 0;
            let after = syms[b.right].next;
            syms[b.left].next = after;
            if let Some(a) = after {
                syms[a].prev = Some(b.left);
            }
            let before = syms[b.left].prev;
            self.try_add_bigram(text, &syms, before, Some(b.left), &mut queue);
            self.try_add_bigram(text, &syms, Some(b.left), after, &mut queue);
        }
        let mut i = Some(0);
        while let Some(k) = i {
            let s = &syms[k];
            let piece = &text[s.start..s.start + s.n];
            match self.table.id(piece) {
                Some(id) => out.push(id),
                None => {
                    for &byte in piece.as_bytes() {
                        out.push(self.byte_tokens[byte as usize].ok_or(SpmError::NoByteToken(byte))?);
                    }
                }
            }
            i = s.next;
        }
        Ok(())
    }

    fn try_add_bigram(
        &self,
        text: &str,
        syms: &[Symbol],
        left: Option<usize>,
        right: Option<usize>,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let start = syms[left].start;
        let size = syms[left].n + syms[right].n;
        let Some(id) = text.get(start..start + size).and_then(|t| self.table.id(t)) else {
            return;
        };
        queue.push(Bigram {
            score: self.scores[id as usize],
            left,
            right,
            size,
        });
    }

    /// The bytes of one token, like llama.cpp's `llama_token_to_piece(id, lstrip 0, special)`:
    /// control and unknown tokens give their text only when `special`, user-defined tokens
    /// their text, normal tokens their text with `▁` as spaces, byte tokens their byte, and
    /// other (unused, undefined) tokens nothing.
    pub fn token_to_piece(&self, id: u32, special: bool) -> Result<Cow<'_, [u8]>, SpmError> {
        let (Some(&a), Some(text)) = (self.attrs.get(id as usize), self.table.get(id)) else {
            return Err(SpmError::BadId {
                id,
                n: self.table.len(),
            });
        };
        let sp = attr::UNKNOWN | attr::CONTROL;
        Ok(if a & sp != 0 && !special {
            Cow::Borrowed(&[][..])
        } else if a & (sp | attr::USER_DEFINED) != 0 {
            Cow::Borrowed(text.as_bytes())
        } else if a & attr::NORMAL != 0 {
            Cow::Owned(text.replace('\u{2581}', " ").into_bytes())
        } else if a & attr::BYTE != 0 {
            Cow::Owned(vec![byte_value(text)])
        } else {
            Cow::Borrowed(&[][..])
        })
    }

    /// Decodes ids to bytes like llama.cpp's `llama_detokenize(ids, remove_special,
    /// unparse_special)`: `remove_special` drops a leading BOS / trailing EOS the model adds,
    /// `unparse_special` writes control tokens out; with `add_space_prefix` the first piece
    /// loses one leading space unless a BOS was removed.
    pub fn detokenize(
        &self,
        ids: &[u32],
        remove_special: bool,
        unparse_special: bool,
    ) -> Result<Vec<u8>, SpmError> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && self.bos.is_some() && ids.first().copied() == self.bos {
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && self.eos.is_some() && ids.last().copied() == self.eos {
            ids = &ids[..ids.len() - 1];
        }
        let mut out = Vec::new();
        for &id in ids {
            let piece = self.token_to_piece(id, unparse_special)?;
            let piece: &[u8] = if remove_space {
                piece.strip_prefix(b" ").unwrap_or(&piece)
            } else {
                &piece
            };
            out.extend_from_slice(piece);
            remove_space = false;
        }
        Ok(out)
    }

    /// [`SpmTokenizer::detokenize`] as text; invalid UTF-8 (a character split over tokens)
    /// becomes U+FFFD.
    pub fn decode(
        &self,
        ids: &[u32],
        remove_special: bool,
        unparse_special: bool,
    ) -> Result<String, SpmError> {
        let bytes = self.detokenize(ids, remove_special, unparse_special)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
}

/// A symbol in the merge: a byte range of the piece, linked to its neighbours.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    /// Length in bytes; 0 once merged into its left neighbour.
    n: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols.
#[derive(Debug, Clone, Copy)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    /// Higher score first, then the leftmost pair (scores are never NaN or -0.0 here).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "\u{2581}";

    /// A small vocabulary: controls 0–2, bytes 3–258, then text pieces with scores.
    fn vocab(pieces: &[(&str, f32)], extra: &[(&str, i32)]) -> SpmVocab {
        let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
        let mut scores = vec![0.0; 3];
        let mut types = vec![token_type::UNKNOWN, token_type::CONTROL, token_type::CONTROL];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            scores.push(0.0);
            types.push(token_type::BYTE);
        }
        for (p, s) in pieces {
            tokens.push(p.replace(' ', B));
            scores.push(*s);
            types.push(token_type::NORMAL);
        }
        for (p, ty) in extra {
            tokens.push((*p).to_string());
            scores.push(0.0);
            types.push(*ty);
        }
        let mut v = SpmVocab::with_defaults(tokens);
        v.scores = scores;
        v.token_types = types;
        v
    }

    fn tok(v: SpmVocab) -> SpmTokenizer {
        SpmTokenizer::new(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ids(t: &SpmTokenizer, pieces: &[&str]) -> Vec<u32> {
        pieces
            .iter()
            .map(|p| {
                t.token_id(&p.replace(' ', B))
                    .unwrap_or_else(|| panic!("no token {p:?}"))
            })
            .collect()
    }

    fn enc(t: &SpmTokenizer, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        t.encode(text, add_special, parse_special)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn byte(b: u8) -> u32 {
        3 + b as u32
    }

    #[test]
    fn merges_follow_the_highest_score_not_the_longest_match() {
        let pieces = [
            ("a", -1.0),
            ("b", -1.0),
            ("c", -1.0),
            ("ab", -5.0),
            ("bc", -2.0),
            ("abc", -3.0),
        ];
        let mut v = vocab(&pieces, &[]);
        v.add_space_prefix = false;
        let t = tok(v);
        // "bc" (-2) beats "ab" (-5); then "a"+"bc" = "abc" exists.
        assert_eq!(enc(&t, "abc", false, true), ids(&t, &["abc"]));
        // Without "abc" the pair stays split as a + bc.
        let mut v = vocab(&pieces[..5], &[]);
        v.add_space_prefix = false;
        let t = tok(v);
        assert_eq!(enc(&t, "abc", false, true), ids(&t, &["a", "bc"]));
    }

    #[test]
    fn equal_scores_merge_leftmost_first() {
        let mut v = vocab(&[("a", -1.0), ("aa", -2.0)], &[]);
        v.add_space_prefix = false;
        let t = tok(v);
        assert_eq!(enc(&t, "aaa", false, true), ids(&t, &["aa", "a"]));
        assert_eq!(enc(&t, "aaaa", false, true), ids(&t, &["aa", "aa"]));
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        let mut v = vocab(&[("h", -1.0), ("i", -1.0), ("hi", -1.5)], &[]);
        v.add_space_prefix = false;
        let t = tok(v);
        let got = enc(&t, "hi é", false, true);
        let mut want = ids(&t, &["hi"]);
        want.extend([byte(0xE2), byte(0x96), byte(0x81), byte(0xC3), byte(0xA9)]);
        assert_eq!(got, want);
        // Byte tokens decode to their bytes as they are: a `▁` that fell back to bytes stays `▁`
        // (llama.cpp unescapes spaces only in normal tokens).
        let text = t.decode(&got, false, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text, "hi\u{2581}é");
    }

    #[test]
    fn space_prefix_bos_and_eos_follow_the_flags() {
        let pieces = [("h", -1.0), ("i", -1.0), ("hi", -2.0), (" ", -1.0), (" hi", -3.0)];
        let t = tok(vocab(&pieces, &[]));
        assert_eq!(enc(&t, "hi", true, true), [vec![1], ids(&t, &[" hi"])].concat());
        assert_eq!(enc(&t, "hi", false, true), ids(&t, &[" hi"]));
        assert_eq!(enc(&t, "", true, true), vec![1]);
        assert!(enc(&t, "", false, true).is_empty());
        // The leading space is removed again when decoding, unless a BOS was removed.
        let plain = enc(&t, "hi", false, true);
        assert_eq!(t.decode(&plain, true, false).unwrap_or_default(), "hi");
        let with_bos = enc(&t, "hi", true, true);
        assert_eq!(t.decode(&with_bos, true, false).unwrap_or_default(), " hi");
        let mut v = vocab(&pieces, &[]);
        v.add_space_prefix = false;
        v.add_bos = false;
        v.add_eos = true;
        let t = tok(v);
        assert_eq!(enc(&t, " hi", true, true), [ids(&t, &[" hi"]), vec![2]].concat());
        assert_eq!(enc(&t, "hi", true, true), [ids(&t, &["hi"]), vec![2]].concat());
        let e = enc(&t, "hi", true, true);
        assert_eq!(t.decode(&e, true, false).unwrap_or_default(), "hi");
    }

    #[test]
    fn leading_and_repeated_spaces() {
        let pieces = [("a", -1.0), (" ", -1.0), ("  ", -2.0), (" a", -1.5)];
        let mut v = vocab(&pieces, &[]);
        v.add_space_prefix = false;
        let t = tok(v);
        // " a" (-1.5) beats "  " (-2): the last space joins the letter, the others pair up.
        assert_eq!(enc(&t, "   a", false, true), ids(&t, &["  ", " a"]));
        assert_eq!(enc(&t, "a  ", false, true), ids(&t, &["a", "  "]));
        let got = enc(&t, "   a", false, true);
        assert_eq!(t.decode(&got, false, false).unwrap_or_default(), "   a");
        // A literal ▁ in the text is a space too.
        assert_eq!(enc(&t, "\u{2581}a", false, true), ids(&t, &[" a"]));
    }

    #[test]
    fn special_tokens_split_out_only_when_parsed() {
        let pieces = [
            ("<", -1.0),
            (">", -1.0),
            ("s", -1.0),
            ("x", -1.0),
            (" ", -1.0),
            (" x", -1.5),
            ("<s", -2.0),
        ];
        let extra = [
            ("<turn>", token_type::CONTROL),
            ("\n\n", token_type::USER_DEFINED),
            ("\n", token_type::USER_DEFINED),
        ];
        let mut v = vocab(&pieces, &extra);
        v.add_space_prefix = false;
        let t = tok(v);
        let turn = t.token_id("<turn>").unwrap_or_default();
        let nn = t.token_id("\n\n").unwrap_or_default();
        let n1 = t.token_id("\n").unwrap_or_default();
        // Parsed: the control token and the user-defined newlines are single ids, longest first.
        assert_eq!(
            enc(&t, "x<turn>\n\n\nx", false, true),
            [ids(&t, &["x"]), vec![turn, nn, n1], ids(&t, &["x"])].concat()
        );
        // Not parsed: the control text is tokenized as text (the user-defined ones still split).
        let plain = enc(&t, "x<turn>\n", false, false);
        assert_eq!(plain[0], ids(&t, &["x"])[0]);
        assert_eq!(plain.last().copied(), Some(n1));
        assert!(!plain.contains(&turn));
        // "<s>" merges into the control token's text even as plain text (as llama.cpp does).
        assert_eq!(enc(&t, "<s>", false, false), vec![1]);
        assert_eq!(
            enc(&t, "<s> x", false, true),
            [vec![1], ids(&t, &[" x"])].concat()
        );
        // Decoding: control tokens written out or dropped, user-defined always written.
        let ids_ = enc(&t, "x<turn>\n\nx", false, true);
        assert_eq!(t.decode(&ids_, false, true).unwrap_or_default(), "x<turn>\n\nx");
        assert_eq!(t.decode(&ids_, false, false).unwrap_or_default(), "x\n\nx");
    }

    #[test]
    fn space_prefix_is_added_after_each_special_token() {
        let pieces = [("x", -1.0), (" ", -1.0), (" x", -1.5)];
        let t = tok(vocab(&pieces, &[("<t>", token_type::CONTROL)]));
        let ct = t.token_id("<t>").unwrap_or_default();
        assert_eq!(
            enc(&t, "x<t>x", false, true),
            [ids(&t, &[" x"]), vec![ct], ids(&t, &[" x"])].concat()
        );
    }

    #[test]
    fn decoding_round_trips_and_assembles_utf8_from_bytes() {
        let pieces = [("h", -1.0), ("é", -1.0), (" ", -1.0), (" h", -1.2), ("hé", -1.1)];
        let mut v = vocab(&pieces, &[]);
        v.add_space_prefix = false;
        let t = tok(v);
        for text in ["hé hé", "  h\té\n", "日本 hé 🎉", ""] {
            let got = enc(&t, text, true, true);
            assert_eq!(t.decode(&got, true, false).unwrap_or_default(), text, "{got:?}");
        }
        // A character split over byte tokens is U+FFFD until it is whole.
        let e = enc(&t, "🎉", false, true);
        assert_eq!(e.len(), 4);
        assert!(
            t.decode(&e[..2], false, false)
                .unwrap_or_default()
                .ends_with('\u{FFFD}')
        );
        assert!(matches!(
            t.decode(&[999_999], false, false),
            Err(SpmError::BadId { .. })
        ));
    }

    #[test]
    fn end_of_generation_texts_are_control_tokens() {
        let mut v = vocab(&[("x", -1.0)], &[("<end_of_turn>", token_type::NORMAL)]);
        v.eos = Some(2);
        let t = tok(v);
        let eot = t.token_id("<end_of_turn>").unwrap_or_default();
        assert_eq!(t.eog(), &[2, eot]);
        assert_ne!(t.attr(eot).unwrap_or_default() & attr::CONTROL, 0);
    }

    #[test]
    fn missing_byte_tokens_and_bad_metadata_are_errors() {
        let mut v = SpmVocab::with_defaults(vec!["<unk>".into(), "a".into()]);
        v.add_space_prefix = false;
        let t = tok(v);
        assert!(matches!(
            t.encode("ab", false, true),
            Err(SpmError::NoByteToken(b'b'))
        ));
        assert!(matches!(
            SpmTokenizer::new(SpmVocab::with_defaults(Vec::new())),
            Err(SpmError::VocabSize(0))
        ));
        let mut v = SpmVocab::with_defaults(vec!["a".into(), "b".into()]);
        v.scores = vec![0.0];
        assert!(matches!(SpmTokenizer::new(v), Err(SpmError::TooShort { .. })));
        let md = HashMap::new();
        assert!(matches!(
            SpmTokenizer::from_gguf_metadata(&md),
            Err(SpmError::MissingKey("tokenizer.ggml.tokens"))
        ));
    }

    #[test]
    fn gguf_metadata_defaults_and_overrides() {
        let mut md = HashMap::new();
        let toks = ["<unk>", "<s>", "</s>", "a"];
        md.insert(
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(toks.iter().map(|t| Value::String((*t).to_string())).collect()),
        );
        let t = SpmTokenizer::from_gguf_metadata(&md).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (t.bos(), t.eos(), t.add_bos(), t.add_space_prefix()),
            (Some(1), Some(2), true, true)
        );
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(3));
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(99));
        md.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false));
        md.insert(
            "tokenizer.ggml.scores".into(),
            Value::Array(vec![Value::F32(0.0); 4]),
        );
        let t = SpmTokenizer::from_gguf_metadata(&md).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (t.bos(), t.eos(), t.add_space_prefix()),
            (Some(3), Some(2), false)
        );
        md.insert("tokenizer.ggml.scores".into(), Value::String("x".into()));
        assert!(matches!(
            SpmTokenizer::from_gguf_metadata(&md),
            Err(SpmError::WrongType { .. })
        ));
    }
}
