//! What `georep status` shows: the state of a session, as the daemon last
//! reported it and as the journal says now.

use serde::{Deserialize, Serialize};

use std::sync::{Arc, Mutex};

use crate::config::SessionConfig;
use crate::error::Error;
use crate::hooks::{Event, HookEnv, Hooks};
use crate::journal::{self, Failure, Journal};
use crate::lease::{Epoch, Keeper, NodeReport};
use crate::session::{write_atomic, Daemon, Session};

/// Failed entries listed by `status NAME --json` (all are counted).
const LISTED_FAILURES: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Created,
    Initializing,
    Active,
    Passive,
    Faulty,
    Paused,
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CrawlStatus {
    Full,
    #[serde(rename = "Catch-up")]
    CatchUp,
    Changelog,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Pending {
    pub entry: u64,
    pub data: u64,
    pub meta: u64,
}

/// How far the crawl in progress has come (live status only).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CrawlProgress {
    /// Entries (files, directories, links...) compared with the slave so far.
    pub files_checked: u64,
    /// Files whose content was sent.
    pub files_sent: u64,
    /// Size of the regular files compared so far.
    #[serde(default)]
    pub bytes_checked: u64,
    /// Content bytes sent (literal) and found on the slave already (matched).
    pub bytes_literal: u64,
    pub bytes_matched: u64,
    pub elapsed_seconds: f64,
    /// Entries checked per second.
    pub rate: f64,
    /// What a count of the source, made beside the crawl, has found so far:
    /// entries (excluded ones left out) and the size of its regular files.
    /// An estimate of the crawl's total: the tree may change meanwhile.
    #[serde(default)]
    pub source_entries: u64,
    #[serde(default)]
    pub source_bytes: u64,
    /// The count is complete (until then the totals are a lower bound).
    #[serde(default)]
    pub source_counted: bool,
    /// Seconds left at the pace so far (the slower of entries and bytes),
    /// once the count is complete; None before.
    #[serde(default)]
    pub eta_seconds: Option<f64>,
}

/// What `georep status --json` prints for one session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub session: String,
    pub state: State,
    pub crawl: Option<CrawlStatus>,
    pub pid: Option<i32>,
    /// Unix seconds of the newest change the slave has durably applied.
    pub last_synced: Option<f64>,
    pub lag_seconds: Option<f64>,
    /// Changes the journal holds that the slave lacks; None (null) when
    /// unknown: no daemon runs and the journal holds none, but changes
    /// made while no daemon ran are in no journal (the next start's crawl
    /// finds them).
    pub pending: Option<Pending>,
    /// Entries that failed to replicate and are still owed (parked ones
    /// included), as gluster counts FAILURES.
    pub failures: u64,
    /// Of those, the ones parked: retried by crawls and rescans only.
    #[serde(default)]
    pub parked: u64,
    /// The oldest failed entries, with their last error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_entries: Vec<Failure>,
    /// Times the daemon went Faulty and retried.
    #[serde(default)]
    pub faults: u64,
    /// Entry failures and faults since the daemon started (a counter).
    #[serde(default)]
    pub failure_events: u64,
    /// Paused by the operator: recording, not shipping.
    #[serde(default)]
    pub paused: bool,
    /// Unix seconds the checkpoint stands for.
    #[serde(default)]
    pub checkpoint_time: Option<f64>,
    #[serde(default)]
    pub checkpoint_completed: bool,
    #[serde(default)]
    pub checkpoint_completion_time: Option<f64>,
    pub files_synced: u64,
    /// Changes shipped per second over the last minute.
    #[serde(default)]
    pub rate: Option<f64>,
    pub bytes_sent: u64,
    pub last_error: Option<String>,
    /// A daemon that died without stopping (SIGKILL, a crash): the Unix
    /// time it was last seen alive (`last_error` names the evidence); it
    /// died after that. Set by the reader, never by the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_alive: Option<f64>,
    pub source: String,
    pub target: String,
    /// The crawl in progress, when the daemon is asked live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<CrawlProgress>,
    /// The kernel refused inotify watches: only crawls cover the tree.
    #[serde(default)]
    pub watch_limit: bool,
    /// A multi-node session: this node's name, the epoch it ships under
    /// (while Active), and every node as they last published themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeReport>,
    /// The lease's TTL (seconds), to judge the nodes' heartbeats by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<f64>,
}

impl Status {
    pub fn new(s: &Session, c: &SessionConfig) -> Status {
        Status {
            session: s.name.clone(),
            state: State::Created,
            crawl: None,
            pid: None,
            last_synced: None,
            lag_seconds: None,
            pending: None,
            failures: 0,
            parked: 0,
            failed_entries: Vec::new(),
            faults: 0,
            failure_events: 0,
            paused: false,
            checkpoint_time: None,
            checkpoint_completed: false,
            checkpoint_completion_time: None,
            files_synced: 0,
            rate: None,
            bytes_sent: 0,
            last_error: None,
            last_seen_alive: None,
            source: c.source.display().to_string(),
            target: c.target.clone(),
            watch_limit: false,
            progress: None,
            node: None,
            epoch: None,
            nodes: Vec::new(),
            lease_ttl: None,
        }
    }

    /// The status as a reader sees it: the daemon's last report, corrected
    /// by whether it still runs, with pending counts from the journal.
    pub fn read(s: &Session) -> Result<Status, Error> {
        let c = s.config()?;
        let mut st: Status = std::fs::read(s.status_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| Status::new(s, &c));
        // `config NAME source|target` on a stopped session changes what the
        // next run replicates; the last report still names the old ones.
        st.source = c.source.display().to_string();
        st.target = c.target.clone();
        let daemon = s.daemon();
        st.pid = match daemon {
            Daemon::Running(pid) => Some(pid),
            _ => None,
        };
        if let Daemon::Starting(pid) = daemon {
            // Setting up: its first report may not be written yet.
            st.pid = pid;
            st.state = State::Initializing;
        } else if st.pid.is_none() {
            // A daemon that stops cleanly says so last; any other last word
            // without a daemon behind it means it died (SIGKILL, a crash).
            if !matches!(st.state, State::Created | State::Stopped) {
                let (seen, evidence) = last_seen_alive(s);
                st.last_seen_alive = seen;
                st.last_error = Some(format!(
                    "the daemon died without stopping; it was last seen alive by \
                     {evidence} (its last report said {:?}); `georep start {}` \
                     resumes, its crawl finds what changed since",
                    st.state, st.session
                ));
                st.state = State::Faulty;
            }
            st.crawl = None;
        }
        if let Ok(j) = Journal::open_existing(&s.journal_path()) {
            st.fill_from_journal(&j, st.pid.is_some());
        }
        Ok(st)
    }

    /// Pending counts, lag, failures, pause and checkpoint as the journal
    /// has them now. Without a running daemon the journal records nothing,
    /// so an empty backlog says nothing about the lag or the pending
    /// changes: unknown.
    pub fn fill_from_journal(&mut self, j: &Journal, running: bool) {
        // A passive node's journal is what it would replay on a takeover,
        // not a backlog: the active node's is in `nodes`.
        match j.pending_by_kind() {
            _ if self.state == State::Passive => self.pending = Some(Pending::default()),
            Ok((0, 0, 0)) if !running => self.pending = None,
            Ok((entry, data, meta)) => self.pending = Some(Pending { entry, data, meta }),
            Err(_) => {}
        }
        if let Ok(m) = j.marker() {
            if m.time_ns > 0 {
                self.last_synced = Some(m.time_ns as f64 / 1e9);
            }
        }
        self.lag_seconds = match j.oldest_pending_ns() {
            _ if self.state == State::Passive => None,
            Ok(Some(t)) => Some(((journal::now_ns() - t) as f64 / 1e9).max(0.0)),
            // Catching up after downtime: what changed since the last sync
            // is in no journal, so the lag is counted from that sync.
            Ok(None) if running && self.crawl == Some(CrawlStatus::CatchUp) => self
                .last_synced
                .map(|t| (journal::now_ns() as f64 / 1e9 - t).max(0.0)),
            Ok(None) if running && self.last_synced.is_some() => Some(0.0),
            _ => None,
        };
        if let Ok(c) = j.failure_count() {
            self.failures = c.failed;
            self.parked = c.parked;
        }
        self.failed_entries = j.failures(LISTED_FAILURES).unwrap_or_default();
        self.paused = j.paused().unwrap_or(false);
        if self.paused && running && self.state == State::Active {
            self.state = State::Paused;
        }
        let cp = j.checkpoint().ok().flatten();
        self.checkpoint_time = cp.map(|c| c.time);
        self.checkpoint_completion_time = cp.and_then(|c| c.completed_at);
        self.checkpoint_completed = self.checkpoint_completion_time.is_some();
    }
}

/// When a daemon that is gone was last seen alive, and by what: the newest
/// of its heartbeat (the pid file's time, touched every
/// [`HEARTBEAT`](crate::session::HEARTBEAT) while it runs) and its last
/// status report.
fn last_seen_alive(s: &Session) -> (Option<f64>, String) {
    let mtime = |p: std::path::PathBuf| {
        let t = std::fs::metadata(p).and_then(|m| m.modified()).ok()?;
        Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64())
    };
    let beat = mtime(s.pid_path());
    let report = mtime(s.status_path());
    match (beat, report) {
        (Some(b), r) if r.is_none_or(|r| b >= r) => (
            Some(b),
            format!(
                "its heartbeat in daemon.pid (touched every {} s)",
                crate::session::HEARTBEAT.as_secs()
            ),
        ),
        (_, Some(r)) => (Some(r), "its last status report, status.json".into()),
        _ => (None, "nothing: no pid file or report is left".into()),
    }
}

/// Where the daemon's latest report is kept for its live readers (the
/// control socket, the metrics endpoint).
pub type Report = Arc<Mutex<Option<Status>>>;

/// The daemon's copy of its status, published to `status.json` and to the
/// control socket; the one place that turns state changes into events.
pub struct Board {
    pub status: Status,
    path: std::path::PathBuf,
    report: Report,
    hooks: Hooks,
    /// The state the last events were fired for.
    announced: State,
    /// A multi-node session's lease keeper: this node's report goes out
    /// through it, every node's comes back.
    pub keeper: Option<Arc<Keeper>>,
}

impl Board {
    pub fn new(session: &Session, status: Status, report: Report, hooks: Hooks) -> Board {
        Board {
            announced: status.state,
            status,
            path: session.status_path(),
            report,
            hooks,
            keeper: None,
        }
    }

    /// Writes the report for readers. No fsync: the journal's marker is what
    /// must survive a crash; a lost report is rewritten by the next round.
    pub fn publish(&mut self) -> Result<(), Error> {
        if let Some(k) = &self.keeper {
            let st = &mut self.status;
            let node = k.node().to_string();
            st.epoch = k.current().filter(|_| st.state == State::Active);
            k.set_report(NodeReport {
                node: node.clone(),
                state: format!("{:?}", st.state),
                epoch: st.epoch,
                heartbeat: 0.0,
                lag_seconds: st.lag_seconds,
                last_error: st.last_error.clone(),
            });
            st.node = Some(node);
            st.nodes = k.nodes();
            st.lease_ttl = Some(k.ttl().as_secs_f64());
        }
        let (from, to) = (self.announced, self.status.state);
        if from != to {
            self.announced = to;
            // Stopping (or a fault) while paused resumes nothing.
            if from == State::Paused && !matches!(to, State::Stopped | State::Faulty) {
                self.fire(Event::Resumed);
            }
            match (from, to) {
                (State::Faulty, State::Active) => self.fire(Event::Recovered),
                (_, State::Active) => self.fire(Event::Active),
                (_, State::Passive) => self.fire(Event::Passive),
                (_, State::Faulty) => self.fire(Event::Faulty),
                (_, State::Paused) => self.fire(Event::Paused),
                (_, State::Stopped) => self.fire(Event::Stopped),
                _ => {}
            }
        }
        *self.report.lock().unwrap() = Some(self.status.clone());
        let json = serde_json::to_vec_pretty(&self.status).expect("status serializes");
        write_atomic(&self.path, &json, false)
    }

    /// Runs the hooks for `event` with the status as it is now.
    pub fn fire(&self, event: Event) {
        let st = &self.status;
        self.hooks.fire(
            event,
            HookEnv {
                session: st.session.clone(),
                state: format!("{:?}", st.state),
                source: st.source.clone(),
                target: st.target.clone(),
                last_error: st.last_error.clone(),
                checkpoint_time: st.checkpoint_time,
                checkpoint_completed: st.checkpoint_time.map(|_| st.checkpoint_completed),
                checkpoint_completion_time: st.checkpoint_completion_time,
                node: st.node.clone(),
                epoch: st.epoch,
            },
        );
    }
}
