//! The session commands: create, start, stop, status, config, delete.

use std::path::Path;

use super::table::{print_status_detail, print_status_table};
use super::CreateArgs;
use crate::config::SessionConfig;
use crate::error::Exit;
use crate::error::{state, Error, Result};
use crate::monitor;
use crate::session::{Daemon, Session};

/// The marker `start --force` leaves for the daemon it starts: let the
/// next round that a deletion limit would halt through, once.
const FORCE_MARKER: &str = "force-deletes";

pub fn create(home: &Path, a: &CreateArgs) -> Result<()> {
    let mut c = SessionConfig::new(a.source.clone(), a.target.clone());
    for kv in &a.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--set {kv:?}: use KEY=VALUE")))?;
        if k == "source" || k == "target" {
            return Err(Error::Usage(format!(
                "--set {k}=...: the {k} is the {} argument of `georep create NAME SOURCE TARGET`",
                k.to_uppercase()
            )));
        }
        c.set(k, v)?;
    }
    c.absolutize()?;
    Session::create(home, &a.name, &c)?;
    Ok(())
}

pub fn start(home: &Path, name: &str, foreground: bool, force: bool) -> Exit {
    let opened = Session::open(home, name).and_then(|s| {
        s.make_private(home)?;
        let marker = s.dir.join(FORCE_MARKER);
        if force && s.daemon() == Daemon::None {
            s.record_source(&s.config()?)?;
            std::fs::write(&marker, b"").map_err(state(marker.display().to_string()))?;
        }
        // The daemon (this process, when foreground) takes the marker.
        if foreground && std::fs::remove_file(&marker).is_ok() {
            crate::config::force_deletes_once();
        }
        Ok(s)
    });
    match opened {
        Ok(s) if foreground => monitor::run_foreground(&s),
        Ok(s) => {
            let started = monitor::start_background(home, &s).map(|_| ());
            if started.is_err() {
                let _ = std::fs::remove_file(s.dir.join(FORCE_MARKER));
            }
            super::report(started)
        }
        Err(e) => super::report(Err(e)),
    }
}

pub fn stop(home: &Path, name: &str) -> Result<()> {
    let s = Session::open(home, name)?;
    if s.daemon() == Daemon::None {
        return Err(Error::Session(format!("session {name:?} is not running")));
    }
    monitor::stop(&s)
}

pub fn status(home: &Path, name: Option<&str>, json: bool, detail: bool) -> Result<()> {
    let sessions = match name {
        Some(n) => vec![Session::open(home, n)?],
        None => Session::all(home),
    };
    let list = sessions
        .iter()
        .map(crate::control::status)
        .collect::<Result<Vec<_>>>()?;
    if json {
        let out = if name.is_some() {
            serde_json::to_string_pretty(&list[0])
        } else {
            serde_json::to_string_pretty(&list)
        };
        println!("{}", out.expect("status serializes"));
    } else if detail {
        print_status_detail(&list);
    } else {
        print_status_table(&list);
    }
    Ok(())
}

pub fn config(
    home: &Path,
    name: &str,
    key: Option<String>,
    value: Option<String>,
    reset: Option<String>,
) -> Result<()> {
    let s = Session::open(home, name)?;
    let mut c = s.config()?;
    let running = s.daemon() != Daemon::None;
    let changing = reset.as_deref().or(value.as_ref().and(key.as_deref()));
    if let Some(k) = changing {
        if running && (k == "source" || k == "target") {
            return Err(Error::Session(format!(
                "session {name:?} is running: its {k} changes only while it is stopped \
                 (georep stop {name} first)"
            )));
        }
    }
    let restart_note = |k: &str| {
        if running {
            eprintln!(
                "georep: {k} saved; the running daemon takes it at its next start \
                 (georep stop {name} && georep start {name})"
            );
        }
    };
    match (key, value, reset) {
        (_, _, Some(k)) => {
            c.reset(&k)?;
            s.save(&c)?;
            restart_note(&k);
            Ok(())
        }
        (Some(k), Some(v), None) => {
            c.set(&k, &v)?;
            if k == "source" || k == "target" {
                c.absolutize()?;
                c.validate()?;
            }
            s.save(&c)?;
            if k == "source" {
                s.record_source(&c)?;
            }
            restart_note(&k);
            Ok(())
        }
        (Some(k), None, None) if k.contains('=') => {
            let (k, v) = k.split_once('=').unwrap_or_default();
            Err(Error::Usage(format!(
                "the syntax is `georep config NAME KEY VALUE`: georep config {name} {k} {v}"
            )))
        }
        (Some(k), None, None) => match c.get(&k) {
            Some(v) => {
                println!("{v}");
                Ok(())
            }
            None => Err(Error::Usage(format!("{k} is not set"))),
        },
        (None, _, None) => {
            print!("{}", toml::to_string(&c).expect("config serializes"));
            Ok(())
        }
    }
}

pub fn delete(home: &Path, name: &str) -> Result<()> {
    Session::open(home, name)?.delete()
}
