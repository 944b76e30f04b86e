//! Low-level file-system primitives for tests: they panic with the path on failure,
//! never follow symlinks unless the name says so, and take paths as bytes where
//! names may be non-UTF-8.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD, UTIME_OMIT};

/// A path from raw bytes (names on Linux are bytes, not UTF-8).
pub fn bpath(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

/// A path for messages: valid UTF-8 as is, control characters and backslashes escaped,
/// other bytes as `\xNN`, the empty relative path (a tree's root) as `.`.
pub fn show(path: &Path) -> String {
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            write!(out, "\\x{b:02x}").unwrap();
        }
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn lstat(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", show(path)))
}

pub fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", show(path)));
}

/// Writes `data` to `path`, creating missing parent directories.
pub fn write_file(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        mkdir(parent);
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", show(path)));
}

pub fn read_file(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", show(path)))
}

/// Deterministic pseudo-random bytes, so that fixtures are reproducible.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut buf);
    buf
}

/// Writes `len` pseudo-random bytes in 1 MiB pieces (large files stay out of memory).
pub fn write_random(path: &Path, len: u64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut f = create(path);
    let mut buf = vec![0; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

/// A sparse file of `len` bytes whose only data are 4 KiB random blocks at `offsets`.
pub fn write_sparse(path: &Path, len: u64, offsets: &[u64], seed: u64) {
    let mut f = create(path);
    for (i, &off) in offsets.iter().enumerate() {
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&random_bytes(seed + i as u64, 4096)).unwrap();
    }
    f.set_len(len).unwrap();
}

/// Overwrites bytes at `offset` in place (no truncation, no new inode).
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", show(path)));
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
}

pub fn append(path: &Path, data: &[u8]) {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", show(path)));
    f.write_all(data).unwrap();
}

pub fn truncate(path: &Path, len: u64) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", show(path)));
    f.set_len(len).unwrap();
}

fn create(path: &Path) -> File {
    if let Some(parent) = path.parent() {
        mkdir(parent);
    }
    File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", show(path)))
}

/// Reads as much as fits in `buf`, stopping early only at end of file.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

pub fn blake3_file(path: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_reader(File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", show(path))))
        .unwrap();
    h.finalize()
}

pub fn symlink(target: impl AsRef<Path>, path: &Path) {
    std::os::unix::fs::symlink(target.as_ref(), path)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", show(path)));
}

pub fn hard_link(existing: &Path, new: &Path) {
    fs::hard_link(existing, new).unwrap_or_else(|e| panic!("link {}: {e}", show(new)));
}

pub fn rename(from: &Path, to: &Path) {
    fs::rename(from, to).unwrap_or_else(|e| panic!("rename {}: {e}", show(from)));
}

/// Removes a file, symlink, special file or whole directory tree.
pub fn remove(path: &Path) {
    let res = if lstat(path).is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    res.unwrap_or_else(|e| panic!("remove {}: {e}", show(path)));
}

/// Sets all 12 permission bits (follows symlinks: never call it on one).
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", show(path)));
}

/// Changes owner without following symlinks. Clears setuid/setgid on files, as
/// chown(2) does, so call it before [`chmod`].
pub fn lchown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lchown {}: {e}", show(path)));
}

pub fn mkfifo(path: &Path, mode: u32) {
    mknod(path, FileType::Fifo, mode, 0, 0);
}

/// Creates a character or block device node (root only).
pub fn mknod(path: &Path, kind: FileType, mode: u32, major: u32, minor: u32) {
    let dev = rustix::fs::makedev(major, minor);
    rustix::fs::mknodat(CWD, path, kind, Mode::from_raw_mode(mode), dev)
        .unwrap_or_else(|e| panic!("mknod {}: {e}", show(path)));
    // mknod applies the umask; the fixture wants the exact bits.
    chmod(path, mode);
}

/// The modification time as (seconds, nanoseconds), not following symlinks.
pub fn mtime_ns(path: &Path) -> (i64, i64) {
    let m = lstat(path);
    (m.mtime(), m.mtime_nsec())
}

/// Sets the modification time to the nanosecond without following symlinks; the access
/// time is left alone.
pub fn set_mtime_ns(path: &Path, sec: i64, nsec: i64) {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", show(path)));
}

/// Runs `f`, then restores the modification time `f` changed on `path` (typically a
/// parent directory whose entries `f` edits), so that a test changes one aspect only.
pub fn keeping_mtime<T>(path: &Path, f: impl FnOnce() -> T) -> T {
    let (sec, nsec) = mtime_ns(path);
    let out = f();
    set_mtime_ns(path, sec, nsec);
    out
}

/// Sets an extended attribute on the entry itself (lsetxattr).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    xattr::set(path, name, value).unwrap_or_else(|e| panic!("setxattr {name} {}: {e}", show(path)));
}

pub fn remove_xattr(path: &Path, name: &str) {
    xattr::remove(path, name).unwrap_or_else(|e| panic!("removexattr {name} {}: {e}", show(path)));
}

/// A POSIX ACL entry tag, with the qualifier for named users and groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AclTag {
    UserObj,
    User(u32),
    GroupObj,
    Group(u32),
    Mask,
    Other,
}

/// Encodes an ACL as the kernel's `system.posix_acl_*` xattr value: a little-endian
/// u32 version 2, then (tag u16, perm u16, id u32) per entry, sorted by tag then id
/// as the kernel requires. `perm` is rwx as 4|2|1.
pub fn posix_acl(entries: &[(AclTag, u16)]) -> Vec<u8> {
    const UNDEFINED_ID: u32 = u32::MAX;
    let mut entries = entries.to_vec();
    entries.sort();
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in entries {
        let (tag, id): (u16, u32) = match tag {
            AclTag::UserObj => (0x01, UNDEFINED_ID),
            AclTag::User(uid) => (0x02, uid),
            AclTag::GroupObj => (0x04, UNDEFINED_ID),
            AclTag::Group(gid) => (0x08, gid),
            AclTag::Mask => (0x10, UNDEFINED_ID),
            AclTag::Other => (0x20, UNDEFINED_ID),
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// `cp -a --preserve=all FROM TO`: an independent reference copy, for comparator
/// self-tests and for before/after snapshots.
pub fn cp_a(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .args(["-a", "--preserve=all"])
        .arg(from)
        .arg(to)
        .output()
        .expect("run cp");
    assert!(
        out.status.success(),
        "cp -a {} {}: {}",
        show(from),
        show(to),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sets the immutable flag (chattr +i) on `path` until dropped; None where
/// the filesystem or the user cannot.
pub struct Immutable(PathBuf);

impl Immutable {
    pub fn set(path: &Path) -> Option<Immutable> {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Immutable(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}
