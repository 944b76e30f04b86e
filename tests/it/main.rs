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
mod links;
mod nodes;
mod operator;
mod operator_errors;
mod regression;
mod rsync_habits;
mod session;
mod ssh;
mod support;
mod sync;
