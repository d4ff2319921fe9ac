//! The fault-injection matrix: one row per fault, real processes, and the same end-state checks
//! for every row, each observed rather than inferred:
//! - the exit code;
//! - the version the process answering on production's address reports (`GET /version`), the
//!   number of production server processes (exactly one when it should run, none when stopped)
//!   and what the service manager says;
//! - for "old" outcomes: the database compared row by row with a dump taken before (users, nodes,
//!   pre-auth keys, API keys, policies, migrations — the fixture fills every one of them), and
//!   the noise key's and config's bytes, plus the owner and mode of those and of the database;
//! - no journal entry left open; the events in the outbox, counted (a doubled event shows);
//! - whether the release was recorded bad.
//!
//! The suite writes the matrix (fault, expected, observed) to `target/fault-matrix.md`, and
//! README's reliability section must carry the same table: run with
//! `HEADWARDEN_WRITE_MATRIX=1 cargo test --test it fault_matrix` to refresh it.

use std::process::{Command, Output};

use crate::support::{code, dump_sqlite, hw, sim, text, Sandbox};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Prod {
    /// Still the old version, healthy, database identical.
    Old,
    /// The new version, healthy, every user and node kept.
    New,
    /// The documented worst case: the rollback itself failed; the verified backup is named.
    Manual,
}

struct Row {
    area: &'static str,
    fault: &'static str,
    expected: &'static str,
    exit: &'static [i32],
    prod: Prod,
    events: &'static [&'static str],
    /// Whether the release may be recorded as bad (never retried automatically).
    bad: Option<bool>,
    /// The row stops production itself (API rows): no health check.
    stops_prod: bool,
    /// Runs before the "before" dump (what the scenario needs, not the fault).
    setup: fn(&mut Sandbox),
    /// Tables the fault itself changes (a revoked API key), left out of the comparison.
    ignore: &'static [&'static str],
    /// What the output must say (case-insensitive substrings): the mechanism the row promises.
    says: &'static [&'static str],
    run: fn(&mut Sandbox) -> Output,
}

/// A row with the common defaults: production keeps running, nothing set up before the dump,
/// every table compared.
#[expect(
    clippy::too_many_arguments,
    reason = "a table row: each argument is a column"
)]
fn row(
    area: &'static str,
    fault: &'static str,
    expected: &'static str,
    exit: &'static [i32],
    prod: Prod,
    events: &'static [&'static str],
    bad: Option<bool>,
    run: fn(&mut Sandbox) -> Output,
) -> Row {
    Row {
        area,
        fault,
        expected,
        exit,
        prod,
        events,
        bad,
        stops_prod: false,
        setup: |_| {},
        ignore: &[],
        says: &[],
        run,
    }
}

impl Row {
    fn says(mut self, needles: &'static [&'static str]) -> Row {
        self.says = needles;
        self
    }
}

fn upgrade(sb: &Sandbox) -> Output {
    sb.hw(&["upgrade", "--yes"])
}

fn upgrade_env(sb: &Sandbox, env: &[(&str, &str)]) -> Output {
    sb.hw_env(&["upgrade", "--yes"], env)
}

fn asset_name(sb: &Sandbox) -> String {
    sb.asset_path("0.28.0")
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string()
}

fn inject(sb: &Sandbox, lines: &str) {
    std::fs::write(sb.path("feed/inject"), lines).expect("inject");
}

fn crash_then_recover(sb: &mut Sandbox, point: &str) -> Output {
    sb.release("0.28.0", "none");
    let killed = upgrade_env(sb, &[("HEADWARDEN_CRASH_AT", point)]);
    assert_eq!(
        killed.status.code(),
        None,
        "{point}: killed\n{}",
        text(&killed)
    );
    // `status` (which recovers nothing) shows the interrupted run.
    let status = sb.hw(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("INTERRUPTED"),
        "{point}: {}",
        text(&status)
    );
    upgrade(sb)
}

/// Production's smoke check fails, then headwarden is killed inside the rollback at `point`.
fn crash_in_rollback(sb: &mut Sandbox, point: &str) -> Output {
    sb.release("0.28.0", "none");
    let env = [
        ("HEADWARDEN_FAIL_AT", "smoke"),
        ("HEADWARDEN_CRASH_AT", point),
    ];
    let killed = upgrade_env(sb, &env);
    assert_eq!(
        killed.status.code(),
        None,
        "{point}: killed\n{}",
        text(&killed)
    );
    upgrade(sb)
}

/// A committed upgrade, then `headwarden rollback` killed at `point`, then `rollback` again.
fn crash_in_manual_rollback(sb: &mut Sandbox, point: &str) -> Output {
    sb.release("0.28.0", "none");
    let up = upgrade(sb);
    assert_eq!(code(&up), 0, "{}", text(&up));
    let killed = sb.hw_env(&["rollback"], &[("HEADWARDEN_CRASH_AT", point)]);
    assert_eq!(
        killed.status.code(),
        None,
        "{point}: killed\n{}",
        text(&killed)
    );
    sb.hw(&["rollback"])
}

/// A run killed inside a rollback, then finished by the next command: exit 0, one production,
/// the release never blamed, an `upgrade.recovered` event.
fn interrupted(
    area: &'static str,
    fault: &'static str,
    expected: &'static str,
    prod: Prod,
    says: &'static [&'static str],
    run: fn(&mut Sandbox) -> Output,
) -> Row {
    Row {
        events: &["upgrade.recovered"],
        says,
        ..row(area, fault, expected, &[0], prod, &[], Some(false), run)
    }
}

/// A SIGKILL at a journaled point, then a fresh `upgrade`: recovery finishes the interrupted run
/// (commits, rolls back or restarts), never starts a second production, never blames the
/// release, and the fresh run then upgrades.
macro_rules! crash_row {
    ($point:literal) => {
        Row {
            area: "promotion",
            fault: concat!("SIGKILL at `", $point, "`, then a fresh `upgrade`"),
            expected: "recovery finishes the run, then the upgrade succeeds; one production",
            exit: &[0],
            prod: Prod::New,
            events: &["upgrade.recovered"],
            bad: Some(false),
            stops_prod: false,
            setup: |_| {},
            ignore: &[],
            says: &["recovered interrupted run 1"],
            run: |sb| crash_then_recover(sb, $point),
        }
    };
}

fn rows() -> Vec<Row> {
    vec![
        // ---- the release feed
        row(
            "feed",
            "connection refused",
            "clear error after 3 retries; nothing changed",
            &[1],
            Prod::Old,
            &[],
            Some(false),
            |sb| {
                sb.release("0.28.0", "none");
                sb.feed_addr = "127.0.0.1:1".into();
                sb.write_config();
                upgrade(sb)
            },
        )
        .says(&["retrying", "attempt=3", "error:"]),
        row(
            "feed",
            "every request hangs past `feed_timeout`",
            "timeout, retried, clear error; nothing changed",
            &[1],
            Prod::Old,
            &[],
            Some(false),
            |sb| {
                sb.release("0.28.0", "none");
                sb.extra_release = "  feed_timeout: 1s\n".into();
                sb.write_config();
                inject(sb, &"hang 5\n".repeat(4));
                upgrade(sb)
            },
        )
        .says(&["timed out", "attempt=3"]),
        row(
            "feed",
            "HTTP 500 on every attempt",
            "retried with back-off, then a clear error",
            &[1],
            Prod::Old,
            &[],
            Some(false),
            |sb| {
                sb.release("0.28.0", "none");
                inject(sb, &"500\n".repeat(4));
                upgrade(sb)
            },
        )
        .says(&["status=500 attempt=3", "error:"]),
        row(
            "feed",
            "403 rate limit resetting in an hour",
            "no waiting an hour: error naming the reset time",
            &[1],
            Prod::Old,
            &[],
            Some(false),
            |sb| {
                sb.release("0.28.0", "none");
                inject(sb, "403 3600\n");
                upgrade(sb)
            },
        )
        .says(&["rate limited until", "release.token_file"]),
        row(
            "feed",
            "429 with Retry-After: 1",
            "waited out, then the upgrade proceeds",
            &[0],
            Prod::New,
            &["upgrade.succeeded"],
            Some(false),
            |sb| {
                sb.release("0.28.0", "none");
                inject(sb, "429 1\n");
                upgrade(sb)
            },
        )
        .says(&["rate limited, waiting", "wait_ms=1000"]),
        row(
            "feed",
            "malformed JSON",
            "clear error; nothing changed",
            &[1],
            Prod::Old,
            &[],
            Some(false),
            |sb| {
                sb.release("0.28.0", "none");
                inject(sb, &"malformed\n".repeat(4));
                upgrade(sb)
            },
        )
        .says(&["malformed JSON"]),
        row(
            "feed",
            "the binary vanishes between listing and download",
            "download fails (404); nothing installed",
            &[1],
            Prod::Old,
            &["upgrade.failed"],
            None,
            |sb| {
                sb.release("0.28.0", "none");
                assert_eq!(code(&sb.hw(&["check"])), 0);
                let name = asset_name(sb);
                sb.edit_meta("0.28.0", |m| m["gone"] = serde_json::json!([name]));
                upgrade(sb)
            },
        )
        .says(&["HTTP 404", "not recorded as bad"]),
        row(
            "feed",
            "checksums.txt replaced between two polls",
            "critical alert, release recorded bad, never installed",
            &[0],
            Prod::Old,
            &["release.artifact_replaced"],
            Some(true),
            |sb| {
                sb.release("0.28.0", "none");
                assert_eq!(code(&sb.hw(&["check"])), 0);
                let sums = sb.path("feed/releases/v0.28.0/assets/checksums.txt");
                let mut text = std::fs::read_to_string(&sums).expect("sums");
                text.push_str(&format!("{}  headscale_extra\n", "0".repeat(64)));
                std::fs::write(&sums, text).expect("replace");
                upgrade(sb)
            },
        )
        .says(&["checksums.txt was replaced after publication"]),
        // ---- download and verification
        row(
            "download",
            "connection cut mid-download (truncated)",
            "refused; no partial file kept",
            &[1],
            Prod::Old,
            &["upgrade.failed"],
            None,
            |sb| {
                sb.release("0.28.0", "none");
                let name = asset_name(sb);
                sb.edit_meta("0.28.0", |m| m["truncate"] = serde_json::json!([name]));
                upgrade(sb)
            },
        )
        .says(&["not recorded as bad"]),
        row(
            "download",
            "listed size differs from the bytes served",
            "refused before use",
            &[1],
            Prod::Old,
            &["upgrade.failed"],
            Some(true),
            |sb| {
                sb.release("0.28.0", "none");
                let name = asset_name(sb);
                sb.edit_meta("0.28.0", |m| {
                    m["size_override"] = serde_json::json!({ name: 123 })
                });
                upgrade(sb)
            },
        )
        .says(&["the release lists 123", "recorded as bad"]),
        row(
            "download",
            "binary does not match checksums.txt",
            "refused, recorded bad",
            &[1],
            Prod::Old,
            &["upgrade.failed"],
            Some(true),
            |sb| {
                sb.release("0.28.0", "none");
                let asset = sb.asset_path("0.28.0");
                let mut bytes = std::fs::read(&asset).expect("asset");
                bytes.extend_from_slice(b"# tampered\n");
                std::fs::write(&asset, bytes).expect("tamper");
                upgrade(sb)
            },
        )
        .says(&["does not match checksums.txt", "recorded as bad"]),
        row(
            "download",
            "GitHub's asset digest disagrees",
            "refused, recorded bad",
            &[1],
            Prod::Old,
            &["upgrade.failed"],
            Some(true),
            |sb| {
                sb.release("0.28.0", "none");
                let name = asset_name(sb);
                sb.edit_meta("0.28.0", |m| {
                    m["digests"] =
                        serde_json::json!({ name: format!("sha256:{}", "ab".repeat(32)) })
                });
                upgrade(sb)
            },
        )
        .says(&["does not match GitHub's asset digest"]),
        row(
            "download",
            "signed with a foreign minisign key",
            "refused, recorded bad",
            &[1],
            Prod::Old,
            &["upgrade.failed"],
            Some(true),
            |sb| {
                sim(&[
                    "keygen",
                    "--out",
                    &sb.path("otherkeys").display().to_string(),
                ]);
                sb.release_with("0.28.0", "none", Some("otherkeys/minisign.key"));
                upgrade(sb)
            },
        )
        .says(&["different key"]),
        row(
            "download",
            "garbled minisign signature",
            "refused, recorded bad",
            &[1],
            Prod::Old,
            &["upgrade.failed"],
            Some(true),
            |sb| {
                sb.release("0.28.0", "none");
                let sig = format!("{}.minisig", sb.asset_path("0.28.0").display());
                std::fs::write(
                    &sig,
                    "untrusted comment: x\nRWgarbage\ntrusted comment: y\nzzz\n",
                )
                .expect("garble");
                upgrade(sb)
            },
        )
        .says(&["signature does not verify"]),
        row(
            "download",
            "unsigned release with `require_signature`",
            "refused, recorded bad",
            &[1],
            Prod::Old,
            &["upgrade.failed"],
            Some(true),
            |sb| {
                sb.extra_release = "  require_signature: true\n".into();
                sb.write_config();
                sb.release_with("0.28.0", "none", None);
                upgrade(sb)
            },
        )
        .says(&["no minisign signature"]),
        row(
            "download",
            "disk full: a 1 MB file-size limit, a 3 MB binary",
            "the write fails cleanly (no SIGXFSZ death); nothing installed",
            &[1],
            Prod::Old,
            &["upgrade.failed"],
            Some(false),
            |sb| {
                let feed = sb.path("feed").display().to_string();
                let key = sb.path("keys/minisign.key").display().to_string();
                sim(&[
                    "make-release",
                    "--feed",
                    &feed,
                    "--version",
                    "0.28.0",
                    "--fault",
                    "none",
                    "--pad",
                    "3000000",
                    "--sign",
                    &key,
                ]);
                // State exists before the limit applies (the state store itself is small).
                assert_eq!(code(&sb.hw(&["check"])), 0);
                let cfg = sb.config_path().display().to_string();
                Command::new("prlimit")
                    .args([
                        "--fsize=1000000",
                        "--",
                        hw(),
                        "--config",
                        &cfg,
                        "upgrade",
                        "--yes",
                    ])
                    .env_remove("HEADWARDEN_CRASH_AT")
                    .env_remove("HEADWARDEN_FAIL_AT")
                    .output()
                    .expect("prlimit (util-linux)")
            },
        )
        .says(&["File too large"]),
        row(
            "download",
            "download directory not writable (a file in its place)",
            "clear error naming the path; nothing changed",
            &[1],
            Prod::Old,
            &["upgrade.failed"],
            Some(false),
            |sb| {
                sb.release("0.28.0", "none");
                assert_eq!(code(&sb.hw(&["check"])), 0);
                std::fs::write(sb.path("state/downloads"), "in the way").expect("block");
                upgrade(sb)
            },
        )
        .says(&["download directory", "/state/downloads"]),
        // ---- staging
        row(
            "staging",
            "candidate crashes at start",
            "rejected on staging; production never touched",
            &[1],
            Prod::Old,
            &["upgrade.staging_failed"],
            Some(true),
            |sb| {
                sb.release("0.28.0", "crash");
                upgrade(sb)
            },
        )
        .says(&["staging REJECTED", "production was not touched"]),
        row(
            "staging",
            "candidate never becomes healthy",
            "rejected after smoke.timeout; child stopped",
            &[1],
            Prod::Old,
            &["upgrade.staging_failed"],
            Some(true),
            |sb| {
                sb.release("0.28.0", "never-healthy");
                upgrade(sb)
            },
        )
        .says(&["not healthy after 5s", "production was not touched"]),
        row(
            "staging",
            "migration silently drops nodes",
            "data parity rejects it on the copy",
            &[1],
            Prod::Old,
            &["upgrade.staging_failed"],
            Some(true),
            |sb| {
                sb.release("0.28.0", "drop-rows");
                upgrade(sb)
            },
        )
        .says(&["data_parity", "missing after migration"]),
        row(
            "staging",
            "candidate presents a different Noise key",
            "rejected: clients would be locked out",
            &[1],
            Prod::Old,
            &["upgrade.staging_failed"],
            Some(true),
            |sb| {
                sb.release("0.28.0", "noise-key");
                upgrade(sb)
            },
        )
        .says(&["Noise public key changed"]),
        row(
            "staging",
            "staging port already in use (twice)",
            "one retry on fresh ports, then rejected; the release is not blamed",
            &[1],
            Prod::Old,
            &["upgrade.staging_failed"],
            Some(false),
            |sb| {
                sb.release("0.28.0", "port-in-use");
                upgrade(sb)
            },
        )
        .says(&["retrying on fresh ports", "could not bind its ports twice"]),
        // ---- promotion
        row(
            "promotion",
            "stopping production fails",
            "nothing changed: the old version keeps running, the release is not blamed",
            &[1],
            Prod::Old,
            &["upgrade.failed"],
            Some(false),
            |sb| {
                sb.release("0.28.0", "none");
                upgrade_env(sb, &[("HEADWARDEN_FAIL_AT", "stop")])
            },
        )
        .says(&["nothing was changed", "not recorded as bad"]),
        row(
            "promotion",
            "the new version migrates, replaces the noise key, rewrites the config, then crashes",
            "rolled back: database, noise key and config restored with their owners and modes",
            &[3],
            Prod::Old,
            &["upgrade.rolled_back"],
            Some(true),
            |sb| {
                sb.release("0.28.0", "prod-wreck");
                upgrade(sb)
            },
        )
        .says(&["rolled back to 0.27.1"]),
        row(
            "promotion",
            "the new version fails to start",
            "rolled back: binary, database, noise key restored",
            &[3],
            Prod::Old,
            &["upgrade.rolled_back"],
            Some(true),
            |sb| {
                sb.release("0.28.0", "none");
                upgrade_env(sb, &[("HEADWARDEN_FAIL_AT", "start")])
            },
        )
        .says(&["rolled back to 0.27.1"]),
        row(
            "promotion",
            "healthy, then crashes on its next start (post-switch smoke fails)",
            "rolled back with its data",
            &[3],
            Prod::Old,
            &["upgrade.rolled_back"],
            Some(true),
            |sb| {
                sb.release("0.28.0", "none");
                upgrade_env(sb, &[("HEADWARDEN_FAIL_AT", "smoke")])
            },
        )
        .says(&["rolled back to 0.27.1"]),
        Row {
            area: "promotion",
            fault: "smoke fails and the database restore cannot be written",
            expected: "exit 5: the verified backup is named for a manual restore",
            exit: &[5],
            prod: Prod::Manual,
            events: &["upgrade.rollback_failed"],
            bad: None,
            stops_prod: true,
            setup: |_| {},
            ignore: &[],
            says: &["the rollback failed too", "/backups/run1-hop0-0.27.1"],
            run: |sb| {
                sb.release("0.28.0", "none");
                upgrade_env(sb, &[("HEADWARDEN_FAIL_AT", "smoke,restore")])
            },
        },
        crash_row!("stage_start:after"),
        crash_row!("stop:before"),
        crash_row!("stop:after"),
        crash_row!("backup:after"),
        crash_row!("switch:before"),
        crash_row!("switch:after"),
        crash_row!("start:after"),
        crash_row!("smoke:before"),
        crash_row!("smoke:after"),
        crash_row!("smoke:done"),
        interrupted(
            "promotion",
            "smoke fails, SIGKILL inside the rollback (`rollback:before`), then `upgrade`",
            "recovery finishes the rollback; the fresh run upgrades; one production",
            Prod::New,
            &["recovered interrupted run 1: rolled_back (interrupted after the switch"],
            |sb| crash_in_rollback(sb, "rollback:before"),
        ),
        interrupted(
            "promotion",
            "smoke fails, SIGKILL after the rollback (`rollback:done`), then `upgrade`",
            "recovery sees the rollback done and does not repeat it; the fresh run upgrades",
            Prod::New,
            &["recovered interrupted run 1: rolled_back (the rollback had completed)"],
            |sb| crash_in_rollback(sb, "rollback:done"),
        ),
        interrupted(
            "rollback",
            "`headwarden rollback` killed at `safety_backup:after`, then `rollback` again",
            "the old version on its pre-upgrade data; one production",
            Prod::Old,
            &["recovered interrupted run 2: aborted (interrupted before the restore"],
            |sb| crash_in_manual_rollback(sb, "safety_backup:after"),
        ),
        interrupted(
            "rollback",
            "`headwarden rollback` killed at `manual_rollback:before`, then `rollback` again",
            "recovery finishes the restore; the old version on its pre-upgrade data",
            Prod::Old,
            &["recovered interrupted run 2: rolled_back (finished the interrupted manual rollback)"],
            |sb| crash_in_manual_rollback(sb, "manual_rollback:before"),
        ),
        // ---- chat and the Headscale API
        row(
            "chat",
            "chat down for the whole run",
            "the upgrade is unaffected; its events wait in the outbox",
            &[0],
            Prod::New,
            &["upgrade.started", "upgrade.promoted", "upgrade.succeeded"],
            Some(false),
            |sb| {
                sb.extra_top = "notify:\n  - url: http://127.0.0.1:1/hook\n".into();
                sb.write_config();
                sb.release("0.28.0", "none");
                upgrade(sb)
            },
        )
        .says(&["stay queued"]),
        Row {
            area: "api",
            fault: "Headscale API unreachable during the key job",
            expected: "clear error with a hint; nothing minted or expired",
            exit: &[1],
            prod: Prod::Old,
            events: &[],
            bad: None,
            stops_prod: true,
            setup: |sb| {
                sb.enable_api(false);
                sb.seed("late", 100, None, "");
            },
            ignore: &[],
            says: &["cannot reach the Headscale API", "hint:"],
            run: |sb| {
                let stop = Command::new(sb.path("prod/service.sh"))
                    .arg("stop")
                    .output()
                    .expect("stop");
                assert!(stop.status.success());
                sb.hw(&["keys", "run"])
            },
        },
        Row {
            area: "api",
            fault: "API key revoked mid-run (by a hook after plan)",
            expected: "the next call fails with a clear error; nothing minted",
            exit: &[1],
            prod: Prod::Old,
            events: &[],
            bad: None,
            stops_prod: false,
            setup: |sb| {
                sb.enable_api(false);
                sb.seed("late", 100, None, "");
            },
            ignore: &["api_keys"],
            says: &["refused the API key (401", "hint:"],
            run: |sb| {
                let key = std::fs::read_to_string(sb.path("api-key")).expect("key");
                let key = key.trim();
                // `hskey-api-PREFIX-SECRET` (0.28+) or `PREFIX.SECRET` before.
                let prefix = match key.strip_prefix("hskey-api-") {
                    Some(rest) => rest.split('-').next(),
                    None => key.split('.').next(),
                }
                .expect("prefix")
                .to_string();
                let hook = sb.path("revoke.sh");
                std::fs::write(
                    &hook,
                    format!(
                        "#!/bin/sh\nexec '{}' -c '{}' apikeys expire --prefix '{prefix}'\n",
                        sb.path("prod/bin/headscale").display(),
                        sb.path("prod/etc/config.yaml").display()
                    ),
                )
                .expect("hook");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
                let pb = sb.path("rotate-keys.yaml");
                std::fs::write(
                    &pb,
                    format!(
                        "name: rotate-keys\nsteps:\n  - step: plan\n  - step: hook\n    argv: [{}]\n    timeout: 10s\n  - step: rotate\n",
                        hook.display()
                    ),
                )
                .expect("playbook");
                sb.extra_top = format!("playbooks:\n  rotate_keys: {}\n", pb.display());
                sb.write_config();
                sb.hw(&["keys", "run"])
            },
        },
    ]
}

struct Observed {
    line: String,
    problems: Vec<String>,
}

/// Pre-auth keys, an API key and a policy, so the dump compares every table with rows in it.
fn fill_every_table(sb: &Sandbox) {
    sb.prod_cmd(&[
        "preauthkeys",
        "create",
        "--user",
        "1",
        "--reusable",
        "-e",
        "24h",
    ]);
    sb.prod_cmd(&["debug", "apikey"]);
    let policy = sb.path("policy.hujson");
    std::fs::write(
        &policy,
        r#"{"acls": [{"action": "accept", "src": ["user1@"], "dst": ["user1@:*"]}]}"#,
    )
    .expect("policy");
    sb.prod_cmd(&["policy", "set", "-f", &policy.display().to_string()]);
    let dump = sb.db_dump();
    for table in ["users", "nodes", "pre_auth_keys", "api_keys", "policies"] {
        assert!(
            dump.iter().any(|l| l.starts_with(&format!("{table}: "))),
            "the fixture left {table} empty"
        );
    }
}

/// Bytes (for the key and config), owner and mode of production's files.
fn file_facts(sb: &Sandbox) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for (name, bytes) in [
        ("prod/lib/noise_private.key", true),
        ("prod/etc/config.yaml", true),
        ("prod/lib/db.sqlite", false),
    ] {
        let p = sb.path(name);
        match std::fs::symlink_metadata(&p) {
            Ok(m) => out.push(format!(
                "{name}: uid {} gid {} mode {:o} {}{}",
                m.uid(),
                m.gid(),
                m.mode() & 0o7777,
                if m.file_type().is_symlink() {
                    "SYMLINK "
                } else {
                    ""
                },
                if bytes {
                    format!("{:?}", std::fs::read_to_string(&p).unwrap_or_default())
                } else {
                    String::new()
                }
            )),
            Err(e) => out.push(format!("{name}: {e}")),
        }
    }
    out
}

fn check(row: &Row) -> Observed {
    let mut sb = Sandbox::new("0.27.1");
    fill_every_table(&sb);
    (row.setup)(&mut sb);
    let dump = |sb: &Sandbox| -> Vec<String> {
        sb.db_dump()
            .into_iter()
            .filter(|l| !row.ignore.iter().any(|t| l.starts_with(&format!("{t}: "))))
            .collect()
    };
    let before = dump(&sb);
    let files_before = file_facts(&sb);
    let logical = sb.dump();
    let out = (row.run)(&mut sb);
    let log_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fault-matrix");
    let _ = std::fs::create_dir_all(&log_dir);
    let _ = std::fs::write(
        log_dir.join(format!(
            "{}-{}.log",
            row.area,
            row.fault.replace(['/', ' ', '`'], "_")
        )),
        text(&out),
    );
    let mut problems = Vec::new();
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in row.says {
        if !said.to_lowercase().contains(&needle.to_lowercase()) {
            problems.push(format!("the output does not say {needle:?}:\n{said}"));
        }
    }
    let rc = out.status.code().unwrap_or(-1);
    if !row.exit.contains(&rc) {
        problems.push(format!(
            "exit {rc}, expected {:?}\n{}",
            row.exit,
            text(&out)
        ));
    }
    // What runs: the version answering on production's address, the server processes, and
    // what the service manager says.
    let served = sb.served_version();
    let processes = sb.prod_processes();
    let service_running = sb.service_running();
    let status = sb.status_json();
    let open = status["interrupted_runs"]
        .as_array()
        .expect("status --json has interrupted_runs")
        .len();
    if open > 0 {
        problems.push(format!("{open} journal entries left open"));
    }
    let healthy = status["production"]["health"] == "healthy";
    let same_db = dump(&sb) == before;
    let files_after = file_facts(&sb);
    let same_files = files_after == files_before;
    // A row that stops production itself has nothing serving: ask the binary it would run.
    let old = if row.stops_prod {
        sb.prod_version() == "v0.27.1"
    } else {
        served == "v0.27.1"
    };
    let should_run = !row.stops_prod && row.prod != Prod::Manual;
    if should_run && (processes.len() != 1 || !service_running) {
        problems.push(format!(
            "expected exactly one production, running per the service manager: {} processes {processes:?}, service running: {service_running}",
            processes.len()
        ));
    }
    let new_ok = served == "v0.28.0" && healthy && sb.dump() == logical;
    match row.prod {
        Prod::Old => {
            if !old {
                problems.push(format!("production serves {served}, expected v0.27.1"));
            }
            if !same_db {
                problems.push("production database changed".into());
            }
            if !same_files {
                problems.push(format!(
                    "production files changed:\nbefore {files_before:#?}\nafter {files_after:#?}"
                ));
            }
        }
        Prod::New => {
            if !new_ok {
                problems.push(format!(
                    "expected new and healthy with every user and node: serves {served}, {}",
                    status["production"]["health"]
                ));
            }
        }
        Prod::Manual => {
            if service_running || !processes.is_empty() {
                problems.push(format!(
                    "production should be stopped for the manual restore: service running {service_running}, {processes:?}"
                ));
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            let named = stderr
                .split_whitespace()
                .find(|w| w.contains("/backups/"))
                .map(|w| w.trim_end_matches([',', ':', ';']).to_string());
            match named
                .as_deref()
                .map(|d| dump_sqlite(&std::path::Path::new(d).join("db.sqlite")))
            {
                Some(Ok(rows)) if rows == before => {}
                Some(Ok(_)) => {
                    problems.push("the named backup differs from production before the run".into())
                }
                Some(Err(e)) => problems.push(format!("the named backup is not usable: {e}")),
                None => problems.push(format!("no backup named\n{stderr}")),
            }
        }
    }
    if should_run && !healthy {
        problems.push(format!(
            "production unhealthy: {}",
            status["production"]["health"]
        ));
    }
    let events: Vec<String> = sb.outbox().into_iter().map(|(e, _)| e).collect();
    for e in row.events {
        if !events.iter().any(|x| x == e) {
            problems.push(format!("no {e} event in {events:?}"));
        }
    }
    let bad = status["bad_releases"].to_string().contains("v0.28.0");
    if let Some(want) = row.bad {
        if bad != want {
            problems.push(format!("release recorded bad: {bad}, expected {want}"));
        }
    }
    // Events as a multiset, in first-seen order: a doubled event shows as "×2".
    let mut shown: Vec<(&str, usize)> = Vec::new();
    for e in &events {
        let relevant = e.starts_with("upgrade.") || e.starts_with("release.artifact");
        if !relevant {
            continue;
        }
        match shown.iter_mut().find(|(n, _)| n == e) {
            Some((_, c)) => *c += 1,
            None => shown.push((e, 1)),
        }
    }
    let state = if row.prod == Prod::Manual {
        "production stopped (service and processes), named backup intact and equal to before"
            .to_string()
    } else if old {
        format!(
            "serves v0.27.1, database {}{}, key and config {}",
            if same_db { "identical" } else { "CHANGED" },
            if row.ignore.is_empty() {
                String::new()
            } else {
                format!(" (but {})", row.ignore.join(", "))
            },
            if same_files {
                "identical with owners and modes"
            } else {
                "CHANGED"
            }
        )
    } else {
        format!(
            "serves {served}, {}",
            if healthy { "healthy" } else { "UNHEALTHY" }
        )
    };
    let running = if should_run {
        format!("; {} production process", processes.len())
    } else {
        String::new()
    };
    let line = format!(
        "| {} | {} | {} | exit {rc}; {state}{running}; journal {}; {}{} |",
        row.area,
        row.fault,
        row.expected,
        if open == 0 { "closed" } else { "OPEN" },
        if shown.is_empty() {
            "no upgrade events".to_string()
        } else {
            shown
                .iter()
                .map(|(e, c)| {
                    if *c > 1 {
                        format!("{e} ×{c}")
                    } else {
                        e.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        },
        if bad { "; recorded bad" } else { "" }
    );
    Observed { line, problems }
}

#[test]
fn fault_matrix() {
    let rows = rows();
    // Two rows at a time (each has its own sandbox: production, feed, state): on 2 loaded cores a
    // third would put the 5 s smoke timeouts at risk.
    let mut results: Vec<Option<Observed>> = (0..rows.len()).map(|_| None).collect();
    for chunk in (0..rows.len()).collect::<Vec<_>>().chunks(2) {
        let done: Vec<(usize, Observed)> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let row = &rows[i];
                    (i, s.spawn(move || check(row)))
                })
                .collect();
            handles
                .into_iter()
                .map(|(i, h)| {
                    let o = h.join().unwrap_or_else(|_| Observed {
                        line: format!(
                            "| {} | {} | {} | PANICKED |",
                            rows[i].area, rows[i].fault, rows[i].expected
                        ),
                        problems: vec!["the row panicked (see the output above)".into()],
                    });
                    (i, o)
                })
                .collect()
        });
        for (i, o) in done {
            results[i] = Some(o);
        }
    }
    let mut table = String::from("| area | fault | expected | observed |\n|---|---|---|---|\n");
    let mut failures = Vec::new();
    for (row, o) in rows.iter().zip(results.into_iter().flatten()) {
        table.push_str(&o.line);
        table.push('\n');
        if !o.problems.is_empty() {
            failures.push(format!(
                "{} / {}: {}",
                row.area,
                row.fault,
                o.problems.join("; ")
            ));
        }
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fault-matrix.md");
    let _ = std::fs::write(&out, &table);
    assert!(failures.is_empty(), "{}\n\n{table}", failures.join("\n\n"));
    let readme_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README");
    let (start, end) = ("<!-- fault-matrix:start -->\n", "<!-- fault-matrix:end -->");
    let (a, b) = (
        readme
            .find(start)
            .expect("README has the fault-matrix markers")
            + start.len(),
        readme
            .find(end)
            .expect("README has the fault-matrix markers"),
    );
    if std::env::var("HEADWARDEN_WRITE_MATRIX").is_ok() {
        let updated = format!("{}{table}{}", &readme[..a], &readme[b..]);
        std::fs::write(&readme_path, updated).expect("write README");
    } else {
        assert_eq!(
            &readme[a..b],
            table,
            "README's reliability table is stale: HEADWARDEN_WRITE_MATRIX=1 cargo test --test it fault_matrix"
        );
    }
}
