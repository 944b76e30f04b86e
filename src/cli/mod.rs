//! Command line: raw arguments parsed by clap, then validated into the
//! options the library trusts (ripgrep's two stages). One module per
//! user-level command; all terminal output lives under cli/.

/// A line on stderr, like `eprintln!` but dropped when stderr is a closed
/// pipe (`georep sync ... 2>&1 | head -c1`): `sync` and `start` keep
/// SIGPIPE ignored (main.rs), and `eprintln!` would panic there (exit 101).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod control;
mod generate;
mod itemize;
mod output;
mod session;
mod slave;
mod sync;
mod table;

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::error::{Error, Exit};
use crate::proto::FsyncPolicy;
use crate::target::Place;
use crate::transport::SshOptions;
pub use generate::Generate;

#[derive(Parser, Debug)]
#[command(name = "georep", version, about = "File-level geo-replication")]
pub struct Cli {
    /// Where sessions, journals, sockets and logs live (or GEOREP_HOME).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Print the man page or a shell completion script on stdout and exit.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub generate: Option<Generate>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Replicate SOURCE's contents into TARGET once, then exit.
    Sync(Box<SyncArgs>),
    /// The far end: apply a master's stream under --root (speaks on stdin/stdout).
    Slave(SlaveArgs),
    /// Replication keys for SSH targets.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create a continuous replication session.
    Create(CreateArgs),
    /// Start a session's daemon (returns once it runs).
    Start {
        name: String,
        /// Run in the foreground (for systemd).
        #[arg(long)]
        foreground: bool,
        /// Accept the source as it is now, after a safety halt (say, the
        /// source volume was replaced on purpose).
        #[arg(long)]
        force: bool,
    },
    /// Stop a session's daemon.
    Stop { name: String },
    /// Show sessions: state, crawl, lag, pending, failures.
    Status {
        name: Option<String>,
        #[arg(long)]
        json: bool,
        /// gluster's `status detail` columns, with lag, rate and ETA.
        #[arg(long, conflicts_with = "json")]
        detail: bool,
    },
    /// Stop shipping changes; they are still journaled (kept across restarts).
    Pause { name: String },
    /// Ship again, starting with what was journaled while paused.
    Resume { name: String },
    /// Mark now (or a past Unix time) in the journal; it completes once every
    /// change recorded before it is on the slave.
    Checkpoint {
        name: String,
        /// `now` or a Unix time in the past.
        #[arg(value_name = "now|UNIX_TIME")]
        at: Option<String>,
        /// Wait until it completes (exit 30 on --timeout).
        #[arg(long)]
        wait: bool,
        /// Seconds to wait at most.
        #[arg(long, requires = "wait", value_name = "S")]
        timeout: Option<f64>,
    },
    /// Crawl the tree (or the subtree at PATH) now, between live changes.
    Rescan { name: String, path: Option<PathBuf> },
    /// Show or change a session's configuration (takes effect at next start).
    Config {
        name: String,
        key: Option<String>,
        value: Option<String>,
        /// Restore KEY's default.
        #[arg(long, value_name = "KEY", conflicts_with_all = ["key", "value"])]
        reset: Option<String>,
    },
    /// Delete a stopped session and its journal.
    Delete {
        name: String,
        /// Accepted for gluster compatibility: the journal (and so the sync time) goes anyway.
        #[arg(long)]
        reset_sync_time: bool,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    pub source: PathBuf,
    pub target: String,
    /// Session option (see `georep config NAME`), repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create an ed25519 key pair and print the authorized_keys line for the slave.
    Create(KeysCreateArgs),
}

#[derive(Args, Debug)]
pub struct KeysCreateArgs {
    /// Where to write georep_ed25519 and georep_ed25519.pub.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub place: PlaceArgs,
    /// The georep binary on the slave host.
    #[arg(long, value_name = "PATH")]
    pub remote_command: Option<String>,
}

/// Exactly one of --root and --volume.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct PlaceArgs {
    /// Directory the replica lives in; nothing outside it is ever touched.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// A volume named in the slave's volumes file (GEOREP_VOLUMES, default /etc/georep/volumes.toml).
    #[arg(long)]
    pub volume: Option<String>,
}

impl PlaceArgs {
    fn place(&self) -> Place {
        match (&self.root, &self.volume) {
            (Some(r), _) => Place::Path(r.clone()),
            (None, Some(v)) => Place::Volume(v.clone()),
            (None, None) => unreachable!("clap requires one"),
        }
    }
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Directory whose contents are replicated.
    pub source: PathBuf,
    /// Replica: /path, file:///path, ssh://[user@]host[:port]/path,
    /// [user@]host:/path or [user@]host::VOLUME (created if missing).
    pub target: String,
    /// Print one JSON summary on stdout at the end.
    #[arg(long)]
    pub json: bool,
    /// List every change (`+` created, `>` content, `.` metadata, `-` deleted, `=` hard link).
    #[arg(short, long)]
    pub verbose: bool,
    /// List every change in rsync's `-i` format (`>f.st...... path`; see the README).
    #[arg(short, long)]
    pub itemize_changes: bool,
    /// Print rsync-style transfer statistics at the end.
    #[arg(long)]
    pub stats: bool,
    /// Print nothing but errors (and the line explaining a non-zero exit).
    #[arg(short, long, conflicts_with_all = ["verbose", "itemize_changes", "stats", "json"])]
    pub quiet: bool,
    /// Show what would change without changing anything.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Compare content (BLAKE3) instead of size and modification time.
    #[arg(short, long)]
    pub checksum: bool,
    /// Keep entries on the target that the source does not have.
    #[arg(long)]
    pub no_delete: bool,
    /// Delete excluded entries on the target too (they are kept otherwise).
    #[arg(long, conflicts_with_all = ["no_delete", "files_from"])]
    pub delete_excluded: bool,
    /// Delete nothing if the run would delete more than N entries (exit 25).
    #[arg(long, value_name = "N")]
    pub max_delete: Option<u64>,
    /// Send changed files whole instead of as deltas (the default for a
    /// local target, as in rsync).
    #[arg(short = 'W', long)]
    pub whole_file: bool,
    /// Send changed files as deltas even to a local target.
    #[arg(long, conflicts_with = "whole_file")]
    pub no_whole_file: bool,
    /// Do not replicate extended attributes (ACLs included).
    #[arg(long)]
    pub no_xattrs: bool,
    /// Exclude paths matching PATTERN (gitignore syntax; repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Read exclude patterns from FILE (gitignore syntax; repeatable).
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// Replicate only the paths listed in FILE (relative to SOURCE, one a
    /// line; `-` for stdin) and their parent directories; delete nothing.
    #[arg(long, value_name = "FILE")]
    pub files_from: Option<PathBuf>,
    /// --files-from entries end with NUL, not newline (names may hold newlines).
    #[arg(short = '0', long, requires = "files_from")]
    pub from0: bool,
    /// Do not cross filesystem boundaries in SOURCE: a mount point is
    /// replicated as an empty directory.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Limit what is sent to RATE: KiB/s, or with a suffix K, M, G (1.5M, 10MB); 0: no limit.
    #[arg(long, value_name = "RATE", value_parser = parse_bwlimit)]
    pub bwlimit: Option<BwLimit>,
    /// Files read and shipped in parallel.
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// When the target makes data durable.
    #[arg(long, default_value = "batch", value_name = "file|batch|none")]
    pub fsync: FsyncPolicy,
    /// Never draw a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Compress literal data with zstd on the wire (worth it on slow links).
    #[arg(short = 'z', long)]
    pub compress: bool,
    #[command(flatten)]
    pub ssh: SshArgs,
}

/// A parsed `--bwlimit`: bytes per second, None for no limit.
#[derive(Clone, Copy, Debug)]
pub struct BwLimit(pub Option<u64>);

fn parse_bwlimit(s: &str) -> Result<BwLimit, String> {
    crate::replicate::bwlimit::parse_rate(s).map(BwLimit)
}

#[derive(Args, Debug, Clone)]
pub struct SshArgs {
    /// Private key for SSH targets (ed25519, ECDSA or RSA); default: the agent, then ~/.ssh/id_*.
    /// (No `-i`: that is --itemize-changes, as in rsync.)
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Known hosts file checked for the slave's host key (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Record an unknown host key instead of refusing it (a changed key is still refused).
    #[arg(long)]
    pub accept_new_host_key: bool,
    /// SSH port (overrides the target's).
    #[arg(short, long)]
    pub port: Option<u16>,
    /// SSH user (overrides the target's).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Run this command instead of the built-in SSH client, e.g. "ssh -o ControlMaster=auto".
    #[arg(short = 'e', long, value_name = "COMMAND")]
    pub ssh_command: Option<String>,
    /// The georep binary on the slave host (default: georep on its PATH); for a
    /// local target, the binary run as the slave (default: this one).
    #[arg(long, value_name = "PATH")]
    pub remote_command: Option<String>,
}

impl From<SshArgs> for SshOptions {
    fn from(a: SshArgs) -> SshOptions {
        SshOptions {
            identity: a.identity,
            known_hosts: a.known_hosts,
            accept_new_host_key: a.accept_new_host_key,
            port: a.port,
            user: a.user,
            ssh_command: a.ssh_command,
            remote_command: a.remote_command,
        }
    }
}

#[derive(Args, Debug)]
pub struct SlaveArgs {
    #[command(flatten)]
    pub place: PlaceArgs,
    /// Where multi-node sessions' fencing records (highest epoch, marker)
    /// are kept, outside the replica (default: $GEOREP_SLAVE_STATE, else
    /// $XDG_STATE_HOME/georep/slave, else ~/.local/state/georep/slave).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Runs the command line; returns the process exit code.
pub fn run(cli: Cli) -> Exit {
    raise_fd_limit();
    let command = match (cli.generate, cli.command) {
        (Some(what), _) => return generated(what),
        (None, Some(c)) => c,
        (None, None) => {
            let mut cmd = Cli::command();
            let e = cmd.error(
                clap::error::ErrorKind::MissingSubcommand,
                "a command is required (see --help)",
            );
            let _ = e.print();
            return Exit::Usage;
        }
    };
    let home = || crate::session::home(cli.home.as_deref());
    match command {
        Command::Slave(a) => slave::run(&a),
        Command::Sync(a) => sync::run(*a),
        Command::Keys(KeysCommand::Create(a)) => keys_create(&a),
        Command::Create(a) => report(session::create(&home(), &a)),
        Command::Start {
            name,
            foreground,
            force,
        } => session::start(&home(), &name, foreground, force),
        Command::Stop { name } => report(session::stop(&home(), &name)),
        Command::Status { name, json, detail } => {
            report(session::status(&home(), name.as_deref(), json, detail))
        }
        Command::Pause { name } => report(control::pause(&home(), &name, true)),
        Command::Resume { name } => report(control::pause(&home(), &name, false)),
        Command::Checkpoint {
            name,
            at,
            wait,
            timeout,
        } => report(control::checkpoint(
            &home(),
            &name,
            at.as_deref(),
            wait,
            timeout,
        )),
        Command::Rescan { name, path } => report(control::rescan(&home(), &name, path.as_deref())),
        Command::Config {
            name,
            key,
            value,
            reset,
        } => report(session::config(&home(), &name, key, value, reset)),
        Command::Delete { name, .. } => report(session::delete(&home(), &name)),
    }
}

fn generated(what: Generate) -> Exit {
    let mut out = std::io::stdout().lock();
    match generate::generate(what, &mut out).and_then(|()| std::io::Write::flush(&mut out)) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            say!("georep: writing to stdout: {e}");
            Exit::Other
        }
    }
}

fn keys_create(a: &KeysCreateArgs) -> Exit {
    match crate::keys::create(&a.dir, &a.place.place(), a.remote_command.as_deref()) {
        Ok(c) => {
            say!(
                "georep: wrote {} and {}; install this line in the slave's authorized_keys:",
                c.private.display(),
                c.public.display()
            );
            println!("{}", c.authorized_line);
            Exit::Ok
        }
        Err(e) => {
            say!("georep: {e}");
            Exit::Other
        }
    }
}

/// Prints an error (with a hint when retrying may help); its exit code.
fn fail(e: &Error) -> Exit {
    let hint = if e.is_temporary() {
        " (temporary: retrying may help)"
    } else {
        ""
    };
    say!("georep: {e}{hint}");
    e.exit()
}

fn report(r: Result<(), Error>) -> Exit {
    match r {
        Ok(()) => Exit::Ok,
        Err(e) => fail(&e),
    }
}

/// Deep trees hold one descriptor per level while they are removed.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}
