//! The master's end of a protocol connection: a sender thread, a receiver
//! thread, and routing of replies to whoever asked, by request id only.
//!
//! Deadlock freedom: the receiver never blocks on anything but the socket.
//! Replies go into unbounded per-request channels, and the master bounds how
//! many requests it has in flight, so the slave can always write its replies,
//! so it always gets back to reading ours.

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::confine::show;
use crate::error::{Error, Result};
use crate::proto::frame as wire;
use crate::proto::{Msg, Side};
use crate::replicate::bwlimit::Throttled;
use crate::replicate::observe::Reporter;
use crate::transport::{Ending, Link, Sink};

/// Reply route for messages without an id (Hello, Finished).
pub const CONTROL: u64 = 0;

#[derive(Default)]
pub struct Shared {
    routes: Mutex<Routes>,
    /// Signalled when the receiver has seen the connection end.
    ended: Condvar,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
}

#[derive(Default)]
struct Routes {
    map: HashMap<u64, Sender<Msg>>,
    /// Why the connection ended, once it has.
    ended: Option<Error>,
}

/// Frame bodies that go out together, in order (mostly one; a small file's
/// begin, data and end travel as one item, one handoff instead of three).
pub type Frames = Vec<Vec<u8>>;

pub struct Conn {
    tx: Option<SyncSender<Frames>>,
    pub shared: Arc<Shared>,
    next_id: AtomicU64,
    threads: Vec<JoinHandle<()>>,
    ending: Mutex<Option<Ending>>,
}

impl Conn {
    /// Starts the connection's threads; `bwlimit` (bytes per second) paces
    /// what goes out (see [`super::bwlimit`]).
    pub fn start(link: Link, reporter: Arc<Reporter>, bwlimit: Option<u64>) -> Conn {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::sync_channel::<Frames>(32);
        let s = shared.clone();
        let writer: Box<dyn Sink> = match bwlimit {
            Some(rate) => Box::new(Throttled::new(link.writer, rate)),
            None => link.writer,
        };
        let sender = std::thread::spawn(move || send_loop(writer, rx, &s));
        let s = shared.clone();
        let reader = link.reader;
        let receiver = std::thread::spawn(move || recv_loop(reader, &s, &reporter));
        Conn {
            tx: Some(tx),
            shared,
            next_id: AtomicU64::new(1),
            threads: vec![sender, receiver],
            ending: Mutex::new(Some(link.ending)),
        }
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn send(&self, m: &Msg) -> Result<()> {
        self.send_frame(m.encode())
    }

    /// Sends a frame body already encoded (see `Msg::file_data_frame`).
    pub fn send_frame(&self, body: Vec<u8>) -> Result<()> {
        self.send_frames(vec![body])
    }

    /// Sends frame bodies that go out back to back.
    pub fn send_frames(&self, bodies: Frames) -> Result<()> {
        let ok = self.tx.as_ref().is_some_and(|tx| tx.send(bodies).is_ok());
        if ok {
            Ok(())
        } else {
            Err(self.failure())
        }
    }

    /// Registers a route for `id`, then sends `m`.
    pub fn request(&self, id: u64, m: &Msg) -> Result<Receiver<Msg>> {
        let rx = self.route(id)?;
        self.send(m)?;
        Ok(rx)
    }

    /// Registers a route for replies with `id` (until a final one).
    pub fn route(&self, id: u64) -> Result<Receiver<Msg>> {
        let (tx, rx) = mpsc::channel();
        let mut r = self.shared.routes.lock().unwrap();
        if r.ended.is_some() {
            drop(r);
            return Err(self.failure());
        }
        r.map.insert(id, tx);
        Ok(rx)
    }

    /// Waits for the next reply on a route.
    pub fn wait(&self, rx: &Receiver<Msg>) -> Result<Msg> {
        rx.recv().map_err(|_| self.failure())
    }

    /// Why the connection failed, in the slave's own words when it sent
    /// them: a write that failed because the slave stopped is only a symptom,
    /// so this waits (briefly) for the receiver to read the slave's reason.
    pub fn failure(&self) -> Error {
        let r = self.shared.routes.lock().unwrap();
        let (r, _) = self
            .shared
            .ended
            .wait_timeout_while(r, Duration::from_secs(10), |r| r.ended.is_none())
            .unwrap();
        match &r.ended {
            Some(Error::Remote { code, message }) => Error::Remote {
                code: *code,
                message: message.clone(),
            },
            Some(Error::Protocol(m)) => Error::Protocol(m.clone()),
            Some(Error::Disconnected(m)) => Error::Disconnected(m.clone()),
            Some(e) => Error::Disconnected(e.to_string()),
            None => Error::Disconnected("writing to the slave failed".into()),
        }
    }

    /// Closes our side and waits for the slave to exit.
    pub fn close(mut self) -> Result<()> {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        match self.ending.lock().unwrap().take() {
            Some(end) => end(),
            None => Ok(()),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.tx = None;
    }
}

/// Frames at least this big skip the buffer (one copy less); smaller ones
/// are gathered into writes of up to the buffer's size.
const DIRECT_FRAME: usize = 64 << 10;

/// The one place frames are written to the link.
fn send_loop(writer: Box<dyn Sink>, rx: Receiver<Frames>, s: &Shared) {
    let mut w = BufWriter::with_capacity(1 << 20, writer);
    // On a write error the loop just stops: the receiver learns why (the
    // slave's Fatal frame, or its exit) and ends the routes with that reason.
    while let Ok(mut bodies) = rx.recv() {
        loop {
            for body in bodies {
                s.bytes_sent
                    .fetch_add(body.len() as u64 + 4, Ordering::Relaxed);
                let written = if body.len() >= DIRECT_FRAME {
                    wire::write_header(&mut w, &body)
                        .and_then(|_| w.flush())
                        .and_then(|_| w.get_mut().write_vec(body))
                } else {
                    wire::write_frame(&mut w, &body)
                };
                if written.is_err() {
                    return;
                }
            }
            match rx.try_recv() {
                Ok(b) => bodies = b,
                Err(_) => break,
            }
        }
        if w.flush().is_err() {
            return;
        }
    }
    // Dropping the writer closes the slave's input: it sees the end of the stream.
}

fn end(s: &Shared, e: Error) {
    let mut r = s.routes.lock().unwrap();
    if r.ended.is_none() {
        r.ended = Some(e);
    }
    r.map.clear();
    s.ended.notify_all();
}

fn recv_loop(reader: Box<dyn Read + Send>, s: &Shared, reporter: &Reporter) {
    let mut r = std::io::BufReader::with_capacity(1 << 20, reader);
    let mut buf = Vec::new();
    let why = loop {
        let msg = match wire::read_frame(&mut r, &mut buf) {
            Ok(Some(kind)) => {
                s.bytes_received
                    .fetch_add(buf.len() as u64 + 5, Ordering::Relaxed);
                match Msg::decode_from(Side::Slave, kind, &buf) {
                    Ok(m) => m,
                    Err(e) => break Error::Protocol(format!("bad frame from slave: {e}")),
                }
            }
            Ok(None) => break Error::Disconnected("the slave closed the connection".into()),
            Err(wire::WireError::Io(e)) => {
                break Error::Disconnected(format!("reading from slave: {e}"))
            }
            Err(e) => {
                break Error::Protocol(format!(
                    "bad frame from slave (is `georep slave` what runs there?): {e}"
                ))
            }
        };
        let (id, done) = match &msg {
            Msg::Hello(_) | Msg::Finished => (CONTROL, true),
            Msg::DirEntries { id, last, .. } => (*id, *last),
            Msg::SigChunk { id, .. } => (*id, false),
            Msg::SigEnd { id, .. }
            | Msg::SigFail { id, .. }
            | Msg::BarrierAck { id }
            | Msg::Verified { id, .. } => (*id, true),
            Msg::OpError { path, message } => {
                reporter.error(path, &format!("{}: {message}", show(path)));
                continue;
            }
            Msg::Fatal { code, message } => {
                break Error::Remote {
                    code: *code,
                    message: message.clone(),
                }
            }
            other => break Error::Protocol(format!("unexpected message from slave: {other:?}")),
        };
        let mut routes = s.routes.lock().unwrap();
        let Some(tx) = (if done {
            routes.map.remove(&id)
        } else {
            routes.map.get(&id).cloned()
        }) else {
            drop(routes);
            break Error::Protocol(format!("reply for unknown request {id}"));
        };
        drop(routes);
        let _ = tx.send(msg);
    };
    end(s, why);
}
