//! Promotion to production as a journaled transaction, its rollback, and crash recovery.
//!
//! Promotion of one hop (every step is journaled *before* it acts):
//! 1. `stop`    stop production through the service manager (no writes are lost after this)
//! 2. `backup`  online copy of the stopped database (SQLite backup API), config, noise key
//! 3. `switch`  point production at the new version ([`switch_to`]: the binary symlink's atomic
//!    rename, the compose file's `image:` line, `dpkg -i` of the package); data: from/to
//! 4. `start`   start the service; poll `/health` every 10 ms until healthy or timeout
//!    `verify_backup` `PRAGMA integrity_check` of the copy, once production answers (outside
//!    the downtime); a failure is a critical `upgrade.backup_unverified` alarm
//! 5. `smoke`   the smoke checks against production and the pre-upgrade baseline, then the
//!    reconnect bake (the nodes online before the stop must be online again)
//! 6. `commit`
//!
//! A failed `stop` touches nothing: production keeps running the old version (it is started only
//! if the service manager says it is down), and the release is not blamed.
//!
//! Any failure after `stop` runs [`rollback`]: stop (a failed stop, or a service that still runs
//! afterwards, halts the rollback before any file is touched: exit 5, with what to do), restore
//! database (WAL-aware) + noise key + config from the backup with their owners and modes, switch
//! the symlink back, start, verify healthy and that the *old* version answers.
//!
//! Recovery ([`recover`]) reads an unfinished run's journal after a crash or SIGKILL:
//! `smoke` done → commit; `switch` journaled → rollback from that hop's backup; only `stop`
//! journaled → start the old version unless it still runs; nothing journaled → nothing was
//! touched. Orphaned staging children recorded in `stage_start` are stopped. Production ends
//! old-and-intact or new-and-healthy, and never runs twice.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::deploy;
use crate::deploy::backup::{
    backup_dir, check_restorable, restore_backup, take_backup, verify_backup,
};
use crate::deploy::container;
use crate::deploy::service::{ServiceError, ServiceState};
use crate::deploy::{current_slot, switch_to, DeployError, Installed, Service, Slot};
use crate::error::error_chain;
use crate::event::{Event, Severity};
use crate::headscale::cli::{Cli, CliError};
use crate::headscale::config::HeadscaleConfig;
use crate::process;
use crate::settings::{Install, ReconnectPolicy, Settings, SmokeCheck};
use crate::smoke::probe;
use crate::smoke::{self, Baseline, SmokeError, Target};
use crate::state;
use crate::state::{RunId, RunKind, RunOutcome, RunRow, Step, StepRow, Store};

#[derive(Debug)]
pub enum HopOutcome {
    Promoted {
        timings: Vec<(String, u128)>,
        /// What the reconnect bake saw (`smoke.reconnect`).
        reconnect: String,
        /// What the connectivity probe saw on production (when `smoke.checks` has it).
        connectivity: Option<String>,
    },
    /// Production could not be stopped: nothing was changed and the release is not to blame.
    NotStopped {
        reason: String,
    },
    RolledBack {
        reason: String,
    },
    RollbackFailed {
        reason: String,
        rollback_error: String,
        backup: Option<PathBuf>,
    },
}

pub struct Prod<'a> {
    pub settings: &'a Settings,
    pub store: &'a Store,
    pub config: &'a HeadscaleConfig,
    pub service: Service,
    /// Production's `headscale` CLI (the binary, or inside the compose service's container).
    pub cli: Cli,
}

impl Prod<'_> {
    pub fn target(&self) -> Target {
        Target {
            name: "production",
            base_url: self.config.http_base(),
            cli: self.cli.clone(),
            config: self.settings.headscale.config.clone(),
            open_policy: self.config.open_policy(),
            probe_user: deploy::probe_user(self.store),
        }
    }

    /// [`Prod::target`] for the smoke checks. With the connectivity check on, the probe's user
    /// is made sure of in production first and its id recorded before any node registers
    /// under it (security review N10); a user the probe refuses is left for it to report.
    pub async fn smoke_target(&self) -> Target {
        let mut t = self.target();
        let (checks, timeout) = (&self.settings.smoke.checks, self.settings.smoke.timeout);
        if let Some(id) = probe::prepare(&mut t, checks, timeout).await {
            if let Err(e) = self.store.kv_set(state::Key::ProbeUser, &id.to_string()) {
                tracing::warn!(error = %e, "cannot record the probe's user");
            }
        }
        t
    }

    async fn step<T, E: Into<StepError>>(
        &self,
        run: RunId,
        hop: i64,
        name: Step,
        data: serde_json::Value,
        timings: &mut Vec<(String, u128)>,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, StepError> {
        let id = self.store.step_start(run, hop, name, &data)?;
        process::crash_point(&format!("{name}:before"));
        let t = Instant::now();
        let r = match process::fail_point(name.as_str()) {
            Some(injected) => Err(StepError::Injected(injected)),
            None => f.await.map_err(Into::into),
        };
        process::crash_point(&format!("{name}:after"));
        let ms = t.elapsed().as_millis();
        timings.push((name.as_str().to_string(), ms));
        let msg = match &r {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        self.store.step_finish(id, r.is_ok(), &msg, ms)?;
        process::crash_point(&format!("{name}:done"));
        r
    }

    /// Polls `/health`; meanwhile asks the service manager every 200 ms whether the service is
    /// still running, so a crash at start fails fast instead of waiting out the timeout.
    pub async fn wait_healthy(&self) -> Result<Duration, SmokeError> {
        let dead = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let watcher = {
            let dead = dead.clone();
            let service = self.service.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Err(e) = service.is_running().await {
                        if let Ok(mut d) = dead.lock() {
                            *d = Some(e.to_string());
                        }
                        return;
                    }
                }
            })
        };
        let r = smoke::wait_healthy(
            &self.config.http_base(),
            self.settings.smoke.timeout,
            || match dead.lock().ok().and_then(|d| d.clone()) {
                Some(e) => Err(SmokeError::Died(format!("the service is not running: {e}"))),
                None => Ok(()),
            },
        )
        .await;
        watcher.abort();
        r
    }
}

/// Why a journal step (or a promotion's or rollback's sequence of them) failed. Its text is what
/// the journal records and what the run reports, as before the type had variants.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{0}")]
    Service(#[from] ServiceError),
    #[error("{0}")]
    Smoke(#[from] SmokeError),
    /// With its sources: what failed on disk, and why.
    #[error("{}", error_chain(.0))]
    Deploy(#[from] DeployError),
    #[error("{0}")]
    State(#[from] state::StateError),
    /// A fault injected by a test (`HEADWARDEN_FAIL_AT`).
    #[error("{0}")]
    Injected(String),
    /// The smoke checks after the start failed: their failures.
    #[error("{0}")]
    SmokeFailed(String),
    /// Too few of the nodes online before the stop came back (`smoke.reconnect`).
    #[error("{0}")]
    Reconnect(String),
    #[error("cannot read the version of {slot}: {source}")]
    ReadVersion { slot: String, source: CliError },
    /// Refused to go on, with what to do instead.
    #[error("{0}")]
    Refused(String),
}

/// Stops production for a rollback and makes sure it is down: a rollback must never replace
/// files under a running server.
async fn stop_for_rollback(service: &Service) -> Result<(), StepError> {
    let hint = "production may still be running on the upgraded data, so nothing was restored; stop Headscale by hand, then run `headwarden rollback`";
    service
        .stop()
        .await
        .map_err(|e| StepError::Refused(format!("stopping production failed: {e}; {hint}")))?;
    match service.state().await {
        ServiceState::Running => Err(StepError::Refused(format!(
            "production still runs after `stop` ({}); {hint}",
            service.describe()
        ))),
        ServiceState::Stopped | ServiceState::Unknown => Ok(()),
    }
}

/// After a rollback's start: the server that answers must be the version rolled back to.
async fn check_rolled_back_version(p: &Prod<'_>, target: &Slot) -> Result<(), StepError> {
    deploy::check_running(p.settings, target).await?;
    let timeout = p.settings.smoke.timeout;
    let expected = target
        .version(timeout)
        .await
        .map_err(|source| StepError::ReadVersion {
            slot: target.journal(),
            source,
        })?;
    match smoke::served_version(&p.target(), timeout).await? {
        Some(v) if v != expected => Err(StepError::Refused(format!(
            "after the rollback production reports {v}, not {expected}: another server answers on its address"
        ))),
        _ => Ok(()),
    }
}

/// Promotes one hop. `baseline` was captured from healthy production just before.
pub async fn promote_hop(
    p: &Prod<'_>,
    run: RunId,
    hop: i64,
    from: &str,
    old_target: &Slot,
    to: &Installed,
    baseline: &Baseline,
) -> HopOutcome {
    let mut timings = Vec::new();
    let s = p.settings;
    let bdir = backup_dir(s, run, hop, from);
    let stopped = p
        .step(
            run,
            hop,
            Step::Stop,
            json!({"service": p.service.describe()}),
            &mut timings,
            p.service.stop(),
        )
        .await;
    if let Err(e) = stopped {
        return not_stopped(p, e).await;
    }
    let backup = p
        .step(
            run,
            hop,
            Step::Backup,
            json!({"dir": bdir}),
            &mut timings,
            async {
                take_backup(s, p.config, &bdir)?;
                p.store
                    .record_backup(run, hop, from, &to.version.to_string(), &bdir, true)?;
                Ok::<(), StepError>(())
            },
        )
        .await;
    // Only a backup that completed (copied and integrity-checked) may ever be restored; a failed
    // one means production's database was never touched.
    let backed_up = backup.is_ok();
    let result = match backup {
        Ok(()) => {
            switch_and_start(p, run, hop, old_target, to, baseline, &bdir, &mut timings).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((connectivity, reconnect)) => {
            let _ = p
                .store
                .step_start(run, hop, Step::Commit, &json!({}))
                .and_then(|id| p.store.step_finish(id, true, "committed", 0));
            HopOutcome::Promoted {
                timings,
                reconnect,
                connectivity,
            }
        }
        Err(e) => {
            let reason = e.to_string();
            let has_backup = backed_up;
            match rollback(
                p,
                run,
                hop,
                &reason,
                has_backup.then_some(bdir.as_path()),
                Some(old_target),
            )
            .await
            {
                Ok(()) => HopOutcome::RolledBack { reason },
                Err(rollback_error) => HopOutcome::RollbackFailed {
                    reason,
                    rollback_error: rollback_error.to_string(),
                    backup: has_backup.then_some(bdir),
                },
            }
        }
    }
}

/// The stop failed: nothing was touched. Production may still run the old version; it is
/// started only if the service manager says it is down (a second start would fight the first
/// for the port).
async fn not_stopped(p: &Prod<'_>, e: StepError) -> HopOutcome {
    let detail = match p.service.state().await {
        ServiceState::Running | ServiceState::Unknown => {
            "production was left running on the old version".to_string()
        }
        ServiceState::Stopped => match p.service.start().await {
            Ok(()) => match p.wait_healthy().await {
                Ok(_) => "production was started again on the old version".to_string(),
                Err(h) => format!("production was started again but is not healthy: {h}"),
            },
            Err(s) => format!("starting production again failed too: {s}"),
        },
    };
    HopOutcome::NotStopped {
        reason: format!("stopping production failed: {e}; nothing was changed, {detail}"),
    }
}

/// After the backup: switch the binary, start, check the backup (outside the downtime), smoke
/// and the reconnect bake. Returns what the connectivity probe and the bake saw.
#[allow(clippy::too_many_arguments)]
async fn switch_and_start(
    p: &Prod<'_>,
    run: RunId,
    hop: i64,
    old_target: &Slot,
    to: &Installed,
    baseline: &Baseline,
    bdir: &Path,
    timings: &mut Vec<(String, u128)>,
) -> Result<(Option<String>, String), StepError> {
    let s = p.settings;
    p.step(
        run,
        hop,
        Step::Switch,
        json!({"from": old_target.journal(), "to": to.slot().journal()}),
        timings,
        switch_to(s, &to.slot()),
    )
    .await?;
    p.step(run, hop, Step::Start, json!({}), timings, async {
        p.service.start().await?;
        p.wait_healthy().await?;
        deploy::check_running(s, &to.slot()).await?;
        Ok::<(), StepError>(())
    })
    .await?;
    // The backup's integrity check waits until production answers again: it is not part of
    // the downtime. A bad copy does not undo a healthy promotion (it could not be restored
    // anyway); it is an alarm, and a later rollback refuses it before writing anything.
    let verified = p
        .step(
            run,
            hop,
            Step::VerifyBackup,
            json!({"dir": bdir}),
            timings,
            async { verify_backup(bdir) },
        )
        .await;
    if let Err(e) = verified {
        tracing::error!(error = %e, "the pre-upgrade backup failed its integrity check");
        let _ = p.store.push_event(
            Event::UpgradeBackupUnverified,
            Severity::Critical,
            &json!({"run": run, "backup": bdir, "error": e.to_string()}),
        );
    }
    // The reconnect bake is part of the smoke step: a crash while it waits is not a passed
    // smoke step, so recovery rolls back rather than committing an unjudged promotion.
    p.step(run, hop, Step::Smoke, json!({}), timings, async {
        let report = smoke::run(&p.smoke_target().await, &to.version, baseline, &s.smoke).await;
        if !report.passed() {
            return Err(StepError::SmokeFailed(report.failures()));
        }
        let connectivity = report.detail_of(SmokeCheck::Connectivity);
        let r = &s.smoke.reconnect;
        let bake = smoke::reconnect(&p.target(), baseline, r, s.smoke.timeout).await;
        if bake.passed() {
            return Ok((connectivity, bake.describe()));
        }
        match r.on_failure {
            ReconnectPolicy::Rollback => Err(StepError::Reconnect(bake.describe())),
            ReconnectPolicy::Alert => {
                p.store.push_event(
                    Event::UpgradeReconnectIncomplete,
                    Severity::Warning,
                    &json!({"run": run, "version": to.version.to_string(), "before": bake.before, "back": bake.back, "needed": bake.needed, "missing": bake.missing, "within_secs": r.within.as_secs()}),
                )?;
                Ok((
                    connectivity,
                    format!("{} (kept: on_failure is alert)", bake.describe()),
                ))
            }
        }
    })
    .await
}

/// Restores production to the pre-hop state: old binary, old database, old noise key and config.
pub async fn rollback(
    p: &Prod<'_>,
    run: RunId,
    hop: i64,
    reason: &str,
    backup: Option<&Path>,
    old_target: Option<&Slot>,
) -> Result<(), StepError> {
    let mut timings = Vec::new();
    tracing::warn!(run = run.0, hop, reason, "rolling back production");
    p.step(
        run,
        hop,
        Step::Rollback,
        json!({"reason": reason, "backup": backup, "to": old_target.map(Slot::journal)}),
        &mut timings,
        async {
            // Where the backup came from is checked before production is stopped.
            if let Some(dir) = backup {
                check_restorable(p.settings, p.config, dir)?;
            }
            stop_for_rollback(&p.service).await?;
            if let Some(dir) = backup {
                if let Some(injected) = process::fail_point("restore") {
                    return Err(StepError::Injected(injected));
                }
                restore_backup(p.settings, p.config, dir)?;
            }
            if let Some(t) = old_target {
                if &current_slot(p.settings).await? != t {
                    switch_to(p.settings, t).await?;
                }
            }
            p.service.start().await?;
            p.wait_healthy().await?;
            match old_target {
                Some(t) => check_rolled_back_version(p, t).await,
                None => Ok(()),
            }
        },
    )
    .await
}

/// Starts production unless the service manager says it runs (never a second server), then
/// waits for it to be healthy.
async fn ensure_running(p: &Prod<'_>) -> Result<(), StepError> {
    if p.service.state().await != ServiceState::Running {
        p.service.start().await?;
    }
    p.wait_healthy().await?;
    Ok(())
}

/// What recovery did with one interrupted run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recovered {
    pub run: RunId,
    pub outcome: RunOutcome,
    pub detail: String,
}

fn last(steps: &[StepRow], hop: i64, name: Step) -> Option<&StepRow> {
    steps
        .iter()
        .rev()
        .find(|st| st.hop == hop && st.name == name)
}

/// A path recorded in a journal step's data.
fn path_in(step: Option<&StepRow>, key: &str) -> Option<PathBuf> {
    step.and_then(|st| st.data.get(key))
        .and_then(|v| v.as_str())
        .map(PathBuf::from)
}

/// What production pointed at, as a journal step's data recorded it.
fn slot_in(s: &Settings, step: Option<&StepRow>, key: &str) -> Option<Slot> {
    step.and_then(|st| st.data.get(key))
        .and_then(|v| v.as_str())
        .map(|t| Slot::from_journal(s, t))
}

async fn finish_rollback(
    p: &Prod<'_>,
    run: RunId,
    hop: i64,
    backup: Option<PathBuf>,
    to: Option<Slot>,
    done: &str,
) -> (RunOutcome, String) {
    match rollback(
        p,
        run,
        hop,
        "recovering an interrupted run",
        backup.as_deref(),
        to.as_ref(),
    )
    .await
    {
        Ok(()) => (RunOutcome::RolledBack, done.to_string()),
        Err(e) => (RunOutcome::RollbackFailed, e.to_string()),
    }
}

/// Staging instances an interrupted run left behind (matched by pid and command line).
async fn stop_orphaned_staging(s: &Settings, run: RunId, steps: &[StepRow]) {
    if let Install::Compose(c) = &s.headscale.install {
        // Every container labelled with this run: also one whose start was not journaled yet.
        let engine = container::engine(c);
        let mut names: Vec<String> = steps
            .iter()
            .filter(|st| st.name == Step::StageStart)
            .filter_map(|st| st.data.get("container").and_then(|v| v.as_str()))
            .map(str::to_string)
            .collect();
        let label = container::staging_label(&s.state_dir, run);
        match engine
            .labelled(&format!("io.headwarden.staging={label}"))
            .await
        {
            Ok(found) => names.extend(found),
            Err(e) => tracing::error!(error = %e, "cannot list staging containers"),
        }
        names.sort();
        names.dedup();
        for name in names {
            match engine.remove(&name).await {
                Ok(()) => {
                    tracing::warn!(%name, "removed a staging container an interrupted run left")
                }
                Err(e) => {
                    tracing::error!(%name, error = %e, "cannot remove a staging container an interrupted run left")
                }
            }
        }
        return;
    }
    for st in steps.iter().filter(|st| st.name == Step::StageStart) {
        if let (Some(pid), Some(marker)) = (
            st.data.get("pid").and_then(|v| v.as_u64()),
            st.data.get("marker").and_then(|v| v.as_str()),
        ) {
            if process::terminate_pid_if(pid as u32, marker) {
                tracing::warn!(pid, "stopped an orphaned staging instance");
            }
        }
    }
}

/// How one interrupted run ends, decided from its journal: committed, rolled back (finishing
/// the rollback), or aborted with production started unchanged. `touched`: a step acted on
/// production.
async fn settle(
    p: &Prod<'_>,
    run: &RunRow,
    steps: &[StepRow],
    hop: i64,
    touched: bool,
) -> (RunOutcome, String) {
    if run.kind == RunKind::Smoke {
        // `headwarden smoke` changes nothing but the probe's node, which recovery sweeps.
        return (
            RunOutcome::Aborted,
            "the smoke checks were interrupted; production was not changed".into(),
        );
    }
    if run.kind == RunKind::Rollback && touched {
        settle_manual_rollback(p, run, steps, hop).await
    } else if last(steps, hop, Step::Commit).is_some() {
        (RunOutcome::Upgraded, "the promotion had committed".into())
    } else if last(steps, hop, Step::Smoke).is_some_and(|st| st.status == "done") {
        let _ = p
            .store
            .step_start(run.id, hop, Step::Commit, &json!({"recovered": true}))
            .and_then(|id| p.store.step_finish(id, true, "committed by recovery", 0));
        (
            RunOutcome::Upgraded,
            "promotion had passed its smoke checks; committed".into(),
        )
    } else if last(steps, hop, Step::Rollback).is_some_and(|st| st.status == "done") {
        // The rollback finished before the crash: repeating it would throw away what
        // production wrote since. Only make sure it runs.
        restarted(p, RunOutcome::RolledBack, "the rollback had completed").await
    } else if let Some(sw) = last(steps, hop, Step::Switch) {
        let backup = path_in(last(steps, hop, Step::Backup), "dir");
        let detail = "interrupted after the switch; restored the backup and the previous binary";
        let from = slot_in(p.settings, Some(sw), "from");
        finish_rollback(p, run.id, hop, backup, from, detail).await
    } else if let Some(rb) = last(steps, hop, Step::Rollback) {
        let (backup, to) = (
            path_in(Some(rb), "backup"),
            slot_in(p.settings, Some(rb), "to"),
        );
        finish_rollback(
            p,
            run.id,
            hop,
            backup,
            to,
            "finished an interrupted rollback",
        )
        .await
    } else if last(steps, hop, Step::Stop).is_some() {
        // Stopped (maybe backed up) but nothing switched: the old version on untouched data.
        // The crash may have come before the stop took effect: never start a second server.
        restarted(
            p,
            RunOutcome::Aborted,
            "interrupted before the switch; restarted the unchanged production",
        )
        .await
    } else {
        (
            RunOutcome::Aborted,
            "interrupted before production was touched".into(),
        )
    }
}

/// An interrupted `headwarden rollback`: restart the untouched production when nothing was
/// restored yet, only make sure it runs when the restore had completed, else finish it.
async fn settle_manual_rollback(
    p: &Prod<'_>,
    run: &RunRow,
    steps: &[StepRow],
    hop: i64,
) -> (RunOutcome, String) {
    let st = last(steps, hop, Step::ManualRollback);
    if st.is_none() {
        // Stopped (maybe with a safety backup) but nothing restored yet.
        restarted(
            p,
            RunOutcome::Aborted,
            "interrupted before the restore; production restarted unchanged",
        )
        .await
    } else if st.is_some_and(|st| st.status == "done") {
        restarted(p, RunOutcome::RolledBack, "manual rollback had completed").await
    } else {
        let (backup, to) = (path_in(st, "backup"), slot_in(p.settings, st, "to"));
        finish_rollback(
            p,
            run.id,
            hop,
            backup,
            to,
            "finished the interrupted manual rollback",
        )
        .await
    }
}

/// `outcome` with `detail` once production runs (started when it does not), else `Failed`.
async fn restarted(p: &Prod<'_>, outcome: RunOutcome, detail: &str) -> (RunOutcome, String) {
    match ensure_running(p).await {
        Ok(()) => (outcome, detail.to_string()),
        Err(e) => (
            RunOutcome::Failed,
            format!("restarting production failed: {e}"),
        ),
    }
}

/// Finishes every interrupted run found in the journal.
pub async fn recover(p: &Prod<'_>) -> Result<Vec<Recovered>, DeployError> {
    let mut out = Vec::new();
    for run in p.store.open_runs()? {
        let steps = p.store.steps(run.id)?;
        stop_orphaned_staging(p.settings, run.id, &steps).await;
        let prod_steps: Vec<&StepRow> = steps
            .iter()
            .filter(|st| st.name.acts_on_production())
            .collect();
        let hop = prod_steps.last().map_or(0, |st| st.hop);
        let (outcome, detail) = settle(p, &run, &steps, hop, !prod_steps.is_empty()).await;
        p.store
            .finish_run(run.id, outcome, &format!("recovered: {detail}"))?;
        // Chat hears how an interrupted run ended: nothing else would tell it.
        let severity = match outcome {
            RunOutcome::RollbackFailed | RunOutcome::Failed => Severity::Critical,
            _ => Severity::Warning,
        };
        p.store.push_event(
            Event::UpgradeRecovered,
            severity,
            &json!({"run": run.id, "kind": run.kind, "outcome": outcome, "detail": detail}),
        )?;
        tracing::warn!(run = run.id.0, outcome = %outcome, detail = %detail, "recovered an interrupted run");
        out.push(Recovered {
            run: run.id,
            outcome,
            detail,
        });
    }
    if !out.is_empty() {
        // A crash inside the connectivity probe can leave its node and user behind when the
        // run did not roll production's data back (on staging they go with the copy).
        match probe::sweep(&p.target(), p.settings.smoke.timeout).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not look for the connectivity probe's node")
            }
        }
    }
    Ok(out)
}

/// What a manual rollback to `version` switches production back to: that version's binary,
/// image or package, which must still be kept. A package manager's binary (`kind: external`)
/// cannot be put back by headwarden.
async fn kept_slot(
    s: &Settings,
    store: &Store,
    version: &semver::Version,
    backup: &state::BackupRow,
) -> Result<Slot, StepError> {
    let slot = match &s.headscale.install {
        Install::Binary => {
            let path = deploy::version_path(s, version);
            if !path.exists() {
                return Err(StepError::Refused(format!(
                    "the binary for {} is no longer installed at {}",
                    backup.version,
                    path.display()
                )));
            }
            Slot::Binary(path)
        }
        Install::Compose(c) => {
            let reference = format!("{}:{version}", c.image);
            if container::engine(c)
                .image(&reference)
                .await
                .map_err(DeployError::from)?
                .is_none()
            {
                return Err(StepError::Refused(format!(
                    "the image {reference} is no longer in the engine's storage; pull it, then run `headwarden rollback` again"
                )));
            }
            // Re-checked against the digest verified when it was pulled, and pinned by it.
            let recorded = store.kv_get(state::Key::Image(&reference))?;
            let pinned = container::kept_image(c, &reference, recorded).await?;
            Slot::Image(pinned.unwrap_or(reference))
        }
        Install::External(_) => {
            return Err(StepError::Refused(format!(
                "headscale.install.kind is external: the package manager owns {}, so `headwarden rollback` cannot put {} back; reinstall that version with it, then restore the data from {} by hand (db.sqlite, noise_private.key, config.yaml)",
                s.headscale.binary.display(),
                backup.version,
                backup.dir
            )))
        }
        Install::Deb(_) => {
            let path = deploy::package_path(s, version);
            if !path.exists() {
                return Err(StepError::Refused(format!(
                    "the package for {} is no longer kept at {}",
                    backup.version,
                    path.display()
                )));
            }
            Slot::Package(path)
        }
    };
    Ok(slot)
}

/// `headwarden rollback`: restore the backup taken before an upgrade and its binary.
pub async fn manual_rollback(
    p: &Prod<'_>,
    run: RunId,
    backup: &state::BackupRow,
) -> Result<(), StepError> {
    let s = p.settings;
    let version = semver::Version::parse(&backup.version)
        .map_err(|e| StepError::Refused(format!("{:?} is not a version: {e}", backup.version)))?;
    let target = kept_slot(s, p.store, &version, backup).await?;
    let dir = PathBuf::from(&backup.dir);
    // Refused here, before production is stopped, when the backup would not go back where it
    // came from.
    check_restorable(s, p.config, &dir)?;
    let mut timings = Vec::new();
    // Keep what is being replaced, so the rollback itself can be undone by hand.
    let safety = s
        .state_dir
        .join("backups")
        .join(format!("run{run}-before-rollback"));
    p.step(
        run,
        0,
        Step::Stop,
        json!({}),
        &mut timings,
        p.service.stop(),
    )
    .await?;
    if p.service.state().await == ServiceState::Running {
        return Err(StepError::Refused(format!(
            "production still runs after `stop` ({}); nothing was restored: stop Headscale by hand and run `headwarden rollback` again",
            p.service.describe()
        )));
    }
    let safety_result = p
        .step(
            run,
            0,
            Step::SafetyBackup,
            json!({"dir": safety}),
            &mut timings,
            async { take_backup(s, p.config, &safety).and_then(|()| verify_backup(&safety)) },
        )
        .await;
    if let Err(e) = safety_result {
        // Nothing was changed yet: bring production back as it was.
        let restarted = match p.service.start().await {
            Ok(()) => p
                .wait_healthy()
                .await
                .map(|_| "production restarted unchanged".to_string())
                .map_err(StepError::from),
            Err(e) => Err(StepError::from(e)),
        };
        return Err(StepError::Refused(format!(
            "the safety backup failed ({e}); {}",
            restarted.unwrap_or_else(|e| format!("restarting production failed too: {e}"))
        )));
    }
    p.step(
        run,
        0,
        Step::ManualRollback,
        json!({"backup": dir, "to": target.journal()}),
        &mut timings,
        async {
            restore_backup(s, p.config, &dir)?;
            switch_to(s, &target).await?;
            p.service.start().await?;
            p.wait_healthy().await?;
            check_rolled_back_version(p, &target).await
        },
    )
    .await
}
