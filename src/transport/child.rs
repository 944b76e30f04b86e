//! A program whose standard input and output carry the protocol.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Link, Transport};
use crate::error::{Error, Exit, Result};

/// Children running now, so that an interrupted run can stop them first.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Asks every child (a local slave, an ssh client) to stop and waits
/// (bounded) until it has: a local slave removes its temporaries on SIGTERM.
pub fn stop_children() {
    let pids = CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for &pid in &pids {
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in pids {
        let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
            continue;
        };
        while Instant::now() < deadline {
            match rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG) {
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                // Reaped here or by the thread that waits for it.
                _ => break,
            }
        }
    }
}

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
            .map_err(|e| self.spawn_error(e))?;
        let pid = child.id();
        CHILDREN.lock().unwrap().push(pid);
        let reader = child.stdout.take().expect("piped");
        let writer = child.stdin.take().expect("piped");
        super::widen_pipe(&writer);
        let (reader, writer) = (Box::new(reader), Box::new(writer));
        let name = self.program.display().to_string();
        let is_ssh = self.is_ssh;
        let ending = Box::new(move || {
            let status = child.wait();
            CHILDREN.lock().unwrap().retain(|&p| p != pid);
            let status = status.map_err(|e| Error::io("waiting for the slave", e))?;
            match status.code() {
                Some(0) => Ok(()),
                // The shell's "command not found" (ssh passes the remote's status on).
                Some(127) if is_ssh => Err(Error::Remote {
                    code: Exit::Protocol as u8,
                    message: "the remote georep command was not found (exit status 127): \
                        install georep on the slave or name it with --remote-command"
                        .into(),
                }),
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

impl ChildProcess {
    /// A program that cannot be started: nothing will change by retrying.
    fn spawn_error(&self, e: std::io::Error) -> Error {
        let name = self.program.display();
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "command not found".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        if self.is_ssh {
            Error::ssh(format!("{name}: {why} (--ssh-command)"))
        } else {
            Error::Protocol(format!("{name}: {why} (--remote-command)"))
        }
    }
}
