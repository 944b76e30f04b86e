//! One active node per session: the lease that elects it, the epoch that
//! fences it, and the reports nodes publish about themselves.
//!
//! A [`Backend`] (a shared directory, or etcd) answers one question at a
//! time: "do I hold the lease now, under which epoch, for how long?". The
//! [`Keeper`] asks it on a thread of its own every third of the TTL and
//! keeps the answer: the epoch, and the monotonic instant until which the
//! lease is surely ours (counted from *before* the attempt that renewed it,
//! so a node paused past it believes itself passive on waking).
//!
//! A lease alone is not mutual exclusion: a process stopped past its lease
//! still holds a connection. So the epoch travels in the hello, and the
//! slave refuses (and stops) any writer with a lower one than it has seen
//! (`agent::fence`).

pub mod dir;
pub mod etcd;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::shutdown::Shutdown;

/// Grows with every acquisition of a session's lease, whichever node takes it.
pub type Epoch = u64;

/// The `lease` session key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseSpec {
    /// One node: always active, no fencing (epoch 0).
    None,
    /// A directory every node mounts.
    Dir(PathBuf),
    /// An etcd cluster's client URLs.
    Etcd(Vec<String>),
}

impl LeaseSpec {
    pub fn parse(s: &str) -> Result<LeaseSpec, String> {
        let bad =
            || format!("lease {s:?}: expected none, dir:/PATH or etcd:http://HOST:PORT[,...]");
        if s == "none" {
            return Ok(LeaseSpec::None);
        }
        if let Some(p) = s.strip_prefix("dir:") {
            let p = PathBuf::from(p);
            if !p.is_absolute() {
                return Err(format!(
                    "lease {s:?}: the directory must be an absolute path"
                ));
            }
            return Ok(LeaseSpec::Dir(p));
        }
        if let Some(urls) = s.strip_prefix("etcd:") {
            let urls: Vec<String> = urls.split(',').map(str::to_string).collect();
            for u in &urls {
                etcd::Endpoint::parse(u).map_err(|e| format!("lease {s:?}: {e}"))?;
            }
            return Ok(LeaseSpec::Etcd(urls));
        }
        Err(bad())
    }
}

/// A node name: it names files in a lease directory and keys in etcd.
pub fn valid_node(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node {n:?}: 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
        ))
    }
}

/// A lease held, as one attempt found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub epoch: Epoch,
    /// How long it stays ours, counted from the start of that attempt.
    pub valid_for: Duration,
}

/// What a node says about itself, for `georep status` on any node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    /// Active, Passive, Faulty, Stopped...
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
    /// When it was published, Unix seconds.
    pub heartbeat: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One way of electing the active node. Every call is bounded in time (a
/// fraction of the TTL): an unreachable backend is an error, not a hang.
pub trait Backend: Send {
    /// Takes the lease if it is free or its holder's has run out, renews it
    /// if this node holds it: `Some` while it is this node's.
    fn try_hold(&mut self) -> Result<Option<Held>, Error>;
    /// Gives the lease up (at stop), so another node need not wait out the TTL.
    fn release(&mut self) -> Result<(), Error>;
    /// Publishes this node's report (it expires with the node).
    fn publish(&mut self, report: &NodeReport) -> Result<(), Error>;
    /// Every node's latest report.
    fn nodes(&mut self) -> Result<Vec<NodeReport>, Error>;
}

/// The backend the spec names, for `node` in `session`.
pub fn backend(
    spec: &LeaseSpec,
    session: &str,
    node: &str,
    ttl: Duration,
) -> Result<Option<Box<dyn Backend>>, Error> {
    Ok(match spec {
        LeaseSpec::None => None,
        LeaseSpec::Dir(p) => Some(Box::new(dir::DirLease::open(p, session, node, ttl)?)),
        LeaseSpec::Etcd(urls) => Some(Box::new(etcd::EtcdLease::new(urls, session, node, ttl)?)),
    })
}

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[derive(Default)]
struct Inner {
    /// The epoch, and until when the lease is surely this node's.
    held: Option<(Epoch, Instant)>,
    /// The slave saw a newer epoch than this one: whatever the backend
    /// says, this node is not the writer under it.
    fenced: Option<Epoch>,
    report: NodeReport,
    nodes: Vec<NodeReport>,
    last_error: Option<String>,
    stop: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    cv: Condvar,
}

/// Keeps a lease on a thread of its own and tells the daemon its role.
pub struct Keeper {
    node: String,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    ttl: Duration,
}

impl Keeper {
    /// Starts asking `backend` every third of `ttl`; `wake` is poked
    /// whenever the role changes, so the daemon waits on it, not in a loop.
    pub fn start(
        mut backend: Box<dyn Backend>,
        ttl: Duration,
        report: NodeReport,
        wake: Arc<Shutdown>,
    ) -> Keeper {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                report,
                ..Inner::default()
            }),
            cv: Condvar::new(),
        });
        let s = shared.clone();
        let every = ttl / 3;
        let thread = std::thread::spawn(move || loop {
            let started = Instant::now();
            let fenced = s.inner.lock().unwrap().fenced;
            let attempt = backend.try_hold();
            let mut g = s.inner.lock().unwrap();
            let was = g.held.map(|h| h.0);
            match attempt {
                Ok(Some(h)) if fenced.is_some_and(|f| h.epoch <= f) => {
                    // Still named holder, but a newer writer exists: step down.
                    g.held = None;
                    drop(g);
                    let _ = backend.release();
                    g = s.inner.lock().unwrap();
                }
                Ok(Some(h)) => {
                    g.held = Some((h.epoch, started + h.valid_for));
                    g.last_error = None;
                }
                Ok(None) => {
                    g.held = None;
                    g.last_error = None;
                }
                // Unreachable: what was held stays held until it runs out.
                Err(e) => g.last_error = Some(e.to_string()),
            }
            if g.held.map(|h| h.0) != was {
                wake.poke();
                s.cv.notify_all();
            }
            let mut report = g.report.clone();
            report.heartbeat = unix_now();
            drop(g);
            let published = backend.publish(&report).and_then(|_| backend.nodes());
            let mut g = s.inner.lock().unwrap();
            if let Ok(nodes) = published {
                g.nodes = nodes;
            }
            let next = started + every;
            loop {
                if g.stop {
                    // The last word (Stopped), then the lease for the next node.
                    let mut last = g.report.clone();
                    drop(g);
                    last.heartbeat = unix_now();
                    let _ = backend.publish(&last);
                    let _ = backend.release();
                    return;
                }
                let now = Instant::now();
                // Run out: say so at once, not at the next attempt.
                if g.held.is_some_and(|h| now >= h.1) {
                    g.held = None;
                    wake.poke();
                    s.cv.notify_all();
                }
                if now >= next {
                    break;
                }
                let until = g.held.map_or(next, |h| h.1.min(next));
                g = s.cv.wait_timeout(g, until - now).unwrap().0;
            }
        });
        let node = shared.inner.lock().unwrap().report.node.clone();
        Keeper {
            node,
            shared,
            thread: Some(thread),
            ttl,
        }
    }

    /// The epoch, while the lease is surely this node's.
    pub fn current(&self) -> Option<Epoch> {
        let g = self.shared.inner.lock().unwrap();
        match g.held {
            Some((epoch, until))
                if Instant::now() < until && g.fenced.is_none_or(|f| epoch > f) =>
            {
                Some(epoch)
            }
            _ => None,
        }
    }

    /// The slave refused `epoch`: a newer writer exists. Passive until the
    /// backend grants a newer epoch to this node.
    pub fn fenced(&self, epoch: Epoch) {
        let mut g = self.shared.inner.lock().unwrap();
        g.fenced = Some(g.fenced.map_or(epoch, |f| f.max(epoch)));
        g.held = None;
        self.shared.cv.notify_all();
    }

    /// What this node publishes next.
    pub fn set_report(&self, report: NodeReport) {
        self.shared.inner.lock().unwrap().report = report;
    }

    /// Every node's latest report, as last read; this node's as it is now.
    pub fn nodes(&self) -> Vec<NodeReport> {
        let g = self.shared.inner.lock().unwrap();
        let mut me = g.report.clone();
        me.heartbeat = unix_now();
        let mut out: Vec<NodeReport> = g
            .nodes
            .iter()
            .filter(|n| n.node != me.node)
            .cloned()
            .collect();
        out.push(me);
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    /// Why the backend could not be asked, the last time it could not.
    pub fn last_error(&self) -> Option<String> {
        self.shared.inner.lock().unwrap().last_error.clone()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

impl Drop for Keeper {
    /// Releases the lease on the way out: a passive node takes over at once.
    fn drop(&mut self) {
        self.shared.inner.lock().unwrap().stop = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
