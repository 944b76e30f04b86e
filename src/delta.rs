//! The rsync algorithm's parameters and helpers around fast_rsync.
//!
//! Signatures are computed in block-aligned chunks so that a file of any size
//! is signed with bounded memory; concatenating the chunks (each after the
//! first without its 12-byte header) is byte-identical to one whole-file
//! signature. Deltas are computed per window of the new file, each window
//! against the whole basis, which keeps the sender's memory bounded too.

use std::io;
use std::os::fd::BorrowedFd;

use fast_rsync::{IndexedSignature, Signature, SignatureOptions};
use rustix::fs::SeekFrom;

/// Size of a signature header: magic, block size, hash length.
pub const SIG_HEADER: usize = 12;
/// Fewest bytes of MD4 kept per block (the slave accepts 4..=16).
pub const MIN_HASH_LEN: u32 = 4;
pub const MIN_BLOCK: u32 = 512;
pub const MAX_BLOCK: u32 = 128 << 10;
/// Bytes of new data diffed (and of output produced) per delta message.
pub const WINDOW: usize = 4 << 20;
/// Largest window a slave accepts.
pub const MAX_WINDOW: usize = 8 << 20;

/// rsync's choice: about the square root of the length, a multiple of 8.
pub fn block_size_for(len: u64) -> u32 {
    let b = ((len as f64).sqrt() as u64) & !7;
    b.clamp(MIN_BLOCK as u64, MAX_BLOCK as u64) as u32
}

/// Bytes of MD4 kept per block: rsync's sizing (about 10 + 2·log2(len) −
/// log2(block) bits, less the 32 of the rolling sum), but never under 4.
/// A false block match costs only a resend: the BLAKE3 check catches it.
pub fn hash_len_for(len: u64, block: u32) -> u32 {
    let bits = 10 + 2 * len.max(1).ilog2() as i64 - block.max(1).ilog2() as i64;
    (((bits + 1 - 32 + 7) / 8) as u32).clamp(MIN_HASH_LEN, 16)
}

/// The window used for a given block size: block-aligned so that unchanged
/// aligned blocks always match.
pub fn window_for(block: u32) -> usize {
    let b = block as usize;
    (WINDOW / b).max(1) * b
}

/// Whether the slave accepts these signature parameters.
pub fn valid_params(block: u32, hash_len: u32) -> bool {
    (MIN_BLOCK..=MAX_BLOCK).contains(&block) && (4..=16).contains(&hash_len)
}

/// Expected serialized signature length for a basis of `len` bytes.
pub fn signature_len(len: u64, block: u32, hash_len: u32) -> u64 {
    SIG_HEADER as u64 + len.div_ceil(block as u64) * (4 + hash_len as u64)
}

/// Streams the signature of `fd`'s first `len` bytes to `emit`, chunk by chunk.
pub fn sign_file(
    fd: BorrowedFd,
    len: u64,
    block: u32,
    hash_len: u32,
    mut emit: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let opts = SignatureOptions {
        block_size: block,
        crypto_hash_size: hash_len,
    };
    let chunk = window_for(block);
    let mut buf = vec![0u8; chunk];
    let mut off = 0u64;
    let mut first = true;
    // A hole's blocks all have the signature of a zero block: computed once.
    let mut zero_entry: Option<Vec<u8>> = None;
    while off < len || first {
        let want = ((len - off) as usize).min(chunk);
        let bytes = if want >= block as usize && is_hole(fd, off, want as u64) {
            let e = zero_entry.get_or_insert_with(|| {
                Signature::calculate(&vec![0u8; block as usize], opts).serialized()[SIG_HEADER..]
                    .to_vec()
            });
            let mut out =
                Vec::with_capacity(SIG_HEADER + want / block as usize * e.len() + e.len());
            let head = Signature::calculate(&[], opts);
            out.extend_from_slice(head.serialized());
            for _ in 0..want / block as usize {
                out.extend_from_slice(e);
            }
            let rem = want % block as usize;
            if rem > 0 {
                buf[..rem].fill(0);
                out.extend_from_slice(
                    &Signature::calculate(&buf[..rem], opts).serialized()[SIG_HEADER..],
                );
            }
            out
        } else {
            read_exact_at(fd, &mut buf[..want], off)?;
            Signature::calculate(&buf[..want], opts).into_serialized()
        };
        emit(if first { &bytes } else { &bytes[SIG_HEADER..] })?;
        first = false;
        off += want as u64;
    }
    Ok(())
}

/// Whether `[off, off + len)` of a file is one hole (zeros that take no space).
pub fn is_hole(fd: BorrowedFd, off: u64, len: u64) -> bool {
    match rustix::fs::seek(fd, SeekFrom::Data(off)) {
        Ok(data) => data >= off + len,
        Err(rustix::io::Errno::NXIO) => true,
        Err(_) => false,
    }
}

/// pread until full; a short file is an error (it changed under us).
pub fn read_exact_at(fd: BorrowedFd, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = rustix::io::pread(fd, &mut *buf, off)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being read",
            ));
        }
        buf = &mut buf[n..];
        off += n as u64;
    }
    Ok(())
}

/// The librsync delta magic and its copy command with 8-byte offset and length.
const DELTA_MAGIC: [u8; 4] = 0x7273_0236u32.to_be_bytes();
const OP_COPY_N8_N8: u8 = 0x54;
const OP_END: u8 = 0;

/// The basis's signature, parsed once per file.
pub struct Basis<'a> {
    pub index: IndexedSignature<'a>,
    /// Per-block entries (rolling sum then strong hash), header stripped.
    entries: &'a [u8],
    block: u32,
    hash_len: u32,
    /// Length of the basis, as signed.
    len: u64,
}

impl<'a> Basis<'a> {
    pub fn new(sig: &'a Signature, len: u64) -> Basis<'a> {
        let bytes = sig.serialized();
        Basis {
            index: sig.index(),
            entries: &bytes[SIG_HEADER..],
            block: u32::from_be_bytes(bytes[4..8].try_into().unwrap()),
            hash_len: u32::from_be_bytes(bytes[8..12].try_into().unwrap()),
            len,
        }
    }

    pub fn block(&self) -> u32 {
        self.block
    }

    /// Encodes the delta of one block-aligned window of the new file.
    ///
    /// Blocks still where they were are found first, by signing the window
    /// the way the basis was signed (SIMD MD4 over whole blocks) and
    /// comparing entries index by index; fast_rsync's rolling search then runs
    /// only over the runs of blocks that did not match in place. For files
    /// edited in place this avoids a scalar MD4 per block; shifted content
    /// falls into a run and is still found. The output is one librsync delta.
    pub fn encode(
        &self,
        window: &[u8],
        window_off: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), fast_rsync::DiffError> {
        let b = self.block as usize;
        let e = 4 + self.hash_len as usize;
        let opts = SignatureOptions {
            block_size: self.block,
            crypto_hash_size: self.hash_len,
        };
        let ours = Signature::calculate(window, opts);
        let ours = &ours.serialized()[SIG_HEADER..];
        let first = (window_off / b as u64) as usize;
        let blocks = window.len().div_ceil(b);
        let block_len = |start: u64, total: u64| (total.saturating_sub(start)).min(b as u64);
        let in_place = |j: usize| {
            let i = first + j;
            let at = i as u64 * b as u64;
            self.entries.len() >= (i + 1) * e
                && block_len(at, self.len) == block_len((j * b) as u64, window.len() as u64)
                && ours[j * e..(j + 1) * e] == self.entries[i * e..(i + 1) * e]
        };
        out.clear();
        out.extend_from_slice(&DELTA_MAGIC);
        let mut j = 0;
        let mut scratch = Vec::new();
        while j < blocks {
            let matched = in_place(j);
            let mut k = j + 1;
            while k < blocks && in_place(k) == matched {
                k += 1;
            }
            let start = j * b;
            let end = (k * b).min(window.len());
            if matched {
                out.push(OP_COPY_N8_N8);
                out.extend_from_slice(&(window_off + start as u64).to_be_bytes());
                out.extend_from_slice(&((end - start) as u64).to_be_bytes());
            } else {
                scratch.clear();
                fast_rsync::diff(&self.index, &window[start..end], &mut scratch)?;
                // Splice the commands between its magic and its end marker.
                debug_assert_eq!(scratch.last(), Some(&OP_END));
                out.extend_from_slice(&scratch[DELTA_MAGIC.len()..scratch.len() - 1]);
            }
            j = k;
        }
        out.push(OP_END);
        Ok(())
    }
}

/// Feeds `n` zero bytes (a hole) to a hasher without reading them.
pub fn hash_zeros(h: &mut blake3::Hasher, mut n: u64) {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// Literal and copied byte counts of a librsync-format delta.
pub fn delta_stats(delta: &[u8]) -> (u64, u64) {
    let mut lit = 0u64;
    let mut copied = 0u64;
    let mut p = 4; // magic
    let int = |p: &mut usize, n: usize| -> Option<u64> {
        let b = delta.get(*p..*p + n)?;
        *p += n;
        Some(b.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64))
    };
    while let Some(&op) = delta.get(p) {
        p += 1;
        match op {
            0 => break,
            1..=0x40 => {
                lit += op as u64;
                p += op as usize;
            }
            0x41..=0x44 => {
                let Some(n) = int(&mut p, 1 << (op - 0x41)) else {
                    break;
                };
                lit += n;
                p += n as usize;
            }
            0x45..=0x54 => {
                let i = op - 0x45;
                let (a, b) = (1usize << (i / 4), 1usize << (i % 4));
                let (Some(_), Some(n)) = (int(&mut p, a), int(&mut p, b)) else {
                    break;
                };
                copied += n;
            }
            _ => break,
        }
    }
    (lit, copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn chunked_signature_equals_whole_and_delta_counts() {
        let data: Vec<u8> = (0..(3 * WINDOW + 1234))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let f = tempfile::tempfile().unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &data, 0).unwrap();
        let block = 4096;
        let mut chunked = Vec::new();
        let hash_len = hash_len_for(data.len() as u64, block);
        assert_eq!(hash_len, MIN_HASH_LEN);
        assert_eq!(hash_len_for(1 << 40, MAX_BLOCK), 6);
        sign_file(f.as_fd(), data.len() as u64, block, hash_len, |b| {
            chunked.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        let whole = Signature::calculate(
            &data,
            SignatureOptions {
                block_size: block,
                crypto_hash_size: hash_len,
            },
        );
        assert_eq!(chunked, whole.serialized());
        assert_eq!(
            chunked.len() as u64,
            signature_len(data.len() as u64, block, hash_len)
        );

        // Holes are signed without being read, identically.
        let sparse = tempfile::tempfile().unwrap();
        let len = 3 * WINDOW as u64 + 777;
        sparse.set_len(len).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&sparse, b"data", WINDOW as u64 + 5).unwrap();
        let mut content = vec![0u8; len as usize];
        content[WINDOW + 5..WINDOW + 9].copy_from_slice(b"data");
        let mut signed = Vec::new();
        sign_file(sparse.as_fd(), len, block, hash_len, |b| {
            signed.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        let expect = Signature::calculate(
            &content,
            SignatureOptions {
                block_size: block,
                crypto_hash_size: hash_len,
            },
        );
        assert_eq!(signed, expect.serialized());

        // An in-place edit, a shifted region and a grown tail, window by window.
        let mut new = data.clone();
        new[5000] ^= 1;
        new.splice(3 * WINDOW - 100..3 * WINDOW - 100, [7u8; 333]);
        new.extend_from_slice(b"tail");
        let basis = Basis::new(&whole, data.len() as u64);
        let w = window_for(block);
        let mut rebuilt = Vec::new();
        let (mut lit, mut copied) = (0, 0);
        for (k, win) in new.chunks(w).enumerate() {
            let mut delta = Vec::new();
            basis.encode(win, (k * w) as u64, &mut delta).unwrap();
            let (l, c) = delta_stats(&delta);
            lit += l;
            copied += c;
            fast_rsync::apply_limited(&data, &delta, &mut rebuilt, usize::MAX).unwrap();
        }
        assert_eq!(rebuilt, new);
        assert_eq!(lit + copied, new.len() as u64);
        assert!(lit <= 4 * block as u64 + 333 + 4, "literal {lit}");
    }
}
