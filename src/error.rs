//! Error policy.
//!
//! Library code returns [`Error`], the one vocabulary of the crate. Each error
//! carries enough context to print one clear line and knows two things about
//! itself: the documented exit code it maps to ([`Error::exit`], the README's
//! table), and whether running again unchanged can succeed
//! ([`Error::is_temporary`]): a dropped connection can, a changed host key or
//! a source that is not a directory cannot. The session monitor retries only
//! temporary errors; a permanent one leaves the session Faulty until the
//! operator acts. Per-entry failures (an unreadable file) are not errors of
//! the run: they are counted and turn the exit code into [`Exit::Partial`].

use std::io;

use crate::journal::JournalError;

/// Documented exit codes (README, "Exit codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// An unexpected failure not covered below.
    Other = 1,
    /// Bad command line or configuration value.
    Usage = 2,
    /// SOURCE is missing, unreadable or not a directory.
    Source = 3,
    /// TARGET cannot be created, opened or locked.
    Target = 4,
    /// Protocol failure: version mismatch, malformed stream, the peer died or refused.
    Protocol = 5,
    /// The SSH connection or authentication failed, or the host key is not trusted.
    Ssh = 6,
    /// A session command failed: unknown or existing session, already
    /// running, or its daemon could not start.
    Session = 7,
    /// The state directory or a session's journal cannot be read or written.
    State = 8,
    /// Some entries failed; everything else was replicated.
    Partial = 23,
    /// Nothing failed, but some entries vanished from the source while they
    /// were read (rsync's 24).
    Vanished = 24,
    /// Fenced: another node took the session over (the slave has seen a
    /// newer epoch than this node's).
    Fenced = 26,
    /// A wait timed out (`checkpoint --wait --timeout`).
    Timeout = 30,
    /// Deletions stopped at a limit (rsync's 25 for `--max-delete`).
    DeleteLimit = 25,
    /// Stopped by SIGINT (128 + 2).
    Interrupted = 130,
    /// Stopped by SIGTERM (128 + 15).
    Terminated = 143,
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
            8 => Exit::State,
            23 => Exit::Partial,
            24 => Exit::Vanished,
            30 => Exit::Timeout,
            25 => Exit::DeleteLimit,
            26 => Exit::Fenced,
            130 => Exit::Interrupted,
            143 => Exit::Terminated,
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
    /// Could not set up the SSH connection; `temporary` when the host may
    /// just be unreachable for now (not a refused key or authentication).
    #[error("ssh: {message}")]
    Ssh { message: String, temporary: bool },
    /// The connection to the slave broke.
    #[error("connection to slave lost: {0}")]
    Disconnected(String),
    /// Some entries of a round failed (each was reported); a session does
    /// not ack such a round, it retries it.
    #[error("{failed} entries failed to replicate")]
    Partial { failed: u64 },
    /// A round would delete more than the configured limits allow; it
    /// deleted nothing of what it refused.
    #[error("{0}")]
    DeleteLimit(String),
    /// The lease backend (a shared directory, etcd) failed or cannot be reached.
    #[error("lease: {0}")]
    Lease(String),
    /// A bad configuration key or value, or bad arguments found after parsing.
    #[error("{0}")]
    Usage(String),
    #[error("no session named {0:?}")]
    UnknownSession(String),
    #[error("a session named {0:?} exists already")]
    SessionExists(String),
    #[error("session {0:?} is running; stop it first")]
    Running(String),
    /// A session's daemon did not come up (the reason is in its log).
    #[error("{0}")]
    DaemonStart(String),
    /// A session command cannot be done in the session's state (say, stop
    /// or rescan of a stopped session), or its daemon refused it.
    #[error("{0}")]
    Session(String),
    /// What was waited for did not happen in time.
    #[error("{0}")]
    Timeout(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The state directory (sessions, status, pid files) failed us.
    #[error("{context}: {source}")]
    State {
        context: String,
        #[source]
        source: io::Error,
    },
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

    /// An SSH failure that retrying will not mend.
    pub fn ssh(message: impl Into<String>) -> Error {
        Error::Ssh {
            message: message.into(),
            temporary: false,
        }
    }

    /// An SSH failure that may pass (host down, network, ssh exiting 255).
    pub fn ssh_temporary(message: impl Into<String>) -> Error {
        Error::Ssh {
            message: message.into(),
            temporary: true,
        }
    }

    pub fn exit(&self) -> Exit {
        match self {
            Error::Source { .. } => Exit::Source,
            Error::Target { .. } => Exit::Target,
            Error::Protocol(_) | Error::Disconnected(_) => Exit::Protocol,
            Error::Ssh { .. } => Exit::Ssh,
            Error::Partial { .. } => Exit::Partial,
            Error::DeleteLimit(_) => Exit::DeleteLimit,
            Error::Remote { code, .. } => match Exit::from_code(*code) {
                Exit::Ok
                | Exit::Other
                | Exit::Partial
                | Exit::Vanished
                | Exit::Usage
                | Exit::Timeout
                | Exit::DeleteLimit
                | Exit::Interrupted
                | Exit::Terminated => Exit::Protocol,
                e => e,
            },
            Error::Usage(_) => Exit::Usage,
            Error::UnknownSession(_)
            | Error::SessionExists(_)
            | Error::Running(_)
            | Error::DaemonStart(_)
            | Error::Session(_) => Exit::Session,
            Error::Timeout(_) => Exit::Timeout,
            Error::Journal(_) | Error::State { .. } => Exit::State,
            Error::Io { .. } => Exit::Other,
            Error::Lease(_) => Exit::Session,
        }
    }

    /// The slave refused this node's epoch: another node is the writer.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Error::Remote { code, .. } if Exit::from_code(*code) == Exit::Fenced)
    }

    /// Whether running again unchanged may succeed.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Disconnected(_) | Error::Io { .. } | Error::Partial { .. } | Error::Lease(_) => {
                true
            }
            Error::Ssh { temporary, .. } => *temporary,
            // The slave's own words: a target it cannot write may be a full
            // disk (freed later); a refusal of the protocol or of the root is not.
            // A target that is a file stays one.
            Error::Remote { code, message } => {
                Exit::from_code(*code) == Exit::Target && !message.contains("not a directory")
            }
            // A safety halt waits for the operator, whatever caused it.
            Error::DeleteLimit(_) => false,
            // A busy or locked database clears; a corrupt one does not.
            Error::Journal(j) => j.is_busy(),
            _ => false,
        }
    }
}

/// Maps an I/O error on the state directory to an error that says what was
/// being done.
pub fn state(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::State { context, source }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
