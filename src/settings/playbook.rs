//! Playbooks: a pipeline as data — an ordered list of steps from a closed catalogue with
//! parameters, timeouts and `on_failure`. The built-in behaviour *is* the default playbooks
//! (`playbooks/*.yaml`, compiled in); `playbooks.upgrade` / `playbooks.rotate_keys` in the config
//! point at an edited copy, which [`check`] validates when the config loads, refusing edits that
//! would put production at risk, with the reason. The jobs (`upgrade`, `keys`, `audit`)
//! walk the steps in order; hook steps run through `hook`.
//!
//! The file is read into raw shapes (names as text, so a refusal can quote what was written) and
//! checked there; what [`check`] returns is typed: a [`PlaybookName`] and [`StepKind`]s.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::{url_allowed, yaml_guard, DurationValue};

pub const DEFAULT_UPGRADE: &str = include_str!("../../playbooks/upgrade.yaml");
pub const DEFAULT_ROTATE_KEYS: &str = include_str!("../../playbooks/rotate-keys.yaml");
pub const DEFAULT_AUDIT: &str = include_str!("../../playbooks/audit.yaml");

/// The closed catalogue of step kinds, per playbook.
pub const UPGRADE_STEPS: &[&str] = &[
    "fetch", "verify", "backup", "stage", "smoke", "approve", "promote", "notify", "hook",
];
pub const ROTATE_KEYS_STEPS: &[&str] = &["plan", "rotate", "expire", "api_key", "notify", "hook"];

/// The audit's check areas (the steps whose findings the `report` step stores and compares).
pub const AUDIT_CHECKS: &[&str] = &[
    "version",
    "config",
    "files",
    "enrollment",
    "nodes",
    "policy",
    "dns",
];
pub const AUDIT_STEPS: &[&str] = &[
    "version",
    "config",
    "files",
    "enrollment",
    "nodes",
    "policy",
    "dns",
    "report",
    "notify",
    "hook",
];

/// Steps whose failure may be shrugged off (`on_failure: continue`): they gate nothing.
const OPTIONAL: &[&str] = &["hook", "notify", "api_key"];

/// Built-in steps whose work cannot be cut off safely halfway; they keep their own limits.
const NO_TIMEOUT: &[&str] = &[
    "stage", "smoke", "backup", "promote", "approve", "rotate", "expire",
];

/// Which job a playbook drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaybookName {
    Upgrade,
    RotateKeys,
    Audit,
}

impl PlaybookName {
    pub fn as_str(self) -> &'static str {
        match self {
            PlaybookName::Upgrade => "upgrade",
            PlaybookName::RotateKeys => "rotate-keys",
            PlaybookName::Audit => "audit",
        }
    }
    fn parse(s: &str) -> Option<PlaybookName> {
        match s {
            "upgrade" => Some(PlaybookName::Upgrade),
            "rotate-keys" => Some(PlaybookName::RotateKeys),
            "audit" => Some(PlaybookName::Audit),
            _ => None,
        }
    }
    fn catalogue(self) -> &'static [&'static str] {
        match self {
            PlaybookName::Upgrade => UPGRADE_STEPS,
            PlaybookName::RotateKeys => ROTATE_KEYS_STEPS,
            PlaybookName::Audit => AUDIT_STEPS,
        }
    }
}

impl fmt::Display for PlaybookName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every step any playbook may name (each playbook's catalogue is a subset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    // upgrade
    Fetch,
    Verify,
    Backup,
    Stage,
    Smoke,
    Approve,
    Promote,
    // rotate-keys
    Plan,
    Rotate,
    Expire,
    ApiKey,
    // audit: the check areas, then the report
    Version,
    Config,
    Files,
    Enrollment,
    Nodes,
    Policy,
    Dns,
    Report,
    // any playbook
    Notify,
    Hook,
}

impl StepKind {
    const ALL: [StepKind; 21] = [
        StepKind::Fetch,
        StepKind::Verify,
        StepKind::Backup,
        StepKind::Stage,
        StepKind::Smoke,
        StepKind::Approve,
        StepKind::Promote,
        StepKind::Plan,
        StepKind::Rotate,
        StepKind::Expire,
        StepKind::ApiKey,
        StepKind::Version,
        StepKind::Config,
        StepKind::Files,
        StepKind::Enrollment,
        StepKind::Nodes,
        StepKind::Policy,
        StepKind::Dns,
        StepKind::Report,
        StepKind::Notify,
        StepKind::Hook,
    ];
    /// The name a playbook file uses (`step: api_key`).
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Fetch => "fetch",
            StepKind::Verify => "verify",
            StepKind::Backup => "backup",
            StepKind::Stage => "stage",
            StepKind::Smoke => "smoke",
            StepKind::Approve => "approve",
            StepKind::Promote => "promote",
            StepKind::Plan => "plan",
            StepKind::Rotate => "rotate",
            StepKind::Expire => "expire",
            StepKind::ApiKey => "api_key",
            StepKind::Version => "version",
            StepKind::Config => "config",
            StepKind::Files => "files",
            StepKind::Enrollment => "enrollment",
            StepKind::Nodes => "nodes",
            StepKind::Policy => "policy",
            StepKind::Dns => "dns",
            StepKind::Report => "report",
            StepKind::Notify => "notify",
            StepKind::Hook => "hook",
        }
    }
    fn parse(s: &str) -> Option<StepKind> {
        StepKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked playbook.
#[derive(Debug, Clone)]
pub struct Playbook {
    pub name: PlaybookName,
    pub steps: Vec<Step>,
}

/// One checked step.
#[derive(Debug, Clone)]
pub struct Step {
    pub kind: StepKind,
    timeout: Option<Duration>,
    on_failure: OnFailure,
    /// `hook`: a command to run …
    pub argv: Option<Vec<String>>,
    /// … or a URL to POST the run's context to.
    pub url: Option<String>,
}

/// What a failed step does to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// End the run here (before promotion production is untouched; after it, it stays promoted).
    Stop,
    /// Log it, send an event, go on.
    Continue,
    /// Restore production from this run's backup (promote, and hooks after promote).
    Rollback,
}

impl Step {
    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

impl Playbook {
    pub fn position(&self, step: StepKind) -> Option<usize> {
        self.steps.iter().position(|s| s.kind == step)
    }
    pub fn has(&self, step: StepKind) -> bool {
        self.position(step).is_some()
    }
    pub fn default_upgrade() -> Playbook {
        check(DEFAULT_UPGRADE).unwrap_or_else(|p| panic!("built-in upgrade playbook: {p:?}"))
    }
    pub fn default_audit() -> Playbook {
        check(DEFAULT_AUDIT).unwrap_or_else(|p| panic!("built-in audit playbook: {p:?}"))
    }
    pub fn default_rotate_keys() -> Playbook {
        check(DEFAULT_ROTATE_KEYS)
            .unwrap_or_else(|p| panic!("built-in rotate-keys playbook: {p:?}"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlaybook {
    name: String,
    steps: Vec<RawStep>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    step: String,
    #[serde(default)]
    timeout: Option<DurationValue>,
    #[serde(default)]
    on_failure: Option<String>,
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    url: Option<String>,
}

impl RawStep {
    fn on_failure(&self) -> OnFailure {
        match self.on_failure.as_deref() {
            Some("continue") => OnFailure::Continue,
            Some("rollback") => OnFailure::Rollback,
            Some("stop") => OnFailure::Stop,
            // Defaults: promote rolls back; chat never decides an outcome; the rest stop.
            _ if self.step == "promote" => OnFailure::Rollback,
            _ if self.step == "notify" => OnFailure::Continue,
            _ => OnFailure::Stop,
        }
    }
}

impl RawPlaybook {
    fn position(&self, step: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.step == step)
    }
}

/// Every reason a playbook was refused, each naming the step and the risk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Refused(pub Vec<String>);

impl Refused {
    pub fn problems(&self) -> &[String] {
        &self.0
    }
}

/// Parses and validates a playbook (`name: upgrade`, `rotate-keys` or `audit`); every problem is
/// reported, not just the first.
pub fn check(text: &str) -> Result<Playbook, Refused> {
    yaml_guard(text).map_err(|e| Refused(vec![e.to_string()]))?;
    let pb: RawPlaybook =
        serde_yaml_ng::from_str(text).map_err(|e| Refused(vec![e.to_string()]))?;
    let Some(name) = PlaybookName::parse(&pb.name) else {
        return Err(Refused(vec![format!(
            "unknown playbook name {:?} (upgrade, rotate-keys or audit)",
            pb.name
        )]));
    };
    let mut problems = Vec::new();
    for (i, s) in pb.steps.iter().enumerate() {
        check_step(&pb, name, i, s, &mut problems);
    }
    match name {
        PlaybookName::Upgrade => check_upgrade_order(&pb, &mut problems),
        PlaybookName::Audit => check_audit_order(&pb, &mut problems),
        PlaybookName::RotateKeys => check_rotate_keys_order(&pb, &mut problems),
    }
    if !problems.is_empty() {
        return Err(Refused(problems));
    }
    let steps = pb
        .steps
        .iter()
        .map(|s| {
            let kind = StepKind::parse(&s.step)
                .ok_or_else(|| Refused(vec![format!("unknown step {:?}", s.step)]))?;
            Ok(Step {
                kind,
                timeout: s.timeout.map(|t| t.0),
                on_failure: s.on_failure(),
                argv: s.argv.clone(),
                url: s.url.clone(),
            })
        })
        .collect::<Result<_, Refused>>()?;
    Ok(Playbook { name, steps })
}

/// The rules one step must keep wherever it stands: in the catalogue, a known `on_failure` that
/// the step may take, a timeout only where cutting it off is safe, a hook's argv or url.
fn check_step(
    pb: &RawPlaybook,
    name: PlaybookName,
    i: usize,
    s: &RawStep,
    problems: &mut Vec<String>,
) {
    let n = i + 1;
    let catalogue = name.catalogue();
    if !catalogue.contains(&s.step.as_str()) {
        problems.push(format!(
            "step {n}: unknown step {:?} (the {} catalogue: {})",
            s.step,
            pb.name,
            catalogue.join(", ")
        ));
        return;
    }
    if let Some(f) = &s.on_failure {
        if !matches!(f.as_str(), "rollback" | "continue" | "stop") {
            problems.push(format!(
                "step {n} ({}): on_failure {f:?} is not rollback, continue or stop",
                s.step
            ));
        }
    }
    let is_hook = s.step == "hook";
    // An audit is read-only: any check may fail and the rest still run.
    let may_continue =
        OPTIONAL.contains(&s.step.as_str()) || (name == PlaybookName::Audit && s.step != "report");
    if s.on_failure.as_deref() == Some("continue") && !may_continue {
        problems.push(format!(
            "step {n} ({}): on_failure continue would run the next steps without what this one checks or produces (only {} may continue)",
            s.step,
            OPTIONAL.join(", ")
        ));
    }
    if s.on_failure.as_deref() == Some("rollback") && s.step != "promote" {
        let after_promote = pb.position("promote").is_some_and(|p| p < i);
        if !(is_hook && after_promote) {
            problems.push(format!(
                "step {n} ({}): on_failure rollback is for promote and for hooks after promote (nothing has changed production yet)",
                s.step
            ));
        }
    }
    if let Some(t) = &s.timeout {
        if NO_TIMEOUT.contains(&s.step.as_str()) {
            problems.push(format!(
                "step {n} ({}): no timeout here; cutting this step off halfway would leave production or staging half-changed (it has its own limits: smoke.timeout)",
                s.step
            ));
        } else if t.0.is_zero() || t.0 > Duration::from_secs(6 * 3600) {
            problems.push(format!(
                "step {n} ({}): timeout must be between 1s and 6h",
                s.step
            ));
        }
    }
    check_hook_fields(n, s, problems);
    if pb.steps[..i].iter().any(|p| p.step == s.step) && !is_hook && s.step != "notify" {
        problems.push(format!("step {n} ({}): appears twice", s.step));
    }
}

fn check_hook_fields(n: usize, s: &RawStep, problems: &mut Vec<String>) {
    let is_hook = s.step == "hook";
    match (is_hook, s.argv.is_some(), s.url.is_some()) {
        (true, true, true) | (true, false, false) => {
            problems.push(format!("step {n} (hook): give exactly one of argv or url"))
        }
        (true, _, _) if s.timeout.is_none() => {
            problems.push(format!("step {n} (hook): a hook needs a timeout"))
        }
        (true, true, _)
            if s.argv
                .as_ref()
                .is_some_and(|a| a.is_empty() || !a[0].starts_with('/')) =>
        {
            problems.push(format!(
                "step {n} (hook): argv[0] must be an absolute path (no shell, no PATH lookup)"
            ))
        }
        (true, _, true) if !url_allowed(s.url.as_deref().unwrap_or(""), true) => problems.push(
            format!("step {n} (hook): url must be https (or http to loopback)"),
        ),
        (false, true, _) | (false, _, true) => problems.push(format!(
            "step {n} ({}): argv/url belong to hook steps only",
            s.step
        )),
        _ => {}
    }
}

/// `b` must not come before `a`.
fn before(pb: &RawPlaybook, problems: &mut Vec<String>, a: &str, b: &str, why: &str) {
    if let (Some(x), Some(y)) = (pb.position(a), pb.position(b)) {
        if x > y {
            problems.push(format!("{b} comes before {a}: {why}"));
        }
    }
}

fn check_upgrade_order(pb: &RawPlaybook, problems: &mut Vec<String>) {
    let pos = |name: &str| pb.position(name);
    for required in ["fetch", "verify", "backup", "stage", "promote"] {
        if pos(required).is_none() {
            problems.push(format!("the upgrade playbook needs a {required} step"));
        }
    }
    let risk = "production would run an unverified, unstaged or unbacked-up binary";
    for b in ["fetch", "verify", "backup", "stage"] {
        before(pb, problems, b, "promote", risk);
    }
    before(
        pb,
        problems,
        "approve",
        "promote",
        "the approval would gate nothing",
    );
    before(
        pb,
        problems,
        "verify",
        "stage",
        "an unverified binary would run on staging",
    );
    before(
        pb,
        problems,
        "fetch",
        "verify",
        "there is nothing to verify yet",
    );
    if let (Some(st), Some(sm)) = (pos("stage"), pos("smoke")) {
        if sm != st + 1 {
            problems.push(
                "smoke must directly follow stage: its checks run against each staging hop while it is up".into(),
            );
        }
    }
    if let Some(p) = pos("promote") {
        if pb.steps[p].on_failure() != OnFailure::Rollback {
            problems.push(format!(
                "promote has on_failure: {}; a failed promotion must roll back",
                pb.steps[p].on_failure.as_deref().unwrap_or("")
            ));
        }
    }
}

fn check_audit_order(pb: &RawPlaybook, problems: &mut Vec<String>) {
    match pb.position("report") {
        None => problems.push(
            "the audit playbook needs a report step (it stores the result and finds what changed)"
                .into(),
        ),
        Some(r) => {
            for (i, st) in pb.steps.iter().enumerate().skip(r + 1) {
                if AUDIT_CHECKS.contains(&st.step.as_str()) {
                    problems.push(format!(
                        "step {} ({}) comes after report: its findings would be neither stored nor compared",
                        i + 1,
                        st.step
                    ));
                }
            }
        }
    }
}

fn check_rotate_keys_order(pb: &RawPlaybook, problems: &mut Vec<String>) {
    for required in ["plan", "rotate"] {
        if pb.position(required).is_none() {
            problems.push(format!("the rotate-keys playbook needs a {required} step"));
        }
    }
    if pb.position("plan").is_some_and(|p| p != 0) {
        problems.push("plan must come first: every other step works on its node list".into());
    }
    before(
        pb,
        problems,
        "rotate",
        "expire",
        "a node would be expired before its owner got a reminder and a key",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = include_str!("../../playbooks/upgrade.yaml");

    #[test]
    fn the_default_playbook_passes() {
        assert!(check(DEFAULT).is_ok(), "{:?}", check(DEFAULT).err());
    }

    /// The default playbook without comments, so edits can match whole lines.
    fn plain() -> String {
        DEFAULT
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim_end())
            .filter(|l| !l.is_empty())
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn unsafe_edits_are_refused_with_the_reason() {
        let default = plain();
        let swap = |a: &str, b: &str| {
            default
                .replace(&format!("- step: {a}\n"), "- step: TMP\n")
                .replace(&format!("- step: {b}\n"), &format!("- step: {a}\n"))
                .replace("- step: TMP\n", &format!("- step: {b}\n"))
        };
        for (text, expect) in [
            (swap("backup", "promote"), "promote comes before backup"),
            (swap("verify", "promote"), "promote comes before verify"),
            (swap("verify", "stage"), "stage comes before verify"),
            (
                default.replace("  - step: backup\n", ""),
                "needs a backup step",
            ),
            (
                default.replace("  - step: stage\n", ""),
                "needs a stage step",
            ),
            (
                default.replace("on_failure: rollback", "on_failure: continue"),
                "must roll back",
            ),
            (
                format!("{default}  - step: hook\n"),
                "exactly one of argv or url",
            ),
            (
                format!("{default}  - step: hook\n    argv: [/bin/true]\n"),
                "needs a timeout",
            ),
            (
                format!(
                    "{default}  - step: hook\n    url: http://example.com/x\n    timeout: 5s\n"
                ),
                "https",
            ),
            (format!("{default}  - step: reboot\n"), "unknown step"),
            (
                default.replace("  - step: verify\n", "  - step: verify\n    on_failure: continue\n"),
                "only hook, notify, api_key may continue",
            ),
            (
                default.replace("  - step: stage\n", "  - step: hook\n    argv: [/bin/true]\n    timeout: 5s\n    on_failure: rollback\n  - step: stage\n"),
                "on_failure rollback is for promote and for hooks after promote",
            ),
            (
                default.replace("  - step: promote\n", "  - step: promote\n    timeout: 10m\n"),
                "no timeout here",
            ),
            (
                default.replace("  - step: smoke\n", "").replace("  - step: approve\n", "  - step: approve\n  - step: smoke\n"),
                "smoke must directly follow stage",
            ),
            (
                format!("{default}  - step: hook\n    argv: [sh, -c, x]\n    timeout: 5s\n"),
                "absolute path",
            ),
            (default.replace("name: upgrade", "name: rotate-keys"), "unknown step"),
        ] {
            let problems = check(&text).expect_err(expect).0;
            assert!(
                problems.iter().any(|p| p.contains(expect)),
                "{expect}: {problems:?}"
            );
        }
        let ok = format!("{default}  - step: hook\n    argv: [/usr/local/bin/after-upgrade]\n    timeout: 30s\n    on_failure: continue\n");
        assert!(check(&ok).is_ok(), "{:?}", check(&ok).err());
        // Safe edits: approve before fetch (download nothing until approved), no smoke, notify twice.
        let reordered = default
            .replace("  - step: approve\n", "")
            .replace("  - step: smoke\n    on_failure: stop\n", "")
            .replace(
                "  - step: fetch\n",
                "  - step: approve\n  - step: fetch\n  - step: notify\n",
            );
        assert!(check(&reordered).is_ok(), "{:?}", check(&reordered).err());
    }

    #[test]
    fn the_audit_catalogue_starts_with_its_checks() {
        assert_eq!(&AUDIT_STEPS[..AUDIT_CHECKS.len()], AUDIT_CHECKS);
    }

    #[test]
    fn rotate_keys_playbook_rules() {
        assert!(
            check(DEFAULT_ROTATE_KEYS).is_ok(),
            "{:?}",
            check(DEFAULT_ROTATE_KEYS).err()
        );
        for (text, expect) in [
            ("name: rotate-keys\nsteps:\n  - step: rotate\n  - step: plan\n", "plan must come first"),
            ("name: rotate-keys\nsteps:\n  - step: plan\n", "needs a rotate step"),
            ("name: rotate-keys\nsteps:\n  - step: plan\n  - step: rotate\n  - step: promote\n", "unknown step"),
            ("name: rotate-keys\nsteps:\n  - step: plan\n  - step: rotate\n    on_failure: continue\n", "may continue"),
            ("name: deploy\nsteps: []\n", "unknown playbook name"),
        ] {
            let problems = check(text).expect_err(expect).0;
            assert!(problems.iter().any(|p| p.contains(expect)), "{expect}: {problems:?}");
        }
    }
}
