//! `headwarden run` (what the systemd timer calls): due jobs once, lock-aware, schedule-aware.

use crate::support::{code, text, Sandbox};

/// Holds the upgrade lock as another run would (flock on `state/lock`) until dropped.
fn hold_upgrade_lock(sb: &Sandbox) -> std::fs::File {
    std::fs::create_dir_all(sb.path("state")).expect("state dir");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(sb.path("state/lock"))
        .expect("lock file");
    lock.lock().expect("flock");
    lock
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn run_does_due_jobs_once_and_leaves_a_locked_job_for_next_time() {
    let mut sb = Sandbox::new("0.27.1");
    sb.enable_api(true);
    // Schedules twelve hours away from now: no job comes due again between the runs below,
    // whatever time of day the suite runs.
    let hour = (time::OffsetDateTime::now_utc().hour() + 12) % 24;
    sb.extra_top = format!(
        "schedule:\n  upgrade: \"0 {hour} * * *\"\n  keys: \"30 {hour} * * *\"\n  audit: \"@weekly\"\n  timezone: UTC\n"
    );
    sb.write_config();
    sb.release("0.28.0", "none");

    // A manual upgrade holds the lock: the timer's run leaves the upgrade for later, not failing.
    let lock = hold_upgrade_lock(&sb);
    let first = sb.hw(&["run"]);
    assert_eq!(code(&first), 0, "{}", text(&first));
    assert!(
        stdout(&first).contains("upgrade: another run holds its lock"),
        "{}",
        text(&first)
    );
    assert!(stdout(&first).contains("keys: due"), "{}", text(&first));
    assert_eq!(sb.prod_version(), "v0.27.1");
    drop(lock);

    let second = sb.hw(&["run"]);
    assert_eq!(code(&second), 0, "{}", text(&second));
    assert!(
        stdout(&second).contains("upgrade: due"),
        "{}",
        text(&second)
    );
    assert!(
        stdout(&second).contains("keys: not due; next at"),
        "{}",
        text(&second)
    );
    assert_eq!(sb.prod_version(), "v0.28.0");

    let third = sb.hw(&["run"]);
    assert_eq!(code(&third), 0, "{}", text(&third));
    assert!(
        stdout(&third).contains("upgrade: not due; next at"),
        "{}",
        text(&third)
    );
    assert!(!stdout(&third).contains(": due"), "{}", text(&third));
}

#[test]
fn unsupported_time_zone_is_a_config_error() {
    let mut sb = Sandbox::new("0.27.1");
    sb.extra_top = "schedule:\n  upgrade: \"@daily\"\n  timezone: Mars/Olympus\n".into();
    sb.write_config();
    let out = sb.hw(&["config", "check"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("schedule.timezone"), "{}", text(&out));
}

struct Daemon {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(sb: &Sandbox) -> Daemon {
        let log = sb.path("daemon.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = std::process::Command::new(crate::support::hw())
            .arg("--config")
            .arg(sb.config_path())
            .arg("daemon")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("daemon");
        Daemon { child, log }
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn wait_log(&self, needle: &str, count: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        while self.log().matches(needle).count() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal");
    }
    fn wait_exit(&mut self) -> i32 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "daemon did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn daemon_runs_both_jobs_concurrently_keeps_its_config_on_a_bad_reload_and_stops_cleanly() {
    use nix::sys::signal::Signal;
    let mut sb = Sandbox::new("0.27.1");
    sb.enable_api(true);
    sb.extra_top = "schedule:\n  upgrade: \"@daily\"\n  keys: \"@daily\"\n".into();
    sb.write_config();
    // Starting takes 3 s on staging and again on production: the key job finishes meanwhile.
    sb.release("0.28.0", "slow-start");
    let mut d = Daemon::start(&sb);
    d.wait_log("job started", 2);
    d.wait_log("job finished job=\"keys\"", 1);
    assert!(
        !d.log().contains("job finished job=\"upgrade\""),
        "the key job did not wait for the upgrade:\n{}",
        d.log()
    );
    d.wait_log("job finished job=\"upgrade\"", 1);
    assert_eq!(sb.prod_version(), "v0.28.0");

    // SIGHUP with a broken config: refused, the daemon keeps running on the old one.
    let good = std::fs::read_to_string(sb.config_path()).expect("config");
    std::fs::write(sb.config_path(), format!("{good}bogus_key: 1\n")).expect("break");
    d.signal(Signal::SIGHUP);
    d.wait_log("config reload refused", 1);
    assert!(
        d.child.try_wait().expect("wait").is_none(),
        "daemon exited:\n{}",
        d.log()
    );
    std::fs::write(sb.config_path(), good).expect("restore");
    d.signal(Signal::SIGHUP);
    d.wait_log("config reloaded", 1);

    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
    // Nothing runs again within the day: a manual run finds both jobs not due.
    let run = sb.hw(&["run"]);
    assert!(
        stdout(&run).contains("upgrade: not due") && stdout(&run).contains("keys: not due"),
        "{}",
        text(&run)
    );
}

#[test]
fn sigterm_during_a_promotion_lets_it_finish_and_production_stays_consistent() {
    use nix::sys::signal::Signal;
    let mut sb = Sandbox::new("0.27.1");
    sb.extra_top = "schedule:\n  upgrade: \"@daily\"\n".into();
    sb.write_config();
    sb.release("0.28.0", "slow-start");
    let before = sb.dump();
    let mut d = Daemon::start(&sb);
    d.wait_log("job started", 1);
    // SIGTERM once the promotion is under way: production's stop is in the journal.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !crate::support::journal_has(&sb.path("state"), "stop") {
        assert!(
            std::time::Instant::now() < deadline,
            "no promotion: {}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
    assert!(d.log().contains("waiting for running ones"), "{}", d.log());
    assert_eq!(sb.prod_version(), "v0.28.0", "{}", d.log());
    assert_eq!(sb.dump(), before);
    let status = sb.status_json();
    assert!(
        status["interrupted_runs"]
            .as_array()
            .expect("runs")
            .is_empty(),
        "{status}"
    );
    assert_eq!(status["production"]["health"], "healthy", "{status}");
}

#[test]
fn daemon_job_finding_the_lock_held_waits_instead_of_failing() {
    let mut sb = Sandbox::new("0.27.1");
    sb.extra_top = "schedule:\n  upgrade: \"@daily\"\n".into();
    sb.write_config();
    sb.release("0.28.0", "none");
    let _lock = hold_upgrade_lock(&sb);
    let d = Daemon::start(&sb);
    d.wait_log("retrying in a minute", 1);
    assert_eq!(sb.prod_version(), "v0.27.1");
    assert!(
        d.log()
            .contains("job finished job=\"upgrade\" code=Some(4)"),
        "{}",
        d.log()
    );
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths = Vec::new();
    for unit in [
        "headwarden.service",
        "headwarden.timer",
        "headwarden-daemon.service",
    ] {
        let text =
            std::fs::read_to_string(format!("{}/systemd/{unit}", env!("CARGO_MANIFEST_DIR")))
                .expect("unit")
                .replace("/usr/local/bin/headwarden", crate::support::hw());
        let p = dir.path().join(unit);
        std::fs::write(&p, text).expect("write unit");
        paths.push(p);
    }
    // Not skipped when missing: the test command installs systemd-analyze (.ci/test).
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("systemd-analyze (package systemd) must be installed to verify the units");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn metrics_parse_as_prometheus_text_from_run_and_the_daemon() {
    let mut sb = Sandbox::new("0.27.1");
    sb.enable_api(true);
    let textfile = sb.path("headwarden.prom");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    sb.extra_top = format!(
        "schedule:\n  upgrade: \"@daily\"\n  keys: \"@daily\"\nmetrics:\n  textfile: {}\n  listen: 127.0.0.1:{port}\n",
        textfile.display()
    );
    sb.write_config();
    sb.release("0.28.0", "none");
    let run = sb.hw(&["run"]);
    assert_eq!(code(&run), 0, "{}", text(&run));
    let parse = |t: &str| {
        prometheus_parse::Scrape::parse(t.lines().map(|l| Ok(l.to_string())))
            .expect("prometheus text")
    };
    let scrape = parse(&std::fs::read_to_string(&textfile).expect("textfile"));
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{name} {label:?} missing"));
        match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name}: unexpected type"),
        }
    };
    assert_eq!(
        value(
            "headwarden_headscale_version_info",
            Some(("version", "0.28.0"))
        ),
        1.0
    );
    assert_eq!(
        value(
            "headwarden_newest_release_info",
            Some(("version", "0.28.0"))
        ),
        1.0
    );
    assert_eq!(value("headwarden_last_upgrade_success", None), 1.0);
    assert_eq!(
        value("headwarden_runs_total", Some(("outcome", "upgraded"))),
        1.0
    );
    assert_eq!(value("headwarden_pending_approvals", None), 0.0);
    assert_eq!(value("headwarden_hold", None), 0.0);
    let status = sb.status_json();
    assert_eq!(status["schema"], "headwarden.status/v1");
    assert_eq!(status["newest_release"], "0.28.0");
    assert!(
        status["jobs_last_start"]["upgrade"].as_i64().is_some(),
        "{status}"
    );
    assert!(value("headwarden_nodes", Some(("state", "ok"))) >= 1.0);
    assert!(
        value(
            "headwarden_job_last_start_timestamp_seconds",
            Some(("job", "keys"))
        ) > 1.7e9
    );

    // The daemon serves the same text on its loopback listener.
    let mut d = Daemon::start(&sb);
    d.wait_log("serving metrics", 1);
    let body = {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(
            conn,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut resp = String::new();
        conn.read_to_string(&mut resp).expect("response");
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    };
    let served = parse(&body);
    assert!(served
        .samples
        .iter()
        .any(|s| s.metric == "headwarden_rollbacks_total"));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);

    // Metrics are for loopback only.
    sb.extra_top = "metrics:\n  listen: 0.0.0.0:9841\n".into();
    sb.write_config();
    let bad = sb.hw(&["config", "check"]);
    assert_eq!(code(&bad), 2);
    assert!(text(&bad).contains("loopback"), "{}", text(&bad));
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let out = std::process::Command::new(crate::support::hw())
        .args(["completions", "bash"])
        .output()
        .expect("completions");
    let script = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && script.contains("daemon") && script.contains("approve"));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("headwarden.bash");
    std::fs::write(&file, &script).expect("write");
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&file)
        .status()
        .expect("bash");
    assert!(check.success(), "bash rejects the completion script");
    let man = std::process::Command::new(crate::support::hw())
        .arg("man")
        .output()
        .expect("man");
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(
        page.contains(".TH headwarden 1") && page.contains("rollback"),
        "{page}"
    );
}

#[test]
fn playbook_check_accepts_the_default_and_refuses_promote_before_backup() {
    let default = format!("{}/playbooks/upgrade.yaml", env!("CARGO_MANIFEST_DIR"));
    let ok = std::process::Command::new(crate::support::hw())
        .args(["playbook", "check", &default])
        .output()
        .expect("check");
    assert_eq!(code(&ok), 0, "{}", text(&ok));
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("upgrade.yaml");
    std::fs::write(
        &bad,
        "name: upgrade\nsteps:\n  - step: fetch\n  - step: verify\n  - step: stage\n  - step: promote\n    on_failure: continue\n  - step: backup\n",
    )
    .expect("write");
    let out = std::process::Command::new(crate::support::hw())
        .args(["playbook", "check", &bad.display().to_string()])
        .output()
        .expect("check");
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("promote comes before backup"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("must roll back"), "{}", text(&out));
}
