//! Background flushing of small files: the kernel starts writing dirty pages
//! only past its background threshold (gigabytes on a large machine), so a
//! round of many small files would leave all of them to its final sync.
//! Starting writeback per small file costs more than it saves (many tiny
//! submissions on the receiving thread); a thread of its own that syncs the
//! filesystem every [`STEP`] bytes keeps the disk busy while files are still
//! arriving, and the round's final sync waits only for the tail.
//!
//! A sync writes every writer's dirty data on that filesystem, not only
//! ours: when the machine holds far more dirty data than we wrote since the
//! last sync, another process is writing, and syncing now would only make us
//! wait for it (and stall our own creates behind its journal commits), so
//! the sync is left to the round's end.

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
    // Ours, written since the last sync that completed.
    let mut unsynced = 0u64;
    let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        s = cv
            .wait_while(s, |s| !s.stop && s.owed < STEP)
            .unwrap_or_else(|e| e.into_inner());
        if s.stop {
            return;
        }
        unsynced += std::mem::take(&mut s.owed);
        drop(s);
        // A hint only: durability comes from the round's own sync.
        if !others_writing(unsynced) && rustix::fs::syncfs(root).is_ok() {
            unsynced = 0;
        }
        s = lock.lock().unwrap_or_else(|e| e.into_inner());
    }
}

/// Whether the machine's dirty and writeback pages are well over the `ours`
/// bytes we left unsynced (unknown counts as no).
fn others_writing(ours: u64) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return false;
    };
    let kib = |key: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let dirty = (kib("Dirty:") + kib("Writeback:")) << 10;
    dirty > 2 * ours + OTHERS_SLACK
}

/// Dirty data beyond twice ours that still counts as nobody else writing.
const OTHERS_SLACK: u64 = 256 << 20;
