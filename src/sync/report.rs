//! What a run tells the user: counters for the summary, `-v` lines, error
//! lines and the progress bar (only on a terminal).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::confine::show;

#[derive(Default)]
pub struct Counters {
    pub files_total: AtomicU64,
    pub files_transferred: AtomicU64,
    pub entries_created: AtomicU64,
    pub entries_deleted: AtomicU64,
    pub meta_updated: AtomicU64,
    pub bytes_literal: AtomicU64,
    pub bytes_matched: AtomicU64,
    pub errors: AtomicU64,
}

/// The `--json` summary.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub files_total: u64,
    pub files_transferred: u64,
    pub entries_created: u64,
    pub entries_deleted: u64,
    pub meta_updated: u64,
    pub bytes_literal: u64,
    pub bytes_matched: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub errors: u64,
    pub elapsed_seconds: f64,
    pub dry_run: bool,
}

pub struct Reporter {
    pub counters: Counters,
    verbose: bool,
    /// `-v` lines go to stdout unless stdout carries the JSON summary.
    verbose_to_stderr: bool,
    bar: Option<ProgressBar>,
    pub started: Instant,
    /// The latest entry failure, for a status line.
    last_error: std::sync::Mutex<Option<String>>,
}

impl Reporter {
    pub fn new(verbose: bool, json: bool, progress: bool) -> Reporter {
        let bar = (progress && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(5));
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            b
        });
        Reporter {
            counters: Counters::default(),
            verbose,
            verbose_to_stderr: json,
            bar,
            started: Instant::now(),
            last_error: Default::default(),
        }
    }

    fn print(&self, to_stderr: bool, line: &str) {
        let out = || {
            if to_stderr {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            } else {
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
        };
        match &self.bar {
            Some(b) => b.suspend(out),
            None => out(),
        }
    }

    /// A `-v` line: a one-character tag and the path.
    pub fn item(&self, tag: char, path: &[u8]) {
        if self.verbose {
            self.print(self.verbose_to_stderr, &format!("{tag} {}", show(path)));
        }
    }

    /// A failure of one entry: counted, printed, the run goes on.
    pub fn error(&self, msg: &str) {
        self.counters.errors.fetch_add(1, Relaxed);
        *self.last_error.lock().unwrap() = Some(msg.to_string());
        self.print(true, &format!("georep: {msg}"));
    }

    /// The latest entry failure reported with [`Reporter::error`].
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    pub fn warn(&self, msg: &str) {
        self.print(true, &format!("georep: warning: {msg}"));
    }

    /// Bytes found to transfer.
    pub fn planned(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc_length(bytes);
            b.set_message(format!(
                "{} files",
                self.counters.files_transferred.load(Relaxed)
            ));
        }
    }

    /// Bytes transferred.
    pub fn progressed(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    pub fn summary(&self, bytes_sent: u64, bytes_received: u64, dry_run: bool) -> Summary {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        let c = &self.counters;
        Summary {
            files_total: c.files_total.load(Relaxed),
            files_transferred: c.files_transferred.load(Relaxed),
            entries_created: c.entries_created.load(Relaxed),
            entries_deleted: c.entries_deleted.load(Relaxed),
            meta_updated: c.meta_updated.load(Relaxed),
            bytes_literal: c.bytes_literal.load(Relaxed),
            bytes_matched: c.bytes_matched.load(Relaxed),
            bytes_sent,
            bytes_received,
            errors: c.errors.load(Relaxed),
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
            dry_run,
        }
    }
}
