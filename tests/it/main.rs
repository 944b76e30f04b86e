//! The single integration-test binary (one link step, shared support code).

mod hostile;
mod support;
mod sync;
