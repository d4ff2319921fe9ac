//! Production is found through its service manager and checked, never by looking like Headscale
//! (deploy::production). A look-alike another account plants before production starts — `serve
//! -c <production's config>` on its command line, its own `HEADSCALE_*` environment pointing at a
//! port it listens on — must receive nothing and change nothing; a process the service manager
//! names that runs as another account or another binary is refused before anything is touched.

use std::path::Path;
use std::process::Command;

use crate::support::compose::ComposeSandbox;
use crate::support::deb::DebHost;
use crate::support::lookalike::LookAlike;
use crate::support::{code, text, Sandbox};

/// `pid start-time`, as the service stand-ins write their pidfiles.
fn pidfile_line(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let start = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().nth(19).map(str::to_string))
        .expect("start time");
    format!("{pid} {start}\n")
}

fn service(sb: &Sandbox, action: &str) {
    let ok = Command::new(sb.path("prod/service.sh"))
        .arg(action)
        .status()
        .expect("service.sh")
        .success();
    assert!(ok, "service.sh {action}");
    let sock = sb.path("prod/run/headscale.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while action == "start" && !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "production did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Binary kind (`kind: command` with a pidfile): the look-alike runs before production, so it
/// comes first in `/proc`. The whole upgrade — health, baseline, staging's environment, backup,
/// promotion and the smoke checks on production — talks to production only.
#[test]
fn a_planted_lookalike_is_never_production_binary_kind() {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    service(&sb, "stop");
    let fake = LookAlike::start(&sb.path("prod/etc/config.yaml"), &sb.path("lookalike.log"));
    service(&sb, "start");
    let before = sb.dump();
    let out = sb.hw(&["upgrade", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(sb.prod_version(), "v0.28.0");
    assert_eq!(sb.dump(), before);
    let status = sb.hw(&["status"]);
    assert!(
        text(&status).contains("named by pidfile"),
        "status says how production was found: {}",
        text(&status)
    );
    assert_eq!(fake.connections(), 0, "nothing was sent to the look-alike");
}

/// The pidfile names a process that is not production (another account, another binary): the
/// upgrade stops before staging, says why, and production is untouched.
#[test]
fn a_named_process_of_another_account_is_refused() {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    let fake = LookAlike::start(&sb.path("prod/etc/config.yaml"), &sb.path("lookalike.log"));
    let pidfile = sb.path("prod/headscale.pid");
    let real = std::fs::read_to_string(&pidfile).expect("pidfile");
    std::fs::write(&pidfile, pidfile_line(fake.pid())).expect("pidfile");
    let out = sb.hw(&["upgrade", "--yes"]);
    std::fs::write(&pidfile, real).expect("pidfile");
    let t = text(&out);
    assert_eq!(code(&out), 1, "{t}");
    assert!(
        t.contains(&format!("process {}, which pidfile", fake.pid()))
            && t.contains("it is not production"),
        "{t}"
    );
    assert!(
        !crate::support::journal_has(&sb.path("state"), "stop"),
        "nothing was stopped"
    );
    assert_eq!(sb.prod_version(), "v0.27.1");
    assert!(sb.service_running());
    assert_eq!(fake.connections(), 0, "nothing was sent to the look-alike");
}

/// A pidfile another account could have written is not trusted.
#[test]
fn a_pidfile_others_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new("0.27.1");
    let pidfile = sb.path("prod/headscale.pid");
    std::fs::set_permissions(&pidfile, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = sb.hw(&["smoke"]);
    let t = text(&out);
    assert_ne!(code(&out), 0, "{t}");
    assert!(t.contains("writable by others"), "{t}");
}

/// Deb kind (systemd's MainPID, through the unit): real Headscale under its package's unit; the
/// look-alike started before it. `headwarden smoke` — health, the connectivity probe with a key
/// minted through production's CLI — reaches production only.
#[test]
fn a_planted_lookalike_is_never_production_deb_kind() {
    let sb = DebHost::new("0.28.0");
    sb.ns_ok(&["systemctl", "stop", "headscale.service"]);
    // Inside the booted system, where headwarden looks.
    let fake = LookAlike::start_via(
        |argv| sb.command(argv),
        Path::new("/etc/headscale/config.yaml"),
        &sb.path("lookalike.log"),
    );
    sb.ns_ok(&["systemctl", "start", "headscale.service"]);
    sb.wait_healthy();
    let (pid, _) = sb.service_process().expect("production runs");
    assert!(
        (fake.pid() as i32) < pid,
        "the look-alike comes first in /proc"
    );
    let out = sb.hw(&["smoke"]);
    let t = text(&out);
    assert_eq!(code(&out), 0, "{t}");
    assert!(t.contains("connectivity"), "the probe ran: {t}");
    let status = sb.hw(&["status"]);
    assert!(
        text(&status).contains(&format!("process {pid} ("))
            && text(&status).contains("named by systemd unit headscale.service"),
        "{}",
        text(&status)
    );
    assert_eq!(fake.connections(), 0, "nothing was sent to the look-alike");
}

/// Compose kind (the engine names the service's container by its labels, and gives its
/// environment): a look-alike on the host, started before the container, changes nothing.
#[test]
fn a_planted_lookalike_is_never_production_compose_kind() {
    let sb = ComposeSandbox::new("0.28.0", "0.28.0");
    sb.compose(&["stop", "headscale"]);
    let fake = LookAlike::start(&sb.headscale_config(), &sb.path("lookalike.log"));
    sb.compose(&["up", "-d", "headscale"]);
    sb.wait_healthy();
    let out = sb.hw(&["smoke"]);
    let t = text(&out);
    assert_eq!(code(&out), 0, "{t}");
    assert!(t.contains("connectivity"), "the probe ran: {t}");
    let status = sb.hw(&["status"]);
    assert!(
        text(&status).contains("server: the container of compose service headscale"),
        "{}",
        text(&status)
    );
    assert_eq!(fake.connections(), 0, "nothing was sent to the look-alike");
}
