//! `headwarden audit`: the seed mitigations as checks a machine runs on schedule.
//!
//! Every finding has a stable id (`check` or `check:subject`), a severity, evidence, the seed
//! mitigation it implements and a fix. The checks are grouped into the steps of the audit
//! playbook (`playbooks/audit.yaml`): version, config, files, enrollment, nodes, policy, dns.
//! They only read. The `report` step applies `audit.accept`, stores the result and queues one
//! `audit.drift` event with what changed since the last audit (new and resolved findings);
//! an unchanged posture sends nothing.

pub mod policy;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use crate::deploy;
use crate::error::error_chain;
use crate::event::{Event, Severity};
use crate::headscale::api;
use crate::headscale::api::{ApiClient, ApiKeyInfo};
use crate::headscale::config;
use crate::headscale::config::HeadscaleConfig;
use crate::hook;
use crate::notify;
use crate::release::notes;
use crate::release::watch::{self, UpgradeOptions};
use crate::settings;
use crate::settings::playbook::{self, OnFailure, StepKind};
use crate::settings::Settings;
use crate::state;
use crate::state::{now, Store};
use crate::verify;

/// The seed mitigations the checks implement (shared/seeds).
pub mod mitigation {
    pub const UPDATED: &str = "Keep Headscale updated";
    pub const CONFIG: &str = "Secure configuration";
    pub const ENROLLMENT: &str = "Controlled node enrollment";
    pub const AUTH: &str = "Strong authentication for node registration";
    pub const NODE_AUDIT: &str = "Regular node audits";
    pub const ACL: &str = "Network segmentation with ACLs";
    pub const DNS: &str = "Secure DNS configuration";
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub id: String,
    pub check: String,
    #[serde(serialize_with = "severity_str")]
    pub severity: Severity,
    pub title: String,
    pub evidence: String,
    pub mitigation: &'static str,
    pub fix: String,
    /// Set when `audit.accept` covers it (until, reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted: Option<Accepted>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub until: String,
    pub reason: String,
}

fn severity_str<S: serde::Serializer>(s: &Severity, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.as_str())
}

fn finding(
    check: &str,
    subject: Option<&str>,
    severity: Severity,
    title: String,
    evidence: String,
    mitigation: &'static str,
    fix: &str,
) -> Finding {
    Finding {
        id: match subject {
            Some(s) => format!("{check}:{s}"),
            None => check.to_string(),
        },
        check: check.to_string(),
        severity,
        title,
        evidence,
        mitigation,
        fix: fix.to_string(),
        accepted: None,
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub generated_at: String,
    pub headscale_version: Option<String>,
    /// Findings that count (not accepted), most severe first.
    pub findings: Vec<Finding>,
    /// Findings covered by an unexpired `audit.accept` entry.
    pub accepted: Vec<Finding>,
    /// Checks that could not run, with the reason.
    pub skipped: Vec<Skipped>,
    /// Ids new since the last audit, and ids resolved since then.
    pub new: Vec<String>,
    pub resolved: Vec<String>,
    /// Acceptances past their date (the finding counts again).
    pub expired_acceptances: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Skipped {
    pub step: String,
    pub reason: String,
}

impl Report {
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

/// Why a check could not run: it is listed under `skipped` with this text, and its findings
/// from the last audit are carried forward instead of being reported resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl From<String> for Unavailable {
    fn from(s: String) -> Self {
        Unavailable(s)
    }
}

/// Why the audit as a whole failed: a step that may not be skipped could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit step {step} ({name}): {reason}")]
    Step {
        step: usize,
        name: &'static str,
        reason: Unavailable,
    },
}

/// Everything the checks read, fetched once.
struct Ctx<'a> {
    s: &'a Settings,
    store: &'a Store,
    config: Option<HeadscaleConfig>,
    version: Option<semver::Version>,
    api: Option<Result<ApiClient, Unavailable>>,
}

impl Ctx<'_> {
    fn config(&self) -> Result<&HeadscaleConfig, Unavailable> {
        self.config
            .as_ref()
            .ok_or_else(|| format!("cannot read {}", self.s.headscale.config.display()).into())
    }
    async fn api(&mut self) -> Result<&ApiClient, Unavailable> {
        if self.api.is_none() {
            self.api = Some(
                ApiClient::connect(self.s)
                    .await
                    .map_err(|e| format!("no API access: {}", error_chain(&e)).into()),
            );
        }
        match self.api.as_ref() {
            Some(Ok(a)) => Ok(a),
            Some(Err(e)) => Err(e.clone()),
            None => Err(Unavailable("no API access".into())),
        }
    }
}

/// Runs the audit playbook. `Ok` even when some checks were skipped (they are listed).
pub async fn run(s: &Settings, store: &Store) -> Result<Report, AuditError> {
    let config = deploy::production::audited_config(s).await;
    let version = deploy::current_version(s).await.ok();
    let mut ctx = Ctx {
        s,
        store,
        config,
        version: version.clone(),
        api: None,
    };
    let mut report = Report {
        schema: "headwarden.audit/v1",
        generated_at: state::rfc3339(now()),
        headscale_version: version.map(|v| v.to_string()),
        ..Report::default()
    };
    let mut found: Vec<Finding> = Vec::new();
    let mut ran: BTreeSet<String> = BTreeSet::new();
    let pb = &s.audit.playbook.playbook;
    for (i, step) in pb.steps.iter().enumerate() {
        let name = step.kind.as_str();
        let result = match step.kind {
            StepKind::Version => version_checks(&ctx).await,
            StepKind::Config => ctx.config().map(|c| {
                let mut f = config_checks(c, ctx.version.as_ref());
                // What the next minor refuses (the planner's knowledge table).
                if let Some(v) = &ctx.version {
                    f.extend(next_minor_checks(c, v));
                }
                f
            }),
            StepKind::Files => ctx.config().and_then(|c| {
                file_checks(
                    c,
                    s.headscale.api_key_file.as_deref(),
                    s.audit.service_user.as_deref(),
                )
            }),
            StepKind::Enrollment => enrollment_checks(&mut ctx).await,
            StepKind::Nodes => node_checks(&mut ctx).await,
            StepKind::Policy => policy_checks(&mut ctx).await,
            StepKind::Dns => ctx
                .config()
                .map(|c| dns_checks(c, s.audit.allowed_nameservers.as_deref())),
            StepKind::Report => {
                finish(s, store, &mut report, std::mem::take(&mut found), &ran).map(|()| vec![])
            }
            StepKind::Notify => {
                notify::notify_step(s, store, step).await;
                Ok(vec![])
            }
            StepKind::Hook => {
                let ctx = json!({
                    "playbook": "audit",
                    "step": i + 1,
                    "findings": report.findings.len(),
                    "new": report.new.len(),
                    "resolved": report.resolved.len(),
                    "worst": report.worst().map(Severity::as_str),
                });
                hook::run(step, &ctx)
                    .await
                    .map(|_| vec![])
                    .map_err(|e| Unavailable(e.to_string()))
            }
            other => Err(Unavailable(format!(
                "step {:?} is not in the audit catalogue",
                other.as_str()
            ))),
        };
        match result {
            Ok(f) => {
                if playbook::AUDIT_CHECKS.contains(&name) {
                    ran.insert(name.to_string());
                }
                found.extend(f);
            }
            Err(reason) if step.on_failure() == OnFailure::Continue => {
                report.skipped.push(Skipped {
                    step: name.to_string(),
                    reason: reason.0,
                });
            }
            Err(reason) => {
                return Err(AuditError::Step {
                    step: i + 1,
                    name,
                    reason,
                })
            }
        }
    }
    Ok(report)
}

/// Each finding is open, accepted (`audit.accept`, not expired) or re-opened by an expired
/// acceptance; duplicates are dropped.
fn apply_acceptances(s: &Settings, report: &mut Report, found: Vec<Finding>) {
    let today = chrono::Utc::now().date_naive();
    let mut seen = BTreeSet::new();
    for mut f in found {
        if !seen.insert(f.id.clone()) {
            continue;
        }
        let acceptance = s
            .audit
            .accept
            .iter()
            .find(|a| a.id == f.id || a.id == f.check);
        match acceptance {
            Some(a) if a.until >= today => {
                f.accepted = Some(Accepted {
                    until: a.until.to_string(),
                    reason: a.reason.clone(),
                });
                report.accepted.push(f);
            }
            Some(a) => {
                report.expired_acceptances.push(format!(
                    "{} (accepted until {}: {})",
                    f.id, a.until, a.reason
                ));
                report.findings.push(f);
            }
            None => report.findings.push(f),
        }
    }
}

/// One `audit.drift` event with the new and resolved findings (a baseline the first time).
fn drift_event(
    store: &Store,
    report: &Report,
    previous: &BTreeMap<String, Value>,
    current: &BTreeMap<String, Value>,
    first: bool,
) -> Result<(), state::StateError> {
    let by_id = |id: &String| -> String {
        let v = &current
            .get(id)
            .or_else(|| previous.get(id))
            .cloned()
            .unwrap_or_default();
        format!(
            "[{}] {} ({id})",
            v["severity"].as_str().unwrap_or("?"),
            v["title"].as_str().unwrap_or("")
        )
    };
    let severity = report
        .new
        .iter()
        .filter_map(|id| current.get(id))
        .filter_map(|v| v["severity"].as_str().and_then(Severity::parse))
        .max()
        .unwrap_or(Severity::Info);
    let summary = if first {
        format!("Security audit baseline: {} finding(s)", report.new.len())
    } else {
        format!(
            "Security audit: {} new finding(s), {} resolved",
            report.new.len(),
            report.resolved.len()
        )
    };
    store.push_event(
        Event::AuditDrift,
        severity,
        &json!({
            "summary": summary,
            "new": report.new.iter().map(by_id).collect::<Vec<_>>(),
            "resolved": report.resolved.iter().map(by_id).collect::<Vec<_>>(),
            "how": "`headwarden audit` shows evidence and fixes",
        }),
    )
}

/// The `report` step: acceptances, ordering, drift against the stored result, one event.
fn finish(
    s: &Settings,
    store: &Store,
    report: &mut Report,
    found: Vec<Finding>,
    ran: &BTreeSet<String>,
) -> Result<(), Unavailable> {
    apply_acceptances(s, report, found);
    report
        .findings
        .sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(&b.id)));

    // Drift: compare with the last stored result. Findings of a check that did not run this
    // time are carried over, so an unreachable API does not read as "everything resolved".
    let err = |e: state::StateError| e.to_string();
    let previous: BTreeMap<String, Value> = store
        .kv_get("audit.last")
        .map_err(err)?
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    // Open and accepted findings are both stored; accepting one is not "resolved", and an
    // acceptance that expires makes it new again.
    let mut current: BTreeMap<String, Value> = BTreeMap::new();
    for (f, accepted) in report
        .findings
        .iter()
        .map(|f| (f, false))
        .chain(report.accepted.iter().map(|f| (f, true)))
    {
        current.insert(
            f.id.clone(),
            json!({"severity": f.severity.as_str(), "title": f.title, "step": step_of(&f.check), "accepted": accepted}),
        );
    }
    for (id, v) in &previous {
        let step = v["step"].as_str().unwrap_or("");
        if !ran.contains(step) && !current.contains_key(id) {
            current.insert(id.clone(), v.clone());
        }
    }
    let open = |m: &BTreeMap<String, Value>| -> BTreeSet<String> {
        m.iter()
            .filter(|(_, v)| v["accepted"].as_bool() != Some(true))
            .map(|(k, _)| k.clone())
            .collect()
    };
    let (prev_open, cur_open) = (open(&previous), open(&current));
    let first = store.kv_get("audit.last_at").map_err(err)?.is_none();
    report.new = cur_open.difference(&prev_open).cloned().collect();
    report.resolved = prev_open
        .iter()
        .filter(|id| !current.contains_key(*id))
        .cloned()
        .collect();
    store
        .kv_set(
            "audit.last",
            &serde_json::to_string(&current).map_err(|e| e.to_string())?,
        )
        .map_err(err)?;
    store
        .kv_set("audit.last_at", &now().to_string())
        .map_err(err)?;
    let mut counts = BTreeMap::new();
    for f in &report.findings {
        *counts.entry(f.severity.as_str()).or_insert(0u64) += 1;
    }
    store
        .kv_set("audit.counts", &json!(counts).to_string())
        .map_err(err)?;
    if report.new.is_empty() && report.resolved.is_empty() {
        return Ok(());
    }
    Ok(drift_event(store, report, &previous, &current, first).map_err(err)?)
}

/// Which playbook step a check belongs to (its id's first segment).
fn step_of(check: &str) -> &str {
    check.split('.').next().unwrap_or(check)
}

// ---------------------------------------------------------------------------------------------
// version

async fn version_checks(ctx: &Ctx<'_>) -> Result<Vec<Finding>, Unavailable> {
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
    let current = deploy::current_version(s)
        .await
        .map_err(|e| error_chain(&e))?;
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
    let prod_config = deploy::production_config(s)
        .await
        .map_err(|e| error_chain(&e))?;
    let (report, releases) = watch::fetch_and_plan(
        s,
        ctx.store,
        current,
        &prod_config,
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

// ---------------------------------------------------------------------------------------------
// config

/// The host part of `host:port` (`[::1]:8080` → `::1`; `:8080` → empty).
fn host_of(addr: &str) -> &str {
    let a = addr.trim();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    a.rsplit_once(':').map_or(a, |(h, _)| h)
}

fn is_loopback_host(h: &str) -> bool {
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn str_at(root: &serde_yaml_ng::Value, key: &str) -> Option<String> {
    config::get_str(root, key)
}

/// `version`: production's, for defaults that changed (unknown: the older default).
fn config_checks(c: &HeadscaleConfig, version: Option<&semver::Version>) -> Vec<Finding> {
    let r = &c.root;
    let file = c.path.display().to_string();
    let mut out = Vec::new();
    let exposed = |addr: &str| -> bool {
        let h = host_of(addr);
        !addr.is_empty() && !is_loopback_host(h)
    };
    if exposed(&c.listen_addr) && !c.serves_tls {
        out.push(finding(
            "config.listen_addr_exposed",
            None,
            Severity::Warning,
            format!("Headscale listens on {} without terminating TLS itself", c.listen_addr),
            format!("{file}: listen_addr: {}", c.listen_addr),
            mitigation::CONFIG,
            "bind to 127.0.0.1:8080 behind the TLS reverse proxy (or configure tls_cert_path / Let's Encrypt)",
        ));
    }
    if let Some(m) = str_at(r, "metrics_listen_addr").filter(|m| exposed(m)) {
        out.push(finding(
            "config.metrics_exposed",
            None,
            Severity::Warning,
            format!("metrics and debug endpoints are reachable on {m}"),
            format!("{file}: metrics_listen_addr: {m}"),
            mitigation::CONFIG,
            "metrics_listen_addr: 127.0.0.1:9090 (scrape locally or through a tunnel)",
        ));
    }
    let insecure = str_at(r, "grpc_allow_insecure").as_deref() == Some("true");
    // Upstream's default is `:50443` (all interfaces) when the key is absent (removed in 0.30).
    let grpc = str_at(r, "grpc_listen_addr").or_else(|| {
        version
            .is_none_or(|v| (v.major, v.minor) < (0, 30))
            .then(|| ":50443".to_string())
    });
    let shown = if str_at(r, "grpc_listen_addr").is_some() {
        ""
    } else {
        " (the default: the key is absent)"
    };
    if let Some(g) = grpc.as_deref().filter(|g| exposed(g)) {
        out.push(finding(
            "config.grpc_exposed",
            None,
            if insecure { Severity::Critical } else { Severity::Warning },
            if insecure {
                format!("the gRPC admin API listens on {g} without TLS (grpc_allow_insecure: true)")
            } else {
                format!("the gRPC admin API listens on {g}")
            },
            format!("{file}: grpc_listen_addr: {g}{shown}, grpc_allow_insecure: {insecure}"),
            mitigation::CONFIG,
            "grpc_listen_addr: 127.0.0.1:50443 and grpc_allow_insecure: false; manage through the unix socket",
        ));
    }
    let url = &c.server_url;
    if !url.starts_with("https://") {
        let local = is_loopback_host(host_of(
            url.split_once("://")
                .map_or("", |(_, r)| r.split('/').next().unwrap_or("")),
        ));
        out.push(finding(
            "config.server_url_not_https",
            None,
            if local { Severity::Info } else { Severity::Critical },
            format!("server_url {url} is not https"),
            format!("{file}: server_url: {url}"),
            mitigation::CONFIG,
            "serve Headscale over https (reverse proxy or tls_cert_path) and set server_url to the https URL",
        ));
    }
    let level = str_at(r, "log.level").unwrap_or_default().to_lowercase();
    if matches!(level.as_str(), "debug" | "trace") {
        out.push(finding(
            "config.log_verbose",
            None,
            Severity::Warning,
            format!("log level {level} in production"),
            format!("{file}: log.level: {level}"),
            mitigation::CONFIG,
            "log.level: info (debug logs carry node and key details)",
        ));
    }
    if let Some(p) = str_at(r, "unix_socket_permission") {
        match u32::from_str_radix(p.trim_start_matches("0o"), 8) {
            Ok(mode) if mode & 0o007 != 0 => out.push(finding(
                "config.socket_permission",
                None,
                Severity::Critical,
                format!("the admin socket is open to every local user (mode {p})"),
                format!("{file}: unix_socket_permission: \"{p}\""),
                mitigation::CONFIG,
                "unix_socket_permission: \"0770\" (anyone who can open the socket is an admin)",
            )),
            _ => {}
        }
    }
    out
}

/// Keys in `c` that the next minor release refuses to start with.
fn next_minor_checks(c: &HeadscaleConfig, current: &semver::Version) -> Vec<Finding> {
    let next = semver::Version::new(current.major, current.minor + 1, 0);
    config::incompatibilities(c, &next)
        .into_iter()
        .filter(|p| p.since > *current)
        .map(|p| {
            finding(
                "config.next_minor_incompatible",
                Some(&p.key),
                Severity::Warning,
                format!("`{}` stops Headscale {} from starting", p.key, next),
                format!("{}: {} (since {})", c.path.display(), p.key, p.since),
                mitigation::UPDATED,
                &p.fix,
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// files

fn resolve(c: &HeadscaleConfig, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        c.path.parent().unwrap_or(Path::new("/")).join(p)
    }
}

fn file_checks(
    c: &HeadscaleConfig,
    api_key_file: Option<&Path>,
    service_user: Option<&str>,
) -> Result<Vec<Finding>, Unavailable> {
    use std::os::unix::fs::MetadataExt;
    let r = &c.root;
    // (path, what, secret)
    let mut files: Vec<(PathBuf, &str, bool)> = vec![
        (c.path.clone(), "Headscale config", false),
        (c.noise_key_path.clone(), "Noise private key", true),
        (c.database_path.clone(), "database", true),
    ];
    for suffix in ["-wal", "-shm"] {
        let mut p = c.database_path.as_os_str().to_owned();
        p.push(suffix);
        files.push((PathBuf::from(p), "database journal", true));
    }
    if str_at(r, "derp.server.enabled").as_deref() == Some("true") {
        if let Some(p) = str_at(r, "derp.server.private_key_path") {
            files.push((resolve(c, &p), "DERP private key", true));
        }
    }
    if let Some(p) = str_at(r, "tls_key_path").filter(|p| !p.is_empty()) {
        files.push((resolve(c, &p), "TLS private key", true));
    }
    if let Some(p) = str_at(r, "policy.path").filter(|p| !p.is_empty()) {
        files.push((resolve(c, &p), "policy file", false));
    }
    if let Some(p) = api_key_file {
        files.push((p.to_path_buf(), "headwarden's API key file", true));
    }
    let owner = match service_user {
        Some(u) => Some((
            u.to_string(),
            nix::unistd::User::from_name(u)
                .ok()
                .flatten()
                .map(|x| x.uid.as_raw())
                .ok_or_else(|| format!("audit.service_user {u:?} does not exist on this host"))?,
        )),
        None => None,
    };
    let mut out = Vec::new();
    for (path, what, secret) in files {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.mode() & 0o777;
        let shown = path.display().to_string();
        if mode & 0o002 != 0 {
            out.push(finding(
                "files.world_writable",
                Some(&shown),
                Severity::Critical,
                format!("the {what} is writable by every local user"),
                format!("{shown}: mode {mode:04o}"),
                mitigation::CONFIG,
                &format!("chmod o-w {shown}"),
            ));
        }
        if mode & 0o004 != 0 {
            out.push(finding(
                "files.world_readable",
                Some(&shown),
                if secret {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                format!("the {what} is readable by every local user"),
                format!("{shown}: mode {mode:04o}"),
                mitigation::CONFIG,
                &format!("chmod {} {shown}", if secret { "600" } else { "640" }),
            ));
        } else if secret && mode & 0o040 != 0 {
            out.push(finding(
                "files.group_readable",
                Some(&shown),
                Severity::Warning,
                format!("the {what} is readable by its group"),
                format!("{shown}: mode {mode:04o}, gid {}", meta.gid()),
                mitigation::CONFIG,
                &format!("chmod 600 {shown}"),
            ));
        }
        if let Some((name, uid)) = &owner {
            if meta.uid() != *uid && meta.uid() != 0 {
                out.push(finding(
                    "files.wrong_owner",
                    Some(&shown),
                    Severity::Warning,
                    format!("the {what} is not owned by {name}"),
                    format!(
                        "{shown}: uid {}, expected {uid} ({name}) or root",
                        meta.uid()
                    ),
                    mitigation::CONFIG,
                    &format!("chown {name} {shown}"),
                ));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// enrollment (API)

fn days(secs: i64) -> i64 {
    secs / 86400
}

/// API keys that never expire or that nothing uses.
fn api_key_findings(s: &Settings, api_keys: &[ApiKeyInfo], t: i64) -> Vec<Finding> {
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

async fn enrollment_checks(ctx: &mut Ctx<'_>) -> Result<Vec<Finding>, Unavailable> {
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

// ---------------------------------------------------------------------------------------------
// nodes (API)

/// The inventory: a YAML list of names, or of `{name, user}`.
fn inventory(path: &Path) -> Result<Vec<(String, Option<String>)>, Unavailable> {
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

async fn node_checks(ctx: &mut Ctx<'_>) -> Result<Vec<Finding>, Unavailable> {
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

// ---------------------------------------------------------------------------------------------
// policy

/// The policy's text (none when there is none) and where it came from: the database
/// (`policy.mode: database`, through the API) or `policy.path`.
async fn policy_text(
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
        match str_at(&c.root, "policy.path").filter(|p| !p.is_empty()) {
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
fn rule_findings(p: &Value, source: &str) -> Vec<Finding> {
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

async fn policy_checks(ctx: &mut Ctx<'_>) -> Result<Vec<Finding>, Unavailable> {
    let c = ctx.config()?.clone();
    let s = ctx.s;
    let mode = str_at(&c.root, "policy.mode").unwrap_or_else(|| "file".into());
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

// ---------------------------------------------------------------------------------------------
// dns

fn dns_checks(c: &HeadscaleConfig, allowed_nameservers: Option<&[String]>) -> Vec<Finding> {
    let r = &c.root;
    let file = c.path.display().to_string();
    let mut out = Vec::new();
    if str_at(r, "dns.magic_dns").as_deref() == Some("false") {
        out.push(finding(
            "dns.magic_dns_off",
            None,
            Severity::Info,
            "MagicDNS is off: nodes are addressed by IP and names resolve outside the tailnet"
                .into(),
            format!("{file}: dns.magic_dns: false"),
            mitigation::DNS,
            "dns.magic_dns: true with a base_domain",
        ));
    }
    if str_at(r, "dns.override_local_dns").as_deref() == Some("false") {
        out.push(finding(
            "dns.local_dns_not_overridden",
            None,
            Severity::Warning,
            "nodes keep their local resolvers: tailnet lookups can leak to the local network"
                .into(),
            format!("{file}: dns.override_local_dns: false"),
            mitigation::DNS,
            "dns.override_local_dns: true with trusted dns.nameservers.global",
        ));
    }
    if let Some(allowed) = allowed_nameservers {
        let global = config::get(r, "dns.nameservers.global")
            .and_then(|v| v.as_sequence())
            .cloned()
            .unwrap_or_default();
        for ns in global.iter().filter_map(|v| v.as_str()) {
            if !allowed.iter().any(|a| a == ns) {
                out.push(finding(
                    "dns.nameserver_not_allowed",
                    Some(ns),
                    Severity::Warning,
                    format!("nodes resolve through {ns}, which is not an allowed nameserver"),
                    format!(
                        "{file}: dns.nameservers.global; allowed: {}",
                        allowed.join(", ")
                    ),
                    mitigation::DNS,
                    "use only the resolvers in audit.allowed_nameservers",
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream's config-example shape (HEADSCALE.md §5), as the stand-in writes it.
    const SECURE: &str = "server_url: https://headscale.example.com\nlisten_addr: 127.0.0.1:8080\nmetrics_listen_addr: 127.0.0.1:9090\ngrpc_listen_addr: 127.0.0.1:50443\ngrpc_allow_insecure: false\nnoise:\n  private_key_path: NOISE\nprefixes:\n  v4: 100.64.0.0/10\n  v6: fd7a:115c:a1e0::/48\nderp:\n  server:\n    enabled: false\n  urls: [https://controlplane.tailscale.com/derpmap/default]\ndatabase:\n  type: sqlite\n  sqlite:\n    path: DB\nlog:\n  level: info\npolicy:\n  mode: file\n  path: \"\"\ndns:\n  magic_dns: true\n  base_domain: example.com\n  override_local_dns: true\n  nameservers:\n    global: [1.1.1.1, 1.0.0.1]\nunix_socket: /var/run/headscale/headscale.sock\nunix_socket_permission: \"0770\"\n";

    fn cfg(text: &str) -> HeadscaleConfig {
        HeadscaleConfig::parse(Path::new("/etc/headscale/config.yaml"), text).expect("config")
    }

    fn ids(f: &[Finding]) -> Vec<String> {
        f.iter().map(|f| f.id.clone()).collect()
    }

    #[test]
    fn each_config_check_passes_on_the_example_and_fails_on_its_insecure_variant() {
        let c = cfg(SECURE);
        assert!(
            config_checks(&c, None).is_empty(),
            "{:?}",
            ids(&config_checks(&c, None))
        );
        assert!(dns_checks(&c, Some(&["1.1.1.1".into(), "1.0.0.1".into()])).is_empty());
        for (from, to, id, sev) in [
            (
                "listen_addr: 127.0.0.1:8080",
                "listen_addr: 0.0.0.0:8080",
                "config.listen_addr_exposed",
                Severity::Warning,
            ),
            (
                "metrics_listen_addr: 127.0.0.1:9090",
                "metrics_listen_addr: 0.0.0.0:9090",
                "config.metrics_exposed",
                Severity::Warning,
            ),
            (
                "grpc_listen_addr: 127.0.0.1:50443",
                "grpc_listen_addr: :50443",
                "config.grpc_exposed",
                Severity::Warning,
            ),
            (
                "server_url: https://headscale.example.com",
                "server_url: http://headscale.example.com",
                "config.server_url_not_https",
                Severity::Critical,
            ),
            (
                "server_url: https://headscale.example.com",
                "server_url: http://127.0.0.1:8080",
                "config.server_url_not_https",
                Severity::Info,
            ),
            (
                "level: info",
                "level: debug",
                "config.log_verbose",
                Severity::Warning,
            ),
            (
                "unix_socket_permission: \"0770\"",
                "unix_socket_permission: \"0777\"",
                "config.socket_permission",
                Severity::Critical,
            ),
        ] {
            let f = config_checks(&cfg(&SECURE.replace(from, to)), None);
            let hit = f
                .iter()
                .find(|x| x.id == id)
                .unwrap_or_else(|| panic!("{id}: {:?}", ids(&f)));
            assert_eq!(hit.severity, sev, "{id}");
            assert!(!hit.fix.is_empty() && !hit.evidence.is_empty() && !hit.mitigation.is_empty());
        }
        let insecure_grpc = SECURE
            .replace(
                "grpc_listen_addr: 127.0.0.1:50443",
                "grpc_listen_addr: 0.0.0.0:50443",
            )
            .replace("grpc_allow_insecure: false", "grpc_allow_insecure: true");
        let f = config_checks(&cfg(&insecure_grpc), None);
        assert_eq!(
            f.iter()
                .find(|x| x.id == "config.grpc_exposed")
                .map(|x| x.severity),
            Some(Severity::Critical)
        );
        // Headscale terminating TLS itself may listen publicly.
        let tls = SECURE.replace("listen_addr: 127.0.0.1:8080", "listen_addr: 0.0.0.0:443\ntls_cert_path: /etc/ssl/hs.crt\ntls_key_path: /etc/ssl/hs.key");
        assert!(!ids(&config_checks(&cfg(&tls), None))
            .contains(&"config.listen_addr_exposed".to_string()));
        for (from, to, id) in [
            ("magic_dns: true", "magic_dns: false", "dns.magic_dns_off"),
            (
                "override_local_dns: true",
                "override_local_dns: false",
                "dns.local_dns_not_overridden",
            ),
            (
                "global: [1.1.1.1, 1.0.0.1]",
                "global: [1.1.1.1, 8.8.8.8]",
                "dns.nameserver_not_allowed:8.8.8.8",
            ),
        ] {
            let f = dns_checks(
                &cfg(&SECURE.replace(from, to)),
                Some(&["1.1.1.1".into(), "1.0.0.1".into()]),
            );
            assert!(ids(&f).contains(&id.to_string()), "{id}: {:?}", ids(&f));
        }
    }

    #[test]
    fn socket_permission_quoted_or_bare() {
        for (text, open) in [
            ("unix_socket_permission: 0770", false),
            ("unix_socket_permission: \"0770\"", false),
            ("unix_socket_permission: 0777", true),
            ("unix_socket_permission: 0o777", true),
            ("unix_socket_permission: \"0660\"", false),
        ] {
            let c = cfg(&SECURE.replace("unix_socket_permission: \"0770\"", text));
            let got =
                ids(&config_checks(&c, None)).contains(&"config.socket_permission".to_string());
            assert_eq!(got, open, "{text}");
        }
    }

    #[test]
    fn an_absent_grpc_listen_addr_is_upstreams_all_interfaces_default_before_0_30() {
        let absent = cfg(&SECURE.replace("grpc_listen_addr: 127.0.0.1:50443\n", ""));
        let at = |minor| config_checks(&absent, Some(&semver::Version::new(0, minor, 0)));
        let f = at(29);
        let hit = f
            .iter()
            .find(|x| x.id == "config.grpc_exposed")
            .expect("default :50443");
        assert!(
            hit.evidence.contains("the key is absent"),
            "{}",
            hit.evidence
        );
        assert!(
            ids(&at(30)).is_empty(),
            "0.30 removed gRPC: {:?}",
            ids(&at(30))
        );
    }

    #[test]
    fn keys_the_next_minor_refuses_are_findings() {
        let c = cfg(&format!("{SECURE}randomize_client_port: false\n"));
        let f = next_minor_checks(&c, &semver::Version::new(0, 28, 1));
        assert_eq!(
            ids(&f),
            vec!["config.next_minor_incompatible:randomize_client_port".to_string()]
        );
        assert!(f[0].title.contains("0.29.0"), "{}", f[0].title);
        assert!(
            next_minor_checks(&c, &semver::Version::new(0, 27, 0)).is_empty(),
            "0.28 still accepts it"
        );
        assert!(next_minor_checks(&cfg(SECURE), &semver::Version::new(0, 28, 1)).is_empty());
    }

    #[test]
    fn file_modes_and_owners() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let noise = dir.path().join("noise_private.key");
        let db = dir.path().join("db.sqlite");
        let conf = dir.path().join("config.yaml");
        let text = SECURE
            .replace("NOISE", &noise.display().to_string())
            .replace("DB", &db.display().to_string());
        for (p, body) in [(&noise, "privkey:x"), (&db, "x"), (&conf, text.as_str())] {
            std::fs::write(p, body).expect("write");
        }
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        set(&noise, 0o600);
        set(&db, 0o600);
        set(&conf, 0o640);
        let c = HeadscaleConfig::parse(&conf, &text).expect("config");
        assert!(file_checks(&c, None, Some("root"))
            .expect("checks")
            .is_empty());
        set(&noise, 0o644);
        set(&db, 0o640);
        set(&conf, 0o666);
        let f = file_checks(&c, None, None).expect("checks");
        let got = ids(&f);
        let n = noise.display().to_string();
        assert!(
            got.contains(&format!("files.world_readable:{n}")),
            "{got:?}"
        );
        assert_eq!(
            f.iter().find(|x| x.id.ends_with(&n)).map(|x| x.severity),
            Some(Severity::Critical)
        );
        assert!(
            got.contains(&format!("files.group_readable:{}", db.display())),
            "{got:?}"
        );
        assert!(
            got.contains(&format!("files.world_writable:{}", conf.display())),
            "{got:?}"
        );
        assert!(file_checks(&c, None, Some("no-such-user-hw")).is_err());
    }

    #[test]
    fn hosts_and_loopback() {
        assert_eq!(host_of("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8080"), "::1");
        assert_eq!(host_of(":50443"), "");
        assert_eq!(host_of("0.0.0.0:8080"), "0.0.0.0");
        assert!(
            is_loopback_host("127.0.0.1")
                && is_loopback_host("::1")
                && is_loopback_host("localhost")
        );
        assert!(
            !is_loopback_host("") && !is_loopback_host("0.0.0.0") && !is_loopback_host("10.0.0.1")
        );
    }
}
