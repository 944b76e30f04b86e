//! The per-test harness: a temporary directory with `src/` and `dst/`, and a runner for
//! `georep sync --json` that returns exit code, parsed summary and stderr.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

use super::fs::{mkdir, show};
use super::process::{georep, output};

pub struct TestDir {
    _tmp: TempDir,
    /// The temporary directory; `src` and `dst` are in it.
    pub root: PathBuf,
    /// An empty source directory, created.
    pub src: PathBuf,
    /// The target path, not created: `sync` creates it.
    pub dst: PathBuf,
}

impl TestDir {
    /// A fresh directory named after the test. With `GEOREP_IT_KEEP` set in the
    /// environment it is kept after the test, for a post-mortem.
    pub fn new(name: &str) -> TestDir {
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!("georep-it-{name}-"))
            .tempdir()
            .expect("create a temporary directory");
        if std::env::var_os("GEOREP_IT_KEEP").is_some() {
            tmp.disable_cleanup(true);
            eprintln!("{name}: keeping {}", tmp.path().display());
        }
        let root = tmp.path().to_path_buf();
        let src = root.join("src");
        mkdir(&src);
        TestDir {
            _tmp: tmp,
            dst: root.join("dst"),
            src,
            root,
        }
    }

    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// `georep sync --json ARGS... SRC DST`.
    pub fn sync(&self, args: &[&str]) -> SyncRun {
        self.sync_between(args, &self.src, &self.dst)
    }

    /// `georep sync --json ARGS... SOURCE TARGET`, for other operands than `src`, `dst`.
    pub fn sync_between(
        &self,
        args: &[&str],
        source: impl AsRef<OsStr>,
        target: impl AsRef<OsStr>,
    ) -> SyncRun {
        let mut cmd = self.sync_command(args, source, target);
        let out = output(&mut cmd);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        SyncRun {
            command: format!("{cmd:?}"),
            code: out.status.code(),
            stats: Stats::parse(&stdout),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The command [`TestDir::sync_between`] runs, to spawn it yourself (see
    /// `support::process`).
    pub fn sync_command(
        &self,
        args: &[&str],
        source: impl AsRef<OsStr>,
        target: impl AsRef<OsStr>,
    ) -> Command {
        let mut cmd = georep();
        cmd.current_dir(&self.root)
            .arg("sync")
            .arg("--json")
            .args(args)
            .arg(source)
            .arg(target);
        cmd
    }

    /// `sync` that must succeed: exit 0 and no errors in the summary.
    pub fn sync_ok(&self, args: &[&str]) -> Stats {
        let run = self.sync(args);
        run.assert_code(0);
        let stats = run.stats();
        assert_eq!(stats.errors, 0, "errors reported\n{run}");
        stats.clone()
    }
}

/// One finished `georep sync` run.
pub struct SyncRun {
    pub command: String,
    /// None when killed by a signal.
    pub code: Option<i32>,
    /// The `--json` summary, when stdout ends with one.
    pub stats: Option<Stats>,
    pub stdout: String,
    pub stderr: String,
}

impl SyncRun {
    pub fn assert_code(&self, code: i32) -> &SyncRun {
        assert_eq!(self.code, Some(code), "unexpected exit status\n{self}");
        self
    }

    pub fn stats(&self) -> &Stats {
        self.stats
            .as_ref()
            .unwrap_or_else(|| panic!("no JSON summary on stdout\n{self}"))
    }
}

impl fmt::Display for SyncRun {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "command: {}\nexit code: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

/// The `--json` summary of a run.
#[derive(Clone, Debug)]
pub struct Stats {
    pub files_total: u64,
    pub files_transferred: u64,
    pub entries_deleted: u64,
    pub bytes_literal: u64,
    pub bytes_matched: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// A count; a list of messages counts as its length.
    pub errors: u64,
    pub elapsed_seconds: f64,
    /// The whole object, for keys beyond the contract.
    pub json: Value,
}

impl Stats {
    /// Parses the JSON object that ends stdout: the whole output, or else the last
    /// line that opens an object (earlier lines may be progress or `-v` output).
    fn parse(stdout: &str) -> Option<Stats> {
        let text = stdout.trim();
        let json: Value = serde_json::from_str(text).ok().or_else(|| {
            let start = text.rfind("\n{")? + 1;
            serde_json::from_str(&text[start..]).ok()
        })?;
        let count = |key: &str| match &json[key] {
            Value::Array(items) => Some(items.len() as u64),
            v => v.as_u64(),
        };
        Some(Stats {
            files_total: count("files_total")?,
            files_transferred: count("files_transferred")?,
            entries_deleted: count("entries_deleted")?,
            bytes_literal: count("bytes_literal")?,
            bytes_matched: count("bytes_matched")?,
            bytes_sent: count("bytes_sent")?,
            bytes_received: count("bytes_received")?,
            errors: count("errors")?,
            elapsed_seconds: json["elapsed_seconds"].as_f64()?,
            json,
        })
    }
}

/// Panics unless `stats` describe a run that found nothing to do.
pub fn assert_noop(stats: &Stats) {
    assert!(
        stats.files_transferred == 0 && stats.entries_deleted == 0 && stats.bytes_literal == 0,
        "expected a no-op run, got {}",
        stats.json
    );
}

/// Panics unless `path` does not exist (not following symlinks).
pub fn assert_absent(path: &Path) {
    assert!(
        std::fs::symlink_metadata(path).is_err(),
        "{} exists",
        show(path)
    );
}
