//! The recorder: raw inotify events (notify) into the journal.
//!
//! Events are recorded as they come, not debounced: the debouncer merges away
//! the history the worker needs (DESIGN.md section 3). Facts of notify
//! 9.0.0-rc.7 this relies on: a queue overflow arrives as one event with the
//! Rescan flag and no paths; a rename inside the tree arrives as From, To,
//! then Both; a move out is a lone From, a move in a lone To. Nothing is lost
//! silently: an overflow, a full journal queue or a watch error becomes a
//! Rescan change for the consumer to crawl.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};

use crate::journal::{NewChange, Op};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "inotify watch limit reached while watching {0}: raise fs.inotify.max_user_watches \
         (sysctl) or rely on periodic full crawls"
    )]
    WatchLimit(String),
    #[error("watching {path}: {source}")]
    Notify {
        path: String,
        #[source]
        source: notify::Error,
    },
}

/// State shared with notify's callback.
struct Shared {
    root: PathBuf,
    tx: SyncSender<NewChange>,
    /// Something could not be recorded: a rescan is owed.
    owed: AtomicBool,
    /// The kernel refused a watch: the tree is only partly watched.
    watch_limit: AtomicBool,
    stop: AtomicBool,
    /// A private directory whose new files are checkpoint barriers.
    barrier: OnceLock<PathBuf>,
    /// The thread that pays an owed rescan: parked until one is owed.
    payer: OnceLock<std::thread::Thread>,
}

impl Shared {
    fn rel(&self, p: &Path) -> Option<Vec<u8>> {
        p.strip_prefix(&self.root)
            .ok()
            .map(|r| r.as_os_str().as_bytes().to_vec())
    }

    /// Records without ever blocking notify's thread: a full queue turns
    /// into a rescan owed, paid as soon as there is room again.
    fn record(&self, c: NewChange) {
        if self.owed.load(Ordering::Acquire) && !self.pay_rescan() {
            return;
        }
        if let Err(TrySendError::Full(_)) = self.tx.try_send(c) {
            self.owe();
        }
    }

    fn owe(&self) {
        self.owed.store(true, Ordering::Release);
        if let Some(t) = self.payer.get() {
            t.unpark();
        }
    }

    fn pay_rescan(&self) -> bool {
        match self
            .tx
            .try_send(NewChange::now(Op::Rescan, Vec::new(), None))
        {
            Ok(()) => {
                self.owed.store(false, Ordering::Release);
                true
            }
            Err(_) => false,
        }
    }

    fn handle(&self, res: notify::Result<Event>) {
        let ev = match res {
            Ok(ev) => ev,
            Err(e) => {
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    self.watch_limit.store(true, Ordering::Release);
                }
                self.owe();
                return;
            }
        };
        if let (Some(dir), Some(p)) = (self.barrier.get(), ev.paths.first()) {
            if p.starts_with(dir) {
                // One inotify queue: every event before it is recorded.
                if let (EventKind::Create(_), Some(token)) = (ev.kind, p.file_name()) {
                    let token = token.as_bytes().to_vec();
                    self.record(NewChange::now(Op::Barrier, token, None));
                }
                return;
            }
        }
        if ev.need_rescan() {
            let path = ev
                .paths
                .first()
                .and_then(|p| self.rel(p))
                .unwrap_or_default();
            self.record(NewChange::now(Op::Rescan, path, None));
            return;
        }
        let op = match ev.kind {
            EventKind::Create(CreateKind::Folder) => Op::Mkdir,
            EventKind::Create(_) => Op::Create,
            EventKind::Modify(ModifyKind::Metadata(_)) => Op::Meta,
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => Op::Rename,
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Op::MovedFrom,
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Op::MovedTo,
            EventKind::Modify(_) => Op::Data,
            EventKind::Remove(
                RemoveKind::Any | RemoveKind::File | RemoveKind::Folder | RemoveKind::Other,
            ) => Op::Remove,
            // Reads, opens and closes change nothing.
            EventKind::Access(_) => return,
            EventKind::Any | EventKind::Other => Op::Rescan,
        };
        let mut paths = ev.paths.iter().filter_map(|p| self.rel(p));
        let Some(path) = paths.next() else { return };
        let path2 = if op == Op::Rename { paths.next() } else { None };
        if op == Op::Rename && path2.is_none() {
            // One half outside the tree: the consumer checks what exists.
            self.record(NewChange::now(Op::Rescan, parent(&path), None));
            return;
        }
        self.record(NewChange::now(op, path, path2));
    }
}

fn parent(p: &[u8]) -> Vec<u8> {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => p[..i].to_vec(),
        None => Vec::new(),
    }
}

/// A running recorder; dropping it stops watching.
pub struct Recorder {
    watcher: notify::RecommendedWatcher,
    shared: Arc<Shared>,
    payer: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    /// Watches `root` recursively, sending changes to the journal writer.
    pub fn start(root: &Path, tx: SyncSender<NewChange>) -> Result<Recorder, WatchError> {
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            tx,
            owed: AtomicBool::new(false),
            watch_limit: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            barrier: OnceLock::new(),
            payer: OnceLock::new(),
        });
        let s = shared.clone();
        let shown = root.display().to_string();
        // Never follow symlinks: a link to a directory inside the tree would
        // share its inotify watch and report its changes under the link's name.
        // And no open/close events (IN_OPEN, IN_CLOSE_*): they change
        // nothing, yet every file the shipper reads would queue two, waking
        // the recorder for each and filling the kernel's queue towards an
        // overflow (which costs a crawl).
        let config = notify::Config::default()
            .with_follow_symlinks(false)
            .with_event_kinds(notify::EventKindMask::CORE);
        let mut watcher = notify::RecommendedWatcher::new(move |res| s.handle(res), config)
            .map_err(|source| WatchError::Notify {
                path: shown.clone(),
                source,
            })?;
        watcher
            .watch(root, RecursiveMode::Recursive)
            .map_err(|source| match source.kind {
                notify::ErrorKind::MaxFilesWatch => WatchError::WatchLimit(shown.clone()),
                _ => WatchError::Notify {
                    path: shown.clone(),
                    source,
                },
            })?;
        // A rescan owed while the queue was full must not wait for the next
        // event. Parked while nothing is owed; while the queue stays full,
        // tried again every 20 ms (a full channel signals nothing when it
        // drains, and a blocking send could outlive the consumer).
        let s = shared.clone();
        let payer = std::thread::spawn(move || {
            while !s.stop.load(Ordering::Acquire) {
                match s.owed.load(Ordering::Acquire) && !s.pay_rescan() {
                    true => std::thread::park_timeout(Duration::from_millis(20)),
                    false => std::thread::park(),
                }
            }
        });
        let _ = shared.payer.set(payer.thread().clone());
        // A rescan owed before the handle was set is seen now.
        payer.thread().unpark();
        Ok(Recorder {
            watcher,
            shared,
            payer: Some(payer),
        })
    }

    /// Watches `dir` (outside the tree) for checkpoint barriers: a file
    /// created there is journaled as [`Op::Barrier`] after every change the
    /// kernel reported before it, since one inotify queue carries both.
    pub fn watch_barriers(&mut self, dir: &Path) -> Result<(), WatchError> {
        let err = |source| WatchError::Notify {
            path: dir.display().to_string(),
            source,
        };
        self.watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(err)?;
        let _ = self.shared.barrier.set(dir.to_path_buf());
        Ok(())
    }

    /// Whether the kernel refused a watch (the tree is only partly watched,
    /// so periodic crawls must cover it).
    pub fn watch_limit_hit(&self) -> bool {
        self.shared.watch_limit.load(Ordering::Acquire)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(p) = self.payer.take() {
            p.thread().unpark();
            let _ = p.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Journal, Writer};
    use std::time::Instant;

    fn wait_for(
        j: &Journal,
        pred: impl Fn(&[crate::journal::Change]) -> bool,
    ) -> Vec<crate::journal::Change> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all = j.read_after(0, 1_000_000).unwrap();
            if pred(&all) || Instant::now() > deadline {
                return all;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn records_every_kind_of_change_with_raw_names() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tree");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let db = t.path().join("journal.db");
        let w = Writer::start(
            Journal::open(&db).unwrap(),
            100,
            Duration::from_millis(2),
            std::sync::Arc::new(crate::journal::Committed::default()),
        );
        let rec = Recorder::start(&root, w.sender()).unwrap();

        let odd = std::ffi::OsStr::from_bytes(b"f\xff\n");
        std::fs::write(root.join(odd), b"x").unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::set_permissions(
            root.join(odd),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::rename(root.join(odd), root.join("g")).unwrap();
        // Into a directory made a moment ago: its watch may not exist yet, so
        // this may show only as a lone From (plus the Mkdir the consumer walks).
        std::fs::rename(root.join("g"), root.join("d/g")).unwrap();
        std::fs::write(outside.join("in"), b"y").unwrap();
        std::fs::rename(outside.join("in"), root.join("in")).unwrap();
        std::fs::rename(root.join("in"), outside.join("out")).unwrap();
        std::fs::write(root.join("gone"), b"z").unwrap();
        std::fs::remove_file(root.join("gone")).unwrap();

        let j = Journal::open(&db).unwrap();
        let all = wait_for(&j, |c| {
            c.iter().any(|c| c.op == Op::Remove && c.path == b"gone")
        });
        let has = |op: Op, p: &[u8]| all.iter().any(|c| c.op == op && c.path == p);
        assert!(has(Op::Create, b"f\xff\n"), "{all:?}");
        assert!(has(Op::Mkdir, b"d"), "{all:?}");
        assert!(has(Op::Meta, b"f\xff\n"), "{all:?}");
        assert!(
            all.iter().any(|c| c.op == Op::Rename
                && c.path == b"f\xff\n"
                && c.path2.as_deref() == Some(&b"g"[..])),
            "{all:?}"
        );
        assert!(
            has(Op::MovedFrom, b"g") || all.iter().any(|c| c.op == Op::Rename && c.path == b"g"),
            "{all:?}"
        );
        assert!(has(Op::MovedTo, b"in"), "{all:?}");
        assert!(has(Op::MovedFrom, b"in"), "{all:?}");
        assert!(has(Op::Remove, b"gone"), "{all:?}");
        // Recorded in the order they happened.
        let pos = |op: Op, p: &[u8]| all.iter().position(|c| c.op == op && c.path == p).unwrap();
        assert!(pos(Op::Create, b"f\xff\n") < pos(Op::Remove, b"gone"));
        assert!(!rec.watch_limit_hit());
        drop(rec);
        w.finish().unwrap();
    }

    #[test]
    fn a_full_queue_becomes_a_rescan_not_a_loss() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        // A queue of two that nobody drains yet: most events cannot be queued.
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let rec = Recorder::start(&root, tx).unwrap();
        for i in 0..50 {
            std::fs::write(root.join(format!("f{i}")), b"x").unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let got: Vec<NewChange> =
            std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(2)).ok())
                .take(5)
                .collect();
        assert!(got.iter().any(|c| c.op == Op::Rescan), "{got:?}");
        drop(rec);
    }
}
