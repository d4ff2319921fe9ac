//! The audit's checks, one file per step of the audit playbook (`playbooks/audit.yaml`).

pub(super) mod config;
pub(super) mod dns;
pub(super) mod enrollment;
pub(super) mod files;
pub(super) mod nodes;
pub(super) mod policy;
pub(super) mod version;
