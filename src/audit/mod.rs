//! `headwarden audit`: the seed mitigations as checks a machine runs on schedule.
//!
//! Every finding has a stable id (`check` or `check:subject`), a severity, evidence, the seed
//! mitigation it implements and a fix. The checks are grouped into the steps of the audit
//! playbook (`playbooks/audit.yaml`): version, config, files, enrollment, nodes, policy, dns.
//! They only read. The `report` step applies `audit.accept`, stores the result and queues one
//! `audit.drift` event with what changed since the last audit (new and resolved findings);
//! an unchanged posture sends nothing.

pub mod policy;
mod checks;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{json, Value};

use crate::deploy;
use crate::deploy::Production;
use crate::error::error_chain;
use crate::event::{Event, Severity};
use crate::headscale::api::ApiClient;
use crate::headscale::config::HeadscaleConfig;
use crate::hook;
use crate::notify;
use crate::settings::playbook::{self, OnFailure, StepKind};
use crate::settings::Settings;
use crate::state;
use crate::state::{now, Key, Store};

use checks::config::{config_checks, next_minor_checks};
use checks::dns::dns_checks;
use checks::enrollment::enrollment_checks;
use checks::files::file_checks;
use checks::nodes::node_checks;
use checks::policy::policy_checks;
use checks::version::version_checks;

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
    /// Production as found once for this audit (through its service manager).
    production: Result<Production, Unavailable>,
    config: Option<HeadscaleConfig>,
    version: Result<semver::Version, Unavailable>,
    api: Option<Result<ApiClient, Unavailable>>,
}

impl<'a> Ctx<'a> {
    /// Production found once for the whole audit, and its config and version.
    async fn new(s: &'a Settings, store: &'a Store) -> Ctx<'a> {
        let production = Production::find(s)
            .await
            .map_err(|e| Unavailable(error_chain(&e)));
        let config = deploy::production::audited_config(s, production.as_ref().ok());
        let version = match &production {
            Ok(p) => p.version(s).await,
            Err(_) => deploy::current_version(s).await,
        }
        .map_err(|e| Unavailable(error_chain(&e)));
        Ctx {
            s,
            store,
            production,
            config,
            version,
            api: None,
        }
    }

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
    let mut ctx = Ctx::new(s, store).await;
    let version = ctx.version.clone();
    let mut report = Report {
        schema: "headwarden.audit/v1",
        generated_at: state::rfc3339(now()),
        headscale_version: version.ok().map(|v| v.to_string()),
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
                let mut f = config_checks(c, ctx.version.as_ref().ok());
                // What the next minor refuses (the planner's knowledge table).
                if let Ok(v) = &ctx.version {
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
        .kv_get(Key::AuditLast)
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
    let first = store.kv_get(Key::AuditLastAt).map_err(err)?.is_none();
    report.new = cur_open.difference(&prev_open).cloned().collect();
    report.resolved = prev_open
        .iter()
        .filter(|id| !current.contains_key(*id))
        .cloned()
        .collect();
    store
        .kv_set(
            Key::AuditLast,
            &serde_json::to_string(&current).map_err(|e| e.to_string())?,
        )
        .map_err(err)?;
    store
        .kv_set(Key::AuditLastAt, &now().to_string())
        .map_err(err)?;
    let mut counts = BTreeMap::new();
    for f in &report.findings {
        *counts.entry(f.severity.as_str()).or_insert(0u64) += 1;
    }
    store
        .kv_set(Key::AuditCounts, &json!(counts).to_string())
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
#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::checks::config::{host_of, is_loopback_host};
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
