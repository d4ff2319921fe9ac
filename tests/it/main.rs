//! Integration tests: the real `headwarden` and `headscale-sim` binaries in temp sandboxes,
//! talking over 127.0.0.1 only (a local GitHub releases API, stand-in Headscale instances).

mod audit;
mod faults;
mod fuzz;
mod keys;
mod notify;
mod playbook;
mod schedule;
mod support;
mod upgrade;
