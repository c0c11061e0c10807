//! Per-sequence key/value cache.

/// The most positions [`KvCache::reserve`] sets aside at once (a request for the whole of a
/// long context reserves this much and grows past it only when it gets there).
pub const RESERVE_LIMIT: usize = 4096;

/// Keys and values of one sequence for every layer: `[position][kv_head × head_dim]`.
/// A *transient* cache keeps nothing: each layer's keys and values are dropped right after the
/// layer's attention, so a one-shot pass over many sequences (fitting, collecting, scoring)
/// holds one layer's keys and values at a time instead of every layer's.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
    transient: bool,
}

impl KvCache {
    /// An empty cache for `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![(Vec::new(), Vec::new()); n_layers],
            len: 0,
            transient: false,
        }
    }

    /// A cache for one forward pass that is never continued: it stays empty.
    pub fn transient(n_layers: usize) -> Self {
        Self {
            transient: true,
            ..Self::new(n_layers)
        }
    }

    /// Cached positions (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reserves room for `positions` positions in all (at most [`RESERVE_LIMIT`]) of
    /// `kv_width` floats each, exactly, in every layer. A cache that grows one token at a
    /// time by doubling leaves the smaller blocks it outgrew behind as freed but touched
    /// heap, which for a short generation weighs about as much as the cache itself; a cache
    /// sized once for the prompt and `max_tokens` does not. Positions past the reservation
    /// still grow the usual way.
    pub fn reserve(&mut self, positions: usize, kv_width: usize) {
        if self.transient {
            return;
        }
        let want = positions.min(RESERVE_LIMIT).saturating_mul(kv_width);
        for (k, v) in &mut self.layers {
            k.reserve_exact(want.saturating_sub(k.len()));
            v.reserve_exact(want.saturating_sub(v.len()));
        }
    }

    /// A copy with room for `positions` positions in all (as [`KvCache::reserve`]), made in
    /// one allocation per layer side (a clone and then a reserve would copy twice).
    pub fn fork(&self, positions: usize, kv_width: usize) -> Self {
        let want = positions.min(RESERVE_LIMIT).saturating_mul(kv_width);
        let copy = |x: &Vec<f32>| {
            let mut out = Vec::with_capacity(want.max(x.len()));
            out.extend_from_slice(x);
            out
        };
        Self {
            layers: self.layers.iter().map(|(k, v)| (copy(k), copy(v))).collect(),
            len: self.len,
            transient: self.transient,
        }
    }

    /// A copy of the first `len` positions (all when fewer are cached) with room for
    /// `positions` positions in all (as [`KvCache::reserve`]): a copy and then a
    /// [`KvCache::truncate`] would copy, and keep room for, every cached position.
    pub fn fork_prefix(&self, len: usize, positions: usize, kv_width: usize) -> Self {
        let len = len.min(self.len);
        let keep = len.saturating_mul(kv_width);
        let want = positions.min(RESERVE_LIMIT).saturating_mul(kv_width);
        let copy = |x: &Vec<f32>| {
            let mut out = Vec::with_capacity(want.max(keep));
            out.extend_from_slice(x.get(..keep).unwrap_or(x));
            out
        };
        Self {
            layers: self.layers.iter().map(|(k, v)| (copy(k), copy(v))).collect(),
            len,
            transient: self.transient,
        }
    }

    /// Forgets everything (keeps the allocations).
    pub fn clear(&mut self) {
        self.len = 0;
        for (k, v) in &mut self.layers {
            k.clear();
            v.clear();
        }
    }

    /// Drops every position at or after `len` (e.g. to rewind to the end of a shared prompt).
    pub fn truncate(&mut self, len: usize, kv_width: usize) {
        self.len = self.len.min(len);
        for (k, v) in &mut self.layers {
            k.truncate(self.len * kv_width);
            v.truncate(self.len * kv_width);
        }
    }

    pub(crate) fn layer_mut(&mut self, l: usize) -> Option<&mut (Vec<f32>, Vec<f32>)> {
        self.layers.get_mut(l)
    }

    /// Layer `l`'s cached keys and values (`[len, kv_width]` each).
    pub(crate) fn layer(&self, l: usize) -> Option<(&[f32], &[f32])> {
        self.layers.get(l).map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        if !self.transient {
            self.len = len;
        }
    }

    /// Frees layer `l`'s keys and values if the cache is transient.
    pub(crate) fn release_layer(&mut self, l: usize) {
        if self.transient
            && let Some((k, v)) = self.layers.get_mut(l)
        {
            *k = Vec::new();
            *v = Vec::new();
        }
    }

    pub(crate) fn n_layers(&self) -> usize {
        self.layers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_keeps_the_cache_and_has_room_for_what_follows() {
        let mut c = KvCache::new(2);
        for l in 0..2 {
            if let Some((k, v)) = c.layer_mut(l) {
                k.extend_from_slice(&[1.0, 2.0, 3.0, 4.0]);
                v.extend_from_slice(&[5.0, 6.0, 7.0, 8.0]);
            }
        }
        c.set_len(2);
        let f = c.fork(10, 2);
        assert_eq!(f.len(), 2);
        for (a, b) in c.layers.iter().zip(&f.layers) {
            assert_eq!(a, b);
            assert!(b.0.capacity() >= 20 && b.1.capacity() >= 20);
        }
        // Beyond the limit only the limit is set aside.
        let big = c.fork(usize::MAX, 2);
        assert!(big.layers[0].0.capacity() >= RESERVE_LIMIT * 2);
    }

    #[test]
    fn a_prefix_fork_copies_and_sets_aside_only_what_it_is_asked_for() {
        let mut c = KvCache::new(2);
        for l in 0..2 {
            if let Some((k, v)) = c.layer_mut(l) {
                k.extend((0..200).map(|i| i as f32));
                v.extend((0..200).map(|i| -(i as f32)));
            }
        }
        c.set_len(100);
        let f = c.fork_prefix(3, 5, 2);
        assert_eq!(f.len(), 3);
        for (a, b) in c.layers.iter().zip(&f.layers) {
            assert_eq!(&a.0[..6], &b.0[..]);
            assert_eq!(&a.1[..6], &b.1[..]);
            assert!(b.0.capacity() >= 10 && b.0.capacity() < 200, "{}", b.0.capacity());
        }
        // Asked for more than is cached: all of it.
        assert_eq!(c.fork_prefix(500, 500, 2).len(), 100);
    }
}
