//! The one `resolve` step: raw YAML shapes (`raw.rs`) into the immutable `Settings`, one config
//! section per function, in the file's order (the first error found is the one reported).

use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::VersionReq;

use super::cron::Zone;
use super::notify_url;
use super::playbook::{self, PlaybookName};
use super::raw::*;
use super::url::url_allowed;
use super::{
    line_of, Accept, Approval, AuditSettings, Channel, ConfigError, Enforce, KeyDelivery,
    KeySettings, LoadedPlaybook, MetricsSettings, NotifyTarget, Playbooks, Reach, Reconnect,
    ReconnectPolicy, ReleaseSettings, ReminderRouting, ScheduleSettings, Secret, Settings,
    SmokeCheck, SmokeSettings, StagingSettings, UserDestination, Window,
};
use crate::event::{self, Severity};

mod headscale;

use headscale::headscale;

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, key: &str, message: impl Into<String>, hint: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            key: Some(key.to_string()),
            line: line_of(self.text, key),
            message: message.into(),
            hint: Some(hint.into()).filter(|h: &String| !h.is_empty()),
        }
    }
    /// Relative paths are relative to the config file's directory.
    fn path(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() {
            p
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
    fn read_secret_file(
        &self,
        key: &str,
        p: &Path,
        check_mode: bool,
    ) -> Result<Secret, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(p).map_err(|e| {
            self.err(
                key,
                format!("cannot read {}: {e}", p.display()),
                "create the file or remove the key",
            )
        })?;
        if check_mode && meta.permissions().mode() & 0o077 != 0 {
            return Err(self.err(
                key,
                format!("{} is readable by group or others", p.display()),
                format!("chmod 600 {}", p.display()),
            ));
        }
        let text = std::fs::read_to_string(p).map_err(|e| {
            self.err(
                key,
                format!("cannot read {}: {e}", p.display()),
                "check the file's permissions",
            )
        })?;
        let value = text.trim();
        if value.is_empty() {
            return Err(self.err(
                key,
                format!("{} is empty", p.display()),
                "put the secret on the file's first line",
            ));
        }
        Ok(Secret::new(value))
    }
}

pub(super) fn resolve(file: &Path, text: &str, raw: RawConfig) -> Result<Settings, ConfigError> {
    let cx = Ctx { file, text };
    let state_dir = cx.path(
        raw.state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/headwarden")),
    );
    // One section per function, in the file's order (the first error found is the one reported).
    let release = release(&cx, raw.release)?;
    let headscale = headscale(&cx, raw.headscale)?;
    let smoke = smoke(&cx, raw.smoke)?;
    let keys = keys(&cx, raw.keys)?;
    let notify = raw
        .notify
        .into_iter()
        .map(|n| resolve_notify(&cx, n))
        .collect::<Result<Vec<_>, _>>()?;
    let notify_users = notify_users(&cx, raw.notify_users)?;
    let schedule = schedule(&cx, raw.schedule)?;
    let audit = audit(&cx, raw.audit)?;
    let playbooks = playbooks(&cx, raw.playbooks)?;
    let metrics = metrics(&cx, raw.metrics)?;
    let staging = staging(&cx, raw.staging)?;
    Ok(Settings {
        source: file.to_path_buf(),
        state_dir,
        release,
        headscale,
        staging,
        smoke,
        keys,
        notify,
        notify_users,
        schedule,
        metrics,
        playbooks,
        audit,
    })
}

fn release(cx: &Ctx<'_>, r: RawRelease) -> Result<ReleaseSettings, ConfigError> {
    let repo = r.repo.unwrap_or_else(|| "juanfont/headscale".into());
    let (owner, name) = repo
        .split_once('/')
        .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| {
            cx.err(
                "release.repo",
                format!("invalid repository {repo:?}"),
                "write it as owner/name, e.g. juanfont/headscale",
            )
        })?;
    let api_url = r
        .api_url
        .unwrap_or_else(|| "https://api.github.com".into())
        .trim_end_matches('/')
        .to_string();
    if !url_allowed(&api_url, r.allow_insecure_http) {
        return Err(cx.err(
            "release.api_url",
            format!("{api_url} is not https"),
            "use https; plain http is only accepted for loopback addresses with release.allow_insecure_http: true",
        ));
    }
    let token = match r.token_file {
        Some(p) => Some(cx.read_secret_file("release.token_file", &cx.path(p), true)?),
        None => None,
    };
    let channel = match r.channel.as_deref().unwrap_or("stable") {
        "stable" => Channel::Stable,
        "prerelease" => Channel::Prerelease,
        other => {
            return Err(cx.err(
                "release.channel",
                format!("unknown channel {other:?}"),
                "use stable or prerelease",
            ))
        }
    };
    let minisign_public_key = minisign_key(cx, r.minisign_public_key)?;
    // A configured key means signatures are required, unless the admin says otherwise.
    let require_signature = r.require_signature.unwrap_or(minisign_public_key.is_some());
    if require_signature && minisign_public_key.is_none() {
        return Err(cx.err(
            "release.require_signature",
            "require_signature is true but no minisign_public_key is set",
            "set release.minisign_public_key",
        ));
    }
    let approval = approval(cx, r.approval.as_ref())?;
    let window = r.window.as_ref().map(|w| window(cx, w)).transpose()?;
    let blackout = r
        .blackout
        .iter()
        .map(|d| {
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|_| {
                cx.err(
                    "release.blackout",
                    format!("{d:?} is not a date"),
                    "dates as YYYY-MM-DD",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ReleaseSettings {
        approval,
        window,
        blackout,
        owner: owner.to_string(),
        repo: name.to_string(),
        api_url,
        token,
        channel,
        constraint: r
            .constraint
            .map(|c| c.0)
            .unwrap_or_else(|| VersionReq::parse(">=0.26, <1.0").unwrap_or(VersionReq::STAR)),
        min_age: r.min_age.map_or(Duration::from_secs(3 * 86400), |d| d.0),
        skip: r.skip.into_iter().map(|v| v.0).collect(),
        pin: r.pin.map(|v| v.0),
        require_signature,
        minisign_public_key,
        allow_insecure_http: r.allow_insecure_http,
        keep_versions: r.keep_versions.unwrap_or(3).max(2),
        max_asset_size: r.max_asset_size_mb.unwrap_or(512) * 1024 * 1024,
        feed_timeout: r.feed_timeout.map_or(Duration::from_secs(30), |d| d.0),
        download_timeout: r.download_timeout.map_or(Duration::from_secs(600), |d| d.0),
    })
}

/// `release.minisign_public_key`: the key itself (`RW…`) or the path of a minisign `.pub` file.
fn minisign_key(cx: &Ctx<'_>, key: Option<String>) -> Result<Option<String>, ConfigError> {
    let minisign_public_key = match key {
        None => None,
        Some(k) if k.trim_start().starts_with("RW") => Some(k.trim().to_string()),
        Some(p) => {
            let path = cx.path(PathBuf::from(&p));
            let content = std::fs::read_to_string(&path).map_err(|e| {
                cx.err(
                    "release.minisign_public_key",
                    format!("cannot read {}: {e}", path.display()),
                    "give the key itself (RW…) or the path of a minisign .pub file",
                )
            })?;
            let key = content
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("RW"))
                .ok_or_else(|| {
                    cx.err(
                        "release.minisign_public_key",
                        format!("{} holds no minisign public key", path.display()),
                        "a .pub file has a comment line and a line starting with RW",
                    )
                })?;
            Some(key.to_string())
        }
    };
    if let Some(k) = &minisign_public_key {
        if minisign_verify::PublicKey::from_base64(k).is_err() {
            return Err(cx.err(
                "release.minisign_public_key",
                "not a valid minisign public key",
                "copy the RW… line from the signer's .pub file",
            ));
        }
    }
    Ok(minisign_public_key)
}

fn approval(cx: &Ctx<'_>, approval: Option<&RawApproval>) -> Result<Approval, ConfigError> {
    let manual = |v: Option<&str>| -> Result<bool, ConfigError> {
        match v {
            None | Some("auto") => Ok(false),
            Some("manual") => Ok(true),
            Some(other) => Err(cx.err(
                "release.approval",
                format!("unknown approval mode {other:?}"),
                "auto, manual, or per level: {patch: auto, minor: manual}",
            )),
        }
    };
    Ok(match approval {
        None => Approval::default(),
        Some(RawApproval::All(m)) => {
            let m = manual(Some(m))?;
            Approval {
                patch_manual: m,
                minor_manual: m,
            }
        }
        Some(RawApproval::Levels { patch, minor }) => Approval {
            patch_manual: manual(patch.as_deref())?,
            minor_manual: manual(minor.as_deref())?,
        },
    })
}

fn window(cx: &Ctx<'_>, w: &RawWindow) -> Result<Window, ConfigError> {
    let days = if w.days.is_empty() {
        vec![
            chrono::Weekday::Mon,
            chrono::Weekday::Tue,
            chrono::Weekday::Wed,
            chrono::Weekday::Thu,
            chrono::Weekday::Fri,
            chrono::Weekday::Sat,
            chrono::Weekday::Sun,
        ]
    } else {
        w.days
            .iter()
            .map(|d| {
                d.parse::<chrono::Weekday>().map_err(|_| {
                    cx.err(
                        "release.window",
                        format!("unknown day {d:?}"),
                        "days are mon, tue, wed, thu, fri, sat, sun",
                    )
                })
            })
            .collect::<Result<_, _>>()?
    };
    let start = chrono::NaiveTime::parse_from_str(&w.start, "%H:%M").map_err(|_| {
        cx.err(
            "release.window",
            format!("start {:?} is not HH:MM", w.start),
            "e.g. start: \"02:00\"",
        )
    })?;
    if w.duration.0.is_zero() || w.duration.0 > Duration::from_secs(7 * 86400) {
        return Err(cx.err(
            "release.window",
            "duration must be between 1s and 7d",
            "e.g. duration: 4h",
        ));
    }
    let timezone = match &w.timezone {
        None => None,
        Some(z) => Some(Zone::parse(Some(z)).map_err(|e| {
            cx.err(
                "release.window",
                e.to_string(),
                "an IANA zone name such as Europe/Berlin; unset: schedule.timezone",
            )
        })?),
    };
    Ok(Window {
        days,
        start,
        duration: w.duration.0,
        timezone,
    })
}

fn smoke(cx: &Ctx<'_>, s: RawSmoke) -> Result<SmokeSettings, ConfigError> {
    let checks = match s.checks {
        None => SmokeCheck::ALL.to_vec(),
        Some(list) => list
            .iter()
            .map(|c| {
                SmokeCheck::ALL
                    .into_iter()
                    .find(|k| k.name() == c)
                    .ok_or_else(|| {
                        cx.err(
                            "smoke.checks",
                            format!("unknown check {c:?}"),
                            "known checks: health, version, noise_key, data_parity, connectivity",
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    if s.commands.iter().any(Vec::is_empty) {
        return Err(cx.err(
            "smoke.commands",
            "an empty command",
            "each command is an argv list, e.g. [/usr/bin/tailscale, ping, -c, '1', node]",
        ));
    }
    if let Some(c) = s.commands.iter().find(|c| !c[0].starts_with('/')) {
        return Err(cx.err(
            "smoke.commands",
            format!("{:?} is not an absolute path", c[0]),
            "give the program's full path, e.g. [/usr/bin/tailscale, ping, -c, '1', node]",
        ));
    }
    let r = s.reconnect;
    let min_ratio = r.min_ratio.unwrap_or(0.9);
    if !(0.0..=1.0).contains(&min_ratio) {
        return Err(cx.err(
            "smoke.reconnect.min_ratio",
            format!("{min_ratio} is not a ratio"),
            "a number from 0 (off) to 1, e.g. 0.9",
        ));
    }
    let on_failure = match r.on_failure.as_deref().unwrap_or("rollback") {
        "rollback" => ReconnectPolicy::Rollback,
        "alert" => ReconnectPolicy::Alert,
        other => {
            return Err(cx.err(
                "smoke.reconnect.on_failure",
                format!("unknown policy {other:?}"),
                "rollback (the default) or alert",
            ))
        }
    };
    Ok(SmokeSettings {
        timeout: s.timeout.map_or(Duration::from_secs(60), |d| d.0),
        checks,
        commands: s.commands,
        reconnect: Reconnect {
            within: r.within.map_or(Duration::from_secs(180), |d| d.0),
            min_ratio,
            min_nodes: r.min_nodes.unwrap_or(3),
            on_failure,
        },
    })
}

fn keys(cx: &Ctx<'_>, k: RawKeys) -> Result<KeySettings, ConfigError> {
    let keys = KeySettings {
        max_age: k.max_age.map_or(Duration::from_secs(90 * 86400), |d| d.0),
        remind_before: k.remind_before.map_or_else(
            || {
                vec![
                    Duration::from_secs(14 * 86400),
                    Duration::from_secs(7 * 86400),
                    Duration::from_secs(86400),
                ]
            },
            |v| v.into_iter().map(|d| d.0).collect(),
        ),
        grace: k.grace.map_or(Duration::from_secs(7 * 86400), |d| d.0),
        enforce: match k.enforce.as_deref().unwrap_or("remind") {
            "remind" => Enforce::Remind,
            "expire" => Enforce::Expire,
            other => {
                return Err(cx.err(
                    "keys.enforce",
                    format!("unknown enforcement {other:?}"),
                    "use remind or expire",
                ))
            }
        },
        exempt_tags: k.exempt_tags.unwrap_or_else(|| vec!["tag:server".into()]),
        exempt_users: k.exempt_users,
        exempt_nodes: k.exempt_nodes,
        per_tag: k.per_tag.into_iter().map(|(t, d)| (t, d.0)).collect(),
        key_lifetime: k
            .key_lifetime
            .map_or(Duration::from_secs(7 * 86400), |d| d.0),
        remove_stale_duplicates: k.remove_stale_duplicates,
        inactive_after: k
            .inactive_after
            .map_or(Duration::from_secs(30 * 86400), |d| d.0),
        api_key_rotate_before: k
            .api_key_rotate_before
            .map_or(Duration::from_secs(14 * 86400), |d| d.0),
        api_key_lifetime: k
            .api_key_lifetime
            .map_or(Duration::from_secs(90 * 86400), |d| d.0),
        login_server: match k.login_server {
            Some(u) if !url_allowed(&u, true) => {
                return Err(cx.err(
                    "keys.login_server",
                    format!("{u:?} is not an https URL (http only on loopback)"),
                    "the URL clients log in to, as in `tailscale up --login-server https://headscale.example.com`",
                ))
            }
            other => other.map(|u| u.trim_end_matches('/').to_string()),
        },
    };
    if keys.max_age.is_zero() {
        return Err(cx.err(
            "keys.max_age",
            "max_age must be longer than zero",
            "e.g. max_age: 90d",
        ));
    }
    if keys.remind_before.iter().any(|r| *r >= keys.max_age) {
        return Err(cx.err(
            "keys.remind_before",
            "a reminder stage is not shorter than max_age",
            "stages count back from the deadline, e.g. [14d, 7d, 1d] with max_age: 90d",
        ));
    }
    Ok(keys)
}

fn notify_users(
    cx: &Ctx<'_>,
    users: std::collections::BTreeMap<String, String>,
) -> Result<std::collections::BTreeMap<String, UserDestination>, ConfigError> {
    let mut notify_users = std::collections::BTreeMap::new();
    for (user, url) in users {
        let targets = notify_url::targets(&url, None).map_err(|e| {
            cx.err(
                "notify_users",
                format!("destination for user {user:?}: {e}"),
                e.hint(),
            )
        })?;
        notify_users.insert(
            user,
            UserDestination {
                url: Secret::new(url),
                targets,
            },
        );
    }
    Ok(notify_users)
}

fn schedule(cx: &Ctx<'_>, s: RawSchedule) -> Result<ScheduleSettings, ConfigError> {
    let timezone = Zone::parse(s.timezone.as_deref()).map_err(|e| {
        cx.err(
            "schedule.timezone",
            e.to_string(),
            "use an IANA zone name (Europe/Berlin, America/New_York, UTC), or leave it unset (or `local`) for the host's time zone, as crontab does",
        )
    })?;
    Ok(ScheduleSettings {
        upgrade: s.upgrade.map(|c| c.0),
        keys: s.keys.map(|c| c.0),
        audit: s.audit.map(|c| c.0),
        timezone,
        jitter: s.jitter.map_or(Duration::ZERO, |d| d.0),
    })
}

/// A playbook from `path` (or the built-in `default`), checked, and named `name`.
fn load_playbook(
    cx: &Ctx<'_>,
    key: &str,
    path: Option<PathBuf>,
    name: PlaybookName,
    default: &str,
) -> Result<LoadedPlaybook, ConfigError> {
    let (text, shown) = match path {
        None => (default.to_string(), None),
        Some(p) => {
            let p = cx.path(p);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| cx.err(key, format!("cannot read {}: {e}", p.display()), ""))?;
            (text, Some(p))
        }
    };
    let pb = playbook::check(&text).map_err(|refused| {
        cx.err(
            key,
            format!("playbook refused: {refused}"),
            "`headwarden playbook check FILE` explains each refusal",
        )
    })?;
    if pb.name != name {
        return Err(cx.err(
            key,
            format!(
                "this is the {:?} playbook, not {:?}",
                pb.name.as_str(),
                name.as_str()
            ),
            "",
        ));
    }
    Ok(LoadedPlaybook {
        playbook: pb,
        path: shown,
    })
}

fn audit(cx: &Ctx<'_>, a: RawAudit) -> Result<AuditSettings, ConfigError> {
    let mut reachability = Vec::new();
    for (i, r) in a.reachability.into_iter().enumerate() {
        let allow = match r.expect.as_str() {
            "allow" => true,
            "deny" => false,
            other => {
                return Err(cx.err(
                    "audit.reachability",
                    format!("entry {}: expect {other:?} is not allow or deny", i + 1),
                    "each entry: {from: group:dev, to: tag:server, port: 22, expect: deny}",
                ))
            }
        };
        reachability.push(Reach {
            from: r.from,
            to: r.to,
            port: r.port,
            allow,
        });
    }
    let mut accept = Vec::new();
    for r in a.accept {
        let until = chrono::NaiveDate::parse_from_str(&r.until, "%Y-%m-%d").map_err(|_| {
            cx.err(
                "audit.accept",
                format!("{}: until {:?} is not a date", r.id, r.until),
                "every acceptance expires: until: YYYY-MM-DD",
            )
        })?;
        if r.reason.trim().is_empty() {
            return Err(cx.err(
                "audit.accept",
                format!("{}: an acceptance needs a reason", r.id),
                "say why the risk is accepted, so the next admin knows",
            ));
        }
        accept.push(Accept {
            id: r.id,
            until,
            reason: r.reason,
        });
    }
    let days = |d: Option<DurationValue>, n: u64| d.map_or(Duration::from_secs(n * 86400), |d| d.0);
    let audit_playbook = load_playbook(
        cx,
        "audit.playbook",
        a.playbook,
        PlaybookName::Audit,
        playbook::DEFAULT_AUDIT,
    )?;
    Ok(AuditSettings {
        max_preauth_key_lifetime: days(a.max_preauth_key_lifetime, 7),
        unused_preauth_key_after: days(a.unused_preauth_key_after, 3),
        api_key_unused_after: days(a.api_key_unused_after, 90),
        inactive_after: days(a.inactive_after, 30),
        allowed_tags: a.allowed_tags,
        allowed_nameservers: a.allowed_nameservers,
        inventory: a.inventory.map(|p| cx.path(p)),
        service_user: a.service_user,
        reachability,
        accept,
        playbook: audit_playbook,
    })
}

fn playbooks(cx: &Ctx<'_>, p: RawPlaybooks) -> Result<Playbooks, ConfigError> {
    Ok(Playbooks {
        upgrade: load_playbook(
            cx,
            "playbooks.upgrade",
            p.upgrade,
            PlaybookName::Upgrade,
            playbook::DEFAULT_UPGRADE,
        )?,
        rotate_keys: load_playbook(
            cx,
            "playbooks.rotate_keys",
            p.rotate_keys,
            PlaybookName::RotateKeys,
            playbook::DEFAULT_ROTATE_KEYS,
        )?,
    })
}

fn metrics(cx: &Ctx<'_>, m: RawMetrics) -> Result<MetricsSettings, ConfigError> {
    Ok(MetricsSettings {
        textfile: m.textfile.map(|p| cx.path(p)),
        listen: match &m.listen {
            None => None,
            Some(a) => {
                let addr: std::net::SocketAddr = a.parse().map_err(|_| {
                    cx.err(
                        "metrics.listen",
                        format!("{a:?} is not an address with a port"),
                        "e.g. 127.0.0.1:9841",
                    )
                })?;
                if !addr.ip().is_loopback() {
                    return Err(cx.err(
                        "metrics.listen",
                        format!("{a} is not a loopback address"),
                        "metrics are served on 127.0.0.1 or [::1] only; put a reverse proxy in front to expose them",
                    ));
                }
                Some(addr)
            }
        },
    })
}

fn staging(cx: &Ctx<'_>, s: RawStaging) -> Result<StagingSettings, ConfigError> {
    let staging = StagingSettings {
        overlay: s.overlay.map(|p| cx.path(p)),
    };
    if let Some(o) = &staging.overlay {
        if !o.exists() {
            return Err(cx.err(
                "staging.overlay",
                format!("{} does not exist", o.display()),
                "create it or remove staging.overlay",
            ));
        }
    }
    Ok(staging)
}

fn resolve_notify(cx: &Ctx<'_>, n: RawNotify) -> Result<NotifyTarget, ConfigError> {
    if let Some(e) = &n.endpoint {
        if !url_allowed(e, true) {
            return Err(cx.err(
                "notify.endpoint",
                format!("endpoint {e:?} is neither https nor plain http to a loopback address"),
                "use https://…, or http://127.0.0.1:PORT for a local relay",
            ));
        }
    }
    let targets = notify_url::targets(&n.url, n.endpoint.as_deref())
        .map_err(|e| cx.err("notify.url", e.to_string(), e.hint()))?;
    for ev in &n.events {
        if !event::known_event(ev) {
            return Err(cx.err(
                "notify.events",
                format!("unknown event {ev:?}"),
                format!(
                    "use families {} or exact events such as keys.reminder",
                    event::FAMILIES.join(", ")
                ),
            ));
        }
    }
    let min_severity = match n.min_severity.as_deref() {
        None => Severity::Info,
        Some(v) => Severity::parse(v).ok_or_else(|| {
            cx.err(
                "notify.min_severity",
                format!("unknown severity {v:?}"),
                "info, warning or critical",
            )
        })?,
    };
    let reminders = match n.reminders.as_deref() {
        None | Some("all") => ReminderRouting::All,
        Some("unrouted") => ReminderRouting::Unrouted,
        Some(v) => {
            return Err(cx.err(
                "notify.reminders",
                format!("unknown value {v:?}"),
                "all (every reminder) or unrouted (only users without a notify_users entry)",
            ))
        }
    };
    let one_time_keys = match n.one_time_keys.as_deref() {
        None | Some("withhold") => KeyDelivery::Withhold,
        Some("include") => KeyDelivery::Include,
        Some(v) => {
            return Err(cx.err(
                "notify.one_time_keys",
                format!("unknown value {v:?}"),
                "withhold (the default: keys go only to the owner's notify_users destination) or include",
            ))
        }
    };
    let secret = match (n.secret, n.secret_file) {
        (Some(_), Some(_)) => {
            return Err(cx.err(
                "notify.secret_file",
                "both secret and secret_file are set",
                "keep one",
            ))
        }
        (Some(v), None) => Some(Secret::new(v)),
        (None, Some(p)) => Some(cx.read_secret_file("notify.secret_file", &cx.path(p), true)?),
        (None, None) => None,
    };
    Ok(NotifyTarget {
        url: Secret::new(n.url),
        targets,
        events: n.events,
        min_severity,
        reminders,
        one_time_keys,
        mentions: n.mentions,
        endpoint: n.endpoint,
        secret,
        template: n.template,
        min_interval: n.min_interval.map(|d| d.0),
        timeout: n.timeout.map_or(Duration::from_secs(10), |d| d.0),
        backoff: n.backoff.map_or(Duration::from_secs(30), |d| d.0),
        give_up_after: n.give_up_after.map_or(Duration::from_secs(86400), |d| d.0),
    })
}
