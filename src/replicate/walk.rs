//! The planner's walk: depth first from a round's first directories, with
//! the slave's listings requested ahead, data jobs handed to `jobs` worker
//! threads, and the round's end (retries, deferred links, Finish).

use std::cell::Cell;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use super::conn::{Conn, CONTROL};
use super::guard::Doomed;
use super::links::{DeferredLink, HintUpdate, InodeHints, Leader};
use super::observe::Reporter;
use super::options::Options;
use super::ship::{self, DataJob, JobOpts, Verdicts};
use crate::confine::{show, Root};
use crate::error::{Error, Result};
use crate::meta::{self, Entry, Kind, ScanOpts, XattrTarget};
use crate::prefetch::Prefetcher;
use crate::proto::{self, Hello, Msg};

/// Directory listings requested ahead of the walk.
const LOOKAHEAD: usize = 64;

/// A directory waiting to be merged.
pub(super) struct DirTask {
    pub(super) rel: Vec<u8>,
    /// The source directory's own entry (metadata to replicate).
    pub(super) master: Entry,
    pub(super) slave: Listing,
    /// Merge existing subdirectories too (always, below a created one).
    pub(super) recurse: bool,
    /// Merge only these entries (sorted, unique), not the whole directory.
    pub(super) names: Option<Vec<Vec<u8>>>,
    /// Resumed by a later crawl slice: `master` may be stale.
    pub(super) restat: bool,
}

pub(super) enum Listing {
    /// Not on the slave: everything below is created.
    Absent,
    /// On the slave, listing not yet requested.
    Pending,
    Requested(Receiver<Msg>),
}

pub(super) struct Planner<'a> {
    pub(super) opts: &'a Options,
    pub(super) conn: &'a Conn,
    pub(super) rep: &'a Arc<Reporter>,
    pub(super) source: &'a mut Root,
    pub(super) scan: ScanOpts,
    /// The slave can set owners (runs as root).
    pub(super) owners: bool,
    pub(super) links: HashMap<(u64, u64), Leader>,
    pub(super) deferred_links: Vec<DeferredLink>,
    /// A session's inode hints (links.rs), and what this round tells them.
    pub(super) hints: Option<&'a mut (dyn InodeHints + 'static)>,
    pub(super) hint_update: HintUpdate,
    /// The source root's filesystem (for `-x`).
    pub(super) root_dev: Option<u64>,
    /// Data jobs for the workers, handed out in batches (one wakeup of a
    /// worker per batch, not per small file).
    pub(super) jobs: Option<mpsc::SyncSender<Vec<DataJob>>>,
    /// Jobs not yet handed out: small files of the directory being merged.
    pub(super) job_batch: Vec<DataJob>,
    pub(super) job_opts: JobOpts,
    pub(super) in_flight: usize,
    pub(super) verdicts: Arc<Verdicts>,
    /// Targeted round: see [`RoundOutcome::needs_full`].
    pub(super) targeted: bool,
    pub(super) needs_full: bool,
    /// Slave entries the round would remove, sent once counted (guard.rs).
    pub(super) doomed: Vec<Doomed>,
    /// Slave entries this round's listings held.
    pub(super) listed: Cell<u64>,
    /// The replica's entries as the last full round counted them, kept
    /// up to date with what later rounds created and removed.
    pub(super) estimate: Option<u64>,
    /// A full round: its listings are the whole replica.
    pub(super) whole: bool,
    /// Entries this round removed (subtrees counted when the guard counted them).
    pub(super) removed: u64,
    pub(super) removed_cost: Option<u64>,
    /// Entries removed and created by this connection's earlier rounds
    /// within the delete window.
    pub(super) recent: (u64, u64),
    /// The created-entries counter when the round began.
    pub(super) created_before: u64,
    /// The source root holds nothing while the round deletes at the top.
    pub(super) root_emptied: bool,
    /// The operator let the next deletions through the limits once...
    pub(super) override_deletes: bool,
    /// ...and this round used that.
    pub(super) override_used: bool,
    /// Carried by this round's Finish (see `Replicator::set_marker`).
    pub(super) marker_ns: i64,
    /// Lists the source's subdirectories ahead of the walk.
    pub(super) prefetch: &'a mut Prefetcher,
}

impl<'a> Planner<'a> {
    pub(super) fn new(
        opts: &'a Options,
        conn: &'a Conn,
        rep: &'a Arc<Reporter>,
        source: &'a mut Root,
        prefetch: &'a mut Prefetcher,
        hello: &Hello,
    ) -> Self {
        let xattrs = opts.xattrs && hello.features & proto::feature::XATTRS != 0;
        let root_dev = rustix::fs::fstat(source.fd()).ok().map(|st| st.st_dev);
        Planner {
            opts,
            conn,
            rep,
            source,
            scan: ScanOpts {
                xattrs,
                privileged_xattrs: hello.privileged,
                checksum: false,
            },
            owners: hello.privileged,
            links: HashMap::new(),
            deferred_links: Vec::new(),
            hints: None,
            hint_update: HintUpdate::default(),
            root_dev,
            jobs: None,
            job_batch: Vec::new(),
            job_opts: JobOpts {
                xattrs,
                privileged_xattrs: hello.privileged,
                compress: opts.compress && hello.features & proto::feature::ZSTD != 0,
            },
            in_flight: 0,
            verdicts: Arc::default(),
            targeted: false,
            needs_full: false,
            doomed: Vec::new(),
            listed: Cell::new(0),
            estimate: None,
            whole: false,
            removed: 0,
            removed_cost: None,
            recent: (0, 0),
            created_before: rep
                .counters
                .entries_created
                .load(std::sync::atomic::Ordering::Relaxed),
            root_emptied: false,
            override_deletes: false,
            override_used: false,
            marker_ns: 0,
            prefetch,
        }
    }

    /// Walks from `stack` (until `yield_now` says stop), then finishes the
    /// round; returns the directories left to visit, ready to be resumed.
    pub(super) fn run(
        &mut self,
        stack: Vec<DirTask>,
        yield_now: Option<&dyn Fn() -> bool>,
    ) -> Result<Vec<DirTask>> {
        // Claims are a round's own (links.rs).
        self.rep.release_claims();
        let (tx, rx) = mpsc::sync_channel::<Vec<DataJob>>(self.opts.jobs * 4);
        let rx = Arc::new(Mutex::new(rx));
        self.jobs = Some(tx);
        let (conn, rep, o) = (self.conn, self.rep, self.job_opts);
        let verdicts = &self.verdicts.clone();
        let left = std::thread::scope(|scope| -> Result<Vec<DirTask>> {
            let rx = rx;
            let workers: Vec<_> = (0..self.opts.jobs)
                .map(|_| {
                    let rx = rx.clone();
                    scope.spawn(move || loop {
                        let batch = rx.lock().unwrap().recv();
                        match batch {
                            Ok(batch) => {
                                for job in batch {
                                    ship::run(conn, job, o, rep, verdicts)?;
                                }
                            }
                            Err(_) => return Ok(()),
                        }
                    })
                })
                .collect();
            // Only the workers may hold the queue's receiving end: if they all
            // stop (connection lost), the planner's next send fails instead of
            // blocking forever.
            drop(rx);
            let walked = self
                .walk(stack, yield_now)
                .and_then(|left| self.hand_out_jobs().map(|()| left));
            // Closing the queue lets the workers finish what is queued and stop.
            self.jobs = None;
            let (left, mut first_err) = match walked {
                Ok(left) => (left, None),
                Err(e) => (Vec::new(), Some(e)),
            };
            for w in workers {
                if let Err(e) = w.join().expect("worker panicked") {
                    first_err.get_or_insert(e);
                }
            }
            first_err.map_or(Ok(left), Err)
        })?;
        let left = self.suspend(left)?;
        // A full round stopped early did not list the whole replica.
        self.whole &= left.is_empty();
        let doomed: Option<Vec<Vec<u8>>> = self
            .hints
            .is_some()
            .then(|| self.doomed.iter().map(|d| d.path.clone()).collect());
        let refused = self.settle_deletes()?;
        if refused.is_none() {
            self.hint_update.removed = doomed.unwrap_or_default();
        }
        self.settle_retries()?;
        self.send_links()?;
        let finish = Msg::Finish {
            marker_ns: self.marker_ns,
        };
        let rx = self.conn.request(CONTROL, &finish)?;
        match self.conn.wait(&rx)? {
            Msg::Finished => self.settle_groups(),
            other => return Err(Error::Protocol(format!("unexpected reply {other:?}"))),
        }
        // The rest of the round is applied; the refusal fails it.
        match refused {
            Some(why) => Err(Error::DeleteLimit(why)),
            None => Ok(left),
        }
    }

    pub(super) fn source_root_entry(&self) -> Result<Entry> {
        let fd = self.source.fd();
        let st = rustix::fs::fstat(fd).map_err(|e| self.source_err(e.into()))?;
        let xattrs = if self.scan.xattrs {
            meta::read_xattrs(&XattrTarget::Fd(fd), self.scan.privileged_xattrs)
                .map_err(|e| self.source_err(e))?
        } else {
            Vec::new()
        };
        Ok(meta::entry_from_stat(
            Vec::new(),
            &st,
            Vec::new(),
            xattrs,
            None,
        ))
    }

    pub(super) fn source_err(&self, e: std::io::Error) -> Error {
        Error::Source {
            path: self.opts.source.display().to_string(),
            reason: e.to_string(),
        }
    }

    /// Requests the slave's listing of a directory (or of some of its names).
    pub(super) fn list(
        &mut self,
        rel: Vec<u8>,
        names: Option<&[Vec<u8>]>,
    ) -> Result<Receiver<Msg>> {
        let id = self.conn.next_id();
        self.in_flight += 1;
        let (xattrs, checksum) = (self.scan.xattrs, self.opts.checksum);
        let msg = match names {
            None => Msg::ListDir {
                id,
                path: rel,
                xattrs,
                checksum,
            },
            Some(names) => Msg::ListNames {
                id,
                path: rel,
                names: names.to_vec(),
                xattrs,
                checksum,
            },
        };
        self.conn.request(id, &msg)
    }

    /// Depth-first walk with listings requested up to LOOKAHEAD directories
    /// ahead; returns what is left when `yield_now` said stop.
    pub(super) fn walk(
        &mut self,
        mut stack: Vec<DirTask>,
        yield_now: Option<&dyn Fn() -> bool>,
    ) -> Result<Vec<DirTask>> {
        while let Some(mut task) = stack.pop() {
            if task.restat {
                match self.dir_entry(&task.rel)? {
                    Some(e) => task.master = e,
                    // Gone or replaced since the crawl saw it: live changes own it now.
                    None => continue,
                }
            }
            let slave = match task.slave {
                Listing::Requested(rx) => {
                    self.in_flight -= 1;
                    Some(self.receive_listing(&rx)?)
                }
                Listing::Pending => {
                    let rx = self.list(task.rel.clone(), task.names.as_deref())?;
                    self.in_flight -= 1;
                    Some(self.receive_listing(&rx)?)
                }
                Listing::Absent => None,
            };
            if matches!(&slave, Some((None, _))) && !task.rel.is_empty() {
                // Listed as present, gone from the slave by the time it was
                // listed (or never created): whoever owns its parent must
                // create it. A targeted round leaves that to a full round; a
                // full round reports it.
                if self.targeted {
                    self.needs_full = true;
                } else {
                    self.rep.error(
                        &task.rel,
                        &format!(
                            "{}: vanished from the target during the run",
                            show(&task.rel)
                        ),
                    );
                }
                continue;
            }
            let children = self.merge_dir(&task.rel, &task.master, slave, task.names.as_deref())?;
            self.hand_out_jobs()?;
            // A targeted merge descends only into what it created.
            let children = children
                .into_iter()
                .filter(|c| task.recurse || matches!(c.slave, Listing::Absent));
            stack.extend(children.rev());
            // Keep the slave busy listing what comes next.
            for t in stack.iter_mut().rev() {
                if self.in_flight >= LOOKAHEAD {
                    break;
                }
                if let Listing::Pending = t.slave {
                    let rx = self.list(t.rel.clone(), t.names.as_deref())?;
                    t.slave = Listing::Requested(rx);
                }
            }
            if yield_now.is_some_and(|y| y()) {
                break;
            }
        }
        Ok(stack)
    }

    /// Readies the directories a sliced crawl left for a later slice:
    /// listings already asked for are collected and dropped (changes shipped
    /// meanwhile would make them stale), as is what the parent's scan said.
    pub(super) fn suspend(&mut self, mut left: Vec<DirTask>) -> Result<Vec<DirTask>> {
        for t in &mut left {
            if let Listing::Requested(rx) = std::mem::replace(&mut t.slave, Listing::Pending) {
                self.in_flight -= 1;
                self.receive_listing(&rx)?;
            }
            t.restat = true;
        }
        Ok(left)
    }

    /// A source directory's entry, None if it is gone or no longer a directory.
    pub(super) fn dir_entry(&mut self, rel: &[u8]) -> Result<Option<Entry>> {
        if rel.is_empty() {
            return self.source_root_entry().map(Some);
        }
        let Ok((dir, name)) = self.source.parent(rel) else {
            return Ok(None);
        };
        Ok(meta::stat_entry(dir.as_fd(), name, self.scan)
            .ok()
            .filter(|e| e.kind == Kind::Dir))
    }

    /// Collects one directory's listing: its own entry (None if it does not
    /// exist on the slave) and its children.
    pub(super) fn receive_listing(
        &self,
        rx: &Receiver<Msg>,
    ) -> Result<(Option<Entry>, Vec<Entry>)> {
        let mut this = None;
        let mut entries = Vec::new();
        loop {
            match self.conn.wait(rx)? {
                Msg::DirEntries {
                    this: t,
                    entries: mut e,
                    last,
                    ..
                } => {
                    if t.is_some() {
                        this = t;
                    }
                    entries.append(&mut e);
                    if last {
                        break;
                    }
                }
                other => return Err(Error::Protocol(format!("unexpected reply {other:?}"))),
            }
        }
        self.listed.set(self.listed.get() + entries.len() as u64);
        // Sorted by the slave; a hostile or buggy slave must not confuse the merge.
        entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|a, b| a.name == b.name);
        Ok((this, entries))
    }

    /// Sends a message that changes the slave (skipped in a dry run).
    pub(super) fn mutate(&self, m: &Msg) -> Result<()> {
        if self.opts.dry_run {
            Ok(())
        } else {
            self.conn.send(m)
        }
    }

    /// Waits until the slave has judged every delta, then resends whole the
    /// files whose delta did not rebuild the right content.
    pub(super) fn settle_retries(&mut self) -> Result<()> {
        for _ in 0..2 {
            let id = self.conn.next_id();
            let rx = self.conn.request(id, &Msg::Barrier { id })?;
            self.conn.wait(&rx)?;
            let retries = self.verdicts.failed(self.conn)?;
            if retries.is_empty() {
                return Ok(());
            }
            for mut job in retries {
                self.rep.warn(&format!(
                    "{}: delta did not verify; sending whole",
                    show(&job.rel)
                ));
                job.basis = None;
                ship::run(self.conn, job, self.job_opts, self.rep, &self.verdicts)?;
            }
        }
        Ok(())
    }
}
