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

mod crawl;
mod merge;
mod options;
mod scope;
mod walk;

pub mod conn;
pub mod observe;
pub mod ship;

pub use crawl::Crawl;
pub use options::Options;
pub use scope::{Reach, Scope};

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

use crate::confine::Root;
use crate::error::{Error, Result};
use crate::proto::{self, Hello, Msg};
use crate::transport::{self, Transport};
use conn::{Conn, CONTROL};
use observe::{Observer, Reporter, Summary};
use walk::Planner;

/// Runs one full round on a new connection (`georep sync`); per-entry
/// failures are counted in the summary.
pub fn run(opts: &Options, observer: Box<dyn Observer>) -> Result<Summary> {
    let rep = Arc::new(Reporter::new(observer));
    let mut r = Replicator::connect(opts, rep.clone())?;
    let outcome = r.round(&Scope::Full);
    let (sent, received) = r.traffic();
    r.close(outcome)?;
    Ok(rep.summary(sent, received, opts.dry_run))
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
    opts: Options,
    conn: Conn,
    rep: Arc<Reporter>,
    source: Root,
    hello: Hello,
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
