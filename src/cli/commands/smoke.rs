//! `headwarden smoke [--json]`: the configured smoke checks against production now.

use crate::exit;
use crate::lock::RunLock;
use crate::state::Store;
use crate::upgrade;

use crate::cli::{load, print_json, Cli, Failure};

pub async fn run(cli: &Cli) -> Result<u8, Failure> {
    let s = load(cli)?;
    // The probe registers a node on production: never beside an upgrade.
    let _lock = RunLock::acquire(&s.state_dir, "smoke")?;
    let store = Store::open(&s.state_dir)?;
    let report = upgrade::smoke_production(&s, &store).await?;
    if cli.json {
        print_json(&report)?;
    } else {
        for r in &report.results {
            println!(
                "{} {}: {} ({} ms)",
                if r.ok { "ok  " } else { "FAIL" },
                r.check,
                r.detail,
                r.elapsed_ms
            );
        }
    }
    Ok(if report.passed() {
        exit::OK
    } else {
        exit::FAILURE
    })
}
