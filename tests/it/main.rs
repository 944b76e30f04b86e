//! The single integration-test binary (one link step, shared support code).

mod checkpoints;
mod churn;
mod control;
mod control_socket;
mod conventions;
mod crawl;
mod engine;
mod events;
mod faults;
mod hostile;
mod hostile_limits;
mod hostile_local;
mod links;
mod nodes;
mod operator;
mod operator_errors;
mod operator_status;
mod regression;
mod rsync_habits;
mod session;
mod ssh;
mod status_truth;
mod support;
mod sync;
