//! The enrollment step (through the API): API keys and pre-auth keys.

use std::collections::BTreeSet;

use crate::error::error_chain;
use crate::event::Severity;
use crate::headscale::api;
use crate::headscale::api::ApiKeyInfo;
use crate::settings::Settings;
use crate::state;
use crate::state::now;

use crate::audit::{finding, mitigation, Ctx, Finding, Unavailable};

pub(crate) fn days(secs: i64) -> i64 {
    secs / 86400
}

/// API keys that never expire or that nothing uses.
pub(crate) fn api_key_findings(s: &Settings, api_keys: &[ApiKeyInfo], t: i64) -> Vec<Finding> {
    let mut out = Vec::new();
    for k in api_keys {
        let live = k.expiration.is_none_or(|x| x > t);
        if !live {
            continue;
        }
        if k.expiration.is_none() {
            out.push(finding(
                "enrollment.api_key_no_expiry",
                Some(&k.prefix),
                Severity::Warning,
                format!("API key {} never expires", k.prefix),
                format!(
                    "created {}",
                    k.created_at.map(state::rfc3339).unwrap_or_default()
                ),
                mitigation::AUTH,
                "create keys with an expiration (`headscale apikeys create -e 90d`) and expire this one",
            ));
        }
        let last = k.last_seen.or(k.created_at).unwrap_or(t);
        if t - last > s.audit.api_key_unused_after.as_secs() as i64 {
            out.push(finding(
                "enrollment.api_key_unused",
                Some(&k.prefix),
                Severity::Info,
                format!("API key {} unused for {} days", k.prefix, days(t - last)),
                format!(
                    "last seen {}",
                    k.last_seen
                        .map(state::rfc3339)
                        .unwrap_or_else(|| "never".into())
                ),
                mitigation::AUTH,
                "expire API keys nothing uses (`headscale apikeys expire --prefix PREFIX`)",
            ));
        }
    }
    out
}

pub(crate) async fn enrollment_checks(ctx: &mut Ctx<'_>) -> Result<Vec<Finding>, Unavailable> {
    let s = ctx.s;
    let minted: BTreeSet<i64> = ctx
        .store
        .active_minted_keys()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(_, k)| k.key_id)
        .collect();
    let api = ctx.api().await?;
    let e = |e: api::ApiError| error_chain(&e);
    let users = api.list_users().await.map_err(e)?;
    let keys = api.list_preauth_keys(&users).await.map_err(e)?;
    let api_keys = api.list_api_keys().await.map_err(e)?;
    let t = now();
    let mut out = Vec::new();
    for k in keys {
        let live = k.expiration.is_some_and(|x| x > t);
        if !live || minted.contains(&(k.id as i64)) {
            continue;
        }
        let id = k.id.to_string();
        let owner = k
            .user
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_else(|| k.acl_tags.join(","));
        if k.reusable {
            out.push(finding(
                "enrollment.reusable_preauth_key",
                Some(&id),
                Severity::Warning,
                format!("pre-auth key {id} ({owner}) is reusable: anyone holding it can enroll any number of machines"),
                format!("reusable, valid until {}", state::rfc3339(k.expiration.unwrap_or(0))),
                mitigation::AUTH,
                "expire it (`headscale preauthkeys expire --id ID`) and mint one-time keys per machine",
            ));
        }
        let lifetime = k.expiration.unwrap_or(t) - k.created_at.unwrap_or(t);
        if lifetime > s.audit.max_preauth_key_lifetime.as_secs() as i64 {
            out.push(finding(
                "enrollment.long_lived_preauth_key",
                Some(&id),
                Severity::Warning,
                format!("pre-auth key {id} ({owner}) is valid for {} days", days(lifetime)),
                format!(
                    "created {}, expires {}; limit audit.max_preauth_key_lifetime = {} days",
                    k.created_at.map(state::rfc3339).unwrap_or_default(),
                    state::rfc3339(k.expiration.unwrap_or(0)),
                    days(s.audit.max_preauth_key_lifetime.as_secs() as i64)
                ),
                mitigation::AUTH,
                "mint keys with a short expiry (`-e 1h`, the CLI default) when a machine is enrolled",
            ));
        }
        if !k.used
            && k.created_at
                .is_some_and(|c| t - c > s.audit.unused_preauth_key_after.as_secs() as i64)
        {
            out.push(finding(
                "enrollment.unused_preauth_key",
                Some(&id),
                Severity::Info,
                format!("pre-auth key {id} ({owner}) was never used and is still valid"),
                format!(
                    "created {}",
                    k.created_at.map(state::rfc3339).unwrap_or_default()
                ),
                mitigation::ENROLLMENT,
                "expire keys nobody is going to use",
            ));
        }
    }
    out.extend(api_key_findings(s, &api_keys, t));
    Ok(out)
}
