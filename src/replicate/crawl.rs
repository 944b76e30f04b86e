//! A full crawl taken in slices, so that a session can ship live changes
//! between them.

use std::collections::HashMap;

use super::links::Leader;
use super::scope::Scope;
use super::walk::DirTask;

/// A full crawl taken in slices, so that a daemon can ship live changes
/// between them ([`Replicator::crawl_slice`]). Between slices it keeps the
/// directories still to visit (their listings and metadata are taken afresh
/// when resumed: the tree may have changed meanwhile) and the hard-link
/// leaders placed so far, so that a group spanning slices stays one inode.
#[derive(Default)]
pub struct Crawl {
    pub(super) started: bool,
    pub(super) stack: Vec<DirTask>,
    pub(super) links: HashMap<(u64, u64), Leader>,
    /// What it covers: the whole tree, or (a rescan) some subtrees, which
    /// are merged as a targeted round merges them in every slice.
    pub(super) scope: Option<Scope>,
    pub(super) targeted: bool,
    /// Slices taken so far.
    pub slices: u64,
}

impl Crawl {
    /// A crawl of the whole tree.
    pub fn new() -> Crawl {
        Crawl::default()
    }

    /// A crawl of what `scope` names (subtrees to rescan).
    pub fn of(scope: Scope) -> Crawl {
        Crawl {
            scope: Some(scope),
            ..Crawl::default()
        }
    }

    /// Whether it covers the whole tree.
    pub fn is_whole(&self) -> bool {
        self.scope.is_none() || matches!(self.scope, Some(Scope::Full))
    }

    /// Whether the whole tree has been visited.
    pub fn done(&self) -> bool {
        self.started && self.stack.is_empty()
    }
}
