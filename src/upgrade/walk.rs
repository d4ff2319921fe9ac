//! One upgrade run walking the upgrade playbook: fetch, verify, stage, approve, backup, promote,
//! notify and hooks, in the playbook's order (`RunCtx::walk`).

use semver::Version;

use crate::deploy::prepare::Prep;
use crate::deploy::staging::{self, StageOutcome};
use crate::deploy::transaction::{self, HopOutcome};
use crate::deploy::{self, Installed, Production};
use crate::event::{Event, Severity};
use crate::hook;
use crate::notify;
use crate::release::plan::Plan;
pub use crate::release::watch::UpgradeOptions;
use crate::release::Release;
use crate::settings::playbook::{self, OnFailure, StepKind};
use crate::settings::Settings;
use crate::smoke;
use crate::state::{RunId, Store};
use crate::verify::Downloader;

use super::{gate, prod, PipelineError, Say, UpgradeOutcome};

/// One upgrade run's context while it walks the upgrade playbook.
pub(super) struct RunCtx<'a> {
    pub(super) s: &'a Settings,
    pub(super) store: &'a Store,
    /// Production as found at the start of the run.
    pub(super) production: &'a Production,
    pub(super) opts: &'a UpgradeOptions,
    pub(super) say: Say<'a>,
    pub(super) run: RunId,
    pub(super) current: &'a Version,
    pub(super) plan: &'a Plan,
    pub(super) releases: &'a [Release],
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

    pub(super) async fn walk(
        &self,
        pb: &playbook::Playbook,
    ) -> Result<UpgradeOutcome, PipelineError> {
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
        .map_err(PipelineError::unhealthy)?;
        let baseline = smoke::baseline(&p.target(), s.smoke.timeout)
            .await
            .map_err(PipelineError::unhealthy)?;
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
            self.production,
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
                .map_err(PipelineError::unhealthy)?;
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
                    self.report_promoted(&from, hop.version(), &timings, &reconnect, connectivity)?;
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

    /// A hop promoted: its event (with the downtime: stop to start) and its lines.
    fn report_promoted(
        &self,
        from: &Version,
        to: &Version,
        timings: &[(String, u128)],
        reconnect: &str,
        connectivity: Option<String>,
    ) -> Result<(), PipelineError> {
        let downtime: u128 = timings
            .iter()
            .filter(|(n, _)| matches!(n.as_str(), "stop" | "backup" | "switch" | "start"))
            .map(|(_, ms)| *ms)
            .sum();
        self.store.push_event(
            Event::UpgradePromoted,
            Severity::Info,
            &serde_json::json!({"run": self.run, "from": from.to_string(), "to": to.to_string(), "downtime_ms": downtime, "reconnect": reconnect, "connectivity": connectivity}),
        )?;
        (self.say)(&format!(
            "production now on {to} ({})",
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
        Ok(())
    }
}
