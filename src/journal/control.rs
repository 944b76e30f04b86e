//! What the operator asked of a session, kept in its journal so that it
//! survives restarts and commits with the marker: paused or not, and the
//! checkpoint.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{now_ns, Journal, Op, Result};

/// A point in the journal, complete once every change recorded before it
/// is durably on the slave (gluster's names for the times).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Unix seconds the checkpoint stands for.
    pub time: f64,
    /// The last change recorded at that time.
    pub seq: u64,
    /// Unix seconds it completed, once it has.
    pub completed_at: Option<f64>,
}

impl Journal {
    pub(super) const CONTROL_SCHEMA: &'static str = "CREATE TABLE IF NOT EXISTS control (
             key TEXT PRIMARY KEY,
             value TEXT NOT NULL
         );";

    fn setting(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM control WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.err())
    }

    fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        match value {
            Some(v) => self.conn.execute(
                "INSERT INTO control (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, v],
            ),
            None => self
                .conn
                .execute("DELETE FROM control WHERE key = ?1", [key]),
        }
        .map_err(self.err())?;
        Ok(())
    }

    pub fn paused(&self) -> Result<bool> {
        Ok(self.setting("paused")?.is_some())
    }

    pub fn set_paused(&self, paused: bool) -> Result<()> {
        self.set_setting("paused", paused.then_some("1"))
    }

    pub fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        Ok(self
            .setting("checkpoint")?
            .and_then(|v| serde_json::from_str(&v).ok()))
    }

    pub fn set_checkpoint(&self, c: &Checkpoint) -> Result<()> {
        let text = serde_json::to_string(c).expect("checkpoint serializes");
        self.set_setting("checkpoint", Some(&text))
    }

    /// A checkpoint at `time_ns` (now if None): the journal position of the
    /// last change recorded by then. A time older than the oldest row kept
    /// stands for what the marker already covers.
    pub fn checkpoint_at(&self, time_ns: Option<i64>) -> Result<Checkpoint> {
        let t = time_ns.unwrap_or_else(now_ns);
        let seq: Option<i64> = self
            .conn
            .query_row(
                "SELECT MAX(seq) FROM changes WHERE time_ns <= ?1",
                [t],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        let seq = match (time_ns, seq) {
            (None, _) => self.last_seq()?,
            (Some(_), Some(s)) => s as u64,
            (Some(_), None) => 0,
        };
        Ok(Checkpoint {
            time: t as f64 / 1e9,
            seq,
            completed_at: None,
        })
    }

    /// The position of the barrier journaled for `token` after `after`
    /// (the journal's end when it was made), once it is: only what came
    /// since is read, not the whole journal on every commit.
    pub fn barrier_seq(&self, token: &[u8], after: u64) -> Result<Option<u64>> {
        self.conn
            .query_row(
                "SELECT MAX(seq) FROM changes WHERE seq > ?1 AND op = ?2 AND path = ?3",
                params![after as i64, Op::Barrier as i64, token],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map(|s| s.map(|s| s as u64))
            .map_err(self.err())
    }

    /// Whether a change (not a barrier) at or before `seq` is still unacked.
    pub fn owed_up_to(&self, seq: u64) -> Result<bool> {
        let m = self.marker()?;
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM changes WHERE seq > ?1 AND seq <= ?2 AND op != ?3)",
                params![m.seq as i64, seq as i64, Op::Barrier as i64],
                |r| r.get(0),
            )
            .map_err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NewChange, Op};
    use super::*;

    #[test]
    fn pause_and_checkpoint_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let mut j = Journal::open(&path).unwrap();
        assert!(!j.paused().unwrap());
        j.set_paused(true).unwrap();
        let mut a = NewChange::now(Op::Data, b"a".to_vec(), None);
        a.time_ns = 1_000;
        let mut b = NewChange::now(Op::Data, b"b".to_vec(), None);
        b.time_ns = 3_000;
        j.append(&[a, b]).unwrap();
        assert_eq!(j.checkpoint_at(Some(2_000)).unwrap().seq, 1);
        assert_eq!(j.checkpoint_at(Some(500)).unwrap().seq, 0);
        let now = j.checkpoint_at(None).unwrap();
        assert_eq!(now.seq, 2);
        j.set_checkpoint(&now).unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert!(j.paused().unwrap());
        assert_eq!(j.checkpoint().unwrap(), Some(now));
        j.set_paused(false).unwrap();
        assert!(!j.paused().unwrap());
    }
}
