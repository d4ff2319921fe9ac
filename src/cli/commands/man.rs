//! `headwarden man`: the man page from the clap definition.

use crate::exit;

use crate::cli::{Cli, Failure};

pub fn run() -> Result<u8, Failure> {
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cmd)
        .render(&mut std::io::stdout())
        .map_err(anyhow::Error::from)?;
    Ok(exit::OK)
}
