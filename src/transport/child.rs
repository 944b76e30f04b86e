//! A program whose standard input and output carry the protocol.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{Link, Transport};
use crate::error::{Error, Result};

/// A program whose stdin/stdout carry the protocol (a local slave, or `ssh`).
pub struct ChildProcess {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Extra argument given as an OS string (a local root path need not be UTF-8).
    pub last: Option<std::ffi::OsString>,
    /// The program is an SSH client: its exit status 255 means the connection failed.
    pub is_ssh: bool,
}

impl Transport for ChildProcess {
    fn connect(&self) -> Result<Link> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        if let Some(l) = &self.last {
            cmd.arg(l);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", self.program.display()), e))?;
        let reader = Box::new(child.stdout.take().expect("piped"));
        let writer = Box::new(child.stdin.take().expect("piped"));
        let name = self.program.display().to_string();
        let is_ssh = self.is_ssh;
        let ending = Box::new(move || {
            let status = child
                .wait()
                .map_err(|e| Error::io("waiting for the slave", e))?;
            match status.code() {
                Some(0) => Ok(()),
                Some(255) if is_ssh => Err(Error::ssh_temporary(format!(
                    "{name} failed to connect or authenticate (exit status 255)"
                ))),
                _ => Err(Error::Disconnected(format!("{name} exited with {status}"))),
            }
        });
        Ok(Link {
            reader,
            writer,
            ending,
        })
    }
}
