//! `georep sync`: validate the arguments into engine options, run one full
//! round, print the summary.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use super::itemize;
use super::output::{Lines, Terminal};
use super::{fail, SyncArgs};
use crate::error::Exit;
use crate::exclude::Excluder;
use crate::replicate::observe::Reporter;
use crate::replicate::{self, DeleteLimits, Filters, Options};
use crate::select::Selection;
use crate::target::{check_nesting, Target};

impl SyncArgs {
    fn validate(self) -> Result<Options, String> {
        let target = Target::parse(&self.target)?;
        check_nesting(&self.source, &target)?;
        let excluder = Excluder::new(&self.exclude, &self.exclude_from)?;
        let files_from = match &self.files_from {
            Some(f) => Some(read_list(f, self.from0)?),
            None => None,
        };
        let whole_file =
            self.whole_file || (!self.no_whole_file && target.whole_files_by_default());
        Ok(Options {
            source: self.source,
            target,
            // --files-from replicates what it names; like rsync without
            // -r, it deletes nothing.
            delete: !self.no_delete && files_from.is_none(),
            limits: DeleteLimits {
                max: self.max_delete,
                ..DeleteLimits::none()
            },
            checksum: self.checksum,
            whole_file,
            dry_run: self.dry_run,
            jobs: self.jobs as usize,
            fsync: self.fsync,
            xattrs: !self.no_xattrs,
            excluder,
            filters: Filters {
                one_file_system: self.one_file_system,
                delete_excluded: self.delete_excluded,
                files_from,
            },
            bwlimit: self.bwlimit.and_then(|b| b.0),
            source_identity: None,
            compress: self.compress,
            ssh: self.ssh.into(),
            fence: Default::default(),
        })
    }
}

/// The `--files-from` list, from FILE or (`-`) stdin.
fn read_list(file: &Path, nul: bool) -> Result<Selection, String> {
    let mut list = Vec::new();
    let read = if file == Path::new("-") {
        std::io::stdin().lock().read_to_end(&mut list).map(|_| ())
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut list).map(|_| ()))
    };
    read.map_err(|e| format!("--files-from {}: {e}", file.display()))?;
    Selection::parse(&list, nul).map_err(|e| format!("--files-from {}: {e}", file.display()))
}

pub fn run(a: SyncArgs) -> Exit {
    let (json, stats, progress, quiet) = (a.json, a.stats, !a.no_progress, a.quiet);
    let lines = match (a.itemize_changes, a.verbose) {
        (true, _) => Lines::Itemize {
            remote: matches!(Target::parse(&a.target), Ok(Target::Ssh { .. })),
        },
        (false, true) => Lines::Verbose,
        (false, false) => Lines::None,
    };
    let opts = match a.validate() {
        Ok(o) => o,
        Err(e) => {
            say!("georep: {e}");
            return Exit::Usage;
        }
    };
    let rep = Arc::new(Reporter::new(Box::new(Terminal::new(
        lines, json, progress, quiet,
    ))));
    if let Err(e) = stop_on_signals(rep.clone()) {
        say!("georep: warning: cannot handle signals: {e}");
    }
    let result = replicate::run_with(&opts, rep.clone());
    if rep.quiet() {
        // Interrupted: the run failed because its slave was stopped; the
        // signal's thread exits with the signal's code.
        loop {
            std::thread::park();
        }
    }
    match result {
        Ok(summary) => {
            if stats && json {
                let _ = write!(std::io::stderr().lock(), "{}", itemize::stats(&summary));
            } else if stats {
                let _ = write!(std::io::stdout().lock(), "{}", itemize::stats(&summary));
            }
            if json {
                let mut out = std::io::stdout().lock();
                let _ = serde_json::to_writer(&mut out, &summary);
                let _ = writeln!(out);
            }
            if let Some(why) = &summary.refused {
                say!("georep: {why}");
            }
            if summary.errors > 0 {
                say!(
                    "georep: {} entries failed; the rest was replicated",
                    summary.errors
                );
                Exit::Partial
            } else if summary.refused.is_some() {
                Exit::DeleteLimit
            } else if summary.vanished > 0 {
                say!(
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

/// SIGINT, SIGTERM, SIGHUP: clear the progress bar, stop the slave (which
/// removes its temporaries), exit 128 + the signal (130 for Ctrl-C).
fn stop_on_signals(rep: Arc<Reporter>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            rep.interrupt();
            crate::transport::abandon();
            say!("georep: interrupted; nothing left behind");
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}
