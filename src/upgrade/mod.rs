//! The upgrade job: watch → plan → download+verify → stage → promote (or roll back).
//! `headwarden upgrade`, `headwarden check`, the timer's and the daemon's jobs (child processes) and the
//! playbook steps all call these functions.

mod outcome;
mod rollback;
mod walk;

use semver::Version;
use serde::Serialize;

use crate::compose::ImageFacts;
use crate::deploy::external::ExternalFacts;
use crate::deploy::production;
use crate::deploy::transaction::{self, Prod, Recovered};
use crate::deploy::{self, Production, Service};
use crate::error::error_chain;
use crate::error::Hinted;
use crate::event::{Event, Severity};
use crate::headscale::config;
use crate::release::feed;
use crate::release::plan::{self, Plan};
use crate::release::watch::{
    self, awaiting_approval, estimate_secs, hold_reason, FeedReport, WatchError,
};
pub use crate::release::watch::{approve, set_hold, UpgradeOptions};
use crate::release::Release;
use crate::settings::cron;
use crate::settings::playbook::StepKind;
use crate::settings::Settings;
use crate::smoke;
use crate::state;
use crate::state::{Key, RunKind, RunOutcome, Store};
use crate::verify;

use outcome::{outcome_event, run_outcome};
use rollback::roll_back_run;
pub use rollback::rollback;
use walk::RunCtx;

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
    /// headwarden itself was refused (its own account or capabilities), not production.
    #[error("headwarden could not reach production, which may well be healthy: {0}")]
    NoAccess(smoke::SmokeError),
    #[error("{0}")]
    NotStopped(String),
    #[error("{0}")]
    Other(String),
}

impl PipelineError {
    /// Production's health check failed: production's fault, or headwarden's own when the
    /// failure is a permission headwarden was refused (a socket or directory it cannot enter).
    pub fn unhealthy(e: smoke::SmokeError) -> Self {
        if error_chain(&e).to_lowercase().contains("permission denied") {
            PipelineError::NoAccess(e)
        } else {
            PipelineError::ProductionUnhealthy(e)
        }
    }
}

impl From<WatchError> for PipelineError {
    fn from(e: WatchError) -> Self {
        match e {
            WatchError::Feed(e) => PipelineError::Feed(e),
            WatchError::State(e) => PipelineError::State(e),
        }
    }
}

impl Hinted for PipelineError {
    fn hint(&self) -> Option<String> {
        match self {
            PipelineError::Feed(e) => e.hint().map(String::from),
            PipelineError::NoAccess(_) => Some(
                "the refusal is headwarden's own: run it as root, and under the shipped unit keep its capabilities (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH for Headscale's 0750 socket and data directories); `headwarden config check` says what the running unit lacks"
                    .into(),
            ),
            PipelineError::ProductionUnhealthy(_) => Some(
                "headwarden only upgrades a healthy server; fix production first, then run again"
                    .into(),
            ),
            PipelineError::Deploy(deploy::DeployError::Identity(e)) => Some(e.hint().into()),
            PipelineError::Deploy(deploy::DeployError::Config(
                config::HeadscaleConfigError::Unsupported { .. },
            )) => Some(
                "nothing was downloaded, staged or stopped; upgrade this server by hand (stop, pg_dump, swap the binary, start) until headwarden stages PostgreSQL"
                    .into(),
            ),
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

/// `headwarden check` (and `check --json`): what the feed planned, with what the install kind
/// shows beside it (the same keys at the top level of the JSON document).
#[derive(Debug, Serialize)]
pub struct CheckReport {
    #[serde(flatten)]
    pub feed: FeedReport,
    /// A compose install's image (absent for other install kinds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageFacts>,
    /// An external install's binary on disk and running server (absent for other kinds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalFacts>,
    /// Why `upgrade` would refuse this server before it starts (a PostgreSQL database).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
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
    let run = store.begin_run(RunKind::Smoke, Some(&current.to_string()), None)?;
    let report = smoke::run(&p.smoke_target().await, &current, &baseline, &s.smoke).await;
    let (outcome, detail) = if report.passed() {
        (RunOutcome::Passed, "all checks passed".to_string())
    } else {
        (RunOutcome::Failed, report.failures())
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
    let refused = production.config.sqlite_path().err().map(|e| e.to_string());
    if let Some(facts) = production::external_facts(s, &production).await? {
        let (mut report, releases) = external_report(facts, &production.config);
        report.refused = refused;
        return Ok((report, releases, production));
    }
    let current = production.version(s).await?;
    let image = production::image_facts(s, &current)?;
    let (feed, releases) =
        watch::fetch_and_plan(s, store, current, &production.config, opts).await?;
    Ok((
        CheckReport {
            feed,
            image,
            external: None,
            refused,
        },
        releases,
        production,
    ))
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
    let feed = FeedReport {
        current,
        plan,
        feed_not_modified: false,
        feed_requests: 0,
        rate_remaining: None,
        ignored: vec![],
        new_releases: vec![],
        config_problems,
    };
    (
        CheckReport {
            feed,
            image: None,
            external: Some(facts),
            refused: None,
        },
        vec![],
    )
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

/// A production database headwarden cannot stage, back up or restore yet (PostgreSQL): the
/// upgrade is refused before anything is downloaded, staged or stopped.
fn unstaged(production: &Production) -> Result<(), PipelineError> {
    production
        .config
        .sqlite_path()
        .map(drop)
        .map_err(|e| deploy::DeployError::from(e).into())
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
    unstaged(&production)?;
    let plan = report.feed.plan;
    let current = report.feed.current;
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
            approve_after_stage && store.kv_get(Key::StagedEarly)?.as_deref() != Some(&target)
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
    let run = store.begin_run(RunKind::Upgrade, Some(&current.to_string()), Some(&target))?;
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
    if outcome == RunOutcome::Staged {
        // Staged once per target: the next run that must wait does not stage it again.
        store.kv_set(Key::StagedEarly, &target)?;
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

/// The outcomes decided before anything runs: blocked, an incompatible config, nothing to do, on
/// hold.
fn nothing_to_run(
    store: &Store,
    report: &CheckReport,
) -> Result<Option<UpgradeOutcome>, PipelineError> {
    let current = report.feed.current.clone();
    let plan = &report.feed.plan;
    if let Some(reason) = plan.blocked.clone() {
        return Ok(Some(UpgradeOutcome::Blocked { current, reason }));
    }
    if !report.feed.config_problems.is_empty() {
        let to = plan
            .target
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default();
        store.push_event_once(
            Event::UpgradeBlocked,
            Severity::Warning,
            &serde_json::json!({"from": current.to_string(), "to": to, "problems": report.feed.config_problems}),
            &format!("upgrade.blocked:{to}"),
            86400,
        )?;
        return Ok(Some(UpgradeOutcome::ConfigIncompatible {
            current,
            problems: report.feed.config_problems.clone(),
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

/// The approval and window gates: `Some(outcome)` when promotion must wait.
fn gate(
    s: &Settings,
    store: &Store,
    plan: &Plan,
    opts: &UpgradeOptions,
    current: &Version,
) -> Result<Option<UpgradeOutcome>, PipelineError> {
    let waiting = awaiting_approval(s, store, plan, opts)?;
    store.kv_set(Key::ApprovalsPending, &waiting.len().to_string())?;
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
