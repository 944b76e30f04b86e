//! georep: file-level geo-replication. docs/ARCHITECTURE.md is the map;
//! each module below is one concern. The import graph reads top-down:
//! cli → monitor → worker → (status, session, config, plan, shutdown) →
//! replicate → (transport, agent) → proto and the leaves.

pub mod agent;
pub mod cli;
pub mod config;
pub mod confine;
pub mod control;
pub mod delta;
pub mod error;
pub mod exclude;
pub mod fsutil;
pub mod hooks;
pub mod journal;
pub mod keys;
pub mod lease;
pub mod logging;
pub mod meta;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod plan;
pub mod prefetch;
pub mod proto;
pub mod replicate;
pub mod select;
pub mod session;
pub mod shutdown;
pub mod status;
pub mod target;
pub mod transport;
pub mod watch;
pub mod worker;
