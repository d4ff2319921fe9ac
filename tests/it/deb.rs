//! Deb installs of real Headscale: upstream-shaped packages of the rig's real binaries
//! (scripts/debs), installed with real dpkg on a booted Debian with a real systemd as PID 1
//! (testkit::deb over testkit::booted), their maintainer scripts run for real, the unit run as
//! its `User=headscale` by the real systemd.

use crate::rows::{row, End, Expect, CRASHED};
use crate::support::deb::{package, DebHost};
use crate::support::{code, dump_sqlite, sqlite_column, text, Client};

/// The users, nodes and pre-auth keys in production's database (columns every version has).
/// The connectivity probe's own user and its used one-time keys, which it keeps, are left out.
pub(crate) fn identities(sb: &DebHost) -> Vec<String> {
    let db = sb.db();
    let mut out = Vec::new();
    for (sql, what) in [
        (
            "SELECT id || ' ' || name FROM users WHERE name <> 'headwarden-probe' ORDER BY id",
            "user",
        ),
        (
            "SELECT id || ' ' || machine_key || ' ' || node_key || ' ' || hostname FROM nodes ORDER BY id",
            "node",
        ),
        (
            "SELECT id FROM pre_auth_keys WHERE user_id IS NULL OR user_id NOT IN (SELECT id FROM users WHERE name = 'headwarden-probe') ORDER BY id",
            "pre_auth_key",
        ),
    ] {
        out.extend(sqlite_column(&db, sql).into_iter().map(|r| format!("{what} {r}")));
    }
    out
}

/// A pre-auth key for a new user, through production's CLI.
pub(crate) fn key_for(sb: &DebHost, user: &str) -> String {
    sb.ns_ok(&["/usr/bin/headscale", "users", "create", user]);
    let users = sb.cli_json(&["users", "list"]);
    let id = users
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["name"] == user)
        .map(|u| u["id"].to_string().trim_matches('"').to_string())
        .expect("user id");
    let key = sb.cli_json(&[
        "preauthkeys",
        "create",
        "--user",
        &id,
        "--expiration",
        "24h",
    ]);
    key["key"].as_str().expect("key").to_string()
}

/// Real clients of two new users, logged in to production.
pub(crate) fn two_clients(sb: &DebHost) -> (Client, Client) {
    let login = format!("http://{}", sb.addr());
    let join = |user: &str, host: &str| {
        let dir = sb.path(&format!("clients/{user}"));
        Client::join_at(&dir, host, &login, &key_for(sb, user))
    };
    (join("alice", "alice-laptop"), join("bob", "bob-phone"))
}

/// `a` reaches `b` again within a minute (they reconnect after production's restart).
pub(crate) fn assert_pings_again(a: &Client, b: &Client) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !a.pings(b) {
        assert!(
            std::time::Instant::now() < deadline,
            "the clients came back"
        );
    }
}

/// The headscale account the package's postinst created, as the booted host's passwd has it.
pub(crate) fn headscale_uid(sb: &DebHost) -> u32 {
    sb.headscale_uid()
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
    assert_eq!(
        sb.service_process().map(|p| p.1),
        Some(uid),
        "runs as headscale"
    );
    let (alice, bob) = two_clients(&sb);
    assert!(alice.pings(&bob), "the tailnet works before the upgrade");
    for v in ["0.26.1", "0.27.1", "0.28.0", "0.29.2", "0.29.3"] {
        sb.release(v);
    }
    let check = sb.hw(&["check"]);
    assert_eq!(code(&check), 0, "{}", text(&check));
    assert!(
        text(&check).contains("0.26.1 -> 0.27.1 -> 0.28.0 -> 0.29.3"),
        "{}",
        text(&check)
    );
    let status = sb.hw(&["status"]);
    assert!(
        text(&status).contains("dpkg records 0.26.1 (ii)"),
        "{}",
        text(&status)
    );

    let config = std::fs::read(sb.root("/etc/headscale/config.yaml")).expect("config");
    let noise = std::fs::read(sb.root("/var/lib/headscale/noise_private.key")).expect("noise");
    let before = identities(&sb);
    let out = sb.hw(&["upgrade", "--yes"]);
    let said = text(&out);
    assert_eq!(code(&out), 0, "{said}");
    assert!(
        said.contains("kept the package of the running 0.26.1"),
        "{said}"
    );
    for v in ["0.27.1", "0.28.0", "0.29.3"] {
        assert!(said.contains(&format!("production now on {v}")), "{said}");
    }
    assert_eq!(sb.dpkg_state("headscale"), "0.29.3 ii");
    assert_eq!(sb.cli_version(), "0.29.3");
    assert_eq!(identities(&sb), before, "users, nodes and keys kept");
    assert_eq!(
        std::fs::read(sb.root("/var/lib/headscale/noise_private.key")).expect("noise"),
        noise
    );
    assert_eq!(
        std::fs::read(sb.root("/etc/headscale/config.yaml")).expect("config"),
        config,
        "the admin's conffile is kept (--force-confold)"
    );
    assert_eq!(
        sb.service_process().map(|p| p.1),
        Some(uid),
        "still runs as headscale"
    );
    let migrations = sqlite_column(&sb.db(), "SELECT count(*) FROM migrations");
    assert_ne!(migrations, vec!["0".to_string()]);
    let kept = sb.path("state/versions/0.26.1/headscale_0.26.1_linux_amd64.deb");
    assert_eq!(
        std::fs::read(&kept).expect("kept package"),
        std::fs::read(package("0.26.1")).expect("package"),
    );
    assert_pings_again(&alice, &bob);
}

// ---------------------------------------------------------------------------------------------
// The fault rows for deb installs, each with the binary matrix's end-state checks: the exit
// code; the version that answers (its CLI, and dpkg's record: installed and configured); one
// server, running as `headscale`; for "old" outcomes the database row by row, the noise key and
// the conffile byte for byte; no run left open; whether the release was recorded bad; the events
// in the outbox; what the output says.

/// One row: production on `from` from its package, release `to` published by `prepare`, then
/// `run`, then every end-state check (`rows::row`).
fn deb_row(
    from: &str,
    to: &str,
    prepare: impl FnOnce(&DebHost),
    run: impl FnOnce(&DebHost) -> std::process::Output,
    e: Expect,
) {
    let sb = DebHost::new(from);
    key_for(&sb, "alice");
    sb.release(from);
    prepare(&sb);
    row(&sb, from, to, run, e);
}

fn upgrade(sb: &DebHost) -> std::process::Output {
    sb.hw(&["upgrade", "--yes"])
}

const ROLLED_BACK: Expect = Expect {
    exit: &[3],
    end: End::Old,
    bad: true,
    events: &["upgrade.rolled_back"],
    says: &["rolled back to 0.27.1"],
};

/// A failure after the switch (the smoke checks on production fail): data, noise key and config
/// are restored and the previous package is reinstalled (dpkg records 0.27.1 again).
#[test]
fn deb_failure_after_the_switch_restores_data_and_the_previous_package() {
    deb_row(
        "0.27.1",
        "0.28.0",
        |sb| sb.release("0.28.0"),
        |sb| sb.hw_env(&["upgrade", "--yes"], &[("HEADWARDEN_FAIL_AT", "smoke")]),
        Expect {
            says: &["staging passed for 0.28.0", "rolled back to 0.27.1"],
            ..ROLLED_BACK
        },
    );
}

/// A package whose server passes staging but fails as production (after postinst's restart
/// migrated the database): rolled back with the data and the previous package.
#[test]
fn deb_candidate_that_fails_only_on_production_is_rolled_back_with_its_data() {
    deb_row(
        "0.27.1",
        "0.28.0",
        |sb| {
            let deb = sb.package_failing_on_production("0.28.0");
            sb.release_package("0.28.0", &deb);
        },
        upgrade,
        Expect {
            says: &[
                "staging passed for 0.28.0",
                "production FAILED on 0.28.0",
                "rolled back to 0.27.1",
            ],
            ..ROLLED_BACK
        },
    );
}

/// dpkg itself fails during the switch: the package's postinst exits 1 (dpkg leaves it
/// half-configured). The data is restored and the previous package reinstalled over it.
#[test]
fn deb_dpkg_failing_in_postinst_is_rolled_back_to_the_previous_package() {
    deb_row(
        "0.27.1",
        "0.28.0",
        |sb| {
            let deb = sb.variant("0.28.0", "postinst-fails", |tree| {
                let postinst = tree.join("DEBIAN/postinst");
                let text = std::fs::read_to_string(&postinst).expect("postinst");
                std::fs::write(
                    &postinst,
                    text.replacen(
                        "set -e\n",
                        "set -e\necho 'postinst: disk full' >&2; exit 1\n",
                        1,
                    ),
                )
                .expect("postinst");
            });
            sb.release_package("0.28.0", &deb);
        },
        upgrade,
        Expect {
            says: &[
                "post-installation script subprocess returned error exit status 1",
                "rolled back to 0.27.1",
            ],
            ..ROLLED_BACK
        },
    );
}

/// Another package manager holds dpkg's lock (apt, unattended-upgrades): refused before the
/// stop, nothing changed, the release not blamed.
#[test]
fn deb_dpkg_locked_by_another_package_manager_changes_nothing() {
    deb_row(
        "0.27.1",
        "0.28.0",
        |sb| sb.release("0.28.0"),
        |sb| {
            // python's fcntl.lockf takes the same POSIX lock dpkg and apt take.
            let out = sb.ns(&[
                "python3",
                "-c",
                "import fcntl,subprocess,sys\nf=open('/var/lib/dpkg/lock-frontend','w')\nfcntl.lockf(f,fcntl.LOCK_EX)\nr=subprocess.run(sys.argv[1:])\nsys.exit(r.returncode)",
                crate::support::hw(),
                "--config",
                &sb.config_path().display().to_string(),
                "upgrade",
                "--yes",
            ]);
            out
        },
        Expect {
            exit: &[1],
            end: End::Old,
            bad: false,
            events: &[],
            says: &["dpkg is locked", "nothing was changed"],
        },
    );
}

/// Killed at `point`, then a fresh `upgrade`: recovery finishes the interrupted run (with dpkg
/// where the switch had happened), then the upgrade succeeds.
fn crash_then_upgrade(sb: &DebHost, point: &str) -> std::process::Output {
    let killed = sb.hw_env(&["upgrade", "--yes"], &[("HEADWARDEN_CRASH_AT", point)]);
    assert_eq!(
        killed.status.code(),
        None,
        "{point}: killed\n{}",
        text(&killed)
    );
    upgrade(sb)
}

macro_rules! crash_rows {
    ($($name:ident: $point:literal,)*) => {$(
        /// SIGKILL at the journaled point, then a fresh `upgrade`.
        #[test]
        fn $name() {
            deb_row("0.27.1", "0.28.0", |sb| sb.release("0.28.0"), |sb| crash_then_upgrade(sb, $point), CRASHED);
        }
    )*};
}

crash_rows! {
    deb_sigkill_after_the_staging_server_started: "stage_start:after",
    deb_sigkill_before_the_stop: "stop:before",
    deb_sigkill_after_the_stop: "stop:after",
    deb_sigkill_after_the_backup: "backup:after",
    deb_sigkill_before_dpkg_runs: "switch:before",
    deb_sigkill_after_dpkg_installed_the_package: "switch:after",
    deb_sigkill_after_the_start: "start:after",
    deb_sigkill_during_the_smoke_checks: "smoke:after",
    deb_sigkill_after_the_smoke_checks: "smoke:done",
}

/// Smoke fails on production, then SIGKILL inside the rollback: recovery finishes it (data back,
/// the previous package reinstalled), and the fresh run upgrades.
#[test]
fn deb_sigkill_inside_the_rollback() {
    deb_row(
        "0.27.1",
        "0.28.0",
        |sb| sb.release("0.28.0"),
        |sb| {
            let env = [
                ("HEADWARDEN_FAIL_AT", "smoke"),
                ("HEADWARDEN_CRASH_AT", "rollback:before"),
            ];
            let killed = sb.hw_env(&["upgrade", "--yes"], &env);
            assert_eq!(killed.status.code(), None, "killed: {}", text(&killed));
            upgrade(sb)
        },
        Expect {
            says: &["recovered interrupted run 1: rolled_back"],
            ..CRASHED
        },
    );
}

/// `kind: binary` over the dpkg-owned /usr/bin/headscale is refused by `config check`, flagged by
/// `status` and refused by `upgrade` with the hint to use `kind: deb`; nothing is touched.
#[test]
fn kind_binary_over_a_dpkg_owned_headscale_is_refused_with_a_hint() {
    let mut sb = DebHost::new("0.27.1");
    sb.kind = "binary".into();
    sb.extra_headscale = "  binary: /usr/bin/headscale\n".into();
    sb.write_config();
    sb.release("0.27.1");
    sb.release("0.28.0");
    let check = sb.hw(&["config", "check"]);
    assert_eq!(code(&check), 2, "{}", text(&check));
    let said = text(&check);
    assert!(
        said.contains("/usr/bin/headscale belongs to the Debian package headscale"),
        "{said}"
    );
    assert!(said.contains("kind: deb"), "{said}");
    let status = sb.hw(&["status"]);
    assert!(
        text(&status).contains("WARNING: headscale.binary /usr/bin/headscale belongs"),
        "{}",
        text(&status)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&sb.hw(&["status", "--json"]).stdout).expect("json");
    assert!(
        json["production"]["install_conflict"]
            .as_str()
            .is_some_and(|c| c.contains("kind: deb")),
        "{json}"
    );
    let up = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&up), 1, "{}", text(&up));
    assert!(
        text(&up).contains("belongs to the Debian package headscale"),
        "{}",
        text(&up)
    );
    assert_eq!(sb.dpkg_state("headscale"), "0.27.1 ii");
    let binary = std::fs::symlink_metadata(sb.root("/usr/bin/headscale")).expect("binary");
    assert!(binary.is_file(), "still dpkg's file, no symlink");
    assert_eq!(sb.cli_version(), "0.27.1");
    // The same config with kind: deb is accepted.
    sb.kind = "deb".into();
    sb.write_config();
    let check = sb.hw(&["config", "check"]);
    assert_eq!(code(&check), 0, "{}", text(&check));
    assert!(
        text(&check).contains("Debian package headscale"),
        "{}",
        text(&check)
    );
}

/// headwarden's own package (scripts/package, cargo-deb; scripts/test builds it from the dev
/// build) installs with real dpkg next to upstream's headscale package without a file conflict:
/// binary, man page, completions, example config, and the units installed but not enabled. The
/// installed headwarden then reads a deb config and plans the upgrade.
#[test]
fn headwardens_own_package_installs_next_to_headscales() {
    let own = std::env::var("HEADWARDEN_OWN_DEB").unwrap_or_else(|_| {
        panic!("HEADWARDEN_OWN_DEB is not set: run the suite through scripts/test (scripts/package --dev builds the package)")
    });
    let sb = DebHost::new("0.27.1");
    // The booted host has the package's directory at /opt/hw-deb.
    let own = format!(
        "/opt/hw-deb/{}",
        std::path::Path::new(&own)
            .file_name()
            .expect("name")
            .to_string_lossy()
    );
    let out = sb.ns(&["dpkg", "-i", &own]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sb.dpkg_state("headwarden"), "0.1.0-1 ii");
    assert_eq!(sb.dpkg_state("headscale"), "0.27.1 ii");
    let files = sb.ns_ok(&["dpkg-query", "-L", "headwarden"]);
    for f in [
        "/usr/bin/headwarden",
        "/usr/share/man/man1/headwarden.1.gz",
        "/usr/share/bash-completion/completions/headwarden",
        "/usr/share/zsh/vendor-completions/_headwarden",
        "/usr/share/fish/vendor_completions.d/headwarden.fish",
        "/usr/share/doc/headwarden/examples/headwarden.example.yaml",
        "/usr/share/doc/headwarden/examples/deb-install.conf",
        "/usr/share/doc/headwarden/examples/compose-install.conf",
        "/usr/lib/systemd/system/headwarden.service",
        "/usr/lib/systemd/system/headwarden.timer",
        "/usr/lib/systemd/system/headwarden-daemon.service",
    ] {
        assert!(
            files.lines().any(|l| l == f),
            "{f} not in the package: {files}"
        );
        assert!(sb.root(f).exists(), "{f} not installed");
    }
    let unit = std::fs::read_to_string(sb.root("/usr/lib/systemd/system/headwarden.service"))
        .expect("unit");
    assert!(
        unit.contains("ExecStart=/usr/bin/headwarden --config /etc/headwarden/headwarden.yaml run"),
        "{unit}"
    );
    // Nothing enabled by the install, as the real systemd has it: the service is `static`
    // (no [Install]: the timer starts it; the stand-in systemctl used to call it "disabled").
    for (unit, state) in [
        ("headwarden.timer", "disabled"),
        ("headwarden.service", "static"),
        ("headwarden-daemon.service", "disabled"),
    ] {
        let enabled = sb.ns(&["systemctl", "is-enabled", unit]);
        assert_eq!(
            String::from_utf8_lossy(&enabled.stdout).trim(),
            state,
            "{unit}"
        );
    }
    assert!(
        !sb.root("/etc/headwarden").exists(),
        "no active config of its own"
    );
    assert!(sb
        .ns_ok(&["/usr/bin/headwarden", "--version"])
        .contains("0.1.0"));
    sb.release("0.27.1");
    sb.release("0.28.0");
    let cfg = sb.config_path().display().to_string();
    let check = sb.ns(&["/usr/bin/headwarden", "--config", &cfg, "check"]);
    assert_eq!(code(&check), 0, "{}", text(&check));
    assert!(
        text(&check).contains("0.27.1 -> 0.28.0"),
        "{}",
        text(&check)
    );
    // Both packages go again without leaving files of the other behind.
    sb.ns_ok(&["dpkg", "--remove", "headwarden"]);
    assert!(!sb.root("/usr/bin/headwarden").exists());
    assert_eq!(sb.dpkg_state("headscale"), "0.27.1 ii");
    assert!(sb.root("/usr/bin/headscale").exists());
}

/// `headwarden rollback` after a deb upgrade: the backup from before it is restored and the
/// kept package of the old version reinstalled with dpkg; a safety copy of what it replaced is
/// kept. With `keep_versions: 1` the pruning after the upgrade still keeps both packages.
#[test]
fn deb_manual_rollback_reinstalls_the_previous_package_with_its_data() {
    let sb = DebHost::new("0.27.1");
    let config = std::fs::read_to_string(sb.config_path()).expect("config");
    std::fs::write(
        sb.config_path(),
        config.replace("  min_age: 1d\n", "  min_age: 1d\n  keep_versions: 1\n"),
    )
    .expect("config");
    key_for(&sb, "alice");
    sb.release("0.27.1");
    sb.release("0.28.0");
    let dump = dump_sqlite(&sb.db()).expect("dump");
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sb.dpkg_state("headscale"), "0.28.0 ii");
    for v in ["0.27.1", "0.28.0"] {
        let kept = sb.path(&format!("state/versions/{v}/headscale_{v}_linux_amd64.deb"));
        assert!(kept.exists(), "{} pruned", kept.display());
    }
    let back = sb.hw(&["rollback"]);
    assert_eq!(code(&back), 0, "{}", text(&back));
    sb.wait_healthy();
    assert_eq!(sb.dpkg_state("headscale"), "0.27.1 ii");
    assert_eq!(sb.cli_version(), "0.27.1");
    assert_eq!(
        dump_sqlite(&sb.db()).expect("dump"),
        dump,
        "the pre-upgrade database"
    );
    assert_eq!(sb.servers(), 1);
}
