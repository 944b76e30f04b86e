//! The directory merge: one source directory against the slave's listing
//! of it; differences become entry ops, data jobs and metadata ops.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::links::special;
use super::observe::{Diff, Item, What};
use super::ship::{self, DataJob};
use super::walk::{DirTask, Listing, Planner};
use crate::confine::{join, show, PathError};
use crate::error::Result;
use crate::meta::{self, Entry, Kind, Meta, ScanOpts, Xattrs};
use crate::proto::Msg;
use crate::select::Selection;

/// Small files' data jobs handed to the workers at once.
const JOB_BATCH: usize = 16;

/// Smaller files (old or new) travel whole: a signature's round trip costs
/// more than the few KiB a delta could save.
const DELTA_MIN: u64 = 16 << 10;

impl Planner<'_> {
    /// Merges one directory (or only `names` in it); returns the
    /// subdirectories to visit.
    pub(super) fn merge_dir(
        &mut self,
        rel: &[u8],
        master: &Entry,
        slave: Option<(Option<Entry>, Vec<Entry>)>,
        names: Option<&[Vec<u8>]>,
    ) -> Result<Vec<DirTask>> {
        let (slave_this, slave_entries) = match slave {
            Some((Some(this), entries)) => (Some(this), entries),
            // Not created yet (a dry run into a missing target root).
            _ => (None, Vec::new()),
        };
        if self.opts.filters.one_file_system && !rel.is_empty() && Some(master.dev) != self.root_dev
        {
            // Another filesystem (`-x`): replicated as an empty directory
            // with the mounted root's metadata, as rsync -x does; what the
            // target holds in it is left alone.
            self.dir_meta(rel, master, slave_this.as_ref(), false)?;
            return Ok(Vec::new());
        }
        let dir = match self.source.open_dir(rel) {
            Ok(d) => d,
            Err(e) => return self.unreadable_dir(rel, e),
        };
        let listed = match names {
            // Listed, then gone before its lstat: rsync's "vanished".
            None => meta::scan_dir(dir.as_fd(), self.scan).map(|s| {
                for name in &s.vanished {
                    let path = show(&join(rel, name));
                    self.rep.vanished(&format!("file has vanished: {path}"));
                }
                s.entries
            }),
            Some(names) => self.stat_names(&dir, names),
        };
        let mut entries = match listed {
            Ok(x) => x,
            Err(e) => {
                return self.unreadable_dir(
                    rel,
                    PathError::Io {
                        path: show(rel),
                        source: e,
                    },
                )
            }
        };
        let selection = self.opts.filters.files_from.as_ref();
        if let Some(sel) = selection {
            entries.retain(|e| sel.contains(rel, &e.name));
            self.check_selection(rel, &entries, sel);
        }
        let excluder = &self.opts.excluder;
        entries.retain(|e| !excluder.excluded(&join(rel, &e.name), e.kind == Kind::Dir));
        // Excluded (and unselected) target entries are protected from
        // deletion, unless --delete-excluded.
        let protect = !self.opts.filters.delete_excluded;
        let slave_entries: Vec<Entry> = slave_entries
            .into_iter()
            .filter(|e| {
                selection.is_none_or(|sel| sel.contains(rel, &e.name))
                    && !(protect && excluder.excluded(&join(rel, &e.name), e.kind == Kind::Dir))
            })
            .collect();

        if names.is_none() {
            // The walk lists these next: have them read meanwhile.
            let subdirs = entries.iter().filter(|e| e.kind == Kind::Dir);
            self.prefetch
                .subdirs(dir.as_fd(), subdirs.map(|e| e.name.as_slice()));
        }
        let mut changed = false;
        let mut children = Vec::new();
        let master_empty = entries.is_empty();
        let doomed_before = self.doomed.len();
        let mut s_iter = slave_entries.into_iter().peekable();
        for m in entries {
            self.rep.counters.files_total.fetch_add(1, Relaxed);
            if m.kind == Kind::Regular {
                self.rep.counters.total_size.fetch_add(m.size, Relaxed);
            }
            // Slave-only names sorting before this one are extras.
            while let Some(s) = s_iter.next_if(|s| s.name < m.name) {
                changed |= self.delete(rel, &s)?;
            }
            let s = s_iter.next_if(|s| s.name == m.name);
            let path = join(rel, &m.name);
            changed |= self.reconcile(&path, &dir, m, s, &mut children)?;
        }
        for s in s_iter {
            changed |= self.delete(rel, &s)?;
        }
        if rel.is_empty() && self.doomed.len() > doomed_before {
            // A merge of some names only has not read the whole root.
            self.root_emptied = match names {
                None => master_empty,
                Some(_) => self.source_root_empty(),
            };
        }
        self.dir_meta(rel, master, slave_this.as_ref(), changed)?;
        Ok(children)
    }

    /// A directory's own metadata, sent when it differs or its entries
    /// `changed` (which moves the target's mtime).
    fn dir_meta(
        &self,
        rel: &[u8],
        master: &Entry,
        slave: Option<&Entry>,
        changed: bool,
    ) -> Result<()> {
        let diff = slave.map(|s| self.meta_diff(Kind::Dir, &master.meta, &s.meta));
        let meta_differs = diff.is_none_or(|d| d.meta());
        if changed || meta_differs {
            if let Some(diff) = diff.filter(Diff::meta) {
                self.tell(What::Meta, rel, master, diff);
                self.rep.counters.meta_updated.fetch_add(1, Relaxed);
            }
            self.mutate(&Msg::DirMeta {
                path: rel.to_vec(),
                meta: master.meta.clone(),
            })?;
        }
        Ok(())
    }

    /// `--files-from`: a listed path the source lacks, or one below a
    /// non-directory, is a failure of that entry (rsync's exit 23).
    fn check_selection(&self, rel: &[u8], entries: &[Entry], sel: &Selection) {
        for name in sel.names_in(rel) {
            let path = join(rel, name);
            match entries.binary_search_by(|e| e.name.as_slice().cmp(name)) {
                Err(_) => self.rep.error(
                    &path,
                    &format!("{}: named by --files-from, not in SOURCE", show(&path)),
                ),
                Ok(i) if entries[i].kind != Kind::Dir && sel.leads_on(&path) => self.rep.error(
                    &path,
                    &format!(
                        "{}: not a directory, but --files-from names paths below it",
                        show(&path)
                    ),
                ),
                Ok(_) => {}
            }
        }
    }

    /// Tells a change of `path`, whose source entry is `m`.
    pub(super) fn tell(&self, what: What, path: &[u8], m: &Entry, diff: Diff) {
        self.rep.change(&Item {
            what,
            kind: m.kind,
            path,
            diff,
            target: (m.kind == Kind::Symlink).then_some(m.target.as_slice()),
        });
    }

    /// The entries of `names` (sorted) that exist in a source directory.
    pub(super) fn stat_names(
        &self,
        dir: &Arc<OwnedFd>,
        names: &[Vec<u8>],
    ) -> std::io::Result<Vec<Entry>> {
        let mut entries = Vec::with_capacity(names.len());
        for n in names.iter().filter(|n| !meta::is_temp_name(n)) {
            match meta::stat_entry(dir.as_fd(), n, self.scan) {
                Ok(e) => entries.push(e),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(entries)
    }

    /// A source directory that cannot be read: report it and leave its
    /// replica alone (deleting there would lose data we cannot see). One that
    /// vanished (removed, or replaced by a non-directory) is like a vanished
    /// file: the journal holds what happened to it, and the round goes on.
    pub(super) fn unreadable_dir(&self, rel: &[u8], e: PathError) -> Result<Vec<DirTask>> {
        if vanished(&e) {
            self.rep.vanished(&format!(
                "directory {} vanished while it was read",
                show(rel)
            ));
        } else {
            self.rep
                .error(rel, &format!("cannot read directory {}: {e}", show(rel)));
        }
        Ok(Vec::new())
    }

    /// A slave-only entry: removed at the round's end if the limits allow
    /// (guard.rs); returns whether the directory's entries change.
    pub(super) fn delete(&mut self, dir: &[u8], s: &Entry) -> Result<bool> {
        if !self.opts.delete {
            return Ok(false);
        }
        self.doom(dir, s);
        Ok(true)
    }

    /// The metadata that differs between a source entry and its replica
    /// (what the target's owners and attributes can be, that is).
    pub(super) fn meta_diff(&self, kind: Kind, m: &Meta, s: &Meta) -> Diff {
        let xattrs = self.scan.xattrs && m.xattrs != s.xattrs;
        let acl = xattrs && acls(&m.xattrs).ne(acls(&s.xattrs));
        Diff {
            perms: kind != Kind::Symlink && m.mode != s.mode,
            time: m.mtime_sec != s.mtime_sec || m.mtime_nsec != s.mtime_nsec,
            owner: self.owners && m.uid != s.uid,
            group: self.owners && m.gid != s.gid,
            acl,
            xattrs: xattrs && others(&m.xattrs).ne(others(&s.xattrs)),
            ..Diff::default()
        }
    }

    /// Brings one slave entry in line with its source entry; returns whether
    /// the containing directory's entries changed.
    pub(super) fn reconcile(
        &mut self,
        path: &[u8],
        dir: &Arc<OwnedFd>,
        m: Entry,
        s: Option<Entry>,
        children: &mut Vec<DirTask>,
    ) -> Result<bool> {
        let mut changed = false;
        let s = match s {
            Some(s) if s.kind != m.kind => {
                // A type change: the old entry goes first (told as the new
                // one's creation, as rsync does).
                self.rep.counters.entries_deleted.fetch_add(1, Relaxed);
                self.mutate(&Msg::Remove {
                    path: path.to_vec(),
                })?;
                changed = true;
                None
            }
            s => s,
        };
        match m.kind {
            Kind::Dir => {
                let slave = match s {
                    Some(_) => Listing::Pending,
                    None => {
                        self.created(path, &m);
                        self.mutate(&Msg::Mkdir {
                            path: path.to_vec(),
                        })?;
                        changed = true;
                        Listing::Absent
                    }
                };
                children.push(DirTask {
                    rel: path.to_vec(),
                    master: m,
                    slave,
                    recurse: true,
                    names: None,
                    restat: false,
                });
            }
            Kind::Regular => changed |= self.regular(path, dir, m, s)?,
            kind => {
                // A further name of a hard-link group (of any type): a link.
                if let Some(linked) = self.follower(path, dir, &m, s.as_ref())? {
                    return Ok(changed | linked);
                }
                let same = |s: &Entry| match kind {
                    Kind::Symlink => s.target == m.target,
                    _ => s.rdev == m.rdev,
                };
                // The slave's inode is shared with names it should not be.
                let keep = s
                    .as_ref()
                    .filter(|s| same(s) && (m.nlink > 1 || s.nlink == 1));
                self.lead(path, &m, keep.map(|s| s.ino));
                match (keep, &s) {
                    (Some(s), _) => self.update_meta(path, &m, s)?,
                    (None, old) => {
                        match old {
                            Some(s) => {
                                let diff = Diff {
                                    content: !same(s),
                                    ..self.meta_diff(kind, &m.meta, &s.meta)
                                };
                                self.tell(What::Updated, path, &m, diff);
                            }
                            None => self.created(path, &m),
                        }
                        self.mutate(&special(path.to_vec(), m))?;
                        changed = true;
                    }
                }
            }
        }
        Ok(changed)
    }

    pub(super) fn created(&self, path: &[u8], m: &Entry) {
        self.tell(What::Created, path, m, Diff::default());
        self.rep.counters.entries_created.fetch_add(1, Relaxed);
    }

    pub(super) fn update_meta(&self, path: &[u8], m: &Entry, s: &Entry) -> Result<()> {
        let diff = self.meta_diff(m.kind, &m.meta, &s.meta);
        if diff.meta() {
            self.tell(What::Meta, path, m, diff);
            self.rep.counters.meta_updated.fetch_add(1, Relaxed);
            if self.targeted && m.nlink > 1 && !self.opts.dry_run {
                // The slave may not vouch for an inode whose other names
                // this round did not list: then a crawl sets it.
                self.rep.claim(path);
            }
            self.mutate(&Msg::SetMeta {
                path: path.to_vec(),
                kind: m.kind,
                meta: m.meta.clone(),
            })?;
        }
        Ok(())
    }

    pub(super) fn regular(
        &mut self,
        path: &[u8],
        dir: &Arc<OwnedFd>,
        m: Entry,
        s: Option<Entry>,
    ) -> Result<bool> {
        let in_group = m.nlink > 1;
        if let Some(linked) = self.follower(path, dir, &m, s.as_ref())? {
            return Ok(linked);
        }
        let diff = s.as_ref().map(|s| {
            let mut d = self.meta_diff(Kind::Regular, &m.meta, &s.meta);
            d.size = s.size != m.size;
            // Read only when size and time cannot tell (`--checksum`).
            d.content =
                !d.size && !d.time && self.opts.checksum && s.hash != self.hash_source(dir, &m);
            d
        });
        let needs_data = match (&s, diff) {
            (Some(s), Some(d)) => {
                d.time || d.size || d.content
                    // The slave shares this inode with names it should not.
                    || (!in_group && s.nlink > 1)
            }
            _ => true,
        };
        self.lead(path, &m, s.as_ref().filter(|_| !needs_data).map(|s| s.ino));
        if !needs_data {
            self.update_meta(path, &m, s.as_ref().expect("present"))?;
            return Ok(false);
        }
        let basis = s
            .filter(|s| !self.opts.whole_file && s.size.min(m.size) >= DELTA_MIN)
            .map(|s| s.size);
        if self.opts.dry_run {
            // A real run would ship a delta against the target's copy: its
            // cost is unknown without reading both, so it is not literal.
            let c = &self.rep.counters;
            match basis {
                Some(_) => c.bytes_delta_basis.fetch_add(m.size, Relaxed),
                None => c.bytes_literal.fetch_add(m.size, Relaxed),
            };
            c.files_transferred.fetch_add(1, Relaxed);
            c.transferred_size.fetch_add(m.size, Relaxed);
            ship::sent(self.rep, path, diff);
            return Ok(true);
        }
        // Told (`+`, `>`) once sent: a file that cannot be read was not created.
        let job = DataJob {
            rel: path.to_vec(),
            dir: dir.clone(),
            name: m.name,
            basis,
            diff,
        };
        self.job_batch.push(job);
        if m.size > ship::SMALL || self.job_batch.len() >= JOB_BATCH {
            self.hand_out_jobs()?;
        }
        Ok(true)
    }

    /// Hands the batched data jobs to the workers.
    pub(super) fn hand_out_jobs(&mut self) -> Result<()> {
        if self.job_batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.job_batch);
        match self.jobs.as_ref().expect("workers running").send(batch) {
            Ok(()) => Ok(()),
            // Workers stop only when the connection failed.
            Err(_) => Err(self.conn.failure()),
        }
    }

    pub(super) fn hash_source(&self, dir: &Arc<OwnedFd>, m: &Entry) -> Option<[u8; 32]> {
        let opts = ScanOpts {
            checksum: true,
            xattrs: false,
            ..self.scan
        };
        meta::stat_entry(dir.as_fd(), &m.name, opts).ok()?.hash
    }
}

/// The POSIX ACLs among extended attributes (rsync's `a`).
fn acls(x: &Xattrs) -> impl Iterator<Item = &(Vec<u8>, Vec<u8>)> {
    x.iter()
        .filter(|(n, _)| n.starts_with(b"system.posix_acl_"))
}

/// The other extended attributes (rsync's `x`).
fn others(x: &Xattrs) -> impl Iterator<Item = &(Vec<u8>, Vec<u8>)> {
    x.iter()
        .filter(|(n, _)| !n.starts_with(b"system.posix_acl_"))
}

/// Whether a source path error means the directory is no longer there.
fn vanished(e: &PathError) -> bool {
    use rustix::io::Errno;
    match e {
        PathError::NotDir { .. } => true,
        PathError::Io { source, .. } => matches!(
            Errno::from_io_error(source),
            Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP)
        ),
        PathError::Invalid(_) => false,
    }
}
