//! `georep sync`: validate the arguments into engine options, run one full
//! round, print the summary.

use std::io::Write;

use super::output::Terminal;
use super::{fail, SyncArgs};
use crate::error::Exit;
use crate::exclude::Excluder;
use crate::replicate::{self, Options};
use crate::target::Target;

impl SyncArgs {
    fn validate(self) -> Result<Options, String> {
        let target = Target::parse(&self.target)?;
        let excluder = Excluder::new(&self.exclude, &self.exclude_from)?;
        Ok(Options {
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
            source_identity: None,
            compress: self.compress,
            ssh: self.ssh.into(),
        })
    }
}

pub fn run(a: SyncArgs) -> Exit {
    let (json, verbose, progress) = (a.json, a.verbose, !a.no_progress);
    let opts = match a.validate() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("georep: {e}");
            return Exit::Usage;
        }
    };
    let observer = Box::new(Terminal::new(verbose, json, progress));
    match replicate::run(&opts, observer) {
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
            } else if summary.vanished > 0 {
                eprintln!(
                    "georep: {} entries vanished from the source while it was read",
                    summary.vanished
                );
                Exit::Vanished
            } else {
                Exit::Ok
            }
        }
        Err(e) => fail(&e),
    }
}
