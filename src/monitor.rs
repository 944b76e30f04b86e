//! The session's process: the daemon that holds the session's lock, runs
//! the worker on one connection after another, and decides from each error
//! whether retrying can help (backoff) or the operator must act (Faulty,
//! waiting); and the CLI's side of starting and stopping that process.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SessionConfig;
use crate::control::{self, Controls};
use crate::error::{state, Error, Exit};
use crate::hooks::{Event, Hooks};
use crate::journal::{Journal, Writer};
use crate::lease::{Keeper, NodeReport};
use crate::metrics;
use crate::notify;
use crate::proto::Fence;
use crate::replicate::Replicator;
use crate::session::{process_is_gone, Daemon, Session};
use crate::shutdown::Shutdown;
use crate::status::{Board, CrawlStatus, State, Status};
use crate::watch::Recorder;
use crate::worker::Worker;
use tracing::{error, info, warn};

/// Longest wait between two attempts of a failing session.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// From this backoff on, a batch that keeps failing gets a whole crawl.
const ESCALATE_AT: Duration = Duration::from_secs(8);

/// Runs the daemon in this process until SIGTERM/SIGINT.
pub fn run_foreground(s: &Session) -> Exit {
    let level = s
        .config()
        .map(|c| c.log_level)
        .unwrap_or_else(|_| "info".into());
    if let Err(e) = crate::logging::init_daemon(&level) {
        // Not eprintln!: SIGPIPE is ignored here, a closed stderr would panic.
        let _ =
            std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("georep daemon: {e}\n"));
        return e.exit();
    }
    match Monitor::start(s).and_then(|mut m| m.run()) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            error!("georep daemon: {e}");
            e.exit()
        }
    }
}

struct Monitor {
    session: Session,
    shutdown: Arc<Shutdown>,
    controls: Arc<Controls>,
    worker: Worker,
    /// Serve while the daemon runs; dropped (socket removed) at exit.
    _control: Option<control::Server>,
    _metrics: Option<metrics::MetricsServer>,
    /// Held for the daemon's lifetime: the lock says "running".
    _pid_file: std::fs::File,
}

/// Takes the session's lock. `status`, `start` (waiting for this daemon)
/// and the other commands probe it with a shared lock held for a few
/// microseconds, so a refusal is tried again for a moment: only a lock still
/// held after [`LOCK_PATIENCE`] belongs to a running daemon.
fn lock_pid_file(f: &std::fs::File) -> rustix::io::Result<()> {
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        match rustix::fs::flock(f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            r => return r,
        }
    }
}

/// How long a probe's shared lock may keep the daemon from its own.
const LOCK_PATIENCE: Duration = Duration::from_millis(200);

/// Longest a hook may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

impl Monitor {
    fn start(s: &Session) -> Result<Monitor, Error> {
        let config = s.config()?;
        config.validate()?;
        let pid_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(s.pid_path())
            .map_err(state(s.pid_path().display().to_string()))?;
        lock_pid_file(&pid_file).map_err(|_| Error::Running(s.name.clone()))?;
        // "PID starting" until set up: `start` waits for "PID" alone.
        let pid = std::process::id();
        write_pid(&pid_file, &format!("{pid} starting\n"))
            .map_err(state(s.pid_path().display().to_string()))?;
        let shutdown = Shutdown::new();
        shutdown
            .on_signals()
            .map_err(|e| Error::io("installing signal handlers", e))?;
        let journal = Journal::open(&s.journal_path())?;
        let writer = Writer::start(
            Journal::open(&s.journal_path())?,
            4096,
            Duration::from_millis(2),
            shutdown.clone(),
        );
        // What an earlier run left (an old source and target, a watch limit
        // hit once) is not this run's news; counters carry on.
        let mut status = Status::new(s, &config);
        if let Ok(old) = Status::read(s) {
            status.last_synced = old.last_synced;
            status.files_synced = old.files_synced;
            status.bytes_sent = old.bytes_sent;
            status.faults = old.faults;
        }
        status.pid = Some(pid as i32);
        let controls = Controls::new(journal.paused()?, journal.checkpoint()?);
        // Recording starts before the first crawl, so nothing written during it is lost.
        let mut barriers = None;
        let recorder = match Recorder::start(&config.source, writer.sender()) {
            Ok(mut r) => {
                // `checkpoint now` marks the journal through the recorder.
                let dir = s.barrier_dir();
                let _ = std::fs::remove_dir_all(&dir);
                match std::fs::create_dir(&dir)
                    .map_err(|e| e.to_string())
                    .and_then(|_| r.watch_barriers(&dir).map_err(|e| e.to_string()))
                {
                    Ok(()) => barriers = Some(dir),
                    Err(e) => warn!("checkpoints stand for the journal as written: {e}"),
                }
                Some(r)
            }
            Err(e) => {
                warn!("not watching: {e}; relying on full crawls");
                status.watch_limit = true;
                status.last_error = Some(e.to_string());
                None
            }
        };
        info!(
            "session {} started (pid {pid}): {} -> {}",
            s.name,
            config.source.display(),
            config.target
        );
        // Reported before the pid says "ready": a reader never sees the last
        // daemon's report (Active, nothing pending) as this one's.
        let first = status.last_synced.is_none();
        status.state = State::Initializing;
        status.crawl = Some(if first {
            CrawlStatus::Full
        } else {
            CrawlStatus::CatchUp
        });
        let hooks = Hooks::new(
            config.hooks_dir.clone(),
            HOOK_TIMEOUT,
            Arc::new(|msg: &str| warn!(target: "georep::hooks", "{msg}")),
        );
        let keeper = lease_keeper(s, &config, &shutdown)?;
        if let Some(k) = &keeper {
            let _ = controls.keeper.set(k.clone());
        }
        let mut board = Board::new(s, status, controls.report.clone(), hooks);
        board.keeper = keeper.clone();
        board.publish()?;
        let control = match control::serve(s, controls.clone(), shutdown.clone(), barriers) {
            Ok(c) => Some(c),
            Err(e) => {
                info!("no control socket ({e}): pause, checkpoint and rescan need it");
                None
            }
        };
        let metrics = match &config.metrics_listen {
            Some(addr) => Some(serve_metrics(s, addr, controls.clone())?),
            None => None,
        };
        write_pid(&pid_file, &format!("{pid}\n"))
            .map_err(state(s.pid_path().display().to_string()))?;
        crate::session::heartbeat(&pid_file)?;
        board.fire(Event::Started);
        notify::ready();
        if let Some(every) = notify::watchdog_interval() {
            // Proves the process is scheduled and not wedged as a whole; a
            // round stuck on the network is the transport's timeouts' job
            // (a huge file or tree legitimately takes longer than any
            // watchdog period).
            std::thread::spawn(move || loop {
                notify::watchdog();
                std::thread::sleep(every);
            });
        }
        let mut worker = Worker::new(
            config,
            board,
            shutdown.clone(),
            journal,
            writer,
            recorder,
            controls.clone(),
        );
        worker.keeper = keeper;
        Ok(Monitor {
            session: s.clone(),
            shutdown,
            controls,
            worker,
            _control: control,
            _metrics: metrics,
            _pid_file: pid_file,
        })
    }

    fn run(&mut self) -> Result<(), Error> {
        // Sessions created before the source was recorded trust it now.
        let identity = match self.session.source_identity() {
            Some(id) => Some(id),
            None => self.session.record_source(&self.worker.config).ok(),
        };
        let mut backoff = Duration::from_secs(1);
        while !self.shutdown.stopping() {
            if self.controls.paused() {
                self.pause();
                continue;
            }
            let Some(fence) = self.fence() else {
                self.passive();
                continue;
            };
            self.worker.epoch = fence.epoch;
            let rep = Worker::reporter();
            let rounds_before = self.worker.rounds_ok;
            let result = self
                .worker
                .config
                .options()
                .map(|mut o| {
                    o.source_identity = identity;
                    o.fence = fence;
                    o
                })
                .and_then(|opts| Replicator::connect(&opts, rep.clone()))
                .and_then(|mut r| {
                    let outcome = self.worker.serve(&mut r, &rep);
                    r.close(outcome)
                });
            let e = match result {
                // Stopping or paused: the loop decides.
                Ok(()) => continue,
                // A stop (Ctrl-C included) may break the link on its way.
                Err(_) if self.shutdown.stopping() => break,
                Err(e) => e,
            };
            if self.worker.rounds_ok > rounds_before {
                // Rounds went through since the last fault: start over.
                backoff = Duration::from_secs(1);
            }
            if self.worker.keeper.is_some() && self.fence().is_none() {
                // The lease ran out while shipping (or the slave stopped
                // this node's link for a newer epoch): not a fault.
                warn!("lost the lease while shipping: {e}");
                continue;
            }
            if e.is_fenced() {
                // Another node took over while this one was away (paused,
                // stopped past its lease): it is the writer now.
                warn!("fenced by the slave: {e}");
                if let Some(k) = &self.worker.keeper {
                    k.fenced(self.worker.epoch);
                }
                continue;
            }
            // "N entries failed" alone does not say what to fix.
            let why = match (&e, rep.last_error()) {
                (Error::Partial { .. }, Some(last)) => format!("{e}; last: {last}"),
                _ => e.to_string(),
            };
            if !e.is_temporary() {
                let force = matches!(e, Error::DeleteLimit(_));
                self.halt(&why, force);
                break;
            }
            self.fault(&format!("{why}; retrying in {backoff:?}"));
            if self.shutdown.sleep(backoff) {
                break;
            }
            // A round that keeps failing may be one a targeted merge
            // cannot apply: a crawl, paced between live changes, takes it
            // over, and the changes after it flow meanwhile.
            if backoff >= ESCALATE_AT {
                self.worker.skip_failing_batch();
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        notify::stopping();
        let st = &mut self.worker.board.status;
        st.state = State::Stopped;
        st.crawl = None;
        st.pid = None;
        self.worker.publish();
        self.worker.finish();
        info!("stopped");
        Ok(())
    }

    /// What the next connection announces: this node's session and epoch,
    /// while it holds the lease; None while another node does. A session
    /// without a lease is never fenced.
    fn fence(&self) -> Option<Fence> {
        let Some(k) = &self.worker.keeper else {
            return Some(Fence::default());
        };
        Some(Fence {
            session: self.session.name.as_bytes().to_vec(),
            node: self.worker.config.node_name().into_bytes(),
            epoch: k.current()?,
            ..Fence::default()
        })
    }

    /// Another node holds the lease (or none can be had): the recorder
    /// journals on, nothing ships, until this node gets the lease.
    fn passive(&mut self) {
        let st = &mut self.worker.board.status;
        if st.state != State::Passive {
            info!("passive: another node ships (waiting for the lease)");
        }
        st.state = State::Passive;
        st.crawl = None;
        st.last_error = self.worker.keeper.as_ref().and_then(|k| k.last_error());
        self.worker.publish();
        while !self.shutdown.stopping() && !self.controls.paused() && self.fence().is_none() {
            self.worker.trim_passive();
            // The keeper pokes on a change of role; the deadline refreshes status.
            self.shutdown
                .wait(None, Instant::now() + Duration::from_secs(1));
            let err = self.worker.keeper.as_ref().and_then(|k| k.last_error());
            self.worker.board.status.last_error = err;
            self.worker.publish();
        }
        if !self.shutdown.stopping() {
            self.worker.board.status.state = State::Initializing;
            self.worker.publish();
        }
    }

    /// Paused: the recorder journals on, nothing ships, no connection is
    /// held; a checkpoint the slave already has still completes.
    fn pause(&mut self) {
        info!("paused: recording changes, shipping nothing");
        let st = &mut self.worker.board.status;
        st.state = State::Paused;
        st.crawl = None;
        self.worker.publish();
        while self.controls.paused() && !self.shutdown.stopping() {
            self.worker.check_checkpoint();
            self.shutdown
                .wait(None, Instant::now() + Duration::from_secs(60));
        }
        if !self.shutdown.stopping() {
            info!("resumed");
            self.worker.board.status.state = State::Initializing;
            self.worker.publish();
        }
    }

    fn fault(&mut self, why: &str) {
        warn!("faulty: {why}");
        let st = &mut self.worker.board.status;
        st.state = State::Faulty;
        st.faults += 1;
        st.failure_events += 1;
        st.last_error = Some(why.to_string());
        self.worker.publish();
    }

    /// A failure that retrying cannot mend (a changed host key, a protocol
    /// version mismatch, a source that is not a directory): Faulty with the
    /// cause, recording on, shipping nothing until the operator acts.
    /// A deletion halt is let through once by `start --force`.
    fn halt(&mut self, why: &str, force: bool) {
        let name = &self.session.name;
        let then = if force {
            format!("check the source; to delete anyway: `georep stop {name} && georep start --force {name}`")
        } else {
            format!("fix the cause, then `georep stop {name}` and `georep start {name}`")
        };
        self.fault(&format!("{why} (not retried: {then})"));
        while !self.shutdown.sleep(Duration::from_secs(3600)) {}
    }
}

/// A multi-node session's lease keeper (None without a lease).
fn lease_keeper(
    s: &Session,
    config: &SessionConfig,
    shutdown: &Arc<Shutdown>,
) -> Result<Option<Arc<Keeper>>, Error> {
    let node = config.node_name();
    let ttl = config.lease_ttl();
    let Some(backend) = crate::lease::backend(&config.lease_spec()?, &s.name, &node, ttl)? else {
        return Ok(None);
    };
    info!(
        "node {node}: {} decides which node ships (lease ttl {} s)",
        config.lease, config.lease_ttl
    );
    let report = NodeReport {
        node,
        state: "Initializing".into(),
        ..NodeReport::default()
    };
    Ok(Some(Arc::new(Keeper::start(
        backend,
        ttl,
        report,
        shutdown.clone(),
    ))))
}

/// Serves `/metrics` from the daemon's latest report and its journal.
fn serve_metrics(
    s: &Session,
    addr: &str,
    controls: Arc<Controls>,
) -> Result<metrics::MetricsServer, Error> {
    let journal = std::sync::Mutex::new(Journal::open(&s.journal_path())?);
    let session = s.clone();
    let snapshot = move || {
        let Ok(st) = controls.live_status(&session, &journal.lock().unwrap()) else {
            return metrics::Snapshot::default();
        };
        // A running daemon's journal always knows its backlog.
        let pending = st.pending.unwrap_or_default();
        metrics::Snapshot {
            session: st.session.clone(),
            state: format!("{:?}", st.state),
            last_synced: st.last_synced,
            lag_seconds: st.lag_seconds,
            pending_entry: pending.entry,
            pending_data: pending.data,
            pending_meta: pending.meta,
            bytes_sent: st.bytes_sent,
            files_synced: st.files_synced,
            failures: st.failure_events,
            failed_entries: st.failures,
            parked: st.parked,
            checkpoint_completed: st.checkpoint_time.map(|_| st.checkpoint_completed),
        }
    };
    metrics::serve(addr, Arc::new(snapshot))
}

/// `georep start NAME`: runs the daemon in the background and returns once
/// it holds its lock (or reports why it could not start).
pub fn start_background(home: &Path, s: &Session) -> Result<i32, Error> {
    // A killed daemon's threads hold the lock for a moment after it died:
    // wait for them rather than take it for a running daemon.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen_running = 0;
    loop {
        match s.daemon() {
            Daemon::None => break,
            // Looked at a few times: a signal sent a moment ago may not show yet.
            Daemon::Running(_) if seen_running < 5 => {
                seen_running += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Daemon::Running(_) => return Err(Error::Running(s.name.clone())),
            Daemon::Starting(_) => return Err(Error::Running(s.name.clone())),
            Daemon::Exiting(pid) if Instant::now() > deadline => {
                return Err(Error::DaemonStart(format!(
                    "the previous daemon (pid {pid}) is still exiting; try again"
                )))
            }
            Daemon::Exiting(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("locating the georep binary", e))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(s.log_path())
        .map_err(state(s.log_path().display().to_string()))?;
    let mut child = Command::new(exe)
        .arg("--home")
        .arg(home)
        .args(["start", &s.name, "--foreground"])
        // It opens the log itself, to reopen it on SIGHUP; stderr (panics,
        // a local slave's messages) goes there too.
        .env(crate::logging::LOG_FILE_ENV, s.log_path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(state("log"))?)
        .stderr(log)
        // Its own session: not killed with the shell that started it.
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io("starting the daemon", e))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = s.running_pid() {
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::DaemonStart(format!(
                "daemon exited with {status}; see {}",
                s.log_path().display()
            )));
        }
        if Instant::now() > deadline {
            // Alive, still setting up (watching a huge tree takes a while):
            // started; status says Initializing until it is ready.
            return Ok(child.id() as i32);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_pid(f: &std::fs::File, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    rustix::fs::ftruncate(f, 0)?;
    f.write_all_at(text.as_bytes(), 0)
}

/// `georep stop NAME`: SIGTERM, wait; SIGKILL if it does not go in 30 s.
pub fn stop(s: &Session) -> Result<(), Error> {
    let pid = match s.daemon() {
        Daemon::Running(pid) | Daemon::Starting(Some(pid)) | Daemon::Exiting(pid) => pid,
        Daemon::Starting(None) | Daemon::None => return Ok(()),
    };
    let pid = rustix::process::Pid::from_raw(pid).expect("positive pid");
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    // The lock goes when the daemon closes its pid file, a moment before the
    // process is gone: wait for both (a zombie counts as gone).
    let gone = || s.daemon() == Daemon::None && process_is_gone(pid.as_raw_nonzero().get());
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
