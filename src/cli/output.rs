//! What `georep sync` draws on a terminal: the progress bar, `-v` lines
//! and error lines.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::confine::show;
use crate::replicate::observe::Observer;

/// `georep sync`'s observer: `-v` lines, errors on stderr, a progress bar
/// when stderr is a terminal.
pub struct Terminal {
    verbose: bool,
    /// `-v` lines go to stdout unless stdout carries the JSON summary.
    verbose_to_stderr: bool,
    bar: Option<ProgressBar>,
}

impl Terminal {
    pub fn new(verbose: bool, json: bool, progress: bool) -> Terminal {
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
        Terminal {
            verbose,
            verbose_to_stderr: json,
            bar,
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
}

impl Observer for Terminal {
    fn item(&self, tag: char, path: &[u8]) {
        if self.verbose {
            self.print(self.verbose_to_stderr, &format!("{tag} {}", show(path)));
        }
    }

    fn error(&self, msg: &str) {
        self.print(true, &format!("georep: {msg}"));
    }

    fn warn(&self, msg: &str) {
        self.print(true, &format!("georep: warning: {msg}"));
    }

    fn planned(&self, bytes: u64, files_so_far: u64) {
        if let Some(b) = &self.bar {
            b.inc_length(bytes);
            b.set_message(format!("{files_so_far} files"));
        }
    }

    fn progressed(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
