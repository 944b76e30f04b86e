//! The inode index: for an inode of the source, one path at which the
//! slave is known to hold it, so that a hard link made while a session
//! runs can be shipped as a link to that name instead of as a copy that
//! only a crawl of the whole tree would join to its group.
//!
//! Rows are hints, never trusted: the planner checks each on the source
//! (the path still names that inode) and on the slave (the name is there,
//! with the content the source has) before anything is linked to it, and
//! falls back to a copy and a crawl otherwise (replicate/links.rs). So the
//! table may lag behind the tree; it is kept close by what rounds report:
//! names they placed (every non-directory of a live round, the leaders of
//! hard-link groups of any round: a crawl does not index single-link
//! files, which would make the index as large as the tree), renames,
//! removals, and rows found stale. One row per inode and one per path.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{Journal, JournalError, Result};
use crate::replicate::{HintUpdate, InodeHints};

/// The index's own connection to the journal's database: the replicator
/// keeps it across rounds on the worker's thread.
pub struct InodeIndex {
    conn: Connection,
    path: String,
}

impl Journal {
    pub(super) const INODES_SCHEMA: &'static str = "CREATE TABLE IF NOT EXISTS inodes (
             dev INTEGER NOT NULL,
             ino INTEGER NOT NULL,
             path BLOB NOT NULL,
             PRIMARY KEY (dev, ino)
         ) WITHOUT ROWID;
         CREATE UNIQUE INDEX IF NOT EXISTS inodes_path ON inodes (path);";

    /// A connection to this journal's inode index.
    pub fn inode_index(&self) -> Result<InodeIndex> {
        InodeIndex::open(&self.file)
    }
}

impl InodeIndex {
    fn open(file: &Path) -> Result<InodeIndex> {
        let path = file.display().to_string();
        let conn = Connection::open(file)
            .and_then(|c| c.execute_batch("PRAGMA synchronous = NORMAL;").map(|_| c))
            .map_err(|source| JournalError::Sqlite {
                path: path.clone(),
                source,
            })?;
        Ok(InodeIndex { conn, path })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
        |source| JournalError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The path recorded for an inode, if any.
    pub fn lookup(&self, dev: u64, ino: u64) -> Result<Option<Vec<u8>>> {
        self.conn
            .prepare_cached("SELECT path FROM inodes WHERE dev = ?1 AND ino = ?2")
            .and_then(|mut st| {
                st.query_row(params![dev as i64, ino as i64], |r| r.get(0))
                    .optional()
            })
            .map_err(self.err())
    }

    /// Applies what a round did, in one transaction, in the round's order:
    /// renames, removals, stale rows, then the names it placed.
    pub fn apply(&mut self, u: &HintUpdate) -> Result<()> {
        let path = self.path.clone();
        let err = |source| JournalError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        apply(&tx, u).map_err(err)?;
        tx.commit().map_err(err)
    }
}

fn apply(tx: &Transaction, u: &HintUpdate) -> rusqlite::Result<()> {
    // The rows at or below a path: `p`, then from `p/` up to `p0` ('0'
    // follows '/'), compared as bytes.
    const UNDER: &str = "(path = ?1 OR (path >= ?2 AND path < ?3))";
    let bounds = |p: &[u8]| (p.to_vec(), [p, b"/"].concat(), [p, b"0"].concat());
    for (from, to) in &u.renamed {
        // Whatever the rename replaced at `to` is gone.
        let (p, lo, hi) = bounds(to);
        tx.execute(
            &format!("DELETE FROM inodes WHERE {UNDER}"),
            params![p, lo, hi],
        )?;
        let (p, lo, hi) = bounds(from);
        // Concatenation yields text: cast back, so a moved path still
        // compares as the bytes it is.
        tx.execute(
            &format!(
                "UPDATE OR REPLACE inodes SET path = CAST(?4 || substr(path, ?5) AS BLOB)
                 WHERE {UNDER}"
            ),
            params![p, lo, hi, to, from.len() as i64 + 1],
        )?;
    }
    for removed in &u.removed {
        let (p, lo, hi) = bounds(removed);
        tx.execute(
            &format!("DELETE FROM inodes WHERE {UNDER}"),
            params![p, lo, hi],
        )?;
    }
    for (dev, ino) in &u.stale {
        tx.execute(
            "DELETE FROM inodes WHERE dev = ?1 AND ino = ?2",
            params![*dev as i64, *ino as i64],
        )?;
    }
    let mut put =
        tx.prepare_cached("INSERT OR REPLACE INTO inodes (dev, ino, path) VALUES (?1, ?2, ?3)")?;
    for (dev, ino, p) in &u.placed {
        put.execute(params![*dev as i64, *ino as i64, p])?;
    }
    Ok(())
}

impl InodeHints for InodeIndex {
    fn lookup(&self, dev: u64, ino: u64) -> crate::error::Result<Option<Vec<u8>>> {
        Ok(InodeIndex::lookup(self, dev, ino)?)
    }

    fn update(&mut self, u: &HintUpdate) -> crate::error::Result<()> {
        Ok(self.apply(u)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(rows: &[(u64, &[u8])]) -> HintUpdate {
        HintUpdate {
            placed: rows.iter().map(|(i, p)| (7, *i, p.to_vec())).collect(),
            ..HintUpdate::default()
        }
    }

    #[test]
    fn renames_removals_and_one_row_per_path_and_inode() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("journal.db")).unwrap();
        let mut ix = j.inode_index().unwrap();
        let odd: &[u8] = b"d\xff/x\n";
        ix.apply(&placed(&[
            (1, b"a/x"),
            (2, odd),
            (3, b"d\xff0"),
            (4, b"d\xff/sub/y"),
            (5, b"e/z"),
        ]))
        .unwrap();
        assert_eq!(ix.lookup(7, 2).unwrap().as_deref(), Some(odd));
        assert_eq!(ix.lookup(8, 2).unwrap(), None);

        // A directory renamed over another: what was below `e` is gone,
        // what was below `d\xff` moves (its sibling `d\xff0` does not).
        ix.apply(&HintUpdate {
            renamed: vec![(b"d\xff".to_vec(), b"e".to_vec())],
            ..HintUpdate::default()
        })
        .unwrap();
        assert_eq!(ix.lookup(7, 2).unwrap().as_deref(), Some(&b"e/x\n"[..]));
        assert_eq!(ix.lookup(7, 4).unwrap().as_deref(), Some(&b"e/sub/y"[..]));
        assert_eq!(ix.lookup(7, 3).unwrap().as_deref(), Some(&b"d\xff0"[..]));
        assert_eq!(ix.lookup(7, 5).unwrap(), None);

        // Removed subtrees and stale inodes go; a path placed again
        // belongs to its new inode alone, an inode to its latest name.
        ix.apply(&HintUpdate {
            removed: vec![b"e/sub".to_vec()],
            stale: vec![(7, 3)],
            placed: vec![(7, 9, b"a/x".to_vec()), (7, 2, b"f".to_vec())],
            ..HintUpdate::default()
        })
        .unwrap();
        assert_eq!(ix.lookup(7, 4).unwrap(), None);
        assert_eq!(ix.lookup(7, 3).unwrap(), None);
        assert_eq!(ix.lookup(7, 1).unwrap(), None);
        assert_eq!(ix.lookup(7, 9).unwrap().as_deref(), Some(&b"a/x"[..]));
        assert_eq!(ix.lookup(7, 2).unwrap().as_deref(), Some(&b"f"[..]));

        // Kept across a reopen, and large inode numbers survive i64.
        ix.apply(&placed(&[(u64::MAX, b"big")])).unwrap();
        drop(ix);
        let ix = Journal::open(&dir.path().join("journal.db"))
            .unwrap()
            .inode_index()
            .unwrap();
        assert_eq!(
            ix.lookup(7, u64::MAX).unwrap().as_deref(),
            Some(&b"big"[..])
        );
        assert_eq!(ix.lookup(7, 9).unwrap().as_deref(), Some(&b"a/x"[..]));
    }
}
