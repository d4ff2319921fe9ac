//! Raw YAML shapes (exactly the file's keys) and the value types parsed while deserializing;
//! `resolve.rs` turns them into `Settings`.

use std::path::PathBuf;
use std::time::Duration;

use semver::{Version, VersionReq};
use serde::{Deserialize, Deserializer};

use super::cron::Cron;

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {0:?}: unknown unit {1:?}")]
    Unit(String, char),
    #[error("invalid duration {0:?}: a unit needs a number before it")]
    Number(String),
    #[error("invalid duration {0:?}: too large")]
    TooLarge(String),
    #[error("invalid duration {0:?}: missing unit (s, m, h, d, w)")]
    MissingUnit(String),
}

/// Parses `60s`, `15m`, `12h`, `3d`, `2w` (and sums like `1d12h`).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => return Err(DurationError::Unit(s.to_string(), c)),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| DurationError::Number(s.to_string()))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| DurationError::TooLarge(s.to_string()))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(DurationError::MissingUnit(s.to_string()));
    }
    Ok(Duration::from_secs(total))
}

/// A duration parsed during deserialization, so errors carry a location.
#[derive(Debug, Clone, Copy)]
pub struct DurationValue(pub Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(DurationValue)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone)]
pub(super) struct ReqValue(pub(super) VersionReq);

impl<'de> Deserialize<'de> for ReqValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        VersionReq::parse(&s)
            .map(ReqValue)
            .map_err(|e| serde::de::Error::custom(format!("invalid semver requirement {s:?}: {e}")))
    }
}

#[derive(Debug, Clone)]
pub(super) struct VersionValue(pub(super) Version);

impl<'de> Deserialize<'de> for VersionValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Version::parse(s.trim_start_matches('v'))
            .map(VersionValue)
            .map_err(|e| serde::de::Error::custom(format!("invalid version {s:?}: {e}")))
    }
}

#[derive(Debug, Clone)]
pub(super) struct CronValue(pub(super) Cron);

impl<'de> Deserialize<'de> for CronValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cron::parse(&s)
            .map(CronValue)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) state_dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) release: RawRelease,
    pub(super) headscale: RawHeadscale,
    #[serde(default)]
    pub(super) staging: RawStaging,
    #[serde(default)]
    pub(super) smoke: RawSmoke,
    #[serde(default)]
    pub(super) keys: RawKeys,
    #[serde(default)]
    pub(super) notify: Vec<RawNotify>,
    #[serde(default)]
    pub(super) notify_users: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub(super) schedule: RawSchedule,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) playbooks: RawPlaybooks,
    #[serde(default)]
    pub(super) audit: RawAudit,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAudit {
    pub(super) max_preauth_key_lifetime: Option<DurationValue>,
    pub(super) unused_preauth_key_after: Option<DurationValue>,
    pub(super) api_key_unused_after: Option<DurationValue>,
    pub(super) inactive_after: Option<DurationValue>,
    pub(super) allowed_tags: Option<Vec<String>>,
    pub(super) allowed_nameservers: Option<Vec<String>>,
    pub(super) inventory: Option<PathBuf>,
    pub(super) service_user: Option<String>,
    pub(super) reachability: Vec<RawReach>,
    pub(super) accept: Vec<RawAccept>,
    pub(super) playbook: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReach {
    pub(super) from: String,
    pub(super) to: String,
    pub(super) port: u16,
    pub(super) expect: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccept {
    pub(super) id: String,
    pub(super) until: String,
    pub(super) reason: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPlaybooks {
    pub(super) upgrade: Option<PathBuf>,
    pub(super) rotate_keys: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMetrics {
    pub(super) textfile: Option<PathBuf>,
    pub(super) listen: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRelease {
    pub(super) repo: Option<String>,
    pub(super) api_url: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) channel: Option<String>,
    pub(super) constraint: Option<ReqValue>,
    pub(super) min_age: Option<DurationValue>,
    pub(super) skip: Vec<VersionValue>,
    pub(super) pin: Option<VersionValue>,
    pub(super) require_signature: Option<bool>,
    pub(super) minisign_public_key: Option<String>,
    pub(super) allow_insecure_http: bool,
    pub(super) keep_versions: Option<usize>,
    pub(super) max_asset_size_mb: Option<u64>,
    pub(super) feed_timeout: Option<DurationValue>,
    pub(super) download_timeout: Option<DurationValue>,
    pub(super) approval: Option<RawApproval>,
    pub(super) window: Option<RawWindow>,
    pub(super) blackout: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindow {
    #[serde(default)]
    pub(super) days: Vec<String>,
    pub(super) start: String,
    pub(super) duration: DurationValue,
    #[serde(default)]
    pub(super) timezone: Option<String>,
}

/// `approval: auto | manual`, or per level: `{patch: auto, minor: manual}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawApproval {
    All(String),
    Levels {
        #[serde(default)]
        patch: Option<String>,
        #[serde(default)]
        minor: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeadscale {
    #[serde(default)]
    pub(super) install: RawInstall,
    pub(super) binary: Option<PathBuf>,
    pub(super) config: Option<PathBuf>,
    #[serde(default)]
    pub(super) service: RawService,
    #[serde(default)]
    pub(super) api: RawApi,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawInstall {
    pub(super) kind: Option<String>,
    pub(super) file: Option<PathBuf>,
    pub(super) service: Option<String>,
    pub(super) command: Vec<String>,
    pub(super) engine: Vec<String>,
    pub(super) image: Option<String>,
    pub(super) package: Option<String>,
    pub(super) manager: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawService {
    pub(super) kind: Option<String>,
    pub(super) unit: Option<String>,
    pub(super) start: Vec<String>,
    pub(super) stop: Vec<String>,
    pub(super) status: Vec<String>,
    pub(super) pidfile: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawApi {
    pub(super) url: Option<String>,
    pub(super) api_key_file: Option<PathBuf>,
    pub(super) ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStaging {
    pub(super) overlay: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSmoke {
    pub(super) timeout: Option<DurationValue>,
    pub(super) checks: Option<Vec<String>>,
    pub(super) commands: Vec<Vec<String>>,
    pub(super) reconnect: RawReconnect,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawReconnect {
    pub(super) within: Option<DurationValue>,
    pub(super) min_ratio: Option<f64>,
    pub(super) min_nodes: Option<usize>,
    pub(super) on_failure: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawKeys {
    pub(super) max_age: Option<DurationValue>,
    pub(super) remind_before: Option<Vec<DurationValue>>,
    pub(super) grace: Option<DurationValue>,
    pub(super) enforce: Option<String>,
    pub(super) exempt_tags: Option<Vec<String>>,
    pub(super) exempt_users: Vec<String>,
    pub(super) exempt_nodes: Vec<String>,
    pub(super) per_tag: std::collections::BTreeMap<String, DurationValue>,
    pub(super) key_lifetime: Option<DurationValue>,
    pub(super) remove_stale_duplicates: bool,
    pub(super) inactive_after: Option<DurationValue>,
    pub(super) api_key_rotate_before: Option<DurationValue>,
    pub(super) api_key_lifetime: Option<DurationValue>,
    pub(super) login_server: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) url: String,
    #[serde(default)]
    pub(super) events: Vec<String>,
    pub(super) min_severity: Option<String>,
    pub(super) reminders: Option<String>,
    pub(super) one_time_keys: Option<String>,
    #[serde(default)]
    pub(super) mentions: std::collections::BTreeMap<String, String>,
    pub(super) endpoint: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) secret_file: Option<PathBuf>,
    pub(super) template: Option<String>,
    pub(super) min_interval: Option<DurationValue>,
    pub(super) timeout: Option<DurationValue>,
    pub(super) backoff: Option<DurationValue>,
    pub(super) give_up_after: Option<DurationValue>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSchedule {
    pub(super) upgrade: Option<CronValue>,
    pub(super) keys: Option<CronValue>,
    pub(super) audit: Option<CronValue>,
    pub(super) timezone: Option<String>,
    pub(super) jitter: Option<DurationValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (input, secs) in [
            ("60s", 60),
            ("15m", 900),
            ("3d", 259200),
            ("90d", 7776000),
            ("1d12h", 129600),
            ("2w", 1209600),
        ] {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_secs(secs)),
                "{input}"
            );
        }
        for bad in ["", "3", "d", "3x", "-1d", "99999999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
