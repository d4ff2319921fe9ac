//! `headwarden history`: the journal of recent runs and their steps.

use crate::exit;
use crate::state::{RunOutcome, Store};

use crate::cli::{load, print_json, Cli, Failure};

pub fn run(cli: &Cli, limit: &i64) -> Result<u8, Failure> {
    let s = load(cli)?;
    let store = Store::open(&s.state_dir)?;
    let runs = store.recent_runs(*limit)?;
    if cli.json {
        let detailed: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| serde_json::json!({"run": r, "steps": store.steps(r.id).unwrap_or_default()}))
            .collect();
        return print_json(&detailed).map(|()| exit::OK);
    }
    for r in runs {
        println!(
            "run {} {} {} -> {}: {} {}",
            r.id,
            r.kind,
            r.from_version.as_deref().unwrap_or("?"),
            r.to_version.as_deref().unwrap_or("?"),
            r.outcome.map_or("INTERRUPTED", RunOutcome::as_str),
            r.detail.as_deref().unwrap_or("")
        );
        for st in store.steps(r.id)? {
            println!(
                "    hop {} {:<14} {:<8} {:>6} ms  {}",
                st.hop,
                st.name,
                st.status,
                st.elapsed_ms.unwrap_or(0),
                st.message.unwrap_or_default()
            );
        }
    }
    Ok(exit::OK)
}
