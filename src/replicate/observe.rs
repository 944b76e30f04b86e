//! What a run counts and tells: counters for the summary and status, and an
//! [`Observer`] that decides where `-v` lines, warnings, errors and progress
//! go (a terminal for `georep sync`, the daemon's log for a session). No
//! terminal code lives in the engine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use crate::meta::Kind;

#[derive(Default)]
pub struct Counters {
    pub files_total: AtomicU64,
    pub files_transferred: AtomicU64,
    pub entries_created: AtomicU64,
    pub entries_deleted: AtomicU64,
    pub meta_updated: AtomicU64,
    pub bytes_literal: AtomicU64,
    pub bytes_matched: AtomicU64,
    pub errors: AtomicU64,
    /// Entries that vanished from the source while the run read them.
    pub vanished: AtomicU64,
    /// Slave entries a deletion limit kept (see replicate/guard.rs).
    pub deletions_refused: AtomicU64,
    /// Dry run: size of the files a real run would send as deltas.
    pub bytes_delta_basis: AtomicU64,
    /// Size of the regular files the run compared.
    pub total_size: AtomicU64,
    /// Size of the regular files whose content was sent (or, in a dry
    /// run, would be).
    pub transferred_size: AtomicU64,
}

/// The `--json` summary.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub files_total: u64,
    pub files_transferred: u64,
    pub entries_created: u64,
    pub entries_deleted: u64,
    pub meta_updated: u64,
    pub bytes_literal: u64,
    pub bytes_matched: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub errors: u64,
    pub vanished: u64,
    /// Entries not deleted because the round was over a deletion limit.
    pub deletions_refused: u64,
    /// Dry run: the size of the files a real run would send as deltas
    /// against the target's copy (what they cost on the wire is known only
    /// by sending them; `bytes_literal` counts files sent whole).
    pub bytes_delta_basis: u64,
    /// Size of the regular files compared (rsync's "Total file size").
    pub total_size: u64,
    /// Size of the files whose content was sent ("Total transferred file size").
    pub transferred_size: u64,
    pub elapsed_seconds: f64,
    pub dry_run: bool,
    /// Why deletions were refused, if they were.
    #[serde(skip)]
    pub refused: Option<String>,
}

/// What became of an entry (its `-v` tag in brackets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    /// Created on the target (`+`).
    Created,
    /// Content sent, or a symlink or device replaced (`>`).
    Updated,
    /// Metadata only (`.`).
    Meta,
    /// Deleted from the target (`-`).
    Deleted,
    /// Made a hard link to another name of its group (`=`); `new`: the
    /// target had no entry of this name.
    Linked { new: bool },
    /// Renamed on the target as the journal saw it (`R`; sessions only).
    Renamed,
}

impl What {
    /// The `-v` tag.
    pub fn tag(self) -> char {
        match self {
            What::Created => '+',
            What::Updated => '>',
            What::Meta => '.',
            What::Deleted => '-',
            What::Linked { .. } => '=',
            What::Renamed => 'R',
        }
    }
}

/// Which attributes of an entry differ between the source and the target
/// (the letters of rsync's `--itemize-changes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Content (known only with `--checksum`), a symlink's target or a
    /// device's number.
    pub content: bool,
    pub size: bool,
    pub time: bool,
    pub perms: bool,
    pub owner: bool,
    pub group: bool,
    /// POSIX ACLs (the `system.posix_acl_*` attributes).
    pub acl: bool,
    /// Other extended attributes.
    pub xattrs: bool,
}

impl Diff {
    /// Whether any metadata differs (content and size aside).
    pub fn meta(&self) -> bool {
        self.time || self.perms || self.owner || self.group || self.acl || self.xattrs
    }
}

/// One change, as much as the engine knows of it.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    pub what: What,
    /// The entry's type (of the target's entry, for a deletion: only
    /// whether it is a directory is known there).
    pub kind: Kind,
    pub path: &'a [u8],
    pub diff: Diff,
    /// A symlink's target; for a hard link, the name it joins; for a
    /// rename, the old name.
    pub target: Option<&'a [u8]>,
}

/// Where a run's messages go. Every method has a silent default.
pub trait Observer: Send + Sync {
    /// A change, `-v` style: a one-character tag and the path.
    fn item(&self, _tag: char, _path: &[u8]) {}
    /// A change with what is known of it (for `--itemize-changes`); by
    /// default told as [`Observer::item`].
    fn change(&self, item: &Item<'_>) {
        self.item(item.what.tag(), item.path);
    }
    /// A failure of one entry (the run goes on).
    fn error(&self, _msg: &str) {}
    fn warn(&self, _msg: &str) {}
    /// Bytes found to transfer.
    fn planned(&self, _bytes: u64, _files_so_far: u64) {}
    /// Bytes transferred.
    fn progressed(&self, _bytes: u64) {}
    /// The run is over: clear whatever is drawn.
    fn finish(&self) {}
}

/// An observer that says nothing.
pub struct Silent;
impl Observer for Silent {}

/// The engine's side of reporting: counts, and forwards to an observer.
pub struct Reporter {
    pub counters: Counters,
    observer: Box<dyn Observer>,
    pub started: Instant,
    /// The latest entry failure, for a status line.
    last_error: Mutex<Option<String>>,
    /// Which entries failed and why, for a caller that retries them.
    failed: Mutex<Failed>,
    /// The run is being abandoned (Ctrl-C): nothing more is drawn.
    interrupted: AtomicBool,
    /// Paths whose refusal by the slave the planner handles itself (see
    /// [`Reporter::claim`]), with the slave's message once refused.
    claims: Mutex<HashMap<Vec<u8>, Option<String>>>,
}

/// The entries that failed since the last [`Reporter::take_failures`],
/// up to [`MAX_TRACKED_FAILURES`] of them.
#[derive(Default)]
struct Failed {
    entries: Vec<(Vec<u8>, String)>,
    overflowed: bool,
}

/// Beyond this many failed entries a caller cannot retry them one by one.
pub const MAX_TRACKED_FAILURES: usize = 10_000;

impl Reporter {
    pub fn new(observer: Box<dyn Observer>) -> Reporter {
        Reporter {
            counters: Counters::default(),
            observer,
            started: Instant::now(),
            last_error: Mutex::default(),
            failed: Mutex::default(),
            interrupted: AtomicBool::new(false),
            claims: Mutex::default(),
        }
    }

    /// Stops all output and clears what is drawn (the run is abandoned).
    pub fn interrupt(&self) {
        if !self.interrupted.swap(true, Relaxed) {
            self.observer.finish();
        }
    }

    /// Whether [`Reporter::interrupt`] was called.
    pub fn quiet(&self) -> bool {
        self.interrupted.load(Relaxed)
    }

    pub fn change(&self, item: &Item<'_>) {
        if !self.quiet() {
            self.observer.change(item);
        }
    }

    /// A failure of the entry at `path`: counted, told, remembered; the
    /// run goes on.
    pub fn error(&self, path: &[u8], msg: &str) {
        if let Some(refused) = self.claims.lock().unwrap().get_mut(path) {
            refused.get_or_insert_with(|| msg.to_string());
            return;
        }
        self.counters.errors.fetch_add(1, Relaxed);
        *self.last_error.lock().unwrap() = Some(msg.to_string());
        {
            let mut f = self.failed.lock().unwrap();
            if f.entries.len() < MAX_TRACKED_FAILURES {
                f.entries.push((path.to_vec(), msg.to_string()));
            } else {
                f.overflowed = true;
            }
        }
        // Abandoned (Ctrl-C): the dying link's failures are no news.
        if !self.quiet() {
            self.observer.error(msg);
        }
    }

    /// The entries that failed since the last call, with their errors; None
    /// if there were too many to list.
    pub fn take_failures(&self) -> Option<Vec<(Vec<u8>, String)>> {
        let f = std::mem::take(&mut *self.failed.lock().unwrap());
        (!f.overflowed).then_some(f.entries)
    }

    /// Until [`Reporter::release_claims`], a failure of `path` is the
    /// planner's to handle (it has a fallback: a link refused by the slave
    /// becomes a copy), not an entry failure.
    pub fn claim(&self, path: &[u8]) {
        self.claims.lock().unwrap().insert(path.to_vec(), None);
    }

    /// Ends every claim; returns the claimed paths that failed, with why.
    pub fn release_claims(&self) -> HashMap<Vec<u8>, String> {
        std::mem::take(&mut *self.claims.lock().unwrap())
            .into_iter()
            .filter_map(|(p, why)| why.map(|w| (p, w)))
            .collect()
    }

    /// The latest entry failure reported with [`Reporter::error`].
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    pub fn warn(&self, msg: &str) {
        if !self.quiet() {
            self.observer.warn(msg);
        }
    }

    /// An entry that vanished from the source while it was read: counted
    /// and told, not a failure (what happened to it is someone else's news).
    pub fn vanished(&self, msg: &str) {
        self.counters.vanished.fetch_add(1, Relaxed);
        self.warn(msg);
    }

    pub fn planned(&self, bytes: u64) {
        if self.quiet() {
            return;
        }
        let files = self.counters.files_transferred.load(Relaxed);
        self.observer.planned(bytes, files);
    }

    pub fn progressed(&self, bytes: u64) {
        if !self.quiet() {
            self.observer.progressed(bytes);
        }
    }

    pub fn summary(&self, bytes_sent: u64, bytes_received: u64, dry_run: bool) -> Summary {
        self.observer.finish();
        let c = &self.counters;
        Summary {
            files_total: c.files_total.load(Relaxed),
            files_transferred: c.files_transferred.load(Relaxed),
            entries_created: c.entries_created.load(Relaxed),
            entries_deleted: c.entries_deleted.load(Relaxed),
            meta_updated: c.meta_updated.load(Relaxed),
            bytes_literal: c.bytes_literal.load(Relaxed),
            bytes_matched: c.bytes_matched.load(Relaxed),
            bytes_sent,
            bytes_received,
            errors: c.errors.load(Relaxed),
            vanished: c.vanished.load(Relaxed),
            deletions_refused: c.deletions_refused.load(Relaxed),
            bytes_delta_basis: c.bytes_delta_basis.load(Relaxed),
            total_size: c.total_size.load(Relaxed),
            transferred_size: c.transferred_size.load(Relaxed),
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
            dry_run,
            refused: None,
        }
    }
}
