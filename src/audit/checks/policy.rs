//! The policy step: the ACL policy (database or file) and its rules.

use serde_json::Value;

use crate::error::error_chain;
use crate::event::Severity;
use crate::headscale::config::HeadscaleConfig;

use crate::audit::checks::files::resolve;
use crate::audit::policy;
use crate::audit::{finding, mitigation, Ctx, Finding, Unavailable};
use crate::headscale::config::FileKey;

/// The policy's text (none when there is none) and where it came from: the database
/// (`policy.mode: database`, through the API) or `policy.path`.
pub(crate) async fn policy_text(
    ctx: &mut Ctx<'_>,
    c: &HeadscaleConfig,
    mode: &str,
) -> Result<(Option<String>, String), Unavailable> {
    Ok(if mode == "database" {
        let api = ctx.api().await?;
        match api.get_policy().await {
            Ok(t) => (
                Some(t).filter(|t| !t.trim().is_empty()),
                "the database".to_string(),
            ),
            Err(e) => {
                let chain = error_chain(&e);
                if chain.contains("not found") {
                    (None, "the database".to_string())
                } else {
                    return Err(chain.into());
                }
            }
        }
    } else {
        match c.file_value(FileKey::PolicyPath).filter(|p| !p.is_empty()) {
            None => (None, format!("{} (policy.path is empty)", c.path.display())),
            Some(p) => {
                let path = resolve(c, &p);
                let t = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read the policy {}: {e}", path.display()))?;
                (Some(t), path.display().to_string())
            }
        }
    })
}

/// Allow-all rules, and groups and tags that no rule uses.
pub(crate) fn rule_findings(p: &Value, source: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    for i in policy::allow_all_rules(p) {
        out.push(finding(
            "policy.allow_all",
            Some(&i.to_string()),
            Severity::Warning,
            format!("ACL rule {i} lets every node reach every port of every other node"),
            format!("{source}: acls[{}]: src [\"*\"] → dst [\"*:*\"]", i - 1),
            mitigation::ACL,
            "replace it with rules per group and tag (least privilege)",
        ));
    }
    let (groups, tags) = policy::unused_names(p);
    for g in groups {
        out.push(finding(
            "policy.unused_group",
            Some(&g),
            Severity::Info,
            format!("{g} is defined but no rule uses it"),
            source.to_string(),
            mitigation::ACL,
            "remove it, or write the rule it was meant for",
        ));
    }
    for t in tags {
        out.push(finding(
            "policy.unused_tag",
            Some(&t),
            Severity::Info,
            format!("{t} has owners but no rule mentions it"),
            source.to_string(),
            mitigation::ACL,
            "remove it, or write the rule it was meant for",
        ));
    }
    out
}

pub(crate) async fn policy_checks(ctx: &mut Ctx<'_>) -> Result<Vec<Finding>, Unavailable> {
    let c = ctx.config()?.clone();
    let s = ctx.s;
    let mode = c
        .file_value(FileKey::PolicyMode)
        .unwrap_or_else(|| "file".into());
    let (text, source) = policy_text(ctx, &c, &mode).await?;
    let mut out = Vec::new();
    let parsed = match &text {
        None => {
            out.push(finding(
                "policy.none",
                None,
                Severity::Warning,
                "no ACL policy: every node can reach every other node".into(),
                format!("policy.mode: {mode}; no policy in {source}"),
                mitigation::ACL,
                "write a policy that grants only what each group needs (groups, tagOwners, acls)",
            ));
            None
        }
        Some(t) => match policy::parse_hujson(t) {
            Ok(v) => Some(v),
            Err(e) => {
                out.push(finding(
                    "policy.unparseable",
                    None,
                    Severity::Warning,
                    "the policy could not be read for the audit".into(),
                    format!("{source}: {e}"),
                    mitigation::ACL,
                    "check it with `headscale policy check -f FILE`",
                ));
                return Ok(out);
            }
        },
    };
    if let Some(p) = &parsed {
        out.extend(rule_findings(p, &source));
    }
    for (i, r) in s.audit.reachability.iter().enumerate() {
        let got = policy::allows(parsed.as_ref(), &r.from, &r.to, r.port);
        if got.allowed() != r.allow {
            let how = match got {
                policy::Verdict::NoPolicy => {
                    "there is no policy, so everything is allowed".to_string()
                }
                policy::Verdict::Grant(n) => format!("grant {n} allows it"),
                policy::Verdict::Acl(n) => format!("ACL rule {n} allows it"),
                policy::Verdict::Denied => "no rule allows it".to_string(),
            };
            out.push(finding(
                "policy.reachability",
                Some(&(i + 1).to_string()),
                Severity::Critical,
                format!(
                    "{} → {}:{} should be {} but is {}",
                    r.from,
                    r.to,
                    r.port,
                    if r.allow { "allowed" } else { "denied" },
                    if got.allowed() { "allowed" } else { "denied" }
                ),
                format!("{source}: {how}"),
                mitigation::ACL,
                "fix the policy (or the expectation in audit.reachability)",
            ));
        }
    }
    Ok(out)
}
