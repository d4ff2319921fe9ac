//! `headwarden audit` against real config files, real file modes and the stand-in's API with
//! planted bad state: each finding appears when its fixture is bad and goes when it is fixed,
//! and chat hears only what changed.

use std::os::unix::fs::PermissionsExt;

use crate::support::{code, text, Sandbox};

pub(crate) fn audit(sb: &Sandbox, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["audit", "--json"];
    args.extend_from_slice(extra);
    let out = sb.hw(&args);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("audit json: {}", text(&out)));
    (code(&out), v)
}

pub(crate) fn ids(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .expect(key)
        .iter()
        .map(|f| {
            f.as_str()
                .map_or_else(|| f["id"].as_str().expect("id").to_string(), str::to_string)
        })
        .collect()
}

fn drift_events(sb: &Sandbox) -> Vec<serde_json::Value> {
    sb.outbox()
        .into_iter()
        .filter(|(e, _)| e == "audit.drift")
        .map(|(_, p)| p)
        .collect()
}

fn chmod(p: &std::path::Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn edit_prod_config(sb: &Sandbox, from: &str, to: &str) {
    let p = sb.path("prod/etc/config.yaml");
    let text = std::fs::read_to_string(&p).expect("config");
    assert!(text.contains(from), "{from} in {text}");
    std::fs::write(&p, text.replacen(from, to, 1)).expect("write");
}

/// Production's files with the modes a careful admin sets.
fn secure_modes(sb: &Sandbox) {
    for (dir, mode) in [("prod/etc", 0o640), ("prod/lib", 0o600)] {
        for e in std::fs::read_dir(sb.path(dir)).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_file() {
                chmod(&p, mode);
            }
        }
    }
}

#[test]
fn config_file_and_dns_findings_and_chat_hears_only_the_drift() {
    let sb = Sandbox::new("0.28.0");
    let mut sb = sb;
    // A least-privilege policy file, as a careful admin has.
    let policy = sb.path("prod/etc/policy.hujson");
    std::fs::write(
        &policy,
        "{\"groups\": {\"group:admins\": [\"alice@\"]},\n \"acls\": [{\"action\": \"accept\", \"src\": [\"group:admins\"], \"dst\": [\"*:22\"]}]}\n",
    )
    .expect("policy");
    edit_prod_config(&sb, "path: \"\"", &format!("path: {}", policy.display()));
    secure_modes(&sb);
    let (rc, v) = audit(&sb, &["--fail-on", "warning"]);
    let open = ids(&v, "findings");
    assert_eq!(rc, 0, "a careful setup passes --fail-on warning: {open:?}");
    assert!(
        open.iter().all(|i| i == "config.server_url_not_https"),
        "only the loopback http server_url (info) remains: {open:?}"
    );
    let status = sb.hw(&["status"]);
    assert!(
        text(&status).contains("last audit:")
            && text(&status).contains("0 critical, 0 warning, 1 info open"),
        "{}",
        text(&status)
    );
    let drift = drift_events(&sb);
    assert_eq!(drift.len(), 1);
    assert!(drift[0]["summary"]
        .as_str()
        .expect("summary")
        .contains("baseline"));

    // Insecure edits: each shows up with evidence; --fail-on critical fails.
    edit_prod_config(
        &sb,
        "metrics_listen_addr: 127.0.0.1:",
        "metrics_listen_addr: 0.0.0.0:",
    );
    edit_prod_config(&sb, "level: info", "level: debug");
    edit_prod_config(
        &sb,
        "unix_socket_permission: \"0770\"",
        "unix_socket_permission: \"0777\"",
    );
    edit_prod_config(&sb, "override_local_dns: true", "override_local_dns: false");
    let noise = sb.path("prod/lib/noise_private.key");
    chmod(&noise, 0o644);
    let (rc, v) = audit(&sb, &["--fail-on", "critical"]);
    assert_eq!(rc, 1, "critical findings fail --fail-on critical");
    let open = ids(&v, "findings");
    let expected = [
        "config.metrics_exposed".to_string(),
        "config.log_verbose".to_string(),
        "config.socket_permission".to_string(),
        "dns.local_dns_not_overridden".to_string(),
        format!("files.world_readable:{}", noise.display()),
    ];
    for id in &expected {
        assert!(open.contains(id), "{id} in {open:?}");
    }
    assert_eq!(
        v["findings"][0]["severity"], "critical",
        "most severe first"
    );
    let mut new = ids(&v, "new");
    new.sort();
    let mut want = expected.to_vec();
    want.sort();
    assert_eq!(new, want, "exactly the changes are new");
    let drift = drift_events(&sb);
    assert_eq!(drift.len(), 2);
    assert_eq!(drift[1]["new"].as_array().expect("new").len(), 5);
    assert!(drift[1]["resolved"]
        .as_array()
        .expect("resolved")
        .is_empty());

    // Unchanged: nothing new for chat.
    let (_, v) = audit(&sb, &[]);
    assert!(ids(&v, "new").is_empty() && ids(&v, "resolved").is_empty());
    assert_eq!(drift_events(&sb).len(), 2);

    // Fixed: resolved, and only that.
    edit_prod_config(&sb, "level: debug", "level: info");
    let (_, v) = audit(&sb, &[]);
    assert_eq!(ids(&v, "resolved"), vec!["config.log_verbose".to_string()]);
    assert!(ids(&v, "new").is_empty());
    assert_eq!(drift_events(&sb).len(), 3);

    // Accepted until tomorrow: listed apart, not counted, not "resolved".
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d");
    sb.extra_top = format!(
        "audit:\n  accept:\n    - id: config.metrics_exposed\n      until: \"{tomorrow}\"\n      reason: scraped over a private VLAN\n"
    );
    sb.write_config();
    let (_, v) = audit(&sb, &[]);
    assert!(!ids(&v, "findings").contains(&"config.metrics_exposed".to_string()));
    assert_eq!(
        ids(&v, "accepted"),
        vec!["config.metrics_exposed".to_string()]
    );
    assert_eq!(
        v["accepted"][0]["accepted"]["reason"],
        "scraped over a private VLAN"
    );
    assert_eq!(
        drift_events(&sb).len(),
        3,
        "accepting is not a change chat needs"
    );

    // The acceptance expired: the finding is open again and new.
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1)).format("%Y-%m-%d");
    sb.extra_top = format!(
        "audit:\n  accept:\n    - id: config.metrics_exposed\n      until: \"{yesterday}\"\n      reason: scraped over a private VLAN\n"
    );
    sb.write_config();
    let (_, v) = audit(&sb, &[]);
    assert_eq!(ids(&v, "new"), vec!["config.metrics_exposed".to_string()]);
    assert_eq!(
        v["expired_acceptances"].as_array().expect("expired").len(),
        1
    );

    // The text report groups by severity and names the fix.
    let out = sb.hw(&["audit"]);
    let t = text(&out);
    assert!(t.contains("CRITICAL (2)") && t.contains("WARNING ("), "{t}");
    assert!(t.contains("fix: unix_socket_permission: \"0770\""), "{t}");

    // Bad acceptances are config errors.
    sb.extra_top = "audit:\n  accept:\n    - id: x\n      until: someday\n      reason: r\n".into();
    sb.write_config();
    let out = sb.hw(&["config", "check"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("audit.accept"), "{}", text(&out));
}

#[test]
fn enrollment_nodes_and_policy_through_the_api_and_an_outage_is_not_a_resolution() {
    let mut sb = Sandbox::new("0.29.2");
    sb.enable_api(false);
    sb.seed("idle", 40, None, "");
    sb.seed("srv", 5, None, "tag:rogue");
    secure_modes(&sb);
    let (idle, srv) = (sb.prod_node("idle"), sb.prod_node("srv"));
    let idle_id = idle["id"]
        .as_str()
        .map_or_else(|| idle["id"].to_string(), str::to_string);
    let srv_id = srv["id"]
        .as_str()
        .map_or_else(|| srv["id"].to_string(), str::to_string);
    let user_id = idle["user"]["id"]
        .as_str()
        .map_or_else(|| idle["user"]["id"].to_string(), str::to_string);
    sb.prod_cmd(&[
        "preauthkeys",
        "create",
        "--user",
        &user_id,
        "--reusable",
        "-e",
        "30d",
    ]);
    sb.prod_cmd(&["preauthkeys", "create", "--user", &user_id, "-e", "1h"]);
    edit_prod_config(&sb, "mode: file", "mode: database");
    let inventory = sb.path("inventory.yaml");
    std::fs::write(
        &inventory,
        format!(
            "- name: {}\n",
            idle["given_name"]
                .as_str()
                .or(idle["givenName"].as_str())
                .unwrap_or("")
        ),
    )
    .expect("inventory");
    sb.extra_top = format!(
        "audit:\n  allowed_tags: [tag:server]\n  inventory: {}\n  reachability:\n    - {{from: group:dev, to: tag:server, port: 22, expect: deny}}\n",
        inventory.display()
    );
    sb.write_config();
    let before = sb.prod_cmd(&["nodes", "list", "-o", "json"]);
    let (_, v) = audit(&sb, &[]);
    let open = ids(&v, "findings");
    assert!(
        v["skipped"].as_array().expect("skipped").is_empty(),
        "{}",
        v["skipped"]
    );
    for id in [
        "enrollment.reusable_preauth_key:1".to_string(),
        "enrollment.long_lived_preauth_key:1".to_string(),
        format!("nodes.inactive:{idle_id}"),
        format!("nodes.no_expiry:{idle_id}"),
        format!("nodes.unexpected_tag:{srv_id}"),
        format!("nodes.not_in_inventory:{srv_id}"),
        "policy.none".to_string(),
        "policy.reachability:1".to_string(),
    ] {
        assert!(open.contains(&id), "{id} in {open:?}");
    }
    assert!(
        open.iter()
            .any(|i| i.starts_with("enrollment.api_key_no_expiry:")),
        "the API key made without expiry: {open:?}"
    );
    for id in [
        "enrollment.reusable_preauth_key:2".to_string(),
        "enrollment.long_lived_preauth_key:2".to_string(),
        format!("nodes.not_in_inventory:{idle_id}"),
        format!("nodes.no_expiry:{srv_id}"),
    ] {
        assert!(!open.contains(&id), "{id} must pass: {open:?}");
    }
    assert_eq!(
        sb.prod_cmd(&["nodes", "list", "-o", "json"]),
        before,
        "the audit changes nothing"
    );

    // A policy: allow-all and an unused group are found; the expectation is evaluated.
    let policy = sb.path("policy.hujson");
    std::fs::write(
        &policy,
        "{\n  // everyone everywhere (to be tightened)\n  \"groups\": {\"group:dev\": [\"bob@\"], \"group:old\": [\"dave@\"],},\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]},\n  ],\n}\n",
    )
    .expect("policy");
    sb.prod_cmd(&["policy", "set", "-f", &policy.display().to_string()]);
    let (_, v) = audit(&sb, &[]);
    let open = ids(&v, "findings");
    for id in [
        "policy.allow_all:1",
        "policy.unused_group:group:old",
        "policy.reachability:1",
    ] {
        assert!(open.contains(&id.to_string()), "{id} in {open:?}");
    }
    assert!(!open.contains(&"policy.none".to_string()));
    assert_eq!(ids(&v, "resolved"), vec!["policy.none".to_string()]);
    let tight = "{\"groups\": {\"group:dev\": [\"bob@\"]}, \"tagOwners\": {\"tag:server\": [\"group:dev\"]},\n \"acls\": [{\"action\": \"accept\", \"src\": [\"group:dev\"], \"dst\": [\"tag:server:443\"]}]}";
    std::fs::write(&policy, tight).expect("policy");
    sb.prod_cmd(&["policy", "set", "-f", &policy.display().to_string()]);
    let (_, v) = audit(&sb, &[]);
    let open = ids(&v, "findings");
    assert!(
        !open.iter().any(|i| i.starts_with("policy.")),
        "a least-privilege policy passes: {open:?}"
    );

    // Production's API down: those checks are skipped, and their findings are not "resolved".
    let stop = std::process::Command::new(sb.path("prod/service.sh"))
        .arg("stop")
        .output()
        .expect("stop");
    assert!(stop.status.success());
    let drift_before = drift_events(&sb).len();
    let (_, v) = audit(&sb, &[]);
    let skipped: Vec<&str> = v["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .filter_map(|s| s["step"].as_str())
        .collect();
    assert!(
        skipped.contains(&"enrollment") && skipped.contains(&"nodes"),
        "{skipped:?}"
    );
    assert!(ids(&v, "resolved").is_empty(), "{:?}", ids(&v, "resolved"));
    assert_eq!(drift_events(&sb).len(), drift_before);
}

#[test]
fn a_pending_security_fix_and_a_swapped_binary_are_critical() {
    let mut sb = Sandbox::new("0.27.1");
    sb.release_args(
        "0.28.0",
        "none",
        Some("keys/minisign.key"),
        &[
            "--body",
            "## Security\n\n- Fix CVE-2026-12345: pre-auth key reuse (security fix)\n",
        ],
    );
    let (_, v) = audit(&sb, &[]);
    let open = ids(&v, "findings");
    assert!(
        open.contains(&"version.security_fix_pending:0.28.0".to_string()),
        "{open:?}"
    );
    assert!(open.contains(&"version.behind".to_string()), "{open:?}");

    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let (_, v) = audit(&sb, &[]);
    let open = ids(&v, "findings");
    assert!(!open.iter().any(|i| i.starts_with("version.")), "{open:?}");
    assert!(ids(&v, "resolved").contains(&"version.security_fix_pending:0.28.0".to_string()));

    // Someone swaps the binary headwarden installed.
    let link = std::fs::read_link(sb.path("prod/bin/headscale")).expect("symlink");
    crate::support::patch_executable(&link);
    let (rc, v) = audit(&sb, &["--fail-on", "critical"]);
    assert_eq!(rc, 1);
    assert!(ids(&v, "findings").contains(&"version.binary_changed".to_string()));
    // The timer's `run` audits on schedule.audit like the other jobs.
    sb.extra_top = "schedule:\n  audit: \"@weekly\"\n  keys: \"@weekly\"\n".into();
    sb.write_config();
    let out = sb.hw(&["run"]);
    assert!(text(&out).contains("audit: due"), "{}", text(&out));
    assert!(
        text(&out).contains("version.binary_changed"),
        "{}",
        text(&out)
    );
    let out = sb.hw(&["run"]);
    assert!(text(&out).contains("audit: not due"), "{}", text(&out));
}
