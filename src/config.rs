//! A session's typed configuration (`sessions/NAME/config.toml`) and the
//! engine options it builds: besides `georep sync`'s arguments, the one
//! place that builds [`Options`].

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::exclude::Excluder;
use crate::proto::FsyncPolicy;
use crate::replicate::Options;
use crate::target::Target;
use crate::transport::SshOptions;

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
    pub fsync: FsyncPolicy,
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
    /// Executables run on each event (started, faulty, checkpoint-completed...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_dir: Option<PathBuf>,
    /// Address serving Prometheus metrics at /metrics (off when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
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
    pub fn fsync() -> super::FsyncPolicy {
        super::FsyncPolicy::Batch
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
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let mut t = self.table();
        let known = toml::Table::try_from(SessionConfig::new("/".into(), String::new()))
            .expect("serializes")
            .contains_key(key)
            || OPTIONAL_KEYS.contains(&key);
        if !known {
            return Err(Error::Usage(format!("unknown key {key:?}")));
        }
        let v = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        t.insert(key.to_string(), v);
        *self = toml::Value::Table(t)
            .try_into()
            .map_err(|e| Error::Usage(format!("{key} = {value}: {e}")))?;
        self.validate()
    }

    /// Restores KEY's default.
    pub fn reset(&mut self, key: &str) -> Result<(), Error> {
        if key == "source" || key == "target" {
            return Err(Error::Usage(format!("{key} has no default")));
        }
        let mut t = self.table();
        t.remove(key);
        *self = toml::Value::Table(t)
            .try_into()
            .map_err(|e| Error::Usage(e.to_string()))?;
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.table().get(key).map(|v| match v {
            toml::Value::String(s) => s.clone(),
            v => v.to_string(),
        })
    }

    pub fn validate(&self) -> Result<(), Error> {
        self.options().map(|_| ())
    }

    /// The options each round of the session runs with.
    pub fn options(&self) -> Result<Options, Error> {
        let bad = Error::Usage;
        let target = Target::parse(&self.target).map_err(bad)?;
        let excluder = Excluder::new(&self.exclude, &[]).map_err(Error::Usage)?;
        if self.jobs == 0 || self.batch_max_changes == 0 {
            return Err(Error::Usage(
                "jobs and batch_max_changes must be positive".into(),
            ));
        }
        Ok(Options {
            source: self.source.clone(),
            target,
            delete: !self.ignore_deletes,
            checksum: false,
            whole_file: false,
            dry_run: false,
            jobs: self.jobs as usize,
            fsync: self.fsync,
            xattrs: self.sync_xattrs,
            excluder,
            source_identity: None,
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
    "hooks_dir",
    "metrics_listen",
];

#[derive(Serialize)]
struct Minimal {
    source: PathBuf,
    target: String,
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
    }
}
