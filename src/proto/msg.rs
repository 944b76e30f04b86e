//! The georep protocol's messages (documented in docs/PROTOCOL.md).
//!
//! One enum carries both directions and one table ([`super::kinds`]) says
//! which side may send each kind: a peer that sends what only the other side
//! may is refused at decoding ([`Msg::decode_from`]), before anything acts on
//! it. Decoding is strict: trailing bytes, unknown kinds and impossible
//! values are errors.

use std::io::Read;

use super::codec;
use super::frame::{self, Dec, Enc, WireError};
use super::kinds::{k, name_of, sender_of, Side};
use super::{Fence, FsyncPolicy, Hello, MAGIC, MAX_LIST_NAMES};
use crate::meta::{Entry, Kind, Meta};

#[derive(Clone, Debug)]
pub enum Msg {
    Hello(Hello),
    ListDir {
        id: u64,
        path: Vec<u8>,
        xattrs: bool,
        checksum: bool,
    },
    /// Part of a directory's listing: its own entry and those of `names`
    /// that exist (answered with DirEntries). What a journal batch touched
    /// costs what it touched, not what the directory holds.
    ListNames {
        id: u64,
        path: Vec<u8>,
        names: Vec<Vec<u8>>,
        xattrs: bool,
        checksum: bool,
    },
    /// A directory's listing, in chunks; `this` (first chunk only) is the
    /// directory's own entry, absent when the directory does not exist.
    DirEntries {
        id: u64,
        this: Option<Entry>,
        entries: Vec<Entry>,
        last: bool,
    },
    Mkdir {
        path: Vec<u8>,
    },
    Symlink {
        path: Vec<u8>,
        target: Vec<u8>,
        meta: Meta,
    },
    Mknod {
        path: Vec<u8>,
        kind: Kind,
        rdev: u64,
        meta: Meta,
    },
    Remove {
        path: Vec<u8>,
    },
    /// Make `path` a hard link to `target` (both relative to the root).
    Link {
        path: Vec<u8>,
        target: Vec<u8>,
    },
    SetMeta {
        path: Vec<u8>,
        kind: Kind,
        meta: Meta,
    },
    /// Directory metadata, applied deepest first at Finish, after all contents.
    DirMeta {
        path: Vec<u8>,
        meta: Meta,
    },
    SigReq {
        id: u64,
        path: Vec<u8>,
        block_size: u32,
        hash_len: u32,
    },
    SigChunk {
        id: u64,
        data: Vec<u8>,
    },
    /// The signature is complete; `size` is the length of the basis signed.
    SigEnd {
        id: u64,
        size: u64,
    },
    SigFail {
        id: u64,
        message: String,
    },
    FileBegin {
        id: u64,
        path: Vec<u8>,
        size: u64,
        delta: bool,
    },
    FileData {
        id: u64,
        offset: u64,
        data: Vec<u8>,
        /// `data` is zstd-compressed.
        zstd: bool,
    },
    /// One window of a delta: applied against the whole basis, produces `len` bytes.
    FileDelta {
        id: u64,
        len: u32,
        delta: Vec<u8>,
        /// `delta` is zstd-compressed.
        zstd: bool,
    },
    FileEnd {
        id: u64,
        hash: [u8; 32],
        meta: Meta,
    },
    FileAbort {
        id: u64,
    },
    /// Move `from` to `to` (both relative to the root); a missing `from` is
    /// not an error (the merge that follows repairs whatever is left).
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// The next `len` bytes of the file are zeros: a hole in the source.
    FileHole {
        id: u64,
        len: u64,
    },
    /// Slave's verdict on a delta-built file: false asks for the whole file.
    Verified {
        id: u64,
        ok: bool,
    },
    Barrier {
        id: u64,
    },
    BarrierAck {
        id: u64,
    },
    /// A per-entry failure; the run goes on.
    OpError {
        path: Vec<u8>,
        message: String,
    },
    /// Ends a round; `marker_ns` (0: none) is the newest change time the
    /// round covers, which a fenced session's slave stores with the epoch.
    Finish {
        marker_ns: i64,
    },
    /// Durable acknowledgement of everything before Finish.
    Finished,
    /// The sender stops after this; `code` is its exit code.
    Fatal {
        code: u8,
        message: String,
    },
}

impl Msg {
    /// Encodes the frame body (kind byte first).
    /// The frame body of an uncompressed `FileData` carrying `len` bytes,
    /// with its data region zeroed at `[at..]` for the caller to read the
    /// file into: the bytes are copied once, from the kernel, not three
    /// times (into a Vec, into the message, into the frame).
    pub fn file_data_frame(id: u64, offset: u64, len: usize) -> (Vec<u8>, usize) {
        let mut e = Enc::new(k::FILE_DATA);
        e.u64(id).u64(offset).bool(false).u32(len as u32);
        let at = e.0.len();
        e.0.resize(at + len, 0);
        (e.0, at)
    }

    pub fn encode(&self) -> Vec<u8> {
        let e = match self {
            Msg::Hello(h) => {
                let mut e = Enc::new(k::HELLO);
                e.raw(MAGIC)
                    .u32(h.version)
                    .u64(h.features)
                    .bool(h.privileged)
                    .bool(h.dry_run)
                    .u8(h.fsync as u8)
                    .bytes(&h.fence.session)
                    .bytes(&h.fence.node)
                    .u64(h.fence.epoch)
                    .i64(h.fence.marker_time_ns)
                    .u64(h.fence.marker_epoch);
                e
            }
            Msg::ListDir {
                id,
                path,
                xattrs,
                checksum,
            } => {
                let mut e = Enc::new(k::LIST_DIR);
                e.u64(*id).bytes(path).bool(*xattrs).bool(*checksum);
                e
            }
            Msg::ListNames {
                id,
                path,
                names,
                xattrs,
                checksum,
            } => {
                let mut e = Enc::new(k::LIST_NAMES);
                e.u64(*id).bytes(path).u32(names.len() as u32);
                for n in names {
                    e.bytes(n);
                }
                e.bool(*xattrs).bool(*checksum);
                e
            }
            Msg::DirEntries {
                id,
                this,
                entries,
                last,
            } => {
                let mut e = Enc::new(k::DIR_ENTRIES);
                e.u64(*id).bool(*last);
                match this {
                    Some(t) => {
                        e.u8(1);
                        codec::put_entry(&mut e, t);
                    }
                    None => {
                        e.u8(0);
                    }
                }
                e.u32(entries.len() as u32);
                for en in entries {
                    codec::put_entry(&mut e, en);
                }
                e
            }
            Msg::Mkdir { path } => {
                let mut e = Enc::new(k::MKDIR);
                e.bytes(path);
                e
            }
            Msg::Symlink { path, target, meta } => {
                let mut e = Enc::new(k::SYMLINK);
                e.bytes(path).bytes(target);
                codec::put_meta(&mut e, meta);
                e
            }
            Msg::Mknod {
                path,
                kind,
                rdev,
                meta,
            } => {
                let mut e = Enc::new(k::MKNOD);
                e.bytes(path).u8(*kind as u8).u64(*rdev);
                codec::put_meta(&mut e, meta);
                e
            }
            Msg::Remove { path } => {
                let mut e = Enc::new(k::REMOVE);
                e.bytes(path);
                e
            }
            Msg::Link { path, target } => {
                let mut e = Enc::new(k::LINK);
                e.bytes(path).bytes(target);
                e
            }
            Msg::SetMeta { path, kind, meta } => {
                let mut e = Enc::new(k::SET_META);
                e.bytes(path).u8(*kind as u8);
                codec::put_meta(&mut e, meta);
                e
            }
            Msg::DirMeta { path, meta } => {
                let mut e = Enc::new(k::DIR_META);
                e.bytes(path);
                codec::put_meta(&mut e, meta);
                e
            }
            Msg::SigReq {
                id,
                path,
                block_size,
                hash_len,
            } => {
                let mut e = Enc::new(k::SIG_REQ);
                e.u64(*id).bytes(path).u32(*block_size).u32(*hash_len);
                e
            }
            Msg::SigChunk { id, data } => {
                let mut e = Enc::new(k::SIG_CHUNK);
                e.u64(*id).bytes(data);
                e
            }
            Msg::SigEnd { id, size } => {
                let mut e = Enc::new(k::SIG_END);
                e.u64(*id).u64(*size);
                e
            }
            Msg::SigFail { id, message } => {
                let mut e = Enc::new(k::SIG_FAIL);
                e.u64(*id).bytes(message.as_bytes());
                e
            }
            Msg::FileBegin {
                id,
                path,
                size,
                delta,
            } => {
                let mut e = Enc::new(k::FILE_BEGIN);
                e.u64(*id).bytes(path).u64(*size).bool(*delta);
                e
            }
            Msg::FileData {
                id,
                offset,
                data,
                zstd,
            } => {
                let mut e = Enc::new(k::FILE_DATA);
                e.u64(*id).u64(*offset).bool(*zstd).bytes(data);
                e
            }
            Msg::FileDelta {
                id,
                len,
                delta,
                zstd,
            } => {
                let mut e = Enc::new(k::FILE_DELTA);
                e.u64(*id).u32(*len).bool(*zstd).bytes(delta);
                e
            }
            Msg::FileEnd { id, hash, meta } => {
                let mut e = Enc::new(k::FILE_END);
                e.u64(*id).raw(hash);
                codec::put_meta(&mut e, meta);
                e
            }
            Msg::FileAbort { id } => {
                let mut e = Enc::new(k::FILE_ABORT);
                e.u64(*id);
                e
            }
            Msg::Rename { from, to } => {
                let mut e = Enc::new(k::RENAME);
                e.bytes(from).bytes(to);
                e
            }
            Msg::FileHole { id, len } => {
                let mut e = Enc::new(k::FILE_HOLE);
                e.u64(*id).u64(*len);
                e
            }
            Msg::Verified { id, ok } => {
                let mut e = Enc::new(k::VERIFIED);
                e.u64(*id).bool(*ok);
                e
            }
            Msg::Barrier { id } => {
                let mut e = Enc::new(k::BARRIER);
                e.u64(*id);
                e
            }
            Msg::BarrierAck { id } => {
                let mut e = Enc::new(k::BARRIER_ACK);
                e.u64(*id);
                e
            }
            Msg::OpError { path, message } => {
                let mut e = Enc::new(k::OP_ERROR);
                e.bytes(path).bytes(message.as_bytes());
                e
            }
            Msg::Finish { marker_ns } => {
                let mut e = Enc::new(k::FINISH);
                e.i64(*marker_ns);
                e
            }
            Msg::Finished => Enc::new(k::FINISHED),
            Msg::Fatal { code, message } => {
                let mut e = Enc::new(k::FATAL);
                e.u8(*code).bytes(message.as_bytes());
                e
            }
        };
        e.0
    }

    /// Reads and decodes the next message `peer` sent (`Ok(None)` at a
    /// clean end of stream). A FileData's bytes are read straight into
    /// their own buffer: the bulk of a transfer is copied once, not twice.
    pub fn read(
        r: &mut impl Read,
        peer: Side,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Msg>, WireError> {
        /// FileData's fields before its bytes: id, offset, zstd, length.
        const DATA_HEAD: usize = 8 + 8 + 1 + 4;
        let Some((kind, len)) = frame::read_head(r)? else {
            return Ok(None);
        };
        buf.clear();
        if kind == k::FILE_DATA && sender_of(kind) == Some(peer) && len >= DATA_HEAD {
            frame::read_payload(r, DATA_HEAD, buf)?;
            let mut d = Dec::new(buf, name_of(kind));
            let (id, offset, zstd) = (d.u64()?, d.u64()?, d.bool()?);
            if d.u32()? as usize != len - DATA_HEAD {
                return Err(WireError::Malformed(name_of(kind)));
            }
            let mut data = Vec::new();
            frame::read_payload(r, len - DATA_HEAD, &mut data)?;
            return Ok(Some(Msg::FileData {
                id,
                offset,
                data,
                zstd,
            }));
        }
        frame::read_payload(r, len, buf)?;
        Msg::decode_from(peer, kind, buf).map(Some)
    }

    /// Decodes one frame's payload from `peer`, refusing a kind that only
    /// the other side may send.
    pub fn decode_from(peer: Side, kind_byte: u8, p: &[u8]) -> Result<Msg, WireError> {
        match sender_of(kind_byte) {
            Some(s) if s != peer && s != Side::Either => {
                Err(WireError::WrongDirection(name_of(kind_byte)))
            }
            _ => Msg::decode(kind_byte, p),
        }
    }

    /// Decodes one frame's payload, whichever side sent it.
    pub fn decode(kind_byte: u8, p: &[u8]) -> Result<Msg, WireError> {
        let mut d = Dec::new(p, name_of(kind_byte));
        let d = &mut d;
        let m = match kind_byte {
            k::HELLO => {
                if &d.array::<8>()? != MAGIC {
                    return Err(WireError::Malformed("hello (not a georep peer)"));
                }
                let version = d.u32()?;
                let features = d.u64()?;
                let privileged = d.bool()?;
                let dry_run = d.bool()?;
                let fsync = FsyncPolicy::from_u8(d.u8()?).ok_or(WireError::Malformed("hello"))?;
                let fence = Fence {
                    session: d.bytes()?.to_vec(),
                    node: d.bytes()?.to_vec(),
                    epoch: d.u64()?,
                    marker_time_ns: d.i64()?,
                    marker_epoch: d.u64()?,
                };
                Msg::Hello(Hello {
                    version,
                    features,
                    privileged,
                    dry_run,
                    fsync,
                    fence,
                })
            }
            k::LIST_DIR => Msg::ListDir {
                id: d.u64()?,
                path: d.bytes()?.to_vec(),
                xattrs: d.bool()?,
                checksum: d.bool()?,
            },
            k::LIST_NAMES => {
                let id = d.u64()?;
                let path = d.bytes()?.to_vec();
                let n = d.u32()? as usize;
                // Each name carries a 4-byte length: cap the count by the frame,
                // and by what a master ever asks (decoded names cost far more
                // than their bytes on the wire).
                if n > d.remaining() / 4 || n > MAX_LIST_NAMES {
                    return Err(WireError::Malformed("list names"));
                }
                let mut names = Vec::with_capacity(n);
                for _ in 0..n {
                    names.push(d.bytes()?.to_vec());
                }
                Msg::ListNames {
                    id,
                    path,
                    names,
                    xattrs: d.bool()?,
                    checksum: d.bool()?,
                }
            }
            k::DIR_ENTRIES => {
                let id = d.u64()?;
                let last = d.bool()?;
                let this = match d.u8()? {
                    0 => None,
                    1 => Some(codec::get_entry(d)?),
                    _ => return Err(WireError::Malformed("dir entries")),
                };
                let n = d.u32()? as usize;
                // An entry takes well over 16 bytes: cap the count by the frame.
                if n > d.remaining() / 16 {
                    return Err(WireError::Malformed("dir entries"));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(codec::get_entry(d)?);
                }
                Msg::DirEntries {
                    id,
                    this,
                    entries,
                    last,
                }
            }
            k::MKDIR => Msg::Mkdir {
                path: d.bytes()?.to_vec(),
            },
            k::SYMLINK => Msg::Symlink {
                path: d.bytes()?.to_vec(),
                target: d.bytes()?.to_vec(),
                meta: codec::get_meta(d)?,
            },
            k::MKNOD => Msg::Mknod {
                path: d.bytes()?.to_vec(),
                kind: codec::get_kind(d)?,
                rdev: d.u64()?,
                meta: codec::get_meta(d)?,
            },
            k::REMOVE => Msg::Remove {
                path: d.bytes()?.to_vec(),
            },
            k::LINK => Msg::Link {
                path: d.bytes()?.to_vec(),
                target: d.bytes()?.to_vec(),
            },
            k::SET_META => Msg::SetMeta {
                path: d.bytes()?.to_vec(),
                kind: codec::get_kind(d)?,
                meta: codec::get_meta(d)?,
            },
            k::DIR_META => Msg::DirMeta {
                path: d.bytes()?.to_vec(),
                meta: codec::get_meta(d)?,
            },
            k::SIG_REQ => Msg::SigReq {
                id: d.u64()?,
                path: d.bytes()?.to_vec(),
                block_size: d.u32()?,
                hash_len: d.u32()?,
            },
            k::SIG_CHUNK => Msg::SigChunk {
                id: d.u64()?,
                data: d.bytes()?.to_vec(),
            },
            k::SIG_END => Msg::SigEnd {
                id: d.u64()?,
                size: d.u64()?,
            },
            k::SIG_FAIL => Msg::SigFail {
                id: d.u64()?,
                message: codec::get_string(d)?,
            },
            k::FILE_BEGIN => Msg::FileBegin {
                id: d.u64()?,
                path: d.bytes()?.to_vec(),
                size: d.u64()?,
                delta: d.bool()?,
            },
            k::FILE_DATA => Msg::FileData {
                id: d.u64()?,
                offset: d.u64()?,
                zstd: d.bool()?,
                data: d.bytes()?.to_vec(),
            },
            k::FILE_DELTA => Msg::FileDelta {
                id: d.u64()?,
                len: d.u32()?,
                zstd: d.bool()?,
                delta: d.bytes()?.to_vec(),
            },
            k::FILE_END => Msg::FileEnd {
                id: d.u64()?,
                hash: d.array::<32>()?,
                meta: codec::get_meta(d)?,
            },
            k::FILE_ABORT => Msg::FileAbort { id: d.u64()? },
            k::RENAME => Msg::Rename {
                from: d.bytes()?.to_vec(),
                to: d.bytes()?.to_vec(),
            },
            k::FILE_HOLE => Msg::FileHole {
                id: d.u64()?,
                len: d.u64()?,
            },
            k::VERIFIED => Msg::Verified {
                id: d.u64()?,
                ok: d.bool()?,
            },
            k::BARRIER => Msg::Barrier { id: d.u64()? },
            k::BARRIER_ACK => Msg::BarrierAck { id: d.u64()? },
            k::OP_ERROR => Msg::OpError {
                path: d.bytes()?.to_vec(),
                message: codec::get_string(d)?,
            },
            k::FINISH => Msg::Finish {
                marker_ns: d.i64()?,
            },
            k::FINISHED => Msg::Finished,
            k::FATAL => Msg::Fatal {
                code: d.u8()?,
                message: codec::get_string(d)?,
            },
            other => return Err(WireError::UnknownKind(other)),
        };
        if d.remaining() != 0 {
            return Err(WireError::Malformed(name_of(kind_byte)));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{FEATURES, VERSION};

    /// Frames as they go on the wire, one after another.
    fn wire(msgs: &[Msg]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            crate::proto::frame::write_frame(&mut out, &m.encode()).unwrap();
        }
        out
    }

    #[test]
    fn read_takes_file_data_and_the_rest_off_the_wire() {
        let msgs = [
            Msg::FileData {
                id: 3,
                offset: 8192,
                data: vec![7u8; 100_000],
                zstd: false,
            },
            Msg::FileHole { id: 3, len: 4096 },
            Msg::FileData {
                id: 3,
                offset: 0,
                data: Vec::new(),
                zstd: true,
            },
        ];
        let bytes = wire(&msgs);
        let (mut r, mut buf) = (&bytes[..], Vec::new());
        for m in &msgs {
            let got = Msg::read(&mut r, Side::Master, &mut buf).unwrap().unwrap();
            assert_eq!(format!("{got:?}"), format!("{m:?}"));
        }
        assert!(Msg::read(&mut r, Side::Master, &mut buf).unwrap().is_none());
        // The slave may not send data; the same frame from it is refused.
        let mut r = &bytes[..];
        assert!(matches!(
            Msg::read(&mut r, Side::Slave, &mut buf),
            Err(WireError::WrongDirection(_))
        ));
    }

    #[test]
    fn read_refuses_file_data_whose_length_disagrees_with_its_frame() {
        let mut body = Msg::FileData {
            id: 1,
            offset: 0,
            data: vec![1, 2, 3, 4],
            zstd: false,
        }
        .encode();
        // The length field says 3, the frame carries 4 bytes.
        let at = body.len() - 4 - 4;
        body[at..at + 4].copy_from_slice(&3u32.to_le_bytes());
        let mut bytes = Vec::new();
        crate::proto::frame::write_frame(&mut bytes, &body).unwrap();
        let mut r = &bytes[..];
        assert!(matches!(
            Msg::read(&mut r, Side::Master, &mut Vec::new()),
            Err(WireError::Malformed(_))
        ));
        // A frame cut short is truncated, not waited for.
        body[at..at + 4].copy_from_slice(&4u32.to_le_bytes());
        let mut bytes = Vec::new();
        crate::proto::frame::write_frame(&mut bytes, &body).unwrap();
        let mut r = &bytes[..bytes.len() - 2];
        assert!(matches!(
            Msg::read(&mut r, Side::Master, &mut Vec::new()),
            Err(WireError::Truncated)
        ));
    }

    #[test]
    fn file_data_frame_is_the_message_encoded() {
        let (mut frame, at) = Msg::file_data_frame(7, 4096, 5);
        frame[at..].copy_from_slice(b"hello");
        let m = Msg::FileData {
            id: 7,
            offset: 4096,
            data: b"hello".to_vec(),
            zstd: false,
        };
        assert_eq!(frame, m.encode());
    }

    #[test]
    fn every_message_round_trips() {
        let meta = Meta {
            mode: 0o644,
            ..Default::default()
        };
        let msgs = vec![
            Msg::Hello(Hello {
                version: VERSION,
                features: FEATURES,
                privileged: true,
                dry_run: false,
                fsync: FsyncPolicy::Batch,
                fence: Fence {
                    session: b"s".to_vec(),
                    node: b"n".to_vec(),
                    epoch: 7,
                    marker_time_ns: -1,
                    marker_epoch: 6,
                },
            }),
            Msg::SetMeta {
                path: b"a/\xff".to_vec(),
                kind: Kind::Symlink,
                meta: meta.clone(),
            },
            Msg::FileEnd {
                id: 3,
                hash: [7; 32],
                meta,
            },
            Msg::ListNames {
                id: 9,
                path: b"d".to_vec(),
                names: vec![b"x".to_vec(), b"\xfe".to_vec()],
                xattrs: true,
                checksum: false,
            },
            Msg::Finish { marker_ns: 5 },
        ];
        for m in msgs {
            let body = m.encode();
            let back = Msg::decode(body[0], &body[1..]).unwrap();
            assert_eq!(format!("{m:?}"), format!("{back:?}"));
        }
        // Trailing garbage is refused.
        let mut body = Msg::Finish { marker_ns: 0 }.encode();
        body.push(0);
        assert!(Msg::decode(body[0], &body[1..]).is_err());
    }
}
