//! Command line: raw arguments parsed by clap, then validated into the
//! options the library trusts (ripgrep's two stages).

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::error::Exit;
use crate::exclude::Excluder;
use crate::proto::FsyncPolicy;
use crate::sync::{self, SyncOptions};
use crate::target::Target;

#[derive(Parser, Debug)]
#[command(name = "georep", version, about = "File-level geo-replication")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Replicate SOURCE's contents into TARGET once, then exit.
    Sync(SyncArgs),
    /// The far end: apply a master's stream under --root (speaks on stdin/stdout).
    Slave(SlaveArgs),
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Directory whose contents are replicated.
    pub source: PathBuf,
    /// Replica: /path, file:///path (created if missing).
    pub target: String,
    /// Print one JSON summary on stdout at the end.
    #[arg(long)]
    pub json: bool,
    /// List every change (`+` created, `>` content, `.` metadata, `-` deleted, `=` hard link).
    #[arg(short, long)]
    pub verbose: bool,
    /// Show what would change without changing anything.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Compare content (BLAKE3) instead of size and modification time.
    #[arg(short, long)]
    pub checksum: bool,
    /// Keep entries on the target that the source does not have.
    #[arg(long)]
    pub no_delete: bool,
    /// Send changed files whole instead of as deltas.
    #[arg(short = 'W', long)]
    pub whole_file: bool,
    /// Do not replicate extended attributes (ACLs included).
    #[arg(long)]
    pub no_xattrs: bool,
    /// Exclude paths matching PATTERN (gitignore syntax; repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Read exclude patterns from FILE (gitignore syntax; repeatable).
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// Files read and shipped in parallel.
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// When the target makes data durable.
    #[arg(long, value_enum, default_value = "batch")]
    pub fsync: FsyncPolicy,
    /// Never draw a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Args, Debug)]
pub struct SlaveArgs {
    /// Directory the replica lives in; nothing outside it is ever touched.
    #[arg(long)]
    pub root: PathBuf,
}

impl SyncArgs {
    fn validate(self) -> Result<SyncOptions, String> {
        let target = Target::parse(&self.target)?;
        let excluder = Excluder::new(&self.exclude, &self.exclude_from)?;
        Ok(SyncOptions {
            source: self.source,
            target,
            delete: !self.no_delete,
            checksum: self.checksum,
            whole_file: self.whole_file,
            dry_run: self.dry_run,
            jobs: self.jobs as usize,
            fsync: self.fsync,
            xattrs: !self.no_xattrs,
            excluder,
            verbose: self.verbose,
            json: self.json,
            progress: !self.no_progress,
        })
    }
}

/// Runs the command line; returns the process exit code.
pub fn run(cli: Cli) -> Exit {
    raise_fd_limit();
    match cli.command {
        Command::Slave(a) => {
            crate::agent::serve(&a.root, std::io::stdin().lock(), std::io::stdout().lock())
        }
        Command::Sync(a) => {
            let json = a.json;
            let opts = match a.validate() {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("georep: {e}");
                    return Exit::Usage;
                }
            };
            match sync::run(&opts) {
                Ok(summary) => {
                    if json {
                        let mut out = std::io::stdout().lock();
                        let _ = serde_json::to_writer(&mut out, &summary);
                        let _ = writeln!(out);
                    }
                    if summary.errors > 0 {
                        eprintln!(
                            "georep: {} entries failed; the rest was replicated",
                            summary.errors
                        );
                        Exit::Partial
                    } else {
                        Exit::Ok
                    }
                }
                Err(e) => {
                    let hint = if e.is_temporary() {
                        " (temporary: retrying may help)"
                    } else {
                        ""
                    };
                    eprintln!("georep: {e}{hint}");
                    e.exit()
                }
            }
        }
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
