//! The on-disk store of named sessions: where each one's state lives, and
//! creating, opening, listing and deleting them.
//!
//! Layout under the home directory (`--home`, GEOREP_HOME, /var/lib/georep as
//! root, the XDG state directory otherwise):
//!
//! ```text
//! sessions/NAME/config.toml   source, target and options (`georep config`)
//! sessions/NAME/journal.db    the changelog (SQLite)
//! sessions/NAME/status.json   what the daemon last reported
//! sessions/NAME/daemon.pid    pid, flock-ed while the daemon runs; its
//!                             time is the daemon's heartbeat
//! sessions/NAME/daemon.log    the daemon's log
//! sessions/NAME/control.sock  the running daemon's control socket
//! ```

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::SessionConfig;
use crate::error::{state, Error};

/// The home directory: `--home`, else GEOREP_HOME, else a default.
pub fn home(explicit: Option<&Path>) -> PathBuf {
    if let Some(h) = explicit {
        return h.to_path_buf();
    }
    if let Some(h) = std::env::var_os("GEOREP_HOME") {
        return PathBuf::from(h);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/georep");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("georep")
}

/// One session's files.
#[derive(Clone, Debug)]
pub struct Session {
    pub name: String,
    pub dir: PathBuf,
}

impl Session {
    fn path_for(home: &Path, name: &str) -> Result<PathBuf, Error> {
        let ok = !name.is_empty()
            && !name.starts_with(['.', '-'])
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(Error::Usage(format!(
                "session name {name:?}: use letters, digits, '.', '_' and '-' (not first)"
            )));
        }
        Ok(home.join("sessions").join(name))
    }

    pub fn open(home: &Path, name: &str) -> Result<Session, Error> {
        let dir = Self::path_for(home, name)?;
        if !dir.join("config.toml").exists() {
            return Err(Error::UnknownSession(name.to_string()));
        }
        Ok(Session {
            name: name.to_string(),
            dir,
        })
    }

    pub fn create(home: &Path, name: &str, config: &SessionConfig) -> Result<Session, Error> {
        let dir = Self::path_for(home, name)?;
        if dir.join("config.toml").exists() {
            return Err(Error::SessionExists(name.to_string()));
        }
        config.validate()?;
        source_identity(config)?;
        if let Some(parent) = home.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(state(parent.display().to_string()))?;
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(state(dir.display().to_string()))?;
        let s = Session {
            name: name.to_string(),
            dir,
        };
        s.make_private(home)?;
        s.save(config)?;
        s.record_source(config)?;
        Ok(s)
    }

    /// Makes the home, `sessions/` and this session's directory 0700: they
    /// list every file name of the source. A sticky directory (a --home of
    /// /tmp, say) is shared by design and left alone.
    pub fn make_private(&self, home: &Path) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        for d in [home, &home.join("sessions"), &self.dir] {
            let Ok(m) = std::fs::metadata(d) else {
                continue;
            };
            let mode = m.permissions().mode();
            if mode & 0o1000 == 0 && mode & 0o077 != 0 {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode & 0o700))
                    .map_err(state(d.display().to_string()))?;
            }
        }
        Ok(())
    }

    /// Every session under a home, by name.
    pub fn all(home: &Path) -> Vec<Session> {
        let mut v: Vec<Session> = std::fs::read_dir(home.join("sessions"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Session::open(home, e.file_name().to_str()?).ok())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn config(&self) -> Result<SessionConfig, Error> {
        let path = self.dir.join("config.toml");
        let text = std::fs::read_to_string(&path).map_err(state(path.display().to_string()))?;
        toml::from_str(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
    }

    pub fn save(&self, config: &SessionConfig) -> Result<(), Error> {
        let text = toml::to_string(config).expect("config serializes");
        write_atomic(&self.dir.join("config.toml"), text.as_bytes(), true)
    }

    /// The source's (device, inode) as recorded at create (or at the first
    /// start of a session older than the record, or by `start --force`).
    pub fn source_identity(&self) -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(self.dir.join("source.id")).ok()?;
        let (dev, ino) = text.trim().split_once(' ')?;
        Some((dev.parse().ok()?, ino.parse().ok()?))
    }

    /// Records what the source is now: it must exist and be a directory.
    pub fn record_source(&self, config: &SessionConfig) -> Result<(u64, u64), Error> {
        let id = source_identity(config)?;
        let text = format!("{} {}\n", id.0, id.1);
        write_atomic(&self.dir.join("source.id"), text.as_bytes(), true)?;
        Ok(id)
    }

    pub fn journal_path(&self) -> PathBuf {
        self.dir.join("journal.db")
    }
    pub fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }
    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("daemon.pid")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
    pub fn control_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// Where `checkpoint now` drops its barrier files (see watch.rs).
    pub fn barrier_dir(&self) -> PathBuf {
        self.dir.join("barriers")
    }

    /// The daemon's pid, if one is running and ready: it holds a lock on the
    /// pid file from its start, and writes its pid there once it is set up.
    pub fn running_pid(&self) -> Option<i32> {
        match self.daemon() {
            Daemon::Running(pid) => Some(pid),
            _ => None,
        }
    }

    /// What holds the session's lock.
    pub fn daemon(&self) -> Daemon {
        let Ok(f) = std::fs::File::open(self.pid_path()) else {
            return Daemon::None;
        };
        if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok() {
            return Daemon::None;
        }
        // "PID starting" while it sets up, then "PID"; empty for a moment.
        let text = std::fs::read_to_string(self.pid_path()).unwrap_or_default();
        let mut words = text.split_whitespace();
        let Some(pid) = words.next().and_then(|w| w.parse::<i32>().ok()) else {
            return Daemon::Starting(None);
        };
        if process_is_exiting(pid) {
            Daemon::Exiting(pid)
        } else if words.next() == Some("starting") {
            Daemon::Starting(Some(pid))
        } else {
            Daemon::Running(pid)
        }
    }

    pub fn delete(self) -> Result<(), Error> {
        if self.daemon() != Daemon::None {
            return Err(Error::Running(self.name));
        }
        std::fs::remove_dir_all(&self.dir).map_err(state(self.dir.display().to_string()))
    }
}

/// The source's (device, inode); it must exist and be a directory.
fn source_identity(config: &SessionConfig) -> Result<(u64, u64), Error> {
    use std::os::unix::fs::MetadataExt;
    let source_err = |reason: String| Error::Source {
        path: config.source.display().to_string(),
        reason,
    };
    let st = std::fs::metadata(&config.source).map_err(|e| source_err(e.to_string()))?;
    if !st.is_dir() {
        return Err(source_err("not a directory".into()));
    }
    Ok((st.dev(), st.ino()))
}

/// How often a running daemon touches its pid file. A daemon that dies
/// (SIGKILL, a crash) leaves no word; this time is when it was last seen
/// alive. Rare enough to cost nothing, often enough to date a death.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Touches the daemon's (locked) pid file every [`HEARTBEAT`], from a
/// thread of its own, for the rest of the process's life.
pub fn heartbeat(pid_file: &std::fs::File) -> Result<(), Error> {
    let f = pid_file.try_clone().map_err(state("daemon.pid"))?;
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || loop {
            std::thread::sleep(HEARTBEAT);
            // A failed touch only makes a later death look older.
            let _ = f.set_modified(SystemTime::now());
        })
        .map_err(|e| Error::io("starting the heartbeat thread", e))?;
    Ok(())
}

/// Who holds a session's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    None,
    /// Locked, setting up (journal, watches): not ready yet.
    Starting(Option<i32>),
    Running(i32),
    /// Killed or exiting; its threads still hold the lock for a moment.
    Exiting(i32),
}

/// A process that is gone or a zombie: it holds nothing any more.
pub fn process_is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(st) => st
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .is_none_or(|state| matches!(state, "Z" | "X" | "x")),
    }
}

/// A process that is gone, a zombie, exiting, or has a SIGKILL pending.
pub fn process_is_exiting(pid: i32) -> bool {
    const PF_EXITING: u64 = 0x4;
    const SIGKILL_BIT: u64 = 1 << (9 - 1);
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // After "(comm)": state, then ppid, pgrp, session, tty, tpgid, flags.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let state = fields.first().copied().unwrap_or("X");
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    if matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0 {
        return true;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().any(|l| {
        let mask = l
            .strip_prefix("SigPnd:")
            .or_else(|| l.strip_prefix("ShdPnd:"));
        mask.and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & SIGKILL_BIT != 0)
    })
}

/// Writes a file so that readers see the old or the new content, never half;
/// `durable` also fsyncs it before the rename.
pub fn write_atomic(path: &Path, data: &[u8], durable: bool) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(state(tmp.display().to_string()))?;
    f.write_all(data)
        .and_then(|_| if durable { f.sync_all() } else { Ok(()) })
        .map_err(state(tmp.display().to_string()))?;
    std::fs::rename(&tmp, path).map_err(state(path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_home() {
        for bad in ["../x", "", ".hidden", "-x", "a/b"] {
            assert!(Session::path_for(Path::new("/h"), bad).is_err(), "{bad}");
        }
        assert!(Session::path_for(Path::new("/h"), "dr-1.a_b").is_ok());
    }
}
