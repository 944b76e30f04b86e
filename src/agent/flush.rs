//! Background flushing of small files: the kernel starts writing dirty pages
//! only past its background threshold (gigabytes on a large machine), so a
//! round of many small files would leave all of them to its final sync.
//! Starting writeback per small file costs more than it saves (many tiny
//! submissions on the receiving thread); a thread of its own that syncs the
//! filesystem every [`STEP`] bytes keeps the disk busy while files are still
//! arriving, and the round's final sync waits only for the tail.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Bytes of small files written between two background syncs.
const STEP: u64 = 64 << 20;

#[derive(Default)]
struct Shared {
    /// Bytes noted since the last sync began.
    owed: u64,
    stop: bool,
}

pub(super) struct Flusher {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// A flusher for the filesystem `root` is on.
    pub(super) fn new(root: OwnedFd) -> Flusher {
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("flush".into())
            .spawn(move || run(&root, &theirs))
            .ok();
        Flusher { shared, thread }
    }

    /// `bytes` more were written and are left to a sync.
    pub(super) fn note(&self, bytes: u64) {
        let (lock, cv) = &*self.shared;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        s.owed += bytes;
        if s.owed >= STEP {
            cv.notify_one();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(root: &OwnedFd, shared: &(Mutex<Shared>, Condvar)) {
    let (lock, cv) = shared;
    let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        s = cv
            .wait_while(s, |s| !s.stop && s.owed < STEP)
            .unwrap_or_else(|e| e.into_inner());
        if s.stop {
            return;
        }
        s.owed = 0;
        drop(s);
        // A hint only: durability comes from the round's own sync.
        let _ = rustix::fs::syncfs(root);
        s = lock.lock().unwrap_or_else(|e| e.into_inner());
    }
}
