//! Generic file-system helpers: temporary files nobody can swap, sparse and
//! positioned writes, links and removals that never follow a name twice.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

/// Names georep uses for its own temporaries; never replicated, removed when seen.
pub const TEMP_PREFIX: &[u8] = b".georep.tmp.";

pub fn is_temp_name(name: &[u8]) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// A fresh temporary name: fixed length, so it fits wherever the real name fits.
pub fn temp_name() -> Vec<u8> {
    let mut n = TEMP_PREFIX.to_vec();
    n.extend_from_slice(format!("{:016x}", rand::random::<u64>()).as_bytes());
    n
}

/// Named temporaries that exist right now, each with its own descriptor of
/// its directory: a signal handler removes them before the process exits
/// (an interrupted run leaves none behind, even where O_TMPFILE is missing).
static LIVE: Mutex<Vec<(OwnedFd, Vec<u8>)>> = Mutex::new(Vec::new());

fn register(dir: BorrowedFd, name: &[u8]) {
    if let Ok(fd) = rustix::io::fcntl_dupfd_cloexec(dir, 0) {
        LIVE.lock().unwrap().push((fd, name.to_vec()));
    }
}

fn unregister(name: &[u8]) {
    LIVE.lock().unwrap().retain(|(_, n)| n != name);
}

/// Removes every named temporary this process has open (from a signal
/// handler's thread, just before exiting). The lock is kept: nothing of
/// this process creates a temporary after it.
pub fn remove_live_temporaries() {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    for (dir, name) in live.iter() {
        let _ = rustix::fs::unlinkat(dir, name.as_slice(), AtFlags::empty());
    }
    std::mem::forget(live);
}

/// GEOREP_NO_TMPFILE=1 makes new files named temporaries from the start, as
/// on filesystems without O_TMPFILE (NFS, FUSE, older overlayfs): for tests
/// of what an interrupted run leaves behind.
fn tmpfile_disabled() -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("GEOREP_NO_TMPFILE").is_some_and(|v| v == "1"))
}

/// The /proc path of an open descriptor: calls that follow it reach exactly
/// the inode the descriptor holds (symlinks included, for an O_PATH handle).
/// Replaces a small state file durably: a new file (named for this process,
/// so concurrent writers do not share one) written, synced, renamed over
/// `path`, and its directory synced.
pub fn replace_file(path: &std::path::Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    std::fs::File::open(dir.unwrap_or(std::path::Path::new(".")))?.sync_all()
}

pub fn proc_fd_path(fd: BorrowedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// A new regular file in a directory, written through its descriptor only.
pub struct NewFile {
    pub fd: OwnedFd,
    /// The name it was created under when the filesystem has no O_TMPFILE;
    /// None for an unnamed O_TMPFILE inode (nothing to swap, nothing left
    /// behind by a crash).
    pub temp: Option<Vec<u8>>,
}

/// Creates a new file in `dir`: O_TMPFILE where the filesystem has it, else a
/// fresh temporary name with O_EXCL | O_NOFOLLOW (never an existing inode).
pub fn create_temp(dir: BorrowedFd) -> io::Result<NewFile> {
    let unnamed = match tmpfile_disabled() {
        true => Err(Errno::OPNOTSUPP),
        false => rustix::fs::openat(
            dir,
            c".",
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ),
    };
    match unnamed {
        Ok(fd) => return Ok(NewFile { fd, temp: None }),
        Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let temp = temp_name();
    register(dir, &temp);
    let fd = rustix::fs::openat(
        dir,
        temp.as_slice(),
        OFlags::RDWR
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::NOCTTY
            | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .inspect_err(|_| unregister(&temp))?;
    Ok(NewFile {
        fd,
        temp: Some(temp),
    })
}

impl NewFile {
    /// Moves the file over `name` in `dir` atomically. When `name` was seen
    /// absent, an unnamed file is linked straight to it (one directory
    /// operation instead of a link and a rename); a name that appeared
    /// meanwhile makes that link fail (EEXIST) and the rename replaces it.
    pub fn install(&self, dir: BorrowedFd, name: &[u8], absent: bool) -> io::Result<()> {
        if absent && self.link_new(dir, name)? {
            return Ok(());
        }
        let temp = match &self.temp {
            Some(t) => t.clone(),
            None => {
                let t = temp_name();
                register(dir, &t);
                link_fd(self.fd.as_fd(), dir, &t).inspect_err(|_| unregister(&t))?;
                t
            }
        };
        let r = rustix::fs::renameat(dir, temp.as_slice(), dir, name);
        if r.is_err() && self.temp.is_none() {
            let _ = rustix::fs::unlinkat(dir, temp.as_slice(), AtFlags::empty());
        }
        if r.is_ok() || self.temp.is_none() {
            unregister(&temp);
        }
        Ok(r?)
    }

    /// Links an unnamed file straight to `name` if nothing has that name:
    /// false when something does (EEXIST) or the file has a temporary name,
    /// and [`NewFile::install`] must replace it.
    pub fn link_new(&self, dir: BorrowedFd, name: &[u8]) -> io::Result<bool> {
        if self.temp.is_some() {
            return Ok(false);
        }
        match link_fd(self.fd.as_fd(), dir, name) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(Errno::EXIST.raw_os_error()) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Drops the file: an unnamed one simply goes with its descriptor.
    pub fn discard(&self, dir: BorrowedFd) {
        if let Some(t) = &self.temp {
            let _ = rustix::fs::unlinkat(dir, t.as_slice(), AtFlags::empty());
            unregister(t);
        }
    }
}

/// Gives the inode held by `fd` a new name: the inode itself, not whatever a
/// name points to by now. AT_EMPTY_PATH where the kernel allows it (it
/// needs CAP_DAC_READ_SEARCH; it saves a path walk through /proc), else
/// through /proc (no privilege needed).
pub fn link_fd(fd: BorrowedFd, dir: BorrowedFd, name: &[u8]) -> io::Result<()> {
    // Unknown until the first link; remembered once it failed where /proc did not.
    static EMPTY_PATH_REFUSED: AtomicBool = AtomicBool::new(false);
    if !EMPTY_PATH_REFUSED.load(Relaxed) {
        match rustix::fs::linkat(fd, c"", dir, name, AtFlags::EMPTY_PATH) {
            Err(Errno::NOENT) => {}
            r => return Ok(r?),
        }
    }
    match rustix::fs::linkat(CWD, proc_fd_path(fd), dir, name, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => {
            EMPTY_PATH_REFUSED.store(true, Relaxed);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens a directory beneath `dir` without following a symlink and without
/// opening anything that is not a directory (O_DIRECTORY is checked before
/// any driver's open, so a fifo or device is never opened).
pub fn open_dir_at(dir: BorrowedFd, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY
            | OFlags::DIRECTORY
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::NOCTTY
            | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Writes `data` at `off`, leaving all-zero 4 KiB blocks as holes; returns
/// where the last byte written ends (`off` if all of it was zeros).
pub fn write_sparse(fd: BorrowedFd, off: u64, data: &[u8]) -> io::Result<u64> {
    const B: usize = 4096;
    let mut i = 0;
    let mut written_end = off;
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
        written_end = off + j as u64;
        i = j;
    }
    Ok(written_end)
}

/// Starts writeback of a written range without waiting for it, so that the
/// round's final sync finds the data already on its way to the disk. A hint
/// only: durability still comes from that sync, so a failure is ignored.
pub fn start_writeback(fd: BorrowedFd, off: u64, len: u64) {
    // SAFETY: sync_file_range reads no memory of ours; a bad fd is EBADF.
    unsafe {
        libc::sync_file_range(
            fd.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

pub fn write_all_at(fd: BorrowedFd, mut buf: &[u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = rustix::io::pwrite(fd, buf, off)?;
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}

/// Most directories held open while removing a tree: deeper directories are
/// moved up into the tree's top first, so depth costs neither stack nor fds.
const REMOVE_FDS: usize = 64;

/// Removes the directory `name` in `parent` and everything below it, never
/// following a symlink, without recursion and with at most [`REMOVE_FDS`]
/// directories open however deep the tree is.
pub fn remove_tree(parent: BorrowedFd, name: &[u8]) -> io::Result<()> {
    struct Level {
        fd: OwnedFd,
        /// Its name in the level above.
        name: Vec<u8>,
        /// Subdirectories still to remove.
        pending: Vec<Vec<u8>>,
    }
    let top = open_dir_at(parent, name)?;
    let pending = clear_files(top.as_fd())?;
    let mut stack = vec![Level {
        fd: top,
        name: name.to_vec(),
        pending,
    }];
    while let Some(lvl) = stack.last_mut() {
        let Some(child) = lvl.pending.pop() else {
            let done = stack.pop().expect("non-empty");
            drop(done.fd);
            let up = stack.last().map_or(parent, |l| l.fd.as_fd());
            match rustix::fs::unlinkat(up, done.name.as_slice(), AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        };
        let depth = stack.len();
        if depth >= REMOVE_FDS {
            // Hoist it into the top directory: the chain is cut, no fd is added.
            let t = temp_name();
            let (top, rest) = stack.split_first_mut().expect("non-empty");
            let cur = rest.last().expect("deeper than the top");
            match rustix::fs::renameat(&cur.fd, child.as_slice(), &top.fd, t.as_slice()) {
                Ok(()) => top.pending.push(t),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        let lvl = stack.last_mut().expect("non-empty");
        match open_dir_at(lvl.fd.as_fd(), &child) {
            Ok(fd) => {
                let pending = clear_files(fd.as_fd())?;
                stack.push(Level {
                    fd,
                    name: child,
                    pending,
                });
            }
            Err(e) => match Errno::from_io_error(&e) {
                Some(Errno::NOENT) => {}
                // Swapped for something that is not a directory: just a name to drop.
                Some(Errno::NOTDIR | Errno::LOOP) => {
                    match rustix::fs::unlinkat(&lvl.fd, child.as_slice(), AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                _ => return Err(e),
            },
        }
    }
    Ok(())
}

/// Unlinks every non-directory in `dir`; returns the names of its subdirectories.
fn clear_files(dir: BorrowedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut dirs = Vec::new();
    let mut reader = rustix::fs::Dir::read_from(dir)?;
    while let Some(ent) = reader.read() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        let is_dir = match ent.file_type() {
            rustix::fs::FileType::Directory => true,
            rustix::fs::FileType::Unknown => {
                match rustix::fs::statat(dir, n, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir(),
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            _ => false,
        };
        if is_dir {
            dirs.push(n.to_vec());
        } else {
            match rustix::fs::unlinkat(dir, n, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                // A directory after all (swapped meanwhile): remove it as one.
                Err(Errno::ISDIR) => dirs.push(n.to_vec()),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(dirs)
}
