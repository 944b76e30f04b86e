//! The session commands: create, start, stop, status, config, delete.

use std::path::Path;

use super::table::{print_status_detail, print_status_table};
use super::CreateArgs;
use crate::config::SessionConfig;
use crate::error::Exit;
use crate::error::{Error, Result};
use crate::monitor;
use crate::session::Session;

pub fn create(home: &Path, a: &CreateArgs) -> Result<()> {
    let mut c = SessionConfig::new(a.source.clone(), a.target.clone());
    for kv in &a.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--set {kv:?}: use KEY=VALUE")))?;
        c.set(k, v)?;
    }
    Session::create(home, &a.name, &c)?;
    Ok(())
}

pub fn start(home: &Path, name: &str, foreground: bool, force: bool) -> Exit {
    let opened = Session::open(home, name).and_then(|s| {
        if force {
            s.record_source(&s.config()?)?;
        }
        Ok(s)
    });
    match opened {
        Ok(s) if foreground => monitor::run_foreground(&s),
        Ok(s) => super::report(monitor::start_background(home, &s).map(|_| ())),
        Err(e) => super::report(Err(e)),
    }
}

pub fn stop(home: &Path, name: &str) -> Result<()> {
    let s = Session::open(home, name)?;
    if s.daemon() == crate::session::Daemon::None {
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
    match (key, value, reset) {
        (_, _, Some(k)) => {
            c.reset(&k)?;
            s.save(&c)
        }
        (Some(k), Some(v), None) => {
            c.set(&k, &v)?;
            s.save(&c)
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
