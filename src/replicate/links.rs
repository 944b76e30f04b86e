//! Hard-link groups: the first name of an inode a round meets leads (it
//! carries the content); the others follow, linked to it at the round's end
//! once every leader has its content. Every type but directories.
//!
//! A full round sees every name of a group. A targeted round (a session's
//! journal batch) may see only the new one: `ln a/x b/y` journals b/y
//! alone (inotify tells a directory's watch nothing of a link count).
//! There the session's inode hints ([`InodeHints`], journal/links.rs) name
//! a path at which the slave holds the inode; it leads once the source
//! still shows that inode there and the slave holds that name with the
//! content the source has (size and mtime, a symlink's target, a device's
//! number). The link is then sent like any other, and claimed: should the
//! slave refuse it (it cannot vouch for the inode, the name went away),
//! the new name is sent as a copy instead and a crawl forms the group.
//! Nothing uncertain is linked; nothing refused is lost.
//!
//! A targeted round owes a crawl ([`RoundOutcome::needs_full`]) when it
//! gave a group new content while names of it lie outside the round (they
//! keep the old inode on the slave), or when the slave refused one of its
//! links or a group member's metadata.
//!
//! [`RoundOutcome::needs_full`]: super::RoundOutcome::needs_full

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::observe::{Diff, Item, What};
use super::ship::{self, DataJob};
use super::walk::Planner;
use crate::confine::show;
use crate::error::Result;
use crate::meta::{self, Entry, Kind};
use crate::proto::Msg;

/// Where the slave holds inodes of the source, as earlier rounds left it:
/// hints, checked before use (a session keeps them in its journal).
pub trait InodeHints: Send {
    /// A path at which the slave was last known to hold inode (dev, ino).
    fn lookup(&self, dev: u64, ino: u64) -> Result<Option<Vec<u8>>>;
    /// Records what a round did.
    fn update(&mut self, u: &HintUpdate) -> Result<()>;
}

/// What a round did that moves the hints, applied in this order.
#[derive(Debug, Default)]
pub struct HintUpdate {
    /// Renames sent: what was at or below `from` is at `to`.
    pub renamed: Vec<(Vec<u8>, Vec<u8>)>,
    /// Paths removed from the slave, with everything below them.
    pub removed: Vec<Vec<u8>>,
    /// Inodes whose hint no longer names them on the source.
    pub stale: Vec<(u64, u64)>,
    /// (dev, ino, path): the slave now holds that inode at that path.
    pub placed: Vec<(u64, u64, Vec<u8>)>,
}

impl HintUpdate {
    fn is_empty(&self) -> bool {
        self.renamed.is_empty()
            && self.removed.is_empty()
            && self.stale.is_empty()
            && self.placed.is_empty()
    }
}

/// Placed names kept before they are written out (memory stays bounded
/// in a round that creates a large tree).
const HINTS_HELD: usize = 4096;

/// A hard-link group, by the source's (dev, ino).
pub(super) struct Leader {
    pub(super) rel: Vec<u8>,
    /// The slave inode now holding the leader's content, unless it is being replaced.
    pub(super) slave_ino: Option<u64>,
    /// Names of the group this round placed (the leader's included)...
    pub(super) names: u64,
    /// ...of this many the source has.
    pub(super) nlink: u64,
}

/// A further name of a hard-link group, linked at the round's end.
pub(super) struct DeferredLink {
    pub(super) path: Vec<u8>,
    /// The group's name on the slave that it joins.
    pub(super) target: Vec<u8>,
    pub(super) kind: Kind,
    /// The slave had no entry of this name...
    pub(super) created: bool,
    /// ...or one that differs so.
    pub(super) diff: Diff,
    /// In a targeted round: what to send instead if the slave refuses the
    /// link (the source's directory and entry).
    pub(super) fallback: Option<(Arc<OwnedFd>, Entry)>,
}

impl Planner<'_> {
    /// A further name of a hard-link group whose leader is already placed:
    /// linked to it once every leader has its content (returns whether a
    /// link is owed). None: `m` is not in a group, or leads it.
    pub(super) fn follower(
        &mut self,
        path: &[u8],
        dir: &Arc<OwnedFd>,
        m: &Entry,
        s: Option<&Entry>,
    ) -> Result<Option<bool>> {
        if m.nlink <= 1 {
            return Ok(None);
        }
        let key = (m.dev, m.ino);
        if self.targeted && !self.links.contains_key(&key) {
            self.hinted_leader(path, m)?;
        }
        let Some(leader) = self.links.get_mut(&key) else {
            return Ok(None);
        };
        if leader.rel == path {
            // A hinted leader, met again by the walk: settled already.
            return Ok(Some(false));
        }
        leader.names += 1;
        leader.nlink = leader.nlink.max(m.nlink);
        let linked = matches!((s, leader.slave_ino), (Some(s), Some(ino)) if s.ino == ino);
        if !linked {
            let target = leader.rel.clone();
            let diff = s.map_or_else(Diff::default, |s| Diff {
                size: m.kind == Kind::Regular && s.size != m.size,
                ..self.meta_diff(m.kind, &m.meta, &s.meta)
            });
            let fallback = self.targeted.then(|| (dir.clone(), m.clone()));
            self.deferred_links.push(DeferredLink {
                path: path.to_vec(),
                target,
                kind: m.kind,
                created: s.is_none(),
                diff,
                fallback,
            });
        }
        Ok(Some(!linked))
    }

    /// Records `path` as the leader of its hard-link group, if it has one;
    /// `slave_ino` is the slave inode that keeps its content, if any does.
    /// Either way the slave holds `m` at `path` after this round.
    pub(super) fn lead(&mut self, path: &[u8], m: &Entry, slave_ino: Option<u64>) {
        if m.nlink > 1 {
            let leader = Leader {
                rel: path.to_vec(),
                slave_ino,
                names: 1,
                nlink: m.nlink,
            };
            self.links.insert((m.dev, m.ino), leader);
        }
        // A crawl indexes groups only; a live round every name it placed,
        // so that a link made to it later finds it.
        if self.hints.is_some() && (m.nlink > 1 || self.targeted) {
            self.hint_update.placed.push((m.dev, m.ino, path.to_vec()));
            if self.hint_update.placed.len() >= HINTS_HELD {
                self.flush_hints();
            }
        }
    }

    /// Makes the name the hints give for `m`'s inode its group's leader,
    /// if the source still has that inode there and the slave holds that
    /// name with the same content; otherwise leaves the group unled (`m`
    /// then leads, as a copy).
    fn hinted_leader(&mut self, path: &[u8], m: &Entry) -> Result<()> {
        let Some(hints) = self.hints.as_deref() else {
            return Ok(());
        };
        let hint = match hints.lookup(m.dev, m.ino) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.rep.warn(&format!("inode index: {e}"));
                return Ok(());
            }
        };
        // (The round's renames moved the hints before its walk began.)
        if hint == path || self.excluded_path(&hint, false) {
            return Ok(());
        }
        let scan = self.scan;
        let checked = self.source.parent(&hint).ok().and_then(|(dir, name)| {
            let e = meta::stat_entry(dir.as_fd(), name, scan).ok()?;
            ((e.dev, e.ino) == (m.dev, m.ino)).then_some((e, dir))
        });
        let Some((mc, source_dir)) = checked else {
            // That name is gone from the source, or another inode's now.
            self.hint_update.stale.push((m.dev, m.ino));
            return Ok(());
        };
        // Listing it also shows the slave this name of the inode, which
        // lets it vouch for the inode when the link comes.
        let parent = hint[..(hint.len() - mc.name.len()).saturating_sub(1)].to_vec();
        let rx = self.list(parent, Some(std::slice::from_ref(&mc.name)))?;
        self.in_flight -= 1;
        let (_, listed) = self.receive_listing(&rx)?;
        let Some(sc) = listed.into_iter().find(|e| e.name == mc.name) else {
            return Ok(());
        };
        if !self.same_content(&mc, &sc, &source_dir) {
            return Ok(());
        }
        self.update_meta(&hint, &mc, &sc)?;
        let leader = Leader {
            rel: hint,
            slave_ino: Some(sc.ino),
            names: 1,
            nlink: m.nlink,
        };
        self.links.insert((m.dev, m.ino), leader);
        Ok(())
    }

    /// Whether the slave's entry holds what the source's does (the quick
    /// check a crawl makes; metadata aside).
    fn same_content(&self, m: &Entry, s: &Entry, dir: &Arc<OwnedFd>) -> bool {
        m.kind == s.kind
            && match m.kind {
                Kind::Regular => {
                    s.size == m.size
                        && (s.meta.mtime_sec, s.meta.mtime_nsec)
                            == (m.meta.mtime_sec, m.meta.mtime_nsec)
                        && (!self.opts.checksum || s.hash == self.hash_source(dir, m))
                }
                Kind::Symlink => s.target == m.target,
                Kind::CharDev | Kind::BlockDev => s.rdev == m.rdev,
                _ => true,
            }
    }

    /// Sends the round's links, every leader having its content by now. A
    /// link the slave refuses in a targeted round becomes a copy, and the
    /// round owes a crawl.
    pub(super) fn send_links(&mut self) -> Result<()> {
        let mut fallbacks = Vec::new();
        for l in std::mem::take(&mut self.deferred_links) {
            self.rep.change(&Item {
                what: What::Linked { new: l.created },
                kind: l.kind,
                path: &l.path,
                diff: l.diff,
                target: Some(&l.target),
            });
            if !self.opts.dry_run {
                if let Some(f) = l.fallback {
                    self.rep.claim(&l.path);
                    fallbacks.push((l.path.clone(), l.created, l.diff, f));
                }
            }
            self.mutate(&Msg::Link {
                path: l.path,
                target: l.target,
            })?;
        }
        if fallbacks.is_empty() {
            return Ok(());
        }
        // The slave answers a refused link before it acknowledges this.
        let id = self.conn.next_id();
        let rx = self.conn.request(id, &Msg::Barrier { id })?;
        self.conn.wait(&rx)?;
        let refused = self.rep.release_claims();
        self.needs_full |= !refused.is_empty();
        for (path, created, diff, (dir, m)) in fallbacks {
            if let Some(why) = refused.get(&path) {
                self.rep.warn(&format!(
                    "{why}; sent {} as a copy, a crawl will link it",
                    show(&path)
                ));
                self.copy(path, dir, m, (!created).then_some(diff))?;
            }
        }
        Ok(())
    }

    /// Sends a name of a group on its own: content for a regular file, a
    /// new node otherwise. `diff`: how the slave's entry differs, if it has one.
    fn copy(
        &mut self,
        path: Vec<u8>,
        dir: Arc<OwnedFd>,
        m: Entry,
        diff: Option<Diff>,
    ) -> Result<()> {
        if m.kind == Kind::Regular {
            let job = DataJob {
                rel: path,
                dir,
                name: m.name,
                basis: None,
                diff,
            };
            return ship::run(self.conn, job, self.job_opts, self.rep, &self.verdicts);
        }
        match diff {
            Some(diff) => self.tell(What::Updated, &path, &m, diff),
            None => self.created(&path, &m),
        }
        self.mutate(&special(path, m))
    }

    /// After the slave's Finished: refusals of claimed operations, groups
    /// left split, and the hints' update.
    pub(super) fn settle_groups(&mut self) {
        if !self.rep.release_claims().is_empty() {
            self.needs_full = true;
        }
        if self.targeted
            && self
                .links
                .values()
                .any(|l| l.slave_ino.is_none() && l.names < l.nlink)
        {
            self.needs_full = true;
        }
        self.flush_hints();
    }

    /// Writes out what the hints learned so far (a failure only costs
    /// later links their shortcut).
    pub(super) fn flush_hints(&mut self) {
        let Some(hints) = self.hints.as_deref_mut() else {
            return;
        };
        let u = std::mem::take(&mut self.hint_update);
        if !u.is_empty() {
            if let Err(e) = hints.update(&u) {
                self.rep.warn(&format!("inode index: {e}"));
            }
        }
    }
}

/// A symlink or node as the message that creates it.
pub(super) fn special(path: Vec<u8>, m: Entry) -> Msg {
    match m.kind {
        Kind::Symlink => Msg::Symlink {
            path,
            target: m.target,
            meta: m.meta,
        },
        kind => Msg::Mknod {
            path,
            kind,
            rdev: m.rdev,
            meta: m.meta,
        },
    }
}
