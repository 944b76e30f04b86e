//! `georep sync`: validate the arguments into engine options, run one full
//! round, print the summary.

use std::io::Write;
use std::sync::Arc;

use super::output::Terminal;
use super::{fail, SyncArgs};
use crate::error::Exit;
use crate::exclude::Excluder;
use crate::replicate::observe::Reporter;
use crate::replicate::{self, DeleteLimits, Options};
use crate::target::{check_nesting, Target};

impl SyncArgs {
    fn validate(self) -> Result<Options, String> {
        let target = Target::parse(&self.target)?;
        check_nesting(&self.source, &target)?;
        let excluder = Excluder::new(&self.exclude, &self.exclude_from)?;
        Ok(Options {
            source: self.source,
            target,
            delete: !self.no_delete,
            limits: DeleteLimits {
                max: self.max_delete,
                ..DeleteLimits::none()
            },
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
            fence: Default::default(),
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
    let rep = Arc::new(Reporter::new(Box::new(Terminal::new(
        verbose, json, progress,
    ))));
    if let Err(e) = stop_on_signals(rep.clone()) {
        eprintln!("georep: warning: cannot handle signals: {e}");
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
            if json {
                let mut out = std::io::stdout().lock();
                let _ = serde_json::to_writer(&mut out, &summary);
                let _ = writeln!(out);
            }
            if let Some(why) = &summary.refused {
                eprintln!("georep: {why}");
            }
            if summary.errors > 0 {
                eprintln!(
                    "georep: {} entries failed; the rest was replicated",
                    summary.errors
                );
                Exit::Partial
            } else if summary.refused.is_some() {
                Exit::DeleteLimit
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

/// SIGINT, SIGTERM, SIGHUP: clear the progress bar, stop the slave (which
/// removes its temporaries), exit 128 + the signal (130 for Ctrl-C).
fn stop_on_signals(rep: Arc<Reporter>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            rep.interrupt();
            crate::transport::abandon();
            let _ = writeln!(
                std::io::stderr(),
                "georep: interrupted; nothing left behind"
            );
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}
