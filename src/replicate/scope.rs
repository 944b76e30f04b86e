//! A round's scope: where it starts (the root for a full round; for a
//! journal batch, its renames, then the directories it touched).

use super::observe::{Diff, Item, What};
use super::walk::{DirTask, Listing, Planner};
use crate::confine::Root;
use crate::error::Result;
use crate::meta::Kind;
use crate::proto::{Msg, MAX_LIST_NAMES};

/// What one round replicates.
#[derive(Clone, Debug, Default)]
pub enum Scope {
    /// The whole tree.
    #[default]
    Full,
    /// Only what a batch of changes touched: renames first (so that moved
    /// trees travel as renames), then a merge of each listed directory as
    /// far as its [`Reach`] says.
    Changes {
        renames: Vec<(Vec<u8>, Vec<u8>)>,
        dirs: Vec<(Vec<u8>, Reach)>,
    },
}

/// How much of a directory a targeted round merges (each includes the
/// directory's own metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// These entries only: the cost of a change, not of its directory.
    Names(Vec<Vec<u8>>),
    /// All its entries, descending only into subdirectories it creates.
    Dir,
    /// Everything below it.
    Tree,
}

impl Reach {
    /// What covers both.
    fn union(self, other: Reach) -> Reach {
        match (self, other) {
            (Reach::Tree, _) | (_, Reach::Tree) => Reach::Tree,
            (Reach::Dir, _) | (_, Reach::Dir) => Reach::Dir,
            (Reach::Names(mut a), Reach::Names(b)) => {
                a.extend(b);
                Reach::Names(a)
            }
        }
    }
}

impl Planner<'_> {
    /// The directories a round starts from (sending a targeted round's renames).
    pub(super) fn first_tasks(&mut self, scope: &Scope) -> Result<Vec<DirTask>> {
        match scope {
            Scope::Full => {
                let master = self.source_root_entry()?;
                let rx = self.list(Vec::new(), None)?;
                Ok(vec![DirTask {
                    rel: Vec::new(),
                    master,
                    slave: Listing::Requested(rx),
                    recurse: true,
                    names: None,
                    restat: false,
                }])
            }
            Scope::Changes { renames, dirs } => {
                self.targeted = true;
                for (from, to) in renames {
                    self.rename(from, to)?;
                }
                // The hints move with the renames before the walk reads any.
                self.flush_hints();
                self.targeted_tasks(dirs)
            }
        }
    }

    /// Sends a rename the journal saw, if the source still agrees with it
    /// (`to` exists, `from` does not) and neither name is excluded.
    pub(super) fn rename(&mut self, from: &[u8], to: &[u8]) -> Result<()> {
        let kind = |src: &mut Root, p: &[u8]| -> Option<Kind> {
            let (dir, name) = src.parent(p).ok()?;
            let st = rustix::fs::statat(&*dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).ok()?;
            Some(Kind::from_stat(&st))
        };
        let Some(k) = kind(self.source, to) else {
            return Ok(());
        };
        let is_dir = k == Kind::Dir;
        if kind(self.source, from).is_none()
            && !self.excluded_path(from, is_dir)
            && !self.excluded_path(to, is_dir)
        {
            self.rep.change(&Item {
                what: What::Renamed,
                kind: k,
                path: to,
                diff: Diff::default(),
                target: Some(from),
            });
            self.mutate(&Msg::Rename {
                from: from.to_vec(),
                to: to.to_vec(),
            })?;
            if self.hints.is_some() {
                let r = (from.to_vec(), to.to_vec());
                self.hint_update.renamed.push(r);
            }
        }
        Ok(())
    }

    /// The directories a batch touched, parents first, without those a
    /// recursive ancestor already covers, excluded ones and vanished ones.
    pub(super) fn targeted_tasks(&mut self, dirs: &[(Vec<u8>, Reach)]) -> Result<Vec<DirTask>> {
        let mut dirs = dirs.to_vec();
        dirs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut merged: Vec<(Vec<u8>, Reach)> = Vec::with_capacity(dirs.len());
        for (rel, reach) in dirs {
            match merged.last_mut() {
                Some(last) if last.0 == rel => {
                    let prev = std::mem::replace(&mut last.1, Reach::Dir);
                    last.1 = prev.union(reach);
                }
                _ => merged.push((rel, reach)),
            }
        }
        let mut covered: Vec<Vec<u8>> = Vec::new();
        let mut tasks = Vec::new();
        for (rel, reach) in merged {
            let under = |c: &Vec<u8>| {
                c.is_empty() || rel == *c || rel.starts_with(&[c.as_slice(), b"/"].concat())
            };
            if covered.iter().any(under) || self.excluded_path(&rel, true) {
                continue;
            }
            // Gone or no longer a directory: its parent's merge settles it.
            let Some(master) = self.dir_entry(&rel)? else {
                continue;
            };
            let (names, recurse) = match reach {
                // So many that one listing of the whole directory is cheaper
                // (and a request stays far below the frame limit).
                Reach::Names(names) if names.len() > MAX_LIST_NAMES => (None, false),
                Reach::Names(mut names) => {
                    names.sort_unstable();
                    names.dedup();
                    (Some(names), false)
                }
                Reach::Dir => (None, false),
                Reach::Tree => {
                    covered.push(rel.clone());
                    (None, true)
                }
            };
            tasks.push(DirTask {
                recurse,
                rel,
                master,
                slave: Listing::Pending,
                names,
                restat: false,
            });
        }
        // A stack: the first (shallowest) directory is processed first.
        tasks.reverse();
        Ok(tasks)
    }

    /// Whether a path or any of its ancestors is excluded.
    pub(super) fn excluded_path(&self, rel: &[u8], is_dir: bool) -> bool {
        let ex = &self.opts.excluder;
        let ancestors = rel
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'/')
            .map(|(i, _)| &rel[..i]);
        ancestors
            .filter(|p| !p.is_empty())
            .any(|p| ex.excluded(p, true))
            || (!rel.is_empty() && ex.excluded(rel, is_dir))
    }
}
