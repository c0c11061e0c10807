//! Where a model's quantized weights live: side by side in large anonymous mappings on 2 MiB
//! transparent huge pages (Linux), so that a decode step, which streams every weight once,
//! does not walk the page tables every 4 KiB.
//!
//! Why: a decode step of the demo model reads 96 MB of weights, ~24,000 pages of 4 KiB, each
//! a TLB miss and a page walk; the matrices of a layer are 0.1–0.6 MB each, too small for a
//! huge page of their own, so they are packed one after another into shared mappings of
//! [`CHUNK`] bytes (a matrix past [`CHUNK`]` / 4` gets a mapping of its own). The kernel backs
//! a mapping with huge pages when it is 2 MiB-aligned and marked `MADV_HUGEPAGE` before it is
//! first written, which is how [`WeightBytes::filled`] makes it: the pages are faulted in
//! huge as the weights are written (THP in `madvise` or `always` mode; `never` leaves
//! ordinary pages). Measured on the demo model (2-core Xeon, THP in `madvise` mode,
//! `ACT_BENCH_ONLY=steps cargo bench --bench runtime`, `ACT_HUGE_PAGES=1` and `0`
//! alternated): docs/ARCHITECTURE.md ("Weight storage") and the README.
//!
//! A mapping is unmapped when the last [`WeightBytes`] in it is dropped. Space is never
//! reused within a mapping, so a model loaded before the previous one is dropped may share
//! that model's last mapping and keep it resident: at most one mapping ([`CHUNK`]) per such
//! swap. Elsewhere (other systems, buffers under 64 KiB, a mapping the system refuses) the
//! bytes are an ordinary `Vec`; `ACT_HUGE_PAGES=0` keeps every buffer in a `Vec` (for
//! comparing speeds).

use std::sync::Arc;

/// Bytes of one shared mapping.
pub const CHUNK: usize = 64 << 20;
/// Matrices smaller than this stay in a `Vec` (a norm's or a tiny model's weights).
const MIN_BYTES: usize = 64 << 10;
/// Alignment of each matrix in a mapping (a cache line).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const ALIGN: usize = 64;

/// A matrix's weight bytes, immutable once made: in a shared huge-page mapping, or a `Vec`.
#[derive(Clone, Default)]
pub struct WeightBytes(Inner);

#[derive(Clone, Default)]
enum Inner {
    #[default]
    Empty,
    Owned(Vec<u8>),
    Mapped {
        map: Arc<os::Mapping>,
        start: usize,
        len: usize,
    },
}

impl std::fmt::Debug for WeightBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.0 {
            Inner::Empty => "empty",
            Inner::Owned(_) => "vec",
            Inner::Mapped { .. } => "huge-page mapping",
        };
        write!(f, "WeightBytes({} bytes, {kind})", self.len())
    }
}

impl WeightBytes {
    /// `len` bytes written by `fill` (which gets them zeroed), placed in a huge-page mapping
    /// where [`huge_pages`] holds and `len` is at least 64 KiB (`MIN_BYTES`), else in a `Vec`.
    pub fn filled(len: usize, fill: impl FnOnce(&mut [u8])) -> Self {
        match Self::mapped(len) {
            Ok(mut fill_here) => {
                fill(fill_here.as_mut_slice());
                fill_here.done()
            }
            Err(()) => {
                let mut v = vec![0u8; len];
                fill(&mut v);
                Self::from_vec(v)
            }
        }
    }

    /// Room for `len` bytes in a mapping, where [`huge_pages`] holds, `len` is at least
    /// `MIN_BYTES` and the system gives one.
    fn mapped(len: usize) -> Result<Unfilled, ()> {
        if len < MIN_BYTES || !huge_pages() {
            return Err(());
        }
        let (map, start) = os::place(len).ok_or(())?;
        Ok(Unfilled { map, start, len })
    }

    /// A copy of `bytes` ([`Self::filled`]).
    pub fn copy_of(bytes: &[u8]) -> Self {
        Self::filled(bytes.len(), |out| out.copy_from_slice(bytes))
    }

    /// `v`'s bytes: copied into a mapping where [`Self::filled`] would place them, else `v`
    /// itself (no copy).
    pub fn from_vec_or_mapped(v: Vec<u8>) -> Self {
        match Self::mapped(v.len()) {
            Ok(mut here) => {
                here.as_mut_slice().copy_from_slice(&v);
                here.done()
            }
            Err(()) => Self::from_vec(v),
        }
    }

    /// `v` itself, in no mapping.
    pub fn from_vec(v: Vec<u8>) -> Self {
        if v.is_empty() {
            Self(Inner::Empty)
        } else {
            Self(Inner::Owned(v))
        }
    }

    /// Whether the bytes are in a huge-page mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Inner::Mapped { .. })
    }
}

/// A range of a mapping handed out by `os::place` and not yet shared: written through
/// [`Self::as_mut_slice`], then made a [`WeightBytes`] by [`Self::done`].
struct Unfilled {
    map: Arc<os::Mapping>,
    start: usize,
    len: usize,
}

impl Unfilled {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `place` hands out `start..start + len` of `map` once, in bounds, to the
        // `Unfilled` alone (it is neither `Clone` nor shared until `done`); the bytes are
        // initialized (zero pages of an anonymous mapping).
        unsafe { std::slice::from_raw_parts_mut(self.map.ptr().add(self.start), self.len) }
    }

    fn done(self) -> WeightBytes {
        let Unfilled { map, start, len } = self;
        WeightBytes(Inner::Mapped { map, start, len })
    }
}

impl std::ops::Deref for WeightBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Inner::Empty => &[],
            Inner::Owned(v) => v,
            // SAFETY: `start..start + len` lies in the mapping (checked by `place`), was
            // written once by `filled` before this value existed, and is never written again;
            // the `Arc` keeps the mapping alive as long as `self`.
            Inner::Mapped { map, start, len } => unsafe {
                std::slice::from_raw_parts(map.ptr().add(*start), *len)
            },
        }
    }
}

/// Whether weights go to huge-page mappings: Linux, and `ACT_HUGE_PAGES` is not `0`.
pub fn huge_pages() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        cfg!(target_os = "linux") && std::env::var("ACT_HUGE_PAGES").map_or(true, |v| v.trim() != "0")
    })
}

#[cfg(target_os = "linux")]
mod os {
    use super::{ALIGN, CHUNK};
    use std::sync::{Arc, Mutex, Weak};

    /// Huge page size.
    const HUGE: usize = 2 << 20;

    /// An anonymous mapping, 2 MiB-aligned, marked for huge pages; unmapped when dropped.
    pub(super) struct Mapping {
        ptr: std::ptr::NonNull<u8>,
        len: usize,
    }

    // SAFETY: a Mapping is plain memory owned by its value; who reads or writes which bytes
    // is governed by `WeightBytes` (each range written once, by one thread, before it is
    // shared, then only read).
    unsafe impl Send for Mapping {}
    // SAFETY: as above.
    unsafe impl Sync for Mapping {}

    impl Mapping {
        /// A new mapping of `len` bytes (rounded up to 2 MiB); `None` where the system
        /// refuses it.
        fn new(len: usize) -> Option<Self> {
            let len = len.checked_next_multiple_of(HUGE)?;
            let over = len.checked_add(HUGE)?;
            // SAFETY: an anonymous private mapping at an address of the kernel's choosing
            // touches no existing memory.
            let raw = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    over,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if raw == libc::MAP_FAILED {
                return None;
            }
            let addr = raw as usize;
            let head = addr.next_multiple_of(HUGE) - addr;
            let start = raw.cast::<u8>().wrapping_add(head);
            let tail = over - head - len;
            // SAFETY: the head and tail are the parts of the fresh mapping outside
            // `start..start + len`; nothing refers to them.
            unsafe {
                if head > 0 {
                    libc::munmap(raw, head);
                }
                if tail > 0 {
                    libc::munmap(start.wrapping_add(len).cast(), tail);
                }
                // A hint: without it (or where THP is off) the pages are ordinary ones.
                libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE);
            }
            Some(Self {
                ptr: std::ptr::NonNull::new(start)?,
                len,
            })
        }

        pub(super) fn ptr(&self) -> *mut u8 {
            self.ptr.as_ptr()
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: the range is this mapping's own, and no WeightBytes refers to it
            // (each holds an Arc of it).
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), self.len);
            }
        }
    }

    /// The shared mapping being filled and the bytes of it handed out; weak, so that a
    /// mapping whose matrices were all dropped (a model unloaded) is unmapped, not kept for
    /// the next one.
    static CURRENT: Mutex<Option<(Weak<Mapping>, usize)>> = Mutex::new(None);

    /// Room for `len` bytes: a range of the current shared mapping (a new one when it is
    /// full), or a mapping of its own past `CHUNK / 4`; `None` where the system refuses.
    pub(super) fn place(len: usize) -> Option<(Arc<Mapping>, usize)> {
        if len > CHUNK / 4 {
            return Some((Arc::new(Mapping::new(len)?), 0));
        }
        let mut current = match CURRENT.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some((weak, used)) = current.as_mut()
            && let Some(map) = weak.upgrade()
        {
            let start = used.next_multiple_of(ALIGN);
            if start + len <= map.len {
                *used = start + len;
                return Some((map, start));
            }
        }
        let map = Arc::new(Mapping::new(CHUNK)?);
        *current = Some((Arc::downgrade(&map), len));
        Some((map, 0))
    }
}

#[cfg(not(target_os = "linux"))]
mod os {
    /// No mappings here: [`super::WeightBytes`] keeps a `Vec`.
    pub(super) struct Mapping;

    impl Mapping {
        pub(super) fn ptr(&self) -> *mut u8 {
            std::ptr::null_mut()
        }
    }

    pub(super) fn place(_len: usize) -> Option<(std::sync::Arc<Mapping>, usize)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_back_as_written_in_mappings_and_vecs() {
        let sizes = [0usize, 1, 100, MIN_BYTES - 1, MIN_BYTES, 3 << 20, CHUNK / 4 + 1];
        let made: Vec<(usize, WeightBytes)> = sizes
            .iter()
            .map(|&n| {
                (
                    n,
                    WeightBytes::filled(n, |out| {
                        assert!(out.iter().all(|&b| b == 0), "zeroed before fill");
                        for (i, b) in out.iter_mut().enumerate() {
                            *b = (i * 31 % 251) as u8;
                        }
                    }),
                )
            })
            .collect();
        for (n, w) in &made {
            assert_eq!(w.len(), *n);
            assert!(
                w.iter().enumerate().all(|(i, &b)| b == (i * 31 % 251) as u8),
                "{n}"
            );
            if cfg!(target_os = "linux") && huge_pages() && *n >= MIN_BYTES {
                assert!(w.is_mapped(), "{n} bytes should be in a mapping");
                // Cache-line aligned for the kernels.
                assert_eq!(w.as_ptr() as usize % ALIGN, 0);
            } else {
                assert!(!w.is_mapped(), "{n}");
            }
        }
        // Neighbours in one mapping do not overlap, and clones share the bytes.
        let a = WeightBytes::copy_of(&vec![7u8; MIN_BYTES + 3]);
        let b = WeightBytes::copy_of(&vec![9u8; MIN_BYTES]);
        let a2 = a.clone();
        drop(a);
        assert!(a2.iter().all(|&x| x == 7) && b.iter().all(|&x| x == 9));
        assert_eq!(a2.len(), MIN_BYTES + 3);
    }
}
