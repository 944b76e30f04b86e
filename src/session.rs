//! Named sessions: where their state lives and what they are configured to do.
//!
//! Layout under the home directory (`--home`, GEOREP_HOME, /var/lib/georep as
//! root, the XDG state directory otherwise):
//!
//! ```text
//! sessions/NAME/config.toml   source, target and options (`georep config`)
//! sessions/NAME/journal.db    the changelog (SQLite)
//! sessions/NAME/status.json   what the daemon last reported
//! sessions/NAME/daemon.pid    pid, flock-ed while the daemon runs
//! sessions/NAME/daemon.log    the daemon's log
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exclude::Excluder;
use crate::proto::FsyncPolicy;
use crate::sync::SyncOptions;
use crate::target::Target;
use crate::transport::SshOptions;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no session named {0:?}")]
    Unknown(String),
    #[error("a session named {0:?} exists already")]
    Exists(String),
    #[error("session name {0:?}: use letters, digits, '.', '_' and '-' (not first)")]
    BadName(String),
    #[error("{0}")]
    BadConfig(String),
    #[error("session {0:?} is running; stop it first")]
    Running(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl SessionError {
    /// Exit code: a bad key or value is a usage error, the rest session errors.
    pub fn exit(&self) -> crate::error::Exit {
        match self {
            SessionError::BadConfig(_) => crate::error::Exit::Usage,
            _ => crate::error::Exit::Session,
        }
    }
}

/// Maps an I/O error to a session error that says what was being done.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SessionError {
    let context = context.into();
    move |source| SessionError::Io { context, source }
}

/// A session's configuration; every key has a default but source and target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    pub source: PathBuf,
    pub target: String,
    /// Most changes shipped in one round.
    #[serde(default = "d::batch_max_changes")]
    pub batch_max_changes: u64,
    /// Longest a batch waits for more changes after its first one.
    #[serde(default = "d::batch_delay_ms")]
    pub batch_delay_ms: u64,
    /// A batch is cut sooner once no change arrived for this long.
    #[serde(default = "d::batch_quiet_ms")]
    pub batch_quiet_ms: u64,
    /// Seconds between full reconciliations (0: never).
    #[serde(default = "d::full_crawl_interval")]
    pub full_crawl_interval: u64,
    /// Seconds acked changes stay in the journal.
    #[serde(default = "d::journal_retention")]
    pub journal_retention: u64,
    /// Do not apply deletions to the slave.
    #[serde(default)]
    pub ignore_deletes: bool,
    #[serde(default = "d::yes")]
    pub sync_xattrs: bool,
    /// gitignore patterns.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "d::jobs")]
    pub jobs: u16,
    #[serde(default = "d::fsync")]
    pub fsync: String,
    #[serde(default)]
    pub compress: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
    #[serde(default)]
    pub accept_new_host_key: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_command: Option<String>,
}

/// Defaults, chosen for sub-second lag.
mod d {
    pub fn batch_max_changes() -> u64 {
        10_000
    }
    pub fn batch_delay_ms() -> u64 {
        100
    }
    pub fn batch_quiet_ms() -> u64 {
        10
    }
    pub fn full_crawl_interval() -> u64 {
        86_400
    }
    pub fn journal_retention() -> u64 {
        3_600
    }
    pub fn yes() -> bool {
        true
    }
    pub fn jobs() -> u16 {
        4
    }
    pub fn fsync() -> String {
        "batch".into()
    }
}

impl SessionConfig {
    pub fn new(source: PathBuf, target: String) -> SessionConfig {
        toml::from_str(&toml::to_string(&Minimal { source, target }).expect("plain strings"))
            .expect("defaults fill the rest")
    }

    fn table(&self) -> toml::Table {
        toml::Table::try_from(self).expect("config serializes")
    }

    /// Sets KEY to VALUE (TOML syntax; a bare word is taken as a string).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SessionError> {
        let mut t = self.table();
        let known = toml::Table::try_from(SessionConfig::new("/".into(), String::new()))
            .expect("serializes")
            .contains_key(key)
            || OPTIONAL_KEYS.contains(&key);
        if !known {
            return Err(SessionError::BadConfig(format!("unknown key {key:?}")));
        }
        let v = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        t.insert(key.to_string(), v);
        *self = toml::Value::Table(t)
            .try_into()
            .map_err(|e| SessionError::BadConfig(format!("{key} = {value}: {e}")))?;
        self.validate()
    }

    /// Restores KEY's default.
    pub fn reset(&mut self, key: &str) -> Result<(), SessionError> {
        if key == "source" || key == "target" {
            return Err(SessionError::BadConfig(format!("{key} has no default")));
        }
        let mut t = self.table();
        t.remove(key);
        *self = toml::Value::Table(t)
            .try_into()
            .map_err(|e| SessionError::BadConfig(e.to_string()))?;
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.table().get(key).map(|v| match v {
            toml::Value::String(s) => s.clone(),
            v => v.to_string(),
        })
    }

    pub fn validate(&self) -> Result<(), SessionError> {
        self.sync_options().map(|_| ())
    }

    /// The options each round of the session runs with.
    pub fn sync_options(&self) -> Result<SyncOptions, SessionError> {
        let bad = SessionError::BadConfig;
        let target = Target::parse(&self.target).map_err(bad)?;
        let excluder = Excluder::new(&self.exclude, &[]).map_err(SessionError::BadConfig)?;
        let fsync: FsyncPolicy = self.fsync.parse().map_err(SessionError::BadConfig)?;
        if self.jobs == 0 || self.batch_max_changes == 0 {
            return Err(SessionError::BadConfig(
                "jobs and batch_max_changes must be positive".into(),
            ));
        }
        Ok(SyncOptions {
            source: self.source.clone(),
            target,
            delete: !self.ignore_deletes,
            checksum: false,
            whole_file: false,
            dry_run: false,
            jobs: self.jobs as usize,
            fsync,
            xattrs: self.sync_xattrs,
            excluder,
            verbose: false,
            json: false,
            progress: false,
            compress: self.compress,
            ssh: SshOptions {
                identity: self.identity.clone(),
                known_hosts: self.known_hosts.clone(),
                accept_new_host_key: self.accept_new_host_key,
                port: self.port,
                user: self.user.clone(),
                ssh_command: self.ssh_command.clone(),
                remote_command: self.remote_command.clone(),
            },
        })
    }

    pub fn batch_delay(&self) -> Duration {
        Duration::from_millis(self.batch_delay_ms)
    }

    pub fn batch_quiet(&self) -> Duration {
        Duration::from_millis(self.batch_quiet_ms)
    }
}

/// Keys that are absent from a default config (unset options).
const OPTIONAL_KEYS: &[&str] = &[
    "identity",
    "known_hosts",
    "port",
    "user",
    "ssh_command",
    "remote_command",
];

#[derive(Serialize)]
struct Minimal {
    source: PathBuf,
    target: String,
}

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
    fn path_for(home: &Path, name: &str) -> Result<PathBuf, SessionError> {
        let ok = !name.is_empty()
            && !name.starts_with(['.', '-'])
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(SessionError::BadName(name.to_string()));
        }
        Ok(home.join("sessions").join(name))
    }

    pub fn open(home: &Path, name: &str) -> Result<Session, SessionError> {
        let dir = Self::path_for(home, name)?;
        if !dir.join("config.toml").exists() {
            return Err(SessionError::Unknown(name.to_string()));
        }
        Ok(Session {
            name: name.to_string(),
            dir,
        })
    }

    pub fn create(
        home: &Path,
        name: &str,
        config: &SessionConfig,
    ) -> Result<Session, SessionError> {
        let dir = Self::path_for(home, name)?;
        if dir.join("config.toml").exists() {
            return Err(SessionError::Exists(name.to_string()));
        }
        config.validate()?;
        std::fs::create_dir_all(&dir).map_err(io(dir.display().to_string()))?;
        let s = Session {
            name: name.to_string(),
            dir,
        };
        s.save(config)?;
        Ok(s)
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

    pub fn config(&self) -> Result<SessionConfig, SessionError> {
        let path = self.dir.join("config.toml");
        let text = std::fs::read_to_string(&path).map_err(io(path.display().to_string()))?;
        toml::from_str(&text)
            .map_err(|e| SessionError::BadConfig(format!("{}: {e}", path.display())))
    }

    pub fn save(&self, config: &SessionConfig) -> Result<(), SessionError> {
        let text = toml::to_string(config).expect("config serializes");
        write_atomic(&self.dir.join("config.toml"), text.as_bytes(), true)
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

    /// The daemon's pid, if one is running (it holds a lock on the pid file).
    pub fn running_pid(&self) -> Option<i32> {
        let f = std::fs::File::open(self.pid_path()).ok()?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Ok(()) => None,
            Err(_) => std::fs::read_to_string(self.pid_path())
                .ok()?
                .trim()
                .parse()
                .ok(),
        }
    }

    pub fn delete(self) -> Result<(), SessionError> {
        if self.running_pid().is_some() {
            return Err(SessionError::Running(self.name));
        }
        std::fs::remove_dir_all(&self.dir).map_err(io(self.dir.display().to_string()))
    }
}

/// Writes a file so that readers see the old or the new content, never half;
/// `durable` also fsyncs it before the rename.
pub fn write_atomic(path: &Path, data: &[u8], durable: bool) -> Result<(), SessionError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(tmp.display().to_string()))?;
    f.write_all(data)
        .and_then(|_| if durable { f.sync_all() } else { Ok(()) })
        .map_err(io(tmp.display().to_string()))?;
    std::fs::rename(&tmp, path).map_err(io(path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_set_get_reset_and_validation() {
        let mut c = SessionConfig::new("/src".into(), "/dst".into());
        assert_eq!(c.batch_delay_ms, 100);
        c.set("batch_delay_ms", "250").unwrap();
        assert_eq!(c.get("batch_delay_ms").as_deref(), Some("250"));
        c.set("exclude", r#"["*.tmp", "build/"]"#).unwrap();
        assert_eq!(c.exclude, vec!["*.tmp", "build/"]);
        c.set("user", "backup").unwrap();
        assert_eq!(c.user.as_deref(), Some("backup"));
        c.reset("batch_delay_ms").unwrap();
        assert_eq!(c.batch_delay_ms, 100);
        assert!(c.set("nope", "1").is_err());
        assert!(c.set("jobs", "many").is_err());
        assert!(c.set("fsync", "sometimes").is_err());
        assert!(Session::path_for(Path::new("/h"), "../x").is_err());
    }
}
