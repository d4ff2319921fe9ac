//! headwarden keeps a self-hosted Headscale server patched and its node keys fresh.
//!
//! Code map by layer (ARCHITECTURE.md has a paragraph per module and the invariants):
//! - L0 base: [`exit`] codes, [`error`] chains, [`process`] (the only spawner and env reader),
//!   the run [`lock`], [`event`] families and severities, [`files`] (writes that never follow links).
//! - L1 config and store: [`settings`] (YAML → immutable `Settings`: cron, zones, notification
//!   URLs and playbooks parsed), [`state`] (the SQLite store and journal; the only SQL).
//! - L2 adapters: [`headscale`] (the only module that knows Headscale's wire formats and config
//!   keys), [`compose`] (compose files and the container engine's CLI), [`release`] (feed, notes, the pure planner, watching), [`verify`] (only it builds
//!   `Verified`), [`smoke`], [`notify`] (events → outbox → chat), [`hook`].
//! - L3 domain: [`deploy`] (install layout, staging, the promotion transaction, recovery),
//!   [`keys`] (planner + executor), [`audit`].
//! - L4 application: [`metrics`], [`upgrade`] (the upgrade job), [`schedule`] (jobs, daemon).
//! - L5 interface: [`cli`] (clap; thin wrappers over L3/L4).

// Modules in layer order; a module imports only modules declared above it (the tidy test in
// tests/it/tidy.rs reads this list). See ARCHITECTURE.md.
// L0 base
pub mod exit;
pub mod error;
pub mod process;
pub mod lock;
pub mod event;
pub mod files;
// L1 config and store
pub mod settings;
pub mod state;
// L2 adapters
pub mod headscale;
pub mod compose;
pub mod release;
pub mod verify;
pub mod smoke;
pub mod notify;
pub mod hook;
// L3 domain
pub mod deploy;
pub mod keys;
pub mod audit;
// L4 application
pub mod metrics;
pub mod upgrade;
pub mod schedule;
// L5 interface
pub mod cli;
