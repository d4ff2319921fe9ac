//! Prometheus text exposition (format 0.0.4) of headwarden's state: what a dashboard or an
//! alert needs without parsing logs. Written to a node-exporter textfile by `run`, served on a
//! loopback address by the daemon.

use std::fmt::Write;

use crate::deploy;
use crate::files::{self, FileError};
use crate::settings::{Job, Settings};
use crate::state::{Key, RunKind, RunOutcome, StateError, Store};

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP headwarden_{name} {help}");
    let _ = writeln!(out, "# TYPE headwarden_{name} {kind}");
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text: production's version from its binary, the rest from the state store.
pub async fn text(s: &Settings) -> Result<String, StateError> {
    let running = deploy::current_version(s).await.ok().map(|v| v.to_string());
    let store = Store::open(&s.state_dir)?;
    render(&store, running.as_deref())
}

/// Renders every metric from the state store; `running` is production's version when known.
pub fn render(store: &Store, running: Option<&str>) -> Result<String, StateError> {
    let mut out = String::new();
    version_metrics(&mut out, store, running)?;
    audit_metrics(&mut out, store)?;
    run_metrics(&mut out, store)?;
    delivery_metrics(&mut out, store)?;
    Ok(out)
}

/// Versions, approvals, hold and job starts.
fn version_metrics(
    out: &mut String,
    store: &Store,
    running: Option<&str>,
) -> Result<(), StateError> {
    let kv = |k: Key<'_>| store.kv_get(k);
    family(
        out,
        "headscale_version_info",
        "gauge",
        "Headscale version production runs.",
    );
    if let Some(v) = running {
        let _ = writeln!(
            out,
            "headwarden_headscale_version_info{{version=\"{}\"}} 1",
            label(v)
        );
    }
    family(
        out,
        "newest_release_info",
        "gauge",
        "Newest stable Headscale release in the feed.",
    );
    if let Some(v) = kv(Key::FeedNewest)? {
        let _ = writeln!(
            out,
            "headwarden_newest_release_info{{version=\"{}\"}} 1",
            label(&v)
        );
    }
    family(
        out,
        "pending_approvals",
        "gauge",
        "Planned versions waiting for `headwarden approve`.",
    );
    let pending: u64 = kv(Key::ApprovalsPending)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let _ = writeln!(out, "headwarden_pending_approvals {pending}");
    family(out, "hold", "gauge", "1 when upgrades are on hold.");
    let _ = writeln!(
        out,
        "headwarden_hold {}",
        u8::from(kv(Key::Hold)?.is_some())
    );
    family(
        out,
        "job_last_start_timestamp_seconds",
        "gauge",
        "When a scheduled job last started.",
    );
    for job in Job::ALL {
        if let Some(t) = kv(Key::JobLast(job))? {
            let job = job.as_str();
            let _ = writeln!(
                out,
                "headwarden_job_last_start_timestamp_seconds{{job=\"{job}\"}} {t}"
            );
        }
    }
    Ok(())
}

/// The last audit.
fn audit_metrics(out: &mut String, store: &Store) -> Result<(), StateError> {
    let kv = |k: Key<'_>| store.kv_get(k);
    family(
        out,
        "audit_findings",
        "gauge",
        "Open (not accepted) findings of the last audit, by severity.",
    );
    if kv(Key::AuditLastAt)?.is_some() {
        let counts: serde_json::Value = kv(Key::AuditCounts)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        for sev in ["info", "warning", "critical"] {
            let n = counts
                .get(sev)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            let _ = writeln!(out, "headwarden_audit_findings{{severity=\"{sev}\"}} {n}");
        }
    }
    family(
        out,
        "audit_last_timestamp_seconds",
        "gauge",
        "When the last audit finished.",
    );
    if let Some(t) = kv(Key::AuditLastAt)? {
        let _ = writeln!(out, "headwarden_audit_last_timestamp_seconds {t}");
    }
    family(
        out,
        "last_release_check_timestamp_seconds",
        "gauge",
        "When the release feed was last read successfully.",
    );
    if let Some(t) = kv(Key::FeedLastOk)? {
        let _ = writeln!(out, "headwarden_last_release_check_timestamp_seconds {t}");
    }
    Ok(())
}

/// Upgrade runs and their outcomes.
fn run_metrics(out: &mut String, store: &Store) -> Result<(), StateError> {
    let runs = store.recent_runs(10_000)?;
    family(
        out,
        "last_upgrade_timestamp_seconds",
        "gauge",
        "When the last upgrade run finished.",
    );
    family(
        out,
        "last_upgrade_success",
        "gauge",
        "1 when the last upgrade run upgraded production.",
    );
    if let Some(r) = runs
        .iter()
        .find(|r| r.kind == RunKind::Upgrade && r.finished_at.is_some())
    {
        let _ = writeln!(
            out,
            "headwarden_last_upgrade_timestamp_seconds {}",
            r.finished_at.unwrap_or(0)
        );
        let _ = writeln!(
            out,
            "headwarden_last_upgrade_success {}",
            u8::from(r.outcome == Some(RunOutcome::Upgraded))
        );
    }
    family(
        out,
        "runs_total",
        "counter",
        "Finished runs by kind and outcome.",
    );
    let mut counts: std::collections::BTreeMap<(RunKind, RunOutcome), u64> = Default::default();
    for r in &runs {
        if let Some(o) = r.outcome {
            *counts.entry((r.kind, o)).or_default() += 1;
        }
    }
    for ((kind, outcome), n) in &counts {
        let _ = writeln!(
            out,
            "headwarden_runs_total{{kind=\"{}\",outcome=\"{}\"}} {n}",
            label(kind.as_str()),
            label(outcome.as_str())
        );
    }
    family(
        out,
        "rollbacks_total",
        "counter",
        "Upgrades rolled back (automatically or by hand).",
    );
    let rollbacks = runs
        .iter()
        .filter(|r| r.outcome == Some(RunOutcome::RolledBack))
        .count();
    let _ = writeln!(out, "headwarden_rollbacks_total {rollbacks}");
    Ok(())
}

/// Key states, chat deliveries and the feed's rate limit.
fn delivery_metrics(out: &mut String, store: &Store) -> Result<(), StateError> {
    let kv = |k: Key<'_>| store.kv_get(k);
    family(
        out,
        "nodes",
        "gauge",
        "Nodes per key state at the last key job.",
    );
    if let Some(states) = kv(Key::KeysStates)?
        .and_then(|v| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&v).ok())
    {
        for (state, n) in states {
            let _ = writeln!(
                out,
                "headwarden_nodes{{state=\"{}\"}} {}",
                label(&state),
                n.as_u64().unwrap_or(0)
            );
        }
    }
    family(
        out,
        "notifications",
        "gauge",
        "Chat deliveries by state (pending is the backlog).",
    );
    for (state, n) in store.delivery_counts()? {
        let _ = writeln!(
            out,
            "headwarden_notifications{{state=\"{}\"}} {n}",
            label(&state)
        );
    }
    family(
        out,
        "github_rate_limit_remaining",
        "gauge",
        "GitHub API requests left at the last feed poll.",
    );
    if let Some(v) = kv(Key::FeedRateRemaining)? {
        let _ = writeln!(out, "headwarden_github_rate_limit_remaining {v}");
    }
    Ok(())
}

/// Writes `text` to a node-exporter textfile atomically: a fresh file under a random name in the
/// same directory (often the exporter's own), renamed over the target, 0644 so the exporter reads it.
pub fn write_textfile(path: &std::path::Path, text: &str) -> Result<(), FileError> {
    files::write_atomic(path, text.as_bytes(), 0o644)
}
