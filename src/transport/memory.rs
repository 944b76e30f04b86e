//! The slave served on a thread of this process over a socket pair: the
//! same protocol, framing and agent as a child process, without one. For
//! engine tests (and anything else that wants a replica in-process).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use super::{Link, Sink, Transport};
use crate::error::{Error, Exit, Result};

pub struct InProcess {
    /// The replica's root, as `georep slave --root` takes it.
    pub root: PathBuf,
}

/// The master's writing half: closing it is the slave's end of input.
struct Half(UnixStream);

impl Write for Half {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Sink for Half {}

impl Drop for Half {
    fn drop(&mut self) {
        let _ = self.0.shutdown(Shutdown::Write);
    }
}

impl Transport for InProcess {
    fn connect(&self) -> Result<Link> {
        let io = |e| Error::io("creating a socket pair for the in-process slave", e);
        let (master, slave) = UnixStream::pair().map_err(io)?;
        let (slave_in, slave_out) = (slave.try_clone().map_err(io)?, slave);
        let root = self.root.clone();
        let handle = std::thread::Builder::new()
            .name("georep-slave".into())
            .spawn(move || crate::agent::serve(&root, None, slave_in, slave_out))
            .map_err(|e| Error::io("starting the in-process slave", e))?;
        let reader: Box<dyn Read + Send> = Box::new(master.try_clone().map_err(io)?);
        let writer: Box<dyn Sink> = Box::new(Half(master));
        let ending = Box::new(move || match handle.join() {
            Ok(Exit::Ok) => Ok(()),
            Ok(code) => Err(Error::Disconnected(format!(
                "the in-process slave ended with exit code {}",
                code as u8
            ))),
            Err(_) => Err(Error::Disconnected("the in-process slave panicked".into())),
        });
        Ok(Link {
            reader,
            writer,
            ending,
        })
    }
}
