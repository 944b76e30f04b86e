//! georep: file-level geo-replication. See DESIGN.md for the map; each
//! module below is one concern.

pub mod agent;
pub mod cli;
pub mod confine;
pub mod daemon;
pub mod delta;
pub mod error;
pub mod exclude;
pub mod fsutil;
pub mod journal;
pub mod keys;
pub mod meta;
pub mod proto;
pub mod session;
pub mod sync;
pub mod target;
pub mod transport;
pub mod watch;
