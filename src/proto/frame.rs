//! Framing and primitive encoding of the georep protocol.
//!
//! A frame is `u32 length (LE) | u8 kind | payload`, where `length` counts the
//! kind byte and the payload. The length is checked against [`MAX_FRAME`]
//! before anything is allocated, so a hostile peer cannot make us reserve
//! more than one frame's worth of memory. Payloads are decoded from a slice
//! that holds exactly one frame: no length field inside a payload can make the
//! decoder read or allocate past the frame.

use std::io::{self, Read, Write};

/// Largest frame either side accepts (kind byte plus payload).
pub const MAX_FRAME: usize = 16 << 20;

/// Errors from decoding a frame or a payload.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    Oversized(usize),
    #[error("empty frame")]
    Empty,
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("{0} is not the peer's to send")]
    WrongDirection(&'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Option<u8>, WireError> {
    let Some((kind, len)) = read_head(r)? else {
        return Ok(None);
    };
    buf.clear();
    read_payload(r, len, buf)?;
    Ok(Some(kind))
}

/// Reads a frame's length and kind: the kind and the payload's length,
/// checked against [`MAX_FRAME`]; `Ok(None)` on a clean end of stream.
pub fn read_head(r: &mut impl Read) -> Result<Option<(u8, usize)>, WireError> {
    let mut len = [0u8; 4];
    match read_full(r, &mut len)? {
        0 => return Ok(None),
        4 => {}
        _ => return Err(WireError::Truncated),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 {
        return Err(WireError::Empty);
    }
    if len > MAX_FRAME {
        return Err(WireError::Oversized(len));
    }
    let mut kind = [0u8; 1];
    if read_full(r, &mut kind)? != 1 {
        return Err(WireError::Truncated);
    }
    Ok(Some((kind[0], len - 1)))
}

/// Appends the next `n` bytes of a frame to `buf`, read in place (no
/// zeroing first); `n` comes from [`read_head`], so it is bounded.
pub fn read_payload(r: &mut impl Read, n: usize, buf: &mut Vec<u8>) -> Result<(), WireError> {
    buf.reserve(n);
    if r.take(n as u64).read_to_end(buf)? != n {
        return Err(WireError::Truncated);
    }
    Ok(())
}

/// Reads until `buf` is full or EOF; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes one frame whose body (kind byte first) is already encoded.
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    write_header(w, body)?;
    w.write_all(body)
}

/// A frame's length header alone (the body follows by another way).
pub fn write_header(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    debug_assert!(!body.is_empty() && body.len() <= MAX_FRAME);
    w.write_all(&(body.len() as u32).to_le_bytes())
}

/// Builds a frame body: kind byte then fields.
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn new(kind: u8) -> Self {
        let mut v = Vec::with_capacity(64);
        v.push(kind);
        Enc(v)
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(v as u8)
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Length-prefixed (u32) bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reads fields from one frame's payload; every read is bounds-checked.
pub struct Dec<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Dec { buf, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Malformed(self.what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    pub fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Malformed(self.what)),
        }
    }
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn i64(&mut self) -> Result<i64, WireError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().unwrap())
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    /// Fails unless the payload was consumed exactly.
    pub fn end(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed(self.what))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_limits() {
        let mut body = Enc::new(7);
        body.u64(42).bytes(b"a\xffb");
        let mut out = Vec::new();
        write_frame(&mut out, &body.0).unwrap();
        let mut buf = Vec::new();
        let kind = read_frame(&mut out.as_slice(), &mut buf).unwrap();
        assert_eq!(kind, Some(7));
        let mut d = Dec::new(&buf, "test");
        assert_eq!(d.u64().unwrap(), 42);
        assert_eq!(d.bytes().unwrap(), b"a\xffb");
        d.end().unwrap();

        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(matches!(
            read_frame(&mut huge.as_slice(), &mut buf),
            Err(WireError::Oversized(_))
        ));
        let truncated = [10u8, 0, 0, 0, 1, 2];
        assert!(matches!(
            read_frame(&mut truncated.as_slice(), &mut buf),
            Err(WireError::Truncated)
        ));
        // A length field inside the payload that points past the frame.
        let mut d = Dec::new(&[255, 255, 255, 255, 0], "test");
        assert!(d.bytes().is_err());
    }
}
