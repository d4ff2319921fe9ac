//! The upgrade pipeline end to end, its failure paths, crash recovery, locking, feed handling
//! and config errors.

use crate::support::{code, sim, text, Sandbox};

#[test]
fn happy_path_single_hop() {
    let mut sb = Sandbox::new("0.27.1");
    // Chat is unreachable for the whole run (nothing listens on port 9): the upgrade is unaffected.
    sb.extra_top = "notify:\n  - url: generic+http://127.0.0.1:9/hook\n".into();
    sb.write_config();
    sb.release("0.28.0", "none");
    let before = sb.dump();
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let events: Vec<String> = sb.outbox().into_iter().map(|(e, _)| e).collect();
    assert_eq!(
        events,
        [
            "release",
            "upgrade.started",
            "upgrade.promoted",
            "upgrade.succeeded"
        ],
        "every step reported, in order"
    );
    assert_eq!(
        sb.status_json()["notifications"]["pending"],
        4,
        "kept for a later delivery"
    );
    assert_eq!(sb.prod_version(), "v0.28.0");
    assert_eq!(
        sb.dump(),
        before,
        "users and nodes unchanged by the upgrade"
    );
    // The binary path is now a symlink into versions/.
    let target = std::fs::read_link(sb.path("prod/bin/headscale")).expect("symlink");
    assert!(target.ends_with("versions/0.28.0/headscale"), "{target:?}");
    let status = sb.status_json();
    assert!(status["interrupted_runs"]
        .as_array()
        .expect("runs")
        .is_empty());
    assert_eq!(status["backups"].as_array().expect("backups").len(), 1);
}

/// 0.28 makes tags an identity: its one-time migration moves every tagged node to the special
/// user `tagged-devices`. Staging's data parity must count that node as kept (the real server
/// showed every 0.27 → 0.28 upgrade of a tailnet with a tagged node rejected on staging).
#[test]
fn tagged_nodes_moving_to_tagged_devices_in_0_28_pass_parity() {
    let sb = Sandbox::new("0.27.1");
    sb.seed("server", 1, None, "tag:server");
    sb.release("0.28.0", "none");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("nodes all present"), "{}", text(&out));
}

/// 0.29.3 and later answer `/key?v=` below capability 113 with 400 "unsupported client version":
/// the staging noise-key check must ask as a current client, or every new patch is rejected
/// and recorded bad (headwarden used to send 106).
#[test]
fn patch_upgrade_to_0_29_3_passes_the_noise_key_check() {
    let sb = Sandbox::new("0.29.2");
    sb.release("0.29.3", "none");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("Noise public key unchanged"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.served_version(), "v0.29.3");
}

#[test]
fn happy_path_multi_hop_one_minor_at_a_time_then_manual_rollback() {
    let sb = Sandbox::new("0.26.1");
    for v in ["0.27.0", "0.27.1", "0.28.0"] {
        sb.release(v, "none");
    }
    let check = sb.hw(&["check"]);
    assert_eq!(code(&check), 0, "{}", text(&check));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("plan: 0.26.1 -> 0.27.1 -> 0.28.0"),
        "{}",
        text(&check)
    );
    assert_eq!(sb.prod_version(), "v0.26.1", "check changes nothing");
    let before = sb.dump();
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.28.0");
    assert_eq!(sb.dump(), before);
    let history = sb.hw(&["history"]);
    let h = String::from_utf8_lossy(&history.stdout);
    assert!(h.contains("0.26.1 -> 0.28.0: upgraded"), "{h}");

    // Roll back to the state before the 0.27.1 -> 0.28.0 hop.
    let out = sb.hw(&["rollback", "--to", "0.27.1"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.27.1");
    assert_eq!(sb.dump(), before);
    let (event, payload) = sb.outbox().pop().expect("events");
    assert_eq!(event, "upgrade.rolled_back");
    assert_eq!(payload["manual"], true);
}

fn assert_refused(sb: &Sandbox, expect_in_stderr: &str) {
    assert_refused_at(sb, expect_in_stderr, true);
}

/// `before_install`: the refusal happens during verification, so nothing may be installed.
fn assert_refused_at(sb: &Sandbox, expect_in_output: &str, before_install: bool) {
    assert!(
        !expect_in_output.is_empty(),
        "name what the refusal must say"
    );
    let before = sb.dump();
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains(expect_in_output), "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.27.1", "production untouched");
    assert_eq!(sb.dump(), before);
    if before_install {
        assert!(
            !sb.path("state/versions/0.28.0").exists(),
            "nothing installed"
        );
    }
}

#[test]
fn checksum_mismatch_is_refused_and_recorded_bad() {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    let asset = sb.asset_path("0.28.0");
    let mut bytes = std::fs::read(&asset).expect("asset");
    bytes.extend_from_slice(b"# tampered\n");
    std::fs::write(&asset, bytes).expect("tamper");
    assert_refused(&sb, "does not match checksums.txt");
    let status = sb.status_json();
    assert!(
        status["bad_releases"].to_string().contains("v0.28.0"),
        "{status}"
    );
}

#[test]
fn digest_mismatch_is_refused() {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    let name = sb
        .asset_path("0.28.0")
        .file_name()
        .expect("n")
        .to_string_lossy()
        .to_string();
    sb.edit_meta("0.28.0", |m| {
        m["digests"] = serde_json::json!({ name: format!("sha256:{}", "ab".repeat(32)) })
    });
    assert_refused(&sb, "does not match GitHub's asset digest");
}

#[test]
fn unsigned_release_is_refused_when_signatures_are_required() {
    let mut sb = Sandbox::new("0.27.1");
    sb.extra_release = "  require_signature: true\n".into();
    sb.write_config();
    sb.release_with("0.28.0", "none", None);
    assert_refused(&sb, "no minisign signature");
}

#[test]
fn foreign_signature_is_refused() {
    let sb = Sandbox::new("0.27.1");
    sim(&[
        "keygen",
        "--out",
        &sb.path("otherkeys").display().to_string(),
    ]);
    sb.release_with("0.28.0", "none", Some("otherkeys/minisign.key"));
    assert_refused(&sb, "minisign signature does not verify");
}

#[test]
fn truncated_download_is_refused() {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    let name = sb
        .asset_path("0.28.0")
        .file_name()
        .expect("n")
        .to_string_lossy()
        .to_string();
    sb.edit_meta("0.28.0", |m| m["truncate"] = serde_json::json!([name]));
    assert_refused(&sb, "downloading http://127.0.0.1");
    let downloads = std::fs::read_dir(sb.path("state/downloads"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(downloads, 0, "no partial file left behind");
}

#[test]
fn staging_never_healthy_leaves_production_alone() {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "never-healthy");
    assert_refused_at(&sb, "not healthy after 5s", false);
    let h = String::from_utf8_lossy(&sb.hw(&["history"]).stdout).to_string();
    assert!(
        h.contains("staging_failed") && h.contains("not healthy"),
        "{h}"
    );
}

#[test]
fn staging_migration_dropping_nodes_is_caught_by_parity() {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "drop-rows");
    let before = sb.dump();
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nodes missing after migration"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.prod_version(), "v0.27.1");
    assert_eq!(sb.dump(), before);
}

#[test]
fn production_failure_after_switch_rolls_back_binary_and_data() {
    // The new version migrates the database, replaces the noise key and rewrites the config
    // before it crashes: each of the three restores is needed for this test to pass.
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "prod-wreck");
    let before = sb.db_dump();
    let files = ["prod/lib/noise_private.key", "prod/etc/config.yaml"];
    let bytes = |sb: &Sandbox| -> Vec<Vec<u8>> {
        files
            .iter()
            .map(|f| std::fs::read(sb.path(f)).expect("file"))
            .collect()
    };
    let meta = |sb: &Sandbox| -> Vec<(u32, u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        files
            .iter()
            .chain(&["prod/lib/db.sqlite"])
            .map(|f| {
                let m = std::fs::symlink_metadata(sb.path(f)).expect("meta");
                (m.uid(), m.gid(), m.mode())
            })
            .collect()
    };
    let (bytes_before, meta_before) = (bytes(&sb), meta(&sb));
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 3, "rolled-back exit code\n{}", text(&out));
    assert_eq!(sb.served_version(), "v0.27.1");
    assert_eq!(sb.db_dump(), before, "the database is the pre-upgrade one");
    assert_eq!(bytes(&sb), bytes_before, "noise key and config restored");
    assert_eq!(meta(&sb), meta_before, "with their owners and modes");
    let (event, payload) = sb.outbox().pop().expect("events");
    assert_eq!(event, "upgrade.rolled_back");
    assert_eq!(payload["failed"], "0.28.0");
    let status = sb.status_json();
    assert!(status["production"]["health"] == "healthy", "{status}");
    assert_eq!(sb.prod_processes().len(), 1);
}

#[test]
fn changed_noise_key_is_caught_on_staging() {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "noise-key");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Noise public key changed"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.prod_version(), "v0.27.1");
}

#[test]
fn concurrent_run_is_refused_with_locked_exit_code() {
    let sb = Sandbox::new("0.27.1");
    std::fs::create_dir_all(sb.path("state")).expect("state");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(sb.path("state/lock"))
        .expect("lock");
    f.try_lock().expect("take the lock as another run would");
    std::fs::write(
        sb.path("state/lock"),
        "pid 4242 (headwarden upgrade) since 2026-11-23T00:00:00Z",
    )
    .expect("holder");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pid 4242"),
        "{}",
        text(&out)
    );
    drop(f);
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn feed_500_then_429_then_304() {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    let out = sb.hw(&["check"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    std::fs::write(sb.path("feed/inject"), "500\n429 1\n").expect("inject");
    let out = sb.hw(&["check"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unchanged since last poll (304)"),
        "{}",
        text(&out)
    );
    let log = std::fs::read_to_string(sb.path("feed/requests.log")).expect("log");
    let requests: Vec<(&str, u128)> = log
        .lines()
        .filter(|l| l.starts_with("/releases"))
        .map(|l| {
            let mut f = l.split(' ').skip(1);
            let status = f.next().unwrap_or("");
            let at = f.next().and_then(|t| t.parse().ok()).expect("request time");
            (status, at)
        })
        .collect();
    let statuses: Vec<&str> = requests.iter().map(|r| r.0).collect();
    assert_eq!(statuses, ["200", "500", "429", "304"]);
    // Retry-After: 1 was honoured: the request after the 429 came at least a second later.
    let waited = requests[3].1 - requests[2].1;
    assert!(
        waited >= 1000,
        "retried {waited} ms after a 429 with Retry-After: 1"
    );
    // A rate limit that resets far in the future is a clear error, not a hang.
    std::fs::write(sb.path("feed/inject"), "403 3600\n").expect("inject");
    let out = sb.hw(&["check"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rate limited until"),
        "{}",
        text(&out)
    );
}

#[test]
fn config_errors_point_at_file_and_line() {
    let sb = Sandbox::new("0.27.1");
    let cfg = sb.config_path();
    let original = std::fs::read_to_string(&cfg).expect("cfg");
    for (bad, needle) in [
        (
            original.replace("  min_age: 1d\n", "  min_age: 1d\n  chanel: stable\n"),
            ":6",
        ),
        (original.replace("min_age: 1d", "min_age: 3 parsecs"), ":5"),
        (
            original.replace("min_age: 1d", "min_age: 1d\n  constraint: \">=banana\""),
            ":6",
        ),
    ] {
        std::fs::write(&cfg, &bad).expect("write");
        let out = sb.hw(&["config", "check"]);
        assert_eq!(code(&out), 2, "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}{needle}", cfg.display())),
            "{needle}: {err}"
        );
        assert!(err.contains("hint:"), "{err}");
    }
    std::fs::write(&cfg, original).expect("restore");
    let out = sb.hw(&["config", "check"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn check_explains_cooldown_prereleases_and_dry_run_changes_nothing() {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    sb.release_args(
        "0.29.0",
        "none",
        Some("keys/minisign.key"),
        &["--age-days", "0"],
    );
    sb.release_args(
        "0.30.0-beta.1",
        "none",
        Some("keys/minisign.key"),
        &["--prerelease"],
    );
    let out = sb.hw(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("plan: 0.27.1 -> 0.28.0"), "{}", text(&out));
    assert!(
        stdout.contains("v0.29.0: in cooldown for another"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("v0.30.0-beta.1: prerelease (channel is stable)"),
        "{}",
        text(&out)
    );
    let json = sb.hw(&["check", "--json", "--to", "0.29.0"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    let hops: Vec<&str> = v["plan"]["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .filter_map(|h| h["version"].as_str())
        .collect();
    assert_eq!(
        hops,
        ["0.28.0", "0.29.0"],
        "an explicit target skips the cooldown, not the minor steps"
    );
    let out = sb.hw(&["upgrade", "--dry-run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.27.1");
    assert!(
        !sb.path("state/versions").exists(),
        "dry run downloads nothing"
    );
}

#[test]
fn github_token_is_used_but_never_printed_and_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    let token = "ghp_SECRETtoken0123456789abcdefghijklmnop";
    let token_file = sb.path("github-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    sb.extra_release = format!("  token_file: {}\n", token_file.display());
    sb.write_config();
    let out = sb.hw(&["config", "check"]);
    assert_eq!(
        code(&out),
        2,
        "a world-readable token is refused\n{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out)
    );
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for args in [
        &["config", "check"][..],
        &["-vv", "check"],
        &["-vv", "upgrade", "--yes"],
        &["status", "--json"],
        &["history", "--json"],
    ] {
        let out = sb.hw(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            !text(&out).contains("SECRETtoken"),
            "{args:?} leaked the token:\n{}",
            text(&out)
        );
    }
    // The feed got exactly this token on every API request; asset downloads (public on GitHub,
    // served from another host) never carry it.
    use sha2::Digest;
    let expected = format!("bearer:{}", &hex::encode(sha2::Sha256::digest(token))[..12]);
    let auth =
        std::fs::read_to_string(sb.path("feed/auth.log")).expect("feed records auth headers");
    let (api, downloads): (Vec<&str>, Vec<&str>) =
        auth.lines().partition(|l| l.starts_with("/releases"));
    assert!(!api.is_empty() && !downloads.is_empty(), "{auth}");
    assert!(
        api.iter().all(|l| l.ends_with(&format!(" {expected}"))),
        "every feed request carried the configured token: {auth}"
    );
    assert!(
        downloads.iter().all(|l| l.ends_with(" none")),
        "downloads carry no token: {auth}"
    );
}

#[test]
fn downloads_follow_redirects_to_https_or_loopback_only() {
    // GitHub answers an asset download with a redirect to its CDN: followed, and verified.
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    let name = sb
        .asset_path("0.28.0")
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    sb.edit_meta("0.28.0", |m| {
        m["redirect"] = serde_json::json!({ name.clone(): "cdn" })
    });
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let log = std::fs::read_to_string(sb.path("feed/requests.log")).expect("log");
    assert!(
        log.lines()
            .any(|l| l.starts_with(&format!("/download/v0.28.0/{name} 302")))
            && log
                .lines()
                .any(|l| l.starts_with(&format!("/cdn/v0.28.0/{name} 200"))),
        "{log}"
    );
    // A redirect to plain http on another host is refused before any byte is fetched from it.
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    sb.edit_meta(
        "0.28.0",
        |m| {
            m["redirect"] =
                serde_json::json!({ name.clone(): format!("http://cdn.example.invalid/{name}") })
        },
    );
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("redirect to a non-https URL"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.served_version(), "v0.27.1");
}

#[test]
fn insecure_feed_url_is_refused() {
    let sb = Sandbox::new("0.27.1");
    let cfg = std::fs::read_to_string(sb.config_path())
        .expect("cfg")
        .replace("  allow_insecure_http: true\n", "");
    std::fs::write(sb.config_path(), cfg).expect("write");
    let out = sb.hw(&["check"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not https"),
        "{}",
        text(&out)
    );
}

#[test]
fn config_keys_fatal_in_the_target_block_the_upgrade_before_anything_happens() {
    let sb = Sandbox::new("0.28.0");
    sb.release("0.29.0", "none");
    let cfg = sb.path("prod/etc/config.yaml");
    let original = std::fs::read_to_string(&cfg).expect("cfg");
    std::fs::write(&cfg, format!("{original}randomize_client_port: false\n")).expect("write");
    let check = sb.hw(&["check"]);
    assert!(
        String::from_utf8_lossy(&check.stdout)
            .contains("`randomize_client_port` stops Headscale 0.29.0 from starting"),
        "{}",
        text(&check)
    );
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("randomizeClientPort"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.prod_version(), "v0.28.0");
    assert!(!sb.path("state/versions").exists(), "nothing downloaded");
    // Without the key, the same upgrade goes through.
    std::fs::write(&cfg, original).expect("restore");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.29.0");
}

#[test]
fn signed_checksums_file_is_enough_and_its_tampering_or_garbling_is_caught() {
    let mut sb = Sandbox::new("0.27.1");
    sb.extra_release = "  require_signature: true\n".into();
    sb.write_config();
    sb.release("0.28.0", "none");
    sb.release("0.29.0", "none");
    // 0.29.0: garbled asset signature (before the first poll: a file changed after headwarden
    // saw it is a different alarm, the artifact_replaced row of the fault matrix).
    let asset_sig = format!("{}.minisig", sb.asset_path("0.29.0").display());
    std::fs::write(
        &asset_sig,
        "untrusted comment: x\nRWgarbage\ntrusted comment: y\nzzz\n",
    )
    .expect("garble");
    // 0.28.0: only checksums.txt is signed (the asset's own .minisig is removed).
    let asset_sig = format!("{}.minisig", sb.asset_path("0.28.0").display());
    std::fs::remove_file(&asset_sig).expect("remove asset signature");
    let out = sb.hw(&["upgrade", "--yes", "--to", "0.28.0"]);
    assert_eq!(
        code(&out),
        0,
        "a signed checksums.txt binds the asset by sha256\n{}",
        text(&out)
    );
    assert_eq!(sb.prod_version(), "v0.28.0");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("minisign signature does not verify"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.prod_version(), "v0.28.0");
}

#[test]
fn checksums_file_changed_after_signing_is_refused() {
    let mut sb = Sandbox::new("0.27.1");
    sb.extra_release = "  require_signature: true\n".into();
    sb.write_config();
    sb.release("0.28.0", "none");
    std::fs::remove_file(format!("{}.minisig", sb.asset_path("0.28.0").display())).expect("rm");
    let sums = sb.path("feed/releases/v0.28.0/assets/checksums.txt");
    let text_ = std::fs::read_to_string(&sums).expect("sums");
    std::fs::write(&sums, format!("{text_}{}  extra_file\n", "0".repeat(64))).expect("append");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("checksums.txt: minisign signature does not verify"),
        "{}",
        text(&out)
    );
}

#[test]
fn custom_smoke_commands_gate_staging() {
    let mut sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    sb.extra_smoke = "  commands:\n    - [/bin/sh, -c, 'exit 7']\n".into();
    sb.write_config();
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("exit 7"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.prod_version(), "v0.27.1");
    sb.extra_smoke = "  commands:\n    - [/bin/sh, -c, 'exit 0']\n".into();
    sb.write_config();
    // The failed staging run recorded the release as bad: automatic runs leave it alone…
    let out = sb.hw(&["upgrade", "--yes"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("retry with --to 0.28.0"), "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.27.1");
    // …and naming it retries it (staging runs again, now passing).
    let out = sb.hw(&["upgrade", "--yes", "--to", "0.28.0"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.28.0");
}

#[test]
fn pending_assets_are_retried_later() {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    sb.edit_meta("0.28.0", |m| m["pending"] = serde_json::json!(true));
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("assets not published yet"),
        "{}",
        text(&out)
    );
    sb.edit_meta("0.28.0", |m| m["pending"] = serde_json::json!(false));
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.28.0");
}

#[test]
fn a_failure_at_any_production_step_leaves_the_old_version_healthy_on_its_data() {
    for step in ["backup", "switch", "start", "smoke"] {
        let sb = Sandbox::new("0.27.1");
        sb.release("0.28.0", "none");
        let before = sb.dump();
        let out = sb.hw_env(&["upgrade", "--yes"], &[("HEADWARDEN_FAIL_AT", step)]);
        assert_eq!(code(&out), 3, "{step}: rolled back\n{}", text(&out));
        assert_eq!(sb.prod_version(), "v0.27.1", "{step}");
        assert_eq!(sb.dump(), before, "{step}: data intact");
        let status = sb.status_json();
        assert_eq!(
            status["production"]["health"], "healthy",
            "{step}: {status}"
        );
        assert!(
            status["interrupted_runs"]
                .as_array()
                .expect("runs")
                .is_empty(),
            "{step}"
        );
    }
}

#[test]
fn a_failed_safety_backup_aborts_a_manual_rollback_and_restarts_production() {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = sb.hw_env(&["rollback"], &[("HEADWARDEN_FAIL_AT", "safety_backup")]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("production restarted unchanged"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.prod_version(), "v0.28.0");
    assert_eq!(sb.status_json()["production"]["health"], "healthy");
}

#[test]
fn approval_and_hold_gate_upgrades() {
    let mut sb = Sandbox::new("0.27.1");
    sb.extra_release = "  approval: {patch: auto, minor: manual}\n".into();
    sb.write_config();
    sb.release("0.28.0", "none");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("waiting for approval of 0.28.0"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("headwarden approve 0.28.0"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.prod_version(), "v0.27.1");
    let outbox = sb.outbox();
    let release = &outbox
        .iter()
        .find(|(e, _)| e == "release")
        .expect("release")
        .1;
    assert!(
        release["action"]
            .as_str()
            .expect("action")
            .contains("headwarden approve 0.28.0"),
        "{release}"
    );
    assert!(outbox.iter().any(|(e, _)| e == "upgrade.awaiting_approval"));

    // Approved, but a hold freezes everything until unhold.
    assert_eq!(code(&sb.hw(&["approve", "0.28.0"])), 0);
    assert_eq!(code(&sb.hw(&["hold", "change freeze"])), 0);
    let held = sb.hw(&["upgrade", "--yes"]);
    assert!(
        text(&held).contains("on hold (change freeze)"),
        "{}",
        text(&held)
    );
    assert_eq!(sb.status_json()["hold"], "change freeze");
    assert_eq!(sb.prod_version(), "v0.27.1");
    assert_eq!(code(&sb.hw(&["unhold"])), 0);
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.28.0");

    // Patches are auto under this policy.
    sb.release("0.28.1", "none");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.28.1");

    sb.extra_release = "  approval: sometimes\n".into();
    sb.write_config();
    let bad = sb.hw(&["config", "check"]);
    assert_eq!(code(&bad), 2);
    assert!(text(&bad).contains("release.approval"), "{}", text(&bad));
}

#[test]
fn maintenance_window_and_blackout_gate_promotion() {
    use chrono::Timelike;
    let mut sb = Sandbox::new("0.27.1");
    let now = chrono::Utc::now();
    let hhmm = |t: chrono::DateTime<chrono::Utc>| format!("{:02}:{:02}", t.hour(), t.minute());
    // A window that opens in two hours: the upgrade waits and says when.
    let later = now + chrono::Duration::hours(2);
    sb.extra_release = format!(
        "  window:\n    start: \"{}\"\n    duration: 1h\n",
        hhmm(later)
    );
    sb.extra_top = "schedule:\n  timezone: UTC\n".into();
    sb.write_config();
    sb.release("0.28.0", "none");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("outside the maintenance window"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains(&format!("T{}:00Z", hhmm(later))),
        "{}",
        text(&out)
    );
    assert_eq!(sb.prod_version(), "v0.27.1");
    // The default playbook puts approve after stage: staging ran early, so a bad release shows
    // up before the window opens; production was not touched.
    assert!(
        text(&out).contains("staging passed for 0.28.0"),
        "{}",
        text(&out)
    );
    assert!(sb.outbox().iter().any(|(e, _)| e == "upgrade.staged"));
    assert!(!sb.outbox().iter().any(|(e, _)| e == "upgrade.started"));

    // Inside a window, but today is a blackout date.
    let earlier = now - chrono::Duration::minutes(30);
    sb.extra_release = format!(
        "  window:\n    start: \"{}\"\n    duration: 3h\n  blackout: [\"{}\"]\n",
        hhmm(earlier),
        earlier.format("%Y-%m-%d")
    );
    sb.write_config();
    let out = sb.hw(&["upgrade", "--yes"]);
    assert!(
        text(&out).contains("outside the maintenance window"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.prod_version(), "v0.27.1");
    assert!(
        !text(&out).contains("staging passed"),
        "staged once per target, not on every run: {}",
        text(&out)
    );

    // Inside the window: promoted. (--ignore-window would have done it anyway.)
    sb.extra_release = format!(
        "  window:\n    start: \"{}\"\n    duration: 3h\n",
        hhmm(earlier)
    );
    sb.write_config();
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.28.0", "{}", text(&out));

    sb.release("0.28.1", "none");
    sb.extra_release = format!(
        "  window:\n    start: \"{}\"\n    duration: 1h\n",
        hhmm(later)
    );
    sb.write_config();
    let out = sb.hw(&["upgrade", "--yes", "--ignore-window"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.28.1");

    sb.extra_release =
        "  window:\n    days: [funday]\n    start: \"02:00\"\n    duration: 1h\n".into();
    sb.write_config();
    let bad = sb.hw(&["config", "check"]);
    assert_eq!(code(&bad), 2);
    assert!(text(&bad).contains("unknown day"), "{}", text(&bad));

    sb.release("0.28.2", "none");
    // The window's own zone: now (UTC) is 14 hours later in Kiritimati (UTC+14), so a window
    // starting at the current UTC time in UTC+14 terms has not opened.
    sb.extra_release = format!(
        "  window:\n    start: \"{}\"\n    duration: 1h\n    timezone: Pacific/Kiritimati\n",
        hhmm(earlier)
    );
    sb.write_config();
    let out = sb.hw(&["upgrade", "--yes", "--dry-run"]);
    assert!(
        text(&out).contains("outside the maintenance window"),
        "{}",
        text(&out)
    );
    sb.extra_release =
        "  window:\n    start: \"02:00\"\n    duration: 1h\n    timezone: Mars/Olympus\n".into();
    sb.write_config();
    let bad = sb.hw(&["config", "check"]);
    assert_eq!(code(&bad), 2);
    assert!(text(&bad).contains("unknown time zone"), "{}", text(&bad));
}

/// The stand-in, like the real server, refuses a removed key set only in the service's
/// environment; headwarden reads that environment from the running server and stops before
/// anything is downloaded.
#[test]
fn a_removed_key_in_the_service_environment_blocks_the_upgrade() {
    let sb = Sandbox::new("0.28.0");
    let cfg = sb.path("prod/etc/config.yaml");
    let service = sb.path("prod/service.sh");
    // What a leftover `Environment=HEADSCALE_RANDOMIZE_CLIENT_PORT=false` line does.
    let script = std::fs::read_to_string(&service).expect("service");
    std::fs::write(
        &service,
        script.replace(
            "  start)\n",
            "  start)\n    export HEADSCALE_RANDOMIZE_CLIENT_PORT=false\n",
        ),
    )
    .expect("service");
    assert!(std::process::Command::new(&service)
        .arg("stop")
        .status()
        .expect("stop")
        .success());
    assert!(std::process::Command::new(&service)
        .arg("start")
        .status()
        .expect("start")
        .success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sb.served_version() != "v0.28.0" {
        assert!(
            std::time::Instant::now() < deadline,
            "production did not come back"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    sb.release("0.29.0", "none");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("HEADSCALE_RANDOMIZE_CLIENT_PORT (in the service's environment)"),
        "{}",
        text(&out)
    );
    assert!(
        !sb.path("state/versions/0.29.0").exists(),
        "nothing installed"
    );
    assert!(std::fs::read_to_string(cfg)
        .expect("cfg")
        .contains("listen_addr"));
}
