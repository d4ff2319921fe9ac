//! `headwarden approve VERSION`: lets a release held by `release.approval` through.

use semver::Version;

use crate::exit;
use crate::state::Store;
use crate::upgrade;

use crate::cli::{load, Cli, Failure};

pub fn run(cli: &Cli, version: &Version) -> Result<u8, Failure> {
    let s = load(cli)?;
    let store = Store::open(&s.state_dir)?;
    upgrade::approve(&store, version)?;
    println!("approved {version}: the next upgrade run may apply it");
    Ok(exit::OK)
}
