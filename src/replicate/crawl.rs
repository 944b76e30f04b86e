//! A full crawl taken in slices, so that a session can ship live changes
//! between them.

use std::collections::HashMap;

use super::links::Leader;
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
    /// Slices taken so far.
    pub slices: u64,
}

impl Crawl {
    pub fn new() -> Crawl {
        Crawl::default()
    }

    /// Whether the whole tree has been visited.
    pub fn done(&self) -> bool {
        self.started && self.stack.is_empty()
    }
}
