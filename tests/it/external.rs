//! `kind: external` against real dpkg and APT on the deb tests' booted host: a package manager
//! (here APT and dpkg, standing in for Alpine's and Arch's, which do not restart the service)
//! replaces the binary under the running server; headwarden stages the binary on disk and guards
//! the restart.

use crate::deb::{assert_pings_again, headscale_uid, identities, key_for, two_clients};
use crate::rows::open_runs;
use crate::support::deb::{package, DebHost};
use crate::support::{code, dump_sqlite, text};

/// Runs `install` the way Alpine and Arch update packages: the new binary is installed, the
/// running server is not restarted (policy-rc.d says 101, so postinst does not bounce the unit).
fn without_restart<T>(sb: &DebHost, install: impl FnOnce() -> T) -> T {
    let policy = sb.root("/usr/sbin/policy-rc.d");
    std::fs::write(&policy, "#!/bin/sh\nexit 101\n").expect("policy-rc.d");
    std::fs::set_permissions(&policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = install();
    std::fs::remove_file(&policy).expect("policy-rc.d");
    out
}

/// `dpkg -i deb` without a restart ([`without_restart`]).
fn install_without_restart(sb: &DebHost, deb: &std::path::Path) {
    without_restart(sb, || sb.dpkg_install(deb));
}

fn external_host(version: &str) -> DebHost {
    let mut sb = DebHost::new(version);
    sb.kind = "external".into();
    sb.write_config();
    sb
}

/// An update waits in an APT repository: `check` names it. APT then installs it without a
/// restart (the skew Alpine and Arch leave behind): `check` and `status` see the binary on disk
/// newer than the server; one `upgrade` stages it on a copy of the data and restarts onto it
/// with a backup and the smoke checks; the data and the clients survive, and the running old
/// binary was kept.
#[test]
fn external_install_stages_and_guards_the_restart_after_a_package_update() {
    let sb = external_host("0.27.1");
    let (alice, bob) = two_clients(&sb);
    assert!(alice.pings(&bob));
    // A local APT repository holding 0.28.0 (as a distribution's archive would).
    let repo = sb.path("repo");
    std::fs::create_dir_all(&repo).expect("repo");
    std::fs::copy(
        package("0.28.0"),
        repo.join("headscale_0.28.0_linux_amd64.deb"),
    )
    .expect("copy");
    let scan = std::process::Command::new("dpkg-scanpackages")
        .args(["--multiversion", "."])
        .current_dir(&repo)
        .output()
        .expect("dpkg-scanpackages (dpkg-dev)");
    assert!(scan.status.success(), "{}", text(&scan));
    std::fs::write(repo.join("Packages"), &scan.stdout).expect("Packages");
    let list = format!("deb [trusted=yes] file:{} ./\n", repo.display());
    std::fs::write(
        sb.root("/etc/apt/sources.list.d/headwarden-test.list"),
        list,
    )
    .expect("list");
    sb.ns_ok(&[
        "apt-get",
        "update",
        "-qq",
        "-o",
        "Dir::Etc::sourcelist=/etc/apt/sources.list.d/headwarden-test.list",
        "-o",
        "Dir::Etc::sourceparts=-",
    ]);
    let check = sb.hw(&["check"]);
    assert_eq!(code(&check), 0, "{}", text(&check));
    assert!(
        text(&check).contains("APT has an update to 0.28.0 pending"),
        "{}",
        text(&check)
    );
    assert!(text(&check).contains("up to date"), "{}", text(&check));

    let apt = without_restart(&sb, || {
        sb.ns_env(
            &[
                "apt-get",
                "install",
                "-y",
                "-qq",
                "-o",
                "Dpkg::Options::=--force-confold",
                "headscale",
            ],
            &[("DEBIAN_FRONTEND", "noninteractive")],
        )
    });
    assert!(apt.status.success(), "{}", text(&apt));
    assert_eq!(sb.dpkg_state("headscale"), "0.28.0 ii");
    assert_eq!(sb.cli_version(), "0.28.0", "the binary on disk");

    let check = sb.hw(&["check"]);
    let said = text(&check);
    assert!(
        said.contains("the binary on disk is 0.28.0 but the server still runs 0.27.1"),
        "{said}"
    );
    assert!(said.contains("plan: 0.27.1 -> 0.28.0"), "{said}");
    let status = sb.hw(&["status"]);
    assert!(
        text(&status).contains("production: 0.27.1 (healthy)"),
        "{}",
        text(&status)
    );
    assert!(
        text(&status).contains("kind external (APT)"),
        "{}",
        text(&status)
    );

    let before = identities(&sb);
    let noise = std::fs::read(sb.root("/var/lib/headscale/noise_private.key")).expect("noise");
    let out = sb.hw(&["upgrade", "--yes"]);
    let said = text(&out);
    assert_eq!(code(&out), 0, "{said}");
    assert!(said.contains("staging passed for 0.28.0"), "{said}");
    assert!(said.contains("production now on 0.28.0"), "{said}");
    assert_eq!(identities(&sb), before);
    assert_eq!(
        std::fs::read(sb.root("/var/lib/headscale/noise_private.key")).expect("noise"),
        noise
    );
    let status = sb.hw(&["status"]);
    assert!(
        text(&status).contains("the server runs the binary on disk (0.28.0)"),
        "{}",
        text(&status)
    );
    let uid = headscale_uid(&sb);
    assert_eq!(sb.service_process().map(|p| p.1), Some(uid));
    let kept = sb.path("state/versions/0.27.1/headscale");
    let v = std::process::Command::new(&kept)
        .arg("version")
        .output()
        .expect("kept binary");
    assert!(text(&v).contains("0.27.1"), "{}", text(&v));
    assert_pings_again(&alice, &bob);
}

/// The package manager skipped a minor (0.27.1 runs, 0.29.3 is on disk): refused before anything
/// is started, with what to install instead; the server keeps running untouched.
#[test]
fn external_install_refuses_a_restart_that_would_skip_a_minor() {
    let sb = external_host("0.27.1");
    key_for(&sb, "alice");
    let pid = sb.service_process().expect("running").0;
    install_without_restart(&sb, &package("0.29.3"));
    let check = sb.hw(&["check"]);
    assert!(text(&check).contains("blocked:"), "{}", text(&check));
    assert!(text(&check).contains("would skip 0.28"), "{}", text(&check));
    let out = sb.hw(&["upgrade", "--yes"]);
    assert!(
        text(&out).contains("blocked: the package manager installed 0.29.3"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("install the newest 0.28 package"),
        "{}",
        text(&out)
    );
    assert_eq!(
        sb.service_process().map(|p| p.0),
        Some(pid),
        "not restarted"
    );
    let v = sb.ns_ok(&["/usr/bin/headscale", "version"]);
    assert!(v.contains("0.29.3"), "{v}");
    assert_eq!(open_runs(&sb.path("state")), 0);
}

/// The package manager's new binary passes staging but fails as production: the data is
/// restored, the server is left stopped (starting the new binary again would migrate again),
/// and the output says how to put the old package back; doing so brings 0.27.1 back on its data.
#[test]
fn external_install_failing_after_the_restart_restores_data_and_says_how_to_go_back() {
    let sb = external_host("0.27.1");
    key_for(&sb, "alice");
    let dump = dump_sqlite(&sb.db()).expect("dump");
    let deb = sb.package_failing_on_production("0.28.0");
    install_without_restart(&sb, &deb);
    let out = sb.hw(&["upgrade", "--yes"]);
    let said = text(&out);
    assert_eq!(code(&out), 5, "{said}");
    assert!(said.contains("staging passed for 0.28.0"), "{said}");
    assert!(said.contains("APT owns the binary"), "{said}");
    assert!(said.contains("apt install headscale=0.27.1"), "{said}");
    assert!(said.contains("left stopped"), "{said}");
    assert!(said.contains("versions/0.27.1/headscale"), "{said}");
    assert_eq!(sb.service_process(), None, "left stopped");
    assert_eq!(dump_sqlite(&sb.db()).expect("dump"), dump, "data restored");
    // The admin follows the instructions.
    sb.dpkg_install(&package("0.27.1"));
    sb.wait_healthy();
    assert_eq!(sb.cli_version(), "0.27.1");
    assert_eq!(dump_sqlite(&sb.db()).expect("dump"), dump);
    assert_eq!(open_runs(&sb.path("state")), 0);
}
