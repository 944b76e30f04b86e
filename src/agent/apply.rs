//! Entry ops: mkdir, symlink, mknod, remove, rename, link, metadata.
//!
//! Every change to an existing entry goes through an O_PATH pin taken
//! without following the name and checked with fstat (type, and that the
//! inode is the replica's own: [`Agent::own_inode`]), so a name swapped by a
//! local user between two calls changes nothing outside the root.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, Mode};

use super::{fatal, op_err, Agent, Failure, OpContext, Step, MAX_DIR_META_BYTES};
use crate::confine::PathError;
use crate::fsutil::{self, temp_name};
use crate::meta::{self, Kind, Meta};

/// What a held DirMeta costs, for [`MAX_DIR_META_BYTES`].
fn dir_meta_cost(path: &[u8], meta: &Meta) -> usize {
    96 + path.len()
        + meta
            .xattrs
            .iter()
            .map(|(k, v)| 48 + k.len() + v.len())
            .sum::<usize>()
}

impl<W: Write + Send + 'static> Agent<W> {
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

    /// Creates an entry under a temporary name, gives it its metadata through
    /// a pin on what was created (a temporary swapped meanwhile is not ours
    /// and is dropped) and renames it over `path`, so the old entry is
    /// replaced atomically.
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
        let (victim, _) = self.victim(dir.as_fd(), name);
        let done = (|| -> io::Result<()> {
            let (pin, st) = meta::pin(dir.as_fd(), &tmp)?;
            if Kind::from_stat(&st) != kind || st.st_nlink != 1 {
                return Err(io::Error::other("temporary replaced while being created"));
            }
            meta::apply_pinned(pin.as_fd(), kind, meta, opts)?;
            Ok(rustix::fs::renameat(&dir, tmp.as_slice(), &dir, name)?)
        })();
        if let Some(v) = victim {
            self.remember(v.as_fd());
        }
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
        let (pin, st) = match meta::pin(dir.as_fd(), name) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(op_err(path, e)),
        };
        if Kind::from_stat(&st) == Kind::Dir {
            return fsutil::remove_tree(dir.as_fd(), name).at(path);
        }
        let ours = st.st_nlink > 1 && self.own_inode(pin.as_fd(), &st);
        rustix::fs::unlinkat(&dir, name, AtFlags::empty()).at(path)?;
        // One link fewer on an inode georep linked: keep it recognised.
        if ours {
            self.remember(pin.as_fd());
        }
        Ok(())
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
        let (victim, _) = self.victim(tdir.as_fd(), tname);
        let r = rustix::fs::renameat(&fdir, fname, &tdir, tname);
        if let Some(v) = victim {
            self.remember(v.as_fd());
        }
        match r {
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

    /// Makes `path` another name of `target`'s inode. The inode is pinned
    /// and must be the replica's own ([`Agent::own_inode`]): linking a name
    /// to an inode that a local user linked in from outside would give the
    /// outside file a name in the replica (and a link the master asked for
    /// would count as georep's). Such a Link fails with OpError and nothing
    /// is linked; the master's next full transfer of the group's first name
    /// (a new inode) makes it linkable again.
    pub(super) fn link(&mut self, path: &[u8], target: &[u8]) -> Step {
        let root = self.root()?;
        let (tdir, tname) = root.parent(target)?;
        let (dir, name) = root.parent(path)?;
        let (pin, st) = meta::pin(tdir.as_fd(), tname).at(path)?;
        if Kind::from_stat(&st) == Kind::Dir {
            return Err(op_err(path, "link target is a directory"));
        }
        if !self.own_inode(pin.as_fd(), &st) {
            return Err(op_err(
                path,
                "link target's inode may be shared with files outside the replica; not linked",
            ));
        }
        let tmp = temp_name();
        // The pinned inode itself gets the name, whatever `target` names by now.
        fsutil::link_fd(pin.as_fd(), dir.as_fd(), &tmp).at(path)?;
        let victim = self
            .victim(dir.as_fd(), name)
            .0
            .filter(|v| rustix::fs::fstat(v).is_ok_and(|v| v.st_ino != st.st_ino));
        let r = rustix::fs::renameat(&dir, tmp.as_slice(), &dir, name);
        if let Some(v) = victim {
            self.remember(v.as_fd());
        }
        // Renaming a link over another name of the same inode is a no-op that
        // leaves the temporary behind.
        let _ = rustix::fs::unlinkat(&dir, tmp.as_slice(), AtFlags::empty());
        r.at(path)?;
        self.remember(pin.as_fd());
        Ok(())
    }

    /// Metadata of an existing non-directory, through a pin, and only on an
    /// inode that is the replica's own: one whose link count georep cannot
    /// explain is not changed (OpError); its next data transfer replaces it.
    pub(super) fn set_meta(&mut self, path: &[u8], kind: Kind, meta: &Meta) -> Step {
        let opts = self.apply_opts();
        let (dir, name) = self.root()?.parent(path)?;
        let (pin, st) = meta::pin(dir.as_fd(), name).at(path)?;
        if Kind::from_stat(&st) != kind {
            return Err(op_err(path, "changed type on the target"));
        }
        if !self.own_inode(pin.as_fd(), &st) {
            return Err(op_err(
                path,
                "its inode may be shared with files outside the replica; not changed in place",
            ));
        }
        meta::apply_pinned(pin.as_fd(), kind, meta, opts).at(path)?;
        if st.st_nlink > 1 {
            // The change moved the ctime georep recognises the inode by.
            self.remember(pin.as_fd());
        }
        Ok(())
    }

    /// Holds a directory's metadata until Finish. Past
    /// [`MAX_DIR_META_BYTES`] what is held is applied at once (deepest
    /// first, as at Finish): memory stays bounded, and a directory changed
    /// again later in the round is set right by the next round.
    pub(super) fn dir_meta(&mut self, path: Vec<u8>, meta: Meta) -> Step {
        // Resolved now, so a path through a symlink is refused at once.
        self.root()?.open_dir(&path)?;
        let cost = dir_meta_cost(&path, &meta);
        if cost > MAX_DIR_META_BYTES {
            return Err(fatal("directory metadata larger than the slave holds"));
        }
        if self.dir_meta_bytes + cost > MAX_DIR_META_BYTES {
            for (path, message) in self.apply_dir_metas()? {
                self.send(&crate::proto::Msg::OpError { path, message })
                    .map_err(|e| Failure::Fatal(crate::error::Exit::Protocol, e.to_string()))?;
            }
        }
        self.dir_meta_bytes += cost;
        self.dir_metas.push((path, meta));
        Ok(())
    }

    /// Applies the directory metadata held since the round began, deepest
    /// first so that setting a child's times never disturbs its parent's;
    /// returns the failures to report.
    pub(super) fn apply_dir_metas(&mut self) -> Result<Vec<(Vec<u8>, String)>, Failure> {
        let opts = self.apply_opts();
        let mut metas = std::mem::take(&mut self.dir_metas);
        self.dir_meta_bytes = 0;
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
