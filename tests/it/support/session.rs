//! The session-test harness: a session under a test's own `--home`, its
//! commands, waits for convergence, and the safety net that stops its daemon.
//! Used by the session and regression suites.

use super::fs::*;
use super::process::{georep, is_alive, kill_tree, signal_group};
use super::tree::*;
use super::TestDir;
use rustix::process::Signal;
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Once};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The georep under test, also as the slave's remote command over SSH.
pub const GEOREP: &str = env!("CARGO_BIN_EXE_georep");

/// Exit code: session error (unknown session, name taken, session running).
pub const EXIT_SESSION: i32 = 7;
/// Exit code: bad command line, bad configuration key or value.
pub const EXIT_USAGE: i32 = 2;

/// Longest a control command (create, start, stop, status, config, delete) may take.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound of a convergence wait (a 2-core CI machine runs tests in parallel).
pub const CONVERGE: Duration = Duration::from_secs(30);
/// Bound of the waits of the volume tests.
pub const CONVERGE_BIG: Duration = Duration::from_secs(240);
/// How long a daemon may be seen not running during a wait before the wait fails.
pub const NOT_RUNNING_GRACE: Duration = Duration::from_secs(10);
pub const POLL: Duration = Duration::from_millis(100);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn big() -> bool {
    std::env::var("GEOREP_IT_BIG").is_ok_and(|v| !v.is_empty() && v != "0")
}

pub fn p(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", show(path)))
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---- Running georep

/// One finished control command.
pub struct Run {
    pub command: String,
    /// None when it was killed (by a signal, or by us at the timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "unexpected exit status\n{self}");
        self
    }

    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_str(self.stdout.trim())
            .map_err(|e| format!("stdout is not one JSON value ({e})\n{self}"))
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "command: {}\nexit code: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

pub static COMMANDS: AtomicUsize = AtomicUsize::new(0);

/// Runs `cmd` (in its own process group, see `support::process::georep`) with stdout
/// and stderr in files under `scratch`, not pipes: a daemon that `start` leaves behind
/// cannot hold them open and hang the test. After `timeout` kills the group.
pub fn run_cmd(mut cmd: Command, scratch: &Path, timeout: Duration) -> Run {
    mkdir(scratch);
    let n = COMMANDS.fetch_add(1, Ordering::Relaxed);
    let (out, err) = (
        scratch.join(format!("{n}.stdout")),
        scratch.join(format!("{n}.stderr")),
    );
    let file = |p: &Path| File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", show(p)));
    cmd.stdout(file(&out)).stderr(file(&err));
    let command = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command}: {e}"));
    let status = wait_timeout(&mut child, timeout);
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    let run = Run {
        command,
        code: status.and_then(|s| s.code()),
        stdout: read(&out),
        stderr: read(&err),
    };
    assert!(status.is_some(), "timed out after {timeout:?}\n{run}");
    run
}

/// Waits for `child`; after `timeout` SIGKILLs its process group and returns None.
/// Never panics (it runs in drops).
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(ms(10)),
            _ => {
                signal_group(child.id(), Signal::KILL);
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// A georep process of this home (the daemon runs as `georep --home HOME start
/// NAME --foreground`); not any georep, since other tests run beside this one, and a
/// pid read from a stale file may have been reused.
pub fn is_daemon_of(pid: u32, home: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let home = home.as_os_str().as_encoded_bytes();
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    argv0.ends_with(b"georep") && cmdline.windows(home.len()).any(|w| w == home)
}

/// A child process (`start --foreground`) whose whole group is killed on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = kill_tree(self.0.id());
            let _ = self.0.wait();
        }
    }
}

// ---- Sessions

/// A session under a test's own home. Dropping it stops the daemon.
pub struct Session {
    pub name: String,
    pub home: PathBuf,
    /// The master tree.
    pub src: PathBuf,
    /// The slave tree as seen locally (also for SSH targets: the sshd is local).
    pub dst: PathBuf,
    /// Where control commands leave their stdout and stderr.
    pub scratch: PathBuf,
    /// Every daemon pid seen, for the safety net of drop.
    pub pids: RefCell<BTreeSet<u32>>,
}

impl Session {
    pub fn new(t: &TestDir, name: &str) -> Session {
        Session {
            name: name.to_owned(),
            home: t.path("home"),
            src: t.src.clone(),
            dst: t.dst.clone(),
            scratch: t.path("commands"),
            pids: RefCell::new(BTreeSet::new()),
        }
    }

    /// HOME/sessions/NAME.
    pub fn dir(&self) -> PathBuf {
        self.home.join("sessions").join(&self.name)
    }

    /// `georep --home HOME ARGS...`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = georep();
        cmd.arg("--home").arg(&self.home).args(args);
        // Every node of a test shares one slave and so its fencing records.
        if let Some(test_root) = self.home.parent() {
            cmd.env("GEOREP_SLAVE_STATE", test_root.join("slave-state"));
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run_cmd(self.command(args), &self.scratch, CMD_TIMEOUT)
    }

    /// Panics with the run, the status and the daemon log unless `run` exited `code`.
    #[track_caller]
    pub fn check(&self, run: &Run, code: i32) {
        assert_eq!(
            run.code,
            Some(code),
            "unexpected exit status\n{run}\n{}",
            self.diagnostics()
        );
    }

    /// `create NAME SRC TARGET [--set KV]...`.
    pub fn create(&self, target: &str, sets: &[&str]) -> Run {
        let mut args = vec!["create", &self.name, p(&self.src), target];
        for kv in sets {
            args.extend(["--set", kv]);
        }
        self.run(&args)
    }

    #[track_caller]
    pub fn create_ok(&self, target: &str, sets: &[&str]) {
        self.create(target, sets).assert_code(0);
    }

    /// `start NAME`, which must return with the daemon running.
    #[track_caller]
    pub fn start(&self) {
        let run = self.run(&["start", &self.name]);
        self.check(&run, 0);
        let pid = self.daemon_pid();
        assert!(
            pid.is_some_and(is_alive),
            "`start` returned but no daemon runs (pid {pid:?})\n{run}\n{}",
            self.diagnostics()
        );
    }

    /// `start NAME` with stdout and stderr on pipes, as `$(georep start NAME)` has
    /// them: it must return although the daemon keeps running.
    #[track_caller]
    pub fn start_piped(&self) {
        let mut cmd = self.command(&["start", &self.name]);
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn georep start");
        let pgid = child.id();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || tx.send(child.wait_with_output()));
        let limit = Duration::from_secs(30);
        let out = match rx.recv_timeout(limit) {
            Ok(out) => out.expect("wait for georep start"),
            Err(_) => {
                signal_group(pgid, Signal::KILL);
                panic!(
                    "`georep start` with its stdout and stderr on pipes did not return in \
                     {limit:?}: does the daemon keep them open (it must redirect them)?\n{}",
                    self.diagnostics()
                );
            }
        };
        assert!(
            out.status.success(),
            "{cmd:?}: {}\n--- stdout\n{}\n--- stderr\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.diagnostics()
        );
        assert!(
            self.daemon_pid().is_some_and(is_alive),
            "`start` returned but no daemon runs\n{}",
            self.diagnostics()
        );
    }

    /// `stop NAME`, which must succeed and return once the daemon has exited.
    #[track_caller]
    pub fn stop(&self) {
        let before = self.pids.borrow().clone();
        let run = self.run(&["stop", &self.name]);
        self.check(&run, 0);
        let alive: Vec<u32> = before.into_iter().filter(|&p| is_alive(p)).collect();
        assert!(
            alive.is_empty(),
            "`stop` returned while daemon {alive:?} still runs\n{run}"
        );
    }

    pub fn status_run(&self) -> Run {
        self.run(&["status", &self.name, "--json"])
    }

    /// `status NAME --json` as one object; records the daemon pid it shows.
    pub fn try_status(&self) -> Result<Value, String> {
        let run = self.status_run();
        if run.code != Some(0) {
            return Err(format!("status failed\n{run}"));
        }
        let st = run.json()?;
        if !st.is_object() {
            return Err(format!("status --json is not an object\n{run}"));
        }
        if let Some(pid) = st["pid"].as_u64() {
            self.pids.borrow_mut().insert(pid as u32);
        }
        Ok(st)
    }

    #[track_caller]
    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()))
    }

    /// The daemon's pid: from status, else from HOME/sessions/NAME/daemon.pid.
    pub fn daemon_pid(&self) -> Option<u32> {
        let from_status = self
            .try_status()
            .ok()
            .and_then(|st| st["pid"].as_u64())
            .map(|p| p as u32);
        let pid = from_status.or_else(|| {
            fs::read_to_string(self.dir().join("daemon.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        });
        if let Some(pid) = pid {
            self.pids.borrow_mut().insert(pid);
        }
        pid
    }

    /// `config NAME ARGS...`.
    pub fn config(&self, args: &[&str]) -> Run {
        let mut all = vec!["config", &self.name];
        all.extend(args);
        self.run(&all)
    }

    /// `config NAME KEY`, trimmed, quotes removed (a string may print as TOML).
    #[track_caller]
    pub fn config_get(&self, key: &str) -> String {
        let run = self.config(&[key]);
        run.assert_code(0);
        let v = run.stdout.trim();
        v.strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v)
            .to_owned()
    }

    /// The last 16 KiB of the daemon's log.
    pub fn log_tail(&self) -> String {
        let path = self.dir().join("daemon.log");
        match fs::read(&path) {
            Ok(bytes) => {
                let tail = &bytes[bytes.len().saturating_sub(16 << 10)..];
                format!(
                    "--- daemon log {} (last {} bytes)\n{}",
                    show(&path),
                    tail.len(),
                    String::from_utf8_lossy(tail)
                )
            }
            Err(e) => format!("--- daemon log {}: {e}", show(&path)),
        }
    }

    pub fn diagnostics(&self) -> String {
        let status = match panic::catch_unwind(AssertUnwindSafe(|| self.status_run())) {
            Ok(run) => run.to_string(),
            Err(_) => "(status did not run)".to_owned(),
        };
        format!("--- status\n{status}\n{}", self.log_tail())
    }

    /// Polls `status` until `pred` holds; panics after `timeout`.
    #[track_caller]
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let st = self.try_status();
            if let Ok(st) = &st {
                if pred(st) {
                    return st.clone();
                }
            }
            if start.elapsed() > timeout {
                panic!(
                    "{what}: status not reached after {timeout:?}\nlast: {}\n{}",
                    st.map(|v| v.to_string()).unwrap_or_else(|e| e),
                    self.log_tail()
                );
            }
            thread::sleep(POLL);
        }
    }

    #[track_caller]
    pub fn wait_converged(&self, what: &str) -> Value {
        self.wait_converged_ignoring(what, &[], CONVERGE)
    }

    /// Polls until the trees are equal (but for `ignored`) and status shows the daemon
    /// Active with nothing pending (Active also means that the counters of the rounds
    /// that did the work are published); returns that status. Panics after `timeout`, or when the daemon has not
    /// been running for [`NOT_RUNNING_GRACE`].
    #[track_caller]
    pub fn wait_converged_ignoring(
        &self,
        what: &str,
        ignored: &[&Path],
        timeout: Duration,
    ) -> Value {
        let start = Instant::now();
        let mut running_at = Instant::now();
        loop {
            // Trees first, status after: a round makes its files visible before
            // its Finished, and publishes its counters before its ack, so a
            // status read after the trees matched that shows nothing pending
            // includes the round that made them match. (Read before, it could
            // predate the changes being journaled, and the counters with it.)
            let same = diff(&self.src, &self.dst, ignored).is_empty();
            let st = self.try_status();
            if let Ok(st) = &st {
                if !st["pid"].is_null() {
                    running_at = Instant::now();
                }
                if same && st["state"] == "Active" && pending_is_zero(st) {
                    eprintln!("{what}: converged in {:?}", start.elapsed());
                    return st.clone();
                }
            }
            let stopped = running_at.elapsed() > NOT_RUNNING_GRACE;
            if start.elapsed() > timeout || stopped {
                let why = if stopped {
                    format!("the daemon has not been running for {NOT_RUNNING_GRACE:?}")
                } else {
                    format!("not converged after {timeout:?}")
                };
                let diffs = diff(&self.src, &self.dst, ignored);
                panic!(
                    "{what}: {why}\n--- {} differences (a = master {}, b = slave {})\n  {}\n\
                     --- last status\n{}\n{}",
                    diffs.len(),
                    show(&self.src),
                    show(&self.dst),
                    diffs.join("\n  "),
                    st.map(|v| v.to_string()).unwrap_or_else(|e| e),
                    self.log_tail()
                );
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Session {
    /// `georep stop NAME`, then SIGKILL for any daemon still alive: no daemon outlives
    /// its test. Never panics (a panic while unwinding aborts the test binary).
    fn drop(&mut self) {
        if !self.home.exists() {
            return;
        }
        let mut cmd = self.command(&["stop", &self.name]);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        if let Ok(mut child) = cmd.spawn() {
            wait_timeout(&mut child, CMD_TIMEOUT);
        }
        let mut pids = self.pids.borrow().clone();
        if let Some(pid) = fs::read_to_string(self.dir().join("daemon.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            pids.insert(pid);
        }
        for pid in pids {
            if is_alive(pid) && is_daemon_of(pid, &self.home) {
                eprintln!(
                    "session {}: daemon {pid} survived `stop`: SIGKILL",
                    self.name
                );
                let _ = kill_tree(pid);
            }
        }
    }
}

pub fn pending_is_zero(st: &Value) -> bool {
    ["entry", "data", "meta"]
        .iter()
        .all(|k| st["pending"][k].as_u64() == Some(0))
}

/// The tree differences; a tree that changes under the walk (the daemon renames its
/// temporaries into place) makes the comparator panic, which counts as "not yet".
pub fn diff(a: &Path, b: &Path, ignored: &[&Path]) -> Vec<String> {
    quiet_panics();
    QUIET.with(|q| q.set(true));
    let out = panic::catch_unwind(AssertUnwindSafe(|| tree_diff_ignoring(a, b, ignored)));
    QUIET.with(|q| q.set(false));
    out.unwrap_or_else(|_| vec!["(a tree changed during the comparison)".to_owned()])
}

thread_local! {
    /// Set while a panic is expected and caught: the panic hook stays silent.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) a panic hook that is silent on threads in [`QUIET`] mode and the
/// previous hook everywhere else.
pub fn quiet_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
}

pub fn num(st: &Value, key: &str) -> f64 {
    st[key]
        .as_f64()
        .unwrap_or_else(|| panic!("status `{key}` is not a number: {st}"))
}

pub fn assert_converged(s: &Session) {
    assert_trees_equal(&s.src, &s.dst);
    assert_no_temporaries(&s.dst);
}

/// A session `name` from `t.src` to `t.dst`, created with `sets` and started; returns
/// once the initial sync has converged.
pub fn started(t: &TestDir, name: &str, sets: &[&str]) -> Session {
    let s = Session::new(t, name);
    s.create_ok(p(&t.dst), sets);
    s.start();
    s.wait_converged("initial sync");
    s
}
