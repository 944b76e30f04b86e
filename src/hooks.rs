//! Event hooks: on each session event, every executable in the session's
//! `hooks_dir` is run with the event name as its argument and the session's
//! facts in `GEOREP_*` variables (hooks/README.md).
//!
//! Hooks never hold up replication: [`Hooks::fire`] only queues the event;
//! one dispatcher thread runs the hooks in event order, each under a
//! timeout after which its whole process group is killed. What a hook
//! prints, its failures and refusals go to the log, never to the caller.
//! Like sshd with its files, hooks are refused when another user could
//! have changed them (owned by someone else, writable by group or others).

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Pid, Signal};

/// Events waiting for the dispatcher; past this they are dropped (and logged)
/// rather than block the daemon behind a slow hook.
const QUEUE: usize = 64;
/// What is kept of each of a hook's stdout and stderr for the log.
const OUTPUT_CAP: usize = 4096;
/// Variables of the daemon's own supervisor that a hook must not inherit
/// (a hook speaking to systemd's notify socket would speak for the daemon).
const SCRUBBED: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Started,
    Stopped,
    Active,
    Passive,
    Faulty,
    Recovered,
    Paused,
    Resumed,
    CheckpointCompleted,
}

impl Event {
    /// The hook's first argument and `GEOREP_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Started => "started",
            Event::Stopped => "stopped",
            Event::Active => "active",
            Event::Passive => "passive",
            Event::Faulty => "faulty",
            Event::Recovered => "recovered",
            Event::Paused => "paused",
            Event::Resumed => "resumed",
            Event::CheckpointCompleted => "checkpoint-completed",
        }
    }
}

/// The session's facts handed to hooks; unset checkpoint fields leave their
/// variables out of the hook's environment.
#[derive(Clone, Debug, Default)]
pub struct HookEnv {
    pub session: String,
    pub state: String,
    pub source: String,
    pub target: String,
    pub last_error: Option<String>,
    pub checkpoint_time: Option<f64>,
    pub checkpoint_completed: Option<bool>,
    pub checkpoint_completion_time: Option<f64>,
    /// A multi-node session: this node, and the epoch it ships under.
    pub node: Option<String>,
    pub epoch: Option<u64>,
}

type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// The session's hooks; dropping it lets the queued ones finish (module docs).
pub struct Hooks {
    tx: Option<SyncSender<(Event, HookEnv)>>,
    thread: Option<JoinHandle<()>>,
    /// Set on drop: hooks not started by then are skipped, so stopping a
    /// daemon with a long queue takes at most about two timeouts.
    drain_by: Arc<Mutex<Option<Instant>>>,
    timeout: Duration,
    log: Log,
}

impl Hooks {
    /// Hooks from `dir` (none when `None`), each run for at most `timeout`;
    /// `log` receives one line per message and is called from the
    /// dispatcher thread.
    pub fn new(dir: Option<PathBuf>, timeout: Duration, log: Log) -> Hooks {
        let drain_by = Arc::new(Mutex::new(None));
        let (tx, thread) = match dir {
            None => (None, None),
            Some(dir) => {
                let (tx, rx) = mpsc::sync_channel(QUEUE);
                let d = Dispatcher {
                    dir,
                    timeout,
                    log: log.clone(),
                    drain_by: drain_by.clone(),
                };
                let spawned = thread::Builder::new()
                    .name("georep-hooks".into())
                    .spawn(move || d.run(rx));
                match spawned {
                    Ok(t) => (Some(tx), Some(t)),
                    Err(e) => {
                        log(&format!(
                            "hooks: cannot start their thread: {e}; hooks disabled"
                        ));
                        (None, None)
                    }
                }
            }
        };
        Hooks {
            tx,
            thread,
            drain_by,
            timeout,
            log,
        }
    }

    /// Queues `event` for the hooks; returns at once. An event that finds
    /// the queue full is dropped and logged.
    pub fn fire(&self, event: Event, env: HookEnv) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send((event, env)) {
            Ok(()) => {}
            Err(TrySendError::Full((e, env))) => (self.log)(&format!(
                "hooks: queue full ({QUEUE} events waiting): event {} of session {} dropped",
                e.as_str(),
                env.session
            )),
            Err(TrySendError::Disconnected((e, _))) => (self.log)(&format!(
                "hooks: dispatcher gone: event {} dropped",
                e.as_str()
            )),
        }
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        *self.drain_by.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + self.timeout * 2);
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Dispatcher {
    dir: PathBuf,
    timeout: Duration,
    log: Log,
    drain_by: Arc<Mutex<Option<Instant>>>,
}

impl Dispatcher {
    fn run(self, rx: Receiver<(Event, HookEnv)>) {
        for (event, env) in rx {
            let hooks = match self.list() {
                Ok(h) => h,
                Err(why) => {
                    (self.log)(&format!(
                        "hooks: not running hooks for {}: {why}",
                        event.as_str()
                    ));
                    continue;
                }
            };
            for hook in hooks {
                let now = Instant::now();
                let mut deadline = now + self.timeout;
                if let Some(by) = *self.drain_by.lock().unwrap_or_else(|p| p.into_inner()) {
                    if by <= now {
                        (self.log)(&format!(
                            "hook {} {}: skipped, the daemon is stopping",
                            show(&hook),
                            event.as_str()
                        ));
                        continue;
                    }
                    deadline = deadline.min(by);
                }
                self.run_one(&hook, event, &env, deadline);
            }
        }
    }

    /// The hooks to run, in name order, after the directory's checks.
    fn list(&self) -> Result<Vec<PathBuf>, String> {
        let dir = fs::canonicalize(&self.dir)
            .map_err(|e| format!("hooks directory {}: {e}", self.dir.display()))?;
        check_ancestors(&dir)?;
        let entries =
            fs::read_dir(&dir).map_err(|e| format!("hooks directory {}: {e}", dir.display()))?;
        let mut names: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| !ignored(n))
            .collect();
        names.sort();
        let mut hooks = Vec::new();
        for name in names {
            let path = dir.join(&name);
            // Followed: a symlink to a shared script is fine, if that file
            // passes the same checks.
            let Ok(m) = fs::metadata(&path) else { continue };
            if !m.is_file() || m.mode() & 0o111 == 0 {
                continue;
            }
            match unsafe_owner_or_mode(&m) {
                None => hooks.push(path),
                Some(why) => (self.log)(&format!("hook {}: refused: {why}", show(&path))),
            }
        }
        Ok(hooks)
    }

    fn run_one(&self, hook: &Path, event: Event, env: &HookEnv, deadline: Instant) {
        let name = show(hook);
        let ev = event.as_str();
        let mut cmd = Command::new(hook);
        cmd.arg(ev)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so a timeout kills what it started too.
            .process_group(0);
        for v in SCRUBBED {
            cmd.env_remove(v);
        }
        set_env(&mut cmd, event, env);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                (self.log)(&format!("hook {name} {ev}: cannot run: {e}"));
                return;
            }
        };
        let out = capture(child.stdout.take());
        let err = capture(child.stderr.take());
        // Observed without reaping: while the child is a zombie its pid
        // cannot be reused, so killing its group never hits a stranger.
        let exited = exited_by(&child, deadline);
        if !exited {
            kill_group(&child);
            (self.log)(&format!(
                "hook {name} {ev}: killed after its timeout of {:?}",
                self.timeout
            ));
        }
        // What it left running in its group holds the pipes open: wait
        // for their end until the deadline, then end them too.
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100))
        };
        let (mut o, mut e) = (out.recv_timeout(left()), err.recv_timeout(left()));
        if o.is_err() || e.is_err() {
            kill_group(&child);
            (self.log)(&format!(
                "hook {name} {ev}: processes it left holding its output were killed"
            ));
            let wait = Duration::from_millis(500);
            o = o.or_else(|_| out.recv_timeout(wait));
            e = e.or_else(|_| err.recv_timeout(wait));
        }
        let status = child.wait();
        for (stream, text) in [("stdout", o), ("stderr", e)] {
            for line in text.unwrap_or_default().lines() {
                (self.log)(&format!("hook {name} {ev}: {stream}: {line}"));
            }
        }
        match status {
            Ok(s) if s.success() || !exited => {}
            Ok(s) => (self.log)(&format!("hook {name} {ev}: failed: {s}")),
            Err(e) => (self.log)(&format!("hook {name} {ev}: cannot wait for it: {e}")),
        }
    }
}

fn set_env(cmd: &mut Command, event: Event, env: &HookEnv) {
    // A NUL cannot be in the environment; the hook must run all the same.
    let clean = |s: &str| s.replace('\0', "");
    cmd.env("GEOREP_SESSION", clean(&env.session))
        .env("GEOREP_EVENT", event.as_str())
        .env("GEOREP_STATE", clean(&env.state))
        .env("GEOREP_SOURCE", clean(&env.source))
        .env("GEOREP_TARGET", clean(&env.target))
        .env(
            "GEOREP_LAST_ERROR",
            clean(env.last_error.as_deref().unwrap_or_default()),
        );
    let optional = [
        ("GEOREP_CHECKPOINT_TIME", env.checkpoint_time.map(num)),
        (
            "GEOREP_CHECKPOINT_COMPLETED",
            env.checkpoint_completed.map(|b| b.to_string()),
        ),
        (
            "GEOREP_CHECKPOINT_COMPLETION_TIME",
            env.checkpoint_completion_time.map(num),
        ),
        ("GEOREP_NODE", env.node.as_deref().map(clean)),
        ("GEOREP_EPOCH", env.epoch.map(|e| e.to_string())),
    ];
    for (k, v) in optional {
        match v {
            Some(v) => cmd.env(k, v),
            // Not inherited from the daemon's own environment either.
            None => cmd.env_remove(k),
        };
    }
}

/// Unix times as shells compare them: whole seconds without a fraction.
fn num(t: f64) -> String {
    if t.fract() == 0.0 && t.abs() < 1e15 {
        format!("{}", t as i64)
    } else {
        format!("{t:.3}")
    }
}

/// Backup, editor and package-manager leftovers, and hidden files: run-parts'
/// rules, so `hook~` or `hook.dpkg-old` never runs beside the new `hook`.
fn ignored(name: &OsStr) -> bool {
    let b = name.as_bytes();
    let has = |needle: &[u8]| b.windows(needle.len()).any(|w| w == needle);
    b.starts_with(b".") || b.ends_with(b"~") || has(b".dpkg-") || has(b".rpm")
}

/// Why a hook or directory could have been changed by another user, if so.
fn unsafe_owner_or_mode(m: &fs::Metadata) -> Option<String> {
    let me = rustix::process::geteuid().as_raw();
    if m.uid() != me && m.uid() != 0 {
        return Some(format!(
            "owned by uid {}, neither us ({me}) nor root",
            m.uid()
        ));
    }
    if m.permissions().mode() & 0o022 != 0 {
        return Some(format!(
            "writable by group or others (mode {:o})",
            m.permissions().mode() & 0o7777
        ));
    }
    None
}

/// The directory and every directory above it must pass the owner and mode
/// checks, as sshd's StrictModes asks; above the directory itself a
/// root-owned sticky directory (/tmp) is fine: nobody else can rename
/// what is in it.
fn check_ancestors(dir: &Path) -> Result<(), String> {
    for (i, d) in dir.ancestors().enumerate() {
        let m = fs::metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        let sticky_root = m.mode() & 0o1000 != 0 && m.uid() == 0;
        if i > 0 && sticky_root {
            continue;
        }
        if let Some(why) = unsafe_owner_or_mode(&m) {
            return Err(format!("{} is {why}", d.display()));
        }
    }
    Ok(())
}

/// Reads a stream to its end on a thread, keeping the first [`OUTPUT_CAP`]
/// bytes (the rest is read and counted, so the hook never blocks on a
/// full pipe).
fn capture<R: Read + Send + 'static>(stream: Option<R>) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let Some(mut stream) = stream else {
        let _ = tx.send(String::new());
        return rx;
    };
    let spawned = thread::Builder::new()
        .name("georep-hook-out".into())
        .spawn(move || {
            let mut kept = Vec::new();
            let mut dropped = 0usize;
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = OUTPUT_CAP.saturating_sub(kept.len()).min(n);
                        kept.extend_from_slice(&buf[..room]);
                        dropped += n - room;
                    }
                }
            }
            let mut text = String::from_utf8_lossy(&kept).into_owned();
            if dropped > 0 {
                text.push_str(&format!("\n[{dropped} more bytes not kept]"));
            }
            let _ = tx.send(text);
        });
    if let Err(e) = spawned {
        let (tx, rx) = mpsc::channel();
        let _ = tx.send(format!("[output not read: {e}]"));
        return rx;
    }
    rx
}

/// Whether the child exited before `deadline` (left unreaped).
fn exited_by(child: &Child, deadline: Instant) -> bool {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    let Some(pid) = Pid::from_raw(child.id() as i32) else {
        return false;
    };
    let how = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    let mut nap = Duration::from_millis(1);
    loop {
        match waitid(WaitId::Pid(pid), how) {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            // Not ours to wait for: nothing sensible left but the kill.
            Err(_) => return false,
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(50));
    }
}

fn kill_group(child: &Child) {
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        // ESRCH: nothing of the group is left.
        let _ = kill_process_group(pid, Signal::KILL);
    }
}

fn show(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    #[test]
    fn leftovers_and_hidden_files_are_ignored() {
        for n in [
            ".hidden",
            "hook~",
            "hook.dpkg-old",
            "hook.dpkg-new",
            "hook.rpmsave",
            "hook.rpmnew",
        ] {
            assert!(super::ignored(OsStr::new(n)), "{n}");
        }
        for n in ["log-faulty", "10-mail", "hook.sh", "dpkg", "rpm"] {
            assert!(!super::ignored(OsStr::new(n)), "{n}");
        }
    }

    #[test]
    fn hooks_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<super::Hooks>();
        shared::<crate::metrics::MetricsServer>();
    }

    #[test]
    fn times_are_printed_for_shells() {
        assert_eq!(super::num(1700000000.0), "1700000000");
        assert_eq!(super::num(1700000000.25), "1700000000.250");
    }
}
