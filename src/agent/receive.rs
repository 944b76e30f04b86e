//! Incoming files (FileBegin/Data/Delta/Hole/End/Abort) and signatures.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};

use super::{fatal, op_err, Agent, Failure, OpContext, Step, MAX_OPEN_FILES};
use crate::confine::show;
use crate::delta::{self, hash_zeros};
use crate::fsutil::{temp_name, write_sparse};
use crate::meta::{self, Kind, Meta};
use crate::proto::frame as wire;
use crate::proto::{self, FsyncPolicy, Msg};

/// A file being received into a temporary.
pub(super) struct Incoming {
    path: Vec<u8>,
    dir: Arc<OwnedFd>,
    temp: Vec<u8>,
    /// None once this file failed (temporary not created, disk full): the
    /// rest of its frames are swallowed.
    file: Option<File>,
    size: u64,
    pos: u64,
    hasher: blake3::Hasher,
    /// The basis for a delta, mapped read-only.
    basis: Option<Basis>,
}

pub(super) struct Basis {
    map: Option<memmap2::Mmap>,
}

impl Basis {
    fn open(file: File) -> io::Result<Basis> {
        let len = file.metadata()?.len();
        // SAFETY: the basis is a file in our own replica, opened read-only; a
        // concurrent truncation by another process could fault, which the
        // replica's single-writer lock rules out for georep itself.
        let map = if len == 0 {
            None
        } else {
            Some(unsafe { memmap2::Mmap::map(&file)? })
        };
        Ok(Basis { map })
    }
    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
    /// Drops the mapping's resident pages so residency stays bounded by a window.
    fn release(&self) {
        if let Some(m) = &self.map {
            // SAFETY: the mapping is private and read-only; dropped pages are
            // re-read from the file on the next access.
            let _ = unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }
}
impl<W: Write> Agent<W> {
    pub(super) fn signature(&mut self, id: u64, path: &[u8], block: u32, hash_len: u32) -> Step {
        if !delta::valid_params(block, hash_len) {
            return Err(fatal(format!(
                "signature request with block size {block}, hash length {hash_len}"
            )));
        }
        if self.bases.len() >= MAX_OPEN_FILES || self.bases.contains_key(&id) {
            return Err(fatal("too many signature requests in flight"));
        }
        let (dir, name) = self.root()?.parent(path)?;
        let opened = rustix::fs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .and_then(|fd| Ok((rustix::fs::fstat(&fd)?, fd)));
        let (st, fd) = match opened {
            Ok((st, fd)) if Kind::from_stat(&st) == Kind::Regular => (st, fd),
            Ok(_) => return self.sig_fail(id, "not a regular file".into()),
            Err(e) => return self.sig_fail(id, e.to_string()),
        };
        let out = &mut self.out;
        let r = delta::sign_file(fd.as_fd(), st.st_size as u64, block, hash_len, |chunk| {
            let data = chunk.to_vec();
            wire::write_frame(out, &Msg::SigChunk { id, data }.encode())
        });
        match r {
            Ok(()) => {
                self.bases.insert(id, File::from(fd));
                self.reply(&Msg::SigEnd {
                    id,
                    size: st.st_size as u64,
                })
            }
            Err(e) => self.sig_fail(id, e.to_string()),
        }
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
            let f = self
                .bases
                .remove(&id)
                .ok_or_else(|| fatal("delta without a signature"))?;
            Some(Basis::open(f).at(&path)?)
        } else {
            None
        };
        let (dir, _) = self.root()?.parent(&path)?;
        let temp = temp_name();
        let created = rustix::fs::openat(
            &dir,
            temp.as_slice(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        );
        // Sizing the temporary up front refuses sizes the filesystem cannot
        // hold (EFBIG) before any work is done for them.
        let created = created.and_then(|fd| rustix::fs::ftruncate(&fd, size).map(|_| fd));
        let (file, err) = match created {
            Ok(fd) => (Some(File::from(fd)), None),
            Err(e) => (None, Some(e)),
        };
        self.incoming.insert(
            id,
            Incoming {
                path: path.clone(),
                dir,
                temp,
                file,
                size,
                pos: 0,
                hasher: blake3::Hasher::new(),
                basis,
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

    pub(super) fn incoming(&mut self, id: u64) -> Result<&mut Incoming, Failure> {
        self.incoming
            .get_mut(&id)
            .ok_or_else(|| fatal(format!("data for unknown file {id}")))
    }

    pub(super) fn file_data(&mut self, id: u64, offset: u64, data: &[u8]) -> Step {
        let f = self.incoming(id)?;
        if f.basis.is_some() || offset < f.pos || offset.saturating_add(data.len() as u64) > f.size
        {
            return Err(fatal(format!(
                "data out of order or past the end of {}",
                show(&f.path)
            )));
        }
        let Some(file) = &f.file else {
            return Ok(());
        };
        hash_zeros(&mut f.hasher, offset - f.pos);
        f.hasher.update(data);
        f.pos = offset + data.len() as u64;
        let r = write_sparse(file.as_fd(), offset, data);
        self.check_write(id, r)
    }

    pub(super) fn file_delta(&mut self, id: u64, len: usize, delta: &[u8]) -> Step {
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
        let applied = fast_rsync::apply_limited(basis.bytes(), delta, &mut out, len);
        basis.release();
        if let Err(e) = applied {
            return Err(fatal(format!("invalid delta for {}: {e}", show(&f.path))));
        }
        if out.len() != len {
            return Err(fatal(format!(
                "delta for {} has the wrong length",
                show(&f.path)
            )));
        }
        let Some(file) = &f.file else {
            return Ok(());
        };
        f.hasher.update(&out);
        let r = write_sparse(file.as_fd(), f.pos, &out);
        f.pos += len as u64;
        self.check_write(id, r)
    }

    /// Zeros the master found as a hole: the temporary, sized at FileBegin,
    /// already reads as zeros there, so nothing is written.
    pub(super) fn file_hole(&mut self, id: u64, len: u64) -> Step {
        let f = self.incoming(id)?;
        if f.pos.saturating_add(len) > f.size {
            return Err(fatal(format!("hole past the end of {}", show(&f.path))));
        }
        if f.file.is_some() {
            hash_zeros(&mut f.hasher, len);
        }
        f.pos += len;
        Ok(())
    }

    /// A write failure (disk full) fails this file only.
    pub(super) fn check_write(&mut self, id: u64, r: io::Result<()>) -> Step {
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                let f = self.incoming.get_mut(&id).expect("checked by caller");
                f.file = None;
                discard(f);
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
                self.reply(&Msg::Verified { id, ok: true })?;
            }
            return Ok(());
        };
        hash_zeros(&mut f.hasher, f.size - f.pos);
        let ok = *f.hasher.finalize().as_bytes() == hash;
        if !ok {
            discard(&f);
            if is_delta {
                return self.reply(&Msg::Verified { id, ok: false });
            }
            return Err(op_err(&f.path, "content check failed (changed in transit)"));
        }
        let (_, name) = self.root()?.parent(&f.path)?;
        let done = (|| -> io::Result<()> {
            rustix::fs::ftruncate(&file, f.size)?;
            meta::apply_fd(file.as_fd(), meta, opts)?;
            if fsync == Some(FsyncPolicy::File) {
                file.sync_all()?;
            }
            rustix::fs::renameat(&f.dir, f.temp.as_slice(), &f.dir, name)?;
            Ok(())
        })();
        if let Err(e) = done {
            discard(&f);
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

/// Removes a file's temporary (harmless if it was never created).
pub(super) fn discard(f: &Incoming) {
    let _ = rustix::fs::unlinkat(&f.dir, f.temp.as_slice(), AtFlags::empty());
}
