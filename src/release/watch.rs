//! Watching the release feed: read it (ETag-cached), remember what was seen, raise the alarms a
//! poll can raise (a published artifact replaced, the feed unreachable for a day), announce new
//! releases, and plan the path from the running version under the configured policy. Shared by
//! `check`, the upgrade job and the audit; the caller says which version production runs and
//! hands in production's Headscale config (both are `deploy`'s to read).
//!
//! Also the operator's gates that live in the store: holds and approvals.

use std::collections::HashMap;

use semver::Version;
use serde::Serialize;

use super::feed::{self, FeedError, FeedResult};
use super::notes;
use super::plan::{self, Plan, Policy};
use super::{AssetKind, Release};
use crate::error::Hinted;
use crate::event::{Event, Severity};
use crate::headscale::config::{incompatibilities, HeadscaleConfig};
use crate::settings::Settings;
use crate::state::{now, Key, RunKind, RunOutcome, StateError, Store};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl Hinted for WatchError {
    fn hint(&self) -> Option<String> {
        match self {
            WatchError::Feed(e) => e.hint().map(String::from),
            WatchError::State(_) => None,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct UpgradeOptions {
    pub to: Option<Version>,
    pub dry_run: bool,
    pub allow_downgrade: bool,
    pub progress: bool,
    /// Promote now even outside `release.window`.
    pub ignore_window: bool,
}

/// What the feed says: the plan from the version production runs, and how the feed answered.
/// (`upgrade::CheckReport` adds what the install kind shows.)
#[derive(Debug, Serialize)]
pub struct FeedReport {
    pub current: Version,
    pub plan: Plan,
    pub feed_not_modified: bool,
    pub feed_requests: u32,
    pub rate_remaining: Option<u64>,
    pub ignored: Vec<String>,
    pub new_releases: Vec<String>,
    /// Keys in production's Headscale config that a planned version refuses to start with.
    pub config_problems: Vec<String>,
}

/// The keys of production's config that a planned version refuses to start with.
pub fn config_problems(prod_config: &HeadscaleConfig, plan: &Plan) -> Vec<String> {
    let mut problems = Vec::new();
    for hop in &plan.hops {
        for p in incompatibilities(prod_config, &hop.version) {
            let line = format!(
                "{}: `{}` stops Headscale {} from starting (since {}): {}",
                prod_config.path.display(),
                p.key,
                hop.version,
                p.since,
                p.fix
            );
            if !problems.contains(&line) {
                problems.push(line);
            }
        }
    }
    problems
}

pub fn policy(s: &Settings, opts: &UpgradeOptions) -> Policy {
    Policy {
        channel: s.release.channel,
        constraint: s.release.constraint.clone(),
        min_age_secs: s.release.min_age.as_secs() as i64,
        skip: s.release.skip.clone(),
        pin: s.release.pin.clone(),
        allow_downgrade: opts.allow_downgrade,
        target: opts.to.clone(),
        asset: asset_kind(s),
    }
}

/// The release file `s`'s install kind installs.
pub fn asset_kind(s: &Settings) -> AssetKind {
    if s.headscale.install.installs_package() {
        AssetKind::Deb
    } else {
        AssetKind::Binary
    }
}

pub async fn fetch_and_plan(
    s: &Settings,
    store: &Store,
    current: Version,
    prod_config: &HeadscaleConfig,
    opts: &UpgradeOptions,
) -> Result<(FeedReport, Vec<Release>), WatchError> {
    let FeedResult {
        releases,
        not_modified,
        requests,
        rate_remaining,
        ignored,
    } = match feed::fetch(&s.release, store).await {
        Ok(f) => {
            store.kv_set(Key::FeedLastOk, &now().to_string())?;
            f
        }
        Err(e) => {
            feed_unreachable(store, &e)?;
            return Err(e.into());
        }
    };
    if let Some(newest) = releases
        .iter()
        .filter(|r| r.version.pre.is_empty())
        .map(|r| &r.version)
        .max()
    {
        store.kv_set(Key::FeedNewest, &newest.to_string())?;
    }
    if let Some(rem) = rate_remaining {
        store.kv_set(Key::FeedRateRemaining, &rem.to_string())?;
    }
    artifacts_replaced(store, &releases)?;
    let mut new_releases = Vec::new();
    for r in &releases {
        if store.mark_release_seen(&r.tag)? {
            new_releases.push(r.tag.clone());
        }
    }
    let bad: HashMap<String, String> = store.bad_releases()?.into_iter().collect();
    let plan = plan::plan(&current, &releases, &policy(s, opts), &bad, now());
    if !new_releases.is_empty() {
        let waiting = awaiting_approval(s, store, &plan, opts)?;
        let hold = hold_reason(store)?;
        announce_releases(
            store,
            &current,
            &releases,
            &new_releases,
            &plan,
            &waiting,
            hold.as_deref(),
        )?;
    }
    let config_problems = config_problems(prod_config, &plan);
    Ok((
        FeedReport {
            current,
            plan,
            feed_not_modified: not_modified,
            feed_requests: requests,
            rate_remaining,
            ignored,
            new_releases,
            config_problems,
        },
        releases,
    ))
}

/// A published artifact must never change. Each poll records every uploaded asset's GitHub
/// digest per release; a digest that differs from the one recorded earlier means the file was
/// replaced after publication (a compromised release, or a silent re-upload): a critical alert,
/// and the release is recorded bad so it is not installed.
fn artifacts_replaced(store: &Store, releases: &[Release]) -> Result<(), WatchError> {
    for r in releases {
        let key = Key::Assets(&r.tag);
        let now: std::collections::BTreeMap<&str, &str> = r
            .assets
            .iter()
            .filter(|a| a.uploaded)
            .filter_map(|a| a.sha256.as_deref().map(|d| (a.name.as_str(), d)))
            .collect();
        let before: std::collections::BTreeMap<String, String> = store
            .kv_get(key)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let mut merged = before.clone();
        for (name, digest) in &now {
            match before.get(*name) {
                Some(old) if old != digest => {
                    let reason = format!(
                        "{name} was replaced after publication (digest {old} when first seen, now {digest})"
                    );
                    tracing::error!(tag = %r.tag, %name, "published artifact replaced");
                    store.mark_release_bad(&r.tag, &reason)?;
                    store.push_event_once(
                        Event::ReleaseArtifactReplaced,
                        Severity::Critical,
                        &serde_json::json!({
                            "summary": format!("Headscale {}: a published file was replaced", r.tag),
                            "tag": r.tag, "asset": name, "first_seen": old, "now": digest,
                            "action": "recorded as bad; headwarden will not install it. Compare with upstream's announcement before trusting it.",
                        }),
                        &format!("release.artifact_replaced:{}:{name}:{digest}", r.tag),
                        365 * 86400,
                    )?;
                }
                Some(_) => {}
                None => {
                    merged.insert((*name).to_string(), (*digest).to_string());
                }
            }
        }
        if merged != before {
            store.kv_set(key, &serde_json::to_string(&merged).unwrap_or_default())?;
        }
    }
    Ok(())
}

/// How long an upgrade of `hops` hops is expected to take: the mean of the last five successful
/// upgrade runs (at least a minute) per hop, or 15 minutes per hop without history.
pub fn estimate_secs(store: &Store, hops: usize) -> Result<i64, WatchError> {
    let durations: Vec<i64> = store
        .recent_runs(200)?
        .into_iter()
        .filter(|r| r.kind == RunKind::Upgrade && r.outcome == Some(RunOutcome::Upgraded))
        .filter_map(|r| r.finished_at.map(|f| f - r.started_at))
        .take(5)
        .collect();
    let per_hop = if durations.is_empty() {
        15 * 60
    } else {
        (durations.iter().sum::<i64>() / durations.len() as i64).max(60)
    };
    Ok(per_hop * hops.max(1) as i64)
}

/// The reason upgrades are on hold (`headwarden hold`), if they are.
pub fn hold_reason(store: &Store) -> Result<Option<String>, WatchError> {
    Ok(store.kv_get(Key::Hold)?)
}

pub fn set_hold(store: &Store, reason: Option<&str>) -> Result<(), WatchError> {
    match reason {
        Some(r) => store.kv_set(Key::Hold, r)?,
        None => store.kv_delete(Key::Hold)?,
    }
    Ok(())
}

pub fn approve(store: &Store, version: &Version) -> Result<(), WatchError> {
    store.kv_set(Key::Approved(&version.to_string()), &now().to_string())?;
    Ok(())
}

/// Hops of `plan` that `release.approval` holds back and nobody approved yet. Naming a target
/// (`upgrade --to V`) approves the path to it.
pub fn awaiting_approval(
    s: &Settings,
    store: &Store,
    plan: &Plan,
    opts: &UpgradeOptions,
) -> Result<Vec<String>, WatchError> {
    if opts.to.is_some() {
        return Ok(vec![]);
    }
    let mut prev = plan.current.clone();
    let mut waiting = Vec::new();
    for hop in &plan.hops {
        let minor = (hop.version.major, hop.version.minor) != (prev.major, prev.minor);
        let manual = if minor {
            s.release.approval.minor_manual
        } else {
            s.release.approval.patch_manual
        };
        if manual
            && store
                .kv_get(Key::Approved(&hop.version.to_string()))?
                .is_none()
        {
            waiting.push(hop.version.to_string());
        }
        prev = hop.version.clone();
    }
    Ok(waiting)
}

/// Queues a `release` event for each newly seen release newer than production, with the
/// highlights of its notes and what headwarden will do about it.
fn announce_releases(
    store: &Store,
    current: &Version,
    releases: &[Release],
    new: &[String],
    plan: &Plan,
    waiting: &[String],
    hold: Option<&str>,
) -> Result<(), WatchError> {
    for r in releases
        .iter()
        .filter(|r| new.contains(&r.tag) && r.version > *current)
    {
        let note = plan
            .notes
            .iter()
            .find_map(|n| n.strip_prefix(&format!("{}: ", r.tag)));
        let v = r.version.to_string();
        let action = if let (true, Some(h)) = (plan.hops.iter().any(|h| h.tag == r.tag), hold) {
            format!("nothing while upgrades are on hold ({h}); `headwarden unhold` releases them")
        } else if waiting.contains(&v) {
            format!(
                "wait for approval: `headwarden approve {v}` (or `headwarden upgrade --to {v}`)"
            )
        } else if plan.hops.iter().any(|h| h.tag == r.tag) {
            "apply it at the next upgrade run: staged on a copy of the database first, then promoted".to_string()
        } else if let Some(n) = note {
            format!("wait: {n}")
        } else if let Some(b) = &plan.blocked {
            format!("nothing yet: blocked ({b})")
        } else {
            match &plan.target {
                Some(t) if *t > r.version => format!("skip it: the path goes to {t}"),
                _ => "nothing yet (see `headwarden check`)".to_string(),
            }
        };
        let h = notes::highlights(&r.notes);
        let severity = if !h.security.is_empty() || !h.breaking.is_empty() {
            Severity::Warning
        } else {
            Severity::Info
        };
        store.push_event(
            Event::Release,
            severity,
            &serde_json::json!({
                "version": r.version.to_string(),
                "tag": r.tag,
                "url": r.url,
                "prerelease": r.prerelease,
                "current": current.to_string(),
                "breaking": h.breaking,
                "backup": h.backup,
                "security": h.security,
                "min_tailscale": h.min_tailscale,
                "action": action,
            }),
        )?;
    }
    Ok(())
}

/// After a day without a successful feed poll, one `health.feed_unreachable` event per day.
fn feed_unreachable(store: &Store, e: &FeedError) -> Result<(), WatchError> {
    let now = now();
    let since = match store.kv_get(Key::FeedLastOk)? {
        Some(v) => v.parse().unwrap_or(now),
        None => match store.kv_get(Key::FeedFirstFail)? {
            Some(v) => v.parse().unwrap_or(now),
            None => {
                store.kv_set(Key::FeedFirstFail, &now.to_string())?;
                now
            }
        },
    };
    if now - since >= 86400 {
        store.push_event_once(
            Event::HealthFeedUnreachable,
            Severity::Warning,
            &serde_json::json!({
                "summary": "headwarden cannot read the release feed",
                "error": e.to_string(),
                "hours": (now - since) / 3600,
            }),
            "health.feed_unreachable",
            86400,
        )?;
    }
    Ok(())
}
