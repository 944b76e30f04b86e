//! Listings: ListDir and ListNames.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::AtFlags;

use super::{fatal, Agent, OpContext, Step, LIST_CHUNK};
use crate::confine::{self, show_brief as show, PathError};
use crate::meta::{self, Entry, Kind, ScanOpts};
use crate::prefetch;
use crate::proto::{self, Msg};

impl<W: Write + Send + 'static> Agent<W> {
    /// Lists a directory: all of it, or only `names` (those that exist).
    pub(super) fn list_dir(
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
        // Names first (sorted, each once), entries one chunk at a time: a
        // listing holds its names and one chunk, whatever it claims or holds.
        let mut listed = match names {
            None => Names::read(dir.as_fd(), !dry_run).at(path)?,
            Some(names) => Names::from_request(names),
        };
        listed.sort_dedup();
        let scan = ScanOpts {
            checksum: false,
            ..opts
        };
        if checksum {
            // Every name of a group in this directory is seen before any of
            // them is judged for a digest (see `own_inode`).
            for i in 0..listed.len() {
                if let Ok(e) = meta::stat_entry(dir.as_fd(), listed.get(i), scan) {
                    self.saw(path, &e);
                }
            }
        }
        let mut this = Some(this);
        let mut chunk = Vec::new();
        let mut bytes = 0;
        // A whole listing's subdirectories are what the master (walking
        // depth first) asks for next: the first ones are read meanwhile.
        let mut subdirs = Vec::new();
        let n = listed.len();
        for i in 0..n {
            let entry_name = listed.get(i);
            let mut e = match meta::stat_entry(dir.as_fd(), entry_name, scan) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).at(&confine::join(path, entry_name)),
            };
            if !checksum {
                self.saw(path, &e);
            }
            if names.is_none() && e.kind == Kind::Dir && subdirs.len() < prefetch::MAX_HINTS {
                subdirs.push(e.name.clone());
            }
            if checksum && e.kind == Kind::Regular {
                e.hash = self
                    .checksum(dir.as_fd(), &e)
                    .at(&confine::join(path, entry_name))?;
            }
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
        let reply = self.reply(&Msg::DirEntries {
            id,
            this: this.take(),
            entries: chunk,
            last: true,
        });
        self.prefetch
            .subdirs(dir.as_fd(), subdirs.iter().map(Vec::as_slice));
        reply
    }

    /// A checksum listing's digest, only of a regular file that is the
    /// replica's own: a file whose inode may be shared with the outside is
    /// not read (its digest would tell the master about an outside file);
    /// without a digest it compares as changed and is replaced.
    fn checksum(&mut self, dir: BorrowedFd, e: &Entry) -> io::Result<Option<[u8; 32]>> {
        let (pin, st) = match meta::pin(dir, &e.name) {
            Ok(x) => x,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        if st.st_ino != e.ino
            || Kind::from_stat(&st) != Kind::Regular
            || !self.own_inode(pin.as_fd(), &st)
        {
            return Ok(None);
        }
        match meta::reopen_read(pin.as_fd(), &st) {
            Ok((fd, st)) => Ok(Some(crate::delta::digest_fd(
                fd.as_fd(),
                st.st_size as u64,
            )?)),
            Err(err) if err.kind() == io::ErrorKind::Other => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// Most bytes of names one listing holds (in one buffer, plus 16 per name).
const MAX_NAME_BYTES: usize = 256 << 20;

/// The names a listing covers, in one buffer.
struct Names {
    buf: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl Names {
    /// Reads a directory's names; stray temporaries of killed runs are
    /// removed (`clean`: we hold the replica's lock, so they are stale).
    fn read(dir: BorrowedFd, clean: bool) -> io::Result<Names> {
        let mut out = Names {
            buf: Vec::new(),
            spans: Vec::new(),
        };
        let mut reader = rustix::fs::Dir::read_from(dir)?;
        while let Some(ent) = reader.read() {
            let ent = ent?;
            let n = ent.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            if meta::is_temp_name(n) {
                if clean {
                    let _ = rustix::fs::unlinkat(dir, n, AtFlags::empty());
                }
                continue;
            }
            if out.buf.len() + 16 * out.spans.len() > MAX_NAME_BYTES {
                return Err(io::Error::other(
                    "directory too large to list (over 256 MiB of names)",
                ));
            }
            out.spans.push((out.buf.len(), n.len()));
            out.buf.extend_from_slice(n);
        }
        Ok(out)
    }

    /// The names a ListNames asked for (already held by its frame).
    fn from_request(names: &[Vec<u8>]) -> Names {
        let mut out = Names {
            buf: Vec::new(),
            spans: Vec::with_capacity(names.len()),
        };
        for n in names.iter().filter(|n| !meta::is_temp_name(n)) {
            out.spans.push((out.buf.len(), n.len()));
            out.buf.extend_from_slice(n);
        }
        out
    }

    fn get(&self, i: usize) -> &[u8] {
        let (at, len) = self.spans[i];
        &self.buf[at..at + len]
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    /// Sorted by name bytes, each name once (a request naming one entry
    /// 120,000 times lists it once).
    fn sort_dedup(&mut self) {
        let buf = &self.buf;
        let key = |&(at, len): &(usize, usize)| &buf[at..at + len];
        self.spans.sort_unstable_by(|a, b| key(a).cmp(key(b)));
        self.spans.dedup_by(|a, b| key(a) == key(b));
    }
}
