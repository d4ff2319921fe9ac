//! Rollbacks the upgrade job runs: `headwarden rollback [--to V]`, and the one a hook after
//! promote asks for (`roll_back_run`), each in a `rollback` run of its own.

use semver::Version;

use crate::deploy;
use crate::deploy::transaction;
use crate::event::{Event, Severity};
use crate::settings::Settings;
use crate::state;
use crate::state::{RunId, RunKind, RunOutcome, Step, Store};

use super::{current_version, prod, recover_and_report, PipelineError, Say, UpgradeOutcome};

/// Restores the first backup of `run` (a hook after promote asked for it). Everything written to
/// production since the promotion is lost with this restore; the rollback's safety copy
/// (backups/run<id>-before-rollback) keeps it.
pub(super) async fn roll_back_run(
    s: &Settings,
    store: &Store,
    run: RunId,
    current: &Version,
    target: &str,
    why: String,
    say: Say<'_>,
) -> Result<UpgradeOutcome, PipelineError> {
    let backup = store
        .backups()?
        .into_iter()
        .find(|b| b.run_id == run && b.hop == 0)
        .ok_or_else(|| PipelineError::Other("no backup from this run to roll back to".into()))?;
    let failed = target.to_string();
    match restore(s, store, &backup, &why, false, say).await {
        Ok(now) => Ok(UpgradeOutcome::RolledBack {
            from: current.clone(),
            now: Version::parse(&now).unwrap_or_else(|_| current.clone()),
            failed,
            reason: why,
        }),
        Err(e) => Ok(UpgradeOutcome::RollbackFailed {
            failed,
            reason: why,
            rollback_error: e.to_string(),
            backup: Some(backup.dir),
        }),
    }
}

/// `headwarden rollback [--to V]`: restores the backup taken before the newest committed upgrade
/// (or before the upgrade away from V) and that version's binary.
pub async fn rollback(
    s: &Settings,
    store: &Store,
    to: Option<&Version>,
    say: Say<'_>,
) -> Result<String, PipelineError> {
    recover_and_report(s, store, say).await?;
    let backups = store.backups()?;
    let committed = |b: &&state::BackupRow| {
        store
            .steps(b.run_id)
            .map(|st| st.iter().any(|x| x.hop == b.hop && x.name == Step::Commit))
            .unwrap_or(false)
    };
    let backup = match to {
        Some(v) => backups
            .iter()
            .filter(committed)
            .find(|b| b.version == v.to_string()),
        None => backups.iter().find(committed),
    }
    .ok_or_else(|| {
        PipelineError::Other(match to {
            Some(v) => format!("no backup taken before an upgrade away from {v}"),
            None => "no completed upgrade to roll back".to_string(),
        })
    })?
    .clone();
    restore(s, store, &backup, "", true, say).await
}

/// Restores production from `backup` (database, config, noise key, that version's binary) in a
/// `rollback` run of its own. `manual`: an admin asked; otherwise `reason` says what failed.
async fn restore(
    s: &Settings,
    store: &Store,
    backup: &state::BackupRow,
    reason: &str,
    manual: bool,
    say: Say<'_>,
) -> Result<String, PipelineError> {
    let current = current_version(s).await?;
    let config = deploy::production_config(s).await?;
    let p = prod(s, store, &config).await?;
    let run = store.begin_run(
        RunKind::Rollback,
        Some(&current.to_string()),
        Some(&backup.version),
    )?;
    say(&format!(
        "rolling back {current} -> {} using the backup from before that upgrade ({}); changes made since then are lost (a safety copy is kept)",
        backup.version, backup.dir
    ));
    let reason = if manual {
        format!("rolled back by hand from {current}")
    } else {
        reason.to_string()
    };
    match transaction::manual_rollback(&p, run, backup).await {
        Ok(()) => {
            store.finish_run(
                run,
                RunOutcome::RolledBack,
                &format!("restored {}", backup.dir),
            )?;
            if manual {
                store.push_event(
                    Event::UpgradeRolledBack,
                    Severity::Warning,
                    &serde_json::json!({"run": run, "manual": true, "now": backup.version, "failed": current.to_string(), "reason": reason}),
                )?;
            }
            Ok(backup.version.clone())
        }
        Err(e) => {
            let e = e.to_string();
            store.finish_run(run, RunOutcome::RollbackFailed, &e)?;
            store.push_event(
                Event::UpgradeRollbackFailed,
                Severity::Critical,
                &serde_json::json!({"run": run, "failed": current.to_string(), "reason": reason, "rollback_error": e, "backup": backup.dir}),
            )?;
            Err(PipelineError::Other(format!("rollback failed: {e}")))
        }
    }
}
