//! The options a replication runs with.

use std::path::PathBuf;

use crate::exclude::Excluder;
use crate::proto::FsyncPolicy;
use crate::target::Target;
use crate::transport::SshOptions;

/// Validated options of a replication (built by `georep sync`'s arguments
/// or a session's config).
#[derive(Clone, Debug)]
pub struct Options {
    pub source: PathBuf,
    pub target: Target,
    pub delete: bool,
    pub checksum: bool,
    pub whole_file: bool,
    pub dry_run: bool,
    pub jobs: usize,
    pub fsync: FsyncPolicy,
    pub xattrs: bool,
    pub excluder: Excluder,
    /// The source's (device, inode) as recorded when the session was
    /// created: a source that is not that directory any more (an unmounted
    /// volume leaves its empty mount point) is refused, never mirrored.
    pub source_identity: Option<(u64, u64)>,
    /// zstd-compress literal data on the wire.
    pub compress: bool,
    pub ssh: SshOptions,
}
