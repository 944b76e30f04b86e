//! The replication engine that `georep sync` and the session worker drive.
//!
//! A [`Replicator`] holds one connection to a slave and runs rounds on it,
//! each ending with the slave's durable acknowledgement. The planner walks the source depth first, one directory at a time, and
//! merges each directory's entries with the slave's listing of the same
//! directory (requested ahead, so listings stream while we work). Differences
//! become entry ops (sent at once, in order), data jobs (run by `jobs`
//! worker threads, pipelined on the same connection) and metadata ops.
//! Directory metadata is applied by the slave at Finish, deepest first, after
//! all contents changed. Hard links are sent last, once every group leader
//! has its final content. Memory is bounded by the walk's depth, the
//! lookahead window and the hard-link table, not by the tree.

pub mod bwlimit;
mod crawl;
mod guard;
mod links;
mod merge;
mod options;
mod scope;
mod walk;

pub mod conn;
pub mod observe;
pub mod ship;

pub use crawl::Crawl;
pub use guard::PERCENT_MIN_ENTRIES;
pub use links::{HintUpdate, InodeHints};
pub use options::{DeleteLimits, Filters, Options};
pub use scope::{Reach, Scope};

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use rustix::fs::{Mode, OFlags};

use crate::confine::Root;
use crate::error::{Error, Result};
use crate::prefetch::Prefetcher;
use crate::proto::{self, Hello, Msg};
use crate::transport::{self, Transport};
use conn::{Conn, CONTROL};
use observe::{Observer, Reporter, Summary};
use walk::Planner;

/// Runs one full round on a new connection (`georep sync`); per-entry
/// failures are counted in the summary.
pub fn run(opts: &Options, observer: Box<dyn Observer>) -> Result<Summary> {
    run_with(opts, Arc::new(Reporter::new(observer)))
}

/// [`run`] with a reporter the caller keeps (to interrupt it); a round that
/// stopped at a deletion limit is summarized, with the reason in `refused`.
pub fn run_with(opts: &Options, rep: Arc<Reporter>) -> Result<Summary> {
    let mut r = Replicator::connect(opts, rep.clone())?;
    let outcome = r.round(&Scope::Full);
    let (sent, received) = r.traffic();
    let refused = match r.close(outcome) {
        Ok(_) => None,
        Err(Error::DeleteLimit(why)) => Some(why),
        Err(e) => return Err(e),
    };
    let mut summary = rep.summary(sent, received, opts.dry_run);
    summary.refused = refused;
    Ok(summary)
}

/// What a round learned besides its changes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundOutcome {
    /// A targeted round left a hard-link group unformed on the slave (new
    /// content for a group whose other names lie outside the round, or a
    /// link or group metadata the slave refused): a full round forms it.
    pub needs_full: bool,
    /// The round was asked to stop early ([`Replicator::round_until`]):
    /// what it did is durable, but it did not cover its scope.
    pub interrupted: bool,
}

/// A connection to a slave that serves any number of rounds; each round
/// ends with the slave's durable acknowledgement (Finished).
pub struct Replicator {
    opts: Options,
    conn: Conn,
    rep: Arc<Reporter>,
    source: Root,
    hello: Hello,
    /// The replica's entries, as the last full round listed them.
    estimate: Option<u64>,
    /// The operator's one-shot pass through the deletion limits, until used.
    override_deletes: bool,
    /// Entries removed and created by recent rounds, when (see
    /// guard::DELETE_WINDOW).
    removals: VecDeque<(Instant, u64, u64)>,
    /// The change time the next round's Finish carries (see [`Replicator::set_marker`]).
    marker_ns: i64,
    /// Where the slave holds inodes of the source (a session's journal).
    hints: Option<Box<dyn InodeHints>>,
    prefetch: Prefetcher,
}

impl Replicator {
    /// Connects to the target's slave through the transport it names.
    pub fn connect(opts: &Options, rep: Arc<Reporter>) -> Result<Replicator> {
        let transport = transport::for_target(&opts.target, &opts.ssh)?;
        Replicator::connect_with(opts, &*transport, rep)
    }

    /// Connects through a given transport (`opts.target` is then only a name).
    pub fn connect_with(
        opts: &Options,
        transport: &dyn Transport,
        rep: Arc<Reporter>,
    ) -> Result<Replicator> {
        let source = open_source(opts)?;
        let link = transport.connect()?;
        let conn = Conn::start(link, rep.clone(), opts.bwlimit);
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
            estimate: None,
            override_deletes: opts.limits.override_once,
            removals: VecDeque::new(),
            marker_ns: 0,
            hints: None,
            prefetch: Prefetcher::new(),
        })
    }

    /// A planner for the next round.
    fn planner(&mut self) -> Planner<'_> {
        // The source changed since the last round: cached handles may name
        // directories that moved or were replaced.
        self.source.invalidate();
        let hints = self.hints.as_deref_mut();
        let mut p = Planner::new(
            &self.opts,
            &self.conn,
            &self.rep,
            &mut self.source,
            &mut self.prefetch,
            &self.hello,
        );
        p.hints = hints;
        p.estimate = self.estimate;
        p.marker_ns = std::mem::take(&mut self.marker_ns);
        p.override_deletes = self.override_deletes;
        while self
            .removals
            .front()
            .is_some_and(|(at, _, _)| at.elapsed() > guard::DELETE_WINDOW)
        {
            self.removals.pop_front();
        }
        p.recent = self
            .removals
            .iter()
            .fold((0, 0), |(r, c), (_, dr, dc)| (r + dr, c + dc));
        p
    }

    /// One round; returns once the slave has durably applied it.
    pub fn round(&mut self, scope: &Scope) -> Result<RoundOutcome> {
        self.round_until(scope, None)
    }

    /// One round that ends early (durably, as far as it got) once `stop`
    /// says so; asked between directories.
    pub fn round_until(
        &mut self,
        scope: &Scope,
        stop: Option<&dyn Fn() -> bool>,
    ) -> Result<RoundOutcome> {
        let created = self.rep.counters.entries_created.load(Relaxed);
        let mut p = self.planner();
        p.whole = matches!(scope, Scope::Full);
        let ran = p.first_tasks(scope).and_then(|stack| p.run(stack, stop));
        let base = match p.whole {
            true => Some(p.listed.get()),
            false => p.estimate,
        };
        let (removed, used, needs_full, whole) =
            (p.removed, p.override_used, p.needs_full, p.whole);
        self.settled(base, created, removed, used, whole);
        let interrupted = !ran?.is_empty();
        Ok(RoundOutcome {
            needs_full,
            interrupted,
        })
    }

    /// After a round (even a failed one: what it did is counted): the
    /// replica's estimated size, the delete window, the override's use.
    fn settled(&mut self, base: Option<u64>, created: u64, removed: u64, used: bool, whole: bool) {
        self.override_deletes &= !used;
        let created = self.rep.counters.entries_created.load(Relaxed) - created;
        self.estimate = base.map(|b| (b + created).saturating_sub(removed));
        if whole {
            // A full round measured the replica afresh: the window restarts.
            self.removals.clear();
        } else if removed > 0 || created > 0 {
            self.removals.push_back((Instant::now(), removed, created));
        }
    }

    /// The replica's entries as far as this connection knows (the last full
    /// round's count, kept up to date), for a deletion share limit.
    pub fn replica_estimate(&self) -> Option<u64> {
        self.estimate
    }

    /// Carries an estimate over from an earlier connection to the same replica.
    pub fn set_replica_estimate(&mut self, estimate: Option<u64>) {
        self.estimate = estimate;
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
        let created = self.rep.counters.entries_created.load(Relaxed);
        let mut p = self.planner();
        let stack = if crawl.started {
            p.targeted = crawl.targeted;
            std::mem::take(&mut crawl.stack)
        } else {
            crawl.started = true;
            let stack = p.first_tasks(crawl.scope.as_ref().unwrap_or(&Scope::Full))?;
            crawl.targeted = p.targeted;
            stack
        };
        p.links = std::mem::take(&mut crawl.links);
        crawl.slices += 1;
        let ran = p.run(stack, Some(yield_now));
        let (base, removed, used, needs_full) =
            (p.estimate, p.removed, p.override_used, p.needs_full);
        crawl.links = std::mem::take(&mut p.links);
        self.settled(base, created, removed, used, false);
        crawl.stack = ran?;
        Ok(RoundOutcome {
            needs_full,
            interrupted: !crawl.stack.is_empty(),
        })
    }

    /// Lets targeted rounds ship a new hard link as a link to a name the
    /// slave already holds (links.rs), and keeps `hints` up to date.
    pub fn set_inode_hints(&mut self, hints: Box<dyn InodeHints>) {
        self.hints = Some(hints);
    }

    /// The newest change time the next round covers: a fenced session's
    /// slave stores it at that round's Finish, for a node taking over.
    pub fn set_marker(&mut self, time_ns: i64) {
        self.marker_ns = time_ns;
    }

    /// What the slave said about the session's fencing in its hello: the
    /// highest epoch it has stored, and its durable marker.
    pub fn slave_fence(&self) -> &proto::Fence {
        &self.hello.fence
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
        (Error::Disconnected(_), Err(e @ (Error::Ssh { .. } | Error::Remote { .. }))) => e,
        (Error::Disconnected(m), Err(e)) => Error::Disconnected(format!("{m}; {e}")),
        (e, _) => e,
    }
}

fn open_source(opts: &Options) -> Result<Root> {
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
    if let Some((dev, ino)) = opts.source_identity {
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::Source {
            path: opts.source.display().to_string(),
            reason: e.to_string(),
        })?;
        if (st.st_dev, st.st_ino) != (dev, ino) {
            return Err(Error::Source {
                path: opts.source.display().to_string(),
                reason: "is not the directory it was when the session was created \
                    (an unmounted volume, or a replaced directory?); nothing is \
                    deleted until `georep start --force` accepts it"
                    .into(),
            });
        }
    }
    Ok(Root::new(fd))
}

fn handshake(conn: &Conn, opts: &Options) -> Result<Hello> {
    let rx = conn.request(
        CONTROL,
        &Msg::Hello(Hello {
            version: proto::VERSION,
            features: proto::FEATURES,
            privileged: false,
            dry_run: opts.dry_run,
            fsync: opts.fsync,
            fence: opts.fence.clone(),
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
