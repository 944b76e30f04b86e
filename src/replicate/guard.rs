//! The deletion guard (DESIGN.md invariant 10): a round's deletions are
//! collected while it walks and counted, whole subtrees included, before any
//! is sent; a round over a limit deletes nothing and says why.

use std::sync::atomic::Ordering::Relaxed;

use super::conn::Conn;
use super::observe::{Diff, Item, What};
use super::walk::Planner;
use crate::confine::{join, show};
use crate::error::{Error, Result};
use crate::meta::{Entry, Kind};
use crate::proto::Msg;

/// A replica smaller than this is not judged by share (a small replica
/// that lags a busy source loses most of its entries in ordinary rounds);
/// the top-level rule and `max_delete` still guard it.
pub const PERCENT_MIN_ENTRIES: u64 = 1000;

/// Deletions of the rounds within this window count against the share.
pub const DELETE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// A slave entry the round would remove.
pub(super) struct Doomed {
    pub(super) path: Vec<u8>,
    /// The slave entry's type.
    pub(super) kind: Kind,
}

impl Doomed {
    pub(super) fn dir(&self) -> bool {
        self.kind == Kind::Dir
    }
}

impl Planner<'_> {
    /// Notes a slave-only entry for removal at the end of the walk.
    pub(super) fn doom(&mut self, dir: &[u8], s: &Entry) {
        self.doomed.push(Doomed {
            path: join(dir, &s.name),
            kind: s.kind,
        });
    }

    /// Sends the round's deletions if they are within the limits; otherwise
    /// sends none and returns the refusal (the caller finishes the round first).
    pub(super) fn settle_deletes(&mut self) -> Result<Option<String>> {
        let doomed = std::mem::take(&mut self.doomed);
        if doomed.is_empty() {
            return Ok(None);
        }
        let limits = self.opts.limits;
        if limits.active() && !self.override_deletes {
            let max_cost = limits.max.map_or(u64::MAX, |m| m.saturating_add(1));
            let mut cost = 0u64;
            for d in &doomed {
                cost += 1;
                if d.dir() && cost < max_cost {
                    cost += count_below(self.conn, &d.path, max_cost - cost)?;
                }
                if cost >= max_cost {
                    break;
                }
            }
            // A full round listed the whole replica; a targeted round or a
            // crawl slice relies on the running estimate, if there is one.
            // Size when the round began: a full round listed it whole; a
            // targeted round or a crawl slice has the running estimate, if any.
            let size0 = match self.whole {
                true => Some(self.listed.get() + cost),
                false => self.estimate,
            };
            // The share is a net loss over the window: an `rm -rf` arrives
            // in several batches, each a small share, while a busy tree that
            // creates as much as it deletes loses nothing.
            let (recent_removed, recent_created) = self.recent;
            let created = self.rep.counters.entries_created.load(Relaxed) - self.created_before;
            let start = size0.map(|s| (s + recent_removed).saturating_sub(recent_created));
            let loss = (recent_removed + cost).saturating_sub(recent_created + created);
            let why = if limits.max.is_some_and(|m| cost > m) {
                Some(format!(
                    "{} entries or more, over max_delete = {}",
                    cost,
                    limits.max.unwrap_or(0)
                ))
            } else if limits.percent.is_some() && self.root_emptied {
                Some(format!(
                    "all {} top-level entries of the replica, since the source holds none \
                     (an emptied or unmounted source?)",
                    doomed.iter().filter(|d| !d.path.contains(&b'/')).count()
                ))
            } else {
                limits.percent.zip(start).and_then(|(p, start)| {
                    let over = start >= PERCENT_MIN_ENTRIES && loss * 100 > p as u64 * start;
                    over.then(|| {
                        format!(
                            "{cost} entries, a net loss of {loss} of the replica's {start} \
                             within {} s, over max_delete_percent = {p}",
                            DELETE_WINDOW.as_secs()
                        )
                    })
                })
            };
            self.removed_cost = Some(cost);
            if let Some(why) = why {
                self.rep
                    .counters
                    .deletions_refused
                    .fetch_add(doomed.len() as u64, Relaxed);
                let first = show(&doomed[0].path);
                return Ok(Some(format!(
                    "safety halt: this round would delete {why}; deleted nothing (first: \
                     {first}). If that is intended: raise the limit (`sync --max-delete N`; \
                     session keys max_delete, max_delete_percent) or, for a session, let it \
                     through once with `georep start --force NAME`"
                )));
            }
        }
        if limits.active() && self.override_deletes {
            self.override_used = true;
        }
        self.removed = self.removed_cost.take().unwrap_or(doomed.len() as u64);
        for d in doomed {
            self.rep.change(&Item {
                what: What::Deleted,
                kind: d.kind,
                path: &d.path,
                diff: Diff::default(),
                target: None,
            });
            self.rep.counters.entries_deleted.fetch_add(1, Relaxed);
            self.mutate(&Msg::Remove { path: d.path })?;
        }
        Ok(None)
    }

    /// Whether the source root holds nothing that would be replicated.
    pub(super) fn source_root_empty(&self) -> bool {
        let Ok(mut dir) = rustix::fs::Dir::read_from(self.source.fd()) else {
            return false;
        };
        while let Some(Ok(e)) = dir.read() {
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." || crate::meta::is_temp_name(name) {
                continue;
            }
            let is_dir = e.file_type() == rustix::fs::FileType::Directory;
            if !self.opts.excluder.excluded(name, is_dir) {
                return false;
            }
        }
        true
    }
}

/// Entries the slave holds below `rel`, counted up to `cap`.
fn count_below(conn: &Conn, rel: &[u8], cap: u64) -> Result<u64> {
    let mut n = 0u64;
    let mut stack = vec![rel.to_vec()];
    while let Some(dir) = stack.pop() {
        let id = conn.next_id();
        let rx = conn.request(
            id,
            &Msg::ListDir {
                id,
                path: dir.clone(),
                xattrs: false,
                checksum: false,
            },
        )?;
        loop {
            match conn.wait(&rx)? {
                Msg::DirEntries { entries, last, .. } => {
                    n += entries.len() as u64;
                    stack.extend(
                        entries
                            .iter()
                            .filter(|e| e.kind == Kind::Dir)
                            .map(|e| join(&dir, &e.name)),
                    );
                    if last {
                        break;
                    }
                }
                other => return Err(Error::Protocol(format!("unexpected reply {other:?}"))),
            }
        }
        if n >= cap {
            break;
        }
    }
    Ok(n)
}
