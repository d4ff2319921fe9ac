//! The version step: production against the feed (behind, security fixes pending, a floating image tag) and the installed binary against what was verified.

use std::path::Path;

use crate::deploy;
use crate::error::error_chain;
use crate::event::Severity;
use crate::release::notes;
use crate::release::watch::{self, UpgradeOptions};
use crate::verify;

use crate::audit::{finding, mitigation, Ctx, Finding, Unavailable};

pub(crate) async fn version_checks(ctx: &Ctx<'_>) -> Result<Vec<Finding>, Unavailable> {
    let s = ctx.s;
    let mut out = Vec::new();
    // Tampering: the running binary is not what headwarden installed for that version.
    let target = deploy::current_target(&s.headscale.binary);
    let installs = ctx.store.installs().map_err(|e| e.to_string())?;
    if let Some(rec) = installs
        .iter()
        .find(|i| Path::new(&i.path) == target.as_path())
    {
        match verify::sha256_file(&target) {
            Ok(sha) if sha != rec.sha256 => out.push(finding(
                "version.binary_changed",
                None,
                Severity::Critical,
                format!("the Headscale binary at {} is not the one headwarden installed", target.display()),
                format!("sha256 {sha}, installed {} (verified from the release)", rec.sha256),
                mitigation::UPDATED,
                "find out who changed it; `headwarden upgrade --to VERSION` reinstalls a verified binary",
            )),
            Ok(_) => {}
            Err(e) => return Err(format!("hashing {}: {e}", target.display()).into()),
        }
    }
    let current = ctx.version.clone()?;
    if let Some(facts) =
        deploy::production::image_facts(s, &current).map_err(|e| error_chain(&e))?
    {
        if let Some(tag) = &facts.floating {
            out.push(finding(
                "version.floating_image_tag",
                None,
                Severity::Warning,
                format!("the compose file runs Headscale from the floating tag {tag}"),
                facts.describe(),
                mitigation::UPDATED,
                "`headwarden upgrade` pins it to the running version first; or write the exact version into the compose file's image: line",
            ));
        }
    }
    let prod_config = &ctx.production.as_ref().map_err(Clone::clone)?.config;
    let (report, releases) = watch::fetch_and_plan(
        s,
        ctx.store,
        current,
        prod_config,
        &UpgradeOptions::default(),
    )
    .await
    .map_err(|e| error_chain(&e))?;
    let current = &report.current;
    if let Some(t) = report.plan.target.as_ref().filter(|t| *t > current) {
        out.push(finding(
            "version.behind",
            None,
            Severity::Warning,
            format!("production runs Headscale {current}; {t} is allowed by policy"),
            format!(
                "path {}",
                report
                    .plan
                    .hops
                    .iter()
                    .map(|h| h.version.to_string())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
            mitigation::UPDATED,
            "`headwarden upgrade` (staged on a copy of the database first)",
        ));
    }
    for r in releases
        .iter()
        .filter(|r| !r.prerelease && r.version.pre.is_empty() && &r.version > current)
    {
        let h = notes::highlights(&r.notes);
        if let Some(line) = h.security.first() {
            out.push(finding(
                "version.security_fix_pending",
                Some(&r.version.to_string()),
                Severity::Critical,
                format!("Headscale {} has a security fix production does not", r.version),
                line.chars().take(300).collect(),
                mitigation::UPDATED,
                "upgrade: `headwarden upgrade --to VERSION` (or approve it if release.approval holds it)",
            ));
        }
    }
    Ok(out)
}
