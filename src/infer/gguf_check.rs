//! A bounds check of a GGUF file's header before candle parses it.
//!
//! candle's reader trusts the lengths and counts it reads: a damaged or hostile file that claims a
//! 2^60-byte string or a tensor of 2^50 elements makes it allocate without limit (an abort, not
//! an error) or overflow arithmetic. [`check`] walks the same header with every length checked
//! against the bytes that remain, every tensor's size computed with checked arithmetic and
//! required to lie inside the file, so that what reaches candle is at worst semantically wrong,
//! never unbounded.

use std::io::Read;

/// Largest counts we accept (far above any real model; small enough that a bad header cannot
/// make us allocate much before it runs out of bytes).
const MAX_ITEMS: u64 = 1 << 24;
const MAX_DIMS: u32 = 4;
const MAX_ARRAY_DEPTH: usize = 4;

/// (block size in elements, bytes per block) of the ggml types candle reads.
fn ggml_type(id: u32) -> Option<(u64, u64)> {
    Some(match id {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        30 => (1, 2),     // BF16
        _ => return None,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    version: u32,
}

impl Reader<'_> {
    fn take(&mut self, n: u64, what: &str) -> Result<&[u8], String> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(format!("{what} needs {n} bytes at offset {}, {left} remain", self.pos));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        if self.version == 1 {
            return self.u32(what).map(u64::from);
        }
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn count(&mut self, what: &str) -> Result<u64, String> {
        let n = self.u64(what)?;
        if n > MAX_ITEMS {
            return Err(format!("{what} is {n}, more than any model has"));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.u64(what)?;
        let b = self.take(len, what)?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    /// Skips a value of type `ty`, returning it as u64 when it is an integer.
    fn value(&mut self, ty: u32, depth: usize, what: &str) -> Result<Option<u64>, String> {
        match ty {
            0 | 1 | 7 => Ok(Some(u64::from(self.take(1, what)?[0]))),
            2 | 3 => {
                let b = self.take(2, what)?;
                Ok(Some(u64::from(u16::from_le_bytes([b[0], b[1]]))))
            }
            4 | 5 => self.u32(what).map(|v| Some(u64::from(v))),
            6 => self.take(4, what).map(|_| None),
            10 | 11 => {
                let b = self.take(8, what)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Ok(Some(u64::from_le_bytes(a)))
            }
            12 => self.take(8, what).map(|_| None),
            8 => self.string(what).map(|_| None),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("{what}: arrays nested too deep"));
                }
                let elem = self.u32(what)?;
                let n = self.count(what)?;
                for _ in 0..n {
                    self.value(elem, depth + 1, what)?;
                }
                Ok(None)
            }
            other => Err(format!("{what} has unknown value type {other}")),
        }
    }
}

/// Checks the header and tensor table of the GGUF file in `file` (of `file_len` bytes). Reads at
/// most the first 64 MiB (headers of real models are a few MiB: the tokenizer's vocabulary).
pub fn check(file: &mut impl Read, file_len: u64) -> Result<(), String> {
    let mut head = Vec::new();
    file.take(64 << 20).read_to_end(&mut head).map_err(|e| e.to_string())?;
    check_bytes(&head, file_len)
}

/// [`check`] over the header bytes (the file's start) and the file's full length.
pub fn check_bytes(head: &[u8], file_len: u64) -> Result<(), String> {
    let mut r = Reader { bytes: head, pos: 0, version: 3 };
    let magic = r.take(4, "the magic number")?;
    if magic != b"GGUF" {
        return Err("not a GGUF file (no GGUF magic number)".into());
    }
    let version = r.u32("the version")?;
    if !(1..=3).contains(&version) {
        return Err(format!("unsupported GGUF version {version}"));
    }
    r.version = version;
    let n_tensors = r.count("the tensor count")?;
    let n_kv = r.count("the metadata count")?;
    let mut alignment = 32u64;
    for _ in 0..n_kv {
        let key = r.string("a metadata key")?;
        let ty = r.u32(&key)?;
        if let Some(v) = r.value(ty, 0, &key)? {
            if key == "general.alignment" {
                if v == 0 || v > 1 << 20 || !v.is_power_of_two() {
                    return Err(format!("general.alignment {v} is not a small power of two"));
                }
                alignment = v;
            }
        }
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = r.string("a tensor name")?;
        let n_dims = r.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!("tensor `{name}` has {n_dims} dimensions"));
        }
        let mut elems: u64 = 1;
        for _ in 0..n_dims {
            let d = r.u64(&name)?;
            elems = elems
                .checked_mul(d)
                .filter(|&e| e <= 1 << 40)
                .ok_or_else(|| format!("tensor `{name}` has an impossible shape"))?;
        }
        let ty = r.u32(&name)?;
        let (block, bytes_per_block) =
            ggml_type(ty).ok_or_else(|| format!("tensor `{name}` has unknown type {ty}"))?;
        if !elems.is_multiple_of(block) {
            return Err(format!(
                "tensor `{name}`: {elems} elements are not whole blocks of {block}"
            ));
        }
        let offset = r.u64(&name)?;
        let size = (elems / block)
            .checked_mul(bytes_per_block)
            .ok_or_else(|| format!("tensor `{name}` is impossibly large"))?;
        tensors.push((name, offset, size));
    }
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    for (name, offset, size) in tensors {
        let end = data_start
            .checked_add(offset)
            .and_then(|x| x.checked_add(size))
            .ok_or_else(|| format!("tensor `{name}` lies beyond any file"))?;
        if end > file_len {
            return Err(format!(
                "truncated: tensor `{name}` ends at byte {end} but the file has {file_len} bytes"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_lengths_are_refused_without_allocating() {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes()); // tensors
        b.extend(1u64.to_le_bytes()); // one kv
        b.extend((u64::MAX / 2).to_le_bytes()); // a key of 2^63 bytes
        let err = check_bytes(&b, b.len() as u64).unwrap_err();
        assert!(err.contains("remain"), "{err}");
        assert!(check_bytes(b"GGML....", 8).unwrap_err().contains("magic"));
        assert!(check_bytes(b"GG", 2).is_err());
    }
}
