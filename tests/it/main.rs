//! The single integration-test binary (one link step, shared support code).

mod hostile;
mod ssh;
mod support;
mod sync;
