//! `georep sync`: one-shot replication of a tree through the protocol.
//!
//! The planner walks the source depth first, one directory at a time, and
//! merges each directory's entries with the slave's listing of the same
//! directory (requested ahead, so listings stream while we work). Differences
//! become entry ops (sent at once, in order), data jobs (run by `jobs`
//! worker threads, pipelined on the same connection) and metadata ops.
//! Directory metadata is applied by the slave at Finish, deepest first, after
//! all contents changed. Hard links are sent last, once every group leader
//! has its final content. Memory is bounded by the walk's depth, the
//! lookahead window and the hard-link table, not by the tree.

pub mod conn;
pub mod report;
pub mod worker;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use rustix::fs::{Mode, OFlags};

use crate::confine::{join, show, PathError, Root};
use crate::error::{Error, Result};
use crate::exclude::Excluder;
use crate::meta::{self, Entry, Kind, Meta, ScanOpts, XattrTarget};
use crate::proto::{self, FsyncPolicy, Hello, Msg};
use crate::target::Target;
use crate::transport::{self, SshOptions};
use conn::{Conn, CONTROL};
use report::{Reporter, Summary};
use worker::{DataJob, JobOpts};

/// Validated options of a sync run.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    pub source: PathBuf,
    pub target: Target,
    pub delete: bool,
    pub checksum: bool,
    pub whole_file: bool,
    pub dry_run: bool,
    pub jobs: usize,
    pub fsync: FsyncPolicy,
    pub xattrs: bool,
    pub excluder: Excluder,
    pub verbose: bool,
    pub json: bool,
    pub progress: bool,
    /// zstd-compress literal data on the wire.
    pub compress: bool,
    pub ssh: SshOptions,
}

/// Smaller files (old or new) travel whole: a signature's round trip costs
/// more than the few KiB a delta could save.
const DELTA_MIN: u64 = 16 << 10;

/// Most names in one partial listing (ListNames).
const MAX_NAMES: usize = 4096;

/// Directory listings requested ahead of the walk.
const LOOKAHEAD: usize = 64;

/// Runs a sync; per-entry failures are counted in the summary.
pub fn run(opts: &SyncOptions) -> Result<Summary> {
    let rep = Arc::new(Reporter::new(opts.verbose, opts.json, opts.progress));
    let mut r = Replicator::connect(opts, rep.clone())?;
    let outcome = r.round(&Scope::Full);
    let (sent, received) = r.traffic();
    r.close(outcome)?;
    Ok(rep.summary(sent, received, opts.dry_run))
}

/// What one round replicates.
#[derive(Clone, Debug, Default)]
pub enum Scope {
    /// The whole tree.
    #[default]
    Full,
    /// Only what a batch of changes touched: renames first (so that moved
    /// trees travel as renames), then a merge of each listed directory as
    /// far as its [`Reach`] says.
    Changes {
        renames: Vec<(Vec<u8>, Vec<u8>)>,
        dirs: Vec<(Vec<u8>, Reach)>,
    },
}

/// How much of a directory a targeted round merges (each includes the
/// directory's own metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// These entries only: the cost of a change, not of its directory.
    Names(Vec<Vec<u8>>),
    /// All its entries, descending only into subdirectories it creates.
    Dir,
    /// Everything below it.
    Tree,
}

impl Reach {
    /// What covers both.
    fn union(self, other: Reach) -> Reach {
        match (self, other) {
            (Reach::Tree, _) | (_, Reach::Tree) => Reach::Tree,
            (Reach::Dir, _) | (_, Reach::Dir) => Reach::Dir,
            (Reach::Names(mut a), Reach::Names(b)) => {
                a.extend(b);
                Reach::Names(a)
            }
        }
    }
}

/// A full crawl taken in slices, so that a daemon can ship live changes
/// between them ([`Replicator::crawl_slice`]). Between slices it keeps the
/// directories still to visit (their listings and metadata are taken afresh
/// when resumed: the tree may have changed meanwhile) and the hard-link
/// leaders placed so far, so that a group spanning slices stays one inode.
#[derive(Default)]
pub struct Crawl {
    started: bool,
    stack: Vec<DirTask>,
    links: HashMap<(u64, u64), Leader>,
    /// Slices taken so far.
    pub slices: u64,
}

impl Crawl {
    pub fn new() -> Crawl {
        Crawl::default()
    }

    /// Whether the whole tree has been visited.
    pub fn done(&self) -> bool {
        self.started && self.stack.is_empty()
    }
}

/// What a round learned besides its changes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundOutcome {
    /// A targeted round met a hard-link group it could not see whole: only
    /// a full round can place its names correctly.
    pub needs_full: bool,
}

/// A connection to a slave that serves any number of rounds; each round
/// ends with the slave's durable acknowledgement (Finished).
pub struct Replicator {
    opts: SyncOptions,
    conn: Conn,
    rep: Arc<Reporter>,
    source: Root,
    hello: Hello,
}

impl Replicator {
    pub fn connect(opts: &SyncOptions, rep: Arc<Reporter>) -> Result<Replicator> {
        let source = open_source(opts)?;
        let link = transport::for_target(&opts.target, &opts.ssh)?.connect()?;
        let conn = Conn::start(link, rep.clone());
        let hello = match handshake(&conn, opts) {
            Ok(h) => h,
            Err(e) => {
                let closed = conn.close();
                return Err(explain(e, closed));
            }
        };
        Ok(Replicator {
            opts: opts.clone(),
            conn,
            rep,
            source,
            hello,
        })
    }

    /// A planner for the next round.
    fn planner(&mut self) -> Planner<'_> {
        // The source changed since the last round: cached handles may name
        // directories that moved or were replaced.
        self.source.invalidate();
        Planner::new(
            &self.opts,
            &self.conn,
            &self.rep,
            &mut self.source,
            &self.hello,
        )
    }

    /// One round; returns once the slave has durably applied it.
    pub fn round(&mut self, scope: &Scope) -> Result<RoundOutcome> {
        let mut p = self.planner();
        let stack = p.first_tasks(scope)?;
        p.run(stack, None)?;
        Ok(RoundOutcome {
            needs_full: p.needs_full,
        })
    }

    /// Walks on with a sliced full crawl until it is done or `yield_now`
    /// says live changes are waiting (asked after each directory, so a slice
    /// covers at least one), then ends the round like any other: durably
    /// applied.
    pub fn crawl_slice(
        &mut self,
        crawl: &mut Crawl,
        yield_now: &dyn Fn() -> bool,
    ) -> Result<RoundOutcome> {
        let mut p = self.planner();
        let stack = if crawl.started {
            std::mem::take(&mut crawl.stack)
        } else {
            crawl.started = true;
            p.first_tasks(&Scope::Full)?
        };
        p.links = std::mem::take(&mut crawl.links);
        crawl.slices += 1;
        crawl.stack = p.run(stack, Some(yield_now))?;
        crawl.links = std::mem::take(&mut p.links);
        Ok(RoundOutcome {
            needs_full: p.needs_full,
        })
    }

    /// Bytes sent and received so far.
    pub fn traffic(&self) -> (u64, u64) {
        let s = &self.conn.shared;
        (s.bytes_sent.load(Relaxed), s.bytes_received.load(Relaxed))
    }

    /// Closes the connection; `outcome` is how the last round went.
    pub fn close<T>(self, outcome: Result<T>) -> Result<T> {
        let closed = self.conn.close();
        match outcome {
            Ok(v) => closed.map(|_| v),
            Err(e) => Err(explain(e, closed)),
        }
    }
}

/// A lost connection is best explained by how the slave (or ssh) ended.
fn explain(e: Error, closed: Result<()>) -> Error {
    match (e, closed) {
        (Error::Disconnected(m), Err(Error::Disconnected(how))) => {
            Error::Disconnected(format!("{m}; {how}"))
        }
        (Error::Disconnected(_), Err(e @ Error::Ssh { .. })) => e,
        (Error::Disconnected(m), Err(e)) => Error::Disconnected(format!("{m}; {e}")),
        (e, _) => e,
    }
}

fn open_source(opts: &SyncOptions) -> Result<Root> {
    let path = opts.source.display().to_string();
    let fd = rustix::fs::open(
        &opts.source,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Source {
        path,
        reason: match e {
            rustix::io::Errno::NOTDIR => "not a directory".into(),
            e => e.to_string(),
        },
    })?;
    Ok(Root::new(fd))
}

/// A directory waiting to be merged.
struct DirTask {
    rel: Vec<u8>,
    /// The source directory's own entry (metadata to replicate).
    master: Entry,
    slave: Listing,
    /// Merge existing subdirectories too (always, below a created one).
    recurse: bool,
    /// Merge only these entries (sorted, unique), not the whole directory.
    names: Option<Vec<Vec<u8>>>,
    /// Resumed by a later crawl slice: `master` may be stale.
    restat: bool,
}

enum Listing {
    /// Not on the slave: everything below is created.
    Absent,
    /// On the slave, listing not yet requested.
    Pending,
    Requested(Receiver<Msg>),
}

/// A hard-link group, by the source's (dev, ino).
struct Leader {
    rel: Vec<u8>,
    /// The slave inode now holding the leader's content, unless it is being replaced.
    slave_ino: Option<u64>,
}

struct Planner<'a> {
    opts: &'a SyncOptions,
    conn: &'a Conn,
    rep: &'a Arc<Reporter>,
    source: &'a mut Root,
    scan: ScanOpts,
    /// The slave can set owners (runs as root).
    owners: bool,
    links: HashMap<(u64, u64), Leader>,
    deferred_links: Vec<(Vec<u8>, Vec<u8>)>,
    jobs: Option<mpsc::SyncSender<DataJob>>,
    job_opts: JobOpts,
    in_flight: usize,
    /// Targeted round: see [`RoundOutcome::needs_full`].
    targeted: bool,
    needs_full: bool,
}

impl<'a> Planner<'a> {
    fn new(
        opts: &'a SyncOptions,
        conn: &'a Conn,
        rep: &'a Arc<Reporter>,
        source: &'a mut Root,
        hello: &Hello,
    ) -> Self {
        let xattrs = opts.xattrs && hello.features & proto::feature::XATTRS != 0;
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
            jobs: None,
            job_opts: JobOpts {
                xattrs,
                privileged_xattrs: hello.privileged,
                compress: opts.compress && hello.features & proto::feature::ZSTD != 0,
            },
            in_flight: 0,
            targeted: false,
            needs_full: false,
        }
    }

    /// The directories a round starts from (sending a targeted round's renames).
    fn first_tasks(&mut self, scope: &Scope) -> Result<Vec<DirTask>> {
        match scope {
            Scope::Full => {
                let master = self.source_root_entry()?;
                let rx = self.list(Vec::new(), None)?;
                Ok(vec![DirTask {
                    rel: Vec::new(),
                    master,
                    slave: Listing::Requested(rx),
                    recurse: true,
                    names: None,
                    restat: false,
                }])
            }
            Scope::Changes { renames, dirs } => {
                self.targeted = true;
                for (from, to) in renames {
                    self.rename(from, to)?;
                }
                self.targeted_tasks(dirs)
            }
        }
    }

    /// Walks from `stack` (until `yield_now` says stop), then finishes the
    /// round; returns the directories left to visit, ready to be resumed.
    fn run(
        &mut self,
        stack: Vec<DirTask>,
        yield_now: Option<&dyn Fn() -> bool>,
    ) -> Result<Vec<DirTask>> {
        let (tx, rx) = mpsc::sync_channel::<DataJob>(self.opts.jobs * 4);
        let rx = Arc::new(Mutex::new(rx));
        self.jobs = Some(tx);
        let (conn, rep, o) = (self.conn, self.rep, self.job_opts);
        let left = std::thread::scope(|scope| -> Result<Vec<DirTask>> {
            let rx = rx;
            let workers: Vec<_> = (0..self.opts.jobs)
                .map(|_| {
                    let rx = rx.clone();
                    scope.spawn(move || loop {
                        let job = rx.lock().unwrap().recv();
                        match job {
                            Ok(job) => worker::run(conn, job, o, rep)?,
                            Err(_) => return Ok(()),
                        }
                    })
                })
                .collect();
            // Only the workers may hold the queue's receiving end: if they all
            // stop (connection lost), the planner's next send fails instead of
            // blocking forever.
            drop(rx);
            let walked = self.walk(stack, yield_now);
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
        self.settle_retries()?;
        for (path, target) in std::mem::take(&mut self.deferred_links) {
            self.rep.item('=', &path);
            self.mutate(&Msg::Link { path, target })?;
        }
        let rx = self.conn.request(CONTROL, &Msg::Finish)?;
        match self.conn.wait(&rx)? {
            Msg::Finished => Ok(left),
            other => Err(Error::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    fn source_root_entry(&self) -> Result<Entry> {
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

    fn source_err(&self, e: std::io::Error) -> Error {
        Error::Source {
            path: self.opts.source.display().to_string(),
            reason: e.to_string(),
        }
    }

    /// Requests the slave's listing of a directory (or of some of its names).
    fn list(&mut self, rel: Vec<u8>, names: Option<&[Vec<u8>]>) -> Result<Receiver<Msg>> {
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

    /// Sends a rename the journal saw, if the source still agrees with it
    /// (`to` exists, `from` does not) and neither name is excluded.
    fn rename(&mut self, from: &[u8], to: &[u8]) -> Result<()> {
        let kind = |src: &mut Root, p: &[u8]| -> Option<Kind> {
            let (dir, name) = src.parent(p).ok()?;
            let st = rustix::fs::statat(&*dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).ok()?;
            Some(Kind::from_stat(&st))
        };
        let Some(k) = kind(self.source, to) else {
            return Ok(());
        };
        let is_dir = k == Kind::Dir;
        if kind(self.source, from).is_none()
            && !self.excluded_path(from, is_dir)
            && !self.excluded_path(to, is_dir)
        {
            self.rep.item('R', to);
            self.mutate(&Msg::Rename {
                from: from.to_vec(),
                to: to.to_vec(),
            })?;
        }
        Ok(())
    }

    /// The directories a batch touched, parents first, without those a
    /// recursive ancestor already covers, excluded ones and vanished ones.
    fn targeted_tasks(&mut self, dirs: &[(Vec<u8>, Reach)]) -> Result<Vec<DirTask>> {
        let mut dirs = dirs.to_vec();
        dirs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut merged: Vec<(Vec<u8>, Reach)> = Vec::with_capacity(dirs.len());
        for (rel, reach) in dirs {
            match merged.last_mut() {
                Some(last) if last.0 == rel => {
                    let prev = std::mem::replace(&mut last.1, Reach::Dir);
                    last.1 = prev.union(reach);
                }
                _ => merged.push((rel, reach)),
            }
        }
        let mut covered: Vec<Vec<u8>> = Vec::new();
        let mut tasks = Vec::new();
        for (rel, reach) in merged {
            let under = |c: &Vec<u8>| {
                c.is_empty() || rel == *c || rel.starts_with(&[c.as_slice(), b"/"].concat())
            };
            if covered.iter().any(under) || self.excluded_path(&rel, true) {
                continue;
            }
            // Gone or no longer a directory: its parent's merge settles it.
            let Some(master) = self.dir_entry(&rel)? else {
                continue;
            };
            let (names, recurse) = match reach {
                // So many that one listing of the whole directory is cheaper
                // (and a request stays far below the frame limit).
                Reach::Names(names) if names.len() > MAX_NAMES => (None, false),
                Reach::Names(mut names) => {
                    names.sort_unstable();
                    names.dedup();
                    (Some(names), false)
                }
                Reach::Dir => (None, false),
                Reach::Tree => {
                    covered.push(rel.clone());
                    (None, true)
                }
            };
            tasks.push(DirTask {
                recurse,
                rel,
                master,
                slave: Listing::Pending,
                names,
                restat: false,
            });
        }
        // A stack: the first (shallowest) directory is processed first.
        tasks.reverse();
        Ok(tasks)
    }

    /// Whether a path or any of its ancestors is excluded.
    fn excluded_path(&self, rel: &[u8], is_dir: bool) -> bool {
        let ex = &self.opts.excluder;
        let ancestors = rel
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'/')
            .map(|(i, _)| &rel[..i]);
        ancestors
            .filter(|p| !p.is_empty())
            .any(|p| ex.excluded(p, true))
            || (!rel.is_empty() && ex.excluded(rel, is_dir))
    }

    /// Depth-first walk with listings requested up to LOOKAHEAD directories
    /// ahead; returns what is left when `yield_now` said stop.
    fn walk(
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
                    self.rep.error(&format!(
                        "{}: vanished from the target during the run",
                        show(&task.rel)
                    ));
                }
                continue;
            }
            let children = self.merge_dir(&task.rel, &task.master, slave, task.names.as_deref())?;
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
    fn suspend(&mut self, mut left: Vec<DirTask>) -> Result<Vec<DirTask>> {
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
    fn dir_entry(&mut self, rel: &[u8]) -> Result<Option<Entry>> {
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
    fn receive_listing(&self, rx: &Receiver<Msg>) -> Result<(Option<Entry>, Vec<Entry>)> {
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
        // Sorted by the slave; a hostile or buggy slave must not confuse the merge.
        entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|a, b| a.name == b.name);
        Ok((this, entries))
    }

    /// Sends a message that changes the slave (skipped in a dry run).
    fn mutate(&self, m: &Msg) -> Result<()> {
        if self.opts.dry_run {
            Ok(())
        } else {
            self.conn.send(m)
        }
    }

    /// Merges one directory (or only `names` in it); returns the
    /// subdirectories to visit.
    fn merge_dir(
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
        let dir = match self.source.open_dir(rel) {
            Ok(d) => d,
            Err(e) => return self.unreadable_dir(rel, e),
        };
        let listed = match names {
            None => meta::scan_dir(dir.as_fd(), self.scan).map(|(e, _)| e),
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
        entries.retain(|e| {
            !self
                .opts
                .excluder
                .excluded(&join(rel, &e.name), e.kind == Kind::Dir)
        });
        let slave_entries: Vec<Entry> = slave_entries
            .into_iter()
            .filter(|e| {
                !self
                    .opts
                    .excluder
                    .excluded(&join(rel, &e.name), e.kind == Kind::Dir)
            })
            .collect();

        let mut changed = false;
        let mut children = Vec::new();
        let mut s_iter = slave_entries.into_iter().peekable();
        for m in entries {
            self.rep.counters.files_total.fetch_add(1, Relaxed);
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

        let meta_differs = slave_this
            .as_ref()
            .is_none_or(|s| self.meta_differs(Kind::Dir, &master.meta, &s.meta));
        if changed || meta_differs {
            if meta_differs && slave_this.is_some() {
                self.rep.item('.', rel);
                self.rep.counters.meta_updated.fetch_add(1, Relaxed);
            }
            self.mutate(&Msg::DirMeta {
                path: rel.to_vec(),
                meta: master.meta.clone(),
            })?;
        }
        Ok(children)
    }

    /// The entries of `names` (sorted) that exist in a source directory.
    fn stat_names(&self, dir: &Arc<OwnedFd>, names: &[Vec<u8>]) -> std::io::Result<Vec<Entry>> {
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
    /// replica alone (deleting there would lose data we cannot see).
    fn unreadable_dir(&self, rel: &[u8], e: PathError) -> Result<Vec<DirTask>> {
        self.rep
            .error(&format!("cannot read directory {}: {e}", show(rel)));
        Ok(Vec::new())
    }

    fn delete(&self, dir: &[u8], s: &Entry) -> Result<bool> {
        if !self.opts.delete {
            return Ok(false);
        }
        let path = join(dir, &s.name);
        self.rep.item('-', &path);
        self.rep.counters.entries_deleted.fetch_add(1, Relaxed);
        self.mutate(&Msg::Remove { path })?;
        Ok(true)
    }

    fn meta_differs(&self, kind: Kind, m: &Meta, s: &Meta) -> bool {
        (kind != Kind::Symlink && m.mode != s.mode)
            || m.mtime_sec != s.mtime_sec
            || m.mtime_nsec != s.mtime_nsec
            || (self.owners && (m.uid != s.uid || m.gid != s.gid))
            || (self.scan.xattrs && m.xattrs != s.xattrs)
    }

    /// Brings one slave entry in line with its source entry; returns whether
    /// the containing directory's entries changed.
    fn reconcile(
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
                // A type change: the old entry goes first.
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
                        self.created(path);
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
            Kind::Symlink => match s {
                Some(s) if s.target == m.target => self.update_meta(path, &m, &s)?,
                s => {
                    if s.is_some() {
                        self.rep.item('>', path);
                    } else {
                        self.created(path);
                    }
                    self.mutate(&Msg::Symlink {
                        path: path.to_vec(),
                        target: m.target,
                        meta: m.meta,
                    })?;
                    changed = true;
                }
            },
            kind => match s {
                Some(s) if s.rdev == m.rdev => self.update_meta(path, &m, &s)?,
                s => {
                    if s.is_none() {
                        self.created(path);
                    }
                    self.mutate(&Msg::Mknod {
                        path: path.to_vec(),
                        kind,
                        rdev: m.rdev,
                        meta: m.meta,
                    })?;
                    changed = true;
                }
            },
        }
        Ok(changed)
    }

    fn created(&self, path: &[u8]) {
        self.rep.item('+', path);
        self.rep.counters.entries_created.fetch_add(1, Relaxed);
    }

    fn update_meta(&self, path: &[u8], m: &Entry, s: &Entry) -> Result<()> {
        if self.meta_differs(m.kind, &m.meta, &s.meta) {
            self.rep.item('.', path);
            self.rep.counters.meta_updated.fetch_add(1, Relaxed);
            self.mutate(&Msg::SetMeta {
                path: path.to_vec(),
                kind: m.kind,
                meta: m.meta.clone(),
            })?;
        }
        Ok(())
    }

    fn regular(
        &mut self,
        path: &[u8],
        dir: &Arc<OwnedFd>,
        m: Entry,
        s: Option<Entry>,
    ) -> Result<bool> {
        let in_group = m.nlink > 1;
        if in_group && self.targeted && !self.links.contains_key(&(m.dev, m.ino)) {
            // Its other names may lie outside this round's directories.
            self.needs_full = true;
        }
        if in_group {
            if let Some(leader) = self.links.get(&(m.dev, m.ino)) {
                // A further name of a group whose leader is already placed.
                let linked = matches!((&s, leader.slave_ino), (Some(s), Some(ino)) if s.ino == ino);
                if !linked {
                    self.deferred_links
                        .push((path.to_vec(), leader.rel.clone()));
                    return Ok(true);
                }
                return Ok(false);
            }
        }
        let needs_data = match &s {
            None => true,
            Some(s) => {
                s.meta.mtime_sec != m.meta.mtime_sec
                    || s.meta.mtime_nsec != m.meta.mtime_nsec
                    || s.size != m.size
                    // The slave shares this inode with names it should not.
                    || (!in_group && s.nlink > 1)
                    || (self.opts.checksum && s.hash != self.hash_source(dir, &m))
            }
        };
        if in_group {
            self.links.insert(
                (m.dev, m.ino),
                Leader {
                    rel: path.to_vec(),
                    slave_ino: s.as_ref().filter(|_| !needs_data).map(|s| s.ino),
                },
            );
        }
        if !needs_data {
            self.update_meta(path, &m, s.as_ref().expect("present"))?;
            return Ok(false);
        }
        if s.is_some() {
            self.rep.item('>', path);
        } else {
            self.created(path);
        }
        let basis = s
            .filter(|s| !self.opts.whole_file && s.size.min(m.size) >= DELTA_MIN)
            .map(|s| s.size);
        if self.opts.dry_run {
            self.rep.counters.files_transferred.fetch_add(1, Relaxed);
            self.rep.counters.bytes_literal.fetch_add(m.size, Relaxed);
            return Ok(true);
        }
        let job = DataJob {
            rel: path.to_vec(),
            dir: dir.clone(),
            name: m.name,
            basis,
        };
        if self
            .jobs
            .as_ref()
            .expect("workers running")
            .send(job)
            .is_err()
        {
            // Workers stop only when the connection failed.
            return Err(self.conn.failure());
        }
        Ok(true)
    }

    fn hash_source(&self, dir: &Arc<OwnedFd>, m: &Entry) -> Option<[u8; 32]> {
        let opts = ScanOpts {
            checksum: true,
            xattrs: false,
            ..self.scan
        };
        meta::stat_entry(dir.as_fd(), &m.name, opts).ok()?.hash
    }

    /// Waits until the slave has judged every delta, then resends whole the
    /// files whose delta did not rebuild the right content.
    fn settle_retries(&mut self) -> Result<()> {
        for _ in 0..2 {
            let id = self.conn.next_id();
            let rx = self.conn.request(id, &Msg::Barrier { id })?;
            self.conn.wait(&rx)?;
            let retries = std::mem::take(&mut *self.conn.shared.retries.lock().unwrap());
            if retries.is_empty() {
                return Ok(());
            }
            for mut job in retries {
                self.rep.warn(&format!(
                    "{}: delta did not verify; sending whole",
                    show(&job.rel)
                ));
                job.basis = None;
                worker::run(self.conn, job, self.job_opts, self.rep)?;
            }
        }
        Ok(())
    }
}

fn handshake(conn: &Conn, opts: &SyncOptions) -> Result<Hello> {
    let rx = conn.request(
        CONTROL,
        &Msg::Hello(Hello {
            version: proto::VERSION,
            features: proto::FEATURES,
            privileged: false,
            dry_run: opts.dry_run,
            fsync: opts.fsync,
        }),
    )?;
    match conn.wait(&rx)? {
        Msg::Hello(h) if h.version == proto::VERSION => Ok(Hello {
            features: h.features & proto::FEATURES,
            ..h
        }),
        Msg::Hello(h) => Err(Error::Protocol(format!(
            "protocol version mismatch: this master speaks {}, the slave speaks {}",
            proto::VERSION,
            h.version
        ))),
        other => Err(Error::Protocol(format!("unexpected reply {other:?}"))),
    }
}
