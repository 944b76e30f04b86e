//! The commands that talk to a session's daemon through its control
//! socket: pause, resume, checkpoint, rescan (and status, through
//! cli/session.rs).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::control::{self, Request};
use crate::error::{Error, Result};
use crate::session::{Daemon, Session};

pub fn pause(home: &Path, name: &str, pause: bool) -> Result<()> {
    let s = Session::open(home, name)?;
    let req = if pause {
        Request::Pause
    } else {
        Request::Resume
    };
    control::command(&s, &req)?;
    if s.daemon() == Daemon::None {
        let what = if pause { "paused" } else { "resumed" };
        eprintln!("georep: session {name} is not running; it starts {what}");
    }
    Ok(())
}

/// `checkpoint NAME [now|UNIX_TIME] [--wait [--timeout S]]`.
pub fn checkpoint(
    home: &Path,
    name: &str,
    at: Option<&str>,
    wait: bool,
    timeout: Option<f64>,
) -> Result<()> {
    let s = Session::open(home, name)?;
    let time =
        match at {
            None | Some("now") => None,
            Some(t) => Some(t.parse::<f64>().map_err(|_| {
                Error::Usage(format!("checkpoint {t:?}: give `now` or a Unix time"))
            })?),
        };
    control::time_ns(time)?;
    let reply = control::command(&s, &Request::Checkpoint { time })?;
    let cp = reply
        .checkpoint
        .ok_or_else(|| Error::Session("the daemon did not report the checkpoint".into()))?;
    println!("checkpoint set at {:.3}", cp.time);
    if !wait {
        return Ok(());
    }
    if s.daemon() == Daemon::None {
        eprintln!("georep: session {name} is not running; the checkpoint completes once it runs");
    }
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    loop {
        let st = control::status(&s)?;
        if st.checkpoint_completed && st.checkpoint_time == Some(cp.time) {
            println!(
                "checkpoint completed at {:.3}",
                st.checkpoint_completion_time.unwrap_or_default()
            );
            return Ok(());
        }
        if st.checkpoint_time != Some(cp.time) {
            return Err(Error::Session(
                "the checkpoint was replaced by a newer one".into(),
            ));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::Timeout(format!(
                "checkpoint of {:.3} not completed within {} s",
                cp.time,
                timeout.unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `rescan NAME [PATH]`: PATH relative to the source, or absolute inside it.
pub fn rescan(home: &Path, name: &str, path: Option<&Path>) -> Result<()> {
    let s = Session::open(home, name)?;
    let path = match path {
        None => None,
        Some(p) => Some(below_source(&s.config()?.source, p)?),
    };
    control::command(&s, &Request::Rescan { path })?;
    Ok(())
}

fn below_source(source: &Path, p: &Path) -> Result<Vec<u8>> {
    let rel = if p.is_absolute() {
        p.strip_prefix(source).map_err(|_| {
            Error::Usage(format!(
                "rescan {}: not inside the source {}",
                p.display(),
                source.display()
            ))
        })?
    } else {
        p
    };
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(n) => parts.push(n.as_bytes()),
            std::path::Component::CurDir => {}
            _ => {
                return Err(Error::Usage(format!(
                    "rescan {}: give a path below the source, without ..",
                    p.display()
                )))
            }
        }
    }
    Ok(parts.join(&b'/'))
}
