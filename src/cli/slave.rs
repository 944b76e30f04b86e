//! `georep slave`: resolve the root, honour a forced command, serve stdio.

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
            // Said in a Fatal frame too, so that the master shows the reason.
            crate::agent::refuse(std::io::stdout().lock(), Exit::Target, &e);
            eprintln!("georep slave: {e}");
            return Exit::Target;
        }
    };
    crate::agent::serve(&root, std::io::stdin().lock(), std::io::stdout().lock())
}
