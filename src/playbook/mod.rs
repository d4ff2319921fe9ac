//! Playbooks: a pipeline as data — an ordered list of steps from a closed catalogue with
//! parameters, timeouts and `on_failure`. [`check`] refuses edits that would put production at
//! risk, with the reason. (Executing playbooks — hooks, reordering — is not built yet; the
//! built-in pipeline runs the order of `playbooks/upgrade.yaml`.)

use std::time::Duration;

use serde::Deserialize;

/// The closed catalogue of step kinds.
pub const CATALOGUE: &[&str] = &[
    "fetch", "verify", "backup", "stage", "smoke", "approve", "promote", "notify", "hook",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    pub name: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub step: String,
    #[serde(default)]
    pub timeout: Option<crate::settings::DurationValue>,
    #[serde(default)]
    pub on_failure: Option<String>,
    /// `hook`: a command to run …
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// … or a URL to POST the run's context to.
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("step {index} ({step}): {reason}")]
pub struct Unsafe {
    pub index: usize,
    pub step: String,
    pub reason: String,
}

/// Parses and validates a playbook; every problem is reported, not just the first.
pub fn check(text: &str) -> Result<Playbook, Vec<String>> {
    let pb: Playbook = serde_yaml_ng::from_str(text).map_err(|e| vec![e.to_string()])?;
    let mut problems = Vec::new();
    let pos = |name: &str| pb.steps.iter().position(|s| s.step == name);
    for (i, s) in pb.steps.iter().enumerate() {
        let n = i + 1;
        if !CATALOGUE.contains(&s.step.as_str()) {
            problems.push(format!(
                "step {n}: unknown step {:?} (catalogue: {})",
                s.step,
                CATALOGUE.join(", ")
            ));
            continue;
        }
        if let Some(f) = &s.on_failure {
            if !matches!(f.as_str(), "rollback" | "continue" | "stop") {
                problems.push(format!(
                    "step {n} ({}): on_failure {f:?} is not rollback, continue or stop",
                    s.step
                ));
            }
        }
        if let Some(t) = &s.timeout {
            if t.0.is_zero() || t.0 > Duration::from_secs(6 * 3600) {
                problems.push(format!(
                    "step {n} ({}): timeout must be between 1s and 6h",
                    s.step
                ));
            }
        }
        let is_hook = s.step == "hook";
        match (is_hook, s.argv.is_some(), s.url.is_some()) {
            (true, true, true) | (true, false, false) => {
                problems.push(format!("step {n} (hook): give exactly one of argv or url"))
            }
            (true, _, _) if s.timeout.is_none() => {
                problems.push(format!("step {n} (hook): a hook needs a timeout"))
            }
            (true, _, true)
                if !crate::settings::url_allowed(s.url.as_deref().unwrap_or(""), true) =>
            {
                problems.push(format!(
                    "step {n} (hook): url must be https (or http to loopback)"
                ))
            }
            (false, true, _) | (false, _, true) => problems.push(format!(
                "step {n} ({}): argv/url belong to hook steps only",
                s.step
            )),
            _ => {}
        }
        if pb.steps[..i].iter().any(|p| p.step == s.step)
            && !is_hook
            && s.step != "notify"
            && s.step != "smoke"
        {
            problems.push(format!("step {n} ({}): appears twice", s.step));
        }
    }
    if pb.name == "upgrade" {
        for required in ["fetch", "verify", "backup", "stage", "promote"] {
            if pos(required).is_none() {
                problems.push(format!("the upgrade playbook needs a {required} step"));
            }
        }
        if let Some(p) = pos("promote") {
            for before in ["fetch", "verify", "backup", "stage"] {
                if pos(before).is_some_and(|b| b > p) {
                    problems.push(format!("promote comes before {before}: production would run an unverified, unstaged or unbacked-up binary"));
                }
            }
            if let Some(a) = pos("approve") {
                if a > p {
                    problems.push(
                        "approve comes after promote: the approval would gate nothing".into(),
                    );
                }
            }
            let f = pb.steps[p].on_failure.as_deref().unwrap_or("rollback");
            if f != "rollback" {
                problems.push(format!(
                    "promote has on_failure: {f}; a failed promotion must roll back"
                ));
            }
        }
        if let (Some(v), Some(s)) = (pos("verify"), pos("stage")) {
            if v > s {
                problems.push(
                    "stage comes before verify: an unverified binary would run on staging".into(),
                );
            }
        }
        if let (Some(f), Some(v)) = (pos("fetch"), pos("verify")) {
            if f > v {
                problems.push("verify comes before fetch".into());
            }
        }
    }
    if problems.is_empty() {
        Ok(pb)
    } else {
        Err(problems)
    }
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
        ] {
            let problems = check(&text).expect_err(expect);
            assert!(
                problems.iter().any(|p| p.contains(expect)),
                "{expect}: {problems:?}"
            );
        }
        let ok = format!("{default}  - step: hook\n    argv: [/usr/local/bin/after-upgrade]\n    timeout: 30s\n    on_failure: continue\n");
        assert!(check(&ok).is_ok(), "{:?}", check(&ok).err());
    }
}
