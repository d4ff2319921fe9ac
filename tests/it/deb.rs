//! Deb installs of real Headscale: upstream-shaped packages of the rig's real binaries
//! (scripts/debs), installed with real dpkg in a throwaway root (testkit::deb: a private mount
//! namespace over overlays of the machine's /usr, /etc, /var and /run), their maintainer scripts
//! run for real, the unit run as its `User=headscale` by a systemctl stand-in.

use crate::support::deb::{package, DebHost};
use crate::support::{code, sqlite_column, text, Client};

/// The users, nodes and pre-auth keys in production's database (columns every version has).
fn identities(sb: &DebHost) -> Vec<String> {
    let db = sb.db();
    let mut out = Vec::new();
    for (sql, what) in [
        ("SELECT id || ' ' || name FROM users ORDER BY id", "user"),
        (
            "SELECT id || ' ' || machine_key || ' ' || node_key || ' ' || hostname FROM nodes ORDER BY id",
            "node",
        ),
        ("SELECT id FROM pre_auth_keys ORDER BY id", "pre_auth_key"),
    ] {
        out.extend(sqlite_column(&db, sql).into_iter().map(|r| format!("{what} {r}")));
    }
    out
}

/// A pre-auth key for a new user, through production's CLI.
fn key_for(sb: &DebHost, user: &str) -> String {
    sb.ns_ok(&["/usr/bin/headscale", "users", "create", user]);
    let users = sb.cli_json(&["users", "list"]);
    let id = users
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["name"] == user)
        .map(|u| u["id"].to_string().trim_matches('"').to_string())
        .expect("user id");
    let key = sb.cli_json(&["preauthkeys", "create", "--user", &id, "--expiration", "24h"]);
    key["key"].as_str().expect("key").to_string()
}

/// The headscale account the package's postinst created, as the throwaway root's passwd has it.
fn headscale_uid(sb: &DebHost) -> u32 {
    let passwd = std::fs::read_to_string(sb.root("/etc/passwd")).expect("passwd");
    passwd
        .lines()
        .find_map(|l| l.strip_prefix("headscale:"))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|uid| uid.parse().ok())
        .expect("a headscale account")
}

/// Upstream's package of 0.26.1, installed with dpkg, goes to the newest 0.29.x in one upgrade:
/// each hop's package verified (checksums.txt, signature), its binary staged on a copy of the
/// data, then `dpkg -i` whose postinst restarts the unit (the migration runs there); data, noise
/// key and the admin's edited conffile are kept, the real clients reach each other again, dpkg
/// records the new version, and the package of 0.26.1 is kept for a rollback.
#[test]
fn deb_upgrade_goes_hop_by_hop_through_dpkg_to_the_newest_0_29() {
    let sb = DebHost::new("0.26.1");
    let uid = headscale_uid(&sb);
    assert_ne!(uid, 0);
    assert_eq!(sb.service_process().map(|p| p.1), Some(uid), "runs as headscale");
    let login = format!("http://{}", sb.addr());
    let alice = Client::join_at(&sb.path("clients/alice"), "alice-laptop", &login, &key_for(&sb, "alice"));
    let bob = Client::join_at(&sb.path("clients/bob"), "bob-phone", &login, &key_for(&sb, "bob"));
    assert!(alice.pings(&bob), "the tailnet works before the upgrade");
    for v in ["0.26.1", "0.27.1", "0.28.0", "0.29.2", "0.29.3"] {
        sb.release(v);
    }
    let check = sb.hw(&["check"]);
    assert_eq!(code(&check), 0, "{}", text(&check));
    assert!(text(&check).contains("0.26.1 -> 0.27.1 -> 0.28.0 -> 0.29.3"), "{}", text(&check));
    let status = sb.hw(&["status"]);
    assert!(text(&status).contains("dpkg records 0.26.1 (ii)"), "{}", text(&status));

    let config = std::fs::read(sb.root("/etc/headscale/config.yaml")).expect("config");
    let noise = std::fs::read(sb.root("/var/lib/headscale/noise_private.key")).expect("noise");
    let before = identities(&sb);
    let out = sb.hw(&["upgrade", "--yes"]);
    let said = text(&out);
    assert_eq!(code(&out), 0, "{said}");
    assert!(said.contains("kept the package of the running 0.26.1"), "{said}");
    for v in ["0.27.1", "0.28.0", "0.29.3"] {
        assert!(said.contains(&format!("production now on {v}")), "{said}");
    }
    assert_eq!(sb.dpkg_state("headscale"), "0.29.3 ii");
    assert_eq!(sb.cli_version(), "0.29.3");
    assert_eq!(identities(&sb), before, "users, nodes and keys kept");
    assert_eq!(std::fs::read(sb.root("/var/lib/headscale/noise_private.key")).expect("noise"), noise);
    assert_eq!(
        std::fs::read(sb.root("/etc/headscale/config.yaml")).expect("config"),
        config,
        "the admin's conffile is kept (--force-confold)"
    );
    assert_eq!(sb.service_process().map(|p| p.1), Some(uid), "still runs as headscale");
    let migrations = sqlite_column(
        &sb.db(),
        "SELECT count(*) FROM migrations",
    );
    assert_ne!(migrations, vec!["0".to_string()]);
    let kept = sb.path("state/versions/0.26.1/headscale_0.26.1_linux_amd64.deb");
    assert_eq!(
        std::fs::read(&kept).expect("kept package"),
        std::fs::read(package("0.26.1")).expect("package"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !alice.pings(&bob) {
        assert!(std::time::Instant::now() < deadline, "the clients came back");
    }
}
