//! `headwarden metrics`: the Prometheus text the daemon serves.

use crate::exit;
use crate::metrics;

use crate::cli::{load, Cli, Failure};

pub async fn run(cli: &Cli) -> Result<u8, Failure> {
    let s = load(cli)?;
    print!("{}", metrics::text(&s).await?);
    Ok(exit::OK)
}
