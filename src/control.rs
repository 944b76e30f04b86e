//! The control socket (`sessions/NAME/control.sock`, docs/CONTROL.md): how
//! the CLI asks a running daemon for its live status and tells it to pause,
//! resume, checkpoint, rescan or stop. One JSON request per line, one JSON
//! reply per line. Only the daemon's own user (or root) may connect.
//!
//! The daemon's side records each request durably (pause and checkpoint
//! live in the journal) before it replies, then wakes the worker through
//! [`Shutdown::poke`]; the worker reads [`Controls`] at its next turn.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::SessionConfig;
use crate::error::Error;
use crate::exclude::Excluder;
use crate::journal::{Checkpoint, Journal};
use crate::lease::Keeper;
use crate::replicate::observe::Reporter;
use crate::session::{Daemon, Session};
use crate::shutdown::Shutdown;
use crate::status::{CrawlProgress, Report, State, Status};
use tracing::warn;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long either side waits for the other.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `status` waits for a live answer before it shows the last report.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `checkpoint now` waits for its barrier to be journaled.
const BARRIER_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Pause,
    Resume,
    /// At `time` (Unix seconds; now if absent).
    Checkpoint {
        #[serde(default)]
        time: Option<f64>,
    },
    /// Crawl the tree, or the subtree at `path` (bytes, relative to the source).
    Rescan {
        #[serde(default)]
        path: Option<Vec<u8>>,
    },
    Stop,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
}

impl Reply {
    fn ok() -> Reply {
        Reply {
            ok: true,
            error: None,
            status: None,
            checkpoint: None,
        }
    }
    fn error(msg: String) -> Reply {
        Reply {
            ok: false,
            error: Some(msg),
            ..Reply::ok()
        }
    }
}

/// What the operator asked that the worker has yet to act on, and the
/// daemon's latest status for readers.
#[derive(Default)]
pub struct Controls {
    paused: AtomicBool,
    rescans: Mutex<Vec<Vec<u8>>>,
    checkpoint: Mutex<Option<Checkpoint>>,
    /// The daemon's latest report (the board's copy).
    pub report: Report,
    /// The crawl in progress: its counters, when it started, and the
    /// count of the source made beside it.
    crawl: Mutex<Option<Crawling>>,
    /// A multi-node session's lease: live status asks it who is active.
    pub keeper: std::sync::OnceLock<Arc<Keeper>>,
}

impl Controls {
    pub fn new(paused: bool, checkpoint: Option<Checkpoint>) -> Arc<Controls> {
        let c = Controls::default();
        c.paused.store(paused, SeqCst);
        *c.checkpoint.lock().unwrap() = checkpoint;
        Arc::new(c)
    }

    /// A crawl of the whole tree starts (Some) or ends (None): its counters
    /// are live status, and a count of the source runs beside it for its
    /// totals and time left.
    pub fn crawling(&self, crawl: Option<(Arc<Reporter>, &SessionConfig)>) {
        let mut slot = self.crawl.lock().unwrap();
        if let Some(old) = slot.take() {
            old.census.stop.store(true, Relaxed);
        }
        *slot = crawl.map(|(rep, config)| Crawling {
            rep,
            since: Instant::now(),
            census: Census::start(config),
        });
    }

    fn progress(&self) -> Option<CrawlProgress> {
        let crawl = self.crawl.lock().unwrap();
        let Crawling { rep, since, census } = crawl.as_ref()?;
        let c = &rep.counters;
        let elapsed = since.elapsed().as_secs_f64().max(1e-3);
        let checked = c.files_total.load(Relaxed);
        let bytes_checked = c.total_size.load(Relaxed);
        let (entries, bytes) = (census.entries.load(Relaxed), census.bytes.load(Relaxed));
        let counted = census.done.load(SeqCst);
        // The slower of the two paces: many small files go by entries,
        // a few large ones by bytes.
        let left = |done: u64, total: u64| {
            let rate = done as f64 / elapsed;
            (rate > 0.0).then(|| total.saturating_sub(done) as f64 / rate)
        };
        let eta = match (left(checked, entries), left(bytes_checked, bytes)) {
            _ if !counted => None,
            (Some(e), Some(b)) => Some(e.max(b)),
            (e, b) => e.or(b),
        };
        Some(CrawlProgress {
            files_checked: checked,
            files_sent: c.files_transferred.load(Relaxed),
            bytes_checked,
            bytes_literal: c.bytes_literal.load(Relaxed),
            bytes_matched: c.bytes_matched.load(Relaxed),
            elapsed_seconds: elapsed,
            rate: checked as f64 / elapsed,
            source_entries: entries,
            source_bytes: bytes,
            source_counted: counted,
            eta_seconds: eta,
        })
    }

    /// The running daemon's status: its latest report, with the journal's
    /// counts as they are now and the crawl in progress.
    pub fn live_status(&self, session: &Session, journal: &Journal) -> Result<Status, Error> {
        let report = self.report.lock().unwrap().clone();
        let mut st = match report {
            Some(st) => st,
            None => Status::read(session)?,
        };
        if let Some(k) = self.keeper.get() {
            // The report may predate a lease run out a moment ago (a node
            // stopped past its lease and just woken): no Active without it.
            if st.state == State::Active && k.current().is_none() {
                st.state = State::Passive;
            }
            st.epoch = k.current().filter(|_| st.state == State::Active);
            st.nodes = k.nodes();
        }
        st.fill_from_journal(journal, true);
        st.progress = self.progress();
        Ok(st)
    }

    pub fn paused(&self) -> bool {
        self.paused.load(SeqCst)
    }

    /// Subtrees to rescan (an empty path: the whole tree), taken once.
    pub fn take_rescans(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.rescans.lock().unwrap())
    }

    pub fn checkpoint(&self) -> Option<Checkpoint> {
        *self.checkpoint.lock().unwrap()
    }

    /// Records a new checkpoint, durably first.
    pub fn set_checkpoint(&self, j: &Journal, c: Checkpoint) -> Result<(), Error> {
        let mut cur = self.checkpoint.lock().unwrap();
        j.set_checkpoint(&c)?;
        *cur = Some(c);
        Ok(())
    }

    /// Marks `expected` completed, unless a newer checkpoint replaced it
    /// meanwhile; returns the completed one.
    pub fn complete_checkpoint(
        &self,
        j: &Journal,
        expected: Checkpoint,
        at: f64,
    ) -> Result<Option<Checkpoint>, Error> {
        let mut cur = self.checkpoint.lock().unwrap();
        if *cur != Some(expected) {
            return Ok(None);
        }
        let done = Checkpoint {
            completed_at: Some(at),
            ..expected
        };
        j.set_checkpoint(&done)?;
        *cur = Some(done);
        Ok(Some(done))
    }
}

/// A crawl in progress, for live status.
struct Crawling {
    rep: Arc<Reporter>,
    since: Instant,
    census: Arc<Census>,
}

/// A count of the source made beside a crawl, for its totals. The crawl
/// itself streams (it cannot know what is ahead); the count only lists
/// directories and stats regular files, so it runs far ahead of a crawl
/// that compares and ships. It counts what the crawl counts: entries below
/// the root that are not excluded, and the size of the regular files.
#[derive(Default)]
struct Census {
    entries: AtomicU64,
    bytes: AtomicU64,
    done: AtomicBool,
    /// The crawl ended (or another started): stop counting.
    stop: AtomicBool,
}

impl Census {
    fn start(config: &SessionConfig) -> Arc<Census> {
        let census = Arc::new(Census::default());
        // An invalid pattern stopped the daemon long before a crawl.
        let Ok(excluder) = Excluder::new(&config.exclude, &[]) else {
            return census;
        };
        let (counter, root) = (census.clone(), config.source.clone());
        let spawned = std::thread::Builder::new()
            .name("census".into())
            .spawn(move || counter.count(&root, &excluder));
        if let Err(e) = spawned {
            tracing::warn!("not counting the source for the crawl's progress: {e}");
        }
        census
    }

    /// Depth first, iteratively; what cannot be read is left out (it is an
    /// estimate: the crawl reports what fails).
    fn count(&self, root: &Path, excluder: &Excluder) {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(rel) = dirs.pop() {
            let Ok(list) = std::fs::read_dir(root.join(std::ffi::OsStr::from_bytes(&rel))) else {
                continue;
            };
            for e in list.flatten() {
                if self.stop.load(Relaxed) {
                    return;
                }
                let name = e.file_name().into_vec();
                let Ok(kind) = e.file_type() else { continue };
                if crate::meta::is_temp_name(&name) {
                    continue;
                }
                let mut path = rel.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend(name);
                if excluder.excluded(&path, kind.is_dir()) {
                    continue;
                }
                self.entries.fetch_add(1, Relaxed);
                if kind.is_dir() {
                    dirs.push(path);
                } else if kind.is_file() {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    self.bytes.fetch_add(size, Relaxed);
                }
            }
        }
        // After the counts: a reader that sees `done` sees them final.
        self.done.store(true, SeqCst);
    }
}

/// The daemon's end: a thread serving the socket until the process exits.
pub struct Server {
    path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the session's socket (0600, in the session's private directory)
/// and serves it from a thread of its own.
pub fn serve(
    session: &Session,
    controls: Arc<Controls>,
    shutdown: Arc<Shutdown>,
    barriers: Option<PathBuf>,
) -> Result<Server, Error> {
    let path = session.control_path();
    // A socket left by a daemon that died; the session lock is ours.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(&path);
    }
    let shown = || path.display().to_string();
    let listener = with_short_path(&path, |p| {
        let l = UnixListener::bind(p)?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
        Ok(l)
    })
    .map_err(|e| Error::io(shown(), e))?;
    let journal = Journal::open(&session.journal_path())?;
    let handler = Handler {
        session: session.clone(),
        controls,
        shutdown,
        journal,
        barriers,
        tokens: AtomicU64::new(0),
    };
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            handler.serve_one(conn);
        }
    });
    Ok(Server { path })
}

struct Handler {
    session: Session,
    controls: Arc<Controls>,
    shutdown: Arc<Shutdown>,
    journal: Journal,
    /// The recorder's barrier directory, when the tree is watched.
    barriers: Option<PathBuf>,
    tokens: AtomicU64,
}

impl Handler {
    fn serve_one(&self, conn: UnixStream) {
        if !peer_allowed(&conn) {
            let _ = reply_to(&conn, &Reply::error("permission denied".into()));
            return;
        }
        let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
        let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
        let mut line = String::new();
        let read = BufReader::new((&conn).take(MAX_REQUEST)).read_line(&mut line);
        let reply = match read {
            Ok(_) => match serde_json::from_str::<Request>(&line) {
                Ok(req) => self
                    .handle(req)
                    .unwrap_or_else(|e| Reply::error(e.to_string())),
                Err(e) => Reply::error(format!("bad request: {e}")),
            },
            Err(e) => Reply::error(format!("reading the request: {e}")),
        };
        let _ = reply_to(&conn, &reply);
    }

    fn handle(&self, req: Request) -> Result<Reply, Error> {
        let c = &self.controls;
        let mut reply = Reply::ok();
        match req {
            Request::Status => {
                reply.status = Some(Box::new(c.live_status(&self.session, &self.journal)?));
            }
            Request::Pause | Request::Resume => {
                let pause = req == Request::Pause;
                self.journal.set_paused(pause)?;
                c.paused.store(pause, SeqCst);
            }
            Request::Checkpoint { time } => {
                let cp = match time_ns(time)? {
                    None => self.checkpoint_now()?,
                    t => self.journal.checkpoint_at(t)?,
                };
                c.set_checkpoint(&self.journal, cp)?;
                reply.checkpoint = Some(cp);
            }
            Request::Rescan { path } => c.rescans.lock().unwrap().push(path.unwrap_or_default()),
            Request::Stop => self.shutdown.stop(),
        }
        self.shutdown.poke();
        Ok(reply)
    }

    /// A checkpoint of every change made before now, including those whose
    /// events are still on their way from the kernel: a barrier file goes
    /// through the recorder's inotify queue behind them, and the checkpoint
    /// is the barrier's journal position. Without a barrier (the tree is not
    /// watched, or the recorder is behind), the journal as written now.
    fn checkpoint_now(&self) -> Result<Checkpoint, Error> {
        let now = crate::journal::now_ns();
        let fallback = || self.journal.checkpoint_at(None).map_err(Error::from);
        let Some(dir) = &self.barriers else {
            return fallback();
        };
        let n = self.tokens.fetch_add(1, SeqCst);
        let token = format!("{now}-{n}");
        let file = dir.join(&token);
        let deadline = Instant::now() + BARRIER_WAIT;
        let before = self.journal.last_seq()?;
        let mut seen = before;
        if let Err(e) = std::fs::File::create(&file) {
            warn!("checkpoint barrier {}: {e}", file.display());
            return fallback();
        }
        let found = loop {
            if let Some(seq) = self.journal.barrier_seq(token.as_bytes(), before)? {
                break Some(seq);
            }
            if !self.shutdown.wait_committed(seen, deadline) {
                break None;
            }
            seen = self.journal.last_seq()?;
        };
        let _ = std::fs::remove_file(&file);
        match found {
            Some(seq) => Ok(Checkpoint {
                time: now as f64 / 1e9,
                seq,
                completed_at: None,
            }),
            None => {
                warn!("checkpoint barrier not journaled in time: using the journal as written");
                fallback()
            }
        }
    }
}

/// A checkpoint time from the wire: Unix seconds, not in the future.
pub fn time_ns(time: Option<f64>) -> Result<Option<i64>, Error> {
    let Some(t) = time else { return Ok(None) };
    let ns = (t * 1e9) as i64;
    if !t.is_finite() || t < 0.0 || ns > crate::journal::now_ns() {
        return Err(Error::Usage(format!(
            "checkpoint time {t}: give `now` or a Unix time in the past"
        )));
    }
    Ok(Some(ns))
}

/// Calls `f` with `path`, or, when it is too long for a socket address
/// (108 bytes), with an alias through an open descriptor of its directory.
fn with_short_path<T>(
    path: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().len() < 100 {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let dir = std::fs::File::open(dir)?;
    let mut alias = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    alias.extend_from_slice(name.as_bytes());
    f(Path::new(std::ffi::OsStr::from_bytes(&alias)))
}

/// Same user as the daemon, or root.
fn peer_allowed(conn: &UnixStream) -> bool {
    match rustix::net::sockopt::socket_peercred(conn) {
        Ok(cred) => cred.uid.is_root() || cred.uid == rustix::process::geteuid(),
        Err(_) => false,
    }
}

fn reply_to(mut conn: &UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("reply serializes");
    line.push(b'\n');
    conn.write_all(&line)
}

/// The CLI's end: one request to a running daemon. Err if no daemon
/// answers (the caller falls back to the files).
pub fn request(socket: &Path, req: &Request) -> Result<Reply, Error> {
    request_within(socket, req, IO_TIMEOUT)
}

fn request_within(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, Error> {
    let shown = || format!("control socket {}", socket.display());
    let conn =
        with_short_path(socket, |p| UnixStream::connect(p)).map_err(|e| Error::io(shown(), e))?;
    conn.set_read_timeout(Some(timeout))
        .and_then(|_| conn.set_write_timeout(Some(timeout)))
        .map_err(|e| Error::io(shown(), e))?;
    let mut line = serde_json::to_vec(req).expect("request serializes");
    line.push(b'\n');
    (&conn)
        .write_all(&line)
        .map_err(|e| Error::io(shown(), e))?;
    let mut answer = String::new();
    BufReader::new((&conn).take(16 << 20))
        .read_line(&mut answer)
        .map_err(|e| Error::io(shown(), e))?;
    let reply: Reply =
        serde_json::from_str(&answer).map_err(|e| Error::io(shown(), std::io::Error::other(e)))?;
    match reply.error {
        Some(e) if !reply.ok => Err(Error::Session(e)),
        _ => Ok(reply),
    }
}

/// The CLI's side of the commands: through the socket when the daemon
/// runs, straight into the journal when none does (the daemon reads it at
/// its start), refused while one is starting or exiting.
pub fn command(session: &Session, req: &Request) -> Result<Reply, Error> {
    match session.daemon() {
        Daemon::Running(_) => request(&session.control_path(), req),
        Daemon::None => offline(session, req),
        Daemon::Starting(_) | Daemon::Exiting(_) => Err(Error::Session(format!(
            "session {:?} is starting or stopping; try again in a moment",
            session.name
        ))),
    }
}

fn offline(session: &Session, req: &Request) -> Result<Reply, Error> {
    let not_running = || Error::Session(format!("session {:?} is not running", session.name));
    let mut reply = Reply::ok();
    match req {
        Request::Status => reply.status = Some(Box::new(Status::read(session)?)),
        Request::Pause | Request::Resume => {
            Journal::open(&session.journal_path())?.set_paused(*req == Request::Pause)?
        }
        Request::Checkpoint { time } => {
            let j = Journal::open(&session.journal_path())?;
            let cp = j.checkpoint_at(time_ns(*time)?)?;
            j.set_checkpoint(&cp)?;
            reply.checkpoint = Some(cp);
        }
        Request::Rescan { .. } | Request::Stop => return Err(not_running()),
    }
    Ok(reply)
}

/// A session's status: live from its daemon, else as last reported. A
/// daemon that does not answer in [`STATUS_TIMEOUT`] (stopped, wedged) gets
/// its last report, saying so: status must not hang with it.
pub fn status(session: &Session) -> Result<Status, Error> {
    if let Daemon::Running(_) = session.daemon() {
        match request_within(&session.control_path(), &Request::Status, STATUS_TIMEOUT) {
            Ok(Reply {
                status: Some(st), ..
            }) => return Ok(*st),
            Err(Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                let mut st = Status::read(session)?;
                st.last_error = Some(format!(
                    "the daemon did not answer on its control socket within {} s \
                     (stopped or busy?); this is its last report",
                    STATUS_TIMEOUT.as_secs()
                ));
                return Ok(st);
            }
            _ => {}
        }
    }
    Status::read(session)
}
