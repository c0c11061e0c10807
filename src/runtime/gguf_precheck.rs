//! A walk over a GGUF header that checks every length and count against the file before
//! candle's reader sizes anything by them.
//!
//! candle's `gguf_file::Content::read` trusts the file: a string or array length of 2^60
//! allocates (and aborts the process), `general.alignment = 0` divides by zero (a panic). This
//! walk reads the same layout (GGUF v1–v3: magic, version, tensor and key/value counts, the
//! key/value pairs, the tensor table) without allocating by any count, and refuses a header
//! whose lengths exceed the bytes left in the file, whose value types are unknown, whose
//! alignment is not a power of two, or whose tensors have more than four dimensions.

use std::io::{Read, Seek, SeekFrom};

/// GGUF value types (the file format's numbering).
const U8: u32 = 0;
const I8: u32 = 1;
const U16: u32 = 2;
const I16: u32 = 3;
const U32: u32 = 4;
const I32: u32 = 5;
const F32: u32 = 6;
const BOOL: u32 = 7;
const STRING: u32 = 8;
const ARRAY: u32 = 9;
const U64: u32 = 10;
const I64: u32 = 11;
const F64: u32 = 12;

/// Most dimensions of a GGML tensor.
const MAX_DIMS: u32 = 4;
/// Longest key name worth reading to compare (longer ones are skipped unread).
const MAX_KEY: u64 = 256;
/// Largest tensor-data alignment accepted (llama.cpp uses 32; a power of two is required).
const MAX_ALIGNMENT: u32 = 1 << 20;

/// Walks the header of the GGUF file in `r` (`len` bytes long) from its start; leaves the
/// reader anywhere. An error says what is wrong and where.
pub(crate) fn check_gguf_header<R: Read + Seek>(r: &mut R, len: u64) -> Result<(), String> {
    r.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut s = Scan {
        r,
        pos: 0,
        len,
        v1: false,
    };
    let mut magic = [0u8; 4];
    s.read(&mut magic)?;
    if &magic != b"GGUF" {
        return Err("not a GGUF file (no GGUF magic)".into());
    }
    let version = s.u32()?;
    s.v1 = match version {
        1 => true,
        2 | 3 => false,
        v => return Err(format!("GGUF version {v} is not supported (1–3 are)")),
    };
    let n_tensors = s.count()?;
    let n_kv = s.count()?;
    // Every key/value pair and tensor entry takes at least 13 and 24 bytes.
    s.fits(n_kv.saturating_mul(13), "key/value pairs")?;
    s.fits(n_tensors.saturating_mul(24), "tensor entries")?;
    for _ in 0..n_kv {
        let key = s.key()?;
        let ty = s.u32()?;
        if key == "general.alignment" {
            if ty != U32 {
                return Err(format!("general.alignment has value type {ty}, not u32"));
            }
            let a = s.u32()?;
            if !a.is_power_of_two() || a > MAX_ALIGNMENT {
                return Err(format!(
                    "general.alignment = {a} is not a power of two up to {MAX_ALIGNMENT}"
                ));
            }
            continue;
        }
        s.value(ty, 0).map_err(|e| format!("metadata `{key}`: {e}"))?;
    }
    for i in 0..n_tensors {
        let name = s.key()?;
        let dims = s.u32()?;
        if dims > MAX_DIMS {
            return Err(format!(
                "tensor {i} `{name}` has {dims} dimensions (at most {MAX_DIMS})"
            ));
        }
        for _ in 0..dims {
            s.count()?;
        }
        s.skip(4 + 8)?; // type, offset
    }
    Ok(())
}

struct Scan<'a, R> {
    r: &'a mut R,
    pos: u64,
    len: u64,
    v1: bool,
}

impl<R: Read + Seek> Scan<'_, R> {
    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn fits(&self, n: u64, what: &str) -> Result<(), String> {
        if n > self.left() {
            return Err(format!(
                "{what}: {n} bytes needed at offset {}, but the file has {} left",
                self.pos,
                self.left()
            ));
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.fits(buf.len() as u64, "the header")?;
        self.r
            .read_exact(buf)
            .map_err(|e| format!("reading the header at offset {}: {e}", self.pos))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        self.fits(n, "a value")?;
        let step = i64::try_from(n).map_err(|_| format!("a length of {n} bytes"))?;
        self.r
            .seek(SeekFrom::Current(step))
            .map_err(|e| format!("seeking in the header at offset {}: {e}", self.pos))?;
        self.pos += n;
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        self.read(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A count or length: u32 in GGUF v1, u64 after.
    fn count(&mut self) -> Result<u64, String> {
        if self.v1 {
            self.u32().map(u64::from)
        } else {
            self.u64()
        }
    }

    /// A string that must fit in the file; returned when short enough to be a key.
    fn key(&mut self) -> Result<String, String> {
        let n = self.count()?;
        self.fits(n, "a string")?;
        if n > MAX_KEY {
            self.skip(n)?;
            return Ok(String::new());
        }
        let mut b = vec![0u8; n as usize];
        self.read(&mut b)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// Skips one value of type `ty`; arrays nest at most once (an array of arrays).
    fn value(&mut self, ty: u32, depth: u32) -> Result<(), String> {
        match ty {
            U8 | I8 | BOOL => self.skip(1),
            U16 | I16 => self.skip(2),
            U32 | I32 | F32 => self.skip(4),
            U64 | I64 | F64 => self.skip(8),
            STRING => {
                let n = self.count()?;
                self.skip(n)
            }
            ARRAY if depth < 2 => {
                let elem = self.u32()?;
                let n = self.count()?;
                match elem_size(elem) {
                    Some(size) => self.skip(n.saturating_mul(size)),
                    None => {
                        // Strings or arrays: each takes at least its length field.
                        self.fits(n.saturating_mul(if self.v1 { 4 } else { 8 }), "an array")?;
                        for _ in 0..n {
                            self.value(elem, depth + 1)?;
                        }
                        Ok(())
                    }
                }
            }
            ARRAY => Err("arrays nested more than twice".into()),
            t => Err(format!("unknown value type {t}")),
        }
    }
}

/// Bytes of one element of a fixed-size type.
fn elem_size(ty: u32) -> Option<u64> {
    match ty {
        U8 | I8 | BOOL => Some(1),
        U16 | I16 => Some(2),
        U32 | I32 | F32 => Some(4),
        U64 | I64 | F64 => Some(8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 header with the given key/value bytes and tensor entries.
    fn header(kvs: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64])]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((kvs.len() as u64).to_le_bytes());
        let s = |b: &mut Vec<u8>, t: &str| {
            b.extend((t.len() as u64).to_le_bytes());
            b.extend(t.as_bytes());
        };
        for (k, ty, v) in kvs {
            s(&mut b, k);
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        for (name, dims) in tensors {
            s(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(0u32.to_le_bytes());
            b.extend(0u64.to_le_bytes());
        }
        b.extend([0u8; 64]);
        b
    }

    fn check(b: &[u8]) -> Result<(), String> {
        check_gguf_header(&mut std::io::Cursor::new(b), b.len() as u64)
    }

    fn string(t: &str) -> Vec<u8> {
        let mut v = (t.len() as u64).to_le_bytes().to_vec();
        v.extend(t.as_bytes());
        v
    }

    fn string_array(items: &[&str]) -> Vec<u8> {
        let mut v = STRING.to_le_bytes().to_vec();
        v.extend((items.len() as u64).to_le_bytes());
        items.iter().for_each(|t| v.extend(string(t)));
        v
    }

    #[test]
    fn a_sound_header_passes() {
        let b = header(
            &[
                ("general.architecture", STRING, string("llama")),
                ("general.alignment", U32, 32u32.to_le_bytes().to_vec()),
                ("tokenizer.ggml.tokens", ARRAY, string_array(&["a", "b"])),
                ("x.scores", ARRAY, {
                    let mut v = F32.to_le_bytes().to_vec();
                    v.extend(2u64.to_le_bytes());
                    v.extend([0u8; 8]);
                    v
                }),
            ],
            &[("w", &[4, 2])],
        );
        assert_eq!(check(&b), Ok(()));
    }

    #[test]
    fn lengths_counts_types_and_alignments_that_cannot_be_are_refused() {
        let huge = u64::MAX / 2;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                header(&[("general.alignment", U32, 0u32.to_le_bytes().to_vec())], &[]),
                "power of two",
            ),
            (
                header(&[("general.alignment", U32, 24u32.to_le_bytes().to_vec())], &[]),
                "power of two",
            ),
            (
                header(&[("general.alignment", U64, 32u64.to_le_bytes().to_vec())], &[]),
                "not u32",
            ),
            (header(&[("k", STRING, huge.to_le_bytes().to_vec())], &[]), "left"),
            (
                header(
                    &[("k", ARRAY, {
                        let mut v = F32.to_le_bytes().to_vec();
                        v.extend(huge.to_le_bytes());
                        v
                    })],
                    &[],
                ),
                "left",
            ),
            (
                header(
                    &[("k", ARRAY, {
                        let mut v = STRING.to_le_bytes().to_vec();
                        v.extend(huge.to_le_bytes());
                        v
                    })],
                    &[],
                ),
                "left",
            ),
            (header(&[("k", 99, vec![0; 8])], &[]), "unknown value type 99"),
            (header(&[], &[("w", &[1, 1, 1, 1, 1])]), "5 dimensions"),
        ];
        for (b, want) in cases {
            let e = check(&b).unwrap_err();
            assert!(e.contains(want), "expected {want:?} in {e}");
        }
        // Counts beyond the file.
        let mut b = header(&[], &[]);
        b[16..24].copy_from_slice(&huge.to_le_bytes());
        assert!(check(&b).unwrap_err().contains("key/value pairs"));
        assert!(check(b"GGUF").is_err());
        assert!(check(b"junk").unwrap_err().contains("magic"));
        // Every truncation of a sound header is an error, never a panic.
        let sound = header(
            &[("a", STRING, string("b")), ("t", ARRAY, string_array(&["x"]))],
            &[("w", &[2])],
        );
        let body = sound.len() - 64;
        for cut in 0..body {
            assert!(check(&sound[..cut]).is_err(), "cut at {cut}");
        }
    }
}
