//! The nodes step (through the API): nodes against the inventory, expiry and tags.

use std::path::Path;

use crate::error::error_chain;
use crate::event::Severity;
use crate::settings;
use crate::state;
use crate::state::now;

use crate::audit::checks::enrollment::days;
use crate::audit::{finding, mitigation, Ctx, Finding, Unavailable};

pub(crate) fn inventory(path: &Path) -> Result<Vec<(String, Option<String>)>, Unavailable> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the inventory {}: {e}", path.display()))?;
    settings::yaml_guard(&text).map_err(|e| format!("inventory {}: {e}", path.display()))?;
    let v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("inventory {}: {e}", path.display()))?;
    let items = v
        .as_sequence()
        .ok_or_else(|| format!("inventory {}: expected a list of machines", path.display()))?;
    items
        .iter()
        .map(|i| match i {
            serde_yaml_ng::Value::String(n) => Ok((n.clone(), None)),
            m => match m.get("name").and_then(|n| n.as_str()) {
                Some(n) => Ok((
                    n.to_string(),
                    m.get("user").and_then(|u| u.as_str()).map(str::to_string),
                )),
                None => Err(Unavailable(format!(
                    "inventory {}: every entry needs a name",
                    path.display()
                ))),
            },
        })
        .collect()
}

pub(crate) async fn node_checks(ctx: &mut Ctx<'_>) -> Result<Vec<Finding>, Unavailable> {
    let s = ctx.s;
    let expected = s.audit.inventory.as_deref().map(inventory).transpose()?;
    let api = ctx.api().await?;
    let nodes = api.list_nodes().await.map_err(|e| error_chain(&e))?;
    let t = now();
    let mut out = Vec::new();
    for n in &nodes {
        let id = n.id.to_string();
        let label = format!(
            "{} ({})",
            n.given_name,
            if n.user.name.is_empty() {
                "-"
            } else {
                &n.user.name
            }
        );
        if let Some(seen) = n
            .last_seen
            .filter(|seen| t - seen > s.audit.inactive_after.as_secs() as i64)
        {
            out.push(finding(
                "nodes.inactive",
                Some(&id),
                Severity::Info,
                format!("node {label} not seen for {} days", days(t - seen)),
                format!("last seen {}", state::rfc3339(seen)),
                mitigation::NODE_AUDIT,
                "remove machines that are gone (`headscale nodes delete -i ID`)",
            ));
        }
        let expired = n.expiry.is_some_and(|e| e <= t);
        if n.expiry.is_none() && n.tags.is_empty() {
            out.push(finding(
                "nodes.no_expiry",
                Some(&id),
                Severity::Warning,
                format!("node {label} never expires"),
                format!("registered via {}, expiry null", if n.register_method.is_empty() { "?" } else { &n.register_method }),
                mitigation::ENROLLMENT,
                "set node.expiry (0.29+) so new registrations expire, and let headwarden's key job rotate this node",
            ));
        }
        if n.user.name.is_empty() && n.tags.is_empty() && !expired {
            out.push(finding(
                "nodes.no_owner",
                Some(&id),
                Severity::Warning,
                format!("node {} has neither an owner nor tags", n.given_name),
                String::new(),
                mitigation::NODE_AUDIT,
                "find out what it is; tag it or delete it",
            ));
        }
        if let Some(allowed) = &s.audit.allowed_tags {
            let odd: Vec<&String> = n.tags.iter().filter(|t| !allowed.contains(t)).collect();
            if !odd.is_empty() {
                out.push(finding(
                    "nodes.unexpected_tag",
                    Some(&id),
                    Severity::Warning,
                    format!(
                        "node {label} carries {}",
                        odd.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    format!("audit.allowed_tags: {}", allowed.join(", ")),
                    mitigation::ACL,
                    "remove the tag (or add it to audit.allowed_tags if it is intended)",
                ));
            }
        }
        if let Some(inv) = &expected {
            let known = inv.iter().any(|(name, user)| {
                (name == &n.given_name || name == &n.name)
                    && user.as_ref().is_none_or(|u| u == &n.user.name)
            });
            if !known {
                out.push(finding(
                    "nodes.not_in_inventory",
                    Some(&id),
                    Severity::Critical,
                    format!("node {label} is not in the inventory of expected machines"),
                    format!(
                        "registered {}; inventory {}",
                        n.created_at.map(state::rfc3339).unwrap_or_default(),
                        s.audit.inventory.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
                    ),
                    mitigation::ENROLLMENT,
                    "if you do not know this machine, expire and delete it now; otherwise add it to the inventory",
                ));
            }
        }
    }
    Ok(out)
}
