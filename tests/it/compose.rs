//! Compose installs of real Headscale, run by real `podman-compose` from images of the rig's
//! real binaries, pulled from a registry on 127.0.0.1 (scripts/test starts it). Podman only:
//! Docker's `docker compose` takes the same code path but is not installed here.

use crate::support::compose::{podman, ComposeSandbox};
use crate::support::{code, text, Client};

/// The users and nodes in production's database (identity columns every version has).
fn identities(sb: &ComposeSandbox) -> Vec<String> {
    let db =
        rusqlite::Connection::open_with_flags(sb.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("db");
    let mut out = Vec::new();
    for (sql, what) in [
        ("SELECT id || ' ' || name FROM users ORDER BY id", "user"),
        (
            "SELECT id || ' ' || machine_key || ' ' || node_key || ' ' || hostname FROM nodes ORDER BY id",
            "node",
        ),
        ("SELECT id FROM pre_auth_keys ORDER BY id", "pre_auth_key"),
    ] {
        let mut stmt = db.prepare(sql).expect("query");
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0).or_else(|_| r.get::<_, i64>(0).map(|i| i.to_string())))
            .expect("rows");
        for r in rows {
            out.push(format!("{what} {}", r.expect("row")));
        }
    }
    out
}

fn migrations(sb: &ComposeSandbox) -> Vec<String> {
    let db =
        rusqlite::Connection::open_with_flags(sb.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("db");
    let mut stmt = db
        .prepare("SELECT id FROM migrations ORDER BY id")
        .expect("migrations");
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .expect("rows")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    rows
}

/// A user's id and a pre-auth key for it, through production's CLI in its container.
fn key_for(sb: &ComposeSandbox, user: &str) -> String {
    sb.exec(&["users", "create", user]);
    let users = sb.exec_json(&["users", "list"]);
    let id = users
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["name"] == user)
        .map(|u| u["id"].to_string().trim_matches('"').to_string())
        .expect("user id");
    let key = sb.exec_json(&[
        "preauthkeys",
        "create",
        "--user",
        &id,
        "--expiration",
        "24h",
    ]);
    key["key"].as_str().expect("key").to_string()
}

fn staging_containers(sb: &ComposeSandbox) -> Vec<String> {
    podman(&[
        "ps",
        "-a",
        "--filter",
        "label=io.headwarden.staging",
        "--format",
        "{{.Names}} {{.Image}}",
    ])
    .lines()
    .filter(|l| l.contains(&sb.repo))
    .map(str::to_string)
    .collect()
}

/// A compose install on the floating tag `latest` (0.26.1): `check` says it floats and what it
/// will be pinned to; one `upgrade` pins it, then takes it hop by hop (one minor per hop, newest
/// patch) to the newest 0.29.x, each hop staged in a throwaway container on a copy of the data;
/// users, nodes, keys and the noise key are kept, the real clients reach each other again, the
/// compose file's comments stay, and no staging container is left.
#[test]
fn compose_upgrade_pins_a_floating_tag_then_goes_hop_by_hop_to_the_newest_0_29() {
    let sb = ComposeSandbox::new("0.26.1", "latest");
    let login = sb.login_server();
    let alice = Client::join_at(
        &sb.client_dir("alice"),
        "alice-laptop",
        &login,
        &key_for(&sb, "alice"),
    );
    let bob = Client::join_at(
        &sb.client_dir("bob"),
        "bob-phone",
        &login,
        &key_for(&sb, "bob"),
    );
    assert!(alice.pings(&bob), "the tailnet works before the upgrade");
    for v in ["0.27.1", "0.28.0", "0.29.2", "0.29.3"] {
        sb.release(v);
        sb.push(v, v);
    }
    let check = sb.hw(&["check"]);
    assert_eq!(code(&check), 0, "{}", text(&check));
    let said = text(&check);
    assert!(said.contains("floats (tag latest)"), "{said}");
    assert!(
        said.contains(&format!("pins it to {}:0.26.1", sb.repo)),
        "{said}"
    );
    assert!(
        said.contains("0.26.1 -> 0.27.1 -> 0.28.0 -> 0.29.3"),
        "{said}"
    );
    let audit = sb.hw(&["audit"]);
    assert!(
        text(&audit).contains("version.floating_image_tag"),
        "{}",
        text(&audit)
    );

    let before = identities(&sb);
    let noise = std::fs::read(sb.project_dir().join("data/noise_private.key")).expect("noise");
    let out = sb.hw(&["upgrade", "--yes"]);
    let said = text(&out);
    assert_eq!(code(&out), 0, "{said}");
    assert!(
        said.contains(&format!("to {}:0.26.1", sb.repo)),
        "pinned first: {said}"
    );
    for v in ["0.27.1", "0.28.0", "0.29.3"] {
        assert!(said.contains(&format!("production now on {v}")), "{said}");
    }
    assert_eq!(sb.served_version(), "v0.29.3");
    assert_eq!(
        sb.image_line(),
        format!("    image: {}:0.29.3  # upgraded by headwarden", sb.repo)
    );
    assert_eq!(identities(&sb), before, "every user, node and key kept");
    assert_eq!(
        std::fs::read(sb.project_dir().join("data/noise_private.key")).expect("noise"),
        noise
    );
    assert_eq!(sb.containers().len(), 1, "one production container");
    assert!(
        staging_containers(&sb).is_empty(),
        "{:?}",
        staging_containers(&sb)
    );
    assert!(alice.pings(&bob), "alice reaches bob after the upgrade");
    let status = sb.hw(&["status"]);
    assert!(
        text(&status).contains("pinned to an exact version"),
        "{}",
        text(&status)
    );
}

/// A real 0.28.0 image that migrates production's database, then fails its smoke checks on
/// production (injected at the `smoke` step): headwarden stops the service, restores the
/// database, the config and the compose file byte for byte, recreates the 0.27.1 container and
/// checks that 0.27.1 answers.
#[test]
fn compose_failure_after_the_switch_restores_data_config_and_compose_file() {
    let sb = ComposeSandbox::new("0.27.1", "0.27.1");
    key_for(&sb, "alice");
    sb.release("0.28.0");
    sb.push("0.28.0", "0.28.0");
    let (ids, applied) = (identities(&sb), migrations(&sb));
    let compose = std::fs::read(sb.compose_file()).expect("compose");
    let config = std::fs::read(sb.project_dir().join("config/config.yaml")).expect("config");
    let out = sb.hw_env(&["upgrade", "--yes"], &[("HEADWARDEN_FAIL_AT", "smoke")]);
    let said = text(&out);
    assert_eq!(code(&out), 3, "{said}");
    assert!(said.contains("staging passed for 0.28.0"), "{said}");
    assert!(said.contains("rolled back to 0.27.1"), "{said}");
    assert_eq!(sb.served_version(), "v0.27.1");
    assert_eq!(migrations(&sb), applied, "the pre-upgrade database is back");
    assert_eq!(identities(&sb), ids);
    assert_eq!(std::fs::read(sb.compose_file()).expect("compose"), compose);
    assert_eq!(
        std::fs::read(sb.project_dir().join("config/config.yaml")).expect("config"),
        config
    );
    assert_eq!(sb.containers().len(), 1);
    assert!(staging_containers(&sb).is_empty());
}

/// A candidate image that exits at start (a real 0.27.1 binary given an unknown flag by its
/// entrypoint) is rejected on staging: production's container, compose file and data are not
/// touched, and the staging container is removed.
#[test]
fn compose_candidate_that_crashes_is_rejected_on_staging() {
    let sb = ComposeSandbox::new("0.26.1", "0.26.1");
    key_for(&sb, "alice");
    sb.release("0.27.1");
    sb.push_variant("0.27.1", "0.27.1", &["/ko-app/headscale", "--no-such-flag"]);
    let compose = std::fs::read(sb.compose_file()).expect("compose");
    let ids = identities(&sb);
    let out = sb.hw(&["upgrade", "--yes"]);
    let said = text(&out);
    assert_ne!(code(&out), 0, "{said}");
    assert!(said.contains("staging REJECTED 0.27.1"), "{said}");
    assert!(said.contains("production was not touched"), "{said}");
    assert_eq!(std::fs::read(sb.compose_file()).expect("compose"), compose);
    assert_eq!(identities(&sb), ids);
    assert_eq!(sb.served_version(), "v0.26.1");
    assert!(
        staging_containers(&sb).is_empty(),
        "{:?}",
        staging_containers(&sb)
    );
}
