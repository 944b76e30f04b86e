//! `georep slave`: applies a master's stream beneath one root directory.
//!
//! The agent trusts nothing it reads. Paths are resolved with
//! [`crate::confine::Root`], sizes and counts are checked before use, deltas
//! are applied with `apply_limited` and every rebuilt file is checked against
//! the master's BLAKE3 before it is renamed into place. A message that breaks
//! the protocol (a path escaping the root, an impossible size, a delta that
//! reads out of bounds) is answered with a Fatal frame and the agent exits
//! non-zero, removing its temporaries. A failure of one entry (disk full,
//! permission) is reported with OpError and the run goes on.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};

use crate::confine::{self, show, PathError, Root};
use crate::delta::{self, hash_zeros};
use crate::error::Exit;
use crate::meta::{self, ApplyOpts, Kind, Meta, ScanOpts, TEMP_PREFIX};
use crate::proto::frame::{self as wire, WireError};
use crate::proto::{self, FsyncPolicy, Hello, Msg, Side};

/// Files being received at once; a master keeps far fewer in flight.
const MAX_OPEN_FILES: usize = 256;
/// Listing chunk size, well under the frame limit.
const LIST_CHUNK: usize = 1 << 20;
/// Largest decompressed FileData payload.
const MAX_DATA: usize = 4 << 20;
/// Directory metadata held until Finish.
const MAX_DIR_METAS: usize = 50_000_000;

/// Why the agent stops or skips an entry.
enum Failure {
    /// One entry failed; report it and go on.
    Op(Vec<u8>, String),
    /// Stop: report, clean up, exit with this code.
    Fatal(Exit, String),
}

type Step = Result<(), Failure>;

fn fatal(msg: impl Into<String>) -> Failure {
    Failure::Fatal(Exit::Protocol, msg.into())
}

fn op_err(path: &[u8], e: impl std::fmt::Display) -> Failure {
    Failure::Op(path.to_vec(), e.to_string())
}

impl From<PathError> for Failure {
    fn from(e: PathError) -> Failure {
        match &e {
            PathError::Io { .. } => Failure::Op(Vec::new(), e.to_string()),
            _ => fatal(format!("refused: {e}")),
        }
    }
}

/// Attaches the path to an I/O failure of one entry.
trait OpContext<T> {
    fn at(self, path: &[u8]) -> Result<T, Failure>;
}

impl<T, E: std::fmt::Display> OpContext<T> for Result<T, E> {
    fn at(self, path: &[u8]) -> Result<T, Failure> {
        self.map_err(|e| op_err(path, e))
    }
}

/// A file being received into a temporary.
struct Incoming {
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

struct Basis {
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

pub struct Agent<W: Write> {
    root_path: PathBuf,
    root: Option<Root>,
    out: BufWriter<W>,
    privileged: bool,
    master: Option<Hello>,
    incoming: HashMap<u64, Incoming>,
    bases: HashMap<u64, File>,
    dir_metas: Vec<(Vec<u8>, Meta)>,
    finished: bool,
}

/// Runs the agent on a byte stream until Finish, EOF or a fatal error;
/// returns the process exit code.
pub fn serve(root: &Path, input: impl Read, output: impl Write) -> Exit {
    let privileged = rustix::process::geteuid().is_root();
    let mut agent = Agent {
        root_path: root.to_path_buf(),
        root: None,
        out: BufWriter::with_capacity(256 << 10, output),
        privileged,
        master: None,
        incoming: HashMap::new(),
        bases: HashMap::new(),
        dir_metas: Vec::new(),
        finished: false,
    };
    let code = agent.run(BufReader::with_capacity(1 << 20, input));
    agent.cleanup();
    code
}

/// Answers a master that cannot be served at all (unknown volume, a key
/// restricted elsewhere) with a Fatal frame, without reading its stream.
pub fn refuse(output: impl Write, code: Exit, message: &str) {
    let mut out = BufWriter::new(output);
    let m = Msg::Fatal {
        code: code as u8,
        message: message.to_string(),
    };
    let _ = wire::write_frame(&mut out, &m.encode()).and_then(|_| out.flush());
}

impl<W: Write> Agent<W> {
    fn run(&mut self, mut input: impl Read) -> Exit {
        let mut buf = Vec::new();
        loop {
            let msg = match wire::read_frame(&mut input, &mut buf) {
                Ok(Some(kind)) => Msg::decode_from(Side::Master, kind, &buf),
                Ok(None) if self.finished => return Exit::Ok,
                Ok(None) => {
                    eprintln!("georep slave: master closed the stream before finishing");
                    return Exit::Protocol;
                }
                Err(e) => Err(e),
            };
            let msg = match msg {
                Ok(m) => m,
                Err(WireError::Io(e)) => {
                    eprintln!("georep slave: reading from master: {e}");
                    return Exit::Protocol;
                }
                Err(e) => return self.fail(Exit::Protocol, format!("bad frame from master: {e}")),
            };
            let stop = matches!(msg, Msg::Fatal { .. });
            match self.handle(msg) {
                Ok(()) => {}
                Err(Failure::Op(path, message)) => {
                    if self.send(&Msg::OpError { path, message }).is_err() {
                        return Exit::Protocol;
                    }
                }
                Err(Failure::Fatal(code, message)) => return self.fail(code, message),
            }
            if stop {
                return Exit::Protocol;
            }
        }
    }

    /// Reports a fatal error in a Fatal frame; stderr only if the frame cannot go out.
    fn fail(&mut self, code: Exit, message: String) -> Exit {
        let fatal = Msg::Fatal {
            code: code as u8,
            message: message.clone(),
        };
        if self.send(&fatal).and_then(|_| self.out.flush()).is_err() {
            eprintln!("georep slave: {message}");
        }
        code
    }

    fn send(&mut self, m: &Msg) -> io::Result<()> {
        wire::write_frame(&mut self.out, &m.encode())
    }

    fn reply(&mut self, m: &Msg) -> Step {
        self.send(m)
            .and_then(|_| self.out.flush())
            .map_err(|e| Failure::Fatal(Exit::Protocol, format!("writing to master: {e}")))
    }

    fn root(&mut self) -> Result<&mut Root, Failure> {
        match (&self.master, &mut self.root) {
            (None, _) => Err(fatal("message before hello")),
            (Some(h), _) if h.dry_run => Err(fatal("change requested in a dry run")),
            (_, Some(r)) => Ok(r),
            (_, None) => Err(fatal("target root is not open")),
        }
    }

    fn apply_opts(&self) -> ApplyOpts {
        ApplyOpts {
            owner: self.privileged,
            xattrs: self
                .master
                .as_ref()
                .is_some_and(|h| h.features & proto::feature::XATTRS != 0),
            privileged: self.privileged,
        }
    }

    fn handle(&mut self, msg: Msg) -> Step {
        if self.master.is_none() && !matches!(msg, Msg::Hello(_)) {
            return Err(fatal("message before hello"));
        }
        match msg {
            Msg::Hello(h) => self.hello(h),
            Msg::ListDir {
                id,
                path,
                xattrs,
                checksum,
            } => self.list_dir(id, &path, None, xattrs, checksum),
            Msg::ListNames {
                id,
                path,
                names,
                xattrs,
                checksum,
            } => self.list_dir(id, &path, Some(&names), xattrs, checksum),
            Msg::Mkdir { path } => self.mkdir(&path),
            Msg::Symlink { path, target, meta } => {
                self.replace_with(&path, Kind::Symlink, &meta, |dir, tmp| {
                    rustix::fs::symlinkat(target.as_slice(), dir, tmp)
                })
            }
            Msg::Mknod {
                path,
                kind,
                rdev,
                meta,
            } => {
                if !kind.is_special() {
                    return Err(fatal(format!("mknod of a {kind:?}")));
                }
                self.replace_with(&path, kind, &meta, |dir, tmp| {
                    rustix::fs::mknodat(
                        dir,
                        tmp,
                        kind.file_type(),
                        Mode::from_raw_mode(0o600),
                        rdev,
                    )
                })
            }
            Msg::Remove { path } => self.remove(&path),
            Msg::Rename { from, to } => self.rename(&from, &to),
            Msg::Link { path, target } => self.link(&path, &target),
            Msg::SetMeta { path, kind, meta } => self.set_meta(&path, kind, &meta),
            Msg::DirMeta { path, meta } => {
                // Resolved now, so a path through a symlink is refused at once.
                self.root()?.open_dir(&path)?;
                if self.dir_metas.len() >= MAX_DIR_METAS {
                    return Err(fatal("too many directory updates"));
                }
                self.dir_metas.push((path, meta));
                Ok(())
            }
            Msg::SigReq {
                id,
                path,
                block_size,
                hash_len,
            } => self.signature(id, &path, block_size, hash_len),
            Msg::FileBegin {
                id,
                path,
                size,
                delta,
            } => self.file_begin(id, path, size, delta),
            Msg::FileData {
                id,
                offset,
                data,
                zstd,
            } => {
                let data = self.inflate(data, zstd, MAX_DATA)?;
                self.file_data(id, offset, &data)
            }
            Msg::FileDelta {
                id,
                len,
                delta,
                zstd,
            } => {
                let delta = self.inflate(delta, zstd, delta::MAX_WINDOW * 2)?;
                self.file_delta(id, len as usize, &delta)
            }
            Msg::FileHole { id, len } => self.file_hole(id, len),
            Msg::FileEnd { id, hash, meta } => self.file_end(id, hash, &meta),
            Msg::FileAbort { id } => {
                if let Some(f) = self.incoming.remove(&id) {
                    discard(&f);
                }
                Ok(())
            }
            Msg::Barrier { id } => self.reply(&Msg::BarrierAck { id }),
            Msg::Finish => self.finish(),
            Msg::Fatal { message, .. } => {
                eprintln!("georep slave: master stopped: {message}");
                Ok(())
            }
            other => Err(fatal(format!("unexpected message from master: {other:?}"))),
        }
    }

    fn hello(&mut self, h: Hello) -> Step {
        if self.master.is_some() {
            return Err(fatal("second hello"));
        }
        if h.version != proto::VERSION {
            return Err(fatal(format!(
                "protocol version mismatch: master speaks {}, this slave speaks {}",
                h.version,
                proto::VERSION
            )));
        }
        let dry_run = h.dry_run;
        self.master = Some(Hello {
            features: h.features & proto::FEATURES,
            ..h
        });
        self.reply(&Msg::Hello(Hello {
            version: proto::VERSION,
            features: proto::FEATURES,
            privileged: self.privileged,
            dry_run,
            fsync: h.fsync,
        }))?;
        let target = |reason: String| Failure::Fatal(Exit::Target, reason);
        let shown = self.root_path.display().to_string();
        if !dry_run {
            std::fs::create_dir_all(&self.root_path)
                .map_err(|e| target(format!("cannot create target {shown}: {e}")))?;
        }
        let fd = match rustix::fs::open(
            &self.root_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if dry_run => return Ok(()),
            Err(e) => return Err(target(format!("cannot open target {shown}: {e}"))),
        };
        if !dry_run {
            // One writer per replica: a second run would delete our temporaries.
            rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)
                .map_err(|_| target(format!("target {shown} is in use by another georep run")))?;
        }
        self.root = Some(Root::new(fd));
        Ok(())
    }

    /// Lists a directory: all of it, or only `names` (those that exist).
    fn list_dir(
        &mut self,
        id: u64,
        path: &[u8],
        names: Option<&[Vec<u8>]>,
        xattrs: bool,
        checksum: bool,
    ) -> Step {
        for n in names.unwrap_or_default() {
            if confine::components(n)?.len() != 1 {
                return Err(fatal(format!("bad name {} in a listing", show(n))));
            }
        }
        let Some(h) = &self.master else {
            return Err(fatal("message before hello"));
        };
        let dry_run = h.dry_run;
        let opts = ScanOpts {
            xattrs: xattrs && h.features & proto::feature::XATTRS != 0,
            privileged_xattrs: self.privileged,
            checksum,
        };
        let empty = Msg::DirEntries {
            id,
            this: None,
            entries: Vec::new(),
            last: true,
        };
        let Some(root) = self.root.as_mut() else {
            confine::components(path)?;
            return self.reply(&empty);
        };
        let dir = match root.open_dir(path) {
            Ok(d) => d,
            // Reading is harmless: a path that is not a directory here (yet)
            // is simply absent; only writes through it are refused.
            Err(PathError::Io { .. } | PathError::NotDir { .. }) => return self.reply(&empty),
            Err(e) => return Err(e.into()),
        };
        let st = rustix::fs::fstat(&dir).at(path)?;
        let own_xattrs = if opts.xattrs {
            meta::read_xattrs(&meta::XattrTarget::Fd(dir.as_fd()), self.privileged).at(path)?
        } else {
            Vec::new()
        };
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(b"").to_vec();
        let this = meta::entry_from_stat(name, &st, Vec::new(), own_xattrs, None);
        let (entries, temps) = match names {
            None => meta::scan_dir(dir.as_fd(), opts).at(path)?,
            Some(names) => {
                let mut entries = Vec::new();
                for n in names.iter().filter(|n| !meta::is_temp_name(n)) {
                    match meta::stat_entry(dir.as_fd(), n, opts) {
                        Ok(e) => entries.push(e),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e).at(&confine::join(path, n)),
                    }
                }
                (entries, Vec::new())
            }
        };
        if !dry_run {
            // Leftovers of a killed run: we hold the replica's lock, so they are stale.
            for t in temps {
                let _ = rustix::fs::unlinkat(&dir, t.as_slice(), AtFlags::empty());
            }
        }
        let mut this = Some(this);
        let mut chunk = Vec::new();
        let mut bytes = 0;
        let n = entries.len();
        for (i, e) in entries.into_iter().enumerate() {
            bytes += 64 + e.name.len() + e.target.len();
            bytes += e
                .meta
                .xattrs
                .iter()
                .map(|(k, v)| 8 + k.len() + v.len())
                .sum::<usize>();
            chunk.push(e);
            if bytes >= LIST_CHUNK && i + 1 < n {
                let entries = std::mem::take(&mut chunk);
                self.send(&Msg::DirEntries {
                    id,
                    this: this.take(),
                    entries,
                    last: false,
                })
                .at(path)?;
                bytes = 0;
            }
        }
        self.reply(&Msg::DirEntries {
            id,
            this: this.take(),
            entries: chunk,
            last: true,
        })
    }

    fn mkdir(&mut self, path: &[u8]) -> Step {
        let (dir, name) = self.root()?.parent(path)?;
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) => {
                let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).at(path)?;
                if Kind::from_stat(&st) == Kind::Dir {
                    Ok(())
                } else {
                    Err(op_err(path, "exists and is not a directory"))
                }
            }
            Err(e) => Err(op_err(path, e)),
        }
    }

    /// Creates an entry under a temporary name, gives it its metadata and
    /// renames it over `path`, so the old entry is replaced atomically.
    fn replace_with(
        &mut self,
        path: &[u8],
        kind: Kind,
        meta: &Meta,
        create: impl FnOnce(BorrowedFd, &[u8]) -> rustix::io::Result<()>,
    ) -> Step {
        let opts = self.apply_opts();
        let (dir, name) = self.root()?.parent(path)?;
        let tmp = temp_name();
        create(dir.as_fd(), &tmp).at(path)?;
        let done = meta::apply_at(dir.as_fd(), &tmp, kind, meta, opts)
            .and_then(|_| Ok(rustix::fs::renameat(&dir, tmp.as_slice(), &dir, name)?));
        if let Err(e) = done {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_slice(), AtFlags::empty());
            return Err(op_err(path, e));
        }
        Ok(())
    }

    fn remove(&mut self, path: &[u8]) -> Step {
        let root = self.root()?;
        let (dir, name) = root.parent(path)?;
        root.invalidate();
        let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(op_err(path, e)),
        };
        if Kind::from_stat(&st) == Kind::Dir {
            remove_tree(dir.as_fd(), name).at(path)
        } else {
            rustix::fs::unlinkat(&dir, name, AtFlags::empty()).at(path)
        }
    }

    fn rename(&mut self, from: &[u8], to: &[u8]) -> Step {
        let root = self.root()?;
        // Either side's directory missing (or not a directory here yet) is
        // left to the merge that follows; nothing is written through it.
        let (fdir, fname) = match root.parent(from) {
            Ok(x) => x,
            Err(PathError::Io { .. } | PathError::NotDir { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let (tdir, tname) = match root.parent(to) {
            Ok(x) => x,
            Err(PathError::Io { .. } | PathError::NotDir { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        root.invalidate();
        match rustix::fs::renameat(&fdir, fname, &tdir, tname) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            // A directory onto a non-empty one, a type clash: leave it to the merge.
            Err(
                rustix::io::Errno::NOTEMPTY
                | rustix::io::Errno::EXIST
                | rustix::io::Errno::ISDIR
                | rustix::io::Errno::NOTDIR,
            ) => Ok(()),
            Err(e) => Err(op_err(to, e)),
        }
    }

    fn link(&mut self, path: &[u8], target: &[u8]) -> Step {
        let root = self.root()?;
        let (tdir, tname) = root.parent(target)?;
        let (dir, name) = root.parent(path)?;
        let tmp = temp_name();
        rustix::fs::linkat(&tdir, tname, &dir, tmp.as_slice(), AtFlags::empty()).at(path)?;
        let r = rustix::fs::renameat(&dir, tmp.as_slice(), &dir, name);
        // Renaming a link over another name of the same inode is a no-op that
        // leaves the temporary behind.
        let _ = rustix::fs::unlinkat(&dir, tmp.as_slice(), AtFlags::empty());
        r.at(path)
    }

    fn set_meta(&mut self, path: &[u8], kind: Kind, meta: &Meta) -> Step {
        let opts = self.apply_opts();
        let (dir, name) = self.root()?.parent(path)?;
        let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).at(path)?;
        if Kind::from_stat(&st) != kind {
            return Err(op_err(path, "changed type on the target"));
        }
        meta::apply_at(dir.as_fd(), name, kind, meta, opts).at(path)
    }

    fn signature(&mut self, id: u64, path: &[u8], block: u32, hash_len: u32) -> Step {
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

    fn sig_fail(&mut self, id: u64, message: String) -> Step {
        self.reply(&Msg::SigFail { id, message })
    }

    fn file_begin(&mut self, id: u64, path: Vec<u8>, size: u64, delta: bool) -> Step {
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
    fn inflate(&self, data: Vec<u8>, zstd: bool, limit: usize) -> Result<Vec<u8>, Failure> {
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

    fn file_data(&mut self, id: u64, offset: u64, data: &[u8]) -> Step {
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

    fn file_delta(&mut self, id: u64, len: usize, delta: &[u8]) -> Step {
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
    fn file_hole(&mut self, id: u64, len: u64) -> Step {
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
    fn check_write(&mut self, id: u64, r: io::Result<()>) -> Step {
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

    fn file_end(&mut self, id: u64, hash: [u8; 32], meta: &Meta) -> Step {
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

    fn finish(&mut self) -> Step {
        if !self.incoming.is_empty() {
            return Err(fatal("finish with files still open"));
        }
        self.bases.clear();
        let dry_run = self.master.as_ref().is_none_or(|h| h.dry_run);
        if !dry_run {
            let opts = self.apply_opts();
            let fsync = self.master.as_ref().map(|h| h.fsync);
            let mut metas = std::mem::take(&mut self.dir_metas);
            // Deepest first, so that setting a child's times never disturbs its parent's.
            metas.sort_by_key(|(p, _)| {
                std::cmp::Reverse(
                    p.iter().filter(|&&b| b == b'/').count() + (!p.is_empty()) as usize,
                )
            });
            let mut errors = Vec::new();
            {
                let root = self.root()?;
                for (path, meta) in &metas {
                    let r = root
                        .open_dir(path)
                        .map_err(|e| e.to_string())
                        .and_then(|d| {
                            meta::apply_fd(d.as_fd(), meta, opts).map_err(|e| e.to_string())
                        });
                    if let Err(e) = r {
                        errors.push((path.clone(), e));
                    }
                }
                if fsync != Some(FsyncPolicy::None) {
                    rustix::fs::syncfs(root.fd())
                        .map_err(|e| Failure::Fatal(Exit::Target, format!("syncfs: {e}")))?;
                }
            }
            for (path, message) in errors {
                self.send(&Msg::OpError { path, message }).ok();
            }
        }
        self.finished = true;
        self.reply(&Msg::Finished)
    }

    /// Removes the temporaries of files still in flight.
    fn cleanup(&mut self) {
        for (_, f) in self.incoming.drain() {
            discard(&f);
        }
        let _ = self.out.flush();
    }
}

/// Removes a file's temporary (harmless if it was never created).
fn discard(f: &Incoming) {
    let _ = rustix::fs::unlinkat(&f.dir, f.temp.as_slice(), AtFlags::empty());
}

/// A fresh temporary name: fixed length, so it fits wherever the real name fits.
fn temp_name() -> Vec<u8> {
    let mut n = TEMP_PREFIX.to_vec();
    n.extend_from_slice(format!("{:016x}", rand::random::<u64>()).as_bytes());
    n
}

/// Writes `data` at `off`, leaving all-zero 4 KiB blocks as holes.
fn write_sparse(fd: BorrowedFd, off: u64, data: &[u8]) -> io::Result<()> {
    const B: usize = 4096;
    let mut i = 0;
    while i < data.len() {
        let end = (i + B).min(data.len());
        if data[i..end].iter().all(|&b| b == 0) {
            i = end;
            continue;
        }
        let mut j = end;
        while j < data.len() {
            let e = (j + B).min(data.len());
            if data[j..e].iter().all(|&b| b == 0) {
                break;
            }
            j = e;
        }
        write_all_at(fd, &data[i..j], off + i as u64)?;
        i = j;
    }
    Ok(())
}

fn write_all_at(fd: BorrowedFd, mut buf: &[u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = rustix::io::pwrite(fd, buf, off)?;
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}

/// Removes a directory and everything below it, never following symlinks.
fn remove_tree(parent: BorrowedFd, name: &[u8]) -> io::Result<()> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    let mut dir = rustix::fs::Dir::read_from(&fd)?;
    while let Some(ent) = dir.read() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            children.push((n.to_vec(), ent.file_type()));
        }
    }
    for (child, ft) in children {
        let is_dir = match ft {
            rustix::fs::FileType::Directory => true,
            rustix::fs::FileType::Unknown => {
                let st = rustix::fs::statat(&fd, child.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
                Kind::from_stat(&st) == Kind::Dir
            }
            _ => false,
        };
        if is_dir {
            remove_tree(fd.as_fd(), &child)?;
        } else {
            match rustix::fs::unlinkat(&fd, child.as_slice(), AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
}
