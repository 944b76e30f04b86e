//! What `georep sync` draws on a terminal: the progress bar, `-v` or `-i`
//! lines and error lines.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::itemize;
use crate::confine::show;
use crate::replicate::observe::{Item, Observer};

/// What `georep sync` prints for each change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    None,
    /// `-v`: a tag and the path.
    Verbose,
    /// `-i`: rsync's itemized line; `remote`: the target is across SSH.
    Itemize {
        remote: bool,
    },
}

/// `georep sync`'s observer: `-v` or `-i` lines, warnings and errors on
/// stderr, a progress bar when stderr is a terminal.
pub struct Terminal {
    lines: Lines,
    /// Change lines go to stdout unless stdout carries the JSON summary.
    lines_to_stderr: bool,
    /// `-q`: no warnings either (errors only).
    quiet: bool,
    bar: Option<ProgressBar>,
}

impl Terminal {
    pub fn new(lines: Lines, json: bool, progress: bool, quiet: bool) -> Terminal {
        let progress = progress && !quiet;
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
            lines,
            lines_to_stderr: json,
            quiet,
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
    fn change(&self, item: &Item<'_>) {
        let line = match self.lines {
            Lines::None => return,
            Lines::Verbose => format!("{} {}", item.what.tag(), show(item.path)),
            Lines::Itemize { remote } => itemize::line(item, remote),
        };
        self.print(self.lines_to_stderr, &line);
    }

    fn error(&self, msg: &str) {
        self.print(true, &format!("georep: {msg}"));
    }

    fn warn(&self, msg: &str) {
        if !self.quiet {
            self.print(true, &format!("georep: warning: {msg}"));
        }
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
