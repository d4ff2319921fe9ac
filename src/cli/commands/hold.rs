//! `headwarden hold [REASON]` and `unhold`: stop and resume upgrades.

use crate::exit;
use crate::state::Store;
use crate::upgrade;

use crate::cli::{load, Cli, Failure};

pub fn hold(cli: &Cli, reason: &str) -> Result<u8, Failure> {
    let s = load(cli)?;
    let store = Store::open(&s.state_dir)?;
    upgrade::set_hold(&store, Some(reason))?;
    println!("upgrades are on hold ({reason}); `headwarden unhold` releases them");
    Ok(exit::OK)
}

pub fn unhold(cli: &Cli) -> Result<u8, Failure> {
    let s = load(cli)?;
    let store = Store::open(&s.state_dir)?;
    upgrade::set_hold(&store, None)?;
    println!("upgrades are no longer on hold");
    Ok(exit::OK)
}
