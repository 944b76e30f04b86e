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

/// Granule of the content digest: aligned blocks of this size that are all
/// zeros are counted, not hashed.
const DIGEST_BLOCK: usize = 4096;

/// The content digest both ends compute for a file (FileEnd, checksum
/// listings), in aligned 4 KiB blocks where every maximal run of all-zero
/// blocks counts, not hashes. Plain BLAKE3 cannot skip zeros (each chunk's
/// chaining value depends on its position), so hashing a 16 TiB hole with
/// it takes an hour; here a hole costs O(1) and data costs O(its length),
/// whichever way the same bytes arrive (data frames, holes, zeros inside
/// data).
///
/// Two streams, so that the data stays aligned to BLAKE3's chunks and runs
/// of blocks are hashed many chunks at a time (SIMD): `data` gets the
/// non-zero blocks back to back; `shape` gets the runs, `D` + count:u64le
/// (data blocks) and `Z` + count:u64le (zero blocks), then `T` +
/// tail_len:u64le + the final partial block + total_len:u64le. The digest
/// is BLAKE3 over both streams' hashes. Shape and data give back the
/// content, so collisions are BLAKE3 collisions.
#[derive(Clone)]
pub struct Hasher {
    data: blake3::Hasher,
    shape: blake3::Hasher,
    /// Bytes of content consumed.
    pos: u64,
    /// The current incomplete block (`pos % DIGEST_BLOCK` bytes).
    partial: Vec<u8>,
    /// The run in progress: all-zero blocks (true) or data blocks, and its
    /// length in blocks (0: none yet).
    run_zero: bool,
    run: u64,
}

impl Default for Hasher {
    fn default() -> Hasher {
        Hasher::new()
    }
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, &x| a | x) == 0
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher {
            data: blake3::Hasher::new_derive_key("georep content digest v2 data"),
            shape: blake3::Hasher::new_derive_key("georep content digest v2 shape"),
            pos: 0,
            partial: Vec::with_capacity(DIGEST_BLOCK),
            run_zero: false,
            run: 0,
        }
    }

    /// Bytes of content consumed so far.
    pub fn len(&self) -> u64 {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Extends the run in progress by `n` blocks of kind `zero`, writing
    /// the finished run's record when the kind changes.
    fn runs(&mut self, zero: bool, n: u64) {
        if n == 0 {
            return;
        }
        if self.run > 0 && self.run_zero != zero {
            Hasher::record(&mut self.shape, self.run_zero, self.run);
            self.run = 0;
        }
        self.run_zero = zero;
        self.run += n;
    }

    fn record(shape: &mut blake3::Hasher, zero: bool, n: u64) {
        shape.update(if zero { b"Z" } else { b"D" });
        shape.update(&n.to_le_bytes());
    }

    /// Whole blocks: runs of data blocks go to `data` in one call each.
    fn blocks(&mut self, b: &[u8]) {
        debug_assert_eq!(b.len() % DIGEST_BLOCK, 0);
        let mut start = 0;
        for (i, block) in b.chunks_exact(DIGEST_BLOCK).enumerate() {
            if is_zero(block) {
                let at = i * DIGEST_BLOCK;
                if start < at {
                    self.data.update(&b[start..at]);
                    self.runs(false, ((at - start) / DIGEST_BLOCK) as u64);
                }
                self.runs(true, 1);
                start = at + DIGEST_BLOCK;
            }
        }
        if start < b.len() {
            self.data.update(&b[start..]);
            self.runs(false, ((b.len() - start) / DIGEST_BLOCK) as u64);
        }
    }

    /// Appends content bytes.
    pub fn update(&mut self, mut data: &[u8]) -> &mut Hasher {
        self.pos += data.len() as u64;
        if !self.partial.is_empty() {
            let take = (DIGEST_BLOCK - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < DIGEST_BLOCK {
                return self;
            }
            let block = std::mem::take(&mut self.partial);
            self.blocks(&block);
            self.partial = block;
            self.partial.clear();
        }
        let whole = data.len() - data.len() % DIGEST_BLOCK;
        self.blocks(&data[..whole]);
        self.partial.extend_from_slice(&data[whole..]);
        self
    }

    /// Appends `n` zero bytes in O(1) (at most two partial blocks are touched).
    pub fn zeros(&mut self, mut n: u64) -> &mut Hasher {
        self.pos += n;
        if !self.partial.is_empty() {
            let take = ((DIGEST_BLOCK - self.partial.len()) as u64).min(n);
            self.partial.resize(self.partial.len() + take as usize, 0);
            n -= take;
            if self.partial.len() < DIGEST_BLOCK {
                return self;
            }
            let block = std::mem::take(&mut self.partial);
            self.blocks(&block);
            self.partial = block;
            self.partial.clear();
        }
        self.runs(true, n / DIGEST_BLOCK as u64);
        self.partial.resize((n % DIGEST_BLOCK as u64) as usize, 0);
        self
    }

    /// Appends `bytes` found at `offset` (at or past what was consumed): the
    /// gap before it is zeros.
    pub fn data(&mut self, offset: u64, bytes: &[u8]) -> &mut Hasher {
        self.zeros(offset.saturating_sub(self.pos));
        self.update(bytes)
    }

    pub fn finalize(&self) -> blake3::Hash {
        let mut shape = self.shape.clone();
        if self.run > 0 {
            Hasher::record(&mut shape, self.run_zero, self.run);
        }
        shape.update(b"T");
        shape.update(&(self.partial.len() as u64).to_le_bytes());
        shape.update(&self.partial);
        shape.update(&self.pos.to_le_bytes());
        let mut h = blake3::Hasher::new_derive_key("georep content digest v2");
        h.update(self.data.finalize().as_bytes());
        h.update(shape.finalize().as_bytes());
        h.finalize()
    }
}

/// Feeds `n` zero bytes (a hole) to a hasher without reading them, in O(1).
pub fn hash_zeros(h: &mut Hasher, n: u64) {
    h.zeros(n);
}

/// The next data extent of `fd` at or after `off`, as (start, end), both
/// clipped to `len`; (len, len) when only a hole is left (SEEK_DATA).
pub fn next_extent(fd: BorrowedFd, off: u64, len: u64) -> io::Result<(u64, u64)> {
    let data = match rustix::fs::seek(fd, SeekFrom::Data(off)) {
        Ok(d) => d.min(len),
        Err(rustix::io::Errno::NXIO) => len,
        Err(e) => return Err(e.into()),
    };
    let hole = if data < len {
        rustix::fs::seek(fd, SeekFrom::Hole(data))?.min(len)
    } else {
        len
    };
    Ok((data, hole))
}

/// The content digest of `fd`'s first `len` bytes, reading only its data
/// extents (SEEK_DATA), so a sparse file costs what its data costs. A file
/// that shrinks meanwhile is hashed as far as it goes.
pub fn digest_fd(fd: BorrowedFd, len: u64) -> io::Result<[u8; 32]> {
    const CHUNK: usize = 256 << 10;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut off = 0u64;
    'outer: while off < len {
        let (data, hole) = next_extent(fd, off, len)?;
        h.zeros(data - off);
        let mut p = data;
        while p < hole {
            let n = ((hole - p) as usize).min(CHUNK);
            let got = rustix::io::pread(fd, &mut buf[..n], p)?;
            if got == 0 {
                break 'outer;
            }
            h.update(&buf[..got]);
            p += got as u64;
        }
        off = hole;
    }
    Ok(*h.finalize().as_bytes())
}

/// Why a delta could not be applied.
#[derive(Debug)]
pub enum ApplyError {
    /// The delta itself is malformed or reads out of bounds: a protocol error.
    Invalid(String),
    /// The basis could not be read as signed (someone truncated it): the
    /// file fails, the session goes on.
    Basis(io::Error),
}

/// Applies a librsync delta (as `fast_rsync::apply_limited` does, same
/// checks) reading the basis with pread from `basis`, whose signed length is
/// `basis_len`, appending at most `limit` bytes to `out`. No mapping: a basis
/// truncated meanwhile is an error here, not a SIGBUS.
pub fn apply_pread(
    basis: BorrowedFd,
    basis_len: u64,
    delta: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), ApplyError> {
    let bad = |m: &str| ApplyError::Invalid(m.to_string());
    let mut p = 0usize;
    let take = |p: &mut usize, n: usize| -> Result<&[u8], ApplyError> {
        let b = delta
            .get(*p..p.saturating_add(n))
            .ok_or_else(|| ApplyError::Invalid("truncated delta".into()))?;
        *p += n;
        Ok(b)
    };
    let int = |b: &[u8]| b.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64);
    if take(&mut p, 4)? != DELTA_MAGIC {
        return Err(bad("incorrect delta magic"));
    }
    let start = out.len();
    loop {
        let op = take(&mut p, 1)?[0];
        match op {
            OP_END => break,
            1..=0x44 => {
                let n = if op <= 0x40 {
                    op as u64
                } else {
                    int(take(&mut p, 1 << (op - 0x41))?)
                };
                if n > (limit - (out.len() - start)) as u64 {
                    return Err(bad("delta output over its limit"));
                }
                let lit = take(&mut p, n as usize)?;
                out.extend_from_slice(lit);
            }
            0x45..=OP_COPY_N8_N8 => {
                let i = op - 0x45;
                let off = int(take(&mut p, 1 << (i / 4))?);
                let len = int(take(&mut p, 1 << (i % 4))?);
                if len == 0 {
                    return Err(bad("empty copy in a delta"));
                }
                if off.checked_add(len).is_none_or(|e| e > basis_len) {
                    return Err(bad("delta copy out of bounds"));
                }
                if len > (limit - (out.len() - start)) as u64 {
                    return Err(bad("delta output over its limit"));
                }
                let at = out.len();
                out.resize(at + len as usize, 0);
                read_exact_at(basis, &mut out[at..], off).map_err(ApplyError::Basis)?;
            }
            _ => return Err(bad("unknown delta command")),
        }
    }
    if p != delta.len() {
        return Err(bad("data after the end of a delta"));
    }
    Ok(())
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

    /// The digest depends on the content only, not on how it was fed, and
    /// a huge hole costs nothing.
    #[test]
    fn content_digest_is_canonical_and_cheap_for_holes() {
        let mut content = random(1, 50_000);
        content[4096..3 * 4096].fill(0);
        content[20_000..40_000].fill(0);
        let whole = *Hasher::new().update(&content).finalize().as_bytes();
        for step in [1usize, 7, 4095, 4096, 4097, 10_000] {
            let mut h = Hasher::new();
            for c in content.chunks(step) {
                if is_zero(c) {
                    h.zeros(c.len() as u64);
                } else {
                    h.update(c);
                }
            }
            assert_eq!(*h.finalize().as_bytes(), whole, "step {step}");
        }
        let mut h = Hasher::new();
        h.data(0, &content[..100]).data(20_000, &content[20_000..]);
        assert_ne!(*h.finalize().as_bytes(), whole);
        let mut h = Hasher::new();
        h.data(0, &content[..20_000])
            .data(40_000, &content[40_000..]);
        assert_eq!(*h.finalize().as_bytes(), whole);
        // Length matters, zeros at the end included.
        let mut a = Hasher::new();
        a.zeros(4096);
        let mut b = Hasher::new();
        b.zeros(8192);
        assert_ne!(a.finalize(), b.finalize());
        assert_ne!(Hasher::new().finalize(), a.finalize());
        // Where the zero blocks sit matters, not only which data there is.
        let (d1, d2) = (random(2, 4096), random(3, 4096));
        let mut a = Hasher::new();
        a.update(&d1).zeros(4096).update(&d2);
        let mut b = Hasher::new();
        b.update(&d1).update(&d2).zeros(4096);
        assert_ne!(a.finalize(), b.finalize());
        let t = std::time::Instant::now();
        let mut big = Hasher::new();
        big.update(b"head").zeros(16 << 40).update(b"tail");
        let mut again = Hasher::new();
        again.data(0, b"head").data(4 + (16 << 40), b"tail");
        assert_eq!(big.finalize(), again.finalize());
        assert!(t.elapsed().as_millis() < 100, "{:?}", t.elapsed());
        // digest_fd reads only data and agrees.
        let f = tempfile::tempfile().unwrap();
        f.set_len(10 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &content, 3 << 20).unwrap();
        let mut h = Hasher::new();
        h.data(3 << 20, &content)
            .zeros((10 << 20) - (3 << 20) - content.len() as u64);
        assert_eq!(
            digest_fd(f.as_fd(), 10 << 20).unwrap(),
            *h.finalize().as_bytes()
        );
    }

    fn random(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

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
