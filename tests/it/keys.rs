//! The key job against the stand-in at several Headscale versions: planning, reminders once
//! per stage across restarts, re-registration with the minted key, enforcement, API errors.

use crate::notify::ChatSink;
use crate::support::{code, text, Sandbox};

fn plan(sb: &Sandbox) -> Vec<serde_json::Value> {
    let out = sb.hw(&["keys", "plan", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("json")
        .as_array()
        .expect("array")
        .clone()
}

fn state_of(plans: &[serde_json::Value], name: &str) -> String {
    let p = plans
        .iter()
        .find(|p| p["name"].as_str().is_some_and(|n| n.starts_with(name)))
        .unwrap_or_else(|| panic!("{name} in {plans:?}"));
    match p["state"]["state"].as_str().expect("state") {
        "due_soon" => format!("due_soon:{}", p["state"]["stage"]),
        other => other.to_string(),
    }
}

/// A private admin channel that is explicitly given the one-time keys (`one_time_keys: include`):
/// the tests read minted keys where a person would, from chat.
pub(crate) fn key_channel(sb: &mut Sandbox) -> ChatSink {
    let sink = ChatSink::start(sb);
    sb.extra_top.push_str(&format!(
        "notify:\n  - url: generic+http://127.0.0.1/keys\n    endpoint: http://{}/webhook\n    events: [keys]\n    one_time_keys: include\n    min_interval: 0s\n",
        sink.addr
    ));
    sb.write_config();
    sink
}

/// (event, payload) of every key message the channel received.
pub(crate) fn key_messages(sink: &ChatSink) -> Vec<(String, serde_json::Value)> {
    sink.messages()
        .into_iter()
        .filter(|m| {
            m["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/webhook/keys"))
        })
        .map(|m| {
            (
                m["body"]["event"].as_str().unwrap_or("").to_string(),
                m["body"]["data"].clone(),
            )
        })
        .collect()
}

/// No file under `dir` holds `secret` (the bytes, anywhere: free pages and WAL frames too).
fn assert_nowhere_under(dir: &std::path::Path, secret: &str, what: &str) {
    for f in walk(dir) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds {what}",
            f.display()
        );
    }
}

/// Every regular file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

fn key_of(command: &str) -> String {
    command
        .split_whitespace()
        .skip_while(|w| *w != "--auth-key")
        .nth(1)
        .expect("key")
        .to_string()
}

/// The one-time key from the first reminder the channel received.
fn minted_key(sink: &ChatSink) -> String {
    let (_, payload) = key_messages(sink)
        .into_iter()
        .find(|(e, _)| e == "keys.reminder")
        .expect("reminder");
    key_of(payload["command"].as_str().expect("command"))
}

fn mixed(version: &str, over_socket: bool) -> Sandbox {
    let mut sb = Sandbox::new(version);
    sb.enable_api(over_socket);
    sb.seed("fresh", 10, None, "");
    sb.seed("due", 77, None, "");
    sb.seed("grace", 92, None, "");
    sb.seed("late", 100, None, "");
    sb.seed("server", 300, None, "tag:server");
    sb.seed("gone", 5, Some(-1), "");
    sb
}

#[test]
fn plan_over_a_mix_of_node_states_at_each_version() {
    for (version, socket) in [
        ("0.26.1", false),
        ("0.28.0", false),
        ("0.29.2", false),
        ("0.30.0", false),
        ("0.30.0", true),
    ] {
        let sb = mixed(version, socket);
        // Everything but api_keys, whose last_seen moves with every API call.
        let data = |sb: &Sandbox| -> Vec<String> {
            sb.db_dump()
                .into_iter()
                .filter(|l| !l.starts_with("api_keys: "))
                .collect()
        };
        let headscale_before = data(&sb);
        let plans = plan(&sb);
        for (name, expected) in [
            ("fresh", "ok"),
            ("due", "due_soon:1"),
            ("grace", "in_grace"),
            ("late", "overdue"),
            ("server", "exempt"),
            ("gone", "already_expired"),
        ] {
            assert_eq!(
                state_of(&plans, name),
                expected,
                "{version} socket={socket}: {name}"
            );
        }
        assert!(plans.iter().all(|p| p["name"].is_string()));
        // Planning changes nothing: no event queued, no key minted, no node touched.
        assert!(sb.outbox().is_empty(), "{version}");
        assert_eq!(
            data(&sb),
            headscale_before,
            "{version}: Headscale's database"
        );
    }
}

#[test]
fn reminders_are_sent_once_per_stage_across_restarts_and_keys_are_never_printed() {
    let mut sb = mixed("0.29.2", false);
    let sink = key_channel(&mut sb);
    let out = sb.hw(&["-vv", "keys", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let reminders: Vec<_> = key_messages(&sink)
        .into_iter()
        .filter(|(e, _)| e == "keys.reminder")
        .collect();
    assert_eq!(
        reminders.len(),
        3,
        "due, grace and late nodes: {reminders:?}"
    );
    let due = reminders
        .iter()
        .find(|(_, p)| {
            p["node"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("due"))
        })
        .expect("due reminder");
    let command = due.1["command"].as_str().expect("command");
    assert!(
        command.contains("tailscale up --login-server http://127.0.0.1:")
            && command.contains("--auth-key hskey-auth-")
            && command.ends_with("--force-reauth"),
        "{command}"
    );
    assert!(due.1["warning"]
        .as_str()
        .expect("warning")
        .contains("not over an SSH"));
    let key = key_of(command);
    assert!(
        !text(&out).contains(&key),
        "the one-time key must not be printed"
    );
    // Delivered everywhere it was routed: the store keeps no copy of it, not even in free
    // pages or the WAL, and no file under state_dir holds it.
    let stored = sb.outbox();
    assert!(
        stored.iter().all(|(_, p)| !p.to_string().contains(&key)),
        "the delivered key is purged from the outbox: {stored:?}"
    );
    assert_nowhere_under(&sb.path("state"), &key, "the one-time key");
    // A second run (a restart) sends nothing new.
    let out = sb.hw(&["keys", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        sb.outbox()
            .into_iter()
            .filter(|(e, _)| e == "keys.reminder")
            .count(),
        3
    );
}

/// `keys.login_server` pins what reminders tell owners to log in to: a Headscale config that
/// says otherwise (another account may be able to write it) is logged, not followed (security
/// review N11).
#[test]
fn reminders_name_the_pinned_login_server_not_the_headscale_config() {
    let mut sb = mixed("0.29.2", false);
    sb.extra_top
        .push_str("keys:\n  login_server: https://login.example.com/\n");
    let sink = key_channel(&mut sb);
    let out = sb.hw(&["keys", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let commands: Vec<String> = key_messages(&sink)
        .into_iter()
        .filter(|(e, _)| e == "keys.reminder")
        .filter_map(|(_, p)| p["command"].as_str().map(str::to_string))
        .collect();
    assert_eq!(commands.len(), 3, "{commands:?}");
    for c in &commands {
        assert!(
            c.contains("tailscale up --login-server https://login.example.com --auth-key"),
            "{c}"
        );
    }
    assert!(
        text(&out).contains("differs from keys.login_server"),
        "{}",
        text(&out)
    );
}

#[test]
fn re_registering_with_the_minted_key_counts_as_rotation() {
    for (version, socket) in [("0.26.1", true), ("0.28.0", true), ("0.30.0", false)] {
        let mut sb = Sandbox::new(version);
        sb.enable_api(socket);
        let sink = key_channel(&mut sb);
        sb.seed("due", 80, None, "");
        let out = sb.hw(&["keys", "run"]);
        assert_eq!(code(&out), 0, "{version}: {}", text(&out));
        let key = minted_key(&sink);
        let node = sb.prod_node("due");
        let mk = node["machine_key"].as_str().expect("machine key");
        // The client runs `tailscale up --auth-key KEY --force-reauth`: same machine, new node key.
        sb.prod_cmd(&[
            "debug",
            "register",
            "--auth-key",
            &key,
            "--hostname",
            "due1-node1",
            "--machine-key",
            mk,
        ]);
        let out = sb.hw(&["keys", "run"]);
        assert_eq!(code(&out), 0, "{version}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("rotated (new node key)"),
            "{version}: {}",
            text(&out)
        );
        assert_eq!(state_of(&plan(&sb), "due"), "ok", "{version}: young again");
        assert!(sb.outbox().iter().any(|(e, _)| e == "keys.rotated"));
        // headwarden retired the key it minted: its expiration in Headscale is now past (the
        // only pre-auth key in this sandbox), independently of the single-use rule.
        let db = rusqlite::Connection::open_with_flags(
            sb.path("prod/lib/db.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("db");
        let live: i64 = db
            .query_row(
                "SELECT count(*) FROM pre_auth_keys WHERE expiration > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                [],
                |r| r.get(0),
            )
            .expect("query");
        let all: i64 = db
            .query_row("SELECT count(*) FROM pre_auth_keys", [], |r| r.get(0))
            .expect("query");
        assert!(
            all >= 1 && live == 0,
            "{version}: {live} of {all} pre-auth keys still valid"
        );
        // The one-time key was used; using it again fails.
        let cfg = sb.path("prod/etc/config.yaml").display().to_string();
        let again = std::process::Command::new(sb.path("prod/bin/headscale"))
            .args([
                "-c",
                &cfg,
                "debug",
                "register",
                "--auth-key",
                &key,
                "--hostname",
                "x",
            ])
            .output()
            .expect("run");
        assert!(
            !again.status.success(),
            "{version}: a one-time key works once"
        );
    }
}

#[test]
fn overdue_nodes_are_expired_only_under_enforce_expire() {
    let mut sb = Sandbox::new("0.29.2");
    sb.enable_api(false);
    sb.seed("late", 100, None, "");
    let out = sb.hw(&["keys", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        state_of(&plan(&sb), "late"),
        "overdue",
        "remind only: not expired"
    );
    sb.extra_top = "keys:\n  enforce: expire\n".into();
    sb.write_config();
    let out = sb.hw(&["keys", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("expired in Headscale"),
        "{}",
        text(&out)
    );
    assert_eq!(state_of(&plan(&sb), "late"), "already_expired");
    let events: Vec<String> = sb.outbox().into_iter().map(|(e, _)| e).collect();
    let warn = events
        .iter()
        .position(|e| e == "keys.expiring")
        .expect("notified first");
    let done = events
        .iter()
        .position(|e| e == "keys.expired")
        .expect("expired event");
    assert!(warn < done);
}

#[test]
fn api_errors_are_clear() {
    let mut sb = Sandbox::new("0.29.2");
    sb.enable_api(false);
    std::fs::write(sb.path("api-key"), "hskey-api-000000000000-bogus").expect("write");
    let out = sb.hw(&["keys", "plan"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the API key") && err.contains("hint:"),
        "{err}"
    );
    assert!(!err.contains("bogus"), "the key is not printed: {err}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(sb.path("api-key"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let out = sb.hw(&["keys", "plan"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("readable by group or others"),
        "{}",
        text(&out)
    );
    // A missing socket is "cannot reach", for gRPC (≤0.29) and HTTP (0.30) alike.
    sb.extra_headscale = format!(
        "  api:\n    url: unix://{}\n",
        sb.path("nowhere.sock").display()
    );
    sb.write_config();
    let out = sb.hw(&["keys", "plan"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the Headscale API"),
        "{}",
        text(&out)
    );
    let mut sb = Sandbox::new("0.30.0");
    sb.extra_headscale = format!(
        "  api:\n    url: unix://{}\n",
        sb.path("nowhere.sock").display()
    );
    sb.write_config();
    let out = sb.hw(&["keys", "plan"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the Headscale API"),
        "{}",
        text(&out)
    );
}

#[test]
fn rotate_one_node_on_request() {
    let mut sb = Sandbox::new("0.28.0");
    sb.enable_api(false);
    let out = sb.hw(&["keys", "rotate", "user1-node1"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let (_, p) = sb
        .outbox()
        .into_iter()
        .find(|(e, _)| e == "keys.rotation_requested")
        .expect("event");
    assert!(p["command"]
        .as_str()
        .expect("cmd")
        .contains("--auth-key hskey-auth-"));
    let out = sb.hw(&["keys", "rotate", "no-such-node"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
}

#[test]
fn headwardens_own_api_key_is_rotated_before_it_expires() {
    use std::os::unix::fs::PermissionsExt;
    let mut sb = Sandbox::new("0.29.2");
    sb.enable_api(false);
    // Replace the key with one that expires in 3 days (inside the 14-day rotation window).
    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(3);
    let soon = soon
        .format(&time::format_description::well_known::Rfc3339)
        .expect("fmt");
    let out = sb.prod_cmd(&["debug", "apikey", "--expiration", &soon]);
    let old_key = serde_json::from_str::<serde_json::Value>(&out).expect("json")["apiKey"]
        .as_str()
        .expect("key")
        .to_string();
    std::fs::write(sb.path("api-key"), &old_key).expect("write");
    let out = sb.hw(&["-vv", "keys", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rotated headwarden's API key"),
        "{}",
        text(&out)
    );
    let new_key = std::fs::read_to_string(sb.path("api-key")).expect("read");
    assert_ne!(new_key.trim(), old_key);
    // Neither key appears at -vv, in the output or anywhere under state_dir.
    for k in [old_key.as_str(), new_key.trim()] {
        assert!(!text(&out).contains(k), "an API key was printed at -vv");
        assert_nowhere_under(&sb.path("state"), k, "an API key");
    }
    // Written through a fresh file: no temp name left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(sb.path(""))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("headwarden"))
        .filter(|n| n != "headwarden.yaml")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        std::fs::metadata(sb.path("api-key"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(sb.outbox().iter().any(|(e, _)| e == "keys.api_key_rotated"));
    // The new key works and is not due; the old one was expired in Headscale.
    let out = sb.hw(&["keys", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("rotated headwarden's API key"));
    std::fs::write(sb.path("api-key"), &old_key).expect("write old");
    let out = sb.hw(&["keys", "plan"]);
    assert_eq!(code(&out), 1, "the old key is refused now\n{}", text(&out));
}

#[test]
fn same_machine_as_a_new_node_is_a_rotation_and_the_stale_entry_is_removed() {
    let mut sb = Sandbox::new("0.28.0");
    sb.enable_api(false);
    sb.extra_top = "keys:\n  remove_stale_duplicates: true\n".into();
    let sink = key_channel(&mut sb);
    sb.seed("due", 80, None, "");
    let out = sb.hw(&["keys", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let key = minted_key(&sink);
    let old = sb.prod_node("due");
    let mk = old["machine_key"].as_str().expect("mk");
    sb.prod_cmd(&[
        "debug",
        "register",
        "--auth-key",
        &key,
        "--hostname",
        "due-laptop",
        "--machine-key",
        mk,
        "--new-node",
    ]);
    let out = sb.hw(&["keys", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let events: Vec<(String, serde_json::Value)> = sb.outbox();
    assert!(
        events
            .iter()
            .any(|(e, p)| e == "keys.rotated" && p["how"] == "re-registered as a new node"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|(e, _)| e == "keys.duplicate_removed"),
        "{events:?}"
    );
    let nodes: serde_json::Value =
        serde_json::from_str(&sb.prod_cmd(&["nodes", "list", "-o", "json"])).expect("nodes");
    let ids: Vec<u64> = nodes
        .as_array()
        .expect("a")
        .iter()
        .filter_map(|n| n["id"].as_u64())
        .collect();
    assert!(
        !ids.contains(&old["id"].as_u64().expect("id")),
        "stale entry deleted: {ids:?}"
    );
    assert_eq!(state_of(&plan(&sb), "due-laptop"), "ok");
}

#[test]
fn remote_grpc_over_tls_with_the_api_key_in_metadata() {
    let mut sb = Sandbox::new_with("0.29.2", true);
    sb.enable_grpc_tls();
    let sink = key_channel(&mut sb);
    sb.seed("due", 80, None, "");
    assert_eq!(state_of(&plan(&sb), "due"), "due_soon:1");
    let out = sb.hw(&["keys", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(minted_key(&sink).starts_with("hskey-auth-"));
    // A wrong key is refused by the server's interceptor (Unauthenticated).
    let good = std::fs::read_to_string(sb.path("api-key")).expect("key");
    std::fs::write(sb.path("api-key"), "hskey-api-000000000000-bogus").expect("write");
    let out = sb.hw(&["keys", "plan"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused the API key"),
        "{}",
        text(&out)
    );
    // Without the private CA the certificate is not trusted: no plaintext fallback.
    std::fs::write(sb.path("api-key"), good).expect("write");
    let cfg = std::fs::read_to_string(sb.config_path()).expect("cfg");
    let without_ca: String = cfg
        .lines()
        .filter(|l| !l.contains("ca_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(sb.config_path(), without_ca).expect("write");
    let out = sb.hw(&["keys", "plan"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the Headscale API at grpcs://"),
        "{}",
        text(&out)
    );
}
