//! `georep slave`: resolve the root, honour a forced command, serve stdio.

use std::os::fd::AsFd;

use super::SlaveArgs;
use crate::agent::volumes::{self, Request};
use crate::error::Exit;
use crate::target::Place;

pub fn run(a: &SlaveArgs) -> Exit {
    let (request, root) = match a.place.place() {
        Place::Path(p) => (Request::Root(p.to_string_lossy().into_owned()), Ok(p)),
        Place::Volume(v) => (Request::Volume(v.clone()), volumes::resolve(&v)),
    };
    let root = match volumes::check_forced(&request).and(root) {
        Ok(r) => r,
        Err(e) => {
            // Said in a Fatal frame, which the master shows; on stderr only
            // if that cannot go out (else the master's terminal says it twice).
            if !crate::agent::refuse(std::io::stdout().lock(), Exit::Target, &e) {
                eprintln!("georep slave: {e}");
            }
            return Exit::Target;
        }
    };
    remove_temporaries_on_signals();
    // Its own descriptor: the agent's signing thread writes to it too, and
    // Stdout's line buffering would only copy frames once more.
    let output = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            eprintln!("georep slave: standard output: {e}");
            return Exit::Protocol;
        }
    };
    // The master's data arrives here: under sshd or a local master, a pipe.
    crate::transport::widen_pipe(std::io::stdin());
    crate::agent::serve(
        &root,
        a.state_dir.as_deref(),
        std::io::stdin().lock(),
        output,
    )
}

/// A slave interrupted (a Ctrl-C of the master's terminal, `kill`, the SSH
/// session hung up) removes its named temporaries before it exits.
fn remove_temporaries_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            crate::fsutil::remove_live_temporaries();
            std::process::exit(128 + sig);
        }
    });
}
