//! The options a replication runs with.

use std::path::PathBuf;

use crate::exclude::Excluder;
use crate::proto::FsyncPolicy;
use crate::select::Selection;
use crate::target::Target;
use crate::transport::SshOptions;

/// Validated options of a replication (built by `georep sync`'s arguments
/// or a session's config).
#[derive(Clone, Debug)]
pub struct Options {
    pub source: PathBuf,
    pub target: Target,
    pub delete: bool,
    /// How much one round may delete (see [`DeleteLimits`]).
    pub limits: DeleteLimits,
    pub checksum: bool,
    /// Changed files travel whole, never as deltas (the default is
    /// [`crate::target::Target::whole_files_by_default`]).
    pub whole_file: bool,
    pub dry_run: bool,
    pub jobs: usize,
    pub fsync: FsyncPolicy,
    pub xattrs: bool,
    pub excluder: Excluder,
    /// `georep sync`'s rsync habits (sessions keep the defaults).
    pub filters: Filters,
    /// Bytes per second the master may write to the link (None: no limit).
    pub bwlimit: Option<u64>,
    /// The source's (device, inode) as recorded when the session was
    /// created: a source that is not that directory any more (an unmounted
    /// volume leaves its empty mount point) is refused, never mirrored.
    pub source_identity: Option<(u64, u64)>,
    /// zstd-compress literal data on the wire.
    pub compress: bool,
    pub ssh: SshOptions,
    /// A multi-node session's fencing (session, node, lease epoch) for the
    /// hello; empty for one node and for `georep sync`.
    pub fence: crate::proto::Fence,
}

/// Limits on what one round may delete, checked before any of its
/// deletions is sent: a round over a limit deletes nothing and fails with
/// `Error::DeleteLimit` once the rest of it is applied.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeleteLimits {
    /// Most entries (a directory counts with everything the replica holds in it).
    pub max: Option<u64>,
    /// Largest share of the replica's entries, in percent; also refuses to
    /// empty the replica's top level.
    pub percent: Option<u8>,
    /// The operator's one-shot override (`georep start --force`): the first
    /// round with deletions passes the limits.
    pub override_once: bool,
}

impl DeleteLimits {
    pub fn none() -> DeleteLimits {
        DeleteLimits::default()
    }

    pub fn active(&self) -> bool {
        self.max.is_some() || self.percent.is_some()
    }
}

/// What a run leaves out besides the excluder, and how it treats what it
/// leaves out on the target.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    /// `-x`: directories on another filesystem than the source root are
    /// replicated empty; nothing below them is read, nor deleted on the target.
    pub one_file_system: bool,
    /// `--delete-excluded`: excluded entries on the target are deleted too.
    pub delete_excluded: bool,
    /// `--files-from`: only these paths (and their parent directories).
    pub files_from: Option<Selection>,
}
