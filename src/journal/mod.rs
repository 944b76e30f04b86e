//! The changelog journal (DESIGN.md section 3): every change the recorder
//! sees, in order, in a SQLite file.
//!
//! The hot table is append-only and keyed by sequence number alone (an index
//! on path makes inserts ~35x slower); appends are batched into one
//! transaction each. The marker says how far the slave has durably acked;
//! it only moves forward, and only through [`Journal::ack`]. Rows at or
//! below the marker are trimmed once older than the retention window.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

mod control;
mod failures;
mod links;
mod writer;
pub use control::Checkpoint;
pub use failures::{Failure, FailureCount, PARK_AFTER};
pub use links::InodeIndex;
pub use writer::{CommitListener, Committed, Writer};

/// What happened to a path. Stored as an integer; never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Create = 1,
    Mkdir = 2,
    Data = 3,
    Meta = 4,
    Remove = 5,
    /// `path` renamed to `path2` (both inside the tree).
    Rename = 6,
    /// Renamed away (out of the tree, or the other half was not seen).
    MovedFrom = 7,
    /// Renamed in (from outside the tree, or the other half was not seen).
    MovedTo = 8,
    /// Events were lost (queue overflow): `path` must be crawled.
    Rescan = 9,
    /// No change: the mark of a `checkpoint now` (`path` is its token),
    /// journaled after every event the kernel reported before it.
    Barrier = 10,
}

impl Op {
    pub fn from_i64(v: i64) -> Option<Op> {
        Some(match v {
            1 => Op::Create,
            2 => Op::Mkdir,
            3 => Op::Data,
            4 => Op::Meta,
            5 => Op::Remove,
            6 => Op::Rename,
            7 => Op::MovedFrom,
            8 => Op::MovedTo,
            9 => Op::Rescan,
            10 => Op::Barrier,
            _ => return None,
        })
    }
}

/// A change to record; the journal assigns its sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewChange {
    pub time_ns: i64,
    pub op: Op,
    /// Relative to the watched root, raw bytes; empty for the root itself.
    pub path: Vec<u8>,
    pub path2: Option<Vec<u8>>,
}

impl NewChange {
    pub fn now(op: Op, path: Vec<u8>, path2: Option<Vec<u8>>) -> NewChange {
        NewChange {
            time_ns: now_ns(),
            op,
            path,
            path2,
        }
    }
}

/// A recorded change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub time_ns: i64,
    pub op: Op,
    pub path: Vec<u8>,
    pub path2: Option<Vec<u8>>,
}

/// How far the slave has durably applied the journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marker {
    pub seq: u64,
    /// Time of the newest change covered, ns since the epoch (for lag).
    pub time_ns: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("journal {0}: unknown op in row; written by a newer georep?")]
    UnknownOp(String),
}

impl JournalError {
    /// Locked or busy: another connection holds the database for a moment.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            JournalError::Sqlite {
                source: rusqlite::Error::SqliteFailure(e, _),
                ..
            } if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

pub type Result<T> = std::result::Result<T, JournalError>;

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub struct Journal {
    conn: Connection,
    path: String,
    /// The database file, for the inode index's own connection.
    file: PathBuf,
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal> {
        let shown = path.display().to_string();
        let err = |source| JournalError::Sqlite {
            path: shown.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA auto_vacuum = INCREMENTAL;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS changes (
                 seq INTEGER PRIMARY KEY,
                 time_ns INTEGER NOT NULL,
                 op INTEGER NOT NULL,
                 path BLOB NOT NULL,
                 path2 BLOB
             );
             CREATE TABLE IF NOT EXISTS marker (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 seq INTEGER NOT NULL,
                 time_ns INTEGER NOT NULL
             );
             INSERT OR IGNORE INTO marker (id, seq, time_ns) VALUES (1, 0, 0);",
        )
        .and_then(|_| conn.execute_batch(Self::CONTROL_SCHEMA))
        .and_then(|_| conn.execute_batch(Self::FAILURES_SCHEMA))
        .and_then(|_| conn.execute_batch(Self::INODES_SCHEMA))
        .map_err(err)?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(Journal {
            conn,
            path: shown,
            file: path.to_path_buf(),
        })
    }

    /// Opens a journal that must already exist (for readers such as `status`).
    pub fn open_existing(path: &Path) -> Result<Journal> {
        if !path.exists() {
            return Err(JournalError::Sqlite {
                path: path.display().to_string(),
                source: rusqlite::Error::InvalidPath(path.to_path_buf()),
            });
        }
        Journal::open(path)
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
        |source| JournalError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends changes in one transaction; returns the last sequence number.
    pub fn append(&mut self, changes: &[NewChange]) -> Result<u64> {
        let path = self.path.clone();
        let err = |source| JournalError::Sqlite {
            path: path.clone(),
            source,
        };
        // Written at once (a read before the write could find the snapshot
        // stale), numbered after the marker: trimming an idle journal
        // empties the table, and a bare rowid would start again at 1,
        // behind the marker, as if acked.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let next: i64 = tx
            .query_row(
                "SELECT MAX(COALESCE((SELECT MAX(seq) FROM changes), 0),
                            (SELECT seq FROM marker WHERE id = 1)) + 1",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO changes (seq, time_ns, op, path, path2) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(err)?;
            for (i, c) in changes.iter().enumerate() {
                st.execute(params![
                    next + i as i64,
                    c.time_ns,
                    c.op as u8,
                    c.path,
                    c.path2
                ])
                .map_err(err)?;
            }
        }
        let last = (next - 1 + changes.len() as i64) as u64;
        tx.commit().map_err(err)?;
        Ok(last)
    }

    /// Up to `limit` changes after `seq`, in order.
    pub fn read_after(&self, seq: u64, limit: usize) -> Result<Vec<Change>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT seq, time_ns, op, path, path2 FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map(params![seq as i64, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Option<Vec<u8>>>(4)?,
                ))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, time_ns, op, path, path2) = row.map_err(self.err())?;
            let op = Op::from_i64(op).ok_or_else(|| JournalError::UnknownOp(self.path.clone()))?;
            out.push(Change {
                seq: seq as u64,
                time_ns,
                op,
                path,
                path2,
            });
        }
        Ok(out)
    }

    pub fn last_seq(&self) -> Result<u64> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT MAX(seq) FROM changes", [], |r| r.get(0))
            .optional()
            .map_err(self.err())?
            .flatten();
        Ok(v.unwrap_or(0).max(self.marker()?.seq as i64) as u64)
    }

    pub fn marker(&self) -> Result<Marker> {
        self.conn
            .query_row("SELECT seq, time_ns FROM marker WHERE id = 1", [], |r| {
                Ok(Marker {
                    seq: r.get::<_, i64>(0)? as u64,
                    time_ns: r.get(1)?,
                })
            })
            .map_err(self.err())
    }

    /// Records a durable ack from the slave. The marker never moves back.
    pub fn ack(&self, m: Marker) -> Result<()> {
        self.conn
            .execute(
                "UPDATE marker SET seq = ?1, time_ns = ?2 WHERE id = 1 AND seq <= ?1",
                params![m.seq as i64, m.time_ns],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Taking a session over from another node: this node's changes from
    /// `time_ns` on are owed again (its own marker may be ahead of what the
    /// slave has, or far behind it). Moves the marker either way.
    pub fn replay_from(&self, time_ns: i64) -> Result<Marker> {
        // Nothing older kept: everything kept is owed.
        let seq = match self.older_prefix_end(time_ns, i64::MAX)? {
            Some(s) => s,
            None => self
                .conn
                .query_row("SELECT COALESCE(MIN(seq), 1) - 1 FROM changes", [], |r| {
                    r.get(0)
                })
                .map_err(self.err())?,
        };
        let m = Marker {
            seq: seq.max(0) as u64,
            time_ns,
        };
        self.conn
            .execute(
                "UPDATE marker SET seq = ?1, time_ns = ?2 WHERE id = 1",
                params![m.seq as i64, m.time_ns],
            )
            .map_err(self.err())?;
        Ok(m)
    }

    /// A passive node ships nothing, so nothing is acked: it forgets what
    /// is older than `retention` whatever the marker says (a takeover
    /// replays what is kept, and crawls).
    pub fn trim_unacked(&self, retention: Duration) -> Result<usize> {
        let cutoff = now_ns() - retention.as_nanos() as i64;
        match self.older_prefix_end(cutoff, i64::MAX)? {
            Some(seq) => {
                self.ack(Marker {
                    seq: seq as u64,
                    time_ns: cutoff,
                })?;
                self.trim(retention)
            }
            None => Ok(0),
        }
    }

    /// Forgets acked changes older than `retention` (kept for failover).
    pub fn trim(&self, retention: Duration) -> Result<usize> {
        let marker = self.marker()?;
        let cutoff = now_ns() - retention.as_nanos() as i64;
        let Some(end) = self.older_prefix_end(cutoff, marker.seq as i64)? else {
            // Nothing to forget: no write, so the recorder's commits never
            // wait for us.
            return Ok(0);
        };
        let n = self
            .conn
            .execute("DELETE FROM changes WHERE seq <= ?1", params![end])
            .map_err(self.err())?;
        if n > 0 {
            // Give the freed pages back (journals made before auto_vacuum
            // was set keep their size: a no-op there).
            self.conn
                .execute_batch("PRAGMA incremental_vacuum;")
                .map_err(self.err())?;
        }
        Ok(n)
    }

    /// The last change of the journal's oldest stretch recorded before
    /// `cutoff`, among those up to `upto` (None: there is none). Changes
    /// are appended in time order, so this reads only that stretch and the
    /// row after it: a query on time alone would read the whole journal
    /// (an hour of changes under churn), and a DELETE doing so on every
    /// round held the recorder's commits back for as long. Should the clock
    /// step back, the stretch ends early: changes are kept (or replayed)
    /// longer, never dropped sooner.
    fn older_prefix_end(&self, cutoff: i64, upto: i64) -> Result<Option<i64>> {
        let first_newer: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM changes WHERE seq <= ?1 AND time_ns >= ?2 ORDER BY seq LIMIT 1",
                params![upto, cutoff],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        let end = first_newer.map_or(upto, |s| s - 1);
        self.conn
            .query_row(
                "SELECT MAX(seq) FROM changes WHERE seq <= ?1",
                params![end],
                |r| r.get(0),
            )
            .map_err(self.err())
    }

    /// Unacked changes by kind: entry ops, data, metadata.
    pub fn pending_by_kind(&self) -> Result<(u64, u64, u64)> {
        let m = self.marker()?;
        let mut st = self
            .conn
            .prepare_cached("SELECT op, COUNT(*) FROM changes WHERE seq > ?1 GROUP BY op")
            .map_err(self.err())?;
        let rows = st
            .query_map(params![m.seq as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(self.err())?;
        let (mut entry, mut data, mut meta) = (0, 0, 0);
        for row in rows {
            let (op, n) = row.map_err(self.err())?;
            match Op::from_i64(op) {
                Some(Op::Data) => data += n as u64,
                Some(Op::Meta) => meta += n as u64,
                Some(Op::Barrier) => {}
                _ => entry += n as u64,
            }
        }
        Ok((entry, data, meta))
    }

    /// Time of the oldest unacked change, if any. Checkpoint barriers are
    /// not changes: one left unacked after its checkpoint completed is no lag.
    pub fn oldest_pending_ns(&self) -> Result<Option<i64>> {
        let m = self.marker()?;
        self.conn
            .query_row(
                "SELECT time_ns FROM changes WHERE seq > ?1 AND op != ?2 ORDER BY seq LIMIT 1",
                params![m.seq as i64, Op::Barrier as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())
    }

    /// Changes recorded but not yet acked.
    pub fn pending(&self) -> Result<u64> {
        let m = self.marker()?;
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM changes WHERE seq > ?1",
                params![m.seq as i64],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_ack_trim_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let mut j = Journal::open(&path).unwrap();
        let changes: Vec<_> = (0..10u8)
            .map(|i| NewChange::now(Op::Data, vec![b'f', 0xff, i], None))
            .collect();
        assert_eq!(j.append(&changes).unwrap(), 10);
        j.append(&[NewChange::now(
            Op::Rename,
            b"a".to_vec(),
            Some(b"b".to_vec()),
        )])
        .unwrap();
        let got = j.read_after(8, 100).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].path, vec![b'f', 0xff, 8]);
        assert_eq!(got[2].op, Op::Rename);
        assert_eq!(got[2].path2.as_deref(), Some(&b"b"[..]));

        j.ack(Marker { seq: 9, time_ns: 1 }).unwrap();
        j.ack(Marker { seq: 3, time_ns: 0 }).unwrap(); // never backwards
        assert_eq!(j.marker().unwrap().seq, 9);
        assert_eq!(j.pending().unwrap(), 2);
        assert_eq!(j.trim(Duration::ZERO).unwrap(), 9);
        drop(j);

        let j = Journal::open(&path).unwrap();
        assert_eq!(j.marker().unwrap().seq, 9);
        assert_eq!(j.last_seq().unwrap(), 11);
        assert_eq!(j.read_after(0, 100).unwrap().len(), 2);
    }

    #[test]
    fn changes_after_an_emptied_journal_are_still_owed() {
        // An idle session's trim forgets every change; the next one must
        // still come after the marker, or it would count as acked.
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let last = j
            .append(&[
                NewChange::now(Op::Data, b"a".to_vec(), None),
                NewChange::now(Op::Data, b"b".to_vec(), None),
            ])
            .unwrap();
        j.ack(Marker {
            seq: last,
            time_ns: 1,
        })
        .unwrap();
        assert_eq!(j.trim(Duration::ZERO).unwrap(), 2);
        let next = j
            .append(&[NewChange::now(Op::Data, b"c".to_vec(), None)])
            .unwrap();
        assert!(next > last, "seq {next} after marker {last}");
        let owed = j.read_after(j.marker().unwrap().seq, 10).unwrap();
        assert_eq!(owed.len(), 1);
        assert_eq!(owed[0].path, b"c");
        assert_eq!(j.pending().unwrap(), 1);
    }

    #[test]
    fn trimming_reads_only_the_aged_stretch_and_never_waits_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut j = Journal::open(&path).unwrap();
        let at = |t: i64, name: &[u8]| NewChange {
            time_ns: t,
            ..NewChange::now(Op::Data, name.to_vec(), None)
        };
        let now = now_ns();
        let hour = 3_600_000_000_000i64;
        // Two old changes, a new one, then an old one again (the clock
        // stepped back): only the leading old stretch goes.
        let last = j
            .append(&[
                at(now - 2 * hour, b"a"),
                at(now - 2 * hour, b"b"),
                at(now, b"c"),
                at(now - 2 * hour, b"d"),
            ])
            .unwrap();
        j.ack(Marker {
            seq: last,
            time_ns: now,
        })
        .unwrap();
        assert_eq!(j.trim(Duration::from_secs(3600)).unwrap(), 2);
        let kept: Vec<Vec<u8>> = j
            .read_after(0, 10)
            .unwrap()
            .into_iter()
            .map(|c| c.path)
            .collect();
        assert_eq!(kept, vec![b"c".to_vec(), b"d".to_vec()]);
        // Nothing old at the head: trimming writes nothing, so it does not
        // wait for a writer holding the database (the recorder's commit).
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE;").unwrap();
        j.conn.busy_timeout(Duration::ZERO).unwrap();
        assert_eq!(j.trim(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(j.trim_unacked(Duration::from_secs(3600)).unwrap(), 0);
        other.execute_batch("COMMIT;").unwrap();
        // A takeover replays from the first change not older than asked:
        // the old changes behind a newer one are replayed too.
        j.append(&[at(now - 2 * hour, b"e")]).unwrap();
        assert_eq!(j.replay_from(now - hour).unwrap().seq, 2);
        assert_eq!(j.pending().unwrap(), 3);
    }

    #[test]
    fn replay_from_a_time_moves_the_marker_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let mut at = Vec::new();
        for i in 0..5u8 {
            j.append(&[NewChange::now(Op::Data, vec![i], None)])
                .unwrap();
            at.push(j.read_after(i as u64, 1).unwrap()[0].time_ns);
        }
        j.ack(Marker {
            seq: 5,
            time_ns: at[4],
        })
        .unwrap();
        // Back: the slave has less than this node acked.
        assert_eq!(j.replay_from(at[2]).unwrap().seq, 2);
        assert_eq!(j.pending().unwrap(), 3);
        // Before anything kept: all of it.
        assert_eq!(j.replay_from(at[0] - 1).unwrap().seq, 0);
        assert_eq!(j.pending().unwrap(), 5);
        // Passive trimming forgets old changes though unacked.
        assert_eq!(j.trim_unacked(Duration::ZERO).unwrap(), 5);
        assert_eq!(j.pending().unwrap(), 0);
    }

    #[test]
    fn a_pending_barrier_is_no_lag() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        j.append(&[NewChange::now(Op::Barrier, b"cp".to_vec(), None)])
            .unwrap();
        assert_eq!(j.oldest_pending_ns().unwrap(), None);
        assert_eq!(j.pending_by_kind().unwrap(), (0, 0, 0));
        j.append(&[NewChange::now(Op::Data, b"f".to_vec(), None)])
            .unwrap();
        let data_time = j.read_after(1, 1).unwrap()[0].time_ns;
        assert_eq!(j.oldest_pending_ns().unwrap(), Some(data_time));
    }
}
