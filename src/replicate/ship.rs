//! Data jobs: read one file as it is now and ship it, whole or as a delta
//! against the slave's version (DESIGN.md invariants 5 and 6).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};

use fast_rsync::Signature;
use rustix::fs::{Mode, OFlags, Stat};

use crate::confine::show;
use crate::delta::{self, hash_zeros, read_exact_at};
use crate::error::{Error, Result};
use crate::meta::{self, Kind, Meta, XattrTarget};
use crate::proto::Msg;
use crate::replicate::conn::{Conn, Frames};
use crate::replicate::observe::{Diff, Item, Reporter, What};

/// Whole-file data goes in frames of this size.
const CHUNK: usize = 256 << 10;
/// A file this small goes out in one frame, its frames as one item, and
/// its job in a batch with others (walk.rs).
pub const SMALL: u64 = CHUNK as u64;
/// A file that keeps changing while read is tried this many times.
const ATTEMPTS: usize = 3;

#[derive(Clone)]
pub struct DataJob {
    pub rel: Vec<u8>,
    pub dir: Arc<OwnedFd>,
    pub name: Vec<u8>,
    /// Size of the slave's current version, when a delta against it makes sense.
    pub basis: Option<u64>,
    /// How the slave's entry of this name differs; None: it has none yet.
    pub diff: Option<Diff>,
}

/// Tells and counts a file whose content went out (or would, in a dry
/// run); `diff` as in [`DataJob`].
pub fn sent(rep: &Reporter, rel: &[u8], diff: Option<Diff>) {
    let what = match diff {
        None => What::Created,
        Some(_) => What::Updated,
    };
    rep.change(&Item {
        what,
        kind: Kind::Regular,
        path: rel,
        diff: diff.unwrap_or_default(),
        target: None,
    });
    if diff.is_none() {
        rep.counters.entries_created.fetch_add(1, Relaxed);
    }
}

#[derive(Clone, Copy)]
pub struct JobOpts {
    pub xattrs: bool,
    pub privileged_xattrs: bool,
    /// zstd-compress literal data on the wire.
    pub compress: bool,
}

/// Compresses a payload when asked and when it actually gets smaller.
fn pack(data: Vec<u8>, compress: bool) -> (Vec<u8>, bool) {
    if compress {
        if let Ok(z) = zstd::bulk::compress(&data, 1) {
            if z.len() < data.len() {
                return (z, true);
            }
        }
    }
    (data, false)
}

/// What one attempt found.
enum Outcome {
    /// Sent, this many bytes long.
    Sent(u64),
    /// The file changed while being read: the slave was told to drop it.
    Torn,
    /// Gone or no longer a regular file: the next run settles it.
    Vanished,
}

/// Delta-built files awaiting the slave's verdict, each with the route its
/// verdict arrives on.
#[derive(Default)]
pub struct Verdicts(Mutex<Vec<(DataJob, Receiver<Msg>)>>);

impl Verdicts {
    /// The files whose delta did not rebuild the right content, to be sent
    /// whole. Call once the slave has answered a barrier sent after them:
    /// it judges each file at its FileEnd, so every verdict is in by then.
    pub fn failed(&self, conn: &Conn) -> Result<Vec<DataJob>> {
        let mut failed = Vec::new();
        for (job, rx) in std::mem::take(&mut *self.0.lock().unwrap()) {
            match rx.try_recv() {
                Ok(Msg::Verified { ok: true, .. }) => {}
                Ok(Msg::Verified { ok: false, .. }) => failed.push(job),
                Ok(other) => return Err(Error::Protocol(format!("unexpected reply {other:?}"))),
                Err(TryRecvError::Empty) => {
                    return Err(Error::Protocol(format!(
                        "no verdict for {} before the barrier",
                        show(&job.rel)
                    )))
                }
                Err(TryRecvError::Disconnected) => return Err(conn.failure()),
            }
        }
        Ok(failed)
    }
}

/// Ships one file; per-file failures are reported, connection failures returned.
pub fn run(conn: &Conn, job: DataJob, o: JobOpts, rep: &Reporter, v: &Verdicts) -> Result<()> {
    for _ in 0..ATTEMPTS {
        match attempt(conn, &job, o, rep, v) {
            Ok(Outcome::Sent(size)) => {
                rep.counters.files_transferred.fetch_add(1, Relaxed);
                rep.counters.transferred_size.fetch_add(size, Relaxed);
                sent(rep, &job.rel, job.diff);
                return Ok(());
            }
            Ok(Outcome::Torn) => continue,
            Ok(Outcome::Vanished) => {
                rep.vanished(&format!(
                    "{}: vanished before it could be sent",
                    show(&job.rel)
                ));
                return Ok(());
            }
            Err(JobError::File(e)) => {
                rep.error(&job.rel, &format!("cannot send {}: {e}", show(&job.rel)));
                return Ok(());
            }
            Err(JobError::Conn(e)) => return Err(e),
        }
    }
    rep.error(
        &job.rel,
        &format!(
            "{}: changed every time it was read; not sent",
            show(&job.rel)
        ),
    );
    Ok(())
}

enum JobError {
    /// This file failed; the run goes on.
    File(io::Error),
    Conn(Error),
}

impl From<io::Error> for JobError {
    fn from(e: io::Error) -> Self {
        JobError::File(e)
    }
}

impl From<rustix::io::Errno> for JobError {
    fn from(e: rustix::io::Errno) -> Self {
        JobError::File(e.into())
    }
}

impl From<Error> for JobError {
    fn from(e: Error) -> Self {
        JobError::Conn(e)
    }
}

fn open_source(dir: BorrowedFd, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    // O_NOATIME keeps a backup from touching atimes; only the owner (or root) may ask.
    match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => rustix::fs::openat(dir, name, flags, Mode::empty()),
        r => r,
    }
}

fn same_version(a: &Stat, b: &Stat) -> bool {
    a.st_size == b.st_size
        && a.st_mtime == b.st_mtime
        && a.st_mtime_nsec == b.st_mtime_nsec
        && a.st_ctime == b.st_ctime
        && a.st_ctime_nsec == b.st_ctime_nsec
        && a.st_ino == b.st_ino
}

fn attempt(
    conn: &Conn,
    job: &DataJob,
    o: JobOpts,
    rep: &Reporter,
    verdicts: &Verdicts,
) -> Result<Outcome, JobError> {
    let fd = match open_source(job.dir.as_fd(), &job.name) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::LOOP) => {
            return Ok(Outcome::Vanished)
        }
        Err(e) => return Err(e.into()),
    };
    let before = rustix::fs::fstat(&fd)?;
    if Kind::from_stat(&before) != Kind::Regular {
        return Ok(Outcome::Vanished);
    }
    let size = before.st_size as u64;
    let id = conn.next_id();
    let signature = match job.basis {
        Some(basis) => fetch_signature(conn, id, &job.rel, basis)?,
        None => None,
    };
    rep.planned(size);
    let mut hasher = delta::Hasher::new();
    // A file sent whole in one frame goes out as one item once read: one
    // handoff to the sender thread instead of three, and nothing to abort
    // if it changes while read.
    let hold = signature.is_none() && size <= SMALL;
    let ship = Shipment {
        conn,
        id,
        fd: fd.as_fd(),
        size,
        rep,
        compress: o.compress,
        held: RefCell::new(hold.then(Vec::new)),
    };
    ship.put(
        Msg::FileBegin {
            id,
            path: job.rel.clone(),
            size,
            delta: signature.is_some(),
        }
        .encode(),
    )?;
    let read = match &signature {
        Some((sig, basis_len)) => ship.delta(sig, *basis_len, &mut hasher),
        None => ship.whole(&mut hasher),
    };
    let after = rustix::fs::fstat(&fd);
    let torn = match (&read, &after) {
        (Err(JobError::Conn(_)), _) => return read.map(|_| Outcome::Torn),
        (_, Ok(after)) => !same_version(&before, after),
        _ => true,
    };
    if torn || read.is_err() {
        if !hold {
            conn.send(&Msg::FileAbort { id })?;
        }
        return match read {
            Err(e) if !torn => Err(e),
            _ => Ok(Outcome::Torn),
        };
    }
    let after = after?;
    let xattrs = if o.xattrs {
        meta::read_xattrs(&XattrTarget::Fd(fd.as_fd()), o.privileged_xattrs)?
    } else {
        Vec::new()
    };
    if signature.is_some() {
        // Routed before FileEnd is sent, so the verdict always finds its way.
        let rx = conn.route(id)?;
        verdicts.0.lock().unwrap().push((job.clone(), rx));
    }
    ship.put(
        Msg::FileEnd {
            id,
            hash: *hasher.finalize().as_bytes(),
            meta: Meta::from_stat(&after, xattrs),
        }
        .encode(),
    )?;
    if let Some(frames) = ship.held.take() {
        conn.send_frames(frames)?;
    }
    Ok(Outcome::Sent(size))
}

/// Asks the slave for its version's signature and the length it signed;
/// None falls back to a whole transfer.
fn fetch_signature(
    conn: &Conn,
    id: u64,
    rel: &[u8],
    basis: u64,
) -> Result<Option<(Signature, u64)>> {
    let block = delta::block_size_for(basis);
    let hash_len = delta::hash_len_for(basis, block);
    let rx = conn.request(
        id,
        &Msg::SigReq {
            id,
            path: rel.to_vec(),
            block_size: block,
            hash_len,
        },
    )?;
    // The basis may have grown since it was listed; still refuse absurd sizes.
    let cap = delta::signature_len(basis.max(1 << 30) * 4, block, hash_len);
    let mut bytes = Vec::new();
    let signed = loop {
        match conn.wait(&rx)? {
            Msg::SigChunk { data, .. } => {
                if (bytes.len() + data.len()) as u64 > cap {
                    return Err(Error::Protocol("oversized signature from slave".into()));
                }
                bytes.extend_from_slice(&data);
            }
            Msg::SigEnd { size, .. } => break size,
            Msg::SigFail { .. } => return Ok(None),
            other => return Err(Error::Protocol(format!("unexpected reply {other:?}"))),
        }
    };
    let expected = delta::signature_len(signed, block, hash_len);
    match Signature::deserialize(bytes) {
        Ok(sig)
            if sig.serialized().len() as u64 == expected
                && sig.serialized()[4..12]
                    == [block.to_be_bytes(), hash_len.to_be_bytes()].concat()[..] =>
        {
            Ok(Some((sig, signed)))
        }
        _ => Err(Error::Protocol("invalid signature from slave".into())),
    }
}

/// One file's content on its way out.
struct Shipment<'a> {
    conn: &'a Conn,
    id: u64,
    fd: BorrowedFd<'a>,
    size: u64,
    rep: &'a Reporter,
    compress: bool,
    /// The frames of a file sent as one item, until its end.
    held: RefCell<Option<Frames>>,
}

impl Shipment<'_> {
    /// Sends a frame, or holds it for the file's end.
    fn put(&self, body: Vec<u8>) -> Result<(), JobError> {
        match &mut *self.held.borrow_mut() {
            Some(held) => held.push(body),
            None => self.conn.send_frame(body)?,
        }
        Ok(())
    }

    /// Sends the file as deltas against the slave's version, window by window.
    fn delta(
        &self,
        sig: &Signature,
        basis_len: u64,
        hasher: &mut delta::Hasher,
    ) -> Result<(), JobError> {
        let (conn, id, fd, size, rep) = (self.conn, self.id, self.fd, self.size, self.rep);
        let basis = delta::Basis::new(sig, basis_len);
        let window = delta::window_for(basis.block());
        let mut buf = vec![0u8; window.min(size as usize)];
        let mut off = 0u64;
        while off < size {
            let n = ((size - off) as usize).min(window);
            if delta::is_hole(fd, off, n as u64) {
                // Zeros the slave leaves as a hole: no read, no diff, no write.
                hash_zeros(hasher, n as u64);
                rep.counters.bytes_matched.fetch_add(n as u64, Relaxed);
                conn.send(&Msg::FileHole { id, len: n as u64 })?;
                rep.progressed(n as u64);
                off += n as u64;
                continue;
            }
            read_exact_at(fd, &mut buf[..n], off)?;
            hasher.update(&buf[..n]);
            let mut d = Vec::new();
            basis
                .encode(&buf[..n], off, &mut d)
                .map_err(|e| JobError::File(io::Error::other(e.to_string())))?;
            let (lit, copied) = delta::delta_stats(&d);
            rep.counters.bytes_literal.fetch_add(lit, Relaxed);
            rep.counters.bytes_matched.fetch_add(copied, Relaxed);
            let (delta, zstd) = pack(d, self.compress);
            conn.send(&Msg::FileDelta {
                id,
                len: n as u32,
                delta,
                zstd,
            })?;
            rep.progressed(n as u64);
            off += n as u64;
        }
        Ok(())
    }

    /// Sends the file whole, reading only its data extents.
    fn whole(&self, hasher: &mut delta::Hasher) -> Result<(), JobError> {
        let (id, fd, size, rep) = (self.id, self.fd, self.size, self.rep);
        let mut off = 0u64;
        // Only compression reads into a buffer of its own.
        let mut buf = match self.compress {
            true => vec![0u8; CHUNK.min(size as usize)],
            false => Vec::new(),
        };
        while off < size {
            let (data, hole) = delta::next_extent(fd, off, size)?;
            hash_zeros(hasher, data - off);
            rep.progressed(data - off);
            let mut p = data;
            while p < hole {
                let n = ((hole - p) as usize).min(CHUNK);
                rep.counters.bytes_literal.fetch_add(n as u64, Relaxed);
                if self.compress {
                    read_exact_at(fd, &mut buf[..n], p)?;
                    hasher.update(&buf[..n]);
                    let (data, zstd) = pack(buf[..n].to_vec(), true);
                    self.put(
                        Msg::FileData {
                            id,
                            offset: p,
                            data,
                            zstd,
                        }
                        .encode(),
                    )?;
                } else {
                    // Read straight into the frame.
                    let (mut frame, at) = Msg::file_data_frame(id, p, n);
                    read_exact_at(fd, &mut frame[at..], p)?;
                    hasher.update(&frame[at..]);
                    self.put(frame)?;
                }
                rep.progressed(n as u64);
                p += n as u64;
            }
            off = hole;
        }
        Ok(())
    }
}
