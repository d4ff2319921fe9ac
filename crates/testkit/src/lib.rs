//! headwarden's test kit, shared by the integration tests (tests/it) and the benchmarks: the
//! sandbox (a production stand-in, a local release feed, a minisign key, and a headwarden config
//! pointing at them; dropping it stops every process it started), SQLite dumps, process checks,
//! and the real Headscale and Tailscale binaries of the rig (`scripts/rig`).
//!
//! The binaries under test are found beside the test executable (`target/<profile>/`): cargo
//! builds `headwarden` for the root package's tests and benches; the stand-in is another package
//! of the workspace, so [`sim_bin`] builds it once per process (`cargo build -p headscale-sim`,
//! same profile and target directory; seconds when it is up to date) so it is never stale.

mod bins;
pub mod booted;
pub mod compose;
mod db;
pub mod deb;
mod fixtures;
mod host;
pub mod lookalike;
pub mod pg;
mod procs;
mod rig;
mod sandbox;

pub use bins::*;
pub use db::*;
pub use fixtures::*;
pub use host::Host;
pub use procs::*;
pub use rig::*;
pub use sandbox::*;
