//! Entry ops: mkdir, symlink, mknod, remove, rename, link, metadata.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, Mode, OFlags};

use super::{op_err, Agent, Failure, OpContext, Step};
use crate::confine::PathError;
use crate::fsutil::temp_name;
use crate::meta::{self, Kind, Meta};

impl<W: Write> Agent<W> {
    pub(super) fn mkdir(&mut self, path: &[u8]) -> Step {
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
    pub(super) fn replace_with(
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

    pub(super) fn remove(&mut self, path: &[u8]) -> Step {
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

    pub(super) fn rename(&mut self, from: &[u8], to: &[u8]) -> Step {
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

    pub(super) fn link(&mut self, path: &[u8], target: &[u8]) -> Step {
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

    pub(super) fn set_meta(&mut self, path: &[u8], kind: Kind, meta: &Meta) -> Step {
        let opts = self.apply_opts();
        let (dir, name) = self.root()?.parent(path)?;
        let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).at(path)?;
        if Kind::from_stat(&st) != kind {
            return Err(op_err(path, "changed type on the target"));
        }
        meta::apply_at(dir.as_fd(), name, kind, meta, opts).at(path)
    }

    /// Applies the directory metadata held since the round began, deepest
    /// first so that setting a child's times never disturbs its parent's;
    /// returns the failures to report.
    pub(super) fn apply_dir_metas(&mut self) -> Result<Vec<(Vec<u8>, String)>, Failure> {
        let opts = self.apply_opts();
        let mut metas = std::mem::take(&mut self.dir_metas);
        metas.sort_by_key(|(p, _)| {
            std::cmp::Reverse(p.iter().filter(|&&b| b == b'/').count() + (!p.is_empty()) as usize)
        });
        let mut errors = Vec::new();
        let root = self.root()?;
        for (path, meta) in &metas {
            let r = root
                .open_dir(path)
                .map_err(|e| e.to_string())
                .and_then(|d| meta::apply_fd(d.as_fd(), meta, opts).map_err(|e| e.to_string()));
            if let Err(e) = r {
                errors.push((path.clone(), e));
            }
        }
        Ok(errors)
    }
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
