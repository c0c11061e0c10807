//! Byte-level BPE (GPT-2's scheme: SmolLM2, Qwen-style GGUF vocabularies with
//! `tokenizer.ggml.model = gpt2`), built from a GGUF file's token and merge lists.
//!
//! It encodes and decodes exactly as the Hugging Face `tokenizers` pipeline that the project
//! used before for these files (a `BPE` model with a `ByteLevel` pre-tokenizer — after
//! `Digits(individual)` for `smollm` — a `ByteLevel` decoder and the special tokens as added
//! tokens; `tests/bpe_tokenizer.rs` checks that on the demo model), but it keeps the
//! vocabulary as one text buffer with an id index ([`TokenTable`]) and the merges as one
//! id-pair table: ~2 MB for SmolLM2's 49,152 tokens and 48,900 merges, against ~7 MB of
//! small allocations in `tokenizers`' two string maps (RSS of a whole generation: issue 13).
//!
//! Encoding (`encode`): special tokens are cut out of the text first (leftmost-longest
//! match); each remaining piece is split by the pre-tokenizer's rules, its bytes are mapped
//! to GPT-2's printable characters, and the characters' tokens are merged pair by pair,
//! always the pair of lowest merge rank (leftmost first on ties), until none applies.

use std::collections::{BinaryHeap, HashMap};

use aho_corasick::{AhoCorasick, MatchKind};
use fancy_regex::Regex;

use super::token_table::TokenTable;

/// GPT-2's pre-tokenizer pattern (as in `tokenizers`' `ByteLevel`): contractions, letter
/// runs, number runs, other-symbol runs (each after an optional space), then whitespace.
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Why a BPE tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BpeError {
    /// A merge line is not two tokens separated by one space.
    #[error("bad merge `{0}` (expected two tokens separated by a space)")]
    BadMerge(String),
    /// A merge names a token, or makes one, that the vocabulary lacks.
    #[error("merge `{0} {1}`: `{2}` is not in the vocabulary")]
    MergeOutsideVocab(String, String, String),
    /// The pattern or the special-token matcher could not be built.
    #[error("tokenizer setup failed: {0}")]
    Setup(String),
}

/// A merge: the rank of the pair (lower merges first) and the token it makes.
#[derive(Debug, Clone, Copy)]
struct Merge {
    rank: u32,
    new_id: u32,
}

/// One byte-level BPE vocabulary with its merges and special tokens.
pub struct BpeTokenizer {
    tokens: TokenTable,
    /// `(left id, right id)` → merge.
    merges: HashMap<(u32, u32), Merge>,
    /// Special (control) tokens: matched in the text before anything else.
    specials: Vec<u32>,
    special_matcher: Option<AhoCorasick>,
    /// `is_special[id]`.
    is_special: Vec<bool>,
    /// Split digits one by one before the pattern (`tokenizer.ggml.pre = smollm`).
    split_digits: bool,
    pattern: Regex,
    /// Byte → GPT-2 printable character.
    byte_char: [char; 256],
    /// GPT-2 printable character (code point < 324) → byte.
    char_byte: Vec<Option<u8>>,
}

impl std::fmt::Debug for BpeTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpeTokenizer")
            .field("tokens", &self.tokens.len())
            .field("merges", &self.merges.len())
            .field("specials", &self.specials.len())
            .field("split_digits", &self.split_digits)
            .finish()
    }
}

/// GPT-2's byte ↔ character table: printable Latin-1 bytes stand for themselves, the other
/// 68 bytes take the code points from 256 up, in byte order.
fn byte_chars() -> ([char; 256], Vec<Option<u8>>) {
    let mut byte_char = ['\0'; 256];
    let mut char_byte = vec![None; 256 + 68];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        let c = if printable {
            u32::from(b)
        } else {
            next += 1;
            next - 1
        };
        let ch = char::from_u32(c).unwrap_or('\0');
        byte_char[usize::from(b)] = ch;
        if let Some(slot) = char_byte.get_mut(c as usize) {
            *slot = Some(b);
        }
    }
    (byte_char, char_byte)
}

impl BpeTokenizer {
    /// Builds the tokenizer from the vocabulary (id = position), the merge lines (`"a b"`,
    /// rank = position; a repeated pair keeps its last rank), the ids of the special tokens,
    /// and whether digits are split one by one first.
    pub fn new(
        tokens: Vec<String>,
        merges: &[String],
        specials: &[u32],
        split_digits: bool,
    ) -> Result<Self, BpeError> {
        let table = TokenTable::new(tokens);
        let mut merge_map = HashMap::with_capacity(merges.len());
        let mut joined = String::new();
        for (rank, line) in merges.iter().enumerate() {
            let (a, b) = line
                .split_once(' ')
                .ok_or_else(|| BpeError::BadMerge(line.clone()))?;
            let missing = |t: &str| BpeError::MergeOutsideVocab(a.into(), b.into(), t.into());
            let ia = table.id(a).ok_or_else(|| missing(a))?;
            let ib = table.id(b).ok_or_else(|| missing(b))?;
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let new_id = table.id(&joined).ok_or_else(|| missing(&joined))?;
            let rank = u32::try_from(rank).map_err(|_| BpeError::Setup("too many merges".into()))?;
            merge_map.insert((ia, ib), Merge { rank, new_id });
        }
        let mut is_special = vec![false; table.len()];
        let mut special_ids = Vec::new();
        for &id in specials {
            let Some(text) = table.get(id) else { continue };
            if text.is_empty() || is_special[id as usize] {
                continue;
            }
            // A text shared by several ids finds the last of them, as a string map does.
            let id = table.id(text).unwrap_or(id);
            is_special[id as usize] = true;
            if !special_ids.contains(&id) {
                special_ids.push(id);
            }
        }
        let special_matcher = if special_ids.is_empty() {
            None
        } else {
            let texts: Vec<&str> = special_ids.iter().filter_map(|&i| table.get(i)).collect();
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(texts)
                    .map_err(|e| BpeError::Setup(e.to_string()))?,
            )
        };
        let pattern = Regex::new(GPT2_PATTERN).map_err(|e| BpeError::Setup(e.to_string()))?;
        let (byte_char, char_byte) = byte_chars();
        Ok(Self {
            tokens: table,
            merges: merge_map,
            specials: special_ids,
            special_matcher,
            is_special,
            split_digits,
            pattern,
            byte_char,
            char_byte,
        })
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// A token's text as stored in the vocabulary (byte-level characters).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id)
    }

    /// The id of a vocabulary text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.tokens.id(text)
    }

    /// Token ids of `text` (no BOS: the caller adds it). Special-token texts become their ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        let mut at = 0;
        if let Some(m) = &self.special_matcher {
            for found in m.find_iter(text) {
                self.encode_plain_text(&text[at..found.start()], &mut ids);
                ids.push(self.specials[found.pattern().as_usize()]);
                at = found.end();
            }
        }
        self.encode_plain_text(&text[at..], &mut ids);
        ids
    }

    /// Text without special tokens: digits split off (when set), then the pattern's pieces.
    fn encode_plain_text(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        if !self.split_digits {
            self.encode_pattern_pieces(text, ids);
            return;
        }
        let mut start = 0;
        for (i, c) in text.char_indices() {
            if c.is_numeric() {
                self.encode_pattern_pieces(&text[start..i], ids);
                let end = i + c.len_utf8();
                self.encode_pattern_pieces(&text[i..end], ids);
                start = end;
            }
        }
        self.encode_pattern_pieces(&text[start..], ids);
    }

    /// Splits by the GPT-2 pattern (text between matches, which the pattern's last
    /// alternatives leave none of, would be a piece too) and encodes each piece.
    fn encode_pattern_pieces(&self, text: &str, ids: &mut Vec<u32>) {
        let mut at = 0;
        let mut word = String::new();
        for found in self.pattern.find_iter(text) {
            let Ok(found) = found else {
                // The pattern's backtracking limit: take the rest as one piece.
                break;
            };
            if found.start() > at {
                self.encode_word(&text[at..found.start()], &mut word, ids);
            }
            self.encode_word(found.as_str(), &mut word, ids);
            at = found.end();
        }
        if at < text.len() {
            self.encode_word(&text[at..], &mut word, ids);
        }
    }

    /// One pre-token: bytes → GPT-2 characters → character tokens → merges.
    fn encode_word(&self, piece: &str, word: &mut String, ids: &mut Vec<u32>) {
        if piece.is_empty() {
            return;
        }
        word.clear();
        word.extend(piece.bytes().map(|b| self.byte_char[usize::from(b)]));
        // A whole word in the vocabulary still goes through the merges (as `tokenizers`
        // does unless `ignore_merges` is set), so no shortcut here.
        let mut buf = [0u8; 4];
        let mut symbols: Vec<Symbol> = word
            .chars()
            // A character without a token is dropped (no unknown token in these files).
            .filter_map(|c| self.tokens.id(c.encode_utf8(&mut buf)))
            .map(|id| Symbol {
                id,
                prev: -1,
                next: -1,
            })
            .collect();
        let n = symbols.len();
        for (i, s) in symbols.iter_mut().enumerate() {
            s.prev = i as isize - 1;
            s.next = if i + 1 < n { i as isize + 1 } else { -1 };
        }
        merge_all(&mut symbols, &self.merges);
        ids.extend(symbols.iter().filter(|s| s.id != u32::MAX).map(|s| s.id));
    }

    /// The bytes token `id` decodes to (empty outside the vocabulary).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(text) = self.tokens.get(id) {
            self.push_token_bytes(text, &mut out);
        }
        out
    }

    fn push_token_bytes(&self, text: &str, out: &mut Vec<u8>) {
        let start = out.len();
        for c in text.chars() {
            match self.char_byte.get(c as usize).copied().flatten() {
                Some(b) => out.push(b),
                None => {
                    out.truncate(start);
                    out.extend_from_slice(text.as_bytes());
                    return;
                }
            }
        }
    }

    /// Text of `ids`: the tokens' characters mapped back to bytes (a token with a character
    /// outside GPT-2's table, such as a special token's, gives its own UTF-8 bytes), read as
    /// UTF-8 with invalid sequences replaced. Special tokens are left out when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let Some(text) = self.tokens.get(id) else { continue };
            if skip_special && self.is_special.get(id as usize).copied().unwrap_or(false) {
                continue;
            }
            self.push_token_bytes(text, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// One symbol of a word being merged: its token (`u32::MAX` once merged into its left
/// neighbour) and its live neighbours.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    id: u32,
    prev: isize,
    next: isize,
}

/// Merges `symbols` in place: always the live pair of lowest rank, the leftmost on ties
/// (a min-heap of `(rank, position)`; stale entries are skipped when popped).
fn merge_all(symbols: &mut [Symbol], merges: &HashMap<(u32, u32), Merge>) {
    use std::cmp::Reverse;
    let mut queue: BinaryHeap<Reverse<(u32, usize, u32)>> = symbols
        .windows(2)
        .enumerate()
        .filter_map(|(i, w)| {
            merges
                .get(&(w[0].id, w[1].id))
                .map(|m| Reverse((m.rank, i, m.new_id)))
        })
        .collect();
    while let Some(Reverse((_, pos, new_id))) = queue.pop() {
        let cur = symbols[pos];
        if cur.id == u32::MAX || cur.next < 0 {
            continue;
        }
        let next_pos = cur.next as usize;
        let right = symbols[next_pos];
        // Skip entries made stale by an earlier merge of either side.
        if merges.get(&(cur.id, right.id)).is_none_or(|m| m.new_id != new_id) {
            continue;
        }
        symbols[pos].id = new_id;
        symbols[pos].next = right.next;
        symbols[next_pos].id = u32::MAX;
        if right.next >= 0 {
            symbols[right.next as usize].prev = pos as isize;
        }
        let cur = symbols[pos];
        if cur.prev >= 0
            && let Some(m) = merges.get(&(symbols[cur.prev as usize].id, cur.id))
        {
            queue.push(Reverse((m.rank, cur.prev as usize, m.new_id)));
        }
        if cur.next >= 0
            && let Some(m) = merges.get(&(cur.id, symbols[cur.next as usize].id))
        {
            queue.push(Reverse((m.rank, pos, m.new_id)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary over a few letters: single byte-level characters, then merged tokens.
    fn tiny() -> BpeTokenizer {
        let mut tokens: Vec<String> = ["a", "b", "c", "Ġ", "1", "2", "Ċ"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for t in ["ab", "abc", "Ġa", "Ġab", "aa", "<|end|>", "12"] {
            tokens.push(t.into());
        }
        let merges: Vec<String> = ["a b", "ab c", "Ġ a", "Ġa b", "a a", "1 2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        BpeTokenizer::new(tokens, &merges, &[12], true).expect("tiny vocabulary builds")
    }

    fn id(t: &BpeTokenizer, s: &str) -> u32 {
        t.token_id(s).expect("token exists")
    }

    #[test]
    fn merges_follow_rank_then_position() {
        let t = tiny();
        assert_eq!(t.encode("abc"), vec![id(&t, "abc")]);
        // " ab": "Ġ a" (rank 2) would need "a" free, but "a b" (rank 0) comes first.
        assert_eq!(t.encode(" ab"), vec![id(&t, "Ġ"), id(&t, "ab")]);
        // "aaa": the leftmost pair merges first.
        assert_eq!(t.encode("aaa"), vec![id(&t, "aa"), id(&t, "a")]);
        assert_eq!(t.decode(&t.encode(" abc aaa"), false), " abc aaa");
    }

    #[test]
    fn digits_are_split_one_by_one_and_specials_are_cut_out() {
        let t = tiny();
        // "12" is a merge, but split_digits keeps the digits apart.
        assert_eq!(t.encode("12"), vec![id(&t, "1"), id(&t, "2")]);
        assert_eq!(t.encode("a<|end|>b"), vec![id(&t, "a"), 12, id(&t, "b")]);
        assert_eq!(t.decode(&[0, 12, 1], false), "a<|end|>b");
        assert_eq!(t.decode(&[0, 12, 1], true), "ab");
    }

    #[test]
    fn unknown_characters_are_dropped_and_bad_merges_refused() {
        let t = tiny();
        // As in `tokenizers`: the dropped character leaves its neighbours adjacent.
        assert_eq!(t.encode("axb"), vec![id(&t, "ab")]);
        let toks = vec!["a".to_string(), "b".to_string()];
        assert!(matches!(
            BpeTokenizer::new(toks.clone(), &["a b".into()], &[], false),
            Err(BpeError::MergeOutsideVocab(..))
        ));
        assert!(matches!(
            BpeTokenizer::new(toks, &["ab".into()], &[], false),
            Err(BpeError::BadMerge(_))
        ));
    }

    #[test]
    fn byte_table_is_a_bijection_onto_printable_characters() {
        let (bc, cb) = byte_chars();
        for b in 0..=255u8 {
            let c = bc[usize::from(b)];
            assert!(!c.is_whitespace() && !c.is_control(), "byte {b} → {c:?}");
            assert_eq!(cb[c as usize], Some(b));
        }
        assert_eq!(bc[usize::from(b' ')], 'Ġ');
        assert_eq!(bc[usize::from(b'\n')], 'Ċ');
    }
}
