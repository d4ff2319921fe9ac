//! Real Headscale and real Tailscale clients (built by `scripts/rig`, versions in rig/versions).
//!
//! Production is a real `headscale` started offline as `nobody`; the release feed publishes real
//! builds, named, checksummed and signed like upstream's assets; the tailnet is built through
//! the real server's CLI and real `tailscaled` clients in userspace-networking mode, all on
//! 127.0.0.1. A missing binary fails the test with the command that builds it: nothing here is
//! skipped.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    code, hw, journal_has, sqlite_column, text, Client, Sandbox, UidWatch, PROD_UID,
};

/// Every headscale version of the rig, oldest first.
pub fn headscale_versions() -> Vec<String> {
    let list = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rig/versions"))
        .expect("rig/versions");
    list.lines()
        .filter_map(|l| l.strip_prefix("headscale "))
        .map(|v| v.trim().to_string())
        .collect()
}

/// Production's real CLI (`-o json`), parsed.
pub fn cli_json(sb: &Sandbox, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = sb.prod_cmd(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// A user's numeric id from the real CLI's `users list -o json` (Go JSON up to 0.29).
pub fn user_id(sb: &Sandbox, name: &str) -> String {
    cli_json(sb, &["users", "list"])
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["name"] == name)
        .map(|u| u["id"].to_string().trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no user {name}"))
}

/// A pre-auth key for `user` from the real CLI.
pub fn preauth_key(sb: &Sandbox, user: &str, extra: &[&str]) -> String {
    let id = user_id(sb, user);
    let mut args = vec![
        "preauthkeys",
        "create",
        "--user",
        &id,
        "--expiration",
        "24h",
    ];
    args.extend_from_slice(extra);
    let v = cli_json(sb, &args);
    v["key"].as_str().expect("key").to_string()
}

/// A tailnet built through the real server: two users with a client each, a tagged client, an
/// unused reusable key, an API key and a policy.
pub struct Tailnet {
    pub alice: Client,
    pub bob: Client,
    pub server: Client,
}

pub fn tailnet(sb: &Sandbox) -> Tailnet {
    for u in ["alice", "bob", "ops"] {
        sb.prod_cmd(&["users", "create", u]);
    }
    let policy = sb.path("policy.hujson");
    std::fs::write(
        &policy,
        r#"{
  // Everyone reaches everyone: the tests ping between users.
  "tagOwners": {"tag:server": ["ops@"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]
}"#,
    )
    .expect("policy");
    sb.prod_cmd(&["policy", "set", "-f", &policy.display().to_string()]);
    let alice = Client::join(sb, "alice-laptop", &preauth_key(sb, "alice", &[]));
    let bob = Client::join(sb, "bob-phone", &preauth_key(sb, "bob", &[]));
    let server = Client::join(
        sb,
        "build-server",
        &preauth_key(sb, "ops", &["--tags", "tag:server"]),
    );
    preauth_key(sb, "bob", &["--reusable"]);
    sb.prod_cmd(&["apikeys", "create", "--expiration", "90d"]);
    Tailnet { alice, bob, server }
}

/// The identity of every user and node, from the real database (columns every version has).
/// The connectivity probe's own user and its used one-time keys, which it keeps, are left out.
pub fn identities(sb: &Sandbox) -> Vec<String> {
    let db = rusqlite::Connection::open_with_flags(
        sb.path("prod/lib/db.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("db");
    let mut out = Vec::new();
    let mut users = db
        .prepare("SELECT id, name FROM users WHERE name <> 'headwarden-probe' ORDER BY id")
        .expect("users");
    for r in users
        .query_map([], |r| {
            Ok(format!(
                "user {} {}",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?
            ))
        })
        .expect("users")
    {
        out.push(r.expect("row"));
    }
    let mut nodes = db
        .prepare("SELECT id, machine_key, node_key, hostname, ipv4 FROM nodes ORDER BY id")
        .expect("nodes");
    for r in nodes
        .query_map([], |r| {
            Ok(format!(
                "node {} {} {} {} {}",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?.unwrap_or_default()
            ))
        })
        .expect("nodes")
    {
        out.push(r.expect("row"));
    }
    let mut keys = db
        .prepare("SELECT id FROM pre_auth_keys WHERE user_id IS NULL OR user_id NOT IN (SELECT id FROM users WHERE name = 'headwarden-probe') ORDER BY id")
        .expect("keys");
    for r in keys
        .query_map([], |r| Ok(format!("pre_auth_key {}", r.get::<_, i64>(0)?)))
        .expect("keys")
    {
        out.push(r.expect("row"));
    }
    let mut api = db
        .prepare("SELECT id, prefix FROM api_keys ORDER BY id")
        .expect("api keys");
    for r in api
        .query_map([], |r| {
            Ok(format!(
                "api_key {} {}",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?
            ))
        })
        .expect("api keys")
    {
        out.push(r.expect("row"));
    }
    out
}

/// 0.26.1 → every minor → the newest 0.29.x in one `upgrade`, on the real server with real
/// clients: each hop staged and promoted, every user, node and key kept, the noise key
/// unchanged, and the clients still reach each other afterwards.
#[test]
fn real_upgrade_through_every_minor_keeps_the_tailnet() {
    let versions = headscale_versions();
    let (first, rest) = versions.split_first().expect("versions");
    let sb = Sandbox::new_real(first);
    let net = tailnet(&sb);
    assert!(
        net.alice.pings(&net.bob),
        "the tailnet works before the upgrade"
    );
    for v in rest {
        sb.release_real(v);
    }
    let before = identities(&sb);
    let noise = std::fs::read(sb.path("prod/lib/noise_private.key")).expect("noise key");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let newest = rest.last().expect("newest");
    assert_eq!(sb.served_version(), format!("v{newest}"), "{}", text(&out));
    assert_eq!(identities(&sb), before, "every user, node and key kept");
    assert_eq!(
        std::fs::read(sb.path("prod/lib/noise_private.key")).expect("noise key"),
        noise
    );
    assert_eq!(sb.prod_processes().len(), 1);
    assert!(
        net.alice.pings(&net.bob),
        "alice reaches bob after the upgrade"
    );
    assert!(
        net.server.pings(&net.alice),
        "the tagged server reaches alice"
    );
}

/// The ids of the migrations applied to production's database (gormigrate's table).
fn fs_uid(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("stat").uid()
}

fn migrations(sb: &Sandbox) -> Vec<String> {
    sqlite_column(
        &sb.path("prod/lib/db.sqlite"),
        "SELECT id FROM migrations ORDER BY id",
    )
}

/// A real 0.28.0 that migrates production's database and then fails: rolled back to 0.27.1
/// with the pre-upgrade database (its migrations), binary and noise key, and the clients are
/// back on the tailnet.
#[test]
fn real_production_failure_rolls_back_binary_and_data() {
    let sb = Sandbox::new_real("0.27.1");
    let net = tailnet(&sb);
    sb.release_failing_on_production("0.28.0");
    let (ids, applied) = (identities(&sb), migrations(&sb));
    let noise = std::fs::read(sb.path("prod/lib/noise_private.key")).expect("noise key");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        text(&out).contains("staging passed for 0.28.0"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.served_version(), "v0.27.1");
    assert_eq!(migrations(&sb), applied, "the pre-upgrade database is back");
    assert_eq!(identities(&sb), ids);
    assert_eq!(
        std::fs::read(sb.path("prod/lib/noise_private.key")).expect("noise key"),
        noise
    );
    assert_eq!(sb.prod_processes().len(), 1);
    assert!(
        net.alice.pings(&net.bob),
        "the clients are back after the rollback"
    );
}

/// 0.29.2 → the newest 0.29.x patch on the real server: 0.29.3+ refuse `/key` to old clients,
/// and headwarden's staging check must still read the noise key.
#[test]
fn real_patch_upgrade_within_0_29() {
    let versions = headscale_versions();
    let newest = versions.last().expect("versions");
    let sb = Sandbox::new_real("0.29.2");
    let net = tailnet(&sb);
    sb.release_real(newest);
    let staging = sb.path("state/staging");
    let watch = UidWatch::start(&staging, "serve");
    let out = sb.hw(&["upgrade", "--yes"]);
    let uids = watch.stop();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("Noise public key unchanged"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.served_version(), format!("v{newest}"));
    // The candidate ran on staging as production's account, never as root (security review
    // N7); only its data directory is that account's.
    assert_eq!(uids, BTreeSet::from([PROD_UID]), "staging server uids");
    assert_eq!(fs_uid(&staging.join("data")), PROD_UID);
    assert_eq!(fs_uid(&staging), 0);
    assert!(net.bob.pings(&net.alice));
}

/// The key job with real clients: a node past `remind_before` gets its reminder with a one-time
/// key; the client runs the command from the reminder; headwarden sees the rotation and retires
/// the key.
#[test]
fn real_key_rotation_with_the_reminder_command() {
    let versions = headscale_versions();
    let newest = versions.last().expect("versions");
    let mut sb = Sandbox::new_real(newest);
    let net = tailnet(&sb);
    sb.enable_api(true);
    // Every untagged node is due at once: a deadline ten minutes after registration, reminders
    // from 599 s before it. The tagged server is exempt by default.
    sb.extra_top = "keys:\n  max_age: 10m\n  remind_before: [599s]\n  grace: 1h\n".into();
    let sink = crate::keys::key_channel(&mut sb);
    let out = sb.hw(&["-vv", "keys", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let reminders = crate::keys::key_messages(&sink);
    let command = reminders
        .iter()
        .find(|(e, p)| e == "keys.reminder" && p["node"]["name"] == "alice-laptop")
        .map(|(_, p)| p["command"].as_str().expect("command").to_string())
        .unwrap_or_else(|| panic!("no reminder for alice-laptop: {reminders:#?}"));
    let key = command
        .split_whitespace()
        .skip_while(|w| *w != "--auth-key")
        .nth(1)
        .expect("key")
        .to_string();
    assert!(
        !text(&out).contains(&key),
        "the key is never printed at -vv"
    );
    let before = identities(&sb);
    // The command from the reminder, run on the node.
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words[0], "tailscale", "{command}");
    let mut ran = net.alice.cli(&words[1..]);
    // alice joined with --hostname and --accept-dns=false: real tailscale refuses a command that
    // leaves them out and prints the complete one, as the reminder says. A person runs that.
    let refused = String::from_utf8_lossy(&ran.stderr).to_string();
    if !ran.status.success() && refused.contains("requires mentioning all") {
        let full = refused
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("tailscale up "))
            .expect("tailscale printed the complete command");
        assert!(full.contains(&key), "the same one-time key: {full}");
        let args: Vec<&str> = full.split_whitespace().skip(1).collect();
        ran = net.alice.cli(&args);
    }
    assert!(ran.status.success(), "{command}: {}", text(&ran));
    // `tailscale up` returns while the client still runs on its old key; the new node key
    // reaches the server moments later (seconds when the machine is idle; on 2 loaded cores
    // running two tests at once it once took longer than a minute).
    let deadline = Instant::now() + Duration::from_secs(180);
    while identities(&sb) == before {
        assert!(Instant::now() < deadline, "the node never re-registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = sb.hw(&["keys", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("alice-laptop: rotated (new node key)"),
        "{}",
        text(&out)
    );
    assert!(said.contains("1 one-time key(s) retired"), "{}", text(&out));
    assert!(sb.outbox().iter().any(|(e, _)| e == "keys.rotated"));
    assert!(net.alice.pings(&net.bob), "alice is still on the tailnet");
}

/// `enforce: expire` on the real server: a node overdue past its grace is expired through the
/// API, and its real client sees it (it has to log in again); the exempt tagged server is not.
#[test]
fn real_enforcement_expires_an_overdue_node_and_the_client_sees_it() {
    let versions = headscale_versions();
    let newest = versions.last().expect("versions");
    let mut sb = Sandbox::new_real(newest);
    let net = tailnet(&sb);
    sb.enable_api(true);
    sb.extra_top =
        "keys:\n  max_age: 3s\n  remind_before: [2s]\n  grace: 1s\n  enforce: expire\n".into();
    sb.write_config();
    // Wait (by polling the plan, not sleeping) until bob's node is past its deadline and grace.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let plan = sb.hw(&["keys", "plan", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("plan json");
        let bob = v
            .as_array()
            .expect("plans")
            .iter()
            .find(|p| p["name"] == "bob-phone")
            .expect("bob")
            .clone();
        if bob["action"]["action"] == "expire" {
            break;
        }
        assert!(Instant::now() < deadline, "bob never became overdue: {bob}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = sb.hw(&["keys", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        sb.outbox().iter().any(|(e, _)| e == "keys.expired"),
        "{}",
        text(&out)
    );
    let state = |c: &Client| -> String {
        let out = c.cli(&["status", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .map(|v| v["BackendState"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while state(&net.bob) != "NeedsLogin" {
        assert!(
            Instant::now() < deadline,
            "bob's client never noticed the expiry: {}",
            state(&net.bob)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        state(&net.server),
        "Running",
        "the exempt tagged server keeps running"
    );
}

/// A key 0.29 refuses to start with, set only in production's service environment
/// (`HEADSCALE_RANDOMIZE_CLIENT_PORT`, as a leftover `Environment=` line would): the real 0.29
/// server would start on staging (which used to get no environment) and fail on production.
/// headwarden reads the running server's environment and stops before anything is downloaded.
#[test]
fn real_removed_key_in_the_service_environment_blocks_the_upgrade() {
    let versions = headscale_versions();
    let newest = versions.last().expect("versions");
    let sb = Sandbox::new_real_env("0.28.0", &["HEADSCALE_RANDOMIZE_CLIENT_PORT=false"]);
    sb.release_real(newest);
    let check = sb.hw(&["check"]);
    assert!(
        text(&check).contains("HEADSCALE_RANDOMIZE_CLIENT_PORT (in the service's environment)"),
        "{}",
        text(&check)
    );
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert_eq!(sb.served_version(), "v0.28.0");
    assert!(
        !sb.path(&format!("state/versions/{newest}")).exists(),
        "nothing installed"
    );
    // The real server agrees: 0.29 refuses to start with that variable.
    let refused = Command::new(crate::support::headscale(newest))
        .args([
            "configtest",
            "-c",
            &sb.path("prod/etc/config.yaml").display().to_string(),
        ])
        .env("HEADSCALE_RANDOMIZE_CLIENT_PORT", "false")
        // Never production's database: configtest opens and migrates it.
        .env(
            "HEADSCALE_DATABASE_SQLITE_PATH",
            sb.path("configtest.sqlite"),
        )
        .env("HEADSCALE_UNIX_SOCKET", sb.path("configtest.sock"))
        .output()
        .expect("configtest");
    assert!(!refused.status.success(), "{}", text(&refused));
}

/// SIGKILL at every journaled step of a real promotion (0.28.0 → newest 0.29.x), then a fresh
/// `upgrade`: recovery finishes the interrupted run without a second server, and the upgrade ends
/// on the new version with every user, node and key. Two of the points run with real clients,
/// which must still reach each other.
#[test]
fn real_sigkill_at_every_journaled_step_then_recovery() {
    let versions = headscale_versions();
    let newest = versions.last().expect("versions");
    let points = [
        ("stage_start:after", false),
        ("stop:before", false),
        ("stop:after", false),
        ("backup:after", false),
        ("switch:before", false),
        ("switch:after", true),
        ("start:after", false),
        ("verify_backup:done", false),
        ("smoke:after", false),
        ("smoke:done", true),
    ];
    for (point, with_clients) in points {
        let sb = Sandbox::new_real("0.28.0");
        let net = if with_clients {
            Some(tailnet(&sb))
        } else {
            for u in ["alice", "bob"] {
                sb.prod_cmd(&["users", "create", u]);
            }
            preauth_key(&sb, "alice", &["--reusable"]);
            sb.prod_cmd(&["apikeys", "create", "--expiration", "90d"]);
            None
        };
        sb.release_real(newest);
        let before = identities(&sb);
        let killed = sb.hw_env(&["upgrade", "--yes"], &[("HEADWARDEN_CRASH_AT", point)]);
        assert_eq!(
            killed.status.code(),
            None,
            "{point}: killed\n{}",
            text(&killed)
        );
        let out = sb.hw(&["upgrade", "--yes"]);
        assert_eq!(code(&out), 0, "{point}: {}", text(&out));
        assert!(
            text(&out).contains("recovered interrupted run"),
            "{point}: {}",
            text(&out)
        );
        assert_eq!(sb.served_version(), format!("v{newest}"), "{point}");
        assert_eq!(sb.prod_processes().len(), 1, "{point}: one production");
        assert_eq!(identities(&sb), before, "{point}");
        if let Some(net) = &net {
            assert!(net.alice.pings(&net.bob), "{point}: the tailnet works");
        }
    }
}

/// The audit against the real server's API and upstream's own example config of every version.
#[test]
fn real_audit_on_the_api_and_upstreams_example_configs() {
    use crate::audit::{audit, ids};
    let mut sb = Sandbox::new_real("0.28.0");
    let _net = tailnet(&sb);
    sb.enable_api(true);
    let (_, v) = audit(&sb, &[]);
    let open = ids(&v, "findings");
    assert!(
        v["skipped"].as_array().is_some_and(Vec::is_empty),
        "every check ran against the real API: {v:#}"
    );
    for expected in [
        "policy.allow_all",
        "enrollment.reusable_preauth_key",
        "nodes.no_expiry",
    ] {
        assert!(
            open.iter().any(|id| id.starts_with(expected)),
            "{expected} in {open:?}"
        );
    }
    // Upstream's example config of each version, audited as production's config (0.28.0 runs,
    // so the next minor is 0.29): the examples up to 0.28 still carry
    // `randomize_client_port: false`, which 0.29 refuses to start with.
    let cfg = std::fs::read_to_string(sb.config_path()).expect("cfg");
    for version in headscale_versions() {
        let example = sb.path(&format!("config-example-{version}.yaml"));
        std::fs::copy(
            crate::support::rig_dir().join(format!("headscale/{version}/config-example.yaml")),
            &example,
        )
        .expect("example");
        std::fs::write(
            sb.config_path(),
            cfg.replace(
                &format!("config: {}", sb.path("prod/etc/config.yaml").display()),
                &format!("config: {}", example.display()),
            ),
        )
        .expect("config");
        let (_, v) = audit(&sb, &[]);
        let open = ids(&v, "findings");
        let flagged = open
            .iter()
            .any(|id| id == "config.next_minor_incompatible:randomize_client_port");
        let carries = std::fs::read_to_string(&example)
            .expect("example")
            .lines()
            .any(|l| l.starts_with("randomize_client_port:"));
        assert_eq!(flagged, carries, "{version}: {open:?}");
        assert!(
            !open
                .iter()
                .any(|id| id.starts_with("config.listen_addr_exposed")),
            "{version}: upstream's example listens on loopback: {open:?}"
        );
        assert!(
            open.iter()
                .any(|id| id.starts_with("config.server_url_not_https")),
            "{version}: {open:?}"
        );
    }
}

/// `headwarden demo --real` tells its story on the real server and leaves nothing running.
#[test]
fn demo_real_runs_and_leaves_nothing_behind() {
    let out = Command::new(crate::support::hw())
        .args(["demo", "--real"])
        .env("HEADWARDEN_RIG", crate::support::rig_dir())
        .stdin(Stdio::null())
        .output()
        .expect("demo");
    assert_eq!(code(&out), 0, "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    for line in [
        "=> upgraded 0.26.1 -> 0.28.0",
        "=> 0.29.3 failed on production and was ROLLED BACK",
        "=> upgraded 0.28.0 -> 0.29.2",
        "bob-phone reaches alice-laptop",
        "2 reminder(s) with one-time keys",
    ] {
        assert!(said.contains(line), "{line:?} in\n{}", text(&out));
    }
    let dir = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("directory: "))
        .and_then(|l| l.split(';').next())
        .expect("the demo names its directory")
        .to_string();
    let left = crate::support::processes_under(Path::new(&dir));
    assert!(left.is_empty(), "left running: {left:?}");
}

/// A larger real tailnet (one client's node cloned 1,000 times in the real database) upgraded
/// 0.28.0 → newest 0.29.x: staging's data parity over every node, every identity kept. The
/// benchmark report runs the same with 10,000 nodes.
#[test]
fn real_upgrade_of_a_thousand_node_tailnet() {
    let versions = headscale_versions();
    let newest = versions.last().expect("versions");
    let sb = Sandbox::new_real("0.28.0");
    sb.prod_cmd(&["users", "create", "fleet"]);
    let client = Client::join(&sb, "template", &preauth_key(&sb, "fleet", &[]));
    sb.real_bulk_nodes(1000);
    sb.release_real(newest);
    let before = identities(&sb);
    assert_eq!(
        before.iter().filter(|l| l.starts_with("node ")).count(),
        1001
    );
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("1001 nodes all present"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.served_version(), format!("v{newest}"));
    assert_eq!(identities(&sb), before);
    drop(client);
}

/// `upgrade` with `kill` run once production is stopped (the journal has its `stop`), so the
/// nodes that were online before the stop cannot come back.
fn upgrade_killing_clients(sb: &Sandbox, kill: impl FnOnce()) -> std::process::Output {
    let cfg = sb.config_path().display().to_string();
    let child = Command::new(hw())
        .args(["--config", &cfg, "upgrade", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("headwarden");
    let deadline = Instant::now() + Duration::from_secs(180);
    while !journal_has(&sb.path("state"), "stop") {
        assert!(Instant::now() < deadline, "production was never stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill();
    child.wait_with_output().expect("headwarden")
}

/// After a promotion the real clients come back: the reconnect bake waits for them and says so.
#[test]
fn real_reconnect_bake_passes_when_the_clients_come_back() {
    let mut sb = Sandbox::new_real("0.27.1");
    sb.extra_smoke = "  reconnect:\n    within: 120s\n    min_nodes: 2\n".into();
    sb.write_config();
    let net = tailnet(&sb);
    sb.release_real("0.28.0");
    let out = sb.hw(&["upgrade", "--yes"]);
    let said = text(&out);
    assert_eq!(code(&out), 0, "{said}");
    assert!(
        said.contains("reconnect: 3 of 3 nodes online before the stop are back"),
        "{said}"
    );
    assert!(net.alice.pings(&net.bob));
}

/// Clients stopped while production is down cannot come back: the bake fails after
/// `smoke.reconnect.within`, the promotion is rolled back with its data, and the reason names the
/// counts and the nodes missing.
#[test]
fn real_clients_that_cannot_come_back_fail_the_bake_and_production_rolls_back() {
    let mut sb = Sandbox::new_real("0.27.1");
    sb.extra_smoke = "  reconnect:\n    within: 15s\n    min_nodes: 2\n".into();
    sb.write_config();
    let mut net = tailnet(&sb);
    sb.release_real("0.28.0");
    let (ids, applied) = (identities(&sb), migrations(&sb));
    let out = upgrade_killing_clients(&sb, || {
        net.alice.kill();
        net.bob.kill();
        net.server.kill();
    });
    let said = text(&out);
    assert_eq!(code(&out), 3, "{said}");
    assert!(
        said.contains("reconnect: 0 of 3 nodes online before the stop are back"),
        "{said}"
    );
    for name in ["alice-laptop", "bob-phone", "build-server"] {
        assert!(said.contains(name), "{name} named as missing: {said}");
    }
    assert!(said.contains("rolled back to 0.27.1"), "{said}");
    assert_eq!(sb.served_version(), "v0.27.1");
    assert_eq!(migrations(&sb), applied, "the pre-upgrade database is back");
    assert_eq!(identities(&sb), ids);
    assert_eq!(sb.prod_processes().len(), 1);
}

/// With `on_failure: alert` a partial return keeps the promotion and sends the
/// `upgrade.reconnect_incomplete` event with the counts and the node missing.
#[test]
fn real_partial_reconnect_with_alert_keeps_the_upgrade_and_warns() {
    let mut sb = Sandbox::new_real("0.27.1");
    sb.extra_smoke =
        "  reconnect:\n    within: 30s\n    min_nodes: 2\n    on_failure: alert\n".into();
    sb.write_config();
    let mut net = tailnet(&sb);
    sb.release_real("0.28.0");
    let out = upgrade_killing_clients(&sb, || net.server.kill());
    let said = text(&out);
    assert_eq!(code(&out), 0, "{said}");
    assert!(
        said.contains("reconnect: 2 of 3 nodes online before the stop are back"),
        "{said}"
    );
    assert!(said.contains("missing: build-server"), "{said}");
    assert_eq!(sb.served_version(), "v0.28.0");
    let events = sb.outbox();
    let (_, payload) = events
        .iter()
        .find(|(e, _)| e == "upgrade.reconnect_incomplete")
        .unwrap_or_else(|| panic!("no reconnect event in {events:?}"));
    assert_eq!(payload["back"], 2);
    assert_eq!(payload["before"], 3);
    assert_eq!(payload["missing"], serde_json::json!(["build-server"]));
    assert!(net.alice.pings(&net.bob));
}
