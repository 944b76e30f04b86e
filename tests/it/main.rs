//! The single integration-test binary (one link step, shared support code).

mod churn;
mod control;
mod conventions;
mod crawl;
mod engine;
mod events;
mod hostile;
mod hostile_limits;
mod hostile_local;
mod nodes;
mod operator;
mod operator_errors;
mod operator_status;
mod regression;
mod rsync_habits;
mod session;
mod ssh;
mod support;
mod sync;
