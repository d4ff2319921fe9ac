//! The upgrade planner: a pure function from (current version, releases, policy, now) to a path.
//!
//! Headscale refuses to skip a minor (and to downgrade one), so the path visits every minor
//! series between the current and the target version, taking the newest eligible patch of each
//! intermediate series, then the target. Every release left out gets a note saying why.

use std::collections::{BTreeMap, HashMap};

use semver::{Version, VersionReq};
use serde::Serialize;

use super::{AssetKind, Release};
use crate::settings::Channel;

#[derive(Debug, Clone)]
pub struct Policy {
    pub channel: Channel,
    pub constraint: VersionReq,
    pub min_age_secs: i64,
    pub skip: Vec<Version>,
    pub pin: Option<Version>,
    pub allow_downgrade: bool,
    /// An explicit target (`upgrade --to`); policy filters still apply except cooldown.
    pub target: Option<Version>,
    /// The file the install kind needs published before a release can be planned.
    pub asset: AssetKind,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub version: Version,
    pub tag: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub current: Version,
    pub target: Option<Version>,
    pub hops: Vec<Hop>,
    /// Why releases were left out (policy, cooldown, bad, assets pending).
    pub notes: Vec<String>,
    /// Set when an upgrade exists but cannot proceed.
    pub blocked: Option<String>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.hops.is_empty()
    }
}

fn series(v: &Version) -> (u64, u64) {
    (v.major, v.minor)
}

fn fmt_remaining(secs: i64) -> String {
    let (d, h, m) = (secs / 86400, (secs % 86400) / 3600, (secs % 3600) / 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else {
        format!("{}m", m.max(1))
    }
}

/// An external install's plan: the package manager put `on_disk` in place while `running`
/// runs. One hop (the restart) within the minor or to the next one; blocked when the restart
/// would skip a minor or go back (Headscale migrates forward, one minor at a time).
pub fn restart_plan(running: &Version, on_disk: &Version) -> Plan {
    let mut plan = Plan {
        current: running.clone(),
        target: None,
        hops: vec![],
        notes: vec![],
        blocked: None,
    };
    if on_disk == running {
        return plan;
    }
    plan.target = Some(on_disk.clone());
    let (major, minor) = series(running);
    if on_disk < running {
        plan.blocked = Some(format!(
            "the package manager installed {on_disk}, older than the running {running}: Headscale cannot migrate its database back; put {running} back with the package manager before anything restarts the server"
        ));
    } else if series(on_disk) != (major, minor) && series(on_disk) != (major, minor + 1) {
        plan.blocked = Some(format!(
            "the package manager installed {on_disk} while {running} runs: a restart would skip {major}.{}, and Headscale upgrades one minor at a time; install the newest {major}.{} package, let headwarden restart onto it, then go on to {on_disk} (until then nothing may restart the server)",
            minor + 1,
            minor + 1
        ));
    } else {
        plan.hops.push(Hop {
            version: on_disk.clone(),
            tag: format!("v{on_disk}"),
        });
    }
    plan
}

/// `bad` maps tags to the reason they were recorded as bad.
pub fn plan(
    current: &Version,
    releases: &[Release],
    policy: &Policy,
    bad: &HashMap<String, String>,
    now: i64,
) -> Plan {
    let mut notes = Vec::new();
    let (eligible, known_series) = eligible(current, releases, policy, bad, now, &mut notes);

    let wanted = policy.target.clone().or_else(|| policy.pin.clone());
    let target: Option<&Release> = match &wanted {
        Some(w) => match eligible.iter().find(|r| &r.version == w) {
            Some(r) => Some(*r),
            None => {
                let why = if releases.iter().any(|r| &r.version == w) {
                    "not eligible (see notes)"
                } else {
                    "not in the release feed"
                };
                return Plan {
                    current: current.clone(),
                    target: Some(w.clone()),
                    hops: vec![],
                    blocked: (w != current).then(|| format!("requested version {w} is {why}")),
                    notes,
                };
            }
        },
        None => eligible
            .iter()
            .filter(|r| r.version > *current)
            .max_by(|a, b| a.version.cmp(&b.version))
            .copied(),
    };
    let Some(target) = target else {
        return Plan {
            current: current.clone(),
            target: None,
            hops: vec![],
            notes,
            blocked: None,
        };
    };
    if target.version == *current {
        return Plan {
            current: current.clone(),
            target: Some(target.version.clone()),
            hops: vec![],
            notes,
            blocked: None,
        };
    }
    if target.version < *current {
        return downgrade(current, target, policy, notes);
    }
    if target.version.major != current.major {
        return Plan {
            current: current.clone(),
            target: Some(target.version.clone()),
            hops: vec![],
            notes,
            blocked: Some(format!("{} is a new major version; upgrade across majors by hand after reading the release notes", target.version)),
        };
    }

    // Every series strictly between current and target must be visited.
    let mut hops = match hops_between(current, target, &eligible, &known_series) {
        Ok(h) => h,
        Err(blocked) => {
            return Plan {
                current: current.clone(),
                target: Some(target.version.clone()),
                hops: vec![],
                notes,
                blocked: Some(blocked.to_string()),
            }
        }
    };
    hops.push(Hop {
        version: target.version.clone(),
        tag: target.tag.clone(),
    });
    Plan {
        current: current.clone(),
        target: Some(target.version.clone()),
        hops,
        notes,
        blocked: None,
    }
}

/// A minor series the path must pass through that has no eligible release.
#[derive(Debug, thiserror::Error)]
#[error("no eligible {0}.{1}.x release to pass through (Headscale cannot skip a minor version)")]
struct NoReleaseIn(u64, u64);

/// The newest eligible release of each minor series between `current` and `target` (Headscale
/// cannot skip a minor); `Err` names a series with none.
fn hops_between(
    current: &Version,
    target: &Release,
    eligible: &[&Release],
    known_series: &BTreeMap<(u64, u64), ()>,
) -> Result<Vec<Hop>, NoReleaseIn> {
    let mut hops = Vec::new();
    let first_between = (current.major, current.minor + 1);
    let between: Vec<(u64, u64)> = if first_between < series(&target.version) {
        known_series
            .range(first_between..series(&target.version))
            .map(|(k, _)| *k)
            .collect()
    } else {
        vec![]
    };
    for s in between {
        let best = eligible
            .iter()
            .filter(|r| series(&r.version) == s && r.version.pre.is_empty())
            .max_by(|a, b| a.version.cmp(&b.version));
        match best {
            Some(r) => hops.push(Hop {
                version: r.version.clone(),
                tag: r.tag.clone(),
            }),
            None => {
                return Err(NoReleaseIn(s.0, s.1));
            }
        }
    }
    Ok(hops)
}

/// The releases a plan may use, and every minor series the feed shows; why each other newer
/// release was left out goes to `notes`.
fn eligible<'a>(
    current: &Version,
    releases: &'a [Release],
    policy: &Policy,
    bad: &HashMap<String, String>,
    now: i64,
    notes: &mut Vec<String>,
) -> (Vec<&'a Release>, BTreeMap<(u64, u64), ()>) {
    let mut eligible: Vec<&Release> = Vec::new();
    let mut known_series: BTreeMap<(u64, u64), ()> = BTreeMap::new();
    for r in releases {
        let v = &r.version;
        if !v.pre.is_empty() && policy.channel == Channel::Stable {
            if v > current {
                notes.push(format!("{}: prerelease (channel is stable)", r.tag));
            }
            continue;
        }
        known_series.insert(series(v), ());
        if v <= current && !policy.allow_downgrade {
            continue;
        }
        let base = Version::new(v.major, v.minor, v.patch);
        if !policy.constraint.matches(&base) {
            notes.push(format!(
                "{}: outside constraint {}",
                r.tag, policy.constraint
            ));
            continue;
        }
        if policy.skip.contains(v) {
            notes.push(format!("{}: listed in release.skip", r.tag));
            continue;
        }
        if !r.assets_ready(policy.asset) {
            notes.push(format!("{}: assets not published yet (binary or checksums.txt missing or still uploading); will retry", r.tag));
            continue;
        }
        let explicit = policy.target.as_ref() == Some(v) || policy.pin.as_ref() == Some(v);
        if let Some(reason) = bad.get(&r.tag) {
            // A bad mark stops automatic retries; naming the version (`--to`) retries it, and
            // verification and staging run again as always.
            if policy.target.as_ref() != Some(v) {
                notes.push(format!(
                    "{}: recorded as bad ({reason}); retry with --to {v}",
                    r.tag
                ));
                continue;
            }
        }
        if let Some(published) = r.published_at {
            let ready_at = published + policy.min_age_secs;
            if ready_at > now && !explicit {
                notes.push(format!(
                    "{}: in cooldown for another {} (release.min_age)",
                    r.tag,
                    fmt_remaining(ready_at - now)
                ));
                continue;
            }
        }
        eligible.push(r);
    }
    (eligible, known_series)
}

/// A target older than the running version: one hop within the same minor, when allowed.
fn downgrade(current: &Version, target: &Release, policy: &Policy, notes: Vec<String>) -> Plan {
    let blocked = if !policy.allow_downgrade {
        Some(format!(
            "{} is older than the running {current}; pass --allow-downgrade",
            target.version
        ))
    } else if series(&target.version) != series(current) {
        Some(format!(
            "downgrading from {current} to {} crosses a minor version, which Headscale refuses; use `headwarden rollback` to restore the backup taken before the upgrade",
            target.version
        ))
    } else {
        None
    };
    let hops = if blocked.is_none() {
        vec![Hop {
            version: target.version.clone(),
            tag: target.tag.clone(),
        }]
    } else {
        vec![]
    };
    Plan {
        current: current.clone(),
        target: Some(target.version.clone()),
        hops,
        notes,
        blocked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{host_asset_name, Asset, AssetKind};

    const DAY: i64 = 86400;
    const NOW: i64 = 1_800_000_000;

    fn rel(tag: &str, age_days: i64) -> Release {
        let asset = |name: String| Asset {
            name,
            size: 1,
            sha256: None,
            url: String::new(),
            uploaded: true,
        };
        Release {
            tag: tag.to_string(),
            version: super::super::parse_tag(tag).expect("tag"),
            prerelease: tag.contains('-'),
            published_at: Some(NOW - age_days * DAY),
            notes: String::new(),
            url: String::new(),
            assets: vec![asset(host_asset_name(tag)), asset("checksums.txt".into())],
        }
    }

    fn feed() -> Vec<Release> {
        vec![
            rel("v0.26.0", 400),
            rel("v0.26.1", 300),
            rel("v0.27.0", 200),
            rel("v0.27.1", 190),
            rel("v0.27.2-rc.1", 150),
            rel("v0.28.0-beta.1", 120),
            rel("v0.28.0", 100),
            rel("v0.29.0-beta.4", 20),
            rel("v0.29.0", 10),
            rel("v0.29.1", 9),
            rel("v0.29.2", 1),
        ]
    }

    #[test]
    fn restart_plans_guard_one_minor_at_a_time() {
        let v = |s: &str| Version::parse(s).expect("v");
        let p = restart_plan(&v("0.27.1"), &v("0.28.0"));
        assert_eq!(p.hops.len(), 1);
        assert!(p.blocked.is_none());
        assert!(restart_plan(&v("0.27.1"), &v("0.27.1")).is_noop());
        assert_eq!(restart_plan(&v("0.27.0"), &v("0.27.1")).hops.len(), 1);
        let skip = restart_plan(&v("0.27.1"), &v("0.29.3"));
        assert!(skip.hops.is_empty());
        assert!(
            skip.blocked
                .as_deref()
                .is_some_and(|b| b.contains("skip 0.28")),
            "{skip:?}"
        );
        let back = restart_plan(&v("0.28.0"), &v("0.27.1"));
        assert!(
            back.blocked.as_deref().is_some_and(|b| b.contains("older")),
            "{back:?}"
        );
    }

    fn policy() -> Policy {
        Policy {
            channel: Channel::Stable,
            constraint: VersionReq::parse(">=0.26, <1.0").expect("req"),
            min_age_secs: 3 * DAY,
            skip: vec![],
            pin: None,
            allow_downgrade: false,
            target: None,
            asset: AssetKind::Binary,
        }
    }

    fn check(current: &str, policy: Policy, bad: &[&str], expected_hops: &[&str], blocked: bool) {
        let bad: HashMap<String, String> = bad
            .iter()
            .map(|t| (t.to_string(), "test".to_string()))
            .collect();
        let p = plan(
            &Version::parse(current).expect("v"),
            &feed(),
            &policy,
            &bad,
            NOW,
        );
        let hops: Vec<String> = p.hops.iter().map(|h| h.version.to_string()).collect();
        assert_eq!(hops, expected_hops, "from {current}: {p:#?}");
        assert_eq!(p.blocked.is_some(), blocked, "{p:#?}");
    }

    #[test]
    fn one_minor_at_a_time_latest_patch_respecting_cooldown() {
        // 0.29.2 is 1 day old (cooldown 3d), so the target is 0.29.1.
        check(
            "0.26.1",
            policy(),
            &[],
            &["0.27.1", "0.28.0", "0.29.1"],
            false,
        );
        check("0.29.1", policy(), &[], &[], false);
        check("0.29.2", policy(), &[], &[], false);
        // A patch within the running minor is a single hop.
        check("0.29.0", policy(), &[], &["0.29.1"], false);
        check("0.28.0", policy(), &[], &["0.29.1"], false);
    }

    #[test]
    fn explicit_target_ignores_cooldown_only() {
        let p = Policy {
            target: Some(Version::new(0, 29, 2)),
            ..policy()
        };
        check("0.26.1", p, &[], &["0.27.1", "0.28.0", "0.29.2"], false);
        let p = Policy {
            target: Some(Version::new(0, 28, 0)),
            skip: vec![Version::new(0, 28, 0)],
            ..policy()
        };
        check("0.26.1", p, &[], &[], true);
    }

    #[test]
    fn skip_bad_and_constraint() {
        let p = Policy {
            skip: vec![Version::new(0, 27, 1)],
            ..policy()
        };
        check("0.26.1", p, &[], &["0.27.0", "0.28.0", "0.29.1"], false);
        check("0.26.1", policy(), &["v0.28.0"], &[], true);
        let p = Policy {
            target: Some(Version::new(0, 28, 0)),
            ..policy()
        };
        check("0.27.1", p, &["v0.28.0"], &["0.28.0"], false);
        let p = Policy {
            constraint: VersionReq::parse("<0.28").expect("req"),
            ..policy()
        };
        check("0.26.1", p, &[], &["0.27.1"], false);
    }

    #[test]
    fn pin_holds_and_channel_prerelease() {
        let p = Policy {
            pin: Some(Version::new(0, 27, 1)),
            ..policy()
        };
        check("0.27.1", p.clone(), &[], &[], false);
        check("0.26.0", p, &[], &["0.27.1"], false);
        let p = Policy {
            channel: Channel::Prerelease,
            min_age_secs: 0,
            ..policy()
        };
        // Prereleases may be targets but intermediate hops stay on stable patches.
        check("0.27.1", p, &[], &["0.28.0", "0.29.2"], false);
    }

    #[test]
    fn downgrades() {
        let p = Policy {
            target: Some(Version::new(0, 29, 0)),
            ..policy()
        };
        check("0.29.1", p.clone(), &[], &[], true);
        check(
            "0.29.1",
            Policy {
                allow_downgrade: true,
                ..p
            },
            &[],
            &["0.29.0"],
            false,
        );
        let p = Policy {
            target: Some(Version::new(0, 28, 0)),
            allow_downgrade: true,
            ..policy()
        };
        check("0.29.1", p, &[], &[], true);
    }

    #[test]
    fn pending_assets_are_retried_not_failed() {
        let mut f = feed();
        f.iter_mut()
            .filter(|r| r.tag == "v0.29.1")
            .for_each(|r| r.assets.retain(|a| a.name != "checksums.txt"));
        let p = plan(&Version::new(0, 29, 0), &f, &policy(), &HashMap::new(), NOW);
        assert!(p.hops.is_empty() && p.blocked.is_none());
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("v0.29.1") && n.contains("will retry")),
            "{:?}",
            p.notes
        );
    }
}
