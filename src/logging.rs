//! The daemon's log, through `tracing`: levels, targets, RFC 3339 times.
//!
//! The level comes from `RUST_LOG` when set (any `EnvFilter` directive),
//! else from the session key `log_level`. Where it goes:
//! - started by `georep start`: the session's `daemon.log`, which the daemon
//!   opens itself (the path comes in `GEOREP_LOG_FILE`) so that SIGHUP can
//!   reopen it after logrotate moved it;
//! - `start --foreground` under systemd (stderr is the `JOURNAL_STREAM`):
//!   stderr without timestamps, since journald adds its own;
//! - otherwise stderr, with timestamps.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::error::Error;

/// The variable through which `georep start` tells its daemon where to log.
pub const LOG_FILE_ENV: &str = "GEOREP_LOG_FILE";

/// A log file that can be reopened under its name (after rotation).
#[derive(Clone)]
struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl LogFile {
    fn open(path: PathBuf) -> io::Result<LogFile> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(LogFile {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }

    fn reopen(&self) -> io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        *self.file.lock().unwrap() = f;
        Ok(())
    }
}

/// One event's line, written whole under the lock.
struct Line<'a> {
    file: &'a Mutex<File>,
    buf: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        let _ = self.file.lock().unwrap().write_all(&self.buf);
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = Line<'a>;
    fn make_writer(&'a self) -> Line<'a> {
        Line {
            file: &self.file,
            buf: Vec::with_capacity(256),
        }
    }
}

/// The filter: `RUST_LOG` if set, else `level` (the session's `log_level`).
pub fn filter(level: &str) -> Result<EnvFilter, Error> {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => {
            EnvFilter::try_new(&v).map_err(|e| Error::Usage(format!("RUST_LOG={v:?}: {e}")))
        }
        _ => {
            EnvFilter::try_new(level).map_err(|e| Error::Usage(format!("log_level {level:?}: {e}")))
        }
    }
}

/// Whether stderr is the journal stream systemd set up (`JOURNAL_STREAM`
/// names its device and inode).
fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(io::stderr().as_fd()) else {
        return false;
    };
    dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino)
}

/// Sets up the daemon's log; call once, before its first message.
pub fn init_daemon(level: &str) -> Result<(), Error> {
    let filter = filter(level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let set = match std::env::var_os(LOG_FILE_ENV) {
        Some(path) => {
            let path = PathBuf::from(path);
            let file = LogFile::open(path.clone())
                .map_err(|e| Error::io(format!("opening the log {}", path.display()), e))?;
            reopen_on_sighup(Some(file.clone()));
            builder.with_writer(file).try_init()
        }
        None if stderr_is_journal() => {
            reopen_on_sighup(None);
            builder.without_time().with_writer(io::stderr).try_init()
        }
        None => {
            reopen_on_sighup(None);
            builder.with_writer(io::stderr).try_init()
        }
    };
    // Already set (a test calling twice): keep the first.
    let _ = set;
    Ok(())
}

/// SIGHUP reopens the log under its name: `logrotate` moves the file, then
/// signals (or use `copytruncate`, which needs nothing). A daemon logging to
/// stderr has nothing to reopen: SIGHUP does not stop it either.
fn reopen_on_sighup(file: Option<LogFile>) {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        for _ in signals.forever() {
            let Some(file) = &file else {
                tracing::info!("SIGHUP: logging to stderr, nothing to reopen");
                continue;
            };
            match file.reopen() {
                Ok(()) => tracing::info!("reopened the log {}", file.path.display()),
                Err(e) => tracing::error!("reopening the log {}: {e}", file.path.display()),
            }
        }
    });
}
