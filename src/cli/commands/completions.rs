//! `headwarden completions SHELL`: shell completions from the clap definition.

use crate::exit;

use crate::cli::{Cli, Failure};

pub fn run(shell: &clap_complete::Shell) -> Result<u8, Failure> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(*shell, &mut cmd, "headwarden", &mut std::io::stdout());
    Ok(exit::OK)
}
