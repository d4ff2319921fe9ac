//! Integration tests: the real `headwarden` and `headscale-sim` binaries in temp sandboxes,
//! talking over 127.0.0.1 only (a local GitHub releases API, stand-in Headscale instances), and
//! real Headscale and Tailscale builds from the rig (`scripts/rig`, module `real`). The sandbox
//! and fixtures live in `crates/testkit`, shared with the benchmarks.
#![allow(clippy::disallowed_methods)] // spawns the real binaries and reads the rig's environment

use testkit as support;

mod audit;
mod compose;
mod deb;
mod external;
mod faults;
mod fuzz;
mod identity;
mod keys;
mod notify;
mod playbook;
mod postgres;
mod probe;
mod real;
mod restore;
mod rows;
mod schedule;
mod systemd;
mod snapshots;
mod tidy;
mod upgrade;
