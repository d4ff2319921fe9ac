//! `headwarden audit`: runs the audit playbook and prints its findings.

use crate::audit;
use crate::event::Severity;
use crate::exit;
use crate::lock::RunLock;
use crate::state::Store;

use crate::cli::{load, print_json, Cli, Failure};

pub async fn run(cli: &Cli, fail_on: &Option<String>) -> Result<u8, Failure> {
    let fail_on = fail_on.as_deref().and_then(Severity::parse);
    let s = load(cli)?;
    let _lock = RunLock::acquire_audit(&s.state_dir, "audit")?;
    let store = Store::open(&s.state_dir)?;
    let report = audit::run(&s, &store)
        .await
        .map_err(|e| anyhow::anyhow!("audit: {e}"))?;
    if cli.json {
        print_json(&report)?;
    } else {
        print_audit(&report);
    }
    Ok(match (fail_on, report.worst()) {
        (Some(limit), Some(worst)) if worst >= limit => exit::FAILURE,
        _ => exit::OK,
    })
}

/// The audit report for a terminal: grouped by severity, then accepted, skipped and drift.
fn print_audit(r: &audit::Report) {
    println!(
        "security audit (Headscale {}) at {}",
        r.headscale_version.as_deref().unwrap_or("unknown"),
        r.generated_at
    );
    for sev in [Severity::Critical, Severity::Warning, Severity::Info] {
        let group: Vec<_> = r.findings.iter().filter(|f| f.severity == sev).collect();
        if group.is_empty() {
            continue;
        }
        println!("\n{} ({})", sev.as_str().to_uppercase(), group.len());
        for f in group {
            println!("  {}\n    {}", f.id, f.title);
            if !f.evidence.is_empty() {
                println!("    evidence: {}", f.evidence);
            }
            println!("    fix: {}\n    mitigation: {}", f.fix, f.mitigation);
        }
    }
    if r.findings.is_empty() {
        println!("\nno open findings");
    }
    if !r.accepted.is_empty() {
        println!("\naccepted ({})", r.accepted.len());
        for f in &r.accepted {
            if let Some(a) = &f.accepted {
                println!("  {} until {}: {}", f.id, a.until, a.reason);
            }
        }
    }
    for e in &r.expired_acceptances {
        println!("acceptance expired: {e}");
    }
    for sk in &r.skipped {
        println!("skipped {}: {}", sk.step, sk.reason);
    }
    println!(
        "\nsince the last audit: {} new, {} resolved",
        r.new.len(),
        r.resolved.len()
    );
}
