//! Listings: ListDir and ListNames.

use std::io::{self, Write};
use std::os::fd::AsFd;

use rustix::fs::AtFlags;

use super::{fatal, Agent, OpContext, Step, LIST_CHUNK};
use crate::confine::{self, show, PathError};
use crate::meta::{self, ScanOpts};
use crate::proto::{self, Msg};

impl<W: Write> Agent<W> {
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
}
