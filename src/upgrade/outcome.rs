//! How an upgrade run is told: the event it sends to chat and the outcome `history` records.

use semver::Version;

use crate::error::error_chain;
use crate::event::{Event, Severity};
use crate::state::{RunId, RunOutcome};

use super::{PipelineError, UpgradeOutcome};

/// The event an upgrade run's result sends to chat (`None`: nothing worth telling).
pub(super) fn outcome_event(
    result: &Result<UpgradeOutcome, PipelineError>,
    run: RunId,
    current: &Version,
    target: &str,
    path: &[String],
) -> Option<(Event, Severity, serde_json::Value)> {
    match result {
        Ok(UpgradeOutcome::Upgraded { from, to, hops, .. }) => Some((
            Event::UpgradeSucceeded,
            Severity::Info,
            serde_json::json!({"run": run, "from": from.to_string(), "to": to.to_string(), "hops": hops}),
        )),
        Ok(UpgradeOutcome::StagingFailed { version, reason }) => Some((
            Event::UpgradeStagingFailed,
            Severity::Warning,
            serde_json::json!({"run": run, "version": version, "reason": reason}),
        )),
        Ok(UpgradeOutcome::RolledBack {
            now,
            failed,
            reason,
            ..
        }) => Some((
            Event::UpgradeRolledBack,
            Severity::Critical,
            serde_json::json!({"run": run, "now": now.to_string(), "failed": failed, "reason": reason}),
        )),
        Ok(UpgradeOutcome::RollbackFailed {
            failed,
            reason,
            rollback_error,
            backup,
        }) => Some((
            Event::UpgradeRollbackFailed,
            Severity::Critical,
            serde_json::json!({"run": run, "failed": failed, "reason": reason, "rollback_error": rollback_error, "backup": backup}),
        )),
        Ok(UpgradeOutcome::HookFailed {
            step,
            reason,
            production,
            ..
        }) => Some((
            Event::UpgradeHookFailed,
            Severity::Critical,
            serde_json::json!({"run": run, "summary": format!("upgrade playbook step {step} (hook) failed; production on {production}"), "reason": reason, "production": production.to_string()}),
        )),
        Ok(UpgradeOutcome::AwaitingApproval { .. } | UpgradeOutcome::OutsideWindow { .. }) => {
            Some((
                Event::UpgradeStaged,
                Severity::Info,
                serde_json::json!({"run": run, "summary": format!("Headscale {target} passed staging; promotion waits for approval or the maintenance window"), "path": path}),
            ))
        }
        Ok(_) => None,
        Err(e) => Some((
            Event::UpgradeFailed,
            Severity::Critical,
            serde_json::json!({"run": run, "from": current.to_string(), "to": target, "error": error_chain(e)}),
        )),
    }
}

/// How the run is recorded in `history`: its outcome and a one-line detail.
pub(super) fn run_outcome(
    result: &Result<UpgradeOutcome, PipelineError>,
    target: &str,
) -> (RunOutcome, String) {
    match result {
        Ok(UpgradeOutcome::Upgraded { to, .. }) => (RunOutcome::Upgraded, format!("now on {to}")),
        Ok(UpgradeOutcome::StagingFailed { version, reason }) => {
            (RunOutcome::StagingFailed, format!("{version}: {reason}"))
        }
        Ok(UpgradeOutcome::RolledBack { failed, reason, .. }) => {
            (RunOutcome::RolledBack, format!("{failed}: {reason}"))
        }
        Ok(UpgradeOutcome::RollbackFailed {
            failed,
            rollback_error,
            ..
        }) => (
            RunOutcome::RollbackFailed,
            format!("{failed}: {rollback_error}"),
        ),
        Ok(UpgradeOutcome::HookFailed { step, reason, .. }) => {
            (RunOutcome::HookFailed, format!("step {step}: {reason}"))
        }
        Ok(UpgradeOutcome::AwaitingApproval { .. } | UpgradeOutcome::OutsideWindow { .. }) => (
            RunOutcome::Staged,
            format!("{target} passed staging; waiting to promote"),
        ),
        Ok(_) => (RunOutcome::Ok, String::new()),
        Err(e) => (RunOutcome::Failed, error_chain(e)),
    }
}
