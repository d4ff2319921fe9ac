//! `headwarden playbook check FILE`: validates an edited playbook as the config loader would.

use std::path::Path;

use crate::exit;
use crate::settings::playbook;

use crate::cli::Failure;

pub fn run(file: &Path) -> Result<u8, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    match playbook::check(&text) {
        Ok(pb) => {
            println!(
                "{}: ok ({} playbook, {} steps)",
                file.display(),
                pb.name,
                pb.steps.len()
            );
            Ok(exit::OK)
        }
        Err(refused) => {
            for p in refused.problems() {
                eprintln!("error: {}: {p}", file.display());
            }
            Ok(exit::USAGE)
        }
    }
}
