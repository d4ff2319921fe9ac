//! `headwarden rollback [--to V]`: restores production to an earlier version with its data.

use semver::Version;

use crate::exit;
use crate::lock::RunLock;
use crate::state::Store;
use crate::upgrade;

use crate::cli::{load, Cli, Failure};

pub async fn run(cli: &Cli, to: &Option<Version>) -> Result<u8, Failure> {
    let s = load(cli)?;
    let _lock = RunLock::acquire(&s.state_dir, "rollback")?;
    let store = Store::open(&s.state_dir)?;
    let say = |line: &str| println!("{line}");
    let v = upgrade::rollback(&s, &store, to.as_ref(), &say).await?;
    println!("production restored to {v}");
    Ok(exit::OK)
}
