//! Entries the slave (or the source) keeps refusing: kept here so the
//! marker can pass them without losing them. A failed entry is retried on
//! its own with growing delays, then parked: retried only by crawls and
//! rescans, and listed in status until it replicates.

use std::time::Duration;

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{now_ns, Journal, Result};

/// Retries on its own before an entry is parked.
pub const PARK_AFTER: u32 = 3;

/// A failed entry as status lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The entry's path below the root, lossily shown.
    pub path: String,
    pub error: String,
    pub attempts: u32,
    pub parked: bool,
    /// Unix seconds of its first failure.
    pub since: f64,
}

/// Failed entries: all of them, and how many are parked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureCount {
    pub failed: u64,
    pub parked: u64,
}

/// The wait before retry `attempt` (1-based): 1, 2, 4 s...
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1 << attempt.saturating_sub(1).min(6))
}

impl Journal {
    pub(super) const FAILURES_SCHEMA: &'static str = "CREATE TABLE IF NOT EXISTS failures (
             path BLOB PRIMARY KEY,
             error TEXT NOT NULL,
             attempts INTEGER NOT NULL,
             seq INTEGER NOT NULL,
             first_ns INTEGER NOT NULL,
             last_ns INTEGER NOT NULL,
             next_ns INTEGER NOT NULL,
             parked INTEGER NOT NULL
         );";

    /// Records that these entries failed in a round covering the journal up
    /// to `seq`, in one transaction.
    pub fn record_failures(&mut self, failed: &[(Vec<u8>, String)], seq: u64) -> Result<()> {
        let now = now_ns();
        let path = self.path.clone();
        let err = |source| super::JournalError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        for (p, e) in failed {
            let attempts: u32 = tx
                .query_row("SELECT attempts FROM failures WHERE path = ?1", [p], |r| {
                    r.get(0)
                })
                .unwrap_or(0)
                + 1;
            let next = now + retry_delay(attempts).as_nanos() as i64;
            tx.execute(
                "INSERT INTO failures (path, error, attempts, seq, first_ns, last_ns, next_ns, parked)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)
                 ON CONFLICT (path) DO UPDATE SET error = excluded.error,
                     attempts = excluded.attempts, last_ns = excluded.last_ns,
                     next_ns = excluded.next_ns, parked = excluded.parked",
                params![p, e, attempts, seq as i64, now, next, attempts > PARK_AFTER],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Up to `limit` failed entries due for a retry of their own.
    pub fn due_failures(&self, limit: usize) -> Result<Vec<Vec<u8>>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT path FROM failures WHERE parked = 0 AND next_ns <= ?1 ORDER BY next_ns LIMIT ?2",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map(params![now_ns(), limit as i64], |r| r.get(0))
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    /// Forgets these entries: they replicated.
    pub fn clear_failures(&self, paths: &[Vec<u8>]) -> Result<()> {
        for p in paths {
            self.conn
                .execute("DELETE FROM failures WHERE path = ?1", [p])
                .map_err(self.err())?;
        }
        Ok(())
    }

    /// Forgets entries at or below `under` (everything for an empty path)
    /// that have not failed since `since_ns`: a round that covered them
    /// all, started then, did not fail them again.
    pub fn clear_failures_under(&self, under: &[u8], since_ns: i64) -> Result<()> {
        let rows = self.failure_paths()?;
        let gone: Vec<Vec<u8>> = rows
            .into_iter()
            .filter(|(p, last)| *last < since_ns && is_under(p, under))
            .map(|(p, _)| p)
            .collect();
        self.clear_failures(&gone)
    }

    fn failure_paths(&self) -> Result<Vec<(Vec<u8>, i64)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT path, last_ns FROM failures")
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    pub fn failure_count(&self) -> Result<FailureCount> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(parked), 0) FROM failures",
                [],
                |r| {
                    Ok(FailureCount {
                        failed: r.get::<_, i64>(0)? as u64,
                        parked: r.get::<_, i64>(1)? as u64,
                    })
                },
            )
            .map_err(self.err())
    }

    /// Whether an entry that failed in a round covering changes up to `seq`
    /// (or earlier) is still owed.
    pub fn failures_at_or_before(&self, seq: u64) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM failures WHERE seq <= ?1)",
                [seq as i64],
                |r| r.get(0),
            )
            .map_err(self.err())
    }

    /// Up to `limit` failed entries, oldest first.
    pub fn failures(&self, limit: usize) -> Result<Vec<Failure>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT path, error, attempts, parked, first_ns FROM failures ORDER BY first_ns LIMIT ?1",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([limit as i64], |r| {
                Ok(Failure {
                    path: String::from_utf8_lossy(&r.get::<_, Vec<u8>>(0)?).into_owned(),
                    error: r.get(1)?,
                    attempts: r.get(2)?,
                    parked: r.get(3)?,
                    since: r.get::<_, i64>(4)? as f64 / 1e9,
                })
            })
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }
}

/// Whether `p` is `under` or below it (every path is below the root).
fn is_under(p: &[u8], under: &[u8]) -> bool {
    under.is_empty() || p == under || (p.starts_with(under) && p.get(under.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_retry_park_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("journal.db")).unwrap();
        let f = |p: &str| vec![(p.as_bytes().to_vec(), "EROFS".to_string())];
        j.record_failures(&f("ro/x"), 5).unwrap();
        // Not due for a second yet.
        assert!(j.due_failures(10).unwrap().is_empty());
        for _ in 0..PARK_AFTER {
            j.record_failures(&f("ro/x"), 6).unwrap();
        }
        let listed = j.failures(10).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].parked);
        assert_eq!(listed[0].attempts, PARK_AFTER + 1);
        assert_eq!(
            j.failure_count().unwrap(),
            FailureCount {
                failed: 1,
                parked: 1
            }
        );
        assert!(j.failures_at_or_before(5).unwrap());
        assert!(!j.failures_at_or_before(4).unwrap());
        j.record_failures(&f("other"), 9).unwrap();
        j.clear_failures_under(b"ro", now_ns()).unwrap();
        assert_eq!(j.failure_count().unwrap().failed, 1);
        j.clear_failures_under(b"", 0).unwrap();
        assert_eq!(j.failure_count().unwrap().failed, 1);
        j.clear_failures_under(b"", now_ns()).unwrap();
        assert_eq!(j.failure_count().unwrap().failed, 0);
    }

    #[test]
    fn under_means_the_path_or_below() {
        assert!(is_under(b"a/b", b"a"));
        assert!(is_under(b"a", b"a"));
        assert!(!is_under(b"ab", b"a"));
        assert!(is_under(b"x", b""));
    }
}
