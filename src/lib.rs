//! headwarden keeps a self-hosted Headscale server patched (and, later, its node keys fresh).
//!
//! Code map (see ARCHITECTURE.md for the invariants):
//! - [`settings`]: YAML config → immutable `Settings`.
//! - [`release`]: GitHub feed (octocrab, ETag) → domain `Release`; the pure path planner.
//! - [`verify`]: streaming download, sha256, checksums.txt, asset digest, minisign → `Verified`.
//! - [`deploy`]: install layout, staging instance, promotion transaction, rollback, recovery.
//! - [`smoke`]: checks against a running instance.
//! - [`headscale`]: the only module that knows Headscale's config keys, CLI and HTTP shapes.
//! - [`keys`]: node-key rotation: the pure planner and the executor (reminders, one-time keys, enforcement).
//! - [`state`]: the SQLite state store and journal; the only module with SQL.
//! - [`schedule`]: cron parsing and the run lock.
//! - [`process`]: the only place that spawns processes or reads the environment.
//! - [`pipeline`]: the upgrade job (watch → plan → verify → stage → promote), shared by CLI and daemon.
//! - [`cli`]: the command line, thin wrappers over the above.

pub mod audit;
pub mod cli;
pub mod deploy;
pub mod exit;
pub mod files;
pub mod headscale;
pub mod keys;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod playbook;
pub mod process;
pub mod release;
pub mod schedule;
pub mod settings;
pub mod smoke;
pub mod state;
pub mod verify;
