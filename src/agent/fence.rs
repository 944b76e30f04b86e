//! The slave's side of one writer per session (DESIGN.md invariant 9).
//!
//! For each fenced session (one whose master sends a session name and an
//! epoch in its hello) the slave keeps a small record, durably and outside
//! the replica: the highest epoch it has seen, the slave process serving
//! it, how far that session's Finishes got (the marker a new active node
//! resumes from), and what it refused. A hello with a lower epoch is
//! refused. A higher one takes over: it is stored first, then the slave
//! process of the older epoch (a master stopped past its lease still holds
//! its connection) is killed before the newcomer touches the replica; and
//! every Finish checks the record again, so a round of an epoch that has
//! been superseded is never acknowledged.
//!
//! Where: `--state-dir`, else `$GEOREP_SLAVE_STATE`, else
//! `$XDG_STATE_HOME/georep/slave`, else `~/.local/state/georep/slave`; one
//! directory per replica root (named by a hash of its path), one record per
//! session in it.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::error::Exit;
use crate::proto::Fence;

/// What the slave keeps per fenced session.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The highest epoch any hello carried; only grows.
    pub epoch: u64,
    /// The node that sent it, and the slave process serving it.
    pub node: String,
    pub pid: Option<i32>,
    /// The newest change time (ns) a Finish made durable, and its epoch.
    pub marker_time_ns: i64,
    pub marker_epoch: u64,
    /// Hellos and Finishes refused for a stale epoch, and the last one.
    pub refused: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refused: Option<String>,
}

/// A fenced session's record, for one slave process.
pub struct Fencing {
    dir: PathBuf,
    session: String,
    /// The epoch this connection writes under.
    pub epoch: u64,
}

/// Where fencing records live when `--state-dir` is not given.
pub fn default_state_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("GEOREP_SLAVE_STATE")
        .or_else(|| env("XDG_STATE_HOME").map(|d| d.join("georep/slave")))
        .or_else(|| env("HOME").map(|h| h.join(".local/state/georep/slave")))
}

/// The fenced failure: a newer writer exists. Exit code 26.
fn fenced(msg: String) -> (Exit, String) {
    (Exit::Fenced, msg)
}

fn state_err(what: &str, path: &Path, e: impl std::fmt::Display) -> (Exit, String) {
    (
        Exit::Target,
        format!("slave state {what} {}: {e}", path.display()),
    )
}

/// A session name as a file name: what `georep create` accepts, no more.
fn valid_session(s: &[u8]) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s[0] != b'.'
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    ok.then(|| String::from_utf8_lossy(s).into_owned())
}

impl Fencing {
    /// Checks a master's hello against the record and, for a newer epoch,
    /// takes the session over (stores it, stops the older writer's slave).
    /// Returns the record as it now stands, for the hello's answer.
    pub fn hello(
        state_dir: Option<&Path>,
        root: &Path,
        f: &Fence,
    ) -> Result<(Fencing, Record), (Exit, String)> {
        let Some(session) = valid_session(&f.session) else {
            return Err((Exit::Protocol, "refused: a bad session name".into()));
        };
        let base = state_dir
            .map(Path::to_path_buf)
            .or_else(default_state_dir)
            .ok_or((
                Exit::Target,
                "no place for the slave's fencing state: give --state-dir or set HOME".to_string(),
            ))?;
        let key = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
        let dir = base.join(&key.as_str()[..16]);
        fs::create_dir_all(&dir).map_err(|e| state_err("creating", &dir, e))?;
        // Who the root is, for whoever reads the directory.
        let _ = fs::write(dir.join("root"), root.as_os_str().as_encoded_bytes());
        let me = Fencing {
            dir,
            session,
            epoch: f.epoch,
        };
        let node = String::from_utf8_lossy(&f.node).into_owned();
        let (record, older) = me.locked(|rec| {
            if f.epoch < rec.epoch {
                me.refuse(rec, &node, "hello");
                return Err(fenced(format!(
                    "fenced: node {node} writes under epoch {}, but epoch {} (node {}) \
                     has taken this session over",
                    f.epoch, rec.epoch, rec.node
                )));
            }
            let older = rec.pid.filter(|&p| p != std::process::id() as i32);
            rec.epoch = f.epoch;
            rec.node = node.clone();
            rec.pid = Some(std::process::id() as i32);
            Ok(older)
        })?;
        if let Some(pid) = older {
            stop_older_writer(pid);
        }
        Ok((me, record))
    }

    /// At Finish: still the session's writer? Then store the marker.
    pub fn finish(&self, marker_ns: i64) -> Result<(), (Exit, String)> {
        self.locked(|rec| {
            if rec.epoch > self.epoch {
                let node = rec.node.clone();
                let newer = rec.epoch;
                self.refuse(rec, "", "finish");
                return Err(fenced(format!(
                    "fenced: epoch {newer} (node {node}) has taken this session over from epoch {}",
                    self.epoch
                )));
            }
            if marker_ns > rec.marker_time_ns {
                rec.marker_time_ns = marker_ns;
                rec.marker_epoch = self.epoch;
            }
            Ok(())
        })
        .map(|_| ())
    }

    fn refuse(&self, rec: &mut Record, node: &str, what: &str) {
        rec.refused += 1;
        rec.last_refused = Some(format!(
            "{what} of epoch {}{}",
            self.epoch,
            if node.is_empty() {
                String::new()
            } else {
                format!(" from node {node}")
            }
        ));
    }

    fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.session))
    }

    /// Runs `f` on the record under the session's lock and writes it back
    /// durably (even when `f` refuses: the refusal is counted).
    fn locked<T>(
        &self,
        f: impl FnOnce(&mut Record) -> Result<T, (Exit, String)>,
    ) -> Result<(Record, T), (Exit, String)> {
        let lock_path = self.dir.join(format!("{}.lock", self.session));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| state_err("opening", &lock_path, e))?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| state_err("locking", &lock_path, e))?;
        let path = self.path();
        let mut rec: Record = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| state_err("reading", &path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
            Err(e) => return Err(state_err("reading", &path, e)),
        };
        let out = f(&mut rec);
        crate::fsutil::replace_file(&path, &serde_json::to_vec_pretty(&rec).expect("plain data"))
            .map_err(|e| state_err("writing", &path, e))?;
        out.map(|v| (rec, v))
    }
}

/// The record of `session` for the replica at `root`, as stored (for tests
/// and the curious: `georep` itself reads it only through a hello).
pub fn read_record(state_dir: &Path, root: &Path, session: &str) -> Option<Record> {
    let key = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
    let path = state_dir
        .join(&key.as_str()[..16])
        .join(format!("{session}.json"));
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Kills the slave process of a superseded epoch, if it still runs and is
/// a georep slave (a reused pid is left alone), and waits until it is gone
/// so that it releases the replica's lock and writes nothing more.
fn stop_older_writer(pid: i32) {
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return;
    };
    let is_slave = |pid: i32| {
        let exe_same =
            fs::read_link(format!("/proc/{pid}/exe")).ok() == std::env::current_exe().ok();
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        exe_same && cmd.split(|&b| b == 0).any(|a| a == b"slave")
    };
    if !is_slave(pid) {
        return;
    }
    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    // Gone, or a zombie (whose files are closed) that its parent will reap.
    let alive = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    };
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}
