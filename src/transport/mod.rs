//! Transports: how the master reaches a `georep slave`. Every run goes
//! through the protocol, local targets included (DESIGN.md section 1).
//! Implementations: a local child process or an external command such as
//! `ssh` (rsync's `-e`) in [`child`], russh (the default for SSH targets) in
//! [`ssh`], and the slave on a thread of this process in [`memory`] (for
//! engine tests that need no second process).

pub mod child;
pub mod memory;
pub mod ssh;

use std::io::{Read, Write};
use std::path::PathBuf;

pub use child::ChildProcess;

use crate::error::{Error, Result};
use crate::target::{Place, Target};

/// Abandons the run (SIGINT, SIGTERM): stops child slaves and ssh clients,
/// waiting for them, and removes the named temporaries of an in-process
/// slave. A remote slave sees the connection end and removes its own.
pub fn abandon() {
    child::stop_children();
    crate::fsutil::remove_live_temporaries();
}

/// Bytes a pipe between master and slave holds (the most an unprivileged
/// process may ask for by default).
const PIPE_SIZE: usize = 1 << 20;

/// Widens a pipe from the kernel's 64 KiB: a 256 KiB data frame then
/// crosses in one write and one read instead of four of each, every one
/// waking the other side. Not a pipe (a socket under sshd), or refused: as
/// it was.
pub fn widen_pipe(fd: impl std::os::fd::AsFd) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, PIPE_SIZE);
}

/// Waits for the slave to exit; an error carries its exit status.
pub type Ending = Box<dyn FnOnce() -> Result<()> + Send>;

/// A duplex byte stream to a slave, plus a way to learn how it ended.
pub struct Link {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Sink>,
    pub ending: Ending,
}

/// The writing half of a link.
pub trait Sink: Write + Send {
    /// Writes `buf` whole. A sink that queues buffers (the SSH channel)
    /// takes it as it is instead of copying it.
    fn write_vec(&mut self, buf: Vec<u8>) -> std::io::Result<()> {
        self.write_all(&buf)
    }
}

impl Sink for std::process::ChildStdin {}

impl Sink for Box<dyn Sink> {
    fn write_vec(&mut self, buf: Vec<u8>) -> std::io::Result<()> {
        (**self).write_vec(buf)
    }
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
                    let mut words = shell_words::split(cmd)
                        .map_err(|e| Error::Usage(format!("--ssh-command: {e}")))?;
                    if words.is_empty() {
                        return Err(Error::Usage("--ssh-command is empty".into()));
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
