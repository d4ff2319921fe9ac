//! headwarden's shipped units under a real systemd (PID 1 of a booted Debian container), against
//! upstream's packaged Headscale (`User=headscale`, 0750 runtime and data directories): the
//! units and drop-ins exactly as the package ships them and README installs them.
//! ../shared/reviews/systemd-2026-12.md found each of these broken; each test reproduces one.

use std::time::Duration;

use crate::support::booted::{backdate, Booted};
use crate::support::deb::package_failing_on_production_at;

const DEB_DROP_IN: &str = include_str!("../../systemd/deb-install.conf");
const RUN: Duration = Duration::from_secs(300);

/// Upstream's package of 0.28.0 installed and running under its own unit, a user in its
/// database, and headwarden's package beside it with the deb drop-in README names.
fn packaged(drop_ins: &[(&str, &str)]) -> Booted {
    let host = Booted::boot();
    host.install_headscale("0.28.0");
    host.x_ok(&["headscale", "users", "create", "alice"]);
    let mut all = vec![("deb-install.conf", DEB_DROP_IN)];
    all.extend_from_slice(drop_ins);
    host.install_headwarden(&all);
    host
}

/// `headwarden config check` inside: its stderr (the warnings).
fn config_check(host: &Booted) -> String {
    let out = host.x(&[
        "headwarden",
        "--config",
        "/etc/headwarden/headwarden.yaml",
        "config",
        "check",
    ]);
    assert!(out.status.success(), "{}", crate::support::text(&out));
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Production's users (id and name; the connectivity probe's own left out).
fn users(host: &Booted) -> Vec<String> {
    let list: serde_json::Value =
        serde_json::from_str(&host.x_ok(&["headscale", "users", "list", "-o", "json"]))
            .expect("users json");
    list.as_array()
        .expect("users")
        .iter()
        .filter(|u| u["name"] != "headwarden-probe")
        .map(|u| format!("{} {}", u["id"], u["name"]))
        .collect()
}

#[test]
fn the_timer_upgrades_a_packaged_headscale_under_the_shipped_hardened_unit() {
    let host = packaged(&[]);
    // A first `dpkg -i` of upstream's package enables and starts its unit (README said it
    // only records the enable state); it runs as its own account.
    assert_eq!(
        host.show("headscale.service", &["ActiveState", "UnitFileState"])["UnitFileState"],
        "enabled"
    );
    assert_eq!(host.main_user("headscale.service"), "headscale");
    let before = users(&host);
    let warned = config_check(&host);
    assert!(!warned.contains("headwarden.service:"), "{warned}");
    // The running version's package too: it is the way back.
    host.release("0.28.0");
    host.release("0.29.3");
    // headwarden's timer, as shipped, catching up a missed run (Persistent=true). Its random
    // delay is set to 0 for the test: it would otherwise wait up to 30 minutes.
    host.write(
        "/etc/systemd/system/headwarden.timer.d/now.conf",
        "[Timer]\nRandomizedDelaySec=0\n",
    );
    backdate(&host.root("/var/lib/systemd/timers/stamp-headwarden.timer"));
    host.x_ok(&["systemctl", "daemon-reload"]);
    let since = host.left_inactive("headwarden.service");
    host.x_ok(&["systemctl", "start", "headwarden.timer"]);
    let (result, status, journal) = host.wait_done("headwarden.service", &since, RUN);
    assert_eq!(
        (result.as_str(), status.as_str()),
        ("success", "0"),
        "{journal}"
    );
    assert!(journal.contains("0.28.0 -> 0.29.3"), "{journal}");
    // What runs now: the new package, under its unit, as its account, on the same data.
    assert_eq!(host.dpkg_state("headscale"), "0.29.3 ii");
    assert_eq!(host.served_version(), "v0.29.3");
    assert_eq!(host.main_user("headscale.service"), "headscale");
    assert_eq!(users(&host), before, "every user kept");
    assert_eq!(
        host.owner_mode("/var/lib/headscale"),
        "headscale:headscale 750"
    );
    assert!(
        host.owner_mode("/var/lib/headscale/db.sqlite")
            .starts_with("headscale:headscale "),
        "the migrated database stays the service account's"
    );
    // Production was found through the real systemd's MainPID and checked.
    let status = host.x_ok(&[
        "headwarden",
        "--config",
        "/etc/headwarden/headwarden.yaml",
        "status",
    ]);
    let pid = &host.show("headscale.service", &["MainPID"])["MainPID"];
    assert!(
        status.contains(&format!("process {pid} (uid "))
            && status.contains("named by systemd unit headscale.service"),
        "{status}"
    );
}

#[test]
fn a_unit_without_capabilities_is_reported_as_headwarden_s_own_refusal() {
    // The units as they shipped before: root with an empty bounding set cannot enter
    // Headscale's 0750 directories. The failure must name headwarden, not production.
    let host = packaged(&[("empty-caps.conf", "[Service]\nCapabilityBoundingSet=\n")]);
    // `config check` says so before any run.
    let warned = config_check(&host);
    assert!(
        warned.contains(
            "headwarden.service: its CapabilityBoundingSet lacks CAP_CHOWN CAP_DAC_OVERRIDE"
        ),
        "{warned}"
    );
    host.release("0.28.0");
    host.release("0.29.3");
    let (result, _, journal) = host.run_unit("headwarden.service", RUN);
    assert_eq!(result, "exit-code", "{journal}");
    // The first thing it cannot do is check production's process (/proc/<pid>/exe of another
    // account): it says that it was refused, and that its capabilities are why.
    assert!(
        journal.contains("cannot check process") && journal.contains("Permission denied"),
        "{journal}"
    );
    assert!(journal.contains("CAP_SYS_PTRACE"), "{journal}");
    assert!(!journal.contains("fix production first"), "{journal}");
    assert!(!journal.contains("not healthy"), "{journal}");
    assert_eq!(host.dpkg_state("headscale"), "0.28.0 ii");
    assert_eq!(host.served_version(), "v0.28.0");
}

#[test]
fn the_unit_starts_while_headscale_is_stopped_and_recovers_it() {
    // Upstream's unit removes /run/headscale on stop; the unit named it without `-` and could
    // not start at all (226/NAMESPACE), exactly when a recovery is needed: a run killed after
    // it stopped production.
    let host = packaged(&[]);
    let before = users(&host);
    host.release("0.28.0");
    host.release("0.29.3");
    let killed = host.x_env(
        &[
            "headwarden",
            "--config",
            "/etc/headwarden/headwarden.yaml",
            "upgrade",
            "--yes",
        ],
        &[("HEADWARDEN_CRASH_AT", "backup:after")],
    );
    assert_eq!(
        killed.status.code(),
        None,
        "{}",
        crate::support::text(&killed)
    );
    assert_eq!(
        host.show("headscale.service", &["ActiveState"])["ActiveState"],
        "inactive",
        "the killed run left production stopped"
    );
    assert!(!host.root("/run/headscale").exists());
    let (result, status, journal) = host.run_unit("headwarden.service", RUN);
    assert_ne!(status, "226", "{journal}");
    assert_eq!(
        (result.as_str(), status.as_str()),
        ("success", "0"),
        "{journal}"
    );
    assert!(journal.contains("recovered"), "{journal}");
    // Recovered (the interrupted promotion rolled back), then upgraded by the same run.
    assert_eq!(host.served_version(), "v0.29.3");
    assert_eq!(host.dpkg_state("headscale"), "0.29.3 ii");
    assert_eq!(host.main_user("headscale.service"), "headscale");
    assert_eq!(users(&host), before, "every user kept");
}

#[test]
fn a_release_failing_only_on_production_is_rolled_back_with_data_owners_and_modes() {
    let host = packaged(&[]);
    let before = users(&host);
    let files = [
        "/var/lib/headscale",
        "/var/lib/headscale/db.sqlite",
        "/var/lib/headscale/noise_private.key",
        "/etc/headscale/config.yaml",
    ];
    let owners: Vec<String> = files.iter().map(|f| host.owner_mode(f)).collect();
    let config = std::fs::read(host.root("/etc/headscale/config.yaml")).expect("config");
    let noise = host.x_ok(&["sha256sum", "/var/lib/headscale/noise_private.key"]);
    host.release("0.28.0");
    // 0.29.3 passes staging, then fails as production after its postinst migrated the data.
    // Its real binary lives inside the booted system (headwarden's unit has its own /tmp).
    let real = "/opt/real-headscale-0.29.3";
    std::fs::copy(crate::support::headscale("0.29.3"), host.root(real)).expect("copy");
    host.x_ok(&["chmod", "0755", real]);
    let deb =
        package_failing_on_production_at(host.dir.path(), "0.29.3", std::path::Path::new(real));
    host.release_package("0.29.3", &deb);
    let (result, status, journal) = host.run_unit("headwarden.service", RUN);
    assert_eq!(
        (result.as_str(), status.as_str()),
        ("exit-code", "3"),
        "{journal}"
    );
    assert!(journal.contains("production FAILED on 0.29.3"), "{journal}");
    assert!(journal.contains("rolled back to 0.28.0"), "{journal}");
    // What runs: the previous package, under its unit, as its account, on the restored data.
    assert_eq!(host.dpkg_state("headscale"), "0.28.0 ii");
    host.wait_healthy();
    assert_eq!(host.served_version(), "v0.28.0");
    assert_eq!(host.main_user("headscale.service"), "headscale");
    assert_eq!(users(&host), before, "every user kept");
    let after: Vec<String> = files.iter().map(|f| host.owner_mode(f)).collect();
    assert_eq!(after, owners, "owners and modes of {files:?}");
    assert_eq!(
        std::fs::read(host.root("/etc/headscale/config.yaml")).expect("config"),
        config
    );
    assert_eq!(
        host.x_ok(&["sha256sum", "/var/lib/headscale/noise_private.key"]),
        noise
    );
}

#[test]
fn the_shipped_unit_upgrades_a_binary_install_run_by_upstream_s_unit() {
    // kind: binary, as admins install it by hand: the release binary at /usr/local/bin,
    // upstream's unit (User=headscale) with an EnvironmentFile= that moves the listen address
    // away from the config file's, headwarden's unit without any drop-in. Health is only
    // reachable where the real unit's environment says: production's environment is read
    // from the process the real systemd names.
    let host = Booted::boot();
    host.install_headscale_binary("0.28.0");
    host.x_ok(&["headscale", "users", "create", "alice"]);
    host.install_headwarden_for("  binary: /usr/local/bin/headscale\n", &[]);
    assert!(!config_check(&host).contains("headwarden.service:"));
    let before = users(&host);
    host.release("0.29.3");
    let (result, status, journal) = host.run_unit("headwarden.service", RUN);
    assert_eq!(
        (result.as_str(), status.as_str()),
        ("success", "0"),
        "{journal}"
    );
    assert_eq!(host.served_version(), "v0.29.3");
    assert_eq!(host.main_user("headscale.service"), "headscale");
    assert_eq!(
        host.x_ok(&["readlink", "/usr/local/bin/headscale"]),
        "/var/lib/headwarden/versions/0.29.3/headscale"
    );
    assert_eq!(users(&host), before, "every user kept");
    assert_eq!(
        host.owner_mode("/var/lib/headscale"),
        "headscale:headscale 750"
    );
}

/// The daemon unit as shipped, with the deb drop-in: a job that never ran is due at once, so
/// its upgrade runs under the daemon's hardening and promotes; `systemctl stop` then ends the
/// daemon cleanly (nothing left running in its cgroup).
#[test]
fn the_daemon_unit_upgrades_on_its_schedule_and_stops_cleanly() {
    let host = packaged(&[]);
    host.write(
        "/etc/systemd/system/headwarden-daemon.service.d/deb-install.conf",
        DEB_DROP_IN,
    );
    let config = "/etc/headwarden/headwarden.yaml";
    let text = std::fs::read_to_string(host.root(config)).expect("config");
    host.write(
        config,
        &format!("{text}schedule:\n  upgrade: \"@daily\"\n  jitter: 0s\n"),
    );
    host.x_ok(&["systemctl", "daemon-reload"]);
    let before = users(&host);
    host.release("0.28.0");
    host.release("0.29.3");
    host.x_ok(&["systemctl", "start", "headwarden-daemon.service"]);
    let deadline = std::time::Instant::now() + RUN;
    let journal = loop {
        let journal = host.journal("headwarden-daemon.service");
        if journal.contains("job finished") {
            break journal;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no job finished: {journal}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(journal.contains("0.28.0 -> 0.29.3"), "{journal}");
    assert!(journal.contains("code=Some(0)"), "{journal}");
    assert_eq!(host.dpkg_state("headscale"), "0.29.3 ii");
    assert_eq!(host.served_version(), "v0.29.3");
    assert_eq!(host.main_user("headscale.service"), "headscale");
    assert_eq!(users(&host), before, "every user kept");
    // Still running (the daemon waits for the next time), then stopped by systemd.
    let unit = "headwarden-daemon.service";
    assert_eq!(host.show(unit, &["ActiveState"])["ActiveState"], "active");
    host.x_ok(&["systemctl", "stop", unit]);
    let s = host.show(unit, &["ActiveState", "Result", "MainPID"]);
    assert_eq!(
        (
            s["ActiveState"].as_str(),
            s["Result"].as_str(),
            s["MainPID"].as_str()
        ),
        ("inactive", "success", "0"),
        "{}",
        host.journal(unit)
    );
    assert!(host.journal(unit).contains("daemon stopped"));
}
