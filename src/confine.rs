//! Path resolution confined to a root directory (DESIGN.md invariant 3).
//!
//! Every relative path is walked component by component from the root's
//! directory handle with `O_NOFOLLOW | O_DIRECTORY`, so no symlink is ever
//! followed and `..` cannot appear (names are validated first). The walk also
//! lifts the PATH_MAX limit: paths of any depth work because no syscall ever
//! sees more than one component.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::fsutil::open_dir_at;

/// Why a path from the wire was refused.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("path {0} has an empty, '.' or '..' component, or a NUL byte")]
    Invalid(String),
    #[error("path {path} crosses a symlink or non-directory at {at}")]
    NotDir { path: String, at: String },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

impl PathError {
    /// Whether a peer that sent this path must be treated as hostile.
    pub fn is_violation(&self) -> bool {
        !matches!(self, PathError::Io { .. })
    }
}

/// Escapes bytes for display: printable ASCII as is, the rest as `\xNN`.
pub fn show(path: &[u8]) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let mut s = String::with_capacity(path.len());
    for &b in path {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// Like [`show`], for messages: at most 512 bytes of the path are shown, so
/// an error about a 16 MiB path stays small.
pub fn show_brief(path: &[u8]) -> String {
    const KEEP: usize = 512;
    if path.len() <= KEEP {
        return show(path);
    }
    format!("{}... ({} bytes)", show(&path[..KEEP]), path.len())
}

/// Splits a wire path into validated components. The empty path is the root.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, PathError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    for c in &comps {
        if c.is_empty() || *c == b"." || *c == b".." || c.contains(&0) || c.len() > 255 {
            return Err(PathError::Invalid(show_brief(path)));
        }
    }
    Ok(comps)
}

/// Joins a directory's relative path and a child name.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if !dir.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// A directory handle every path is resolved beneath.
pub struct Root {
    fd: Arc<OwnedFd>,
    /// The last parent directory resolved: ops arrive grouped by directory.
    cache: Option<(Vec<u8>, Arc<OwnedFd>)>,
}

impl Root {
    pub fn new(fd: OwnedFd) -> Root {
        Root {
            fd: Arc::new(fd),
            cache: None,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Forgets cached handles; called after anything that renames or removes directories.
    pub fn invalidate(&mut self) {
        self.cache = None;
    }

    /// Opens the directory at `path` (the root itself for the empty path).
    pub fn open_dir(&mut self, path: &[u8]) -> Result<Arc<OwnedFd>, PathError> {
        let comps = components(path)?;
        if comps.is_empty() {
            return Ok(self.fd.clone());
        }
        if let Some((p, fd)) = &self.cache {
            if p == path {
                return Ok(fd.clone());
            }
        }
        let mut cur: Arc<OwnedFd> = self.fd.clone();
        for (i, c) in comps.iter().enumerate() {
            let next = open_dir_at(cur.as_fd(), c).map_err(|e| {
                let at = show_brief(&comps[..=i].join(&b'/'));
                match rustix::io::Errno::from_io_error(&e) {
                    Some(rustix::io::Errno::LOOP) | Some(rustix::io::Errno::NOTDIR) => {
                        PathError::NotDir {
                            path: show_brief(path),
                            at,
                        }
                    }
                    _ => PathError::Io {
                        path: show_brief(path),
                        source: e,
                    },
                }
            })?;
            cur = Arc::new(next);
        }
        self.cache = Some((path.to_vec(), cur.clone()));
        Ok(cur)
    }

    /// Resolves the parent directory of `path` and returns it with the final
    /// name. The root itself has no parent and is refused.
    pub fn parent<'p>(&mut self, path: &'p [u8]) -> Result<(Arc<OwnedFd>, &'p [u8]), PathError> {
        components(path)?;
        if path.is_empty() {
            return Err(PathError::Invalid(show_brief(path)));
        }
        let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], path),
        };
        Ok((self.open_dir(dir)?, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{Mode, OFlags};

    #[test]
    fn refuses_escapes_and_symlinks() {
        for bad in [
            &b"../x"[..],
            b"/abs",
            b"a//b",
            b"a/./b",
            b"a/..",
            b"a\0b",
            b"a/",
        ] {
            assert!(components(bad).is_err(), "{}", show(bad));
        }
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::os::unix::fs::symlink("/", t.path().join("s")).unwrap();
        let fd =
            rustix::fs::open(t.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let mut root = Root::new(fd);
        assert!(root.parent(b"d/f").is_ok());
        assert!(matches!(
            root.parent(b"s/etc"),
            Err(PathError::NotDir { .. })
        ));
        assert!(root.parent(b"").is_err());
    }
}
