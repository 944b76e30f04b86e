//! `georep slave`: applies a master's stream beneath one root directory.
//!
//! The agent trusts nothing it reads. Paths are resolved with
//! [`crate::confine::Root`], sizes and counts are checked before use, deltas
//! are applied with the same checks as `apply_limited` (reading the basis
//! with pread) and every rebuilt file is checked against the master's content
//! digest before it is renamed into place. A message that breaks the protocol
//! (a path escaping the root, an impossible size, a delta that reads out of
//! bounds) is answered with a Fatal frame and the agent exits non-zero,
//! removing its temporaries. A failure of one entry (disk full, permission)
//! is reported with OpError and the run goes on.
//!
//! Nor does it trust the replica (DESIGN.md invariant 3: a local user may
//! write in it). Entries are pinned (O_PATH, never following, never opening a
//! fifo or device) and changed through the pin; new content goes to an
//! O_TMPFILE inode; and an inode that may have names outside the root (link
//! count above one that georep did not make, or another filesystem) is never
//! changed in place, read or linked: see [`Agent::own_inode`].

mod apply;
pub mod fence;
mod flush;
mod list;
mod receive;
mod sign;
pub mod volumes;

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{FlockOperation, Mode, OFlags, Stat};

use crate::confine::{PathError, Root};
use crate::delta;
use crate::error::Exit;
use crate::meta::{self, ApplyOpts, Kind, Meta};
use crate::prefetch::Prefetcher;
use crate::proto::frame::{self as wire, WireError, MAX_FRAME};
use crate::proto::{self, FsyncPolicy, Hello, Msg, Side};

use receive::Incoming;

/// Files being received at once; a master keeps far fewer in flight.
const MAX_OPEN_FILES: usize = 256;
/// Listing chunk size, well under the frame limit.
const LIST_CHUNK: usize = 1 << 20;
/// Largest decompressed FileData payload.
const MAX_DATA: usize = 4 << 20;
/// Bytes of directory metadata held until Finish (paths, xattrs and a fixed
/// 96 per entry); past it the held metadata is applied early.
const MAX_DIR_META_BYTES: usize = 32 << 20;
/// Inodes whose extra links georep made itself, remembered per connection.
const MAX_KNOWN: usize = 1 << 18;
/// Bytes of names of multi-link inodes a round's listings remember.
const MAX_SEEN_BYTES: usize = 32 << 20;
/// Longest message text in an error frame the slave sends.
const MAX_MESSAGE: usize = 4096;

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

/// A name in the replica: its directory's path and the name.
type DirName = (Vec<u8>, Vec<u8>);

/// The slave's state for one connection (one or more rounds).
pub struct Agent<W: Write + Send + 'static> {
    root_path: PathBuf,
    root: Option<Root>,
    /// Shared with the signer (frames are written whole under its lock).
    out: sign::Out<W>,
    privileged: bool,
    master: Option<Hello>,
    incoming: HashMap<u64, Incoming>,
    signer: sign::Signer,
    dir_metas: Vec<(Vec<u8>, Meta)>,
    /// What `dir_metas` holds, counted as in [`MAX_DIR_META_BYTES`].
    dir_meta_bytes: usize,
    /// The root's filesystem: an inode elsewhere is not the replica's own.
    root_dev: u64,
    /// Inodes with more than one name that georep linked itself: (dev, ino)
    /// to the link count and ctime it left them with. Any change by someone
    /// else (a new link outside, a write) moves the ctime.
    known: HashMap<(u64, u64), (u64, i64, i64)>,
    /// This round's listings: names (directory path, name) of each inode
    /// with more than one link, so that its link count can be explained.
    seen: HashMap<(u64, u64), Vec<DirName>>,
    /// What `seen` holds, capped by [`MAX_SEEN_BYTES`].
    seen_bytes: usize,
    /// The last message was Finish: the round is closed and acknowledged.
    finished: bool,
    /// Where fencing records live (`--state-dir`; else the default).
    state_dir: Option<PathBuf>,
    /// A fenced session's record, once its hello was accepted.
    fencing: Option<fence::Fencing>,
    /// Syncs in the background as small files accumulate (started with the
    /// first one, when the master asked for durability).
    flusher: Option<flush::Flusher>,
    /// Reads the subdirectories of a listing ahead of their own listings.
    prefetch: Prefetcher,
}

/// Runs the agent on a byte stream until Finish, EOF or a fatal error;
/// returns the process exit code.
pub fn serve(
    root: &Path,
    state_dir: Option<&Path>,
    input: impl Read,
    output: impl Write + Send + 'static,
) -> Exit {
    let privileged = rustix::process::geteuid().is_root();
    let mut agent = Agent {
        root_path: root.to_path_buf(),
        root: None,
        out: Arc::new(Mutex::new(BufWriter::with_capacity(256 << 10, output))),
        privileged,
        master: None,
        incoming: HashMap::new(),
        signer: sign::Signer::new(),
        dir_metas: Vec::new(),
        dir_meta_bytes: 0,
        root_dev: 0,
        known: HashMap::new(),
        seen: HashMap::new(),
        seen_bytes: 0,
        finished: false,
        state_dir: state_dir.map(Path::to_path_buf),
        fencing: None,
        flusher: None,
        prefetch: Prefetcher::new(),
    };
    let code = agent.run(BufReader::with_capacity(1 << 20, input));
    agent.cleanup();
    code
}

/// Answers a master that cannot be served at all (unknown volume, a key
/// restricted elsewhere) with a Fatal frame, without reading its stream;
/// returns whether the frame went out.
pub fn refuse(output: impl Write, code: Exit, message: &str) -> bool {
    let mut out = BufWriter::new(output);
    let m = Msg::Fatal {
        code: code as u8,
        message: clip(message),
    };
    wire::write_frame(&mut out, &m.encode())
        .and_then(|_| out.flush())
        .is_ok()
}

/// A failure of one entry that every other entry would meet too: the
/// target is read-only, full or over quota. One Fatal frame says it, not
/// one error per entry.
fn target_wide(message: &str) -> Option<&'static str> {
    [
        ("(os error 30)", "the target filesystem is read-only"),
        ("(os error 28)", "the target filesystem is full"),
        ("(os error 122)", "the target's disk quota is exceeded"),
    ]
    .into_iter()
    .find(|(code, _)| message.contains(code))
    .map(|(_, what)| what)
}

impl<W: Write + Send + 'static> Agent<W> {
    fn run(&mut self, mut input: impl Read) -> Exit {
        let mut buf = Vec::new();
        loop {
            let msg = match Msg::read(&mut input, Side::Master, &mut buf) {
                Ok(Some(m)) => Ok(m),
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
            // Anything after Finish opens a new round, which must end with its own.
            self.finished = matches!(msg, Msg::Finish { .. });
            match self.handle(msg) {
                Ok(()) => {}
                Err(Failure::Op(path, message)) if target_wide(&message).is_some() => {
                    let what = target_wide(&message).unwrap_or_default();
                    let shown = self.root_path.display();
                    let path = crate::confine::show_brief(&path);
                    return self.fail(
                        Exit::Target,
                        format!("{what} ({shown}; stopped at {path}: {message})"),
                    );
                }
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
        // The Fatal is the last frame: the signer writes nothing after it.
        self.signer.stop();
        let fatal = Msg::Fatal {
            code: code as u8,
            message: message.clone(),
        };
        if self
            .send(&fatal)
            .and_then(|_| sign::lock(&self.out).flush())
            .is_err()
        {
            eprintln!("georep slave: {message}");
        }
        code
    }

    /// Sends a frame; the slave's own error frames are cut to fit MAX_FRAME
    /// whatever path or message they echo.
    fn send(&mut self, m: &Msg) -> io::Result<()> {
        let fitted;
        let m = match m {
            Msg::OpError { path, message } => {
                fitted = Msg::OpError {
                    path: path[..path.len().min(MAX_FRAME - 2 * MAX_MESSAGE)].to_vec(),
                    message: clip(message),
                };
                &fitted
            }
            Msg::Fatal { code, message } => {
                fitted = Msg::Fatal {
                    code: *code,
                    message: clip(message),
                };
                &fitted
            }
            Msg::SigFail { id, message } => {
                fitted = Msg::SigFail {
                    id: *id,
                    message: clip(message),
                };
                &fitted
            }
            m => m,
        };
        wire::write_frame(&mut *sign::lock(&self.out), &m.encode())
    }

    /// Whether georep may change, read or link the inode pinned by `pin`
    /// (`st` its fstat) in place: it is on the root's filesystem and all its
    /// names are inside the replica. That holds when it has one name; when
    /// georep made its other links itself and nothing changed it since (the
    /// link count and ctime georep left); or when this round's listings saw
    /// as many names of it as it has links and each still names it, with
    /// its link count and ctime unchanged while they were checked (a rename
    /// or a link moves the ctime, so a name moved to be counted twice is
    /// caught). Directories cannot be hard-linked. Anything else may be an
    /// inode from outside the root that a local user linked in: it is
    /// replaced, never modified, read or given another name.
    fn own_inode(&mut self, pin: BorrowedFd, st: &Stat) -> bool {
        if st.st_dev != self.root_dev {
            return false;
        }
        if Kind::from_stat(st) == Kind::Dir || st.st_nlink <= 1 {
            return true;
        }
        let key = (st.st_dev, st.st_ino);
        if self.known.get(&key) == Some(&(st.st_nlink, st.st_ctime, st.st_ctime_nsec as i64)) {
            return true;
        }
        let Some(names) = self.seen.get(&key) else {
            return false;
        };
        if (names.len() as u64) < st.st_nlink {
            return false;
        }
        let names = names.clone();
        let Some(root) = self.root.as_mut() else {
            return false;
        };
        let mut found = std::collections::HashSet::new();
        for (dir, name) in &names {
            let Ok(d) = root.open_dir(dir) else { continue };
            let Ok(ds) = rustix::fs::fstat(&d) else {
                continue;
            };
            match rustix::fs::statat(&d, name.as_slice(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
                Ok(n) if (n.st_dev, n.st_ino) == key => {
                    found.insert((ds.st_ino, name.clone()));
                }
                _ => {}
            }
        }
        let same = rustix::fs::fstat(pin).is_ok_and(|now| {
            (now.st_nlink, now.st_ctime, now.st_ctime_nsec)
                == (st.st_nlink, st.st_ctime, st.st_ctime_nsec)
        });
        if same && found.len() as u64 == st.st_nlink {
            self.remember(pin);
            return true;
        }
        false
    }

    /// Records the links of an inode georep just linked, unlinked, changed
    /// or found to be all inside the replica (see [`Agent::own_inode`]).
    fn remember(&mut self, pin: BorrowedFd) {
        let Ok(st) = rustix::fs::fstat(pin) else {
            return;
        };
        let key = (st.st_dev, st.st_ino);
        if st.st_nlink <= 1 {
            self.known.remove(&key);
        } else if self.known.len() < MAX_KNOWN || self.known.contains_key(&key) {
            let v = (st.st_nlink, st.st_ctime, st.st_ctime_nsec as i64);
            self.known.insert(key, v);
        }
    }

    /// Notes a name of a multi-link inode seen by this round's listings.
    fn saw(&mut self, dir: &[u8], e: &meta::Entry) {
        if e.kind == Kind::Dir || e.nlink <= 1 || e.dev != self.root_dev {
            return;
        }
        let cost = 64 + dir.len() + e.name.len();
        if self.seen_bytes + cost > MAX_SEEN_BYTES {
            return;
        }
        self.seen_bytes += cost;
        self.seen
            .entry((e.dev, e.ino))
            .or_default()
            .push((dir.to_vec(), e.name.clone()));
    }

    /// Before a name is replaced by a rename over it: a pin on the inode it
    /// names if that is one of georep's multi-link inodes, whose record must
    /// follow the link it loses (`remember` it afterwards); and whether the
    /// name was absent (nothing to replace).
    fn victim(&mut self, dir: BorrowedFd, name: &[u8]) -> (Option<OwnedFd>, bool) {
        let (pin, st) = match meta::pin(dir, name) {
            Ok(p) => p,
            Err(e) => {
                return (
                    None,
                    e.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()),
                )
            }
        };
        let ours = Kind::from_stat(&st) != Kind::Dir
            && st.st_nlink > 1
            && self.own_inode(pin.as_fd(), &st);
        (ours.then_some(pin), false)
    }

    fn reply(&mut self, m: &Msg) -> Step {
        self.send(m)
            .and_then(|_| sign::lock(&self.out).flush())
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
            Msg::DirMeta { path, meta } => self.dir_meta(path, meta),
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
                    f.discard();
                }
                Ok(())
            }
            Msg::Barrier { id } => {
                self.signer
                    .drain()
                    .map_err(|e| Failure::Fatal(Exit::Protocol, e))?;
                self.reply(&Msg::BarrierAck { id })
            }
            Msg::Finish { marker_ns } => self.finish(marker_ns),
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
        // A fenced session: refuse a stale epoch, stop an older writer,
        // before anything in the replica is touched.
        let mut fence = proto::Fence::default();
        if !h.fence.session.is_empty() && !dry_run {
            let (fencing, rec) =
                fence::Fencing::hello(self.state_dir.as_deref(), &self.root_path, &h.fence)
                    .map_err(|(code, msg)| Failure::Fatal(code, msg))?;
            fence = proto::Fence {
                epoch: rec.epoch,
                marker_time_ns: rec.marker_time_ns,
                marker_epoch: rec.marker_epoch,
                ..proto::Fence::default()
            };
            self.fencing = Some(fencing);
        }
        let fsync = h.fsync;
        self.master = Some(Hello {
            features: h.features & proto::FEATURES,
            ..h
        });
        self.reply(&Msg::Hello(Hello {
            version: proto::VERSION,
            features: proto::FEATURES,
            privileged: self.privileged,
            dry_run,
            fsync,
            fence,
        }))?;
        let target = |reason: String| Failure::Fatal(Exit::Target, reason);
        let shown = self.root_path.display().to_string();
        if !dry_run {
            std::fs::create_dir_all(&self.root_path).map_err(|e| {
                target(match std::fs::metadata(&self.root_path) {
                    Ok(m) if !m.is_dir() => format!("target {shown} is a file, not a directory"),
                    _ => format!("cannot create target {shown}: {e}"),
                })
            })?;
        }
        let fd = match rustix::fs::open(
            &self.root_path,
            OFlags::RDONLY
                | OFlags::DIRECTORY
                | OFlags::NONBLOCK
                | OFlags::NOCTTY
                | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if dry_run => return Ok(()),
            Err(rustix::io::Errno::NOTDIR) => {
                return Err(target(format!("target {shown} is a file, not a directory")))
            }
            Err(e) => return Err(target(format!("cannot open target {shown}: {e}"))),
        };
        if !dry_run {
            // One writer per replica: a second run would delete our temporaries.
            rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)
                .map_err(|_| target(format!("target {shown} is in use by another georep run")))?;
        }
        let st = rustix::fs::fstat(&fd).map_err(|e| target(format!("target {shown}: {e}")))?;
        self.root_dev = st.st_dev;
        self.root = Some(Root::new(fd));
        Ok(())
    }

    /// Ends a round: directory metadata, sync, then the durable Finished.
    fn finish(&mut self, marker_ns: i64) -> Step {
        if !self.incoming.is_empty() {
            return Err(fatal("finish with files still open"));
        }
        // Every signature answered before the round ends; the bases no
        // delta took are dropped.
        self.signer
            .finish()
            .map_err(|e| Failure::Fatal(Exit::Protocol, e))?;
        // The next round lists afresh.
        self.seen = HashMap::new();
        self.seen_bytes = 0;
        let dry_run = self.master.as_ref().is_none_or(|h| h.dry_run);
        if !dry_run {
            let fsync = self.master.as_ref().map(|h| h.fsync);
            let errors = self.apply_dir_metas()?;
            if fsync != Some(FsyncPolicy::None) {
                let root = self.root()?;
                rustix::fs::syncfs(root.fd())
                    .map_err(|e| Failure::Fatal(Exit::Target, format!("syncfs: {e}")))?;
            }
            for (path, message) in errors {
                self.send(&Msg::OpError { path, message }).ok();
            }
            // Acknowledged only while still the session's writer.
            if let Some(f) = &self.fencing {
                f.finish(marker_ns)
                    .map_err(|(code, msg)| Failure::Fatal(code, msg))?;
            }
        }
        self.finished = true;
        self.reply(&Msg::Finished)
    }

    /// Removes the temporaries of files still in flight.
    fn cleanup(&mut self) {
        for (_, f) in self.incoming.drain() {
            f.discard();
        }
        // Stopped first: nothing of it is written after the last flush.
        self.signer.stop();
        let _ = sign::lock(&self.out).flush();
    }
}

/// Cuts an error message to [`MAX_MESSAGE`] bytes (on a character boundary).
fn clip(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE - 16;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [cut]", &message[..end])
}
