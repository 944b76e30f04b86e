//! File metadata: what a directory entry is, how it is read from disk, how it
//! travels on the wire and how it is applied without following symlinks.
//!
//! Both ends scan directories with [`scan_dir`], so the master and the slave
//! describe entries the same way and the comparison is exact.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timestamps};

/// The kinds of entry georep replicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Regular = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    CharDev = 5,
    BlockDev = 6,
    Socket = 7,
}

impl Kind {
    pub fn from_stat(st: &Stat) -> Kind {
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::CharacterDevice => Kind::CharDev,
            FileType::BlockDevice => Kind::BlockDev,
            FileType::Socket => Kind::Socket,
            _ => Kind::Regular,
        }
    }
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Regular,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::CharDev,
            6 => Kind::BlockDev,
            7 => Kind::Socket,
            _ => return None,
        })
    }
    /// The S_IFMT bits for mknod.
    pub fn file_type(self) -> FileType {
        match self {
            Kind::Regular => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
            Kind::Symlink => FileType::Symlink,
            Kind::Fifo => FileType::Fifo,
            Kind::CharDev => FileType::CharacterDevice,
            Kind::BlockDev => FileType::BlockDevice,
            Kind::Socket => FileType::Socket,
        }
    }
    /// Entries created with mknod.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            Kind::Fifo | Kind::CharDev | Kind::BlockDev | Kind::Socket
        )
    }
}

/// Extended attributes, sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The metadata georep preserves for every entry.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub xattrs: Xattrs,
}

impl Meta {
    pub fn from_stat(st: &Stat, xattrs: Xattrs) -> Meta {
        Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime_sec: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            xattrs,
        }
    }
}

/// One directory entry as scanned on either side.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub meta: Meta,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub rdev: u64,
    /// Symlink target, raw bytes.
    pub target: Vec<u8>,
    /// BLAKE3 of a regular file's content, only when `--checksum` asked for it.
    pub hash: Option<[u8; 32]>,
}

/// What a scan reads besides the stat.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanOpts {
    pub xattrs: bool,
    /// Include `trusted.` and `security.` attributes (only root may write them).
    pub privileged_xattrs: bool,
    pub checksum: bool,
}

pub use crate::fsutil::{is_temp_name, TEMP_PREFIX};

/// A directory's listing.
pub struct Scan {
    /// Sorted by name bytes.
    pub entries: Vec<Entry>,
    /// Stray georep temporaries, kept out of `entries`.
    pub temps: Vec<Vec<u8>>,
    /// Names readdir gave that were gone by the time of their lstat.
    pub vanished: Vec<Vec<u8>>,
}

/// Lists a directory, sorted by name bytes; entries that vanish between
/// readdir and lstat are named apart.
pub fn scan_dir(dir: BorrowedFd, opts: ScanOpts) -> io::Result<Scan> {
    let mut entries = Vec::new();
    let mut temps = Vec::new();
    let mut vanished = Vec::new();
    let mut reader = rustix::fs::Dir::read_from(dir)?;
    while let Some(ent) = reader.read() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if is_temp_name(name) {
            temps.push(name.to_vec());
            continue;
        }
        match stat_entry(dir, name, opts) {
            Ok(e) => entries.push(e),
            Err(e) if e.kind() == io::ErrorKind::NotFound => vanished.push(name.to_vec()),
            Err(e) => return Err(e),
        }
    }
    entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(Scan {
        entries,
        temps,
        vanished,
    })
}

/// Reads one entry of `dir` without following it.
pub fn stat_entry(dir: BorrowedFd, name: &[u8], opts: ScanOpts) -> io::Result<Entry> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let kind = Kind::from_stat(&st);
    let target = if kind == Kind::Symlink {
        rustix::fs::readlinkat(dir, name, Vec::new())?.into_bytes()
    } else {
        Vec::new()
    };
    let xattrs = if opts.xattrs {
        read_xattrs(&XattrTarget::At(dir, name), opts.privileged_xattrs)?
    } else {
        Vec::new()
    };
    let hash = if opts.checksum && kind == Kind::Regular {
        digest_at(dir, name, &st)?
    } else {
        None
    };
    Ok(entry_from_stat(name.to_vec(), &st, target, xattrs, hash))
}

/// The content digest of regular file `name`, if it is still the inode `st`
/// describes (a file swapped meanwhile, for a fifo say, is never opened:
/// its entry then carries no digest and compares as different).
pub fn digest_at(dir: BorrowedFd, name: &[u8], st: &Stat) -> io::Result<Option<[u8; 32]>> {
    let (fd, now) = match open_regular(dir, name) {
        Ok(Some(x)) => x,
        Ok(None) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::Other => return Ok(None),
        Err(e) => return Err(e),
    };
    if now.st_ino != st.st_ino || now.st_dev != st.st_dev {
        return Ok(None);
    }
    Ok(Some(crate::delta::digest_fd(
        fd.as_fd(),
        now.st_size as u64,
    )?))
}

/// Pins `name` in `dir` with an O_PATH handle, never following it and never
/// opening it (no fifo or device driver is involved): calls made through the
/// handle reach this inode whatever happens to the name afterwards.
pub fn pin(dir: BorrowedFd, name: &[u8]) -> io::Result<(OwnedFd, Stat)> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    Ok((fd, st))
}

/// Opens `name` for reading if, and only if, it is a regular file: it is
/// pinned and its type checked first, then reopened through the pin with
/// O_NONBLOCK | O_NOCTTY, so a fifo or device is never opened and a swap
/// between the check and the open is impossible. None if not regular.
pub fn open_regular(dir: BorrowedFd, name: &[u8]) -> io::Result<Option<(OwnedFd, Stat)>> {
    let (pinned, st) = pin(dir, name)?;
    if Kind::from_stat(&st) != Kind::Regular {
        return Ok(None);
    }
    reopen_read(pinned.as_fd(), &st).map(Some)
}

/// Reopens a pinned regular file for reading (see [`open_regular`]).
pub fn reopen_read(pinned: BorrowedFd, st: &Stat) -> io::Result<(OwnedFd, Stat)> {
    let fd = rustix::fs::open(
        crate::fsutil::proc_fd_path(pinned),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let now = rustix::fs::fstat(&fd)?;
    if Kind::from_stat(&now) != Kind::Regular || now.st_ino != st.st_ino || now.st_dev != st.st_dev
    {
        return Err(io::Error::other("changed while being opened"));
    }
    Ok((fd, now))
}

pub fn entry_from_stat(
    name: Vec<u8>,
    st: &Stat,
    target: Vec<u8>,
    xattrs: Xattrs,
    hash: Option<[u8; 32]>,
) -> Entry {
    let kind = Kind::from_stat(st);
    Entry {
        name,
        kind,
        meta: Meta::from_stat(st, xattrs),
        size: if kind == Kind::Regular {
            st.st_size as u64
        } else {
            0
        },
        dev: st.st_dev,
        ino: st.st_ino,
        nlink: st.st_nlink,
        rdev: if matches!(kind, Kind::CharDev | Kind::BlockDev) {
            st.st_rdev
        } else {
            0
        },
        target,
        hash,
    }
}

/// Where an xattr operation lands: an open file, or a name in a directory
/// (reached through /proc/self/fd so that the final component is never followed).
pub enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a [u8]),
    /// An O_PATH handle from [`pin`] (any kind, symlinks included): reached
    /// by following its /proc link, which lands on exactly that inode.
    Pinned(BorrowedFd<'a>),
}

impl XattrTarget<'_> {
    /// The path the non-fd calls use.
    fn path(&self) -> io::Result<Option<CString>> {
        let p = match self {
            XattrTarget::Fd(_) => return Ok(None),
            XattrTarget::At(dir, name) => {
                let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
                p.extend_from_slice(name);
                p
            }
            XattrTarget::Pinned(fd) => crate::fsutil::proc_fd_path(*fd).into_bytes(),
        };
        CString::new(p)
            .map(Some)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    }
}

/// Whether an attribute name is replicated under the given privilege.
pub fn xattr_wanted(name: &[u8], privileged: bool) -> bool {
    privileged || !(name.starts_with(b"trusted.") || name.starts_with(b"security."))
}

fn is_unsupported(e: &rustix::io::Errno) -> bool {
    *e == rustix::io::Errno::NOTSUP || *e == rustix::io::Errno::PERM
}

/// Reads all wanted xattrs, sorted by name.
pub fn read_xattrs(t: &XattrTarget, privileged: bool) -> io::Result<Xattrs> {
    if let XattrTarget::At(dir, name) = t {
        if let Some(r) = xattrat::read(*dir, name, privileged) {
            return r;
        }
    }
    let path = t.path()?;
    let list = |buf: &mut [u8]| match (t, &path) {
        (XattrTarget::Fd(fd), _) => rustix::fs::flistxattr(fd, buf),
        (XattrTarget::Pinned(_), Some(p)) => rustix::fs::listxattr(p.as_c_str(), buf),
        (_, Some(p)) => rustix::fs::llistxattr(p.as_c_str(), buf),
        _ => Err(rustix::io::Errno::BADF),
    };
    let get = |name: &[u8], buf: &mut [u8]| match (t, &path) {
        (XattrTarget::Fd(fd), _) => rustix::fs::fgetxattr(fd, name, buf),
        (XattrTarget::Pinned(_), Some(p)) => rustix::fs::getxattr(p.as_c_str(), name, buf),
        (_, Some(p)) => rustix::fs::lgetxattr(p.as_c_str(), name, buf),
        _ => Err(rustix::io::Errno::BADF),
    };
    collect_xattrs(list, get, privileged)
}

/// Lists, filters and reads xattrs through the given calls, sorted by name.
fn collect_xattrs(
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    get: impl Fn(&[u8], &mut [u8]) -> rustix::io::Result<usize>,
    privileged: bool,
) -> io::Result<Xattrs> {
    let names = match fill(|b| list(b)) {
        Ok(v) => v,
        Err(e) if is_unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !xattr_wanted(name, privileged) {
            continue;
        }
        match fill(|b| get(name, b)) {
            Ok(v) => out.push((name.to_vec(), v)),
            // Removed between list and get.
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    out.sort();
    Ok(out)
}

/// listxattrat and getxattrat (Linux 6.13) reach a name in a directory
/// without following it and without the walk through /proc/self/fd, which
/// costs a no-op sync about as much as the lstat itself. On an older kernel
/// (ENOSYS, or EPERM from a seccomp filter; remembered) the caller falls
/// back to /proc.
mod xattrat {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    use rustix::io::Errno;

    /// The same on every architecture (the unified syscall table).
    const SYS_GETXATTRAT: libc::c_long = 464;
    const SYS_LISTXATTRAT: libc::c_long = 465;

    static MISSING: AtomicBool = AtomicBool::new(false);

    #[repr(C)]
    struct XattrArgs {
        value: u64,
        size: u32,
        flags: u32,
    }

    fn result(r: libc::c_long) -> rustix::io::Result<usize> {
        if r < 0 {
            Err(Errno::from_raw_os_error(
                io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ))
        } else {
            Ok(r as usize)
        }
    }

    pub(super) fn read(
        dir: BorrowedFd,
        name: &[u8],
        privileged: bool,
    ) -> Option<io::Result<super::Xattrs>> {
        if MISSING.load(Relaxed) {
            return None;
        }
        let Ok(name) = CString::new(name) else {
            return Some(Err(io::ErrorKind::InvalidInput.into()));
        };
        let list = |buf: &mut [u8]| {
            // SAFETY: the kernel writes at most buf.len() bytes into buf.
            result(unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            })
        };
        match list(&mut []) {
            // EPERM too: a seccomp filter that does not know the call may
            // answer so, and taking it for "no xattrs" would drop them
            // silently. /proc answers for real.
            Err(Errno::NOSYS | Errno::PERM) => {
                MISSING.store(true, Relaxed);
                return None;
            }
            Err(Errno::NOTSUP) => return Some(Ok(Vec::new())),
            Err(e) => return Some(Err(e.into())),
            Ok(0) => return Some(Ok(Vec::new())),
            Ok(_) => {}
        }
        let get = |attr: &[u8], buf: &mut [u8]| {
            let attr = CString::new(attr).map_err(|_| Errno::INVAL)?;
            let mut args = XattrArgs {
                value: buf.as_mut_ptr() as u64,
                size: buf.len() as u32,
                flags: 0,
            };
            // SAFETY: args points at buf, which outlives the call; the
            // kernel writes at most args.size bytes there.
            result(unsafe {
                libc::syscall(
                    SYS_GETXATTRAT,
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    attr.as_ptr(),
                    &mut args as *mut XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            })
        };
        Some(super::collect_xattrs(list, get, privileged))
    }
}

/// Calls a size-returning xattr syscall with a growing buffer.
fn fill(
    mut call: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match call(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < (1 << 21) => {
                let need = call(&mut [])?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Makes the target's xattrs exactly `want` (names outside our privilege untouched).
pub fn write_xattrs(t: &XattrTarget, want: &Xattrs, privileged: bool) -> io::Result<()> {
    let have = read_xattrs(t, privileged)?;
    let path = t.path()?;
    for (name, _) in &have {
        if want.iter().any(|(n, _)| n == name) {
            continue;
        }
        match (t, &path) {
            (XattrTarget::Fd(fd), _) => rustix::fs::fremovexattr(fd, name.as_slice()),
            (XattrTarget::Pinned(_), Some(p)) => {
                rustix::fs::removexattr(p.as_c_str(), name.as_slice())
            }
            (_, Some(p)) => rustix::fs::lremovexattr(p.as_c_str(), name.as_slice()),
            _ => Err(rustix::io::Errno::BADF),
        }?;
    }
    for (name, value) in want {
        if !xattr_wanted(name, privileged) {
            continue;
        }
        if have.iter().any(|(n, v)| n == name && v == value) {
            continue;
        }
        let flags = rustix::fs::XattrFlags::empty();
        match (t, &path) {
            (XattrTarget::Fd(fd), _) => rustix::fs::fsetxattr(fd, name.as_slice(), value, flags),
            (XattrTarget::Pinned(_), Some(p)) => {
                rustix::fs::setxattr(p.as_c_str(), name.as_slice(), value, flags)
            }
            (_, Some(p)) => rustix::fs::lsetxattr(p.as_c_str(), name.as_slice(), value, flags),
            _ => Err(rustix::io::Errno::BADF),
        }?;
    }
    Ok(())
}

/// What to apply besides permission bits and times.
#[derive(Clone, Copy, Debug)]
pub struct ApplyOpts {
    pub owner: bool,
    pub xattrs: bool,
    pub privileged: bool,
}

fn timestamps(m: &Meta) -> Timestamps {
    Timestamps {
        // atime is not preserved; UTIME_OMIT leaves it alone.
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: m.mtime_sec,
            tv_nsec: m.mtime_nsec as _,
        },
    }
}

/// Applies metadata to an open regular file or directory. Owner first, since
/// chown clears setuid/setgid; times last, since the others bump ctime only.
pub fn apply_fd(fd: BorrowedFd, m: &Meta, o: ApplyOpts) -> io::Result<()> {
    if o.owner {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(m.uid)),
            Some(rustix::fs::Gid::from_raw(m.gid)),
        )?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(m.mode))?;
    if o.xattrs {
        write_xattrs(&XattrTarget::Fd(fd), &m.xattrs, o.privileged)?;
    }
    rustix::fs::futimens(fd, &timestamps(m))?;
    Ok(())
}

/// Applies metadata to the inode pinned by an O_PATH handle from [`pin`]
/// (any kind): every call follows the handle's /proc link, which reaches
/// exactly that inode, so a name swapped meanwhile changes nothing. Symlinks
/// get owner, xattrs and times (their mode cannot change).
pub fn apply_pinned(fd: BorrowedFd, kind: Kind, m: &Meta, o: ApplyOpts) -> io::Result<()> {
    let p = crate::fsutil::proc_fd_path(fd);
    if o.owner {
        rustix::fs::chown(
            p.as_str(),
            Some(rustix::fs::Uid::from_raw(m.uid)),
            Some(rustix::fs::Gid::from_raw(m.gid)),
        )?;
    }
    if kind != Kind::Symlink {
        rustix::fs::chmod(p.as_str(), Mode::from_raw_mode(m.mode))?;
    }
    if o.xattrs {
        write_xattrs(&XattrTarget::Pinned(fd), &m.xattrs, o.privileged)?;
    }
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p.as_str(),
        &timestamps(m),
        AtFlags::empty(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listxattrat path and the /proc path read the same attributes,
    /// and neither follows a symlink.
    #[test]
    fn xattrs_at_a_name_equal_those_through_proc() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        if xattr::set(&file, "user.b", b"2").is_err() {
            eprintln!("SKIP: no user xattrs on {}", t.path().display());
            return;
        }
        xattr::set(&file, "user.a", &[0u8; 3000]).unwrap();
        std::os::unix::fs::symlink("f", t.path().join("l")).unwrap();
        let dir = std::fs::File::open(t.path()).unwrap();
        let want: Xattrs = vec![
            (b"user.a".to_vec(), vec![0u8; 3000]),
            (b"user.b".to_vec(), b"2".to_vec()),
        ];
        let at = read_xattrs(&XattrTarget::At(dir.as_fd(), b"f"), false).unwrap();
        assert_eq!(at, want);
        let (pin, _) = pin(dir.as_fd(), b"f").unwrap();
        let proc = read_xattrs(&XattrTarget::Pinned(pin.as_fd()), false).unwrap();
        assert_eq!(proc, want);
        let link = read_xattrs(&XattrTarget::At(dir.as_fd(), b"l"), false).unwrap();
        assert!(link.is_empty(), "followed the symlink: {link:?}");
        let gone = read_xattrs(&XattrTarget::At(dir.as_fd(), b"missing"), false);
        assert_eq!(gone.unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
