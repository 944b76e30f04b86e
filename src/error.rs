//! Error policy.
//!
//! Library code returns [`Error`], which carries enough context to print one
//! clear line and knows two things about itself: the documented exit code it
//! maps to, and whether retrying the same run can help (a dropped connection
//! can; a source that is not a directory cannot). `anyhow` is used only in
//! `main`. Per-entry failures (an unreadable file) are not errors of the run:
//! they are counted in the summary and turn the exit code into [`Exit::Partial`].

use std::io;

/// Documented exit codes (README and docs/CLI.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// An unexpected failure not covered below.
    Other = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    /// SOURCE is missing, unreadable or not a directory.
    Source = 3,
    /// TARGET cannot be created, opened or locked.
    Target = 4,
    /// Protocol failure: version mismatch, malformed stream, the peer died or refused.
    Protocol = 5,
    /// The SSH connection or authentication failed, or the host key is not trusted.
    Ssh = 6,
    /// A session command failed: unknown or existing session, already running.
    Session = 7,
    /// Some entries failed; everything else was replicated.
    Partial = 23,
}

impl Exit {
    pub fn from_code(code: u8) -> Exit {
        match code {
            0 => Exit::Ok,
            2 => Exit::Usage,
            3 => Exit::Source,
            4 => Exit::Target,
            5 => Exit::Protocol,
            6 => Exit::Ssh,
            7 => Exit::Session,
            23 => Exit::Partial,
            _ => Exit::Other,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("source {path}: {reason}")]
    Source { path: String, reason: String },
    #[error("target {path}: {reason}")]
    Target { path: String, reason: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The slave reported a fatal error and stopped.
    #[error("slave: {message}")]
    Remote { code: u8, message: String },
    /// Could not set up the SSH connection (refused, host key, authentication).
    #[error("ssh: {message}")]
    Ssh { message: String },
    /// The connection to the slave broke.
    #[error("connection to slave lost: {0}")]
    Disconnected(String),
    /// Some entries of a round failed (each was reported); a session does
    /// not ack such a round, it retries it.
    #[error("{failed} entries failed to replicate")]
    Partial { failed: u64 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn exit(&self) -> Exit {
        match self {
            Error::Source { .. } => Exit::Source,
            Error::Target { .. } => Exit::Target,
            Error::Protocol(_) | Error::Disconnected(_) => Exit::Protocol,
            Error::Ssh { .. } => Exit::Ssh,
            Error::Partial { .. } => Exit::Partial,
            Error::Remote { code, .. } => match Exit::from_code(*code) {
                Exit::Ok | Exit::Other | Exit::Partial | Exit::Usage => Exit::Protocol,
                e => e,
            },
            Error::Io { .. } => Exit::Other,
        }
    }

    /// Whether running again unchanged may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Error::Disconnected(_) | Error::Io { .. } | Error::Partial { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
