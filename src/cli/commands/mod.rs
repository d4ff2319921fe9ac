//! One file per command, each a thin wrapper over an upgrade/deploy/keys/audit/state function
//! that prints its result.

pub mod approve;
pub mod audit;
pub mod check;
pub mod completions;
pub mod config;
pub mod demo;
pub mod demo_real;
pub mod history;
pub mod hold;
pub mod keys;
pub mod man;
pub mod metrics;
pub mod notify;
pub mod playbook;
pub mod rollback;
pub mod run;
pub mod smoke;
pub mod status;
pub mod upgrade;
