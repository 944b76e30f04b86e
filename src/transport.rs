//! Transports: how the master reaches a `georep slave`. Every run goes
//! through the protocol, local targets included (DESIGN.md section 1).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::error::{Error, Result};
use crate::target::Target;

/// A duplex byte stream to a slave, plus a way to learn how it ended.
pub struct Link {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
    pub ending: Box<dyn FnOnce() -> Result<()> + Send>,
}

pub trait Transport {
    fn connect(&self) -> Result<Link>;
}

/// Runs `georep slave --root DIR` as a child process on this machine.
pub struct LocalChild {
    pub program: PathBuf,
    pub root: PathBuf,
}

impl Transport for LocalChild {
    fn connect(&self) -> Result<Link> {
        let mut child: Child = Command::new(&self.program)
            .arg("slave")
            .arg("--root")
            .arg(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", self.program.display()), e))?;
        let reader = Box::new(child.stdout.take().expect("piped"));
        let writer = Box::new(child.stdin.take().expect("piped"));
        let ending = Box::new(move || {
            let status = child
                .wait()
                .map_err(|e| Error::io("waiting for the slave", e))?;
            if status.success() {
                Ok(())
            } else {
                Err(Error::Disconnected(format!(
                    "local slave exited with {status}"
                )))
            }
        });
        Ok(Link {
            reader,
            writer,
            ending,
        })
    }
}

/// Picks the transport for a target.
pub fn for_target(target: &Target) -> Result<Box<dyn Transport>> {
    match target {
        Target::Local(root) => Ok(Box::new(LocalChild {
            program: std::env::current_exe()
                .map_err(|e| Error::io("locating the georep binary", e))?,
            root: root.clone(),
        })),
        Target::Ssh { .. } => Err(Error::Target {
            path: format!("{target:?}"),
            reason: "SSH targets are not supported by this build yet".into(),
        }),
    }
}
