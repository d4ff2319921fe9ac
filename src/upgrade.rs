//! The upgrade job: watch → plan → download+verify → stage → promote (or roll back).
//! `headwarden upgrade`, `headwarden check` and (later) the daemon's job all call these functions.

use semver::Version;
use serde::Serialize;

use crate::deploy::prepare::Prep;
use crate::deploy::production;
use crate::deploy::staging::{self, StageOutcome};
use crate::deploy::transaction::{self, HopOutcome, Prod, Recovered};
use crate::deploy::{self, Installed, Production, Service};
use crate::error::error_chain;
use crate::event::{Event, Severity};
use crate::headscale::config;
use crate::hook;
use crate::notify;
use crate::release::feed;
use crate::release::plan::{self, Plan};
use crate::release::watch::{
    self, awaiting_approval, estimate_secs, hold_reason, CheckReport, ExternalFacts, WatchError,
};
pub use crate::release::watch::{approve, set_hold, UpgradeOptions};
use crate::release::Release;
use crate::settings::cron;
use crate::settings::playbook::{self, OnFailure, StepKind};
use crate::settings::Settings;
use crate::smoke;
use crate::state;
use crate::state::Store;
use crate::verify;
use crate::verify::Downloader;

#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum UpgradeOutcome {
    NothingToDo {
        current: Version,
        notes: Vec<String>,
    },
    Blocked {
        current: Version,
        reason: String,
    },
    /// Production's config has keys a planned version refuses to start with.
    ConfigIncompatible {
        current: Version,
        problems: Vec<String>,
    },
    DryRun {
        plan: Plan,
    },
    /// Outside `release.window` (or too little of it left, or a blackout date).
    OutsideWindow {
        current: Version,
        /// RFC 3339 start of the next window that fits, if any within two weeks.
        next: Option<String>,
        needed_minutes: i64,
    },
    /// `release.approval` makes these versions wait for `headwarden approve VERSION`.
    AwaitingApproval {
        current: Version,
        versions: Vec<String>,
    },
    Upgraded {
        from: Version,
        to: Version,
        hops: Vec<String>,
        timings: Vec<Vec<(String, u128)>>,
    },
    StagingFailed {
        version: String,
        reason: String,
    },
    RolledBack {
        from: Version,
        now: Version,
        failed: String,
        reason: String,
    },
    RollbackFailed {
        failed: String,
        reason: String,
        rollback_error: String,
        backup: Option<String>,
    },
    /// A playbook hook failed with `on_failure: stop` (or `rollback`, handled before returning).
    HookFailed {
        /// 1-based step number in the playbook.
        step: usize,
        reason: String,
        /// What production runs now.
        production: Version,
        #[serde(skip)]
        rollback: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Feed(#[from] feed::FeedError),
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error(transparent)]
    Deploy(#[from] deploy::DeployError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    CurrentVersion(#[from] deploy::CurrentVersionError),
    #[error("production is not healthy before the upgrade: {0}")]
    ProductionUnhealthy(smoke::SmokeError),
    #[error("{0}")]
    NotStopped(String),
    #[error("{0}")]
    Other(String),
}

impl From<WatchError> for PipelineError {
    fn from(e: WatchError) -> Self {
        match e {
            WatchError::Feed(e) => PipelineError::Feed(e),
            WatchError::State(e) => PipelineError::State(e),
        }
    }
}

impl PipelineError {
    pub fn hint(&self) -> Option<String> {
        match self {
            PipelineError::Feed(e) => e.hint().map(String::from),
            PipelineError::ProductionUnhealthy(_) => Some(
                "headwarden only upgrades a healthy server; fix production first, then run again"
                    .into(),
            ),
            PipelineError::Deploy(deploy::DeployError::Identity(e)) => Some(e.hint().into()),
            PipelineError::Verify(e) | PipelineError::Deploy(deploy::DeployError::Verify(e))
                if e.release_is_bad() =>
            {
                Some(
                    "the release was recorded as bad and will be skipped; `headwarden status` lists it"
                        .into(),
                )
            }
            PipelineError::Verify(_) | PipelineError::Deploy(deploy::DeployError::Verify(_)) => {
                Some("a transient download problem; the release was not recorded as bad and is retried on the next run".into())
            }
            PipelineError::NotStopped(_) => Some(
                "the release was not recorded as bad; check the service manager (`headscale.service`), then run again".into(),
            ),
            PipelineError::CurrentVersion(_) => {
                Some("check headscale.binary in the config; `<binary> version` must work".into())
            }
            _ => None,
        }
    }
}

pub async fn prod<'a>(
    s: &'a Settings,
    store: &'a Store,
    config: &'a config::HeadscaleConfig,
) -> Result<Prod<'a>, PipelineError> {
    Ok(Prod {
        settings: s,
        store,
        config,
        service: Service::new(&s.headscale.service),
        cli: deploy::production_cli(s).await?,
    })
}

pub async fn current_version(s: &Settings) -> Result<Version, PipelineError> {
    Ok(deploy::current_version(s).await?)
}

/// `headwarden smoke`: the configured smoke checks against production as it runs now (the
/// baseline is taken right before, so noise key and parity compare production with itself; the
/// probe's node is removed afterwards). Interrupted runs are recovered first.
pub async fn smoke_production(s: &Settings, store: &Store) -> Result<smoke::Report, PipelineError> {
    recover(s, store).await?;
    let current = current_version(s).await?;
    let config = deploy::production_config(s).await?;
    let p = prod(s, store, &config).await?;
    let baseline = smoke::baseline(&p.target(), s.smoke.timeout)
        .await
        .map_err(|e| PipelineError::Other(format!("production does not answer its CLI: {e}")))?;
    // Journaled, so that recovery sweeps the probe's node after a crash.
    let run = store.begin_run("smoke", Some(&current.to_string()), None)?;
    let report = smoke::run(&p.target(), &current, &baseline, &s.smoke).await;
    let (outcome, detail) = if report.passed() {
        ("passed", "all checks passed".to_string())
    } else {
        ("failed", report.failures())
    };
    store.finish_run(run, outcome, &detail)?;
    Ok(report)
}

/// Finishes interrupted runs (crash recovery); safe to call at the start of every locked command.
pub async fn recover(s: &Settings, store: &Store) -> Result<Vec<Recovered>, PipelineError> {
    if store.open_runs()?.is_empty() {
        return Ok(vec![]);
    }
    let config = deploy::production_config(s).await?;
    Ok(transaction::recover(&prod(s, store, &config).await?).await?)
}

/// `headwarden check`: what would happen. Reads the feed (updating its cache) and changes nothing else.
pub async fn check(
    s: &Settings,
    store: &Store,
    opts: &UpgradeOptions,
) -> Result<CheckReport, PipelineError> {
    Ok(fetch_and_plan(s, store, opts).await?.0)
}

/// The feed read and the path planned from the version production runs now, and production as
/// found for this run (read once: staging, the backup check and the promotion use it).
async fn fetch_and_plan(
    s: &Settings,
    store: &Store,
    opts: &UpgradeOptions,
) -> Result<(CheckReport, Vec<Release>, Production), PipelineError> {
    if let Some(conflict) = deploy::install_conflict(s).await {
        return Err(PipelineError::Other(conflict));
    }
    let production = Production::find(s).await?;
    if let Some(facts) = production::external_facts(s, &production).await? {
        let (report, releases) = external_report(facts, &production.config);
        return Ok((report, releases, production));
    }
    let current = current_version(s).await?;
    let image = production::image_facts(s, &current)?;
    let (mut report, releases) =
        watch::fetch_and_plan(s, store, current, &production.config, opts).await?;
    report.image = image;
    Ok((report, releases, production))
}

/// An external install's plan: no feed (the package manager decides the version); the restart
/// onto the binary on disk, guarded one minor at a time.
fn external_report(
    facts: ExternalFacts,
    prod_config: &config::HeadscaleConfig,
) -> (CheckReport, Vec<Release>) {
    // What production runs: the running server, or (none running) the binary on disk, as
    // `deploy::current_version` has it; read once here with the rest of the facts.
    let current = facts
        .running
        .clone()
        .unwrap_or_else(|| facts.on_disk.clone());
    let plan = plan::restart_plan(&current, &facts.on_disk);
    let config_problems = watch::config_problems(prod_config, &plan);
    let report = CheckReport {
        current,
        plan,
        feed_not_modified: false,
        feed_requests: 0,
        rate_remaining: None,
        ignored: vec![],
        new_releases: vec![],
        config_problems,
        image: None,
        external: Some(facts),
    };
    (report, vec![])
}

/// Finishes interrupted runs first and says what recovery did (start of every locked command).
async fn recover_and_report(
    s: &Settings,
    store: &Store,
    say: Say<'_>,
) -> Result<(), PipelineError> {
    for r in recover(s, store).await? {
        say(&format!(
            "recovered interrupted run {}: {} ({})",
            r.run, r.outcome, r.detail
        ));
    }
    Ok(())
}

/// Progress callback: one line per notable step (the CLI prints them; the demo narrates them).
pub type Say<'a> = &'a (dyn Fn(&str) + Sync);

pub async fn upgrade(
    s: &Settings,
    store: &Store,
    opts: &UpgradeOptions,
    say: Say<'_>,
) -> Result<UpgradeOutcome, PipelineError> {
    recover_and_report(s, store, say).await?;
    let (report, releases, production) = fetch_and_plan(s, store, opts).await?;
    if let Some(out) = nothing_to_run(store, &report)? {
        return Ok(out);
    }
    let plan = report.plan;
    let current = report.current;
    let pb = &s.playbooks.upgrade.playbook;
    let target = plan
        .hops
        .last()
        .map(|h| h.version.to_string())
        .unwrap_or_default();
    // Approval and window are checked here to decide early, and again at the playbook's approve
    // step (staging takes time; the window may close meanwhile).
    let wait = gate(s, store, &plan, opts, &current)?;
    let stage_early = match &wait {
        None => false,
        Some(_) if opts.dry_run => false,
        Some(_) => {
            let approve_after_stage = pb
                .position(StepKind::Approve)
                .zip(pb.position(StepKind::Stage))
                .is_some_and(|(a, st)| a > st);
            approve_after_stage && store.kv_get("staged_early")?.as_deref() != Some(&target)
        }
    };
    if let Some(w) = wait {
        if !stage_early {
            return Ok(w);
        }
    }
    let path: Vec<String> = plan.hops.iter().map(|h| h.version.to_string()).collect();
    say(&format!(
        "plan: {current} -> {} (one minor at a time){}",
        path.join(" -> "),
        if stage_early {
            "; promotion must wait, staging it now so a failure shows up early"
        } else {
            ""
        }
    ));
    if opts.dry_run {
        return Ok(UpgradeOutcome::DryRun { plan });
    }
    let run = store.begin_run("upgrade", Some(&current.to_string()), Some(&target))?;
    if !stage_early {
        store.push_event(
            Event::UpgradeStarted,
            Severity::Info,
            &serde_json::json!({"run": run, "from": current.to_string(), "to": target, "path": path}),
        )?;
    }
    let ctx = RunCtx {
        s,
        store,
        production: &production,
        opts,
        say,
        run,
        current: &current,
        plan: &plan,
        releases: &releases,
    };
    let result = ctx.walk(pb).await;
    if let Some((name, severity, payload)) = outcome_event(&result, run, &current, &target, &path) {
        store.push_event(name, severity, &payload)?;
    }
    let (outcome, detail) = run_outcome(&result, &target);
    store.finish_run(run, outcome, &detail)?;
    if outcome == "staged" {
        // Staged once per target: the next run that must wait does not stage it again.
        store.kv_set("staged_early", &target)?;
    }
    // A hook after promote asked for a rollback: restore this run's first backup in a run of its
    // own (the upgrade run is closed first, so recovery never mixes the two journals).
    if let Ok(UpgradeOutcome::HookFailed {
        rollback: true,
        step,
        reason,
        ..
    }) = &result
    {
        let why = format!(
            "hook step {step} failed after promotion: {reason}; production's data since the promotion is replaced by the pre-upgrade backup (a safety copy of it is kept under backups/)"
        );
        return roll_back_run(s, store, run, &current, &target, why, say).await;
    }
    result
}

/// Restores the first backup of `run` (a hook after promote asked for it). Everything written to
/// production since the promotion is lost with this restore; the rollback's safety copy
/// (backups/run<id>-before-rollback) keeps it.
async fn roll_back_run(
    s: &Settings,
    store: &Store,
    run: i64,
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

/// The outcomes decided before anything runs: blocked, an incompatible config, nothing to do, on
/// hold.
fn nothing_to_run(
    store: &Store,
    report: &CheckReport,
) -> Result<Option<UpgradeOutcome>, PipelineError> {
    let current = report.current.clone();
    let plan = &report.plan;
    if let Some(reason) = plan.blocked.clone() {
        return Ok(Some(UpgradeOutcome::Blocked { current, reason }));
    }
    if !report.config_problems.is_empty() {
        let to = plan
            .target
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default();
        store.push_event_once(
            Event::UpgradeBlocked,
            Severity::Warning,
            &serde_json::json!({"from": current.to_string(), "to": to, "problems": report.config_problems}),
            &format!("upgrade.blocked:{to}"),
            86400,
        )?;
        return Ok(Some(UpgradeOutcome::ConfigIncompatible {
            current,
            problems: report.config_problems.clone(),
        }));
    }
    if plan.is_noop() {
        return Ok(Some(UpgradeOutcome::NothingToDo {
            current,
            notes: plan.notes.clone(),
        }));
    }
    if let Some(reason) = hold_reason(store)? {
        return Ok(Some(UpgradeOutcome::Blocked {
            current,
            reason: format!("upgrades are on hold ({reason}); `headwarden unhold` releases them"),
        }));
    }
    Ok(None)
}

/// The event an upgrade run's result sends to chat (`None`: nothing worth telling).
fn outcome_event(
    result: &Result<UpgradeOutcome, PipelineError>,
    run: i64,
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
fn run_outcome(
    result: &Result<UpgradeOutcome, PipelineError>,
    target: &str,
) -> (&'static str, String) {
    match result {
        Ok(UpgradeOutcome::Upgraded { to, .. }) => ("upgraded", format!("now on {to}")),
        Ok(UpgradeOutcome::StagingFailed { version, reason }) => {
            ("staging_failed", format!("{version}: {reason}"))
        }
        Ok(UpgradeOutcome::RolledBack { failed, reason, .. }) => {
            ("rolled_back", format!("{failed}: {reason}"))
        }
        Ok(UpgradeOutcome::RollbackFailed {
            failed,
            rollback_error,
            ..
        }) => ("rollback_failed", format!("{failed}: {rollback_error}")),
        Ok(UpgradeOutcome::HookFailed { step, reason, .. }) => {
            ("hook_failed", format!("step {step}: {reason}"))
        }
        Ok(UpgradeOutcome::AwaitingApproval { .. } | UpgradeOutcome::OutsideWindow { .. }) => (
            "staged",
            format!("{target} passed staging; waiting to promote"),
        ),
        Ok(_) => ("ok", String::new()),
        Err(e) => ("failed", error_chain(e)),
    }
}

/// The approval and window gates: `Some(outcome)` when promotion must wait.
fn gate(
    s: &Settings,
    store: &Store,
    plan: &Plan,
    opts: &UpgradeOptions,
    current: &Version,
) -> Result<Option<UpgradeOutcome>, PipelineError> {
    let waiting = awaiting_approval(s, store, plan, opts)?;
    store.kv_set("approvals.pending", &waiting.len().to_string())?;
    if !waiting.is_empty() && !opts.dry_run {
        for v in &waiting {
            store.push_event_once(
                Event::UpgradeAwaitingApproval,
                Severity::Warning,
                &serde_json::json!({
                    "summary": format!("Headscale {v} is waiting for approval"),
                    "version": v,
                    "current": current.to_string(),
                    "approve": format!("headwarden approve {v}"),
                }),
                &format!("upgrade.awaiting_approval:{v}"),
                7 * 86400,
            )?;
        }
        return Ok(Some(UpgradeOutcome::AwaitingApproval {
            current: current.clone(),
            versions: waiting,
        }));
    }
    if let (Some(w), false) = (&s.release.window, opts.ignore_window) {
        let needed = estimate_secs(store, plan.hops.len())?;
        let zone = w.timezone.unwrap_or(s.schedule.timezone);
        if let Err(next) = cron::window_allows(w, &s.release.blackout, zone, state::now(), needed) {
            return Ok(Some(UpgradeOutcome::OutsideWindow {
                current: current.clone(),
                next: next.map(state::rfc3339),
                needed_minutes: (needed + 59) / 60,
            }));
        }
    }
    Ok(None)
}

/// One upgrade run's context while it walks the upgrade playbook.
struct RunCtx<'a> {
    s: &'a Settings,
    store: &'a Store,
    /// Production as found at the start of the run.
    production: &'a Production,
    opts: &'a UpgradeOptions,
    say: Say<'a>,
    run: i64,
    current: &'a Version,
    plan: &'a Plan,
    releases: &'a [Release],
}

/// What the steps so far produced.
#[derive(Default)]
struct Progress {
    /// Installed binaries with the sha256 they were verified against.
    installed: Vec<(Installed, String)>,
    staged: bool,
    promoted: Option<Version>,
    timings: Vec<Vec<(String, u128)>>,
}

impl RunCtx<'_> {
    fn hook_context(&self, index: usize, progress: &Progress) -> serde_json::Value {
        serde_json::json!({
            "playbook": "upgrade",
            "step": index + 1,
            "run": self.run,
            "from": self.current.to_string(),
            "to": self.plan.hops.last().map(|h| h.version.to_string()).unwrap_or_default(),
            "path": self.plan.hops.iter().map(|h| h.version.to_string()).collect::<Vec<_>>(),
            "production": progress.promoted.as_ref().unwrap_or(self.current).to_string(),
            "promoted": progress.promoted.is_some(),
            "staged": progress.staged,
        })
    }

    async fn walk(&self, pb: &playbook::Playbook) -> Result<UpgradeOutcome, PipelineError> {
        let mut progress = Progress::default();
        for (i, step) in pb.steps.iter().enumerate() {
            let limit = step.timeout();
            let timed_out = |what: &str| {
                PipelineError::Other(format!(
                    "playbook step {} ({what}) did not finish within {}s",
                    i + 1,
                    limit.map_or(0, |l| l.as_secs())
                ))
            };
            match step.kind {
                StepKind::Fetch => match limit {
                    Some(l) => tokio::time::timeout(l, self.fetch(&mut progress))
                        .await
                        .map_err(|_| timed_out("fetch"))??,
                    None => self.fetch(&mut progress).await?,
                },
                StepKind::Verify => self.verify_installed(&progress).await?,
                StepKind::Stage => {
                    let full = pb.has(StepKind::Smoke);
                    if let Some(out) = self.stage(&progress, full).await? {
                        return Ok(out);
                    }
                    progress.staged = true;
                }
                // Its checks ran against each staging hop while it was up (see `stage`).
                StepKind::Smoke => {}
                StepKind::Approve => {
                    if let Some(wait) =
                        gate(self.s, self.store, self.plan, self.opts, self.current)?
                    {
                        if progress.staged {
                            (self.say)("staging passed; promotion waits (approval or window)");
                        }
                        return Ok(wait);
                    }
                }
                StepKind::Backup => {
                    deploy::check_backup_space(self.s, &self.production.config)?;
                }
                StepKind::Promote => {
                    if let Some(out) = self.promote(&mut progress).await? {
                        return Ok(out);
                    }
                }
                StepKind::Notify => notify::notify_step(self.s, self.store, step).await,
                StepKind::Hook => {
                    if let Some(out) = self.hook(i, step, &progress).await? {
                        return Ok(out);
                    }
                }
                other => {
                    return Err(PipelineError::Other(format!(
                        "playbook step {:?} is not in the upgrade catalogue",
                        other.as_str()
                    )))
                }
            }
        }
        match progress.promoted {
            Some(to) => {
                // Keep what production runs now and what it ran before this upgrade.
                // (A deb install records its packages, kept beside the unpacked binaries.)
                let protect = vec![
                    deploy::version_path(self.s, &to),
                    deploy::version_path(self.s, self.current),
                    deploy::package_path(self.s, &to),
                    deploy::package_path(self.s, self.current),
                ];
                let _ = deploy::prune_versions(self.s, self.store, &protect);
                Ok(UpgradeOutcome::Upgraded {
                    from: self.current.clone(),
                    to,
                    hops: progress
                        .installed
                        .iter()
                        .map(|(i, _)| i.version().to_string())
                        .collect(),
                    timings: progress.timings,
                })
            }
            None => Err(PipelineError::Other(
                "the upgrade playbook ended without promoting".into(),
            )),
        }
    }

    /// A `hook` step: its failure goes on, stops or rolls back as the step says.
    async fn hook(
        &self,
        i: usize,
        step: &playbook::Step,
        progress: &Progress,
    ) -> Result<Option<UpgradeOutcome>, PipelineError> {
        let ctx = self.hook_context(i, progress);
        let reason = match hook::run(step, &ctx).await {
            Ok(summary) => {
                (self.say)(&format!("hook (step {}): {summary}", i + 1));
                return Ok(None);
            }
            Err(e) => e.to_string(),
        };
        (self.say)(&format!("hook (step {}) FAILED: {reason}", i + 1));
        match step.on_failure() {
            OnFailure::Continue => {
                self.store.push_event(
                    Event::UpgradeHookFailed,
                    Severity::Warning,
                    &serde_json::json!({"run": self.run, "summary": format!("upgrade playbook step {} (hook) failed; the upgrade went on", i + 1), "reason": reason}),
                )?;
                Ok(None)
            }
            policy => Ok(Some(UpgradeOutcome::HookFailed {
                step: i + 1,
                reason,
                production: progress
                    .promoted
                    .clone()
                    .unwrap_or_else(|| self.current.clone()),
                rollback: policy == OnFailure::Rollback && progress.promoted.is_some(),
            })),
        }
    }

    /// The install kind's preparation for this run (`deploy::prepare`).
    fn prep(&self) -> Prep<'_> {
        Prep {
            s: self.s,
            store: self.store,
            run: self.run,
            current: self.current,
            say: self.say,
        }
    }

    /// `fetch`: download and verify every hop before touching anything.
    async fn fetch(&self, progress: &mut Progress) -> Result<(), PipelineError> {
        let mut downloader = Downloader::new(&self.s.release);
        downloader.progress = self.opts.progress;
        let fetched = self
            .prep()
            .fetch(&downloader, self.releases, &self.plan.hops)
            .await?;
        progress.installed.extend(fetched);
        Ok(())
    }

    /// `verify`: nothing swapped an artifact between fetch and use.
    async fn verify_installed(&self, progress: &Progress) -> Result<(), PipelineError> {
        Ok(self.prep().recheck(&progress.installed).await?)
    }

    /// `stage` (+ `smoke`): every hop on staging, on a copy of production's database.
    async fn stage(
        &self,
        progress: &Progress,
        full_checks: bool,
    ) -> Result<Option<UpgradeOutcome>, PipelineError> {
        let s = self.s;
        let config = &self.production.config;
        let p = prod(s, self.store, config).await?;
        smoke::wait_healthy(
            &config.http_base(),
            std::time::Duration::from_secs(5),
            || Ok(()),
        )
        .await
        .map_err(PipelineError::ProductionUnhealthy)?;
        let baseline = smoke::baseline(&p.target(), s.smoke.timeout)
            .await
            .map_err(PipelineError::ProductionUnhealthy)?;
        (self.say)(&format!(
            "production {}: healthy, {} users, {} nodes",
            self.current,
            baseline.users.len(),
            baseline.nodes.len()
        ));
        let installed: Vec<Installed> = progress.installed.iter().map(|(i, _)| i.clone()).collect();
        match staging::stage(
            s,
            self.store,
            self.run,
            config,
            &installed,
            &baseline,
            full_checks,
        )
        .await?
        {
            StageOutcome::Passed(reports) => {
                for r in &reports {
                    for c in &r.results {
                        (self.say)(&format!("  staging check {}: {}", c.check, c.detail));
                    }
                }
                (self.say)(&format!(
                    "staging passed for {}",
                    installed
                        .iter()
                        .map(|i| i.version().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                Ok(None)
            }
            StageOutcome::Failed {
                version,
                reason,
                release_is_bad,
                ..
            } => {
                if release_is_bad {
                    self.store.mark_release_bad(
                        &format!("v{version}"),
                        &format!("failed on staging: {reason}"),
                    )?;
                }
                (self.say)(&format!(
                    "staging REJECTED {version}: {reason}; production was not touched"
                ));
                Ok(Some(UpgradeOutcome::StagingFailed { version, reason }))
            }
        }
    }

    /// `promote`: hop by hop; each hop is its own transaction with its own backup.
    async fn promote(
        &self,
        progress: &mut Progress,
    ) -> Result<Option<UpgradeOutcome>, PipelineError> {
        let (s, store, run, current) = (self.s, self.store, self.run, self.current);
        let config = &self.production.config;
        deploy::check_backup_space(s, config)?;
        let p = prod(s, store, config).await?;
        let mut from = current.clone();
        self.prep().before_promote().await?;
        let mut old_target = deploy::adopt_current(s, store, current).await?;
        for (i, (hop, _)) in progress.installed.iter().enumerate() {
            let baseline = smoke::baseline(&p.target(), s.smoke.timeout)
                .await
                .map_err(PipelineError::ProductionUnhealthy)?;
            if let Some(busy) = deploy::switch_blocked(s) {
                return Err(PipelineError::Other(format!(
                    "{busy}; nothing was changed, production stays on {from}; run again once it is done"
                )));
            }
            (self.say)(&format!(
                "promoting {from} -> {} on production",
                hop.version()
            ));
            match transaction::promote_hop(
                &p,
                run,
                i as i64,
                &from.to_string(),
                &old_target,
                hop,
                &baseline,
            )
            .await
            {
                HopOutcome::Promoted {
                    timings,
                    reconnect,
                    connectivity,
                } => {
                    let downtime: u128 = timings
                        .iter()
                        .filter(|(n, _)| {
                            matches!(n.as_str(), "stop" | "backup" | "switch" | "start")
                        })
                        .map(|(_, ms)| *ms)
                        .sum();
                    store.push_event(
                        Event::UpgradePromoted,
                        Severity::Info,
                        &serde_json::json!({"run": run, "from": from.to_string(), "to": hop.version().to_string(), "downtime_ms": downtime, "reconnect": reconnect, "connectivity": connectivity}),
                    )?;
                    (self.say)(&format!(
                        "production now on {} ({})",
                        hop.version(),
                        timings
                            .iter()
                            .map(|(n, ms)| format!("{n} {ms} ms"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    if let Some(c) = &connectivity {
                        (self.say)(&format!("  connectivity: {c}"));
                    }
                    (self.say)(&format!("  {reconnect}"));
                    progress.timings.push(timings);
                    from = hop.version().clone();
                    old_target = hop.slot();
                    progress.promoted = Some(from.clone());
                }
                HopOutcome::NotStopped { reason } => {
                    (self.say)(&format!(
                        "promotion of {} did not start: {reason}",
                        hop.version()
                    ));
                    return Err(PipelineError::NotStopped(reason));
                }
                HopOutcome::RolledBack { reason } => {
                    store.mark_release_bad(
                        &format!("v{}", hop.version()),
                        &format!("failed on production: {reason}"),
                    )?;
                    (self.say)(&format!(
                        "production FAILED on {}: {reason}; rolled back to {from} with its database",
                        hop.version()
                    ));
                    return Ok(Some(UpgradeOutcome::RolledBack {
                        from: current.clone(),
                        now: from,
                        failed: hop.version().to_string(),
                        reason,
                    }));
                }
                HopOutcome::RollbackFailed {
                    reason,
                    rollback_error,
                    backup,
                } => {
                    return Ok(Some(UpgradeOutcome::RollbackFailed {
                        failed: hop.version().to_string(),
                        reason,
                        rollback_error,
                        backup: backup.map(|b| b.display().to_string()),
                    }));
                }
            }
        }
        Ok(None)
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
            .map(|st| st.iter().any(|x| x.hop == b.hop && x.name == "commit"))
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
        "rollback",
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
            store.finish_run(run, "rolled_back", &format!("restored {}", backup.dir))?;
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
            store.finish_run(run, "rollback_failed", &e)?;
            store.push_event(
                Event::UpgradeRollbackFailed,
                Severity::Critical,
                &serde_json::json!({"run": run, "failed": current.to_string(), "reason": reason, "rollback_error": e, "backup": backup.dir}),
            )?;
            Err(PipelineError::Other(format!("rollback failed: {e}")))
        }
    }
}
