//! The georep protocol (docs/PROTOCOL.md): framing, the kinds table, the
//! messages and the values they carry.

pub mod codec;
pub mod frame;
pub mod kinds;
pub mod msg;

pub use kinds::Side;
pub use msg::Msg;

/// Protocol version; both sides must speak the same one.
pub const VERSION: u32 = 5;
/// First bytes of a Hello payload, so that a stray banner is caught early.
pub const MAGIC: &[u8; 8] = b"GEOREP\0\x01";

/// Optional features, announced in Hello and used only when both sides have them.
pub mod feature {
    pub const XATTRS: u64 = 1 << 0;
    pub const CHECKSUM: u64 = 1 << 1;
    /// FileData and FileDelta payloads may be zstd-compressed.
    pub const ZSTD: u64 = 1 << 2;
}
pub const FEATURES: u64 = feature::XATTRS | feature::CHECKSUM | feature::ZSTD;

/// Most names in one ListNames request: a master lists a directory whole
/// past this, and a slave refuses more.
pub const MAX_LIST_NAMES: usize = 4096;

/// When the slave makes data durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum FsyncPolicy {
    /// fsync every file before it is renamed into place.
    File = 0,
    /// syncfs once before the final acknowledgement (default).
    Batch = 1,
    /// Leave it to the kernel.
    None = 2,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "file" => Ok(FsyncPolicy::File),
            "batch" => Ok(FsyncPolicy::Batch),
            "none" => Ok(FsyncPolicy::None),
            _ => Err(format!("fsync {s:?}: use file, batch or none")),
        }
    }
}

impl FsyncPolicy {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => FsyncPolicy::File,
            1 => FsyncPolicy::Batch,
            2 => FsyncPolicy::None,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct Hello {
    pub version: u32,
    pub features: u64,
    /// Slave: it runs as root and can set owners, devices and trusted xattrs.
    pub privileged: bool,
    /// Master: make no change on the slave (and do not create its root).
    pub dry_run: bool,
    pub fsync: FsyncPolicy,
    pub fence: Fence,
}

/// A multi-node session's fencing, in the hello: the master says which
/// session and epoch it writes for; the slave answers with what it has
/// stored for that session (DESIGN.md invariant 9).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fence {
    /// The session's name; empty: no fencing (one node, or `georep sync`).
    pub session: Vec<u8>,
    pub node: Vec<u8>,
    /// Master: its lease's epoch. Slave: the highest it has stored.
    pub epoch: u64,
    /// Slave: the newest change time (ns) a Finish of this session made
    /// durable, and the epoch that sent it.
    pub marker_time_ns: i64,
    pub marker_epoch: u64,
}
