//! Transports: how the master reaches a `georep slave`. Every run goes
//! through the protocol, local targets included (DESIGN.md section 1).
//! Three implementations: a local child process, russh (the default for
//! SSH targets) and an external command such as `ssh` (rsync's `-e`).

pub mod ssh;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::target::{Place, Target};

/// Waits for the slave to exit; an error carries its exit status.
pub type Ending = Box<dyn FnOnce() -> Result<()> + Send>;

/// A duplex byte stream to a slave, plus a way to learn how it ended.
pub struct Link {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
    pub ending: Ending,
}

pub trait Transport {
    fn connect(&self) -> Result<Link>;
}

/// Options for reaching SSH targets.
#[derive(Clone, Debug, Default)]
pub struct SshOptions {
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub accept_new_host_key: bool,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// External command instead of russh, split like a shell would.
    pub ssh_command: Option<String>,
    /// The georep binary on the slave.
    pub remote_command: Option<String>,
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
                Some(255) if is_ssh => Err(Error::Ssh {
                    message: format!("{name} failed to connect or authenticate (exit status 255)"),
                }),
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

/// The command line run on the slave host.
pub fn remote_command_line(remote: Option<&str>, place: &Place) -> String {
    let program = remote.unwrap_or("georep");
    match place {
        Place::Path(p) => format!(
            "{program} slave --root {}",
            shell_words::quote(&p.to_string_lossy())
        ),
        Place::Volume(v) => format!("{program} slave --volume {}", shell_words::quote(v)),
    }
}

/// Picks the transport for a target.
pub fn for_target(target: &Target, ssh: &SshOptions) -> Result<Box<dyn Transport>> {
    match target {
        Target::Local(root) => Ok(Box::new(ChildProcess {
            program: match &ssh.remote_command {
                Some(p) => PathBuf::from(p),
                None => std::env::current_exe()
                    .map_err(|e| Error::io("locating the georep binary", e))?,
            },
            args: vec!["slave".into(), "--root".into()],
            last: Some(root.clone().into_os_string()),
            is_ssh: false,
        })),
        Target::Ssh {
            user,
            host,
            port,
            place,
        } => {
            let user = ssh.user.clone().or_else(|| user.clone());
            let port = ssh.port.or(*port);
            let remote = remote_command_line(ssh.remote_command.as_deref(), place);
            match &ssh.ssh_command {
                Some(cmd) => {
                    let mut words = shell_words::split(cmd).map_err(|e| Error::Ssh {
                        message: format!("--ssh-command: {e}"),
                    })?;
                    if words.is_empty() {
                        return Err(Error::Ssh {
                            message: "--ssh-command is empty".into(),
                        });
                    }
                    let program = PathBuf::from(words.remove(0));
                    if let Some(p) = port {
                        words.extend(["-p".into(), p.to_string()]);
                    }
                    if let Some(u) = user {
                        words.extend(["-l".into(), u]);
                    }
                    words.extend(["--".into(), host.clone(), remote]);
                    Ok(Box::new(ChildProcess {
                        program,
                        args: words,
                        last: None,
                        is_ssh: true,
                    }))
                }
                None => Ok(Box::new(ssh::Russh {
                    host: host.clone(),
                    port: port.unwrap_or(22),
                    user: user.unwrap_or_else(default_user),
                    command: remote,
                    opts: ssh.clone(),
                })),
            }
        }
    }
}

fn default_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            if rustix::process::geteuid().is_root() {
                "root".into()
            } else {
                rustix::process::geteuid().as_raw().to_string()
            }
        })
}
