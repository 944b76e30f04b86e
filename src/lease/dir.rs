//! The lease in a directory every node mounts (`lease = dir:PATH`).
//!
//! `PATH/SESSION/lease` names the holder, its epoch and a heartbeat counter
//! the holder bumps at every renewal. Nobody compares clocks: a node deems
//! the lease run out once it has seen the same (holder, epoch, beat) for a
//! whole TTL of its own monotonic time. Every read-modify-write of the file
//! happens under an open-file-description lock on `PATH/SESSION/lock`
//! (F_OFD_SETLKW: owned by the descriptor, not the process, so no stray
//! close() elsewhere in the process drops it) and writes a new file renamed
//! over the old one, so a reader never sees half a lease.
//!
//! What the shared filesystem must give (GlusterFS, CephFS and NFSv4 do):
//! POSIX byte-range locks honoured across nodes, atomic rename, and a
//! reader that opens the file after a writer closed it sees what was
//! written (close-to-open consistency).

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Backend, Epoch, Held, NodeReport};
use crate::error::Error;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseFile {
    /// Only grows: every acquisition takes the next one.
    epoch: Epoch,
    /// Empty when released.
    holder: String,
    beat: u64,
}

pub struct DirLease {
    dir: PathBuf,
    node: String,
    ttl: Duration,
    /// The lease as last seen, and since when unchanged (by our clock).
    seen: Option<(LeaseFile, Instant)>,
    /// The epoch this node holds, as far as it knows.
    mine: Option<Epoch>,
}

fn err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Lease(format!("{what} {}: {e}", path.display()))
}

impl DirLease {
    pub fn open(root: &Path, session: &str, node: &str, ttl: Duration) -> Result<DirLease, Error> {
        let dir = root.join(session);
        fs::create_dir_all(dir.join("nodes")).map_err(|e| err("creating", &dir, e))?;
        Ok(DirLease {
            dir,
            node: node.to_string(),
            ttl,
            seen: None,
            mine: None,
        })
    }

    fn lease_path(&self) -> PathBuf {
        self.dir.join("lease")
    }

    /// Holds the lock for the read-modify-write `f`.
    fn locked<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, Error>) -> Result<T, Error> {
        let path = self.dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| err("opening", &path, e))?;
        ofd_lock(&lock).map_err(|e| err("locking", &path, e))?;
        // Unlocked when `lock` closes: its open file description is the owner.
        f(self)
    }

    fn read(&self) -> Result<LeaseFile, Error> {
        let path = self.lease_path();
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Lease(format!("{} is damaged: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LeaseFile::default()),
            Err(e) => Err(err("reading", &path, e)),
        }
    }

    fn write(&self, l: &LeaseFile) -> Result<(), Error> {
        write_atomic(
            &self.lease_path(),
            &serde_json::to_vec(l).expect("plain data"),
        )
    }

    /// Whether the lease as read now has stayed the same for a TTL.
    fn run_out(&mut self, now: &LeaseFile) -> bool {
        match &self.seen {
            Some((old, since)) if old == now => since.elapsed() >= self.ttl,
            _ => {
                self.seen = Some((now.clone(), Instant::now()));
                false
            }
        }
    }
}

impl Backend for DirLease {
    fn try_hold(&mut self) -> Result<Option<Held>, Error> {
        let valid_for = self.ttl;
        self.locked(|me| {
            let mut l = me.read()?;
            if me.mine == Some(l.epoch) && l.holder == me.node {
                l.beat += 1;
                me.write(&l)?;
                return Ok(Some(Held {
                    epoch: l.epoch,
                    valid_for,
                }));
            }
            me.mine = None;
            let free = l.holder.is_empty() || me.run_out(&l);
            if !free {
                return Ok(None);
            }
            let taken = LeaseFile {
                epoch: l.epoch + 1,
                holder: me.node.clone(),
                beat: 0,
            };
            me.write(&taken)?;
            me.mine = Some(taken.epoch);
            me.seen = None;
            Ok(Some(Held {
                epoch: taken.epoch,
                valid_for,
            }))
        })
    }

    fn release(&mut self) -> Result<(), Error> {
        let Some(epoch) = self.mine.take() else {
            return Ok(());
        };
        self.locked(|me| {
            let mut l = me.read()?;
            if l.epoch == epoch && l.holder == me.node {
                l.holder.clear();
                me.write(&l)?;
            }
            Ok(())
        })
    }

    fn publish(&mut self, report: &NodeReport) -> Result<(), Error> {
        let path = self.dir.join("nodes").join(format!("{}.json", self.node));
        write_atomic(&path, &serde_json::to_vec(report).expect("plain data"))
    }

    fn nodes(&mut self) -> Result<Vec<NodeReport>, Error> {
        let dir = self.dir.join("nodes");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| err("reading", &dir, e))? {
            let Ok(e) = e else { continue };
            if !e.file_name().to_string_lossy().ends_with(".json") {
                continue;
            }
            // One damaged or half-copied report hides only that node.
            let report = fs::read(e.path()).map(|b| serde_json::from_slice(&b));
            if let Ok(Ok(r)) = report {
                out.push(r);
            }
        }
        out.sort_by(|a: &NodeReport, b| a.node.cmp(&b.node));
        Ok(out)
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    crate::fsutil::replace_file(path, data).map_err(|e| err("writing", path, e))
}

/// An exclusive open-file-description lock on the whole file, waited for.
fn ofd_lock(f: &File) -> std::io::Result<()> {
    // SAFETY: a zeroed flock is a valid value; fcntl reads it and nothing else.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    loop {
        // SAFETY: a valid descriptor and a pointer to a live flock.
        let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLKW, &fl) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(dir: &Path, node: &str, ttl_ms: u64) -> DirLease {
        DirLease::open(dir, "s", node, Duration::from_millis(ttl_ms)).unwrap()
    }

    #[test]
    fn one_holder_takeover_after_ttl_and_growing_epochs() {
        let d = tempfile::tempdir().unwrap();
        let mut a = lease(d.path(), "a", 200);
        let mut b = lease(d.path(), "b", 200);
        let first = a.try_hold().unwrap().expect("free lease");
        assert_eq!(first.epoch, 1);
        assert_eq!(b.try_hold().unwrap(), None, "held by a");
        // a renews: b never sees it run out.
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(80));
            assert_eq!(a.try_hold().unwrap().unwrap().epoch, 1);
            assert_eq!(b.try_hold().unwrap(), None);
        }
        // a stops renewing: b takes it once a TTL passed unchanged.
        std::thread::sleep(Duration::from_millis(250));
        let second = b.try_hold().unwrap().expect("run out");
        assert_eq!(second.epoch, 2);
        // a finds it lost.
        assert_eq!(a.try_hold().unwrap(), None);
        // Released: a takes it at once, with a newer epoch.
        b.release().unwrap();
        assert_eq!(a.try_hold().unwrap().unwrap().epoch, 3);
    }

    #[test]
    fn reports_are_listed_per_node() {
        let d = tempfile::tempdir().unwrap();
        let mut a = lease(d.path(), "a", 200);
        let mut b = lease(d.path(), "b", 200);
        for (l, n) in [(&mut a, "a"), (&mut b, "b")] {
            l.publish(&NodeReport {
                node: n.into(),
                state: "Passive".into(),
                ..NodeReport::default()
            })
            .unwrap();
        }
        let nodes: Vec<String> = a.nodes().unwrap().into_iter().map(|r| r.node).collect();
        assert_eq!(nodes, ["a", "b"]);
    }
}
