//! Incoming files (FileBegin/Data/Delta/Hole/End/Abort) and signatures.
//!
//! Content always goes to a new inode (O_TMPFILE, or an O_EXCL temporary
//! where the filesystem lacks it) that is written, checked and given its
//! metadata through its descriptor, then renamed over the target: an
//! existing inode is never changed in place. A basis is read with pread, and
//! only if it is a regular file that is the replica's own.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::io::Errno;

use super::sign::{self, Basis};
use super::{fatal, op_err, Agent, Failure, Step, MAX_OPEN_FILES};
use crate::confine::show_brief as show;
use crate::delta::{self, ApplyError};
use crate::fsutil::{self, NewFile};
use crate::meta::{self, Kind, Meta};
use crate::proto::{self, FsyncPolicy, Msg};

/// A file being received into a new inode.
pub(super) struct Incoming {
    path: Vec<u8>,
    dir: Arc<OwnedFd>,
    /// None once this file failed (not created, disk full, basis changed):
    /// the rest of its frames are swallowed.
    file: Option<NewFile>,
    size: u64,
    pos: u64,
    hasher: delta::Hasher,
    /// The basis for a delta.
    basis: Option<Basis>,
    /// The basis changed under us: answer Verified false so that the master
    /// sends the file whole.
    retry: bool,
    /// Where writeback was last started: see [`kick`].
    kicked: u64,
    /// The new file's size is already `size` (sized at FileBegin, or data
    /// written up to its end); otherwise it is set at FileEnd.
    sized: bool,
}

impl Incoming {
    /// Drops the new inode (and its temporary name, if it has one).
    pub(super) fn discard(&self) {
        if let Some(f) = &self.file {
            f.discard(self.dir.as_fd());
        }
    }

    fn fail(&mut self) {
        self.discard();
        self.file = None;
    }
}

/// After a write up to `pos`: past [`KICK`] bytes not yet started (or at the
/// file's end, `last`) the kernel starts writing them out now, overlapped
/// with receiving the rest, instead of all of them at the round's sync.
fn kick(fd: BorrowedFd, kicked: &mut u64, pos: u64, last: bool) {
    let pending = pos - *kicked;
    if pending >= KICK || (last && pos >= KICK_TAIL && pending > 0) {
        fsutil::start_writeback(fd, *kicked, pending);
        *kicked = pos;
    }
}

/// Bytes written to one file between two starts of its writeback.
const KICK: u64 = 8 << 20;
/// A file at least this large has its tail's writeback started at its end;
/// smaller files are left to the round's sync, which writes them in bulk.
const KICK_TAIL: u64 = 256 << 10;

/// A new file at least this large is sized at FileBegin, so that a size
/// the filesystem cannot hold (EFBIG) is refused before its data is sent;
/// smaller ones are sized by their data, or at FileEnd if it ends in zeros
/// (one call less per small file).
const SIZE_FIRST: u64 = 1 << 30;

/// The last component of a valid path.
fn final_name(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

impl<W: Write + Send + 'static> Agent<W> {
    pub(super) fn signature(&mut self, id: u64, path: &[u8], block: u32, hash_len: u32) -> Step {
        if !delta::valid_params(block, hash_len) {
            return Err(fatal(format!(
                "signature request with block size {block}, hash length {hash_len}"
            )));
        }
        if self.signer.outstanding() >= MAX_OPEN_FILES || self.signer.holds(id) {
            return Err(fatal("too many signature requests in flight"));
        }
        let (dir, name) = self.root()?.parent(path)?;
        // Pinned and checked before anything is opened: a fifo or device is
        // never opened, a swap after the check reaches nothing.
        let (pinned, st) = match meta::pin(dir.as_fd(), name) {
            Ok(x) => x,
            Err(e) => return self.sig_fail(id, e.to_string()),
        };
        if Kind::from_stat(&st) != Kind::Regular {
            return self.sig_fail(id, "not a regular file".into());
        }
        if !self.own_inode(pinned.as_fd(), &st) {
            return self.sig_fail(
                id,
                "its inode may be shared with files outside the replica; not used as a basis"
                    .into(),
            );
        }
        let (fd, st) = match meta::reopen_read(pinned.as_fd(), &st) {
            Ok(x) => x,
            Err(e) => return self.sig_fail(id, e.to_string()),
        };
        let job = sign::Job {
            id,
            fd,
            len: st.st_size as u64,
            block,
            hash_len,
        };
        self.signer.submit(&self.out, job);
        Ok(())
    }

    /// Small files' bytes, left to the background flusher.
    fn flush_later(&mut self, bytes: u64) {
        if self.flusher.is_none() {
            let Ok(root) = self.root().map(|r| r.fd().try_clone_to_owned()) else {
                return;
            };
            self.flusher = root.ok().map(super::flush::Flusher::new);
        }
        if let Some(f) = &self.flusher {
            f.note(bytes);
        }
    }

    /// Whether written data is worth sending to the disk early: only when
    /// the round ends with a sync that would otherwise write it all.
    fn early_writeback(&self) -> bool {
        self.master
            .as_ref()
            .is_some_and(|h| h.fsync != FsyncPolicy::None)
    }

    pub(super) fn sig_fail(&mut self, id: u64, message: String) -> Step {
        self.reply(&Msg::SigFail { id, message })
    }

    pub(super) fn file_begin(&mut self, id: u64, path: Vec<u8>, size: u64, delta: bool) -> Step {
        if self.incoming.len() >= MAX_OPEN_FILES || self.incoming.contains_key(&id) {
            return Err(fatal("too many files in flight"));
        }
        if size > i64::MAX as u64 {
            return Err(fatal("impossible file size"));
        }
        let basis = if delta {
            Some(
                self.signer
                    .take(id)
                    .ok_or_else(|| fatal("delta without a signature"))?,
            )
        } else {
            None
        };
        let (dir, _) = self.root()?.parent(&path)?;
        // A large file is sized up front, so that a size the filesystem
        // cannot hold (EFBIG) is refused before any work is done for it.
        let sized = size == 0 || size >= SIZE_FIRST;
        let created = fsutil::create_temp(dir.as_fd()).and_then(|f| {
            if size < SIZE_FIRST {
                return Ok(f);
            }
            match rustix::fs::ftruncate(&f.fd, size) {
                Ok(()) => Ok(f),
                Err(e) => {
                    f.discard(dir.as_fd());
                    Err(match e {
                        Errno::FBIG | Errno::INVAL => io::Error::other(format!(
                            "a size of {size} bytes is more than the target filesystem can hold"
                        )),
                        e => e.into(),
                    })
                }
            }
        });
        let (file, err) = match created {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        };
        self.incoming.insert(
            id,
            Incoming {
                path: path.clone(),
                dir,
                file,
                size,
                pos: 0,
                hasher: delta::Hasher::new(),
                basis,
                retry: false,
                kicked: 0,
                sized,
            },
        );
        match err {
            Some(e) => Err(op_err(&path, e)),
            None => Ok(()),
        }
    }

    /// Decompresses a payload, refusing output over `limit` (a zstd bomb).
    pub(super) fn inflate(
        &self,
        data: Vec<u8>,
        zstd: bool,
        limit: usize,
    ) -> Result<Vec<u8>, Failure> {
        if !zstd {
            return Ok(data);
        }
        if self
            .master
            .as_ref()
            .is_none_or(|h| h.features & proto::feature::ZSTD == 0)
        {
            return Err(fatal("compressed data without the zstd feature"));
        }
        zstd::bulk::decompress(&data, limit).map_err(|e| fatal(format!("bad compressed data: {e}")))
    }

    fn incoming(&mut self, id: u64) -> Result<&mut Incoming, Failure> {
        self.incoming
            .get_mut(&id)
            .ok_or_else(|| fatal(format!("data for unknown file {id}")))
    }

    /// Data at `offset`: the gap before it is a hole, hashed in O(1).
    pub(super) fn file_data(&mut self, id: u64, offset: u64, data: &[u8]) -> Step {
        let early = self.early_writeback();
        let f = self.incoming(id)?;
        if f.basis.is_some() || offset < f.pos || offset.saturating_add(data.len() as u64) > f.size
        {
            return Err(fatal(format!(
                "data out of order or past the end of {}",
                show(&f.path)
            )));
        }
        f.pos = offset + data.len() as u64;
        let Some(file) = &f.file else {
            return Ok(());
        };
        f.hasher.data(offset, data);
        let r = fsutil::write_sparse(file.fd.as_fd(), offset, data);
        if let Ok(end) = r {
            f.sized |= end == f.size;
            if early {
                kick(file.fd.as_fd(), &mut f.kicked, f.pos, false);
            }
        }
        self.check_write(id, r.map(drop))
    }

    pub(super) fn file_delta(&mut self, id: u64, len: usize, delta: &[u8]) -> Step {
        let early = self.early_writeback();
        let f = self.incoming(id)?;
        if len > delta::MAX_WINDOW || f.pos.saturating_add(len as u64) > f.size {
            return Err(fatal(format!(
                "delta window past the end of {}",
                show(&f.path)
            )));
        }
        let Some(basis) = &f.basis else {
            return Err(fatal("delta for a file sent whole"));
        };
        let mut out = Vec::with_capacity(len);
        match delta::apply_pread(basis.fd.as_fd(), basis.len, delta, &mut out, len) {
            Ok(()) => {}
            Err(ApplyError::Invalid(e)) => {
                return Err(fatal(format!("invalid delta for {}: {e}", show(&f.path))));
            }
            // Truncated by someone else since it was signed: this file fails
            // and is asked for whole at its end.
            Err(ApplyError::Basis(_)) => {
                f.retry = true;
                f.fail();
            }
        }
        if f.file.is_some() && out.len() != len {
            return Err(fatal(format!(
                "delta for {} has the wrong length",
                show(&f.path)
            )));
        }
        let pos = f.pos;
        f.pos += len as u64;
        let Some(file) = &f.file else {
            return Ok(());
        };
        f.hasher.update(&out);
        let r = fsutil::write_sparse(file.fd.as_fd(), pos, &out);
        if let Ok(end) = r {
            f.sized |= end == f.size;
            if early {
                kick(file.fd.as_fd(), &mut f.kicked, f.pos, false);
            }
        }
        self.check_write(id, r.map(drop))
    }

    /// Zeros the master found as a hole: the new file reads as zeros there
    /// (sized at FileBegin, by later data or at FileEnd), so nothing is
    /// written and the digest takes them in O(1).
    pub(super) fn file_hole(&mut self, id: u64, len: u64) -> Step {
        let f = self.incoming(id)?;
        if f.pos.saturating_add(len) > f.size {
            return Err(fatal(format!("hole past the end of {}", show(&f.path))));
        }
        if f.file.is_some() {
            f.hasher.zeros(len);
        }
        f.pos += len;
        Ok(())
    }

    /// A write failure (disk full) fails this file only.
    fn check_write(&mut self, id: u64, r: io::Result<()>) -> Step {
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                let Some(f) = self.incoming.get_mut(&id) else {
                    return Ok(());
                };
                f.fail();
                Err(op_err(&f.path, e))
            }
        }
    }

    pub(super) fn file_end(&mut self, id: u64, hash: [u8; 32], meta: &Meta) -> Step {
        let opts = self.apply_opts();
        let fsync = self.master.as_ref().map(|h| h.fsync);
        let mut f = self
            .incoming
            .remove(&id)
            .ok_or_else(|| fatal(format!("end of unknown file {id}")))?;
        let is_delta = f.basis.is_some();
        let Some(file) = f.file.take() else {
            if is_delta {
                self.reply(&Msg::Verified { id, ok: !f.retry })?;
            }
            return Ok(());
        };
        f.hasher.zeros(f.size - f.pos);
        if *f.hasher.finalize().as_bytes() != hash {
            file.discard(f.dir.as_fd());
            if is_delta {
                return self.reply(&Msg::Verified { id, ok: false });
            }
            return Err(op_err(&f.path, "content check failed (changed in transit)"));
        }
        if self.early_writeback() {
            kick(file.fd.as_fd(), &mut f.kicked, f.pos, true);
            if f.kicked < f.pos {
                self.flush_later(f.pos - f.kicked);
            }
        }
        let name = final_name(&f.path);
        let mut victim = None;
        let done = (|| -> io::Result<()> {
            if !f.sized {
                rustix::fs::ftruncate(&file.fd, f.size)?;
            }
            meta::apply_fd(file.fd.as_fd(), meta, opts)?;
            if fsync == Some(FsyncPolicy::File) {
                rustix::fs::fsync(&file.fd)?;
            }
            Ok(())
        })()
        .and_then(|()| {
            // A new name is linked at once; only a name in use needs its
            // inode looked at before the rename replaces it.
            if file.link_new(f.dir.as_fd(), name)? {
                return Ok(());
            }
            let (v, absent) = self.victim(f.dir.as_fd(), name);
            victim = v;
            file.install(f.dir.as_fd(), name, absent)
        });
        if let Some(v) = victim {
            self.remember(v.as_fd());
        }
        if let Err(e) = done {
            file.discard(f.dir.as_fd());
            if is_delta {
                self.reply(&Msg::Verified { id, ok: true })?;
            }
            return Err(op_err(&f.path, e));
        }
        if is_delta {
            self.reply(&Msg::Verified { id, ok: true })?;
        }
        Ok(())
    }
}
