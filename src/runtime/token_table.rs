//! A vocabulary's token texts in one buffer, with a text → id index.
//!
//! Gemma 3's vocabulary has 262,144 tokens. As a `Vec<String>` plus a `HashMap<String, u32>`
//! holding a second copy of every text, it took ~35 MB of small allocations; here the texts
//! are one `String` with end offsets, and the index holds only ids (its hashes are computed
//! from the buffer), ~5 MB.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// Token texts by id, and ids by text.
#[derive(Debug, Clone)]
pub(crate) struct TokenTable {
    /// Every token's text, concatenated in id order.
    text: String,
    /// `ends[i]`: where token `i`'s text ends in `text` (it starts where `i − 1` ends).
    ends: Vec<usize>,
    /// Ids, found by the hash of their text.
    index: HashTable<u32>,
    hasher: RandomState,
}

impl TokenTable {
    /// The table of `tokens` (id = position). When several tokens share a text, the text
    /// finds the last of them, as a map filled in id order does (llama.cpp's `token_to_id`).
    pub fn new(tokens: impl IntoIterator<Item = String>) -> Self {
        let mut text = String::new();
        let mut ends = Vec::new();
        for t in tokens {
            text.push_str(&t);
            ends.push(text.len());
        }
        let mut table = Self {
            text,
            ends,
            index: HashTable::new(),
            hasher: RandomState::new(),
        };
        let mut index = HashTable::with_capacity(table.ends.len());
        for id in 0..table.ends.len() as u32 {
            let t = table.get(id).unwrap_or_default();
            let hash = table.hasher.hash_one(t);
            let same = |&j: &u32| table.get(j) == Some(t);
            let rehash = |&j: &u32| table.hasher.hash_one(table.get(j).unwrap_or_default());
            match index.entry(hash, same, rehash) {
                Entry::Occupied(mut e) => *e.get_mut() = id,
                Entry::Vacant(e) => {
                    e.insert(id);
                }
            }
        }
        table.index = index;
        table
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Token `id`'s text.
    pub fn get(&self, id: u32) -> Option<&str> {
        let i = id as usize;
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end)
    }

    /// The id of a token text.
    pub fn id(&self, text: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(text);
        self.index.find(hash, |&j| self.get(j) == Some(text)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_ids_round_trip_and_the_last_duplicate_wins() {
        let toks = ["a", "▁b", "", "<0x0A>", "a", "ccc"].map(String::from);
        let t = TokenTable::new(toks.clone());
        assert_eq!(t.len(), 6);
        for (i, s) in toks.iter().enumerate() {
            assert_eq!(t.get(i as u32), Some(s.as_str()));
        }
        assert_eq!(t.get(6), None);
        assert_eq!(t.id("a"), Some(4));
        assert_eq!(t.id("▁b"), Some(1));
        assert_eq!(t.id(""), Some(2));
        assert_eq!(t.id("ccc"), Some(5));
        assert_eq!(t.id("cc"), None);
        let empty = TokenTable::new(Vec::new());
        assert_eq!((empty.len(), empty.get(0), empty.id("a")), (0, None, None));
    }
}
