//! `headwarden run` (what the systemd timer calls): due jobs once, lock-aware, schedule-aware.

use crate::support::{code, text, Sandbox};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn run_does_due_jobs_once_and_leaves_a_locked_job_for_next_time() {
    let mut sb = Sandbox::new("0.27.1");
    sb.enable_api(true);
    sb.extra_top =
        "schedule:\n  upgrade: \"0 4 * * *\"\n  keys: \"@daily\"\n  timezone: UTC\n".into();
    sb.write_config();
    sb.release("0.28.0", "none");

    // A manual upgrade holds the lock: the timer's run leaves the upgrade for later, not failing.
    std::fs::create_dir_all(sb.path("state")).expect("state dir");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(sb.path("state/lock"))
        .expect("lock file");
    lock.lock().expect("flock");
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
