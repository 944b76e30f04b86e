//! What `georep status` shows: the state of a session, as the daemon last
//! reported it and as the journal says now.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::SessionConfig;
use crate::error::Error;
use crate::journal::{self, Journal};
use crate::session::{write_atomic, Daemon, Session};

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
    pub pending: Pending,
    pub failures: u64,
    pub files_synced: u64,
    pub bytes_sent: u64,
    pub last_error: Option<String>,
    pub source: String,
    pub target: String,
    /// The kernel refused inotify watches: only crawls cover the tree.
    #[serde(default)]
    pub watch_limit: bool,
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
            pending: Pending::default(),
            failures: 0,
            files_synced: 0,
            bytes_sent: 0,
            last_error: None,
            source: c.source.display().to_string(),
            target: c.target.clone(),
            watch_limit: false,
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
                st.last_error = Some(format!(
                    "the daemon died without stopping (its last report: {:?}); \
                     changes since are in the journal: `georep start {}`",
                    st.state, st.session
                ));
                st.state = State::Faulty;
            }
            st.crawl = None;
        }
        if let Ok(j) = Journal::open_existing(&s.journal_path()) {
            if let Ok((entry, data, meta)) = j.pending_by_kind() {
                st.pending = Pending { entry, data, meta };
            }
            if let Ok(m) = j.marker() {
                if m.time_ns > 0 {
                    st.last_synced = Some(m.time_ns as f64 / 1e9);
                }
            }
            st.lag_seconds = match j.oldest_pending_ns() {
                Ok(Some(t)) => Some(((journal::now_ns() - t) as f64 / 1e9).max(0.0)),
                Ok(None) if st.last_synced.is_some() => Some(0.0),
                _ => None,
            };
        }
        Ok(st)
    }
}

/// Reads the status of every session (or one) for `georep status`.
pub fn statuses(home: &Path, name: Option<&str>) -> Result<Vec<Status>, Error> {
    match name {
        Some(n) => Ok(vec![Status::read(&Session::open(home, n)?)?]),
        None => Session::all(home).iter().map(Status::read).collect(),
    }
}

/// The daemon's copy of its status, published to `status.json`.
pub struct Board {
    pub status: Status,
    path: std::path::PathBuf,
}

impl Board {
    pub fn new(session: &Session, status: Status) -> Board {
        Board {
            status,
            path: session.status_path(),
        }
    }

    /// Writes the report for readers. No fsync: the journal's marker is what
    /// must survive a crash; a lost report is rewritten by the next round.
    pub fn publish(&self) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(&self.status).expect("status serializes");
        write_atomic(&self.path, &json, false)
    }
}
