//! The session daemon: records changes, ships them, reports status.
//!
//! One process per session. The recorder writes every change into the
//! journal from the moment the daemon starts; the worker loop then runs a
//! full (first start) or catch-up (restart) round, and from then on ships the
//! journal in batches. The marker advances only after a round's durable
//! Finished, so a crash at any point replays the unacked tail, and every
//! round is idempotent. Later full crawls (periodic reconciliation, lost
//! events) are taken in slices between live batches, so changes keep flowing
//! while a large tree is compared. Failures retry with exponential backoff (state
//! Faulty meanwhile) and resume where the marker is.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Exit};
use crate::journal::{self, Change, Journal, Marker, Op, Writer};
use crate::session::{io, write_atomic, Session, SessionConfig, SessionError};
use crate::sync::report::Reporter;
use crate::sync::{self, Reach, Replicator, RoundOutcome, Scope};
use crate::watch::Recorder;

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
pub enum Crawl {
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
    pub crawl: Option<Crawl>,
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
    fn new(s: &Session, c: &SessionConfig) -> Status {
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
    pub fn read(s: &Session) -> Result<Status, SessionError> {
        let c = s.config()?;
        let mut st: Status = std::fs::read(s.status_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| Status::new(s, &c));
        st.pid = s.running_pid();
        if st.pid.is_none() && st.state != State::Created {
            st.state = State::Stopped;
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

/// `georep start NAME`: runs the daemon in the background and returns once
/// it holds its lock (or reports why it could not start).
pub fn start_background(home: &std::path::Path, s: &Session) -> Result<i32, SessionError> {
    if let Some(pid) = s.running_pid() {
        return Ok(pid);
    }
    let exe = std::env::current_exe().map_err(io("locating the georep binary"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(s.log_path())
        .map_err(io(s.log_path().display().to_string()))?;
    let mut child = Command::new(exe)
        .arg("--home")
        .arg(home)
        .args(["start", &s.name, "--foreground"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io("log"))?)
        .stderr(log)
        // Its own session: not killed with the shell that started it.
        .process_group(0)
        .spawn()
        .map_err(io("starting the daemon"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = s.running_pid() {
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(SessionError::BadConfig(format!(
                "daemon exited with {status}; see {}",
                s.log_path().display()
            )));
        }
        if Instant::now() > deadline {
            return Err(SessionError::BadConfig(format!(
                "daemon did not start; see {}",
                s.log_path().display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `georep stop NAME`: SIGTERM, wait; SIGKILL if it does not go in 30 s.
pub fn stop(s: &Session) -> Result<(), SessionError> {
    let Some(pid) = s.running_pid() else {
        return Ok(());
    };
    let pid = rustix::process::Pid::from_raw(pid).expect("positive pid");
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    // The lock goes when the daemon closes its pid file, a moment before the
    // process is gone: wait for both (a zombie counts as gone).
    let gone = || {
        s.running_pid().is_none()
            && std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).map_or(
                true,
                |st| {
                    st.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                },
            )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gone() {
        if Instant::now() > deadline {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            std::thread::sleep(Duration::from_millis(200));
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn log(msg: &str) {
    let now = journal::now_ns() as f64 / 1e9;
    let _ = writeln!(std::io::stderr().lock(), "[{now:.3}] {msg}");
}

/// Runs the daemon in this process until SIGTERM/SIGINT.
pub fn run_foreground(s: &Session) -> Exit {
    match Daemon::new(s).and_then(|mut d| d.run()) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            log(&format!("georep daemon: {e}"));
            e.exit()
        }
    }
}

struct Daemon {
    session: Session,
    config: SessionConfig,
    status: Status,
    stop: Arc<AtomicBool>,
    journal: Journal,
    /// Held for the daemon's lifetime: the lock says "running".
    _pid_file: std::fs::File,
    writer: Option<Writer>,
    recorder: Option<Recorder>,
    last_full: Instant,
    /// A paced full crawl in progress (periodic reconciliation, or one a
    /// live batch asked for), taken in slices between live batches.
    crawl: Option<sync::Crawl>,
    /// Another paced crawl is owed once the current one (if any) ends.
    crawl_owed: bool,
    /// Bytes sent over connections already closed.
    bytes_before: u64,
    /// A round succeeded since the last fault: the backoff starts over.
    recovered: bool,
}

impl Daemon {
    fn new(s: &Session) -> Result<Daemon, SessionError> {
        let config = s.config()?;
        config.validate()?;
        let pid_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(s.pid_path())
            .map_err(io(s.pid_path().display().to_string()))?;
        rustix::fs::flock(
            &pid_file,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .map_err(|_| SessionError::Running(s.name.clone()))?;
        let pid = std::process::id();
        let _ = rustix::fs::ftruncate(&pid_file, 0);
        let _ = (&pid_file).write_all(format!("{pid}\n").as_bytes());
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, stop.clone())
                .map_err(io("installing signal handlers"))?;
        }
        let journal_err = |e: journal::JournalError| SessionError::BadConfig(e.to_string());
        let journal = Journal::open(&s.journal_path()).map_err(journal_err)?;
        let writer = Writer::start(
            Journal::open(&s.journal_path()).map_err(journal_err)?,
            4096,
            Duration::from_millis(2),
        );
        let mut status = Status::read(s).unwrap_or_else(|_| Status::new(s, &config));
        status.pid = Some(pid as i32);
        status.last_error = None;
        // Recording starts before the first crawl, so nothing written during it is lost.
        let recorder = match Recorder::start(&config.source, writer.sender()) {
            Ok(r) => Some(r),
            Err(e) => {
                log(&format!("not watching: {e}; relying on full crawls"));
                status.watch_limit = true;
                status.last_error = Some(e.to_string());
                None
            }
        };
        log(&format!(
            "session {} started (pid {pid}): {} -> {}",
            s.name,
            config.source.display(),
            config.target
        ));
        Ok(Daemon {
            session: s.clone(),
            config,
            status,
            stop,
            journal,
            _pid_file: pid_file,
            writer: Some(writer),
            recorder,
            last_full: Instant::now(),
            crawl: None,
            crawl_owed: false,
            bytes_before: 0,
            recovered: false,
        })
    }

    fn publish(&mut self) {
        if let Some(r) = &self.recorder {
            self.status.watch_limit |= r.watch_limit_hit();
        }
        let json = serde_json::to_vec_pretty(&self.status).expect("status serializes");
        // After every round: no fsync. The journal's marker is what must
        // survive a crash; a lost report is rewritten by the next round.
        if let Err(e) = write_atomic(&self.session.status_path(), &json, false) {
            log(&format!("writing status: {e}"));
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// Sleeps up to `d`, waking early when asked to stop.
    fn nap(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopping() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
    }

    fn run(&mut self) -> Result<(), SessionError> {
        let first = self.status.state == State::Created || self.status.last_synced.is_none();
        self.status.state = State::Initializing;
        self.status.crawl = Some(if first { Crawl::Full } else { Crawl::CatchUp });
        self.publish();
        let mut backoff = Duration::from_secs(1);
        // A crawl is owed at start: the first full sync, or the catch-up
        // for whatever changed while no daemon ran.
        let mut full_owed = true;
        while !self.stopping() {
            let rep = Arc::new(Reporter::new(false, false, false));
            let opts = self.config.sync_options()?;
            let mut r = match Replicator::connect(&opts, rep.clone()) {
                Ok(r) => r,
                Err(e) => {
                    self.fault(&e.to_string(), &mut backoff);
                    continue;
                }
            };
            // A paced crawl kept between slices survives a new connection.
            let outcome = self.serve(&mut r, &rep, &mut full_owed);
            self.bytes_before += r.traffic().0;
            match r.close(outcome) {
                Ok(()) => break,
                Err(e) => {
                    // "N entries failed" alone does not say what to fix.
                    let why = match (&e, rep.last_error()) {
                        (Error::Partial { .. }, Some(last)) => {
                            format!("{e}; last: {last}")
                        }
                        _ => e.to_string(),
                    };
                    self.fault(&why, &mut backoff);
                    // A batch that keeps failing may be one a targeted merge
                    // cannot apply (say, an entry the slave refuses in its
                    // current shape): let a full crawl try from the top.
                    if backoff >= Duration::from_secs(8) {
                        full_owed = true;
                    }
                }
            }
        }
        self.status.state = State::Stopped;
        self.status.crawl = None;
        self.status.pid = None;
        self.publish();
        drop(self.recorder.take());
        if let Some(w) = self.writer.take() {
            let _ = w.finish();
        }
        log("stopped");
        Ok(())
    }

    fn fault(&mut self, why: &str, backoff: &mut Duration) {
        if std::mem::take(&mut self.recovered) {
            *backoff = Duration::from_secs(1);
        }
        log(&format!("faulty: {why}; retrying in {backoff:?}"));
        self.status.state = State::Faulty;
        self.status.failures += 1;
        self.status.last_error = Some(why.to_string());
        self.publish();
        self.nap(*backoff);
        *backoff = (*backoff * 2).min(Duration::from_secs(60));
    }

    /// Ships changes over one connection until stopped or it fails.
    fn serve(
        &mut self,
        r: &mut Replicator,
        rep: &Arc<Reporter>,
        full_owed: &mut bool,
    ) -> Result<(), Error> {
        loop {
            if self.stopping() {
                return Ok(());
            }
            let mut interval = self.config.full_crawl_interval;
            if self.recorder.is_none() || self.status.watch_limit {
                // Not (fully) watched: crawls are all that sees changes.
                interval = if interval == 0 { 60 } else { interval.min(60) };
            }
            if interval > 0 && self.last_full.elapsed() >= Duration::from_secs(interval) {
                self.crawl_owed = true;
            }
            if *full_owed {
                self.full_round(r, rep)?;
                *full_owed = false;
                continue;
            }
            if self.crawl.is_none() && std::mem::take(&mut self.crawl_owed) {
                log("reconciling: crawling the whole tree between live changes");
                self.crawl = Some(sync::Crawl::new());
                self.last_full = Instant::now();
            }
            if self.crawl.is_some() && !self.live_due() {
                self.crawl_slice(r, rep)?;
                continue;
            }
            let marker = self.journal.marker().map_err(jerr)?;
            let batch = self.gather(marker.seq)?;
            let Some(last) = batch.last() else {
                // Woken by the writer's next commit; the timeout keeps the
                // loop's other duties (stop, crawl schedule) going.
                let writer = self.writer.as_ref().expect("writer runs until stop");
                writer
                    .committed()
                    .wait_past(marker.seq, Duration::from_millis(50));
                continue;
            };
            let ack = Marker {
                seq: last.seq,
                time_ns: last.time_ns,
            };
            match plan(&batch) {
                Some(scope) => {
                    let outcome = counted(rep, || r.round(&scope))?;
                    self.crawl_owed |= outcome.needs_full;
                }
                // Events were lost (a queue overflow): only a crawl finds
                // what they were. Later changes keep flowing meanwhile. The
                // ack below may pass the loss before that crawl ends: safe,
                // since a crawl is owed until it does, and every start crawls.
                None => {
                    log("events were lost (inotify queue overflow): reconciling with a crawl");
                    self.crawl_owed = true;
                }
            }
            self.journal.ack(ack).map_err(jerr)?;
            let retention = Duration::from_secs(self.config.journal_retention);
            let _ = self.journal.trim(retention);
            self.synced(rep, r);
        }
    }

    /// The start-up (or recovery) crawl, whole: everything recorded before
    /// it starts is covered by it, so it acks the journal up to there.
    fn full_round(&mut self, r: &mut Replicator, rep: &Reporter) -> Result<(), Error> {
        let upto = self.journal.last_seq().map_err(jerr)?;
        if self.status.state != State::Initializing {
            self.status.crawl = Some(Crawl::Full);
        }
        self.publish();
        log("crawling the whole tree");
        let started = Instant::now();
        counted(rep, || r.round(&Scope::Full))?;
        log(&format!(
            "crawled in {:.1} s: {} files sent so far",
            started.elapsed().as_secs_f64(),
            rep.counters.files_transferred.load(Relaxed)
        ));
        self.journal
            .ack(Marker {
                seq: upto,
                time_ns: journal::now_ns(),
            })
            .map_err(jerr)?;
        self.crawl = None;
        self.crawl_owed = false;
        self.last_full = Instant::now();
        self.synced(rep, r);
        Ok(())
    }

    /// Whether a live change has waited a batch delay (a crawl yields to it).
    fn live_due(&self) -> bool {
        let oldest = self.journal.oldest_pending_ns().ok().flatten();
        let delay = self.config.batch_delay().as_nanos() as i64;
        oldest.is_some_and(|t| journal::now_ns() - t >= delay)
    }

    /// One slice of the paced crawl: it walks until live changes are due
    /// (asked every 50 ms, a journal query each time).
    fn crawl_slice(&mut self, r: &mut Replicator, rep: &Reporter) -> Result<(), Error> {
        let mut crawl = self.crawl.take().expect("a crawl in progress");
        let asked = std::cell::Cell::new(Instant::now());
        let yield_now = || {
            asked.get().elapsed() >= Duration::from_millis(50) && {
                asked.set(Instant::now());
                self.live_due()
            }
        };
        let outcome = match counted(rep, || r.crawl_slice(&mut crawl, &yield_now)) {
            Ok(o) => o,
            Err(e) => {
                // What the failed slice walked is lost with it: start over.
                self.crawl_owed = true;
                return Err(e);
            }
        };
        self.crawl_owed |= outcome.needs_full;
        if crawl.done() {
            log(&format!(
                "reconciled in {:.1} s, {} slice(s)",
                self.last_full.elapsed().as_secs_f64(),
                crawl.slices
            ));
        } else {
            self.crawl = Some(crawl);
        }
        self.synced(rep, r);
        Ok(())
    }

    /// The next batch of changes after `after` (empty if there is none): a burst
    /// gathers until it goes quiet or its first change has waited
    /// batch_delay_ms, and a batch is not cut in the middle of a rename.
    fn gather(&self, after: u64) -> Result<Vec<Change>, Error> {
        let max = self.config.batch_max_changes as usize;
        let read = || self.journal.read_after(after, max).map_err(jerr);
        let mut batch = read()?;
        if batch.is_empty() {
            return Ok(batch);
        }
        let (delay, quiet) = (self.config.batch_delay(), self.config.batch_quiet());
        let since =
            |c: &Change| Duration::from_nanos((journal::now_ns() - c.time_ns).max(0) as u64);
        while batch.len() < max && !self.stopping() {
            let (age, idle) = (since(&batch[0]), since(batch.last().expect("non-empty")));
            if age >= delay || idle >= quiet {
                break;
            }
            self.nap((delay - age).min(quiet - idle));
            batch = read()?;
        }
        // A rename's halves (From, To, Both) may straddle a journal
        // commit, and inotify reports changes inside a just-renamed
        // directory under its old name for a moment: do not cut a batch
        // right after an incomplete rename or a directory's rename.
        for _ in 0..5 {
            if batch.len() >= max || !unsettled(&batch, &self.config.source) {
                break;
            }
            self.nap(Duration::from_millis(20));
            batch = read()?;
        }
        Ok(batch)
    }

    fn synced(&mut self, rep: &Reporter, r: &Replicator) {
        self.recovered = true;
        self.status.state = State::Active;
        self.status.crawl = Some(match self.crawl {
            Some(_) => Crawl::Full,
            None => Crawl::Changelog,
        });
        self.status.last_error = None;
        self.status.files_synced = rep.counters.files_transferred.load(Relaxed);
        self.status.bytes_sent = self.bytes_before + r.traffic().0;
        self.publish();
    }
}

fn jerr(e: journal::JournalError) -> Error {
    Error::Protocol(e.to_string())
}

/// Runs a round and fails it if any entry failed: such a round is retried,
/// never acked, so the marker never skips a change.
fn counted(
    rep: &Reporter,
    round: impl FnOnce() -> Result<RoundOutcome, Error>,
) -> Result<RoundOutcome, Error> {
    let before = rep.counters.errors.load(Relaxed);
    let outcome = round()?;
    match rep.counters.errors.load(Relaxed) - before {
        0 => Ok(outcome),
        failed => Err(Error::Partial { failed }),
    }
}

/// Whether the batch's latest rename (within the last 50 ms) may still be
/// followed by events that belong with it: its other halves (Both comes
/// last) or, for a directory, changes inside it under the old name.
fn unsettled(batch: &[Change], source: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let now = journal::now_ns();
    let latest = batch
        .iter()
        .rev()
        .take_while(|c| now - c.time_ns < 50_000_000)
        .find(|c| matches!(c.op, Op::MovedFrom | Op::MovedTo | Op::Rename));
    match latest {
        None => false,
        Some(c) if c.op != Op::Rename => true,
        Some(c) => {
            let to = c.path2.as_deref().unwrap_or_default();
            let path = source.join(std::ffi::OsStr::from_bytes(to));
            std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
        }
    }
}

/// An entry as one name of its parent directory (the root: its own metadata).
fn entry_of(path: &[u8]) -> (Vec<u8>, Reach) {
    match path.iter().rposition(|&b| b == b'/') {
        _ if path.is_empty() => (Vec::new(), Reach::Names(Vec::new())),
        Some(i) => (
            path[..i].to_vec(),
            Reach::Names(vec![path[i + 1..].to_vec()]),
        ),
        None => (Vec::new(), Reach::Names(vec![path.to_vec()])),
    }
}

/// Turns a batch into a round: renames in journal order, then the entries
/// the batch named, each merged with its parent's metadata (and new or
/// moved-in directories whole). None asks for a full crawl (the recorder
/// lost events at the root).
pub fn plan(batch: &[Change]) -> Option<Scope> {
    let mut renames: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut dirs: Vec<(Vec<u8>, Reach)> = Vec::new();
    // A rename inside the tree also arrives as a From and a To: the rename
    // op moves the tree on the slave, so its destination needs no deep merge.
    let moved_to: std::collections::HashSet<&[u8]> = batch
        .iter()
        .filter(|c| c.op == Op::Rename)
        .filter_map(|c| c.path2.as_deref())
        .collect();
    for c in batch {
        // inotify reports changes inside a just-renamed directory under its
        // old name until notify has moved its watches: follow the renames.
        let path = follow(&renames, &c.path);
        match c.op {
            Op::Rescan if path.is_empty() => return None,
            Op::Rescan => dirs.push((path, Reach::Tree)),
            Op::Rename => {
                let to = c.path2.clone().unwrap_or_default();
                dirs.push(entry_of(&path));
                dirs.push(entry_of(&to));
                // Whole, if a directory: changes made inside it while its
                // watches moved may not have been seen at all.
                dirs.push((to.clone(), Reach::Tree));
                renames.push((path, to));
            }
            Op::MovedTo if moved_to.contains(c.path.as_slice()) => dirs.push(entry_of(&path)),
            // Created or moved in: if it is a directory, its contents may
            // predate its watch, so it is merged whole. (Non-directories
            // among these are dropped when the round stats them.)
            Op::Create | Op::Mkdir | Op::MovedTo => {
                dirs.push(entry_of(&path));
                dirs.push((path, Reach::Tree));
            }
            // A directory's own metadata (which inotify may report as either)
            // is merged with the directory itself.
            Op::Meta | Op::Data => {
                dirs.push(entry_of(&path));
                dirs.push((path, Reach::Names(Vec::new())));
            }
            Op::Remove | Op::MovedFrom => dirs.push(entry_of(&path)),
        }
    }
    Some(Scope::Changes { renames, dirs })
}

/// Where `path` is now, after the renames seen so far (latest first).
fn follow(renames: &[(Vec<u8>, Vec<u8>)], path: &[u8]) -> Vec<u8> {
    let mut p = path.to_vec();
    for (from, to) in renames.iter().rev() {
        if p.len() > from.len() && p.starts_with(from) && p[from.len()] == b'/' {
            p = [to.as_slice(), &p[from.len()..]].concat();
        }
    }
    p
}

/// Reads the status of every session (or one) for `georep status`.
pub fn statuses(home: &std::path::Path, name: Option<&str>) -> Result<Vec<Status>, SessionError> {
    match name {
        Some(n) => Ok(vec![Status::read(&Session::open(home, n)?)?]),
        None => Session::all(home).iter().map(Status::read).collect(),
    }
}

/// The human table, in the spirit of gluster's `status detail`.
pub fn print_table(list: &[Status]) {
    println!(
        "{:<16} {:<12} {:<10} {:>8} {:>20} {:>9} {:>17} {:>8}  SOURCE -> TARGET",
        "SESSION", "STATE", "CRAWL", "PID", "LAST SYNCED", "LAG (s)", "PENDING e/d/m", "FAILURES"
    );

    for s in list {
        let last = s
            .last_synced
            .map(|t| format!("{t:.0}"))
            .unwrap_or_else(|| "-".into());
        let lag = s
            .lag_seconds
            .map(|l| format!("{l:.2}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<16} {:<12} {:<10} {:>8} {:>20} {:>9} {:>17} {:>8}  {} -> {}",
            s.session,
            format!("{:?}", s.state),
            s.crawl
                .map(|c| format!("{c:?}"))
                .unwrap_or_else(|| "-".into()),
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            last,
            lag,
            format!("{}/{}/{}", s.pending.entry, s.pending.data, s.pending.meta),
            s.failures,
            s.source,
            s.target
        );
        if let Some(e) = &s.last_error {
            println!("{:<16} last error: {e}", "");
        }
    }
}
