//! Signing bases on a thread of their own, as rsync's generator does beside
//! its receiver: while the agent applies one file's delta, the next files'
//! bases are read and signed, so the master's delta jobs wait less.
//!
//! The agent checks a request (confinement, file type, the inode is the
//! replica's own) and opens the basis; the signer streams its signature to
//! the master and then holds it, open, until the file's delta arrives. A
//! basis is ready before its SigEnd goes out, and the master sends a delta
//! only after it has the whole signature, so the agent always finds it.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::clip;
use crate::delta;
use crate::proto::frame as wire;
use crate::proto::Msg;

/// The agent's writer, shared with the signer: each frame is written whole
/// under the lock.
pub(super) type Out<W> = Arc<Mutex<BufWriter<W>>>;

pub(super) fn lock<W: Write>(out: &Mutex<BufWriter<W>>) -> MutexGuard<'_, BufWriter<W>> {
    out.lock().unwrap_or_else(|e| e.into_inner())
}

/// A signed basis, open for reading, and the length that was signed.
pub(super) struct Basis {
    pub(super) fd: OwnedFd,
    pub(super) len: u64,
}

/// One basis to sign: opened and checked by the agent.
pub(super) struct Job {
    pub id: u64,
    pub fd: OwnedFd,
    pub len: u64,
    pub block: u32,
    pub hash_len: u32,
}

#[derive(Default)]
struct State {
    /// Requests taken and not yet answered, by id.
    queued: Vec<u64>,
    /// Signed bases, waiting for their deltas.
    ready: HashMap<u64, Basis>,
    /// Why the master can no longer be written to, if it cannot.
    broken: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    idle: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) struct Signer {
    shared: Arc<Shared>,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Signer {
    pub(super) fn new() -> Signer {
        Signer {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                idle: Condvar::new(),
                stop: AtomicBool::new(false),
            }),
            jobs: None,
            thread: None,
        }
    }

    /// Bases requested and not yet taken by a delta: each holds a descriptor.
    pub(super) fn outstanding(&self) -> usize {
        let s = self.shared.state();
        s.queued.len() + s.ready.len()
    }

    pub(super) fn holds(&self, id: u64) -> bool {
        let s = self.shared.state();
        s.ready.contains_key(&id) || s.queued.contains(&id)
    }

    /// Queues a basis; its signature reaches the master from the signer's
    /// thread, started with the first one.
    pub(super) fn submit<W: Write + Send + 'static>(&mut self, out: &Out<W>, job: Job) {
        self.shared.state().queued.push(job.id);
        if self.jobs.is_none() && !self.shared.stop.load(Relaxed) {
            let (tx, rx) = channel::<Job>();
            let (shared, theirs) = (self.shared.clone(), out.clone());
            let spawned = std::thread::Builder::new()
                .name("sign".into())
                .spawn(move || {
                    for job in rx {
                        sign(&shared, &theirs, job);
                    }
                });
            if let Ok(t) = spawned {
                self.thread = Some(t);
                self.jobs = Some(tx);
            }
        }
        // Without a thread (none to be had) it is signed here.
        match &self.jobs {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    sign(&self.shared, out, e.0);
                }
            }
            None => sign(&self.shared, out, job),
        }
    }

    /// The basis for `id`'s delta, given over to the caller; one still
    /// being signed is waited for (a master that does not wait for SigEnd
    /// finds what a signature made in line would have given it).
    pub(super) fn take(&mut self, id: u64) -> Option<Basis> {
        self.wait_while(|s| s.queued.contains(&id))
            .ready
            .remove(&id)
    }

    /// Waits until every request is answered (a barrier: what was asked
    /// before it is answered before its ack), and says whether the master
    /// could be written to.
    pub(super) fn drain(&mut self) -> Result<(), String> {
        self.settle(false)
    }

    /// As [`Signer::drain`], at a round's end: the bases no delta took are
    /// dropped too.
    pub(super) fn finish(&mut self) -> Result<(), String> {
        self.settle(true)
    }

    fn settle(&mut self, forget: bool) -> Result<(), String> {
        let mut s = self.wait_while(|s| !s.queued.is_empty());
        if forget {
            s.ready.clear();
        }
        match &s.broken {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn wait_while(&self, busy: impl Fn(&State) -> bool) -> MutexGuard<'_, State> {
        let mut s = self.shared.state();
        while busy(&s) {
            // A thread that died (it cannot, short of a bug) answers nothing more.
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                s.broken.get_or_insert("the signing thread ended".into());
                s.queued.clear();
                break;
            }
            s = self
                .shared
                .idle
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s
    }

    /// Stops at the next chunk, writing nothing more (the agent is ending),
    /// and waits for the thread.
    pub(super) fn stop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Signer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Streams one signature, then SigEnd (the basis kept) or SigFail; nothing
/// once stopped.
fn sign<W: Write>(shared: &Shared, out: &Mutex<BufWriter<W>>, job: Job) {
    let Job {
        id,
        fd,
        len,
        block,
        hash_len,
    } = job;
    let r = delta::sign_file(fd.as_fd(), len, block, hash_len, |chunk| {
        if shared.stop.load(Relaxed) {
            return Err(std::io::Error::other("the agent is ending"));
        }
        let frame = Msg::SigChunk {
            id,
            data: chunk.to_vec(),
        }
        .encode();
        wire::write_frame(&mut *lock(out), &frame)
    });
    let last = match r {
        _ if shared.stop.load(Relaxed) => None,
        Ok(()) => {
            shared.state().ready.insert(id, Basis { fd, len });
            Some(Msg::SigEnd { id, size: len })
        }
        Err(e) => Some(Msg::SigFail {
            id,
            message: clip(&e.to_string()),
        }),
    };
    let sent = last.map(|m| {
        let mut w = lock(out);
        wire::write_frame(&mut *w, &m.encode()).and_then(|_| w.flush())
    });
    let mut s = shared.state();
    if let Some(Err(e)) = sent {
        s.broken.get_or_insert(format!("writing to master: {e}"));
    }
    s.queued.retain(|&q| q != id);
    shared.idle.notify_all();
}
