//! A session's typed configuration (`sessions/NAME/config.toml`) and the
//! engine options it builds: besides `georep sync`'s arguments, the one
//! place that builds [`Options`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::exclude::Excluder;
use crate::lease::LeaseSpec;
use crate::proto::FsyncPolicy;
use crate::replicate::bwlimit::Rate;
use crate::replicate::{DeleteLimits, Options};
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
    /// Most entries one round may delete (a removed directory counts with
    /// everything in it); unset: no count limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delete: Option<u64>,
    /// Largest share of the replica's entries one round may delete, judged
    /// once the replica holds [`crate::replicate::PERCENT_MIN_ENTRIES`]; also
    /// refuses to empty the replica's top level. 100: no share limit.
    #[serde(default = "d::max_delete_percent")]
    pub max_delete_percent: u8,
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
    /// Most bytes per second sent to the slave (rsync's `--bwlimit`
    /// syntax: KiB/s, or K, M, G suffixes); unset or 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bwlimit: Option<Rate>,
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
    /// This node's name among the session's nodes (default: the host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Which node ships: `none` (this one alone), `dir:PATH` (a directory
    /// every node mounts) or `etcd:http://HOST:PORT[,...]`.
    #[serde(default = "d::lease")]
    pub lease: String,
    /// Seconds a lease outlives its holder's last renewal: a passive node
    /// takes over about this long after the active one died.
    #[serde(default = "d::lease_ttl")]
    pub lease_ttl: u64,
    /// The daemon's log level (error, warn, info, debug, trace, or any
    /// `RUST_LOG` directive); `RUST_LOG` itself wins when set.
    #[serde(default = "d::log_level")]
    pub log_level: String,
}

/// Defaults, chosen for sub-second lag.
mod d {
    pub fn batch_max_changes() -> u64 {
        10_000
    }
    pub fn batch_delay_ms() -> u64 {
        10
    }
    pub fn batch_quiet_ms() -> u64 {
        5
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
    pub fn max_delete_percent() -> u8 {
        50
    }
    pub fn jobs() -> u16 {
        4
    }
    pub fn lease() -> String {
        "none".into()
    }
    pub fn lease_ttl() -> u64 {
        2
    }
    pub fn log_level() -> String {
        "info".into()
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

    /// Sets KEY to VALUE (TOML syntax; a bare word is taken as a string, and
    /// as a one-pattern list for `exclude`).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let mut t = self.table();
        let defaults = toml::Table::try_from(SessionConfig::new("/".into(), String::new()))
            .expect("serializes");
        if !defaults.contains_key(key) && !OPTIONAL_KEYS.contains(&key) {
            return Err(Error::Usage(format!(
                "unknown key {key:?} (see `georep config NAME` for the keys)"
            )));
        }
        let mut v = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        // A bare pattern for a list; not a list that failed to parse.
        if let (Some(toml::Value::Array(_)), toml::Value::String(_)) = (defaults.get(key), &v) {
            if !value.trim_start().starts_with('[') {
                v = toml::Value::Array(vec![v]);
            }
        }
        t.insert(key.to_string(), v);
        *self = toml::Value::Table(t)
            .try_into()
            .map_err(|_| Error::Usage(format!("{key} = {value}: {key} wants {}", wants(key))))?;
        if PATH_KEYS.contains(&key) {
            self.absolutize_files()?;
        }
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

    /// Checks what a daemon needs before it runs: values, a source and a
    /// local target that do not contain each other, key files that exist.
    pub fn validate(&self) -> Result<(), Error> {
        self.build()?;
        let exists = |what: &str, p: &Option<PathBuf>| match p {
            Some(p) if !p.is_file() => Err(Error::Usage(format!(
                "{what} {}: no such file",
                p.display()
            ))),
            _ => Ok(()),
        };
        exists("identity", &self.identity)?;
        if !self.accept_new_host_key {
            exists("known_hosts", &self.known_hosts)?;
        }
        Ok(())
    }

    /// Makes the source, a local target and the key files and hooks
    /// directory absolute (against the current directory), so that a
    /// daemon started elsewhere finds them.
    pub fn absolutize(&mut self) -> Result<(), Error> {
        self.source = absolute(&self.source)?;
        self.absolutize_files()?;
        if let Ok(Target::Local(p)) = Target::parse(&self.target) {
            if p.is_relative() {
                let p = absolute(&p)?;
                self.target = p
                    .to_str()
                    .ok_or_else(|| Error::Usage(format!("{}: not UTF-8", p.display())))?
                    .to_string();
            }
        }
        Ok(())
    }

    /// `identity`, `known_hosts` and `hooks_dir`, made absolute.
    fn absolutize_files(&mut self) -> Result<(), Error> {
        for p in [
            &mut self.identity,
            &mut self.known_hosts,
            &mut self.hooks_dir,
        ]
        .into_iter()
        .flatten()
        {
            *p = absolute(p)?;
        }
        Ok(())
    }

    /// The options a connection's rounds run with; the first one after
    /// [`force_deletes_once`] carries the override.
    pub fn options(&self) -> Result<Options, Error> {
        let mut o = self.build()?;
        o.limits.override_once = FORCE_DELETES.swap(false, Relaxed);
        Ok(o)
    }

    fn build(&self) -> Result<Options, Error> {
        let bad = Error::Usage;
        let target = Target::parse(&self.target).map_err(bad)?;
        crate::target::check_nesting(&self.source, &target).map_err(bad)?;
        let excluder = Excluder::new(&self.exclude, &[]).map_err(Error::Usage)?;
        if self.jobs == 0 || self.batch_max_changes == 0 {
            return Err(Error::Usage(
                "jobs and batch_max_changes must be positive".into(),
            ));
        }
        self.lease_spec()?;
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| Error::Usage(format!("log_level {:?}: {e}", self.log_level)))?;
        crate::lease::valid_node(&self.node_name()).map_err(Error::Usage)?;
        if !(1..=3600).contains(&self.lease_ttl) {
            return Err(Error::Usage("lease_ttl is 1 to 3600 seconds".into()));
        }
        if self.max_delete_percent > 100 {
            return Err(Error::Usage("max_delete_percent is at most 100".into()));
        }
        let whole_file = target.whole_files_by_default();
        Ok(Options {
            source: self.source.clone(),
            target,
            delete: !self.ignore_deletes,
            limits: DeleteLimits {
                max: self.max_delete,
                percent: (self.max_delete_percent < 100).then_some(self.max_delete_percent),
                override_once: false,
            },
            checksum: false,
            whole_file,
            dry_run: false,
            jobs: self.jobs as usize,
            fsync: self.fsync,
            xattrs: self.sync_xattrs,
            excluder,
            filters: Default::default(),
            bwlimit: self.bwlimit.as_ref().and_then(Rate::bytes_per_second),
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
            // Set per connection by the daemon, from its lease.
            fence: Default::default(),
        })
    }

    pub fn lease_spec(&self) -> Result<LeaseSpec, Error> {
        LeaseSpec::parse(&self.lease).map_err(Error::Usage)
    }

    /// This node's name: the `node` key, else the host name.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned()
        })
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl)
    }

    pub fn batch_delay(&self) -> Duration {
        Duration::from_millis(self.batch_delay_ms)
    }

    pub fn batch_quiet(&self) -> Duration {
        Duration::from_millis(self.batch_quiet_ms)
    }
}

/// Set by `georep start --force` in the daemon it starts: the first engine
/// options built after it (the first connection) may pass the deletion
/// limits once, so an operator can let through a deletion the session halted on.
static FORCE_DELETES: AtomicBool = AtomicBool::new(false);

/// Lets the next connection's first round pass the deletion limits.
pub fn force_deletes_once() {
    FORCE_DELETES.store(true, Relaxed);
}

/// What a key's value must be, for an error message.
fn wants(key: &str) -> &'static str {
    let defaults =
        toml::Table::try_from(SessionConfig::new("/".into(), String::new())).expect("serializes");
    match (key, defaults.get(key)) {
        ("fsync", _) => "file, batch or none",
        ("bwlimit", _) => {
            "a rate in KiB/s, or with a suffix K, M or G (512, 1.5M, 10MB), \
             at least 512 bytes/s; 0 for no limit"
        }
        ("port" | "max_delete", _) | (_, Some(toml::Value::Integer(_))) => "a number",
        (_, Some(toml::Value::Boolean(_))) => "a boolean (true or false)",
        (_, Some(toml::Value::Array(_))) => "a list of strings, e.g. [\"*.tmp\", \"build/\"]",
        _ => "a string",
    }
}

/// Keys naming files or directories of this machine, stored absolute (the
/// daemon runs from wherever `start` was typed, or from systemd's `/`).
const PATH_KEYS: &[&str] = &["identity", "known_hosts", "hooks_dir"];

/// `p` against the current directory.
fn absolute(p: &std::path::Path) -> Result<PathBuf, Error> {
    std::path::absolute(p).map_err(|e| Error::Usage(format!("{}: {e}", p.display())))
}

/// Keys that are absent from a default config (unset options).
const OPTIONAL_KEYS: &[&str] = &[
    "max_delete",
    "bwlimit",
    "identity",
    "known_hosts",
    "port",
    "user",
    "ssh_command",
    "remote_command",
    "hooks_dir",
    "metrics_listen",
    "node",
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
        assert_eq!(c.batch_delay_ms, 10);
        c.set("batch_delay_ms", "250").unwrap();
        assert_eq!(c.get("batch_delay_ms").as_deref(), Some("250"));
        c.set("exclude", r#"["*.tmp", "build/"]"#).unwrap();
        assert_eq!(c.exclude, vec!["*.tmp", "build/"]);
        c.set("user", "backup").unwrap();
        assert_eq!(c.user.as_deref(), Some("backup"));
        c.reset("batch_delay_ms").unwrap();
        assert_eq!(c.batch_delay_ms, 10);
        assert!(c.set("nope", "1").is_err());
        assert!(c.set("jobs", "many").is_err());
        assert!(c.set("fsync", "sometimes").is_err());
        c.set("bwlimit", "10M").unwrap();
        assert_eq!(c.options().unwrap().bwlimit, Some(10 << 20));
        c.set("bwlimit", "512").unwrap();
        assert_eq!(c.get("bwlimit").as_deref(), Some("512"));
        let e = c.set("bwlimit", "fast").unwrap_err().to_string();
        assert!(e.contains("bwlimit = fast") && e.contains("KiB/s"), "{e}");
        assert!(c.set("bwlimit", "100b").is_err(), "below rsync's minimum");
        c.reset("bwlimit").unwrap();
        assert_eq!(c.options().unwrap().bwlimit, None);
        c.set("hooks_dir", "rel/hooks").unwrap();
        let hooks = c.hooks_dir.clone().unwrap();
        assert!(
            hooks.is_absolute() && hooks.ends_with("rel/hooks"),
            "{hooks:?}"
        );
    }
}
